"""Every implementation of ops.dot_product_attention against the reference path: values and
gradients, masks, bias, causal (q_len != kv_len too), lengths, GQA, bf16, fully masked rows."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from attention_jax import ops
from attention_jax.ops import blockwise
from attention_jax.ops import cpu_flash

# (batch axes, q_len, kv_len, heads, kv_heads, head_dim, v_dim, block_sizes)
CASES = [
    ((2,), 37, 53, 4, 2, 16, 16, (16, 16)),
    ((2,), 53, 37, 4, 4, 16, 8, (16, 8)),
    ((1, 2), 24, 24, 6, 1, 8, 8, (8, 16)),
    ((3,), 1, 29, 4, 2, 8, 8, (8, 8)),
    ((), 19, 40, 2, 2, 8, 8, None),
]
CASE_IDS = ["gqa-short-q", "long-q-vdim", "mqa-multi-batch", "decode-step", "no-batch-default"]


def make_inputs(seed, batch, q_len, kv_len, heads, kv_heads, head_dim, v_dim, dtype=jnp.float32):
  rng = np.random.default_rng(seed)
  q = rng.normal(size=(*batch, q_len, heads, head_dim))
  k = rng.normal(size=(*batch, kv_len, kv_heads, head_dim))
  v = rng.normal(size=(*batch, kv_len, kv_heads, v_dim))
  return tuple(jnp.asarray(a, dtype) for a in (q, k, v))


def extras(seed, batch, q_len, kv_len, heads, with_mask, with_bias, with_lengths):
  rng = np.random.default_rng(seed + 100)
  kwargs = {}
  if with_mask:
    kwargs["mask"] = jnp.asarray(rng.random((*batch, 1, q_len, kv_len)) < 0.6)
  if with_bias:
    kwargs["bias"] = jnp.asarray(rng.normal(size=(heads, q_len, kv_len)), jnp.float32)
  if with_lengths and batch:
    kwargs["key_value_seq_lengths"] = jnp.asarray(rng.integers(0, kv_len + 1, size=batch))
    kwargs["query_seq_lengths"] = jnp.asarray(rng.integers(0, q_len + 1, size=batch))
  return kwargs


def outputs_and_grads(implementation, q, k, v, kwargs, block_sizes=None):
  bias = kwargs.pop("bias", None)
  kwargs = dict(kwargs)

  def loss(q, k, v, bias):
    out = ops.dot_product_attention(q, k, v, bias, implementation=implementation,
                                    block_sizes=block_sizes, **kwargs)
    return jnp.sum(jnp.sin(out.astype(jnp.float32))), out

  argnums = (0, 1, 2) if bias is None else (0, 1, 2, 3)
  # One compiled program: op-by-op the blockwise loops cost seconds of dispatch and compiles.
  grads, out = jax.jit(jax.grad(loss, argnums=argnums, has_aux=True))(q, k, v, bias)
  return out, grads


def assert_matches_reference(q, k, v, kwargs, block_sizes, atol):
  ref_out, ref_grads = outputs_and_grads("reference", q, k, v, dict(kwargs))
  out, grads = outputs_and_grads("flash", q, k, v, dict(kwargs), block_sizes)
  assert out.dtype == q.dtype and out.shape == ref_out.shape
  for got, want in zip((out, *grads), (ref_out, *ref_grads)):
    assert got.dtype == want.dtype
    got, want = np.asarray(got, np.float32), np.asarray(want, np.float32)
    assert np.all(np.isfinite(got))
    np.testing.assert_allclose(got, want, atol=atol, rtol=atol)
  return out, grads


# The default run covers each case once (alternating causal); the slow run the full product.
FAST = [(case, i % 2 == 0) for i, case in enumerate(CASES)]
ALL = [pytest.param(case, causal, marks=pytest.mark.slow) for case in CASES
       for causal in (False, True) if (case, causal) not in FAST]


@pytest.mark.parametrize("case,is_causal", FAST + ALL)
def test_flash_matches_reference(case, is_causal):
  *shape, block_sizes = case
  q, k, v = make_inputs(0, *shape)
  kwargs = dict(is_causal=is_causal)
  assert_matches_reference(q, k, v, kwargs, block_sizes, atol=2e-5)


@pytest.mark.parametrize("case,is_causal", [
    (CASES[0], True), pytest.param(CASES[0], False, marks=pytest.mark.slow),
    pytest.param(CASES[1], True, marks=pytest.mark.slow), (CASES[2], False)])
def test_flash_masks_bias_lengths(case, is_causal):
  *shape, block_sizes = case
  batch, q_len, kv_len, heads = shape[:4]
  q, k, v = make_inputs(1, *shape)
  kwargs = extras(1, batch, q_len, kv_len, heads, True, True, True)
  assert_matches_reference(q, k, v, dict(kwargs, is_causal=is_causal), block_sizes, atol=2e-5)


def test_flash_bf16_statistics_in_float32():
  q, k, v = make_inputs(2, (2,), 40, 56, 4, 2, 16, 16, dtype=jnp.bfloat16)
  kwargs = extras(2, (2,), 40, 56, 4, False, False, True)
  assert_matches_reference(q, k, v, dict(kwargs, is_causal=True), (16, 16), atol=3e-2)


def test_flash_fully_masked_rows_zero_output_and_grads():
  q, k, v = make_inputs(3, (2,), 12, 20, 2, 2, 8, 8)
  mask = jnp.ones((2, 2, 12, 20), bool).at[0, :, 3].set(False).at[1, 1, :5].set(False)
  key_value_seq_lengths = jnp.array([20, 0])  # the second example has no keys at all
  kwargs = dict(mask=mask, key_value_seq_lengths=key_value_seq_lengths)
  out, (dq, dk, dv) = assert_matches_reference(q, k, v, kwargs, (8, 8), atol=2e-5)
  for x in (out, dq, dk, dv):
    assert np.all(np.isfinite(np.asarray(x)))
  np.testing.assert_array_equal(out[0, 3], 0.0)
  np.testing.assert_array_equal(out[1], 0.0)
  np.testing.assert_array_equal(dq[0, 3], 0.0)
  np.testing.assert_array_equal(dq[1], 0.0)
  np.testing.assert_array_equal(dk[1], 0.0)


def test_causal_with_more_queries_than_keys_masks_leading_rows():
  # Bottom-right alignment: with q_len > kv_len the first q_len - kv_len queries see no key.
  q, k, v = make_inputs(4, (1,), 20, 8, 2, 2, 8, 8)
  out, _ = assert_matches_reference(q, k, v, dict(is_causal=True), (8, 8), atol=2e-5)
  np.testing.assert_array_equal(out[0, :12], 0.0)


def test_flash_scale_and_jit_vmap():
  q, k, v = make_inputs(5, (3,), 16, 24, 2, 1, 8, 8)
  want = ops.dot_product_attention(q, k, v, scale=0.3, implementation="reference")
  fn = jax.jit(jax.vmap(lambda q, k, v: ops.dot_product_attention(
      q, k, v, scale=0.3, implementation="flash", block_sizes=(8, 8))))
  np.testing.assert_allclose(fn(q, k, v), want, atol=2e-6)


def test_default_picks_flash_for_long_inputs_and_reference_for_weights():
  """Long inputs take a linear-memory path: the native kernel where it was built, else ours in
  pure JAX; weights and dropout take the reference."""
  q, k, v = make_inputs(6, (1,), 512, 512, 1, 1, 8, 8)
  linear = "cpu_flash" if cpu_flash.available() else "flash"
  want = ops.dot_product_attention(q, k, v, is_causal=True, implementation=linear)
  np.testing.assert_array_equal(ops.dot_product_attention(q, k, v, is_causal=True), want)
  out, weights = ops.dot_product_attention(q, k, v, is_causal=True, return_weights=True)
  np.testing.assert_allclose(out, want, atol=2e-6)
  assert weights.shape == (1, 1, 512, 512)
  dropped = ops.dot_product_attention(q, k, v, dropout_rate=0.5, dropout_rng=jax.random.key(0))
  assert dropped.shape == q.shape


@pytest.mark.parametrize("implementation,kwargs,match", [
    ("flash", dict(dropout_rate=0.1, dropout_rng=jax.random.key(0)),
     r"implementation='flash' does not support dropout"),
    ("flash", dict(return_weights=True), r"implementation='flash' cannot return the attention"),
    ("flash", dict(block_sizes=(0, 8)), r"block_sizes must be positive, got \(0, 8\)"),
    ("cudnn", {}, r"implementation='cudnn' needs a GPU"),
])
def test_unsupported_combinations_name_the_implementation(implementation, kwargs, match):
  q, k, v = make_inputs(7, (1,), 8, 8, 2, 2, 8, 8)
  if implementation == "cudnn" and jax.default_backend() == "gpu":
    kwargs = dict(mask=jnp.ones((8, 8), bool))
  with pytest.raises(ValueError, match=match):
    ops.dot_product_attention(q, k, v, implementation=implementation, **kwargs)


@pytest.mark.parametrize("platform,batch_heads", [("cpu", 1), ("cpu", 32), ("gpu", 32)])
def test_default_block_sizes_cover_the_length(platform, batch_heads):
  for length in (1, 7, 100, 513, 1000, 4096, 5000, 65536):
    blocks = blockwise.default_block_sizes(length, length, platform, batch_heads=batch_heads)
    for block in blocks:
      assert block % 8 == 0 and block >= min(length, 8)
      assert -(-length // block) * block - length < block


def test_default_block_sizes_shrink_with_batch_and_heads():
  # One step's logits stay bounded: many heads get smaller blocks than a single one.
  one = blockwise.default_block_sizes(8192, 8192, "cpu", batch_heads=1)
  many = blockwise.default_block_sizes(8192, 8192, "cpu", batch_heads=32)
  assert one[0] * one[1] > many[0] * many[1]
  assert many[0] * many[1] * 32 <= 2**19


@pytest.mark.slow
@pytest.mark.parametrize("is_causal", [False, True])
def test_flash_long_sequence_default_blocks(is_causal):
  q, k, v = make_inputs(8, (1,), 700, 1100, 4, 2, 32, 32)
  kwargs = extras(8, (1,), 700, 1100, 4, False, False, True)
  assert_matches_reference(q, k, v, dict(kwargs, is_causal=is_causal), None, atol=5e-5)
