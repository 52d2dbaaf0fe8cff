"""Sampling speed: charlm's compiled scan sampler against a Python loop and PyTorch.

  python benchmarks/sampling.py                  # about 2 minutes on a 2-core CPU
  python benchmarks/sampling.py --repeats=7 --no_torch --unroll=4

The model is the default 2 x 256 LSTM (embed 64, vocab 65), randomly initialised: speed
does not depend on the weights. Every number is steady-state characters per second,
compilation and a warm-up run excluded, the median of --repeats runs. The contenders
take turns within each repeat, so a busy machine slows them alike; chars per CPU-second
(all threads of the process counted) is printed too, as it varies less with the load.

  scan         charlm.sampler.sample_ids: prime, then lax.scan chunks of 128 tokens
  python loop  a per-character Python loop around a jitted one-step model, each character
               drawn on the host with numpy (how the classic char-rnn scripts sample)
  torch        nn.Embedding -> nn.LSTM -> nn.Linear, softmax / multinomial in a batched
               Python loop under inference_mode, in its own process (the two libraries
               do not share threads); torch is optional and imported only there
  bound        one stream reads every weight once per character, so memory bandwidth
               (a large numpy copy) / weight bytes bounds it; weights that fit in the
               caches can beat it
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import statistics
import subprocess
import sys
import time

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

V, E, H, LAYERS = 65, 64, 256, 2
PROMPT = np.arange(10, dtype=np.int32) % V


def timed(fn) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process, all its threads) of one call."""
    t0, c0 = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - t0, time.process_time() - c0


def torch_worker() -> None:
    """Answers 'streams length threads' lines with the seconds one sampling run took."""
    import torch

    torch.manual_seed(0)
    emb, head = torch.nn.Embedding(V, E), torch.nn.Linear(H, V)
    lstm = torch.nn.LSTM(E, H, LAYERS, batch_first=True)

    @torch.inference_mode()
    def sample(streams, length, temperature=1.0):
        x, state = lstm(emb(torch.from_numpy(PROMPT).long().expand(streams, -1)))
        logits = head(x[:, -1])
        for _ in range(length):
            tok = torch.multinomial(torch.softmax(logits / temperature, dim=-1), 1)
            x, state = lstm(emb(tok), state)
            logits = head(x[:, -1])

    print(json.dumps({'torch': torch.__version__, 'threads': torch.get_num_threads()}),
          flush=True)
    for line in sys.stdin:
        streams, length, threads = map(int, line.split())
        torch.set_num_threads(threads)
        print(*timed(lambda s=streams, n=length: sample(s, n)), flush=True)


class Torch:
    """The torch worker process, one request at a time."""

    def __init__(self):
        self.proc = subprocess.Popen([sys.executable, __file__, '--torch_worker'],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError('torch is not installed (pip install torch) or failed to start')
        self.info = json.loads(line)

    def run(self, streams: int, length: int, threads: int) -> tuple[float, float]:
        self.proc.stdin.write(f'{streams} {length} {threads}\n')
        self.proc.stdin.flush()
        wall, cpu = map(float, self.proc.stdout.readline().split())
        return wall, cpu

    def close(self):
        self.proc.stdin.close()
        self.proc.wait()


def contenders(args, torch: Torch | None) -> tuple[dict, dict]:
    """name -> (characters per run, a function doing one run); and facts to print."""
    import jax
    import jax.numpy as jnp

    from charlm import model as model_lib
    from charlm import sampler

    model = model_lib.RecurrentLM(vocab_size=V, embed_dim=E, hidden_sizes=(H,) * LAYERS)
    params = jax.jit(model.init)(jax.random.key(0), model.init_carry(1),
                                 jnp.zeros((1, 1), jnp.int32))['params']
    facts = {'weight_bytes': sum(x.nbytes for x in jax.tree.leaves(params)),
             'device': f'{jax.devices()[0].device_kind} ({jax.device_count()} device)',
             'jax': jax.__version__}
    runs = {}

    def scan(streams, length, **kw):
        return streams * length, lambda: sampler.sample_ids(
            model, params, PROMPT, length, jax.random.key(0), num_samples=streams,
            unroll=args.unroll, **kw)

    decodings = {'t=1': dict(temperature=1.0), 'greedy': dict(temperature=0.0),
                 't=0.8 k=20 p=0.95': dict(temperature=0.8, top_k=20, top_p=0.95)}
    for streams, length in ((1, args.length_one), (256, args.length_many)):
        for name, kw in decodings.items():
            runs[f'scan, {streams} stream{"s" * (streams > 1)}, {name}'] = scan(streams, length,
                                                                                 **kw)

    @jax.jit
    def step(params, carry, token_1x1):
        carry, logits_1x1xV = model.apply({'params': params}, carry, token_1x1)
        return carry, logits_1x1xV[0, 0]

    def python_loop(length=args.length_loop, temperature=1.0):
        rng = np.random.default_rng(0)
        carry = model.init_carry(1)
        for tok in PROMPT:
            carry, logits = step(params, carry, np.full((1, 1), tok, np.int32))
        for _ in range(length):
            z = np.asarray(logits, np.float64) / temperature
            p = np.exp(z - z.max())
            tok = rng.choice(V, p=p / p.sum())
            carry, logits = step(params, carry, np.full((1, 1), tok, np.int32))

    runs['python loop, 1 stream, t=1'] = args.length_loop, python_loop
    if torch:
        threads = torch.info['threads']
        for streams, length in ((1, args.length_loop), (256, args.length_many)):
            for n in sorted({1, threads}):
                name = f'torch, {streams} stream{"s" * (streams > 1)}, t=1, {n} thread'
                runs[name] = streams * length, lambda s=streams, n=n, ln=length: torch.run(
                    s, ln, n)
    return runs, facts


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--repeats', type=int, default=5, help='timed runs after a warm-up')
    parser.add_argument('--length_one', type=int, default=1024, help='chars, scan 1 stream')
    parser.add_argument('--length_many', type=int, default=128, help='chars per stream, 256')
    parser.add_argument('--length_loop', type=int, default=200, help='chars, Python loops')
    parser.add_argument('--unroll', type=int, default=1, help="the sampler's scan unroll")
    parser.add_argument('--no_torch', action='store_true', help='skip the PyTorch baseline')
    parser.add_argument('--torch_worker', action='store_true', help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.torch_worker:
        return torch_worker()

    from charlm import cli
    cli.host_allocator()  # as every charlm command does, before JAX starts
    torch = None
    if not args.no_torch:
        try:
            torch = Torch()
        except RuntimeError as e:
            print(f'torch baseline skipped: {e}', file=sys.stderr)
    runs, facts = contenders(args, torch)
    src = np.ones(64 << 20, np.float32)  # 256 MiB: far beyond the caches
    dst = np.empty_like(src)
    runs['numpy copy (bandwidth)'] = 2 * src.nbytes, lambda: np.copyto(dst, src)

    times = {name: [] for name in runs}
    for _, fn in runs.values():
        fn()  # compile and warm up
    for r in range(args.repeats):
        for name, (_, fn) in runs.items():
            seconds = fn() if name.startswith('torch') else timed(fn)
            times[name].append(seconds)
        print(f'repeat {r + 1}/{args.repeats} done', file=sys.stderr, flush=True)
    if torch:
        torch.close()
    rate, spread, per_cpu = {}, {}, {}
    for name, t in times.items():
        chars, wall, cpu = runs[name][0], [w for w, _ in t], [c for _, c in t]
        rate[name] = chars / statistics.median(wall)
        spread[name] = chars / max(wall), chars / min(wall)
        per_cpu[name] = chars / statistics.median(cpu)

    bandwidth = rate.pop('numpy copy (bandwidth)')
    bound = bandwidth / facts['weight_bytes']
    print(f'\nJAX {facts["jax"]} on {facts["device"]}, {os.cpu_count()} CPUs'
          + (f'; torch {torch.info["torch"]}' if torch else '')
          + f'\nmodel: 2 x 256 LSTM, embed 64, vocab 65, {facts["weight_bytes"] / 2**20:.2f} MiB '
          f'of float32 weights; median of {args.repeats} runs after a warm-up\n')
    print(f'{"":40s}{"chars/s":>10s}  {"slowest-fastest":>17s}  {"chars/CPU-s":>11s}')
    for name, value in rate.items():
        lo, hi = spread[name]
        print(f'{name:40s}{value:10,.0f}  {f"{lo:,.0f}-{hi:,.0f}":>17s}  {per_cpu[name]:11,.0f}')
    one, loop = rate['scan, 1 stream, t=1'], rate['python loop, 1 stream, t=1']
    print(f'\nmemory bandwidth (numpy copy of 256 MiB): {bandwidth / 1e9:.1f} GB/s -> one-stream '
          f'bound {bound:,.0f} chars/s (weights / bandwidth)')
    print(f'one stream:  scan / python loop = {one / loop:.1f}x (target 20x); '
          f'scan / bandwidth bound = {one / bound:.2f}')
    if torch:
        best = max(v for k, v in rate.items() if k.startswith('torch, 256'))
        print(f'256 streams: scan / fastest torch = {rate["scan, 256 streams, t=1"] / best:.2f}x '
              '(target 2x)')


if __name__ == '__main__':
    main()
