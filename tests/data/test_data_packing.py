"""Packed language-model batches: every token once, segments and positions right, and a model
reads a packed row exactly as it reads its sequences alone."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

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
  params = model.init(jax.random.key(0), jnp.asarray(batch["inputs"]))["params"]
  apply = jax.jit(model.apply)  # one compile per shape instead of one per op
  logits = apply({"params": params}, jnp.asarray(batch["inputs"]),
                 segment_ids=jnp.asarray(batch["segment_ids"]),
                 positions=jnp.asarray(batch["positions"]))
  checked = 0
  for row in range(2):
    segments = batch["segment_ids"][row]
    for segment in sorted(set(segments.tolist()) - {0}):
      where = np.flatnonzero(segments == segment)
      alone = apply({"params": params}, jnp.asarray(batch["inputs"][row][where])[None])
      np.testing.assert_allclose(logits[row, where], alone[0], atol=1e-5)
      checked += 1
  assert checked >= 3


@pytest.mark.parametrize("sequences,match", [
    ([[1]], r"sequence 0 must be a 1-D run of at least 2 token ids"),
    ([[1, 2], list(range(1, 40))], r"sequence 1 has 39 tokens \(38 input positions\) but rows "
                                   r"hold length=16"),
])
def test_bad_sequences_are_named(sequences, match):
  with pytest.raises(ValueError, match=match):
    next(packing.packed_lm_batches(sequences, length=16, batch_size=2))
