"""Word-level models: the tokenizer, per-layer sizes, and a word model that trains."""

import math
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from charlm import evaluate, metric_writer, tokenizers, train
from charlm.errors import CharLMError

ROOT = pathlib.Path(__file__).resolve().parent.parent

TEXT = ('First Citizen:\nBefore we proceed any further, hear me speak.\n\n'
        'All:\nSpeak, speak.\n\n'
        'MENENIUS:\nI\'ll tell you: \'tis o\'er-hasty (he said "no") and the lovers\' eyes\n'
        'weep 42 times!\n')


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


def test_round_trip_and_interface():
    tok = tokenizers.WordTokenizer.from_text(TEXT)
    ids = tok.encode(TEXT)
    assert ids.dtype == np.int32 and tok.itos[0] == '<unk>' and 0 not in ids
    assert tok.decode(ids) == TEXT
    assert tok.split('hear me speak.\n') == ['hear', 'me', 'speak', '.', '\n']
    again = tokenizers.from_json(tok.to_json())
    assert again == tok and again.encode(TEXT).tolist() == ids.tolist()


def test_unknown_words_read_as_unk_with_a_warning_naming_them():
    tok = tokenizers.WordTokenizer.from_text(TEXT)
    with pytest.warns(UserWarning, match="'Coriolanus'.*'zounds'"):
        ids = tok.encode('Coriolanus, speak zounds', warn=True)
    assert ids.tolist() == [0, tok.stoi[','], tok.stoi['speak'], 0]
    assert tok.decode(ids) == '<unk>, speak <unk>'
    assert tok.unknown('Coriolanus, speak zounds') == ['Coriolanus', 'zounds']


def test_vocabulary_caps_and_lowercase():
    text = 'the cat and the dog and the bird\n'
    tok = tokenizers.WordTokenizer.from_text(text, max_vocab=3)
    assert tok.itos == ['<unk>', 'the', 'and']  # by frequency, then alphabetically
    assert tokenizers.WordTokenizer.from_text(text, min_count=2).itos == ['<unk>', 'the', 'and']
    low = tokenizers.build('word', 'The the THE cat', lowercase=True)
    assert low.itos == ['<unk>', 'the', 'cat'] and low.decode(low.encode('THE Cat')) == 'the cat'


def test_empty_vocabulary_is_an_error():
    with pytest.raises(CharLMError, match='vocabulary is empty.*min_count=5'):
        tokenizers.WordTokenizer.from_text('a b c', min_count=5)
    with pytest.raises(CharLMError, match='max_vocab=1'):
        tokenizers.WordTokenizer.from_text('a b c', max_vocab=1)


@pytest.mark.parametrize('args,match', [
    (['--config.data.tokenizer=word', '--config.data.min_count=1000000'],
     'the word vocabulary is empty'),
    (['--config.model.hidden_sizes=(16, 8)', '--config.model.num_layers=3'],
     'has 2 entries but model.num_layers=3'),
])
def test_bad_word_or_size_config_is_one_line(corpus_file, tmp_path, args, match):
    proc = run('charlm.main', '--config=configs/tiny.py', f'--workdir={tmp_path}/w',
               f'--config.data.path={corpus_file}', *args)
    assert_one_line_error(proc, match)


def test_word_model_trains_with_per_layer_sizes(tiny_config, tmp_path):
    """A 16 -> 12 stack of word LSTMs: shapes, a falling loss, and bits per character."""
    c = tiny_config
    c.data.tokenizer = 'word'
    c.model.hidden_sizes = (16, 12)
    c.num_train_steps = 12
    c.eval_every_steps = 6
    c.checkpoint_every_steps = 6
    c.learning_rate = 1e-2
    c.sample.prompts = ()
    workdir = str(tmp_path / 'words')
    result = train.train_and_evaluate(c, workdir)
    assert math.isfinite(result['val_loss'])
    val = [v for _, v in metric_writer.read_scalars(workdir)['val/loss']]
    assert len(val) == 2 and val[1] < val[0]

    restored = evaluate.restore(workdir)
    p, vocab = restored.params, restored.tokenizer.vocab_size
    assert restored.tokenizer.kind == 'word' and restored.model.hidden_sizes == (16, 12)
    assert p['embed']['embedding'].shape == (vocab, 8)
    assert p['lstm_0']['ii']['kernel'].shape == (8, 16)
    assert p['lstm_0']['hf']['kernel'].shape == (16, 16)
    assert p['lstm_1']['ii']['kernel'].shape == (16, 12)
    assert p['lstm_1']['ho']['kernel'].shape == (12, 12)
    assert p['head']['kernel'].shape == (12, vocab)

    # Per word and per character of the same text: one total loss, two denominators.
    corpus = train.load_corpus(c)
    text = evaluate.split_of(restored.config, 'val')
    scores = evaluate.score(restored, text)
    assert scores['tokens'] == len(corpus.tokens['val']) - 1
    assert scores['loss'] == pytest.approx(val[1], rel=1e-5)
    assert scores['bits_per_char'] == pytest.approx(
        scores['loss'] * scores['tokens'] / len(text) / math.log(2), rel=1e-6)
    assert scores['perplexity'] == pytest.approx(math.exp(scores['loss']))

    # A text with words the model never saw: scored as <unk>, and said so.
    other = evaluate.score(restored, 'First Citizen:\nThe zebra speaks Latin.\n')
    assert other['unknown_tokens'] == 4 and other['unknown_words'] == [
        'The', 'zebra', 'speaks', 'Latin']
    report = evaluate.format_report({'workdir': workdir, 'checkpoint': 'best', 'step': 12,
                                     'source': 'x', 'cell': 'lstm', 'hidden_sizes': [16, 12],
                                     **other})
    assert 'nats/word' in report and "4 of 10 word tokens" in report and "'zebra'" in report
