"""The PyTorch baseline of `charlm.bench`: the same recurrent LM, trained and sampled the
way a PyTorch user would write it.

  python benchmarks/torch_lstm.py --vocab_size=65 --embed_dim=64 --hidden_sizes=256,256 \
      --dropout=0.1 --batch_size=64 --seq_len=100 --steps=20 --repeats=3 --json=-

Embedding -> nn.LSTM(num_layers, batch_first=True, dropout between layers) -> dropout ->
Linear; cross-entropy, clip_grad_norm_, Adam (AdamW with --weight_decay). `charlm.bench
--compare_torch` runs this file in its own process, so its start-up time and memory
high-water mark are its own, not shared with JAX. torch is an optional extra for
benchmarking: only this file imports it.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

# The repository root, for charlm.procstats (which imports neither jax nor torch).
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from charlm.procstats import cpu_count, peak_rss_mib, seconds_since_process_start  # noqa: E402


def run(vocab_size: int = 65, embed_dim: int = 64, hidden_sizes=(256, 256), cell: str = 'lstm',
        dropout: float = 0.1, batch_size: int = 64, seq_len: int = 100, steps: int = 20,
        repeats: int = 3, warmup_steps: int = 5, learning_rate: float = 3e-3,
        grad_clip_norm: float = 1.0, weight_decay: float = 0.0, threads: int = 0,
        device: str = 'auto',
        sample: bool = False, sample_streams=(1, 256), sample_length: int = 512,
        seed: int = 0) -> dict:
    """Trains and optionally samples; returns the figures `charlm.bench` reports."""
    t0 = time.perf_counter()
    import torch  # here, not at the top: the import time is one of the figures
    from torch import nn
    from torch.nn import functional as F

    # From process start where /proc tells it (as charlm.bench counts), else the import alone.
    import_s = seconds_since_process_start() or time.perf_counter() - t0
    threads = threads or cpu_count()
    torch.set_num_threads(threads)
    if device == 'auto':
        device = 'cuda' if torch.cuda.is_available() else 'cpu'
    dev = torch.device(device)
    cuda = dev.type == 'cuda'

    def sync():
        if cuda:
            torch.cuda.synchronize(dev)

    hidden_sizes = tuple(int(h) for h in hidden_sizes)
    rnn_cls = {'lstm': nn.LSTM, 'gru': nn.GRU, 'rnn': nn.RNN}[cell]

    class RecurrentLM(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(vocab_size, embed_dim)
            if len(set(hidden_sizes)) == 1:  # one fused multi-layer module, as usually written
                n = len(hidden_sizes)
                self.rnns = nn.ModuleList([rnn_cls(embed_dim, hidden_sizes[0], n,
                                                   batch_first=True,
                                                   dropout=dropout if n > 1 else 0.0)])
            else:  # per-layer sizes: one module per layer, dropout between them
                ins = (embed_dim,) + hidden_sizes[:-1]
                self.rnns = nn.ModuleList([rnn_cls(i, h, 1, batch_first=True)
                                           for i, h in zip(ins, hidden_sizes, strict=True)])
            self.drop = nn.Dropout(dropout)
            self.head = nn.Linear(hidden_sizes[-1], vocab_size)

        def forward(self, tokens_BxT, state=None):
            x = self.embed(tokens_BxT)
            new_state = []
            for i, rnn in enumerate(self.rnns):
                if i:
                    x = self.drop(x)
                x, s = rnn(x, None if state is None else state[i])
                new_state.append(s)
            return self.head(self.drop(x)), new_state

    t_init = time.perf_counter()
    torch.manual_seed(seed)
    model = RecurrentLM().to(dev)
    opt = (torch.optim.AdamW(model.parameters(), lr=learning_rate, weight_decay=weight_decay)
           if weight_decay else torch.optim.Adam(model.parameters(), lr=learning_rate))
    gen = torch.Generator(device=dev).manual_seed(seed)
    tokens = torch.randint(0, vocab_size, (max(100_000, 2 * (seq_len + 1)),), generator=gen,
                           device=dev)
    offsets = torch.arange(seq_len + 1, device=dev)
    init_s = time.perf_counter() - t_init

    def train_step():
        starts = torch.randint(0, len(tokens) - seq_len, (batch_size, 1), generator=gen,
                               device=dev)
        windows = tokens[starts + offsets]
        logits, _ = model(windows[:, :-1])
        loss = F.cross_entropy(logits.reshape(-1, vocab_size), windows[:, 1:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), grad_clip_norm)
        opt.step()
        return loss

    model.train()
    t = time.perf_counter()
    train_step()
    sync()
    first_step_s = time.perf_counter() - t
    startup_s = seconds_since_process_start()
    for _ in range(warmup_steps):
        train_step()
    sync()
    rates = []
    for _ in range(repeats):
        t = time.perf_counter()
        for _ in range(steps):
            loss = train_step()
        sync()
        rates.append(batch_size * seq_len * steps / (time.perf_counter() - t))
    final_loss = float(loss.detach())
    rate = statistics.median(rates)
    out = {
        'framework': f'torch {torch.__version__}', 'device': str(dev), 'threads': threads,
        'params': sum(p.numel() for p in model.parameters()),
        'import_s': import_s, 'init_s': init_s,
        'first_step_s': first_step_s, 'compile_s': None,  # eager: nothing to compile
        'startup_s': startup_s,
        'train_chars_per_s': rate, 'train_chars_per_s_repeats': rates,
        'step_ms': 1e3 * batch_size * seq_len / rate, 'final_train_loss': final_loss,
        'peak_rss_mib': peak_rss_mib(),
        'peak_device_mib': torch.cuda.max_memory_allocated(dev) / (1 << 20) if cuda else None,
    }
    if sample:
        model.eval()

        @torch.no_grad()
        def generate(streams):
            x = torch.zeros((streams, 1), dtype=torch.long, device=dev)  # a 1-token prompt
            logits, state = model(x)
            ids = []
            for _ in range(sample_length):
                probs = torch.softmax(logits[:, -1], dim=-1)  # temperature 1
                x = torch.multinomial(probs, 1, generator=gen)
                ids.append(x)
                logits, state = model(x, state)
            sync()
            return torch.cat(ids, dim=1)

        out['sample_chars_per_s'] = {}
        for streams in sample_streams:
            generate(streams)  # warm-up
            times = []
            for _ in range(max(repeats, 1)):
                t = time.perf_counter()
                generate(streams)
                times.append(time.perf_counter() - t)
            out['sample_chars_per_s'][str(streams)] = (
                streams * sample_length / statistics.median(times))
        out['peak_rss_mib_with_sampling'] = peak_rss_mib()
    return out


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--vocab_size', type=int, default=65)
    p.add_argument('--embed_dim', type=int, default=64)
    p.add_argument('--hidden_sizes', default='256,256', help='comma-separated, one per layer')
    p.add_argument('--cell', default='lstm', choices=('lstm', 'gru', 'rnn'))
    p.add_argument('--dropout', type=float, default=0.1)
    p.add_argument('--batch_size', type=int, default=64)
    p.add_argument('--seq_len', type=int, default=100)
    p.add_argument('--steps', type=int, default=20, help='steps per timed repeat')
    p.add_argument('--repeats', type=int, default=3)
    p.add_argument('--warmup_steps', type=int, default=5)
    p.add_argument('--learning_rate', type=float, default=3e-3)
    p.add_argument('--grad_clip_norm', type=float, default=1.0)
    p.add_argument('--weight_decay', type=float, default=0.0, help='> 0: AdamW, not Adam')
    p.add_argument('--threads', type=int, default=0, help='0 = the CPUs this process may use')
    p.add_argument('--device', default='auto', help="'auto' (cuda if available), 'cpu', 'cuda'")
    p.add_argument('--sample', action='store_true')
    p.add_argument('--sample_streams', default='1,256')
    p.add_argument('--sample_length', type=int, default=512)
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--json', default='-', help="write the figures here; '-' = stdout")
    a = p.parse_args(argv)
    out = run(vocab_size=a.vocab_size, embed_dim=a.embed_dim,
              hidden_sizes=[int(h) for h in a.hidden_sizes.split(',')], cell=a.cell,
              dropout=a.dropout, batch_size=a.batch_size, seq_len=a.seq_len, steps=a.steps,
              repeats=a.repeats, warmup_steps=a.warmup_steps, learning_rate=a.learning_rate,
              grad_clip_norm=a.grad_clip_norm, weight_decay=a.weight_decay, threads=a.threads,
              device=a.device,
              sample=a.sample, sample_streams=[int(s) for s in a.sample_streams.split(',')],
              sample_length=a.sample_length, seed=a.seed)
    text = json.dumps(out, indent=2)
    if a.json == '-':
        print(text)
    else:
        with open(a.json, 'w', encoding='utf-8') as f:
            f.write(text + '\n')


if __name__ == '__main__':
    main()
