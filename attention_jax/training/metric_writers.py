"""Where host-side metrics go: a JSONL log, TensorBoard event files and a tqdm bar.

``metrics.jsonl`` holds one JSON object per line, each with ``"step"`` and ``"split"``
(``"train"`` or ``"eval"``). On resume from a checkpoint at step ``k`` the log is truncated to
the lines with ``step <= k`` (lines written after the checkpoint by a run that then died are
dropped), then appended to: the log never holds duplicates. A line that is not a JSON object
with an integer ``step`` (torn by a crash, invalid UTF-8, a bad ``step``) is dropped with one
warning naming the file and line.

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

from absl import logging
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
    """Keeps only valid lines whose ``step`` is ``<= step`` (atomically; creates the file).

    Invalid lines are dropped with a warning (see the module doc). Returns the number of lines
    kept.
    """
    self.close()
    records = _read_records(self.path, "dropped") if os.path.exists(self.path) else []
    kept = [json.dumps(r) for r in records if r["step"] <= step]
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
  """All valid records of a JSONL log; an invalid line is skipped with a warning."""
  return _read_records(path, "skipped")


def _line_problem(raw: bytes) -> tuple[dict[str, Any] | None, str | None]:
  """``(record, None)`` for a valid line, else ``(None, what is wrong)``."""
  try:
    record = json.loads(raw.decode("utf-8"))
  except UnicodeDecodeError:
    return None, "invalid UTF-8"
  except json.JSONDecodeError:
    return None, "not valid JSON (torn by a crash?)"
  if not isinstance(record, dict):
    return None, "not a JSON object"
  step = record.get("step")
  if isinstance(step, bool) or not isinstance(step, int) or step < 0:
    return None, f"step is {step!r}, not a step number"
  return record, None


def _read_records(path: str | os.PathLike, action: str) -> list[dict[str, Any]]:
  """The valid records of ``path``; each invalid line is ``action`` ("dropped") with a
  warning."""
  path = os.fspath(path)
  records = []
  with open(path, "rb") as f:
    for number, raw in enumerate(f, start=1):
      if not raw.strip():
        continue
      record, problem = _line_problem(raw)
      if problem is None:
        records.append(record)
      else:
        logging.warning("%s line %d %s: %s", path, number, action, problem)
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
