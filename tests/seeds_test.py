"""charlm.seeds: the --seeds list, a variant's runs as mean ± sample std, the mean curve."""

import numpy as np
import pytest

from charlm import compare, seeds
from charlm.errors import CharLMError


def run_row(seed, val_loss, lr=1e-3, best_step=6, **extra):
    return {'variant': 'gru', 'cell': 'gru', 'workdir': f'/out/gru/seed-{seed}',
            'hidden_sizes': [16, 16], 'parameters': 1234, 'train_loss': val_loss - 0.1,
            'val_loss': val_loss, 'val_bits_per_char': val_loss / np.log(2),
            'best_val_loss': val_loss - 0.01, 'best_step': best_step, 'last_step': 6,
            'chars_per_second': 1000.0 + seed, 'wall_seconds': 10.0, 'resumed': seed == 1,
            'window': 24, 'val_window_loss': val_loss + 0.05, 'val_stateful_loss': val_loss,
            'val_dynamic_loss': val_loss - 0.2, 'dynamic_lr': lr, 'dynamic_decay': 0.01,
            'seed': seed, **extra}


def test_mean_and_sample_std_match_numpy():
    losses = [1.3815, 1.3912, 1.3721]
    row = seeds.aggregate([run_row(s, v) for s, v in zip((0, 1, 2), losses, strict=True)])
    assert row['seeds'] == [0, 1, 2] and row['workdir'] == '/out/gru'
    assert row['val_loss'] == pytest.approx(np.mean(losses))
    assert row['std']['val_loss'] == pytest.approx(np.std(losses, ddof=1))
    for key in ('val_window_loss', 'val_stateful_loss', 'val_dynamic_loss', 'train_loss',
                'val_bits_per_char', 'best_val_loss', 'chars_per_second'):
        values = [r[key] for r in row['runs']]
        assert (row[key], row['std'][key]) == pytest.approx(
            (np.mean(values), np.std(values, ddof=1))), key
    # Settings every seed shares stay as they are; the rest are per run.
    assert (row['best_step'], row['last_step'], row['dynamic_lr'], row['window']) == (
        6, 6, 1e-3, 24)
    assert row['wall_seconds'] == 30.0 and row['resumed']  # the total; any seed resumed
    assert [r['seed'] for r in row['runs']] == [0, 1, 2] and 'seed' not in row
    assert seeds.show(row, 'val_loss') == (f'{np.mean(losses):.4f} ± '
                                           f'{np.std(losses, ddof=1):.4f}')
    assert seeds.show({'val_loss': 1.38149}, 'val_loss') == '1.3815'  # an unseeded row


def test_one_seed_shows_no_spread_and_differing_settings_show_each_seed():
    one = seeds.aggregate([run_row(3, 1.5)])
    assert one['std']['val_loss'] is None and seeds.show(one, 'val_loss') == '1.5000'
    two = seeds.aggregate([run_row(0, 1.5, lr=1e-3, best_step=6),
                           run_row(1, 1.6, lr=3e-3, best_step=4)])
    assert two['dynamic_lr'] == [1e-3, 3e-3] and two['dynamic_decay'] == 0.01
    assert seeds.show_setting(two['dynamic_lr']) == '0.001/0.003'
    assert seeds.show_setting(two['best_step'], ',') == '6/4'
    assert seeds.show(two, 'val_loss') == '1.5500 ± 0.0707'
    # Two variants' runs, as compare collects them: one row each, in order.
    other = [run_row(s, 2.0) | {'variant': 'rnn', 'workdir': f'/out/rnn/seed-{s}'}
             for s in (0, 1)]
    rows = seeds.group([run_row(0, 1.5), *other, run_row(1, 1.6)])
    assert [(r['variant'], r['seeds']) for r in rows] == [('gru', [0, 1]), ('rnn', [0, 1])]


def test_the_table_shows_mean_and_std_and_each_seeds_dynamic_settings(tiny_config):
    rows = [seeds.aggregate([run_row(0, 1.5, lr=1e-3), run_row(1, 1.6, lr=3e-3)]),
            seeds.aggregate([run_row(0, 1.4) | {'variant': 'lstm'},
                             run_row(1, 1.4) | {'variant': 'lstm'}])]
    table = compare.markdown(rows, tiny_config, (0, 1))
    assert 'seeds 0, 1,' in table and '| seeds | steps |' in table
    assert '| val window 24 | val stateful | val dynamic (lr, decay) |' in table
    assert ('| gru | gru | 16x16 | 1,234 | 0,1 | 6 | 1.4500 ± 0.0707 | 1.5500 ± 0.0707 | '
            in table)
    assert '| 1.5400 ± 0.0707 (6) | 1.6000 ± 0.0707 | 1.5500 ± 0.0707 | 1.3500 ± 0.0707 ' \
           '(0.001/0.003, 0.01) | 1,000 ± 1 | 0:20 (resumed) |' in table
    assert '| 1.3000 ± 0.0000 | 1.4000 ± 0.0000 |' in table
    assert 'sample standard deviation (ddof=1)' in table and 'minimum to their maximum' in table
    header, rule = table.splitlines()[2:4]
    assert header.count('|') == rule.count('|')


@pytest.mark.parametrize('text,match', [
    ('', 'give a comma-separated list'), (' ', 'give a comma-separated list'),
    ('0,,1', 'give a comma-separated list'), ('0,one', "'one' is not an integer"),
    ('1.5', "'1.5' is not an integer"), ('0,1,0', 'names seed 0 twice'),
    ('2,-1', 'seed -1 is negative'),
])
def test_bad_seeds(text, match):
    with pytest.raises(CharLMError, match=match):
        seeds.parse(text)


def test_good_seeds():
    assert seeds.parse('0') == (0,) and seeds.parse(' 2, 0 ,7') == (2, 0, 7)
    with pytest.raises(CharLMError, match='empty'):
        seeds.check(())


def test_the_mean_curve_is_the_mean_at_the_steps_every_run_logged():
    a = [(1, 3.0), (2, 2.0), (3, 1.0)]
    b = [(1, 4.0), (2, 3.0), (3, 1.5), (4, 1.2)]  # logged one step more
    steps, mean, low, high = seeds.mean_curve([a, b])
    np.testing.assert_array_equal(steps, [1, 2, 3])
    np.testing.assert_allclose(mean, np.mean([[3, 2, 1], [4, 3, 1.5]], 0))
    np.testing.assert_allclose(low, [3, 2, 1])
    np.testing.assert_allclose(high, [4, 3, 1.5])
