"""Writing a finished matplotlib figure: the one place that makes folders, lays out and closes."""

from __future__ import annotations

import os

import matplotlib.pyplot as plt


def save_figure(fig, path: str, *, dpi: int = 120) -> str:
  """Lays out ``fig``, writes it to ``path`` (creating its folder) and closes it; returns
  ``path``."""
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  fig.tight_layout()
  fig.savefig(path, dpi=dpi)
  plt.close(fig)
  return path
