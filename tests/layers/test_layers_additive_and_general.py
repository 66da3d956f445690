"""AdditiveAttention (Bahdanau) and AttentionLayer (the lecture's general layer) against NumPy."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from attention_jax import layers

B, N, DQ, DK, DV, DA = 3, 6, 5, 7, 4, 8


def _additive_inputs(seed=0):
  rng = np.random.default_rng(seed)
  query = jnp.asarray(rng.normal(size=(B, DQ)), jnp.float32)
  keys = jnp.asarray(rng.normal(size=(B, N, DK)), jnp.float32)
  values = jnp.asarray(rng.normal(size=(B, N, DV)), jnp.float32)
  mask = jnp.asarray(np.arange(N)[None, :] < np.array([[6], [3], [1]]))
  return query, keys, values, mask


def _softmax(x, mask=None):
  x = np.where(mask, x, -np.inf) if mask is not None else x
  e = np.exp(x - x.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def test_additive_params_and_numpy_equations():
  query, keys, values, mask = _additive_inputs()
  attention = layers.AdditiveAttention(DA)
  variables = attention.init(jax.random.key(0), query, keys, values, mask)
  p = jax.tree.map(lambda a: np.asarray(a, np.float64), variables["params"])
  assert jax.tree.map(np.shape, p) == {
      "query": {"kernel": (DQ, DA)}, "key": {"kernel": (DK, DA), "bias": (DA,)}, "score": (DA,)}
  context, state = attention.apply(variables, query, keys, values, mask, sow_weights=True,
                                   mutable=["intermediates"])
  (weights,) = state["intermediates"]["attention_weights"]
  q, k, v, m = (np.asarray(a, np.float64) for a in (query, keys, values, mask))
  hidden = np.tanh((q @ p["query"]["kernel"])[:, None, :] + k @ p["key"]["kernel"]
                   + p["key"]["bias"])
  expected_weights = _softmax(hidden @ p["score"], m.astype(bool))
  np.testing.assert_allclose(weights, expected_weights, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(context, np.einsum("bn,bnd->bd", expected_weights, v),
                             rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(weights[2, 1:], 0.0)
  # values default to the keys
  np.testing.assert_allclose(attention.apply(variables, query, keys),
                             attention.apply(variables, query, keys, keys), rtol=1e-6)


def test_additive_projected_keys_equal_projecting_every_call():
  query, keys, values, mask = _additive_inputs(1)
  attention = layers.AdditiveAttention(DA)
  variables = attention.init(jax.random.key(1), query, keys, values, mask)
  projected = attention.apply(variables, keys, method="project_keys")
  assert projected.shape == (B, N, DA)
  np.testing.assert_allclose(
      attention.apply(variables, query, keys, values, mask, projected_keys=projected),
      attention.apply(variables, query, keys, values, mask), rtol=1e-6, atol=1e-7)


class _Decoder(nn.Module):
  """A GRU decoder whose input at each step is the previous context (a minimal Bahdanau
  decoder), scanned over time with nn.scan; ``scan=False`` runs the same cell in a Python loop."""

  scan: bool = True

  @nn.compact
  def __call__(self, states, mask, steps: int):
    # The keys are projected once per source sequence; the step's own AdditiveAttention only
    # scores them (its `key` Dense is never called, so it has no parameters).
    projected = layers.AdditiveAttention(DA, name="keys").project_keys(states)
    carry = (jnp.zeros((B, 6)), jnp.zeros((B, DK)))
    xs = jnp.zeros((B, steps, 1))
    if self.scan:
      scanned = nn.scan(_Step, variable_broadcast="params", split_rngs={"params": False},
                        in_axes=(1, nn.broadcast, nn.broadcast, nn.broadcast), out_axes=1)
      _, contexts = scanned(name="step")(carry, xs, states, projected, mask)
      return contexts
    cell = _Step(name="step")
    contexts = []
    for t in range(steps):
      carry, context = cell(carry, xs[:, t], states, projected, mask)
      contexts.append(context)
    return jnp.stack(contexts, axis=1)


class _Step(nn.Module):
  @nn.compact
  def __call__(self, carry, x, states, projected, mask):
    hidden, context = carry
    hidden, _ = nn.GRUCell(6, name="gru")(hidden, jnp.concatenate([x, context], -1))
    context = layers.AdditiveAttention(DA, name="attention")(
        hidden, states, mask=mask, projected_keys=projected)
    return (hidden, context), context


def test_additive_inside_nn_scan_decoder_equals_python_loop():
  _, keys, _, mask = _additive_inputs(2)
  scanned, looped = _Decoder(scan=True), _Decoder(scan=False)
  variables = looped.init(jax.random.key(2), keys, mask, 4)
  assert set(variables["params"]["step"]["attention"]) == {"query", "score"}
  out_loop = looped.apply(variables, keys, mask, 4)
  out_scan = jax.jit(lambda v: scanned.apply(v, keys, mask, 4))(variables)
  assert out_scan.shape == (B, 4, DK)
  np.testing.assert_allclose(out_scan, out_loop, rtol=1e-5, atol=1e-6)


def test_additive_bf16_jit_and_errors():
  query, keys, values, mask = _additive_inputs(3)
  attention = layers.AdditiveAttention(DA, dtype=jnp.bfloat16)
  variables = attention.init(jax.random.key(3), query, keys, values, mask)
  out = jax.jit(lambda v: attention.apply(v, query, keys, values, mask))(variables)
  assert out.dtype == jnp.bfloat16 and out.shape == (B, DV)
  assert np.all(np.isfinite(np.asarray(out, np.float32)))
  with pytest.raises(ValueError, match=r"keys must be \[batch..., n, dk\]"):
    attention.apply(variables, query, keys[0])
  with pytest.raises(ValueError, match=r"projected_keys has shape \(3, 6, 5\), expected"):
    attention.apply(variables, query, keys, projected_keys=jnp.zeros((B, N, 5)))
  with pytest.raises(ValueError, match="values .* must be"):
    attention.apply(variables, query, keys, values[:, :2])
  with pytest.raises(ValueError, match="mask of shape"):
    attention.apply(variables, query, keys, values, jnp.ones((B, N + 1), bool))


def _general_inputs(seed=0, batch=(2,)):
  rng = np.random.default_rng(seed)
  queries = jnp.asarray(rng.normal(size=(*batch, 3, 4)), jnp.float32)  # N_Q=3, D_Q=4
  inputs = jnp.asarray(rng.normal(size=(*batch, 5, 6)), jnp.float32)  # N_X=5, D_X=6
  return queries, inputs


def test_attention_layer_equals_the_lecture_equations():
  queries, inputs = _general_inputs()
  layer = layers.AttentionLayer(value_features=7)
  variables = layer.init(jax.random.key(0), queries, inputs)
  p = variables["params"]
  assert jax.tree.map(np.shape, p) == {"key": {"kernel": (6, 4)}, "value": {"kernel": (6, 7)}}
  mask = jnp.asarray(np.random.default_rng(1).random((2, 3, 5)) < 0.5).at[..., 0].set(True)
  y, state = layer.apply(variables, queries, inputs, mask=mask, sow_weights=True,
                         mutable=["intermediates"])
  (weights,) = state["intermediates"]["attention_weights"]
  q, x = np.asarray(queries, np.float64), np.asarray(inputs, np.float64)
  k = x @ np.asarray(p["key"]["kernel"], np.float64)
  v = x @ np.asarray(p["value"]["kernel"], np.float64)
  expected_weights = _softmax(q @ np.swapaxes(k, -1, -2) / np.sqrt(4), np.asarray(mask))
  assert y.shape == (2, 3, 7) and weights.shape == (2, 3, 5)
  np.testing.assert_allclose(weights, expected_weights, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(y, expected_weights @ v, rtol=1e-5, atol=1e-6)
  # A mask over the inputs only ([N_X]) and key_value_seq_lengths broadcast the same way.
  lengths = jnp.array([2, 5])
  by_lengths = layer.apply(variables, queries, inputs, key_value_seq_lengths=lengths)
  by_mask = layer.apply(variables, queries, inputs,
                        mask=jnp.arange(5)[None, None, :] < lengths[:, None, None])
  np.testing.assert_allclose(by_lengths, by_mask, rtol=1e-6)
  np.testing.assert_allclose(layer.apply(variables, queries, inputs, mask=jnp.arange(5) < 2)[0],
                             by_lengths[0], rtol=1e-6)


def test_attention_layer_bf16_jit_and_errors():
  queries, inputs = _general_inputs(2, batch=(2, 3))
  layer = layers.AttentionLayer(value_features=7, use_bias=True, dtype=jnp.bfloat16)
  variables = layer.init(jax.random.key(0), queries, inputs)
  out = jax.jit(lambda v: layer.apply(v, queries, inputs))(variables)
  assert out.dtype == jnp.bfloat16 and out.shape == (2, 3, 3, 7)
  assert np.all(np.isfinite(np.asarray(out, np.float32)))
  with pytest.raises(ValueError, match="same batch axes"):
    layer.apply(variables, queries, inputs[:1])
  with pytest.raises(ValueError, match=r"mask of shape \(4,\) does not broadcast to "
                                       r"\[batch..., N_Q, N_X\]"):
    layer.apply(variables, queries, inputs, mask=jnp.ones((4,), bool))
