r"""Trains variants of one config on the same data, seed and step budget, and tables them.

  python -m charlm.compare --config=configs/shakespeare.py --steps=2000 --out=runs/cmp \
      --variant=small:model.num_layers=1,model.hidden_size=128 --variant=standard: \
      --variant=gru:model.cell=gru [--config.data.path=FILE ...]
  python -m charlm.compare --config=configs/shakespeare.py --cells=rnn,lstm,gru ...
  python -m charlm.compare ... --window=256 --dynamic [--dynamic_tune_file=OTHER.txt]
  python -m charlm.compare ... --seeds=0,1,2

A variant is NAME:KEY=VALUE[,KEY=VALUE...] over the config (an empty list: the config as
it is); --cells=a,b is shorthand for --variant=a:model.cell=a --variant=b:model.cell=b.
Each variant trains in OUT/<name> (a normal workdir: evaluate, gates, sample work on it,
and an interrupted comparison resumes); then OUT/compare.md holds the table
(parameters, final train and validation loss, bits/char, throughput, wall time),
OUT/compare.json the same numbers, and OUT/curves.png the loss curves of all variants.
With --steps, validation runs at least 10 times along the way so the curves have points.
--window=N and --dynamic add columns: each variant's best checkpoint scored on the val
split as `charlm.evaluate` scores it, in windows of N, read as one stream (stateful), and
with dynamic evaluation (its lr given, or chosen on --dynamic_tune_file).
--seeds=0,1,2 trains every variant once per seed (config.seed set to it: init, dropout and
data order) in OUT/<name>/seed-<S>; the table shows each figure as the mean ± the sample
std (ddof=1) over the seeds, compare.json each seed's row too (`charlm.seeds`), and the
curves the mean over seeds in a min-max band.
"""

from __future__ import annotations

import ast
import json
import pathlib
import re
import statistics
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
from absl import app, flags, logging
from ml_collections import config_flags

from charlm import cli, evaluate, metric_writer, plot, runs, seeds, tokenizers, train
from charlm import model as model_lib
from charlm import steps as steps_lib
from charlm import workdir as workdir_lib
from charlm.errors import CharLMError, Stopped


def count_parameters(config: ml_collections.ConfigDict, vocab_size: int) -> int:
    """The model's parameter count, from shapes only (nothing is computed)."""
    model = steps_lib.make_model(config, vocab_size, portable=True)  # shapes only
    shapes = jax.eval_shape(model.init, jax.random.key(0), model.init_carry(1),
                            jnp.zeros((1, 1), jnp.int32))
    return model_lib.count_params(shapes['params'])


def parse_variant(text: str) -> tuple[str, dict[str, Any]]:
    """'NAME:KEY=VALUE,KEY=VALUE' -> (NAME, {KEY: VALUE}); values are Python literals where
    they parse (3, 0.5, True, (256, 256)), else strings; commas inside () or [] are kept."""
    name, sep, rest = text.partition(':')
    if not sep or not re.fullmatch(r'[\w.-]+', name):
        raise CharLMError(f'--variant={text!r}: write NAME:KEY=VALUE[,KEY=VALUE...] (a NAME of '
                          'letters, digits, -, _ or .)')
    overrides, depth, part = {}, 0, ''
    for ch in rest + ',':
        depth += (ch in '([') - (ch in ')]')
        if ch == ',' and depth == 0:
            if part.strip():
                key, eq, value = part.strip().partition('=')
                if not eq or not key:
                    raise CharLMError(f'--variant={text!r}: {part.strip()!r} is not KEY=VALUE')
                try:
                    overrides[key.strip()] = ast.literal_eval(value.strip())
                except (ValueError, SyntaxError):
                    overrides[key.strip()] = value.strip()
            part = ''
        else:
            part += ch
    return name, overrides


def variant_config(config: ml_collections.ConfigDict, overrides: dict[str, Any],
                   steps: int | None) -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict(config.to_dict())
    for key, value in overrides.items():
        *path, field = key.split('.')
        node = c
        for part in path:
            if part not in node or not isinstance(node[part], ml_collections.ConfigDict):
                raise CharLMError(f'unknown config key {key} in --variant')
            node = node[part]
        if field not in node:
            raise CharLMError(f'unknown config key {key} in --variant')
        try:
            node[field] = type(node[field])(value) if isinstance(node[field], tuple) else value
        except (TypeError, ValueError) as e:
            raise CharLMError(f'--variant {key}={value!r}: {e}') from None
    if steps:
        c.num_train_steps = steps
        c.eval_every_steps = max(1, min(c.eval_every_steps, steps // 10))
    return c


def _last(scalars: dict, tag: str, upto: int) -> float:
    values = [v for s, v in scalars.get(tag, []) if s <= upto]
    return values[-1] if values else float('nan')


def run_variant(config: ml_collections.ConfigDict, name: str, workdir: pathlib.Path
                ) -> dict[str, Any]:
    """Trains one variant (resuming if its workdir holds a checkpoint) and reads its row."""
    resumed = workdir_lib.has_checkpoint(str(workdir))
    t0 = time.perf_counter()
    result = train.train_and_evaluate(config, str(workdir))
    wall = time.perf_counter() - t0
    vocab = runs.find(str(workdir)).tokenizer.vocab_size
    scalars = metric_writer.read_scalars(str(workdir))
    n = config.num_train_steps
    unit, per = _units(config)
    # The first logged rate includes compilation; the median of the rest is the speed.
    rates = [v for s, v in scalars.get(f'train/{unit}_per_second', []) if s <= n]
    rate = statistics.median(rates[1:] if len(rates) > 1 else rates) if rates else float('nan')
    return {
        'variant': name, 'cell': config.model.cell, 'workdir': str(workdir),
        'hidden_sizes': list(steps_lib.layer_sizes(config)),
        'parameters': count_parameters(config, vocab),
        'train_loss': _last(scalars, 'train/loss', n), 'val_loss': _last(scalars, 'val/loss', n),
        f'val_bits_per_{per}': _last(scalars, f'val/bits_per_{per}', n),
        # The best evaluation (the checkpoint kept in best/): where early stopping or
        # overfitting makes the last one worse, this is the variant's result.
        'best_val_loss': result['best_val_loss'], 'best_step': result['best_step'],
        'last_step': result['step'],
        f'{unit}_per_second': rate, 'wall_seconds': wall, 'resumed': resumed,
    }


def score_variant(workdir: pathlib.Path, best_step: int, window: int | None,
                  dynamic: dict[str, Any] | None, tune_file: str | None = None,
                  tune_lrs: tuple[float, ...] = (), tune_decays: tuple[float, ...] = ()
                  ) -> dict[str, Any]:
    """The best checkpoint's val split scored as `charlm.evaluate` scores it: in windows of
    `window` tokens; read as one stream (dynamic evaluation at lr 0); with dynamic
    evaluation (its lr tuned on `tune_file` if given).

    Kept in WORKDIR/scores.json under the checkpoint's step and the settings, so a rerun of
    the comparison (to finish a later variant) does not score a finished one again.
    """
    if not window and dynamic is None:
        return {}
    key = json.dumps({'best_step': best_step, 'window': window, 'dynamic': dynamic,
                      'tune_file': tune_file, 'tune_lrs': list(tune_lrs),
                      **({'tune_decays': list(tune_decays)} if tune_decays else {})},
                     sort_keys=True)
    path = workdir / 'scores.json'
    try:
        kept = json.loads(path.read_text(encoding='utf-8'))
    except (OSError, ValueError):
        kept = {}
    if key in kept:
        return kept[key]
    scores: dict[str, Any] = {}
    if window:
        scores |= {'window': window,
                   'val_window_loss': evaluate.evaluate(str(workdir), window=window)['loss']}
    if dynamic is not None:
        static = evaluate.evaluate(str(workdir), dynamic=dynamic | {'lr': 0.0, 'rule': 'rms'})
        adapted = evaluate.evaluate(str(workdir), dynamic=dynamic, tune_file=tune_file,
                                    tune_lrs=tune_lrs, tune_decays=tune_decays)
        scores |= {'val_stateful_loss': static['dynamic']['loss'],
                   'val_dynamic_loss': adapted['dynamic']['loss'],
                   'dynamic_lr': adapted['dynamic']['settings']['lr'],
                   'dynamic_decay': adapted['dynamic']['settings']['decay']}
    _write_atomically(path, json.dumps(kept | {key: scores}, indent=2))
    return scores


def _write_atomically(path: pathlib.Path, text: str) -> None:
    tmp = path.with_name(path.name + '.tmp')
    tmp.write_text(text, encoding='utf-8')
    tmp.replace(path)


def _units(config) -> tuple[str, str]:
    """Training's throughput unit ('chars', 'bytes', 'tokens') and what bits/X counts."""
    kind = config.data.tokenizer
    return tokenizers.plural_unit(kind), tokenizers.text_unit(kind)


def markdown(rows: list[dict[str, Any]], config: ml_collections.ConfigDict,
             seed_list: tuple[int, ...] | None = None) -> str:
    """The table of `rows`; with `seed_list`, rows of `seeds.aggregate` (mean ± std)."""
    unit, per = _units(config)
    show, setting = seeds.show, seeds.show_setting
    m = config.model
    sizes = steps_lib.layer_sizes(config)
    window = rows[0].get('window') if rows else None
    dynamic = bool(rows) and 'val_dynamic_loss' in rows[0]
    extra = ((f' val window {window} |' if window else '')
             + (' val stateful | val dynamic (lr, decay) |' if dynamic else ''))
    seeded = seed_list is not None
    seed_text = f'seeds {", ".join(map(str, seed_list))}' if seeded else f'seed {config.seed}'
    lines = [
        f'Same data ({config.data.path}, {config.data.tokenizer} tokens), {seed_text}, '
        f'{config.num_train_steps} steps of {config.batch_size} x {config.data.seq_len} tokens, '
        f'embed {m.embed_dim}, hidden {"x".join(map(str, sizes))} unless a variant says '
        f'otherwise, on {jax.device_count()} {jax.devices()[0].platform} device(s).', '',
        f'| variant | cell | hidden | parameters |{" seeds |" if seeded else ""} steps | '
        f'train loss | val loss | val bits/{per} | best val loss (step) |{extra} {unit}/s | '
        f'wall time{" (total)" if seeded else ""} |',
        '|---|---|---|---:|' + '---:|' * seeded + '---:|---:|---:|---:|---:|'
        + '---:|' * extra.count('|') + '---:|---:|',
    ]
    for r in rows:
        wall = metric_writer.duration(r['wall_seconds']) + (' (resumed)' if r['resumed'] else '')
        lines.append(f'| {r["variant"]} | {r["cell"]} | {"x".join(map(str, r["hidden_sizes"]))} '
                     f'| {r["parameters"]:,} | '
                     + (f'{",".join(map(str, r["seeds"]))} | ' if seeded else '')
                     + f'{setting(r["last_step"], ",")} | {show(r, "train_loss")} | '
                     f'{show(r, "val_loss")} | {show(r, f"val_bits_per_{per}")} | '
                     f'{show(r, "best_val_loss")} ({setting(r["best_step"], ",")}) | '
                     + (f'{show(r, "val_window_loss")} | ' if window else '')
                     + (f'{show(r, "val_stateful_loss")} | {show(r, "val_dynamic_loss")} '
                        f'({setting(r["dynamic_lr"])}, {setting(r.get("dynamic_decay", 0))}) | '
                        if dynamic else '')
                     + f'{show(r, f"{unit}_per_second", ",.0f")} | {wall} |')
    lines += ['', 'Losses are nats per token at the last step trained (fewer than the budget '
              'where early stopping ended a variant); the best val loss is the best '
              'evaluation, the checkpoint in best/. Wall time includes compilation.']
    if seeded:
        lines += ['', 'Each variant trained once per seed (config.seed: init, dropout and data '
                  'order). A figure is the mean ± the sample standard deviation (ddof=1) over '
                  'its seeds; with one seed, that run\'s figure without ±. Steps, best step and '
                  'the dynamic (lr, decay) are shown once where every seed agrees, else per seed '
                  'in seed order, separated by /. Wall time is the total over seeds. Each '
                  'seed\'s figures are in compare.json ("runs"); curves.png shows the mean '
                  'over seeds in a band from their minimum to their maximum.']
    if window or dynamic:
        lines += ['', 'The best checkpoint scored on the whole val split by charlm.evaluate: '
                  + ', '.join(([f'in windows of {window} tokens, each from a zero state']
                               if window else [])
                              + (['read as one stream with the carry passed on (stateful)',
                                  'with dynamic evaluation at the lr and decay given'
                                  + (f' (chosen on {rows[0]["dynamic_tuned_on"]})'
                                     if rows[0].get('dynamic_tuned_on') else '')]
                                 if dynamic else [])) + '.']
    return '\n'.join(lines) + '\n'


def compare(config: ml_collections.ConfigDict, variants: list[str] | dict[str, dict],
            out: str, steps: int | None = None, window: int | None = None,
            dynamic: dict[str, Any] | None = None, tune_file: str | None = None,
            tune_lrs: tuple[float, ...] = (), tune_decays: tuple[float, ...] = (),
            seed_list: tuple[int, ...] | None = None) -> list[dict[str, Any]]:
    """Trains every variant into OUT/<name>; writes compare.md, compare.json and curves.png.

    `variants`: {name: {config key: value}}, or a list of cells (each its own variant).
    `window`, `dynamic` (and `tune_file`, `tune_lrs`, `tune_decays`): score columns
    (`score_variant`). `seed_list`: train each variant once per seed, in OUT/<name>/seed-<S>,
    and return one `seeds.aggregate` row per variant.
    """
    if isinstance(variants, list | tuple):
        unknown = [c for c in variants if c not in model_lib.CELLS]
        if unknown:
            raise CharLMError(f'unknown cell {unknown[0]!r} in --cells: use '
                              f'{", ".join(model_lib.CELLS)}')
        if len(set(variants)) != len(variants):
            raise CharLMError(f'--cells names a cell twice: {",".join(variants)}')
        variants = {c: {'model.cell': c} for c in variants}
    if not variants:
        raise CharLMError('nothing to compare: give --variant=NAME:KEY=VALUE,... or --cells')
    if steps is not None and steps <= 0:
        raise CharLMError(f'--steps={steps}: need a positive number of steps')
    if window is not None and window < 1:
        raise CharLMError(f'--window must be a positive number of tokens, got {window}')
    if dynamic is not None:
        from charlm import dynamic as dynamic_lib
        dynamic_lib.check_settings(**dynamic)
    if tune_file is not None or tune_decays:
        evaluate.check_tuning(tune_file, tune_lrs, None, dynamic, tune_decays)
    if seed_list is not None:
        seed_list = seeds.check(seed_list)
        for name, o in variants.items():
            if 'seed' in o:
                raise CharLMError(f'--variant {name} sets seed, and --seeds trains every '
                                  'variant once per seed: drop one of the two')
    # (variant, seed or None) -> config: the seed overrides config.seed as a variant would.
    configs = {(name, s): variant_config(config, o | ({} if s is None else {'seed': s}), steps)
               for name, o in variants.items() for s in (seed_list or (None,))}
    for c in configs.values():  # every variant builds, before any trains
        train.check_config(c)
    out_dir = workdir_lib.check_workdir(out)
    for name in variants:  # a seeded and an unseeded comparison do not share an OUT/<name>
        if seed_list is not None and workdir_lib.has_checkpoint(str(out_dir / name)):
            raise CharLMError(f'{out_dir / name} holds a run trained without --seeds: give '
                              'another --out for the seeded comparison')
        if seed_list is None and any((out_dir / name).glob('seed-*')):
            raise CharLMError(f'{out_dir / name} holds runs trained with --seeds: add the same '
                              '--seeds, or give another --out')
    runs_done = []
    for (name, seed), c in configs.items():
        workdir = out_dir / name if seed is None else out_dir / name / f'seed-{seed}'
        logging.info('compare: training %s for %d steps in %s', name, c.num_train_steps,
                     workdir)
        try:
            row = run_variant(c, name, workdir)
            row |= score_variant(workdir, row['best_step'], window, dynamic, tune_file,
                                 tune_lrs, tune_decays)
            if tune_file is not None:
                row['dynamic_tuned_on'] = tune_file
            if seed is not None:
                row['seed'] = seed
            runs_done.append(row)
            _write_tables(out_dir, runs_done, variant_config(config, {}, steps),
                          list(configs), seed_list)
        except Stopped:  # a signal ends the comparison, not only this variant
            later = [_label(k) for k in list(configs)[len(runs_done) + 1:]]
            logging.info('compare: stopped in %s%s; run the same command to resume the '
                         'comparison', _label((name, seed)),
                         f' (before {", ".join(later)})' if later else '')
            raise
    return runs_done if seed_list is None else seeds.group(runs_done)


def _label(key: tuple[str, int | None]) -> str:
    return key[0] if key[1] is None else f'{key[0]} seed {key[1]}'


def _write_tables(out_dir: pathlib.Path, runs_done: list[dict[str, Any]],
                  config: ml_collections.ConfigDict, keys: list[tuple[str, int | None]],
                  seed_list: tuple[int, ...] | None) -> None:
    """compare.md, compare.json and curves.png of the runs done so far: after each, so a
    long comparison shows its table as it goes (and says what is still to come)."""
    rows = runs_done if seed_list is None else seeds.group(runs_done)
    table = markdown(rows, config, seed_list)
    if len(runs_done) < len(keys):
        what = 'variants' if seed_list is None else 'runs (variant x seed)'
        table += (f'\n{len(runs_done)} of {len(keys)} {what} done; still to train: '
                  f'{", ".join(map(_label, keys[len(runs_done):]))} (run the same command to '
                  'go on).\n')
    _write_atomically(out_dir / 'compare.md', table)
    _write_atomically(out_dir / 'compare.json', json.dumps(rows, indent=2))
    names = [r['variant'] for r in rows]
    if seed_list is None:
        plot.plot_runs([r['workdir'] for r in rows], str(out_dir / 'curves.png'),
                       title=f'{", ".join(names)}: same data, seed and '
                             f'{config.num_train_steps} steps')
    else:
        plot.plot_seeds({r['variant']: [run['workdir'] for run in r['runs']] for r in rows},
                        str(out_dir / 'curves.png'),
                        title=f'{", ".join(names)}: same data and {config.num_train_steps} '
                              f'steps; mean over seeds {",".join(map(str, seed_list))}, '
                              'band min to max')


# ------------------------------------------------------------------ command line

FLAGS = flags.FLAGS


def define_flags() -> None:
    """Only when run as a command: importing this module defines no flags."""
    config_flags.DEFINE_config_file('config', None, 'Config file (configs/*.py).',
                                    lock_config=True)
    flags.DEFINE_list('cells', ['rnn', 'lstm', 'gru'], 'Cells to compare (when no --variant).')
    flags.DEFINE_multi_string('variant', [], 'NAME:KEY=VALUE[,KEY=VALUE...]: a variant of the '
                              'config to train; repeat for each (replaces --cells).')
    flags.DEFINE_integer('steps', None, 'Training steps per cell (default: the config\'s).')
    flags.DEFINE_string('out', None, 'Output directory: one workdir per cell, table, plot.')
    flags.DEFINE_integer('window', None, 'Also score each variant\'s best checkpoint on the val '
                         'split in windows of this many tokens (e.g. 256).')
    flags.DEFINE_string('seeds', None, 'Comma-separated seeds, e.g. 0,1,2: train every variant '
                        'once per seed (in OUT/NAME/seed-S; config.seed set to it) and table '
                        'each figure as mean ± sample std over the seeds.')
    evaluate.define_dynamic_flags()  # --dynamic: stateful and dynamic columns
    flags.mark_flags_as_required(['config', 'out'])


@cli.command
def main(argv):
    if FLAGS.variant:
        variants = dict(parse_variant(v) for v in FLAGS.variant)
        if len(variants) != len(FLAGS.variant):
            raise CharLMError('two --variant flags have the same NAME')
    else:
        variants = list(FLAGS.cells)
    seed_list = None if FLAGS.seeds is None else seeds.parse(FLAGS.seeds)
    dynamic, tune_file, lrs, decays = evaluate.dynamic_from_flags()
    compare(FLAGS.config, variants, FLAGS.out, FLAGS.steps, FLAGS.window, dynamic, tune_file, lrs,
            decays, seed_list)
    out = pathlib.Path(FLAGS.out)
    print((out / 'compare.md').read_text(encoding='utf-8'))
    print(f'wrote {out / "compare.md"}, {out / "compare.json"} and {out / "curves.png"}')


if __name__ == '__main__':
    define_flags()
    app.run(main, flags_parser=cli.parse_flags)
