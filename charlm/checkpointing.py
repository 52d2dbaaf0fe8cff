"""Orbax checkpoints in the workdir: the train state, the tokenizer and the config.

  WORKDIR/checkpoints/STEP/  the latest `max_to_keep` saves
  WORKDIR/best/STEP/         the one with the lowest validation loss, never deleted

Each save holds 'state' (host arrays, device-count independent), 'tokenizer' and
'config' (JSON), 'meta' (JSON: validation history for best/early stopping) and
'integrity' (JSON: a CRC32 of every saved array, checked at restore, since orbax keeps no
checksum and damaged bytes would otherwise restore silently). Orbax writes a save to a
temporary directory and renames it when complete, so a run killed mid-save leaves the
previous checkpoints as they were and is never restored from half a save. Only the
training run (which holds the workdir) removes such leftovers: a reader (sample,
evaluate) must not delete a save in progress.
"""

from __future__ import annotations

import json
import logging as std_logging
import pathlib
import shutil
import sys
import zlib
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging

from charlm import model as model_lib
from charlm import watchdog
from charlm.errors import CharLMError

_ITEMS = ('state', 'tokenizer', 'config', 'meta', 'integrity')


class DamagedCheckpoint(CharLMError):
    """A save whose arrays or JSON do not read back as written."""


class CheckpointRemoved(CharLMError):
    """A save that the run training the workdir deleted while it was being read."""


def checksums(state: Any, dtypes: dict[str, str] | None = None) -> dict[str, list]:
    """[CRC32 of the bytes, dtype] of each array, keyed by its path in the state tree.

    `dtypes`: the saved dtypes, to checksum a restored leaf as it was saved (a target may
    restore the int32 step as int64).
    """
    out = {}
    for k, v in jax.tree_util.tree_leaves_with_path(state):
        key, v = jax.tree_util.keystr(k), np.asarray(v)
        if dtypes and key in dtypes:
            v = v.astype(dtypes[key])
        out[key] = [zlib.crc32(np.ascontiguousarray(v).tobytes()), str(v.dtype)]
    return out


def _manager(directory: pathlib.Path, max_to_keep: int, create: bool) -> ocp.CheckpointManager:
    # The two managers of a workdir may save the same step at once: their multi-process
    # barriers need distinct names (orbax keys them by step alone).
    options = ocp.CheckpointManagerOptions(
        max_to_keep=max_to_keep, create=create, enable_async_checkpointing=True,
        # A save killed midway is removed when training starts again; readers leave the
        # temporary directory of a save in progress alone.
        cleanup_tmp_directories=create,
        multiprocessing_options=ocp.options.MultiprocessingOptions(
            barrier_sync_key_prefix=directory.name))
    return ocp.CheckpointManager(directory, options=options)


class Checkpoints:
    """The latest and best checkpoints of one workdir."""

    def __init__(self, workdir: str, max_to_keep: int = 3, create: bool = True):
        self.workdir = pathlib.Path(workdir).absolute()
        self.latest = _manager(self.workdir / 'checkpoints', max_to_keep, create)
        self.best = _manager(self.workdir / 'best', 1, create)
        self._in_flight = None  # the step of the last save started

    def _which(self, best: bool) -> ocp.CheckpointManager:
        return self.best if best else self.latest

    def latest_step(self, best: bool = False) -> int | None:
        return self._which(best).latest_step()

    def save(self, step: int, state: Any, tokenizer: dict, config: dict, meta: dict,
             best: bool = False) -> None:
        """Saves host copies asynchronously; the caller may donate `state` right after."""
        self.wait()  # orbax waits for the save before anyway; here its failure is named
        host_state = jax.device_get(state)
        mngr = self._which(best)
        need = sum(np.asarray(x).nbytes for x in jax.tree.leaves(host_state)) + (1 << 20)
        free = shutil.disk_usage(self.workdir).free
        if free < need:  # refuse before writing: every earlier save stays intact
            raise CharLMError(f'the disk of workdir {self.workdir} is full ({free >> 10} KiB '
                              f'free, a checkpoint needs {need >> 10} KiB): the run stopped '
                              f'before saving step {step}; every earlier checkpoint is intact: '
                              'free some space and run the same command to resume')
        args = ocp.args.Composite(
            state=ocp.args.StandardSave(host_state), tokenizer=ocp.args.JsonSave(tokenizer),
            config=ocp.args.JsonSave(config), meta=ocp.args.JsonSave(meta),
            integrity=ocp.args.JsonSave({'crc32': checksums(host_state)}))
        try:
            mngr.save(step, args=args, force=True)
        except Exception as e:
            raise self._save_error(e, step) from None
        self._in_flight = step

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
            raise DamagedCheckpoint(f'checkpoint {mngr.directory}/{step} is unreadable '
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
        where = f'{mngr.directory}/{step}'
        try:
            out = mngr.restore(step, args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract)))
        except Exception as e:  # orbax raises many types for a damaged or mismatched save
            mngr.reload()
            steps = mngr.all_steps()
            if step not in steps or (isinstance(e, FileNotFoundError) and max(steps) > step):
                raise CheckpointRemoved(f'checkpoint {where} was removed while it was read '
                                        '(a run training this workdir keeps only the newest)'
                                        ) from None
            raise DamagedCheckpoint(
                f'cannot restore checkpoint {where}: it is damaged or was '
                f'written by a different model ({type(e).__name__}: '
                f'{str(e).splitlines()[0][:200] if str(e) else ""})') from None
        expected = self._checksums(step, best)
        if expected is not None:
            got = checksums(out['state'], {k: v[1] for k, v in expected.items()})
            bad = [k for k, v in got.items() if expected.get(k) != v]
            if bad:
                raise DamagedCheckpoint(f'checkpoint {where} is damaged: {len(bad)} of its '
                                        f'arrays do not match their checksum ({bad[0]} ...)')
        return out['state']

    def _checksums(self, step: int, best: bool) -> dict[str, list] | None:
        """The CRC32s recorded with a save; None for saves made before they were."""
        mngr = self._which(best)
        if not (mngr.directory / str(step) / 'integrity').exists():
            return None
        try:
            out = mngr.restore(step, args=ocp.args.Composite(integrity=ocp.args.JsonRestore()))
            return {k: list(v) for k, v in out['integrity']['crc32'].items()}
        except Exception as e:
            raise DamagedCheckpoint(f'checkpoint {mngr.directory}/{step} is damaged: its '
                                    f'checksums do not read ({type(e).__name__})') from None

    def set_aside(self, step: int, best: bool = False) -> pathlib.Path:
        """Moves a save out of the way (kept, never deleted) to WORKDIR/set_aside/: a damaged
        one, or a best save newer than the step a run resumes from."""
        mngr = self._which(best)
        dest_dir = self.workdir / 'set_aside'
        dest_dir.mkdir(exist_ok=True)
        dest = dest_dir / f'{mngr.directory.name}-{step}'
        n = 1
        while dest.exists():
            n += 1
            dest = dest_dir / f'{mngr.directory.name}-{step}-{n}'
        shutil.move(str(mngr.directory / str(step)), dest)
        mngr.reload()
        return dest

    def _save_error(self, e: Exception, step: int) -> CharLMError:
        watchdog.confirm_peers()  # a save a dead process broke is reported as that process
        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        full = 'No space left' in str(e) or getattr(e, 'errno', None) == 28
        why = 'the disk is full' if full else f'{type(e).__name__}: {first}'
        return CharLMError(f'could not write the checkpoint of step {step} to workdir '
                           f'{self.workdir}: {why}; the run stopped; every earlier checkpoint '
                           'is intact: fix that and run the same command to resume')

    def restore_state_raw(self, step: int | None = None, best: bool = False) -> Any:
        """The saved state as nested dicts of arrays, without a target (for inspection)."""
        mngr = self._which(best)
        step = mngr.latest_step() if step is None else step
        return mngr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))[
            'state']

    def wait(self) -> None:
        """Waits for the saves in flight; a failed one is a one-line error."""
        try:
            self.latest.wait_until_finished()
            self.best.wait_until_finished()
        except Exception as e:
            raise self._save_error(e, self._in_flight) from None

    def close(self) -> None:
        """Waits for orbax's temporary-directory cleanup thread, which close() does not:
        a command exiting right after would print that thread's shutdown traceback."""
        for mngr in (self.latest, self.best):
            wait = getattr(mngr, '_maybe_await_cleanup_tmp_directory', None)
            if wait is not None:
                wait()
            try:
                mngr.close()
            except Exception:  # a failed save, already reported by save() or wait()
                pass


def resume(ckpts: Checkpoints, restore: Callable[[dict, int], Any]
           ) -> tuple[int | None, dict, Any]:
    """The newest intact latest save, restored: (its step, its JSON, `restore(json, step)`),
    or (None, {}, None) when the workdir has none.

    A damaged save (`restore` raises DamagedCheckpoint) is set aside and the one before it
    tried; so is a best save newer than the step resumed from (a run killed between that
    best save and its next latest one, or a damaged latest one): it is from steps the run
    does again, kept out of the way of its own best saves. Every save damaged is an error.
    """
    damaged, step, saved, restored = [], None, {}, None
    for candidate in sorted(ckpts.latest.all_steps(), reverse=True):
        try:
            saved = ckpts.read_json(candidate)
            restored = restore(saved, candidate)
        except DamagedCheckpoint as e:
            damaged.append((candidate, e))
            continue
        step = candidate
        break
    if damaged and step is None:
        raise CharLMError(f'every checkpoint in {ckpts.workdir}/checkpoints is damaged '
                          f'(newest: {damaged[0][1]}): use a new --workdir')
    for bad_step, e in damaged:  # kept, out of the way of this run's saves
        logging.warning('%s; moved to %s; resuming from step %d instead', e,
                        ckpts.set_aside(bad_step), step)
    for best_step in ckpts.best.all_steps() if step is not None else ():
        if best_step > step:
            logging.warning('best checkpoint of step %d (after step %d) moved to %s',
                            best_step, step, ckpts.set_aside(best_step, best=True))
    return step, (saved if step is not None else {}), restored


def _model_fields(config) -> dict:
    """What fixes the parameter shapes (the vocabulary is checked with the tokenizer)."""
    m = config['model']
    sizes = model_lib.hidden_sizes_from(m['num_layers'], m['hidden_size'], m['hidden_sizes'])
    return {'cell': m['cell'], 'embed_dim': m['embed_dim'], 'hidden_sizes': sizes,
            'tie_embeddings': m.get('tie_embeddings', False),
            'mogrifier_rounds': m.get('mogrifier_rounds', 5) if m['cell'] == 'mogrifier'
            else None,
            'mogrifier_rank': m.get('mogrifier_rank', 0) if m['cell'] == 'mogrifier' else None,
            'softmax': m.get('softmax', 'full'),  # .get: configs saved before the field
            'adaptive_cutoffs': (tuple(m.get('adaptive_cutoffs', ()))
                                 if m.get('softmax', 'full') == 'adaptive' else None),
            'adaptive_div': (m.get('adaptive_div', 4.0)
                             if m.get('softmax', 'full') == 'adaptive' else None)}


def check_same_model(saved: dict, config, workdir) -> None:
    """A workdir remembers its model: a config of another shape (or statefulness) is an
    error before anything is restored or written."""
    old, new = _model_fields(saved), _model_fields(config)
    diff = [f'{k}: {old[k]} in checkpoint, {new[k]} in config' for k in new if old[k] != new[k]]
    was_stateful = saved['data'].get('stateful', False)
    if was_stateful != config.data.stateful:
        diff.append(f'data.stateful: {was_stateful} in checkpoint, {config.data.stateful} in '
                    'config')
    elif was_stateful and saved['batch_size'] != config.batch_size:
        diff.append(f'batch_size (streams of the carried state): {saved["batch_size"]} in '
                    f'checkpoint, {config.batch_size} in config')
    had_ema, has_ema = saved.get('ema_decay', 0.0) > 0, config.get('ema_decay', 0.0) > 0
    if had_ema != has_ema:  # the average is part of the saved state
        diff.append(f'ema_decay: {saved.get("ema_decay", 0.0)} in checkpoint, '
                    f'{config.get("ema_decay", 0.0)} in config (on in one, off in the other)')
    if saved.get('optimizer', 'adam') != config.get('optimizer', 'adam'):  # another state
        diff.append(f'optimizer: {saved.get("optimizer", "adam")} in checkpoint, '
                    f'{config.get("optimizer", "adam")} in config')
    if (saved.get('optimizer', 'adam') == 'adamw'  # a mask changes AdamW's saved state
            and saved.get('weight_decay_on', 'all') != config.get('weight_decay_on', 'all')):
        diff.append(f'weight_decay_on: {saved.get("weight_decay_on", "all")} in checkpoint, '
                    f'{config.get("weight_decay_on", "all")} in config')
    if diff:
        raise CharLMError(f'workdir {workdir} holds a different model ({"; ".join(diff)}): '
                          'use a new --workdir, or the checkpoint\'s settings')


def _ignore_late_reads() -> None:
    """Drops the errors of reads still in flight when a failed restore closes orbax's loop.

    Without this, a damaged checkpoint's one-line error comes, at random, with tracebacks:
    'Event loop is closed' from tensorstore's threads, and asyncio's 'Task exception was
    never retrieved' for the other reads of the damaged save, logged when they are collected.
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
    std_logging.getLogger('asyncio').addFilter(
        lambda record: not str(record.msg).startswith('Task exception was never retrieved'))
