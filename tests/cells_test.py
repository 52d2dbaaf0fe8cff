"""charlm.cells: each cell against its paper's equations in numpy, the parallel minGRU and
minLSTM layers against their cells scanned, and RecurrentLM with each cell."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from charlm import cells
from charlm import model as model_lib
from charlm.errors import CharLMError

NEW_CELLS = ('mingru', 'minlstm', 'lnlstm', 'mogrifier')


def _random_like(abstract, seed=0):
    """Random values shaped like eval_shape's output: parameters without compiling init."""
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda x: rng.normal(0, 0.5, x.shape).astype(x.dtype), abstract)


# ------------------------------------------------------------------ the papers' equations


def sigmoid(x):
    return 1 / (1 + np.exp(-x))


def _dense(p, x):
    return x @ p['kernel'] + (p['bias'] if 'bias' in p else 0.0)


def _layer_norm(v, scale, bias=0.0):
    mean, var = v.mean(-1, keepdims=True), v.var(-1, keepdims=True)
    return (v - mean) / np.sqrt(var + 1e-6) * scale + bias  # flax's default epsilon


def _lstm(z):
    """The LSTM update from pre-activations [i, f, g, o] (OptimizedLSTMCell's order)."""
    i, f, g, o = np.split(z, 4, axis=-1)
    i, f, o = sigmoid(i), sigmoid(f), sigmoid(o)
    return i, f, np.tanh(g), o


def _stack(p, kind, what='kernel'):
    return np.concatenate([p[f'{kind}{g}'][what] for g in 'ifgo'], axis=-1)


def _matrix(p, name):
    """Mogrifier's Q^r or R^r: one kernel, or the low-rank product Q_left Q_right."""
    if name in p:
        return p[name]['kernel']
    return p[f'{name}_left']['kernel'] @ p[f'{name}_right']['kernel']


def np_step(cell, p, carry, x, rounds=5):
    """One step of `cell` written from its paper in float64 numpy: (carry, h, gates)."""
    p = jax.tree.map(lambda a: np.asarray(a, np.float64), p)
    x = np.asarray(x, np.float64)
    carry = jax.tree.map(lambda a: np.asarray(a, np.float64), carry)
    if cell in ('mingru', 'minlstm'):
        k = _dense(p['ih'], x)
        h_tilde = np.where(k >= 0, k + 0.5, sigmoid(k))  # g(x), Feng et al.
        if cell == 'mingru':
            z = sigmoid(_dense(p['iz'], x))
            h = (1 - z) * carry + z * h_tilde
            return h, h, {'update': z}
        f, i = sigmoid(_dense(p['if'], x)), sigmoid(_dense(p['ii'], x))
        h = f / (f + i) * carry + i / (f + i) * h_tilde
        return h, h, {'forget': f, 'input': i}
    c, h = carry
    if cell == 'lnlstm':  # Ha et al. 2016: LN of each projection, LN of c before the tanh
        z = (_layer_norm(x @ _stack(p, 'i'), p['ln_x']['scale'])
             + _layer_norm(h @ _stack(p, 'h'), p['ln_h']['scale']) + _stack(p, 'h', 'bias'))
        i, f, g, o = _lstm(z)
        c = f * c + i * g
        h = o * np.tanh(_layer_norm(c, p['ln_c']['scale'], p['ln_c']['bias']))
    else:  # Melis et al. 2020: odd rounds x <- 2 sigmoid(Q h) x, even h <- 2 sigmoid(R x) h
        for r in range(1, rounds + 1):
            if r % 2:
                x = 2 * sigmoid(h @ _matrix(p, f'q{r}')) * x
            else:
                h = 2 * sigmoid(x @ _matrix(p, f'r{r}')) * h
        i, f, g, o = _lstm(x @ _stack(p, 'i') + h @ _stack(p, 'h') + _stack(p, 'h', 'bias'))
        c = f * c + i * g
        h = o * np.tanh(c)
    return (c, h), h, {'forget': f, 'input': i, 'output': o}


@pytest.mark.parametrize('cell', (*NEW_CELLS, 'mogrifier_rank_2'))
def test_cell_steps_equal_the_papers_equations(cell):
    """Three steps from a non-zero state; x of both signs reaches both branches of g."""
    cell, _, rank = cell.partition('_rank_')
    module = model_lib.CELLS[cell](features=5, **({'rank': int(rank)} if rank else {}))
    x_TxBxE = jax.random.normal(jax.random.key(1), (3, 4, 6)) * 2
    carry = jax.tree.map(lambda z: jax.random.normal(jax.random.key(2), z.shape),
                         module.initialize_carry(jax.random.key(0), (4, 6)))
    params = _random_like(jax.eval_shape(module.init, jax.random.key(0), carry, x_TxBxE[0]))
    step = jax.jit(functools.partial(module.apply, mutable=['intermediates']))
    want_carry = carry
    for x_BxE in x_TxBxE:
        (carry, h), sown = step(params, carry, x_BxE)
        want_carry, want_h, want_gates = np_step(cell, params['params'], want_carry, x_BxE)
        np.testing.assert_allclose(h, want_h, rtol=1e-5, atol=1e-6)
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
                     carry, want_carry)
        assert list(sown['intermediates']) == list(want_gates)
        for name, value in want_gates.items():
            np.testing.assert_allclose(sown['intermediates'][name][0], value, rtol=1e-5,
                                       atol=1e-6)
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(carry))


def test_mogrifier_with_no_rounds_is_the_flax_lstm():
    """Same parameter names and shapes as nn.OptimizedLSTMCell, and the same step."""
    mog, lstm = cells.MogrifierLSTMCell(features=5, rounds=0), nn.OptimizedLSTMCell(5)
    x = jax.random.normal(jax.random.key(1), (4, 6))
    carry = (jnp.full((4, 5), 0.3), jnp.full((4, 5), -0.2))
    params = _random_like(jax.eval_shape(lstm.init, jax.random.key(0), carry, x))
    assert jax.eval_shape(mog.init, jax.random.key(0), carry, x) == jax.eval_shape(
        lstm.init, jax.random.key(0), carry, x)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
                 jax.jit(mog.apply)(params, carry, x), jax.jit(lstm.apply)(params, carry, x))


# ------------------------------------------------------------------ in the model: the
# parallel scan, training, the carry


def _loss(m, params, carry, tokens):
    carry, logits = m.apply({'params': params}, carry, tokens, train=True)
    loss = jnp.mean(jax.nn.log_softmax(logits)[..., 0])
    return loss + sum(jnp.sum(x * x) for x in jax.tree.leaves(carry)), (carry, logits)


# ((loss, (carry, logits)), (d params, d carry)), compiled once per model for both tests
_grad = jax.jit(jax.value_and_grad(_loss, argnums=(1, 2), has_aux=True), static_argnums=0)


def _setup(cell):
    """A 2-layer model, its random parameters, a random non-zero carry and 10 tokens."""
    m = model_lib.RecurrentLM(vocab_size=11, embed_dim=5, hidden_sizes=(8, 6), cell=cell,
                              mogrifier_rounds=3)
    tokens = jax.random.randint(jax.random.key(1), (2, 10), 0, 11)
    start = jax.tree.map(lambda x: jax.random.normal(jax.random.key(2), x.shape) * 0.5,
                         m.init_carry(2))
    params = _random_like(jax.eval_shape(m.init, jax.random.key(0), start, tokens))['params']
    return m, params, start, tokens


@pytest.mark.parametrize('cell', cells.PARALLEL)
def test_parallel_scan_equals_the_cell_scanned(cell):
    """A minGRU or minLSTM model runs its layers as parallel scans, with no loop over time;
    nn.scan over its cell (impl='cell') gives the same outputs, final carry and gradients
    (parameters and initial carry) from a non-zero carry."""
    m, params, start, tokens = _setup(cell)
    reference = m.clone(impl='cell')
    for model, loops in ((m, False), (reference, True)):
        jaxpr = jax.make_jaxpr(model.apply)({'params': params}, start, tokens)
        assert ('scan[' in str(jaxpr)) == loops
    (_, out), grads = _grad(m, params, start, tokens)
    (_, want), want_grads = _grad(reference, params, start, tokens)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5), out, want)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5),
                 grads, want_grads)


def test_log_space_scan_of_a_long_sequence():
    """1,000 steps of a_t = 0.5, b_t = 1: h_t -> 2, where the product of the a_t (2^-1000)
    underflows float32 and log A_t - log A_k (the cumulative-sum form) loses digits."""
    log_a = jnp.full((1, 1000, 1), np.log(0.5), jnp.float32)
    h = jax.jit(cells.log_space_scan)(log_a, jnp.zeros_like(log_a), jnp.array([[-3.0]]))
    want = 2 - 5 * 0.5 ** np.arange(1, 1001)  # h_t = 2 + (h_0 - 2) / 2^t
    np.testing.assert_allclose(h[0, :, 0], want, rtol=1e-6)


@pytest.mark.parametrize('cell', NEW_CELLS)
def test_model_trains_and_its_carry_continues(cell):
    """Forward and backward through a 2-layer model; from a non-zero carry, the sequence in
    two halves (carry passed; 5 steps, an odd length for the parallel scan) equals it
    whole, and so does the generation stepper, token by token."""
    m, params, start, tokens = _setup(cell)
    (loss, (carry, whole)), grads = _grad(m, params, start, tokens)
    assert np.isfinite(loss)
    for path, g in jax.tree_util.tree_flatten_with_path(grads)[0]:
        assert np.isfinite(g).all() and np.abs(g).max() > 0, jax.tree_util.keystr(path)

    apply = jax.jit(m.apply)
    half, first = apply({'params': params}, start, tokens[:, :5])
    end, second = apply({'params': params}, half, tokens[:, 5:])
    tol = dict(rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(jnp.concatenate([first, second], 1), whole, **tol)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, **tol), end, carry)

    stepper = model_lib.stepper(m, params)
    assert isinstance(stepper, model_lib.ApplyStepper)
    state, step = stepper.start(half), jax.jit(type(stepper).step)
    for t in range(5, 10):
        state, logits = step(stepper, state, tokens[:, t])
        np.testing.assert_allclose(logits, whole[:, t], **tol)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, **tol), stepper.carry(state),
                 carry)


@pytest.mark.parametrize('cell', list(model_lib.CELLS))
def test_init_carry_is_the_cells_own(cell):
    m = model_lib.RecurrentLM(vocab_size=11, embed_dim=5, hidden_sizes=(8, 6), cell=cell)
    want = tuple(model_lib.CELLS[cell](features=h).initialize_carry(jax.random.key(0), (3, 5))
                 for h in m.hidden_sizes)
    assert jax.tree.structure(m.init_carry(3)) == jax.tree.structure(want)
    jax.tree.map(np.testing.assert_array_equal, m.init_carry(3), want)


def test_model_options_of_the_new_cells_are_checked():
    with pytest.raises(CharLMError, match='weight_drop drops recurrent weights, and a mingru'):
        model_lib.RecurrentLM(vocab_size=5, cell='mingru', weight_drop=0.5)
    with pytest.raises(CharLMError, match='mogrifier_rounds must be >= 0'):
        model_lib.RecurrentLM(vocab_size=5, cell='mogrifier', mogrifier_rounds=-1)
    m = model_lib.RecurrentLM(vocab_size=5, cell='mogrifier', mogrifier_rounds=2)
    assert m.cell_options() == dict(dtype=jnp.float32, rounds=2, rank=0)
    params = jax.eval_shape(m.init, jax.random.key(0), m.init_carry(1),
                            jnp.zeros((1, 3), jnp.int32))['params']
    assert sorted(k for k in params['mogrifier_0'] if k[0] in 'qr') == ['q1', 'r2']
    with pytest.raises(CharLMError, match='mogrifier_rank must be >= 0'):
        model_lib.RecurrentLM(vocab_size=5, cell='mogrifier', mogrifier_rank=-1)
    low = model_lib.RecurrentLM(vocab_size=5, embed_dim=6, hidden_sizes=(8,), cell='mogrifier',
                                mogrifier_rounds=2, mogrifier_rank=3)
    shapes = jax.eval_shape(low.init, jax.random.key(0), low.init_carry(1),
                            jnp.zeros((1, 3), jnp.int32))['params']['mogrifier_0']
    assert {k: v['kernel'].shape for k, v in shapes.items() if k[0] in 'qr'} == {
        'q1_left': (8, 3), 'q1_right': (3, 6), 'r2_left': (6, 3), 'r2_right': (3, 8)}
