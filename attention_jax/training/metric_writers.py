"""Where host-side metrics go: a JSONL log, TensorBoard event files and a tqdm bar.

``metrics.jsonl`` holds one JSON object per line, each with ``"step"`` and ``"split"``
(``"train"`` or ``"eval"``). On resume from a checkpoint at step ``k`` the log is truncated to
the lines with ``step <= k`` (lines written after the checkpoint by a run that then died are
dropped, and so is a torn last line), then appended to: the log never holds duplicates.

TensorBoard scalars are written with ``tensorboardX`` (no TensorFlow needed). A failure to write
them is an error like any other: it is raised, not skipped.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from typing import Any, Mapping

from tensorboardX import event_file_writer
from tensorboardX import summary as tb_summary
from tensorboardX.proto import event_pb2

from attention_jax.training.run_files import atomic_write_text


def _jsonable(value: Any) -> Any:
  if isinstance(value, float) and not math.isfinite(value):
    return str(value)  # "nan" / "inf": strict JSON has no NaN.
  return value


class JsonlWriter:
  """Appends one JSON object per line to ``path`` and flushes it right away."""

  def __init__(self, path: str | os.PathLike):
    self.path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
    self._file = None

  def truncate_to(self, step: int) -> int:
    """Keeps only complete lines whose ``step`` is ``<= step`` (atomically; creates the file).

    Returns the number of lines kept.
    """
    self.close()
    records = read_jsonl(self.path) if os.path.exists(self.path) else []
    kept = [json.dumps(r) for r in records
            if isinstance(r, dict) and int(r.get("step", -1)) <= step]
    atomic_write_text(self.path, "".join(line + "\n" for line in kept))
    return len(kept)

  def write(self, record: Mapping[str, Any]) -> None:
    if self._file is None:
      self._file = open(self.path, "a")
    self._file.write(json.dumps({k: _jsonable(v) for k, v in record.items()}) + "\n")
    self._file.flush()

  def close(self) -> None:
    if self._file is not None:
      self._file.close()
      self._file = None


def read_jsonl(path: str | os.PathLike) -> list[dict[str, Any]]:
  """All records of a JSONL log (torn lines skipped)."""
  records = []
  with open(path) as f:
    for line in f:
      try:
        records.append(json.loads(line))
      except json.JSONDecodeError:
        pass  # a line torn by a crash mid-write
  return records


class SummaryWriter:
  """TensorBoard scalars in an event file ``logdir/events.out.tfevents.*``, written by the
  calling thread with tensorboardX's event-file writer.

  (``tensorboardX.SummaryWriter`` writes from a background thread, where a failed write is
  printed rather than raised and the training then blocks on the writer's full queue. Here a
  write that fails raises in the caller. Metrics are written once per log interval, so writing
  in the loop's thread costs a few small writes.)

  ``purge_step``: TensorBoard hides the events at this step and later that earlier event files
  in ``logdir`` hold (a run resumed from a checkpoint rewrites them).
  """

  def __init__(self, logdir: str | os.PathLike, purge_step: int | None = None):
    logdir = os.fspath(logdir)
    os.makedirs(logdir, exist_ok=True)
    # The suffix tells apart (and orders) two writers opened in the same second.
    self._events = event_file_writer.EventsWriter(
        os.path.join(logdir, "events"), filename_suffix=f".{time.time_ns()}")
    if purge_step is not None:
      self._events.write_event(event_pb2.Event(
          step=int(purge_step), wall_time=time.time(),
          session_log=event_pb2.SessionLog(status=event_pb2.SessionLog.START)))

  def add_scalar(self, tag: str, value: float, step: int) -> None:
    self._events.write_event(event_pb2.Event(
        step=int(step), wall_time=time.time(), summary=tb_summary.scalar(tag, float(value))))

  def flush(self) -> None:
    self._events.flush()

  def close(self) -> None:
    self._events.close()


def write_scalars(writer: SummaryWriter, step: int, record: Mapping[str, Any],
                  prefix: str = "") -> None:
  """Writes every finite number of ``record`` (except ``step``) as ``<prefix><key>``, then
  flushes."""
  for key, value in record.items():
    if key == "step" or isinstance(value, bool) or not isinstance(value, (int, float)):
      continue
    if math.isfinite(value):
      writer.add_scalar(prefix + key, float(value), step)
  writer.flush()


def make_progress_bar(total: int, initial: int, enabled: bool | None = None):
  """A tqdm bar over steps; ``enabled=None`` shows it only when stderr is a terminal."""
  from tqdm.auto import tqdm  # pylint: disable=import-outside-toplevel

  if enabled is None:
    enabled = sys.stderr.isatty()
  return tqdm(total=total, initial=initial, disable=not enabled, unit="step",
              dynamic_ncols=True, desc="train")
