"""The train_and_evaluate loop: start or resume, train, evaluate, save, stop.

  train_and_evaluate       hold the workdir, run `_train_and_evaluate`, release it
    restore_or_init        the newest intact checkpoint (`checkpointing.resume`), or a fresh
                           state; the corpus and model either way
    Trainer                one run in progress: its state, step and saved metadata
      .run                 the loop: a step, then what is `due` (log, evaluate, save, stop)
      .flush_metrics       the train loss since the last log, to TensorBoard and the console
      .evaluate_and_track  the val loss, samples, the best checkpoint, early stopping

The model, optimizer, state and pmapped steps come from `charlm.steps`.
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging
from flax import jax_utils

from charlm import checkpointing, data, metric_writer, preemption, steps, tokenizers
from charlm import model as model_lib
from charlm import workdir as workdir_lib
from charlm.errors import CharLMError, Stopped


def check_config(config: ml_collections.ConfigDict) -> None:
    """One-line errors for settings that would fail (or lose checkpoints) mid-run."""
    positive = {'batch_size': config.batch_size, 'eval_batch_size': config.eval_batch_size,
                'num_train_steps': config.num_train_steps, 'max_to_keep': config.max_to_keep,
                'log_every_steps': config.log_every_steps,
                'eval_every_steps': config.eval_every_steps,
                'checkpoint_every_steps': config.checkpoint_every_steps,
                'data.seq_len': config.data.seq_len, 'model.embed_dim': config.model.embed_dim}
    max_tokens = config.get('eval_max_tokens', 0)
    if not isinstance(max_tokens, int) or max_tokens < 0:
        raise CharLMError('eval_max_tokens must be a number of tokens >= 0 (0: the whole val '
                          f'split), got {max_tokens!r}')
    for name, value in positive.items():
        if not isinstance(value, int) or value < 1:
            raise CharLMError(f'{name} must be a positive integer, got {value!r}')
    if not config.learning_rate >= 0:  # 0 is allowed: a frozen model (tests use it)
        raise CharLMError(f'learning_rate must be >= 0, got {config.learning_rate!r}')
    optimizer, weight_decay = config.get('optimizer', 'adam'), config.get('weight_decay', 0.0)
    if optimizer not in ('adam', 'adamw'):
        raise CharLMError(f"unknown optimizer {optimizer!r}: use 'adam' or 'adamw'")
    if not weight_decay >= 0:
        raise CharLMError(f'weight_decay must be >= 0, got {weight_decay!r}')
    if config.get('weight_decay_on', 'all') not in steps.DECAY_ON:
        raise CharLMError(f"unknown weight_decay_on {config.weight_decay_on!r}: use 'all' or "
                          "'kernels'")
    if weight_decay and optimizer != 'adamw':
        raise CharLMError(f'weight_decay={weight_decay} needs --config.optimizer=adamw (Adam '
                          'would ignore it)')
    if not 0 <= steps.adam_b2(config) < 1:
        raise CharLMError(f'adam_b2 must be in [0, 1), got {config.adam_b2!r}')
    if not 0 <= config.get('ema_decay', 0.0) < 1:
        raise CharLMError(f'ema_decay must be in [0, 1) (0 = off), got {config.ema_decay!r}')
    for name in ('dropout_rate', 'weight_drop', 'embed_dropout'):
        value = config.model.get(name, 0.0)
        if not 0 <= value < 1:
            raise CharLMError(f'model.{name} must be in [0, 1), got {value!r}')
    # the cell, impl, rounds, sizes, output layer: before the corpus is read (the cutoffs
    # are checked against the vocabulary once it is known)
    cutoffs = [c for c in config.model.get('adaptive_cutoffs', ()) if isinstance(c, int)]
    steps.make_model(config, 2 + max(cutoffs or [0]))


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       stop_at: int | None = None) -> dict[str, Any]:
    """Trains (resuming from WORKDIR if it holds a checkpoint) and returns final metrics.

    `stop_at` ends this call after that step with a checkpoint, as a preemption would;
    calling again resumes exactly (a notebook can train in pieces). A SIGTERM or Ctrl-C
    also ends it with a checkpoint, then raises `errors.Stopped`, so the caller stops too
    (the commands exit 0; a loop over runs does not start the next one).
    """
    check_config(config)
    path, hold = workdir_lib.hold_for_job(workdir)
    try:
        return _train_and_evaluate(config, str(path), stop_at)
    finally:
        if hold:
            hold.release()


def _train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                        stop_at: int | None) -> dict[str, Any]:
    init_key, train_key, sample_key = jax.random.split(jax.random.key(config.seed), 3)
    start = restore_or_init(config, workdir, init_key)
    trainer = Trainer(config, workdir, start, train_key, sample_key)
    try:  # pending saves finish and orbax closes even on an error (divergence)
        stop_reason, signalled = trainer.run(stop_at)
    finally:
        trainer.close()
    if stop_reason and jax.process_index() == 0:
        logging.info('%s', stop_reason)
    last = trainer.last | {'best_val_loss': trainer.meta['best_val_loss'],
                           'best_step': trainer.meta['best_step'], 'stop_reason': stop_reason}
    metric_writer.log_hparams(workdir, config, last)  # TensorBoard's HParams row of this run
    if signalled:
        raise Stopped(stop_reason, last)
    return last


# ------------------------------------------------------------------ starting or resuming


@dataclasses.dataclass
class Start:
    """What a run starts from: its corpus and model, and a fresh or restored state."""

    corpus: data.Corpus
    model: model_lib.RecurrentLM
    state: steps.TrainState  # on the host
    meta: dict  # the restored save's metadata ({} when fresh)
    resumed: bool


def _setup(config, init_key, saved_tokenizer) -> tuple[data.Corpus, Any, steps.TrainState]:
    """The corpus (tokenized with the saved tokenizer when resuming), model and fresh state."""
    corpus = data.load_corpus(config, saved_tokenizer)
    tok = corpus.tokenizer
    model = steps.make_model(config, tok.vocab_size)  # the cutoffs against the vocabulary
    if model.softmax == 'adaptive' and tok.kind == 'char' and not tok.folds:
        raise CharLMError("model.softmax='adaptive' needs ids ordered by frequency, and a "
                          'char vocabulary is in code-point order unless it folds rare '
                          'characters: set data.max_vocab (e.g. the vocabulary size, '
                          f'{tok.vocab_size}, to keep every character) or data.min_count')
    if config.sample.prompts and config.sample.length > 0:  # else: no samples are drawn
        from charlm import sampler
        s = config.sample
        sampler.check_options(s.length, s.temperature, s.top_k, s.top_p, 1, tok.vocab_size)
    stateful = config.data.stateful
    if stateful:
        data.stream_steps(len(corpus.tokens['train']), config.data.seq_len, config.batch_size)
    fresh = steps.create_state(model, steps.make_optimizer(config), init_key,
                               config.batch_size if stateful else 0, config.get('ema_decay', 0.0))
    return corpus, model, fresh


def restore_or_init(config: ml_collections.ConfigDict, workdir: str, init_key) -> Start:
    """The newest intact checkpoint of `workdir` (its model checked against `config`), or a
    fresh state when there is none."""
    made = []  # set up once, from the first save read: its tokenizer is the run's

    def restore(saved: dict, step: int):
        if not made:
            checkpointing.check_same_model(saved['config'], config, workdir)
            made.append(_setup(config, init_key, tokenizers.from_json(saved['tokenizer'])))
        return ckpts.restore_state(made[0][2], step)

    ckpts = checkpointing.Checkpoints(workdir, config.max_to_keep, create=False)
    try:  # closed on every path: an error here must not race orbax threads at exit
        step, saved, restored = checkpointing.resume(ckpts, restore)
    finally:
        ckpts.close()
    corpus, model, fresh = made[0] if made else _setup(config, init_key, None)
    if step is not None:
        logging.info('Resuming from %s/checkpoints/%d', workdir, step)
    if jax.process_index() == 0:
        logging.info('Model:\n%s', model_lib.summary(model, fresh.params))
    return Start(corpus, model, fresh if step is None else restored,
                 saved.get('meta') or {}, step is not None)


# ------------------------------------------------------------------ the loop


@dataclasses.dataclass(frozen=True)
class Due:
    """What the loop does after a step."""

    log: bool
    eval: bool
    save: bool
    end: bool


def due(step: int, config: ml_collections.ConfigDict) -> Due:
    """The schedule after step `step` (1-based): an eval and a save at the last step; a
    log line at every eval and save too, so their losses are logged with them."""
    end = step == config.num_train_steps
    do_eval = step % config.eval_every_steps == 0 or end
    do_save = step % config.checkpoint_every_steps == 0 or end
    return Due(step % config.log_every_steps == 0 or do_eval or do_save, do_eval, do_save, end)


class Trainer:
    """One run in progress: the state on the devices, its step, the metadata saved with
    every checkpoint (best val loss and step, evals since), and the train-loss window."""

    def __init__(self, config, workdir: str, start: Start, train_key, sample_key):
        self.config, self.workdir, self.is_main = config, workdir, jax.process_index() == 0
        self.corpus, self.model, self.tok = start.corpus, start.model, start.corpus.tokenizer
        self.train_key, self.sample_key = train_key, sample_key
        self.layout = data.Layout(config.batch_size, jax.device_count(),
                                  jax.local_device_count(), jax.process_index())
        self.eval_layout = data.eval_layout(config.eval_batch_size)
        self.steps = steps.parallel_steps(self.model)
        self.step = int(start.state.step)
        self.state = steps.to_devices(start.state, self.layout)
        self.meta = {'best_val_loss': math.inf, 'best_step': -1, 'evals_since_best': 0
                     } | start.meta
        # The train loss logged at a step averages the steps since the last log step of
        # the schedule. A run stopped between two logs saves that partial window in meta,
        # so the run that resumes logs the same values as one never stopped.
        self.log_window = self.meta.pop('log_window', None) or {'nll': 0.0, 'count': 0.0}
        self.last = {'step': self.step}
        self.pending, self.t_last, self.step_last = [], time.perf_counter(), self.step
        self.ckpts = checkpointing.Checkpoints(workdir, config.max_to_keep, create=True)
        self.writer = metric_writer.MetricWriter(
            workdir, purge_step=self.step + 1 if start.resumed else None)
        self.progress = metric_writer.Progress(config.num_train_steps, self.step)
        self.schedule = steps.make_schedule(config, np)
        self.unit = tokenizers.plural_unit(self.tok.kind)
        self.per = tokenizers.text_unit(self.tok.kind)  # bits per char, or per byte
        self.n_val = len(self.corpus.tokens['val']) - 1
        max_tokens = config.get('eval_max_tokens', 0)
        if max_tokens and max_tokens < self.n_val and self.is_main:
            logging.info('evaluation: %s of the %s val targets, in evenly spread windows '
                         '(eval_max_tokens=%d); charlm.evaluate scores the whole split',
                         f'~{max_tokens:,}', f'{self.n_val:,}', max_tokens)

    def run(self, stop_at: int | None) -> tuple[str | None, bool]:
        """Steps until the end, early stopping, a signal or `stop_at`: (why it stopped,
        whether a signal stopped it)."""
        config, signalled = self.config, False
        # Stopped early before: the same command again (a re-queued job, a rerun
        # comparison) keeps it stopped; a larger patience trains on.
        stop_reason = self.early_stopping() if self.step < config.num_train_steps else None
        if stop_reason:
            stop_reason = (f'already stopped at step {self.step} by {stop_reason} (raise '
                           'config.early_stopping_patience to train on)')
        with preemption.StopRequest(self.workdir) as stop:
            while self.step < config.num_train_steps and not stop_reason:
                self.train_step()
                now = due(self.step, config)
                stopping = stop.agreed(now.log) or (
                    stop_at is not None and self.step >= stop_at and not now.end)
                if now.log or stopping:
                    self.flush_metrics(now.log)  # also the NaN check before anything is saved
                if now.eval:
                    stop_reason = self.evaluate_and_track()
                    # A signal that came during the evaluation: every process evaluated, so
                    # this is a point where they can agree to stop.
                    stopping = stopping or stop.agreed(True)
                if stopping:  # a signal (here or on another process) or the caller's stop_at
                    signalled = stop.signal is not None or stop_at is None or (
                        self.step < stop_at)
                    why = stop.signal or ('a signal to another process' if signalled
                                          else f'stop_at={stop_at}')
                    stop_reason = (f'stopped by {why} at step {self.step}; checkpoint saved: '
                                   'run the same command to resume')
                if now.save or stop_reason:
                    self.save()
                    self.writer.flush()
        return stop_reason, signalled

    def train_step(self) -> None:
        """One pmapped step, dispatched; its metrics fetched at the next log."""
        config, step = self.config, self.step
        if config.data.stateful:
            batch = data.stateful_train_batch(self.corpus.tokens['train'], config.data.seq_len,
                                              step, self.layout)
        else:
            batch = data.train_batch(self.corpus.tokens['train'], config.data.seq_len, step,
                                     config.seed, self.layout)
        self.state, metrics = self.steps.train(self.state, batch, self.train_key)
        self.step += 1
        self.pending.append(metrics)
        if len(self.pending) > steps.MAX_IN_FLIGHT:  # never an unbounded queue of pmeans
            self.pending[-steps.MAX_IN_FLIGHT - 1]['count'].block_until_ready()

    def save(self, best: bool = False) -> None:
        window = self.log_window
        meta = self.meta | ({'log_window': window} if window['count'] else {})
        self.ckpts.save(self.step, steps.to_host(self.state), self.tok.to_json(),
                        self.config.to_dict(), meta, best=best)

    def check_finite(self, loss: float, split: str) -> None:
        if not math.isfinite(loss):
            newest = self.ckpts.latest_step()
            where = (f'the checkpoints up to step {newest} (saved before the divergence) are '
                     f'kept in {self.workdir}' if newest is not None
                     else 'no checkpoint was written')
            raise CharLMError(f'training diverged: {split} loss is {loss} at step {self.step}; '
                              f'{where}; lower learning_rate or grad_clip_norm')

    def flush_metrics(self, scheduled: bool = True) -> None:
        """Logs the steps since the last log; `scheduled=False` (a stop) keeps the window."""
        if not self.pending:
            return
        fetched = jax.device_get(self.pending)
        nll, count = self.log_window['nll'], self.log_window['count']
        for m in fetched:  # one step at a time: the same sums whether or not it was stopped
            nll += float(m['nll_sum'][0])
            count += float(m['count'][0])
        self.log_window = {'nll': nll, 'count': count}  # new: a save may hold the old one
        loss = nll / count
        self.check_finite(loss, 'train')
        now, step = time.perf_counter(), self.step
        tokens = self.config.batch_size * self.config.data.seq_len * (step - self.step_last)
        rate = tokens / (now - self.t_last)
        self.writer.scalars(step, {
            'train/loss': loss, 'train/bits_per_token': loss / steps.LN2,
            'train/grad_norm': float(fetched[-1]['grad_norm'][0]),
            'train/learning_rate': float(self.schedule(step - 1)),
            f'train/{self.unit}_per_second': rate})
        self.progress.log(step, loss, rate, self.unit)
        self.last.update(step=step, train_loss=loss)
        self.pending, self.t_last, self.step_last = [], now, step
        if scheduled:
            self.log_window = {'nll': 0.0, 'count': 0.0}

    def evaluate_and_track(self) -> str | None:
        """Validation loss, samples, the best checkpoint; an early-stopping reason or None."""
        config, per, step, t0 = self.config, self.per, self.step, time.perf_counter()
        val = steps.evaluate(self.steps.eval, self.state.eval_params(),
                             self.corpus.tokens['val'], config.data.seq_len, self.eval_layout,
                             self.corpus.chars['val'], config.data.stateful,
                             config.get('eval_max_tokens', 0), per)
        self.check_finite(val['loss'], 'validation')
        self.writer.scalars(step, {'val/loss': val['loss'], 'val/perplexity': val['perplexity'],
                                   f'val/bits_per_{per}': val[f'bits_per_{per}'],
                                   'val/targets': val['tokens']})
        if self.is_main:
            subset = f' on {int(val["tokens"]):,} of {self.n_val:,} targets' if (
                val['tokens'] < self.n_val) else ''
            logging.info('eval at step %d: val loss %.4f nats/%s, %.4f bits/%s, perplexity '
                         '%.2f%s (%.1fs)', step, val['loss'], self.unit[:-1],
                         val[f'bits_per_{per}'], per, val['perplexity'], subset,
                         time.perf_counter() - t0)
            _write_samples(config, self.model, self.state.eval_params(), self.tok,
                           self.sample_key, step, self.writer)
        self.last.update({'val_loss': val['loss'], f'val_bits_per_{per}': val[f'bits_per_{per}'],
                          'val_perplexity': val['perplexity'], 'val_targets': int(val['tokens'])})
        if val['loss'] < self.meta['best_val_loss']:
            self.meta.update(best_val_loss=val['loss'], best_step=step, evals_since_best=0)
            self.save(best=True)
            return None
        self.meta['evals_since_best'] += 1
        return self.early_stopping()

    def early_stopping(self) -> str | None:
        patience, meta = self.config.early_stopping_patience, self.meta
        if patience and meta['evals_since_best'] >= patience:
            return (f'early stopping: no improvement in {meta["evals_since_best"]} evals; best '
                    f'val loss {meta["best_val_loss"]:.4f} at step {meta["best_step"]}')
        return None

    def close(self) -> None:
        """Waits for the saves in flight (a failed one is a one-line error), closes orbax
        and the event writer."""
        try:
            self.ckpts.wait()
        finally:
            self.ckpts.close()
            self.writer.close()


def _write_samples(config, model, params, tok, key, step, writer) -> None:
    """A few fixed-prompt, fixed-seed samples to TensorBoard and the console."""
    from charlm import sampler  # here: the sampler is only needed at eval steps

    s = config.sample
    if not s.prompts or s.length <= 0:
        return
    params = jax_utils.unreplicate(params)
    texts = {}
    for i, prompt in enumerate(s.prompts):
        if not tokenizers.reads_unknown(tok) and tok.unknown(prompt):
            continue  # a prompt this corpus cannot spell is skipped, not fatal
        out = sampler.sample_text(model, params, tok, prompt, s.length, jax.random.fold_in(key, i),
                                  temperature=s.temperature, top_k=s.top_k, top_p=s.top_p)
        texts[f'samples/{i}'] = prompt + out[0]
    writer.texts(step, texts)
    if jax.process_index() == 0:
        for text in texts.values():
            logging.info('sample at step %d:\n%s\n%s', step, text, '-' * 40)
