"""The LSTM time loop over a hoisted input term (x @ W_i + b for every step, made before the
loop), and its custom backward pass: what `charlm.kernels`' HoistedLSTM and FoldedLSTM run.

  carry, h_TxBxH = recurrence.lstm_recurrence(w_h, xw_TxBx4H, c0_BxH, h0_BxH, unroll=1)

Gates in nn.OptimizedLSTMCell's order (i, f, g, o, `kernels.GATES`). The forward writes
each step's gates in place of its input term; the backward runs only dz_t @ W_h^T inside
the reverse loop and dW_h as one matmul after it. Each trick carries its measured why.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np


def mm(spec: str, a, b):
    """einsum in b's dtype with float32 results (accumulated in float32 where the backend can:
    XLA:CPU has no bf16 x bf16 -> f32 dot, so there the product is cast afterwards)."""
    a = a.astype(b.dtype)
    if b.dtype == jnp.float32 or jax.default_backend() != 'cpu':
        return jnp.einsum(spec, a, b, preferred_element_type=jnp.float32)
    return jnp.einsum(spec, a, b).astype(jnp.float32)


def _g_columns(h4: int, dtype) -> jax.Array:
    """[1, 4H]: 1 on the columns of the candidate gate g (tanh), 0 on i, f, o (sigmoid)."""
    return jnp.asarray(np.repeat(np.array([[0, 0, 1, 0]], np.float32), h4 // 4, axis=1), dtype)


def _activate(z_Bx4H: jax.Array) -> jax.Array:
    """sigmoid on the i, f, o gates and tanh on g, as one elementwise pass over [B, 4H].

    sigmoid(z) = tanh(z / 2) / 2 + 1 / 2, so every gate is s * tanh(s * z) + s' with
    per-column constants: one kernel over the four gates (not four slices and a
    concatenate), which is what the time loop pays for on a CPU, a kernel per op per step.
    """
    is_g = _g_columns(z_Bx4H.shape[-1], z_Bx4H.dtype)
    scale = 0.5 + 0.5 * is_g
    return scale * jnp.tanh(scale * z_Bx4H) + (0.5 - 0.5 * is_g)


def _read(buf_TxN, t):
    """buf[t] for a traced t (no negative-index handling: t is always in range)."""
    return jax.lax.dynamic_index_in_dim(buf_TxN, t, 0, False)


def _write(buf_TxN, t, x):
    """buf with buf[t] = x, in place where buf has no other reader."""
    return jax.lax.dynamic_update_index_in_dim(buf_TxN, x, t, 0)


def lstm_update(z_Bx4H, c):
    """The LSTM equations from the gates' pre-activations z (i, f, g, o): (c, h, gates)."""
    gates = _activate(z_Bx4H)
    i, f, g, o = jnp.split(gates, 4, axis=-1)
    c = f * c + i * g
    return c, o * jnp.tanh(c), gates


def _lstm_cell(w_h, xw_Bx4H, c, h):
    """One LSTM time step from the hoisted input term: (c, h, gates)."""
    return lstm_update(xw_Bx4H + mm('bh,hg->bg', h, w_h), c)


def input_table(embedding_VxE, w_i, b):
    """Layer 0's input term for every token id: embedding @ W_i + b, [V, 4H]."""
    return mm('ve,eg->vg', embedding_VxE, w_i) + b[None]


def _lstm_forward(w_h, xw_TxBx4H, c0_BxH, h0_BxH, unroll, residuals=True):
    """The recurrence; returns (c_T, h_T), h_TxBxH and (if asked) what the backward needs.

    Without residuals the loop writes only h_t: a forward-only pass (evaluation, sampling)
    does not pay for storing every step's gates. With them and unroll=1, step t's gates
    overwrite xw_t, which nothing reads again, in place (and the backward's dz_t
    overwrites the gates in turn): no fresh [T, B, 4H] buffers to zero and copy per
    layer, which made CPU training 4-9% slower. Each step reads the next xw slice before
    the loop goes on, so the buffer's only reader inside the loop is its own update
    (otherwise XLA copies the whole buffer every step). Unrolled, that pattern ran 2.4x
    slower than a plain scan, so unroll > 1 takes the scan.
    """
    if not residuals or unroll > 1:
        def step(carry, xw_Bx4H):
            c, h, gates = _lstm_cell(w_h, xw_Bx4H, *carry)
            return (c, h), (h, c, gates) if residuals else h
        carry, ys = jax.lax.scan(step, (c0_BxH, h0_BxH), xw_TxBx4H, unroll=unroll)
        return (carry, ys[0], ys[1:]) if residuals else (carry, ys, None)

    steps = xw_TxBx4H.shape[0]

    def body(t, loop):  # xw_t was read by the step before, so the write can be in place
        c, h, xw_Bx4H, buf_TxBx4H, h_TxBxH, c_TxBxH = loop
        c, h, gates = _lstm_cell(w_h, xw_Bx4H, c, h)
        buf_TxBx4H = _write(buf_TxBx4H, t, gates)
        return (c, h, _read(buf_TxBx4H, jnp.minimum(t + 1, steps - 1)), buf_TxBx4H,
                _write(h_TxBxH, t, h), _write(c_TxBxH, t, c))

    zeros = jnp.zeros((steps, *c0_BxH.shape), c0_BxH.dtype)
    c, h, _, gates_TxBx4H, h_TxBxH, c_TxBxH = jax.lax.fori_loop(
        0, steps, body, (c0_BxH, h0_BxH, xw_TxBx4H[0], xw_TxBx4H, zeros, zeros))
    return (c, h), h_TxBxH, (c_TxBxH, gates_TxBx4H)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def lstm_recurrence(w_h, xw_TxBx4H, c0_BxH, h0_BxH, unroll=1):
    """h_t, c_t over time given the hoisted input projection xw; ((c_T, h_T), h_TxBxH).

    The custom backward pass runs only dz_t @ W_h^T inside the reverse time loop and
    computes dW_h = sum_t h_{t-1}^T dz_t as one matmul afterwards, instead of JAX's
    default of accumulating the [H, 4H] weight gradient at every time step.
    """
    carry, h_TxBxH, _ = _lstm_forward(w_h, xw_TxBx4H, c0_BxH, h0_BxH, unroll, residuals=False)
    return carry, h_TxBxH


def _lstm_fwd(w_h, xw_TxBx4H, c0_BxH, h0_BxH, unroll):
    carry, h_TxBxH, (c_TxBxH, gates_TxBx4H) = _lstm_forward(w_h, xw_TxBx4H, c0_BxH, h0_BxH,
                                                            unroll)
    return (carry, h_TxBxH), (w_h, c0_BxH, h0_BxH, h_TxBxH, c_TxBxH, gates_TxBx4H)


def _lstm_cell_bwd(m_g, gates, c, c_prev, dh, dc_next):
    """One step back through `_lstm_cell`: (dz, dc) given dh = dL/dh_t (all paths)."""
    i, f, g, o = jnp.split(gates, 4, axis=-1)
    tanh_c = jnp.tanh(c)
    dc = dc_next + dh * o * (1 - tanh_c * tanh_c)
    # The four slopes in one pass: sigmoid' = a (1 - a) on i, f, o; tanh' = 1 - a^2 on g.
    slope = (1 - m_g) * gates * (1 - gates) + m_g * (1 - gates * gates)
    dz = jnp.concatenate([dc * g, dc * c_prev, dc * i, dh * tanh_c], axis=-1) * slope
    return dz, dc * f


def _lstm_bwd(unroll, res, cotangents):
    w_h, c0, h0, h_TxBxH, c_TxBxH, gates_TxBx4H = res
    (dc_T, dh_T), dh_out_TxBxH = cotangents
    # W_h^T as a [4H, H] array of its own, made once: XLA:CPU's dot over W_h's rows
    # (dz @ W_h^T in place) ran 1.5x slower per step than a plain dot with the transpose.
    w_hT = jax.lax.optimization_barrier(w_h.T)
    m_g = _g_columns(gates_TxBx4H.shape[-1], gates_TxBx4H.dtype)
    steps = gates_TxBx4H.shape[0]

    if unroll > 1:  # a plain reverse scan (see _lstm_forward)
        def step(carry, xs):
            dc_next, dh_next = carry
            dh_out, c, c_prev, gates = xs
            dz, dc_f = _lstm_cell_bwd(m_g, gates, c, c_prev, dh_out + dh_next, dc_next)
            return (dc_f, mm('bg,gh->bh', dz, w_hT)), dz

        c_prev_TxBxH = jnp.concatenate([c0[None], c_TxBxH[:-1]], axis=0)
        (dc0, dh0), dz_TxBx4H = jax.lax.scan(
            step, (dc_T, dh_T), (dh_out_TxBxH, c_TxBxH, c_prev_TxBxH, gates_TxBx4H),
            reverse=True, unroll=unroll)
    else:
        def body(k, loop):  # time step t = T - 1 - k; dz_t overwrites gates_t in place
            dc_next, dh_next, gates, buf_TxBx4H = loop
            t = steps - 1 - k
            c_prev = jnp.where(t > 0, _read(c_TxBxH, jnp.maximum(t - 1, 0)), c0)
            dz, dc_f = _lstm_cell_bwd(m_g, gates, _read(c_TxBxH, t), c_prev,
                                      _read(dh_out_TxBxH, t) + dh_next, dc_next)
            buf_TxBx4H = _write(buf_TxBx4H, t, dz)
            return (dc_f, mm('bg,gh->bh', dz, w_hT),
                    _read(buf_TxBx4H, jnp.maximum(t - 1, 0)), buf_TxBx4H)

        dc0, dh0, _, dz_TxBx4H = jax.lax.fori_loop(
            0, steps, body, (dc_T, dh_T, gates_TxBx4H[-1], gates_TxBx4H))
    h_prev_TxBxH = jnp.concatenate([h0[None], h_TxBxH[:-1]], axis=0)
    dw_h = mm('nh,ng->hg', h_prev_TxBxH.reshape(-1, h0.shape[-1]),
               dz_TxBx4H.reshape(-1, dz_TxBx4H.shape[-1]).astype(w_h.dtype))
    return dw_h.astype(w_h.dtype), dz_TxBx4H, dc0, dh0


lstm_recurrence.defvjp(_lstm_fwd, _lstm_bwd)
