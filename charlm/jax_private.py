"""Every private name of JAX that charlm uses, in one place: jax's own internals, which any
release may move. tests/jax_private_test.py checks each against the installed jax (pinned in
requirements.txt); a failure names the API and the jax version.

  distributed_client()     jax._src.distributed.global_state.client: the job's coordination
                           client, whose key-value store `charlm.watchdog` beats in
  has_runtime_service()    jaxlib's get_distributed_runtime_service (jax._src.lib._jax), which
  runtime_service(...)     starts a coordination service: `charlm.distributed` runs process
  no_runtime_service()     0's in a child process, and jax.distributed.initialize none of its own
  platform_version()       the backend's Client.platform_version (jax.devices()[0].client):
                           CUDA or ROCm
  cuda_versions()          jax._src.lib.cuda_versions: the CUDA, cuDNN and cuBLAS versions
  BACKEND_LOG              the file and words of jax._src.xla_bridge's "Unable to initialize
                           backend" line, which the command lines keep off the console

The private modules are imported only when a function needs them, so a jax that moved one
fails there, with its name, not at `import charlm...`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from types import ModuleType
from typing import Any

# (file name, first words): jax._src.xla_bridge logs this at INFO for each absent backend.
BACKEND_LOG = ('xla_bridge.py', 'Unable to initialize backend')


def distributed_client() -> Any:
    """This process's coordination client (None before jax.distributed.initialize and after
    its shutdown): key_value_set(key, value, allow_overwrite=...), key_value_dir_get(prefix)."""
    from jax._src import distributed

    return distributed.global_state.client


def _jaxlib() -> ModuleType | None:
    try:
        from jax._src.lib import _jax
    except ImportError:
        return None
    return _jax


def has_runtime_service() -> bool:
    """Whether this jaxlib can start a coordination service apart from
    jax.distributed.initialize (else process 0 runs it in-process, as JAX does)."""
    _jax = _jaxlib()
    return _jax is not None and hasattr(_jax, 'get_distributed_runtime_service')


def runtime_service(address: str, num_processes: int, heartbeat_timeout_s: int,
                    shutdown_timeout_s: int = 300) -> Any:
    """A coordination service for `num_processes` on `address` ('[::]:PORT'), serving while
    the returned object lives (jax.distributed.initialize's, with JAX's default shutdown
    timeout)."""
    return _jaxlib().get_distributed_runtime_service(
        address, num_processes, heartbeat_timeout=heartbeat_timeout_s,
        shutdown_timeout=shutdown_timeout_s)


class _NoService:
    """What jax.distributed.initialize keeps as process 0's service when it starts none."""

    def shutdown(self) -> None:
        pass


@contextlib.contextmanager
def no_runtime_service() -> Iterator[None]:
    """Inside, jax.distributed.initialize starts no coordination service of its own (one
    runs elsewhere, at the address it is given)."""
    _jax = _jaxlib()
    make = _jax.get_distributed_runtime_service
    _jax.get_distributed_runtime_service = lambda *args, **kwargs: _NoService()
    try:
        yield
    finally:
        _jax.get_distributed_runtime_service = make


def platform_version() -> str:
    """The default backend's platform version ('cuda 12030', 'rocm 60100', 'PJRT C API',
    ...), from the Client behind jax.devices()[0]."""
    import jax

    return str(jax.devices()[0].client.platform_version)


def cuda_versions() -> ModuleType | None:
    """jaxlib's CUDA version queries (cuda_runtime_get_version, cudnn_get_version, ...), or
    None without a CUDA plugin."""
    from jax._src import lib

    return lib.cuda_versions
