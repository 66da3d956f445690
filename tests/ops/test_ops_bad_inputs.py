"""Bad inputs to the attention functions and layers are refused before any compute with a one-line
error that names the argument; garbage where no query looks (padding, masked keys) never leaks.

The cases are the ones an adversarial review found crashing deep in XLA/Python or silently wrong.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import reference_numpy
from attention_jax import layers
from attention_jax import ops


def _qkv(batch=2, q_len=6, kv_len=6, heads=4, kv_heads=4, dim=8, seed=0):
  keys = jax.random.split(jax.random.key(seed), 3)
  return (jax.random.normal(keys[0], (batch, q_len, heads, dim)),
          jax.random.normal(keys[1], (batch, kv_len, kv_heads, dim)),
          jax.random.normal(keys[2], (batch, kv_len, kv_heads, dim)))


_PATHS = [dict(implementation="reference"), dict(implementation="flash", block_sizes=(8, 8)),
          dict(is_causal=True), dict(return_weights=True)]


@pytest.mark.parametrize("options", _PATHS, ids=str)
def test_zero_keys_and_zero_head_dim_are_refused_on_every_path(options):
  q, k, v = _qkv()
  with pytest.raises(ValueError, match=r"key has length 0 \(shape \(2, 0, 4, 8\)\)"):
    ops.dot_product_attention(q, k[:, :0], v[:, :0], **options)
  with pytest.raises(ValueError, match=r"head_dim 0"):
    ops.dot_product_attention(q[..., :0], k[..., :0], v, **options)


def test_zero_keys_are_refused_by_the_layer_and_the_weights():
  q, k, _ = _qkv()
  with pytest.raises(ValueError, match=r"key has length 0"):
    ops.attention_weights(q, k[:, :0])
  layer = layers.MultiHeadAttention(num_heads=2)
  x = jnp.ones((2, 5, 8))
  params = layer.init(jax.random.key(0), x)
  with pytest.raises(ValueError, match=r"key has length 0"):
    layer.apply(params, x, jnp.ones((2, 0, 8)))


def test_additive_attention_refuses_zero_keys():
  with pytest.raises(ValueError, match=r"keys have no positions \(shape \(2, 0, 4\)\)"):
    ops.additive_attention(jnp.ones((2, 3)), jnp.ones((2, 0, 4)), jnp.ones((2, 0, 4)),
                           jnp.ones((3, 5)), jnp.ones((4, 5)), jnp.ones((5,)))


@pytest.mark.parametrize("kwargs,error,match", [
    (dict(key_value_seq_lengths=[3, 4]), TypeError,
     r"key_value_seq_lengths must be an int array of the batch shape \(2,\) \(a jax or numpy "
     r"array\), got list"),
    (dict(query_seq_lengths=(3, 4)), TypeError, r"query_seq_lengths must be an int array.*tuple"),
    (dict(query_segment_ids=[[0] * 6] * 2), TypeError, r"query_segment_ids must be an int array"),
    (dict(scale="a"), ValueError, r"scale must be a finite real number, got 'a'"),
    (dict(scale=jnp.ones(2)), ValueError, r"scale must be a finite real number"),
    (dict(dropout_rate="0.1", dropout_rng=jax.random.key(0)), TypeError,
     r"dropout_rate must be a float in \[0, 1\), got str '0.1'"),
    (dict(dropout_rate=0.1, dropout_rng=0), TypeError,
     r"dropout_rng must be one PRNG key .* got int of shape None"),
    (dict(dropout_rate=0.1, dropout_rng=jnp.zeros(3, jnp.uint32)), TypeError,
     r"dropout_rng must be one PRNG key .* shape \(3,\) and dtype uint32"),
    (dict(dropout_rate=0.1, dropout_rng=jax.random.split(jax.random.key(0))), TypeError,
     r"dropout_rng must be one PRNG key .* shape \(2,\)"),
    (dict(block_sizes=("a", 2), implementation="flash"), ValueError,
     r"block_sizes must be two ints \(block_q, block_k\), got \('a', 2\)"),
])
def test_arguments_of_the_wrong_type_or_shape_are_named(kwargs, error, match):
  q, k, v = _qkv()
  with pytest.raises(error, match=match):
    ops.dot_product_attention(q, k, v, **kwargs)


def test_dropout_accepts_both_kinds_of_key():
  q, k, v = _qkv()
  for rng in (jax.random.key(1), jax.random.PRNGKey(1)):
    out = ops.dot_product_attention(q, k, v, dropout_rate=0.5, dropout_rng=rng)
    assert bool(jnp.isfinite(out).all())


def test_weights_that_cannot_fit_are_refused_with_their_size():
  """At L = 65,536 the weights alone are 128 GiB: refused while tracing, nothing allocated."""
  spec = jax.ShapeDtypeStruct((1, 65536, 8, 64), jnp.float32)
  with pytest.raises(ValueError, match=r"return_weights=True needs the weights .* = \(1, 8, "
                                       r"65536, 65536\): 128.0 GiB, more than the"):
    jax.eval_shape(functools.partial(ops.dot_product_attention, return_weights=True),
                   spec, spec, spec)
  # Without the weights the same call is fine (linear memory).
  out = jax.eval_shape(ops.dot_product_attention, spec, spec, spec)
  assert out.shape == (1, 65536, 8, 64)


@pytest.mark.parametrize("dtype", [jnp.int32, jnp.int8])
def test_additive_attention_computes_in_float_for_integer_inputs(dtype):
  rng = np.random.default_rng(0)
  arrays = [rng.integers(-3, 4, size=s) for s in ((2, 3), (2, 5, 4), (2, 5, 4), (3, 6), (4, 6),
                                                  (6,))]
  want, want_weights = ops.additive_attention(*(jnp.asarray(a, jnp.float32) for a in arrays),
                                              return_weights=True)
  got, weights = ops.additive_attention(*(jnp.asarray(a, dtype) for a in arrays),
                                        return_weights=True)
  assert got.dtype == jnp.float32 and weights.dtype == jnp.float32
  assert float(jnp.abs(want).max()) > 0.1
  np.testing.assert_allclose(got, want, rtol=1e-6)
  np.testing.assert_allclose(weights.sum(-1), 1.0, rtol=1e-6)


def test_a_3d_mask_is_one_mask_per_head_even_when_batch_equals_heads():
  """``[n, q_len, kv_len]`` broadcasts right-aligned to ``[batch, heads, q_len, kv_len]`` (the
  docstring): per head. With batch == heads == 4 it is not read per batch row."""
  q, k, v = _qkv(batch=4, heads=4, kv_heads=4)
  mask = jax.random.bernoulli(jax.random.key(3), 0.6, (4, 6, 6)).at[..., 0].set(True)
  got = ops.dot_product_attention(q, k, v, mask=mask)
  want, _ = reference_numpy.attention(q, k, v, mask=np.asarray(mask)[None])  # [1, heads, q, k]
  np.testing.assert_allclose(got, want, atol=1e-5)
  per_row, _ = reference_numpy.attention(q, k, v, mask=np.asarray(mask)[:, None])
  assert np.abs(np.asarray(got) - per_row).max() > 1e-2  # the other reading differs


def test_a_per_row_3d_mask_says_how_to_add_the_heads_axis():
  q, k, v = _qkv(batch=2, heads=4)
  with pytest.raises(ValueError, match=r"mask of shape \(2, 6, 6\) does not broadcast .* a 3-D "
                                       r"mask is \[heads, q_len, kv_len\]; for one per batch row "
                                       r"add the heads axis \(mask\[:, None\]\)"):
    ops.dot_product_attention(q, k, v, mask=jnp.ones((2, 6, 6), bool))


@pytest.mark.parametrize("implementation", ["reference", "flash", None])
@pytest.mark.parametrize("hidden_by", ["lengths", "mask"])
def test_nan_in_keys_and_values_no_query_sees_never_leaks(implementation, hidden_by):
  q, k, v = _qkv(q_len=8, kv_len=8)
  k = k.at[1, 5:].set(jnp.nan)
  v = v.at[1, 5:].set(jnp.inf)
  if hidden_by == "lengths":
    kwargs = dict(key_value_seq_lengths=jnp.array([8, 5]))
  else:
    mask = jnp.ones((2, 1, 8, 8), bool).at[1, :, :, 5:].set(False)
    kwargs = dict(mask=mask)
  block = dict(block_sizes=(8, 8)) if implementation == "flash" else {}

  def loss(q, k, v):
    out = ops.dot_product_attention(q, k, v, implementation=implementation, **block, **kwargs)
    return jnp.sum(out ** 2), out

  (_, out), grads = jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True)(q, k, v)
  assert bool(jnp.isfinite(out).all())
  for g in grads:
    assert bool(jnp.isfinite(g).all())
  want, _ = reference_numpy.attention(q[1], k[1, :5], v[1, :5])
  np.testing.assert_allclose(out[1], want, atol=1e-5)
  assert float(jnp.abs(grads[1][1, 5:]).max()) == 0.0  # hidden keys get no gradient


def test_nan_in_a_visible_value_still_shows():
  """Only rows no query may see are cleaned: a NaN the model reads is the caller's to see."""
  q, k, v = _qkv()
  out = ops.dot_product_attention(q, k, v.at[0, 2].set(jnp.nan))
  assert bool(jnp.isnan(out[0]).all()) and bool(jnp.isfinite(out[1]).all())
