"""How fast a config trains and samples here: compile time, chars/s, memory, start-up.

  python -m charlm.bench --config=configs/shakespeare.py
  python -m charlm.bench --config=configs/shakespeare.py --config.model.hidden_size=512 \
      --config.model.embed_dim=128 --config.batch_size=32 --compare_torch --sample

It times the real pmapped train step (`steps_lib.parallel_steps`) on every local device with
the config's global batch, on random tokens (vocab --vocab_size) unless --config.data.path
names a file or --corpus is given, so it runs offline in seconds. --compare_torch runs the
same model in PyTorch (benchmarks/torch_lstm.py) in a child process and adds the ratio.
What each figure means: benchmarks/README.md.
"""

from __future__ import annotations

import datetime
import importlib.util
import json
import math
import pathlib
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import app, flags
from flax import jax_utils
from ml_collections import config_flags

from charlm import cli, data, sampler
from charlm import model as model_lib
from charlm import steps as steps_lib
from charlm.errors import CharLMError
from charlm.procstats import cpu_count, peak_rss_mib, seconds_since_process_start

TORCH_SCRIPT = pathlib.Path(__file__).resolve().parent.parent / 'benchmarks' / 'torch_lstm.py'

FLAGS = flags.FLAGS


def peak_device_mib() -> float | None:
    """The largest peak allocation over local devices, where the backend reports one."""
    peaks = []
    for d in jax.local_devices():
        try:
            stats = d.memory_stats()
        except Exception:  # backends without stats raise or return None
            stats = None
        if stats and 'peak_bytes_in_use' in stats:
            peaks.append(stats['peak_bytes_in_use'])
    return max(peaks) / (1 << 20) if peaks else None


def code_version() -> str | None:
    """The commit measured, marked when charlm/ or configs/ differ from it; None off git."""
    root = TORCH_SCRIPT.parent.parent
    try:
        head = subprocess.run(['git', 'rev-parse', '--short', 'HEAD'], cwd=root, text=True,
                              capture_output=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(['git', 'status', '--porcelain', '--', 'charlm', 'configs'],
                               cwd=root, text=True, capture_output=True, timeout=10,
                               check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return f'{head} + uncommitted changes' if dirty else head


def _block(tree) -> None:
    jax.block_until_ready(tree)


def _tokens(config: ml_collections.ConfigDict, vocab_size: int, corpus: bool | None
            ) -> tuple[np.ndarray, int, str]:
    """Training tokens, their vocabulary size, and where they came from."""
    if corpus is None:
        corpus = config.data.path not in ('', data.BUILTIN)
    if corpus:
        c = data.load_corpus(config)
        return c.tokens['train'], c.tokenizer.vocab_size, f'corpus {config.data.path}'
    if vocab_size < 1:
        raise CharLMError(f'--vocab_size must be positive, got {vocab_size}')
    n = max(100_000, 2 * (config.data.seq_len + 1))
    tokens = np.random.default_rng(config.seed).integers(0, vocab_size, n, dtype=np.int32)
    return tokens, vocab_size, f'random tokens, vocab {vocab_size}'


def bench_charlm(config: ml_collections.ConfigDict, *, steps: int = 20, repeats: int = 3,
                 warmup_steps: int = 5, sample: bool = False, sample_streams=(1, 256),
                 sample_length: int = 512, vocab_size: int = 65,
                 corpus: bool | None = None) -> dict[str, Any]:
    """Times charlm's own train step (and sampler) for `config` on the local devices."""
    if steps < 1 or repeats < 1 or warmup_steps < 0:
        raise CharLMError(f'need steps >= 1, repeats >= 1, warmup_steps >= 0; got {steps}, '
                          f'{repeats}, {warmup_steps}')
    if sample and (sample_length < 1 or min(sample_streams, default=1) < 1):
        raise CharLMError(f'need sample_length >= 1 and sample_streams >= 1; got '
                          f'{sample_length}, {",".join(map(str, sample_streams))}')
    entered_s = seconds_since_process_start()
    tokens, vocab, source = _tokens(config, vocab_size, corpus)
    seq_len, batch_size = config.data.seq_len, config.batch_size
    layout = data.Layout(batch_size, jax.device_count(), jax.local_device_count(),
                         jax.process_index())

    t = time.perf_counter()
    model = steps_lib.make_model(config, vocab)
    init_key, train_key, sample_key = jax.random.split(jax.random.key(config.seed), 3)
    state = steps_lib.create_state(model, steps_lib.make_optimizer(config), init_key)
    params = model_lib.count_params(state.params)
    state = jax_utils.replicate(state)
    p_steps = steps_lib.parallel_steps(model)
    _block(state)
    init_s = time.perf_counter() - t

    def batch(step):  # as train_and_evaluate builds them: host numpy, one per step
        return data.train_batch(tokens, seq_len, step, config.seed, layout)

    step = 0
    t = time.perf_counter()
    state, metrics = p_steps.train(state, batch(step), train_key)
    _block((state, metrics))
    first_step_s = time.perf_counter() - t
    startup_s = seconds_since_process_start()
    step += 1

    for _ in range(warmup_steps):
        state, metrics = p_steps.train(state, batch(step), train_key)
        step += 1
    _block((state, metrics))
    rates = []
    for _ in range(repeats):  # no host sync inside a repeat, as in the training loop
        t = time.perf_counter()
        for _ in range(steps):
            state, metrics = p_steps.train(state, batch(step), train_key)
            step += 1
        _block((state, metrics))
        rates.append(batch_size * seq_len * steps / (time.perf_counter() - t))
    m = jax.device_get(jax_utils.unreplicate(metrics))
    final_loss = float(m['nll_sum'] / m['count'])
    if not math.isfinite(final_loss):
        raise CharLMError(f'the benchmarked training diverged: loss {final_loss}')
    rate = statistics.median(rates)
    step_s = batch_size * seq_len / rate
    devices = jax.local_devices()
    kind = devices[0].device_kind
    kind = kind if kind == devices[0].platform else f'{kind} ({devices[0].platform})'
    out = {
        'framework': f'charlm (jax {jax.__version__})',
        'device': f'{len(devices)} x {kind}',
        'threads': cpu_count(), 'params': params, 'data': source, 'vocab_size': vocab,
        'import_s': entered_s, 'init_s': init_s,
        'first_step_s': first_step_s, 'compile_s': max(first_step_s - step_s, 0.0),
        'startup_s': startup_s,
        'train_chars_per_s': rate, 'train_chars_per_s_repeats': rates,
        'step_ms': 1e3 * step_s, 'final_train_loss': final_loss,
        'peak_rss_mib': peak_rss_mib(), 'peak_device_mib': peak_device_mib(),
    }
    if sample:
        params_1 = jax_utils.unreplicate(state.params)
        prompt = np.zeros(1, np.int32)  # one token, as the torch baseline primes on
        out['sample_chars_per_s'], out['sample_first_call_s'] = {}, {}
        for streams in sample_streams:
            def go(streams=streams):
                return sampler.sample_ids(model, params_1, prompt, sample_length, sample_key,
                                          num_samples=streams, temperature=1.0)
            t = time.perf_counter()
            go()  # compiles prime and the chunked scan; sample_ids returns host numpy
            out['sample_first_call_s'][str(streams)] = time.perf_counter() - t
            times = []
            for _ in range(repeats):
                t = time.perf_counter()
                go()
                times.append(time.perf_counter() - t)
            out['sample_chars_per_s'][str(streams)] = (
                streams * sample_length / statistics.median(times))
        out['peak_rss_mib_with_sampling'] = peak_rss_mib()
    return out


def check_torch(config: ml_collections.ConfigDict) -> None:
    """Fails before anything is timed if the torch baseline cannot mirror `config`."""
    if importlib.util.find_spec('torch') is None:
        raise CharLMError('--compare_torch needs PyTorch, an optional extra that is not in '
                          'requirements.txt: pip install torch (the CPU wheel is enough)')
    if config.optimizer not in ('adam', 'adamw'):
        raise CharLMError(f'the torch baseline uses Adam or AdamW; '
                          f'config.optimizer={config.optimizer!r}')
    if config.model.dtype != 'float32':
        raise CharLMError(f'the torch baseline runs in float32; '
                          f'model.dtype={config.model.dtype!r}')


def bench_torch(config: ml_collections.ConfigDict, vocab_size: int, *, steps: int = 20,
                repeats: int = 3, warmup_steps: int = 5, sample: bool = False,
                sample_streams=(1, 256), sample_length: int = 512, threads: int = 0,
                timeout: float = 3600) -> dict[str, Any]:
    """The PyTorch twin of `config` in a child process (its own start-up and memory)."""
    check_torch(config)
    m = config.model
    sizes = steps_lib.layer_sizes(config)
    decay = config.get('weight_decay', 0.0) if config.optimizer == 'adamw' else 0.0
    with tempfile.TemporaryDirectory() as tmp:
        out_path = pathlib.Path(tmp) / 'torch.json'
        cmd = [sys.executable, str(TORCH_SCRIPT), f'--vocab_size={vocab_size}',
               f'--embed_dim={m.embed_dim}', f'--hidden_sizes={",".join(map(str, sizes))}',
               f'--cell={m.cell}', f'--dropout={m.dropout_rate}',
               f'--batch_size={config.batch_size}', f'--seq_len={config.data.seq_len}',
               f'--steps={steps}', f'--repeats={repeats}', f'--warmup_steps={warmup_steps}',
               f'--learning_rate={config.learning_rate}',
               f'--grad_clip_norm={config.grad_clip_norm}', f'--threads={threads}',
               f'--weight_decay={decay}',
               f'--seed={config.seed}', f'--json={out_path}']
        if sample:
            cmd += ['--sample', f'--sample_streams={",".join(map(str, sample_streams))}',
                    f'--sample_length={sample_length}']
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        if proc.returncode != 0:
            tail = [ln for ln in proc.stderr.splitlines() if ln.strip()][-1:] or ['no output']
            raise CharLMError(f'the torch baseline failed (exit {proc.returncode}): {tail[0]}')
        return json.loads(out_path.read_text(encoding='utf-8'))


# Higher is better for rates, lower for the rest; the ratio is always charlm / torch.
_RATIO_KEYS = ('train_chars_per_s', 'step_ms', 'first_step_s', 'startup_s', 'peak_rss_mib',
               'peak_device_mib')


def ratios(ours: dict, theirs: dict) -> dict[str, float]:
    def ratio(a, b):
        return a / b if a is not None and b else None
    r = {k: ratio(ours.get(k), theirs.get(k)) for k in _RATIO_KEYS}
    for n, v in ours.get('sample_chars_per_s', {}).items():
        r[f'sample_chars_per_s/{n}'] = ratio(v, theirs.get('sample_chars_per_s', {}).get(n))
    return {k: v for k, v in r.items() if v is not None}


def run(config: ml_collections.ConfigDict, *, steps: int = 20, repeats: int = 3,
        warmup_steps: int = 5, sample: bool = False, sample_streams=(1, 256),
        sample_length: int = 512, vocab_size: int = 65, corpus: bool | None = None,
        compare_torch: bool = False, torch_threads: int = 0) -> dict[str, Any]:
    """Every figure of the bench as a JSON-ready dict; the command line prints `table` of it."""
    kw = dict(steps=steps, repeats=repeats, warmup_steps=warmup_steps, sample=sample,
              sample_streams=tuple(sample_streams), sample_length=sample_length)
    if compare_torch:
        check_torch(config)
    ours = bench_charlm(config, vocab_size=vocab_size, corpus=corpus, **kw)
    m = config.model
    result = {
        'date': datetime.datetime.now().isoformat(timespec='seconds'),
        'host': f'{platform.node()}, {cpu_count()} CPUs, {platform.platform()}',
        'code': code_version(),
        'model': {'cell': m.cell, 'embed_dim': m.embed_dim,
                  'hidden_sizes': list(steps_lib.layer_sizes(config)),
                  'dropout_rate': m.dropout_rate, 'unroll': m.unroll, 'dtype': m.dtype,
                  'vocab_size': ours['vocab_size']},
        'batch_size': config.batch_size, 'seq_len': config.data.seq_len,
        'steps': steps, 'repeats': repeats, 'warmup_steps': warmup_steps,
        'sample_length': sample_length if sample else None,
        'charlm': ours, 'torch': None, 'ratio': None,
    }
    if compare_torch:
        theirs = bench_torch(config, ours['vocab_size'], threads=torch_threads, **kw)
        result['torch'], result['ratio'] = theirs, ratios(ours, theirs)
    return result


def _fmt(value, kind: str) -> str:
    if value is None:
        return 'n/a'
    if kind == 'rate':
        return f'{value:,.0f}'
    if kind == 'mib':
        return f'{value:,.0f}'
    if kind == 'ms':
        return f'{value:,.1f}'
    return f'{value:,.2f}'


def table(result: dict) -> str:
    """The human-readable report: one column per framework, then charlm / torch."""
    ours, theirs, r = result['charlm'], result['torch'], result['ratio'] or {}
    m = result['model']
    sizes = m['hidden_sizes']
    shape = (f'{len(sizes)} x {sizes[0]}' if len(set(sizes)) == 1 else
             ' -> '.join(map(str, sizes)))
    chars = result['batch_size'] * result['seq_len']
    lines = [
        f"charlm.bench  {result['date']}  {result['host']}  code {result.get('code')}",
        f"model: {m['cell']} {shape}, embed {m['embed_dim']}, vocab {m['vocab_size']}, "
        f"dropout {m['dropout_rate']}, unroll {m['unroll']}, {m['dtype']}; data: {ours['data']}",
        f"train: batch {result['batch_size']} x seq {result['seq_len']} = {chars:,} chars/step; "
        f"{result['warmup_steps']} warm-up steps, then median of {result['repeats']} repeats "
        f"of {result['steps']} steps",
        f"charlm: {ours['framework']} on {ours['device']}"
        + (f"; torch: {theirs['framework']} on {theirs['device']}, "
           f"set_num_threads({theirs['threads']})" if theirs else ''),
        '',
    ]
    rows = [
        ('parameters', 'params', 'rate'),
        ('first train step, incl. compile (s)', 'first_step_s', 's'),
        ('  of which compile, est. (s)', 'compile_s', 's'),
        ('train chars/s (median)', 'train_chars_per_s', 'rate'),
        ('  step time (ms)', 'step_ms', 'ms'),
        ('process start -> first step done (s)', 'startup_s', 's'),
        ('  start -> imports done (s)', 'import_s', 's'),
        ('  model init (s)', 'init_s', 's'),
        ('peak host RSS (MiB)', 'peak_rss_mib', 'mib'),
        ('peak device memory (MiB)', 'peak_device_mib', 'mib'),
    ]
    for n in ours.get('sample_chars_per_s', {}):
        label = f'sample chars/s, {n} stream' + ('s' if n != '1' else '')
        rows.append((label, f'sample_chars_per_s/{n}', 'rate'))

    def get(d, key):
        if d is None:
            return None
        if '/' in key:
            a, b = key.split('/')
            return d.get(a, {}).get(b)
        return d.get(key)

    head = f"{'':38} {'charlm':>12}"
    if theirs:
        head += f" {'torch':>12} {'charlm/torch':>13}"
    lines.append(head)
    for label, key, kind in rows:
        line = f'{label:38} {_fmt(get(ours, key), kind):>12}'
        if theirs:
            ratio = r.get(key)
            line += f' {_fmt(get(theirs, key), kind):>12} '
            line += f'{(f"{ratio:.2f}x" if ratio is not None else ""):>13}'
        lines.append(line)
    spread = ours['train_chars_per_s_repeats']
    lines += ['', f'charlm chars/s over repeats: {min(spread):,.0f} .. {max(spread):,.0f}'
              + (f"; torch: {min(theirs['train_chars_per_s_repeats']):,.0f} .. "
                 f"{max(theirs['train_chars_per_s_repeats']):,.0f}" if theirs else '')]
    if theirs:
        lines.append('charlm/torch: above 1 means charlm is faster for chars/s rows, '
                     'slower (or larger) for seconds and MiB rows')
    return '\n'.join(lines)


def define_flags() -> None:
    """Only when run as a command: importing this module defines no flags."""
    config_flags.DEFINE_config_file('config', None, 'Config file (configs/*.py).', lock_config=True)
    flags.DEFINE_integer('steps', 20, 'Train steps per timed repeat.')
    flags.DEFINE_integer('repeats', 3, 'Timed repeats; the median is reported.')
    flags.DEFINE_integer('warmup_steps', 5, 'Untimed steps after the first (compiling) one.')
    flags.DEFINE_bool('sample', False, 'Also time the sampler (1 and 256 streams by default).')
    flags.DEFINE_list('sample_streams', ['1', '256'], 'Stream counts for --sample.')
    flags.DEFINE_integer('sample_length', 512, 'Tokens generated per stream for --sample.')
    flags.DEFINE_integer('vocab_size', 65, 'Vocabulary of the random training tokens.')
    flags.DEFINE_bool('corpus', False, "Train on the config's corpus (data.path), not random "
                      'tokens; implied when --config.data.path names a file.')
    flags.DEFINE_bool('compare_torch', False, 'Also run the same model in PyTorch (needs torch).')
    flags.DEFINE_integer('torch_threads', 0, 'torch.set_num_threads; 0 = the CPUs available.')
    flags.DEFINE_string('json', None, 'Also write every figure to this JSON file.')
    flags.mark_flags_as_required(['config'])


@cli.command
def main(argv):
    try:
        streams = tuple(int(s) for s in FLAGS.sample_streams)
    except ValueError:
        raise CharLMError(f'--sample_streams must be integers, got {FLAGS.sample_streams}'
                          ) from None
    json_path = FLAGS.json and cli.check_output(FLAGS.json, flag='--json')
    result = run(FLAGS.config, steps=FLAGS.steps, repeats=FLAGS.repeats,
                 warmup_steps=FLAGS.warmup_steps, sample=FLAGS.sample, sample_streams=streams,
                 sample_length=FLAGS.sample_length, vocab_size=FLAGS.vocab_size,
                 corpus=True if FLAGS.corpus else None, compare_torch=FLAGS.compare_torch,
                 torch_threads=FLAGS.torch_threads)
    result['command'] = ' '.join(['python -m charlm.bench'] + sys.argv[1:])
    print(table(result), flush=True)
    if json_path:
        try:
            json_path.write_text(json.dumps(result, indent=2) + '\n', encoding='utf-8')
        except OSError as e:
            raise CharLMError(f'cannot write --json={FLAGS.json}: {e.strerror}') from None


if __name__ == '__main__':
    define_flags()
    app.run(main, flags_parser=cli.parse_flags)
