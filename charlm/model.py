"""The language model: Embed -> recurrent layers (nn.scan over a Flax cell) -> Dense.

Modules take plain values, never a ConfigDict. Shapes follow the `charlm.data` docstring:
tokens_BxT int32, logits_BxTxV float32; each layer's carry is (c_BxH, h_BxH) for an LSTM
and h_BxH for a GRU or a simple RNN.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from charlm.errors import CharLMError

CELLS = {
    'lstm': nn.OptimizedLSTMCell,  # fused gate matmul; same parameters as nn.LSTMCell
    'gru': nn.GRUCell,
    'rnn': nn.SimpleCell,
}

Carry = tuple[Any, ...]  # one entry per layer


def hidden_sizes_from(num_layers: int, hidden_size: int, hidden_sizes=()) -> tuple[int, ...]:
    """Per-layer sizes: explicit `hidden_sizes`, else `num_layers` x `hidden_size`."""
    if hidden_sizes:
        sizes = tuple(int(h) for h in hidden_sizes)
        if num_layers and len(sizes) != num_layers:
            raise CharLMError(f'model.hidden_sizes={sizes} has {len(sizes)} entries but '
                              f'model.num_layers={num_layers}; make them agree (or set '
                              'num_layers=0 to take the length of hidden_sizes)')
    else:
        sizes = (int(hidden_size),) * int(num_layers)
    if not sizes or min(sizes) <= 0:
        raise CharLMError(f'the model needs at least one layer of positive size, got {sizes}')
    return sizes


class RecurrentLM(nn.Module):
    """Embed(V, E) -> len(hidden_sizes) recurrent layers -> dropout -> Dense(V)."""

    vocab_size: int
    embed_dim: int = 64
    hidden_sizes: tuple[int, ...] = (256, 256)
    cell: str = 'lstm'
    dropout_rate: float = 0.0
    unroll: int = 1  # time steps per scan iteration; a speed knob, same results
    dtype: Any = jnp.float32  # computation dtype; parameters and carry stay float32

    def __post_init__(self):
        if self.cell not in CELLS:
            raise CharLMError(f"unknown model.cell {self.cell!r}: use one of {', '.join(CELLS)}")
        super().__post_init__()

    def init_carry(self, batch_size: int) -> Carry:
        """Zero state for `batch_size` streams; needs no parameters."""
        def zeros(h):
            return jnp.zeros((batch_size, h), jnp.float32)
        if self.cell == 'lstm':
            return tuple((zeros(h), zeros(h)) for h in self.hidden_sizes)
        return tuple(zeros(h) for h in self.hidden_sizes)

    def layer(self, i: int) -> nn.Module:
        """Layer i: its cell scanned over time (axis 1), parameters shared across steps."""
        scanned = nn.scan(CELLS[self.cell], variable_broadcast='params',
                          split_rngs={'params': False}, in_axes=1, out_axes=1,
                          unroll=self.unroll)
        return scanned(features=self.hidden_sizes[i], dtype=self.dtype, name=f'{self.cell}_{i}')

    @nn.compact
    def __call__(self, carry: Carry, tokens_BxT: jax.Array, train: bool = False
                 ) -> tuple[Carry, jax.Array]:
        x_BxTxE = nn.Embed(self.vocab_size, self.embed_dim, name='embed')(tokens_BxT)
        new_carry = []
        for i in range(len(self.hidden_sizes)):
            if i > 0:
                x_BxTxE = nn.Dropout(self.dropout_rate, deterministic=not train)(x_BxTxE)
            c, x_BxTxE = self.layer(i)(carry[i], x_BxTxE)
            new_carry.append(c)
        x_BxTxE = nn.Dropout(self.dropout_rate, deterministic=not train)(x_BxTxE)
        logits_BxTxV = nn.Dense(self.vocab_size, dtype=self.dtype, name='head')(x_BxTxE)
        return tuple(new_carry), logits_BxTxV.astype(jnp.float32)


def summary(model: RecurrentLM, params) -> str:
    """A per-layer table of parameter shapes and counts, like PyTorch's print(model)."""
    rows = [('layer', 'parameters', 'count')]
    order = ['embed'] + [f'{model.cell}_{i}' for i in range(len(model.hidden_sizes))] + ['head']
    for name in sorted(params, key=lambda n: order.index(n) if n in order else len(order)):
        sub = params[name]
        leaves = jax.tree_util.tree_flatten_with_path(sub)[0]
        shapes = ', '.join(
            '/'.join(str(getattr(k, 'key', k)) for k in path) + str(tuple(x.shape))
            for path, x in leaves)
        rows.append((name, shapes, f'{sum(int(np.prod(x.shape)) for _, x in leaves):,}'))
    total = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))
    rows.append(('total', '', f'{total:,}'))
    w0 = max(len(r[0]) for r in rows)
    w2 = max(len(r[2]) for r in rows)
    head = (f'{type(model).__name__}(vocab={model.vocab_size}, embed={model.embed_dim}, '
            f'cell={model.cell}, hidden={model.hidden_sizes}, dropout={model.dropout_rate})')
    lines = [head] + [f'  {a:<{w0}}  {c:>{w2}}  {b}' for a, b, c in rows]
    return '\n'.join(lines)


def count_params(params) -> int:
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))
