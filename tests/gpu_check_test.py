"""benchmarks/gpu_check.py on a CPU: its dry run, its step runner and its pure helpers.

The checks themselves need a CUDA machine and never run in CI (benchmarks/README.md, GPU).
"""

import argparse
import importlib.util
import json
import re
import subprocess
import sys

import pytest
from conftest import ROOT

_spec = importlib.util.spec_from_file_location('gpu_check', ROOT / 'benchmarks' / 'gpu_check.py')
gpu_check = sys.modules['gpu_check'] = importlib.util.module_from_spec(_spec)  # dataclasses
_spec.loader.exec_module(gpu_check)

STEPS = ['versions', 'pytest_cudnn', 'smoke_hoisted', 'smoke_cudnn', 'smoke_cell', 'train_f32',
         'train'] + [f'bench_{size}_{v}' for size in 'AB'
                     for v in ('hoisted', 'cudnn', 'hoisted_bf16', 'cell')]


def test_dry_run_lists_every_step_and_runs_nothing(tmp_path):
    out, work = tmp_path / 'out', tmp_path / 'work'
    proc = subprocess.run(
        [sys.executable, 'benchmarks/gpu_check.py', '--dry-run', f'--out={out}',
         f'--work={work}', '--data=.gpu_data/tinyshakespeare.txt'],
        cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    names = re.findall(r'^\[ ?\d+/\d+\] (\S+)', proc.stdout, re.M)
    assert names == STEPS
    text = proc.stdout
    for expected in ('JAX_PLATFORMS=cuda', '-m pytest tests/model_test.py -k cudnn',
                     '-m charlm.main --config=configs/tiny.py', '-m charlm.sample',
                     '--length=50', '--train_config=gpu', '--precision=highest',
                     '--config.model.hidden_size=1024 --config.model.embed_dim=128 '
                     '--config.batch_size=64 --config.data.seq_len=256',
                     '--config.model.impl=cudnn', '--config.model.dtype=bfloat16',
                     '--config.data.path=.gpu_data/tinyshakespeare.txt'):
        assert expected in text, expected
    assert not out.exists() and not work.exists()


def test_only_picks_steps_by_glob():
    args = argparse.Namespace(
        data=None, debug_tiny=False, reference_steps=3, train_steps=5, bench_steps=2,
        only='bench_B_*,versions')
    names = [s.name for s in gpu_check.plan(args, ROOT / 'unused')]
    assert names == ['versions'] + [n for n in STEPS if n.startswith('bench_B_')]


def _py(code):
    return [sys.executable, '-c', code]


def test_steps_fail_time_out_or_are_skipped_and_the_next_one_runs(tmp_path):
    log, result = tmp_path / 'log', tmp_path / 'r.json'
    far = gpu_check.time.monotonic() + 60
    ok = gpu_check.run_step(gpu_check.Step('ok', [_py(f'open({str(result)!r}, "w").write('
                                                      '"{\\"x\\": 1}")')], 10,
                                           result=str(result)), log, far)
    assert ok['status'] == 'ok' and ok['result'] == {'x': 1}
    bad = gpu_check.run_step(gpu_check.Step('bad', [_py('print("charlm: error: no GPU")\n'
                                                        'raise SystemExit(2)'),
                                                    _py('print("never")')], 10), log, far)
    assert bad['status'] == 'failed' and bad['detail'] == 'exit 2: charlm: error: no GPU'
    slow = gpu_check.run_step(gpu_check.Step('slow', [_py('import time; time.sleep(30)')], 1),
                              log, far)
    assert slow['status'] == 'timeout' and slow['seconds'] < 10
    late = gpu_check.run_step(gpu_check.Step('late', [_py('')], 10), log,
                              gpu_check.time.monotonic() + 5)
    assert late['status'] == 'skipped'
    assert 'never' not in log.read_text() and '===== slow:' in log.read_text()


def test_main_writes_json_and_markdown_after_a_failed_step(tmp_path, monkeypatch, capsys):
    steps = [gpu_check.Step('versions', [_py('raise SystemExit(1)')], 10),
             gpu_check.Step('smoke_x', [_py('print("fine")')], 10)]
    monkeypatch.setattr(gpu_check, 'plan', lambda a, work: steps)
    out = tmp_path / 'out'
    assert gpu_check.main([f'--out={out}', f'--work={tmp_path / "w"}']) == 1
    saved = json.loads((out / 'gpu_check.json').read_text())
    assert [(s['name'], s['status']) for s in saved['steps']] == [('versions', 'failed'),
                                                                  ('smoke_x', 'ok')]
    md = (out / 'gpu_check.md').read_text()
    assert '| versions | failed |' in md and '| smoke_x | ok |' in md
    assert md in capsys.readouterr().out


def test_compare_losses():
    c = gpu_check.compare_losses([4.0, 3.9, 3.5], [4.0, 3.9001, 3.8, 3.7], tol=1e-3)
    assert c['steps'] == 3 and c['worst_step'] == 2 and not c['ok']
    assert c['max_abs_diff'] == pytest.approx(0.3) and c['reference_change'] == pytest.approx(0.2)
    assert gpu_check.compare_losses([4.0, 3.9], [4.0, 3.9001], tol=1e-3)['ok']
    assert not gpu_check.compare_losses([], [4.0], tol=1)['ok']


def test_markdown_table_escapes_cells():
    assert gpu_check.markdown_table(['a', 'b'], [['x|y', 1], ['two\nlines', None]]) == (
        '| a | b |\n|---|---|\n| x\\|y | 1 |\n| two lines | None |')


def _bench(dtype, rate, torch_rate=None):
    return {'model': {'dtype': dtype},
            'charlm': {'train_chars_per_s': rate, 'step_ms': 2.0, 'compile_s': 1.5,
                       'peak_device_mib': None, 'sample_chars_per_s': {'1': 10.0, '256': 20.0}},
            'torch': torch_rate and {'train_chars_per_s': torch_rate,
                                     'sample_chars_per_s': {'1': 5.0, '256': 40.0}}}


def test_bench_rows_compare_every_variant_with_its_sizes_torch_run():
    records = [{'name': 'bench_A_hoisted', 'status': 'ok', 'result': _bench('float32', 300, 100)},
               {'name': 'bench_A_hoisted_bf16', 'status': 'ok',
                'result': _bench('bfloat16', 500)},
               {'name': 'bench_B_cudnn', 'status': 'failed'},
               {'name': 'bench_B_cell', 'status': 'ok', 'result': _bench('float32', 50)}]
    rows = gpu_check.bench_rows(records)
    assert rows[0] == ['A', 'hoisted', 'float32', '300', '2.0', '1.5', 'n/a', '10 / 20', '100',
                       '3.00x', '5 / 40']
    assert rows[1][2] == 'bfloat16' and rows[1][9] == '5.00x'
    assert rows[2][:4] == ['B', 'cudnn', 'float32', 'failed']
    assert rows[3][8:10] == ['n/a', 'n/a']  # size B has no torch run
    md = gpu_check.report([r | {'seconds': 1.0} for r in records], {'date': 'today'})
    assert 'charlm/torch' in md and 'versions: not read' in md


def test_versions_line_reads_what_the_versions_step_found():
    v = {'packages': {'jax': '0.11.2', 'jaxlib': '0.11.2', 'flax': '0.12.8', 'torch': '2.11.0'},
         'cuda_plugins': {'jax-cuda13-plugin': '0.11.2'}, 'jax_cuda': {'cudnn_get_version': 91400},
         'torch': {'cuda': '13.0', 'cudnn': 91300}, 'nvidia_smi': 'NVIDIA H200, 143771 MiB'}
    assert gpu_check.versions_line(v) == (
        'jax 0.11.2, jaxlib 0.11.2, jax-cuda13-plugin 0.11.2, cuDNN (jax) 91400, flax 0.12.8, '
        'torch 2.11.0 (CUDA 13.0, cuDNN 91300); GPU: NVIDIA H200, 143771 MiB')
    v = {'devices': ['cpu (cpu)'], 'nvidia_smi': 'n/a (FileNotFoundError)', 'torch': 'n/a (x)',
         'jax_cuda': {'cudnn_get_version': 'n/a (AttributeError)'}}
    assert 'cuDNN (jax) n/a' in gpu_check.versions_line(v)
    assert gpu_check.versions_line(v).endswith('GPU: cpu (cpu)')
