"""Finding a trained run in its workdir: the one way sample, evaluate, gates and compare
read a checkpoint, so `--step` means the same in every command.

  run = runs.find('runs/shakespeare')             # the best checkpoint (else the latest)
  run = runs.find('runs/shakespeare', step=4000)  # step 4000: checkpoints/, else best/
  params = run.params()                           # the arrays, read last

`find` reads only the JSON (tokenizer, config, meta), so bad input fails in a second,
before any array is read or anything compiles. Nothing here writes to the workdir.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import pathlib

import jax
import ml_collections
import numpy as np
from absl import logging

from charlm import activations, checkpointing, interpret, sampler, scoring, steps, tokenizers
from charlm import model as model_lib
from charlm import workdir as workdir_lib
from charlm.errors import CharLMError

STEP_HELP = ('Checkpoint step: step N of WORKDIR/checkpoints (or of WORKDIR/best, if only '
             'there); default: the best checkpoint, else the latest.')


@dataclasses.dataclass
class Run:
    """A checkpoint of a workdir, read without its arrays; `params()` reads those."""

    workdir: pathlib.Path
    step: int
    best: bool  # read from best/ (else checkpoints/)
    config: ml_collections.ConfigDict
    tokenizer: tokenizers.Tokenizer
    model: model_lib.RecurrentLM
    meta: dict

    @property
    def which(self) -> str:
        return 'best' if self.best else 'latest'

    @property
    def where(self) -> str:
        return f'{self.workdir}/{"best" if self.best else "checkpoints"}/{self.step}'

    def describe(self) -> str:
        val = self.meta.get('best_val_loss') if self.best else None
        loss = f', val loss {val:.4f}' if isinstance(val, float) and math.isfinite(val) else ''
        tok = self.tokenizer
        return f'{self.where} ({tok.kind} model, {tok.vocab_size} tokens{loss})'

    @functools.cached_property
    def params(self):
        """The parameters (their moving average where the run kept one), read at first use
        and then kept, on this machine's default device."""
        return jax.device_put(restore_params(str(self.workdir), self.config, self.model,
                                             self.step, self.best))

    # -------------------------------------------------------------- the Python API

    def sample(self, prompt: str = '', length: int = 200, temperature: float = 1.0,
               top_k: int = 0, top_p: float = 1.0, num_samples: int = 1, seed: int = 0,
               start: str = '\n') -> str | list[str]:
        """prompt + a sampled continuation of `length` tokens (a list for num_samples > 1):
        the text `charlm.sample` prints for the same settings and seed. temperature=0 is
        greedy decoding."""
        sampler.check_options(length, temperature, top_k, top_p, num_samples,
                              self.tokenizer.vocab_size)
        texts = sampler.sample_text(self.model, self.params, self.tokenizer, prompt, length,
                                    jax.random.key(seed), start=start, num_samples=num_samples,
                                    temperature=temperature, top_k=top_k, top_p=top_p)
        texts = [prompt + t for t in texts]
        return texts if num_samples > 1 else texts[0]

    def score(self, text: str | bytes, window: int | None = None) -> dict:
        """`charlm.evaluate --json`'s figures for `text` (loss in nats per token,
        bits_per_char or bits_per_byte, perplexity, ...) and 'token_losses': float32[N],
        the loss of each of its N predicted tokens in order. Windows of `window` tokens
        (default: training's), each from a zero state unless the run is stateful."""
        return scoring.score(self, self.params, text, window, token_losses=True)

    def gates(self, text: str, layer: int = 0) -> dict[str, np.ndarray]:
        """Gate activations and state of layer `layer` over `text` (read from a zero state),
        each float32[T, H]: what `charlm.gates` draws."""
        return activations.capture_text(self, text, layer)

    def inspect(self, text: str, max_chars: int = 100_000, max_order: int = 9) -> dict:
        """`charlm.inspect`'s tables for `text` (its first `max_chars` characters), as dicts of
        numpy arrays: 'claims' (gate means by character class, the tutorials' claims tested),
        'units' (units most correlated with text features, one unit against a probe),
        'saturation', 'ngram' (n-grams of orders 1..max_order counted on the run's training
        split), 'page'."""
        return interpret.analyse(self, text, max_chars, max_order=max_order)


def restore_params(workdir: str, config: ml_collections.ConfigDict, model, step: int,
                   best: bool = False):
    """The parameters saved at `step` (host arrays, whatever device count trained them):
    their moving average where the run kept one (config.ema_decay).

    The target's shapes come from tracing create_state, with no compilation.
    """
    carry = config.batch_size if config.data.get('stateful', False) else 0
    shapes = jax.eval_shape(
        lambda: steps.create_state(model, steps.make_optimizer(config), jax.random.key(0), carry,
                                   config.get('ema_decay', 0.0)))
    target = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), shapes)
    ckpts = checkpointing.Checkpoints(workdir, create=False)
    try:
        for _ in range(3):
            try:
                return ckpts.restore_state(target, step, best=best).eval_params()
            except checkpointing.CheckpointRemoved as e:
                # The run training this workdir replaced it (the best, or the oldest of
                # the latest saves): read its successor, the newest of the same kind.
                ckpts._which(best).reload()
                newest = ckpts.latest_step(best)
                if newest is None or newest == step:
                    raise
                logging.warning('%s; reading step %d instead', e, newest)
                step = newest
        raise checkpointing.CheckpointRemoved(f'the checkpoints of {workdir} change faster '
                                              'than they can be read: try again')
    finally:
        ckpts.close()


def find(workdir: str, step: int | None = None) -> Run:
    """The best checkpoint of `workdir` (the latest if none is best yet), or step `step`."""
    path = pathlib.Path(workdir).expanduser().absolute()
    hint = f'train one first: python -m charlm.main --config=... --workdir={workdir}'
    if not str(workdir).strip():
        raise CharLMError('--workdir is empty: name a training workdir')
    if not path.is_dir():
        raise CharLMError(f'workdir {path} does not exist ({hint})')
    for _ in range(3):
        latest = workdir_lib.saved_steps(path / 'checkpoints')
        best = workdir_lib.saved_steps(path / 'best')
        if not latest and not best:
            raise CharLMError(f'no checkpoint in {path} ({hint})')
        if step is None:
            use_best, chosen = bool(best), max(best) if best else max(latest)
        elif step in latest or step in best:
            use_best, chosen = step not in latest, step
        else:
            have = ', '.join(map(str, sorted(set(latest) | set(best))))
            raise CharLMError(f'no checkpoint of step {step} in {path}; saved steps: {have}')
        ckpts = checkpointing.Checkpoints(str(path), create=False)
        try:
            saved = ckpts.read_json(chosen, best=use_best)
            break
        except checkpointing.DamagedCheckpoint:
            # A run training this workdir may have replaced that save while it was read
            # (the best, or the oldest latest one): look again; a save still there is damaged.
            if (path / ('best' if use_best else 'checkpoints') / str(chosen)).is_dir():
                raise
        finally:
            ckpts.close()  # waits for orbax's threads too
    else:
        raise CharLMError(f'the checkpoints of {path} change faster than they can be read: '
                          'try again')
    step = chosen
    try:
        tokenizer = tokenizers.from_json(saved['tokenizer'])
        config = ml_collections.ConfigDict(saved['config'])
        model = steps.make_model(config, tokenizer.vocab_size, portable=True)
    except CharLMError:
        raise
    except (KeyError, TypeError, AttributeError, ValueError) as e:
        raise CharLMError(f'checkpoint {path}/{step} is unreadable: its tokenizer or config is '
                          f'damaged or from another charlm version ({type(e).__name__}: {e})'
                          ) from None
    return Run(path, int(step), use_best, config, tokenizer, model, saved.get('meta') or {})
