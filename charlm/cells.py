"""charlm's own recurrent cells, beside Flax's, each a plain `nn.RNNCellBase` cell:
`__call__(carry, x_BxE) -> (carry, h_BxH)` and `initialize_carry(rng, input_shape)`,
so `charlm.model` scans them over time with `nn.scan` as it does Flax's cells.

  MinGRUCell         Feng et al. 2024, "Were RNNs All We Needed?", minGRU: the gate and
                     candidate from x_t alone,
                       z_t = sigmoid(W_z x_t + b_z),  h~_t = g(W_h x_t + b_h),
                       h_t = (1 - z_t) * h_{t-1} + z_t * h~_t.
  MinLSTMCell        the same paper's minLSTM, forget and input gates normalised to sum to 1,
                       f_t = sigmoid(W_f x_t + b_f),  i_t = sigmoid(W_i x_t + b_i),
                       h_t = f_t / (f_t + i_t) * h_{t-1} + i_t / (f_t + i_t) * h~_t.
                     g(x) = x + 0.5 (x >= 0), sigmoid(x) (x < 0) keeps h~_t positive, so
                     both run in log space, as the paper's log-space implementation does.
                     Neither gate sees h_{t-1}: a whole sequence is the linear recurrence
                     h_t = a_t * h_{t-1} + b_t, which `ParallelMinRNN` (the layer
                     `RecurrentLM` uses, with the cell's parameters) runs as one parallel
                     scan over time (for one token, the sampler's step, it is the cell's
                     step); the cell is what nn.scan (model.impl='cell') steps.
  LayerNormLSTMCell  the LSTM with layer normalisation (Ba et al. 2016, "Layer
                     Normalization"), in the form of Ha et al. 2016 ("HyperNetworks"):
                       [i, f, g, o] = LN_x(W_x x_t) + LN_h(W_h h_{t-1}) + b   (over all 4H),
                       c_t = sigmoid(f) * c_{t-1} + sigmoid(i) * tanh(g),
                       h_t = sigmoid(o) * tanh(LN_c(c_t)).
  MogrifierLSTMCell  Melis et al. 2020, "Mogrifier LSTM": x_t and h_{t-1} first gate each
                     other for `rounds` rounds, round r = 1, 2, ...:
                       odd r:  x <- 2 * sigmoid(Q^r h) * x,   even r:  h <- 2 * sigmoid(R^r x) * h,
                     then a standard LSTM step on the mogrified x and h; Q^r and R^r
                     full-rank, or (`rank` k) products of [., k] and [k, .] matrices.

The LSTM-like cells keep nn.OptimizedLSTMCell's parameters (ii..io, hi..ho) beside their
own, so AWD-LSTM's weight drop finds their recurrent kernels h*. Each cell sows its gates
(sigmoid outputs, by name) into 'intermediates' for `charlm.gates`: free unless asked for.
Carries and gates are float32 whatever the matmul dtype.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn

from charlm import kernels, recurrence

# ------------------------------------------------------------------ minGRU, minLSTM


def log_g(x: jax.Array) -> jax.Array:
    """log g(x), g(x) = x + 0.5 for x >= 0 and sigmoid(x) below: positive and continuous
    (Feng et al.'s candidate activation), its log computed without overflow."""
    return jnp.where(x >= 0, jnp.log(jax.nn.relu(x) + 0.5), jax.nn.log_sigmoid(x))


def _dense(features: int, dtype, name: str, x: jax.Array) -> jax.Array:
    """An input projection (kernel and bias) made in the calling module, float32 out."""
    return nn.Dense(features, dtype=dtype, name=name)(x).astype(jnp.float32)


def _mingru_coefficients(features: int, dtype, x_xE: jax.Array):
    """minGRU as h_t = a_t * h_{t-1} + b_t: (log a_t, log b_t, gates), any leading axes."""
    k_z = _dense(features, dtype, 'iz', x_xE)
    log_h_tilde = log_g(_dense(features, dtype, 'ih', x_xE))
    # log(1 - z) = log_sigmoid(-k), log z = log_sigmoid(k)
    log_a = jax.nn.log_sigmoid(-k_z)
    return log_a, jax.nn.log_sigmoid(k_z) + log_h_tilde, {'update': jax.nn.sigmoid(k_z)}


def _minlstm_coefficients(features: int, dtype, x_xE: jax.Array):
    """minLSTM as h_t = a_t * h_{t-1} + b_t: (log a_t, log b_t, gates), any leading axes."""
    k_f = _dense(features, dtype, 'if', x_xE)
    k_i = _dense(features, dtype, 'ii', x_xE)
    log_h_tilde = log_g(_dense(features, dtype, 'ih', x_xE))
    # f / (f + i) = 1 / (1 + i / f); log(i / f) = softplus(-k_f) - softplus(-k_i)
    log_i_over_f = jax.nn.softplus(-k_f) - jax.nn.softplus(-k_i)
    log_f_norm, log_i_norm = -jax.nn.softplus(log_i_over_f), -jax.nn.softplus(-log_i_over_f)
    gates = {'forget': jax.nn.sigmoid(k_f), 'input': jax.nn.sigmoid(k_i)}
    return log_f_norm, log_i_norm + log_h_tilde, gates


COEFFICIENTS = {'mingru': _mingru_coefficients, 'minlstm': _minlstm_coefficients}
PARALLEL = tuple(COEFFICIENTS)  # the cells whose sequences run as ParallelMinRNN


def log_space_scan(log_a_BxTxH: jax.Array, log_b_BxTxH: jax.Array, h0_BxH: jax.Array
                   ) -> jax.Array:
    """h_BxTxH of h_t = a_t * h_{t-1} + b_t (t = 1..T) from h_0, with a_t, b_t > 0 as logs.

    Two steps compose into one, (a1, b1) then (a2, b2) = (a1 a2, a2 b1 + b2), so
    `jax.lax.associative_scan` makes all T prefixes in O(log T) depth; in log space,
    log(a2 b1 + b2) = logaddexp(log a2 + log b1, log b2), long products neither underflow
    nor lose their precision. h_0 enters linearly, h_t = A_t h_0 + B_t, so it may be of any
    sign (a carried state), where the paper's log h_0 needs it positive.
    """
    def compose(first, second):
        log_a1, log_b1 = first
        log_a2, log_b2 = second
        return log_a1 + log_a2, jnp.logaddexp(log_a2 + log_b1, log_b2)

    log_A, log_B = jax.lax.associative_scan(compose, (log_a_BxTxH, log_b_BxTxH), axis=1)
    return jnp.exp(log_A) * h0_BxH[:, None] + jnp.exp(log_B)


class MinGRUCell(nn.RNNCellBase):
    """minGRU, one step (Feng et al. 2024); carry h_BxH. Parameters: Dense iz, ih."""

    features: int
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    carry_init: Any = nn.initializers.zeros_init()
    kind = 'mingru'  # which COEFFICIENTS (a class constant, not a field)

    @nn.compact
    def __call__(self, carry, x_BxE):
        log_a_BxH, log_b_BxH, gates = COEFFICIENTS[self.kind](self.features, self.dtype,
                                                              x_BxE)
        for name, value in gates.items():
            self.sow('intermediates', name, value)
        h_BxH = jnp.exp(log_a_BxH) * carry + jnp.exp(log_b_BxH)
        return h_BxH, h_BxH

    @nn.nowrap
    def initialize_carry(self, rng, input_shape: tuple[int, ...]):
        return self.carry_init(rng, (*input_shape[:-1], self.features), self.param_dtype)

    @property
    def num_feature_axes(self) -> int:
        return 1


class MinLSTMCell(MinGRUCell):
    """minLSTM, one step (Feng et al. 2024); carry h_BxH. Parameters: Dense if, ii, ih."""

    kind = 'minlstm'


class ParallelMinRNN(nn.Module):
    """A minGRU or minLSTM layer over a whole sequence: the cell's parameters (same names,
    shapes and initialisers), the recurrence as one `log_space_scan` over time, from the
    carried h_0. Same outputs and gradients as nn.scan over the cell (tests check this).

    Its O(log T) depth is for many cores (GPU/TPU, long sequences; not measured here). On
    a 2-core CPU it is the slower form: the recurrence alone at 64 x 100 x 256 took 156 ms
    forward and backward against 51 ms for a sequential scan, a 2 x 256 minGRU training
    step about 0.8 s against 0.4 s with nn.scan over the cell (model.impl='cell').
    """

    features: int
    cell: str  # 'mingru' | 'minlstm'
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, carry, x_BxTxE):
        """(h_BxH at the last step, h_BxTxH)."""
        log_a, log_b, _ = COEFFICIENTS[self.cell](self.features, self.dtype, x_BxTxE)
        h_BxTxH = log_space_scan(log_a, log_b, carry)
        return h_BxTxH[:, -1], h_BxTxH


# ------------------------------------------------------------------ LSTM variants


class _LSTMVariant(nn.RNNCellBase):
    """What the LSTM-like cells share: carry (c_BxH, h_BxH) and the gates' last step."""

    features: int
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    carry_init: Any = nn.initializers.zeros_init()

    def _gates(self, z_Bx4H):
        """(i, f, g, o) activated, from pre-activations in kernels.GATES order; sown."""
        i, f, g, o = jnp.split(z_Bx4H, 4, axis=-1)
        i, f, o = jax.nn.sigmoid(i), jax.nn.sigmoid(f), jax.nn.sigmoid(o)
        for name, value in (('forget', f), ('input', i), ('output', o)):
            self.sow('intermediates', name, value)
        return i, f, jnp.tanh(g), o

    def _weights(self, in_features: int):
        """nn.OptimizedLSTMCell's ii..io, hi..ho: (W_x [E, 4H], W_h [H, 4H], b [4H])."""
        w_x, w_h, b = kernels._lstm_params(in_features, self.features)
        return w_x.astype(self.dtype), w_h.astype(self.dtype), b

    @nn.nowrap
    def initialize_carry(self, rng, input_shape: tuple[int, ...]):
        shape = (*input_shape[:-1], self.features)
        key_c, key_h = jax.random.split(rng)
        return (self.carry_init(key_c, shape, self.param_dtype),
                self.carry_init(key_h, shape, self.param_dtype))

    @property
    def num_feature_axes(self) -> int:
        return 1


class LayerNormLSTMCell(_LSTMVariant):
    """The LayerNorm LSTM of Ha et al. 2016 / Ba et al. 2016, one step; carry (c, h).

    LN_x and LN_h have gains only: the LSTM's bias b (of the Dense layers h*) is the
    shift they share. LN_c has a gain and a shift.
    """

    @nn.compact
    def __call__(self, carry, x_BxE):
        c_BxH, h_BxH = carry
        w_x, w_h, b_4H = self._weights(x_BxE.shape[-1])
        norm = dict(dtype=jnp.float32, param_dtype=self.param_dtype)
        z_Bx4H = (nn.LayerNorm(use_bias=False, **norm, name='ln_x')(
                      recurrence.mm('be,eg->bg', x_BxE, w_x))
                  + nn.LayerNorm(use_bias=False, **norm, name='ln_h')(
                      recurrence.mm('bh,hg->bg', h_BxH, w_h))
                  + b_4H[None])
        i, f, g, o = self._gates(z_Bx4H)
        c_BxH = f * c_BxH + i * g
        h_BxH = o * jnp.tanh(nn.LayerNorm(**norm, name='ln_c')(c_BxH))
        return (c_BxH, h_BxH), h_BxH


class MogrifierLSTMCell(_LSTMVariant):
    """The Mogrifier LSTM of Melis et al. 2020, one step; carry (c, h).

    Q^r [H, E] (Dense q1, q3, ...) and R^r [E, H] (Dense r2, r4, ...), no bias; with
    `rank` k > 0 each is a product of two, Q^r = Q^r_left [H, k] Q^r_right [k, E] (Dense
    q1_left, q1_right, ...), the paper's low-rank form. `rounds`=0 is the plain LSTM. The
    carried h is the LSTM's output, not the mogrified h.
    """

    rounds: int = 5
    rank: int = 0  # 0: full-rank Q and R

    def _project(self, features: int, name: str, v):
        """v @ Q (or R): one matrix, or a rank-`rank` product of two."""
        if not self.rank:
            return nn.Dense(features, use_bias=False, dtype=self.dtype, name=name)(v)
        v = nn.Dense(self.rank, use_bias=False, dtype=self.dtype, name=f'{name}_left')(v)
        return nn.Dense(features, use_bias=False, dtype=self.dtype, name=f'{name}_right')(v)

    @nn.compact
    def __call__(self, carry, x_BxE):
        c_BxH, h_BxH = carry
        h_in_BxH, x_BxE = h_BxH, x_BxE.astype(jnp.float32)
        for r in range(1, self.rounds + 1):
            if r % 2:
                q_BxE = self._project(x_BxE.shape[-1], f'q{r}', h_in_BxH)
                x_BxE = 2 * jax.nn.sigmoid(q_BxE.astype(jnp.float32)) * x_BxE
            else:
                r_BxH = self._project(self.features, f'r{r}', x_BxE)
                h_in_BxH = 2 * jax.nn.sigmoid(r_BxH.astype(jnp.float32)) * h_in_BxH
        w_x, w_h, b_4H = self._weights(x_BxE.shape[-1])
        z_Bx4H = (recurrence.mm('be,eg->bg', x_BxE, w_x)
                  + recurrence.mm('bh,hg->bg', h_in_BxH, w_h) + b_4H[None])
        i, f, g, o = self._gates(z_Bx4H)
        c_BxH = f * c_BxH + i * g
        h_BxH = o * jnp.tanh(c_BxH)
        return (c_BxH, h_BxH), h_BxH
