"""Joining a multi-process (multi-host) JAX job before any device is touched.

Every process runs the same `python -m charlm.main ...`; JAX's multi-controller runtime
makes the devices of all processes one pmap axis. Three ways in:
  explicit:  --coordinator_address=HOST:PORT --num_processes=N --process_id=I
  detected:  --multihost (JAX finds the cluster: Cloud TPU pod, SLURM, GKE, ...)
  automatic: no flag, but the environment is one task of many (SLURM_NTASKS > 1, or a
             Cloud TPU VM with several workers in TPU_WORKER_HOSTNAMES).

A process that dies is noticed by `charlm.watchdog` within --heartbeat_timeout; the others
stop with one line. In the explicit set-up process 0 runs the job's coordination service in
a child process, so that when process 0 itself dies the others still reach the key-value
store and name it: jaxlib aborts them from C++ at once when the service dies with process 0.
That service, and keeping jax.distributed.initialize from starting its own, are private
jaxlib functions (`charlm.jax_private`), held for the pinned jax: a jax without them runs
the service in process 0, as JAX does.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import pathlib
import select
import signal
import socket
import subprocess
import sys
import time

import jax
from absl import logging

from charlm import jax_private, watchdog
from charlm.errors import CharLMError


def cluster_environment() -> str | None:
    """The name of a multi-process launcher this process was started by, if any."""
    if int(os.environ.get('SLURM_NTASKS', '1') or 1) > 1 and 'SLURM_JOB_ID' in os.environ:
        return 'SLURM'
    if ',' in os.environ.get('TPU_WORKER_HOSTNAMES', ''):
        return 'Cloud TPU pod'
    return None


def initialize(multihost: bool = False, coordinator_address: str | None = None,
               num_processes: int | None = None, process_id: int | None = None,
               timeout_s: int = 120, heartbeat_timeout_s: int = 30,
               workdir: str = '.') -> str | None:
    """Calls jax.distributed.initialize when asked or detected, and starts the watchdog that
    stops this process when another stops answering; returns how, or None."""
    explicit = coordinator_address is not None
    if explicit and (num_processes is None or process_id is None):
        raise CharLMError('--coordinator_address needs --num_processes and --process_id')
    if explicit and not 0 <= process_id < num_processes:
        raise CharLMError(f'--process_id={process_id} is not in [0, {num_processes})')
    if heartbeat_timeout_s < 2:
        raise CharLMError(f'--heartbeat_timeout={heartbeat_timeout_s} is too short: at least 2 '
                          'seconds')
    how = 'explicit' if explicit else ('--multihost' if multihost else cluster_environment())
    if how is None:
        return None
    # JAX's own heartbeat aborts from C++: it is set longer, so the watchdog speaks first.
    jax_heartbeat_s = 2 * heartbeat_timeout_s + 10
    service_elsewhere = contextlib.nullcontext()
    if explicit and process_id == 0 and num_processes > 1:  # started here, used below
        service_elsewhere = _service_in_child(coordinator_address, num_processes, jax_heartbeat_s,
                                              heartbeat_timeout_s, timeout_s)
    if explicit and process_id != 0:
        wait_for_coordinator(coordinator_address, timeout_s)
    logging.info('joining the multi-process job (%s); waiting up to %ds for all processes',
                 how, timeout_s)
    try:
        with service_elsewhere:
            jax.distributed.initialize(coordinator_address, num_processes, process_id,
                                       initialization_timeout=timeout_s,
                                       heartbeat_timeout_seconds=jax_heartbeat_s)
    except (RuntimeError, ValueError) as e:  # XlaRuntimeError is a RuntimeError
        first = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
        where = coordinator_address or 'the detected coordinator'
        raise CharLMError(f'could not join the multi-process job ({how}) at {where} within '
                          f'{timeout_s}s: {first}') from None
    watchdog.start(jax_private.distributed_client(), jax.process_index(), jax.process_count(),
                   heartbeat_timeout_s, workdir)
    return how


def _service_in_child(address: str, num_processes: int, jax_heartbeat_s: int,
                      heartbeat_timeout_s: int, timeout_s: float):
    """Starts process 0's coordination service in a child process; returns the context in
    which jax.distributed.initialize then starts none of its own.

    The child outlives process 0 by --heartbeat_timeout and a little when process 0 dies,
    long enough for the others to read its silence from the store; it ends with process 0
    when process 0 ends normally (which is after every process's JAX shutdown).
    """
    if not jax_private.has_runtime_service():  # the in-process service, as JAX starts it
        return contextlib.nullcontext()
    port = address.rpartition(':')[2]
    linger_s = watchdog.longest_s(heartbeat_timeout_s) + 3
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(pathlib.Path(__file__).resolve().parent.parent), os.environ.get('PYTHONPATH', '')]))
    child = subprocess.Popen(
        [sys.executable, '-m', 'charlm.distributed', port, str(num_processes),
         str(jax_heartbeat_s), str(linger_s)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        env=env)
    ready, _, _ = select.select([child.stdout], [], [], timeout_s)
    said = child.stdout.readline().strip() if ready else f'no answer within {timeout_s}s'
    if said != 'ready':
        child.kill()
        raise CharLMError(f'could not start the coordination service of this job on port '
                          f'{port}: {said or "it exited"}')
    atexit.register(_clean_exit, child)  # before JAX's shutdown, as atexit runs last first
    return jax_private.no_runtime_service()


def _clean_exit(child: subprocess.Popen) -> None:
    """Process 0 is ending normally: its service may end with it, without lingering."""
    with contextlib.suppress(OSError):
        child.stdin.write('clean\n')
        child.stdin.flush()


def _serve(port: str, num_processes: int, jax_heartbeat_s: int, linger_s: float) -> None:
    """The child of `_service_in_child`: the service, until process 0 is gone (its pipe
    closes), then `linger_s` more unless process 0 said it ended normally."""
    for sig in (signal.SIGINT, signal.SIGTERM):  # a Ctrl-C to the job is for the trainers
        signal.signal(sig, signal.SIG_IGN)
    try:
        service = jax_private.runtime_service(  # noqa: F841 (it serves while alive)
            f'[::]:{port}', num_processes, jax_heartbeat_s)
    except Exception as e:
        print(str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__,
              flush=True)
        os._exit(1)
    print('ready', flush=True)
    clean = sys.stdin.readline().strip() == 'clean'
    sys.stdin.read()  # until process 0 is gone
    if not clean:
        time.sleep(linger_s)
    os._exit(0)


def wait_for_coordinator(address: str, timeout_s: float) -> None:
    """Polls HOST:PORT until it accepts a connection; a clear error after `timeout_s`.

    (jax.distributed.initialize aborts the whole process from C++ when the coordinator
    never answers, so the check is made here first.)
    """
    host, _, port = address.rpartition(':')
    if not host or not port.isdigit():
        raise CharLMError(f'--coordinator_address={address!r} is not HOST:PORT')
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with socket.create_connection((host, int(port)), timeout=2):
                return
        except OSError as e:
            if time.monotonic() >= deadline:
                raise CharLMError(f'no coordinator answered at {address} within {timeout_s}s '
                                  f'({e.strerror or e}); start process 0 first, or check the '
                                  'address and firewall') from None
            time.sleep(0.5)


if __name__ == '__main__':
    _serve(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]))
