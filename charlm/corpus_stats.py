r"""What a config's corpus holds: size, vocabulary, splits, and its most frequent tokens.

  python -m charlm.corpus_stats --config=configs/shakespeare.py --out=chars.png
  python -m charlm.corpus_stats --config=configs/shakespeare_words.py --out=words.png
  python -m charlm.corpus_stats --config=configs/shakespeare.py \
      --config.data.path=/path/to/file.txt --top=40 --out=chars.png

Counts characters for a char config and word tokens for a word config (with the share
the vocabulary cap turns into <unk>). Whitespace is shown as ␣ (space), ⏎ (newline)
and ⇥ (tab), in the printout and on the bar chart.
"""

from __future__ import annotations

import collections
import pathlib
from typing import Any

import ml_collections
from absl import app, flags
from ml_collections import config_flags

from charlm import cli, data, plot, tokenizers
from charlm.errors import CharLMError


def corpus_stats(config: ml_collections.ConfigDict, top: int = 30) -> dict[str, Any]:
    d = config.data
    text = data.load_text(d.path, d.cache_dir or None)
    splits = data.split_text(text, d.val_fraction, d.test_fraction)
    words = tokenizers.WordTokenizer.split(text, d.lowercase if d.tokenizer == 'word' else False)
    stats = {
        'path': d.path, 'tokenizer': d.tokenizer, 'characters': len(text),
        'lines': text.count('\n') + (not text.endswith('\n')),
        'distinct_characters': len(set(text)), 'word_tokens': len(words),
        'distinct_words': len(set(words)),
        'split_characters': {k: len(v) for k, v in splits.items()},
    }
    tok = tokenizers.build(d.tokenizer, text, d.max_vocab, d.min_count, d.lowercase)
    stats['vocab_size'] = tok.vocab_size
    if d.tokenizer == 'char':
        counts = collections.Counter(text)
        stats['unk_share'] = 0.0
        total = len(text)
    else:
        counts = collections.Counter(words)
        total = len(words)
        stats['unk_share'] = sum(n for w, n in counts.items() if w not in tok.stoi) / total
    stats['tokens'] = total
    # Ties in the order the word vocabulary breaks them: alphabetically.
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:top]
    stats['top'] = [(t, n, n / total) for t, n in ranked]
    return stats


def report(stats: dict[str, Any]) -> str:
    s = stats
    split = ', '.join(f'{k} {v:,}' for k, v in s['split_characters'].items() if v)
    lines = [
        f'corpus: {s["path"]}',
        f'{s["characters"]:,} characters, {s["lines"]:,} lines, {s["word_tokens"]:,} word '
        f'tokens ({s["distinct_words"]:,} distinct), {s["distinct_characters"]} distinct '
        'characters',
        f'splits (characters): {split}',
    ]
    if s['tokenizer'] == 'char':
        lines.append(f'vocabulary: {s["vocab_size"]} characters')
    else:
        lines.append(f'vocabulary: {s["vocab_size"]:,} words with <unk>; '
                     f'{100 * s["unk_share"]:.2f}% of the word tokens read as <unk>')
    unit = 'characters' if s['tokenizer'] == 'char' else 'word tokens'
    lines.append(f'most frequent {unit} (count, share):')
    width = max(len(tokenizers.visible(t)) for t, _, _ in s['top'])
    for rank, (t, n, share) in enumerate(s['top'], 1):
        shown = tokenizers.visible(t)
        lines.append(f'  {rank:>3}. {shown:<{width}}  {n:>12,}  {100 * share:6.2f}%')
    return '\n'.join(lines)


def draw(stats: dict[str, Any], out: str) -> str:
    """A bar chart of the top tokens' shares; whitespace bars drawn in another colour."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    top = stats['top']
    words = stats['tokenizer'] == 'word'
    labels = [tokenizers.visible(t) for t, _, _ in top]
    shares = [100 * share for _, _, share in top]
    colors = ['#d97706' if t.isspace() else '#3b82f6' for t, _, _ in top]
    fig, ax = plt.subplots(figsize=(max(7.0, 0.34 * len(top) + 1.5), 4.6))
    ax.bar(range(len(top)), shares, color=colors, edgecolor='white')
    ax.set_xticks(range(len(top)))
    ax.set_xticklabels(labels, fontfamily='DejaVu Sans Mono', fontsize=12 if not words else 11,
                       rotation=90 if words else 0)
    for label, (t, _, _) in zip(ax.get_xticklabels(), top, strict=True):
        if t.isspace():  # the symbols are thin: make them stand out like their bars
            label.set_color('#b45309')
            label.set_fontweight('bold')
    ax.set_xlim(-0.6, len(top) - 0.4)
    unit = 'word tokens' if words else 'characters'
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
