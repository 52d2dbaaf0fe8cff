"""Training curves of one or more runs, read from their TensorBoard event files.

  python -m charlm.plot --workdir=runs/lstm --workdir=runs/gru --out=curves.png
  python -m charlm.plot --workdir=runs/lstm runs/gru runs/rnn --out=curves.png

Left: training loss at every logged step; right: validation loss at every evaluation.
One colour per run, labelled by its directory name. No TensorFlow or TensorBoard needed.
"""

from __future__ import annotations

import os
import pathlib

from absl import app, flags

from charlm import cli, metric_writer, seeds
from charlm.errors import CharLMError


def run_labels(workdirs: list[str]) -> list[str]:
    """Each run's directory name, or its whole path where names repeat."""
    names = [pathlib.Path(w).name or str(w) for w in workdirs]
    return [n if names.count(n) == 1 else str(w) for n, w in zip(names, workdirs, strict=True)]


def read_run(workdir: str) -> dict[str, list[tuple[int, float]]]:
    """tag -> [(step, value)] of one run; a run without loss scalars is an error."""
    if not pathlib.Path(workdir).is_dir():
        raise CharLMError(f'workdir not found: {workdir}')
    scalars = metric_writer.read_scalars(workdir)
    if not scalars.get('train/loss') and not scalars.get('val/loss'):
        raise CharLMError(f'no training curves in {workdir}: it has no TensorBoard event '
                          'files with train/loss or val/loss (is it a charlm workdir?)')
    return scalars


def read_runs(workdirs: list[str]) -> dict[str, dict[str, list[tuple[int, float]]]]:
    """label -> tag -> [(step, value)]; a run without loss scalars is an error."""
    return {label: read_run(w) for w, label in zip(workdirs, run_labels(workdirs), strict=True)}


def plot_runs(workdirs: list[str], out: str, title: str | None = None) -> str:
    """Writes the train/val loss figure to `out` and returns `out`."""
    if not workdirs:
        raise CharLMError('no workdir given: --workdir=DIR [DIR ...]')
    out = str(cli.check_output(out, cli.figure_formats()))
    curves = {label: {tag: (*zip(*scalars[tag], strict=True), None, None)
                      for tag in ('train/loss', 'val/loss') if scalars.get(tag)}
              for label, scalars in read_runs(workdirs).items()}
    return _draw(curves, out, title)


def plot_seeds(groups: dict[str, list[str]], out: str, title: str | None = None) -> str:
    """Like `plot_runs` with one line per group of runs (a variant's seeds): their mean at
    the steps all of them logged, in a band from their minimum to their maximum."""
    if not groups or not all(groups.values()):
        raise CharLMError('no workdir given for a group of runs')
    out = str(cli.check_output(out, cli.figure_formats()))
    curves = {}
    for label, workdirs in groups.items():
        runs = [read_run(w) for w in workdirs]
        curves[label] = {}
        for tag in ('train/loss', 'val/loss'):
            if all(r.get(tag) for r in runs):
                curves[label][tag] = seeds.mean_curve([r[tag] for r in runs])
    return _draw(curves, out, title)


def _draw(curves: dict[str, dict[str, tuple]], out: str, title: str | None) -> str:
    """label -> tag -> (steps, values, band low or None, band high or None) -> `out`."""
    import matplotlib
    from matplotlib.ticker import MaxNLocator

    fig = new_figure(figsize=(12, 4.6))
    ax_t, ax_v = fig.subplots(1, 2, sharey=True)
    colors = matplotlib.rcParams['axes.prop_cycle'].by_key()['color']
    for k, (label, tags) in enumerate(curves.items()):
        color = colors[k % len(colors)]
        for tag, ax, style in (('train/loss', ax_t, dict(linewidth=1.3)),
                               ('val/loss', ax_v, dict(linewidth=1.6, marker='o',
                                                       markersize=3.5))):
            if tag not in tags:
                continue
            steps, values, low, high = tags[tag]
            ax.plot(steps, values, color=color, label=label, **style)
            if low is not None:
                ax.fill_between(steps, low, high, color=color, alpha=0.2, linewidth=0)
    for ax, name in ((ax_t, 'training loss'), (ax_v, 'validation loss')):
        ax.set_title(name, fontsize=11)
        ax.set_xlabel('step')
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=9)
    ax_t.set_ylabel('loss (nats per token)')
    ax_v.tick_params(labelleft=True)
    if title:
        fig.suptitle(title, fontsize=12)
    return save_figure(fig, out)


def new_figure(**kwargs):
    """A matplotlib Figure outside pyplot: drawing one changes no global state (a notebook's
    backend and open figures stay as they were) and needs no display."""
    from matplotlib.figure import Figure
    return Figure(**kwargs)


def save_figure(fig, out: str) -> str:
    """Lays out and writes a figure; returns `out` (checked with cli.check_output)."""
    fig.tight_layout()
    try:
        fig.savefig(out, dpi=110)
    except OSError as e:
        raise CharLMError(f'cannot write {out}: {e.strerror}') from None
    return out


# ------------------------------------------------------------------ command line

FLAGS = flags.FLAGS


def define_flags() -> None:
    """Only when run as a command: importing this module defines no flags."""
    flags.DEFINE_multi_string('workdir', None, 'A training workdir; repeat it, or list more '
                              'directories after it, to compare runs.')
    flags.DEFINE_string('out', 'curves.png', 'The figure to write: a file (not a directory) '
                        'ending in .png, .pdf, .svg or another format matplotlib writes.')
    flags.DEFINE_string('title', None, 'Figure title.')
    flags.mark_flags_as_required(['workdir'])


@cli.command(positional=True)
def main(argv):
    workdirs = FLAGS.workdir + argv[1:]  # --workdir=a b c: the shell gives b and c as args
    print(f'wrote {plot_runs([os.path.expanduser(w) for w in workdirs], FLAGS.out, FLAGS.title)}')


if __name__ == '__main__':
    define_flags()
    app.run(main, flags_parser=cli.parse_flags)
