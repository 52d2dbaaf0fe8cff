"""Preemption and Ctrl-C during training: finish the step, checkpoint, exit cleanly.

With several processes the stop is agreed on at sync points, so every host stops after
the same step and takes part in the same final save.
"""

from __future__ import annotations

import os
import signal

import jax
import numpy as np
from jax.experimental import multihost_utils

from charlm import workdir as workdir_lib


class StopRequest:
    """SIGTERM (preemption) or Ctrl-C: finish the step, checkpoint, exit cleanly.

    A second Ctrl-C stops the process at once, with one line naming the newest complete
    checkpoint; a save it cuts short is a temporary directory the next start removes.
    Repeated SIGTERMs (a scheduler signalling the process group and a launcher forwarding
    it too) do not cut the checkpoint short.
    """

    def __init__(self, workdir: str = ''):
        self.signal = None
        self._old = {}
        self._workdir = workdir

    def __enter__(self):
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                self._old[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread (a notebook worker): no handler
                pass
        return self

    def _handle(self, signum, frame):
        name = signal.Signals(signum).name
        if self.signal is None:
            self.signal = name
            return
        if signum != signal.SIGINT:
            return
        saved = workdir_lib.newest_checkpoint(self._workdir)
        os.write(2, f'charlm: stopped at once by a second {name}; {saved}\n'.encode())
        os._exit(128 + signum)

    def agreed(self, sync_point: bool) -> bool:
        """Whether to stop after this step. With several processes they must agree on the
        step, so the flag is exchanged at sync points (log steps) only, never per step."""
        if jax.process_count() == 1:
            return self.signal is not None
        if not sync_point:
            return False
        flags = multihost_utils.process_allgather(np.int32(self.signal is not None))
        return bool(np.any(flags))

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)
