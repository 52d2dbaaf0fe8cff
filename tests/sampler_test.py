import functools

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from charlm import model as model_lib
from charlm import sampler, tokenizers
from charlm.errors import CharLMError

pytestmark = pytest.mark.xdist_group('sampler')  # its module-scoped fixture: one worker

V = 13


@pytest.fixture(scope='module')
def lm():
    """A tiny 2-layer LSTM whose head is scaled up, so its distributions are peaked."""
    m = model_lib.RecurrentLM(vocab_size=V, embed_dim=6, hidden_sizes=(16, 12))
    params = jax.jit(m.init)(jax.random.key(0), m.init_carry(1), jnp.zeros((1, 1), jnp.int32))
    params = dict(params['params'])
    params['head'] = {'kernel': params['head']['kernel'] * 8, 'bias': params['head']['bias']}
    return m, params


PROMPT = np.array([3, 1, 4, 1, 5], np.int32)


@functools.partial(jax.jit, static_argnums=0)
def step_logits(m, params, carry, token_B):
    carry, logits = m.apply({'params': params}, carry, jnp.asarray(token_B, jnp.int32)[:, None])
    return carry, logits[:, 0]


choose = jax.jit(sampler.choose, static_argnums=(3, 4))


def python_loop(m, params, prompt, length, key, num_samples, temperature, top_k=0, top_p=1.0):
    """The reference: one model call per prompt token and per drawn token, in Python."""
    carry = m.init_carry(num_samples)
    for tok in prompt:
        carry, logits = step_logits(m, params, carry, np.full(num_samples, tok))
    keys = [jax.random.fold_in(key, b) for b in range(num_samples)]
    out = []
    for t in range(length):
        u = jnp.stack([jax.random.uniform(jax.random.fold_in(k, t)) for k in keys])
        tokens = choose(u, logits, temperature, top_k, top_p)
        out.append(np.asarray(tokens))
        carry, logits = step_logits(m, params, carry, tokens)
    return np.stack(out, 1)


def test_greedy_equals_top_k_1_equals_argmax_loop(lm):
    m, params = lm
    key = jax.random.key(7)
    greedy = sampler.sample_ids(m, params, PROMPT, 20, key, num_samples=2, temperature=0.0)
    top1 = sampler.sample_ids(m, params, PROMPT, 20, key, num_samples=2, temperature=1.0,
                              top_k=1)
    carry, logits = m.init_carry(1), None
    expected = []
    for tok in list(PROMPT) + [None] * 20:
        if tok is None:
            tok = int(np.argmax(np.asarray(logits)[0]))
            expected.append(tok)
        carry, logits = step_logits(m, params, carry, [tok])
    np.testing.assert_array_equal(greedy, [expected] * 2)
    np.testing.assert_array_equal(top1, greedy)
    assert len(set(expected)) > 1  # not a degenerate model


@pytest.mark.parametrize('temperature,top_k,top_p', [(1.0, 0, 1.0), (0.7, 5, 0.8)])
def test_scan_equals_python_loop_token_for_token(lm, temperature, top_k, top_p):
    m, params = lm
    key = jax.random.key(3)
    got = sampler.sample_ids(m, params, PROMPT, 12, key, num_samples=3, temperature=temperature,
                             top_k=top_k, top_p=top_p, chunk=5)
    want = python_loop(m, params, PROMPT, 12, key, 3, temperature, top_k, top_p)
    np.testing.assert_array_equal(got, want)


def test_scan_equals_python_loop_for_a_gru():
    """Cells without a re-laid step (GRU) sample through model.apply, token for token."""
    m = model_lib.RecurrentLM(vocab_size=V, embed_dim=6, hidden_sizes=(16,), cell='gru')
    params = jax.jit(m.init)(jax.random.key(0), m.init_carry(1), jnp.zeros((1, 1), jnp.int32))
    key = jax.random.key(5)
    got = sampler.sample_ids(m, params['params'], PROMPT, 10, key, num_samples=2, chunk=4)
    np.testing.assert_array_equal(got, python_loop(m, params['params'], PROMPT, 10, key, 2, 1.0))


def test_prime_in_one_call_equals_one_token_at_a_time(lm):
    m, params = lm
    prompt = jnp.asarray(np.stack([PROMPT, PROMPT[::-1]]))
    carry, last = sampler.prime(m, params, m.init_carry(2), prompt)
    step_carry = m.init_carry(2)
    for t in range(prompt.shape[1]):
        step_carry, step_last = step_logits(m, params, step_carry, prompt[:, t])
    for a, b in zip(jax.tree.leaves(carry), jax.tree.leaves(step_carry), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(last, step_last, rtol=1e-5, atol=1e-5)


def teacher_forced_logits(m, params, prompt, ids_BxL):
    """The logits each generated token was drawn from: logits_BxLxV."""
    B = ids_BxL.shape[0]
    tokens = np.concatenate([np.broadcast_to(prompt, (B, len(prompt))), ids_BxL], 1)
    _, logits = m.apply({'params': params}, m.init_carry(B), jnp.asarray(tokens))
    return np.asarray(logits[:, len(prompt) - 1:-1])


def test_top_k_never_leaves_the_k_most_likely(lm):
    m, params = lm
    ids = sampler.sample_ids(m, params, PROMPT, 40, jax.random.key(1), num_samples=16,
                             temperature=2.0, top_k=3)
    logits = teacher_forced_logits(m, params, PROMPT, ids)
    rank = (logits > np.take_along_axis(logits, ids[..., None], -1)).sum(-1)
    assert rank.max() <= 2
    assert (rank == 2).any()  # the hot temperature reaches the third token


def test_top_p_never_leaves_the_nucleus(lm):
    m, params = lm
    top_p = 0.6
    ids = sampler.sample_ids(m, params, PROMPT, 40, jax.random.key(2), num_samples=16,
                             temperature=3.0, top_p=top_p)
    logits = teacher_forced_logits(m, params, PROMPT, ids).astype(np.float64)
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    chosen = np.take_along_axis(probs, ids[..., None], -1)
    mass_before = np.where(probs > chosen, probs, 0).sum(-1)  # tokens more likely than it
    assert (mass_before < top_p + 1e-6).all()
    nucleus = (np.sort(probs, -1)[..., ::-1].cumsum(-1) < top_p).sum(-1) + 1
    assert (nucleus < V).all() and (nucleus > 1).any()  # the test is not vacuous


@pytest.mark.parametrize('pairwise', [True, False])
def test_filter_logits_k_then_p(pairwise):
    logits = jnp.log(jnp.array([[0.4, 0.3, 0.2, 0.1], [0.1, 0.2, 0.3, 0.4]]))
    kept = lambda **kw: np.isfinite(sampler.filter_logits(logits, **kw, pairwise=pairwise))  # noqa: E731
    np.testing.assert_array_equal(kept(top_k=2)[0], [1, 1, 0, 0])
    np.testing.assert_array_equal(kept(top_p=0.6)[0], [1, 1, 0, 0])
    np.testing.assert_array_equal(kept(top_p=0.75)[1], [0, 1, 1, 1])
    np.testing.assert_array_equal(kept(top_p=0.05)[1], [0, 0, 0, 1])
    # p is measured on the top-k renormalised: 0.4 / 0.7 < 0.6 keeps the second token.
    np.testing.assert_array_equal(kept(top_k=2, top_p=0.6)[0], [1, 1, 0, 0])
    np.testing.assert_array_equal(kept(top_k=3, top_p=0.4)[0], [1, 0, 0, 0])
    np.testing.assert_array_equal(kept(top_k=0, top_p=1.0), np.ones((2, 4)))
    # A traced top_p of 1 keeps everything too.
    traced_one = sampler.filter_logits(logits, 0, jnp.float32(1), pairwise=pairwise)
    np.testing.assert_array_equal(np.isfinite(traced_one), np.ones((2, 4)))


@pytest.mark.parametrize('top_k,top_p', [(0, 0.63), (5, 1.0), (5, 0.71), (1, 0.2), (40, 0.9)])
def test_pairwise_and_sorted_filters_agree(top_k, top_p):
    # Logits rounded to halves, so many tie; both keep every token tied with the last kept.
    logits = jnp.round(jax.random.normal(jax.random.key(top_k), (64, 40)) * 4) / 2
    pairwise = sampler.filter_logits(logits, top_k, top_p, pairwise=True)
    sort = sampler.filter_logits(logits, top_k, top_p, pairwise=False)
    np.testing.assert_array_equal(pairwise, sort)


def test_streams_differ_and_the_same_seed_reproduces(lm):
    m, params = lm
    a = sampler.sample_ids(m, params, PROMPT, 30, jax.random.key(5), num_samples=4)
    b = sampler.sample_ids(m, params, PROMPT, 30, jax.random.key(5), num_samples=4)
    c = sampler.sample_ids(m, params, PROMPT, 30, jax.random.key(6), num_samples=4)
    np.testing.assert_array_equal(a, b)
    assert len({row.tobytes() for row in a}) == 4
    assert not np.array_equal(a, c)
    # A stream does not depend on how many run beside it.
    one = sampler.sample_ids(m, params, PROMPT, 30, jax.random.key(5), num_samples=1)
    np.testing.assert_array_equal(one[0], a[0])


def test_chunked_generation_equals_one_long_scan(lm):
    m, params = lm
    kw = dict(num_samples=3, temperature=0.9, top_k=6, top_p=0.9)
    whole = sampler.sample_ids(m, params, PROMPT, 37, jax.random.key(9), chunk=37, **kw)
    blocks = list(sampler.stream(m, params, PROMPT, 37, jax.random.key(9), chunk=8, **kw))
    assert [b.shape[1] for b in blocks] == [8, 8, 8, 8, 5]
    np.testing.assert_array_equal(np.concatenate(blocks, 1), whole)


def test_several_temperatures_share_the_noise(lm):
    m, params = lm
    key = jax.random.key(4)
    ids = sampler.sample_ids(m, params, PROMPT, 15, key, num_samples=2,
                             temperature=(0.0, 0.5, 1.5))
    assert ids.shape == (6, 15)
    for i, t in enumerate((0.0, 0.5, 1.5)):
        alone = sampler.sample_ids(m, params, PROMPT, 15, key, num_samples=2, temperature=t)
        np.testing.assert_array_equal(ids[2 * i:2 * i + 2], alone)


def test_word_model_samples_text():
    tok = tokenizers.WordTokenizer.from_text('the cat sat on the mat .\nthe dog ran , fast .\n')
    m = model_lib.RecurrentLM(vocab_size=tok.vocab_size, embed_dim=4, hidden_sizes=(8,))
    params = m.init(jax.random.key(0), m.init_carry(1), jnp.zeros((1, 1), jnp.int32))['params']
    prompt = tok.encode('the cat')
    texts = sampler.sample_text(m, params, tok, 'the cat', 10, jax.random.key(0), num_samples=2)
    ids = sampler.sample_ids(m, params, prompt, 10, jax.random.key(0), num_samples=2)
    assert len(texts) == 2 and len(set(texts)) == 2
    for text, row in zip(texts, ids, strict=True):
        # A continuation joins the prompt as the tokenizer writes the whole sequence.
        assert 'the cat' + text == tok.decode(np.concatenate([prompt, row]))
    with pytest.warns(UserWarning, match='zebra'):
        assert list(sampler.encode_prompt(tok, 'the zebra', warn=True)) == [1, 0]


def test_decode_continuation_spacing():
    tok = tokenizers.WordTokenizer(['<unk>', 'the', 'cat', ',', '\n'])
    assert sampler.decode_continuation(tok, [1], [2, 3, 1]) == ' cat, the'
    assert sampler.decode_continuation(tok, [4], [2]) == 'cat'
    chars = tokenizers.CharTokenizer('ab')
    assert sampler.decode_continuation(chars, [0], [1, 0]) == 'ba'


def test_prompts_and_start_text(lm):
    m, params = lm
    tok = tokenizers.CharTokenizer('\nabcdefghijkl')
    assert list(sampler.encode_prompt(tok, '')) == [0]
    assert list(sampler.encode_prompt(tok, '', start='ab')) == [1, 2]
    with pytest.raises(CharLMError, match=r"prompt 'aXbY' has characters not in .*'X', 'Y'"):
        sampler.encode_prompt(tok, 'aXbY')
    with pytest.raises(CharLMError, match='start text'):
        sampler.encode_prompt(tok, '', start='Z')
    from_start = sampler.sample_text(m, params, tok, '', 8, jax.random.key(0), start='ab')
    from_prompt = sampler.sample_text(m, params, tok, 'ab', 8, jax.random.key(0))
    assert from_start == from_prompt and len(from_start[0]) == 8


@pytest.mark.parametrize('kwargs,match', [
    (dict(length=0), 'length must be positive'),
    (dict(num_samples=0), 'num_samples must be positive'),
    (dict(temperature=-0.1), 'temperature must be a number >= 0'),
    (dict(temperature=(1.0, float('nan'))), 'temperature must be'),
    (dict(top_k=-1), rf'top_k must be in \[0, {V}\] \(0 = off; {V} = the vocabulary size\)'),
    (dict(top_k=V + 1), rf'top_k must be in \[0, {V}\] .*, got {V + 1}'),
    (dict(top_p=0.0), r'top_p must be in \(0, 1\]'),
    (dict(top_p=1.5), 'top_p must be'),
])
def test_bad_options(lm, kwargs, match):
    m, params = lm
    args = dict(length=5) | kwargs
    length = args.pop('length')
    with pytest.raises(CharLMError, match=match):
        sampler.sample_ids(m, params, PROMPT, length, jax.random.key(0), **args)


def test_check_options_names_the_bounds_and_the_flag():
    sampler.check_options(5, 1.0, 13, 1.0, 1, vocab_size=13)  # top_k = V keeps every token
    with pytest.raises(CharLMError, match=r'^top_k must be >= 0 \(0 = off\), got -1$'):
        sampler.check_options(5, 1.0, -1, 1.0, 1)
    with pytest.raises(CharLMError, match=r'^--top_k must be in \[0, 65\] \(0 = off; 65 = the '
                       r'vocabulary size\), got 100$'):
        sampler.check_options(5, 1.0, 100, 1.0, 1, vocab_size=65, prefix='--')
    with pytest.raises(CharLMError, match='^--length must be positive'):
        sampler.check_options(0, 1.0, 0, 1.0, 1, prefix='--')


def test_greedy_makes_no_random_numbers(lm):
    m, params = lm
    args = (sampler.make_stepper(m, params), m.init_carry(1), jnp.zeros((1, V)),
            jax.random.key(0)[None], jnp.int32(0), jnp.zeros(1))
    greedy = sampler.generate.lower(*args, length=3, greedy=True).as_text()
    hot = sampler.generate.lower(*args, length=3, greedy=False).as_text()
    assert 'threefry' not in greedy and 'threefry' in hot


@flax.struct.dataclass
class CountingStepper:
    """A fake model for `generate`: the next token is the last one plus `stride`, mod V."""

    stride: jax.Array

    def start(self, carry):
        return carry

    def step(self, state, tokens_B):
        return state + 1, 10.0 * jax.nn.one_hot((tokens_B + self.stride) % V, V)

    def carry(self, state):
        return state


def test_generate_drives_any_stepper():
    logits = 10.0 * jax.nn.one_hot(jnp.array([3, 5]), V)  # the first tokens: 3 and 5
    carry, _, tokens = sampler.generate(
        CountingStepper(jnp.int32(2)), jnp.zeros(2, jnp.int32), logits,
        jax.vmap(jax.random.key)(jnp.arange(2)), jnp.int32(0), jnp.full(2, 0.5), length=4)
    np.testing.assert_array_equal(tokens, [[3, 5, 7, 9], [5, 7, 9, 11]])
    np.testing.assert_array_equal(carry, [4, 4])  # the state went through every step


def test_beam_1_is_greedy(lm):
    m, params = lm
    ids, logp = sampler.beam_search(m, params, PROMPT, 12, beam=1)
    greedy = sampler.sample_ids(m, params, PROMPT, 12, jax.random.key(0), temperature=0.0)
    np.testing.assert_array_equal(ids, greedy)
    scored = teacher_forced_logits(m, params, PROMPT, ids)
    lp = jax.nn.log_softmax(scored, axis=-1)
    assert logp[0] == pytest.approx(float(np.take_along_axis(lp, ids[..., None], -1).sum()),
                                    abs=1e-4)


def test_beam_finds_what_an_exhaustive_search_finds():
    """A 3-token vocabulary, 4 tokens: every one of the 81 continuations scored; a beam of
    27 = 3^(4-1) keeps all prefixes, so its K best are the exhaustive K best."""
    v, length = 3, 4
    m = model_lib.RecurrentLM(vocab_size=v, embed_dim=4, hidden_sizes=(8,))
    params = m.init(jax.random.key(1), m.init_carry(1), jnp.zeros((1, 1), jnp.int32))['params']
    params = dict(params, head={'kernel': params['head']['kernel'] * 6,
                                'bias': params['head']['bias']})
    prompt = np.array([0, 2, 1], np.int32)
    all_ids = np.array(np.meshgrid(*[np.arange(v)] * length, indexing='ij')).reshape(length, -1).T
    lp = jax.nn.log_softmax(teacher_forced_logits(m, params, prompt, all_ids), axis=-1)
    exhaustive = np.take_along_axis(np.asarray(lp), all_ids[..., None], -1)[..., 0].sum(-1)
    order = np.argsort(-exhaustive, kind='stable')
    ids, logp = sampler.beam_search(m, params, prompt, length, beam=27)
    np.testing.assert_array_equal(ids[0], all_ids[order[0]])  # the most likely of all 81
    np.testing.assert_allclose(logp, exhaustive[order[:27]], atol=1e-5)
    assert (np.diff(logp) <= 0).all() and len({tuple(r) for r in ids}) == 27
    narrow, narrow_logp = sampler.beam_search(m, params, prompt, length, beam=3)
    assert narrow_logp[0] <= logp[0] + 1e-6  # a narrow beam can only do as well


@pytest.mark.parametrize('options', [{}, {'softmax': 'adaptive', 'adaptive_cutoffs': (20, 40)},
                                     {'tie_embeddings': True, 'embed_dim': 16}])
def test_prime_scores_only_the_last_position_as_the_model_does(options):
    """prime puts the last position alone through the output layer (no [B, P, V] logits);
    its logits are model.apply's there, for each kind of output layer."""
    m = model_lib.RecurrentLM(**{'vocab_size': 60, 'embed_dim': 8, 'hidden_sizes': (16,),
                                 **options})
    prompt = jnp.asarray(np.arange(24, dtype=np.int32).reshape(2, 12) * 5 % 60)
    params = jax.jit(m.init)(jax.random.key(1), m.init_carry(2), prompt)['params']
    carry, last_BxV = sampler.prime(m, params, m.init_carry(2), prompt)
    want_carry, logits_BxPxV = m.apply({'params': params}, m.init_carry(2), prompt)
    assert last_BxV.shape == (2, 60)
    np.testing.assert_allclose(last_BxV, logits_BxPxV[:, -1], rtol=1e-5, atol=1e-6)
    for a, b in zip(jax.tree.leaves(carry), jax.tree.leaves(want_carry), strict=True):
        np.testing.assert_array_equal(a, b)
    jaxpr = str(jax.make_jaxpr(lambda p, c, x: sampler.prime(m, p, c, x))(
        params, m.init_carry(2), prompt))
    assert 'f32[2,12,60]' not in jaxpr and 'f32[2,60]' in jaxpr
