r"""Trains the same model with different cells on the same data, seed and step budget.

  python -m charlm.compare --config=configs/shakespeare.py --cells=rnn,lstm,gru \
      --steps=2000 --out=runs/compare [--config.data.path=FILE ...]

Each cell trains in OUT/<cell> (a normal workdir: evaluate, gates, sample work on it,
and an interrupted comparison resumes); then OUT/compare.md holds the table
(parameters, final train and validation loss, bits/char, throughput, wall time),
OUT/compare.json the same numbers, and OUT/curves.png the loss curves of all cells.
With --steps, validation runs at least 10 times along the way so the curves have points.
"""

from __future__ import annotations

import json
import pathlib
import statistics
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
from absl import app, flags, logging
from ml_collections import config_flags

from charlm import checkpointing, cli, metric_writer, plot, runs, train
from charlm import model as model_lib
from charlm import workdir as workdir_lib
from charlm.errors import CharLMError


def count_parameters(config: ml_collections.ConfigDict, vocab_size: int) -> int:
    """The model's parameter count, from shapes only (nothing is computed)."""
    model = train.make_model(config, vocab_size, portable=True)  # shapes only
    shapes = jax.eval_shape(model.init, jax.random.key(0), model.init_carry(1),
                            jnp.zeros((1, 1), jnp.int32))
    return model_lib.count_params(shapes['params'])


def cell_config(config: ml_collections.ConfigDict, cell: str, steps: int | None
                ) -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict(config.to_dict())
    c.model.cell = cell
    if steps:
        c.num_train_steps = steps
        c.eval_every_steps = max(1, min(c.eval_every_steps, steps // 10))
    return c


def _last(scalars: dict, tag: str, upto: int) -> float:
    values = [v for s, v in scalars.get(tag, []) if s <= upto]
    return values[-1] if values else float('nan')


def run_cell(config: ml_collections.ConfigDict, cell: str, workdir: pathlib.Path
             ) -> dict[str, Any]:
    """Trains one variant (resuming if its workdir holds a checkpoint) and reads its row."""
    resumed = checkpointing.has_checkpoint(str(workdir))
    t0 = time.perf_counter()
    train.train_and_evaluate(config, str(workdir))
    wall = time.perf_counter() - t0
    vocab = runs.find(str(workdir)).tokenizer.vocab_size
    scalars = metric_writer.read_scalars(str(workdir))
    n = config.num_train_steps
    unit = 'chars' if config.data.tokenizer == 'char' else 'tokens'
    # The first logged rate includes compilation; the median of the rest is the speed.
    rates = [v for s, v in scalars.get(f'train/{unit}_per_second', []) if s <= n]
    rate = statistics.median(rates[1:] if len(rates) > 1 else rates) if rates else float('nan')
    return {
        'cell': cell, 'workdir': str(workdir), 'parameters': count_parameters(config, vocab),
        'train_loss': _last(scalars, 'train/loss', n), 'val_loss': _last(scalars, 'val/loss', n),
        'val_bits_per_char': _last(scalars, 'val/bits_per_char', n),
        f'{unit}_per_second': rate, 'wall_seconds': wall, 'resumed': resumed,
    }


def markdown(rows: list[dict[str, Any]], config: ml_collections.ConfigDict) -> str:
    unit = 'chars' if config.data.tokenizer == 'char' else 'tokens'
    m = config.model
    sizes = train.layer_sizes(config)
    lines = [
        f'Same data ({config.data.path}, {config.data.tokenizer} tokens), seed {config.seed}, '
        f'{config.num_train_steps} steps of {config.batch_size} x {config.data.seq_len} tokens, '
        f'embed {m.embed_dim}, hidden {"x".join(map(str, sizes))}, on '
        f'{jax.device_count()} {jax.devices()[0].platform} device(s).', '',
        f'| cell | parameters | train loss | val loss | val bits/char | {unit}/s | wall time |',
        '|---|---:|---:|---:|---:|---:|---:|',
    ]
    for r in rows:
        wall = metric_writer.duration(r['wall_seconds']) + (' (resumed)' if r['resumed'] else '')
        lines.append(f'| {r["cell"]} | {r["parameters"]:,} | {r["train_loss"]:.4f} | '
                     f'{r["val_loss"]:.4f} | {r["val_bits_per_char"]:.4f} | '
                     f'{r[f"{unit}_per_second"]:,.0f} | {wall} |')
    lines += ['', 'Losses are nats per token at the last step; wall time includes compilation.']
    return '\n'.join(lines) + '\n'


def compare(config: ml_collections.ConfigDict, cells: list[str], out: str,
            steps: int | None = None) -> list[dict[str, Any]]:
    """Trains every cell into OUT/<cell>; writes compare.md, compare.json and curves.png."""
    if not cells:
        raise CharLMError('--cells is empty: give e.g. --cells=rnn,lstm,gru')
    unknown = [c for c in cells if c not in model_lib.CELLS]
    if unknown:
        raise CharLMError(f'unknown cell {unknown[0]!r} in --cells: use '
                          f'{", ".join(model_lib.CELLS)}')
    if len(set(cells)) != len(cells):
        raise CharLMError(f'--cells names a cell twice: {",".join(cells)}')
    if steps is not None and steps <= 0:
        raise CharLMError(f'--steps={steps}: need a positive number of steps')
    out_dir = workdir_lib.check_workdir(out)
    rows = []
    for cell in cells:
        c = cell_config(config, cell, steps)
        logging.info('compare: training %s for %d steps in %s', cell, c.num_train_steps,
                     out_dir / cell)
        rows.append(run_cell(c, cell, out_dir / cell))
    config = cell_config(config, cells[0], steps)
    table = markdown(rows, config)
    (out_dir / 'compare.md').write_text(table, encoding='utf-8')
    (out_dir / 'compare.json').write_text(json.dumps(rows, indent=2), encoding='utf-8')
    plot.plot_runs([str(out_dir / c) for c in cells], str(out_dir / 'curves.png'),
                   title=f'{", ".join(cells)}: same data, seed and {config.num_train_steps} '
                         'steps')
    return rows


# ------------------------------------------------------------------ command line

FLAGS = flags.FLAGS


def define_flags() -> None:
    """Only when run as a command: importing this module defines no flags."""
    config_flags.DEFINE_config_file('config', None, 'Config file (configs/*.py).',
                                    lock_config=True)
    flags.DEFINE_list('cells', ['rnn', 'lstm', 'gru'], 'Cells to compare.')
    flags.DEFINE_integer('steps', None, 'Training steps per cell (default: the config\'s).')
    flags.DEFINE_string('out', None, 'Output directory: one workdir per cell, table, plot.')
    flags.mark_flags_as_required(['config', 'out'])


@cli.command
def main(argv):
    compare(FLAGS.config, FLAGS.cells, FLAGS.out, FLAGS.steps)
    out = pathlib.Path(FLAGS.out)
    print((out / 'compare.md').read_text(encoding='utf-8'))
    print(f'wrote {out / "compare.md"}, {out / "compare.json"} and {out / "curves.png"}')


if __name__ == '__main__':
    define_flags()
    app.run(main, flags_parser=cli.parse_flags)
