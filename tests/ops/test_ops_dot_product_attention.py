"""ops.dot_product_attention and ops.attention_weights against jax.nn, flax and a float64 NumPy
reference."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

import reference_numpy
from attention_jax import ops

# (batch axes, q_len, kv_len, heads, kv_heads, head_dim, v_dim)
SHAPES = [
    ((), 5, 5, 1, 1, 8, 8),
    ((2,), 6, 9, 4, 4, 16, 16),
    ((2, 3), 7, 4, 8, 2, 8, 12),
    ((1, 2, 2), 3, 11, 6, 1, 4, 4),
    ((3,), 1, 13, 4, 2, 32, 8),
    ((2,), 5, 8, 6, 3, 16, 16),
]
# jax.nn.dot_product_attention needs v_dim == head_dim.
SAME_V_DIM = [s for s in SHAPES if s[5] == s[6]]


def make_qkv(seed, batch, q_len, kv_len, heads, kv_heads, head_dim, v_dim, dtype=jnp.float32):
  rng = np.random.default_rng(seed)
  q = rng.normal(size=(*batch, q_len, heads, head_dim))
  k = rng.normal(size=(*batch, kv_len, kv_heads, head_dim))
  v = rng.normal(size=(*batch, kv_len, kv_heads, v_dim))
  return tuple(jnp.asarray(a, dtype) for a in (q, k, v))


def random_mask(seed, shape, p=0.7):
  return jnp.asarray(np.random.default_rng(seed).random(shape) < p)


def flatten_batch(x, batch):
  return x.reshape((int(np.prod(batch)),) + x.shape[len(batch):]) if batch else x


@pytest.mark.parametrize("shape", SAME_V_DIM)
@pytest.mark.parametrize("variant", ["plain", "mask", "bias", "causal"])
def test_matches_jax_nn(shape, variant):
  batch, q_len, kv_len, heads, kv_heads, head_dim, v_dim = shape
  q, k, v = make_qkv(0, *shape)
  kwargs, ref_kwargs = {}, {}
  logits_shape = (*batch, heads, q_len, kv_len)
  if variant == "mask":
    mask = random_mask(1, logits_shape)
    kwargs["mask"] = mask
    ref_kwargs["mask"] = flatten_batch(mask, batch)
  elif variant == "bias":
    bias = jnp.asarray(np.random.default_rng(2).normal(size=logits_shape), jnp.float32)
    kwargs["bias"] = bias
    ref_kwargs["bias"] = flatten_batch(bias, batch)
  elif variant == "causal":
    # jax.nn aligns is_causal top-left; ours bottom-right. Pass jax.nn our mask explicitly.
    kwargs["is_causal"] = True
    ref_kwargs["mask"] = ops.causal_mask(q_len, kv_len)
  ours = ops.dot_product_attention(q, k, v, **kwargs)
  theirs = jax.nn.dot_product_attention(
      flatten_batch(q, batch), flatten_batch(k, batch), flatten_batch(v, batch), **ref_kwargs)
  if variant == "causal" and q_len > kv_len:
    # Rows with no visible key: jax.nn returns the mean of the values, ours returns zeros.
    visible = np.asarray(ops.causal_mask(q_len, kv_len)).any(-1)
    ours, theirs = ours[..., visible, :, :], theirs[..., visible, :, :]
    theirs = theirs.reshape(ours.shape)
  np.testing.assert_allclose(ours, np.asarray(theirs).reshape(ours.shape), atol=2e-6, rtol=2e-6)


@pytest.mark.parametrize("shape", [s for s in SHAPES if s[3] == s[4]])
def test_matches_flax_linen(shape):
  batch, q_len, kv_len, heads, _, head_dim, v_dim = shape
  q, k, v = make_qkv(3, *shape)
  mask = random_mask(4, (*batch, heads, q_len, kv_len))
  bias = jnp.asarray(np.random.default_rng(5).normal(size=(q_len, kv_len)), jnp.float32)
  ours = ops.dot_product_attention(q, k, v, bias=bias, mask=mask)
  theirs = nn.dot_product_attention(q, k, v, bias=bias, mask=mask, deterministic=True)
  # flax gives the mean of the values for fully masked rows; compare the others.
  live = np.asarray(mask).any(-1)  # [batch..., heads, q_len]
  live = np.moveaxis(live, -1, -2)[..., None]  # [batch..., q_len, heads, 1]
  np.testing.assert_allclose(np.where(live, ours, 0), np.where(live, theirs, 0), atol=2e-6)


@pytest.mark.parametrize("shape", SHAPES)
def test_matches_float64_numpy_reference_with_everything(shape):
  batch, q_len, kv_len, heads, kv_heads, head_dim, v_dim = shape
  q, k, v = make_qkv(6, *shape)
  rng = np.random.default_rng(7)
  mask = random_mask(8, (heads, 1, kv_len), p=0.8)  # broadcasts over batch and queries
  bias = jnp.asarray(rng.normal(size=(*batch, 1, q_len, kv_len)), jnp.float32)
  q_lengths = jnp.asarray(rng.integers(0, q_len + 1, size=batch), jnp.int32)
  k_lengths = jnp.asarray(rng.integers(0, kv_len + 1, size=batch), jnp.int32)
  kwargs = dict(bias=bias, mask=mask, is_causal=True, scale=0.3,
                query_seq_lengths=q_lengths, key_value_seq_lengths=k_lengths)
  out, weights = ops.dot_product_attention(q, k, v, return_weights=True, **kwargs)
  ref_out, ref_weights = reference_numpy.attention(q, k, v, **kwargs)
  np.testing.assert_allclose(out, ref_out, atol=3e-6, rtol=1e-5)
  np.testing.assert_allclose(weights, ref_weights, atol=1e-6)
  np.testing.assert_allclose(ops.attention_weights(q, k, **kwargs), ref_weights, atol=1e-6)


def test_weights_rows_sum_to_one_or_zero():
  q, k, v = make_qkv(9, (2,), 6, 6, 2, 2, 8, 8)
  _, w = ops.dot_product_attention(q, k, v, key_value_seq_lengths=jnp.array([0, 4]),
                                   return_weights=True)
  sums = np.asarray(w).sum(-1)
  np.testing.assert_allclose(sums[0], 0.0)
  np.testing.assert_allclose(sums[1], 1.0, rtol=1e-6)
  assert np.all(np.asarray(w)[1, ..., 4:] == 0.0)


def test_jit_vmap_and_grad():
  q, k, v = make_qkv(10, (4,), 5, 7, 4, 2, 8, 8)
  fn = lambda q, k, v: ops.dot_product_attention(q, k, v, is_causal=True)
  direct = fn(q, k, v)
  np.testing.assert_allclose(jax.jit(fn)(q, k, v), direct, atol=1e-6)
  # vmap over the batch axis of a batch-less call equals the batched call.
  np.testing.assert_allclose(jax.vmap(fn)(q, k, v), direct, atol=1e-6)
  grads = jax.grad(lambda *a: jnp.sum(fn(*a) ** 2), argnums=(0, 1, 2))(q, k, v)
  assert all(g.shape == a.shape and np.all(np.isfinite(g)) for g, a in zip(grads, (q, k, v)))


def test_gradients_match_finite_differences():
  with jax.enable_x64(True):
    q, k, v = make_qkv(11, (2,), 4, 6, 4, 2, 3, 5, dtype=jnp.float64)
    bias = jnp.asarray(np.random.default_rng(12).normal(size=(4, 6)))
    mask = random_mask(13, (2, 1, 4, 6), p=0.8)

    def f(q, k, v, bias):
      return ops.dot_product_attention(q, k, v, bias=bias, mask=mask, is_causal=True,
                                       key_value_seq_lengths=jnp.array([6, 3]))

    check_grads(jax.jit(f), (q, k, v, bias), order=2, modes=("rev", "fwd"), eps=1e-6, atol=1e-5,
                rtol=1e-5)


def test_gradients_match_numpy_reference_derivative():
  """Grad of a scalar loss equals the reference's central difference along a random direction."""
  q, k, v = make_qkv(14, (), 4, 5, 2, 2, 4, 4)

  def loss(q):
    return jnp.sum(jnp.sin(ops.dot_product_attention(q, k, v, is_causal=True)))

  direction = np.random.default_rng(15).normal(size=q.shape)
  eps = 1e-4
  ref = lambda qq: np.sum(np.sin(reference_numpy.attention(qq, k, v, is_causal=True)[0]))
  q64 = np.asarray(q, np.float64)
  numeric = (ref(q64 + eps * direction) - ref(q64 - eps * direction)) / (2 * eps)
  analytic = np.sum(np.asarray(jax.grad(loss)(q)) * direction)
  np.testing.assert_allclose(analytic, numeric, rtol=1e-4)
