"""Two local processes x two CPU devices as one job, against one process x four devices;
and a process of a job that dies: the others stop with one line, and the job resumes."""

import ast
import os
import pathlib
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from conftest import FAST_COMPILE, SHAKESPEARE_LIKE, assert_one_line_error, cli_env, run_cli

from charlm import checkpointing, train, watchdog
from charlm import workdir as workdir_lib

ROOT = pathlib.Path(__file__).resolve().parent.parent


def launch(*args, timeout=300, env=None) -> subprocess.CompletedProcess:
    """launch/local_multiprocess.sh ARGS; on a timeout the whole job is killed, not the
    launcher alone (a hung process would otherwise outlive the test)."""
    proc = subprocess.Popen(['bash', 'launch/local_multiprocess.sh', *args], cwd=ROOT,
                            env=launch_env(env), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        raise AssertionError(f'the job did not finish in {timeout}s:\n{out[-3000:]}') from None
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, '')


def launch_env(env=None) -> dict:
    """A fresh port, the tests' compile flags and this interpreter (no venv need be active)."""
    return dict(os.environ, PORT=str(random.randint(20000, 40000)), XLA_FLAGS=FAST_COMPILE,
                PYTHON=sys.executable, **(env or {}))


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


def test_unreachable_coordinator_fails_in_bounded_time(tmp_path):
    proc = subprocess.run(
        [sys.executable, '-m', 'charlm.main', '--config=configs/tiny.py',
         f'--workdir={tmp_path}/w', '--coordinator_address=localhost:1', '--num_processes=2',
         '--process_id=1', '--init_timeout=3'],
        cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and 'Traceback' not in proc.stderr
    assert 'charlm: error: no coordinator answered at localhost:1 within 3s' in proc.stderr


def test_a_heartbeat_timeout_under_two_seconds_is_refused(tmp_path):
    proc = run_cli('charlm.main', '--config=configs/tiny.py', f'--workdir={tmp_path}/w',
                   '--heartbeat_timeout=1')
    assert_one_line_error(proc, '--heartbeat_timeout=1 is too short: at least 2 seconds')


def test_a_job_holds_its_workdir_once_and_a_second_job_is_refused(corpus_file, tmp_path):
    """Its hosts have local caches (not shared): each prepares the corpus into its own."""
    workdir, local = tmp_path / 'mp', tmp_path / 'local'
    env = launch_env({'PYTHONUNBUFFERED': '1', 'HOST_LOCAL_CACHE': str(local)})
    first = subprocess.Popen(
        ['bash', 'launch/local_multiprocess.sh', '2', '1', '--config=configs/tiny.py',
         f'--workdir={workdir}', f'--config.data.path={corpus_file}',
         '--config.num_train_steps=100000'], cwd=ROOT, env=env, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        said = []
        for line in first.stdout:  # both hosts train
            said.append(line)
            if 'eval at step 10:' in line:
                break
        made = sorted(line[:3] for line in said if 'once into' in line)
        assert made == ['[0]', '[1]'], ''.join(said)[-3000:]
        for i in (0, 1):
            folders = [p for p in (local / str(i) / 'charlm' / 'prepared').iterdir()
                       if p.suffix != '.lock']  # the lock file stays, free and empty
            assert len(folders) == 1 and folders[0].name.startswith('corpus-')
            assert (folders[0] / 'meta.json').is_file()
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


class _Store:
    """The distributed client's key-value store, in memory."""

    def __init__(self):
        self.kv = {}

    def key_value_set(self, key, value, allow_overwrite=False):
        self.kv[key] = value

    def key_value_dir_get(self, prefix):
        return [(k, v) for k, v in self.kv.items() if k.startswith(prefix)]


def test_watchdog_names_the_silent_not_the_departed_and_the_newest_complete_save(tmp_path):
    store, beat = _Store(), 'charlm/watchdog/beat/'
    dog = watchdog.Watchdog(store, 0, 3, timeout_s=0.4, workdir=str(tmp_path))
    store.kv[beat + '2'] = '1'
    for n in range(1, 5):  # process 1 beats on; process 2 beat once, then fell silent
        store.kv[beat + '1'] = str(n)
        dog._merge(store.key_value_dir_get('charlm/watchdog/'))
        time.sleep(0.2 if n < 4 else 0)
    assert dog.silent()[0] == [2]
    store.kv['charlm/watchdog/left/2'] = '1'  # it ended normally after all
    dog._merge(store.key_value_dir_get('charlm/watchdog/'))
    assert dog.silent()[0] == []
    process_1 = watchdog.Watchdog(store, 1, 3, 0.4, str(tmp_path))
    time.sleep(0.5)  # the store (process 0's) has not answered process 1 since
    assert process_1.silent()[0] == [0]
    (tmp_path / 'checkpoints' / '10').mkdir(parents=True)
    (tmp_path / 'checkpoints' / '20.orbax-checkpoint-tmp-1').mkdir()  # a save cut short
    assert f'step 10 ({tmp_path}/checkpoints/10)' in workdir_lib.newest_checkpoint(str(tmp_path))


def _newest(workdir) -> int:
    folder = workdir / 'checkpoints'
    steps = [int(p.name) for p in folder.iterdir() if p.name.isdigit()] if folder.is_dir() else []
    return max(steps, default=-1)


def _kill_during_training(workdir, corpus, victim: int, ready, log) -> tuple[int, float]:
    """A 2-process job training on; once `ready(log text)`, process `victim` is killed.
    Returns (the job's exit code, seconds from the kill to its exit)."""
    with open(log, 'w') as out:
        job = subprocess.Popen(
            ['bash', 'launch/local_multiprocess.sh', '2', '1', '--config=configs/tiny.py',
             f'--workdir={workdir}', f'--config.data.path={corpus}', '--heartbeat_timeout=4',
             '--config.num_train_steps=100000', '--config.eval_every_steps=1000'], cwd=ROOT,
            env=launch_env(), stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 90
        while not ready(log.read_text()):
            assert job.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.2)
        pid = subprocess.run(['pgrep', '-f', f'process_id={victim} .*--workdir={workdir}'],
                             capture_output=True, text=True).stdout.split()
        assert len(pid) == 1, pid
        os.kill(int(pid[0]), signal.SIGKILL)
        killed = time.monotonic()
        rc = job.wait(timeout=60)
        return rc, time.monotonic() - killed
    finally:  # the job, and process 0's coordination service (it outlives a crash briefly)
        os.killpg(job.pid, signal.SIGKILL)


def _one_line_naming(out: str, victim: int, survivor: int, workdir) -> None:
    errors = [ln for ln in out.splitlines() if 'charlm: error:' in ln]
    assert len(errors) == 1 and errors[0].startswith(f'[{survivor}] '), out[-3000:]
    step = _newest(workdir)
    assert f'process {victim} of 2 stopped answering' in errors[0]
    assert f'newest complete checkpoint is step {step} ({workdir}/checkpoints/{step})' in (
        errors[0])
    for wall in ('Traceback', 'Fatal Python error', 'Check failure', 'Terminating process'):
        assert wall not in out, out[-3000:]


def test_a_killed_process_stops_the_others_with_one_line_and_the_job_resumes(corpus_file,
                                                                             tmp_path):
    workdir, first, second = tmp_path / 'mp', tmp_path / 'first.txt', tmp_path / 'second.txt'
    rc, took = _kill_during_training(workdir, corpus_file, 1, lambda _: _newest(workdir) > 0,
                                     first)
    out = first.read_text()
    assert rc != 0 and took < 4 + 8, (rc, took, out[-3000:])  # --heartbeat_timeout=4
    _one_line_naming(out, 1, 0, workdir)
    # The same command again resumes; then process 0, which holds the job's coordination
    # service, is killed: process 1 still names it.
    resuming = f'Resuming from {workdir}/checkpoints/{_newest(workdir)}'
    rc, took = _kill_during_training(workdir, corpus_file, 0, lambda log: resuming in log, second)
    out = second.read_text()
    assert rc != 0 and took < 4 + 8, (rc, took, out[-3000:])
    _one_line_naming(out, 0, 1, workdir)
