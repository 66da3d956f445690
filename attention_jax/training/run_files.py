"""Files a run leaves in its workdir, written whole or not at all.

* :func:`atomic_write_text` -- a temporary file beside the target, then ``os.replace``: a reader
  (or a run killed mid-write) sees the old file or the new one, never half of one. The file gets
  the permissions any ``open()`` gives (``0o666`` less the umask), so collaborators can read
  results.
* :func:`write_json` -- indented JSON through :func:`atomic_write_text`.
* :func:`write_eval_json` -- an experiment's results as ``workdir/eval.json``.
"""

from __future__ import annotations

import json
import os
import uuid
from typing import Any, Mapping


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
  """Writes ``text`` to ``path`` through a temporary file and a rename (never half-written).

  Creates the parent directory. The file's mode is ``0o666 & ~umask``, as for ``open(path,
  "w")`` (``tempfile.mkstemp`` would leave ``0o600``).
  """
  path = os.fspath(path)
  directory = os.path.dirname(path) or "."
  os.makedirs(directory, exist_ok=True)
  tmp = os.path.join(directory, f".tmp-{uuid.uuid4().hex}-{os.path.basename(path)}")
  try:
    with open(tmp, "x", encoding="utf-8") as f:  # O_EXCL, mode 0o666 less the umask
      f.write(text)
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise


def write_json(path: str | os.PathLike, obj: Any) -> None:
  """Writes ``obj`` as JSON (indent 2, a trailing newline; values JSON lacks as ``str``),
  atomically."""
  atomic_write_text(path, json.dumps(obj, indent=2, default=str) + "\n")


def write_eval_json(workdir: str | os.PathLike, results: Mapping[str, Any]) -> str:
  """Writes ``results`` to ``workdir/eval.json`` atomically; returns the path."""
  path = os.path.join(os.fspath(workdir), "eval.json")
  write_json(path, dict(results))
  return path
