"""The training workdir: checked before a run starts, and held by one run at a time.

  WORKDIR/lock  who trains here now: {"host", "pid", "start", "boot", "heartbeat", ...}

A run holds an exclusive flock on the lock file for its whole life and writes itself
into it, so a second run on the same workdir is refused with the holder's name. The
kernel drops a flock when its process dies (kill -9 too), so a dead holder on this
host never blocks the workdir; its name left in the file only earns a warning. On a
shared filesystem whose locks do not reach other hosts, the holder's heartbeat (the
file rewritten every HEARTBEAT_S) tells a live run on another host from a lost one.
Read-only commands (sample, evaluate, gates, plot) never take the hold.
"""

from __future__ import annotations

import fcntl
import json
import os
import pathlib
import shutil
import socket
import threading
import time

import jax
import numpy as np
from absl import logging
from jax.experimental import multihost_utils

from charlm.errors import CharLMError

HEARTBEAT_S = 15.0
STALE_S = 120.0  # a holder on another host silent this long is taken for lost


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


def _boot_id() -> str:
    try:
        return pathlib.Path('/proc/sys/kernel/random/boot_id').read_text().strip()
    except OSError:
        return ''


def _start_time(pid: int) -> str:
    """The process's start time since boot (clock ticks), to tell a reused pid apart."""
    try:
        stat = pathlib.Path(f'/proc/{pid}/stat').read_text()
        return stat.rsplit(')', 1)[1].split()[19]
    except (OSError, IndexError):
        return ''


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def describe(holder: dict) -> str:
    return f'pid {holder.get("pid", "?")} on {holder.get("host", "?")}'


def is_stale(holder: dict, now: float | None = None) -> bool:
    """Whether the run named in the lock file is gone (its flock was free to take)."""
    now = time.time() if now is None else now
    if holder.get('host') == socket.gethostname() and holder.get('boot') == _boot_id():
        pid = holder.get('pid')
        return (not isinstance(pid, int) or not _alive(pid)
                or _start_time(pid) != holder.get('start'))
    return now - float(holder.get('heartbeat', 0)) > STALE_S


class Hold:
    """This process's hold on WORKDIR/lock; `release()` (or exiting) frees it."""

    def __init__(self, workdir: pathlib.Path, command: str = 'charlm.main'):
        self.path = pathlib.Path(workdir) / 'lock'
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = self._read()
            os.close(self._fd)
            raise CharLMError(self._refusal(holder)) from None
        holder = self._read()
        if holder and not is_stale(holder):  # a live run whose flock does not reach here
            os.close(self._fd)
            raise CharLMError(self._refusal(holder))
        if holder:
            logging.warning('workdir %s was held by %s, which is gone; taking it over',
                            workdir, describe(holder))
        pid = os.getpid()
        self._me = {'host': socket.gethostname(), 'pid': pid, 'start': _start_time(pid),
                    'boot': _boot_id(), 'command': command, 'since': time.time()}
        self._write()
        self._stop = threading.Event()
        self._beat = threading.Thread(target=self._heartbeat, daemon=True, name='workdir-hold')
        self._beat.start()

    def _refusal(self, holder: dict) -> str:
        who = describe(holder) if holder else 'another process'
        return (f'workdir {self.path.parent} is being trained by {who}: wait for it to '
                'finish, stop it (Ctrl-C or SIGTERM checkpoints it), or use another --workdir')

    def _read(self) -> dict:
        try:
            raw = os.pread(self._fd, 4096, 0)
            holder = json.loads(raw) if raw.strip() else {}
            return holder if isinstance(holder, dict) else {'raw': True}
        except (OSError, ValueError):
            return {'raw': True}  # half-written by a dying holder: stale unless flocked

    def _write(self, clear: bool = False) -> None:
        raw = b'' if clear else json.dumps(self._me | {'heartbeat': time.time()}).encode()
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, raw, 0)
        os.fsync(self._fd)

    def _heartbeat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            try:
                self._write()
            except OSError:  # a full disk: the run itself reports it at its next save
                pass

    def release(self) -> None:
        if self._fd < 0:
            return
        self._stop.set()
        self._beat.join()
        try:
            self._write(clear=True)  # a clean exit leaves no name behind to warn about
        except OSError:
            pass
        os.close(self._fd)  # drops the flock
        self._fd = -1


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
