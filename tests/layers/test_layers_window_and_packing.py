"""The layers' attention options: a pluggable attention_fn (jax.nn's drops in), sliding windows
with a rolling KV cache, packed sequences with per-segment positions."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from attention_jax import layers


def _x(length=30, batch=2, features=32, seed=0):
  return jax.random.normal(jax.random.key(seed), (batch, length, features))


@pytest.mark.parametrize("is_causal", [False, True])
def test_jax_nn_attention_fn_drops_in(is_causal):
  x = _x()
  ours = layers.MultiHeadAttention(num_heads=4, num_kv_heads=2, is_causal=is_causal)
  theirs = ours.clone(attention_fn=jax.nn.dot_product_attention)
  params = ours.init(jax.random.key(1), x)["params"]
  np.testing.assert_allclose(theirs.apply({"params": params}, x),
                             ours.apply({"params": params}, x), atol=1e-5)
  lengths = jnp.array([30, 11])
  np.testing.assert_allclose(
      theirs.apply({"params": params}, x, key_value_seq_lengths=lengths),
      ours.apply({"params": params}, x, key_value_seq_lengths=lengths), atol=1e-5)


def test_attention_fn_receives_only_the_keywords_a_call_uses():
  seen = []

  def spy(query, key, value, bias=None, mask=None, **keywords):
    seen.append(sorted(keywords))
    return jax.nn.dot_product_attention(query, key, value, bias, mask, **keywords)

  x = _x()
  layer = layers.MultiHeadAttention(num_heads=2, attention_fn=spy)
  params = layer.init(jax.random.key(0), x)["params"]
  layer.clone(is_causal=True, local_window_size=(4, 0)).apply({"params": params}, x)
  assert seen[-1] == ["is_causal", "local_window_size"]
  assert seen[0] == []  # init: a plain call passes no keyword at all


def test_flax_masks_and_inputs_k_v_are_accepted():
  x = _x()
  mask = nn.make_causal_mask(jnp.ones(x.shape[:2]))  # float 0/1, [batch, 1, L, L]
  ours = layers.MultiHeadAttention(num_heads=4)
  params = ours.init(jax.random.key(1), x, mask=mask)["params"]
  causal = ours.clone(is_causal=True).apply({"params": params}, x)
  np.testing.assert_allclose(ours.apply({"params": params}, x, mask=mask), causal, atol=1e-6)
  flax_layer = nn.MultiHeadDotProductAttention(num_heads=4)
  np.testing.assert_allclose(flax_layer.apply({"params": params}, x, x, x, mask=mask),
                             ours.apply({"params": params}, x, x, x, mask=mask), atol=1e-5)


@pytest.mark.parametrize("window", [(5, 0), pytest.param(5, marks=pytest.mark.slow), (1, 0),
                                    pytest.param((0, 0), marks=pytest.mark.slow)])
def test_rolling_cache_decoding_equals_the_full_pass(window):
  x = _x()
  full = layers.MultiHeadAttention(num_heads=4, num_kv_heads=2, is_causal=True, rotary=True,
                                   local_window_size=window)
  params = full.init(jax.random.key(1), x)["params"]
  want = full.apply({"params": params}, x)
  decoder = full.clone(decode=True)
  cache = decoder.init(jax.random.key(1), x[:, :1])["cache"]
  left = window if isinstance(window, int) else window[0]
  assert cache["cached_key"].shape == (2, max(left, 1), 2, 8)  # the ring, not the sequence
  outs = []
  step = jax.jit(lambda variables, x: decoder.apply(variables, x, mutable=["cache"]))
  for start, stop in ((0, 7), (7, 8), (8, 20), (20, 21), (21, 30)):  # chunks longer than the ring
    y, variables = step({"params": params, "cache": cache}, x[:, start:stop])
    cache = variables["cache"]
    outs.append(y)
  np.testing.assert_allclose(jnp.concatenate(outs, axis=1), want, atol=1e-5)
  assert int(cache["cache_index"]) == 30


def test_rolling_cache_memory_stays_the_window_however_long_the_generation():
  layer = layers.MultiHeadAttention(num_heads=2, is_causal=True, rotary=True,
                                    local_window_size=(8, 0), decode=True)
  x = _x(length=1, batch=1, features=16)
  variables = layer.init(jax.random.key(0), x)
  params, cache = variables["params"], variables["cache"]
  step = jax.jit(functools.partial(layer.apply, mutable=["cache"]))
  for t in range(200):  # far past any "max_len": the ring has no end
    _, updated = step({"params": params, "cache": cache}, _x(1, 1, 16, seed=t))
    cache = updated["cache"]
  assert cache["cached_key"].shape == (1, 8, 2, 8)
  assert int(cache["cache_index"]) == 200


def test_rolling_cache_refuses_a_mask():
  layer = layers.MultiHeadAttention(num_heads=2, is_causal=True, local_window_size=(4, 0),
                                    decode=True)
  x = _x(length=6)
  variables = layer.init(jax.random.key(0), x)
  with pytest.raises(ValueError, match="rolling cache"):
    layer.apply(variables, x[:, :2], mask=jnp.ones((2, 12), bool), mutable=["cache"])


def test_packed_segments_with_restarting_positions_equal_separate_sequences():
  x = _x(length=24, batch=1)
  layer = layers.MultiHeadAttention(num_heads=4, is_causal=True, rotary=True)
  params = layer.init(jax.random.key(2), x)["params"]
  segments = jnp.array([[0] * 10 + [1] * 14])
  positions = jnp.array([list(range(10)) + list(range(14))])
  packed = layer.apply({"params": params}, x, query_segment_ids=segments, positions=positions)
  np.testing.assert_allclose(packed[:, :10], layer.apply({"params": params}, x[:, :10]),
                             atol=1e-5)
  np.testing.assert_allclose(packed[:, 10:], layer.apply({"params": params}, x[:, 10:]),
                             atol=1e-5)
