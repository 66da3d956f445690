"""SelfAttention2D (SAGAN): identity at init, gradient into gamma, weights, shapes."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from attention_jax import layers


def _image(shape=(2, 4, 5, 16), seed=0):
  return jnp.asarray(np.random.default_rng(seed).normal(size=shape), jnp.float32)


def test_identity_at_init_and_gamma_gets_a_gradient():
  x = _image()
  layer = layers.SelfAttention2D()
  variables = layer.init(jax.random.key(0), x)
  params = variables["params"]
  assert jax.tree.map(np.shape, params) == {
      "query": {"kernel": (1, 1, 16, 2), "bias": (2,)},
      "key": {"kernel": (1, 1, 16, 2), "bias": (2,)},
      "value": {"kernel": (1, 1, 16, 16), "bias": (16,)},
      "out": {"kernel": (1, 1, 16, 16), "bias": (16,)},
      "gamma": (),
  }
  assert float(params["gamma"]) == 0.0
  np.testing.assert_array_equal(layer.apply(variables, x), x)
  target = _image(seed=1)
  loss = lambda p: jnp.sum((layer.apply({"params": p}, x) - target) ** 2)
  grads = jax.grad(loss)(params)
  assert abs(float(grads["gamma"])) > 1e-3
  # gamma = 0 blocks the gradient into everything before it.
  np.testing.assert_array_equal(grads["query"]["kernel"], 0.0)


def test_matches_single_head_attention_over_positions():
  x = _image((1, 3, 3, 8), seed=2)
  layer = layers.SelfAttention2D(qk_features=4, value_features=6, use_bias=False)
  params = layer.init(jax.random.key(1), x)["params"]
  params = dict(params, gamma=jnp.array(0.7))
  out, state = layer.apply({"params": params}, x, sow_weights=True, mutable=["intermediates"])
  (weights,) = state["intermediates"]["attention_weights"]
  pixels = x.reshape(1, 9, 8)
  kernel = lambda name: params[name]["kernel"][0, 0]
  q, k, v = (pixels @ kernel(name) for name in ("query", "key", "value"))
  expected_weights = jax.nn.softmax(q @ k.swapaxes(-1, -2) / 2.0, axis=-1)
  assert weights.shape == (1, 9, 9)
  np.testing.assert_allclose(weights, expected_weights, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(weights.sum(-1), 1.0, rtol=1e-5)
  o = (expected_weights @ v) @ kernel("out")
  np.testing.assert_allclose(out, x + 0.7 * o.reshape(x.shape), rtol=1e-5, atol=1e-5)


def test_bf16_jit_extra_batch_axes_and_errors():
  x = _image((2, 3, 4, 4, 8), seed=3)
  layer = layers.SelfAttention2D(dtype=jnp.bfloat16)
  params = layer.init(jax.random.key(2), x)["params"]
  assert params["query"]["kernel"].shape == (1, 1, 8, 1)  # max(C // 8, 1)
  params = dict(params, gamma=jnp.array(0.5))
  out = jax.jit(lambda p: layer.apply({"params": p}, x))(params)
  assert out.shape == x.shape and out.dtype == jnp.bfloat16
  assert np.all(np.isfinite(np.asarray(out, np.float32)))
  reference = layer.clone(dtype=None).apply({"params": params}, x)
  np.testing.assert_allclose(np.asarray(out, np.float32), reference, atol=0.1)
  with pytest.raises(ValueError, match=r"x must be \[batch..., H, W, C\] \(rank >= 4\), got "
                                       r"shape \(4, 4, 8\)"):
    layer.apply({"params": params}, x[0, 0])
