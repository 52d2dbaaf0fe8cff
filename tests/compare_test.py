"""charlm.compare: RNN and GRU train on the same data and budget; table and curves.

This is also the test that GRU and RNN models train on the tiny config.
"""

import json
import math
import os
import pathlib
import signal

import pytest
from conftest import run_cli

from charlm import checkpointing, compare, evaluate, metric_writer, steps, train
from charlm.errors import CharLMError, Stopped

ROOT = pathlib.Path(__file__).resolve().parent.parent


def test_rnn_and_gru_train_and_are_compared(tiny_config, tmp_path):
    tiny_config.sample.prompts = ()
    tiny_config.learning_rate = 1e-2
    tiny_config.model.num_layers = 1  # a smaller program compiles faster
    tiny_config.num_train_steps = 6
    tiny_config.eval_every_steps = 3
    out = tmp_path / 'cmp'
    rows = compare.compare(tiny_config, ['rnn', 'gru'], str(out))
    assert [r['cell'] for r in rows] == ['rnn', 'gru']
    for r in rows:
        assert r['parameters'] > 0 and r['wall_seconds'] > 0 and not r['resumed']
        for key in ('train_loss', 'val_loss', 'val_bits_per_char', 'chars_per_second'):
            assert math.isfinite(r[key]) and r[key] > 0, (r['cell'], key)
        val = metric_writer.read_scalars(str(out / r['cell']))['val/loss']
        assert [s for s, _ in val] == [3, 6]
        assert val[-1][1] < val[0][1], r['cell']  # it learns
        best_val, best_step = min((v, s) for s, v in val)
        assert r['best_step'] == best_step
        assert r['best_val_loss'] == pytest.approx(best_val, rel=1e-6)
        assert r['last_step'] == 6
    # Same sizes: the GRU has three weight sets for the simple RNN's one.
    assert rows[1]['parameters'] > rows[0]['parameters']
    table = (out / 'compare.md').read_text()
    assert '| rnn |' in table and '| gru |' in table and 'chars/s' in table
    assert f'| {rows[1]["best_val_loss"]:.4f} (6) |' in table  # best val and its step
    assert json.loads((out / 'compare.json').read_text()) == json.loads(json.dumps(rows))
    png = (out / 'curves.png').read_bytes()
    assert png[:4] == b'\x89PNG' and len(png) > 20_000
    # Each cell's directory is a normal workdir: evaluate reproduces its logged val loss.
    scored = evaluate.evaluate(str(out / 'gru'), step=6)
    assert scored['loss'] == pytest.approx(rows[1]['val_loss'], rel=1e-6)
    assert scored['bits_per_char'] == pytest.approx(rows[1]['val_bits_per_char'], rel=1e-6)


def test_steps_sets_the_budget_and_at_least_ten_evaluations(tiny_config):
    c = compare.variant_config(tiny_config, {'model.cell': 'gru'}, steps=50)
    assert (c.model.cell, c.num_train_steps, c.eval_every_steps) == ('gru', 50, 5)
    c = compare.variant_config(tiny_config, {'model.cell': 'rnn'}, steps=5000)
    assert (c.num_train_steps, c.eval_every_steps) == (5000, 10)  # the config's, if denser
    assert tiny_config.model.cell == 'lstm'  # the base config is left alone


def test_variants_parse_and_override_any_field(tiny_config):
    name, o = compare.parse_variant('deep:model.hidden_sizes=(16,16,8),model.num_layers=3,'
                                    'model.variational_dropout=True,learning_rate=0.01')
    assert name == 'deep' and o == {'model.hidden_sizes': (16, 16, 8), 'model.num_layers': 3,
                                    'model.variational_dropout': True, 'learning_rate': 0.01}
    c = compare.variant_config(tiny_config, o, steps=None)
    assert steps.layer_sizes(c) == (16, 16, 8) and c.learning_rate == 0.01
    assert compare.parse_variant('standard:') == ('standard', {})
    with pytest.raises(CharLMError, match='unknown config key model.hiden_size'):
        compare.variant_config(tiny_config, {'model.hiden_size': 3}, None)
    with pytest.raises(CharLMError, match='NAME:KEY=VALUE'):
        compare.parse_variant('model.cell=gru')


def test_two_sizes_train_as_variants_and_are_scored_as_evaluate_scores(tiny_config, tmp_path,
                                                                      monkeypatch):
    tiny_config.sample.prompts = ()
    tiny_config.num_train_steps, tiny_config.eval_every_steps = 4, 2
    dynamic = dict(lr=1e-3, decay=0.01, rule='rms', streams=1)
    rows = compare.compare(tiny_config, {'narrow': {'model.hidden_size': 8},
                                         'wide': {'model.hidden_size': 24}}, str(tmp_path),
                           window=24, dynamic=dynamic)
    assert [(r['variant'], r['hidden_sizes']) for r in rows] == [('narrow', [8, 8]),
                                                                 ('wide', [24, 24])]
    assert rows[1]['parameters'] > rows[0]['parameters']
    table = (tmp_path / 'compare.md').read_text()
    assert '| narrow | lstm | 8x8 |' in table
    assert '| val window 24 | val stateful | val dynamic (lr, decay) |' in table
    # The columns are charlm.evaluate's figures for the best checkpoint.
    wide = str(tmp_path / 'wide')
    r = rows[1]
    assert r['val_window_loss'] == evaluate.evaluate(wide, window=24)['loss']
    adapted = evaluate.evaluate(wide, dynamic=dynamic)['dynamic']['loss']
    static = evaluate.evaluate(wide, dynamic=dynamic | {'lr': 0.0})['dynamic']['loss']
    assert (r['val_stateful_loss'], r['val_dynamic_loss'], r['dynamic_lr']) == (
        static, adapted, 1e-3)
    assert adapted != static
    assert f'| {static:.4f} | {adapted:.4f} (0.001, 0.01) |' in table
    # Run again (as to finish a later variant): the finished ones are neither trained nor
    # scored again.
    monkeypatch.setattr(compare.evaluate, 'evaluate', None)
    again = compare.compare(tiny_config, {'narrow': {'model.hidden_size': 8},
                                          'wide': {'model.hidden_size': 24}}, str(tmp_path),
                            window=24, dynamic=dynamic)
    keep = ('val_window_loss', 'val_stateful_loss', 'val_dynamic_loss', 'best_val_loss')
    assert [[r[k] for k in keep] for r in again] == [[r[k] for k in keep] for r in rows]
    assert all(r['resumed'] for r in again)


def test_a_signal_ends_the_comparison_and_the_same_call_resumes(tiny_config, tmp_path,
                                                               monkeypatch):
    """A SIGTERM (preemption) or Ctrl-C in the first variant saves its checkpoint and ends
    the whole comparison: the next variant does not start training in its place."""
    tiny_config.sample.prompts = ()
    tiny_config.num_train_steps, tiny_config.eval_every_steps = 4, 2
    variants = {'narrow': {'model.hidden_size': 8}, 'wide': {'model.hidden_size': 24}}
    real_batch = train.data.train_batch

    def preempted_at_step_3(tokens, seq_len, step, seed, layout):
        if step == 2:  # arrives while step 3 trains
            os.kill(os.getpid(), signal.SIGTERM)
        return real_batch(tokens, seq_len, step, seed, layout)

    monkeypatch.setattr(train.data, 'train_batch', preempted_at_step_3)
    with pytest.raises(Stopped, match='stopped by SIGTERM at step 3') as stopped:
        compare.compare(tiny_config, variants, str(tmp_path))
    assert stopped.value.result['step'] == 3
    assert checkpointing.Checkpoints(str(tmp_path / 'narrow'), create=False).latest_step() == 3
    assert not (tmp_path / 'wide').exists() and not (tmp_path / 'compare.md').exists()
    monkeypatch.setattr(train.data, 'train_batch', real_batch)
    rows = compare.compare(tiny_config, variants, str(tmp_path))
    assert [(r['variant'], r['last_step'], r['resumed']) for r in rows] == [
        ('narrow', 4, True), ('wide', 4, False)]
    assert 'variants done' not in (tmp_path / 'compare.md').read_text()


def test_the_table_is_written_after_each_variant(tiny_config, tmp_path, monkeypatch):
    """A long comparison stopped in its second variant has the first one's row on disk."""
    tiny_config.sample.prompts = ()
    tiny_config.num_train_steps, tiny_config.eval_every_steps = 2, 2
    real = compare.run_variant

    def second_stops(config, name, workdir):
        if name == 'wide':
            raise Stopped('stopped by SIGTERM at step 1', {'step': 1})
        return real(config, name, workdir)

    monkeypatch.setattr(compare, 'run_variant', second_stops)
    with pytest.raises(Stopped):
        compare.compare(tiny_config, {'narrow': {'model.hidden_size': 8},
                                      'wide': {'model.hidden_size': 24}}, str(tmp_path))
    table = (tmp_path / 'compare.md').read_text()
    assert '| narrow | lstm | 8x8 |' in table and '| wide |' not in table
    assert '1 of 2 variants done; still to train: wide (run the same command' in table
    assert [r['variant'] for r in json.loads((tmp_path / 'compare.json').read_text())] == [
        'narrow']


def test_bad_cells_in_process(tiny_config, tmp_path):
    with pytest.raises(CharLMError, match='--dynamic_tune_file=nowhere.txt: no such file'):
        compare.compare(tiny_config, ['lstm'], str(tmp_path / 'x'), dynamic={'lr': 1e-3},
                        tune_file='nowhere.txt', tune_lrs=(1e-3,))
    with pytest.raises(CharLMError, match='--window must be a positive'):
        compare.compare(tiny_config, ['lstm'], str(tmp_path / 'x'), window=0)
    with pytest.raises(CharLMError, match='names seed 0 twice'):
        compare.compare(tiny_config, ['lstm'], str(tmp_path / 'x'), seed_list=(0, 1, 0))
    assert not (tmp_path / 'x').exists()
    with pytest.raises(CharLMError, match="unknown cell 'transformer' in --cells"):
        compare.compare(tiny_config, ['lstm', 'transformer'], str(tmp_path))
    with pytest.raises(CharLMError, match='names a cell twice'):
        compare.compare(tiny_config, ['gru', 'gru'], str(tmp_path))


def run(*args):
    return run_cli(*args, timeout=120)


@pytest.mark.parametrize('args,match', [
    (['--cells=rnn,bidirectional'], "unknown cell 'bidirectional'"),
    (['--config.data.path=/no/such/file.txt'], 'corpus file not found: /no/such/file.txt'),
    (['--seeds=0,-1'], '--seeds: seed -1 is negative'),
    (['--seeds=0,1', '--variant=a:seed=3'], '--variant a sets seed, and --seeds trains'),
])
def test_bad_input_is_one_line(tmp_path, args, match):
    proc = run('charlm.compare', '--config=configs/tiny.py', '--steps=2', f'--out={tmp_path}',
               *args)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert 'Traceback' not in proc.stderr
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith('charlm: error:')]
    assert len(errors) == 1 and match in errors[0], proc.stderr[-2000:]



def test_seeds_train_each_variant_per_seed_and_table_mean_and_std(tiny_config, tmp_path,
                                                                  monkeypatch):
    """seed_list=(0, 1): OUT/NAME/seed-S workdirs, mean ± std in compare.md, each seed's row in
    compare.json; run again, it trains and scores nothing."""
    tiny_config.sample.prompts = ()
    narrow = {'narrow': {'model.hidden_size': 8}}  # the programs the tests above compiled
    out = tmp_path / 'cmp'
    [row] = compare.compare(tiny_config, narrow, str(out), steps=2, seed_list=(0, 1))
    for seed in (0, 1):
        saved = checkpointing.Checkpoints(str(out / 'narrow' / f'seed-{seed}'), create=False)
        assert saved.latest_step() == 2
    assert not (out / 'narrow' / 'checkpoints').exists()
    assert json.loads((out / 'compare.json').read_text()) == [json.loads(json.dumps(row))]
    assert row['seeds'] == [0, 1] and [r['seed'] for r in row['runs']] == [0, 1]
    losses = [r['val_loss'] for r in row['runs']]
    assert losses[0] != losses[1]  # the seed reached init and data
    assert row['val_loss'] == pytest.approx(sum(losses) / 2)
    assert row['std']['val_loss'] == pytest.approx(abs(losses[0] - losses[1]) / math.sqrt(2))
    table = (out / 'compare.md').read_text()
    assert f'| narrow | lstm | 8x8 | {row["parameters"]:,} | 0,1 | 2 |' in table
    assert f'| {row["val_loss"]:.4f} ± {row["std"]["val_loss"]:.4f} |' in table
    assert 'seeds 0, 1,' in table and '(ddof=1)' in table
    assert (out / 'curves.png').read_bytes()[:4] == b'\x89PNG'

    def no_training(*args, **kwargs):
        raise AssertionError('a finished run trained again')

    monkeypatch.setattr(train.data, 'train_batch', no_training)
    [again] = compare.compare(tiny_config, narrow, str(out), steps=2, seed_list=(0, 1))
    assert [r['resumed'] for r in again['runs']] == [True, True]
    assert [r['val_loss'] for r in again['runs']] == losses
    # Seeded and unseeded runs do not mix in one OUT/NAME.
    with pytest.raises(CharLMError, match='holds runs trained with --seeds'):
        compare.compare(tiny_config, narrow, str(out), steps=2)
