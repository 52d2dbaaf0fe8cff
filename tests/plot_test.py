"""charlm.plot: training curves of several runs from their event files."""

import os
import pathlib
import subprocess
import sys

import pytest

from charlm import metric_writer, plot
from charlm.errors import CharLMError

ROOT = pathlib.Path(__file__).resolve().parent.parent


def _fake_run(workdir, scale):
    """Event files as training writes them, without training."""
    writer = metric_writer.MetricWriter(str(workdir), enabled=True)
    for step in range(5, 105, 5):
        writer.scalars(step, {'train/loss': scale * 3.5 / (1 + step / 30)})
        if step % 20 == 0:
            writer.scalars(step, {'val/loss': scale * 3.6 / (1 + step / 35)})
    writer.close()


def test_two_runs_on_one_figure(tmp_path):
    _fake_run(tmp_path / 'lstm', 1.0)
    _fake_run(tmp_path / 'gru', 1.1)
    runs = plot.read_runs([str(tmp_path / 'lstm'), str(tmp_path / 'gru')])
    assert list(runs) == ['lstm', 'gru'] and len(runs['gru']['val/loss']) == 5
    out = plot.plot_runs([str(tmp_path / 'lstm'), str(tmp_path / 'gru')],
                         str(tmp_path / 'curves.png'))
    data = pathlib.Path(out).read_bytes()
    assert data[:4] == b'\x89PNG' and len(data) > 20_000


def test_drawing_leaves_pyplot_alone(tmp_path):
    """A notebook's backend and figures are its own: charlm draws outside pyplot."""
    import subprocess
    import sys

    _fake_run(tmp_path / 'lstm', 1.0)
    code = ('import matplotlib; matplotlib.use("svg"); import matplotlib.pyplot as plt; '
            'from charlm import plot; '
            f'plot.plot_runs([{str(tmp_path / "lstm")!r}], {str(tmp_path / "c.png")!r}); '
            'print(matplotlib.get_backend(), plt.get_fignums())')
    out = subprocess.run([sys.executable, '-c', code], cwd=pathlib.Path(__file__).parent.parent,
                         capture_output=True, text=True, check=True).stdout.split()
    assert out == ['svg', '[]']


def test_labels_are_names_or_paths_where_names_repeat():
    assert plot.run_labels(['runs/a', 'runs/b']) == ['a', 'b']
    assert plot.run_labels(['x/run', 'y/run', 'z']) == ['x/run', 'y/run', 'z']


def test_a_directory_without_curves_is_an_error(tmp_path):
    with pytest.raises(CharLMError, match='no training curves in'):
        plot.read_runs([str(tmp_path)])
    with pytest.raises(CharLMError, match='workdir not found'):
        plot.read_runs([str(tmp_path / 'nope')])


def test_out_is_checked_before_any_work(tmp_path):
    _fake_run(tmp_path / 'a', 1.0)
    for out, match in [(tmp_path / 'c.xyz', r'cannot write --out=.*c\.xyz: name a file ending in'),
                       (tmp_path / 'c', 'name a file ending in'),  # matplotlib adds .png
                       (tmp_path / 'a', 'it is a directory'),  # it wrote a.png beside it
                       (tmp_path / 'nope' / 'c.png', 'no directory')]:
        with pytest.raises(CharLMError, match=match):
            plot.plot_runs([str(tmp_path / 'a')], str(out))
    assert [p.name for p in tmp_path.iterdir()] == ['a'] and len(os.listdir(tmp_path / 'a')) == 1


def run(*args):
    env = dict(os.environ, JAX_PLATFORMS='cpu')
    return subprocess.run([sys.executable, '-m', *args], cwd=ROOT, env=env, text=True,
                          capture_output=True, timeout=120)


def test_command_line(tmp_path):
    _fake_run(tmp_path / 'a', 1.0)
    _fake_run(tmp_path / 'b', 0.9)
    # --workdir=DIR DIR: the extra directories arrive as arguments.
    proc = run('charlm.plot', f'--workdir={tmp_path}/a', f'{tmp_path}/b', f'--out={tmp_path}/c.png')
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (tmp_path / 'c.png').stat().st_size > 20_000
