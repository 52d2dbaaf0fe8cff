"""Generation as one compiled loop: prime the carry on the prompt, then a fixed-length scan.

  ids_BxL = sampler.sample_ids(model, params, tokenizer.encode('ROMEO:'), 500, key,
                               num_samples=3, temperature=0.8, top_k=20, top_p=0.95)

Decoding, for every token of every stream, in this order:
  1. top-k: keep the k most likely tokens (top_k=0: off);
  2. top-p (nucleus): of those, keep the smallest most-likely set whose probability,
     renormalised over the survivors of 1, reaches p (top_p=1: off). A token tied with
     the last one kept is kept too;
  3. temperature: divide the kept logits by it and draw (temperature=0: greedy argmax).
The nucleus is measured before the temperature: the temperature reweights the kept
tokens but never changes which are kept.

Randomness: stream j draws its token t (counted from the end of the prompt) by inverting
the CDF at a uniform number made from the key fold_in(fold_in(key, j), t). The same key
therefore gives the same text whatever the chunk size or the number of streams, and the
streams differ. With several temperatures at once (`temperature=(0.5, 1.0)`) stream j
uses the same uniform numbers at every temperature: only the temperature differs.

Sizes that change shapes (chunk length, top_k, streams) and the switches that remove work
(greedy: no random numbers; top_p=1: no sort) are static, so each combination compiles
once; temperatures are traced. Prompts are primed once and the carry broadcast to all
streams. Each drawn token goes through a stepper (`model.stepper`: start, step, carry),
made once per call; for an LSTM it reads weights re-laid so that a layer is one matrix
product per token. `generate` takes any stepper, so a test can drive it with a fake. The
sampler works on token ids for any tokenizer: text in and out is the tokenizer's job
(`encode_prompt`, `decode_continuation`, `sample_text`).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterator, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from charlm import model as model_lib
from charlm import tokenizers
from charlm.errors import CharLMError

CHUNK = 128  # tokens per compiled call when streaming: memory does not grow with length
PAIRWISE_VOCAB = 128  # up to this vocabulary size top-k / top-p compare pairs, not sort


def filter_logits(logits_BxV: jax.Array, top_k: int = 0, top_p: float | jax.Array = 1.0,
                  pairwise: bool | None = None) -> jax.Array:
    """Logits with every token outside the top-k, then outside the nucleus, set to -inf.

    `top_k` is static; a Python `top_p >= 1` skips the nucleus altogether. A small
    vocabulary (`pairwise`, default V <= PAIRWISE_VOCAB) compares every pair of tokens,
    which on a CPU costs a fraction of a sort; a large one sorts. Both keep the same set.
    """
    nucleus = not (isinstance(top_p, int | float) and top_p >= 1)
    if not top_k and not nucleus:
        return logits_BxV
    if pairwise is None:
        pairwise = logits_BxV.shape[-1] <= PAIRWISE_VOCAB
    if pairwise:
        # above_BxVxV[b, i, j] = 1 where token j is more likely than token i.
        above_BxVxV = (logits_BxV[:, None, :] > logits_BxV[:, :, None]).astype(jnp.float32)
        if top_k:  # fewer than k tokens more likely (ties with the k-th are kept)
            n_above_BxV = jnp.einsum('bij,j->bi', above_BxVxV, jnp.ones(logits_BxV.shape[-1]))
            logits_BxV = jnp.where(n_above_BxV < top_k, logits_BxV, -jnp.inf)
        if nucleus:  # the tokens more likely hold less than top_p
            mass_above_BxV = jnp.einsum('bij,bj->bi', above_BxVxV,
                                        jax.nn.softmax(logits_BxV, axis=-1))
            logits_BxV = jnp.where(mass_above_BxV < top_p, logits_BxV, -jnp.inf)
        return logits_BxV
    if top_k:
        sorted_BxK = jax.lax.top_k(logits_BxV, top_k)[0]  # descending
        logits_BxV = jnp.where(logits_BxV < sorted_BxK[:, -1:], -jnp.inf, logits_BxV)
    else:
        sorted_BxK = jnp.flip(jnp.sort(logits_BxV, axis=-1), axis=-1)
    if nucleus:
        # Renormalised over every token the top-k kept, ties with the k-th included.
        probs_BxK = jnp.exp(sorted_BxK - jax.nn.logsumexp(logits_BxV, axis=-1, keepdims=True))
        mass_above_BxK = jnp.cumsum(probs_BxK, axis=-1) - probs_BxK
        cutoff_Bx1 = jnp.min(jnp.where(mass_above_BxK < top_p, sorted_BxK, jnp.inf), axis=-1,
                             keepdims=True)
        logits_BxV = jnp.where(logits_BxV < cutoff_Bx1, -jnp.inf, logits_BxV)
    return logits_BxV


def uniforms(keys_B: jax.Array, t: jax.Array) -> jax.Array:
    """The uniform number in [0, 1) that stream b draws its token t with: float32[B]."""
    return jax.vmap(lambda k: jax.random.uniform(jax.random.fold_in(k, t)))(keys_B)


def choose(u_B: jax.Array, logits_BxV: jax.Array, temperature_B: jax.Array | float,
           top_k: int = 0, top_p: float | jax.Array = 1.0, greedy: bool = False) -> jax.Array:
    """One token per stream, int32[B]: filter, then argmax (temperature 0) or draw.

    A draw inverts the cumulative distribution at the stream's uniform number `u_B`: one
    random number per stream and step, not the V of a Gumbel argmax (on a CPU those cost
    more than the model). `greedy=True` (static): every temperature is 0, `u_B` unused.
    """
    logits_BxV = filter_logits(logits_BxV, top_k, top_p)
    argmax_B = jnp.argmax(logits_BxV, axis=-1).astype(jnp.int32)
    if greedy:
        return argmax_B
    temperature_B = jnp.broadcast_to(jnp.asarray(temperature_B, jnp.float32),
                                     logits_BxV.shape[:1])
    hot_B = temperature_B > 0
    probs_BxV = jax.nn.softmax(logits_BxV / jnp.where(hot_B, temperature_B, 1.0)[:, None])
    cdf_BxV = jnp.cumsum(probs_BxV, axis=-1)  # non-decreasing: a token of probability 0
    x_B = u_B * cdf_BxV[:, -1]  # is never chosen
    sampled_B = jnp.sum(cdf_BxV <= x_B[:, None], axis=-1, dtype=jnp.int32)
    # Should rounding put x at the very top, take the last token that can be drawn.
    last_B = logits_BxV.shape[-1] - 1 - jnp.argmax(probs_BxV[:, ::-1] > 0, axis=-1)
    sampled_B = jnp.minimum(sampled_B, last_B.astype(jnp.int32))
    return jnp.where(hot_B, sampled_B, argmax_B)


@functools.partial(jax.jit, static_argnames=('model',))
def prime(model, params, carry, prompt_BxP: jax.Array):
    """Runs the whole prompt in one call: (carry after it, logits_BxV for the next token).
    Only the last position goes through the output layer, so a long prompt of a large
    vocabulary never makes [B, P, V] logits."""
    carry, x_BxPxH = model.apply({'params': params}, carry, prompt_BxP, features=True)
    return carry, model.output(params, x_BxPxH[:, -1])


make_stepper = jax.jit(model_lib.stepper, static_argnums=0)


@functools.partial(jax.jit, static_argnames=('length', 'top_k', 'top_p', 'greedy', 'unroll'))
def generate(stepper, carry, logits_BxV: jax.Array, keys_B: jax.Array, start: jax.Array,
             temperature_B: jax.Array, *, length: int, top_k: int = 0, top_p: float = 1.0,
             greedy: bool = False, unroll: int = 1):
    """`length` tokens per stream from (carry, logits): (carry, logits_BxV, tokens_BxL).

    `stepper` (a pytree with start/step/carry, e.g. `model.stepper(model, params)`) makes
    one token's logits from the last; `keys_B` holds one key per stream;
    `start` is the index of the first token drawn here, so chunks chained by their carry
    equal one long call token for token.
    """
    steps_L = start + jnp.arange(length, dtype=jnp.int32)
    if greedy:
        u_LxB = jnp.zeros((length, keys_B.shape[0]), jnp.float32)
    else:  # the whole chunk's random numbers in one vectorised call, outside the loop
        u_LxB = jax.vmap(uniforms, in_axes=(None, 0))(keys_B, steps_L)

    def body(state_logits, u_B):
        state, logits_BxV = state_logits
        tokens_B = choose(u_B, logits_BxV, temperature_B, top_k, top_p, greedy)
        return stepper.step(state, tokens_B), tokens_B

    (state, logits_BxV), tokens_LxB = jax.lax.scan(body, (stepper.start(carry), logits_BxV),
                                                   u_LxB, unroll=unroll)
    return stepper.carry(state), logits_BxV, tokens_LxB.T


@functools.partial(jax.jit, static_argnames=('length', 'beam'))
def beam_generate(stepper, carry, logits_1xV: jax.Array, *, length: int, beam: int):
    """A fixed-width beam over the recurrent carry, as one scan: (tokens_KxL, logprob_K),
    best first. `carry` and `logits_1xV` are one primed stream.

    Each step extends every beam by every token, keeps the `beam` best of the K x V
    (ties: the lower beam, then the lower token), and gathers their states and histories
    by parent. Starting with one live beam (the others at -inf) keeps the K beams
    distinct; with K >= V^(L-1) the search is exhaustive. K = 1 is greedy decoding.
    """
    vocab = logits_1xV.shape[-1]
    carry_K = jax.tree.map(lambda x: jnp.broadcast_to(x, (beam, *x.shape[1:])), carry)
    logits_KxV = jnp.broadcast_to(logits_1xV, (beam, vocab))
    logp_K = jnp.full((beam,), -jnp.inf).at[0].set(0.0)
    seqs_KxL = jnp.zeros((beam, length), jnp.int32)

    def body(loop, t):
        state, logits_KxV, logp_K, seqs_KxL = loop
        cand_KxV = logp_K[:, None] + jax.nn.log_softmax(logits_KxV, axis=-1)
        logp_K, flat_K = jax.lax.top_k(cand_KxV.reshape(-1), beam)
        parent_K, tokens_K = flat_K // vocab, (flat_K % vocab).astype(jnp.int32)
        state = jax.tree.map(lambda x: x[parent_K], state)
        seqs_KxL = seqs_KxL[parent_K].at[:, t].set(tokens_K)
        state, logits_KxV = stepper.step(state, tokens_K)
        return (state, logits_KxV, logp_K, seqs_KxL), None

    init = (stepper.start(carry_K), logits_KxV, logp_K, seqs_KxL)
    (_, _, logp_K, seqs_KxL), _ = jax.lax.scan(body, init, jnp.arange(length))
    return seqs_KxL, logp_K


def beam_search(model, params, prompt_ids, length: int, beam: int
                ) -> tuple[np.ndarray, np.ndarray]:
    """The `beam` most likely continuations a beam of that width finds: int32[K, length]
    and their total log-probabilities (nats), best first."""
    if beam < 1 or length < 1:
        raise CharLMError(f'beam search needs a beam width >= 1 and a length >= 1, got '
                          f'{beam} and {length}')
    prompt_ids = np.asarray(prompt_ids, dtype=np.int32).reshape(-1)
    if prompt_ids.size == 0:
        raise CharLMError('the prompt has no tokens: give a prompt or a start text')
    carry, logits_1xV = prime(model, params, model.init_carry(1), jnp.asarray(prompt_ids)[None])
    ids_KxL, logp_K = beam_generate(make_stepper(model, params), carry, logits_1xV,
                                    length=int(length), beam=int(beam))
    return np.asarray(ids_KxL), np.asarray(logp_K)


def temperatures(temperature: float | Sequence[float]) -> tuple[float, ...]:
    """A temperature or a sequence of them, as a tuple of floats."""
    if isinstance(temperature, str | bytes):
        raise CharLMError(f'temperature must be a number, got {temperature!r}')
    values = np.atleast_1d(np.asarray(temperature, dtype=np.float64))
    if values.ndim != 1 or values.size == 0:
        raise CharLMError(f'temperature must be a number or a list of numbers, got '
                          f'{temperature!r}')
    return tuple(float(t) for t in values)


def check_options(length: int, temperature: float | Sequence[float], top_k: int, top_p: float,
                  num_samples: int, vocab_size: int | None = None, *, prefix: str = '') -> None:
    """Raises CharLMError for a setting the sampler cannot honour (vocab_size None: unchecked).

    `prefix` comes before each setting's name in the message: '--' for command-line flags.
    """
    if length <= 0:
        raise CharLMError(f'{prefix}length must be positive, got {length}')
    if num_samples <= 0:
        raise CharLMError(f'{prefix}num_samples must be positive, got {num_samples}')
    for t in temperatures(temperature):
        if not 0 <= t < math.inf:
            raise CharLMError(f'{prefix}temperature must be a number >= 0 (0 = greedy), got {t:g}')
    if top_k < 0 or (vocab_size is not None and top_k > vocab_size):
        bounds = ('>= 0 (0 = off)' if vocab_size is None else
                  f'in [0, {vocab_size}] (0 = off; {vocab_size} = the vocabulary size)')
        raise CharLMError(f'{prefix}top_k must be {bounds}, got {top_k}')
    if not 0 < top_p <= 1:
        raise CharLMError(f'{prefix}top_p must be in (0, 1] (1 = off), got {top_p:g}')


def _chunks(length: int, chunk: int) -> tuple[int, int]:
    """(number of calls, tokens per call): equal calls, so one compile, < calls wasted."""
    calls = -(-length // chunk)
    return calls, -(-length // calls)


def stream(model, params, prompt_ids, length: int, key: jax.Array, *, num_samples: int = 1,
           temperature: float | Sequence[float] = 1.0, top_k: int = 0, top_p: float = 1.0,
           chunk: int = CHUNK, unroll: int = 1) -> Iterator[np.ndarray]:
    """Yields int32[B, n] blocks of generated ids, n <= chunk, until `length` are out.

    B = num_samples x len(temperatures): with several temperatures, row i*num_samples + j
    is stream j at temperature i. Each block is one compiled scan with the carry passed
    on, so memory does not grow with `length`; the next block is already being computed
    while the caller handles this one.
    """
    temps = temperatures(temperature)
    check_options(length, temps, top_k, top_p, num_samples, model.vocab_size)
    prompt_ids = np.asarray(prompt_ids, dtype=np.int32).reshape(-1)
    if prompt_ids.size == 0:
        raise CharLMError('the prompt has no tokens: give a prompt or a start text')
    if chunk <= 0:
        raise CharLMError(f'chunk must be positive, got {chunk}')
    batch = num_samples * len(temps)
    # Every stream starts from the same prompt: prime it once and broadcast the carry.
    carry, logits_1xV = prime(model, params, model.init_carry(1), jnp.asarray(prompt_ids)[None])
    carry, logits_BxV = jax.tree.map(
        lambda x: jnp.broadcast_to(x, (batch, *x.shape[1:])), (carry, logits_1xV))
    stream_B = np.tile(np.arange(num_samples), len(temps))
    keys_B = jax.vmap(jax.random.fold_in, in_axes=(None, 0))(key, stream_B)
    temperature_B = jnp.asarray(np.repeat(temps, num_samples), jnp.float32)
    static = dict(top_k=int(top_k), top_p=float(top_p), greedy=not any(temps),
                  unroll=int(unroll))
    stepper = make_stepper(model, params)
    calls, size = _chunks(length, chunk)
    pending = None
    for i in range(calls):
        carry, logits_BxV, ids_BxN = generate(stepper, carry, logits_BxV, keys_B,
                                              jnp.int32(i * size), temperature_B,
                                              length=size, **static)
        if pending is not None:
            yield np.asarray(pending)
        pending = ids_BxN[:, :length - i * size]
    yield np.asarray(pending)


def sample_ids(model, params, prompt_ids, length: int, key: jax.Array, **kwargs) -> np.ndarray:
    """All `length` generated ids at once: int32[B, length] (see `stream` for B)."""
    return np.concatenate(list(stream(model, params, prompt_ids, length, key, **kwargs)), axis=1)


def encode_prompt(tokenizer, prompt: str, start: str = '\n', warn: bool = False) -> np.ndarray:
    """The prompt's ids; an empty prompt starts from `start` (default a newline).

    Characters outside a char vocabulary raise CharLMError naming them; words outside a
    word vocabulary read as <unk>, and characters a folding char vocabulary folded as
    U+FFFD (with a warning if `warn`).
    """
    for text, what in ((prompt, 'prompt'), (start, 'start text')):
        if not text:
            continue
        try:
            ids = (tokenizer.encode(text, warn=True)
                   if warn and tokenizers.reads_unknown(tokenizer) else tokenizer.encode(text))
        except CharLMError as e:
            raise CharLMError(f'the {what} {text!r} has {e}') from None
        if len(ids):
            return ids
    raise CharLMError(f'the prompt {prompt!r} and the start text {start!r} have no tokens: '
                      'give a non-empty start text')


def decode_continuation(tokenizer, context_ids, ids) -> str:
    """Text of `ids` as it continues `context_ids` (so word spacing is right at the joint)."""
    context = np.asarray(context_ids, dtype=np.int32).reshape(-1)[-1:]
    if tokenizer.kind != 'word' or context.size == 0:  # bytes: U+FFFD where a sequence is cut
        return tokenizer.decode(ids)
    head = tokenizer.decode(context)
    return tokenizer.decode(np.concatenate([context, np.asarray(ids, np.int32)]))[len(head):]


def sample_text(model, params, tokenizer, prompt: str, length: int, key: jax.Array, *,
                start: str = '\n', **kwargs) -> list[str]:
    """Continuations of `prompt` (the prompt not included), one per stream: prompt + text."""
    ids = encode_prompt(tokenizer, prompt, start)
    return [decode_continuation(tokenizer, ids, row)
            for row in sample_ids(model, params, ids, length, key, **kwargs)]
