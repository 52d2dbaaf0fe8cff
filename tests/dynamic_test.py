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


@pytest.mark.parametrize('rule,lr', [('sgd', 0.5), ('rms', 3e-3)])
def test_a_regular_text_is_learnt_while_it_is_read(rule, lr):
    m, params = _model_and_params()
    tokens = np.tile(np.array([3, 1, 4, 1, 5, 9, 2, 6], np.int32), 200)  # period 8
    static = dynamic.dynamic_evaluate(m, params, tokens, 16, lr=0.0)
    adapted = dynamic.dynamic_evaluate(m, params, tokens, 16, lr=lr, rule=rule, decay=1e-3)
    assert adapted['loss'] < 0.5 * static['loss']  # an untrained model picks the period up
    before = jax.tree.map(np.copy, params)
    dynamic.dynamic_evaluate(m, params, tokens, 16, lr=lr, rule=rule)
    jax.tree.map(np.testing.assert_array_equal, params, before)  # never modified


def test_bad_settings():
    m, params = _model_and_params()
    tokens = np.arange(100, dtype=np.int32) % V
    with pytest.raises(CharLMError, match='--dynamic_rule'):
        dynamic.dynamic_evaluate(m, params, tokens, 16, lr=0.1, rule='adam')
    with pytest.raises(CharLMError, match='--dynamic_lr'):
        dynamic.dynamic_evaluate(m, params, tokens, 16, lr=-1.0)
