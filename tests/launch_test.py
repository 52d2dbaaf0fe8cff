"""The launch scripts: syntax, and the gcloud commands a --dry-run would run."""

import os
import pathlib
import subprocess

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent


@pytest.mark.parametrize('script', ['tpu_pod.sh', 'slurm_gpu.sbatch', 'local_multiprocess.sh'])
def test_syntax(script):
    subprocess.run(['bash', '-n', str(ROOT / 'launch' / script)], check=True)


def pod(*args, **env):
    return subprocess.run(['bash', 'launch/tpu_pod.sh', '--dry-run', *args], cwd=ROOT,
                          capture_output=True, text=True, env=dict(os.environ, **env))


def test_tpu_pod_dry_run_prints_each_step():
    out = pod('all', '--config.batch_size=1024', BUCKET='b', TPU_NAME='t', ACCELERATOR='v4-32')
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert 'tpu-vm create t' in lines[0] and '--accelerator-type=v4-32' in lines[0]
    assert any('tpu-vm scp' in line and '--worker=all' in line for line in lines)
    train = next(line for line in lines if 'charlm.main' in line)
    assert '--worker=all' in train and '--multihost' in train
    assert '--workdir=/gcs/runs/shakespeare' in train and '--config.batch_size=1024' in train
    assert 'tail -F' in lines[-1]
    assert 'tpu-vm delete t' in pod('delete', TPU_NAME='t').stdout


def test_tpu_pod_needs_a_bucket_and_a_known_subcommand():
    out = pod('train', BUCKET='')
    assert out.returncode == 2 and 'BUCKET' in out.stderr
    out = pod('launch')
    assert out.returncode == 2 and "unknown subcommand 'launch'" in out.stderr


def test_local_launcher_runs_the_callers_python_and_reports_each_failure(tmp_path):
    # A stand-in interpreter: process 1 is killed while process 0, waited for first, succeeds.
    fake = tmp_path / 'python'
    fake.write_text('#!/usr/bin/env bash\necho "ran $*"\n'
                    'case "$*" in *--process_id=1*) kill -9 $$;; esac\nsleep 1\n')
    fake.chmod(0o755)
    out = subprocess.run(['bash', 'launch/local_multiprocess.sh', '2', '1', '--x=1'], cwd=ROOT,
                         capture_output=True, text=True, timeout=30,
                         env=dict(os.environ, PYTHON=str(fake), PORT='12345'))
    assert out.returncode == 137, out  # not lost behind process 0's success
    for i in (0, 1):
        assert (f'[{i}] ran -u -m charlm.main --coordinator_address=localhost:12345 '
                f'--num_processes=2 --process_id={i} --x=1') in out.stdout
    assert out.stderr.strip() == '[1] process 1 was ended by SIGKILL', out.stderr
