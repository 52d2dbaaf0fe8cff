"""A corpus file read in chunks, never whole, for `charlm.preparing`'s two passes.

Chunks end on whole UTF-8 sequences. Characters and bytes go through bytes.translate (C
speed) and numpy: a str of a chunk is made only to check that it is UTF-8, and to list
characters not seen before. A word corpus is read in pieces cut after whitespace, so no
word token spans two pieces.
"""

from __future__ import annotations

import pathlib
import re
from collections.abc import Iterator

import numpy as np

from charlm.errors import CharLMError

CHUNK = 16 << 20  # bytes read at a time: bounds the memory of a preparation
_CONTINUATION = bytes(range(0x80, 0xC0))  # the bytes that continue a UTF-8 sequence


class Changed(Exception):
    """The file changed between the passes (a character, or a length, pass 1 never saw)."""


def _utf8_cut(chunk: bytes) -> int:
    """Where a chunk ends on a whole UTF-8 sequence: len(chunk), or before a cut one."""
    for back in range(1, min(4, len(chunk)) + 1):
        b = chunk[-back]
        if b & 0xC0 != 0x80:  # a lead byte (or ASCII)
            need = 1 if b < 0x80 else 2 if b < 0xE0 else 3 if b < 0xF0 else 4
            return len(chunk) if need <= back else len(chunk) - back
    return len(chunk)


def chunks(path: pathlib.Path, utf8: bool) -> Iterator[tuple[int, bytes]]:
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


def decode(chunk: bytes, offset: int, path: pathlib.Path) -> str:
    try:
        return chunk.decode('utf-8')
    except UnicodeDecodeError as e:
        raise CharLMError(f'corpus file is not UTF-8 text: {path} (byte {offset + e.start}: '
                          f'{e.reason}); read it as bytes with --config.data.tokenizer=byte'
                          ) from None


def new_units(chunk: bytes, offset: int, path: pathlib.Path, char: bool, seen: set,
               known: bytearray) -> int:
    """Adds the chunk's unseen bytes (characters) to `seen`; returns how many units it has.

    `known` holds the byte values already seen (ASCII ones, for characters): translate()
    deletes them, so what is left is short after the first chunk.
    """
    ascii_only = not char or chunk.isascii()
    if not ascii_only:
        decode(chunk, offset, path)  # one-line error if it is not UTF-8
    rest = chunk.translate(None, bytes(known))
    if rest:
        new = set(rest.decode('utf-8')) if char else set(rest)
        seen |= new
        known.extend([ord(c) for c in new if ord(c) < 128] if char else new)
    return len(chunk) if ascii_only else len(chunk.translate(None, _CONTINUATION))


def char_ids(chunk: bytes, ascii_table: bytes, codes_V: np.ndarray, dtype: np.dtype
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
        raise Changed()  # a character pass 1 never saw: the file is changing
    extra = 1 + (first >= 0xE0) + (first >= 0xF0)  # continuation bytes after each lead
    ids_N[lead - np.concatenate([[0], np.cumsum(extra)[:-1]])] = at
    return ids_N


_SPACE = re.compile(r'\s(?=\S*\Z)')  # the last whitespace character


def word_pieces(path: pathlib.Path) -> Iterator[str]:
    """The file's text in pieces cut after whitespace: no word token spans two pieces."""
    carry = ''
    for offset, chunk in chunks(path, utf8=True):
        text = carry + decode(chunk, offset, path)
        m = _SPACE.search(text, max(len(text) - 4096, 0)) or _SPACE.search(text)
        cut = m.end() if m else 0
        if cut:
            yield text[:cut]
        carry = text[cut:]
    if carry:
        yield carry


def code_points(chunk: bytes) -> np.ndarray:
    """The chunk's characters as uint32 code points (the chunk is whole UTF-8)."""
    return np.frombuffer(chunk.decode('utf-8').encode('utf-32-le'), dtype=np.uint32)
