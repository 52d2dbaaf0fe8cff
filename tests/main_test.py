"""The command line as a user runs it: real processes, real exit codes."""


import pytest
from conftest import assert_one_line_error, run_cli

from charlm import checkpointing, train


@pytest.mark.parametrize('args,match', [
    (['--config.modle.hidden_size=3'],
     'unknown config key modle.hidden_size: did you mean model.hidden_size?'),
    (['--config.model.hidden_size=abc'], 'hidden_size=abc'),
    (['--config.data.path=/no/such/file.txt'], 'corpus file not found'),
    (['--config.model.cell=transformer'], 'unknown model.cell'),
    (['stray'], 'unexpected arguments: stray'),
])
def test_bad_input_is_one_line(tmp_path, args, match):
    proc = run_cli('charlm.main', '--config=configs/tiny.py', f'--workdir={tmp_path}/w', *args)
    assert_one_line_error(proc, match)


def test_missing_config_file(tmp_path):
    proc = run_cli('charlm.main', '--config=configs/nope.py', f'--workdir={tmp_path}/w')
    assert_one_line_error(proc, 'nope.py')


def test_checkpoint_from_four_devices_resumes_on_one(tiny_config, tmp_path):
    workdir = tmp_path / 'run'
    tiny_config.num_train_steps = 20
    train.train_and_evaluate(tiny_config, str(workdir), stop_at=10)  # 4 fake devices
    proc = run_cli('charlm.main', '--config=configs/tiny.py', f'--workdir={workdir}',
               f'--config.data.path={tiny_config.data.path}', devices=1)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert 'Resuming from' in proc.stderr and '1 local devices' in proc.stderr
    assert 'step 20/20' in proc.stderr
    assert checkpointing.Checkpoints(str(workdir), create=False).latest_step() == 20
