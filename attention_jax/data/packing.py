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

from attention_jax.data.tokenizers import BOS_ID, EOS_ID, PAD_ID

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
  rows = _first_fit(_pairs(sequences, length), {"inputs": length, "targets": length}, seed,
                    num_packing_bins or batch_size)  # checks every sequence now, not lazily
  return _batched((_with_weights(row) for row in rows), batch_size, drop_remainder)


def _batched(rows: Iterable[Batch], batch_size: int, drop_remainder: bool) -> Iterator[Batch]:
  batch = []
  for row in rows:
    batch.append(row)
    if len(batch) == batch_size:
      yield _stack(batch)
      batch = []
  if batch and not drop_remainder:
    yield _stack(batch)


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


# ---------------------------------------------------------------------------------------------
# Rows packed once, batched by step.


def _first_fit(examples: Sequence[dict[str, np.ndarray]], lengths: dict[str, int], seed: int,
               num_packing_bins: int) -> Iterator[dict[str, np.ndarray]]:
  """grain's first-fit packing of ``examples`` (1-D features named in ``lengths``) into rows of
  those lengths; each feature ``f`` gains ``f_segment_ids`` (1, 2, ...; 0 on padding) and
  ``f_positions``."""
  dataset = grain.MapDataset.source(list(examples)).to_iter_dataset(
      grain.ReadOptions(num_threads=0, prefetch_buffer_size=0))
  return iter(grain.experimental.FirstFitPackIterDataset(
      dataset, length_struct=dict(lengths), num_packing_bins=num_packing_bins, seed=seed,
      shuffle_bins=True))


def _stack(rows: Iterable[Batch]) -> Batch:
  rows = list(rows)
  if not rows:
    raise ValueError("no rows to stack: the examples are empty")
  return {k: np.stack([r[k] for r in rows]) for k in rows[0]}


def packed_lm_rows(sequences: Sequence[Sequence[int]], *, length: int, seed: int = 0,
                   num_packing_bins: int = 64) -> Batch:
  """Every sequence packed into rows, stacked: the fields of :func:`packed_lm_batches`, each
  ``[rows, length]``."""
  rows = _first_fit(_pairs(sequences, length), {"inputs": length, "targets": length}, seed,
                    num_packing_bins)
  return _stack(_with_weights(row) for row in rows)


def padded_lm_rows(sequences: Sequence[Sequence[int]], *, length: int) -> Batch:
  """One sequence per row, stacked (:func:`padded_lm_batches`' arrays)."""
  batches = list(padded_lm_batches(sequences, length=length, batch_size=1024))
  return {k: np.concatenate([b[k] for b in batches]) for k in FIELDS}


def packed_seq2seq_rows(sources: Sequence[Sequence[int]], targets: Sequence[Sequence[int]], *,
                        input_length: int, target_length: int, seed: int = 0,
                        num_packing_bins: int = 64) -> Batch:
  """Source/target pairs packed into rows of ``input_length`` source and ``target_length``
  target positions; a pair goes whole into one row (its source and its target together), so
  segment ``s`` of a row's targets translates segment ``s`` of its sources. Returns, stacked::

    inputs, input_segment_ids, input_positions          int32 [rows, input_length]
    decoder_inputs (BOS + target), targets (target + EOS),
    target_segment_ids, target_positions                int32 [rows, target_length]
    target_mask                                         bool  [rows, target_length]
  """
  if len(sources) != len(targets):
    raise ValueError(f"got {len(sources)} sources but {len(targets)} targets")
  examples = []
  for index, (source, target) in enumerate(zip(sources, targets)):
    source, target = np.asarray(source, np.int32), np.asarray(target, np.int32)
    if not 0 < len(source) <= input_length or len(target) + 1 > target_length:
      raise ValueError(f"pair {index} has {len(source)} source and {len(target) + 1} target "
                       f"tokens (with BOS/EOS); rows hold input_length={input_length} and "
                       f"target_length={target_length}")
    examples.append({"inputs": source,
                     "decoder_inputs": np.concatenate([[BOS_ID], target]).astype(np.int32),
                     "targets": np.concatenate([target, [EOS_ID]]).astype(np.int32)})
  lengths = {"inputs": input_length, "decoder_inputs": target_length, "targets": target_length}
  rows = []
  for row in _first_fit(examples, lengths, seed, num_packing_bins):
    segments = row["targets_segment_ids"].astype(np.int32)
    rows.append({
        "inputs": row["inputs"].astype(np.int32),
        "input_segment_ids": row["inputs_segment_ids"].astype(np.int32),
        "input_positions": row["inputs_positions"].astype(np.int32),
        "decoder_inputs": row["decoder_inputs"].astype(np.int32),
        "targets": row["targets"].astype(np.int32),
        "target_segment_ids": segments,
        "target_positions": row["targets_positions"].astype(np.int32),
        "target_mask": segments > 0,
    })
  return _stack(rows)


class RowBatches:
  """Batches of stacked rows by step: ``batches[step]`` (or ``batches(step)``) is a pure function
  of ``(seed, step)``, so a resumed run reads exactly the batches it would have read.

  Epoch ``e`` is a permutation of the rows seeded by ``(seed, e)``, cut into
  ``len(rows) // batch_size`` batches (the remainder of each permutation is left out). Packing
  happens once, before: the rows keep their sequences together across epochs (harmless: segment
  ids keep them apart) while the batches change.
  """

  def __init__(self, rows: Batch, batch_size: int, seed: int):
    num_rows = len(next(iter(rows.values())))
    if batch_size < 1 or num_rows < batch_size:
      raise ValueError(f"batch_size must be in [1, {num_rows}] (the number of rows), got "
                       f"{batch_size}")
    self.rows, self.batch_size, self.seed = rows, batch_size, seed
    self.steps_per_epoch = num_rows // batch_size
    self._order: tuple[int, np.ndarray] | None = None

  def padding_fraction(self, field: str = "weights") -> float:
    """The fraction of positions of ``field`` (a weight or mask array) that are padding."""
    return 1.0 - float(np.mean(self.rows[field]))

  def __getitem__(self, step: int, rows: slice | None = None) -> Batch:
    step = int(step)
    if step < 0:
      raise IndexError(f"step must be >= 0, got {step}")
    epoch, index = divmod(step, self.steps_per_epoch)
    if self._order is None or self._order[0] != epoch:
      num_rows = len(next(iter(self.rows.values())))
      self._order = (epoch, np.random.default_rng([self.seed, epoch]).permutation(num_rows))
    picked = self._order[1][index * self.batch_size:(index + 1) * self.batch_size]
    if rows is not None:
      picked = picked[rows]
    return {k: v[picked] for k, v in self.rows.items()}

  __call__ = __getitem__
