"""Dynamic evaluation (Krause et al. 2018): the model adapts to the text while it reads it.

The text is read in order, as a stateful model reads it: `streams` contiguous streams
(default 1, the text as one sequence), window after window of seq_len tokens, the carry
passed on. Each window is scored first, with the parameters as they are, and then the
parameters take one gradient step on that window's mean loss, pulled back towards the
trained ones by `decay`:
  sgd: theta <- theta - lr * g + decay * (theta_0 - theta)
  rms: theta <- theta - lr * g / (sqrt(MS) + eps) + decay * (theta_0 - theta)
where MS is the running mean square of the gradients seen so far (RMSprop's, with Adam's
bias correction), the RMS-normalised rule of the paper in spirit. lr=0 scores exactly
what the stateful static evaluation scores. The pass is one compiled scan over the
windows, on one device, with no host sync per window; the checkpoint is never modified.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from charlm import data, steps  # the loss is training's (steps._nll)
from charlm.errors import CharLMError

RULES = ('sgd', 'rms')


def windows(tokens: np.ndarray, seq_len: int, streams: int) -> dict[str, np.ndarray]:
    """The stateful evaluation's batches stacked: {'inputs', 'targets', 'weights'}: [W, S, T]."""
    batches = list(data.stateful_eval_batches(tokens, seq_len, data.Layout(streams, 1, 1)))
    keys = ('inputs', 'targets', 'weights')
    return {k: np.stack([b[k][0] for b in batches]) for k in keys}


@functools.partial(jax.jit, static_argnames=('model', 'rule'))
def adapt(model, params, windows_WxSxT: dict, lr: float, decay: float, *, rule: str = 'rms',
          beta: float = 0.99, eps: float = 1e-8):
    """Scores every window, then steps on it: (nll_W, count_W, adapted params)."""
    def body(loop, window):
        theta, ms, t, carry = loop

        def loss_fn(p):
            new_carry, nll_BxT = steps._nll(model, p, carry, window, False)
            nll = (nll_BxT * window['weights']).sum()
            return nll / jnp.maximum(window['weights'].sum(), 1.0), (nll, new_carry)

        (_, (nll, new_carry)), g = jax.value_and_grad(loss_fn, has_aux=True)(theta)
        t = t + 1
        if rule == 'rms':
            ms = jax.tree.map(lambda m, x: beta * m + (1 - beta) * x * x, ms, g)
            correction = 1 - beta ** t
            g = jax.tree.map(lambda x, m: x / (jnp.sqrt(m / correction) + eps), g, ms)
        theta = jax.tree.map(lambda p, d, p0: p - lr * d + decay * (p0 - p), theta, g, params)
        return (theta, ms, t, jax.lax.stop_gradient(new_carry)), (nll, window['weights'].sum())

    streams = windows_WxSxT['inputs'].shape[1]
    init = (params, jax.tree.map(jnp.zeros_like, params), jnp.float32(0),
            model.init_carry(streams))
    (theta, _, _, _), (nll_W, count_W) = jax.lax.scan(body, init, windows_WxSxT)
    return nll_W, count_W, theta


def dynamic_evaluate(model, params, tokens: np.ndarray, seq_len: int, *, lr: float,
                     decay: float = 0.0, rule: str = 'rms', streams: int = 1,
                     chars: int | None = None, unit: str = 'char') -> dict[str, float]:
    """Loss per token, bits per character and perplexity of `tokens`, read dynamically."""
    if rule not in RULES:
        raise CharLMError(f'--dynamic_rule must be one of {", ".join(RULES)}, got {rule!r}')
    if not lr >= 0 or not 0 <= decay < 1:
        raise CharLMError(f'--dynamic_lr must be >= 0 and --dynamic_decay in [0, 1), got '
                          f'{lr} and {decay}')
    if streams < 1:
        raise CharLMError(f'--dynamic_streams must be positive, got {streams}')
    w = windows(tokens, seq_len, streams)
    nll_W, count_W, _ = adapt(model, jax.device_put(params), w, float(lr), float(decay),
                              rule=rule)
    return steps.loss_metrics(float(np.asarray(nll_W, np.float64).sum()),
                              float(np.asarray(count_W, np.float64).sum()), chars, unit)
