"""The language model: Embed -> recurrent layers (nn.scan over a Flax cell) -> Dense.

  model = RecurrentLM(vocab_size=65, embed_dim=64, hidden_sizes=(256, 256), cell='lstm')
  carry, logits_BxTxV = model.apply({'params': params}, model.init_carry(B), tokens_BxT)

Each recurrent layer is a Flax cell (nn.OptimizedLSTMCell, nn.GRUCell, nn.SimpleCell, or
one of `charlm.cells`: minGRU, minLSTM, LayerNorm LSTM, Mogrifier LSTM) scanned over time
with `nn.scan`, as in flax's sst2 example: that is `impl='cell'`, the reference. An LSTM
runs by default as `impl='hoisted'`, `charlm.kernels`' layer with the same parameters and
equations that trains faster (the input projection out of the time loop, a custom
backward pass); `impl='cudnn'` takes cuDNN's kernel on CUDA GPUs. A minGRU or minLSTM,
whose gates do not see h_{t-1}, runs a sequence as one parallel scan over time
(`cells.ParallelMinRNN`, the cell's parameters) unless `impl='cell'`; the other cells
are always the nn.scan reference.
Modules take plain values, never a ConfigDict. Shapes follow the `charlm.data` docstring:
tokens_BxT int32, logits_BxTxV float32; each layer's carry is (c_BxH, h_BxH) for an LSTM
(lstm, lnlstm, mogrifier) and h_BxH for the others.
"""

from __future__ import annotations

from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from charlm import cells, kernels, losses
from charlm.errors import CharLMError

CELLS = {
    'lstm': nn.OptimizedLSTMCell,  # fused gate matmul; same parameters as nn.LSTMCell
    'gru': nn.GRUCell,
    'rnn': nn.SimpleCell,
    'mingru': cells.MinGRUCell,  # charlm.cells: gates from x_t alone, a parallel scan
    'minlstm': cells.MinLSTMCell,
    'lnlstm': cells.LayerNormLSTMCell,  # LayerNorm on the gates and the cell state
    'mogrifier': cells.MogrifierLSTMCell,  # x and h gate each other, then an LSTM step
}
LSTM_CARRY = ('lstm', 'lnlstm', 'mogrifier')  # carry (c_BxH, h_BxH); the others h_BxH

Carry = tuple[Any, ...]  # one entry per layer


IMPLS = ('hoisted', 'cell', 'cudnn')


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
    """Embed(V, E) -> len(hidden_sizes) recurrent layers -> dropout -> Dense(V).

    AWD-LSTM's regularisers (Merity et al. 2018), all off by default and in training only:
    `variational_dropout` (one mask per sequence between layers and before the head),
    `weight_drop` (DropConnect on each layer's recurrent weights, one mask per step),
    `embed_dropout` (whole embedding rows: a token type vanishes from the batch) and
    `tie_embeddings` (the head is the embedding matrix, transposed, plus a bias).
    """

    vocab_size: int
    embed_dim: int = 64
    hidden_sizes: tuple[int, ...] = (256, 256)
    cell: str = 'lstm'
    dropout_rate: float = 0.0
    unroll: int = 1  # time steps per scan iteration; a speed knob, same results
    impl: str = 'hoisted'  # 'hoisted' (LSTM: input matmul outside the scan; mingru,
    #                        minlstm: parallel scan) | 'cell' (nn.scan over the cell, as gru,
    #                        rnn, lnlstm and mogrifier always run) | 'cudnn' (LSTM, CUDA GPUs)
    dtype: Any = jnp.float32  # computation dtype; parameters and carry stay float32
    variational_dropout: bool = False
    weight_drop: float = 0.0
    embed_dropout: float = 0.0
    tie_embeddings: bool = False
    mogrifier_rounds: int = 5  # mogrifier only: rounds x and h gate each other per step
    mogrifier_rank: int = 0  # mogrifier only: rank of Q and R (0 = full rank)
    softmax: str = 'full'  # 'full' | 'adaptive' (charlm.losses: Grave et al.'s)
    adaptive_cutoffs: tuple[int, ...] = ()  # adaptive: where the head's shortlist and
    #                                         each cluster end (ids ordered by frequency)
    adaptive_div: float = 4.0  # adaptive: tail i projects to H / div^(i+1) units
    loss_chunk_mb: float = 64.0  # the loss makes at most this many MB of logits at a time

    def __post_init__(self):
        if self.cell not in CELLS:
            raise CharLMError(f"unknown model.cell {self.cell!r}: use one of {', '.join(CELLS)}")
        if self.impl not in IMPLS:
            raise CharLMError(f"unknown model.impl {self.impl!r}: use one of {', '.join(IMPLS)}")
        if self.impl == 'cudnn' and (self.cell != 'lstm'
                                     or jnp.dtype(self.dtype) != jnp.float32):
            raise CharLMError("model.impl='cudnn' is a float32 LSTM only (cuDNN's LSTM in "
                              f"jax.experimental.rnn), not cell={self.cell!r} with dtype "
                              f"{jnp.dtype(self.dtype).name}: use model.impl='hoisted'")
        for name in ('dropout_rate', 'weight_drop', 'embed_dropout'):
            if not 0 <= getattr(self, name) < 1:
                raise CharLMError(f'model.{name} must be in [0, 1), got {getattr(self, name)!r}')
        if self.weight_drop and self.cell in cells.PARALLEL:
            raise CharLMError(f'model.weight_drop drops recurrent weights, and a {self.cell} '
                              'has none (its gates read x_t alone): set it to 0')
        if self.mogrifier_rounds < 0:
            raise CharLMError(f'model.mogrifier_rounds must be >= 0, got {self.mogrifier_rounds}')
        if self.mogrifier_rank < 0:
            raise CharLMError(f'model.mogrifier_rank must be >= 0 (0: full rank), got '
                              f'{self.mogrifier_rank}')
        losses.check(self.softmax, self.adaptive_cutoffs, self.vocab_size, self.loss_chunk_mb,
                     self.adaptive_div)
        if self.tie_embeddings and self.softmax != 'full':
            raise CharLMError("model.tie_embeddings ties the full softmax's output layer: "
                              "use it with model.softmax='full'")
        if self.tie_embeddings and self.embed_dim != self.hidden_sizes[-1]:
            raise CharLMError(f'model.tie_embeddings needs embed_dim equal to the last layer\'s '
                              f'size ({self.hidden_sizes[-1]}), got embed_dim={self.embed_dim}')
        super().__post_init__()

    def init_carry(self, batch_size: int) -> Carry:
        """Zero state for `batch_size` streams; needs no parameters."""
        def zeros(h):
            return jnp.zeros((batch_size, h), jnp.float32)
        if self.cell in LSTM_CARRY:
            return tuple((zeros(h), zeros(h)) for h in self.hidden_sizes)
        return tuple(zeros(h) for h in self.hidden_sizes)

    def layer(self, i: int, folded: bool = False, train: bool = False) -> nn.Module:
        """Layer i: its cell scanned over time (axis 1), parameters shared across steps;
        or the faster layer with the same parameters that `impl` names."""
        name, size = f'{self.cell}_{i}', self.hidden_sizes[i]
        drop = dict(weight_drop=self.weight_drop, deterministic=not train)
        if self.cell == 'lstm' and self.impl == 'cudnn':
            return kernels.CudnnLSTM(size, **drop, name=name)
        if self.cell == 'lstm' and self.impl == 'hoisted':
            lstm = kernels.FoldedLSTM if folded else kernels.HoistedLSTM
            return lstm(size, self.unroll, self.dtype, **drop, name=name)
        if self.cell in cells.PARALLEL and self.impl != 'cell':
            return cells.ParallelMinRNN(size, self.cell, self.dtype, name=name)
        scanned = nn.scan(CELLS[self.cell], variable_broadcast='params',
                          split_rngs={'params': False}, in_axes=1, out_axes=1,
                          unroll=self.unroll)
        if train and self.weight_drop:  # DropConnect on the cell's recurrent kernels h*
            key, rate = self.make_rng('dropout'), self.weight_drop

            def drop_recurrent(variables):
                params = dict(variables['params'])
                for j, k in enumerate(sorted(params)):
                    if k.startswith('h'):
                        w = kernels.drop(params[k]['kernel'], rate, jax.random.fold_in(key, j))
                        params[k] = dict(params[k], kernel=w)
                return dict(variables, params=params)

            scanned = nn.map_variables(scanned, 'params', trans_in_fn=drop_recurrent)
        return scanned(features=size, **self.cell_options(), name=name)

    def cell_options(self) -> dict:
        """The cell's arguments besides `features`."""
        if self.cell == 'mogrifier':
            return dict(dtype=self.dtype, rounds=self.mogrifier_rounds,
                        rank=self.mogrifier_rank)
        return dict(dtype=self.dtype)

    def folds_embedding(self, num_tokens: int) -> bool:
        """Whether layer 0 projects the V embedding rows once and gathers (HoistedLSTM).

        Same numbers either way (to float rounding); the table costs V rows where the
        plain projection costs one row per token, so it is taken only for at least twice
        as many tokens as the vocabulary has (a character model's training batch; not a
        word model's 10,000-word vocabulary, nor a short prompt).
        """
        return (self.cell == 'lstm' and self.impl == 'hoisted'
                and 2 * self.vocab_size <= num_tokens)

    @nn.compact
    def __call__(self, carry: Carry, tokens_BxT: jax.Array, train: bool = False,
                 features: bool = False) -> tuple[Carry, jax.Array]:
        """(new carry, logits_BxTxV); an adaptive softmax's logits are its exact
        log-probabilities. features=True: the last layer's output x_BxTxH instead, which
        `token_nll` scores without making the whole logits."""
        embed = nn.Embed(self.vocab_size, self.embed_dim, name='embed')
        embedding_VxE = embed.embedding
        if train and self.embed_dropout:  # whole rows, one mask per step
            embedding_VxE = kernels.drop(embedding_VxE, self.embed_dropout,
                                         self.make_rng('dropout'), (self.vocab_size, 1))
        if self.folds_embedding(tokens_BxT.size):
            c, x_BxTxE = self.layer(0, folded=True, train=train)(carry[0], tokens_BxT,
                                                                  embedding_VxE)
        else:
            x_BxTxE = (embed(tokens_BxT) if embedding_VxE is embed.embedding
                       else jnp.take(embedding_VxE, tokens_BxT, axis=0))
            c, x_BxTxE = self.layer(0, train=train)(carry[0], x_BxTxE)
        new_carry = [c]
        locked = (1,) if self.variational_dropout else ()  # one mask for all time steps
        for i in range(1, len(self.hidden_sizes)):
            x_BxTxE = kernels.Dropout(self.dropout_rate, not train, locked)(x_BxTxE)
            c, x_BxTxE = self.layer(i, train=train)(carry[i], x_BxTxE)
            new_carry.append(c)
        x_BxTxE = kernels.Dropout(self.dropout_rate, not train, locked)(x_BxTxE)
        if features:
            return tuple(new_carry), x_BxTxE
        if self.softmax == 'adaptive':
            return tuple(new_carry), AdaptiveSoftmax(
                self.vocab_size, self.adaptive_cutoffs, self.adaptive_div, self.dtype,
                name='adaptive')(x_BxTxE)
        if self.tie_embeddings:
            bias_V = self.param('head_bias', nn.initializers.zeros, (self.vocab_size,))
            logits_BxTxV = embed.attend(x_BxTxE.astype(self.dtype)) + bias_V[None, None]
        else:
            logits_BxTxV = nn.Dense(self.vocab_size, dtype=self.dtype, name='head')(x_BxTxE)
        return tuple(new_carry), logits_BxTxV.astype(jnp.float32)

    def loss_in_one_block(self, num_rows: int) -> bool:
        """Whether the loss of num_rows targets is today's one block of full logits
        (`__call__`'s) rather than `token_nll`'s chunks."""
        return (self.softmax == 'full'
                and num_rows <= losses.chunk_rows(self.loss_chunk_mb, self.vocab_size))

    def token_nll(self, params, x_BxTxH: jax.Array, targets_BxT: jax.Array) -> jax.Array:
        """nll_BxT of the targets from the last layer's output (`features=True`), the
        logits made in chunks of at most loss_chunk_mb (charlm.losses)."""
        x_NxH, t_N = x_BxTxH.reshape(-1, x_BxTxH.shape[-1]), targets_BxT.reshape(-1)
        if self.softmax == 'adaptive':
            nll_N = losses.adaptive_nll(params['adaptive'], x_NxH, t_N, self.adaptive_cutoffs,
                                        self.vocab_size, self.loss_chunk_mb, self.dtype)
        else:
            nll_N = losses.full_nll(lambda x: self.head_logits(params, x), x_NxH, t_N,
                                    self.vocab_size, self.loss_chunk_mb)
        return nll_N.reshape(targets_BxT.shape)

    def output(self, params, x_NxH: jax.Array) -> jax.Array:
        """The output layer on the last layer's output (any leading axes), as `__call__`
        applies it: logits, or an adaptive softmax's exact log-probabilities."""
        if self.softmax == 'adaptive':
            return losses.adaptive_log_probs(params['adaptive'], x_NxH, self.adaptive_cutoffs,
                                             self.dtype)
        return self.head_logits(params, x_NxH)

    def head_logits(self, params, x_NxH: jax.Array) -> jax.Array:
        """The full softmax's float32 logits, computed as `__call__` computes them."""
        lead = (1,) * (x_NxH.ndim - 1)  # explicit broadcasting (rank promotion is an error)
        if self.tie_embeddings:  # Embed.attend promotes to float32
            y = jnp.dot(x_NxH.astype(self.dtype).astype(jnp.float32),
                        params['embed']['embedding'].T)
            return y + params['head_bias'].reshape(lead + (-1,))
        h = params['head']
        y = jnp.dot(x_NxH.astype(self.dtype), h['kernel'].astype(self.dtype))
        return (y + h['bias'].astype(self.dtype).reshape(lead + (-1,))).astype(jnp.float32)

    def head(self, params) -> dict:
        """The output layer's {'kernel': [H, V], 'bias': [V]}, tied or not."""
        if self.tie_embeddings:
            return {'kernel': params['embed']['embedding'].T, 'bias': params['head_bias']}
        return params['head']


class AdaptiveSoftmax(nn.Module):
    """Grave et al.'s adaptive softmax (charlm.losses): x_...xH -> exact logp_...xV."""

    vocab_size: int
    cutoffs: tuple[int, ...]
    div: float = 4.0
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        hidden, c = x.shape[-1], self.cutoffs
        init, zeros = nn.initializers.lecun_normal(), nn.initializers.zeros
        p = {'head_kernel': self.param('head_kernel', init, (hidden, c[0] + len(c))),
             'head_bias': self.param('head_bias', zeros, (c[0] + len(c),))}
        for i, (units, tokens) in enumerate(losses.tail_sizes(hidden, c, self.vocab_size,
                                                              self.div)):
            p[f'tail{i}_proj'] = self.param(f'tail{i}_proj', init, (hidden, units))
            p[f'tail{i}_out'] = self.param(f'tail{i}_out', init, (units, tokens))
        return losses.adaptive_log_probs(p, x, c, self.dtype)


# Generation, one token at a time. A stepper has start(carry) -> state, step(state,
# tokens_B) -> (state, logits_BxV) and carry(state) -> carry, and is a pytree, so the
# sampler (which takes any such object, as flax's lm1b sampler takes tokens_to_logits)
# jits over it.

@flax.struct.dataclass
class ApplyStepper:
    """Any model's step: a length-1 sequence through `model.apply`."""

    params: Any
    model: RecurrentLM = flax.struct.field(pytree_node=False)

    def start(self, carry: Carry):
        return carry

    def step(self, state, tokens_B: jax.Array):
        state, logits_Bx1xV = self.model.apply({'params': self.params}, state, tokens_B[:, None])
        return state, logits_Bx1xV[:, 0]

    def carry(self, state) -> Carry:
        return state


def stepper(model: RecurrentLM, params):
    """The generation step for `model`, chosen once: a float32 LSTM's re-laid weights
    (`kernels.FoldedStepper`, one product per layer and token), else `ApplyStepper`.
    Both compute what `model.apply` computes, to float rounding (tests check this)."""
    if (model.cell == 'lstm' and jnp.dtype(model.dtype) == jnp.float32
            and model.softmax == 'full'):
        return kernels.FoldedStepper.make(params, len(model.hidden_sizes), model.head(params))
    return ApplyStepper(params, model)


def summary(model: RecurrentLM, params) -> str:
    """A per-layer table of parameter shapes and counts, like PyTorch's print(model)."""
    rows = [('layer', 'parameters', 'count')]
    order = (['embed'] + [f'{model.cell}_{i}' for i in range(len(model.hidden_sizes))]
             + ['head', 'adaptive'])
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
