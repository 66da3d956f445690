"""Fully masked rows, low precision, causal alignment, dropout and argument errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from attention_jax import ops


def qkv(seed=0, batch=(2,), q_len=4, kv_len=6, heads=4, kv_heads=2, dim=8, dtype=jnp.float32):
  rng = np.random.default_rng(seed)
  mk = lambda *s: jnp.asarray(rng.normal(size=s), dtype)
  return (mk(*batch, q_len, heads, dim), mk(*batch, kv_len, kv_heads, dim),
          mk(*batch, kv_len, kv_heads, dim))


def loss_and_grads(q, k, v, **kwargs):
  def loss(q, k, v):
    return jnp.sum(ops.dot_product_attention(q, k, v, **kwargs).astype(jnp.float32) ** 2)

  # Compiled: op by op, the paths' many small ops cost more dispatch and compiles than the test.
  out = jax.jit(lambda q, k, v: ops.dot_product_attention(q, k, v, **kwargs))(q, k, v)
  grads = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))(q, k, v)
  return out, grads


FULLY_MASKED_CASES = {
    "mask all false": dict(mask=jnp.zeros((4, 6), bool)),
    "fully padded keys": dict(key_value_seq_lengths=jnp.array([0, 0])),
    "fully padded queries": dict(query_seq_lengths=jnp.array([0, 0])),
    "causal with kv padding": dict(is_causal=True, key_value_seq_lengths=jnp.array([1, 0])),
    "causal with fewer keys than queries": dict(is_causal=True),
}


@pytest.mark.parametrize("case", sorted(FULLY_MASKED_CASES))
def test_fully_masked_rows_give_zeros_and_zero_gradients(case):
  kwargs = FULLY_MASKED_CASES[case]
  kv_len = 2 if case == "causal with fewer keys than queries" else 6
  q, k, v = qkv(kv_len=kv_len)
  out, grads = loss_and_grads(q, k, v, **kwargs)
  _, weights = ops.dot_product_attention(q, k, v, return_weights=True, **kwargs)
  dead = np.asarray(weights).sum(-1) == 0  # [batch, heads, q_len]
  assert dead.any(), "the case must produce fully masked rows"
  dead_out = np.moveaxis(dead, -2, -1)  # [batch, q_len, heads]
  assert np.all(np.asarray(out)[dead_out] == 0.0)
  for g in grads:
    assert np.all(np.isfinite(g))
  # Rows that are fully masked contribute no gradient to their query.
  assert np.all(np.asarray(grads[0])[dead_out] == 0.0)
  if dead.all():
    assert all(np.all(np.asarray(g) == 0.0) for g in grads)


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_low_precision_with_huge_logits_is_finite(dtype):
  q, k, v = qkv(1, dtype=dtype)
  q = q * 100.0  # logits up to ~1e4 after the 1/sqrt(8) scale
  k = k * 100.0
  logits = np.einsum("bqhd,bkhd->bhqk", np.asarray(q, np.float32)[..., :2, :],
                     np.asarray(k, np.float32)) / np.sqrt(8)
  assert np.abs(logits).max() > 1e4
  mask = jnp.asarray(np.random.default_rng(2).random((4, 6)) < 0.5)
  out, grads = loss_and_grads(q, k, v, mask=mask, is_causal=True)
  assert out.dtype == dtype
  assert np.all(np.isfinite(np.asarray(out, np.float32)))
  assert all(np.all(np.isfinite(np.asarray(g, np.float32))) for g in grads)
  ref = ops.dot_product_attention(*(a.astype(jnp.float32) for a in (q, k, v)), mask=mask,
                                  is_causal=True)
  np.testing.assert_allclose(np.asarray(out, np.float32), ref, atol=0.05, rtol=0.05)


def test_low_precision_bias_masks_do_not_overflow():
  """Two finfo.min biases summed overflow to -inf in bf16; boolean masks never do."""
  q, k, v = qkv(3, dtype=jnp.bfloat16)
  big_negative = jnp.full((4, 6), jnp.finfo(jnp.bfloat16).min, jnp.bfloat16)
  out = ops.dot_product_attention(q, k, v, bias=big_negative, mask=jnp.zeros((4, 6), bool))
  assert np.all(np.asarray(out, np.float32) == 0.0)


def test_causal_mask_is_bottom_right_aligned():
  expected = np.array([[1, 1, 1, 0], [1, 1, 1, 1]], bool)
  np.testing.assert_array_equal(ops.causal_mask(2, 4), expected)
  np.testing.assert_array_equal(ops.causal_mask(3), np.tril(np.ones((3, 3), bool)))
  # The last query of a chunk sees every key, as a decoder with a cache needs.
  assert bool(ops.causal_mask(5, 9)[-1].all())


def test_is_causal_equals_last_queries_of_full_causal_pass():
  q, k, v = qkv(4, q_len=8, kv_len=8)
  full = ops.dot_product_attention(q, k, v, is_causal=True)
  tail = ops.dot_product_attention(q[:, 5:], k, v, is_causal=True)
  np.testing.assert_allclose(tail, full[:, 5:], atol=1e-6)


def test_causal_output_does_not_depend_on_later_inputs():
  x = jax.random.normal(jax.random.key(0), (6, 1, 4))

  def self_attend(x):
    return ops.dot_product_attention(x, x, x, is_causal=True)

  jac = jax.jacobian(self_attend)(x)  # [6,1,4, 6,1,4]
  dependence = np.abs(np.asarray(jac)).sum(axis=(1, 2, 4, 5))  # [out t, in s]
  assert np.all(dependence[np.triu_indices(6, k=1)] == 0.0)
  assert np.all(dependence[np.tril_indices(6)] > 0.0)


def test_dropout_is_deterministic_given_rng_and_scales_kept_weights():
  q, k, v = qkv(5, q_len=64, kv_len=64, heads=2, kv_heads=2)
  rng = jax.random.key(7)
  kwargs = dict(dropout_rate=0.25, dropout_rng=rng, return_weights=True)
  out1, w1 = ops.dot_product_attention(q, k, v, **kwargs)
  out2, w2 = ops.dot_product_attention(q, k, v, **kwargs)
  np.testing.assert_array_equal(out1, out2)
  _, w_clean = ops.dot_product_attention(q, k, v, return_weights=True)
  kept = np.asarray(w1) != 0
  assert 0.7 < kept.mean() < 0.8
  np.testing.assert_allclose(np.asarray(w1)[kept], np.asarray(w_clean)[kept] / 0.75, rtol=1e-5)
  # Inverted dropout keeps each row's expected sum at one; single rows may exceed it.
  sums = np.asarray(w1).sum(-1)
  assert abs(sums.mean() - 1.0) < 0.05 and sums.max() > 1.0
  different = ops.dot_product_attention(q, k, v, dropout_rate=0.25, dropout_rng=jax.random.key(8))
  assert not np.allclose(different, out1)


def test_implementation_selection():
  q, k, v = qkv(6)
  default = ops.dot_product_attention(q, k, v)
  np.testing.assert_array_equal(default, ops.dot_product_attention(q, k, v,
                                                                   implementation="reference"))
  assert "reference" in ops.IMPLEMENTATIONS


BAD_INPUTS = [
    ("rank", lambda q, k, v: (q[0, 0], k, v), {}, ValueError, r"query must have shape"),
    ("key rank", lambda q, k, v: (q, k[0], v), {}, ValueError, r"key has batch axes"),
    ("batch", lambda q, k, v: (q, k[:1], v[:1]), {}, ValueError, r"key has batch axes \(1,\)"),
    ("head_dim", lambda q, k, v: (q, k[..., :5], v), {}, ValueError,
     r"key has head_dim 5 but query has head_dim 8"),
    ("heads", lambda q, k, v: (q[..., :3, :], k, v), {}, ValueError,
     r"key has 2 heads but query has 3"),
    ("value length", lambda q, k, v: (q, k, v[:, :5]), {}, ValueError,
     r"value has length 5 but key has length 6"),
    ("value heads", lambda q, k, v: (q, k, v[..., :1, :]), {}, ValueError,
     r"value has 1 heads but key has 2"),
    ("dtype", lambda q, k, v: (q, k.astype(jnp.bfloat16), v), {}, TypeError,
     r"key has dtype bfloat16 but query has dtype float32"),
    ("int query", lambda q, k, v: (q.astype(jnp.int32), k, v), {}, TypeError,
     r"query must be a floating-point array"),
    ("mask broadcast", None, dict(mask=jnp.ones((5, 6), bool)), ValueError,
     r"mask of shape \(5, 6\) does not broadcast to \[batch..., heads, q_len, kv_len\] = "
     r"\(2, 4, 4, 6\)"),
    ("mask dtype", None, dict(mask=jnp.ones((4, 6), jnp.float32)), TypeError,
     r"mask must be a boolean array"),
    ("bias broadcast", None, dict(bias=jnp.ones((3, 4, 4, 6))), ValueError,
     r"bias of shape \(3, 4, 4, 6\) does not broadcast"),
    ("lengths shape", None, dict(key_value_seq_lengths=jnp.array([1, 2, 3])), ValueError,
     r"key_value_seq_lengths has shape \(3,\) but must have the batch shape \(2,\)"),
    ("lengths dtype", None, dict(query_seq_lengths=jnp.array([1.0, 2.0])), TypeError,
     r"query_seq_lengths must be integers"),
    ("dropout rng", None, dict(dropout_rate=0.1), ValueError,
     r"dropout_rate=0.1 needs a dropout_rng"),
    ("dropout rate", None, dict(dropout_rate=1.0, dropout_rng=jax.random.key(0)), ValueError,
     r"dropout_rate must be in \[0, 1\)"),
    ("implementation", None, dict(implementation="fastest"), ValueError,
     r"implementation must be one of \['cpu_flash', 'cudnn', 'flash', 'pallas_gpu', 'reference', "
     r"'splash', 'xla'\] or None, "
     r"got 'fastest'"),
]


@pytest.mark.parametrize("name,transform,kwargs,error,match", BAD_INPUTS,
                         ids=[c[0] for c in BAD_INPUTS])
def test_bad_inputs_raise_clear_errors_at_trace_time(name, transform, kwargs, error, match):
  q, k, v = qkv(7)
  args = transform(q, k, v) if transform else (q, k, v)
  with pytest.raises(error, match=match):
    ops.dot_product_attention(*args, **kwargs)
  # Under jit the same error fires while tracing, before any compute.
  with pytest.raises(error, match=match):
    jax.jit(lambda *a: ops.dot_product_attention(*a, **kwargs))(*args)
