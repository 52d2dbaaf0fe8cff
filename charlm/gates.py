r"""Gate heatmaps: what one recurrent layer of a trained model does, character by character.

  python -m charlm.gates --workdir=runs/shakespeare --layer=0 --units=16 --out=gates.png \
      --text="First Citizen:\nBefore we proceed any further, hear me speak."

LSTM, LayerNorm LSTM and Mogrifier LSTM: forget, input and output gates and the cell
state; GRU: reset and update gates and the hidden state; minGRU: its update gate z and
the hidden state; minLSTM: its forget and input gates before they are normalised to sum
to 1, and the hidden state. A simple RNN has no gates (an error). One row per unit, one
column per token of the text, read from a zero state as in training.

The numbers come from the trained parameters run through the model's cells, never from
a copy of their equations: the text's embedding rows are read from the trained
parameters; then each layer's parameters are stepped through its cell, each layer's
outputs feeding the next. An LSTM or a GRU steps nn.LSTMCell / nn.GRUCell (whose
parameter names every charlm LSTM and GRU layer keeps) with capture_intermediates=True:
a gate is the cell's `gate_fn` of the sum of its recorded input and hidden Dense outputs.
charlm's own cells (`charlm.cells`) sow their gates as they step. The states are the
cells' own carries. The top layer's outputs through the model's output layer reproduce
the model's logits, which checks that the stepped cells are the model (for a minGRU or
minLSTM, that its parallel scan is the cell's recurrence).
"""

from __future__ import annotations

import functools
import pathlib
import re

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags, logging
from flax import linen as nn

from charlm import cli, plot, runs, steps, tokenizers
from charlm import model as model_lib
from charlm.errors import CharLMError

# Gate name -> (input Dense, hidden Dense) of the Flax cell; the panel order of the figure.
GATES = {
    'lstm': {'forget': ('if', 'hf'), 'input': ('ii', 'hi'), 'output': ('io', 'ho')},
    'gru': {'reset': ('ir', 'hr'), 'update': ('iz', 'hz')},
}
REFERENCE_CELLS = {'lstm': nn.LSTMCell, 'gru': nn.GRUCell}
# charlm.cells' cells: the gates they sow as they step, in panel order.
SOWN = {'mingru': ('update',), 'minlstm': ('forget', 'input'),
        'lnlstm': ('forget', 'input', 'output'), 'mogrifier': ('forget', 'input', 'output')}
STATE = {'lstm': 'cell state', 'gru': 'hidden state', 'mingru': 'hidden state',
         'minlstm': 'hidden state', 'lnlstm': 'cell state', 'mogrifier': 'cell state'}
GATE_NAMES = {g for gates in (*GATES.values(), *SOWN.values()) for g in gates}


def check_cell(cell: str) -> None:
    if cell not in GATES and cell not in SOWN:
        names = [*GATES, *SOWN]
        raise CharLMError(f"a {cell!r} layer has no gates to show: gates works for "
                          f"{', '.join(names[:-1])} and {names[-1]} models")


def check_layer(layer: int, num_layers: int) -> None:
    if not 0 <= layer < num_layers:
        raise CharLMError(f'--layer={layer} is out of range: the model has {num_layers} '
                          f'layers (0..{num_layers - 1})')


def model_run(model, params, tokens_1xT: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(embedding output 1xTxE, logits 1xTxV) of the trained model on the tokens."""
    _, logits_1xTxV = model.apply({'params': params}, model.init_carry(1), tokens_1xT)
    return jnp.take(params['embed']['embedding'], tokens_1xT, axis=0), logits_1xTxV


def step_layer(model, params, layer: int, x_1xTxE: jax.Array):
    """Steps layer `layer`'s cell (Flax's reference LSTM or GRU cell, else the model's
    own) with the layer's parameters over the T inputs.

    Returns (by name, each Tx1xH, the Flax cell's Dense outputs or the charlm cell's
    sown gates; its carries; h_Tx1xH; the cell).
    """
    size = model.hidden_sizes[layer]
    reference = model.cell in REFERENCE_CELLS
    cell = (REFERENCE_CELLS[model.cell](features=size, dtype=model.dtype) if reference
            else model_lib.CELLS[model.cell](features=size, **model.cell_options()))
    layer_params = params[f'{model.cell}_{layer}']

    def step(carry, x_1xE):
        (new_carry, h_1xH), state = cell.apply(
            {'params': layer_params}, carry, x_1xE, capture_intermediates=reference,
            mutable=['intermediates'])
        if reference:
            recorded = {k: v['__call__'][0] for k, v in state['intermediates'].items()
                        if k != '__call__'}
        else:
            recorded = {k: v[0] for k, v in state['intermediates'].items()}
        return new_carry, (recorded, new_carry, h_1xH)

    carry = model.init_carry(1)[layer]
    _, out = jax.lax.scan(step, carry, jnp.swapaxes(x_1xTxE, 0, 1))
    return (*out, cell)


def capture(model, params, tokens_1xT: jax.Array, layer: int) -> dict[str, np.ndarray]:
    """Gate activations and state of layer `layer`, each float32[T, H].

    The stepped cells run every layer and the model's own output layer on top, giving
    'logits' to compare with 'model_logits' of the trained model (both TxV): they agree,
    which is the check that the stepped cells are the trained model's.
    """
    check_cell(model.cell)
    check_layer(layer, len(model.hidden_sizes))
    out = _capture(model, params, jnp.asarray(tokens_1xT, jnp.int32), layer)
    gate_names = GATES[model.cell] if model.cell in GATES else SOWN[model.cell]
    order = [*gate_names, STATE[model.cell], 'logits', 'model_logits']  # jit sorts keys
    return {k: np.asarray(out[k], np.float32) for k in order}


@functools.partial(jax.jit, static_argnames=('model', 'layer'))
def _capture(model, params, tokens_1xT, layer):
    """capture() as one compiled program: the interceptor and the cells run at trace time."""
    x_1xTxE, model_logits_1xTxV = model_run(model, params, tokens_1xT)
    out = {}
    for i in range(len(model.hidden_sizes)):
        recorded, carries, h_Tx1xH, cell = step_layer(model, params, i, x_1xTxE)
        if i == layer:
            for gate, (gi, gh) in GATES.get(model.cell, {}).items():
                out[gate] = cell.gate_fn(recorded[gi] + recorded[gh])[:, 0]
            for gate in SOWN.get(model.cell, ()):
                out[gate] = recorded[gate][:, 0]
            cell_state = model.cell in model_lib.LSTM_CARRY
            out[STATE[model.cell]] = (carries[0] if cell_state else carries)[:, 0]
        x_1xTxE = jnp.swapaxes(h_Tx1xH, 0, 1)  # dropout is off at evaluation
    head = nn.Dense(model.vocab_size, dtype=model.dtype)
    out['logits'] = head.apply({'params': params['head']}, x_1xTxE)[0]
    out['model_logits'] = model_logits_1xTxV[0]
    return out


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
        if name in GATE_NAMES:
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


def capture_text(run: runs.Run, text: str, layer: int = 0, max_tokens: int | None = None
                 ) -> dict[str, np.ndarray]:
    """`capture` of a run on `text` (its first `max_tokens` tokens, if given): the one
    path of `charlm.gates` and `run.gates(text)`. Every check comes before the restore."""
    from charlm import evaluate

    check_cell(run.config.model.cell)
    check_layer(layer, len(steps.layer_sizes(run.config)))
    tok = run.tokenizer
    evaluate.check_text(tok, text)
    ids = tok.encode(text, warn=True) if tok.kind == 'word' else tok.encode(text)
    if len(ids) == 0:
        raise CharLMError('the text is empty')
    if max_tokens is not None and len(ids) > max_tokens:
        logging.warning('showing the first %d of %d tokens (--max_tokens)', max_tokens, len(ids))
        ids = ids[:max_tokens]
    acts = capture(run.model, run.params, jnp.asarray(ids)[None], layer)
    diff = float(np.abs(acts['logits'] - acts['model_logits']).max())
    if diff > 1e-3 * max(1.0, float(np.abs(acts['model_logits']).max())):
        logging.warning('the stepped cells reproduce the model\'s logits only to %.2g: the '
                        'model has changed in a way charlm.gates does not follow', diff)
    acts['ids'] = np.asarray(ids)
    return acts


def gates(workdir: str, text: str, out: str, layer: int = 0, units: int = 16,
          step: int | None = None, max_tokens: int = 200) -> dict[str, np.ndarray]:
    """Restores the checkpoint, captures layer `layer` on `text` and writes the figure."""
    out = str(cli.check_output(out, cli.figure_formats()))
    if units < 0:
        raise CharLMError(f'--units={units}: need 0 (all) or more')
    if max_tokens < 1:
        raise CharLMError(f'--max_tokens={max_tokens}: need at least 1')
    run = runs.find(workdir, step)
    acts = capture_text(run, text, layer, max_tokens)
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
        from charlm import data
        text = data.load_text(FLAGS.text_file)
    else:
        text = unescape(FLAGS.text)
    gates(FLAGS.workdir, text, FLAGS.out, FLAGS.layer, FLAGS.units, FLAGS.step,
          FLAGS.max_tokens)
    print(f'wrote {FLAGS.out}')


if __name__ == '__main__':
    define_flags()
    app.run(main, flags_parser=cli.parse_flags)
