import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from charlm import kernels
from charlm import model as model_lib
from charlm.errors import CharLMError


def _init(m, batch=3, length=7):
    tokens = jax.random.randint(jax.random.key(1), (batch, length), 0, m.vocab_size)
    params = jax.jit(m.init)(jax.random.key(0), m.init_carry(batch), tokens)['params']
    return params, tokens


def _apply(m, *args, **kw):
    """m.apply as one compiled program: run op by op, a model's apply compiles each of its
    hundreds of operations on its own, which made these tests slow."""
    static = {k: kw.pop(k) for k in ('train', 'mutable') if k in kw}
    return jax.jit(functools.partial(m.apply, **static))(*args, **kw)


def _grad(fn, argnums):
    """jax.grad(fn) compiled, fn's first argument (a model) static."""
    return jax.jit(jax.grad(fn, argnums=argnums), static_argnums=0)


@pytest.mark.parametrize('cell', ['lstm', 'gru', 'rnn'])
def test_shapes(cell):
    m = model_lib.RecurrentLM(vocab_size=11, embed_dim=5, hidden_sizes=(8, 6), cell=cell)
    params, tokens = _init(m)
    carry, logits = _apply(m, {'params': params}, m.init_carry(3), tokens)
    assert logits.shape == (3, 7, 11) and logits.dtype == jnp.float32
    assert jax.tree.map(jnp.shape, carry) == jax.tree.map(jnp.shape, m.init_carry(3))


@pytest.mark.parametrize('cell', ['lstm', 'gru', 'rnn'])
def test_scan_equals_python_loop_over_the_same_cell(cell):
    m = model_lib.RecurrentLM(vocab_size=11, embed_dim=5, hidden_sizes=(8, 6), cell=cell,
                              unroll=3)
    params, tokens = _init(m)
    _, logits = m.apply({'params': params}, m.init_carry(3), tokens)
    # Step the same Flax cells by hand, one time step at a time.
    x = params['embed']['embedding'][tokens]
    cls = model_lib.CELLS[cell]
    carry = list(m.init_carry(3))
    outs = []
    for t in range(tokens.shape[1]):
        h = x[:, t]
        for i, size in enumerate(m.hidden_sizes):
            carry[i], h = cls(features=size).apply({'params': params[f'{cell}_{i}']}, carry[i], h)
        outs.append(h)
    head = params['head']
    expected = jnp.stack(outs, 1) @ head['kernel'] + head['bias'][None, None]
    np.testing.assert_allclose(logits, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('cell,impl,fast', [('lstm', 'hoisted', True), ('lstm', 'cell', True),
                                             ('gru', 'hoisted', False)])
def test_step_equals_apply_token_by_token(cell, impl, fast):
    """The generation step (re-laid LSTM weights; other cells: apply) against model.apply."""
    m = model_lib.RecurrentLM(vocab_size=11, embed_dim=5, hidden_sizes=(8, 6), cell=cell,
                              impl=impl)
    params, tokens = _init(m, length=6)
    start = jax.tree.map(lambda x: jax.random.normal(jax.random.key(2), x.shape) * 0.5,
                         m.init_carry(3))
    stepper = model_lib.stepper(m, params)
    assert isinstance(stepper, kernels.FoldedStepper) == fast
    state, carry, apply = stepper.start(start), start, jax.jit(m.apply)
    for t in range(tokens.shape[1]):
        state, logits = stepper.step(state, tokens[:, t])
        carry, want = apply({'params': params}, carry, tokens[:, t:t + 1])
        np.testing.assert_allclose(logits, want[:, 0], rtol=1e-5, atol=1e-5)
    for a, b in zip(jax.tree.leaves(stepper.carry(state)), jax.tree.leaves(carry), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_carry_continues_across_calls():
    m = model_lib.RecurrentLM(vocab_size=11, embed_dim=5, hidden_sizes=(8,))
    params, tokens = _init(m, length=10)
    _, whole = m.apply({'params': params}, m.init_carry(3), tokens)
    carry, first = m.apply({'params': params}, m.init_carry(3), tokens[:, :4])
    _, second = m.apply({'params': params}, carry, tokens[:, 4:])
    np.testing.assert_allclose(jnp.concatenate([first, second], 1), whole, rtol=1e-5, atol=1e-6)


def test_hidden_sizes():
    assert model_lib.hidden_sizes_from(2, 256) == (256, 256)
    assert model_lib.hidden_sizes_from(2, 256, (150, 100)) == (150, 100)
    assert model_lib.hidden_sizes_from(0, 256, [150, 100]) == (150, 100)
    with pytest.raises(CharLMError, match='num_layers'):
        model_lib.hidden_sizes_from(3, 256, (150, 100))


def test_unknown_cell():
    with pytest.raises(CharLMError, match='unknown model.cell'):
        model_lib.RecurrentLM(vocab_size=5, cell='transformer')


def test_summary_counts_parameters():
    m = model_lib.RecurrentLM(vocab_size=10, embed_dim=4, hidden_sizes=(8,))
    params, _ = _init(m)
    text = model_lib.summary(m, params)
    # embed 10*4, LSTM 4*(4*8 + 8*8 + 8), head 8*10 + 10
    assert f'{40 + 4 * (32 + 64 + 8) + 90:,}' in text.splitlines()[-1]
    assert model_lib.count_params(params) == 40 + 416 + 90


def _loss(m, params, carry, tokens):
    import optax
    carry, logits = m.apply({'params': params}, carry, tokens[:, :-1])
    nll = optax.softmax_cross_entropy_with_integer_labels(logits, tokens[:, 1:]).mean()
    return nll + sum(jnp.sum(x * x) for x in jax.tree.leaves(carry))  # carry grads matter too


@pytest.mark.parametrize('unroll,batch,folds', [(1, 4, True), (3, 4, True), (1, 1, False)])
def test_hoisted_lstm_equals_the_flax_cell(unroll, batch, folds):
    """Same parameters, same outputs, same gradients (params and initial carry).

    With 4 x 11 tokens >= 2 x 13 vocabulary entries the first layer projects the
    embedding table and gathers; with 1 x 11 it projects each token's embedding.
    """
    ref = model_lib.RecurrentLM(vocab_size=13, embed_dim=6, hidden_sizes=(16, 8), impl='cell')
    fast = model_lib.RecurrentLM(vocab_size=13, embed_dim=6, hidden_sizes=(16, 8),
                                 impl='hoisted', unroll=unroll)
    tokens = jax.random.randint(jax.random.key(3), (batch, 12), 0, 13)
    assert fast.folds_embedding(tokens[:, :-1].size) == folds
    assert not ref.folds_embedding(tokens[:, :-1].size)
    p_ref = jax.jit(ref.init)(jax.random.key(0), ref.init_carry(batch), tokens)['params']
    p_fast = jax.jit(fast.init)(jax.random.key(0), fast.init_carry(batch), tokens)['params']
    jax.tree.map(np.testing.assert_array_equal, p_ref, p_fast)  # same init too
    carry = jax.tree.map(lambda x: x + 0.5, ref.init_carry(batch))
    out_ref = _apply(ref, {'params': p_ref}, carry, tokens)
    out_fast = _apply(fast, {'params': p_ref}, carry, tokens)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
                 out_ref, out_fast)
    g_ref = _grad(_loss, (1, 2))(ref, p_ref, carry, tokens)
    g_fast = _grad(_loss, (1, 2))(fast, p_ref, carry, tokens)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
                 g_ref, g_fast)


def _cudnn_reference(x, h0, c0, weights, input_size, hidden_size):
    """kernels._cudnn_lstm computed by jax.experimental.rnn's reference LSTM (any backend),
    from the same flat cuDNN weight vector."""
    from jax.experimental import rnn
    w_ih, w_hh, b_ih, b_hh = rnn.unpack_lstm_weights(weights, input_size, hidden_size, 1, False)
    lengths = jnp.full((x.shape[0],), x.shape[1], jnp.int32)
    return rnn.lstm_ref(x, h0, c0, w_ih, w_hh, b_ih, b_hh, lengths, input_size, hidden_size,
                        1, 0.0, False)


def test_cudnn_layer_packs_the_same_model(monkeypatch):
    """impl='cudnn' with cuDNN's reference LSTM in place of the GPU kernel: the same
    outputs, carries and gradients as impl='hoisted', dropout between layers included.
    This checks everything but the kernel (weight layout, gate order, biases, carries);
    test_cudnn_kernel_on_a_gpu checks the kernel where there is one."""
    monkeypatch.setattr(kernels, '_cudnn_lstm', _cudnn_reference)
    kw = dict(vocab_size=13, embed_dim=6, hidden_sizes=(16, 8), dropout_rate=0.25)
    ref, cudnn = model_lib.RecurrentLM(**kw), model_lib.RecurrentLM(**kw, impl='cudnn')
    tokens = jax.random.randint(jax.random.key(3), (4, 12), 0, 13)
    p = jax.jit(ref.init)(jax.random.key(0), ref.init_carry(4), tokens)['params']
    p_cudnn = jax.jit(cudnn.init)(jax.random.key(0), cudnn.init_carry(4), tokens)['params']
    jax.tree.map(np.testing.assert_array_equal, p, p_cudnn)  # same parameters and init
    carry = jax.tree.map(lambda x: x + 0.5, ref.init_carry(4))

    @functools.partial(jax.jit, static_argnums=0)
    def loss(m, params, carry):
        carry, logits = m.apply({'params': params}, carry, tokens, train=True,
                                rngs={'dropout': jax.random.key(7)})
        return jnp.sum(logits * logits) + sum(jnp.sum(x * x) for x in jax.tree.leaves(carry))

    for m in (ref, cudnn):  # dropout is on: the losses differ from a dropout-free run
        assert loss(m, p, carry) != loss(m.clone(dropout_rate=0.0), p, carry)
    np.testing.assert_allclose(loss(cudnn, p, carry), loss(ref, p, carry), rtol=1e-5)
    g_ref = _grad(loss, (1, 2))(ref, p, carry)
    g_cudnn = _grad(loss, (1, 2))(cudnn, p, carry)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5),
                 g_ref, g_cudnn)


def test_cudnn_weights_convert_both_ways():
    """to_cudnn_weights / from_cudnn_weights: a round trip returns the parameters, and any
    cuDNN (PyTorch nn.LSTM) weight vector, with both of its biases, becomes Flax parameters
    that compute what cuDNN's reference computes."""
    from jax.experimental import rnn
    layer = kernels.HoistedLSTM(16)
    x = jax.random.normal(jax.random.key(1), (3, 9, 6))
    carry = (jnp.full((3, 16), 0.3), jnp.full((3, 16), -0.2))
    p = layer.init(jax.random.key(0), carry, x)['params']
    flat = kernels.to_cudnn_weights(p)
    assert flat.shape == (rnn.get_num_params_in_lstm(6, 16, 1, False),)
    jax.tree.map(np.testing.assert_array_equal, kernels.from_cudnn_weights(flat, 6, 16), p)

    weights = rnn.init_lstm_weight(jax.random.key(2), 6, 16, 1, False)  # both biases random
    (c, h), y = layer.apply({'params': kernels.from_cudnn_weights(weights, 6, 16)}, carry, x)
    y_ref, h_ref, c_ref = _cudnn_reference(x, carry[1][None], carry[0][None], weights, 6, 16)
    np.testing.assert_allclose(y, y_ref, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(h, h_ref[0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(c, c_ref[0], rtol=1e-5, atol=1e-6)


def test_cudnn_kernel_on_a_gpu():
    """The real cuDNN kernel against impl='hoisted' (run with JAX_PLATFORMS=cuda)."""
    if jax.default_backend() != 'gpu':
        pytest.skip('needs a CUDA GPU: JAX_PLATFORMS=cuda pytest tests/model_test.py -k cudnn')
    kw = dict(vocab_size=13, embed_dim=32, hidden_sizes=(64, 48))
    ref, cudnn = model_lib.RecurrentLM(**kw), model_lib.RecurrentLM(**kw, impl='cudnn')
    tokens = jax.random.randint(jax.random.key(3), (8, 20), 0, 13)
    p = ref.init(jax.random.key(0), ref.init_carry(8), tokens)['params']
    carry = jax.tree.map(lambda x: x + 0.5, ref.init_carry(8))
    # Both run float32 matmuls at JAX's default GPU precision (TF32 where the GPU has it).
    tol = dict(rtol=2e-2, atol=2e-3)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, **tol),
                 ref.apply({'params': p}, carry, tokens),
                 cudnn.apply({'params': p}, carry, tokens))
    g_ref = jax.grad(_loss, argnums=(1, 2))(ref, p, carry, tokens)
    g_cudnn = jax.grad(_loss, argnums=(1, 2))(cudnn, p, carry, tokens)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, **tol), g_ref, g_cudnn)


@pytest.mark.parametrize('kw', [dict(cell='gru'), dict(dtype=jnp.bfloat16)])
def test_cudnn_is_a_float32_lstm_only(kw):
    with pytest.raises(CharLMError, match="impl='cudnn' is a float32 LSTM only"):
        model_lib.RecurrentLM(vocab_size=5, impl='cudnn', **kw)


def test_bfloat16_matmuls_keep_float32_state():
    m = model_lib.RecurrentLM(vocab_size=13, embed_dim=6, hidden_sizes=(16,), dtype=jnp.bfloat16)
    params, tokens = _init(m)
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(params))
    carry, logits = _apply(m, {'params': params}, m.init_carry(3), tokens)
    assert logits.dtype == jnp.float32
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(carry))
    ref = model_lib.RecurrentLM(vocab_size=13, embed_dim=6, hidden_sizes=(16,))
    _, ref_logits = _apply(ref, {'params': params}, m.init_carry(3), tokens)
    np.testing.assert_allclose(logits, ref_logits, atol=0.05)
    grads = _grad(_loss, 1)(m, params, m.init_carry(3), tokens)
    assert all(x.dtype == jnp.float32 and np.isfinite(x).all() for x in jax.tree.leaves(grads))


def test_dropout_masks_are_bernoulli_and_fresh_per_key():
    x = jnp.ones((8, 100, 256))
    drop = kernels.Dropout(0.1)
    masks = [np.asarray(drop.apply({}, x, rngs={'dropout': jax.random.key(k)})) for k in (0, 1)]
    keep = masks[0] > 0
    assert abs(keep.mean() - 0.9) < 0.003  # 204,800 draws: 5 standard deviations
    np.testing.assert_allclose(masks[0][keep], 1 / 0.9, rtol=1e-6)  # inverted scaling
    assert abs(masks[0].mean() - 1.0) < 0.01
    both = keep & (masks[1] > 0)
    assert abs(both.mean() - 0.81) < 0.005  # independent across keys
    flat = keep.reshape(-1).astype(np.float64)
    for lag in (1, 256, 25600):  # neighbours in every axis are uncorrelated
        assert abs(np.corrcoef(flat[:-lag], flat[lag:])[0, 1]) < 0.01
    same = drop.apply({}, x, rngs={'dropout': jax.random.key(0)})
    np.testing.assert_array_equal(same, masks[0])
    np.testing.assert_array_equal(kernels.Dropout(0.1, deterministic=True).apply({}, x), x)


# ------------------------------------------------------------------ AWD-LSTM regularisers


def _train_apply(m, params, tokens, key=7, **kw):
    return _apply(m, {'params': params}, m.init_carry(tokens.shape[0]), tokens, train=True,
                   rngs={'dropout': jax.random.key(key)}, **kw)


def test_variational_dropout_is_one_mask_per_sequence():
    x = jnp.ones((4, 30, 16))
    y = np.asarray(kernels.Dropout(0.5, False, (1,)).apply({}, x, rngs={'dropout':
                                                                        jax.random.key(0)}))
    np.testing.assert_array_equal(y, np.broadcast_to(y[:, :1], y.shape))  # constant over time
    assert 0.3 < (y[:, 0] == 0).mean() < 0.7 and set(np.unique(y)) == {0.0, 2.0}
    assert not (y[0, 0] == y[1, 0]).all()  # but each sequence its own mask


@pytest.mark.parametrize('impl', ['hoisted', 'cell'])
def test_weight_drop_masks_w_h_once_per_step_and_only_in_training(impl):
    kw = dict(vocab_size=11, embed_dim=5, hidden_sizes=(8, 6), impl=impl)
    m, plain = model_lib.RecurrentLM(**kw, weight_drop=0.5), model_lib.RecurrentLM(**kw)
    params, tokens = _init(m, length=9)
    _, a = _train_apply(m, params, tokens)
    _, b = _train_apply(m, params, tokens)
    _, c = _train_apply(m, params, tokens, key=8)
    np.testing.assert_array_equal(a, b)  # the mask is the step's key's
    assert not np.allclose(a, c) and not np.allclose(a, _train_apply(plain, params, tokens)[1])
    np.testing.assert_array_equal(_apply(m, {'params': params}, m.init_carry(3), tokens)[1],
                                  _apply(plain, {'params': params}, plain.init_carry(3),
                                         tokens)[1])
    if impl == 'hoisted':  # one dropped W_h for all time steps: the plain layer on it agrees
        _, state = _train_apply(m, params, tokens, mutable=('intermediates',))
        dropped = jax.tree.map(lambda x: x, params)
        for layer in ('lstm_0', 'lstm_1'):
            w = state['intermediates'][layer]['dropped_w_h'][0]
            assert 0.3 < float((w == 0).mean()) < 0.7
            for g, kernel in zip(kernels.GATES, jnp.split(w, 4, axis=-1), strict=True):
                dropped[layer][f'h{g}']['kernel'] = kernel
        np.testing.assert_allclose(a, _train_apply(plain, dropped, tokens)[1], rtol=1e-5,
                                   atol=1e-5)


def test_embed_dropout_drops_whole_token_types():
    emb = jnp.ones((50, 8))
    out = np.asarray(kernels.drop(emb, 0.5, jax.random.key(0), (50, 1)))
    assert set(map(tuple, np.unique(out, axis=0))) == {(0.0,) * 8, (2.0,) * 8}  # rows
    kw = dict(vocab_size=11, embed_dim=5, hidden_sizes=(8,))
    m = model_lib.RecurrentLM(**kw, embed_dropout=0.5)
    params, tokens = _init(m, length=40)  # 120 tokens: the folded first layer, too
    assert not np.allclose(_train_apply(m, params, tokens)[1],
                           _train_apply(model_lib.RecurrentLM(**kw), params, tokens)[1])
    eval_m = _apply(m, {'params': params}, m.init_carry(3), tokens)[1]
    plain = model_lib.RecurrentLM(**kw)
    np.testing.assert_array_equal(eval_m, _apply(plain, {'params': params}, plain.init_carry(3),
                                                 tokens)[1])


def test_tied_embeddings_share_the_matrix():
    m = model_lib.RecurrentLM(vocab_size=11, embed_dim=6, hidden_sizes=(8, 6),
                              tie_embeddings=True)
    params, tokens = _init(m)
    assert 'head' not in params and params['head_bias'].shape == (11,)
    unused = sorted(set(range(11)) - set(np.asarray(tokens[:, :-1]).ravel()))[0]
    grads = _grad(_loss, 1)(m, params, m.init_carry(3), tokens)
    assert np.abs(grads['embed']['embedding'][unused]).sum() > 0  # reached through the head
    stepper = model_lib.stepper(m, params)
    state, logits = stepper.step(stepper.start(m.init_carry(3)), tokens[:, 0])
    np.testing.assert_allclose(logits, _apply(m, {'params': params}, m.init_carry(3),
                                              tokens[:, :1])[1][:, 0], rtol=1e-5, atol=1e-5)
    with pytest.raises(CharLMError, match='tie_embeddings needs embed_dim equal'):
        model_lib.RecurrentLM(vocab_size=11, embed_dim=5, hidden_sizes=(8,), tie_embeddings=True)
