r"""Samples text from a trained model; the workdir is only read.

  python -m charlm.sample --workdir=runs/shakespeare --prompt="ROMEO:" --length=500 \
      --temperature=0.8 --top_k=20 --top_p=0.95 --num_samples=3 --seed=0

Restores the best checkpoint (--step=N: that step, as in every command) with the
tokenizer and config it was trained with, on whatever devices this machine has. The
first sample is printed as it is generated; with several samples or temperatures
(--temperature=0.5,1.0,1.5: one sample per temperature, the same seed) each comes under
a `==> sample i of n ... <==` header. An empty --prompt starts from --start (a newline).
"""

from __future__ import annotations

import math
import os
import pathlib
import sys
import warnings
from typing import TextIO

import jax
from absl import app, flags, logging

from charlm import cli, runs, sampler, tokenizers
from charlm.errors import CharLMError

FLAGS = flags.FLAGS


def define_flags() -> None:
    """Only when run as a command: importing this module defines no flags."""
    flags.DEFINE_string('workdir', None, 'A training workdir (python -m charlm.main --workdir).')
    flags.DEFINE_string('prompt', '', 'Text the samples continue; printed before each sample.')
    flags.DEFINE_string('start', '\n', 'What an empty --prompt starts from (not printed).')
    flags.DEFINE_integer('length', 500, 'Tokens per sample: characters, or words for word models.')
    flags.DEFINE_list('temperature', ['1.0'], '> 0 samples, 0 = greedy; a comma-separated list '
                      'prints one sample per temperature from the same seed.')
    flags.DEFINE_list('top_k', ['0'], 'Keep the k most likely tokens (0 = off); a comma-'
                      'separated list (5,10,20,0) prints one sample per k from the same seed.')
    flags.DEFINE_float('top_p', 1.0, 'Keep the smallest set holding this probability, after top_k '
                       '(1 = off).')
    flags.DEFINE_integer('num_samples', 1, 'Independent samples (per temperature), made at once.')
    flags.DEFINE_integer('seed', 0, 'Same seed, same samples.')
    flags.DEFINE_integer('step', None, runs.STEP_HELP)
    flags.DEFINE_integer('beam', 0, 'Beam search of this width instead of sampling (1 = '
                         'greedy): the --num_samples most likely of the beams, each with its '
                         'total log-probability.')
    flags.DEFINE_string('output', None, 'Also write the samples (as printed) to this file, once '
                        'they are all made (until then an existing file is left as it was).')
    flags.DEFINE_integer('chunk', sampler.CHUNK, 'Tokens per compiled call: output appears in '
                         'pieces of this size.')
    flags.mark_flags_as_required(['workdir'])


def parse_numbers(values: list[str], flag: str, kind: type = float) -> tuple:
    """A comma-separated flag's values as numbers of `kind` (float, int)."""
    try:
        numbers = tuple(kind(v) for v in values)
    except ValueError:
        what = 'integers' if kind is int else 'numbers'
        raise CharLMError(f'--{flag} must be {what} separated by commas, got '
                          f'{",".join(values)!r}') from None
    if not numbers:
        raise CharLMError(f'--{flag} needs at least one value')
    return numbers


def header(i: int, n: int, temperature: float, seed: int, top_k: int | None = None) -> str:
    k = '' if top_k is None else f', top_k {top_k}'
    return f'==> sample {i + 1} of {n}, temperature {temperature:g}{k}, seed {seed} <=='


def run_beam(workdir: str, prompt: str = '', length: int = 500, beam: int = 5,
             num_samples: int = 1, step: int | None = None, start: str = '\n',
             out: TextIO = sys.stdout) -> list[tuple[str, float]]:
    """The `num_samples` best of a beam search of width `beam`: (prompt + text, log-prob)."""
    if beam < 1:
        raise CharLMError(f'--beam must be a width >= 1 (1 = greedy), got {beam}')
    if not 1 <= num_samples <= beam:
        raise CharLMError(f'--num_samples={num_samples} with --beam={beam}: a beam returns at '
                          'most its width')
    saved = runs.find(workdir, step)
    tokenizer, model = saved.tokenizer, saved.model
    sampler.check_options(length, 0.0, 0, 1.0, 1, tokenizer.vocab_size, prefix='--')
    prompt_ids = sampler.encode_prompt(tokenizer, prompt, start)
    params = saved.params
    logging.info('beam search, width %d, %d %s from %s', beam, length,
                 tokenizers.plural_unit(tokenizer.kind), saved.describe())
    ids_KxL, logp_K = sampler.beam_search(model, params, prompt_ids, length, beam)
    results = []
    for b in range(num_samples):
        text = prompt + sampler.decode_continuation(tokenizer, prompt_ids, ids_KxL[b])
        results.append((text, float(logp_K[b])))
        head = (f'==> beam {b + 1} of {beam}, log-probability {logp_K[b]:.4f} nats '
                f'({logp_K[b] / math.log(2):.4f} bits) <==')
        out.write('\n' * (b > 0) + f'{head}\n{text}\n')
    out.flush()
    return results


def run(workdir: str, prompt: str = '', length: int = 500,
        temperature: float | tuple[float, ...] = 1.0, top_k: int | tuple[int, ...] = 0,
        top_p: float = 1.0, num_samples: int = 1, seed: int = 0, step: int | None = None,
        start: str = '\n', chunk: int = sampler.CHUNK, out: TextIO = sys.stdout) -> list[str]:
    """Samples from a workdir, writing to `out` as text is made; returns prompt + sample each.

    The first sample streams; the others (made at the same time) follow it, each under
    a header when there is more than one. Several `top_k` values (a tuple) each give one
    sample per temperature and stream from the same seed and random numbers, so only the
    decoding differs: the grid of temperatures x top_k, each sample headed by its settings.
    """
    top_ks = tuple(top_k) if isinstance(top_k, tuple | list) else (top_k,)
    temps = sampler.temperatures(temperature)
    if chunk <= 0:
        raise CharLMError(f'--chunk must be positive, got {chunk}')
    saved = runs.find(workdir, step)
    tokenizer, model = saved.tokenizer, saved.model
    for k in top_ks:
        sampler.check_options(length, temps, k, top_p, num_samples, tokenizer.vocab_size,
                              prefix='--')
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        prompt_ids = sampler.encode_prompt(tokenizer, prompt, start, warn=True)
    for w in caught:
        logging.warning('%s', w.message)
    params = saved.params  # the slow part, after every check that needs no arrays
    devices = jax.devices()
    logging.info('sampling %d x %d %s from %s on %s (%d device%s here)', len(temps) * num_samples,
                 length, tokenizers.plural_unit(tokenizer.kind), saved.describe(),
                 devices[0].device_kind, len(devices), '' if len(devices) == 1 else 's')
    per_k = len(temps) * num_samples
    count = per_k * len(top_ks)
    shown_k = None if len(top_ks) == 1 else top_ks  # headers name top_k when it varies
    texts = [[prompt] for _ in range(count)]
    if count > 1:
        out.write(header(0, count, temps[0], seed, shown_k and top_ks[0]) + '\n')
    out.write(prompt)
    out.flush()
    for j, k in enumerate(top_ks):  # the same key for every k: the same random numbers
        last_B = [prompt_ids] * per_k  # each stream's previous ids, for word spacing
        blocks = sampler.stream(model, params, prompt_ids, length, jax.random.key(seed),
                                num_samples=num_samples, temperature=temps, top_k=k,
                                top_p=top_p, chunk=chunk)
        for ids_BxN in blocks:
            for b, row in enumerate(ids_BxN):
                texts[j * per_k + b].append(
                    sampler.decode_continuation(tokenizer, last_B[b], row))
                last_B[b] = row
            if j == 0:
                out.write(texts[0][-1])
                out.flush()
    texts = [''.join(t) for t in texts]
    for b in range(1, count):
        k = shown_k and top_ks[b // per_k]
        out.write(f'\n\n{header(b, count, temps[(b % per_k) // num_samples], seed, k)}\n'
                  f'{texts[b]}')
    out.write('\n')
    out.flush()
    return texts


class Tee:
    """Writes to stdout and, if given, a file: --output gets what is printed, as printed.

    The file is opened at the first write (after every check and the restore) under a
    temporary name beside `path`, and renamed over `path` when the `with` block ends
    without an error: an existing file is replaced by a whole one or left as it was.
    """

    def __init__(self, path: pathlib.Path | None = None):
        self.path, self.file = path, None
        self.tmp = path and path.with_name(f'.{path.name}.{os.getpid()}.tmp')

    def __enter__(self) -> Tee:
        return self

    def __exit__(self, error, *_) -> None:
        if self.file is None:
            return
        try:
            self.file.close()
            if error is None:
                os.replace(self.tmp, self.path)
        except OSError as e:
            raise CharLMError(f'cannot write {self.path}: {e.strerror}') from None
        finally:
            self.tmp.unlink(missing_ok=True)  # gone once renamed

    def write(self, s: str) -> None:
        sys.stdout.write(s)
        if self.path is None:
            return
        try:
            if self.file is None:
                self.file = open(self.tmp, 'w', encoding='utf-8')
            self.file.write(s)
        except OSError as e:
            raise CharLMError(f'cannot write {self.path}: {e.strerror}') from None

    def flush(self) -> None:
        sys.stdout.flush()


def check_beam_flags() -> None:
    """--beam's one-line errors, before anything is read."""
    if FLAGS.beam < 1:
        raise CharLMError(f'--beam must be a width >= 1 (1 = greedy), got {FLAGS.beam}')
    drawn = [f'--{f}' for f in ('temperature', 'top_k', 'top_p') if FLAGS[f].present]
    if drawn:
        raise CharLMError(f'--beam searches for the most likely continuations and draws '
                          f'nothing: it is deterministic, so {", ".join(drawn)} would be '
                          'ignored; leave them out')


@cli.command
def main(argv):
    temps = parse_numbers(FLAGS.temperature, 'temperature')
    top_ks = parse_numbers(FLAGS.top_k, 'top_k', int)
    output = cli.check_output(FLAGS.output, flag='--output') if FLAGS.output else None
    try:
        with Tee(output) as out:
            if FLAGS['beam'].present:
                check_beam_flags()
                run_beam(FLAGS.workdir, FLAGS.prompt, FLAGS.length, FLAGS.beam,
                         FLAGS.num_samples, FLAGS.step, FLAGS.start, out=out)
            else:
                run(FLAGS.workdir, FLAGS.prompt, FLAGS.length, temps, top_ks, FLAGS.top_p,
                    FLAGS.num_samples, FLAGS.seed, FLAGS.step, FLAGS.start, FLAGS.chunk,
                    out=out)
    except KeyboardInterrupt:  # Ctrl-C while text streams: stop quietly, --output untouched
        print(file=sys.stderr)
        sys.exit(130)
    if output is not None:
        logging.info('samples written to %s', output)


if __name__ == '__main__':
    define_flags()
    app.run(main, flags_parser=cli.parse_flags)
