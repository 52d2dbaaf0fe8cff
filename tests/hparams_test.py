"""HParams for TensorBoard's dashboard, read back with TensorBoard's own loader and plugin."""

import math
import subprocess
import sys

import pytest
from conftest import ROOT, cli_env

from charlm import metric_writer, train


def dashboard(logdir) -> tuple[dict, dict, set]:
    """What TensorBoard's HParams dashboard shows for `logdir`: its columns {hparam: info},
    its rows {run: (hparams, {metric: (step, value)})}, and every run TensorBoard sees."""
    from tensorboard import context
    from tensorboard.backend.event_processing import data_provider, plugin_event_multiplexer
    from tensorboard.plugins import base_plugin
    from tensorboard.plugins.hparams import (
        api_pb2,
        backend_context,
        get_experiment,
        list_session_groups,
    )

    mux = plugin_event_multiplexer.EventMultiplexer()
    mux.AddRunsFromDirectory(str(logdir))
    mux.Reload()
    tb = base_plugin.TBContext(logdir=str(logdir), multiplexer=mux,
                               data_provider=data_provider.MultiplexerDataProvider(mux, logdir))
    ctx, request = backend_context.Context(tb), context.RequestContext()
    experiment = get_experiment.Handler(request, ctx, '', api_pb2.GetExperimentRequest()).run()
    groups = list_session_groups.Handler(request, ctx, '', api_pb2.ListSessionGroupsRequest(
        start_index=0, slice_size=100, allowed_statuses=[api_pb2.STATUS_SUCCESS])).run()
    rows = {}
    for group in groups.session_groups:
        (session,) = group.sessions  # one row per run, however often it resumed
        hparams = {k: getattr(v, v.WhichOneof('kind')) for k, v in group.hparams.items()}
        rows[session.name] = hparams, {m.name.tag: (m.training_step, m.value)
                                       for m in session.metric_values}
    columns = {h.name: h for h in experiment.hparam_infos}
    assert {m.name.tag for m in experiment.metric_infos} >= {
        t for _, metrics in rows.values() for t in metrics}
    return columns, rows, set(mux.Runs())


def test_flatten_config(tiny_config):
    flat = metric_writer.flatten_config(tiny_config)
    assert flat['model.hidden_size'] == 16 and flat['data.seq_len'] == 16
    assert flat['learning_rate'] == tiny_config.learning_rate
    assert flat['model.cell'] == 'lstm' and flat['data.stateful'] is False
    assert flat['model.hidden_sizes'] == '()'  # a tuple, as the --config flag spells it
    assert flat['sample.prompts'] == str(tuple(tiny_config.sample.prompts))
    assert metric_writer.flatten_config({'a': None, 'b': [1], 'c': math.inf}) == {
        'a': 'None', 'b': '[1]', 'c': 'inf'}
    assert all(type(v) in (bool, int, float, str) for v in flat.values())


def test_final_metrics():
    last = {'step': 20, 'train_loss': 2.5, 'val_loss': 3.0, 'val_bits_per_char': 4.5,
            'val_perplexity': 20.1, 'val_targets': 900, 'best_val_loss': 2.0, 'best_step': 10,
            'stop_reason': None}
    assert metric_writer.final_metrics(last) == {
        'step': 20, 'train_loss': 2.5, 'val_loss': 3.0, 'val_bits_per_char': 4.5,
        'val_perplexity': 20.1, 'best_val_loss': 2.0, 'best_step': 10,
        'best_val_bits_per_char': 3.0}  # 2.0 * 4.5 / 3.0: the same targets every eval
    # Stopped before the first evaluation: nothing to show but the step.
    assert metric_writer.final_metrics({'step': 3, 'best_val_loss': math.inf, 'best_step': -1,
                                        'stop_reason': 'stopped'}) == {'step': 3}


def test_runs_side_by_side_in_their_own_folders_and_a_resume_stays_one_row(tmp_path):
    def segment(run, steps, hparams, metrics, purge_step=None):
        writer = metric_writer.MetricWriter(str(tmp_path / run), True, purge_step)
        for step in steps:
            writer.scalars(step, {'val/loss': 4.0 - step / 10})
        writer.hparams(steps[-1], hparams, metrics)
        writer.close()

    segment('a', [5, 10], {'lr': 0.1, 'cell': 'lstm', 'tied': True}, {'best_val_loss': 3.0})
    segment('a', [15, 20], {'lr': 0.1, 'cell': 'lstm', 'tied': True}, {'best_val_loss': 2.0},
            purge_step=11)  # stopped at 10, resumed
    segment('b', [5, 10, 15], {'lr': 0.3, 'cell': 'gru', 'tied': True}, {'best_val_loss': 2.5})
    metric_writer.log_hparams(str(tmp_path / 'c'), {'lr': 0.5}, {'step': 1}, enabled=False)

    columns, rows, runs = dashboard(tmp_path)
    assert runs == {'a', 'b'}  # no timestamped subfolder; c is another process's: unwritten
    assert rows['a'][0] == {'lr': 0.1, 'cell': 'lstm', 'tied': True}
    assert rows['b'][0] == {'lr': 0.3, 'cell': 'gru', 'tied': True}
    assert rows['a'][1] == {'hparams/best_val_loss': (20, 2.0), 'val/loss': (20, 2.0)}
    assert rows['b'][1]['hparams/best_val_loss'] == (15, 2.5)
    assert columns['cell'].differs and columns['lr'].differs and not columns['tied'].differs


def test_a_tiny_training_run_stopped_and_resumed(tiny_config, tmp_path):
    # train_and_evaluate logs the row at the end of every call, stopped or finished.
    tiny_config.sample.length = 0  # no samples: nothing to compile for them
    workdir = str(tmp_path / 'run')
    train.train_and_evaluate(tiny_config, workdir, stop_at=10)
    last = train.train_and_evaluate(tiny_config, workdir)

    columns, rows, runs = dashboard(tmp_path)
    assert runs == {'run'}
    hparams, metrics = rows['run']
    assert hparams == metric_writer.flatten_config(tiny_config)
    assert metrics['hparams/best_val_loss'] == (20, pytest.approx(last['best_val_loss']))
    assert metrics['hparams/best_step'] == (20, last['best_step'])
    assert metrics['hparams/train_loss'] == (20, pytest.approx(last['train_loss']))
    assert metrics['hparams/best_val_bits_per_char'][1] == pytest.approx(
        last['best_val_loss'] / math.log(2), rel=1e-5)
    # The run's own curves are columns of the same row.
    assert metrics['val/loss'] == (20, pytest.approx(last['val_loss']))
    assert 'model.hidden_size' in columns and 'learning_rate' in columns


def test_the_writer_does_not_import_tensorboard(tmp_path):
    code = ('import sys; from charlm import metric_writer as m; '
            f'm.log_hparams({str(tmp_path)!r}, {{"x": 1}}, {{"step": 1}}, enabled=True); '
            'assert "tensorboard" not in sys.modules, "tensorboard imported"')
    subprocess.run([sys.executable, '-c', code], cwd=ROOT, check=True, env=cli_env())
    assert list(tmp_path.glob('events.out.tfevents.*'))
