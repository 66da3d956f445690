"""Writing a finished matplotlib figure: the one place that makes folders, lays out and closes."""

from __future__ import annotations

import os
import uuid

import matplotlib.pyplot as plt


def save_figure(fig, path: str, *, dpi: int = 120) -> str:
  """Lays out ``fig``, writes it to ``path`` (creating its folder) and closes it; returns
  ``path``.

  The file is written beside ``path`` and renamed onto it, so a reader never sees half a
  figure; its mode is the one ``open`` gives (``0o666`` less the umask).
  """
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  fig.tight_layout()
  # The temporary name keeps the extension: savefig picks the format from it.
  tmp = os.path.join(directory, f".tmp-{uuid.uuid4().hex}-{os.path.basename(path)}")
  try:
    fig.savefig(tmp, dpi=dpi)
    os.replace(tmp, path)
  finally:
    plt.close(fig)
    if os.path.exists(tmp):
      os.remove(tmp)
  return path
