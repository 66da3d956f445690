"""Where host-side metrics go: a JSONL log, TensorBoard (when installed) and a tqdm bar.

``metrics.jsonl`` holds one JSON object per line, each with ``"step"`` and ``"split"``
(``"train"`` or ``"eval"``). On resume from a checkpoint at step ``k`` the log is truncated to
the lines with ``step <= k`` (lines written after the checkpoint by a run that then died are
dropped, and so is a torn last line), then appended to: the log never holds duplicates.
"""

from __future__ import annotations

import json
import math
import os
import sys
from typing import Any, Mapping

from attention_jax.training.config_validation import atomic_write_text


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


class _TensorboardXWriter:

  def __init__(self, logdir: str):
    import tensorboardX  # pylint: disable=import-outside-toplevel
    self._writer = tensorboardX.SummaryWriter(logdir)

  def scalar(self, tag: str, value: float, step: int) -> None:
    self._writer.add_scalar(tag, value, step)

  def flush(self) -> None:
    self._writer.flush()

  def close(self) -> None:
    self._writer.close()


def make_summary_writer(logdir: str | os.PathLike):
  """A TensorBoard writer with ``scalar(tag, value, step)``, ``flush()``, ``close()``; or None.

  Tries ``tensorboardX``, then ``flax.metrics.tensorboard`` (needs TensorFlow); returns None
  silently when neither imports.
  """
  logdir = os.fspath(logdir)
  try:
    return _TensorboardXWriter(logdir)
  except Exception:  # pylint: disable=broad-except
    pass
  try:
    from flax.metrics import tensorboard  # pylint: disable=import-outside-toplevel
    return tensorboard.SummaryWriter(logdir)
  except Exception:  # pylint: disable=broad-except
    return None


def write_scalars(writer, step: int, record: Mapping[str, Any], prefix: str = "") -> None:
  """Writes every finite number of ``record`` (except ``step``) as ``<prefix><key>``."""
  if writer is None:
    return
  for key, value in record.items():
    if key == "step" or isinstance(value, bool) or not isinstance(value, (int, float)):
      continue
    if math.isfinite(value):
      writer.scalar(prefix + key, float(value), step)
  writer.flush()


def make_progress_bar(total: int, initial: int, enabled: bool | None = None):
  """A tqdm bar over steps; ``enabled=None`` shows it only when stderr is a terminal."""
  from tqdm.auto import tqdm  # pylint: disable=import-outside-toplevel

  if enabled is None:
    enabled = sys.stderr.isatty()
  return tqdm(total=total, initial=initial, disable=not enabled, unit="step",
              dynamic_ncols=True, desc="train")
