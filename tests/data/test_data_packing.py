"""Packed language-model batches: every token once, segments and positions right, and a model
reads a packed row exactly as it reads its sequences alone."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from attention_jax import data
from attention_jax.data import packing
from attention_jax.models import transformer


def _sequences(count=40, seed=0, low=3, high=30, vocab=50):
  rng = np.random.default_rng(seed)
  return [rng.integers(1, vocab, size=rng.integers(low, high)).tolist() for _ in range(count)]


def _unpack(batches):
  """Every (inputs, targets) run of the packed rows, by segment."""
  runs = []
  for batch in batches:
    for row in range(batch["inputs"].shape[0]):
      segments = batch["segment_ids"][row]
      for segment in sorted(set(segments.tolist()) - {0}):
        where = segments == segment
        assert np.all(batch["positions"][row][where] == np.arange(where.sum()))
        assert np.all(batch["weights"][row][where] == 1.0)
        runs.append((batch["inputs"][row][where].tolist(), batch["targets"][row][where].tolist()))
      padding = segments == 0
      assert np.all(batch["weights"][row][padding] == 0.0)
      assert np.all(batch["inputs"][row][padding] == 0)
  return runs


def test_every_sequence_is_packed_once_whole_and_in_order():
  sequences = _sequences()
  runs = _unpack(packing.packed_lm_batches(sequences, length=32, batch_size=4))
  want = sorted((s[:-1], s[1:]) for s in sequences)
  assert sorted(runs) == want


def test_packing_wastes_less_than_padding():
  sequences = _sequences(count=200, seed=1)
  packed, packed_rows = packing.padding_fraction(
      packing.packed_lm_batches(sequences, length=64, batch_size=8))
  padded, padded_rows = packing.padding_fraction(
      packing.padded_lm_batches(sequences, length=64, batch_size=8))
  assert padded_rows == 200 and packed_rows < padded_rows / 3
  assert packed < 0.25 < padded


def test_a_packed_row_gives_each_sequence_its_own_logits():
  config = transformer.TransformerConfig(vocab_size=50, features=32, num_heads=4, mlp_dim=64,
                                         num_layers=2, max_length=64, positions="rotary",
                                         dropout_rate=0.0)
  model = transformer.DecoderOnlyLM(config)
  sequences = _sequences(count=12, seed=2, high=20)
  batch = next(packing.packed_lm_batches(sequences, length=48, batch_size=2))
  # Jitted: one compile per shape instead of one per op.
  params = jax.jit(model.init)(jax.random.key(0), jnp.asarray(batch["inputs"]))["params"]
  apply = jax.jit(model.apply)
  logits = apply({"params": params}, jnp.asarray(batch["inputs"]),
                 segment_ids=jnp.asarray(batch["segment_ids"]),
                 positions=jnp.asarray(batch["positions"]))
  runs = []
  for row in range(2):
    segments = batch["segment_ids"][row]
    for segment in sorted(set(segments.tolist()) - {0}):
      runs.append((row, np.flatnonzero(segments == segment)))
  assert len(runs) >= 3
  # Each sequence alone, as its own row of one batch (one compile, not one per length): the
  # trailing zeros come after it, and a causal model's logits at its positions do not see them.
  alone_inputs = np.zeros((len(runs), batch["inputs"].shape[1]), batch["inputs"].dtype)
  for i, (row, where) in enumerate(runs):
    alone_inputs[i, :len(where)] = batch["inputs"][row][where]
  alone = apply({"params": params}, jnp.asarray(alone_inputs))
  for i, (row, where) in enumerate(runs):
    np.testing.assert_allclose(logits[row, where], alone[i, :len(where)], atol=1e-5)


@pytest.mark.parametrize("sequences,match", [
    ([[1]], r"sequence 0 must be a 1-D run of at least 2 token ids"),
    ([[1, 2], list(range(1, 40))], r"sequence 1 has 39 tokens \(38 input positions\) but rows "
                                   r"hold length=16"),
])
def test_bad_sequences_are_named(sequences, match):
  with pytest.raises(ValueError, match=match):
    next(packing.packed_lm_batches(sequences, length=16, batch_size=2))


def _pairs_of_lengths(count, seed):
  rng = np.random.default_rng(seed)
  sources = [rng.integers(3, 50, size=rng.integers(2, 14)).tolist() for _ in range(count)]
  targets = [rng.integers(3, 50, size=rng.integers(1, 6)).tolist() for _ in range(count)]
  return sources, targets


def test_packed_pairs_keep_each_source_with_its_target():
  sources, targets = _pairs_of_lengths(60, 3)
  rows = packing.packed_seq2seq_rows(sources, targets, input_length=32, target_length=16)
  found = []
  for r in range(len(rows["inputs"])):
    in_seg, tgt_seg = rows["input_segment_ids"][r], rows["target_segment_ids"][r]
    assert set(in_seg.tolist()) - {0} == set(tgt_seg.tolist()) - {0}
    for segment in sorted(set(in_seg.tolist()) - {0}):
      source = rows["inputs"][r][in_seg == segment]
      where = tgt_seg == segment
      assert np.all(rows["input_positions"][r][in_seg == segment] == np.arange(len(source)))
      assert np.all(rows["target_positions"][r][where] == np.arange(where.sum()))
      decoder_inputs, target = rows["decoder_inputs"][r][where], rows["targets"][r][where]
      assert decoder_inputs[0] == data.BOS_ID and target[-1] == data.EOS_ID
      assert np.array_equal(decoder_inputs[1:], target[:-1])
      found.append((source.tolist(), target[:-1].tolist()))
    assert np.array_equal(rows["target_mask"][r], tgt_seg > 0)
  assert sorted(found) == sorted(zip(sources, targets))
  assert len(rows["inputs"]) < 60 / 2


def test_a_packed_row_of_pairs_gives_each_pair_its_own_logits():
  """Encoder self-attention, decoder self-attention and cross-attention all stay inside a pair:
  the logits of a packed row equal those of each pair translated alone."""
  config = transformer.TransformerConfig(vocab_size=50, features=32, num_heads=4, mlp_dim=64,
                                         num_layers=2, max_length=32, positions="rotary",
                                         dropout_rate=0.0)
  model = transformer.EncoderDecoder(config)
  sources, targets = _pairs_of_lengths(10, 4)
  rows = packing.packed_seq2seq_rows(sources, targets, input_length=32, target_length=16)
  pick = int(np.argmax([len(set(r.tolist()) - {0}) for r in rows["input_segment_ids"]]))
  rows = {k: v[pick:pick + 1] for k, v in rows.items()}
  row = {k: jnp.asarray(v) for k, v in rows.items()}
  params = jax.jit(model.init)(jax.random.key(0), row["inputs"], row["decoder_inputs"])["params"]
  apply = jax.jit(model.apply)
  logits = apply({"params": params}, row["inputs"], row["decoder_inputs"],
                 input_segment_ids=row["input_segment_ids"],
                 input_positions=row["input_positions"],
                 target_segment_ids=row["target_segment_ids"],
                 target_positions=row["target_positions"])
  in_seg, tgt_seg = rows["input_segment_ids"][0], rows["target_segment_ids"][0]
  segments = sorted(set(in_seg.tolist()) - {0})
  assert len(segments) >= 2
  target_length = rows["decoder_inputs"].shape[1]
  for segment in segments:
    # The source exactly as translated alone (the encoder sees all of it); the decoder inputs
    # padded at the end to the row's length, which the causal decoder's earlier positions do not
    # see: one compile per source length instead of one per (source, target) length pair.
    source = jnp.asarray(rows["inputs"][0][in_seg == segment])[None]
    where = np.flatnonzero(tgt_seg == segment)
    decoder_inputs = np.zeros((1, target_length), rows["decoder_inputs"].dtype)
    decoder_inputs[0, :len(where)] = rows["decoder_inputs"][0][where]
    alone = apply({"params": params}, source, jnp.asarray(decoder_inputs))
    np.testing.assert_allclose(logits[0, where], alone[0, :len(where)], atol=1e-5)


def test_row_batches_are_a_pure_function_of_the_step():
  rows = packing.padded_lm_rows(_sequences(count=30), length=32)
  batches = packing.RowBatches(rows, batch_size=4, seed=7)
  assert batches.steps_per_epoch == 7
  first_epoch = np.concatenate([batches[s]["inputs"] for s in range(7)])
  assert len({tuple(r) for r in first_epoch.tolist()}) == 28  # no row twice in an epoch
  again = packing.RowBatches(rows, batch_size=4, seed=7)
  for step in (12, 3, 12, 0):  # out of order, as a resumed run reads them
    np.testing.assert_array_equal(again[step]["inputs"], batches(step)["inputs"])
  assert not np.array_equal(batches[0]["inputs"], batches[7]["inputs"])  # a new epoch, new order
  np.testing.assert_array_equal(batches.__getitem__(3, rows=slice(1, 3))["inputs"],
                                batches[3]["inputs"][1:3])
