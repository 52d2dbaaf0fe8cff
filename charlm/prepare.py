r"""Prepared corpora: a corpus tokenized once into token files that runs memory-map.

  python -m charlm.prepare --config=configs/shakespeare.py [--config.data.path=FILE]

A corpus is read in chunks, never whole, in two passes: the first finds the vocabulary
and the split boundaries and fingerprints the file; the second encodes it into one token
file per split, in the smallest unsigned dtype that holds the vocabulary. One folder of
`data.cache_dir` (prepared/NAME-KEY/, KEY from the file's path and the data settings):
  train.bin, val.bin[, test.bin]  the token ids, raw: np.memmap reads windows of them
  tokenizer.json                  the tokenizer, as saved beside each checkpoint
  meta.json                       the source's path, size, mtime and sha256; the settings;
                                  split boundaries, token and character counts, dtype;
                                  each token file's sha256 and a digest of sampled blocks
Every command prepares on first use; afterwards a run only reads the windows it feeds.

Nothing half-written is trusted: a preparation writes into a temporary folder and renames
it into place when complete. A prepared folder is checked on every use (the source's size
and mtime, else its fingerprint; each token file's size and sampled blocks); a changed
source or a damaged folder is prepared again, with a notice. One process prepares a folder
at a time: a lock file beside it (`charlm.filelock`) makes the others wait, so hosts
sharing a filesystem prepare once and hosts with their own cache folders each prepare
their own. `charlm.prepare` also checks every token file's full sha256.
"""

from __future__ import annotations

import collections
import dataclasses
import datetime
import errno
import hashlib
import json
import os
import pathlib
import re
import secrets
import shutil
import socket
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from charlm import filelock, tokenizers
from charlm.errors import CharLMError

FORMAT = 1  # of the folder; another value is prepared again
CHUNK = 16 << 20  # bytes read at a time: bounds the memory of a preparation
BLOCK = 64 << 10  # the sampled digest reads up to SAMPLES blocks of this size per file
SAMPLES = 64
POLL_SECONDS = 0.5
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


@dataclasses.dataclass
class Prepared:
    """A checked prepared folder: its metadata and tokenizer; the token files beside."""

    directory: pathlib.Path
    meta: dict
    tokenizer: tokenizers.Tokenizer

    def path(self, split: str) -> pathlib.Path:
        return self.directory / f'{split}.bin'

    @property
    def splits(self) -> dict[str, dict]:
        return self.meta['splits']


# ------------------------------------------------------------------ reading the source


def _utf8_cut(chunk: bytes) -> int:
    """Where a chunk ends on a whole UTF-8 sequence: len(chunk), or before a cut one."""
    for back in range(1, min(4, len(chunk)) + 1):
        b = chunk[-back]
        if b & 0xC0 != 0x80:  # a lead byte (or ASCII)
            need = 1 if b < 0x80 else 2 if b < 0xE0 else 3 if b < 0xF0 else 4
            return len(chunk) if need <= back else len(chunk) - back
    return len(chunk)


def _chunks(path: pathlib.Path, utf8: bool) -> Iterator[tuple[int, bytes]]:
    """(offset, bytes) of the file, CHUNK at a time; `utf8` keeps sequences whole."""
    offset, rest = 0, b''
    with open(path, 'rb') as f:
        while True:
            data = f.read(CHUNK)
            chunk = rest + data
            if not data:
                if chunk:
                    yield offset, chunk
                return
            cut = _utf8_cut(chunk) if utf8 else len(chunk)
            chunk, rest = chunk[:cut], chunk[cut:]
            if chunk:
                yield offset, chunk
                offset += len(chunk)


def _decode(chunk: bytes, offset: int, path: pathlib.Path) -> str:
    try:
        return chunk.decode('utf-8')
    except UnicodeDecodeError as e:
        raise CharLMError(f'corpus file is not UTF-8 text: {path} (byte {offset + e.start}: '
                          f'{e.reason}); read it as bytes with --config.data.tokenizer=byte'
                          ) from None


# Characters and bytes go through bytes.translate (C speed) and numpy: a str of the chunk is
# made only to check that it is UTF-8, and to list characters not seen before.


_CONTINUATION = bytes(range(0x80, 0xC0))  # the bytes that continue a UTF-8 sequence


def _new_units(chunk: bytes, offset: int, path: pathlib.Path, char: bool, seen: set,
               known: bytearray) -> int:
    """Adds the chunk's unseen bytes (characters) to `seen`; returns how many units it has.

    `known` holds the byte values already seen (ASCII ones, for characters): translate()
    deletes them, so what is left is short after the first chunk.
    """
    ascii_only = not char or chunk.isascii()
    if not ascii_only:
        _decode(chunk, offset, path)  # one-line error if it is not UTF-8
    rest = chunk.translate(None, bytes(known))
    if rest:
        new = set(rest.decode('utf-8')) if char else set(rest)
        seen |= new
        known.extend([ord(c) for c in new if ord(c) < 128] if char else new)
    return len(chunk) if ascii_only else len(chunk.translate(None, _CONTINUATION))


def _char_ids(chunk: bytes, ascii_table: bytes, codes_V: np.ndarray, dtype: np.dtype
              ) -> np.ndarray | bytes:
    """The chunk's character ids: one translate() maps ASCII bytes to their ids (below 128:
    the vocabulary is sorted) and drops continuation bytes, leaving one byte a character;
    each multi-byte character's id then comes from its code point."""
    ids = chunk.translate(ascii_table, _CONTINUATION)
    if chunk.isascii():
        return ids if dtype == np.uint8 else np.frombuffer(ids, np.uint8).astype(dtype)
    b = np.frombuffer(chunk, dtype=np.uint8)
    ids_N = np.frombuffer(ids, np.uint8).astype(dtype)
    lead = np.flatnonzero(b >= 0xC0)
    nxt = [b[np.minimum(lead + k, len(b) - 1)].astype(np.uint32) & 0x3F for k in (1, 2, 3)]
    first = b[lead].astype(np.uint32)
    cp = np.where(first < 0xE0, (first & 0x1F) << 6 | nxt[0],
                  np.where(first < 0xF0, (first & 0x0F) << 12 | nxt[0] << 6 | nxt[1],
                           (first & 0x07) << 18 | nxt[0] << 12 | nxt[1] << 6 | nxt[2]))
    at = np.minimum(np.searchsorted(codes_V, cp), len(codes_V) - 1)
    if not np.array_equal(codes_V[at], cp):
        raise _Changed()  # a character pass 1 never saw: the file is changing
    extra = 1 + (first >= 0xE0) + (first >= 0xF0)  # continuation bytes after each lead
    ids_N[lead - np.concatenate([[0], np.cumsum(extra)[:-1]])] = at
    return ids_N


_SPACE = re.compile(r'\s(?=\S*\Z)')  # the last whitespace character


def _word_pieces(path: pathlib.Path) -> Iterator[str]:
    """The file's text in pieces cut after whitespace: no word token spans two pieces."""
    carry = ''
    for offset, chunk in _chunks(path, utf8=True):
        text = carry + _decode(chunk, offset, path)
        m = _SPACE.search(text, max(len(text) - 4096, 0)) or _SPACE.search(text)
        cut = m.end() if m else 0
        if cut:
            yield text[:cut]
        carry = text[cut:]
    if carry:
        yield carry


# ------------------------------------------------------------------ progress


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


def terminal_bar(stream=sys.stderr) -> Callable[[str, bool], None]:
    """A progress bar redrawn in place on a terminal; a line every ~10 s elsewhere."""
    last = [0.0]

    def emit(line: str, final: bool) -> None:
        if stream.isatty():
            stream.write('\r' + line.ljust(72) + ('\n' if final else ''))
        elif final or time.monotonic() - last[0] > 10:
            stream.write(line + '\n')
            last[0] = time.monotonic()
        stream.flush()
    return emit


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
        for piece in _word_pieces(path):
            raw = piece.encode('utf-8')
            h.update(raw)
            lines += piece.count('\n')
            tokens = tokenizers.WordTokenizer.split(piece, s.lowercase)
            words.update(tokens)
            total += len(tokens) if s.by_tokens else len(piece)
            done += len(raw)
            tick(done, 'scan')
    else:
        for offset, chunk in _chunks(path, utf8=s.tokenizer == 'char'):
            h.update(chunk)
            lines += chunk.count(b'\n')
            total += _new_units(chunk, offset, path, s.tokenizer == 'char', seen, known)
            if s.folds:
                codes += np.bincount(_code_points(chunk), minlength=len(codes))
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


def _code_points(chunk: bytes) -> np.ndarray:
    """The chunk's characters as uint32 code points (the chunk is whole UTF-8)."""
    return np.frombuffer(chunk.decode('utf-8').encode('utf-32-le'), dtype=np.uint32)


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
            raise _Changed()  # more than pass 1 counted: the file grew
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
        for piece in _word_pieces(path):
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
                    raise _Changed()
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
        for _, chunk in _chunks(path, utf8=s.tokenizer == 'char'):
            h.update(chunk)
            if s.tokenizer == 'byte':
                ids = chunk if tok.vocab_size == 256 else chunk.translate(table)
            elif s.folds:  # frequency order: a lookup table over code points
                ids = tok.ids_of_codes(_code_points(chunk)).astype(writer.dtype)
            else:
                ids = _char_ids(chunk, table, codes_V, writer.dtype)
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


class _Changed(Exception):
    pass


def _source_info(path: pathlib.Path, name: str) -> dict[str, Any]:
    st = path.stat()
    return {'name': name, 'path': str(path.resolve()), 'size': st.st_size,
            'mtime_ns': st.st_mtime_ns}


def _write(path: pathlib.Path, name: str, s: Settings, tmp: pathlib.Path, tick
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
    except _Changed:
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
                         'sampled_digest': _sampled_digest(f)}
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


def _sampled_digest(path: pathlib.Path) -> str:
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


def _full_digest(path: pathlib.Path) -> str:
    h = hashlib.sha256()
    with open(path, 'rb') as f:
        while block := f.read(CHUNK):
            h.update(block)
    return h.hexdigest()


# ------------------------------------------------------------------ checking a folder


def _check(directory: pathlib.Path, path: pathlib.Path, verify: bool = False
           ) -> tuple[Prepared | None, str | None]:
    """(prepared, None) if it can be used; (None, why) if stale or damaged; (None, None)
    if there is none."""
    if not directory.is_dir():
        return None, None
    try:
        meta = json.loads((directory / 'meta.json').read_text(encoding='utf-8'))
        tok = tokenizers.from_json(json.loads((directory / 'tokenizer.json').read_text(
            encoding='utf-8')))
        if meta.get('format') != FORMAT:
            return None, f'it was prepared in another format ({meta.get("format")})'
        src, splits, itemsize = meta['source'], meta['splits'], np.dtype(meta['dtype']).itemsize
    except (OSError, ValueError, KeyError, TypeError, CharLMError) as e:
        return None, f'it is damaged ({type(e).__name__}: {e})'
    st = path.stat()
    if (st.st_size, st.st_mtime_ns) != (src['size'], src['mtime_ns']):
        if st.st_size != src['size'] or _full_digest(path) != src['sha256']:
            return None, (f'the corpus file changed since it was prepared (size '
                          f'{src["size"]:,} -> {st.st_size:,} bytes, modified '
                          f'{_when(src["mtime_ns"])} -> {_when(st.st_mtime_ns)})')
    for split, info in splits.items():
        f = directory / f'{split}.bin'
        try:
            size = f.stat().st_size
            if size != info['tokens'] * itemsize:
                return None, (f'it is damaged ({f.name} has {size:,} bytes, not '
                              f'{info["tokens"] * itemsize:,})')
            if _sampled_digest(f) != info['sampled_digest'] or (
                    verify and _full_digest(f) != info['sha256']):
                return None, f'it is damaged ({f.name} does not match its checksum)'
        except OSError as e:
            return None, f'it is damaged ({f.name}: {e.strerror})'
    return Prepared(directory, meta, tok), None


def _when(ns: int) -> str:
    return datetime.datetime.fromtimestamp(ns / 1e9).isoformat(sep=' ', timespec='seconds')


# ------------------------------------------------------------------ the entry point


def folder(path: pathlib.Path, s: Settings, cache_dir: pathlib.Path) -> pathlib.Path:
    """cache_dir/prepared/STEM-KEY for this file and these settings."""
    key = json.dumps({'path': str(path.resolve()), **s.key()}, sort_keys=True)
    stem = re.sub(r'[^A-Za-z0-9_.-]+', '_', path.stem)[:40] or 'corpus'
    return cache_dir / 'prepared' / f'{stem}-{hashlib.sha1(key.encode()).hexdigest()[:12]}'


def ensure(path: pathlib.Path, s: Settings, cache_dir: pathlib.Path, *, name: str | None = None,
           notice: Callable[[str], None] = print, progress: Callable | None = None,
           verify: bool = False) -> tuple[Prepared, bool]:
    """The prepared folder of `path` (a file), made if missing, stale or damaged; and
    whether this call made it. `name` is how errors and notices name the corpus."""
    name = name or str(path)
    s.check()
    directory = folder(path, s, cache_dir)
    prepared, _ = _check(directory, path, verify)
    if prepared:
        return prepared, False
    waited = False
    while True:  # one preparer at a time; a dead one's lock is free (filelock)
        try:
            directory.parent.mkdir(parents=True, exist_ok=True)
            lock = filelock.FileLock(directory.with_name(directory.name + '.lock'),
                                     'charlm.prepare')
            break
        except filelock.Held as e:
            if not waited:
                notice(f'waiting for {e} to prepare {name} in {directory}')
                waited = True
            time.sleep(POLL_SECONDS)
        except OSError as e:
            raise _unwritable(cache_dir, e) from None
    if lock.took_over:
        notice(f'{lock.path} was held by {filelock.describe(lock.took_over)}, which is gone; '
               'preparing here')
    try:
        prepared, why = _check(directory, path, verify)  # another process may have done it
        if prepared:
            return prepared, False
        if why:
            notice(f'the prepared corpus {directory} cannot be used: {why}; preparing it again')
        _build(path, name, s, directory, progress or (lambda *a, **k: None))
    finally:
        lock.release()
    prepared, why = _check(directory, path)
    if not prepared:
        raise CharLMError(f'the corpus prepared in {directory} does not check ({why}): run '
                          'the command again')
    return prepared, True


def _build(path, name, s, directory, tick) -> None:
    for old in directory.parent.glob(f'.{directory.name}.*'):  # a killed preparation's
        shutil.rmtree(old, ignore_errors=True)
    tmp = directory.with_name(f'.{directory.name}.tmp-{socket.gethostname()}-{os.getpid()}')
    try:
        tmp.mkdir()
        _write(path, name, s, tmp, tick)
        old = None
        if directory.exists():  # stale or damaged: out of the way, then removed
            old = directory.with_name(f'.{directory.name}.old-{secrets.token_hex(4)}')
            os.rename(directory, old)
        os.rename(tmp, directory)  # the one moment the folder appears, complete
        if old:
            shutil.rmtree(old, ignore_errors=True)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise _unwritable(directory.parent.parent, e) from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _unwritable(cache_dir: pathlib.Path, e: OSError) -> CharLMError:
    why = 'the disk is full' if e.errno in (errno.ENOSPC, errno.EDQUOT) else e.strerror
    return CharLMError(f'cannot write the prepared corpus to {cache_dir}: {why} '
                       f'({e.filename or cache_dir}); free space or set '
                       '--config.data.cache_dir to a writable folder')


# ------------------------------------------------------------------ command line


def report(prepared: Prepared, made: bool) -> str:
    m = prepared.meta
    src, unit = m['source'], tokenizers.token_unit(m['tokenizer'])
    lines = [f'{"prepared" if made else "already prepared (checked)"}: {src["name"]} '
             f'({src["size"]:,} bytes, sha256 {src["sha256"][:16]}...)'
             + (f' in {m["seconds"]:.1f} s, {src["size"] / 1e6 / max(m["seconds"], 1e-9):,.1f}'
                ' MB/s' if made else ''),
             f'{m["vocab_size"]:,} {unit} tokens, {m["dtype"]} ids, split by '
             f'{m["split_unit"]}: {prepared.directory}']
    if 'folded' in m:
        lines.append(folded_line(m['folded']))
    for split, info in m['splits'].items():
        path = prepared.path(split)
        lines.append(f'  {path.name:<9} {info["tokens"]:>14,} tokens  '
                     f'{path.stat().st_size:>14,} bytes  ({m["split_unit"]} '
                     f'{info["start"]:,}..{info["end"]:,})')
    lines.append('  tokenizer.json, meta.json')
    return '\n'.join(lines)


def folded_line(folded: dict) -> str:
    """How many rare characters a folding vocabulary reads as U+FFFD."""
    shown = ''.join(tokenizers.visible(c) for c in folded['examples'][:10])
    return (f'  folded into U+FFFD: {folded["characters"]:,} rare characters, '
            f'{folded["occurrences"]:,} occurrences' + (f' (most frequent: {shown})'
                                                        if shown else ''))


def define_flags() -> None:
    """Only when run as a command: importing this module defines no flags."""
    from absl import flags
    from ml_collections import config_flags
    config_flags.DEFINE_config_file('config', None, 'Config file (configs/*.py).',
                                    lock_config=True)
    flags.mark_flags_as_required(['config'])


def main(argv) -> None:
    from absl import flags

    from charlm import data
    del argv
    prepared, made = data.prepare(flags.FLAGS.config, show=terminal_bar(), verify=True)
    print(report(prepared, made))


if __name__ == '__main__':
    from absl import app

    from charlm import cli
    define_flags()
    app.run(cli.command(main, jax=False), flags_parser=cli.parse_flags)
