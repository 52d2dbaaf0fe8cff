"""A workdir survives what users and clusters do to it: a second run, damage, a full disk."""

import json
import os
import pathlib
import shutil
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from conftest import ROOT, assert_one_line_error, run_cli, start_training, wait_for

from charlm import checkpointing, filelock, metric_writer, runs, steps, train, workdir
from charlm.errors import CharLMError


def test_a_second_run_is_refused_and_readers_still_work(corpus_file, tmp_path):
    run = tmp_path / 'run'
    first = start_training(run, corpus_file, '--config.num_train_steps=100000',
                  '--config.checkpoint_every_steps=10', '--config.eval_every_steps=10',
                  '--config.log_every_steps=10')
    try:
        wait_for(first, 'eval at step 20:')  # saves at 10 and 20 are under way
        second = run_cli('charlm.main', '--config=configs/tiny.py', f'--workdir={run}',
                         f'--config.data.path={corpus_file}', '--config.seed=5')
        assert_one_line_error(second, f'is being trained by pid {first.pid} on '
                                      f'{socket.gethostname()}')
        # Read-only commands work while it trains (and never clean up its saves in progress).
        sample = run_cli('charlm.sample', f'--workdir={run}', '--length=10', '--prompt=First')
        assert sample.returncode == 0, sample.stderr[-2000:]
        assert first.poll() is None  # undisturbed
        first.send_signal(signal.SIGTERM)
        rest = first.stderr.read()
        assert first.wait(timeout=120) == 0, rest[-3000:]
    finally:
        first.kill()
    ckpts = checkpointing.Checkpoints(str(run), create=False)
    for step in ckpts.latest.all_steps():  # every save is the first run's (seed 0)
        assert ckpts.read_json(step)['config']['seed'] == 0
        ckpts.restore_state_raw(step)
    assert (run / 'lock').read_bytes() == b''  # released on exit, no name left behind


def test_a_dead_holder_is_taken_over_and_a_live_one_refuses(tiny_config, tmp_path, caplog):
    run = tmp_path / 'run'
    run.mkdir()
    dead = subprocess.Popen([sys.executable, '-c', 'pass'])
    dead.wait()
    (run / 'lock').write_text(json.dumps(
        {'host': socket.gethostname(), 'pid': dead.pid, 'boot': filelock._boot_id(),
         'start': '1', 'heartbeat': time.time()}))
    tiny_config.num_train_steps = 2
    train.train_and_evaluate(tiny_config, str(run))  # kill -9 left its name: taken over
    assert f'was held by pid {dead.pid}' in caplog.text and 'taking it over' in caplog.text

    hold = workdir.Hold(run)  # held in this process: a second hold is refused
    try:
        with pytest.raises(CharLMError, match=f'being trained by pid {os.getpid()}'):
            train.train_and_evaluate(tiny_config, str(run))
    finally:
        hold.release()


def test_another_host_is_judged_by_its_heartbeat(tmp_path):
    """On a filesystem whose locks do not reach other hosts, the heartbeat decides."""
    other = {'host': 'node-7', 'pid': 1234, 'heartbeat': time.time()}
    assert not filelock.is_stale(other)
    assert filelock.is_stale(dict(other, heartbeat=time.time() - filelock.STALE_S - 1))
    (tmp_path / 'lock').write_text(json.dumps(other))
    with pytest.raises(CharLMError, match='being trained by pid 1234 on node-7'):
        workdir.Hold(tmp_path)
    (tmp_path / 'lock').write_text(json.dumps(dict(other, heartbeat=1.0)))
    workdir.Hold(tmp_path).release()


def test_empty_workdir_is_refused(tmp_path):
    proc = subprocess.run([sys.executable, '-m', 'charlm.main',
                           f'--config={ROOT}/configs/tiny.py', '--workdir='], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert_one_line_error(proc, '--workdir is empty')
    assert list(tmp_path.iterdir()) == []


def _flip_bytes(save: pathlib.Path) -> None:
    """Flips 16 bytes in the middle of every array file of a save (a failing disk)."""
    for path in [p for p in (save / 'state').rglob('*') if p.parent.name == 'd']:
        data = bytearray(path.read_bytes())
        mid = len(data) // 2
        data[mid:mid + 16] = bytes(b ^ 0xFF for b in data[mid:mid + 16])
        path.write_bytes(bytes(data))


def test_a_silent_change_fails_its_checksum(tiny_config, tmp_path):
    run = tmp_path / 'run'
    tiny_config.num_train_steps = tiny_config.checkpoint_every_steps = 2
    train.train_and_evaluate(tiny_config, str(run))
    # Orbax compresses the arrays, so change what a flipped bit inside one would give: a
    # value that differs from the one recorded at the save.
    meta = run / 'checkpoints' / '2' / 'integrity' / 'metadata'
    record = json.loads(meta.read_text())
    key = ".params['head']['bias']"
    record['crc32'][key][0] ^= 1
    meta.write_text(json.dumps(record))
    with pytest.raises(checkpointing.DamagedCheckpoint, match=r"checkpoints/2 is damaged: 1 of "
                       r"its arrays do not match their checksum \(\.params\['head'\]\['bias'\]"):
        runs.restore_params(str(run), tiny_config, steps.make_model(tiny_config, 35), 2)


def test_damaged_checkpoint_resumes_from_the_newest_intact_one(tiny_config, tmp_path):
    run = tmp_path / 'run'
    train.train_and_evaluate(tiny_config, str(run))  # saves at 10 and 20
    _flip_bytes(run / 'checkpoints' / '20')
    # New processes: this one's tensorstore cache still holds the bytes as written.
    scored = run_cli('charlm.evaluate', f'--workdir={run}', '--step=20')
    assert_one_line_error(scored, 'checkpoints/20')
    resumed = run_cli('charlm.main', '--config=configs/tiny.py', f'--workdir={run}',
                      f'--config.data.path={tiny_config.data.path}', '--config.num_train_steps=30',
                      devices=4)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert 'checkpoints/20' in resumed.stderr and 'resuming from step 10' in resumed.stderr
    assert (run / 'set_aside' / 'checkpoints-20' / 'state').is_dir()  # kept, not deleted
    # The resumed run is the run that never saw the damage: 10 steps of the 20-step run,
    # then on to 30.
    reference = tmp_path / 'reference'
    train.train_and_evaluate(tiny_config, str(reference), stop_at=10)
    tiny_config.num_train_steps = 30
    train.train_and_evaluate(tiny_config, str(reference))
    a = checkpointing.Checkpoints(str(run), create=False).restore_state_raw(30)
    b = checkpointing.Checkpoints(str(reference), create=False).restore_state_raw(30)
    jax.tree.map(np.testing.assert_array_equal, a, b)


@pytest.fixture
def small_disk(tmp_path):
    mount = tmp_path / 'disk'
    mount.mkdir()
    if subprocess.run(['mount', '-t', 'tmpfs', '-o', 'size=60m', 'tmpfs', str(mount)],
                      capture_output=True).returncode:
        pytest.skip('needs root to mount a small tmpfs')
    yield mount
    subprocess.run(['umount', '-l', str(mount)], check=False)


@pytest.mark.parametrize('precheck', [True, False])
def test_disk_filling_up_mid_run(tiny_config, small_disk, monkeypatch, precheck):
    """A save that finds the disk full stops the run with one line; earlier saves restore."""
    run = small_disk / 'run'
    tiny_config.num_train_steps, tiny_config.checkpoint_every_steps = 30, 5
    tiny_config.eval_every_steps = 100
    real_batch = train.data.train_batch

    def fill_at_step_12(tokens, seq_len, step, seed, layout):
        if step == 12:  # another program fills the disk while the run trains
            with open(small_disk / 'ballast', 'wb', buffering=0) as f:
                try:
                    while True:
                        f.write(b'\0' * (64 << 10))
                except OSError:
                    pass
        return real_batch(tokens, seq_len, step, seed, layout)

    monkeypatch.setattr(train.data, 'train_batch', fill_at_step_12)
    if not precheck:  # the write itself fails (orbax/tensorstore's own error)
        monkeypatch.setattr(checkpointing.shutil, 'disk_usage',
                            lambda p: type('U', (), {'free': 1 << 40})())
    with pytest.raises(CharLMError, match=f'workdir {run}.*full'):
        train.train_and_evaluate(tiny_config, str(run))
    (small_disk / 'ballast').unlink()
    # Step 10's save was still being written (async) when the disk filled: it failed, and
    # the error named it, or it finished first; either way what is listed restores.
    ckpts = checkpointing.Checkpoints(str(run), create=False)
    assert ckpts.latest.all_steps() in ([5], [5, 10])
    for step in ckpts.latest.all_steps():
        ckpts.restore_state_raw(step)
    ckpts.close()
    monkeypatch.undo()
    assert train.train_and_evaluate(tiny_config, str(run))['step'] == 30


def test_two_writers_in_one_second_keep_both_files(tmp_path, monkeypatch):
    """tensorboardX names event files by the second: a run resumed within the second of the
    stopped one's writer (in-process, once nothing recompiles) truncated its file."""
    import time as time_module
    monkeypatch.setattr(time_module, 'time', lambda: 1_700_000_000.25)  # one second for all
    for step in (1, 2, 3):
        writer = metric_writer.MetricWriter(str(tmp_path), enabled=True)
        writer.scalars(step, {'x': float(step)})
        writer.close()
    assert len(list(tmp_path.glob('events.out.tfevents.*'))) == 3
    assert metric_writer.read_scalars(str(tmp_path))['x'] == [(1, 1.0), (2, 2.0), (3, 3.0)]


def test_resumed_run_replaces_the_killed_runs_events(tiny_config, tmp_path):
    run = tmp_path / 'run'
    tiny_config.log_every_steps = 1
    train.train_and_evaluate(tiny_config, str(run), stop_at=7)
    # As a kill -9 after step 7's save would leave it: events logged past the checkpoint.
    stray = metric_writer.MetricWriter(str(run))
    stray.scalars(8, {'train/loss': 99.0})
    stray.close()
    train.train_and_evaluate(tiny_config, str(run))
    losses = metric_writer.read_scalars(str(run))['train/loss']
    assert [s for s, _ in losses] == list(range(1, 21))  # each step once
    assert 99.0 not in [v for _, v in losses]


SECOND_CTRL_C = """
import os, signal, sys, time
sys.path.insert(0, {root!r})
from configs import tiny
from charlm import cli, steps, train
cli.compilation_cache()  # the tests' cache (CHARLM_COMPILATION_CACHE), as the commands do
real = steps.evaluate

def evaluate(*args, **kwargs):  # Ctrl-C, and again 0.2 s later, in the middle of an eval
    os.kill(os.getpid(), signal.SIGINT)
    time.sleep(0.2)
    os.kill(os.getpid(), signal.SIGINT)
    time.sleep(30)
    return real(*args, **kwargs)

steps.evaluate = evaluate
c = tiny.get_config()
c.data.path, c.num_train_steps, c.eval_every_steps, c.checkpoint_every_steps = {corpus!r}, 40, 20, 5
train.train_and_evaluate(c, {workdir!r})
"""


def test_second_ctrl_c_stops_at_once_with_one_line(corpus_file, tmp_path):
    script = SECOND_CTRL_C.format(root=str(ROOT), corpus=corpus_file, workdir=str(tmp_path / 'w'))
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, '-c', script], capture_output=True, text=True,
                          timeout=120, env=dict(os.environ, JAX_PLATFORMS='cpu'))
    assert proc.returncode == 128 + signal.SIGINT, proc.stderr[-2000:]
    assert time.monotonic() - t0 < 60  # at once, not after the 30 s the eval sleeps
    assert 'Traceback' not in proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith('charlm:')]
    assert len(lines) == 1, proc.stderr[-2000:]
    assert 'stopped at once by a second SIGINT; the newest complete checkpoint is step 1' in (
        lines[0])  # 10 or 15
    assert f'({tmp_path}/w/checkpoints/1' in lines[0]


def test_a_best_save_newer_than_the_resumed_step_is_set_aside(tiny_config, tmp_path, caplog):
    """Killed between step 20's best save and its latest save: the run resumes from 10,
    keeps the orphaned best/20 aside, and saves its own best again (it used to stop on
    'Checkpoint for step 20 already exists')."""
    run = tmp_path / 'run'
    train.train_and_evaluate(tiny_config, str(run))
    shutil.rmtree(run / 'checkpoints' / '20')
    out = train.train_and_evaluate(tiny_config, str(run))
    assert out['step'] == 20 and 'best checkpoint of step 20 (after step 10)' in caplog.text
    assert (run / 'set_aside' / 'best-20' / 'state').is_dir() and (run / 'best' / '20').is_dir()


def test_a_failed_restores_other_reads_print_nothing():
    """The reads of a damaged save that fail after the restore already failed (its one-line
    error said so) are collected unretrieved; asyncio would log each with a traceback."""
    code = ('import asyncio, gc\n'
            'from absl import logging\n'
            'from charlm import checkpointing\n'
            'if HUSH: checkpointing._ignore_late_reads()\n'
            'async def read(): raise ValueError("DATA_LOSS: checksum")\n'
            'async def main():\n'
            '    asyncio.ensure_future(read())\n'
            '    await asyncio.sleep(0.01)\n'
            'asyncio.run(main())\n'
            'gc.collect()\n')
    said = {hush: subprocess.run([sys.executable, '-c', f'HUSH = {hush}\n' + code], cwd=ROOT,
                                 capture_output=True, text=True, timeout=60).stderr
            for hush in (False, True)}
    assert 'Task exception was never retrieved' in said[False]  # the test can fail
    assert said[True] == ''
