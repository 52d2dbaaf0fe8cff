"""charlm.gates: gate activations from the model's own cells, drawn as heatmaps."""

import pathlib

import jax
import pytest
from activations_test import _random_like
from conftest import run_cli

from charlm import checkpointing, gates, steps, tokenizers
from charlm.errors import CharLMError

ROOT = pathlib.Path(__file__).resolve().parent.parent


def test_labels_and_escapes():
    tok = tokenizers.CharTokenizer.from_text('ab \n')
    assert gates.token_labels(tok, tok.encode('a b\n')) == ['a', '␣', 'b', '⏎']
    words = tokenizers.WordTokenizer.from_text('speak \n')
    assert gates.token_labels(words, words.encode('speak\n')) == ['speak', '\\n']
    assert gates.unescape(r'First Citizen:\nBefore\\n') == 'First Citizen:\nBefore\\n'


def _save_checkpoint(workdir, config, text):
    """A checkpoint as training writes it, with random parameters (no training, no compile)."""
    tok = tokenizers.CharTokenizer.from_text(text)
    model = steps.make_model(config, tok.vocab_size)
    tx = steps.make_optimizer(config)
    state = _random_like(jax.eval_shape(lambda: steps.create_state(model, tx, jax.random.key(0))))
    ckpts = checkpointing.Checkpoints(str(workdir))
    ckpts.save(5, state, tok.to_json(), config.to_dict(), {}, best=True)
    ckpts.wait()
    ckpts.close()


def test_png_from_a_checkpoint(tiny_config, tmp_path):
    tiny_config.model.hidden_sizes = (24, 16)
    _save_checkpoint(tmp_path / 'run', tiny_config, 'First Citizen:\nBefore we proceed.')
    out = tmp_path / 'gates.png'
    acts = gates.gates(str(tmp_path / 'run'), 'First Citizen:\nBefore we', str(out),
                       layer=0, units=10)
    assert acts['forget'].shape == (24, 24) and out.read_bytes()[:4] == b'\x89PNG'
    assert out.stat().st_size > 20_000
    with pytest.raises(CharLMError, match="never saw in training: '€'"):
        gates.gates(str(tmp_path / 'run'), 'we €', str(out))
    with pytest.raises(CharLMError, match='--layer=2 is out of range: the model has 2 layers'):
        gates.gates(str(tmp_path / 'run'), 'we', str(out), layer=2)
    with pytest.raises(CharLMError, match='no checkpoint in'):
        gates.gates(str(tmp_path), 'we', str(out))


def test_out_units_and_max_tokens_are_checked_first(tiny_config, tmp_path):
    _save_checkpoint(tmp_path / 'run', tiny_config, 'First Citizen:')
    good = str(tmp_path / 'g.png')
    for kwargs, match in [(dict(out=str(tmp_path / 'g.xyz')), 'name a file ending in .*png'),
                          (dict(out=str(tmp_path)), 'it is a directory'),
                          (dict(out=str(tmp_path / 'nope' / 'g.png')), 'no directory'),
                          (dict(units=-1), '--units=-1: need 0 .all. or more'),
                          (dict(max_tokens=0), '--max_tokens=0: need at least 1'),
                          (dict(max_tokens=-1), '--max_tokens=-1: need at least 1')]:
        with pytest.raises(CharLMError, match=match):
            gates.gates(str(tmp_path / 'run'), 'First', **(dict(out=good) | kwargs))
    assert sorted(p.name for p in tmp_path.iterdir()) == ['corpus.txt', 'run']  # nothing new


def run(*args, timeout=120):
    return run_cli(*args, timeout=timeout)


@pytest.mark.parametrize('cell,args,match', [
    ('rnn', [], "a 'rnn' layer has no gates to show: gates works for lstm, gru, mingru, "
     'minlstm, lnlstm and mogrifier models'),
    ('lstm', ['--text=Before we €'], "characters the model never saw in training: '€'"),
])
def test_bad_input_is_one_line(tiny_config, tmp_path, cell, args, match):
    workdir = tmp_path / 'run'
    tiny_config.model.cell = cell
    _save_checkpoint(workdir, tiny_config, gates.DEFAULT_TEXT)
    proc = run('charlm.gates', f'--workdir={workdir}', f'--out={tmp_path}/g.png', *args)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert 'Traceback' not in proc.stderr
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith('charlm: error:')]
    assert len(errors) == 1 and match in errors[0], proc.stderr[-2000:]
    assert not (tmp_path / 'g.png').exists()

