"""Noticing a process of a multi-process job that stopped answering.

JAX's own heartbeat ends the survivors from C++ (a page of traces, after 100 s by default).
Here every process beats in the job's key-value store (held by process 0's coordination
service) from daemon threads, never from the training loop: a long compile, evaluation or
save is not silence, and a collective blocked on a dead peer releases the GIL. A peer whose
beat has not changed for `timeout_s`, or a store that has not answered for that long
(process 0 is gone), stops this process with one line naming it and the newest complete
checkpoint, exit code 1. A process that leaves (exits, by any path) says so first, so its
peers do not take its leaving for death. JAX's heartbeat is set longer, so this one speaks
first (`distributed.initialize`).
"""

from __future__ import annotations

import atexit
import os
import sys
import threading
import time

from charlm import jax_private
from charlm import workdir as workdir_lib

_PREFIX = 'charlm/watchdog/'
_current: Watchdog | None = None


def period_s(timeout_s: float) -> float:
    """How often a process beats and judges."""
    return min(2.0, max(0.2, timeout_s / 10))


def longest_s(timeout_s: float) -> float:
    """The longest a dead process goes unnoticed: its last beat may be a period old when
    read, and the judge looks once a period."""
    return timeout_s + 2 * period_s(timeout_s)


class Watchdog:
    """Beats for this process and judges its peers' beats; see the module docstring."""

    def __init__(self, client, process_id: int, num_processes: int, timeout_s: float,
                 workdir: str):
        self.client, self.me, self.timeout_s, self.workdir = client, process_id, timeout_s, workdir
        self.num_processes = num_processes
        self.peers = [p for p in range(num_processes) if p != process_id]
        self.period_s = period_s(timeout_s)
        now = time.monotonic()
        self._lock = threading.Lock()
        self._beats: dict[int, int] = {}  # the last beat read from each peer
        self._heard = dict.fromkeys(self.peers, now)  # when each peer's beat last changed
        self._left: set[int] = set()
        self._store_ok = now  # when the store last answered
        self._stop = threading.Event()
        self._beating: threading.Thread | None = None

    def start(self) -> Watchdog:
        self._beating = threading.Thread(target=self._beat, name='charlm-watchdog-beat',
                                         daemon=True)
        self._beating.start()
        threading.Thread(target=self._judge, name='charlm-watchdog', daemon=True).start()
        atexit.register(self.leave)  # after JAX's atexit, so it runs before JAX's shutdown
        previous = sys.excepthook

        def excepthook(kind, value, tb):
            if not issubclass(kind, KeyboardInterrupt):
                self.confirm_peers()  # a dead peer's error is reported as the peer, not this
            previous(kind, value, tb)

        sys.excepthook = excepthook
        return self

    def _beat(self) -> None:
        n = 0
        while not self._stop.is_set():
            n += 1
            try:
                self.client.key_value_set(f'{_PREFIX}beat/{self.me}', str(n), allow_overwrite=True)
                entries = self.client.key_value_dir_get(_PREFIX)
            except Exception:  # the store did not answer: the judge counts for how long
                self._stop.wait(self.period_s)
                continue
            self._merge(entries)
            self._stop.wait(self.period_s)

    def _merge(self, entries: list[tuple[str, str]]) -> dict[int, int]:
        """Takes in the store's entries (only newer beats: reads may finish out of order);
        returns the peers' beats they hold."""
        now, beats = time.monotonic(), {}
        with self._lock:
            self._store_ok = now
            for key, value in entries:
                kind, _, who = key[len(_PREFIX):].partition('/')
                peer = int(who) if who.isdigit() else -1
                if peer not in self._heard:
                    continue
                if kind == 'left':
                    self._left.add(peer)
                elif value.isdigit():
                    beats[peer] = int(value)
                    if beats[peer] > self._beats.get(peer, 0):
                        self._beats[peer], self._heard[peer] = beats[peer], now
        return beats

    def _judge(self) -> None:
        while not self._stop.wait(self.period_s):
            if jax_private.distributed_client() is not self.client:  # JAX has shut down
                self._stop.set()
                return
            silent, gone = self.silent()
            if silent:
                self.stop_the_process(silent, gone)
            if len(self._left) == len(self.peers):  # every peer ended normally
                self._stop.set()

    def silent(self) -> tuple[list[int], float]:
        """The processes that stopped answering, and for how long (none: [])."""
        now = time.monotonic()
        with self._lock:
            if now - self._store_ok > self.timeout_s:  # the store is process 0's
                return [0], now - self._store_ok
            late = [p for p, t in self._heard.items()
                    if p not in self._left and now - t > self.timeout_s]
            return late, max((now - self._heard[p] for p in late), default=0.0)

    def stop_the_process(self, silent: list[int], gone_s: float) -> None:
        """One line on stderr and exit code 1, at once: nothing this process waits on will
        come (JAX would abort it with a page of traces later)."""
        if silent == [0] and self.me == 0:
            who = 'the coordination service of this job (process 0 holds it)'
        else:
            who = ('process ' if len(silent) == 1 else 'processes ') + ', '.join(map(str, silent))
            who += f' of {self.num_processes}'
        saved = workdir_lib.newest_checkpoint(self.workdir)
        line = (f'charlm: error: {who} stopped answering (silent for {gone_s:.0f}s, '
                f'--heartbeat_timeout={self.timeout_s:g}: killed, crashed or its host is down), '
                f'so process {self.me} stops too; {saved}\n')
        os.write(2, line.encode())
        os._exit(1)

    def confirm_peers(self) -> None:
        """Returns once every peer has beaten since the call (or left); if one is dead, the
        judge stops the process first. Called before an error that a dead peer may cause."""
        if self._stop.is_set():
            return
        try:  # the store now: a dead peer's last beat may not have been read yet
            marks = self._merge(self.client.key_value_dir_get(_PREFIX))
        except Exception:  # the store is gone too: the judge will say so
            with self._lock:
                marks = dict(self._beats)
        deadline = time.monotonic() + self.timeout_s + 3 * self.period_s
        while time.monotonic() < deadline and not self._stop.is_set():
            with self._lock:
                if all(p in self._left or self._beats.get(p, 0) > marks.get(p, 0)
                       for p in self.peers):
                    return
            time.sleep(self.period_s / 2)

    def leave(self) -> None:
        """Tells the peers this process ends normally and waits (at most `timeout_s`, still
        judging) until they have said the same; then stops beating and waits for the beating
        thread. A daemon thread still inside the store's client when the interpreter ends is
        ended there, and jaxlib aborts the process ("FATAL: exception not rethrown")."""
        try:
            self.client.key_value_set(f'{_PREFIX}left/{self.me}', '1', allow_overwrite=True)
        except Exception:  # the store is gone: the judge says so, or the process ends first
            pass
        deadline = time.monotonic() + self.timeout_s
        while time.monotonic() < deadline and not self._stop.is_set():
            with self._lock:
                if len(self._left) == len(self.peers):
                    break
            time.sleep(self.period_s / 4)
        self._stop.set()
        if self._beating is not None:
            self._beating.join(self.timeout_s)

def start(client, process_id: int, num_processes: int, timeout_s: float, workdir: str) -> None:
    """Starts this process's watchdog (once; a single-process run has none)."""
    global _current
    if _current is None and num_processes > 1:
        _current = Watchdog(client, process_id, num_processes, timeout_s, workdir).start()


def confirm_peers() -> None:
    """Before reporting an error a dead peer may have caused (a failed collective or save):
    waits until every peer is known alive, or this process has been stopped naming the dead."""
    if _current is not None:
        _current.confirm_peers()
