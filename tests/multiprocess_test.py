"""Two local processes x two CPU devices as one job, against one process x four devices."""

import ast
import os
import pathlib
import random
import signal
import subprocess
import sys

import numpy as np
import pytest
from conftest import FAST_COMPILE, SHAKESPEARE_LIKE, cli_env

from charlm import checkpointing, train

ROOT = pathlib.Path(__file__).resolve().parent.parent


def launch(*args, timeout=300, env=None) -> subprocess.CompletedProcess:
    """launch/local_multiprocess.sh ARGS; on a timeout the whole job is killed, not the
    launcher alone (a hung process would otherwise outlive the test)."""
    env = dict(os.environ, PORT=str(random.randint(20000, 40000)), XLA_FLAGS=FAST_COMPILE,
               **(env or {}))
    proc = subprocess.Popen(['bash', 'launch/local_multiprocess.sh', *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        raise AssertionError(f'the job did not finish in {timeout}s:\n{out[-3000:]}') from None
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, '')


def _done(line: str) -> dict:
    return ast.literal_eval(line.split('done: ', 1)[1].strip())


def test_two_processes_match_one_and_restore_in_one(tiny_config, tmp_path):
    # A validation split of over 800 eval batches: per-batch collectives dispatched back to
    # back used to deadlock the two processes in the first evaluation.
    corpus = tmp_path / 'long.txt'
    corpus.write_text(SHAKESPEARE_LIKE * 1100, encoding='utf-8')
    overrides = {'data.path': str(corpus), 'data.val_fraction': 0.2, 'eval_batch_size': 4,
                 'eval_every_steps': 20, 'sample.length': 0}  # one evaluation, at the end
    for key, value in overrides.items():
        section, _, field = key.rpartition('.')
        (tiny_config[section] if section else tiny_config)[field] = value
    val_tokens = int(len(SHAKESPEARE_LIKE) * 1100 * 0.2)
    assert val_tokens // (4 * tiny_config.data.seq_len) >= 800  # eval batches of 4 windows
    workdir = tmp_path / 'mp'
    proc = launch('2', '2', '--config=configs/tiny.py', f'--workdir={workdir}',
                  *[f'--config.{k}={v}' for k, v in overrides.items()])
    assert proc.returncode == 0, proc.stdout[-3000:]
    results = {line[1]: _done(line) for line in proc.stdout.splitlines() if 'done: ' in line}
    assert set(results) == {'0', '1'}
    assert results['0'] == results['1']  # every process reports the same numbers
    assert sum('step 20/20' in line for line in proc.stdout.splitlines()) == 1  # process 0 only
    # The processes share one cache folder (as hosts on a shared filesystem): one prepared
    # the corpus, the other waited for it or found it prepared.
    assert sum('once into' in line for line in proc.stdout.splitlines()) == 1, proc.stdout

    single = train.train_and_evaluate(tiny_config, str(tmp_path / 'single'))  # 1 x 4 devices
    for key in ('train_loss', 'val_loss', 'best_val_loss'):
        assert results['0'][key] == pytest.approx(single[key], rel=1e-5)
    ckpts = checkpointing.Checkpoints(str(workdir), create=False)
    mp_params = ckpts.restore_state_raw()['params']
    one_params = checkpointing.Checkpoints(str(tmp_path / 'single'), create=False
                                           ).restore_state_raw()['params']
    import jax
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
                 mp_params, one_params)

    # The 2-process checkpoint resumes in one process with one device.
    resume = subprocess.run(
        [sys.executable, '-m', 'charlm.main', '--config=configs/tiny.py', f'--workdir={workdir}',
         *[f'--config.{k}={v}' for k, v in overrides.items()], '--config.num_train_steps=25'],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
        env=cli_env(1))
    assert resume.returncode == 0, resume.stderr[-3000:]
    assert 'Resuming from' in resume.stderr and 'step 25/25' in resume.stderr


def test_hosts_with_local_caches_each_prepare_their_own(corpus_file, tmp_path):
    local = tmp_path / 'local'
    env = {'HOST_LOCAL_CACHE': str(local)}
    proc = launch('2', '1', '--config=configs/tiny.py', f'--workdir={tmp_path}/w',
                  f'--config.data.path={corpus_file}', '--config.num_train_steps=2',
                  '--config.sample.length=0', env=env)
    assert proc.returncode == 0, proc.stdout[-3000:]
    made = sorted(line[:3] for line in proc.stdout.splitlines() if 'once into' in line)
    assert made == ['[0]', '[1]'], proc.stdout[-3000:]
    for i in (0, 1):
        folders = [p for p in (local / str(i) / 'charlm' / 'prepared').iterdir()
                   if p.suffix != '.lock']  # the lock file stays, free and empty
        assert len(folders) == 1 and folders[0].name.startswith('corpus-')
        assert (folders[0] / 'meta.json').is_file()


def test_unreachable_coordinator_fails_in_bounded_time(tmp_path):
    proc = subprocess.run(
        [sys.executable, '-m', 'charlm.main', '--config=configs/tiny.py',
         f'--workdir={tmp_path}/w', '--coordinator_address=localhost:1', '--num_processes=2',
         '--process_id=1', '--init_timeout=3'],
        cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and 'Traceback' not in proc.stderr
    assert 'charlm: error: no coordinator answered at localhost:1 within 3s' in proc.stderr


def test_a_job_holds_its_workdir_once_and_a_second_job_is_refused(corpus_file, tmp_path):
    workdir = tmp_path / 'mp'
    env = dict(os.environ, PORT=str(random.randint(20000, 40000)), PYTHONUNBUFFERED='1',
               XLA_FLAGS=FAST_COMPILE)
    first = subprocess.Popen(
        ['bash', 'launch/local_multiprocess.sh', '2', '1', '--config=configs/tiny.py',
         f'--workdir={workdir}', f'--config.data.path={corpus_file}',
         '--config.num_train_steps=100000'], cwd=ROOT, env=env, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        for line in first.stdout:  # both hosts train
            if 'eval at step 10:' in line:
                break
        second = launch('2', '1', '--config=configs/tiny.py', f'--workdir={workdir}',
                        f'--config.data.path={corpus_file}', timeout=120)
        assert second.returncode == 2, second.stdout[-3000:]
        assert 'Traceback' not in second.stdout
        errors = [ln for ln in second.stdout.splitlines() if 'charlm: error:' in ln]
        assert len(errors) == 2, second.stdout[-3000:]  # one line from each process
        assert any(ln.startswith('[0]') and 'is being trained by pid' in ln for ln in errors)
        assert any(ln.startswith('[1]') and 'another process of this job' in ln for ln in errors)
        assert first.poll() is None
        first.send_signal(signal.SIGTERM)  # the launcher forwards it; the hosts agree on a step
        rest = first.stdout.read()
        assert first.wait(timeout=120) == 0, rest[-3000:]
        assert 'stopped by SIGTERM at step' in rest, rest[-1500:]
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
