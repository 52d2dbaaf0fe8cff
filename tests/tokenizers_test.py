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
