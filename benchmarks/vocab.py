"""Training speed at large vocabularies: the full softmax (one block of logits, or chunked)
against the adaptive softmax, as A/B pairs of `charlm.bench` processes run in turn.

  python benchmarks/vocab.py --vocab_size=40736 --pairs=3
  python benchmarks/vocab.py --config=configs/shakespeare.py --vocab_size=9857 \
      --variant=whole:--config.model.loss_chunk_mb=100000 --variant=chunked: --pairs=3

Each variant is `python -m charlm.bench --config=CONFIG --vocab_size=V` (random tokens) plus
its flags; the variants run one after the other, --pairs times, so a noisy machine slows
them alike. Prints each variant's median tokens/s and peak RSS, and the ratio of each
variant's median to the first one's. Memory of whole runs on real corpora:
benchmarks/corpora.py (docs/vocabulary.md has the commands).
"""

from __future__ import annotations

import argparse
import json
import pathlib
import statistics
import subprocess
import sys
import tempfile

REPO = pathlib.Path(__file__).resolve().parent.parent
DEFAULT = ['full:--config.model.softmax=full',
           'adaptive:--config.model.softmax=adaptive']


def bench(python: str, config: str, vocab: int, flags: list[str], steps: int, repeats: int
          ) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = pathlib.Path(tmp) / 'bench.json'
        cmd = [python, '-m', 'charlm.bench', f'--config={config}', f'--vocab_size={vocab}',
               f'--steps={steps}', f'--repeats={repeats}', f'--json={out}', *flags]
        proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
        if proc.returncode:
            sys.exit(f'failed: {" ".join(cmd)}\n{proc.stderr[-2000:]}')
        return json.loads(out.read_text())['charlm']


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--config', default='configs/shakespeare_words.py')
    p.add_argument('--vocab_size', type=int, default=40736)
    p.add_argument('--variant', action='append', default=[],
                   help='NAME:FLAG[ FLAG...] (default: full and adaptive)')
    p.add_argument('--pairs', type=int, default=3, help='rounds of all variants in turn')
    p.add_argument('--steps', type=int, default=10)
    p.add_argument('--repeats', type=int, default=2)
    p.add_argument('--python', default=sys.executable)
    args = p.parse_args()
    variants = [(v.split(':', 1)[0], v.split(':', 1)[1].split()) for v in
                (args.variant or DEFAULT)]
    rates = {name: [] for name, _ in variants}
    rss = {name: [] for name, _ in variants}
    for r in range(args.pairs):
        for name, flags in variants:
            out = bench(args.python, args.config, args.vocab_size, flags, args.steps,
                        args.repeats)
            rates[name].append(out['train_chars_per_s'])
            rss[name].append(out['peak_rss_mib'])
            print(f'round {r + 1}: {name:<10} {out["train_chars_per_s"]:>10,.0f} tokens/s  '
                  f'peak RSS {out["peak_rss_mib"]:,.0f} MiB', flush=True)
    first = statistics.median(rates[variants[0][0]])
    print(f'\n{args.config}, vocabulary {args.vocab_size:,}, random tokens, {args.pairs} '
          f'rounds (median; min-max):')
    for name, _ in variants:
        m = statistics.median(rates[name])
        print(f'  {name:<10} {m:>10,.0f} tokens/s ({min(rates[name]):,.0f}-'
              f'{max(rates[name]):,.0f})  x{m / first:.2f}  peak RSS '
              f'{statistics.median(rss[name]):,.0f} MiB')


if __name__ == '__main__':
    main()
