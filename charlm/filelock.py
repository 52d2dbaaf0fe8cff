"""A lock file held by one live process: a training run's workdir, a corpus being prepared.

  lock = filelock.FileLock(path, 'charlm.main')  # raises filelock.Held if a live one holds it
  ...
  lock.release()

The holder takes an exclusive flock on the file for as long as it holds it and writes
its name into it ({"host", "pid", "start", "boot", "heartbeat", ...}). The kernel drops a
flock when its process dies (kill -9 too), so a dead holder on this host never blocks;
its name left in the file is reported as `took_over`. On a shared filesystem whose locks
do not reach other hosts, the holder's heartbeat (the file rewritten every HEARTBEAT_S by
a thread) tells a live holder on another host from a lost one.
"""

from __future__ import annotations

import fcntl
import json
import os
import pathlib
import socket
import threading
import time

HEARTBEAT_S = 15.0
STALE_S = 120.0  # a holder on another host silent this long is taken for lost


class Held(Exception):
    """The lock is held by a live process, named in `holder` ({} if it is not known)."""

    def __init__(self, holder: dict):
        super().__init__(describe(holder) if holder else 'another process')
        self.holder = holder


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
    """Whether the process named in a lock file is gone (its flock was free to take)."""
    now = time.time() if now is None else now
    if holder.get('host') == socket.gethostname() and holder.get('boot') == _boot_id():
        pid = holder.get('pid')
        return (not isinstance(pid, int) or not _alive(pid)
                or _start_time(pid) != holder.get('start'))
    return now - float(holder.get('heartbeat', 0)) > STALE_S


class FileLock:
    """This process's hold on the lock file `path`; `release()` (or exiting) frees it.

    `took_over` is the name a dead holder left in the file ({} if none).
    """

    def __init__(self, path: str | os.PathLike, command: str):
        self.path = pathlib.Path(path)
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = self._read()
            os.close(self._fd)
            raise Held(holder) from None
        holder = self._read()
        if holder and not is_stale(holder):  # a live holder whose flock does not reach here
            os.close(self._fd)
            raise Held(holder)
        self.took_over = holder
        pid = os.getpid()
        self._me = {'host': socket.gethostname(), 'pid': pid, 'start': _start_time(pid),
                    'boot': _boot_id(), 'command': command, 'since': time.time()}
        self._write()
        self._stop = threading.Event()
        self._beat = threading.Thread(target=self._heartbeat, daemon=True,
                                      name=f'lock-{self.path.name}')
        self._beat.start()

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
            except OSError:  # a full disk: the holder itself reports it when it writes
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
