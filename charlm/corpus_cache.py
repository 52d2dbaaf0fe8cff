"""Prepared corpora: a corpus tokenized once into token files that runs memory-map.

  prepared, made = corpus_cache.ensure(path, preparing.Settings(), cache_dir)

A corpus is read in chunks, never whole, in two passes (`charlm.preparing`): the first
finds the vocabulary and the split boundaries and fingerprints the file; the second encodes
it into one token file per split, in the smallest unsigned dtype that holds the vocabulary.
One folder of
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
their own. `charlm.prepare` (verify=True) also checks every token file's full sha256.
"""

from __future__ import annotations

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
import time
from collections.abc import Callable

import numpy as np

from charlm import filelock, preparing, tokenizers
from charlm.errors import CharLMError

POLL_SECONDS = 0.5  # how often a process waiting for another's preparation looks again


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
        if meta.get('format') != preparing.FORMAT:
            return None, f'it was prepared in another format ({meta.get("format")})'
        src, splits, itemsize = meta['source'], meta['splits'], np.dtype(meta['dtype']).itemsize
    except (OSError, ValueError, KeyError, TypeError, CharLMError) as e:
        return None, f'it is damaged ({type(e).__name__}: {e})'
    st = path.stat()
    if (st.st_size, st.st_mtime_ns) != (src['size'], src['mtime_ns']):
        if st.st_size != src['size'] or preparing.full_digest(path) != src['sha256']:
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
            if preparing.sampled_digest(f) != info['sampled_digest'] or (
                    verify and preparing.full_digest(f) != info['sha256']):
                return None, f'it is damaged ({f.name} does not match its checksum)'
        except OSError as e:
            return None, f'it is damaged ({f.name}: {e.strerror})'
    return Prepared(directory, meta, tok), None


def _when(ns: int) -> str:
    return datetime.datetime.fromtimestamp(ns / 1e9).isoformat(sep=' ', timespec='seconds')


# ------------------------------------------------------------------ the entry point


def folder(path: pathlib.Path, s: preparing.Settings, cache_dir: pathlib.Path) -> pathlib.Path:
    """cache_dir/prepared/STEM-KEY for this file and these settings."""
    key = json.dumps({'path': str(path.resolve()), **s.key()}, sort_keys=True)
    stem = re.sub(r'[^A-Za-z0-9_.-]+', '_', path.stem)[:40] or 'corpus'
    return cache_dir / 'prepared' / f'{stem}-{hashlib.sha1(key.encode()).hexdigest()[:12]}'


def ensure(path: pathlib.Path, s: preparing.Settings, cache_dir: pathlib.Path, *,
           name: str | None = None, notice: Callable[[str], None] = print,
           progress: Callable | None = None, verify: bool = False) -> tuple[Prepared, bool]:
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
        preparing.write(path, name, s, tmp, tick)
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
