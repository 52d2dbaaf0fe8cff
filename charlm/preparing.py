"""Preparing a corpus: two passes over the file write its token files and their metadata
into a folder (`charlm.corpus_cache` owns the folder: where it is, its checks, its lock).

  pass 1 (scan)   the vocabulary, the size in tokens, the split boundaries, the sha256
  pass 2 (write)  one token file per split (train.bin, val.bin[, test.bin]), in the
                  smallest unsigned dtype that holds the vocabulary; the sha256 again
Then tokenizer.json and, last, meta.json (the source's path, size, mtime and sha256; the
settings; split boundaries, token and character counts, dtype; each token file's sha256 and
a digest of sampled blocks). A file that changes between the passes is an error.
"""

from __future__ import annotations

import collections
import dataclasses
import datetime
import hashlib
import json
import os
import pathlib
import socket
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from charlm import corpus_reader, tokenizers
from charlm.errors import CharLMError

FORMAT = 1  # of the folder; another value is prepared again
BLOCK = 64 << 10  # the sampled digest reads up to SAMPLES blocks of this size per file
SAMPLES = 64
SPLITS = ('train', 'val', 'test')


@dataclasses.dataclass(frozen=True)
class Settings:
    """What the token files depend on besides the file: the config's data fields."""

    tokenizer: str = 'char'
    byte_vocab: str = 'seen'  # byte: the values seen, or 'all' 256
    max_vocab: int = 0  # word and char: the most frequent tokens kept, <unk> / U+FFFD included
    min_count: int = 1  # word and char: rarer tokens become <unk> / U+FFFD
    lowercase: bool = False  # word only
    val_fraction: float = 0.1
    test_fraction: float = 0.0
    val_size: int = 0  # tokens; 0 = val_fraction
    test_size: int = 0  # tokens; 0 = test_fraction

    @classmethod
    def from_config(cls, d) -> Settings:
        """From a config's `data` (a ConfigDict or a saved config's dict): fields a config
        saved before them lacks take their defaults."""
        get = d.get
        return cls(get('tokenizer', 'char'), get('byte_vocab', 'seen'), get('max_vocab', 0),
                   get('min_count', 1), get('lowercase', False), get('val_fraction', 0.1),
                   get('test_fraction', 0.0), get('val_size', 0), get('test_size', 0))

    def check(self) -> None:
        if self.tokenizer not in tokenizers.KINDS:
            raise CharLMError(f"unknown tokenizer {self.tokenizer!r}: use 'char', 'byte' or "
                              "'word'")
        if self.tokenizer == 'byte' and self.byte_vocab not in ('seen', 'all'):
            raise CharLMError(f"unknown data.byte_vocab {self.byte_vocab!r}: use 'seen' or "
                              "'all'")
        if self.tokenizer != 'byte':
            tokenizers.check_caps(self.max_vocab, self.min_count, self.tokenizer)
        for name in ('val_size', 'test_size'):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 0:
                raise CharLMError(f'data.{name} must be a number of tokens >= 0, got {value!r}')
        val = self.val_fraction if not self.val_size else 0.5
        test = self.test_fraction if not self.test_size else 0.0
        if not (0 < val < 1 and 0 <= test < 1 and val + test < 1):
            raise CharLMError(f'bad split fractions: val={self.val_fraction}, '
                              f'test={self.test_fraction} (need 0 < val, 0 <= test, '
                              'val + test < 1)')

    def key(self) -> dict[str, Any]:
        """The fields that matter for this tokenizer (others do not change the files)."""
        k = dataclasses.asdict(self)
        if self.tokenizer != 'word':
            del k['lowercase']
            if self.tokenizer == 'byte' or not self.folds:  # unfolded: the keys of before
                del k['max_vocab'], k['min_count']
        if self.tokenizer != 'byte':
            del k['byte_vocab']
        return k

    @property
    def folds(self) -> bool:
        """A char corpus whose rare characters read as U+FFFD."""
        return self.tokenizer == 'char' and tokenizers.folding(self.max_vocab, self.min_count)

    @property
    def by_tokens(self) -> bool:
        """Split boundaries counted in tokens (else in characters, as before sizes existed:
        a word corpus cut by fractions is cut in characters, each split tokenized alone)."""
        return self.tokenizer != 'word' or bool(self.val_size or self.test_size)


class Progress:
    """MB done, MB/s and ETA over both passes; `emit(line, final)` shows a line."""

    def __init__(self, total_bytes: int, emit: Callable[[str, bool], None],
                 interval: float = 0.2):
        self.total, self.emit, self.interval = 2 * max(total_bytes, 1), emit, interval
        self.t0 = self.t_last = time.perf_counter()

    def __call__(self, done: int, phase: str, final: bool = False) -> None:
        now = time.perf_counter()
        if not final and now - self.t_last < self.interval:
            return
        self.t_last = now
        rate = done / max(now - self.t0, 1e-9)
        eta = (self.total - done) / rate if rate > 0 else 0
        self.emit(f'{phase}: {done / 2e6:,.1f} / {self.total / 2e6:,.1f} MB  '
                  f'{rate / 2e6:,.1f} MB/s  ETA {int(eta) // 60}:{int(eta) % 60:02d}', final)


# ------------------------------------------------------------------ the two passes


def _boundaries(total: int, s: Settings, unit: str) -> list[int]:
    """[0, end of train, end of val, total] in units (tokens, or characters for a word
    corpus cut by fractions: nanoGPT's split, the same as before prepared corpora)."""
    n_val = s.val_size or int(total * s.val_fraction)
    n_test = s.test_size or int(total * s.test_fraction)
    if n_val + n_test >= total:
        sizes = f'data.val_size + data.test_size = {n_val + n_test:,}' if (
            s.val_size or s.test_size) else f'the val and test splits take {n_val + n_test:,}'
        raise CharLMError(f'{sizes} {unit}, but the corpus has only {total:,}: nothing is '
                          'left to train on')
    return [0, total - n_val - n_test, total - n_test, total]


def _scan(path: pathlib.Path, s: Settings, tick) -> dict[str, Any]:
    """Pass 1: the vocabulary, the size in units, the line count, the fingerprint."""
    h, lines, total, done = hashlib.sha256(), 0, 0, 0
    seen, known = set(), bytearray()
    words: collections.Counter = collections.Counter()
    codes = np.zeros(0x110000 if s.folds else 0, dtype=np.int64)  # folding: each character's count
    if s.tokenizer == 'word':
        for piece in corpus_reader.word_pieces(path):
            raw = piece.encode('utf-8')
            h.update(raw)
            lines += piece.count('\n')
            tokens = tokenizers.WordTokenizer.split(piece, s.lowercase)
            words.update(tokens)
            total += len(tokens) if s.by_tokens else len(piece)
            done += len(raw)
            tick(done, 'scan')
    else:
        for offset, chunk in corpus_reader.chunks(path, utf8=s.tokenizer == 'char'):
            h.update(chunk)
            lines += chunk.count(b'\n')
            total += corpus_reader.new_units(chunk, offset, path, s.tokenizer == 'char', seen,
                                             known)
            if s.folds:
                codes += np.bincount(corpus_reader.code_points(chunk), minlength=len(codes))
            done += len(chunk)
            tick(done, 'scan')
    folded = None
    if s.folds:
        counts = {chr(c): int(codes[c]) for c in np.flatnonzero(codes)}
        tok = tokenizers.CharTokenizer.from_counts(counts, s.max_vocab, s.min_count
                                                   ) if total else None
        gone = [c for c in counts if tok is not None and c not in tok.stoi]
        folded = {'characters': len(gone), 'occurrences': sum(counts[c] for c in gone),
                  'examples': sorted(gone, key=lambda c: -counts[c])[:20]}
    elif s.tokenizer == 'char':
        tok = tokenizers.CharTokenizer(sorted(seen)) if total else None
    elif s.tokenizer == 'byte':
        counts_256 = np.zeros(256, dtype=np.int64)
        counts_256[sorted(seen)] = 1
        tok = tokenizers.ByteTokenizer.from_counts(counts_256, s.byte_vocab) if total else None
    else:
        tok = tokenizers.WordTokenizer.from_counts(words, s.max_vocab, s.min_count,
                                                   s.lowercase) if total else None
    return {'sha256': h.hexdigest(), 'lines': lines, 'total': total, 'tokenizer': tok,
            'distinct_words': len(words) if s.tokenizer == 'word' else None, 'folded': folded}


class _SplitWriter:
    """Token ids in order into train.bin / val.bin / test.bin at the unit boundaries."""

    def __init__(self, directory: pathlib.Path, bounds: list[int], dtype: np.dtype):
        self.directory, self.bounds, self.dtype = directory, bounds, dtype
        self.files: dict[str, Any] = {}
        self.hashes: dict[str, Any] = {}
        self.tokens = collections.Counter()
        self.first: dict[str, int] = {}

    def split_at(self, unit_pos: int) -> int:
        return min(int(np.searchsorted(self.bounds, unit_pos, side='right')) - 1, 2)

    def write(self, split: str, ids: np.ndarray) -> None:
        if split not in self.files:
            self.files[split] = open(self.directory / f'{split}.bin', 'wb')
            self.hashes[split] = hashlib.sha256()
        raw = memoryview(np.ascontiguousarray(ids, dtype=self.dtype)).cast('B')
        if len(ids) and split not in self.first:
            self.first[split] = int(ids[0])
        self.files[split].write(raw)
        self.hashes[split].update(raw)
        self.tokens[split] += len(ids)

    def write_units(self, start: int, ids: np.ndarray) -> None:
        """ids of units start..start+len(ids) (one token per unit), cut at the bounds."""
        end = start + len(ids)
        if end > self.bounds[-1]:
            raise corpus_reader.Changed()  # more than pass 1 counted: the file grew
        while start < end:
            i = self.split_at(start)
            stop = min(end, self.bounds[i + 1])
            self.write(SPLITS[i], ids[start - (end - len(ids)):stop - (end - len(ids))])
            start = stop

    def close(self) -> None:
        for f in self.files.values():
            f.flush()
            os.fsync(f.fileno())
            f.close()


def _encode(path: pathlib.Path, s: Settings, tok, bounds: list[int], writer: _SplitWriter,
            tick) -> tuple[str, dict[str, int]]:
    """Pass 2: the token files; returns the file's sha256 again and each split's length in
    characters (bytes for a byte corpus)."""
    h, done, pos = hashlib.sha256(), 0, 0
    chars = collections.Counter()
    if s.tokenizer == 'word':
        split_words = tokenizers.WordTokenizer.split
        for piece in corpus_reader.word_pieces(path):
            raw = piece.encode('utf-8')
            h.update(raw)
            if s.by_tokens:
                words = split_words(piece, s.lowercase)
                ids = np.fromiter((tok.stoi.get(w, 0) for w in words), np.int64, len(words))
                _count_chars_by_tokens(piece, s.lowercase, pos, len(words), writer, chars)
                writer.write_units(pos, ids)
                pos += len(words)
            else:  # cut in characters, each part tokenized alone: the split text's tokens
                start = 0
                if pos + len(piece) > writer.bounds[-1]:
                    raise corpus_reader.Changed()
                while start < len(piece):
                    i = writer.split_at(pos)
                    take = min(len(piece) - start, writer.bounds[i + 1] - pos)
                    part = piece[start:start + take]
                    writer.write(SPLITS[i], tok.encode(part))
                    chars[SPLITS[i]] += take
                    start, pos = start + take, pos + take
            done += len(raw)
            tick(done, 'write')
    else:
        if s.tokenizer == 'byte':  # byte -> id for all 256 (unseen: 0; the sha256 tells)
            table = bytes(np.maximum(tok.table, 0).astype(np.uint8))
        elif not s.folds:
            codes_V = np.array([ord(c) for c in tok.itos], dtype=np.uint32)
            table = bytes(np.searchsorted(codes_V, np.arange(256)).clip(0, 255)
                          .astype(np.uint8))  # right for ASCII; other bytes are replaced
        for _, chunk in corpus_reader.chunks(path, utf8=s.tokenizer == 'char'):
            h.update(chunk)
            if s.tokenizer == 'byte':
                ids = chunk if tok.vocab_size == 256 else chunk.translate(table)
            elif s.folds:  # frequency order: a lookup table over code points
                ids = tok.ids_of_codes(corpus_reader.code_points(chunk)).astype(writer.dtype)
            else:
                ids = corpus_reader.char_ids(chunk, table, codes_V, writer.dtype)
            ids = np.frombuffer(ids, np.uint8) if isinstance(ids, bytes) else ids
            writer.write_units(pos, ids)
            pos += len(ids)
            done += len(chunk)
            tick(done, 'write')
        for i, split in enumerate(SPLITS):
            chars[split] = bounds[i + 1] - bounds[i]
    return h.hexdigest(), dict(chars)


def _count_chars_by_tokens(piece, lowercase, pos, n, writer, chars) -> None:
    """Characters of each split when a word corpus is cut by token counts: a piece's
    characters go to the split of the token they precede."""
    i0, i1 = writer.split_at(pos), writer.split_at(pos + n - 1) if n else writer.split_at(pos)
    if i0 == i1:
        chars[SPLITS[i0]] += len(piece)
        return
    text = piece.lower() if lowercase else piece
    starts = [m.start() for m in tokenizers._WORD_RE.finditer(text)]
    prev = 0
    for i in range(i0, i1):
        cut = starts[writer.bounds[i + 1] - pos]
        chars[SPLITS[i]] += cut - prev
        prev = cut
    chars[SPLITS[i1]] += len(text) - prev


def _source_info(path: pathlib.Path, name: str) -> dict[str, Any]:
    st = path.stat()
    return {'name': name, 'path': str(path.resolve()), 'size': st.st_size,
            'mtime_ns': st.st_mtime_ns}


def write(path: pathlib.Path, name: str, s: Settings, tmp: pathlib.Path, tick
           ) -> dict[str, Any]:
    """Both passes into `tmp`; the metadata is written last."""
    t0 = time.perf_counter()
    before = _source_info(path, name)
    if before['size'] == 0:
        raise CharLMError(f'corpus file is empty: {name}')
    scan = _scan(path, s, tick)
    tok = scan['tokenizer']
    unit = 'tokens' if s.by_tokens else 'characters'
    if tok is None:
        raise CharLMError(f'corpus file has no {tokenizers.token_unit(s.tokenizer)} tokens: '
                          f'{name}')
    bounds = _boundaries(scan['total'], s, unit)
    dtype = tokenizers.smallest_dtype(tok.vocab_size)
    writer = _SplitWriter(tmp, bounds, dtype)
    try:
        sha, chars = _encode(path, s, tok, bounds, writer, tick)
    except corpus_reader.Changed:
        sha = None
    finally:
        writer.close()
    if sha != scan['sha256'] or _source_info(path, name) != before:
        raise CharLMError(f'corpus file {name} changed while it was being prepared: prepare '
                          'it again once it is complete')
    splits = {}
    for i, split in enumerate(SPLITS):
        n = writer.tokens.get(split)
        if n is None and bounds[i + 1] == bounds[i]:
            continue
        n = n or 0
        if s.tokenizer == 'word':  # all but the first token's characters are predicted
            first = writer.first.get(split)
            head = len(tok.decode([first])) if first is not None else 0
            predicted = chars.get(split, 0) - head
        else:
            predicted = max(n - 1, 0)
        f = tmp / f'{split}.bin'
        if not f.exists():
            f.touch()
        splits[split] = {'tokens': n, 'start': bounds[i], 'end': bounds[i + 1],
                         'characters': chars.get(split, 0), 'predicted_characters': predicted,
                         'sha256': writer.hashes[split].hexdigest() if split in writer.hashes
                         else hashlib.sha256().hexdigest(),
                         'sampled_digest': sampled_digest(f)}
    meta = {
        'format': FORMAT, 'source': before | {'sha256': scan['sha256']},
        'settings': s.key(), 'tokenizer': s.tokenizer, 'vocab_size': tok.vocab_size,
        'dtype': dtype.name, 'split_unit': unit, 'units': scan['total'],
        'lines': scan['lines'], 'distinct_words': scan['distinct_words'], 'splits': splits,
        **({'folded': scan['folded']} if scan['folded'] else {}),
        'prepared_at': datetime.datetime.now().astimezone().isoformat(timespec='seconds'),
        'prepared_by': f'{socket.gethostname()}:{os.getpid()}',
        'seconds': round(time.perf_counter() - t0, 3),
    }
    _write_json(tmp / 'tokenizer.json', tok.to_json())
    _write_json(tmp / 'meta.json', meta)
    tick(2 * before['size'], 'finished', final=True)
    return meta


def _write_json(path: pathlib.Path, obj) -> None:
    with open(path, 'w', encoding='utf-8') as f:
        json.dump(obj, f, indent=1, ensure_ascii=False)
        f.flush()
        os.fsync(f.fileno())


def sampled_digest(path: pathlib.Path) -> str:
    """sha256 of the size and of up to SAMPLES evenly spread blocks: cheap on every use,
    it catches a truncated, zeroed or overwritten region of any size above a block."""
    size = path.stat().st_size
    h = hashlib.sha256(str(size).encode())
    with open(path, 'rb') as f:
        if size <= SAMPLES * BLOCK:
            h.update(f.read())
        else:
            for i in range(SAMPLES):
                f.seek(i * (size - BLOCK) // (SAMPLES - 1))
                h.update(f.read(BLOCK))
    return h.hexdigest()


def full_digest(path: pathlib.Path) -> str:
    h = hashlib.sha256()
    with open(path, 'rb') as f:
        while block := f.read(corpus_reader.CHUNK):
            h.update(block)
    return h.hexdigest()
