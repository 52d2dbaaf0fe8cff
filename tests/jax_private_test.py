"""charlm.jax_private: each private JAX name charlm uses is still where it was. A failure
names the API and the installed jax version, so a jax upgrade says what to follow."""

import contextlib
import inspect
import socket

import jax
import pytest

from charlm import jax_private


@contextlib.contextmanager
def api(name: str):
    """Any failure inside becomes one line naming `name` and the jax version."""
    try:
        yield
    except Exception as e:
        pytest.fail(f'{name} moved or changed in jax {jax.__version__} ({type(e).__name__}: '
                    f'{e}): charlm.jax_private must follow it', pytrace=False)


def test_the_distributed_client():
    with api('jax._src.distributed.global_state.client'):
        from jax._src import distributed

        assert jax_private.distributed_client() is None  # no job joined in this process
        shutdown = inspect.getsource(distributed.State.shutdown)
        assert 'self.client = None' in shutdown, 'shutdown no longer drops the client'
    with api('jax._src.lib._jax.DistributedRuntimeClient.key_value_set / key_value_dir_get'):
        from jax._src.lib import _jax

        client = _jax.DistributedRuntimeClient
        assert 'allow_overwrite' in client.key_value_set.__doc__
        assert 'list[tuple[str, str]]' in client.key_value_dir_get.__doc__


def test_a_runtime_service_starts_and_stops():
    with api('jax._src.lib._jax.get_distributed_runtime_service'):
        assert jax_private.has_runtime_service()
        with socket.socket() as s:
            s.bind(('127.0.0.1', 0))
            port = s.getsockname()[1]
        service = jax_private.runtime_service(f'[::]:{port}', 1, heartbeat_timeout_s=10,
                                              shutdown_timeout_s=5)
        service.shutdown()


def test_initialize_starts_no_service_inside_no_runtime_service():
    with api('jax._src.distributed.State.initialize -> _jax.get_distributed_runtime_service'):
        from jax._src import distributed
        from jax._src.lib import _jax

        source = inspect.getsource(distributed.State.initialize)
        # It is looked up on the module at each call, so the replacement is what it calls.
        assert 'self.service = _jax.get_distributed_runtime_service(' in source
        assert 'self.service.shutdown()' in inspect.getsource(distributed.State.shutdown)
        make = _jax.get_distributed_runtime_service
        with jax_private.no_runtime_service():
            stand_in = _jax.get_distributed_runtime_service('[::]:1', 2, heartbeat_timeout=1)
            stand_in.shutdown()
        assert _jax.get_distributed_runtime_service is make


def test_the_platform_version():
    with api('jax.Device.client.platform_version'):
        assert isinstance(jax.devices()[0].client.platform_version, str)
        assert jax_private.platform_version()


def test_the_cuda_versions():
    names = ('cuda_runtime_get_version', 'cuda_driver_get_version', 'cudnn_get_version',
             'cudnn_build_version', 'cublas_get_version')
    with api('jax._src.lib.cuda_versions'):
        cuda = jax_private.cuda_versions()  # None without a CUDA plugin
        assert cuda is None or all(callable(getattr(cuda, n)) for n in names)


def test_the_backend_log_line():
    file, words = jax_private.BACKEND_LOG
    with api(f'jax._src.xla_bridge ("{words} ..." logged from {file})'):
        from jax._src import xla_bridge

        assert xla_bridge.__file__.endswith(file)
        assert f'err_msg = f"{words} ' in inspect.getsource(xla_bridge)
