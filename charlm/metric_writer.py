"""TensorBoard scalars and text from process 0 (a no-op elsewhere), and console lines."""

from __future__ import annotations

import time

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

    def flush(self) -> None:
        if self._writer:
            self._writer.flush()

    def close(self) -> None:
        if self._writer:
            self._writer.close()


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
