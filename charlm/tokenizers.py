"""Tokenizers: text <-> int32 token ids, with one interface for chars, bytes and words.

Every tokenizer has `encode(text) -> np.ndarray[int32]`, `decode(ids) -> str`,
`vocab_size`, `to_json() -> dict` and `from_json(dict)`; the JSON is saved beside
each checkpoint so a restored model decodes exactly as it was trained.
"""

from __future__ import annotations

import collections
import re
import warnings
from collections.abc import Iterable, Sequence

import numpy as np

from charlm.errors import CharLMError


def _show(chars: Iterable[str], limit: int = 10) -> str:
    chars = list(chars)
    shown = ', '.join(repr(c) for c in chars[:limit])
    more = f' and {len(chars) - limit} more' if len(chars) > limit else ''
    return shown + more


class CharTokenizer:
    """One id per Unicode character.

    The vocabulary is sorted by code point, so it is stable; or, when rare characters are
    folded (`data.max_vocab` / `data.min_count`), id 0 is the unknown symbol U+FFFD that
    stands for every folded character, and the rest follow by frequency (ties by code
    point), as the word tokenizer orders words: an adaptive softmax needs that order.
    """

    kind = 'char'
    UNK = '\ufffd'  # what a folded character reads as, and how a sample shows it

    def __init__(self, chars: Sequence[str], unk: bool = False):
        if not chars:
            raise CharLMError('the character vocabulary is empty')
        self.itos = list(chars)
        self.stoi = {c: i for i, c in enumerate(self.itos)}
        self.folds = bool(unk)  # rare characters read as UNK (id 0)
        if len(self.stoi) != len(self.itos):
            raise CharLMError('the character vocabulary has duplicate entries')
        if self.folds and self.itos[0] != self.UNK:
            raise CharLMError('a folded character vocabulary must start with U+FFFD')
        codes = [ord(c) for c in self.itos]
        self._table = np.full(max(codes) + 1, 0 if self.folds else -1, dtype=np.int32)
        self._table[codes] = np.arange(self.vocab_size, dtype=np.int32)

    @classmethod
    def from_text(cls, text: str, max_vocab: int = 0, min_count: int = 1) -> CharTokenizer:
        check_caps(max_vocab, min_count, 'character')
        if not folding(max_vocab, min_count):
            return cls(sorted(set(text)))
        return cls.from_counts(collections.Counter(text), max_vocab, min_count)

    @classmethod
    def from_counts(cls, counts: dict[str, int], max_vocab: int = 0, min_count: int = 1
                    ) -> CharTokenizer:
        """The vocabulary of characters counted elsewhere; folds the rare ones when
        max_vocab (U+FFFD included) or min_count asks for it."""
        check_caps(max_vocab, min_count, 'character')
        if not folding(max_vocab, min_count):
            return cls(sorted(c for c, n in counts.items() if n))
        kept = sorted((c for c, n in counts.items() if n >= min_count and c != cls.UNK),
                      key=lambda c: (-counts[c], ord(c)))
        if max_vocab:
            kept = kept[: max_vocab - 1]
        if not kept:
            raise CharLMError(f'the character vocabulary is empty: no character occurs at '
                              f'least min_count={min_count} times; lower data.min_count')
        return cls([cls.UNK] + kept, unk=True)

    @property
    def vocab_size(self) -> int:
        return len(self.itos)

    def unknown(self, text: str) -> list[str]:
        """Characters of `text` outside the vocabulary, in order of appearance (a folding
        vocabulary reads them as U+FFFD; any other refuses them)."""
        return [c for c in dict.fromkeys(text) if c not in self.stoi]

    def encode(self, text: str, warn: bool = False) -> np.ndarray:
        if self.folds:
            if warn and (missing := self.unknown(text)):
                warnings.warn(f'characters not in the vocabulary, read as U+FFFD: '
                              f'{_show(missing)}', stacklevel=2)
        elif missing := self.unknown(text):
            raise CharLMError(f'characters not in the vocabulary: {_show(missing)}')
        # A lookup table over code points encodes megabytes in milliseconds.
        codes = np.frombuffer(text.encode('utf-32-le'), dtype=np.uint32)
        return self.ids_of_codes(codes)

    def ids_of_codes(self, codes: np.ndarray) -> np.ndarray:
        """int32 ids of code points; beyond the table, folded (0) or -1."""
        inside = codes < len(self._table)
        ids = self._table[np.where(inside, codes, 0)]
        return ids if inside.all() else np.where(inside, ids, 0 if self.folds else -1)

    def decode(self, ids: Iterable[int]) -> str:
        return ''.join(self.itos[int(i)] for i in ids)

    def to_json(self) -> dict:
        return {'kind': self.kind, 'vocab': self.itos, **({'unk': True} if self.folds else {})}

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, CharTokenizer) and self.itos == other.itos
                and self.folds == other.folds)


def folding(max_vocab: int, min_count: int) -> bool:
    """Whether data.max_vocab / data.min_count fold rare characters (their defaults: no)."""
    return bool(max_vocab) or min_count > 1


def check_caps(max_vocab: int, min_count: int, what: str) -> None:
    """data.max_vocab and data.min_count, checked before any work."""
    if max_vocab < 0 or min_count < 1:
        raise CharLMError(f'data.max_vocab must be >= 0 and data.min_count >= 1, got '
                          f'{max_vocab} and {min_count}')
    if max_vocab == 1:
        raise CharLMError(f'data.max_vocab=1 leaves no room for a {what} besides the '
                          'unknown symbol: use at least 2 (or 0 for no cap)')


# Words (with inner apostrophes: o'er, I'll), numbers, single punctuation marks and
# newlines are tokens; spaces are not, and decode() puts them back by the rules below.
_WORD_RE = re.compile(r"\n|[^\W\d_]+(?:'[^\W\d_]+)*|\d+|[^\w\s]|_")
_NO_SPACE_BEFORE = set(",.;:!?)]}-'\"")
_NO_SPACE_AFTER = set('([{-$£#')


class WordTokenizer:
    """Words and punctuation marks as tokens, newlines kept, rare words as `<unk>`.

    Id 0 is `<unk>`; the rest are sorted by frequency (ties alphabetically), capped by
    `max_vocab` (0 = no cap) and `min_count`.
    """

    kind = 'word'
    UNK = '<unk>'

    def __init__(self, words: Sequence[str], lowercase: bool = False):
        if not words or words[0] != self.UNK:
            raise CharLMError(f'a word vocabulary must start with {self.UNK}')
        self.itos = list(words)
        self.stoi = {w: i for i, w in enumerate(self.itos)}
        self.lowercase = lowercase

    @classmethod
    def split(cls, text: str, lowercase: bool = False) -> list[str]:
        if lowercase:
            text = text.lower()
        return _WORD_RE.findall(text)

    @classmethod
    def from_text(
        cls, text: str, max_vocab: int = 0, min_count: int = 1, lowercase: bool = False
    ) -> WordTokenizer:
        return cls.from_counts(collections.Counter(cls.split(text, lowercase)), max_vocab,
                               min_count, lowercase)

    @classmethod
    def from_counts(cls, counts: collections.Counter, max_vocab: int = 0, min_count: int = 1,
                    lowercase: bool = False) -> WordTokenizer:
        """The vocabulary of words counted elsewhere (a streaming pass over a corpus)."""
        kept = sorted((w for w, n in counts.items() if n >= min_count),
                      key=lambda w: (-counts[w], w))
        if not kept:
            raise CharLMError(
                f'the word vocabulary is empty: no word occurs at least min_count={min_count} '
                'times; lower data.min_count or use a larger corpus')
        if max_vocab:
            if max_vocab < 2:
                raise CharLMError(f'data.max_vocab={max_vocab} leaves no room for a word '
                                  f'besides {cls.UNK}: use at least 2 (or 0 for no cap)')
            kept = kept[: max_vocab - 1]
        return cls([cls.UNK] + kept, lowercase)

    @property
    def vocab_size(self) -> int:
        return len(self.itos)

    def unknown(self, text: str) -> list[str]:
        return [w for w in dict.fromkeys(self.split(text, self.lowercase)) if w not in self.stoi]

    def encode(self, text: str, warn: bool = False) -> np.ndarray:
        words = self.split(text, self.lowercase)
        if warn:
            missing = [w for w in dict.fromkeys(words) if w not in self.stoi]
            if missing:
                warnings.warn(f'words not in the vocabulary, read as {self.UNK}: {_show(missing)}',
                              stacklevel=2)
        return np.array([self.stoi.get(w, 0) for w in words], dtype=np.int32)

    def decode(self, ids: Iterable[int]) -> str:
        """Tokens joined with single spaces, except around punctuation and in new lines.

        Quotes are told apart by position: a '"' opens when an even number came before it,
        a "'" opens unless it follows a word (then it closes, or is a possessive).
        """
        out: list[str] = []
        glue = True  # no space before the next token (start of text or of a line)
        prev, double_quotes = '\n', 0
        for i in ids:
            w = self.itos[int(i)]
            opening = False
            if w == '"':
                opening, double_quotes = double_quotes % 2 == 0, double_quotes + 1
            elif w == "'":
                opening = not prev[:1].isalnum()
            if not (glue or w == '\n' or (w in _NO_SPACE_BEFORE and not opening)):
                out.append(' ')
            out.append(w)
            glue = w == '\n' or w in _NO_SPACE_AFTER or opening
            prev = w
        return ''.join(out)

    def to_json(self) -> dict:
        return {'kind': self.kind, 'vocab': self.itos, 'lowercase': self.lowercase}

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, WordTokenizer) and self.itos == other.itos
                and self.lowercase == other.lowercase)


class ByteTokenizer:
    """Byte values as tokens, no decoding: any file is a corpus (enwik8 is modelled so).

    The vocabulary is the sorted byte values seen (or all 256). Text is encoded as UTF-8;
    decode() replaces incomplete byte sequences with U+FFFD.
    """

    kind = 'byte'

    def __init__(self, values: Sequence[int]):
        self.values = [int(v) for v in values]
        if not self.values or sorted(set(self.values)) != self.values or not (
                0 <= self.values[0] and self.values[-1] < 256):
            raise CharLMError('a byte vocabulary must be sorted, distinct values in 0..255')
        self.table = np.full(256, -1, dtype=np.int32)
        self.table[self.values] = np.arange(len(self.values), dtype=np.int32)
        # What a byte looks like on an axis or in a list: itself if ASCII, else \xNN.
        self.itos = [chr(v) if v < 128 else f'\\x{v:02x}' for v in self.values]

    @classmethod
    def from_counts(cls, counts_256: np.ndarray, vocab: str = 'seen') -> ByteTokenizer:
        if vocab == 'all':
            return cls(range(256))
        if vocab != 'seen':
            raise CharLMError(f"unknown data.byte_vocab {vocab!r}: use 'seen' or 'all'")
        return cls(np.flatnonzero(counts_256).tolist())

    @property
    def vocab_size(self) -> int:
        return len(self.values)

    @staticmethod
    def as_bytes(text: str | bytes) -> np.ndarray:
        raw = text.encode('utf-8') if isinstance(text, str) else bytes(text)
        return np.frombuffer(raw, dtype=np.uint8)

    def unknown(self, text: str | bytes) -> list[str]:
        """Bytes of `text` outside the vocabulary (shown as \\xNN), in order of appearance."""
        b = self.as_bytes(text)
        return [f'\\x{v:02x}' for v in dict.fromkeys(b[self.table[b] < 0].tolist())]

    def encode(self, text: str | bytes) -> np.ndarray:
        missing = self.unknown(text)
        if missing:
            raise CharLMError(f'bytes not in the vocabulary: {", ".join(missing[:10])}')
        return self.table[self.as_bytes(text)]

    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        values = np.asarray(self.values, dtype=np.uint8)
        return values[np.asarray(list(ids) if not isinstance(ids, np.ndarray) else ids,
                                 dtype=np.int64)].tobytes()

    def decode(self, ids: Iterable[int]) -> str:
        return self.decode_bytes(ids).decode('utf-8', errors='replace')

    def to_json(self) -> dict:
        return {'kind': self.kind, 'vocab': self.values}

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ByteTokenizer) and self.values == other.values


Tokenizer = CharTokenizer | WordTokenizer | ByteTokenizer
KINDS = ('char', 'byte', 'word')


def reads_unknown(tok: Tokenizer) -> bool:
    """Whether tokens outside the vocabulary read as an unknown id (word models' <unk>, a
    folding char model's U+FFFD), with a warning, instead of being refused."""
    return tok.kind == 'word' or (tok.kind == 'char' and tok.folds)


def text_unit(kind: str) -> str:
    """What a loss 'per character of the text' counts: bytes for a byte model."""
    return 'byte' if kind == 'byte' else 'char'


def token_unit(kind: str) -> str:
    """One token of this kind, in words: 'char', 'byte' or 'word'."""
    return kind if kind in KINDS else 'token'


def text_units(kind: str) -> str:
    """What a text is counted in, in words: 'bytes' for a byte model, else 'characters'."""
    return 'bytes' if kind == 'byte' else 'characters'


def plural_unit(kind: str) -> str:
    """What throughput counts: 'chars', 'bytes' or (words) 'tokens'."""
    return {'char': 'chars', 'byte': 'bytes'}.get(kind, 'tokens')


def smallest_dtype(vocab_size: int) -> np.dtype:
    """The smallest unsigned dtype that holds ids 0..vocab_size-1."""
    for dtype in (np.uint8, np.uint16, np.uint32):
        if vocab_size - 1 <= np.iinfo(dtype).max:
            return np.dtype(dtype)
    raise CharLMError(f'a vocabulary of {vocab_size} tokens does not fit in uint32')


def from_json(d: dict) -> Tokenizer:
    if d.get('kind') == 'char':
        return CharTokenizer(d['vocab'], d.get('unk', False))
    if d.get('kind') == 'byte':
        return ByteTokenizer(d['vocab'])
    if d.get('kind') == 'word':
        return WordTokenizer(d['vocab'], d.get('lowercase', False))
    raise CharLMError(f'unknown tokenizer kind in checkpoint: {d.get("kind")!r}')


def build(kind: str, text: str, max_vocab: int = 0, min_count: int = 1,
          lowercase: bool = False) -> Tokenizer:
    """The tokenizer a config asks for, with its vocabulary built from the whole corpus."""
    if kind == 'char':
        return CharTokenizer.from_text(text, max_vocab, min_count)
    if kind == 'word':
        return WordTokenizer.from_text(text, max_vocab, min_count, lowercase)
    if kind == 'byte':
        return ByteTokenizer.from_counts(np.bincount(ByteTokenizer.as_bytes(text), minlength=256))
    raise CharLMError(f"unknown tokenizer {kind!r}: use 'char', 'byte' or 'word'")


# How whitespace is shown where a reader must see it (plots, axis labels).
VISIBLE = {' ': '␣', '\n': '⏎', '\t': '⇥', '\r': '␍'}


def visible(token: str) -> str:
    """Whitespace and other invisible characters as symbols one can read on an axis."""
    return ''.join(VISIBLE.get(c, c if c.isprintable() else f'U+{ord(c):04X}') for c in token)
