"""Speed of `charlm.inspect`'s analysis: 100,000 characters through a 2 x 512 LSTM.

  python benchmarks/inspect_speed.py --text=/path/to/tinyshakespeare.txt   # about 3 minutes
  python benchmarks/inspect_speed.py --chars=20000 --repeats=1              # a quick look

The model is configs/shakespeare_char.py's 2 x 512 LSTM (embed 64, vocab of the text),
randomly initialised: speed does not depend on the weights. One repeat is everything
`charlm.interpret.analyse` does after the checkpoint is read: the capture of every gate
and state over the first --chars characters of the text's last 10% (the val split), the
bootstrap, the correlations and probes, and the n-gram models of orders 1-9 counted on the
first 90% (about 1M characters for tiny-shakespeare) and scored. The first repeat compiles
(its time is printed apart); the median of the later --repeats is the figure.
"""

from __future__ import annotations

import os
import sys

# This file's name hides the standard library's `inspect` (which jax imports) while its
# folder leads sys.path: put the repository root there instead.
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [os.path.dirname(_HERE)] + [
    p for p in sys.path if os.path.abspath(p or '.') != _HERE]

import argparse  # noqa: E402
import pathlib  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
import types  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402

from charlm import interpret, tokenizers  # noqa: E402
from charlm import model as model_lib  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--text', default='/work/shared/data/tinyshakespeare.txt',
                   help='a UTF-8 text; its first 90%% counts the n-grams')
    p.add_argument('--chars', type=int, default=100_000, help='characters analysed')
    p.add_argument('--repeats', type=int, default=3, help='timed repeats after the first')
    args = p.parse_args()
    text = pathlib.Path(args.text).read_text(encoding='utf-8')
    tok = tokenizers.CharTokenizer.from_text(text)
    cut = int(len(text) * 0.9)
    train_ids = tok.encode(text[:cut])
    model = model_lib.RecurrentLM(vocab_size=tok.vocab_size, embed_dim=64,
                                  hidden_sizes=(512, 512), cell='lstm')
    params = model.init(jax.random.key(0), model.init_carry(1),
                        np.zeros((1, 2), np.int32))['params']
    run = types.SimpleNamespace(tokenizer=tok, model=model, params=params)
    sample = text[cut:cut + args.chars]
    print(f'{len(sample):,} characters through a 2 x 512 LSTM; n-grams counted on '
          f'{len(train_ids):,} characters; {jax.device_count()} {jax.default_backend()} '
          'device(s)')
    times = []
    for r in range(args.repeats + 1):
        t0 = time.perf_counter()
        tables = interpret.analyse(run, sample, max_chars=args.chars, train_ids=train_ids)
        times.append(time.perf_counter() - t0)
        print(f'  repeat {r}{" (compiles)" if r == 0 else ""}: {times[-1]:.1f} s  '
              f'({tables["streams"]} streams; logits error {tables["logits_error"]:.1e})')
    if args.repeats:
        print(f'median of {args.repeats}: {statistics.median(times[1:]):.1f} s')


if __name__ == '__main__':
    main()
