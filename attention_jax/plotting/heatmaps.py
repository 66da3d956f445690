"""Attention heatmaps as PNG files (matplotlib, headless)."""

from __future__ import annotations

import math
from typing import Sequence

import matplotlib

matplotlib.use("Agg")  # headless: experiments run on servers without a display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from attention_jax.plotting.figures import save_figure  # noqa: E402


def _draw(ax, weights, x_labels, y_labels, title, x_title, y_title):
  image = ax.imshow(weights, cmap="viridis", vmin=0.0, aspect="auto", interpolation="nearest")
  if x_labels is not None:
    ax.set_xticks(range(len(x_labels)), labels=list(x_labels), fontsize=7)
  if y_labels is not None:
    ax.set_yticks(range(len(y_labels)), labels=list(y_labels), fontsize=7)
  ax.set_xlabel(x_title)
  ax.set_ylabel(y_title)
  if title:
    ax.set_title(title, fontsize=9)
  return image


def plot_attention(weights, path: str, *, x_labels: Sequence[str] | None = None,
                   y_labels: Sequence[str] | None = None, title: str = "",
                   x_title: str = "keys (inputs)", y_title: str = "queries (outputs)") -> str:
  """Writes one attention map ``weights [q_len, kv_len]`` as a heatmap PNG; returns ``path``."""
  weights = np.asarray(weights, np.float32)
  if weights.ndim != 2:
    raise ValueError(f"weights must be [q_len, kv_len], got shape {weights.shape}")
  size = (max(4.0, 0.28 * weights.shape[1] + 2), max(3.0, 0.28 * weights.shape[0] + 1.5))
  fig, ax = plt.subplots(figsize=size)
  image = _draw(ax, weights, x_labels, y_labels, title, x_title, y_title)
  fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
  return save_figure(fig, path)


def plot_attention_grid(weights, path: str, *, x_labels: Sequence[str] | None = None,
                        y_labels: Sequence[str] | None = None,
                        titles: Sequence[str] | None = None, suptitle: str = "") -> str:
  """Writes several maps ``weights [n, q_len, kv_len]`` (e.g. one per head) side by side."""
  weights = np.asarray(weights, np.float32)
  if weights.ndim != 3:
    raise ValueError(f"weights must be [n, q_len, kv_len], got shape {weights.shape}")
  n = weights.shape[0]
  cols = min(n, 4)
  rows = math.ceil(n / cols)
  cell = (max(3.0, 0.22 * weights.shape[2] + 1.5), max(2.5, 0.22 * weights.shape[1] + 1.2))
  fig, axes = plt.subplots(rows, cols, figsize=(cell[0] * cols, cell[1] * rows), squeeze=False)
  for i, ax in enumerate(axes.flat):
    if i >= n:
      ax.axis("off")
      continue
    title = titles[i] if titles is not None else f"head {i}"
    _draw(ax, weights[i], x_labels, y_labels, title, "keys", "queries")
  if suptitle:
    fig.suptitle(suptitle)
  return save_figure(fig, path)
