"""TPU splash attention (ops/accelerators.py) in Pallas interpret mode on the CPU: values against
the float64 NumPy reference, gradients against our reference path; queries that see no key give
zeros and zero gradients; what the dispatch hands to splash and what it refuses."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import reference_numpy
from attention_jax import ops
from attention_jax.ops import accelerators
from attention_jax.ops import spec as spec_lib

D = 32


def inputs(seed, q_len, kv_len, heads, kv_heads, batch=(1,)):
  return reference_numpy.random_qkv(seed, q_len, kv_len, heads, kv_heads, D, batch)


def splash(q, k, v, segment_ids=None, **kwargs):
  spec = spec_lib.make_spec(scale=kwargs.get("scale"), head_dim=q.shape[-1],
                            is_causal=kwargs.get("is_causal", False),
                            local_window_size=kwargs.get("local_window_size"),
                            softcap=kwargs.get("softcap"))
  return accelerators.splash_attention(q, k, v, spec=spec, segment_ids=segment_ids,
                                       interpret=True)


def check(q, k, v, segments=None, **kwargs):
  """Values against float64 NumPy, gradients against the reference path."""
  seg_kwargs = {} if segments is None else dict(query_segment_ids=segments[0],
                                                key_value_segment_ids=segments[1])
  segment_ids = None if segments is None else tuple(jnp.asarray(s) for s in segments)
  want, _ = reference_numpy.attention(q, k, v, **kwargs, **seg_kwargs)
  out, vjp = jax.vjp(lambda q, k, v: splash(q, k, v, segment_ids, **kwargs), q, k, v)
  np.testing.assert_allclose(out, want, atol=2e-6, rtol=2e-6)
  cotangent = jnp.asarray(np.random.default_rng(1).normal(size=want.shape), jnp.float32)
  got_grads = vjp(cotangent)
  want_grads = jax.vjp(lambda q, k, v: ops.dot_product_attention(
      q, k, v, implementation="reference", **kwargs, **seg_kwargs), q, k, v)[1](cotangent)
  for name, got, expected in zip("qkv", got_grads, want_grads):
    np.testing.assert_allclose(got, expected, atol=2e-5, rtol=2e-5, err_msg=f"d{name}")
  return out, got_grads


def test_causal_gqa_values_and_gradients():
  check(*inputs(0, 128, 128, heads=2, kv_heads=1), is_causal=True)


def test_empty_rows_are_zero_with_zero_gradients():
  """Splash gives a query that sees no key the mean of the values; ours is zero."""
  q, k, v = inputs(2, 128, 128, heads=1, kv_heads=1)
  segments = (np.where(np.arange(128) < 60, 0, 1)[None], np.where(np.arange(128) < 100, 0, 2)[None])
  out, (dq, _, _) = check(q, k, v, segments, softcap=5.0)
  assert np.all(np.asarray(out)[0, 60:] == 0) and np.all(np.asarray(dq)[0, 60:] == 0)
  assert np.all(np.abs(np.asarray(out)[0, :60]).sum(-1) > 0)


@pytest.mark.slow
@pytest.mark.parametrize("q_len,kv_len,heads,kv_heads,kwargs", [
    (128, 256, 2, 2, dict(is_causal=True)),  # bottom-right: the queries are the last keys
    (256, 128, 2, 1, dict(is_causal=True)),  # the first 128 queries see no key
    (128, 128, 4, 1, dict(local_window_size=(16, 4))),
    (128, 128, 2, 2, dict(is_causal=True, local_window_size=(8, 8), softcap=2.0, scale=0.3)),
    (128, 128, 2, 2, {}),
], ids=["causal-longer-kv", "causal-longer-q", "mqa-window", "window-softcap-scale", "full"])
def test_values_and_gradients(q_len, kv_len, heads, kv_heads, kwargs):
  check(*inputs(3, q_len, kv_len, heads, kv_heads, batch=(2,)), **kwargs)


@pytest.mark.slow
def test_packed_self_attention_with_two_batch_axes():
  q, k, v = inputs(4, 128, 128, heads=2, kv_heads=2, batch=(2, 1))
  ids = np.repeat(np.arange(128)[None, None] // 50, 2, axis=0)
  check(q, k, v, (ids, ids), is_causal=True)


def test_lengths_become_segment_ids_with_packed_segments_too():
  """Query and key lengths (padded batches) run in splash as segment ids: padded keys are
  unseen, padded queries and a row with no key get zeros; values against float64 NumPy,
  gradients against the reference path, through the public function."""
  q, k, v = inputs(8, 128, 256, heads=2, kv_heads=1, batch=(2,))
  ids_q = np.stack([np.arange(128) // 70, np.zeros(128, int)])
  ids_kv = np.stack([np.arange(256) // 100, np.zeros(256, int)])
  kwargs = dict(is_causal=True, query_seq_lengths=jnp.array([100, 128]),
                key_value_seq_lengths=jnp.array([200, 0]),
                query_segment_ids=jnp.asarray(ids_q), key_value_segment_ids=jnp.asarray(ids_kv))
  want, _ = reference_numpy.attention(q, k, v, **kwargs)
  f = lambda implementation: lambda q, k, v: ops.dot_product_attention(  # noqa: E731
      q, k, v, implementation=implementation, **kwargs)
  out, vjp = jax.vjp(f("splash"), q, k, v)
  np.testing.assert_allclose(out, want, atol=2e-6, rtol=2e-6)
  assert np.all(np.asarray(out)[0, 100:] == 0) and np.all(np.asarray(out)[1] == 0)
  cotangent = jnp.asarray(np.random.default_rng(2).normal(size=want.shape), jnp.float32)
  want_grads = jax.vjp(f("reference"), q, k, v)[1](cotangent)
  for name, got, expected in zip("qkv", vjp(cotangent), want_grads):
    np.testing.assert_allclose(got, expected, atol=2e-5, rtol=2e-5, err_msg=f"d{name}")


@pytest.mark.parametrize("v_dim", [8, 48], ids=["narrow-values", "wide-values"])
def test_value_size_other_than_head_size(v_dim):
  """SAGAN-style layers (queries/keys of C/8 features, values of C): padded with zeros inside."""
  q, k, v = inputs(8, 128, 128, heads=2, kv_heads=1)
  v = jnp.concatenate([v, v], axis=-1)[..., :v_dim]
  out, _ = check(q, k, v, is_causal=True)
  assert out.shape == (1, 128, 2, v_dim)


def test_public_api_explicit_splash_matches_reference():
  q, k, v = inputs(5, 128, 128, heads=2, kv_heads=1)
  np.testing.assert_allclose(
      ops.dot_product_attention(q, k, v, is_causal=True, implementation="splash"),
      ops.dot_product_attention(q, k, v, is_causal=True, implementation="reference"),
      atol=2e-6, rtol=2e-6)


@pytest.mark.parametrize("change,kwargs", [
    ("length", {}), ("float16", {}),
    (None, dict(mask=jnp.ones((128, 128), bool))), (None, dict(bias=jnp.zeros((128, 128)))),
    (None, dict(return_residual=True)),
])
def test_unsupported_arguments_are_refused_by_name(change, kwargs):
  q, k, v = inputs(6, 128, 128, heads=2, kv_heads=2)
  if change == "length":
    q, k, v = (x[:, :96] for x in (q, k, v))
  elif change == "float16":
    q, k, v = (x.astype(jnp.float16) for x in (q, k, v))
  with pytest.raises(ValueError, match=r"implementation='splash'"):
    ops.dot_product_attention(q, k, v, implementation="splash", **kwargs)


def test_supports_is_what_the_dispatch_needs():
  q, k, v = inputs(7, 128, 256, heads=4, kv_heads=2)
  spec = spec_lib.make_spec(scale=None, head_dim=D, is_causal=True)
  args = (q, k, v, None, None, None, (None, None), spec)
  assert accelerators.splash_supports(*args)
  assert accelerators.splash_supports(q, k, v, None, None, None, (None, jnp.array([3])), spec)
  assert not accelerators.splash_supports(q, k, v, None, jnp.ones((128, 256), bool), None,
                                          (None, None), spec)
  dropout = spec_lib.make_spec(scale=None, head_dim=D, dropout_rate=0.1)
  assert not accelerators.splash_supports(q, k, v, None, None, None, (None, None), dropout)
