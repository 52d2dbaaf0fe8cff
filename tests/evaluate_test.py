"""charlm.evaluate: the logged validation loss, reproduced from a checkpoint."""

import json
import math
import os
import pathlib
import subprocess
import sys

import pytest
from conftest import SHAKESPEARE_LIKE

from charlm import evaluate, metric_writer, train
from charlm.errors import CharLMError

ROOT = pathlib.Path(__file__).resolve().parent.parent


def run(*args, timeout=120):
    env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=1',
               JAX_PLATFORMS='cpu')
    return subprocess.run([sys.executable, '-m', *args], cwd=ROOT, env=env, text=True,
                          capture_output=True, timeout=timeout)


def assert_one_line_error(proc, match):
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert 'Traceback' not in proc.stderr
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith('charlm: error:')]
    assert len(errors) == 1 and match in errors[0], proc.stderr[-2000:]


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
    """configs/tiny.py for 20 steps: evaluations and checkpoints at steps 10 and 20."""
    from configs import tiny

    tmp = tmp_path_factory.mktemp('evaluate')
    corpus = tmp / 'corpus.txt'
    corpus.write_text(SHAKESPEARE_LIKE * 40, encoding='utf-8')
    config = tiny.get_config()
    config.data.path = str(corpus)
    config.data.test_fraction = 0.05
    config.sample.prompts = ()
    workdir = str(tmp / 'run')
    train.train_and_evaluate(config, workdir)
    logged = dict(metric_writer.read_scalars(workdir)['val/loss'])
    assert sorted(logged) == [10, 20]
    return workdir, logged


def test_evaluate_reproduces_the_logged_val_loss(trained):
    workdir, logged = trained
    for step in (10, 20):
        r = evaluate.evaluate(workdir, step=step)
        assert r['step'] == step and r['source'].startswith('val split of')
        assert r['loss'] == pytest.approx(logged[step], rel=1e-6)
        assert r['perplexity'] == pytest.approx(math.exp(r['loss']))
    best = evaluate.evaluate(workdir)  # default: the best checkpoint
    assert best['checkpoint'] == 'best'
    assert best['loss'] == pytest.approx(min(logged.values()), rel=1e-6)
    test = evaluate.evaluate(workdir, split='test')
    assert test['characters'] == int(len(SHAKESPEARE_LIKE * 40) * 0.05)  # the last 5%
    assert math.isfinite(test['loss']) and test['tokens'] == test['characters'] - 1


def test_command_line_json_on_one_device(trained):
    workdir, logged = trained
    proc = run('charlm.evaluate', f'--workdir={workdir}', '--step=10', '--json')
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads(proc.stdout)
    assert r['step'] == 10 and r['tokenizer'] == 'char' and r['checkpoint'] == 'latest'
    assert r['loss'] == pytest.approx(logged[10], rel=1e-5)  # 4 devices trained, 1 scores
    assert r['bits_per_char'] == pytest.approx(
        r['loss'] * r['tokens'] / r['characters'] / math.log(2), rel=1e-6)


def test_text_file_and_report(trained, tmp_path):
    workdir, _ = trained
    text = tmp_path / 'speech.txt'
    text.write_text('First Citizen:\nSpeak, speak.\n', encoding='utf-8')
    r = evaluate.evaluate(workdir, text_file=str(text))
    assert r['characters'] == 29 and r['tokens'] == 28 and r['unknown_tokens'] == 0
    report = evaluate.format_report(r)
    assert 'nats/char' in report and 'bits/char' in report and 'perplexity' in report


def test_bad_input_in_process(trained):
    workdir, _ = trained
    with pytest.raises(CharLMError, match='no checkpoint of step 7 .* saved steps: 10, 20'):
        evaluate.evaluate(workdir, step=7)
    with pytest.raises(CharLMError, match='not both'):
        evaluate.evaluate(workdir, split='val', text_file='x.txt')


@pytest.mark.parametrize('what', ['no_checkpoint', 'unknown_chars', 'bad_split'])
def test_bad_input_is_one_line(trained, tmp_path, what):
    workdir, _ = trained
    if what == 'no_checkpoint':
        (tmp_path / 'empty').mkdir()
        proc = run('charlm.evaluate', f'--workdir={tmp_path}/empty')
        assert_one_line_error(proc, 'no checkpoint in')
    elif what == 'unknown_chars':
        text = tmp_path / 'euro.txt'
        text.write_text('First Citizen: 5 €\n', encoding='utf-8')
        proc = run('charlm.evaluate', f'--workdir={workdir}', f'--text_file={text}')
        assert_one_line_error(proc, "never saw in training: '5', '€'")
    else:
        proc = run('charlm.evaluate', f'--workdir={workdir}', '--split=train')
        assert_one_line_error(proc, '--split')
