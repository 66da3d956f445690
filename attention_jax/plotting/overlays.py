"""Attention maps over images, in the style of Show, Attend and Tell's figures (PNG)."""

from __future__ import annotations

import math
from typing import Sequence

import matplotlib

matplotlib.use("Agg")  # headless
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from attention_jax.plotting.figures import save_figure  # noqa: E402


def upsample(attention: np.ndarray, size: tuple[int, int]) -> np.ndarray:
  """A ``[H, W]`` map repeated to ``size`` (which must be a multiple of it), max-normalised."""
  attention = np.asarray(attention, np.float32)
  h, w = attention.shape
  if size[0] % h or size[1] % w:
    raise ValueError(f"image size {size} must be a multiple of the attention grid {(h, w)}")
  up = np.kron(attention, np.ones((size[0] // h, size[1] // w), np.float32))
  return up / max(float(up.max()), 1e-12)


def plot_attention_overlay(image, attentions, words: Sequence[str], path: str, *,
                           boxes: Sequence[Sequence[int]] | None = None, title: str = "",
                           locations: Sequence[tuple[int, int]] | None = None) -> str:
  """The image, then one panel per word with its attention map over the image.

  Args:
    image: ``[S, S, 3]`` uint8 or float in [0, 1].
    attentions: ``[>= len(words), H, W]``, the map of each word.
    words: the generated words (one panel each).
    path: the PNG to write.
    boxes: optional ``(ymin, xmin, ymax, xmax)`` boxes drawn on the first panel.
    title: figure title.
    locations: optional ``(row, column)`` grid cell per word, outlined in red on its panel (the
      location hard attention chose).
  """
  image = np.asarray(image)
  attentions = np.asarray(attentions)
  if attentions.ndim != 3 or attentions.shape[0] < len(words):
    raise ValueError(f"attentions must be [>= {len(words)} words, H, W], got {attentions.shape}")
  panels = len(words) + 1
  cols = min(panels, 6)
  rows = math.ceil(panels / cols)
  fig, axes = plt.subplots(rows, cols, figsize=(1.8 * cols, 1.9 * rows), squeeze=False)
  for ax in axes.flat:
    ax.axis("off")
  axes[0, 0].imshow(image)
  axes[0, 0].set_title("image", fontsize=8)
  for box in ([] if boxes is None else boxes):
    ymin, xmin, ymax, xmax = box
    axes[0, 0].add_patch(plt.Rectangle((xmin - 0.5, ymin - 0.5), xmax - xmin, ymax - ymin,
                                       fill=False, edgecolor="white", linewidth=0.8))
  for t, word in enumerate(words):
    ax = axes.flat[t + 1]
    ax.imshow(image)
    ax.imshow(upsample(attentions[t], image.shape[:2]), cmap="gray", alpha=0.6, vmin=0, vmax=1)
    if locations is not None:
      cell_h = image.shape[0] / attentions.shape[1]
      cell_w = image.shape[1] / attentions.shape[2]
      row, col = locations[t]
      ax.add_patch(plt.Rectangle((col * cell_w - 0.5, row * cell_h - 0.5), cell_w, cell_h,
                                 fill=False, edgecolor="red", linewidth=1.2))
    ax.set_title(word, fontsize=8)
  if title:
    fig.suptitle(title, fontsize=8)
  return save_figure(fig, path, dpi=100)


def plot_caption_grid(images, captions: Sequence[str], path: str, *, cols: int = 4) -> str:
  """A grid of images with their (generated) captions as titles."""
  images = np.asarray(images)
  if len(images) != len(captions) or not len(images):
    raise ValueError(f"images ({len(images)}) and captions ({len(captions)}) must be non-empty "
                     "and of the same length")
  rows = math.ceil(len(images) / cols)
  fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 3.4 * rows), squeeze=False)
  for ax in axes.flat:
    ax.axis("off")
  for ax, image, text in zip(axes.flat, images, captions):
    ax.imshow(image)
    words = text.split(" left of ")
    ax.set_title("\nleft of ".join(words), fontsize=7)
  return save_figure(fig, path, dpi=100)
