"""The training workdir: checked before a run starts, held by one run at a time, and the
saves it holds, read from their folder names (no checkpoint manager starts).

  WORKDIR/lock  who trains here now: {"host", "pid", "start", "boot", "heartbeat", ...}
  WORKDIR/checkpoints/STEP/, WORKDIR/best/STEP/  the completed saves (`charlm.checkpointing`)

A run holds the lock file for its whole life (`charlm.filelock`: an exclusive flock, its
name and heartbeat inside), so a second run on the same workdir is refused with the
holder's name; a dead holder's name left in the file only earns a warning.
Read-only commands (sample, evaluate, gates, plot) never take the hold.
"""

from __future__ import annotations

import os
import pathlib
import shutil

import jax
import numpy as np
from absl import logging
from jax.experimental import multihost_utils

from charlm import filelock
from charlm.errors import CharLMError


def check_workdir(workdir: str, min_free_bytes: int = 50 << 20) -> pathlib.Path:
    """Fails at start-up, not after an hour, if checkpoints could not be written."""
    if not str(workdir).strip():
        raise CharLMError('--workdir is empty: name a directory for checkpoints and events')
    path = pathlib.Path(workdir).expanduser().absolute()
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f'.write-test-{os.getpid()}'
        probe.write_bytes(b'x')
        probe.unlink()
    except OSError as e:
        raise CharLMError(f'workdir {path} is not writable: {e.strerror}') from None
    free = shutil.disk_usage(path).free
    if free < min_free_bytes:
        raise CharLMError(f'workdir {path} has only {free >> 20} MiB free; checkpoints need more')
    return path


class Hold:
    """This process's hold on WORKDIR/lock; `release()` (or exiting) frees it."""

    def __init__(self, workdir: pathlib.Path, command: str = 'charlm.main'):
        self.path = pathlib.Path(workdir) / 'lock'
        try:
            self._lock = filelock.FileLock(self.path, command)
        except filelock.Held as e:
            who = filelock.describe(e.holder) if e.holder else 'another process'
            raise CharLMError(f'workdir {self.path.parent} is being trained by {who}: wait for '
                              'it to finish, stop it (Ctrl-C or SIGTERM checkpoints it), or '
                              'use another --workdir') from None
        if self._lock.took_over:
            logging.warning('workdir %s was held by %s, which is gone; taking it over',
                            workdir, filelock.describe(self._lock.took_over))

    def release(self) -> None:
        self._lock.release()


def hold_for_job(workdir: str) -> tuple[pathlib.Path, Hold | None]:
    """Checks the workdir and takes the job's hold on it (process 0, for all hosts).

    Every process learns the outcome before any of them opens a checkpoint, so a refused
    job fails on every host with one line, and never cleans up the holder's saves.
    """
    hold, error = None, None
    try:
        path = check_workdir(workdir)
        if jax.process_index() == 0:
            hold = Hold(path)
    except CharLMError as e:
        error = e
    if jax.process_count() > 1:
        failed = multihost_utils.process_allgather(np.int32(error is not None))
        if np.any(failed) and error is None:
            if hold:
                hold.release()
            error = CharLMError('another process of this job could not start on workdir '
                                f'{workdir} (its error says why)')
    if error is not None:
        raise error
    return path, hold


def saved_steps(directory: pathlib.Path) -> list[int]:
    """The completed saves in a checkpoint folder, from the folder names (orbax writes a
    save as STEP.orbax-checkpoint-tmp-... and renames it to STEP when complete), so bad input
    fails before any checkpoint manager starts its threads."""
    if not directory.is_dir():
        return []
    return sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit() and p.is_dir())


def has_checkpoint(workdir: str) -> bool:
    """True if WORKDIR/checkpoints holds a completed save (no managers are created)."""
    return bool(saved_steps(pathlib.Path(workdir) / 'checkpoints'))


def newest_checkpoint(workdir: str) -> str:
    """The newest completed save, said as a clause for a message that ends a run at once."""
    folder = pathlib.Path(workdir).expanduser().absolute() / 'checkpoints'
    steps = saved_steps(folder)
    if not steps:
        return f'no checkpoint was saved yet in {folder}'
    return (f'the newest complete checkpoint is step {steps[-1]} ({folder}/{steps[-1]}): run '
            'the same command to resume from it')
