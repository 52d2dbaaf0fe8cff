"""Prepares a config's corpus (tokenized once into token files that runs memory-map),
checks every token file's full sha256, and says what it holds.

  python -m charlm.prepare --config=configs/shakespeare.py [--config.data.path=FILE]

Every command prepares on first use (`charlm.data.prepare`); this one does it ahead, with a
progress bar. The folder, its checks and its lock: `charlm.corpus_cache`; the two passes:
`charlm.preparing`.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable

from absl import app, flags
from ml_collections import config_flags

from charlm import cli, corpus_cache, data, tokenizers


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


# ------------------------------------------------------------------ command line


def report(prepared: corpus_cache.Prepared, made: bool) -> str:
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
    config_flags.DEFINE_config_file('config', None, 'Config file (configs/*.py).',
                                    lock_config=True)
    flags.mark_flags_as_required(['config'])


def main(argv) -> None:
    del argv
    prepared, made = data.prepare(flags.FLAGS.config, show=terminal_bar(), verify=True)
    print(report(prepared, made))


if __name__ == '__main__':
    define_flags()
    app.run(cli.command(main, jax=False), flags_parser=cli.parse_flags)
