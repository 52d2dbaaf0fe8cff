"""charlm.activations: gate activations from the model's own cells, checked against the
textbook and papers' equations on the same parameters."""

import jax
import numpy as np
import pytest
from cells_test import np_step

from charlm import activations
from charlm import model as model_lib
from charlm.errors import CharLMError


def sigmoid(x):
    return 1 / (1 + np.exp(-x))


def _random_like(abstract, seed=0):
    """Random values shaped like eval_shape's output: parameters without compiling init."""
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda x: rng.normal(0, 0.5, x.shape).astype(x.dtype), abstract)


def _model(cell, sizes=(8, 6), **kw):
    m = model_lib.RecurrentLM(vocab_size=11, embed_dim=5, hidden_sizes=sizes, cell=cell, **kw)
    tokens = np.random.default_rng(1).integers(0, 11, (1, 9)).astype(np.int32)
    params = _random_like(jax.eval_shape(m.init, jax.random.key(0), m.init_carry(1), tokens))
    return m, params['params'], tokens


def _dense(p, x):
    return x @ p['kernel'] + (p['bias'] if 'bias' in p else 0.0)


def test_lstm_gates_equal_the_textbook_equations_on_the_same_parameters():
    m, params, tokens = _model('lstm')
    acts = activations.capture(m, params, tokens, layer=1)
    x = params['embed']['embedding'][np.asarray(tokens[0])]  # [T, E]
    for i, size in enumerate(m.hidden_sizes):
        p = params[f'lstm_{i}']
        c, h = np.zeros(size), np.zeros(size)
        record = {'forget': [], 'input': [], 'output': [], 'cell state': []}
        outs = []
        for x_t in x:
            gate = {g: _dense(p['i' + g], x_t) + _dense(p['h' + g], h) for g in 'ifgo'}
            f, ii, o = sigmoid(gate['f']), sigmoid(gate['i']), sigmoid(gate['o'])
            c = f * c + ii * np.tanh(gate['g'])
            h = o * np.tanh(c)
            for name, v in zip(record, (f, ii, o, c), strict=True):
                record[name].append(v)
            outs.append(h)
        x = np.stack(outs)
    assert list(acts) == ['forget', 'input', 'output', 'cell state', 'logits', 'model_logits']
    for name, values in record.items():  # the last layer is the one captured
        assert acts[name].shape == (9, 6)
        np.testing.assert_allclose(acts[name], np.stack(values), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(acts['logits'], acts['model_logits'], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(acts['logits'], _dense(params['head'], x), rtol=1e-5, atol=1e-5)


def test_gru_gates_equal_the_textbook_equations_on_the_same_parameters():
    m, params, tokens = _model('gru', sizes=(7,))
    acts = activations.capture(m, params, tokens, layer=0)
    p = params['gru_0']
    h = np.zeros(7)
    want = {'reset': [], 'update': [], 'hidden state': []}
    for x_t in params['embed']['embedding'][np.asarray(tokens[0])]:
        r = sigmoid(_dense(p['ir'], x_t) + _dense(p['hr'], h))
        z = sigmoid(_dense(p['iz'], x_t) + _dense(p['hz'], h))
        n = np.tanh(_dense(p['in'], x_t) + r * _dense(p['hn'], h))
        h = (1 - z) * n + z * h
        for name, v in zip(want, (r, z, h), strict=True):
            want[name].append(v)
    for name, values in want.items():
        np.testing.assert_allclose(acts[name], np.stack(values), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(acts['logits'], acts['model_logits'], rtol=1e-5, atol=1e-5)


PANELS = {'mingru': ['update'], 'minlstm': ['forget', 'input'],
          'lnlstm': ['forget', 'input', 'output'], 'mogrifier': ['forget', 'input', 'output']}


@pytest.mark.parametrize('cell', list(PANELS))
def test_charlm_cells_gates_equal_their_papers_equations(cell):
    """charlm.cells' cells sow their gates; a numpy re-computation of each cell
    (cells_test.np_step) gives the same gates and state, layer after layer."""
    m, params, tokens = _model(cell, mogrifier_rounds=3)
    acts = activations.capture(m, params, tokens, layer=1)
    gates_, state = PANELS[cell], activations.STATE[cell]
    assert list(acts) == [*gates_, state, 'logits', 'model_logits']
    x = params['embed']['embedding'][np.asarray(tokens[0])][:, None]  # [T, 1, E]
    for i in range(len(m.hidden_sizes)):
        carry = jax.tree.map(np.asarray, m.init_carry(1)[i])
        record = {name: [] for name in [*gates_, state]}
        outs = []
        for x_t in x:
            carry, h, gate = np_step(cell, params[f'{cell}_{i}'], carry, x_t, rounds=3)
            for name in gates_:
                record[name].append(gate[name][0])
            record[state].append((carry[0] if isinstance(carry, tuple) else carry)[0])
            outs.append(h)
        x = np.stack(outs)
    for name, values in record.items():  # the last layer is the one captured
        assert acts[name].shape == (9, 6)
        np.testing.assert_allclose(acts[name], np.stack(values), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(acts['logits'], acts['model_logits'], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(acts['logits'], _dense(params['head'], x[:, 0]), rtol=1e-5,
                               atol=1e-5)


def test_rnn_and_bad_layer_are_errors():
    m, params, tokens = _model('rnn', sizes=(4,))
    with pytest.raises(CharLMError, match="'rnn' layer has no gates"):
        activations.capture(m, params, tokens, layer=0)
    m, params, tokens = _model('lstm', sizes=(4,))
    with pytest.raises(CharLMError, match='--layer=1 is out of range: the model has 1 layers'):
        activations.capture(m, params, tokens, layer=1)
