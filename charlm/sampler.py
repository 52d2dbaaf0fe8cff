"""Generation as one compiled loop: prime the carry on the prompt, then a fixed-length scan.

Decoding order for each token: top-k (keep the k most likely, 0 = off), then top-p
(keep the smallest set whose probability reaches p, 1.0 = off; computed on the top-k
renormalised distribution), then temperature (0 = greedy argmax). Token t of stream b
uses the key fold_in(fold_in(key, b), t), with t counted from the end of the prompt, so
the same key gives the same text whatever the chunk size, and streams differ.

Works on token ids for any tokenizer; decoding to text is the tokenizer's job.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator

import jax
import jax.numpy as jnp
import numpy as np

from charlm.errors import CharLMError


def filter_logits(logits_BxV: jax.Array, top_k: int = 0, top_p: float | jax.Array = 1.0
                  ) -> jax.Array:
    """Logits with everything outside the top-k and the nucleus set to -inf."""
    if top_k:
        kth_Bx1 = jax.lax.top_k(logits_BxV, top_k)[0][:, -1:]
        logits_BxV = jnp.where(logits_BxV < kth_Bx1, -jnp.inf, logits_BxV)
    sorted_BxV = jnp.sort(logits_BxV, axis=-1)[:, ::-1]
    probs_BxV = jax.nn.softmax(sorted_BxV, axis=-1)
    # A token stays if the tokens more likely than it hold less than top_p.
    before_BxV = jnp.cumsum(probs_BxV, axis=-1) - probs_BxV
    kept = jnp.where((before_BxV < top_p) | (top_p >= 1.0), sorted_BxV, jnp.inf)
    cutoff_Bx1 = jnp.min(kept, axis=-1, keepdims=True)
    return jnp.where(logits_BxV < cutoff_Bx1, -jnp.inf, logits_BxV)


def choose(key_B: jax.Array, logits_BxV: jax.Array, temperature, top_k: int, top_p
           ) -> jax.Array:
    """One token per stream: int32[B]."""
    logits_BxV = filter_logits(logits_BxV, top_k, top_p)
    greedy_B = jnp.argmax(logits_BxV, axis=-1)
    scaled = logits_BxV / jnp.maximum(temperature, 1e-6)
    sampled_B = jax.vmap(jax.random.categorical)(key_B, scaled)
    return jnp.where(temperature > 0, sampled_B, greedy_B).astype(jnp.int32)


@functools.partial(jax.jit, static_argnames=('model',))
def prime(model, params, carry, prompt_BxP: jax.Array):
    """Runs the whole prompt in one call: (carry after it, logits for the next token)."""
    carry, logits_BxPxV = model.apply({'params': params}, carry, prompt_BxP)
    return carry, logits_BxPxV[:, -1]


@functools.partial(jax.jit, static_argnames=('model', 'length', 'top_k'))
def generate(model, params, carry, logits_BxV, keys_B, start, length: int, temperature=1.0,
             top_k: int = 0, top_p=1.0):
    """`length` tokens per stream from (carry, logits); returns (carry, logits, tokens_BxL).

    `keys_B` holds one key per stream; `start` is the index of the first token generated
    here, so chunks chained by their carry equal one long call.
    """
    def body(state, t):
        carry, logits_BxV = state
        step_keys = jax.vmap(lambda k: jax.random.fold_in(k, t))(keys_B)
        tokens_B = choose(step_keys, logits_BxV, temperature, top_k, top_p)
        carry, logits_Bx1xV = model.apply({'params': params}, carry, tokens_B[:, None])
        return (carry, logits_Bx1xV[:, 0]), tokens_B

    (carry, logits_BxV), tokens_LxB = jax.lax.scan(
        body, (carry, logits_BxV), start + jnp.arange(length))
    return carry, logits_BxV, tokens_LxB.T


def check_options(length: int, temperature: float, top_k: int, top_p: float, num_samples: int,
                  vocab_size: int) -> None:
    if length <= 0:
        raise CharLMError(f'length must be positive, got {length}')
    if num_samples <= 0:
        raise CharLMError(f'num_samples must be positive, got {num_samples}')
    if not temperature >= 0:
        raise CharLMError(f'temperature must be >= 0 (0 = greedy), got {temperature}')
    if not 0 <= top_k <= vocab_size:
        raise CharLMError(f'top_k must be between 0 (off) and the vocabulary size {vocab_size}, '
                          f'got {top_k}')
    if not 0 < top_p <= 1:
        raise CharLMError(f'top_p must be in (0, 1] (1 = off), got {top_p}')


def stream(model, params, prompt_ids: np.ndarray, length: int, key: jax.Array, *,
           num_samples: int = 1, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
           chunk: int = 128) -> Iterator[np.ndarray]:
    """Yields int32[num_samples, <=chunk] blocks of generated ids until `length` are out.

    Memory does not grow with `length`: each chunk is one compiled scan, carry passed on.
    """
    check_options(length, temperature, top_k, top_p, num_samples, model.vocab_size)
    if len(prompt_ids) == 0:
        raise CharLMError('the prompt has no tokens')
    prompt_BxP = jnp.broadcast_to(jnp.asarray(prompt_ids, jnp.int32), (num_samples, len(prompt_ids)))
    carry, logits_BxV = prime(model, params, model.init_carry(num_samples), prompt_BxP)
    keys_B = jax.vmap(lambda b: jax.random.fold_in(key, b))(jnp.arange(num_samples))
    temperature, top_p = jnp.float32(temperature), jnp.float32(top_p)
    done = 0
    while done < length:
        # Every chunk but the last has one shape, so the scan compiles at most twice.
        n = min(chunk, length - done)
        carry, logits_BxV, ids_BxN = generate(model, params, carry, logits_BxV, keys_B,
                                              jnp.int32(done), n, temperature, top_k, top_p)
        done += n
        yield np.asarray(ids_BxN)


def sample_ids(model, params, prompt_ids, length, key, **kwargs) -> np.ndarray:
    """All `length` generated ids at once: int32[num_samples, length]."""
    return np.concatenate(list(stream(model, params, prompt_ids, length, key, **kwargs)), axis=1)


def sample_text(model, params, tokenizer, prompt: str, length: int, key, **kwargs) -> list[str]:
    """Decoded continuations of `prompt` (the prompt itself not included), one per stream."""
    ids = tokenizer.encode(prompt)
    return [tokenizer.decode(row) for row in sample_ids(model, params, ids, length, key, **kwargs)]
