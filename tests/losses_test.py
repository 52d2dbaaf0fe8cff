"""charlm.losses: the chunked cross-entropy and the adaptive softmax, against the plain
loss and a numpy reference."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from charlm import losses, steps
from charlm import model as model_lib
from charlm.errors import CharLMError


def _model(**kw):
    kw = {'vocab_size': 300, 'embed_dim': 16, 'hidden_sizes': (24,), **kw}
    return model_lib.RecurrentLM(**kw)


def _batch(vocab, b=3, t=11, seed=0):
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, vocab, size=(b, t + 1)).astype(np.int32)
    return {'inputs': ids[:, :-1], 'targets': ids[:, 1:]}


def _loss_and_grad(model, params, batch):
    def loss(p):
        _, nll = steps._nll(model, p, model.init_carry(batch['inputs'].shape[0]), batch, False)
        return nll.mean(), nll
    (_, nll), g = jax.jit(jax.value_and_grad(loss, has_aux=True))(params)
    return np.asarray(nll), g


@pytest.mark.parametrize('tie', [False, True])
def test_chunked_loss_equals_the_whole_logits(tie):
    whole = _model(tie_embeddings=tie, embed_dim=24 if tie else 16)
    # 300 float32 logits a row: 0.01 MB holds 8 rows, so 33 rows take 5 chunks (one padded)
    chunked = _model(tie_embeddings=tie, embed_dim=24 if tie else 16, loss_chunk_mb=0.01)
    batch = _batch(300)
    assert whole.loss_in_one_block(33) and not chunked.loss_in_one_block(33)
    assert losses.chunk_rows(0.01, 300) == 8
    params = steps._init_params(whole, jax.random.key(0))
    nll_a, g_a = _loss_and_grad(whole, params, batch)
    nll_b, g_b = _loss_and_grad(chunked, params, batch)
    np.testing.assert_allclose(nll_b, nll_a, rtol=1e-5, atol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-6), g_a, g_b)


def _adaptive_reference(p, x, cutoffs, vocab):
    """log p of every token, written out in numpy from the equations."""
    def lsm(z):
        z = z - z.max(-1, keepdims=True)
        return z - np.log(np.exp(z).sum(-1, keepdims=True))
    p = {k: np.asarray(v, np.float64) for k, v in p.items()}
    head = lsm(x @ p['head_kernel'] + p['head_bias'])
    edges = [*cutoffs, vocab]
    out = np.zeros((len(x), vocab))
    out[:, :cutoffs[0]] = head[:, :cutoffs[0]]
    for i in range(len(cutoffs)):
        tail = lsm(x @ p[f'tail{i}_proj'] @ p[f'tail{i}_out'])
        out[:, edges[i]:edges[i + 1]] = head[:, cutoffs[0] + i, None] + tail
    return out


def test_adaptive_softmax_against_numpy():
    model = _model(softmax='adaptive', adaptive_cutoffs=(20, 100), adaptive_div=2.0)
    params = steps._init_params(model, jax.random.key(1))
    a = params['adaptive']
    assert a['head_kernel'].shape == (24, 22) and a['tail0_proj'].shape == (24, 12)
    assert a['tail1_proj'].shape == (24, 6) and a['tail1_out'].shape == (6, 200)
    x = np.random.default_rng(0).normal(size=(9, 24)).astype(np.float32)
    ref = _adaptive_reference(a, x.astype(np.float64), (20, 100), 300)
    logp = np.asarray(losses.adaptive_log_probs(a, x, (20, 100)))
    np.testing.assert_allclose(logp, ref, atol=2e-5)
    np.testing.assert_allclose(np.exp(logp).sum(-1), 1.0, atol=1e-5)
    targets = np.array([0, 19, 20, 99, 100, 299, 5, 150, 42], np.int32)
    for mb in (64, 0.002):  # whole, and chunks of 2 rows
        nll = np.asarray(losses.adaptive_nll(a, x, targets, (20, 100), 300, mb))
        np.testing.assert_allclose(nll, -ref[np.arange(9), targets], atol=2e-5)


def test_adaptive_model_loss_is_the_log_probs_it_returns():
    model = _model(softmax='adaptive', adaptive_cutoffs=(50, 120))
    params = steps._init_params(model, jax.random.key(2))
    batch = _batch(300, seed=1)
    _, logp_BxTxV = model.apply({'params': params}, model.init_carry(3), batch['inputs'])
    want = -np.take_along_axis(np.asarray(logp_BxTxV), batch['targets'][..., None], -1)[..., 0]
    nll, g = _loss_and_grad(model, params, batch)
    np.testing.assert_allclose(nll, want, atol=2e-5)
    assert all(np.isfinite(x).all() for x in jax.tree.leaves(g))
    chunked = _model(softmax='adaptive', adaptive_cutoffs=(50, 120), loss_chunk_mb=0.003)
    nll_c, g_c = _loss_and_grad(chunked, params, batch)
    np.testing.assert_allclose(nll_c, nll, atol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-6), g, g_c)
    # the stepper (sampling) sees the same distribution
    stepper = model_lib.stepper(model, params)
    _, logits_BxV = stepper.step(stepper.start(model.init_carry(3)), jnp.asarray(
        batch['inputs'][:, 0]))
    np.testing.assert_allclose(np.asarray(logits_BxV), np.asarray(logp_BxTxV)[:, 0], atol=1e-5)


@pytest.mark.parametrize('kw, match', [
    ({'softmax': 'adaptive', 'adaptive_cutoffs': (100, 50)}, 'increasing positive integers'),
    ({'softmax': 'adaptive', 'adaptive_cutoffs': ()}, 'increasing positive integers'),
    ({'softmax': 'adaptive', 'adaptive_cutoffs': (100, 300)}, 'reach past the vocabulary of 300'),
    ({'softmax': 'adaptive', 'adaptive_cutoffs': (400,)}, 'reach past the vocabulary'),
    ({'softmax': 'sparse'}, "unknown model.softmax 'sparse'"),
    ({'loss_chunk_mb': 0}, 'loss_chunk_mb must be > 0'),
    ({'softmax': 'adaptive', 'adaptive_cutoffs': (10,), 'tie_embeddings': True,
      'embed_dim': 24}, "tie_embeddings ties the full softmax"),
])
def test_bad_output_layer_is_one_line(kw, match):
    with pytest.raises(CharLMError, match=match):
        _model(**kw)


def test_adaptive_word_model_trains_resumes_scores_and_samples(tiny_config, tmp_path):
    from charlm import dynamic, runs, train
    c = tiny_config
    c.data.tokenizer = 'word'  # 37 words, ids by frequency
    c.model.softmax = 'adaptive'
    c.model.adaptive_cutoffs = (8, 20)
    c.model.loss_chunk_mb = 0.0005  # 0.5 KB: chunks of 6 rows, so training's loss is chunked
    c.num_train_steps = 12
    c.eval_every_steps = c.checkpoint_every_steps = 6
    c.learning_rate = 1e-2
    first = train.train_and_evaluate(c, str(tmp_path / 'w'), stop_at=6)
    out = train.train_and_evaluate(c, str(tmp_path / 'w'))  # resumes at step 6
    straight = train.train_and_evaluate(c, str(tmp_path / 'straight'))
    assert (first['step'], out['step']) == (6, 12)
    assert out['val_loss'] == pytest.approx(straight['val_loss'], rel=1e-5)
    assert out['val_loss'] < np.log(37)  # learned something
    run = runs.find(str(tmp_path / 'w'))
    assert 'adaptive' in run.params and 'head' not in run.params
    text = 'First Citizen:\nSpeak, speak.\n'
    scored = run.score(text)
    assert np.isfinite(scored['loss']) and len(scored['token_losses']) == len(
        run.tokenizer.encode(text)) - 1
    ids = run.tokenizer.encode(text)
    still = dynamic.dynamic_evaluate(run.model, run.params, ids, 4, lr=0.0)
    assert np.isfinite(still['loss'])
    assert run.sample('First', length=5, seed=1).startswith('First')


def test_adaptive_config_errors_before_training(tiny_config, tmp_path):
    from charlm import train
    tiny_config.model.softmax = 'adaptive'
    tiny_config.model.adaptive_cutoffs = (10, 20)
    with pytest.raises(CharLMError, match='ids ordered by frequency.*data.max_vocab'):
        train.train_and_evaluate(tiny_config, str(tmp_path / 'c'))  # a 35-character model
    tiny_config.data.max_vocab = 36  # 35 characters and U+FFFD: folds nothing, by frequency
    tiny_config.model.adaptive_cutoffs = (10, 40)
    with pytest.raises(CharLMError, match=r'reach past the vocabulary of 36 tokens'):
        train.train_and_evaluate(tiny_config, str(tmp_path / 'c'))
    assert not (tmp_path / 'c' / 'checkpoints').exists()


def test_a_workdir_of_another_output_layer_is_refused_untouched(tiny_config, tmp_path):
    from charlm import train
    c = tiny_config
    c.data.tokenizer = 'word'
    c.num_train_steps = c.checkpoint_every_steps = c.eval_every_steps = 2
    train.train_and_evaluate(c, str(tmp_path / 'w'))
    before = sorted(p.name for p in (tmp_path / 'w' / 'checkpoints').iterdir())
    c.model.softmax, c.model.adaptive_cutoffs = 'adaptive', (8, 20)
    c.num_train_steps = 4
    with pytest.raises(CharLMError, match="softmax: full in checkpoint, adaptive in config"):
        train.train_and_evaluate(c, str(tmp_path / 'w'))
    assert sorted(p.name for p in (tmp_path / 'w' / 'checkpoints').iterdir()) == before
