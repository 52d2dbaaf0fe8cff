"""The output layer's loss for vocabularies of any size: cross-entropy in chunks of rows,
and Grave et al.'s adaptive softmax.

The full softmax over V tokens makes a [rows, V] block of logits. For a character model
(V = 65) the whole batch's block is small and is made at once, exactly as `model.apply`
makes it. For a large vocabulary (a 10k-character alphabet, a 40k-word model) the rows are
cut into chunks of at most `loss_chunk_mb` of logits, scanned one after the other, and
each chunk's logits are recomputed in the backward pass (`jax.checkpoint`) instead of
kept: the memory of the loss no longer grows with the vocabulary times the batch.

The adaptive softmax (Grave et al. 2017, "Efficient softmax approximation for GPUs", as
PyTorch's `nn.AdaptiveLogSoftmaxWithLoss` defines it) splits a frequency-ordered
vocabulary at `cutoffs` (c_0 < c_1 < ... < V): a head over the c_0 most frequent tokens
plus one logit per cluster [c_i, c_{i+1}); each cluster's tail is a projection to
H / div^(i+1) units and then its tokens (no biases). Exact log-probabilities:
  log p(t) = head_lsm[t]                                         t < c_0
  log p(t) = head_lsm[c_0 + i] + tail_lsm_i[t - c_i]             c_i <= t < c_{i+1}
Parameters (flat): 'head_kernel' [H, c_0 + n], 'head_bias' [c_0 + n], and per cluster
'tail{i}_proj' [H, h_i], 'tail{i}_out' [h_i, c_{i+1} - c_i].
Shapes: x_NxH float, targets_N int32, nll_N float32.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import optax

from charlm.errors import CharLMError

SOFTMAXES = ('full', 'adaptive')


def check(softmax: str, cutoffs: Sequence[int], vocab_size: int | None, chunk_mb: float,
          div: float = 4.0) -> None:
    """The output layer's settings, one line each; vocab_size None: before the corpus."""
    if softmax not in SOFTMAXES:
        raise CharLMError(f"unknown model.softmax {softmax!r}: use 'full' or 'adaptive'")
    if not chunk_mb > 0:
        raise CharLMError(f'model.loss_chunk_mb must be > 0 (MB of logits a chunk of the loss '
                          f'holds), got {chunk_mb!r}')
    if softmax != 'adaptive':
        return
    cutoffs = list(cutoffs)
    if not cutoffs or any(not isinstance(c, int) or c < 1 for c in cutoffs) or any(
            b <= a for a, b in zip(cutoffs, cutoffs[1:], strict=False)):
        raise CharLMError(f'model.adaptive_cutoffs must be increasing positive integers, e.g. '
                          f'(2000, 10000), got {tuple(cutoffs)!r}')
    if not div >= 1:
        raise CharLMError(f'model.adaptive_div must be >= 1, got {div!r}')
    if vocab_size is not None and cutoffs[-1] >= vocab_size:
        raise CharLMError(f'model.adaptive_cutoffs={tuple(cutoffs)} reach past the vocabulary '
                          f'of {vocab_size:,} tokens: every cutoff must be below it (the last '
                          'cluster ends at the vocabulary size)')


def chunk_rows(chunk_mb: float, width: int) -> int:
    """Rows of `width` float32 logits that fit in chunk_mb."""
    return max(1, int(chunk_mb * 2 ** 20) // (4 * width))


def chunked(fn: Callable, x_NxH: jax.Array, targets_N: jax.Array, rows: int) -> jax.Array:
    """fn(x_RxH, targets_R) -> nll_R over chunks of `rows` rows, each recomputed in the
    backward pass; one call when all rows fit."""
    n = x_NxH.shape[0]
    if n <= rows:
        return fn(x_NxH, targets_N)
    chunks = -(-n // rows)
    pad = chunks * rows - n  # padded rows score 0-targets; they are sliced off (no gradient)
    x_CxRxH = jnp.pad(x_NxH, ((0, pad), (0, 0))).reshape(chunks, rows, -1)
    t_CxR = jnp.pad(targets_N, (0, pad)).reshape(chunks, rows)
    step = jax.checkpoint(lambda xt: fn(*xt), prevent_cse=False)
    return jax.lax.map(step, (x_CxRxH, t_CxR)).reshape(-1)[:n]


# ------------------------------------------------------------------ the full softmax


def full_nll(logits_fn: Callable, x_NxH: jax.Array, targets_N: jax.Array, vocab_size: int,
             chunk_mb: float) -> jax.Array:
    """Cross-entropy of the full softmax; logits_fn(x_RxH) -> float32 logits_RxV."""
    def fn(x, t):
        return optax.softmax_cross_entropy_with_integer_labels(logits_fn(x), t)
    return chunked(fn, x_NxH, targets_N, chunk_rows(chunk_mb, vocab_size))


# ------------------------------------------------------------------ the adaptive softmax


def tail_sizes(hidden: int, cutoffs: Sequence[int], vocab_size: int, div: float = 4.0
               ) -> list[tuple[int, int]]:
    """(projection units, tokens) of each tail cluster, PyTorch's sizes."""
    edges = [*cutoffs, vocab_size]
    return [(max(1, int(hidden // div ** (i + 1))), edges[i + 1] - edges[i])
            for i in range(len(cutoffs))]


def adaptive_width(cutoffs: Sequence[int], vocab_size: int) -> int:
    """The widest block of logits the adaptive softmax makes for one row."""
    edges = [*cutoffs, vocab_size]
    return max([cutoffs[0] + len(cutoffs)]
               + [b - a for a, b in zip(edges, edges[1:], strict=False)])


def _dense(x, kernel, bias, dtype):
    y = jnp.dot(x.astype(dtype), kernel.astype(dtype))
    if bias is not None:
        y = y + bias.astype(dtype).reshape((1,) * (y.ndim - 1) + bias.shape)
    return y.astype(jnp.float32)


def _head_and_tails(params, x, cutoffs, dtype):
    head = _dense(x, params['head_kernel'], params['head_bias'], dtype)
    tails = [_dense(_dense(x, params[f'tail{i}_proj'], None, dtype), params[f'tail{i}_out'],
                    None, dtype) for i in range(len(cutoffs))]
    return head, tails


def adaptive_log_probs(params, x_NxH: jax.Array, cutoffs: Sequence[int], dtype=jnp.float32
                       ) -> jax.Array:
    """The full distribution's log-probabilities, logp_NxV (for sampling and scoring every
    token): the head's shortlist, then each cluster's log-prob plus its tail's."""
    head, tails = _head_and_tails(params, x_NxH, cutoffs, dtype)
    head = jax.nn.log_softmax(head, axis=-1)
    c0 = cutoffs[0]
    parts = [head[..., :c0]] + [head[..., c0 + i:c0 + i + 1] + jax.nn.log_softmax(t, axis=-1)
                                for i, t in enumerate(tails)]
    return jnp.concatenate(parts, axis=-1)


def adaptive_nll(params, x_NxH: jax.Array, targets_N: jax.Array, cutoffs: Sequence[int],
                 vocab_size: int, chunk_mb: float, dtype=jnp.float32) -> jax.Array:
    """-log p(target) under the adaptive softmax, without assembling the distribution:
    a logsumexp and one gather per block."""
    c0, edges = cutoffs[0], [*cutoffs, vocab_size]

    def pick(logits_RxK, i_R):  # log_softmax(logits)[i], row by row
        lse = jax.nn.logsumexp(logits_RxK, axis=-1)
        return jnp.take_along_axis(logits_RxK, i_R[:, None], axis=-1)[:, 0] - lse

    def fn(x, t):
        head, tails = _head_and_tails(params, x, cutoffs, dtype)
        cluster = jnp.searchsorted(jnp.asarray(edges[:-1]), t, side='right') - 1  # -1: head
        logp = pick(head, jnp.where(cluster < 0, t, c0 + cluster))
        for i, tail in enumerate(tails):
            inside = cluster == i
            logp += jnp.where(inside, pick(tail, jnp.where(inside, t - edges[i], 0)), 0.0)
        return -logp

    return chunked(fn, x_NxH, targets_N, chunk_rows(chunk_mb, adaptive_width(cutoffs,
                                                                             vocab_size)))
