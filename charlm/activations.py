"""Gate activations and states of one recurrent layer of a trained model, token by token:
what `charlm.gates` draws and `run.gates(text)` returns.

  acts = activations.capture(model, params, tokens_1xT, layer=0)  # {'forget': float32[T, H], ...}
  acts = activations.capture_text(run, 'To be, or not to be')     # a run's, with every check

LSTM, LayerNorm LSTM and Mogrifier LSTM: forget, input and output gates and the cell
state; GRU: reset and update gates and the hidden state; minGRU: its update gate z and
the hidden state; minLSTM: its forget and input gates before they are normalised to sum
to 1, and the hidden state. A simple RNN has no gates (an error). Read from a zero state,
as in training.

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

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from flax import linen as nn

from charlm import model as model_lib
from charlm import scoring, steps, tokenizers
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


def step_layer(model, params, layer: int, carry, x_TxBxE: jax.Array):
    """Steps layer `layer`'s cell (Flax's reference LSTM or GRU cell, else the model's
    own) with the layer's parameters over T steps of B streams, from `carry`.

    Returns (the last carry; the gates by name, each TxBxH, as sigmoids of the Flax cell's
    Dense outputs or as the charlm cell sows them; the state TxBxH, the carried c of an
    LSTM-like cell, else h; h_TxBxH). `charlm.gates` (one stream) and `charlm.inspect`
    (many) both read the cells through this.
    """
    size = model.hidden_sizes[layer]
    reference = model.cell in REFERENCE_CELLS
    cell = (REFERENCE_CELLS[model.cell](features=size, dtype=model.dtype) if reference
            else model_lib.CELLS[model.cell](features=size, **model.cell_options()))
    layer_params = params[f'{model.cell}_{layer}']
    lstm_carry = model.cell in model_lib.LSTM_CARRY

    def step(carry, x_BxE):
        (new_carry, h_BxH), state = cell.apply(
            {'params': layer_params}, carry, x_BxE, capture_intermediates=reference,
            mutable=['intermediates'])
        rec = state['intermediates']
        if reference:
            rec = {k: v['__call__'][0] for k, v in rec.items() if k != '__call__'}
            gates = {g: cell.gate_fn(rec[a] + rec[b]) for g, (a, b) in GATES[model.cell].items()}
        else:
            gates = {g: rec[g][0] for g in SOWN.get(model.cell, ())}
        return new_carry, (gates, new_carry[0] if lstm_carry else h_BxH, h_BxH)

    carry, (gates, state_TxBxH, h_TxBxH) = jax.lax.scan(step, carry, x_TxBxE)
    return carry, gates, state_TxBxH, h_TxBxH


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
    x_Tx1xE, carry = jnp.swapaxes(x_1xTxE, 0, 1), model.init_carry(1)
    out = {}
    for i in range(len(model.hidden_sizes)):
        _, gates, state_Tx1xH, x_Tx1xE = step_layer(model, params, i, carry[i], x_Tx1xE)
        if i == layer:  # dropout is off at evaluation
            out |= {g: v[:, 0] for g, v in gates.items()}
            out[STATE[model.cell]] = state_Tx1xH[:, 0]
    out['logits'] = model.output(params, jnp.swapaxes(x_Tx1xE, 0, 1))[0]
    out['model_logits'] = model_logits_1xTxV[0]
    return out


def capture_text(run, text: str, layer: int = 0, max_tokens: int | None = None
                 ) -> dict[str, np.ndarray]:
    """`capture` of a run on `text` (its first `max_tokens` tokens, if given): the one
    path of `charlm.gates` and `run.gates(text)`. Every check comes before the restore
    (`run.params`); `run` is a `charlm.runs.Run`."""
    check_cell(run.config.model.cell)
    check_layer(layer, len(steps.layer_sizes(run.config)))
    tok = run.tokenizer
    scoring.check_text(tok, text)
    ids = tok.encode(text, warn=True) if tokenizers.reads_unknown(tok) else tok.encode(text)
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
