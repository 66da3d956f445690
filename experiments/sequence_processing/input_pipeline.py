"""Long-range dependencies of a set length: the marked token, ``distance`` positions before the end.

A sequence of ``length`` tokens. Every position holds a plain symbol ``1..num_symbols`` except one,
``length - 1 - distance``, which holds a *marked* symbol ``num_symbols + s`` (symbol ``s``, marked).
The answer is read at the last position, ``distance`` positions after the marked token, so the
distance sets how far information has to travel: a causal convolution whose receptive field is
shorter than ``distance + 1`` cannot see the marked token, an RNN has to carry it through
``distance`` steps of distractors, self-attention reaches it in one step. Two modes:

* ``"recall"`` (``num_symbols`` classes): the label is ``s - 1``, which symbol is marked.
* ``"match"`` (2 classes): is the marked symbol equal to the last token (``x[-1] == s``)? Harder
  to learn: the model must compare two tokens, an XOR-like problem with a long plateau at chance.

Labels are uniform by construction (drawn first, then the tokens are set to fit), and every other
position is an independent uniform plain symbol, so no other statistic of the sequence carries
the label.

Why a NumPy generator and not a TFDS builder like :mod:`attention_jax.data.dates`: the task is
synthetic and unbounded, so a dataset on disk would only add a preparation step. Instead
``batch(seed, step)`` is a pure function of ``(seed, step)`` (a ``np.random.Philox`` stream keyed
by both), which is what the resumable training loop needs, and a test batch uses a key no train
step can produce. Token ids (``0`` is never used, kept free for padding)::

  plain symbols   1 .. num_symbols
  marked symbols  num_symbols + 1 .. 2 * num_symbols
  vocab_size      2 * num_symbols + 1
"""

from __future__ import annotations

import dataclasses

import numpy as np

MODES = ("recall", "match")
_TRAIN, _TEST = 0, 1  # the stream an example comes from: test keys never collide with train keys


@dataclasses.dataclass(frozen=True)
class DistanceTask:
  """The task's shape: sequences of ``length`` tokens, distances ``1 .. max_distance``.

  Attributes:
    length: tokens per sequence (>= 2).
    num_symbols: plain symbols (>= 2).
    max_distance: the largest distance sampled (default and at most ``length - 1``).
    mode: ``"recall"`` or ``"match"`` (see the module docstring).
  """

  length: int
  num_symbols: int = 8
  max_distance: int | None = None
  mode: str = "recall"

  def __post_init__(self):
    if self.length < 2:
      raise ValueError(f"length must be >= 2, got {self.length}")
    if self.num_symbols < 2:
      raise ValueError(f"num_symbols must be >= 2, got {self.num_symbols}")
    if self.max_distance is not None and not 1 <= self.max_distance <= self.length - 1:
      raise ValueError(
          f"max_distance must be in [1, length - 1 = {self.length - 1}], got {self.max_distance}")
    if self.mode not in MODES:
      raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")

  @property
  def num_classes(self) -> int:
    return self.num_symbols if self.mode == "recall" else 2

  @property
  def vocab_size(self) -> int:
    return 2 * self.num_symbols + 1

  @property
  def distances(self) -> np.ndarray:
    """int32 ``[max_distance]``: ``1 .. max_distance``."""
    return np.arange(1, (self.max_distance or self.length - 1) + 1, dtype=np.int32)

  def make(self, distances, labels, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Examples with the given distances and labels (random everything else).

    Args:
      distances: int ``[batch]``, each in ``[1, length - 1]``.
      labels: int ``[batch]``, each in ``[0, num_classes)``.
      rng: the source of the symbols.

    Returns:
      ``{"inputs": int32 [batch, length], "labels": int32 [batch], "distances": int32 [batch]}``.
    """
    distances = np.asarray(distances, np.int32)
    labels = np.asarray(labels, np.int32)
    if distances.ndim != 1 or labels.shape != distances.shape:
      raise ValueError(f"distances {distances.shape} and labels {labels.shape} must be the same "
                       f"[batch] shape")
    if distances.size and (distances.min() < 1 or distances.max() > self.length - 1):
      raise ValueError(f"distances must be in [1, length - 1 = {self.length - 1}], got "
                       f"[{distances.min()}, {distances.max()}]")
    if labels.size and (labels.min() < 0 or labels.max() >= self.num_classes):
      raise ValueError(f"labels must be in [0, {self.num_classes - 1}] for mode {self.mode!r}, "
                       f"got {np.unique(labels)}")
    batch, k = len(distances), self.num_symbols
    inputs = rng.integers(1, k + 1, size=(batch, self.length), dtype=np.int32)
    rows = np.arange(batch)
    if self.mode == "recall":
      marked = labels + 1
    else:
      marked = rng.integers(1, k + 1, size=batch, dtype=np.int32)
      # A different symbol for negatives: marked + an offset in 1..k-1, wrapped into 1..k.
      other = (marked - 1 + rng.integers(1, k, size=batch, dtype=np.int32)) % k + 1
      inputs[:, -1] = np.where(labels == 1, marked, other)
    inputs[rows, self.length - 1 - distances] = marked + k
    return {"inputs": inputs, "labels": labels, "distances": distances}

  def batch(self, seed: int, step: int, batch_size: int) -> dict[str, np.ndarray]:
    """Training batch ``step``: uniform distances in ``1 .. max_distance``, balanced labels."""
    return self._sample((seed, _TRAIN, step), batch_size)

  def test_set(self, seed: int, examples_per_distance: int) -> dict[str, np.ndarray]:
    """``examples_per_distance`` examples at every distance (labels cycling through the classes),
    in distance order; from a stream the training batches never use."""
    rng = _rng((seed, _TEST, 0))
    distances = np.repeat(self.distances, examples_per_distance)
    labels = np.tile(np.arange(examples_per_distance) % self.num_classes, len(self.distances))
    return self.make(distances, labels, rng)

  def _sample(self, key, batch_size: int) -> dict[str, np.ndarray]:
    if batch_size < 1:
      raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    rng = _rng(key)
    distances = rng.integers(1, len(self.distances) + 1, size=batch_size, dtype=np.int32)
    labels = rng.integers(0, self.num_classes, size=batch_size, dtype=np.int32)
    return self.make(distances, labels, rng)


def label_of(inputs, num_symbols: int, mode: str = "recall") -> np.ndarray:
  """The label computed back from the tokens (a check of :meth:`DistanceTask.make`).

  Args:
    inputs: int ``[batch, length]`` with exactly one marked token per row.

  Returns:
    int32 ``[batch]``.
  """
  inputs = np.asarray(inputs)
  is_marked = inputs > num_symbols
  if not (is_marked.sum(axis=1) == 1).all():
    raise ValueError("every row of inputs must hold exactly one marked token")
  marked = inputs[is_marked] - num_symbols
  if mode == "recall":
    return (marked - 1).astype(np.int32)
  return (marked == inputs[:, -1]).astype(np.int32)


def distance_of(inputs, num_symbols: int) -> np.ndarray:
  """int32 ``[batch]``: how far before the last position each row's marked token is."""
  inputs = np.asarray(inputs)
  return (inputs.shape[1] - 1 - np.argmax(inputs > num_symbols, axis=1)).astype(np.int32)


def _rng(key) -> np.random.Generator:
  # Philox takes a 2-word key: the seed, then the stream in the top bits above the step.
  seed, stream, step = (int(k) for k in key)
  if seed < 0 or step < 0:
    raise ValueError(f"seed and step must be >= 0, got seed={seed}, step={step}")
  return np.random.Generator(np.random.Philox(
      key=np.array([seed, (stream << 62) | step], dtype=np.uint64)))
