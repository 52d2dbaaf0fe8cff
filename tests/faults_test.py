"""Preemption and crashes, with real signals sent to real training processes."""

import os
import pathlib
import random
import signal
import subprocess
import sys
import time

import jax
import numpy as np
from conftest import start_training, wait_for

from charlm import checkpointing, train

ROOT = pathlib.Path(__file__).resolve().parent.parent


def test_sigterm_checkpoints_and_exits_cleanly(corpus_file, tmp_path):
    workdir = tmp_path / 'run'
    proc = start_training(workdir, corpus_file, '--config.num_train_steps=100000',
                 '--config.checkpoint_every_steps=100000', '--config.eval_every_steps=100000')
    wait_for(proc, 'step ')  # training is under way
    proc.send_signal(signal.SIGTERM)
    rest = proc.stderr.read()
    assert proc.wait(timeout=120) == 0, rest[-3000:]
    assert 'stopped by SIGTERM at step' in rest and 'resume' in rest
    step = int(rest.split('stopped by SIGTERM at step ')[1].split(';')[0])
    assert checkpointing.Checkpoints(str(workdir), create=False).latest_step() == step > 0


def test_kill_9_at_random_points_then_resume_matches_uninterrupted(tiny_config, tmp_path):
    overrides = {'num_train_steps': 60, 'checkpoint_every_steps': 3, 'log_every_steps': 1,
                 'eval_every_steps': 30}
    for k, v in overrides.items():
        tiny_config[k] = v
    flags = [f'--config.{k}={v}' for k, v in overrides.items()]
    reference = train.train_and_evaluate(tiny_config, str(tmp_path / 'reference'))

    workdir = tmp_path / 'killed'
    rng = random.Random(0)
    for _ in range(2):
        proc = start_training(workdir, tiny_config.data.path, *flags)
        wait_for(proc, 'step ')
        time.sleep(rng.uniform(0.0, 1.5))  # anywhere: mid-step, mid-save, mid-eval
        proc.kill()
        proc.wait()
    proc = start_training(workdir, tiny_config.data.path, *flags)
    rest = proc.stderr.read()
    assert proc.wait(timeout=300) == 0, rest[-3000:]
    final = rest.split('done: ')[1]
    assert "'step': 60" in final
    assert f"'train_loss': {reference['train_loss']!r}" in final
    a = checkpointing.Checkpoints(str(workdir), create=False).restore_state_raw()
    b = checkpointing.Checkpoints(str(tmp_path / 'reference'), create=False).restore_state_raw()
    jax.tree.map(np.testing.assert_array_equal, a, b)
    assert not list(workdir.rglob('*orbax-checkpoint-tmp*'))  # half-written saves are gone


SIGTERM_IN_EVAL = """
import os, signal, sys
sys.path.insert(0, {root!r})
from configs import tiny
from charlm import cli, errors, steps, train
cli.compilation_cache()  # the tests' cache (CHARLM_COMPILATION_CACHE), as the commands do
real = steps.evaluate

def evaluate(*args, **kwargs):  # preempted in the middle of the evaluation at step 20
    out = real(*args, **kwargs)
    os.kill(os.getpid(), signal.SIGTERM)
    return out

steps.evaluate = evaluate
c = tiny.get_config()
c.data.path, c.num_train_steps = {corpus!r}, 1000
c.eval_every_steps, c.checkpoint_every_steps = 20, 1000
try:
    train.train_and_evaluate(c, {workdir!r})
except errors.Stopped as e:  # the signal ends the caller too, after the checkpoint
    print(e, e.result['step'])
"""


def test_sigterm_during_an_evaluation_is_honoured(corpus_file, tmp_path):
    script = SIGTERM_IN_EVAL.format(root=str(ROOT), corpus=corpus_file, workdir=str(tmp_path / 'w'))
    proc = subprocess.run([sys.executable, '-c', script], capture_output=True, text=True,
                          timeout=120, env=dict(os.environ, JAX_PLATFORMS='cpu'))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert 'stopped by SIGTERM at step 20' in proc.stdout  # not at the next log step
    assert checkpointing.Checkpoints(str(tmp_path / 'w'), create=False).latest_step() == 20
