"""TransformerBlock: post-/pre-norm structure, causality, padding, dropout, decoding."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from attention_jax import layers

B, T, F = 2, 6, 16


def _x(seed=0, shape=(B, T, F)):
  return jnp.asarray(np.random.default_rng(seed).normal(size=shape), jnp.float32)


def _block(**kwargs):
  return layers.TransformerBlock(**{"num_heads": 4, "mlp_dim": 32, **kwargs})


@pytest.mark.parametrize("pre_norm", [False, True])
def test_shapes_params_and_where_the_norm_is(pre_norm):
  x = 3.0 + 2.0 * _x()
  block = _block(pre_norm=pre_norm)
  variables = block.init(jax.random.key(0), x)
  assert set(variables["params"]) == {"attention", "attention_norm", "mlp", "mlp_norm"}
  assert variables["params"]["mlp"]["hidden"]["kernel"].shape == (F, 32)
  out = block.apply(variables, x)
  assert out.shape == x.shape and out.dtype == jnp.float32
  mean, std = np.asarray(out.mean(-1)), np.asarray(out.std(-1))
  if pre_norm:  # the residual stream is not normalised
    assert np.abs(mean - 3.0).max() < 1.5
  else:  # the last op is a LayerNorm with unit scale and zero bias at init
    np.testing.assert_allclose(mean, 0.0, atol=1e-5)
    np.testing.assert_allclose(std, 1.0, atol=1e-3)


def test_post_norm_equals_the_lecture_composition():
  x = _x(1)
  block = _block()
  variables = block.init(jax.random.key(1), x)
  p = variables["params"]
  attention = layers.SelfAttention(num_heads=4)
  mlp = layers.MlpBlock(32)
  norm = lambda name, y: jax.nn.standardize(y, axis=-1, epsilon=1e-6) * p[name]["scale"] + p[
      name]["bias"]
  y = norm("attention_norm", x + attention.apply({"params": p["attention"]}, x))
  expected = norm("mlp_norm", y + mlp.apply({"params": p["mlp"]}, y))
  np.testing.assert_allclose(block.apply(variables, x), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("pre_norm", [False, True])
def test_causal_block_does_not_look_ahead(pre_norm):
  x = _x(2, (1, T, F))
  causal = _block(is_causal=True, pre_norm=pre_norm, num_kv_heads=2)
  variables = causal.init(jax.random.key(2), x)
  jacobian = jax.jacobian(lambda x: causal.apply(variables, x))(x)[0, :, :, 0, :, :]
  influence = np.abs(np.asarray(jacobian)).sum(axis=(1, 3))  # [out t, in s]
  assert np.all(influence[np.triu_indices(T, 1)] == 0.0)
  assert np.all(influence[np.tril_indices(T)] > 0.0)
  bidirectional = causal.clone(is_causal=False)
  jacobian = jax.jacobian(lambda x: bidirectional.apply(variables, x))(x)[0, :, :, 0, :, :]
  assert np.all(np.abs(np.asarray(jacobian)).sum(axis=(1, 3)) > 0.0)


def test_padding_is_not_attended_and_weights_are_sown():
  x = _x(3)
  block = _block()
  variables = block.init(jax.random.key(3), x)
  lengths = jnp.array([6, 4])
  out, state = block.apply(variables, x, key_value_seq_lengths=lengths, sow_weights=True,
                           mutable=["intermediates"])
  (weights,) = state["intermediates"]["attention"]["attention_weights"]
  assert weights.shape == (B, 4, T, T)
  np.testing.assert_allclose(weights.sum(-1), 1.0, rtol=1e-5)
  np.testing.assert_array_equal(weights[1, ..., 4:], 0.0)
  changed = x.at[1, 4:].set(50.0)
  np.testing.assert_allclose(block.apply(variables, changed, key_value_seq_lengths=lengths)[1, :4],
                             out[1, :4], rtol=1e-5, atol=1e-5)
  mask = jnp.arange(T) < lengths[:, None, None, None]
  np.testing.assert_allclose(block.apply(variables, x, mask=mask), out, rtol=1e-5, atol=1e-5)


def test_dropout_only_when_not_deterministic():
  x = _x(4)
  block = _block(dropout_rate=0.3, attention_dropout_rate=0.2)
  variables = block.init(jax.random.key(4), x)
  eval_out = block.apply(variables, x)
  np.testing.assert_allclose(eval_out, block.clone(dropout_rate=0.0).apply(variables, x))
  train = lambda seed: block.apply(variables, x, deterministic=False,
                                   rngs={"dropout": jax.random.key(seed)})
  assert not np.allclose(train(0), eval_out)
  assert not np.allclose(train(0), train(1))


def test_decoding_block_matches_full_pass():
  x = _x(5)
  block = _block(is_causal=True, pre_norm=True, rotary=True, num_kv_heads=1)
  decoder = block.clone(decode=True)
  variables = decoder.init(jax.random.key(5), x)
  expected = block.apply({"params": variables["params"]}, x)
  step = jax.jit(lambda cache, chunk: decoder.apply(
      {"params": variables["params"], "cache": cache}, chunk, mutable=["cache"]))
  cache, outputs = variables["cache"], []
  for start, stop in [(0, 3), (3, 4), (4, 6)]:
    out, state = step(cache, x[:, start:stop])
    cache = state["cache"]
    outputs.append(out)
  np.testing.assert_allclose(jnp.concatenate(outputs, 1), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("pre_norm", [False, True])
def test_bf16_jit_and_errors(pre_norm):
  x = _x(6)
  block = _block(pre_norm=pre_norm, dtype=jnp.bfloat16)
  variables = block.init(jax.random.key(6), x)
  out = jax.jit(lambda v, x: block.apply(v, x))(variables, x)
  assert out.dtype == jnp.bfloat16 and out.shape == x.shape
  assert np.all(np.isfinite(np.asarray(out, np.float32)))
  reference = block.clone(dtype=None).apply(variables, x)
  np.testing.assert_allclose(np.asarray(out, np.float32), reference, atol=0.15)
  with pytest.raises(ValueError, match=r"x must be \[batch..., length, features\]"):
    block.apply(variables, x[0, 0])
  with pytest.raises(ValueError, match="mask of shape"):
    block.apply(variables, x, mask=jnp.ones((T, T + 1), bool))
