"""grain input pipelines for sequence-to-sequence text pairs.

A record (``{"source": ..., "target": ...}``, ``str`` or UTF-8 ``bytes``, as read from a
``tfds.data_source``) becomes, with ``S = max_input_len`` and ``T = max_target_len``::

    inputs          int32   [B, S]  source ids, PAD (0) after input_lengths
    input_lengths   int32   [B]
    input_mask      bool    [B, S]  True on the source tokens
    decoder_inputs  int32   [B, T]  BOS + target ids (teacher forcing), PAD after
    targets         int32   [B, T]  target ids + EOS, PAD after
    target_lengths  int32   [B]     len(target ids) + 1 (the BOS / EOS)
    target_mask     bool    [B, T]  True on the positions scored by the loss
    weights         float32 [B]     1 for real examples, 0 for the rows padding a final eval batch

Shapes are fixed by the config, so a jitted step compiles once. ``max_target_len`` counts the
added BOS/EOS: a target of ``n`` tokens needs ``max_target_len >= n + 1``.

Too long examples are an error, never silently cut or dropped: building a pipeline scans the
source once (``validate=True``, about 2 s per 50,000 records) and raises a ``ValueError`` naming
the first offending record, its lengths, and the lengths the whole source needs
(``required_lengths`` computes them up front, e.g. over all splits to size a config).

Training (``make_train_batches``): ``MapDataset.source(src).seed(seed).shuffle().repeat()
.map(encode).batch(B, drop_remainder=True)``. Each epoch is a fresh permutation (grain derives
the per-epoch shuffle from the seed and the epoch number); batches run across epoch boundaries,
so within an epoch every example appears exactly once. ``batches[step]`` is a pure function of
``(seed, step)`` computed by random access, never by iterating from the start, so a run resumed
from a checkpoint at step ``i`` sees exactly the batches ``i, i+1, ...`` it would have seen.

Evaluation (``eval_batches``): one pass in source order; the final partial batch is filled with
all-PAD rows whose ``weights`` are 0 (lengths 0, masks all False), so weighting by ``weights``
(or by ``target_mask``) counts every example exactly once.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Iterator, Mapping, Protocol, Sequence

import grain
import numpy as np

from attention_jax.data.tokenizers import BOS_ID, EOS_ID, PAD_ID, CharTokenizer

Batch = dict[str, np.ndarray]


class Tokenizer(Protocol):

  def encode(self, text: str | bytes, add_bos: bool = False, add_eos: bool = False) -> list[int]:
    ...


def _as_text(value: Any) -> str:
  if isinstance(value, bytes):
    return value.decode("utf-8")
  if isinstance(value, np.ndarray) and value.dtype == object:
    value = value.item()
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)
  return str(value)


@dataclasses.dataclass(frozen=True)
class Seq2SeqEncoder:
  """Turns one record into fixed-length int32 arrays (picklable, for grain workers)."""

  tokenizer: Tokenizer
  target_tokenizer: Tokenizer
  max_input_len: int
  max_target_len: int
  source_key: str = "source"
  target_key: str = "target"

  def __post_init__(self):
    if self.max_input_len < 1 or self.max_target_len < 2:
      raise ValueError(
          f"need max_input_len >= 1 and max_target_len >= 2 (a target token plus BOS/EOS), "
          f"got max_input_len={self.max_input_len}, max_target_len={self.max_target_len}"
      )

  def lengths(self, record: Mapping[str, Any]) -> tuple[int, int]:
    """(source tokens, target tokens + 1): what the record needs of the two max lengths."""
    source = self.tokenizer.encode(_as_text(record[self.source_key]))
    target = self.target_tokenizer.encode(_as_text(record[self.target_key]))
    return len(source), len(target) + 1

  def __call__(self, record: Mapping[str, Any]) -> Batch:
    source_text = _as_text(record[self.source_key])
    target_text = _as_text(record[self.target_key])
    source = self.tokenizer.encode(source_text)
    target = self.target_tokenizer.encode(target_text)
    s, t = len(source), len(target) + 1
    if s > self.max_input_len or t > self.max_target_len:
      raise ValueError(
          f"example too long for the pipeline: source {source_text!r} has {s} tokens "
          f"(max_input_len={self.max_input_len}), target {target_text!r} needs {t} with "
          f"BOS/EOS (max_target_len={self.max_target_len})"
      )
    inputs = np.full((self.max_input_len,), PAD_ID, np.int32)
    inputs[:s] = source
    decoder_inputs = np.full((self.max_target_len,), PAD_ID, np.int32)
    decoder_inputs[0] = BOS_ID
    decoder_inputs[1:t] = target
    targets = np.full((self.max_target_len,), PAD_ID, np.int32)
    targets[: t - 1] = target
    targets[t - 1] = EOS_ID
    return {
        "inputs": inputs,
        "input_lengths": np.int32(s),
        "input_mask": np.arange(self.max_input_len) < s,
        "decoder_inputs": decoder_inputs,
        "targets": targets,
        "target_lengths": np.int32(t),
        "target_mask": np.arange(self.max_target_len) < t,
        "weights": np.float32(1.0),
    }

  def empty(self) -> Batch:
    """An all-PAD row with zero lengths and weight 0 (fills a final partial eval batch)."""
    return {
        "inputs": np.zeros((self.max_input_len,), np.int32),
        "input_lengths": np.int32(0),
        "input_mask": np.zeros((self.max_input_len,), bool),
        "decoder_inputs": np.zeros((self.max_target_len,), np.int32),
        "targets": np.zeros((self.max_target_len,), np.int32),
        "target_lengths": np.int32(0),
        "target_mask": np.zeros((self.max_target_len,), bool),
        "weights": np.float32(0.0),
    }


def _records(source: Sequence[Any], chunk: int = 4096) -> Iterator[Any]:
  getitems = getattr(source, "__getitems__", None)
  for start in range(0, len(source), chunk):
    indices = list(range(start, min(start + chunk, len(source))))
    yield from (getitems(indices) if getitems else (source[i] for i in indices))


def required_lengths(
    source: Sequence[Any],
    tokenizer: Tokenizer,
    target_tokenizer: Tokenizer | None = None,
    *,
    source_key: str = "source",
    target_key: str = "target",
) -> tuple[int, int]:
  """The smallest ``(max_input_len, max_target_len)`` that fit every record of ``source``."""
  encoder = Seq2SeqEncoder(
      tokenizer, target_tokenizer or tokenizer, 1, 2, source_key=source_key, target_key=target_key
  )
  max_s, max_t = 1, 2
  for record in _records(source):
    s, t = encoder.lengths(record)
    max_s, max_t = max(max_s, s), max(max_t, t)
  return max_s, max_t


def build_char_tokenizer(
    source: Sequence[Any], keys: Sequence[str] = ("source", "target")
) -> CharTokenizer:
  """A ``CharTokenizer`` of every character under ``keys`` in the records of ``source``
  (build it from the train split; characters seen only in other splits map to UNK)."""
  return CharTokenizer.build(_as_text(record[key]) for record in _records(source) for key in keys)


def _validate(source: Sequence[Any], encoder: Seq2SeqEncoder) -> None:
  first_bad = None
  max_s, max_t = 0, 0
  for index, record in enumerate(_records(source)):
    s, t = encoder.lengths(record)
    max_s, max_t = max(max_s, s), max(max_t, t)
    if first_bad is None and (s > encoder.max_input_len or t > encoder.max_target_len):
      first_bad = (index, _as_text(record[encoder.source_key]), s, t)
  if first_bad is not None:
    index, text, s, t = first_bad
    raise ValueError(
        f"record {index} ({text!r}) is too long: {s} source tokens and {t} target tokens "
        f"with BOS/EOS, but max_input_len={encoder.max_input_len} and "
        f"max_target_len={encoder.max_target_len}; this source needs max_input_len>={max_s} "
        f"and max_target_len>={max_t}"
    )


def _stack(rows: Sequence[Batch]) -> Batch:
  return {k: np.stack([r[k] for r in rows]) for k in rows[0]}


def _checked_encoder(source, tokenizer, target_tokenizer, max_input_len, max_target_len,
                     source_key, target_key, validate) -> Seq2SeqEncoder:
  """The record encoder of a pipeline; with ``validate``, every record is checked to fit."""
  encoder = Seq2SeqEncoder(
      tokenizer,
      target_tokenizer or tokenizer,
      max_input_len,
      max_target_len,
      source_key=source_key,
      target_key=target_key,
  )
  if validate:
    _validate(source, encoder)
  return encoder


class TrainBatches:
  """Training batches by step: ``batches[step]`` (or ``batches(step)``) is a pure function of
  ``(seed, step)``, computed by random access. Infinite: epochs follow each other, each one a
  new permutation of the source."""

  def __init__(
      self,
      source: Sequence[Any],
      tokenizer: Tokenizer,
      *,
      batch_size: int,
      max_input_len: int,
      max_target_len: int,
      seed: int,
      target_tokenizer: Tokenizer | None = None,
      source_key: str = "source",
      target_key: str = "target",
      validate: bool = True,
  ):
    if batch_size < 1:
      raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if not 0 <= seed < 2**32:
      raise ValueError(f"seed must be in [0, 2**32), got {seed}")
    if len(source) == 0:
      raise ValueError("the source is empty")
    self.encoder = _checked_encoder(
        source, tokenizer, target_tokenizer, max_input_len, max_target_len, source_key,
        target_key, validate)
    self.batch_size = batch_size
    self.seed = seed
    self.num_examples = len(source)
    self.dataset: grain.MapDataset = (
        grain.MapDataset.source(source)
        .seed(seed)
        .shuffle()
        .repeat()
        .map(self.encoder)
        .batch(batch_size, drop_remainder=True, batch_fn=_stack)
    )

  @property
  def steps_per_epoch(self) -> float:
    return self.num_examples / self.batch_size

  def __getitem__(self, step: int) -> Batch:
    step = int(step)
    if step < 0:
      raise IndexError(f"step must be >= 0, got {step}")
    return self.dataset[step]

  __call__ = __getitem__

  def iterate(self, start_step: int = 0, *, num_threads: int = 0) -> Iterator[Batch]:
    """Batches ``start_step, start_step + 1, ...`` (infinite), the same as indexing.

    ``num_threads > 0`` reads ahead with grain threads (``grain.ReadOptions``).
    """
    if start_step < 0:
      raise ValueError(f"start_step must be >= 0, got {start_step}")
    if num_threads <= 0:
      step = start_step
      while True:
        yield self[step]
        step += 1
    options = grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=2 * num_threads)
    yield from self.dataset.slice(slice(start_step, None)).to_iter_dataset(options)


#: ``make_train_batches(source, tokenizer, *, batch_size, max_input_len, max_target_len, seed,
#: target_tokenizer=None, validate=True)[i]`` is the batch of training step ``i``.
make_train_batches = TrainBatches


class EvalBatches:
  """One ordered pass over a source in fixed-shape batches; the last one is padded with rows of
  weight 0. Iterable any number of times; ``len`` is the number of batches."""

  def __init__(
      self,
      source: Sequence[Any],
      tokenizer: Tokenizer,
      *,
      batch_size: int,
      max_input_len: int,
      max_target_len: int,
      target_tokenizer: Tokenizer | None = None,
      source_key: str = "source",
      target_key: str = "target",
      validate: bool = True,
  ):
    if batch_size < 1:
      raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    self.encoder = _checked_encoder(
        source, tokenizer, target_tokenizer, max_input_len, max_target_len, source_key,
        target_key, validate)
    self.batch_size = batch_size
    self.num_examples = len(source)
    self.dataset: grain.MapDataset = (
        grain.MapDataset.source(source)
        .map(self.encoder)
        .batch(batch_size, drop_remainder=False, batch_fn=self._padded_stack)
    )

  def _padded_stack(self, rows: Sequence[Batch]) -> Batch:
    rows = list(rows) + [self.encoder.empty()] * (self.batch_size - len(rows))
    return _stack(rows)

  def __len__(self) -> int:
    return math.ceil(self.num_examples / self.batch_size)

  def __getitem__(self, index: int) -> Batch:
    if not 0 <= index < len(self):
      raise IndexError(f"batch {index} out of range for {len(self)} batches")
    return self.dataset[index]

  def __iter__(self) -> Iterator[Batch]:
    for index in range(len(self)):
      yield self.dataset[index]


#: ``eval_batches(source, tokenizer, *, batch_size, max_input_len, max_target_len,
#: target_tokenizer=None, validate=True)``: every example once, in order (see ``EvalBatches``);
#: sum metrics weighted by ``batch["weights"]``.
eval_batches = EvalBatches
