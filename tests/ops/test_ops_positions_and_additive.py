"""Permutation equivariance and positions, masks, and additive (Bahdanau) attention."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import reference_numpy
from attention_jax import ops


@functools.partial(jax.jit, static_argnames=("positions", "rotary"))
def self_attention(x, w_q, w_k, w_v, positions=None, rotary=False):
  """x [length, d] -> [length, d_v], one head, the lecture's Q = X W_Q, K = X W_K, V = X W_V."""
  if positions == "sinusoidal":
    x = x + ops.sinusoidal_positions(x.shape[0], x.shape[1])
  q, k, v = ((x @ w)[:, None, :] for w in (w_q, w_k, w_v))
  if rotary:
    pos = jnp.arange(x.shape[0])
    q, k = ops.apply_rotary(q, pos), ops.apply_rotary(k, pos)
  return ops.dot_product_attention(q, k, v)[:, 0, :]


@settings(max_examples=25, deadline=None)
@given(length=st.integers(2, 9), seed=st.integers(0, 2**16), data=st.data())
def test_self_attention_is_permutation_equivariant(length, seed, data):
  perm = np.array(data.draw(st.permutations(range(length))))
  rng = np.random.default_rng(seed)
  x = jnp.asarray(rng.normal(size=(length, 6)), jnp.float32)
  weights = [jnp.asarray(rng.normal(size=(6, 6)), jnp.float32) for _ in range(3)]
  np.testing.assert_allclose(self_attention(x[perm], *weights), self_attention(x, *weights)[perm],
                             atol=1e-5)


@pytest.mark.parametrize("encoding", ["sinusoidal", "rotary"])
def test_positions_break_permutation_equivariance(encoding):
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(6, 8)), jnp.float32)
  weights = [jnp.asarray(rng.normal(size=(8, 8)), jnp.float32) for _ in range(3)]
  perm = np.array([5, 0, 3, 1, 4, 2])
  kw = dict(positions="sinusoidal") if encoding == "sinusoidal" else dict(rotary=True)
  permuted_in = self_attention(x[perm], *weights, **kw)
  permuted_out = self_attention(x, *weights, **kw)[perm]
  assert np.abs(np.asarray(permuted_in - permuted_out)).max() > 1e-2


def test_sinusoidal_positions_formula():
  table = np.asarray(ops.sinusoidal_positions(50, 16))
  pos, i = 37, 3
  np.testing.assert_allclose(table[pos, 2 * i], np.sin(pos / 10000 ** (2 * i / 16)), atol=1e-6)
  np.testing.assert_allclose(table[pos, 2 * i + 1], np.cos(pos / 10000 ** (2 * i / 16)), atol=1e-6)
  with pytest.raises(ValueError, match="positive even dim"):
    ops.sinusoidal_positions(4, 7)


def test_rotary_scores_depend_only_on_relative_position():
  rng = np.random.default_rng(1)
  q = jnp.asarray(rng.normal(size=(1, 1, 16)), jnp.float32)
  k = jnp.asarray(rng.normal(size=(1, 1, 16)), jnp.float32)

  def score(m, n):
    rq = ops.apply_rotary(q, jnp.array([m]))
    rk = ops.apply_rotary(k, jnp.array([n]))
    return float(jnp.sum(rq * rk))

  np.testing.assert_allclose(score(3, 1), score(12, 10), rtol=1e-4)
  np.testing.assert_allclose(score(0, 0), float(jnp.sum(q * k)), rtol=1e-5)
  rotated = ops.apply_rotary(jnp.tile(q, (5, 2, 1)), jnp.arange(5))
  np.testing.assert_allclose(jnp.linalg.norm(rotated, axis=-1),
                             jnp.broadcast_to(jnp.linalg.norm(q), (5, 2)), rtol=1e-5)
  assert ops.apply_rotary(q.astype(jnp.bfloat16), jnp.array([2])).dtype == jnp.bfloat16
  with pytest.raises(ValueError, match="positions of shape"):
    ops.apply_rotary(q, jnp.arange(3))


def test_padding_mask_shape_and_values():
  m = ops.padding_mask(jnp.array([[2, 3]]), jnp.array([[1, 4]]), 3, 4)
  assert m.shape == (1, 2, 1, 3, 4)
  expected0 = np.zeros((3, 4), bool)
  expected0[:2, :1] = True
  np.testing.assert_array_equal(m[0, 0, 0], expected0)
  assert bool(m[0, 1, 0].all())
  assert ops.padding_mask(None, jnp.array([2]), 3, 4).shape == (1, 1, 3, 4)


def additive_reference(query, keys, values, w_q, w_k, w_s, mask):
  query, keys, values = (np.asarray(a, np.float64) for a in (query, keys, values))
  scores = np.tanh((query @ w_q)[..., None, :] + keys @ w_k) @ w_s
  weights = reference_numpy.softmax_masked(scores, mask)
  return np.einsum("...n,...nd->...d", weights, values), weights


def test_additive_attention_matches_bahdanau_equations():
  rng = np.random.default_rng(2)
  query = rng.normal(size=(3, 2, 5))
  keys = rng.normal(size=(3, 2, 7, 4))
  values = rng.normal(size=(3, 2, 7, 6))
  w_q, w_k, w_s = rng.normal(size=(5, 9)), rng.normal(size=(4, 9)), rng.normal(size=(9,))
  mask = rng.random((3, 2, 7)) < 0.7
  mask[0, 0] = False  # a fully padded input sequence
  f32 = lambda a: jnp.asarray(a, jnp.float32)
  context, weights = ops.additive_attention(f32(query), f32(keys), f32(values), f32(w_q),
                                            f32(w_k), f32(w_s), jnp.asarray(mask),
                                            return_weights=True)
  ref_context, ref_weights = additive_reference(query, keys, values, w_q, w_k, w_s, mask)
  np.testing.assert_allclose(context, ref_context, atol=1e-5)
  np.testing.assert_allclose(weights, ref_weights, atol=1e-6)
  assert np.all(np.asarray(weights)[~mask] == 0.0)
  # Keys projected once up front give the same context.
  projected = f32(keys) @ f32(w_k)
  again = ops.additive_attention(f32(query), projected, f32(values), f32(w_q), None, f32(w_s),
                                 jnp.asarray(mask))
  np.testing.assert_allclose(again, context, atol=1e-5)
  grads = jax.grad(lambda q: jnp.sum(ops.additive_attention(
      q, f32(keys), f32(values), f32(w_q), f32(w_k), f32(w_s), jnp.asarray(mask))))(f32(query))
  assert np.all(np.isfinite(grads)) and np.all(np.asarray(grads)[0, 0] == 0.0)


def test_additive_attention_errors():
  q, keys = jnp.ones((2, 5)), jnp.ones((2, 7, 4))
  w_q, w_k, w_s = jnp.ones((5, 3)), jnp.ones((4, 3)), jnp.ones((3,))
  with pytest.raises(ValueError, match=r"w_key must be \[dk=4, da=3\], got \(5, 3\)"):
    ops.additive_attention(q, keys, keys, w_q, jnp.ones((5, 3)), w_s)
  with pytest.raises(ValueError, match=r"keys have batch axes \(3,\) but query has \(2,\)"):
    ops.additive_attention(q, jnp.ones((3, 7, 4)), jnp.ones((3, 7, 4)), w_q, w_k, w_s)
  with pytest.raises(TypeError, match="mask must be a boolean"):
    ops.additive_attention(q, keys, keys, w_q, w_k, w_s, mask=jnp.ones((2, 7)))
  with pytest.raises(ValueError, match=r"mask of shape \(2, 6\) does not broadcast"):
    ops.additive_attention(q, keys, keys, w_q, w_k, w_s, mask=jnp.ones((2, 6), bool))
