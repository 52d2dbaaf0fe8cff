"""Four fake CPU devices and strict broadcasting for every test.

XLA_FLAGS must be set before jax is imported anywhere, hence here and not in a fixture.
The tests' programs are tiny and compiled once each, so XLA compiles them without LLVM's
optimisations (--xla_backend_optimization_level=0): the suite is mostly compile time, and
the commands it runs get the same flag (cli_env), so their numbers equal the in-process ones.
"""

import atexit
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import time

FAST_COMPILE = '--xla_backend_optimization_level=0'
os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') + f' {FAST_COMPILE}'
                           + ' --xla_force_host_platform_device_count=4').strip()
os.environ.setdefault('JAX_PLATFORMS', 'cpu')
# One compile cache for the session, its xdist workers and the commands they run: the same
# tiny programs are compiled by dozens of tests. Fresh each session; the process that made
# it (pytest's controller, which the workers inherit it from) removes it at exit.
_CACHE = os.environ.get('CHARLM_TESTS_CACHE')
if not _CACHE:
    _CACHE = os.environ['CHARLM_TESTS_CACHE'] = tempfile.mkdtemp(prefix='charlm-tests-jax-')
    atexit.register(shutil.rmtree, _CACHE, True)
os.environ['CHARLM_COMPILATION_CACHE'] = _CACHE
# Prepared corpora of the commands the tests run without a data.cache_dir (the default,
# $XDG_CACHE_HOME/charlm) go here too, not into ~/.cache: one folder per worker, as before.
os.environ['XDG_CACHE_HOME'] = os.path.join(_CACHE, 'xdg',
                                            os.environ.get('PYTEST_XDIST_WORKER', 'main'))
os.environ['JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS'] = '0'
os.environ['JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES'] = '0'

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update('jax_numpy_rank_promotion', 'raise')
jax.config.update('jax_compilation_cache_dir', _CACHE)

SHAKESPEARE_LIKE = """First Citizen:
Before we proceed any further, hear me speak.

All:
Speak, speak.

First Citizen:
You are all resolved rather to die than to famish?

All:
Resolved. resolved.

First Citizen:
First, you know Caius Marcius is chief enemy to the people.
"""


@pytest.fixture
def corpus_file(tmp_path):
    """A small corpus file (about 10k characters) the tests write themselves."""
    path = tmp_path / 'corpus.txt'
    path.write_text(SHAKESPEARE_LIKE * 40, encoding='utf-8')
    return str(path)


@pytest.fixture
def tiny_config(corpus_file, tmp_path):
    """configs/tiny.py on the small corpus, with the built-in cache kept in tmp."""
    from configs import tiny

    config = tiny.get_config()
    config.data.path = corpus_file
    config.data.cache_dir = str(tmp_path / 'cache')
    return config


ROOT = pathlib.Path(__file__).resolve().parent.parent


def cli_env(devices=1, **extra) -> dict:
    """The environment of a command the tests run: `devices` fake CPUs, the tests' flags."""
    return dict(os.environ, XLA_FLAGS=f'{FAST_COMPILE} --xla_force_host_platform_device_count='
                f'{devices}', JAX_PLATFORMS='cpu', **extra)


def run_cli(*args, devices=1, timeout=300) -> subprocess.CompletedProcess:
    """`python -m ARGS` from the repository root, as a user runs it, on `devices` CPUs."""
    env = cli_env(devices)
    return subprocess.run([sys.executable, '-m', *args], cwd=ROOT, env=env, text=True,
                          capture_output=True, timeout=timeout)


def assert_one_line_error(proc: subprocess.CompletedProcess, match: str) -> None:
    """Exit code 2, no traceback, one `charlm: error:` line containing `match`."""
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert 'Traceback' not in proc.stderr
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith('charlm: error:')]
    assert len(errors) == 1 and match in errors[0], proc.stderr[-2000:]


def start_training(workdir, corpus, *overrides, devices=4) -> subprocess.Popen:
    """`charlm.main` on configs/tiny.py as a real process, its stderr piped for `wait_for`."""
    env = cli_env(devices, PYTHONUNBUFFERED='1')
    return subprocess.Popen(
        [sys.executable, '-m', 'charlm.main', '--config=configs/tiny.py', f'--workdir={workdir}',
         f'--config.data.path={corpus}', *overrides],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def wait_for(proc, text, timeout=120):
    """Reads stderr until a line contains `text`; returns the lines read."""
    lines, deadline = [], time.monotonic() + timeout
    for line in proc.stderr:
        lines.append(line)
        if text in line:
            return lines
        assert time.monotonic() < deadline, ''.join(lines[-20:])
    raise AssertionError(f'process ended before {text!r}:\n' + ''.join(lines[-30:]))


# The longest tests and worker-bound groups first (longest-processing-time-first): with two
# workers, a minute-long test sent last leaves one worker idle for its whole length.
LONG_FIRST = ('notebook_test.py::test_the_tour_runs', 'sample_cli_test.py', 'multiprocess_test.py',
              'faults_test.py::test_kill_9', 'evaluate_test.py', 'workdir_test.py',
              'corpora_configs_test.py', 'main_test.py', 'sampler_test.py')


def pytest_collection_modifyitems(items):
    def rank(item):
        nodeid = item.nodeid.removeprefix('tests/')
        return next((i for i, p in enumerate(LONG_FIRST) if nodeid.startswith(p)),
                    len(LONG_FIRST))
    items.sort(key=rank)  # stable: the rest keep their order
