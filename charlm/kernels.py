"""The fast LSTM layers, beside the `nn.scan` reference in `charlm.model`, and their tricks.

Every layer here has nn.OptimizedLSTMCell's parameters (names, shapes, initialisers:
`_lstm_params`), so checkpoints move freely between implementations, and tests check
outputs and gradients against the reference:
  HoistedLSTM   (model.impl='hoisted', the default): the input projection of all time
                steps as one matmul outside the time loop, and a custom backward pass that
                runs only dz_t @ W_h^T inside the reverse loop (what cuDNN does; both loops
                are `charlm.recurrence`'s). On a CPU, where a kernel per op per time step
                is what a step pays for, it trains the reference 2 x 256 model faster than
                PyTorch's nn.LSTM (benchmarks/).
  FoldedLSTM    HoistedLSTM as the first layer of a character model: the embedding folded
                into a [V, 4H] input table, gathered per token.
  CudnnLSTM     (model.impl='cudnn'): cuDNN's fused kernel on CUDA GPUs.
  FoldedStepper the one-token generation step the sampler runs for a float32 LSTM.
  Dropout       nn.Dropout with masks hashed from the element index (cheap on a CPU).
Each trick carries its measured why next to it.
"""

from __future__ import annotations

from typing import Any

import flax
import jax
import jax.numpy as jnp
from flax import linen as nn
from jax.experimental import rnn

from charlm import recurrence

GATES = ('i', 'f', 'g', 'o')  # OptimizedLSTMCell's order: input, forget, candidate, output


def _fmix32(x: jax.Array) -> jax.Array:
    """MurmurHash3's 32-bit finaliser: a bijection that mixes every input bit."""
    x = x ^ (x >> 16)
    x = x * jnp.uint32(0x85EBCA6B)
    x = x ^ (x >> 13)
    x = x * jnp.uint32(0xC2B2AE35)
    return x ^ (x >> 16)


def hashed_bits(key: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    """uint32 pseudo-random bits of `shape`: a hash of each element's index, seeded by `key`.

    One threefry call makes two seed words; the rest is integer arithmetic that XLA fuses
    into its consumer, so a dropout mask costs one pass instead of a threefry per element
    (which was a large share of a CPU training step).
    """
    s0, s1 = jax.random.bits(key, (2,), jnp.uint32)
    index = jnp.zeros(shape, jnp.uint32)
    stride = 1
    for axis in reversed(range(len(shape))):
        index = index + jax.lax.broadcasted_iota(jnp.uint32, shape, axis) * jnp.uint32(stride)
        stride *= shape[axis]
    return _fmix32(_fmix32(index + s0) ^ s1)


def drop(x: jax.Array, rate: float, key: jax.Array, mask_shape=None) -> jax.Array:
    """x with elements zeroed at `rate` and the rest scaled by 1 / (1 - rate); the mask,
    of `mask_shape` (default x's), broadcasts over x's axes of size 1 in it."""
    if rate >= 1.0:
        return jnp.zeros_like(x)
    threshold = jnp.uint32(min(int(rate * 2**32), 2**32 - 1))
    keep = hashed_bits(key, x.shape if mask_shape is None else mask_shape) >= threshold
    return jnp.where(keep, x / (1.0 - rate), 0.0).astype(x.dtype)


class Dropout(nn.Module):
    """nn.Dropout's behaviour (inverted scaling, the 'dropout' rng) with hashed_bits masks.

    `broadcast_dims`: axes that share one mask, e.g. (1,) for locked (variational) dropout
    of [B, T, E]: one mask per sequence, the same at every time step (Gal & Ghahramani).
    """

    rate: float
    deterministic: bool = False
    broadcast_dims: tuple[int, ...] = ()

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        if self.deterministic or self.rate == 0.0:
            return x
        shape = tuple(1 if i in self.broadcast_dims else n for i, n in enumerate(x.shape))
        return drop(x, self.rate, self.make_rng('dropout'), shape)


def drop_connect(module: nn.Module, w_h: jax.Array, rate: float, deterministic: bool
                 ) -> jax.Array:
    """DropConnect on a recurrent matrix (AWD-LSTM's weight drop): one mask per call, so
    per training step, applied to W_h once rather than at every time step."""
    if deterministic or rate == 0.0:
        return w_h
    w_h = drop(w_h, rate, module.make_rng('dropout'))
    module.sow('intermediates', 'dropped_w_h', w_h)  # for tests; free unless asked for
    return w_h


class _DenseParams(nn.Module):
    """A kernel (and bias) under the same names nn.LSTMCell's Dense submodules use."""

    features: int
    use_bias: bool
    kernel_init: Any

    @nn.compact
    def __call__(self, in_features: int):
        kernel = self.param('kernel', self.kernel_init, (in_features, self.features))
        bias = (self.param('bias', nn.initializers.zeros, (self.features,)) if self.use_bias
                else None)
        return kernel, bias


def _lstm_params(in_features: int, features: int):
    """An LSTM layer's parameters, made inside the calling module: (w_i [E, 4H], w_h [H, 4H],
    b [4H]), gates in GATES order.

    Names, shapes and initialisers are nn.OptimizedLSTMCell's (lecun_normal inputs without
    bias, orthogonal recurrence with the bias), so every LSTM implementation here shares its
    checkpoints.
    """
    wi = [_DenseParams(features, False, nn.initializers.lecun_normal(),
                       name=f'i{g}')(in_features)[0] for g in GATES]
    wh = [_DenseParams(features, True, nn.initializers.orthogonal(),
                       name=f'h{g}')(features) for g in GATES]
    return (jnp.concatenate(wi, axis=-1), jnp.concatenate([k for k, _ in wh], axis=-1),
            jnp.concatenate([b for _, b in wh], axis=-1))


def _gates(layer_params, kind: str, what: str = 'kernel') -> jax.Array:
    """One layer's per-gate arrays side by side: kind 'i' -> W_i [E, 4H], 'h' -> W_h [H, 4H]
    (or, with what='bias', b [4H])."""
    return jnp.concatenate([layer_params[f'{kind}{g}'][what] for g in GATES], axis=-1)


class HoistedLSTM(nn.Module):
    """One LSTM layer over a whole sequence, the cuDNN way.

    The input projection x @ W_i for all T steps is one [B*T, E] x [E, 4H] matmul outside
    the time loop; only h @ W_h runs inside the scan. Parameters, initialisers and
    equations are those of nn.OptimizedLSTMCell (ii/if/ig/io, hi/hf/hg/ho), so the two
    implementations share checkpoints and agree to float tolerance (tests check this).
    """

    features: int
    unroll: int = 1
    dtype: Any = jnp.float32
    weight_drop: float = 0.0  # DropConnect on W_h (training only)
    deterministic: bool = True

    @nn.compact
    def __call__(self, carry, x_BxTxE):
        """One layer over x_BxTxE: (carry, h_BxTxH)."""
        w_i, w_h, b = self._weights(x_BxTxE.shape[-1])
        # Transpose, then one 2-D matmul: XLA:CPU ran the equivalent 'bte,eg->tbg'
        # einsum 4x slower (43 ms vs 10 ms for 64 x 100 x 256 -> 1024).
        x_TxBxE = jnp.swapaxes(x_BxTxE, 0, 1)
        t, b_, e = x_TxBxE.shape
        xw_TxBx4H = (recurrence.mm('ne,eg->ng', x_TxBxE.reshape(t * b_, e), w_i).reshape(t, b_, -1)
                     + b[None, None])
        return self._recur(carry, w_h, xw_TxBx4H)

    def _weights(self, in_features: int):
        w_i, w_h, b = _lstm_params(in_features, self.features)
        w_h = drop_connect(self, w_h, self.weight_drop, self.deterministic)
        return w_i.astype(self.dtype), w_h.astype(self.dtype), b

    def _recur(self, carry, w_h, xw_TxBx4H):
        c_BxH, h_BxH = carry
        carry, h_TxBxH = recurrence.lstm_recurrence(w_h, xw_TxBx4H, c_BxH, h_BxH, self.unroll)
        return carry, jnp.swapaxes(h_TxBxH, 0, 1)


class FoldedLSTM(HoistedLSTM):
    """HoistedLSTM as a first layer that reads token ids, with the embedding folded in.

    Its input is a row of embedding @ W_i + b per token: the [V, E] x [E, 4H] table is
    made once and gathered, instead of a [B*T, E] x [E, 4H] matmul (and the same saving
    twice in the backward pass). Same parameters and numbers as Embed -> HoistedLSTM.
    """

    @nn.compact
    def __call__(self, carry, tokens_BxT, embedding_VxE):
        w_i, w_h, b = self._weights(embedding_VxE.shape[-1])
        # The barrier keeps the bias add out of the gather: fused into it, XLA:CPU
        # gathered element by element (A: 14.6 ms a step in a profile, 3.4 ms now).
        table_Vx4H = jax.lax.optimization_barrier(recurrence.input_table(embedding_VxE, w_i, b))
        # Token ids come from the tokenizer, so always in range: promising that saves
        # jnp.take's out-of-range mask, a second pass over the [T, B, 4H] result.
        tokens_TxB = jnp.swapaxes(tokens_BxT, 0, 1)
        xw_TxBx4H = table_Vx4H.at[tokens_TxB].get(mode='promise_in_bounds')
        return self._recur(carry, w_h, xw_TxBx4H)


# cuDNN's fused LSTM (jax.experimental.rnn, CUDA GPUs only). Its flat weight vector holds,
# per layer, W_ih [4H, E], W_hh [4H, H], then b_ih and b_hh [4H] each, gates i, f, g, o
# (PyTorch's nn.LSTM layout): GATES order, transposed, with one bias more than Flax's.

def to_cudnn_weights(layer_params) -> jax.Array:
    """One LSTM layer's Flax parameters as cuDNN's flat weight vector (b_ih = 0)."""
    w_i, w_h, b = (_gates(layer_params, 'i'), _gates(layer_params, 'h'),
                   _gates(layer_params, 'h', 'bias'))
    return _pack_cudnn(w_i, w_h, b)


def _pack_cudnn(w_i, w_h, b) -> jax.Array:
    return jnp.concatenate([w_i.T.reshape(-1), w_h.T.reshape(-1), jnp.zeros_like(b), b])


def from_cudnn_weights(weights: jax.Array, input_size: int, hidden_size: int) -> dict:
    """The inverse of `to_cudnn_weights` for any one-layer cuDNN (or PyTorch nn.LSTM) weight
    vector: the two biases become Flax's one, b_ih + b_hh, which computes the same."""
    w_ih, w_hh, b_ih, b_hh = (jnp.asarray(x[0]) for x in rnn.unpack_lstm_weights(
        jnp.asarray(weights), input_size, hidden_size, 1, False))
    columns = {'i': w_ih.T, 'h': w_hh.T}
    bias = jnp.split(b_ih + b_hh, 4)
    params = {}
    for kind, w in columns.items():
        for g, kernel, b in zip(GATES, jnp.split(w, 4, axis=-1), bias, strict=True):
            params[f'{kind}{g}'] = {'kernel': kernel} | ({'bias': b} if kind == 'h' else {})
    return params


def _cudnn_lstm(x_BxTxE, h0_1xBxH, c0_1xBxH, weights, input_size, hidden_size):
    """One layer of cuDNN's LSTM: (y_BxTxH, h_1xBxH, c_1xBxH). A function of its own so
    that a CPU test can put jax.experimental.rnn's reference implementation in its place."""
    batch, steps = x_BxTxE.shape[:2]
    return rnn.lstm(x_BxTxE, h0_1xBxH, c0_1xBxH, weights,
                    jnp.full((batch,), steps, jnp.int32), input_size, hidden_size,
                    num_layers=1, dropout=0.0, bidirectional=False)


class CudnnLSTM(nn.Module):
    """One LSTM layer through cuDNN's fused kernel, forward and backward (CUDA GPUs only).

    The parameters are HoistedLSTM's (nn.OptimizedLSTMCell's), packed into cuDNN's flat
    vector inside each step, so checkpoints move freely between the implementations.
    One cuDNN call per layer keeps charlm's own dropout between layers. float32 only:
    jax.experimental.rnn has no bf16 LSTM; it uses TF32 where JAX's matmuls would.
    """

    features: int
    weight_drop: float = 0.0  # DropConnect on W_h (training only), before the packing
    deterministic: bool = True

    @nn.compact
    def __call__(self, carry, x_BxTxE):
        c_BxH, h_BxH = carry
        in_features = x_BxTxE.shape[-1]
        w_i, w_h, b = _lstm_params(in_features, self.features)
        w_h = drop_connect(self, w_h, self.weight_drop, self.deterministic)
        weights = _pack_cudnn(w_i, w_h, b)
        y_BxTxH, h_1xBxH, c_1xBxH = _cudnn_lstm(
            x_BxTxE.astype(jnp.float32), h_BxH[None], c_BxH[None], weights,
            in_features, self.features)
        return (c_1xBxH[0], h_1xBxH[0]), y_BxTxH


# One token at a time, for generation. A sampler steps every layer once per token, so a
# step is a few matrix-vector products; FoldedStepper lays the weights out for them.

@flax.struct.dataclass
class FoldedStepper:
    """A float32 LSTM's generation step with its weights re-laid once per call:

      embed_in   [V, 4H_0]: embedding @ W_i of layer 0, plus its bias: a row per token;
      mats[l]    [4H_l + N_l, H_l]: W_h of layer l and, below it, the input weights of
                 what reads h_l next (layer l+1's W_i, or the head, N_l = V), transposed;
      biases[l]  [N_l]: the bias of what reads h_l next.
    So each layer costs one product h_l @ mats[l]^T per token: it gives the next layer's
    input and this layer's recurrent term for the next token at once, from rows read in
    order (two products per token for two layers, not five; one stream on a CPU went
    from about 72 to 50 us per token). A layer's state is (c, h, h @ W_h).
    """

    embed_in: jax.Array
    mats: tuple
    biases: tuple

    @classmethod
    def make(cls, params, num_layers: int, head: dict) -> FoldedStepper:
        """`head`: the output layer's {'kernel': [H, V], 'bias': [V]} (tied or not)."""
        def cat(layer: int, kind: str, what: str = 'kernel'):
            return _gates(params[f'lstm_{layer}'], kind, what)

        mats, biases = [], []
        for layer in range(num_layers):
            last = layer + 1 == num_layers
            reader = head['kernel'] if last else cat(layer + 1, 'i')
            mats.append(jnp.concatenate([cat(layer, 'h'), reader], axis=-1).T)
            biases.append(head['bias'] if last else cat(layer + 1, 'h', 'bias'))
        embed_in = recurrence.input_table(params['embed']['embedding'], cat(0, 'i'),
                                          cat(0, 'h', 'bias'))
        return cls(embed_in, tuple(mats), tuple(biases))

    def start(self, carry):
        return tuple((c, h, jnp.einsum('bh,gh->bg', h, mat[:4 * h.shape[-1]]))
                     for (c, h), mat in zip(carry, self.mats, strict=True))

    def step(self, state, tokens_B: jax.Array):
        x_Bx4H = self.embed_in[tokens_B]
        new_state = []
        for (c, _, recurrent_Bx4H), mat, bias in zip(state, self.mats, self.biases,
                                                     strict=True):
            c, h, _ = recurrence.lstm_update(x_Bx4H + recurrent_Bx4H, c)
            both = jnp.einsum('bh,gh->bg', h, mat)
            new_state.append((c, h, both[:, :4 * h.shape[-1]]))
            x_Bx4H = both[:, 4 * h.shape[-1]:] + bias[None]
        return tuple(new_state), x_Bx4H

    def carry(self, state):
        return tuple((c, h) for c, h, _ in state)
