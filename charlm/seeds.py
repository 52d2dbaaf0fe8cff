"""Seeds in charlm.compare: the --seeds list, and a variant's runs summed up as mean ± std.

A seeded variant's row has the keys of one run's row (`compare.run_variant` and
`score_variant`): a score (a loss, bits, throughput) holds the mean over the seeds and
`std[key]` its sample standard deviation (ddof=1; None with a single seed, where there is
no spread to show); a setting (the last and best step, the dynamic lr and decay) holds its
value where every seed agrees and the list in seed order where they differ; wall time is the
total. `seeds` lists the seeds and `runs` holds each seed's own row.
"""

from __future__ import annotations

import pathlib
import re
from collections.abc import Sequence
from typing import Any

import numpy as np

from charlm.errors import CharLMError

# Chosen or reached per run, not measured: shown as they are, never averaged.
SETTINGS = ('best_step', 'last_step', 'dynamic_lr', 'dynamic_decay')


def parse(text: str) -> tuple[int, ...]:
    """'0,1,2' -> (0, 1, 2): distinct non-negative integers, at least one."""
    parts = [p.strip() for p in text.split(',')]
    if not text.strip() or '' in parts:
        raise CharLMError(f'--seeds={text!r}: give a comma-separated list of seeds, e.g. '
                          '--seeds=0,1,2')
    for p in parts:
        if not re.fullmatch(r'[+-]?\d+', p):
            raise CharLMError(f'--seeds={text!r}: {p!r} is not an integer')
    return check(tuple(int(p) for p in parts))


def check(seeds: Sequence[int]) -> tuple[int, ...]:
    """The seeds as a tuple, or a CharLMError saying what is wrong with them."""
    seeds = tuple(seeds)
    if not seeds:
        raise CharLMError('--seeds is empty: give at least one seed, e.g. --seeds=0,1,2')
    for s in seeds:
        if isinstance(s, bool) or not isinstance(s, int | np.integer):
            raise CharLMError(f'--seeds: {s!r} is not an integer')
        if s < 0:
            raise CharLMError(f'--seeds: seed {s} is negative; seeds are integers >= 0')
    twice = sorted({s for s in seeds if seeds.count(s) > 1})
    if twice:
        raise CharLMError(f'--seeds names seed {twice[0]} twice: '
                          f'{",".join(map(str, seeds))}')
    return tuple(int(s) for s in seeds)


def mean_std(values: Sequence[float]) -> tuple[float, float | None]:
    """The mean and the sample standard deviation (ddof=1); None for the std of one value."""
    values_N = np.asarray(values, np.float64)
    std = float(np.std(values_N, ddof=1)) if len(values_N) > 1 else None
    return float(np.mean(values_N)), std


def aggregate(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One variant's row from its runs' rows (each with its 'seed'), in seed order."""
    first = runs[0]
    row = {k: v for k, v in first.items() if k != 'seed'}
    row |= {'workdir': str(pathlib.Path(first['workdir']).parent),
            'seeds': [r['seed'] for r in runs], 'std': {}}
    for key, value in first.items():
        values = [r.get(key) for r in runs]
        if key in SETTINGS:
            row[key] = value if all(v == value for v in values) else values
        elif key == 'wall_seconds':
            row[key] = float(sum(values))
        elif key == 'resumed':
            row[key] = any(values)
        elif isinstance(value, float):
            row[key], row['std'][key] = mean_std(values)
    row['runs'] = runs
    return row


def group(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Runs' rows (each with 'variant' and 'seed') -> one aggregated row per variant, in the
    order the variants first appear."""
    by_variant: dict[str, list[dict[str, Any]]] = {}
    for r in runs:
        by_variant.setdefault(r['variant'], []).append(r)
    return [aggregate(rs) for rs in by_variant.values()]


def show(row: dict[str, Any], key: str, spec: str = '.4f') -> str:
    """A score as the table shows it: '1.3815 ± 0.0094' for seeds, '1.3815' for one run."""
    std = row.get('std', {}).get(key)
    text = format(row[key], spec)
    return text if std is None else f'{text} ± {format(std, spec)}'


def show_setting(value: Any, spec: str = 'g') -> str:
    """A setting: its value, or each seed's in seed order ('0.001/0.003') where they differ."""
    if isinstance(value, list):
        return '/'.join(format(v, spec) for v in value)
    return format(value, spec)


def mean_curve(curves: list[list[tuple[int, float]]]
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Runs' (step, value) curves -> (steps, mean, min, max) at the steps every run logged."""
    common = sorted(set.intersection(*(set(s for s, _ in c) for c in curves))) if curves else []
    if not common:
        empty = np.zeros((0,))
        return np.zeros((0,), np.int64), empty, empty, empty
    values_RxS = np.array([[dict(c)[s] for s in common] for c in curves], np.float64)
    return np.array(common), values_RxS.mean(0), values_RxS.min(0), values_RxS.max(0)
