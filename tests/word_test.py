"""Word-level models: the tokenizer, bad word configs, per-layer sizes.

A word model trains (16 -> 12 LSTM stack) in evaluate_test.py, which scores it.
"""


import jax
import numpy as np
import pytest
from conftest import assert_one_line_error, run_cli

from charlm import steps, tokenizers
from charlm.errors import CharLMError

TEXT = ('First Citizen:\nBefore we proceed any further, hear me speak.\n\n'
        'All:\nSpeak, speak.\n\n'
        'MENENIUS:\nI\'ll tell you: \'tis o\'er-hasty (he said "no") and the lovers\' eyes\n'
        'weep 42 times!\n')


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
    proc = run_cli('charlm.main', '--config=configs/tiny.py', f'--workdir={tmp_path}/w',
               f'--config.data.path={corpus_file}', *args)
    assert_one_line_error(proc, match)


@pytest.mark.parametrize('cell,gate_names', [
    ('lstm', ['hf', 'hg', 'hi', 'ho', 'if', 'ig', 'ii', 'io']),
    ('gru', ['hn', 'hr', 'hz', 'in', 'ir', 'iz']),
    ('rnn', ['h', 'i']),
])
def test_per_layer_sizes_give_the_parameter_shapes(tiny_config, cell, gate_names):
    """hidden_sizes=(16, 12): layer 0 maps E -> 16, layer 1 16 -> 12, the head 12 -> V."""
    tiny_config.model.cell = cell
    tiny_config.model.hidden_sizes = (16, 12)
    model = steps.make_model(tiny_config, 40)
    shapes = jax.eval_shape(model.init, jax.random.key(0), model.init_carry(1),
                            np.zeros((1, 1), np.int32))['params']
    assert shapes['embed']['embedding'].shape == (40, 8)
    for i, (n_in, n_out) in enumerate([(8, 16), (16, 12)]):
        layer = shapes[f'{cell}_{i}']
        assert sorted(layer) == gate_names
        for name in gate_names:
            assert layer[name]['kernel'].shape == ((n_in if name[0] == 'i' else n_out), n_out)
    assert shapes['head']['kernel'].shape == (12, 40)
