"""MultiHeadAttention against flax.linen.MultiHeadDotProductAttention, GQA, dropout and errors."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from attention_jax import layers

B, TQ, TKV, F = 2, 5, 7, 16


def _inputs(seed=0, q_len=TQ, kv_len=TKV, kv_features=F):
  rng = np.random.default_rng(seed)
  q = jnp.asarray(rng.normal(size=(B, q_len, F)), jnp.float32)
  kv = jnp.asarray(rng.normal(size=(B, kv_len, kv_features)), jnp.float32)
  return q, kv


def _random_mask(seed, q_len, kv_len):
  """[B, 1, q_len, kv_len] with at least one True per row (Flax and we differ on empty rows)."""
  mask = np.random.default_rng(seed).random((B, 1, q_len, kv_len)) < 0.6
  mask[..., 0] = True
  return jnp.asarray(mask)


def _shapes(tree):
  return jax.tree.map(jnp.shape, tree)


@pytest.mark.parametrize("cross", [False, True])
@pytest.mark.parametrize("masked", [False, True])
def test_matches_flax_with_flax_params(cross, masked):
  q, kv = _inputs(kv_features=12 if cross else F)
  kv_len = TKV if cross else TQ
  mask = _random_mask(1, TQ, kv_len) if masked else None
  kv_arg = kv if cross else None
  flax_mha = nn.MultiHeadDotProductAttention(num_heads=4, qkv_features=24, out_features=10)
  ours = layers.MultiHeadAttention(num_heads=4, qkv_features=24, out_features=10)
  flax_vars = flax_mha.init(jax.random.key(0), q, kv_arg)
  our_vars = ours.init(jax.random.key(0), q, kv_arg)
  assert _shapes(flax_vars) == _shapes(our_vars)
  expected = flax_mha.apply(flax_vars, q, kv_arg, mask=mask)
  np.testing.assert_allclose(ours.apply(flax_vars, q, kv_arg, mask=mask), expected,
                             rtol=1e-5, atol=1e-5)
  # ... and the other way round: our tree drives Flax's module.
  np.testing.assert_allclose(flax_mha.apply(our_vars, q, kv_arg, mask=mask),
                             ours.apply(our_vars, q, kv_arg, mask=mask), rtol=1e-5, atol=1e-5)


def test_flax_calls_and_float_masks_give_flax_results():
  q, k_in = _inputs(kv_features=12)
  _, v_in = _inputs(seed=1, kv_features=9)
  flax_mha = nn.MultiHeadDotProductAttention(num_heads=4, qkv_features=24, out_features=10)
  ours = layers.MultiHeadAttention(num_heads=4, qkv_features=24, out_features=10)
  variables = flax_mha.init(jax.random.key(0), q, k_in, v_in)
  assert _shapes(variables) == _shapes(ours.init(jax.random.key(0), q, k_in, v_in))
  # flax's own masks are float 0/1 (nonzero = attend): padding of the keys, and causal.
  padding = nn.make_attention_mask(jnp.ones((B, TQ)), jnp.arange(TKV) < jnp.array([[7], [4]]))
  assert padding.dtype != jnp.bool_
  expected = flax_mha.apply(variables, q, k_in, v_in, mask=padding)
  for call in (lambda: ours.apply(variables, q, k_in, v_in, mask=padding),
               lambda: ours.apply(variables, q, inputs_k=k_in, inputs_v=v_in, mask=padding),
               lambda: ours.apply(variables, q, k_in, v_in, mask=padding.astype(bool))):
    np.testing.assert_allclose(call(), expected, rtol=1e-5, atol=1e-5)
  self_mha = layers.MultiHeadAttention(num_heads=4)
  self_vars = self_mha.init(jax.random.key(1), q, mask=nn.make_causal_mask(jnp.ones((B, TQ))))
  np.testing.assert_allclose(
      self_mha.apply(self_vars, q, mask=nn.make_causal_mask(jnp.ones((B, TQ)))),
      layers.MultiHeadAttention(num_heads=4, is_causal=True).apply(self_vars, q),
      rtol=1e-6, atol=1e-6)
  # inputs_k given as inputs_q itself is self-attention (flax's spelling of it).
  np.testing.assert_allclose(self_mha.apply(self_vars, q, q), self_mha.apply(self_vars, q))


def test_matches_flax_without_bias_and_causal():
  q, _ = _inputs()
  flax_mha = nn.MultiHeadDotProductAttention(num_heads=2, use_bias=False)
  ours = layers.MultiHeadAttention(num_heads=2, use_bias=False, is_causal=True)
  variables = flax_mha.init(jax.random.key(3), q)
  assert _shapes(variables) == _shapes(ours.init(jax.random.key(3), q))
  expected = flax_mha.apply(variables, q, mask=nn.make_causal_mask(jnp.ones((B, TQ))))
  np.testing.assert_allclose(ours.apply(variables, q), expected, rtol=1e-5, atol=1e-5)


def test_grouped_query_attention_equals_repeated_kv_heads():
  heads, kv_heads, head_dim = 6, 2, 4
  group = heads // kv_heads
  q, kv = _inputs(2)
  gqa = layers.MultiHeadAttention(num_heads=heads, num_kv_heads=kv_heads, qkv_features=24)
  params = gqa.init(jax.random.key(1), q, kv)["params"]
  assert params["key"]["kernel"].shape == (F, kv_heads, head_dim)
  assert params["value"]["bias"].shape == (kv_heads, head_dim)
  params = jax.tree.map(lambda p: p + 0.1, params)  # nonzero biases
  # Query head h reads kv head h // group: repeat each kv head `group` times, in place.
  repeated = dict(params)
  for name in ("key", "value"):
    repeated[name] = {
        "kernel": jnp.repeat(params[name]["kernel"], group, axis=1),
        "bias": jnp.repeat(params[name]["bias"], group, axis=0),
    }
  plain = layers.MultiHeadAttention(num_heads=heads, qkv_features=24)
  assert _shapes(repeated) == _shapes(plain.init(jax.random.key(1), q, kv)["params"])
  mask = _random_mask(4, TQ, TKV)
  np.testing.assert_allclose(gqa.apply({"params": params}, q, kv, mask=mask),
                             plain.apply({"params": repeated}, q, kv, mask=mask),
                             rtol=1e-5, atol=1e-5)


def test_multi_query_attention_and_lengths():
  q, kv = _inputs(3)
  mqa = layers.MultiHeadAttention(num_heads=4, num_kv_heads=1)
  variables = mqa.init(jax.random.key(0), q, kv)
  lengths = jnp.array([7, 3])
  out, state = mqa.apply(variables, q, kv, key_value_seq_lengths=lengths, sow_weights=True,
                         mutable=["intermediates"])
  (weights,) = state["intermediates"]["attention_weights"]
  assert out.shape == (B, TQ, F) and weights.shape == (B, 4, TQ, TKV)
  np.testing.assert_allclose(weights.sum(-1), 1.0, rtol=1e-5)
  np.testing.assert_array_equal(weights[1, ..., 3:], 0.0)
  # Keys beyond the length change nothing.
  kv_changed = kv.at[1, 3:].set(100.0)
  np.testing.assert_allclose(mqa.apply(variables, q, kv_changed, key_value_seq_lengths=lengths)[1],
                             out[1], rtol=1e-5, atol=1e-5)


def test_default_call_sows_nothing_and_sown_weights_are_flaxs():
  q, _ = _inputs(5)
  ours = layers.MultiHeadAttention(num_heads=2, is_causal=True)
  variables = ours.init(jax.random.key(0), q)
  _, state = ours.apply(variables, q, mutable=["intermediates"])
  assert not state.get("intermediates")
  _, state = ours.apply(variables, q, sow_weights=True, mutable=["intermediates"])
  (weights,) = state["intermediates"]["attention_weights"]
  flax_mha = nn.MultiHeadDotProductAttention(num_heads=2)
  _, flax_state = flax_mha.apply(variables, q, mask=nn.make_causal_mask(jnp.ones((B, TQ))),
                                 sow_weights=True, mutable=["intermediates"])
  (expected,) = flax_state["intermediates"]["attention_weights"]
  np.testing.assert_allclose(weights, expected, rtol=1e-5, atol=1e-6)
  assert np.all(np.asarray(weights)[..., np.triu_indices(TQ, 1)[0], np.triu_indices(TQ, 1)[1]]
                == 0)


def test_dropout_needs_rng_and_deterministic():
  q, _ = _inputs(6)
  mha = layers.MultiHeadAttention(num_heads=2, dropout_rate=0.5)
  variables = mha.init(jax.random.key(0), q, deterministic=True)
  with pytest.raises(ValueError, match="needs `deterministic`"):
    mha.apply(variables, q)
  eval_out = mha.apply(variables, q, deterministic=True)
  np.testing.assert_allclose(eval_out, mha.clone(dropout_rate=0.0).apply(variables, q))
  train = lambda seed: mha.apply(variables, q, deterministic=False,
                                 rngs={"dropout": jax.random.key(seed)})
  assert not np.allclose(train(1), eval_out)
  np.testing.assert_array_equal(train(1), train(1))
  assert not np.allclose(train(1), train(2))
  # The field is the default of the call argument.
  np.testing.assert_array_equal(
      mha.clone(deterministic=True).apply(variables, q), eval_out)


def test_rotary_breaks_permutation_equivariance():
  """Plain self-attention commutes with permuting the positions; with RoPE it must not."""
  q, _ = _inputs(7)
  plain = layers.MultiHeadAttention(num_heads=2)
  variables = plain.init(jax.random.key(0), q)
  rotary = plain.clone(rotary=True)
  perm = np.array([4, 2, 0, 1, 3])
  np.testing.assert_allclose(plain.apply(variables, q[:, perm]),
                             plain.apply(variables, q)[:, perm], rtol=1e-5, atol=1e-5)
  assert not np.allclose(rotary.apply(variables, q[:, perm]),
                         rotary.apply(variables, q)[:, perm], atol=1e-3)


def test_self_attention_is_mha_on_one_sequence():
  q, _ = _inputs(8)
  sa = layers.SelfAttention()
  variables = sa.init(jax.random.key(0), q)
  assert variables["params"]["query"]["kernel"].shape == (F, 1, F)
  mha = layers.MultiHeadAttention(num_heads=1, is_causal=True)
  np.testing.assert_allclose(sa.clone(is_causal=True).apply(variables, q),
                             mha.apply(variables, q), rtol=1e-6)


def test_jit_bf16_multiple_batch_axes():
  rng = np.random.default_rng(9)
  q = jnp.asarray(rng.normal(size=(2, 3, TQ, F)), jnp.float32)
  kv = jnp.asarray(rng.normal(size=(2, 3, TKV, F)), jnp.float32)
  mha = layers.MultiHeadAttention(num_heads=4, num_kv_heads=2, dtype=jnp.bfloat16)
  variables = mha.init(jax.random.key(0), q, kv)
  out = jax.jit(lambda v, a, b: mha.apply(v, a, b))(variables, q, kv)
  assert out.shape == (2, 3, TQ, F) and out.dtype == jnp.bfloat16
  assert np.all(np.isfinite(np.asarray(out, np.float32)))
  reference = mha.clone(dtype=jnp.float32).apply(variables, q, kv)
  np.testing.assert_allclose(np.asarray(out, np.float32), reference, atol=0.1)


def test_errors_name_arguments_and_shapes():
  q, kv = _inputs()
  mha = layers.MultiHeadAttention(num_heads=4)
  variables = mha.init(jax.random.key(0), q, kv)
  with pytest.raises(ValueError, match=r"inputs_q must be \[batch..., q_len, features\]"):
    mha.apply(variables, q[0, 0])
  with pytest.raises(ValueError, match="inputs_k has shape .* same batch axes"):
    mha.apply(variables, q, kv[:1])
  with pytest.raises(ValueError, match="inputs_kv has shape"):
    mha.apply(variables, q, inputs_kv=kv[0])
  with pytest.raises(ValueError, match="inputs_v has 6 positions but inputs_k has 7"):
    mha.apply(variables, q, kv, kv[:, :6])
  with pytest.raises(ValueError, match="inputs_kv or inputs_k/inputs_v, not both"):
    mha.apply(variables, q, kv, inputs_kv=kv)
  with pytest.raises(ValueError, match="mask of shape"):
    mha.apply(variables, q, kv, mask=jnp.ones((TQ, TQ), bool))
  with pytest.raises(ValueError, match="key_value_seq_lengths has shape"):
    mha.apply(variables, q, kv, key_value_seq_lengths=jnp.array([1, 2, 3]))
  with pytest.raises(ValueError, match="qkv_features=16 must be divisible by num_heads=3"):
    layers.MultiHeadAttention(num_heads=3).init(jax.random.key(0), q)
  with pytest.raises(ValueError, match="num_heads=4 must be a multiple of num_kv_heads=3"):
    layers.MultiHeadAttention(num_heads=4, num_kv_heads=3).init(jax.random.key(0), q)
  with pytest.raises(ValueError, match="rotary=True is for self-attention"):
    layers.MultiHeadAttention(num_heads=4, rotary=True).init(jax.random.key(0), q, kv)
  with pytest.raises(ValueError, match="implementation must be one of"):
    layers.MultiHeadAttention(num_heads=4, implementation="nope").apply(variables, q, kv)
