"""One visit to a CUDA machine: versions, the GPU tests, smoke runs, benchmarks, a training run.

  python3 benchmarks/gpu_check.py --out=$OUT --data=.gpu_data/tinyshakespeare.txt \
      --reference=.gpu_data/cpu_reference.json --budget_s=480
  python3 benchmarks/gpu_check.py --dry-run     # prints the plan; runs nothing, needs no GPU
  python3 benchmarks/gpu_check.py --cpu_reference --data=FILE --out=.gpu_data   # CPU losses

Every step is a subprocess with its own time limit, cut to what is left of --budget_s; a
step that fails or hangs is recorded and the next one runs. OUT gets gpu_check.json (every
result), gpu_check.md (the tables, also printed), gpu_check.log (all the steps' output),
train_losses.json and train_f32_losses.json (configs/gpu.py's losses per step, in the
format of --cpu_reference's cpu_reference.json). How to run it: benchmarks/README.md, GPU.
"""

from __future__ import annotations

import argparse
import dataclasses
import fnmatch
import importlib
import importlib.util
import json
import os
import pathlib
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
PY = sys.executable
SELF = 'benchmarks/gpu_check.py'  # steps run from ROOT
SIZES = {  # bench configurations A and B (benchmarks/README.md, GPU)
    'A': dict(num_layers=2, hidden_size=512, embed_dim=128, batch_size=128, seq_len=100),
    'B': dict(num_layers=3, hidden_size=1024, embed_dim=128, batch_size=64, seq_len=256),
}
TINY = dict(num_layers=2, hidden_size=16, embed_dim=8, batch_size=8, seq_len=16)  # --debug_tiny
VARIANTS = (('hoisted', 'float32'), ('cudnn', 'float32'), ('hoisted', 'bfloat16'),
            ('cell', 'float32'))
# Largest loss difference (nats) from the CPU reference that passes: float32 matmuls, and
# JAX's default GPU precision (TF32 matmuls, 10-bit mantissa).
TOLERANCE = {'highest': 1e-4, 'default': 2e-3}


@dataclasses.dataclass
class Step:
    name: str
    cmds: list[list[str]]  # run in turn; the first failure ends the step
    timeout: float
    env: dict[str, str] = dataclasses.field(default_factory=dict)
    result: str | None = None  # a .json (or text) file the step writes, kept in the record


def plan(a: argparse.Namespace, work: pathlib.Path) -> list[Step]:
    """Every step, most important first: a short budget drops the last ones."""
    data = [f'--config.data.path={a.data}'] if a.data else []
    steps = [Step('versions', [[PY, SELF, '--worker=versions', f'--json={work}/versions.json']],
                  90, result=f'{work}/versions.json'),
             Step('pytest_cudnn', [[PY, '-m', 'pytest', 'tests/model_test.py', '-k', 'cudnn',
                                    '-rfEs', '-p', 'no:cacheprovider', '-o', 'addopts=-q']], 180,
                  {'JAX_PLATFORMS': 'cuda'})]
    for impl in ('hoisted', 'cudnn', 'cell'):  # train 1 step, evaluate, save, sample
        w = work / f'smoke_{impl}'
        steps.append(Step(f'smoke_{impl}', [
            [PY, '-m', 'charlm.main', '--config=configs/tiny.py', f'--workdir={w}',
             f'--config.model.impl={impl}', '--config.num_train_steps=1', *data],
            [PY, '-m', 'charlm.sample', f'--workdir={w}', '--length=50',
             f'--output={w}/sample.txt']], 150, result=f'{w}/sample.txt'))
    config = 'tiny' if a.debug_tiny else 'gpu'
    for name, precision, n in (('train_f32', 'highest', a.reference_steps),
                               ('train', 'default', a.train_steps)):
        path = work / f'{name}_losses.json'
        cmd = [PY, SELF, '--worker=train', f'--json={path}', f'--train_config={config}',
               f'--train_steps={n}', f'--precision={precision}']
        steps.append(Step(name, [cmd + ([f'--data={a.data}'] if a.data else [])], 150,
                          result=str(path)))
    torch = has_torch()
    timing = (['--steps=2', '--repeats=1', '--warmup_steps=1', '--sample_streams=2',
               '--sample_length=8'] if a.debug_tiny else
              [f'--steps={a.bench_steps}', '--repeats=3', '--warmup_steps=3'])
    for size, shape in SIZES.items():
        shape = TINY if a.debug_tiny else shape
        fields = [f'--config.model.{k}={shape[k]}' for k in ('num_layers', 'hidden_size',
                                                              'embed_dim')]
        fields += [f'--config.batch_size={shape["batch_size"]}',
                   f'--config.data.seq_len={shape["seq_len"]}']
        for i, (impl, dtype) in enumerate(VARIANTS):
            name = f'bench_{size}_{impl}' + ('_bf16' if dtype == 'bfloat16' else '')
            path = work / f'{name}.json'
            cmd = [PY, '-m', 'charlm.bench', '--config=configs/shakespeare.py', '--sample',
                   *timing, *fields, f'--config.model.impl={impl}',
                   f'--config.model.dtype={dtype}', f'--json={path}']
            if i == 0 and torch:  # one torch baseline per size: it does not depend on impl
                cmd.append('--compare_torch')
            # No persistent compile cache: compile_s is then a fresh compile on any rerun.
            steps.append(Step(name, [cmd], 120 if size == 'A' else 180,
                              {'CHARLM_COMPILATION_CACHE': ''}, str(path)))
    if a.only:
        steps = [s for s in steps if any(fnmatch.fnmatch(s.name, p) for p in a.only.split(','))]
    return steps


def has_torch() -> bool:
    return importlib.util.find_spec('torch') is not None


def last_line(path: pathlib.Path, start: int) -> str:
    """The most telling line a command wrote to the log after byte `start`."""
    with open(path, 'rb') as f:
        f.seek(start)
        lines = [ln.strip() for ln in f.read().decode('utf-8', 'replace').splitlines()
                 if ln.strip()]
    errors = [ln for ln in lines if ln.startswith('charlm: error:')]
    return ((errors or lines or [''])[-1])[:300]


def run_step(step: Step, log_path: pathlib.Path, deadline: float) -> dict:
    rec = {'name': step.name, 'commands': [shlex.join(c) for c in step.cmds]}
    left = deadline - time.monotonic()
    if left < 20:
        return rec | {'status': 'skipped', 'seconds': 0.0, 'detail': 'out of --budget_s'}
    limit, t0 = min(step.timeout, left - 5), time.monotonic()
    env = dict(os.environ, PYTHONUNBUFFERED='1', **step.env)
    status, detail = 'ok', ''
    for cmd in step.cmds:
        with open(log_path, 'a', encoding='utf-8') as log:
            log.write(f'\n===== {step.name}: {shlex.join(cmd)}\n')
        start = log_path.stat().st_size
        with open(log_path, 'ab') as log:  # a new session: a timeout kills its children too
            proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True)
            try:
                rc = proc.wait(timeout=max(limit - (time.monotonic() - t0), 1))
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                rc = None
        detail = last_line(log_path, start)
        if rc is None:
            status, detail = 'timeout', f'killed after {limit:.0f}s; last: {detail}'
        elif rc != 0:
            status, detail = 'failed', f'exit {rc}: {detail}'
        if status != 'ok':
            break
    rec.update(status=status, seconds=round(time.monotonic() - t0, 1), detail=detail)
    if status == 'ok' and step.result:
        path = pathlib.Path(step.result)
        try:
            text = path.read_text(encoding='utf-8')
            rec['result'] = json.loads(text) if path.suffix == '.json' else text
        except (OSError, ValueError) as e:
            rec.update(status='failed', detail=f'no result in {path}: {e}')
    return rec


# ------------------------------------------------------------------ pure helpers


def compare_losses(losses: list[float], reference: list[float], tol: float) -> dict:
    """Per-step losses against a reference run's, over the steps both have."""
    n = min(len(losses), len(reference))
    diffs = [abs(a - b) for a, b in zip(losses[:n], reference[:n], strict=True)]
    worst = max(range(n), key=diffs.__getitem__) if n else None
    return {'steps': n, 'max_abs_diff': diffs[worst] if n else None, 'worst_step': worst,
            'reference_change': reference[0] - reference[n - 1] if n else None,
            'tolerance': tol, 'ok': bool(n) and diffs[worst] <= tol}


def markdown_table(headers: list[str], rows: list[list]) -> str:
    def cell(x):
        return str(x).replace('|', '\\|').replace('\n', ' ')
    lines = ['| ' + ' | '.join(map(cell, headers)) + ' |',
             '|' + '|'.join('---' for _ in headers) + '|']
    return '\n'.join(lines + ['| ' + ' | '.join(map(cell, r)) + ' |' for r in rows])


def _num(x, fmt: str = ',.0f') -> str:
    return 'n/a' if x is None else format(x, fmt)


def versions_line(v: dict) -> str:
    p, t = v.get('packages', {}), v.get('torch') if isinstance(v.get('torch'), dict) else {}
    plugins = ', '.join(f'{k} {x}' for k, x in v.get('cuda_plugins', {}).items())
    smi, cudnn = v.get('nvidia_smi') or 'n/a', v.get('jax_cuda', {}).get('cudnn_get_version')
    gpu = ', '.join(v.get('devices', [])) if smi.startswith('n/a') else smi
    return (f"jax {p.get('jax')}, jaxlib {p.get('jaxlib')}, {plugins or 'no CUDA plugin'}, "
            f"cuDNN (jax) {_num(cudnn if isinstance(cudnn, int) else None, 'd')}, flax "
            f"{p.get('flax')}, torch {p.get('torch')} (CUDA {t.get('cuda')}, cuDNN "
            f"{t.get('cudnn')}); GPU: {gpu}")


def bench_rows(records: list[dict]) -> list[list]:
    """One row per bench step; the ratio is against the same size's torch cuDNN LSTM."""
    bench = [r for r in records if r['name'].startswith('bench_')]
    torch = {}
    for r in bench:
        if (r.get('result') or {}).get('torch'):
            torch.setdefault(r['name'].split('_')[1], r['result']['torch'])
    rows = []
    for r in bench:
        _, size, impl, *bf16 = r['name'].split('_')
        row, res, t = [size, impl, 'bfloat16' if bf16 else 'float32'], r.get('result'), {}
        if not res:
            rows.append(row + [r['status']] + [''] * 7)
            continue
        c, t = res['charlm'], torch.get(size) or {}
        ratio = c['train_chars_per_s'] / t['train_chars_per_s'] if t else None
        rows.append(row + [
            _num(c['train_chars_per_s']), _num(c['step_ms'], '.1f'), _num(c['compile_s'], '.1f'),
            _num(c['peak_device_mib']),
            ' / '.join(map(_num, c.get('sample_chars_per_s', {}).values())),
            _num(t.get('train_chars_per_s')), _num(ratio, '.2f') + ('x' if ratio else ''),
            ' / '.join(map(_num, t.get('sample_chars_per_s', {}).values()))])
    return rows


def brief(rec: dict) -> str:
    r = rec.get('result')
    if rec['status'] != 'ok' or r is None:
        return rec.get('detail', '')
    if rec['name'] == 'versions':
        return versions_line(r)
    if rec['name'].startswith('smoke_'):
        return repr(r[:60])
    if rec['name'].startswith('train'):
        c = rec.get('compare')
        cmp = (f"; vs CPU: max |diff| {c['max_abs_diff']:.2e} at step {c['worst_step']} "
               f"({'ok' if c['ok'] else 'OVER'} {c['tolerance']:g})" if c and c['steps'] else '')
        return (f"loss {r['losses'][0]:.4f} -> {r['losses'][-1]:.4f} in {r['steps']} steps, "
                f"{_num(r['chars_per_s'])} chars/s{cmp}")
    if rec['name'].startswith('bench_'):
        t = r.get('torch')
        return (f"{r['charlm']['train_chars_per_s']:,.0f} train chars/s on "
                f"{r['charlm'].get('device')}" + (f"; torch {t['train_chars_per_s']:,.0f} on "
                                              f"{t.get('device')}" if t else ''))
    return rec.get('detail', '')


def report(records: list[dict], header: dict) -> str:
    v = next((r['result'] for r in records if r['name'] == 'versions' and r.get('result')), {})
    spent = sum(r['seconds'] for r in records)
    lines = [f"# charlm GPU check, {header['date']}: {spent:.0f}s of the steps' "
             f"{header.get('budget_s', 0):.0f}s", '', versions_line(v) if v else
             'versions: not read', '',
             markdown_table(['step', 'status', 's', 'result'],
                            [[r['name'], r['status'], r['seconds'], brief(r)] for r in records])]
    if any(r['name'].startswith('bench_') for r in records):
        lines += ['', 'Benchmarks: train chars/s, charlm.bench; torch = the same size\'s '
                  'cuDNN nn.LSTM (benchmarks/torch_lstm.py). Sample chars/s: 1 / 256 streams.',
                  '', markdown_table(['size', 'impl', 'dtype', 'charlm chars/s', 'step ms',
                                      'compile s', 'peak MiB', 'sample', 'torch chars/s',
                                      'charlm/torch', 'torch sample'], bench_rows(records))]
    return '\n'.join(lines) + '\n'


# ------------------------------------------------------------------ workers (subprocesses)


def _try(fn, default=None):
    """fn(), or what went wrong: a missing tool, plugin or attribute is a finding here."""
    try:
        return fn()
    except Exception as e:
        return default if default is not None else f'n/a ({type(e).__name__}: {e})'[:200]


def versions() -> dict:
    import importlib.metadata as md
    names = ('jax', 'jaxlib', 'flax', 'optax', 'orbax-checkpoint', 'numpy', 'ml_collections',
             'tensorboardX', 'absl-py', 'protobuf', 'torch')
    out = {'python': sys.version.split()[0],
           'packages': {n: _try(lambda n=n: md.version(n), 'not installed') for n in names},
           'cuda_plugins': {d.metadata['Name']: d.version for d in md.distributions()
                            if re.match(r'jax[-_]cuda', d.metadata['Name'] or '', re.I)},
           'nvidia_smi': _try(lambda: subprocess.run(
               ['nvidia-smi', '--query-gpu=name,memory.total,driver_version',
                '--format=csv,noheader'], capture_output=True, text=True, timeout=30
           ).stdout.strip())}
    import jax
    sys.path.insert(0, str(ROOT))
    from charlm import jax_private
    from charlm import steps as steps_lib
    cuda_versions = _try(jax_private.cuda_versions)
    d = jax.devices()[0]
    out.update(
        backend=jax.default_backend(), devices=[f'{x.device_kind} ({x.platform})'
                                                for x in jax.devices()],
        device_bytes_limit=_try(lambda: (d.memory_stats() or {}).get('bytes_limit')),
        jax_cuda={fn: _try(lambda fn=fn: getattr(cuda_versions, fn)()) for fn in (
            'cuda_runtime_get_version', 'cuda_driver_get_version', 'cudnn_get_version',
            'cudnn_build_version', 'cublas_get_version')},
        charlm_has_cuda=_try(steps_lib._has_cuda),  # impl='cudnn' reads Device.client through it
        environment_info=jax.print_environment_info(return_string=True))
    if importlib.util.find_spec('torch') is None:
        return out | {'torch': None}
    # torch in a process of its own, so that it loads its own cuDNN, as for the baseline
    code = ('import json, torch; c = torch.cuda.is_available(); print(json.dumps({'
            "'version': torch.__version__, 'cuda': torch.version.cuda, 'cudnn': "
            "torch.backends.cudnn.version(), 'gpu': c and torch.cuda.get_device_name()}))")
    return out | {'torch': _try(lambda: json.loads(subprocess.run(
        [PY, '-c', code], capture_output=True, text=True, timeout=120, check=True).stdout))}


def train_losses(config_name: str, data_path: str | None, steps: int, precision: str) -> dict:
    """The loss of each of the first `steps` steps of configs/CONFIG_NAME.py, the loop of
    train.train_and_evaluate without its evaluations and checkpoints."""
    sys.path.insert(0, str(ROOT))
    import jax
    if precision != 'default':
        jax.config.update('jax_default_matmul_precision', precision)
    from charlm import data
    from charlm import steps as steps_lib
    config = importlib.import_module(f'configs.{config_name}').get_config()
    if data_path:
        config.data.path = data_path
    corpus = data.load_corpus(config)
    model = steps_lib.make_model(config, corpus.tokenizer.vocab_size)
    layout = data.Layout(config.batch_size, jax.device_count(), jax.local_device_count(),
                         jax.process_index())
    init_key, train_key, _ = jax.random.split(jax.random.key(config.seed), 3)
    state = steps_lib.create_state(model, steps_lib.make_optimizer(config), init_key)
    state = steps_lib.to_devices(state, layout)
    p_train, metrics = steps_lib.parallel_steps(model).train, []
    t0 = time.perf_counter()
    for step in range(steps):
        batch = data.train_batch(corpus.tokens['train'], config.data.seq_len, step,
                                 config.seed, layout)
        state, m = p_train(state, batch, train_key)
        metrics.append(m)
        if step == 0:
            jax.block_until_ready(m)
            t1 = time.perf_counter()
    fetched = jax.device_get(metrics)  # the only host sync after the first step
    t2 = time.perf_counter()
    chars = config.batch_size * config.data.seq_len
    return {'config': f'configs/{config_name}.py', 'data': config.data.path,
            'device': f'{jax.device_count()} x {jax.devices()[0].device_kind}',
            'jax': jax.__version__, 'precision': precision, 'steps': steps,
            'first_step_s': t1 - t0,
            'chars_per_s': chars * (steps - 1) / (t2 - t1) if steps > 1 else None,
            'losses': [float(m['nll_sum'][0] / m['count'][0]) for m in fetched]}


def write_json(path: pathlib.Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2) + '\n', encoding='utf-8')


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--out', default='gpu_check_out', help='results folder ($OUT)')
    p.add_argument('--data', help='a UTF-8 corpus file (tiny-shakespeare); else the built-in')
    p.add_argument('--budget_s', type=float, default=480, help='wall seconds for all steps')
    p.add_argument('--reference', help="--cpu_reference's JSON to compare the losses with")
    p.add_argument('--train_steps', type=int, default=100, help="the 'train' step's steps")
    p.add_argument('--reference_steps', type=int, default=10,
                   help="steps of --cpu_reference and of 'train_f32' (float32 matmuls)")
    p.add_argument('--bench_steps', type=int, default=30, help='charlm.bench --steps')
    p.add_argument('--only', help='comma-separated step names or globs, e.g. bench_B_*')
    p.add_argument('--dry-run', '--dry_run', dest='dry_run', action='store_true',
                   help='print the steps and their commands; run nothing')
    p.add_argument('--cpu_reference', action='store_true',
                   help='write OUT/cpu_reference.json: the train_f32 losses on this CPU')
    hidden = argparse.SUPPRESS
    p.add_argument('--debug_tiny', action='store_true', help=hidden)  # tiny sizes, for CPUs
    p.add_argument('--work', default=str(pathlib.Path(tempfile.gettempdir()) / 'gpu_check'),
                   help=hidden)
    p.add_argument('--worker', choices=('versions', 'train'), help=hidden)
    p.add_argument('--json', help=hidden)
    p.add_argument('--train_config', default='gpu', help=hidden)
    p.add_argument('--precision', default='default', help=hidden)
    a = p.parse_args(argv)
    if a.worker:
        write_json(pathlib.Path(a.json), versions() if a.worker == 'versions' else
                   train_losses(a.train_config, a.data, a.train_steps, a.precision))
        return 0
    if a.data and not a.dry_run and not pathlib.Path(a.data).is_file():
        p.error(f'--data={a.data}: no such file')
    out = pathlib.Path(a.out)
    if a.cpu_reference:
        os.environ['JAX_PLATFORMS'] = 'cpu'  # before jax is imported
        ref = train_losses('tiny' if a.debug_tiny else a.train_config, a.data,
                           a.reference_steps, 'highest')
        write_json(out / 'cpu_reference.json', ref)
        print(f"wrote {out / 'cpu_reference.json'}: losses {ref['losses']}")
        return 0
    work = pathlib.Path(a.work)
    steps = plan(a, work)
    if not steps:
        p.error(f'--only={a.only} matches no step')
    if a.dry_run:
        print(f"{len(steps)} steps in {a.budget_s:.0f}s at most; torch baseline: "
              f"{'yes' if has_torch() else 'no, torch is not installed'}; losses compared "
              f"with: {a.reference or 'nothing (no --reference)'}")
        for i, s in enumerate(steps, 1):
            env = ' '.join(f'{k}={shlex.quote(v)}' for k, v in s.env.items())
            print(f'[{i:2}/{len(steps)}] {s.name}  (limit {s.timeout:.0f}s)')
            for c in s.cmds:
                print(f"      {env + ' ' if env else ''}{shlex.join(c)}")
        return 0
    reference = None
    if a.reference:
        try:
            reference = json.loads(pathlib.Path(a.reference).read_text(encoding='utf-8'))
        except (OSError, ValueError) as e:
            print(f'gpu_check: reference not read, losses not compared: {e}', flush=True)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    out.mkdir(parents=True, exist_ok=True)
    (out / 'gpu_check.log').write_text('', encoding='utf-8')
    header = {'date': time.strftime('%Y-%m-%d %H:%M:%S'), 'argv': sys.argv, 'budget_s': a.budget_s,
              'torch_baseline': has_torch(), 'reference': a.reference if reference else None}
    deadline, records = time.monotonic() + a.budget_s, []
    for i, s in enumerate(steps, 1):
        print(f'[{i:2}/{len(steps)}] {s.name} ...', end=' ', flush=True)
        rec = run_step(s, out / 'gpu_check.log', deadline)
        if s.name.startswith('train') and rec.get('result'):
            write_json(out / f'{s.name}_losses.json', rec['result'])
            if reference and reference.get('config') == rec['result']['config']:
                rec['compare'] = compare_losses(rec['result']['losses'], reference['losses'],
                                                TOLERANCE[rec['result']['precision']])
        records.append(rec)
        print(f"{rec['status']} ({rec['seconds']:.0f}s) {_try(lambda r=rec: brief(r))[:150]}",
              flush=True)
        write_json(out / 'gpu_check.json', header | {'steps': records})  # after each step:
        md = _try(lambda: report(records, header))  # a malformed result must not end the run
        (out / 'gpu_check.md').write_text(md, encoding='utf-8')
    print('\n' + md, flush=True)
    return 0 if all(r['status'] == 'ok' for r in records) else 1


if __name__ == '__main__':
    sys.exit(main())
