"""charlm.dynamic: dynamic evaluation adapts to the text it reads, and lr=0 is static."""

import jax
import numpy as np
import pytest
from flax import jax_utils

from charlm import data, dynamic, steps
from charlm import model as model_lib
from charlm.errors import CharLMError

V = 12


def _model_and_params():
    m = model_lib.RecurrentLM(vocab_size=V, embed_dim=8, hidden_sizes=(16,))
    params = m.init(jax.random.key(0), m.init_carry(1), np.zeros((1, 4), np.int32))['params']
    return m, params


def test_lr_zero_scores_what_the_stateful_evaluation_scores():
    m, params = _model_and_params()
    tokens = np.random.default_rng(0).integers(0, V, 3001).astype(np.int32)
    static = steps.evaluate(steps.parallel_steps(m).eval, jax_utils.replicate(params), tokens,
                            16, data.Layout(4, 4, 4), stateful=True)
    same = dynamic.dynamic_evaluate(m, params, tokens, 16, lr=0.0, streams=4)
    assert same['tokens'] == static['tokens'] == 3000
    assert same['loss'] == pytest.approx(static['loss'], rel=1e-6)


@pytest.mark.parametrize('rule,lr', [('sgd', 0.5), ('rms', 3e-3), ('rms-global', 3e-3)])
def test_a_regular_text_is_learnt_while_it_is_read(rule, lr):
    m, params = _model_and_params()
    tokens = np.tile(np.array([3, 1, 4, 1, 5, 9, 2, 6], np.int32), 200)  # period 8
    prior = (dynamic.gradient_stats(m, params, np.arange(500, dtype=np.int32) % V, 16,
                                    streams=4) if rule == 'rms-global' else None)
    static = dynamic.dynamic_evaluate(m, params, tokens, 16, lr=0.0)
    adapted = dynamic.dynamic_evaluate(m, params, tokens, 16, lr=lr, rule=rule, decay=1e-3,
                                       prior=prior)
    assert adapted['loss'] < 0.5 * static['loss']  # an untrained model picks the period up
    before = jax.tree.map(np.copy, params)
    dynamic.dynamic_evaluate(m, params, tokens, 16, lr=lr, rule=rule, prior=prior)
    jax.tree.map(np.testing.assert_array_equal, params, before)  # never modified


def test_the_segment_length_is_how_often_it_updates():
    """lr=0 scores the same stream in any segments; with lr > 0, shorter segments mean
    more updates, and on a regular text they learn it sooner."""
    m, params = _model_and_params()
    tokens = np.tile(np.array([3, 1, 4, 1, 5, 9, 2, 6], np.int32), 40)
    static = [dynamic.dynamic_evaluate(m, params, tokens, n, lr=0.0)['loss'] for n in (4, 16)]
    assert static[0] == pytest.approx(static[1], rel=1e-5)
    short, long = (dynamic.dynamic_evaluate(m, params, tokens, n, lr=3e-3)['loss']
                   for n in (4, 32))
    assert short < long


def _sq_grads_by_hand(m, params, tokens, seq_len, streams):
    """Each window's gradient, the streams read statefully, one window at a time."""
    w = dynamic.windows(tokens, seq_len, streams)
    carry, grads = m.init_carry(streams), []
    for k in range(len(w['inputs'])):
        window = {key: v[k] for key, v in w.items()}

        def loss(p, carry=carry, window=window):
            c, nll = steps._nll(m, p, carry, window, False)
            return (nll * window['weights']).sum() / window['weights'].sum(), c

        g, carry = jax.grad(loss, has_aux=True)(params)
        grads.append(g)
    return grads


def test_gradient_stats_and_the_rms_global_update_follow_the_equations():
    """rms-global (Krause et al. 2018, Section 5) against a plain loop written from the
    equations in charlm.dynamic's docstring."""
    m, params = _model_and_params()
    rng = np.random.default_rng(1)
    train = rng.integers(0, V, 161).astype(np.int32)
    grads = _sq_grads_by_hand(m, params, train, 10, 2)  # 160 targets: 2 streams x 8 windows
    assert len(grads) == 8
    prior = dynamic.gradient_stats(m, params, train, 10, streams=2, max_tokens=0)
    rms = jax.tree.map(lambda *g: np.sqrt(np.mean(np.square(g), axis=0)), *grads)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-9),
                 prior['rms'], rms)
    leaves = jax.tree.leaves(rms)
    assert prior['mean_rms'] == pytest.approx(np.mean([x.mean() for x in leaves]), rel=1e-5)
    assert len(dynamic.windows(train, 10, 2, max_tokens=40)['inputs']) == 2  # bounded

    text = rng.integers(0, V, 31).astype(np.int32)  # three segments of 10
    lr, decay = 0.05, 0.3
    w = dynamic.windows(text, 10, 1)
    nll_W, _, theta = dynamic.adapt(m, params, w, lr, decay, rule='rms-global', prior=prior)
    eps = dynamic.EPS_OF_MEAN_RMS * prior['mean_rms']
    rate = jax.tree.map(lambda r: np.minimum(r / prior['mean_rms'], 1 / decay), prior['rms'])
    expect, carry = params, m.init_carry(1)
    for k in range(3):
        window = {key: v[k] for key, v in w.items()}

        def loss(p, carry=carry, window=window):
            c, nll = steps._nll(m, p, carry, window, False)
            return (nll * window['weights']).sum() / window['weights'].sum(), (nll.sum(), c)

        g, (nll, carry) = jax.grad(loss, has_aux=True)(expect)
        assert float(nll_W[k]) == pytest.approx(float(nll), rel=1e-5)
        expect = jax.tree.map(lambda p, x, p0, r, k: p - lr * x / (r + eps) + decay * k * (p0 - p),
                              expect, g, params, prior['rms'], rate)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
                 theta, expect)
    assert not np.allclose(theta['head']['kernel'], params['head']['kernel'])


def test_bad_settings():
    m, params = _model_and_params()
    tokens = np.arange(100, dtype=np.int32) % V
    with pytest.raises(CharLMError, match='--dynamic_rule'):
        dynamic.dynamic_evaluate(m, params, tokens, 16, lr=0.1, rule='adam')
    with pytest.raises(CharLMError, match='--dynamic_lr'):
        dynamic.dynamic_evaluate(m, params, tokens, 16, lr=-1.0)
    with pytest.raises(CharLMError, match='--dynamic_seq_len must be positive'):
        dynamic.dynamic_evaluate(m, params, tokens, -4, lr=0.1)
    with pytest.raises(CharLMError, match='needs the gradient statistics'):
        dynamic.dynamic_evaluate(m, params, tokens, 16, lr=0.1, rule='rms-global')
    with pytest.raises(CharLMError, match='--dynamic_stats_tokens'):
        dynamic.check_settings(lr=0.1, decay=0.0, rule='rms-global', streams=1,
                               stats_tokens=-1)
