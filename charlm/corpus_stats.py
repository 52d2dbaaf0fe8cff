r"""What a config's corpus holds: size, vocabulary, splits, and its most frequent tokens.

  python -m charlm.corpus_stats --config=configs/shakespeare.py --out=chars.png
  python -m charlm.corpus_stats --config=configs/shakespeare_words.py --out=words.png
  python -m charlm.corpus_stats --config=configs/shakespeare.py \
      --config.data.path=/path/to/file.txt --top=40 --out=chars.png

Counts characters (bytes) for a char (byte) config and word tokens for a word config
(with the share the vocabulary cap turns into <unk>), from the prepared corpus
(`charlm.corpus_cache`), so it runs in bounded memory on a corpus of any size. Whitespace is
shown as ␣ (space), ⏎ (newline) and ⇥ (tab), in the printout and on the bar chart.
"""

from __future__ import annotations

import pathlib
from typing import Any

import ml_collections
import numpy as np
from absl import app, flags
from ml_collections import config_flags

from charlm import cli, data, plot, tokenizers
from charlm.errors import CharLMError


def token_counts(prepared) -> np.ndarray:
    """How often each token id occurs in all splits, read from the token files in chunks."""
    counts = np.zeros(prepared.tokenizer.vocab_size, dtype=np.int64)
    for split, info in prepared.splits.items():
        if not info['tokens']:
            continue
        ids = np.memmap(prepared.path(split), dtype=prepared.meta['dtype'], mode='r')
        for i in range(0, len(ids), CHUNK):
            counts += np.bincount(ids[i:i + CHUNK], minlength=len(counts))
        del ids
    return counts


CHUNK = 1 << 24


def corpus_stats(config: ml_collections.ConfigDict, top: int = 30) -> dict[str, Any]:
    """Sizes, splits, vocabulary and the `top` most frequent tokens of the config's
    prepared corpus (prepared on first use); memory does not grow with the corpus."""
    prepared, _ = data.prepare(config)
    m, tok = prepared.meta, prepared.tokenizer
    counts = token_counts(prepared)
    kind = m['tokenizer']
    size = {k: v['characters'] for k, v in m['splits'].items()}
    stats = {
        'path': config.data.path, 'tokenizer': kind, 'vocab_size': tok.vocab_size,
        'characters': m['source']['size'] if kind == 'byte' else sum(size.values()),
        'lines': m['lines'], 'split_characters': size, 'split_unit': m['split_unit'],
        'split_tokens': {k: v['tokens'] for k, v in m['splits'].items()},
        'tokens': int(counts.sum()), 'prepared': str(prepared.directory),
    }
    ids = np.arange(tok.vocab_size)
    if kind == 'word':  # the words of the vocabulary; <unk> stands for all the others
        stats.update(word_tokens=stats['tokens'], distinct_words=m['distinct_words'],
                     unk_share=float(counts[0] / max(stats['tokens'], 1)))
        ids = ids[1:]
    else:
        stats['unk_share'] = 0.0
        if 'folded' in m:  # rare characters read as U+FFFD (id 0)
            stats.update(folded=m['folded'], unk_share=float(counts[0] / max(stats['tokens'], 1)))
    # Ties in the order the word vocabulary breaks them: alphabetically.
    ranked = sorted(ids, key=lambda i: (-counts[i], tok.itos[i]))[:top]
    total = max(stats['tokens'], 1)
    stats['top'] = [(tok.itos[i], int(counts[i]), int(counts[i]) / total) for i in ranked]
    return stats


def report(stats: dict[str, Any]) -> str:
    s = stats
    kind = s['tokenizer']
    counted = tokenizers.text_units(kind)
    split = ', '.join(f'{k} {v:,}' for k, v in s['split_tokens'].items() if v)
    size = f'{s["characters"]:,} {counted}, {s["lines"]:,} lines'
    if kind == 'word':
        size += (f', {s["word_tokens"]:,} word tokens ({s["distinct_words"]:,} distinct '
                 'words)')
    lines = [f'corpus: {s["path"]} (prepared in {s["prepared"]})', size,
             f'splits (tokens, cut by {s["split_unit"]}): {split}']
    if kind == 'word':
        lines.append(f'vocabulary: {s["vocab_size"]:,} words with <unk>; '
                     f'{100 * s["unk_share"]:.2f}% of the word tokens read as <unk>')
    else:
        lines.append(f'vocabulary: {s["vocab_size"]} {counted}')
        if 'folded' in s:
            f = s['folded']
            lines.append(f'folded into U+FFFD: {f["characters"]:,} rare characters, '
                         f'{f["occurrences"]:,} occurrences ({100 * s["unk_share"]:.3f}% of '
                         'the characters)')
    unit = 'word tokens' if kind == 'word' else counted
    lines.append(f'most frequent {unit} (count, share):')
    width = max(len(tokenizers.visible(t)) for t, _, _ in s['top'])
    for rank, (t, n, share) in enumerate(s['top'], 1):
        shown = tokenizers.visible(t)
        lines.append(f'  {rank:>3}. {shown:<{width}}  {n:>12,}  {100 * share:6.2f}%')
    return '\n'.join(lines)


def draw(stats: dict[str, Any], out: str) -> str:
    """A bar chart of the top tokens' shares; whitespace bars drawn in another colour."""
    top = stats['top']
    words = stats['tokenizer'] == 'word'
    labels = [tokenizers.visible(t) for t, _, _ in top]
    shares = [100 * share for _, _, share in top]
    colors = ['#d97706' if t.isspace() else '#3b82f6' for t, _, _ in top]
    fig = plot.new_figure(figsize=(max(7.0, 0.34 * len(top) + 1.5), 4.6))
    ax = fig.subplots()
    ax.bar(range(len(top)), shares, color=colors, edgecolor='white')
    ax.set_xticks(range(len(top)))
    ax.set_xticklabels(labels, fontfamily='DejaVu Sans Mono', fontsize=12 if not words else 11,
                       rotation=90 if words else 0)
    for label, (t, _, _) in zip(ax.get_xticklabels(), top, strict=True):
        if t.isspace():  # the symbols are thin: make them stand out like their bars
            label.set_color('#b45309')
            label.set_fontweight('bold')
    ax.set_xlim(-0.6, len(top) - 0.4)
    unit = 'word tokens' if words else tokenizers.text_units(stats['tokenizer'])
    ax.set_ylabel(f'share of {unit} (%)')
    name = 'built-in Shakespeare' if stats['path'] in ('', data.BUILTIN) else \
        pathlib.Path(stats['path']).name
    legend = '⏎ newline' if words else '␣ space, ⏎ newline'
    ax.set_title(f'{len(top)} most frequent {unit} of {name} ({stats["tokens"]:,} in all; '
                 f'{legend})', fontsize=11)
    ax.grid(axis='y', alpha=0.3)
    return plot.save_figure(fig, out)


# ------------------------------------------------------------------ command line

FLAGS = flags.FLAGS


def define_flags() -> None:
    """Only when run as a command: importing this module defines no flags."""
    config_flags.DEFINE_config_file('config', None, 'Config file (configs/*.py).',
                                    lock_config=True)
    flags.DEFINE_integer('top', 30, 'How many of the most frequent tokens to list and draw.')
    flags.DEFINE_string('out', None, 'The bar chart to write (.png, .pdf, .svg, ...; none if '
                        'unset).')
    flags.mark_flags_as_required(['config'])


@cli.command
def main(argv):
    if FLAGS.top <= 0:
        raise CharLMError(f'--top={FLAGS.top}: need at least 1')
    out = FLAGS.out and str(cli.check_output(FLAGS.out, cli.figure_formats()))
    stats = corpus_stats(FLAGS.config, FLAGS.top)
    print(report(stats))
    if out:
        print(f'wrote {draw(stats, out)}')


if __name__ == '__main__':
    define_flags()
    app.run(main, flags_parser=cli.parse_flags)
