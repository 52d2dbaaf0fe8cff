"""Beam search speed: `charlm.sampler.beam_search` at several widths against sampling.

  python benchmarks/beam.py                       # about a minute on a 2-core CPU
  python benchmarks/beam.py --length=500 --widths=1,4,16,64 --repeats=5

The model is the default 2 x 256 LSTM (embed 64, vocab 65), randomly initialised: speed does
not depend on the weights. Each figure is the median of --repeats calls after one untimed
call that compiles: characters of the returned continuation per second (`length / seconds`),
and, for a beam, beam-steps x width per second (the candidate states it advances).
The reference is `sample_ids` with one stream and with as many streams as the beam is wide.
"""

from __future__ import annotations

import argparse
import pathlib
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

V, E, H, LAYERS = 65, 64, 256, 2
PROMPT = np.arange(10, dtype=np.int32) % V


def median_seconds(fn, repeats: int) -> float:
    fn()  # compiles
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--length', type=int, default=500)
    parser.add_argument('--widths', default='1,4,16,64')
    parser.add_argument('--repeats', type=int, default=3)
    args = parser.parse_args()
    import jax

    from charlm import model as model_lib
    from charlm import sampler

    model = model_lib.RecurrentLM(vocab_size=V, embed_dim=E, hidden_sizes=(H,) * LAYERS)
    params = jax.jit(model.init)(jax.random.key(0), model.init_carry(1),
                                 np.zeros((1, 1), np.int32))['params']
    n = args.length
    print(f'{LAYERS} x {H} LSTM, vocab {V}, {n} characters per call, median of '
          f'{args.repeats} (jax {jax.__version__}, {jax.devices()[0].device_kind})')
    print(f'{"decoder":<28} {"s/call":>8} {"chars/s":>10} {"states/s":>10}')
    for k in [int(w) for w in args.widths.split(',')]:
        s = median_seconds(lambda k=k: sampler.sample_ids(
            model, params, PROMPT, n, jax.random.key(0), num_samples=k), args.repeats)
        print(f'{f"sample, {k} stream(s)":<28} {s:8.3f} {n / s:10,.0f} {k * n / s:10,.0f}')
        s = median_seconds(lambda k=k: sampler.beam_search(model, params, PROMPT, n, k),
                           args.repeats)
        print(f'{f"beam search, width {k}":<28} {s:8.3f} {n / s:10,.0f} {k * n / s:10,.0f}')


if __name__ == '__main__':
    main()
