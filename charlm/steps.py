"""The objects a config makes (model, optimizer, train state), the pure train and eval
steps, the one place they are transformed (`parallel_steps`: the only `jax.pmap` calls of
charlm), and the exact loss over a split.

The steps are plain functions of (state, batch, key) that tests call with or without pmap;
`charlm.train` runs them in its loop.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import math
import types
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import jax_utils
from flax.training import train_state
from jax.experimental import multihost_utils

from charlm import data, jax_private
from charlm import model as model_lib
from charlm.errors import CharLMError

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
            and 'rocm' not in jax_private.platform_version().lower())


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
        mogrifier_rounds=m.get('mogrifier_rounds', 5), mogrifier_rank=m.get('mogrifier_rank', 0),
        softmax=m.get('softmax', 'full'), adaptive_cutoffs=tuple(m.get('adaptive_cutoffs', ())),
        adaptive_div=float(m.get('adaptive_div', 4.0)),
        loss_chunk_mb=float(m.get('loss_chunk_mb', 64.0)))


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
                      int(config.num_train_steps), adam_b2(config),
                      config.get('weight_decay_on', 'all'))  # .get: configs before the key


def adam_b2(config: ml_collections.ConfigDict) -> float:
    """Adam's beta2; runs saved before `adam_b2` existed used optax's 0.999."""
    return float(config.get('adam_b2', 0.999))


DECAY_ON = ('all', 'kernels')


def decayed(params) -> Any:
    """weight_decay_on='kernels': True for the layers' and the head's weight matrices;
    False for biases, norm scales and the embedding (AdamW then leaves them alone)."""
    def kernel(path, x):
        return x.ndim >= 2 and 'embed' not in jax.tree_util.keystr(path)
    return jax.tree_util.tree_map_with_path(kernel, params)


@functools.lru_cache(maxsize=64)
def _optimizer(name, weight_decay, clip_norm, learning_rate, end_lr_fraction, warmup_steps,
               num_train_steps, b2, decay_on='all') -> optax.GradientTransformation:
    schedule = make_schedule(types.SimpleNamespace(
        learning_rate=learning_rate, end_lr_fraction=end_lr_fraction,
        warmup_steps=warmup_steps, num_train_steps=num_train_steps))
    if name == 'adam':
        opt = optax.adam(schedule, b2=b2)
    elif name == 'adamw':
        if decay_on not in DECAY_ON:
            raise CharLMError(f"unknown weight_decay_on {decay_on!r}: use 'all' or 'kernels'")
        opt = optax.adamw(schedule, b2=b2, weight_decay=weight_decay,
                          mask=decayed if decay_on == 'kernels' else None)
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
    """(carry, nll_BxT): training's, evaluation's and dynamic evaluation's one loss. A
    small vocabulary's logits are made at once; a large one's (or an adaptive softmax's)
    in chunks that are never all held (`model.token_nll`)."""
    rngs = {'dropout': dropout_key} if dropout_key is not None else {}
    one_block = model.loss_in_one_block(batch['targets'].size)
    carry, out = model.apply({'params': params}, carry, batch['inputs'], train=train,
                             rngs=rngs, features=not one_block)
    if one_block:  # out: logits_BxTxV
        return carry, optax.softmax_cross_entropy_with_integer_labels(out, batch['targets'])
    return carry, model.token_nll(params, out, batch['targets'])


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
        # warmed up (TensorFlow's num_updates rule): at step t the decay is at most
        # (1 + t) / (10 + t), so the early average is not mostly the initialisation
        t = state.step.astype(jnp.float32)  # already counts this update
        d = jnp.minimum(state.ema_decay, (1 + t) / (10 + t))
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
    nll_BxT = nll_BxT * batch['weights']
    return {'nll_sum': nll_BxT.sum(), 'count': batch['weights'].sum(), 'nll': nll_BxT}, carry


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
             unit: str = 'char', token_losses: np.ndarray | None = None) -> dict[str, float]:
    """Exact loss over every target of `tokens`: nats/token, bits/char, perplexity.

    stateful=True reads the split as contiguous streams with the carry passed on (how a
    stateful model is used); otherwise every window starts from a zero state. `max_tokens`
    scores a fixed, evenly spread subset of the windows (`data.eval_windows`). `unit`
    names the bits per character of the text ('byte': bits_per_byte). Every process must
    call it (its sums are combined once, at the end). `token_losses` (one process only):
    float32[len(tokens) - 1], filled with the loss of each target, in text order.
    """
    sums, carry, in_flight = np.zeros(2), None, collections.deque()
    if stateful:
        batches = data.stateful_eval_batches(tokens, seq_len, layout, max_tokens)
    else:
        batches = data.eval_batches(tokens, seq_len, layout, max_tokens)
    for b in batches:
        starts = b.pop('starts')
        out, new_carry = eval_fn(params, b, carry)
        if token_losses is not None:  # target j of a window starting at s is token s + j + 1
            real = np.asarray(b['weights']).reshape(len(starts), -1) > 0
            where = starts[:, None] + np.arange(seq_len)
            token_losses[where[real]] = np.asarray(out['nll']).reshape(real.shape)[real]
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


