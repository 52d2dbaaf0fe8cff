"""Orbax checkpoints in the workdir: the train state, the tokenizer and the config.

  WORKDIR/checkpoints/STEP/  the latest `max_to_keep` saves
  WORKDIR/best/STEP/         the one with the lowest validation loss, never deleted

Each save holds 'state' (host arrays, device-count independent), 'tokenizer' and
'config' (JSON), and 'meta' (JSON: validation history for best/early stopping). Orbax
writes a save to a temporary directory and renames it when complete, so a run killed
mid-save leaves the previous checkpoints as they were and is never restored from half
a save.
"""

from __future__ import annotations

import json
import pathlib
import sys
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from charlm.errors import CharLMError

_ITEMS = ('state', 'tokenizer', 'config', 'meta')


def _manager(directory: pathlib.Path, max_to_keep: int, create: bool) -> ocp.CheckpointManager:
    # The two managers of a workdir may save the same step at once: their multi-process
    # barriers need distinct names (orbax keys them by step alone).
    options = ocp.CheckpointManagerOptions(
        max_to_keep=max_to_keep, create=create, enable_async_checkpointing=True,
        cleanup_tmp_directories=True,  # a save killed midway is removed at the next start
        multiprocessing_options=ocp.options.MultiprocessingOptions(
            barrier_sync_key_prefix=directory.name))
    return ocp.CheckpointManager(directory, options=options)


class Checkpoints:
    """The latest and best checkpoints of one workdir."""

    def __init__(self, workdir: str, max_to_keep: int = 3, create: bool = True):
        self.workdir = pathlib.Path(workdir).absolute()
        self.latest = _manager(self.workdir / 'checkpoints', max_to_keep, create)
        self.best = _manager(self.workdir / 'best', 1, create)

    def _which(self, best: bool) -> ocp.CheckpointManager:
        return self.best if best else self.latest

    def latest_step(self, best: bool = False) -> int | None:
        return self._which(best).latest_step()

    def save(self, step: int, state: Any, tokenizer: dict, config: dict, meta: dict,
             best: bool = False) -> None:
        """Saves host copies asynchronously; the caller may donate `state` right after."""
        host_state = jax.device_get(state)
        args = ocp.args.Composite(
            state=ocp.args.StandardSave(host_state), tokenizer=ocp.args.JsonSave(tokenizer),
            config=ocp.args.JsonSave(config), meta=ocp.args.JsonSave(meta))
        self._which(best).save(step, args=args, force=True)

    def read_json(self, step: int | None = None, best: bool = False) -> dict[str, dict]:
        """The tokenizer, config and meta of a checkpoint, without its arrays."""
        mngr = self._which(best)
        step = mngr.latest_step() if step is None else step
        if step is None:
            raise CharLMError(f'no checkpoint in {mngr.directory}')
        try:
            out = mngr.restore(step, args=ocp.args.Composite(
                tokenizer=ocp.args.JsonRestore(), config=ocp.args.JsonRestore(),
                meta=ocp.args.JsonRestore()))
        except (FileNotFoundError, ValueError, KeyError, json.JSONDecodeError) as e:
            raise CharLMError(f'checkpoint {mngr.directory}/{step} is unreadable '
                              f'({type(e).__name__}: {str(e).splitlines()[0][:200]})') from None
        return {k: out[k] for k in ('tokenizer', 'config', 'meta')}

    def restore_state(self, target: Any, step: int | None = None, best: bool = False) -> Any:
        """The state saved at `step` (default: newest), shaped like `target` (host arrays)."""
        mngr = self._which(best)
        step = mngr.latest_step() if step is None else step
        if step is None:
            raise CharLMError(f'no checkpoint in {mngr.directory}')
        abstract = jax.tree.map(lambda x: np.zeros(np.shape(x), np.asarray(x).dtype), target)
        _ignore_late_reads()
        try:
            out = mngr.restore(step, args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract)))
        except Exception as e:  # orbax raises many types for a damaged or mismatched save
            raise CharLMError(
                f'cannot restore checkpoint {mngr.directory}/{step}: it is damaged or was '
                f'written by a different model ({type(e).__name__}: '
                f'{str(e).splitlines()[0][:200] if str(e) else ""})') from None
        return out['state']

    def restore_state_raw(self, step: int | None = None, best: bool = False) -> Any:
        """The saved state as nested dicts of arrays, without a target (for inspection)."""
        mngr = self._which(best)
        step = mngr.latest_step() if step is None else step
        return mngr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))[
            'state']

    def wait(self) -> None:
        self.latest.wait_until_finished()
        self.best.wait_until_finished()

    def close(self) -> None:
        """Waits for orbax's temporary-directory cleanup thread, which close() does not:
        a command exiting right after would print that thread's shutdown traceback."""
        for mngr in (self.latest, self.best):
            wait = getattr(mngr, '_maybe_await_cleanup_tmp_directory', None)
            if wait is not None:
                wait()
            mngr.close()


def has_checkpoint(workdir: str) -> bool:
    """True if WORKDIR/checkpoints holds a completed save (no managers are created)."""
    d = pathlib.Path(workdir) / 'checkpoints'
    return d.is_dir() and any(p.name.isdigit() for p in d.iterdir())


def _ignore_late_reads() -> None:
    """Drops the errors of reads still in flight when a failed restore closes orbax's loop.

    Without this, a damaged checkpoint's one-line error comes, at random, with tracebacks
    ('Event loop is closed') that tensorstore's threads print.
    """
    if getattr(sys.excepthook, '_charlm', False):
        return

    def closed_loop(exc) -> bool:
        return isinstance(exc, RuntimeError) and 'Event loop is closed' in str(exc)

    excepthook, unraisablehook = sys.excepthook, sys.unraisablehook

    def hook(t, e, tb):
        return None if closed_loop(e) else excepthook(t, e, tb)

    hook._charlm = True
    sys.excepthook = hook
    sys.unraisablehook = lambda u: None if closed_loop(u.exc_value) else unraisablehook(u)
