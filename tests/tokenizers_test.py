import numpy as np
import pytest

from charlm import tokenizers
from charlm.errors import CharLMError


def test_char_round_trip_unicode():
    text = 'Ça va? 日本語 — naïve café 🎭\nTo be, or not to be.'
    tok = tokenizers.CharTokenizer.from_text(text)
    ids = tok.encode(text)
    assert ids.dtype == np.int32 and len(ids) == len(text)
    assert tok.decode(ids) == text
    assert tok.itos == sorted(set(text))


def test_char_json_round_trip():
    tok = tokenizers.CharTokenizer.from_text('hello wörld')
    again = tokenizers.from_json(tok.to_json())
    assert again == tok and again.encode('wörld').tolist() == tok.encode('wörld').tolist()


def test_char_unknown_is_named():
    tok = tokenizers.CharTokenizer.from_text('abc')
    with pytest.raises(CharLMError, match=r"'z'.*'€'|'€'.*'z'"):
        tok.encode('abz€')


def test_build_rejects_unknown_kind():
    with pytest.raises(CharLMError, match='unknown tokenizer'):
        tokenizers.build('bpe', 'abc')


def test_char_folding_keeps_the_frequent_and_orders_by_frequency():
    text = 'aaaa bbb cc d 日\n' * 3 + '€'
    tok = tokenizers.CharTokenizer.from_text(text, max_vocab=5)
    # U+FFFD first, then by count (ties by code point): a 12, ' ' 12, b 9, ...
    assert tok.itos == ['\ufffd', ' ', 'a', 'b', 'c'] and tok.folds
    ids = tok.encode('abd日€')
    assert ids.tolist() == [2, 3, 0, 0, 0]
    assert tok.decode(ids) == 'ab\ufffd\ufffd\ufffd'
    assert tokenizers.reads_unknown(tok)
    again = tokenizers.from_json(tok.to_json())
    assert again == tok and again.folds
    by_count = tokenizers.CharTokenizer.from_text(text, min_count=3)
    assert set(by_count.itos) == {'\ufffd', 'a', 'b', 'c', ' ', 'd', '日', '\n'}


def test_char_folding_warns_on_unknown_and_plain_vocab_is_unchanged():
    tok = tokenizers.CharTokenizer.from_text('hello world', max_vocab=4)
    with pytest.warns(UserWarning, match='read as U\\+FFFD'):
        tok.encode('hez', warn=True)
    plain = tokenizers.CharTokenizer.from_text('hello world')
    assert plain.itos == sorted(set('hello world')) and not plain.folds
    assert 'unk' not in plain.to_json()  # the JSON of checkpoints made before folding


@pytest.mark.parametrize('max_vocab, min_count, match', [
    (1, 1, 'max_vocab=1 leaves no room'), (-3, 1, 'max_vocab must be >= 0'),
    (0, 0, 'min_count >= 1'), (0, 99, 'character vocabulary is empty')])
def test_char_folding_bad_caps(max_vocab, min_count, match):
    with pytest.raises(CharLMError, match=match):
        tokenizers.CharTokenizer.from_text('abcabc', max_vocab, min_count)


def test_scoring_reads_folded_characters_and_refuses_unseen_ones():
    from charlm import scoring
    folded = tokenizers.CharTokenizer.from_text('hello world', max_vocab=4)
    scoring.check_text(folded, 'hez!')  # read as U+FFFD: no error
    with pytest.raises(CharLMError, match="never saw in training: 'z', '!'"):
        scoring.check_text(tokenizers.CharTokenizer.from_text('hello world'), 'hez!')
