r"""Gate heatmaps: what one recurrent layer of a trained model does, character by character.

  python -m charlm.gates --workdir=runs/shakespeare --layer=0 --units=16 --out=gates.png \
      --text="First Citizen:\nBefore we proceed any further, hear me speak."

LSTM, LayerNorm LSTM and Mogrifier LSTM: forget, input and output gates and the cell
state; GRU: reset and update gates and the hidden state; minGRU: its update gate z and
the hidden state; minLSTM: its forget and input gates before they are normalised to sum
to 1, and the hidden state. A simple RNN has no gates (an error). One row per unit, one
column per token of the text, read from a zero state as in training.

The numbers are `charlm.activations`' (what `run.gates(text)` returns): the trained
parameters stepped through the model's own cells, checked against the model's logits.
"""

from __future__ import annotations

import pathlib
import re

import numpy as np
from absl import app, flags

from charlm import activations, cli, data, plot, runs, tokenizers
from charlm.errors import CharLMError


def token_labels(tokenizer, ids) -> list[str]:
    """Axis labels, with whitespace made visible (⏎ newline, ␣ space, ⇥ tab).

    Word labels are turned on their side, where a lone ⏎ is too small: there '\\n'.
    """
    visible = tokenizers.VISIBLE if tokenizer.kind != 'word' else {'\n': '\\n'}
    words = [tokenizer.itos[int(i)] for i in ids]
    return [''.join(visible.get(c, c) for c in w) if w.isspace() else w for w in words]


def draw(acts: dict[str, np.ndarray], labels: list[str], units: int, out: str,
         title: str) -> None:
    """One heatmap per gate/state: units down, tokens across."""
    panels = [k for k in acts if k not in ('logits', 'model_logits', 'ids')]
    n_units = min(units, acts[panels[0]].shape[1]) if units > 0 else acts[panels[0]].shape[1]
    n_tok = len(labels)
    words = max(len(s) for s in labels) > 1
    width = max(8.0, 0.17 * n_tok + 2.5) if not words else max(8.0, 0.3 * n_tok + 2.5)
    panel_h = max(1.2, 0.16 * n_units + 0.5)
    fig = plot.new_figure(figsize=(width, panel_h * len(panels) + 1.2))
    axes = fig.subplots(len(panels), 1, sharex=True, squeeze=False)
    for ax, name in zip(axes[:, 0], panels, strict=True):
        a_HxT = acts[name][:, :n_units].T
        if name in activations.GATE_NAMES:
            im = ax.imshow(a_HxT, aspect='auto', cmap='viridis', vmin=0.0, vmax=1.0,
                           interpolation='nearest')
        else:
            lim = float(max(np.abs(a_HxT).max(), 1e-6))
            im = ax.imshow(a_HxT, aspect='auto', cmap='RdBu_r', vmin=-lim, vmax=lim,
                           interpolation='nearest')
        ax.set_ylabel(f'{name}\nunit', fontsize=10)
        every = max(1, n_units // 8)
        ax.set_yticks(range(0, n_units, every))
        ax.tick_params(axis='y', labelsize=7)
        fig.colorbar(im, ax=ax, pad=0.01, fraction=0.03, aspect=10)
    bottom = axes[-1, 0]
    bottom.set_xticks(range(n_tok))
    bottom.set_xticklabels(labels, fontfamily='DejaVu Sans Mono', fontsize=8,
                           rotation=90 if words else 0)
    if not words:  # the same characters above the first panel, to read without scrolling
        axes[0, 0].tick_params(axis='x', labeltop=True, top=True)
    fig.suptitle(title, fontsize=11)
    plot.save_figure(fig, out)


def unescape(text: str) -> str:
    r"""'\n', '\t' and '\\' typed on a command line become the characters themselves."""
    return re.sub(r'\\([nt\\])', lambda m: {'n': '\n', 't': '\t', '\\': '\\'}[m.group(1)], text)


def gates(workdir: str, text: str, out: str, layer: int = 0, units: int = 16,
          step: int | None = None, max_tokens: int = 200) -> dict[str, np.ndarray]:
    """Restores the checkpoint, captures layer `layer` on `text` and writes the figure."""
    out = str(cli.check_output(out, cli.figure_formats()))
    if units < 0:
        raise CharLMError(f'--units={units}: need 0 (all) or more')
    if max_tokens < 1:
        raise CharLMError(f'--max_tokens={max_tokens}: need at least 1')
    run = runs.find(workdir, step)
    acts = activations.capture_text(run, text, layer, max_tokens)
    m = run.model
    size = m.hidden_sizes[layer]
    title = (f'{m.cell.upper()} layer {layer} of {len(m.hidden_sizes)} '
             f'({size} units, first {min(units or size, size)} shown)'
             f' - {pathlib.Path(workdir).name}, step {run.step}')
    draw(acts, token_labels(run.tokenizer, acts['ids']), units, out, title)
    return acts


# ------------------------------------------------------------------ command line

FLAGS = flags.FLAGS
DEFAULT_TEXT = 'First Citizen:\nBefore we proceed any further, hear me speak.\n'


def define_flags() -> None:
    """Only when run as a command: importing this module defines no flags."""
    flags.DEFINE_string('workdir', None, 'A training workdir.')
    flags.DEFINE_string('text', DEFAULT_TEXT, r'Text to run; \n and \t are read as escapes.')
    flags.DEFINE_string('text_file', None, 'Read the text from this file instead.')
    flags.DEFINE_integer('layer', 0, 'Which recurrent layer (0 = next to the embedding).')
    flags.DEFINE_integer('units', 16, 'Show the first N units (0 = all).')
    flags.DEFINE_integer('step', None, runs.STEP_HELP)
    flags.DEFINE_integer('max_tokens', 200, 'Columns at most; a longer text is cut.')
    flags.DEFINE_string('out', 'gates.png', 'The figure to write: .png, .pdf, .svg, ...')
    flags.mark_flags_as_required(['workdir'])


@cli.command
def main(argv):
    if FLAGS.text_file:
        text = data.load_text(FLAGS.text_file)
    else:
        text = unescape(FLAGS.text)
    gates(FLAGS.workdir, text, FLAGS.out, FLAGS.layer, FLAGS.units, FLAGS.step,
          FLAGS.max_tokens)
    print(f'wrote {FLAGS.out}')


if __name__ == '__main__':
    define_flags()
    app.run(main, flags_parser=cli.parse_flags)
