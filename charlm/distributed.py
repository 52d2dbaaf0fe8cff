"""Joining a multi-process (multi-host) JAX job before any device is touched.

Every process runs the same `python -m charlm.main ...`; JAX's multi-controller runtime
makes the devices of all processes one pmap axis. Three ways in:
  explicit:  --coordinator_address=HOST:PORT --num_processes=N --process_id=I
  detected:  --multihost (JAX finds the cluster: Cloud TPU pod, SLURM, GKE, ...)
  automatic: no flag, but the environment is one task of many (SLURM_NTASKS > 1, or a
             Cloud TPU VM with several workers in TPU_WORKER_HOSTNAMES).
"""

from __future__ import annotations

import os
import socket
import time

import jax
from absl import logging

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
               timeout_s: int = 120) -> str | None:
    """Calls jax.distributed.initialize when asked or detected; returns how, or None."""
    explicit = coordinator_address is not None
    if explicit and (num_processes is None or process_id is None):
        raise CharLMError('--coordinator_address needs --num_processes and --process_id')
    if explicit and not 0 <= process_id < num_processes:
        raise CharLMError(f'--process_id={process_id} is not in [0, {num_processes})')
    how = 'explicit' if explicit else ('--multihost' if multihost else cluster_environment())
    if how is None:
        return None
    if explicit and process_id != 0:
        wait_for_coordinator(coordinator_address, timeout_s)
    logging.info('joining the multi-process job (%s); waiting up to %ds for all processes',
                 how, timeout_s)
    try:
        jax.distributed.initialize(coordinator_address, num_processes, process_id,
                                   initialization_timeout=timeout_s)
    except (RuntimeError, ValueError) as e:  # XlaRuntimeError is a RuntimeError
        first = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
        where = coordinator_address or 'the detected coordinator'
        raise CharLMError(f'could not join the multi-process job ({how}) at {where} within '
                          f'{timeout_s}s: {first}') from None
    return how


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
