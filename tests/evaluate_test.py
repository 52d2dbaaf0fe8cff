"""charlm.evaluate: the logged validation loss, reproduced from a checkpoint.

The trained run here is a word model with per-layer sizes (16 -> 12), so it is also the
test that a word model trains; compare_test.py checks the same for char models.
"""

import json
import math
import pathlib

import jax
import numpy as np
import pytest
from conftest import SHAKESPEARE_LIKE, assert_one_line_error, run_cli

from charlm import checkpointing, evaluate, metric_writer, runs, steps, tokenizers, train
from charlm import workdir as workdir_lib
from charlm.errors import CharLMError
from charlm.tokenizers import WordTokenizer

pytestmark = pytest.mark.xdist_group('evaluate')  # its module-scoped fixture: one worker


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
    """configs/tiny.py as a word model for 20 steps: evaluations and checkpoints at 10, 20."""
    from configs import tiny

    tmp = tmp_path_factory.mktemp('evaluate')
    corpus = tmp / 'corpus.txt'
    corpus.write_text(SHAKESPEARE_LIKE * 40, encoding='utf-8')
    config = tiny.get_config()
    config.data.path = str(corpus)
    config.data.tokenizer = 'word'
    config.data.test_fraction = 0.05
    config.model.hidden_sizes = (16, 12)
    config.learning_rate = 1e-2
    config.sample.prompts = ()
    workdir = str(tmp / 'run')
    result = train.train_and_evaluate(config, workdir)
    assert math.isfinite(result['val_loss'])
    logged = dict(metric_writer.read_scalars(workdir)['val/loss'])
    assert sorted(logged) == [10, 20] and logged[20] < logged[10]  # it learns
    return workdir, logged


def test_evaluate_reproduces_the_logged_val_loss(trained):
    workdir, logged = trained
    for step in (10, 20):
        r = evaluate.evaluate(workdir, step=step)
        assert r['step'] == step and r['source'].startswith('val split of')
        assert r['loss'] == pytest.approx(logged[step], rel=1e-6)
        assert r['perplexity'] == pytest.approx(math.exp(r['loss']))
        # One total loss, two denominators: per word token, and per character of the text.
        assert r['bits_per_token'] == pytest.approx(r['loss'] / math.log(2))
        assert r['bits_per_char'] == pytest.approx(
            r['loss'] * r['tokens'] / r['characters'] / math.log(2), rel=1e-6)
        assert r['tokenizer'] == 'word' and r['tokens'] < r['characters'] / 2
    # Other windows: every target still scored once, each window from a zero state.
    same = evaluate.evaluate(workdir, step=20, window=16)  # tiny's data.seq_len
    longer = evaluate.evaluate(workdir, step=20, window=48)
    assert same['loss'] == r['loss'] and same['window'] == 16
    assert longer['window'] == 48 and longer['tokens'] == r['tokens']
    assert longer['loss'] != r['loss'] and math.isfinite(longer['loss'])
    best = evaluate.evaluate(workdir)  # default: the best checkpoint
    assert best['checkpoint'] == 'best' and best['step'] == 20
    test = evaluate.evaluate(workdir, split='test')
    # The last 5% of the text; every character but the first token's is predicted.
    last = (SHAKESPEARE_LIKE * 40)[-int(len(SHAKESPEARE_LIKE * 40) * 0.05):]
    first_word = WordTokenizer.split(last)[0]
    assert test['characters'] == len(last) - len(first_word)
    assert math.isfinite(test['loss'])


def test_restored_word_model_has_the_per_layer_shapes(trained):
    restored = runs.find(trained[0])
    p, vocab = restored.params, restored.tokenizer.vocab_size
    assert restored.tokenizer.kind == 'word' and restored.model.hidden_sizes == (16, 12)
    assert p['lstm_0']['ii']['kernel'].shape == (8, 16)
    assert p['lstm_1']['ii']['kernel'].shape == (16, 12)
    assert p['lstm_1']['ho']['kernel'].shape == (12, 12)
    assert p['head']['kernel'].shape == (12, vocab)


def test_command_line_json_on_one_device(trained):
    workdir, logged = trained
    proc = run_cli('charlm.evaluate', f'--workdir={workdir}', '--step=10', '--json')
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads(proc.stdout)
    assert r['step'] == 10 and r['tokenizer'] == 'word' and r['checkpoint'] == 'latest'
    assert r['loss'] == pytest.approx(logged[10], rel=1e-5)  # 4 devices trained, 1 scores


def test_unknown_words_are_scored_as_unk_and_reported(trained, tmp_path):
    workdir, _ = trained
    text = tmp_path / 'speech.txt'
    text.write_text('First Citizen:\nThe zebra speaks Latin.\n', encoding='utf-8')
    r = evaluate.evaluate(workdir, text_file=str(text))
    assert r['tokens'] == 9 and r['unknown_tokens'] == 4
    assert r['unknown_words'] == ['The', 'zebra', 'speaks', 'Latin']
    report = evaluate.format_report(r)
    assert 'nats/word' in report and 'bits/char' in report and 'perplexity' in report
    assert '<unk>: 4 of 10 word tokens (40.0%)' in report and "'zebra'" in report


def test_bad_input_in_process(trained):
    workdir, _ = trained
    with pytest.raises(CharLMError, match='no checkpoint of step 7 .* saved steps: 10, 20'):
        evaluate.evaluate(workdir, step=7)
    with pytest.raises(CharLMError, match='not both'):
        evaluate.evaluate(workdir, split='val', text_file='x.txt')
    with pytest.raises(CharLMError, match='--window must be a positive'):
        evaluate.evaluate(workdir, window=0)


def _char_checkpoint(workdir, config):
    """A char-model checkpoint as training writes it, with random parameters (no compile)."""
    tok = tokenizers.CharTokenizer.from_text(SHAKESPEARE_LIKE)
    model = steps.make_model(config, tok.vocab_size)
    tx = steps.make_optimizer(config)
    abstract = jax.eval_shape(lambda: steps.create_state(model, tx, jax.random.key(0)))
    state = jax.tree.map(lambda x: np.full(x.shape, 0.1, x.dtype), abstract)
    ckpts = checkpointing.Checkpoints(str(workdir))
    ckpts.save(3, state, tok.to_json(), config.to_dict(), {})
    ckpts.wait()
    ckpts.close()


@pytest.mark.parametrize('what', ['no_checkpoint', 'unknown_chars'])
def test_bad_input_is_one_line(tiny_config, tmp_path, what):
    if what == 'no_checkpoint':
        (tmp_path / 'empty').mkdir()
        proc = run_cli('charlm.evaluate', f'--workdir={tmp_path}/empty')
        assert_one_line_error(proc, 'no checkpoint in')
    else:
        _char_checkpoint(tmp_path / 'chars', tiny_config)
        text = tmp_path / 'euro.txt'
        text.write_text('First Citizen: 5 €\n', encoding='utf-8')
        proc = run_cli('charlm.evaluate', f'--workdir={tmp_path}/chars', f'--text_file={text}')
        assert_one_line_error(proc, "never saw in training: '5', '€'")


def test_a_step_means_the_same_in_every_command(trained):
    """runs.find, which sample, evaluate, gates and compare share: the best checkpoint by
    default, and --step=N from checkpoints/ or, if only there, best/."""
    workdir, _ = trained
    best = runs.find(workdir)
    assert best.best and best.where.endswith(f'/best/{best.step}')
    for step in workdir_lib.saved_steps(pathlib.Path(workdir) / 'checkpoints'):
        assert not runs.find(workdir, step).best
    with pytest.raises(CharLMError, match='no checkpoint of step 3'):
        runs.find(workdir, 3)


def test_dynamic_evaluation_reports_beside_the_static_figures(trained):
    workdir, _ = trained
    before = sorted((p, p.stat().st_mtime_ns) for p in pathlib.Path(workdir).rglob('*')
                    if p.is_file() and p.name != 'lock')
    r = evaluate.evaluate(workdir, dynamic=dict(lr=1e-3, decay=0.0, rule='rms', streams=1))
    d = r['dynamic']
    for key in ('loss', 'bits_per_token', 'bits_per_char', 'perplexity', 'tokens'):
        assert math.isfinite(d[key]), key
    assert d['tokens'] == r['tokens'] and d['loss'] != r['loss']
    assert 'dynamic (rms, lr 0.001' in evaluate.format_report(r)
    after = sorted((p, p.stat().st_mtime_ns) for p in pathlib.Path(workdir).rglob('*')
                   if p.is_file() and p.name != 'lock')
    assert after == before  # the checkpoint is only read


def test_krause_rule_and_segment_length_from_the_command(trained):
    """--dynamic_rule=rms-global takes its gradient statistics from the run's training
    split; --dynamic_seq_len sets the segment (0: the run's seq_len); at lr 0 every rule
    and segment scores the stateful static figure."""
    workdir, _ = trained
    base = dict(lr=0.0, decay=0.0, rule='rms', streams=1)
    static = evaluate.evaluate(workdir, dynamic=base)['dynamic']
    assert static['settings']['seq_len'] == runs.find(workdir).config.data.seq_len
    same = evaluate.evaluate(workdir, dynamic=base | {'rule': 'rms-global', 'seq_len': 3})
    assert same['dynamic']['loss'] == pytest.approx(static['loss'], rel=1e-5)
    r = evaluate.evaluate(workdir, dynamic=base | {'rule': 'rms-global', 'seq_len': 3,
                                                   'lr': 1e-2, 'decay': 1e-2,
                                                   'stats_tokens': 200})
    assert math.isfinite(r['dynamic']['loss']) and r['dynamic']['loss'] != static['loss']
    assert 'dynamic (rms-global, lr 0.01, decay 0.01, segments of 3' in (
        evaluate.format_report(r))
    with pytest.raises(CharLMError, match='--dynamic_seq_len must be positive'):
        evaluate.evaluate(workdir, dynamic=base | {'seq_len': -1})


def test_dynamic_lr_tuned_on_another_text(trained, tmp_path):
    """--dynamic_tune_file: the lr is the one of the grid that reads that file best, and the
    reported figure is what that lr scores on the split."""
    workdir, _ = trained
    other = tmp_path / 'other.txt'
    other.write_text(SHAKESPEARE_LIKE * 3, encoding='utf-8')
    settings = dict(lr=3e-4, decay=0.0, rule='rms', streams=1)
    lrs = (0.0, 3e-3, 3e-2)
    r = evaluate.evaluate(workdir, dynamic=settings, tune_file=str(other), tune_lrs=lrs)
    tuned = r['dynamic']['tuned']
    assert sorted(tuned['losses']) == list(lrs)
    assert tuned['lr'] == min(tuned['losses'], key=tuned['losses'].get)
    assert tuned['lr'] > 0  # a text of repeats is learnt while it is read
    assert len(set(tuned['losses'].values())) == 3
    direct = evaluate.evaluate(workdir, dynamic=settings | {'lr': tuned['lr']})
    assert r['dynamic']['loss'] == direct['dynamic']['loss']
    assert r['dynamic']['settings']['lr'] == tuned['lr']
    assert f'lr {tuned["lr"]:g} chosen on {other}' in evaluate.format_report(r)

    with pytest.raises(CharLMError, match='add --dynamic'):
        evaluate.evaluate(workdir, tune_file=str(other), tune_lrs=lrs)
    with pytest.raises(CharLMError, match='tuned on itself'):
        evaluate.evaluate(workdir, text_file=str(other), dynamic=settings,
                          tune_file=str(other), tune_lrs=lrs)
    with pytest.raises(CharLMError, match='step sizes >= 0'):
        evaluate.evaluate(workdir, dynamic=settings, tune_file=str(other), tune_lrs=(-1.0,))


def test_dynamic_lr_and_decay_tuned_together(trained, tmp_path):
    """--dynamic_tune_decays: every (lr, decay) pair is read on the tuning file; the pair
    with the lowest loss is the one reported with."""
    workdir, _ = trained
    other = tmp_path / 'other.txt'
    other.write_text(SHAKESPEARE_LIKE * 3, encoding='utf-8')
    settings = dict(lr=3e-4, decay=0.0, rule='rms', streams=1)
    r = evaluate.evaluate(workdir, dynamic=settings, tune_file=str(other), tune_lrs=(3e-3, 3e-2),
                          tune_decays=(0.0, 0.5))
    t = r['dynamic']['tuned']
    grid = t['decay_losses']
    assert sorted(grid) == [0.0, 0.5] and all(sorted(v) == [3e-3, 3e-2] for v in grid.values())
    best = min(loss for v in grid.values() for loss in v.values())
    assert grid[t['decay']][t['lr']] == best and t['losses'] == grid[t['decay']]
    assert grid[0.5] != grid[0.0]  # the decay changes what is read
    assert r['dynamic']['settings']['decay'] == t['decay']
    direct = evaluate.evaluate(workdir, dynamic=settings | {'lr': t['lr'], 'decay': t['decay']})
    assert r['dynamic']['loss'] == direct['dynamic']['loss']
    report = evaluate.format_report(r)
    assert f'lr {t["lr"]:g}, decay {t["decay"]:g} chosen on {other}' in report
    assert '    decay 0.5: 0.003: ' in report

    with pytest.raises(CharLMError, match='needs --dynamic_tune_file'):
        evaluate.evaluate(workdir, dynamic=settings, tune_decays=(0.1,))
    with pytest.raises(CharLMError, match=r'--dynamic_tune_decays must be in \[0, 1\)'):
        evaluate.evaluate(workdir, dynamic=settings, tune_file=str(other), tune_lrs=(1e-3,),
                          tune_decays=(1.0,))
