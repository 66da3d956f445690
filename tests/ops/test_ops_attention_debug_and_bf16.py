"""Attention under ``jax.debug_infs`` and the flash path's bias gradient in bfloat16."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from attention_jax import ops

B, L, H, D = 2, 24, 4, 16


def _qkv(dtype=jnp.float32, seed=0):
  keys = jax.random.split(jax.random.key(seed), 3)
  return [jax.random.normal(k, (B, L, H, D), jnp.float32).astype(dtype) for k in keys]


MASKINGS = {
    "causal": dict(is_causal=True),
    "mask": dict(mask=jnp.tril(jnp.ones((L, L), bool))),
    "lengths": dict(query_seq_lengths=jnp.array([L, 5]), key_value_seq_lengths=jnp.array([L, 0])),
}


@pytest.mark.parametrize("implementation", ["reference", "flash"])
@pytest.mark.parametrize("masking", sorted(MASKINGS))
@pytest.mark.parametrize("jitted", [False, True])
def test_no_floating_point_error_under_debug_infs(implementation, masking, jitted):
  q, k, v = _qkv()
  kwargs = dict(MASKINGS[masking], implementation=implementation, block_sizes=(8, 8))

  def loss(q, k, v):
    return jnp.sum(ops.dot_product_attention(q, k, v, **kwargs) ** 2)

  fn = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2))) if jitted else \
      jax.value_and_grad(loss, argnums=(0, 1, 2))
  expected = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)))(q, k, v)
  with jax.debug_infs(True):
    got = fn(q, k, v)
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(expected)):
    assert np.all(np.isfinite(a))
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_weights_and_masked_softmax_under_debug_infs():
  logits = jax.random.normal(jax.random.key(1), (3, 5))
  mask = jnp.array([[True] * 5, [True, False, True, False, False], [False] * 5])
  with jax.debug_infs(True):
    weights = ops.masked_softmax(logits, mask)
  np.testing.assert_allclose(weights.sum(-1), [1.0, 1.0, 0.0], atol=1e-6)
  assert float(weights[1, 1]) == 0.0


@pytest.mark.parametrize("bias_shape", [(H, 1, 1), (B, 1, 1, 1), (1, H, L, 1)])
def test_flash_bias_gradient_in_bfloat16_matches_jax_nn(bias_shape):
  q, k, v = _qkv(jnp.bfloat16, seed=2)
  bias = jax.random.normal(jax.random.key(3), bias_shape).astype(jnp.bfloat16)

  def loss(fn, bias):
    return jnp.sum(fn(bias).astype(jnp.float32) * jnp.linspace(-1, 1, D))

  ours = jax.jit(jax.grad(lambda b: loss(lambda b: ops.dot_product_attention(
      q, k, v, b, implementation="flash", block_sizes=(8, 8)), b)))(bias)
  theirs = jax.jit(jax.grad(lambda b: loss(lambda b: jax.nn.dot_product_attention(
      q, k, v, b, implementation="xla"), b)))(bias)
  # A bias constant along the keys shifts every logit of a row equally: softmax ignores it, so
  # its exact gradient is zero; jax.nn's is zero to rounding (~1e-6). Ours was 0.1 when the
  # backward took rowsum(dO * O) from the bfloat16-rounded output.
  np.testing.assert_allclose(np.asarray(theirs, np.float32), 0.0, atol=1e-5)
  np.testing.assert_allclose(np.asarray(ours, np.float32), np.asarray(theirs, np.float32),
                             atol=1e-5)
