"""Dynamic evaluation (Krause et al. 2018): the model adapts to the text while it reads it.

The text is read in order, as a stateful model reads it: `streams` contiguous streams
(default 1, the text as one sequence), window after window of seq_len tokens, the carry
passed on. Each window is scored first, with the parameters as they are, and then the
parameters take one gradient step on that window's mean loss, pulled back towards the
trained ones by `decay`:
  sgd: theta <- theta - lr * g + decay * (theta_0 - theta)
  rms: theta <- theta - lr * g / (sqrt(MS) + eps) + decay * (theta_0 - theta)
where MS is the running mean square of the gradients seen so far (RMSprop's, with Adam's
bias correction). `rms-global` is the paper's own rule (its Section 5, "RMS with an RMS
global prior"): the mean squares come once from gradients of the training split
(`gradient_stats`), and each parameter is pulled back at a rate that grows with its RMS:
  rms-global: theta <- theta - lr * g / (RMS + eps) + decay * r * (theta_0 - theta),
  r = min(RMS / mean RMS, 1 / decay)   (mean RMS: the mean over tensors of each one's mean)
with eps = 1e-3 x mean RMS, so no setting depends on the scale of the gradients.
`seq_len` is the segment read between updates: shorter segments update more often
(the paper's code defaults to 5 tokens, for word-level PTB). lr=0 scores exactly what the
stateful static evaluation scores. The pass is one compiled scan over the windows, on
one device, with no host sync per window; the checkpoint is never modified.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from charlm import data, steps  # the loss is training's (steps._nll)
from charlm.errors import CharLMError

RULES = ('sgd', 'rms', 'rms-global')
EPS_OF_MEAN_RMS = 1e-3  # rms-global's eps, relative to the mean RMS
# Every setting but lr, as the command line defaults it (seq_len 0: the run's data.seq_len).
DEFAULTS = {'decay': 0.0, 'rule': 'rms', 'streams': 1, 'seq_len': 0, 'stats_tokens': 1_000_000}


def windows(tokens: np.ndarray, seq_len: int, streams: int, max_tokens: int = 0
            ) -> dict[str, np.ndarray]:
    """The stateful evaluation's batches stacked: {'inputs', 'targets', 'weights'}: [W, S, T]."""
    batches = list(data.stateful_eval_batches(tokens, seq_len, data.Layout(streams, 1, 1),
                                              max_tokens))
    keys = ('inputs', 'targets', 'weights')
    return {k: np.stack([b[k][0] for b in batches]) for k in keys}


def check_settings(*, lr: float, decay: float = DEFAULTS['decay'], rule: str = DEFAULTS['rule'],
                   streams: int = DEFAULTS['streams'], seq_len: int = DEFAULTS['seq_len'],
                   stats_tokens: int = DEFAULTS['stats_tokens']) -> None:
    """Bad settings as one line each (seq_len 0 stands for the run's own), before any work."""
    if rule not in RULES:
        raise CharLMError(f'--dynamic_rule must be one of {", ".join(RULES)}, got {rule!r}')
    if not lr >= 0 or not 0 <= decay < 1:
        raise CharLMError(f'--dynamic_lr must be >= 0 and --dynamic_decay in [0, 1), got '
                          f'{lr} and {decay}')
    if streams < 1:
        raise CharLMError(f'--dynamic_streams must be positive, got {streams}')
    if seq_len < 0:
        raise CharLMError(f'--dynamic_seq_len must be positive (0: the run\'s data.seq_len), '
                          f'got {seq_len}')
    if stats_tokens < 0:
        raise CharLMError(f'--dynamic_stats_tokens must be >= 0 (0: all), got {stats_tokens}')


def _window_grad(model, params, carry, window):
    """((summed nll, new carry), gradient of the window's mean loss) from `carry`."""
    def loss_fn(p):
        new_carry, nll_BxT = steps._nll(model, p, carry, window, False)
        nll = (nll_BxT * window['weights']).sum()
        return nll / jnp.maximum(window['weights'].sum(), 1.0), (nll, new_carry)

    (_, aux), g = jax.value_and_grad(loss_fn, has_aux=True)(params)
    return aux, g


@functools.partial(jax.jit, static_argnames=('model',))
def _sum_squared_grads(model, params, windows_WxSxT: dict):
    """Sum over windows of each window's squared gradient, the streams read statefully."""
    def body(loop, window):
        sq, carry = loop
        (_, new_carry), g = _window_grad(model, params, carry, window)
        sq = jax.tree.map(lambda s, x: s + x * x, sq, g)
        return (sq, jax.lax.stop_gradient(new_carry)), None

    init = (jax.tree.map(jnp.zeros_like, params),
            model.init_carry(windows_WxSxT['inputs'].shape[1]))
    (sq, _), _ = jax.lax.scan(body, init, windows_WxSxT)
    return sq


def gradient_stats(model, params, tokens: np.ndarray, seq_len: int, *, streams: int = 64,
                   max_tokens: int = DEFAULTS['stats_tokens']) -> dict[str, Any]:
    """rms-global's prior from training text: {'rms': per-parameter RMS of the gradient of a
    window's mean loss (`streams` streams of `seq_len`, read statefully, at most
    `max_tokens` targets; 0 = all), 'mean_rms': the mean over tensors of each one's mean}."""
    w = windows(tokens, seq_len, streams, max_tokens)
    sq = _sum_squared_grads(model, jax.device_put(params), w)
    rms = jax.tree.map(lambda s: jnp.sqrt(s / len(w['inputs'])), sq)
    leaves = jax.tree.leaves(rms)
    return {'rms': rms, 'mean_rms': sum(float(x.mean()) for x in leaves) / len(leaves)}


@functools.partial(jax.jit, static_argnames=('model', 'rule'))
def adapt(model, params, windows_WxSxT: dict, lr: float, decay: float, *, rule: str = 'rms',
          prior=None, beta: float = 0.99, eps: float = 1e-8):
    """Scores every window, then steps on it: (nll_W, count_W, adapted params).
    `prior` is `gradient_stats`'s output, for rule 'rms-global'."""
    if rule == 'rms-global':
        rms, mean_rms = prior['rms'], prior['mean_rms']
        # each parameter's pull-back rate, capped so that one step never overshoots theta_0
        rate = jax.tree.map(lambda r: jnp.minimum(r / mean_rms, 1.0 / jnp.maximum(decay, 1e-12)),
                            rms)

    def body(loop, window):
        theta, ms, t, carry = loop
        (nll, new_carry), g = _window_grad(model, theta, carry, window)
        t = t + 1
        if rule == 'rms':
            ms = jax.tree.map(lambda m, x: beta * m + (1 - beta) * x * x, ms, g)
            correction = 1 - beta ** t
            g = jax.tree.map(lambda x, m: x / (jnp.sqrt(m / correction) + eps), g, ms)
        if rule == 'rms-global':
            theta = jax.tree.map(
                lambda p, x, p0, r, k: p - lr * x / (r + EPS_OF_MEAN_RMS * mean_rms)
                + decay * k * (p0 - p), theta, g, params, rms, rate)
        else:
            theta = jax.tree.map(lambda p, d, p0: p - lr * d + decay * (p0 - p), theta, g,
                                 params)
        return (theta, ms, t, jax.lax.stop_gradient(new_carry)), (nll, window['weights'].sum())

    streams = windows_WxSxT['inputs'].shape[1]
    init = (params, jax.tree.map(jnp.zeros_like, params), jnp.float32(0),
            model.init_carry(streams))
    (theta, _, _, _), (nll_W, count_W) = jax.lax.scan(body, init, windows_WxSxT)
    return nll_W, count_W, theta


def dynamic_evaluate(model, params, tokens: np.ndarray, seq_len: int, *, lr: float,
                     decay: float = 0.0, rule: str = 'rms', streams: int = 1, prior=None,
                     chars: int | None = None, unit: str = 'char') -> dict[str, float]:
    """Loss per token, bits per character and perplexity of `tokens`, read dynamically in
    segments of `seq_len`; rule 'rms-global' needs `prior` (`gradient_stats`)."""
    check_settings(lr=lr, decay=decay, rule=rule, streams=streams, seq_len=seq_len)
    if seq_len < 1:
        raise CharLMError(f'dynamic evaluation reads segments of at least 1 token, got {seq_len}')
    if rule == 'rms-global' and prior is None:
        raise CharLMError('--dynamic_rule=rms-global needs the gradient statistics of '
                          'training text (charlm.dynamic.gradient_stats)')
    w = windows(tokens, seq_len, streams)
    nll_W, count_W, _ = adapt(model, jax.device_put(params), w, float(lr), float(decay),
                              rule=rule, prior=prior if rule == 'rms-global' else None)
    return steps.loss_metrics(float(np.asarray(nll_W, np.float64).sum()),
                              float(np.asarray(count_W, np.float64).sum()), chars, unit)
