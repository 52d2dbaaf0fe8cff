"""TensorBoard scalars, text and HParams from process 0 (a no-op elsewhere), and console
lines."""

from __future__ import annotations

import math
import numbers
import time
from typing import Any

import jax
from absl import logging


class MetricWriter:
    """tensorboardX event files in `logdir`, written only by process 0."""

    def __init__(self, logdir: str, enabled: bool | None = None, purge_step: int | None = None):
        """`purge_step`: a resumed run's first new step; TensorBoard (and read_scalars) then
        hide what earlier event files logged from that step on (the killed run's tail)."""
        self.enabled = jax.process_index() == 0 if enabled is None else enabled
        self._writer = None
        if self.enabled:
            from tensorboardX import SummaryWriter  # imported here: only process 0 needs it
            # tensorboardX names a file by the second it was opened and the host: a run
            # resumed within the same second truncated the earlier run's file. The
            # nanoseconds keep every writer's file apart, and in order.
            self._writer = SummaryWriter(logdir, flush_secs=30, purge_step=purge_step,
                                         filename_suffix=f'.{time.time_ns():020d}')

    def scalars(self, step: int, values: dict[str, float]) -> None:
        if self._writer:
            for k, v in values.items():
                self._writer.add_scalar(k, float(v), step)

    def texts(self, step: int, values: dict[str, str]) -> None:
        if self._writer:
            for k, v in values.items():
                # Markdown: keep line breaks and leading spaces of generated verse.
                self._writer.add_text(k, '    ' + v.replace('\n', '\n    '), step)

    def hparams(self, step: int, hparams: dict[str, bool | float | str],
                metrics: dict[str, float]) -> None:
        """This run as one row of TensorBoard's HParams dashboard: `hparams` (plain values,
        see `flatten_config`) and `metrics`, logged as scalars `hparams/<name>` at `step`.

        Unlike tensorboardX's `add_hparams` (a new timestamped subfolder, a second run, per
        call) this writes into the run's own folder, so the dashboard links a row to the
        run's curves. No experiment summary: TensorBoard then makes the columns from every
        run's hparams (varied ones first) and scalars, so runs whose configs differ line up.
        A resumed run that calls this again stays one row: TensorBoard keeps a run's first
        session info (a tag's first metadata), and the newest step of a metric.
        """
        if not self._writer:
            return
        from tensorboardX.summary import hparams as hparams_summaries

        _, start, end = hparams_summaries(hparams, {})
        self._writer.file_writer.add_summary(start, step)
        self._writer.file_writer.add_summary(end, step)
        self.scalars(step, {f'hparams/{k}': v for k, v in metrics.items()})

    def flush(self) -> None:
        if self._writer:
            self._writer.flush()

    def close(self) -> None:
        if self._writer:
            self._writer.close()


def flatten_config(config: Any, prefix: str = '') -> dict[str, bool | float | str]:
    """A (nested) ConfigDict or dict as {'model.hidden_size': 16, ...}: bools, numbers and
    strings stay, anything else (lists, tuples, None, a non-finite number) becomes its str."""
    flat = {}
    for key, value in config.items():
        name = f'{prefix}{key}'
        if hasattr(value, 'items'):
            flat.update(flatten_config(value, f'{name}.'))
            continue
        if isinstance(value, (bool, str)):
            flat[name] = value
        elif isinstance(value, numbers.Integral):  # numpy's too
            flat[name] = int(value)
        elif isinstance(value, numbers.Real) and math.isfinite(value):
            flat[name] = float(value)
        else:
            flat[name] = str(value)
    return flat


def final_metrics(last: dict[str, Any]) -> dict[str, float]:
    """`train.train_and_evaluate`'s result as HParams metrics: best val loss (and its bits
    per char or byte) and step, the final step, train loss and val loss, bits, perplexity.
    What the run has not measured yet (no evaluation, no best) is left out."""
    out = {k: float(v) for k, v in last.items()
           if k in ('best_val_loss', 'best_step', 'step', 'train_loss', 'val_loss',
                    'val_perplexity') or k.startswith('val_bits_per_')}
    for key in [k for k in out if k.startswith('val_bits_per_')]:
        if out.get('val_loss') and 'best_val_loss' in out:
            # Every evaluation scores the same targets, so bits/loss is one constant ratio.
            out[f'best_{key}'] = out['best_val_loss'] * out[key] / out['val_loss']
    if out.get('best_step', 0) < 0:
        del out['best_step']
    return {k: v for k, v in out.items() if math.isfinite(v)}


def log_hparams(workdir: str, config: Any, last: dict[str, Any],
                enabled: bool | None = None) -> None:
    """The run's flattened config and final metrics (`final_metrics`) for TensorBoard's
    HParams dashboard, into its event folder `workdir`; process 0 writes (as MetricWriter)."""
    writer = MetricWriter(workdir, enabled)
    try:
        writer.hparams(int(last['step']), flatten_config(config), final_metrics(last))
    finally:
        writer.close()


def duration(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f'{h}:{m:02d}:{s:02d}' if h else f'{m}:{s:02d}'


class Progress:
    """One console line every log: step, loss, chars/s and ETA."""

    def __init__(self, total_steps: int, first_step: int):
        self.total = total_steps
        self.start_step = first_step
        self.start = time.perf_counter()

    def line(self, step: int, loss: float, chars_per_sec: float, unit: str = 'chars') -> str:
        done = step - self.start_step
        elapsed = time.perf_counter() - self.start
        eta = elapsed / done * (self.total - step) if done > 0 else 0.0
        return (f'step {step:>{len(str(self.total))}}/{self.total}  loss {loss:.4f}  '
                f'{chars_per_sec:,.0f} {unit}/s  elapsed {duration(elapsed)}  '
                f'eta {duration(eta)}')

    def log(self, *args, **kwargs) -> None:
        if jax.process_index() == 0:
            logging.info(self.line(*args, **kwargs))


def read_scalars(logdir: str) -> dict[str, list[tuple[int, float]]]:
    """All scalars of the tensorboardX event files in `logdir`: tag -> [(step, value)].

    Reads the TFRecord framing directly, so no TensorFlow/TensorBoard install is needed.
    A truncated last record (a killed run) is skipped. As in TensorBoard, a resumed run's
    purge marker (a START event at step S) drops the values earlier files logged at steps
    >= S, and a step logged twice keeps its newest value.
    """
    import pathlib
    import struct

    from tensorboardX.proto import event_pb2

    out: dict[str, dict[int, float]] = {}
    # File names start with the creation time, in seconds: equal ones sort by the rest.
    for path in sorted(pathlib.Path(logdir).glob('events.out.tfevents.*'),
                       key=lambda p: (p.name.split('.')[3], p.stat().st_mtime_ns, p.name)):
        buf = path.read_bytes()
        pos = 0
        while pos + 12 <= len(buf):
            (length,) = struct.unpack('<Q', buf[pos:pos + 8])
            record = buf[pos + 12:pos + 12 + length]
            pos += 12 + length + 4
            if len(record) < length:
                break
            event = event_pb2.Event.FromString(record)
            if event.HasField('session_log') and event.session_log.status == 1:  # START
                for values in out.values():
                    for s in [s for s in values if s >= event.step]:
                        del values[s]
            for v in event.summary.value:
                if v.HasField('simple_value'):
                    out.setdefault(v.tag, {})[event.step] = v.simple_value
    return {tag: sorted(values.items()) for tag, values in out.items() if values}
