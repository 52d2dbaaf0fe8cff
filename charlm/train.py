"""Optimizer, train state, pure train/eval steps, and the train_and_evaluate loop.

The only `jax.pmap` calls of charlm are in `parallel_steps`: the steps themselves are
plain functions of (state, batch, key) that tests call with or without pmap.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import math
import time
import types
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging
from flax import jax_utils
from flax.training import train_state
from jax.experimental import multihost_utils

from charlm import checkpointing, data, metric_writer, preemption, tokenizers
from charlm import model as model_lib
from charlm import workdir as workdir_lib
from charlm.errors import CharLMError, Stopped

LN2 = math.log(2.0)


class TrainState(train_state.TrainState):
    # Stateful (truncated-BPTT) training only: the recurrent state carried from one batch
    # to the next, so checkpoints keep it. On the host it is global, [batch_size, H] per
    # leaf; on the devices each holds its own rows, [D, B, H]. Empty otherwise.
    carry: Any = ()
    # config.ema_decay > 0: an exponential moving average of the parameters, updated at
    # every step; evaluation, the best checkpoint's use and sampling read it (`eval_params`).
    # None when off, so checkpoints without it keep their shape.
    ema_params: Any = None
    ema_decay: float = flax.struct.field(pytree_node=False, default=0.0)

    def eval_params(self):
        """The parameters a model is judged and used with: the average when there is one."""
        return self.params if self.ema_params is None else self.ema_params


# ------------------------------------------------------------------ config -> objects


def _has_cuda() -> bool:
    return (jax.default_backend() == 'gpu'
            and 'rocm' not in str(jax.devices()[0].client.platform_version).lower())


def make_model(config: ml_collections.ConfigDict, vocab_size: int, *,
               portable: bool = False) -> model_lib.RecurrentLM:
    """The config's model. `portable` (sampling, evaluation): a checkpoint trained with
    model.impl='cudnn' runs as 'hoisted' (same parameters) on a machine without CUDA."""
    m = config.model
    try:
        dtype = jnp.dtype(m.dtype)
    except TypeError:
        raise CharLMError(f"unknown model.dtype {m.dtype!r}: use 'float32' or 'bfloat16'"
                          ) from None
    impl = m.get('impl', 'hoisted')  # .get: configs saved before the field
    if impl == 'cudnn' and not _has_cuda():
        if not portable:
            raise CharLMError("model.impl='cudnn' needs a CUDA GPU (cuDNN's LSTM), and JAX "
                              f"runs on {jax.default_backend()} here: use "
                              "model.impl='hoisted' (same parameters and checkpoints)")
        impl = 'hoisted'
    return model_lib.RecurrentLM(
        vocab_size=vocab_size, embed_dim=m.embed_dim,
        hidden_sizes=layer_sizes(config),
        cell=m.cell, dropout_rate=m.dropout_rate, unroll=m.get('unroll', 1),
        impl=impl, dtype=dtype,  # .get: the fields below came after the first configs
        variational_dropout=m.get('variational_dropout', False),
        weight_drop=m.get('weight_drop', 0.0), embed_dropout=m.get('embed_dropout', 0.0),
        tie_embeddings=m.get('tie_embeddings', False),
        mogrifier_rounds=m.get('mogrifier_rounds', 5))


def layer_sizes(config) -> tuple[int, ...]:
    """The recurrent layers' sizes of a config (a ConfigDict or a saved config's dict)."""
    m = config['model']
    return model_lib.hidden_sizes_from(m['num_layers'], m['hidden_size'], m['hidden_sizes'])


def make_schedule(config: ml_collections.ConfigDict, xp=jnp) -> optax.Schedule:
    """Linear warmup to `learning_rate`, then cosine decay to `end_lr_fraction` of it.

    Step 0 already learns and the last step ends the decay. xp=np evaluates it on the
    host for logging without dispatching device ops.
    """
    peak, end = config.learning_rate, config.learning_rate * config.end_lr_fraction
    warmup = min(config.warmup_steps, max(config.num_train_steps - 1, 0))
    decay = max(config.num_train_steps - warmup, 1)

    def schedule(step):
        step = step + 1
        progress = xp.clip((step - warmup) / decay, 0.0, 1.0)
        cosine = end + (peak - end) * 0.5 * (1 + xp.cos(xp.pi * progress))
        return xp.where(step < warmup, peak * step / max(warmup, 1), cosine)
    return schedule


def make_optimizer(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
    """Global-norm clipping, then Adam (or AdamW) on the warmup-cosine schedule.

    Equal settings give the same object: the optimizer is a static part of the TrainState
    pytree, so a second run in one process (a notebook, a sweep, the tests) reuses the
    compiled steps. A new one per run made every run compile two more train programs and
    keep them: a process died (LLVM out of memory maps, then a segfault) after about 80 runs.
    """
    return _optimizer(config.optimizer, float(config.get('weight_decay', 0.0)),
                      float(config.grad_clip_norm), float(config.learning_rate),
                      float(config.end_lr_fraction), int(config.warmup_steps),
                      int(config.num_train_steps))


@functools.lru_cache(maxsize=64)
def _optimizer(name, weight_decay, clip_norm, learning_rate, end_lr_fraction, warmup_steps,
               num_train_steps) -> optax.GradientTransformation:
    schedule = make_schedule(types.SimpleNamespace(
        learning_rate=learning_rate, end_lr_fraction=end_lr_fraction,
        warmup_steps=warmup_steps, num_train_steps=num_train_steps))
    if name == 'adam':
        opt = optax.adam(schedule)
    elif name == 'adamw':
        opt = optax.adamw(schedule, weight_decay=weight_decay)
    else:
        raise CharLMError(f"unknown optimizer {name!r}: use 'adam' or 'adamw'")
    return optax.chain(optax.clip_by_global_norm(clip_norm), opt)


@functools.partial(jax.jit, static_argnums=0)
def _init_params(model, key):
    return model.init(key, model.init_carry(1), jnp.zeros((1, 1), jnp.int32))['params']


def create_state(model: model_lib.RecurrentLM, tx: optax.GradientTransformation,
                 key: jax.Array, carry_batch: int = 0, ema_decay: float = 0.0) -> TrainState:
    """A fresh state; `carry_batch` > 0 adds a zero carry for that many streams (stateful);
    `ema_decay` > 0 a moving average of the parameters, starting at them.

    apply_fn is None (the steps take the model as an argument): a bound method of each run's
    model would make every run's state a different pytree, and compile the steps again.
    """
    params = _init_params(model, key)
    carry = jax.device_get(model.init_carry(carry_batch)) if carry_batch else ()
    ema = jax.tree.map(jnp.copy, params) if ema_decay else None
    return TrainState.create(apply_fn=None, params=params, tx=tx, carry=carry,
                             ema_params=ema, ema_decay=float(ema_decay))


def to_devices(state: TrainState, layout: data.Layout) -> TrainState:
    """Host state -> this process's devices: replicated, but each device gets its carry rows."""
    replicated = jax_utils.replicate(state.replace(carry=()))
    if not jax.tree.leaves(state.carry):
        return replicated
    # The sharding jax_utils.replicate uses, but with each device's own rows.
    sharding = jax.tree.leaves(replicated.params)[0].sharding
    carry = jax.tree.map(
        lambda c: jax.device_put(layout.shard(np.asarray(c)[layout.local_rows]), sharding),
        state.carry)
    return replicated.replace(carry=carry)


def to_host(state: TrainState) -> TrainState:
    """Devices -> one host copy, with the global carry gathered from all processes.

    Every process must call it at the same point (it is a collective when stateful).
    """
    host = jax.device_get(jax_utils.unreplicate(state.replace(carry=())))
    if not jax.tree.leaves(state.carry):
        return host
    local = jax.tree.map(lambda c: np.asarray(c).reshape(-1, c.shape[-1]),
                         jax.device_get(state.carry))
    if jax.process_count() > 1:
        local = multihost_utils.process_allgather(local, tiled=True)
    return host.replace(carry=local)


# ------------------------------------------------------------------ pure steps


def _nll(model, params, carry, batch, train: bool, dropout_key=None):
    rngs = {'dropout': dropout_key} if dropout_key is not None else {}
    carry, logits_BxTxV = model.apply({'params': params}, carry, batch['inputs'], train=train,
                                      rngs=rngs)
    nll_BxT = optax.softmax_cross_entropy_with_integer_labels(logits_BxTxV, batch['targets'])
    return carry, nll_BxT


def train_step(state: TrainState, batch: dict, key: jax.Array, *, model, axis_name='batch'):
    """One Adam step on one device's [B, T] batch; gradients averaged over `axis_name`.

    `key` is the run's train key: the dropout key folds in the step and the device, so
    a resumed run draws exactly what an uninterrupted one would. With axis_name=None the
    step runs without collectives (one device, no pmap).
    """
    key = jax.random.fold_in(key, state.step)
    if axis_name is not None:
        key = jax.random.fold_in(key, jax.lax.axis_index(axis_name))
    stateful = bool(jax.tree.leaves(state.carry))
    if stateful:  # truncated BPTT: continue each stream's state unless it restarts
        keep_Bx1 = 1.0 - batch['reset'][:, None]
        carry = jax.tree.map(lambda c: c * keep_Bx1, state.carry)
    else:
        carry = model.init_carry(batch['inputs'].shape[0])

    def loss_fn(params):
        new_carry, nll_BxT = _nll(model, params, carry, batch, True, key)
        return nll_BxT.mean(), (nll_BxT.sum(), new_carry)

    (_, (nll_sum, new_carry)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    count = jnp.float32(batch['targets'].size)
    if axis_name is not None:
        grads = jax.lax.pmean(grads, axis_name)  # before clipping: it sees the global norm
        nll_sum, count = jax.lax.psum((nll_sum, count), axis_name)
    grad_norm = optax.tree.norm(grads)
    state = state.apply_gradients(grads=grads)
    if state.ema_params is not None:  # the average follows the updated parameters
        d = state.ema_decay
        state = state.replace(ema_params=jax.tree.map(lambda e, p: d * e + (1 - d) * p,
                                                      state.ema_params, state.params))
    if stateful:  # the next batch starts from here, without backpropagating into this one
        state = state.replace(carry=jax.lax.stop_gradient(new_carry))
    return state, {'nll_sum': nll_sum, 'count': count, 'grad_norm': grad_norm}


def eval_step(params, batch: dict, carry=None, *, model):
    """Summed nll and target count of one device's [B, T] eval batch (weights mask the
    padding), and the carry after it; carry=None starts from zeros.

    No collective: `evaluate` adds the sums on the host and combines processes once at the
    end, so an evaluation of any length never has collectives in flight (hundreds of
    pmapped psums dispatched back to back deadlocked two CPU processes).
    """
    if carry is None:
        carry = model.init_carry(batch['inputs'].shape[0])
    carry, nll_BxT = _nll(model, params, carry, batch, False)
    return {'nll_sum': (nll_BxT * batch['weights']).sum(), 'count': batch['weights'].sum()}, carry


@dataclasses.dataclass(frozen=True)
class ParallelSteps:
    train: Any
    eval: Any


@functools.lru_cache(maxsize=8)
def parallel_steps(model) -> ParallelSteps:
    """The pmapped steps: state donated, the train key broadcast to every device.

    One pair per model (a hashable dataclass), so training the same model again in one
    process (a notebook, resuming, the tests) reuses the compiled steps.
    """
    return ParallelSteps(
        train=jax.pmap(functools.partial(train_step, model=model), axis_name='batch',
                       in_axes=(0, 0, None), donate_argnums=(0,)),
        eval=jax.pmap(functools.partial(eval_step, model=model), axis_name='batch'))


# Dispatched steps a loop lets run ahead of the host before it waits for the oldest: enough
# to keep the devices busy, and a bound on the collectives in flight across processes.
MAX_IN_FLIGHT = 4


# ------------------------------------------------------------------ evaluation over a split


def evaluate(eval_fn, params, tokens, seq_len: int, layout: data.Layout,
             chars: int | None = None, stateful: bool = False, max_tokens: int = 0,
             unit: str = 'char') -> dict[str, float]:
    """Exact loss over every target of `tokens`: nats/token, bits/char, perplexity.

    stateful=True reads the split as contiguous streams with the carry passed on (how a
    stateful model is used); otherwise every window starts from a zero state. `max_tokens`
    scores a fixed, evenly spread subset of the windows (`data.eval_windows`). `unit`
    names the bits per character of the text ('byte': bits_per_byte). Every process must
    call it (its sums are combined once, at the end).
    """
    sums, carry, in_flight = np.zeros(2), None, collections.deque()
    if stateful:
        batches = data.stateful_eval_batches(tokens, seq_len, layout, max_tokens)
    else:
        batches = data.eval_batches(tokens, seq_len, layout, max_tokens)
    for b in batches:
        out, new_carry = eval_fn(params, b, carry)
        in_flight.append(out)
        if len(in_flight) > MAX_IN_FLIGHT:  # bounded look-ahead; float64 sums on the host
            sums += _local_sums(in_flight.popleft())
        if stateful:
            carry = new_carry
    while in_flight:
        sums += _local_sums(in_flight.popleft())
    if jax.process_count() > 1:
        sums = _sum_over_processes(sums)
    if chars and sums[1] < len(tokens) - 1:  # a subset: its share of the characters
        chars = chars * float(sums[1]) / (len(tokens) - 1)
    return loss_metrics(float(sums[0]), float(sums[1]), chars, unit)


def loss_metrics(nll: float, count: float, chars: float | None = None, unit: str = 'char'
                 ) -> dict[str, float]:
    """Summed nll over `count` targets as nats/token, bits/token, bits per character of
    the text (`bits_per_byte` for unit='byte'), perplexity."""
    loss = nll / count
    # bits per character of the original text; for char models the two counts agree.
    per_char = nll / (chars if chars else count)
    perplexity = math.exp(loss) if loss < 700 else math.inf
    return {'loss': loss, 'bits_per_token': loss / LN2, f'bits_per_{unit}': per_char / LN2,
            'perplexity': perplexity, 'tokens': count}


def _local_sums(out: dict) -> np.ndarray:
    """[nll, count] of one eval batch over this process's devices, in float64."""
    out = jax.device_get(out)
    return np.array([np.asarray(out['nll_sum'], np.float64).sum(),
                     np.asarray(out['count'], np.float64).sum()])


def _sum_over_processes(x: np.ndarray) -> np.ndarray:
    """Sums a float64 vector over processes with one gather, to float64 precision: JAX
    gathers float32 (x64 is off), so each value travels as float32 high and low parts."""
    hi = x.astype(np.float32)
    lo = (x - hi).astype(np.float32)
    parts = np.asarray(multihost_utils.process_allgather(np.stack([hi, lo])), np.float64)
    return parts.sum(axis=(0, 1))


# ------------------------------------------------------------------ the loop


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
    if not 0 <= config.get('ema_decay', 0.0) < 1:
        raise CharLMError(f'ema_decay must be in [0, 1) (0 = off), got {config.ema_decay!r}')
    for name in ('dropout_rate', 'weight_drop', 'embed_dropout'):
        value = config.model.get(name, 0.0)
        if not 0 <= value < 1:
            raise CharLMError(f'model.{name} must be in [0, 1), got {value!r}')


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
    is_main = jax.process_index() == 0
    layout = data.Layout(config.batch_size, jax.device_count(), jax.local_device_count(),
                         jax.process_index())
    eval_layout = data.eval_layout(config.eval_batch_size)

    init_key, train_key, sample_key = jax.random.split(jax.random.key(config.seed), 3)
    stateful = config.data.stateful

    def setup(saved_tokenizer):
        corpus = data.load_corpus(config, saved_tokenizer)
        tok = corpus.tokenizer
        model = make_model(config, tok.vocab_size)
        if config.sample.prompts and config.sample.length > 0:  # else: no samples are drawn
            from charlm import sampler
            s = config.sample
            sampler.check_options(s.length, s.temperature, s.top_k, s.top_p, 1, tok.vocab_size)
        if stateful:
            data.stream_steps(len(corpus.tokens['train']), config.data.seq_len, config.batch_size)
        fresh = create_state(model, make_optimizer(config), init_key,
                             config.batch_size if stateful else 0, config.get('ema_decay', 0.0))
        return corpus, model, fresh

    ckpts = checkpointing.Checkpoints(workdir, config.max_to_keep, create=False)
    try:  # closed on every path: an error here must not race orbax threads at exit
        corpus, resume_step, meta, damaged = None, None, {}, []
        for saved_step in sorted(ckpts.latest.all_steps(), reverse=True):  # newest intact
            try:
                saved = ckpts.read_json(saved_step)
                if corpus is None:
                    checkpointing.check_same_model(saved['config'], config, workdir)
                    corpus, model, state = setup(tokenizers.from_json(saved['tokenizer']))
                state = ckpts.restore_state(state, saved_step)
            except checkpointing.DamagedCheckpoint as e:
                damaged.append((saved_step, e))
                continue
            resume_step, meta = saved_step, saved['meta']
            break
        if damaged and resume_step is None:
            raise CharLMError(f'every checkpoint in {workdir}/checkpoints is damaged '
                              f'(newest: {damaged[0][1]}): use a new --workdir')
        for saved_step, e in damaged:  # kept, out of the way of this run's saves
            logging.warning('%s; moved to %s; resuming from step %d instead', e,
                            ckpts.set_aside(saved_step), resume_step)
        for best_step in ckpts.best.all_steps() if resume_step is not None else ():
            # A best save after the step resumed from (a run killed between that best save
            # and its next latest one, or a damaged latest save): from steps this run does
            # again, so kept aside, out of the way of its own best saves.
            if best_step > resume_step:
                logging.warning('best checkpoint of step %d (after step %d) moved to %s',
                                best_step, resume_step, ckpts.set_aside(best_step, best=True))
        if corpus is None:
            corpus, model, state = setup(None)
        tok = corpus.tokenizer
        if resume_step is not None:
            logging.info('Resuming from %s/checkpoints/%d', workdir, resume_step)
        if is_main:
            logging.info('Model:\n%s', model_lib.summary(model, state.params))
    finally:
        ckpts.close()
    ckpts = checkpointing.Checkpoints(workdir, config.max_to_keep, create=True)

    steps = parallel_steps(model)
    host_schedule = make_schedule(config, np)
    writer = metric_writer.MetricWriter(
        workdir, purge_step=None if resume_step is None else resume_step + 1)
    unit = tokenizers.plural_unit(tok.kind)
    per = tokenizers.text_unit(tok.kind)  # val bits per char, or per byte of a byte model
    eval_max_tokens = config.get('eval_max_tokens', 0)
    n_val = len(corpus.tokens['val']) - 1
    if eval_max_tokens and eval_max_tokens < n_val and is_main:
        logging.info('evaluation: %s of the %s val targets, in evenly spread windows '
                     '(eval_max_tokens=%d); charlm.evaluate scores the whole split',
                     f'~{eval_max_tokens:,}', f'{n_val:,}', eval_max_tokens)
    step = int(state.step)
    state = to_devices(state, layout)
    progress = metric_writer.Progress(config.num_train_steps, step)
    tokens_per_step = config.batch_size * config.data.seq_len
    meta = {'best_val_loss': math.inf, 'best_step': -1, 'evals_since_best': 0} | meta
    last = {'step': step}
    pending, t_last, step_last = [], time.perf_counter(), step
    # The train loss logged at a step averages the steps since the last log step of the
    # schedule. A run stopped between two logs saves that partial window in meta, so the
    # run that resumes logs the same values as one never stopped.
    log_window = meta.pop('log_window', None) or {'nll': 0.0, 'count': 0.0}

    def save(best: bool = False):
        saved_meta = meta | ({'log_window': log_window} if log_window['count'] else {})
        ckpts.save(step, to_host(state), tok.to_json(), config.to_dict(), saved_meta, best=best)

    def check_finite(loss, split):
        if not math.isfinite(loss):
            newest = ckpts.latest_step()
            where = (f'the checkpoints up to step {newest} (saved before the divergence) are '
                     f'kept in {workdir}' if newest is not None else 'no checkpoint was written')
            raise CharLMError(f'training diverged: {split} loss is {loss} at step {step}; '
                              f'{where}; lower learning_rate or grad_clip_norm')

    def flush_metrics(scheduled: bool = True):
        """Logs the steps since the last log; `scheduled=False` (a stop) keeps the window."""
        nonlocal pending, t_last, step_last, log_window
        if not pending:
            return
        fetched = jax.device_get(pending)
        nll, count = log_window['nll'], log_window['count']
        for m in fetched:  # one step at a time: the same sums whether or not it was stopped
            nll += float(m['nll_sum'][0])
            count += float(m['count'][0])
        log_window = {'nll': nll, 'count': count}  # a new dict: a save may hold the old one
        loss = nll / count
        check_finite(loss, 'train')
        now = time.perf_counter()
        rate = tokens_per_step * (step - step_last) / (now - t_last)
        scalars = {'train/loss': loss, 'train/bits_per_token': loss / LN2,
                   'train/grad_norm': float(fetched[-1]['grad_norm'][0]),
                   'train/learning_rate': float(host_schedule(step - 1)),
                   f'train/{unit}_per_second': rate}
        writer.scalars(step, scalars)
        progress.log(step, loss, rate, unit)
        last.update(step=step, train_loss=loss)
        pending, t_last, step_last = [], now, step
        if scheduled:
            log_window = {'nll': 0.0, 'count': 0.0}

    def evaluate_and_track() -> str | None:
        """Validation loss, samples, the best checkpoint; an early-stopping reason or None."""
        t0 = time.perf_counter()
        val = evaluate(steps.eval, state.eval_params(), corpus.tokens['val'], config.data.seq_len,
                       eval_layout, corpus.chars['val'], stateful, eval_max_tokens, per)
        check_finite(val['loss'], 'validation')
        writer.scalars(step, {'val/loss': val['loss'], 'val/perplexity': val['perplexity'],
                              f'val/bits_per_{per}': val[f'bits_per_{per}'],
                              'val/targets': val['tokens']})
        if is_main:
            subset = f' on {int(val["tokens"]):,} of {n_val:,} targets' if (
                val['tokens'] < n_val) else ''
            logging.info('eval at step %d: val loss %.4f nats/%s, %.4f bits/%s, perplexity '
                         '%.2f%s (%.1fs)', step, val['loss'], unit[:-1],
                         val[f'bits_per_{per}'], per, val['perplexity'], subset,
                         time.perf_counter() - t0)
            _write_samples(config, model, state.eval_params(), tok, sample_key, step, writer)
        last.update({'val_loss': val['loss'], f'val_bits_per_{per}': val[f'bits_per_{per}'],
                     'val_perplexity': val['perplexity'], 'val_targets': int(val['tokens'])})
        if val['loss'] < meta['best_val_loss']:
            meta.update(best_val_loss=val['loss'], best_step=step, evals_since_best=0)
            save(best=True)
            return None
        meta['evals_since_best'] += 1
        return early_stopping()

    def early_stopping() -> str | None:
        patience = config.early_stopping_patience
        if patience and meta['evals_since_best'] >= patience:
            return (f'early stopping: no improvement in {meta["evals_since_best"]} evals; best '
                    f'val loss {meta["best_val_loss"]:.4f} at step {meta["best_step"]}')
        return None

    def batch_for(step: int) -> dict:
        if stateful:
            return data.stateful_train_batch(corpus.tokens['train'], config.data.seq_len, step,
                                             layout)
        return data.train_batch(corpus.tokens['train'], config.data.seq_len, step, config.seed,
                                layout)

    signalled = False
    # Stopped early before: the same command again (a re-queued job, a rerun comparison)
    # keeps it stopped; a larger patience trains on.
    stop_reason = early_stopping() if step < config.num_train_steps else None
    if stop_reason:
        stop_reason = (f'already stopped at step {step} by {stop_reason} (raise '
                       'config.early_stopping_patience to train on)')
    try:  # pending saves finish and orbax closes even on an error (divergence)
        with preemption.StopRequest(workdir) as stop:
            while step < config.num_train_steps and not stop_reason:
                state, metrics = steps.train(state, batch_for(step), train_key)
                step += 1
                pending.append(metrics)
                if len(pending) > MAX_IN_FLIGHT:  # never an unbounded queue of pmeans
                    pending[-MAX_IN_FLIGHT - 1]['count'].block_until_ready()
                at_end = step == config.num_train_steps
                do_eval = step % config.eval_every_steps == 0 or at_end
                do_save = step % config.checkpoint_every_steps == 0 or at_end
                do_log = step % config.log_every_steps == 0 or do_eval or do_save
                stopping = stop.agreed(do_log) or (stop_at is not None and step >= stop_at
                                                   and not at_end)
                if do_log or stopping:
                    flush_metrics(do_log)  # also the NaN check before anything is saved
                if do_eval:
                    stop_reason = evaluate_and_track()
                    # A signal that came during the evaluation: every process evaluated, so
                    # this is a point where they can agree to stop.
                    stopping = stopping or stop.agreed(True)
                if stopping:
                    # A signal (here or on another process) or the caller's stop_at.
                    signalled = stop.signal is not None or stop_at is None or step < stop_at
                    why = stop.signal or ('a signal to another process' if signalled
                                          else f'stop_at={stop_at}')
                    stop_reason = (f'stopped by {why} at step {step}; checkpoint saved: run '
                                   'the same command to resume')
                if do_save or stop_reason:
                    save()
                    writer.flush()
    finally:
        try:
            ckpts.wait()  # a failed save in flight is a one-line error too
        finally:
            ckpts.close()
            writer.close()
    if stop_reason and is_main:
        logging.info('%s', stop_reason)
    last.update(best_val_loss=meta['best_val_loss'], best_step=meta['best_step'],
                stop_reason=stop_reason)
    if signalled:
        raise Stopped(stop_reason, last)
    return last


def _write_samples(config, model, params, tok, key, step, writer) -> None:
    """A few fixed-prompt, fixed-seed samples to TensorBoard and the console."""
    from charlm import sampler  # here: the sampler is only needed at eval steps

    s = config.sample
    if not s.prompts or s.length <= 0:
        return
    params = jax_utils.unreplicate(params)
    texts = {}
    for i, prompt in enumerate(s.prompts):
        if tok.kind != 'word' and tok.unknown(prompt):
            continue  # a prompt this corpus cannot spell is skipped, not fatal
        out = sampler.sample_text(model, params, tok, prompt, s.length, jax.random.fold_in(key, i),
                                  temperature=s.temperature, top_k=s.top_k, top_p=s.top_p)
        texts[f'samples/{i}'] = prompt + out[0]
    writer.texts(step, texts)
    if jax.process_index() == 0:
        for text in texts.values():
            logging.info('sample at step %d:\n%s\n%s', step, text, '-' * 40)
