"""Packed language-model batches: several sequences per row instead of one padded sequence.

A sequence of ``n`` token ids becomes the pair ``inputs = ids[:-1]``, ``targets = ids[1:]``
(next-token prediction). :func:`packed_lm_batches` places these pairs into rows of ``length``
positions with grain's first-fit packing (``grain.experimental.FirstFitPackIterDataset``) and
returns batches of::

    inputs        int32   [B, length]  token ids, PAD (0) after the last sequence of the row
    targets       int32   [B, length]  the next token of each input position
    segment_ids   int32   [B, length]  1, 2, ... per sequence of the row, 0 on padding
    positions     int32   [B, length]  0, 1, ... restarting in every sequence
    weights       float32 [B, length]  1 on the scored positions, 0 on padding

Fed to ``DecoderOnlyLM(...).apply(params, inputs, segment_ids=..., positions=...)`` every sequence
gets exactly the logits it would get alone (``tests/data/test_data_packing.py``).
:func:`padded_lm_batches` gives the same arrays with one sequence per row, the baseline packing is
measured against (:func:`padding_fraction`).
"""

from __future__ import annotations

from typing import Iterable, Iterator, Sequence

import grain
import grain.experimental
import numpy as np

from attention_jax.data.tokenizers import PAD_ID

Batch = dict[str, np.ndarray]
FIELDS = ("inputs", "targets", "segment_ids", "positions", "weights")


def _pairs(sequences: Sequence[Sequence[int]], length: int) -> list[dict[str, np.ndarray]]:
  pairs = []
  for index, ids in enumerate(sequences):
    ids = np.asarray(ids, np.int32)
    if ids.ndim != 1 or len(ids) < 2:
      raise ValueError(f"sequence {index} must be a 1-D run of at least 2 token ids (an input "
                       f"and its next token), got shape {ids.shape}")
    if len(ids) - 1 > length:
      raise ValueError(f"sequence {index} has {len(ids)} tokens ({len(ids) - 1} input "
                       f"positions) but rows hold length={length}; cut it or raise length")
    pairs.append({"inputs": ids[:-1], "targets": ids[1:]})
  return pairs


def _with_weights(row: dict[str, np.ndarray]) -> Batch:
  segments = row["inputs_segment_ids"].astype(np.int32)
  return {"inputs": row["inputs"].astype(np.int32), "targets": row["targets"].astype(np.int32),
          "segment_ids": segments, "positions": row["inputs_positions"].astype(np.int32),
          "weights": (segments > 0).astype(np.float32)}


def packed_lm_batches(sequences: Sequence[Sequence[int]], *, length: int, batch_size: int,
                      num_packing_bins: int | None = None, seed: int = 0,
                      drop_remainder: bool = False) -> Iterator[Batch]:
  """Batches of rows of several packed sequences, one pass over ``sequences`` in order.

  Args:
    sequences: token id sequences (each ``>= 2`` ids, at most ``length + 1``).
    length: positions per row.
    batch_size: rows per batch.
    num_packing_bins: rows filled at once by first-fit (default ``batch_size``): more bins waste
      less padding but mix sequences from further apart.
    seed: seeds the shuffle of the bins.
    drop_remainder: drop a last batch of fewer than ``batch_size`` rows.
  """
  pairs = _pairs(sequences, length)
  dataset = grain.MapDataset.source(pairs).to_iter_dataset()
  dataset = grain.experimental.FirstFitPackIterDataset(
      dataset, length_struct={"inputs": length, "targets": length},
      num_packing_bins=num_packing_bins or batch_size, seed=seed, shuffle_bins=True)
  dataset = dataset.map(_with_weights).batch(batch_size, drop_remainder=drop_remainder)
  return iter(dataset)


def padded_lm_batches(sequences: Sequence[Sequence[int]], *, length: int,
                      batch_size: int) -> Iterator[Batch]:
  """The same arrays with one sequence per row, padded to ``length`` (the baseline)."""
  rows = []
  for pair in _pairs(sequences, length):
    n = len(pair["inputs"])
    pad = [(0, length - n)]
    rows.append({"inputs": np.pad(pair["inputs"], pad, constant_values=PAD_ID),
                 "targets": np.pad(pair["targets"], pad, constant_values=PAD_ID),
                 "segment_ids": np.pad(np.ones(n, np.int32), pad),
                 "positions": np.pad(np.arange(n, dtype=np.int32), pad),
                 "weights": np.pad(np.ones(n, np.float32), pad)})
    if len(rows) == batch_size:
      yield {k: np.stack([r[k] for r in rows]) for k in FIELDS}
      rows = []
  if rows:
    yield {k: np.stack([r[k] for r in rows]) for k in FIELDS}


def padding_fraction(batches: Iterable[Batch]) -> tuple[float, int]:
  """``(fraction of positions that are padding, number of rows)`` over ``batches``."""
  scored = total = rows = 0
  for batch in batches:
    scored += float(np.sum(batch["weights"]))
    total += batch["weights"].size
    rows += batch["weights"].shape[0]
  return (1.0 - scored / total if total else 0.0), rows
