"""Incremental decoding with MultiHeadAttention(decode=True): prompt, single tokens, chunks."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from attention_jax import layers

B, T, F, HEADS = 2, 9, 16, 4
# A prompt of 4 in one call, then two single tokens, then a chunk of 3: fills T = 9 exactly.
CHUNKS = [(0, 4), (4, 5), (5, 6), (6, 9)]


def _sequence(seed=0, batch=(B,)):
  rng = np.random.default_rng(seed)
  return jnp.asarray(rng.normal(size=(*batch, T, F)), jnp.float32)


def _decode(module, params, cache, x, chunks=CHUNKS, step=None, **kwargs):
  """Feeds ``x[..., start:stop, :]`` chunk by chunk; returns the outputs joined and the cache."""
  if step is None:
    step = lambda cache, chunk: module.apply(
        {"params": params, "cache": cache}, chunk, mutable=["cache"], **kwargs)
  outputs = []
  for start, stop in chunks:
    out, state = step(cache, x[..., start:stop, :])
    cache = state["cache"]
    outputs.append(out)
  return jnp.concatenate(outputs, axis=-2), cache


@pytest.mark.parametrize("num_kv_heads,rotary", [(None, False), (2, False), (1, True),
                                                 (None, True)])
def test_chunked_decoding_equals_full_causal_pass(num_kv_heads, rotary):
  full = layers.MultiHeadAttention(num_heads=HEADS, num_kv_heads=num_kv_heads, is_causal=True,
                                   rotary=rotary)
  decoder = full.clone(decode=True)
  x = _sequence()
  variables = decoder.init(jax.random.key(0), x)  # sizes the cache to T
  cache = variables["cache"]
  kv_heads = num_kv_heads or HEADS
  assert cache["cached_key"].shape == (B, T, kv_heads, F // HEADS)
  assert cache["cached_value"].shape == (B, T, kv_heads, F // HEADS)
  assert cache["cache_index"].dtype == jnp.int32 and int(cache["cache_index"]) == 0
  params = variables["params"]
  expected = full.apply({"params": params}, x)
  out, cache = _decode(decoder, params, cache, x)
  np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)
  assert int(cache["cache_index"]) == T


def test_jitted_decoding_with_key_lengths_and_two_batch_axes():
  full = layers.MultiHeadAttention(num_heads=HEADS, num_kv_heads=2, is_causal=True, rotary=True)
  decoder = full.clone(decode=True)
  x = _sequence(1, batch=(2, 3))
  variables = decoder.init(jax.random.key(1), x)
  params = variables["params"]
  lengths = jnp.array([[9, 6, 2], [5, 9, 1]])
  expected = full.apply({"params": params}, x, key_value_seq_lengths=lengths)

  @jax.jit
  def step(cache, chunk):
    return decoder.apply({"params": params, "cache": cache}, chunk, key_value_seq_lengths=lengths,
                         mutable=["cache"])

  out, cache = _decode(decoder, params, variables["cache"], x, step=step)
  np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)
  assert int(cache["cache_index"]) == T


def test_decoding_with_a_user_mask_and_sown_weights():
  full = layers.MultiHeadAttention(num_heads=HEADS, is_causal=True)
  decoder = full.clone(decode=True)
  x = _sequence(2)
  variables = decoder.init(jax.random.key(2), x)
  params = variables["params"]
  banned = jnp.arange(T) != 2  # nobody may attend to position 2
  expected = full.apply({"params": params}, x, mask=banned)
  out, cache = _decode(decoder, params, variables["cache"], x, mask=banned)
  np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)
  # Weights of a 3-token chunk starting at position 6 over the whole cache of T positions.
  cache = dict(cache, cache_index=jnp.array(6, jnp.int32))
  _, state = decoder.apply({"params": params, "cache": cache}, x[:, 6:], mask=banned,
                           sow_weights=True, mutable=["cache", "intermediates"])
  (weights,) = state["intermediates"]["attention_weights"]
  assert weights.shape == (B, HEADS, 3, T)
  np.testing.assert_allclose(weights.sum(-1), 1.0, rtol=1e-5)
  np.testing.assert_array_equal(weights[..., 2], 0.0)
  for i in range(3):  # causal inside the chunk: query 6 + i sees keys <= 6 + i only
    np.testing.assert_array_equal(weights[..., i, 7 + i:], 0.0)
    assert np.all(np.asarray(weights[..., i, 6 + i]) > 0)


def test_cross_attention_in_decode_mode_needs_no_cache():
  cross = layers.MultiHeadAttention(num_heads=HEADS, decode=True)
  x, memory = _sequence(3), _sequence(4)[:, :5]
  variables = cross.init(jax.random.key(3), x, memory)
  assert "cache" not in variables
  out = cross.apply(variables, x[:, :1], memory)
  np.testing.assert_allclose(out, cross.clone(decode=False).apply(variables, x, memory)[:, :1],
                             rtol=1e-5, atol=1e-6)


def test_overflowing_the_cache():
  decoder = layers.MultiHeadAttention(num_heads=HEADS, is_causal=True, decode=True)
  x = _sequence(5)
  variables = decoder.init(jax.random.key(4), x[:, :4])  # max_len = 4
  params, cache = variables["params"], variables["cache"]
  apply = lambda cache, chunk: decoder.apply({"params": params, "cache": cache}, chunk,
                                             mutable=["cache"])
  with pytest.raises(ValueError, match="a chunk of 5 positions does not fit .* max_len=4"):
    apply(cache, x[:, :5])
  _, state = apply(cache, x[:, :3])
  with pytest.raises(ValueError, match="cache_index=3 \\+ 2 new positions overflows .* "
                                       "max_len=4"):
    apply(state["cache"], x[:, 3:5])
  with pytest.raises(ValueError, match="batch axes"):
    apply(state["cache"], x[:1, 3:4])
  with pytest.raises(ValueError, match="mask of shape"):
    decoder.apply({"params": params, "cache": cache}, x[:, :2], mask=jnp.ones((2, 2), bool),
                  mutable=["cache"])
  # Under jit the index is traced: the overflowing chunk and every later one come out NaN.
  jitted = jax.jit(apply)
  out, state = jitted(cache, x[:, :3])
  assert np.all(np.isfinite(out))
  out, state = jitted(state["cache"], x[:, 3:5])
  assert np.all(np.isnan(out))
  out, _ = jax.jit(apply)(state["cache"], x[:, 5:6])
  assert np.all(np.isnan(out))
