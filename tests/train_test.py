import functools
import os
import pathlib
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import jax_utils

from charlm import checkpointing, data, metric_writer, steps, train, workdir
from charlm.errors import CharLMError


def _setup(config, seed=0):
    corpus = data.load_corpus(config)
    model = steps.make_model(config, corpus.tokenizer.vocab_size)
    state = steps.create_state(model, steps.make_optimizer(config), jax.random.key(seed))
    return corpus, model, state


def _global_batch(corpus, config, step=0):
    layout = data.Layout(config.batch_size, 1, 1)
    b = data.train_batch(corpus.tokens['train'], config.data.seq_len, step, config.seed, layout)
    return {k: v[0] for k, v in b.items()}  # [N, T]


def test_pmapped_step_on_four_devices(tiny_config):
    assert jax.local_device_count() == 4
    corpus, model, state = _setup(tiny_config)
    pst = steps.parallel_steps(model)
    before = jax.device_get(state.params)
    layout = data.Layout(tiny_config.batch_size, 4, 4)
    batch = data.train_batch(corpus.tokens['train'], tiny_config.data.seq_len, 0, 0, layout)
    new, metrics = pst.train(jax_utils.replicate(state), batch, jax.random.key(1))
    loss = float(metrics['nll_sum'][0] / metrics['count'][0])
    assert np.isfinite(loss) and metrics['count'][0] == tiny_config.batch_size * 16
    for leaf in jax.tree.leaves(new.params):  # replicas identical after the pmean
        np.testing.assert_array_equal(leaf[0], leaf[3])
    changed = jax.tree.map(lambda a, b: not np.allclose(a, b[0]), before, new.params)
    assert all(jax.tree.leaves(changed))


def test_four_devices_equal_one_with_the_same_global_batch(tiny_config):
    tiny_config.learning_rate = 0.05  # a large step makes any mismatch visible
    corpus, model, state = _setup(tiny_config)
    batch = _global_batch(corpus, tiny_config)
    one = jax.jit(functools.partial(steps.train_step, model=model, axis_name=None))
    s1, m1 = one(state, batch, jax.random.key(1))
    s1, m1 = one(s1, _global_batch(corpus, tiny_config, 1), jax.random.key(1))
    pst = steps.parallel_steps(model)
    layout = data.Layout(tiny_config.batch_size, 4, 4)
    s4 = jax_utils.replicate(state)
    for step in range(2):
        b = data.train_batch(corpus.tokens['train'], 16, step, 0, layout)
        s4, m4 = pst.train(s4, b, jax.random.key(1))
    np.testing.assert_allclose(m1['nll_sum'], m4['nll_sum'][0], rtol=1e-5)
    np.testing.assert_allclose(m1['grad_norm'], m4['grad_norm'][0], rtol=1e-4)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b[0], rtol=1e-4, atol=1e-6),
                 s1.params, s4.params)


def test_golden_loss_after_one_step(tiny_config):
    """Update these numbers only for an intended change, and say so in the commit."""
    corpus, model, state = _setup(tiny_config)
    assert corpus.tokenizer.vocab_size == 35
    batch = _global_batch(corpus, tiny_config)
    step = jax.jit(functools.partial(steps.train_step, model=model, axis_name=None))
    state, metrics = step(state, batch, jax.random.key(1))
    first = float(metrics['nll_sum'] / metrics['count'])
    _, metrics = step(state, batch, jax.random.key(1))
    second = float(metrics['nll_sum'] / metrics['count'])
    assert (round(first, 4), round(second, 4)) == pytest.approx(GOLDEN, abs=2e-4)


GOLDEN = (3.5466, 3.5422)


def test_eval_is_exact_and_device_count_independent(tiny_config):
    corpus, model, state = _setup(tiny_config)
    val = corpus.tokens['val']
    e4 = steps.evaluate(steps.parallel_steps(model).eval, jax_utils.replicate(state.params),
                        val, 16, data.Layout(8, 4, 4))
    # Reference: the whole validation split, window by window, on one device.
    eval_one = jax.jit(functools.partial(steps.eval_step, model=model))
    nll = count = 0.0
    for b in data.eval_batches(val, 16, data.Layout(3, 1, 1)):
        out, _ = eval_one(state.params, {k: v[0] for k, v in b.items()})
        nll += float(out['nll_sum'])
        count += float(out['count'])
    assert count == len(val) - 1 == e4['tokens']
    assert e4['loss'] == pytest.approx(nll / count, rel=1e-5)
    assert e4['bits_per_char'] == pytest.approx(e4['loss'] / np.log(2), rel=1e-6)


def test_train_and_evaluate_writes_checkpoints_and_events(tiny_config, tmp_path):
    workdir = tmp_path / 'run'
    out = train.train_and_evaluate(tiny_config, str(workdir))
    assert out['step'] == 20 and np.isfinite(out['val_loss'])
    assert (workdir / 'checkpoints' / '20').is_dir()
    assert (workdir / 'best' / str(out['best_step'])).is_dir()
    scalars = metric_writer.read_scalars(str(workdir))
    assert [s for s, _ in scalars['train/loss']] == [5, 10, 15, 20]
    assert [s for s, _ in scalars['val/loss']] == [10, 20]
    assert scalars['val/loss'][-1][1] == pytest.approx(out['val_loss'], rel=1e-6)
    for tag in ('val/bits_per_char', 'val/perplexity', 'train/learning_rate',
                'train/grad_norm', 'train/chars_per_second'):
        assert tag in scalars
    saved = checkpointing.Checkpoints(str(workdir)).read_json()
    assert saved['tokenizer']['kind'] == 'char' and saved['config']['model']['hidden_size'] == 16


def _final_params(workdir):
    ckpts = checkpointing.Checkpoints(str(workdir), create=False)
    step = ckpts.latest_step()
    return step, ckpts.restore_state_raw(step)


def test_a_second_run_in_one_process_compiles_nothing_new(tiny_config, tmp_path, caplog):
    """Each run used to compile two more train programs and keep them (its optimizer and
    apply_fn made its state a new pytree): about 750 memory maps a run, until a process
    that trained about 80 times hit the kernel's limit (LLVM out of memory, a segfault)."""
    copy = tiny_config.copy_and_resolve_references()
    assert steps.make_optimizer(tiny_config) is steps.make_optimizer(copy)
    train.train_and_evaluate(tiny_config, str(tmp_path / 'first'))
    maps = pathlib.Path('/proc/self/maps')
    before = len(maps.read_text().splitlines()) if maps.exists() else 0
    caplog.set_level('WARNING', logger='jax._src.interpreters.pxla')
    with jax.log_compiles():
        train.train_and_evaluate(tiny_config, str(tmp_path / 'second'))
    compiled = [r.getMessage() for r in caplog.records if r.getMessage().startswith('Compiling')]
    assert not compiled, compiled
    if maps.exists():
        assert len(maps.read_text().splitlines()) - before < 100


def test_stop_and_resume_equals_uninterrupted(tiny_config, tmp_path):
    tiny_config.model.dropout_rate = 0.2  # the dropout streams must resume too, and so
    tiny_config.model.variational_dropout = True  # must the regularisers' masks
    tiny_config.model.weight_drop = 0.3
    tiny_config.model.embed_dropout = 0.1
    train.train_and_evaluate(tiny_config, str(tmp_path / 'straight'))
    out = train.train_and_evaluate(tiny_config, str(tmp_path / 'pieces'), stop_at=7)
    assert out['step'] == 7 and 'stop_at' in out['stop_reason']
    out = train.train_and_evaluate(tiny_config, str(tmp_path / 'pieces'))
    assert out['step'] == 20
    a, b = _final_params(tmp_path / 'straight'), _final_params(tmp_path / 'pieces')
    assert a[0] == b[0] == 20
    jax.tree.map(np.testing.assert_array_equal, a[1], b[1])


def test_early_stopping(tiny_config, tmp_path):
    tiny_config.learning_rate = 0.0  # never improves after the first eval
    tiny_config.end_lr_fraction = 0.0
    tiny_config.eval_every_steps = 2
    tiny_config.early_stopping_patience = 2
    out = train.train_and_evaluate(tiny_config, str(tmp_path / 'run'))
    assert out['step'] == 6 and 'early stopping' in out['stop_reason']
    assert out['best_step'] == 2
    # The same command again (a re-queued job, a rerun comparison) stays stopped...
    again = train.train_and_evaluate(tiny_config, str(tmp_path / 'run'))
    assert again['step'] == 6
    assert 'already stopped at step 6 by early stopping' in again['stop_reason']
    assert checkpointing.Checkpoints(str(tmp_path / 'run'), create=False).latest_step() == 6
    # ...and a larger patience trains on, to the next eval without improvement.
    tiny_config.early_stopping_patience = 3
    more = train.train_and_evaluate(tiny_config, str(tmp_path / 'run'))
    assert more['step'] == 8 and more['best_step'] == 2


def test_divergence_is_a_clear_error(tiny_config, tmp_path):
    tiny_config.learning_rate = 1e38  # parameters overflow to inf, the loss to nan
    tiny_config.grad_clip_norm = 1e30
    with pytest.raises(CharLMError, match='training diverged'):
        train.train_and_evaluate(tiny_config, str(tmp_path / 'run'))


def _snapshot(workdir: pathlib.Path) -> dict:
    # The lock file is the hold a run takes (and clears) before it checks anything.
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for p in workdir.rglob('*')
            if p.is_file() and 'tfevents' not in p.name and p.name != 'lock'}


@pytest.fixture
def trained_workdir(tiny_config, tmp_path):
    workdir = tmp_path / 'trained'
    tiny_config.num_train_steps = 10
    train.train_and_evaluate(tiny_config, str(workdir))
    return workdir


@pytest.mark.parametrize('change,match', [
    (lambda c, p: setattr(c.model, 'hidden_size', 32), 'different model'),
    (lambda c, p: setattr(c.model, 'cell', 'gru'), 'different model'),
    (lambda c, p: setattr(c.data, 'path', p), 'different vocabulary'),
    (lambda c, p: setattr(c, 'optimizer', 'adamw'), 'optimizer: adam in checkpoint, adamw'),
])
def test_mismatched_workdir_is_refused_and_untouched(tiny_config, trained_workdir, tmp_path,
                                                     change, match):
    other = tmp_path / 'other.txt'
    other.write_text('completely different letters: xyzzy QWERTY 12345\n' * 50)
    before = _snapshot(trained_workdir)
    change(tiny_config, str(other))
    with pytest.raises(CharLMError, match=match):
        train.train_and_evaluate(tiny_config, str(trained_workdir))
    assert _snapshot(trained_workdir) == before


def test_indivisible_batch(tiny_config, tmp_path):
    tiny_config.batch_size = 6
    with pytest.raises(CharLMError, match='not divisible by the 4 devices'):
        train.train_and_evaluate(tiny_config, str(tmp_path / 'run'))


def test_corpus_too_short_for_a_validation_window(tiny_config, tmp_path):
    short = tmp_path / 'short.txt'
    short.write_text('To be, or not to be, that is the question.\n' * 3)
    tiny_config.data.path = str(short)
    with pytest.raises(CharLMError, match='val split has 12 characters'):
        train.train_and_evaluate(tiny_config, str(tmp_path / 'run'))
    assert not (tmp_path / 'run' / 'checkpoints').exists()


def test_unwritable_workdir(tiny_config, tmp_path):
    blocker = tmp_path / 'file'
    blocker.write_text('x')
    with pytest.raises(CharLMError, match='not writable'):
        train.train_and_evaluate(tiny_config, str(blocker / 'run'))
    if os.geteuid() != 0:  # root writes anywhere; the check above still holds
        locked = tmp_path / 'locked'
        locked.mkdir(mode=0o500)
        with pytest.raises(CharLMError, match='not writable'):
            workdir.check_workdir(str(locked))


def test_cudnn_impl_needs_cuda_except_to_read_a_checkpoint(tiny_config):
    tiny_config.model.impl = 'cudnn'
    with pytest.raises(CharLMError, match="needs a CUDA GPU.*runs on cpu"):
        steps.make_model(tiny_config, 20)
    # Sampling and evaluation run a cuDNN-trained checkpoint as 'hoisted': same parameters.
    assert steps.make_model(tiny_config, 20, portable=True).impl == 'hoisted'


@pytest.mark.parametrize('field,value', [
    ('max_to_keep', 0), ('eval_every_steps', 0), ('batch_size', -8), ('data.seq_len', 0),
    ('learning_rate', -1.0), ('model.dropout_rate', 1.0), ('sample.top_k', -1),
    ('optimizer', 'sgd'), ('weight_decay', 0.1)])
def test_bad_settings_are_refused_before_training(tiny_config, trained_workdir, tmp_path,
                                                  field, value):
    """Checked at start-up, before a step: max_to_keep=0 would delete every checkpoint, and
    a bad sample setting used to fail only at the first evaluation, before its save."""
    workdir = tmp_path / 'run'
    shutil.copytree(trained_workdir, workdir)
    before = sorted(p.relative_to(workdir) for p in workdir.rglob('*'))
    section, _, key = field.rpartition('.')
    (tiny_config[section] if section else tiny_config)[key] = value
    with pytest.raises(CharLMError, match=key):
        train.train_and_evaluate(tiny_config, str(workdir))
    assert sorted(p.relative_to(workdir) for p in workdir.rglob('*')) == before


@pytest.mark.parametrize('field,value,match', [
    ('cell', 'lstmm', "unknown model.cell 'lstmm': use one of lstm, gru, rnn, mingru, minlstm, "
              'lnlstm, mogrifier'),
    ('mogrifier_rounds', -1, 'mogrifier_rounds must be >= 0'),
    ('mogrifier_rank', -2, 'mogrifier_rank must be >= 0 .0: full rank., got -2'),
    ('impl', 'cudnn', 'needs a CUDA GPU')])
def test_bad_model_settings_fail_before_the_corpus_is_read(tiny_config, field, value, match):
    tiny_config.model[field] = value
    tiny_config.data.path = '/nonexistent/corpus.txt'  # reading it would be another error
    with pytest.raises(CharLMError, match=match):
        train.check_config(tiny_config)


def test_state_is_float32(tiny_config):
    _, _, state = _setup(tiny_config)
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(state.params))


@pytest.mark.parametrize('stop_at', [7, 17])  # 17: inside the last log window (16-20)
def test_stateful_training_carries_state_and_resumes_exactly(tiny_config, tmp_path, stop_at):
    tiny_config.data.stateful = True
    tiny_config.model.dropout_rate = 0.1
    straight = train.train_and_evaluate(tiny_config, str(tmp_path / 'straight'))
    first = train.train_and_evaluate(tiny_config, str(tmp_path / 'pieces'), stop_at=stop_at)
    pieces = train.train_and_evaluate(tiny_config, str(tmp_path / 'pieces'))
    # Each ran as asked: a SIGTERM to the test process (a `timeout` around the suite) once
    # stopped the resumed run at step 11 and this test saw only its loss, 3.5323.
    assert (first['step'], pieces['step'], straight['step']) == (stop_at, 20, 20)
    assert straight['stop_reason'] is None and pieces['stop_reason'] is None
    assert pieces['train_loss'] == straight['train_loss']
    assert pieces['val_loss'] == straight['val_loss']
    # Every scheduled log of the resumed run equals the uninterrupted run's; the stopped
    # run's own log at its stop step (a partial window) is the one extra point.
    logged = {k: dict(v) for k, v in metric_writer.read_scalars(str(tmp_path / 'pieces')).items()}
    for tag in ('train/loss', 'val/loss'):
        want = dict(metric_writer.read_scalars(str(tmp_path / 'straight'))[tag])
        assert {s: logged[tag][s] for s in want} == want, tag
        assert set(logged[tag]) - set(want) <= {stop_at}
    _, saved = _final_params(tmp_path / 'straight')
    carry = saved['carry']  # the global carry: one row per stream
    assert np.asarray(jax.tree.leaves(carry)[0]).shape == (tiny_config.batch_size, 16)
    assert np.abs(np.asarray(jax.tree.leaves(carry)[0])).sum() > 0
    jax.tree.map(np.testing.assert_array_equal, saved, _final_params(tmp_path / 'pieces')[1])


def test_stateful_step_uses_and_stops_gradient_through_the_carry(tiny_config):
    tiny_config.data.stateful = True
    corpus, model, _ = _setup(tiny_config)
    state = steps.create_state(model, steps.make_optimizer(tiny_config), jax.random.key(0),
                               carry_batch=tiny_config.batch_size)
    layout = data.Layout(tiny_config.batch_size, 1, 1)
    step = jax.jit(functools.partial(steps.train_step, model=model, axis_name=None))
    tokens = corpus.tokens['train']
    b0 = {k: v[0] for k, v in data.stateful_train_batch(tokens, 16, 0, layout).items()}
    b1 = {k: v[0] for k, v in data.stateful_train_batch(tokens, 16, 1, layout).items()}
    s1, _ = step(state, b0, jax.random.key(1))
    _, with_state = step(s1, b1, jax.random.key(1))
    _, from_zero = step(s1.replace(carry=state.carry), b1, jax.random.key(1))
    assert float(with_state['nll_sum']) != float(from_zero['nll_sum'])
    # A reset row ignores the carried state.
    _, reset = step(s1, dict(b1, reset=np.ones_like(b1['reset'])), jax.random.key(1))
    assert float(reset['nll_sum']) == pytest.approx(float(from_zero['nll_sum']), rel=1e-6)


def test_stateful_workdir_refuses_a_stateless_config(tiny_config, tmp_path):
    tiny_config.data.stateful = True
    tiny_config.num_train_steps = 5
    train.train_and_evaluate(tiny_config, str(tmp_path / 'run'))
    tiny_config.data.stateful = False
    with pytest.raises(CharLMError, match='data.stateful'):
        train.train_and_evaluate(tiny_config, str(tmp_path / 'run'))


def test_schedule_warmup_cosine_and_host_copy(tiny_config):
    import optax
    tiny_config.num_train_steps, tiny_config.warmup_steps = 100, 10
    tiny_config.learning_rate, tiny_config.end_lr_fraction = 1e-2, 0.1
    sched, host = steps.make_schedule(tiny_config), steps.make_schedule(tiny_config, np)
    ref = optax.warmup_cosine_decay_schedule(0.0, 1e-2, 10, 100, 1e-3)
    for step in (0, 5, 9, 10, 50, 98, 99):
        assert float(sched(step)) == pytest.approx(float(ref(step + 1)), rel=1e-5)
        assert float(host(step)) == pytest.approx(float(sched(step)), rel=1e-5)
    assert float(sched(0)) > 0 and float(sched(99)) == pytest.approx(1e-3)


def test_adamw_decays_every_parameter_by_the_scheduled_rate(tiny_config):
    """AdamW's step is Adam's plus -lr_t * weight_decay * params (decoupled, on the same
    schedule), and the settings around it are one-line errors."""
    tiny_config.learning_rate, tiny_config.warmup_steps = 1e-2, 4
    corpus, model, adam_state = _setup(tiny_config)
    adamw_config = tiny_config.copy_and_resolve_references()
    adamw_config.optimizer, adamw_config.weight_decay = 'adamw', 0.5
    adamw = steps.make_optimizer(adamw_config)
    adam = steps.make_optimizer(tiny_config)
    params = adam_state.params
    grads = jax.tree.map(lambda p: jnp.full_like(p, 1e-3) + 0.01 * p, params)
    s_adam, s_adamw = adam.init(params), adamw.init(params)
    for step in range(3):
        u_adam, s_adam = adam.update(grads, s_adam, params)
        u_adamw, s_adamw = adamw.update(grads, s_adamw, params)
        lr = float(steps.make_schedule(tiny_config)(step))
        jax.tree.map(lambda a, w, p, lr=lr: np.testing.assert_allclose(
            w - a, -lr * 0.5 * p, rtol=1e-4, atol=1e-9), u_adam, u_adamw, params)
    # weight_decay_on='kernels': the weight matrices decay, biases and the embedding do not
    adamw_config.weight_decay_on = 'kernels'
    masked = steps.make_optimizer(adamw_config)
    u_masked, _ = masked.update(grads, masked.init(params), params)
    u_adam, _ = adam.update(grads, adam.init(params), params)
    lr = float(steps.make_schedule(tiny_config)(0))
    flags = steps.decayed(params)
    assert flags['lstm_0']['hi']['kernel'] and not flags['lstm_0']['hi']['bias']
    assert not flags['embed']['embedding'] and flags['head']['kernel']
    jax.tree.map(lambda a, w, p, on: np.testing.assert_allclose(
        w - a, -lr * 0.5 * p * on, rtol=1e-4, atol=1e-9), u_adam, u_masked, params, flags)
    for field, value, match in [('weight_decay', -1.0, 'weight_decay must be >= 0'),
                                ('optimizer', 'sgd', "unknown optimizer 'sgd'"),
                                ('weight_decay_on', 'biases', "unknown weight_decay_on")]:
        bad = adamw_config.copy_and_resolve_references()
        bad[field] = value
        with pytest.raises(CharLMError, match=match):
            train.check_config(bad)
    tiny_config.weight_decay = 0.1
    with pytest.raises(CharLMError, match='needs --config.optimizer=adamw'):
        train.check_config(tiny_config)


def test_adam_b2_sets_the_second_moment_decay(tiny_config):
    """`adam_b2` reaches Adam's second moment (nu = b2 nu + (1 - b2) g^2), and a value
    outside [0, 1) is a one-line error."""
    corpus, model, state = _setup(tiny_config)
    grads = jax.tree.map(lambda p: jnp.full_like(p, 1e-2), state.params)
    for b2 in (0.999, 0.9):
        tiny_config.adam_b2 = b2
        opt = steps.make_optimizer(tiny_config)
        opt_state = opt.init(state.params)
        for _ in range(2):
            _, opt_state = opt.update(grads, opt_state, state.params)
        nu = [s for s in jax.tree.leaves(opt_state, is_leaf=lambda s: hasattr(s, 'nu'))
              if hasattr(s, 'nu')][0].nu
        expected = (1 - b2 ** 2) * 1e-4  # two steps of the same g = 1e-2 from nu = 0
        for n in jax.tree.leaves(nu):
            np.testing.assert_allclose(n, expected, rtol=1e-4)
    tiny_config.adam_b2 = 1.0
    with pytest.raises(CharLMError, match=r'adam_b2 must be in \[0, 1\)'):
        train.check_config(tiny_config)


def test_bits_per_char_counts_predicted_characters(tiny_config):
    corpus, _, _ = _setup(tiny_config)
    assert corpus.chars['val'] == len(corpus.tokens['val']) - 1  # char model: every target


def test_weight_averaging_follows_the_parameters(tiny_config):
    corpus, model, _ = _setup(tiny_config)
    state = steps.create_state(model, steps.make_optimizer(tiny_config), jax.random.key(0),
                               ema_decay=0.9)
    jax.tree.map(np.testing.assert_array_equal, state.ema_params, state.params)
    step = jax.jit(functools.partial(steps.train_step, model=model, axis_name=None))
    want = state.params
    for i in range(100):  # warmed up: the decay is (1 + t) / (10 + t) until that reaches 0.9
        state, _ = step(state, _global_batch(corpus, tiny_config, i % 4), jax.random.key(1))
        d = min(0.9, (2 + i) / (11 + i))
        want = jax.tree.map(lambda e, p, d=d: d * e + (1 - d) * p, want, state.params)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7),
                 state.ema_params, want)
    assert state.eval_params() is state.ema_params
    assert not np.allclose(jax.tree.leaves(state.ema_params)[0],
                           jax.tree.leaves(state.params)[0])


def test_weight_averaging_resumes_exactly_and_is_what_commands_read(tiny_config, tmp_path):
    from charlm import runs
    tiny_config.ema_decay = 0.8
    straight = train.train_and_evaluate(tiny_config, str(tmp_path / 'straight'))
    train.train_and_evaluate(tiny_config, str(tmp_path / 'pieces'), stop_at=7)
    pieces = train.train_and_evaluate(tiny_config, str(tmp_path / 'pieces'))
    assert pieces['val_loss'] == straight['val_loss']
    _, saved = _final_params(tmp_path / 'straight')
    jax.tree.map(np.testing.assert_array_equal, saved, _final_params(tmp_path / 'pieces')[1])
    run = runs.find(str(tmp_path / 'straight'), step=20)
    jax.tree.map(np.testing.assert_array_equal, run.params, saved['ema_params'])
    tiny_config.ema_decay = 0.0  # the average is part of the state: another model
    with pytest.raises(CharLMError, match='ema_decay'):
        train.train_and_evaluate(tiny_config, str(tmp_path / 'straight'))
