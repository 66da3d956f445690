"""Shape pairs: is the shape in the top-left quadrant the same as the one in the bottom-right?

A ``size x size`` grey image (float32 in ``[0, 1]``, one channel) holds four 5x5 shapes, one per
quadrant, each at a random offset inside its quadrant, over low uniform noise. The label is 1 when
the top-left and bottom-right shapes are the same kind, else 0 (a fair coin; the top-right and
bottom-left shapes are independent distractors). A model whose features see only a small window
cannot compare the two diagonal corners: global context matters, and a bag of local features
(which shapes occur) does not decide the label, since the distractors are there too.

As with the sequence_processing experiment's distance task, the images are synthetic and unbounded, so a
pure NumPy function of ``(seed, stream, step)`` replaces a dataset on disk: resumable training
reads ``batch(seed, step)``, the test set comes from a stream no training step uses.
"""

from __future__ import annotations

import dataclasses

import numpy as np

SHAPE_SIZE = 5
# 5x5 binary glyphs; their names index the kinds (the label compares kinds, never pixels).
SHAPES = {
    "square": ["#####", "#...#", "#...#", "#...#", "#####"],
    "plus": ["..#..", "..#..", "#####", "..#..", "..#.."],
    "cross": ["#...#", ".#.#.", "..#..", ".#.#.", "#...#"],
    "diamond": ["..#..", ".#.#.", "#...#", ".#.#.", "..#.."],
}
SHAPE_NAMES = tuple(SHAPES)
GLYPHS = np.stack([np.array([[c == "#" for c in row] for row in SHAPES[name]], np.float32)
                   for name in SHAPE_NAMES])  # [kinds, 5, 5]
_TRAIN, _TEST = 0, 1
QUADRANTS = ("top_left", "top_right", "bottom_left", "bottom_right")


@dataclasses.dataclass(frozen=True)
class ShapePairs:
  """Images ``[size, size, 1]``; ``size`` even and >= 2 * 5 (a shape fits in every quadrant).

  Attributes:
    size: image height and width.
    noise: the amplitude of the uniform background noise (shapes are drawn at 1).
  """

  size: int = 16
  noise: float = 0.2

  def __post_init__(self):
    if self.size % 2 or self.size < 2 * SHAPE_SIZE:
      raise ValueError(f"size must be even and >= {2 * SHAPE_SIZE}, got {self.size}")
    if not 0.0 <= self.noise < 1.0:
      raise ValueError(f"noise must be in [0, 1), got {self.noise}")

  def render(self, kinds, offsets, rng: np.random.Generator | None = None) -> np.ndarray:
    """Images from shape kinds and their offsets inside the quadrants.

    Args:
      kinds: int ``[batch, 4]``, indices into ``SHAPE_NAMES`` per quadrant (``QUADRANTS`` order).
      offsets: int ``[batch, 4, 2]``, (row, column) of each shape's corner inside its quadrant,
        each in ``[0, size / 2 - 5]``.
      rng: the background noise; None draws a clean background.

    Returns:
      float32 ``[batch, size, size, 1]``.
    """
    kinds, offsets = np.asarray(kinds), np.asarray(offsets)
    half, room = self.size // 2, self.size // 2 - SHAPE_SIZE
    if kinds.ndim != 2 or kinds.shape[1] != 4 or offsets.shape != kinds.shape + (2,):
      raise ValueError(f"kinds must be [batch, 4] and offsets [batch, 4, 2], got {kinds.shape} "
                       f"and {offsets.shape}")
    if kinds.size and (kinds.min() < 0 or kinds.max() >= len(SHAPE_NAMES)):
      raise ValueError(f"kinds must be in [0, {len(SHAPE_NAMES) - 1}]")
    if offsets.size and (offsets.min() < 0 or offsets.max() > room):
      raise ValueError(f"offsets must be in [0, {room}] for size {self.size}")
    batch = len(kinds)
    images = (np.zeros((batch, self.size, self.size), np.float32) if rng is None else
              rng.uniform(0, self.noise, (batch, self.size, self.size)).astype(np.float32))
    for b in range(batch):
      for q in range(4):
        top = (q // 2) * half + offsets[b, q, 0]
        left = (q % 2) * half + offsets[b, q, 1]
        window = images[b, top:top + SHAPE_SIZE, left:left + SHAPE_SIZE]
        np.maximum(window, GLYPHS[kinds[b, q]], out=window)
    return images[..., None]

  def make(self, labels, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Examples with the given labels: ``{"images": float32 [batch, size, size, 1],
    "labels": int32 [batch], "kinds": int32 [batch, 4]}``."""
    labels = np.asarray(labels, np.int32)
    if labels.ndim != 1 or not np.isin(labels, (0, 1)).all():
      raise ValueError(f"labels must be a [batch] array of 0/1, got {labels}")
    batch, n = len(labels), len(SHAPE_NAMES)
    kinds = rng.integers(0, n, size=(batch, 4), dtype=np.int32)
    different = (kinds[:, 0] + rng.integers(1, n, size=batch, dtype=np.int32)) % n
    kinds[:, 3] = np.where(labels == 1, kinds[:, 0], different)
    offsets = rng.integers(0, self.size // 2 - SHAPE_SIZE + 1, size=(batch, 4, 2))
    return {"images": self.render(kinds, offsets, rng), "labels": labels, "kinds": kinds}

  def batch(self, seed: int, step: int, batch_size: int) -> dict[str, np.ndarray]:
    """Training batch ``step``: balanced random labels, a pure function of (seed, step)."""
    if batch_size < 1:
      raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    rng = _rng(seed, _TRAIN, step)
    return self.make(rng.integers(0, 2, size=batch_size), rng)

  def test_set(self, seed: int, num_examples: int) -> dict[str, np.ndarray]:
    """``num_examples`` examples, labels alternating 0, 1, from a stream training never uses."""
    if num_examples < 1:
      raise ValueError(f"num_examples must be >= 1, got {num_examples}")
    return self.make(np.arange(num_examples) % 2, _rng(seed, _TEST, 0))


def label_of(kinds) -> np.ndarray:
  """int32 ``[batch]``: 1 where the top-left and bottom-right kinds agree."""
  kinds = np.asarray(kinds)
  return (kinds[:, 0] == kinds[:, 3]).astype(np.int32)


def _rng(seed: int, stream: int, step: int) -> np.random.Generator:
  if seed < 0 or step < 0:
    raise ValueError(f"seed and step must be >= 0, got seed={seed}, step={step}")
  return np.random.Generator(np.random.Philox(
      key=np.array([seed, (stream << 62) | step], dtype=np.uint64)))
