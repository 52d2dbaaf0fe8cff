import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import assert_one_line_error, run_cli

from charlm import bench, steps
from charlm import model as model_lib
from charlm.errors import CharLMError


def _positive(x) -> bool:
    return x is not None and math.isfinite(x) and x > 0


def test_bench_gives_positive_finite_figures(tiny_config):
    tiny_config.data.path = 'builtin:shakespeare'  # random tokens: no corpus is read
    result = bench.run(tiny_config, steps=2, repeats=1, warmup_steps=1, sample=True,
                       sample_streams=(2,), sample_length=8)
    ours = result['charlm']
    assert ours['data'] == 'random tokens, vocab 65' and ours['vocab_size'] == 65
    assert ours['device'].startswith('4 x ')  # the pmapped step on conftest's 4 devices
    for key in ('first_step_s', 'train_chars_per_s', 'step_ms', 'startup_s', 'import_s',
                'init_s', 'peak_rss_mib', 'final_train_loss'):
        assert _positive(ours[key]), (key, ours[key])
    assert ours['compile_s'] >= 0
    assert ours['startup_s'] >= ours['first_step_s']
    assert set(ours['sample_chars_per_s']) == {'2'}
    assert all(_positive(v) for v in ours['sample_chars_per_s'].values())
    assert result['torch'] is None
    json.dumps(result)  # what --json writes
    text = bench.table(result)
    assert 'train chars/s (median)' in text and 'sample chars/s, 2 streams' in text


def test_random_tokens_unless_a_corpus_file_is_named(tiny_config):
    tokens, vocab, source = bench._tokens(tiny_config, 65, None)  # conftest names a file
    assert vocab == 35 and source.startswith('corpus ') and np.asarray(tokens).max() < 35
    tiny_config.data.path = 'builtin:shakespeare'
    tokens, vocab, source = bench._tokens(tiny_config, 65, None)
    assert vocab == 65 and source == 'random tokens, vocab 65' and tokens.max() < 65


def test_bad_counts_are_command(tiny_config):
    with pytest.raises(CharLMError, match='repeats >= 1'):
        bench.run(tiny_config, steps=1, repeats=0)


def test_bad_sample_settings_fail_before_timing(tiny_config, monkeypatch):
    monkeypatch.setattr(steps, 'make_model', None)  # were anything timed, this would fail
    for kw in (dict(sample_streams=(1, 0)), dict(sample_length=0)):
        with pytest.raises(CharLMError, match='need sample_length >= 1 and sample_streams >= 1'):
            bench.run(tiny_config, sample=True, **kw)


def test_unwritable_json_fails_before_the_benchmark(tmp_path):
    proc = run_cli('charlm.bench', '--config=configs/tiny.py', f'--json={tmp_path}/nope/b.json')
    assert_one_line_error(proc, f'cannot write --json={tmp_path}/nope/b.json: no directory')
    assert proc.stdout == '' and list(tmp_path.iterdir()) == []  # nothing was timed


def test_torch_baseline_and_ratio(tiny_config):
    pytest.importorskip('torch')
    theirs = bench.bench_torch(tiny_config, 65, steps=2, repeats=1, warmup_steps=1,
                               sample=True, sample_streams=(2,), sample_length=4, threads=1)
    for key in ('first_step_s', 'train_chars_per_s', 'startup_s', 'peak_rss_mib'):
        assert _positive(theirs[key]), (key, theirs[key])
    assert _positive(theirs['sample_chars_per_s']['2'])
    # The same model: torch's LSTM only adds a second bias vector (4H) per layer.
    model = steps.make_model(tiny_config, 65)
    shapes = jax.eval_shape(model.init, jax.random.key(0), model.init_carry(1),
                            jnp.zeros((1, 1), jnp.int32))
    assert theirs['params'] - model_lib.count_params(shapes['params']) == 2 * 4 * 16
    ours = dict(theirs, params=theirs['params'] - 128, data='random tokens, vocab 65',
                vocab_size=65, train_chars_per_s=2 * theirs['train_chars_per_s'])
    assert bench.ratios(ours, theirs)['train_chars_per_s'] == pytest.approx(2.0)
    result = {'date': 'today', 'host': 'here', 'batch_size': 8, 'seq_len': 16, 'steps': 2,
              'repeats': 1, 'warmup_steps': 1, 'charlm': ours, 'torch': theirs,
              'ratio': bench.ratios(ours, theirs),
              'model': {'cell': 'lstm', 'embed_dim': 8, 'hidden_sizes': [16, 16],
                        'dropout_rate': 0.0, 'unroll': 1, 'dtype': 'float32', 'vocab_size': 65}}
    assert '2.00x' in bench.table(result)
