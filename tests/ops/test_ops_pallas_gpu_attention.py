"""JAX's Pallas GPU flash kernel behind implementation='pallas_gpu' (ops/accelerators.py), in
Pallas interpret mode on the CPU: values against the float64 NumPy reference, gradients against
our reference path; what it refuses; its cuda lowering (a Triton custom call)."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import export

import reference_numpy
from attention_jax import ops
from attention_jax.ops import accelerators
from attention_jax.ops import attention
from attention_jax.ops import spec as spec_lib

L, D = 128, 32


def inputs(seed, heads, kv_heads, batch=(1,)):
  return reference_numpy.random_qkv(seed, L, L, heads, kv_heads, D, batch)


def check(q, k, v, ids=None, **kwargs):
  seg_kwargs = {} if ids is None else dict(query_segment_ids=ids)
  want, _ = reference_numpy.attention(q, k, v, **kwargs, **seg_kwargs)
  spec = spec_lib.make_spec(scale=kwargs.get("scale"), head_dim=D,
                            is_causal=kwargs.get("is_causal", False))
  segment_ids = None if ids is None else (jnp.asarray(ids),) * 2
  out, vjp = jax.vjp(lambda q, k, v: accelerators.pallas_gpu_attention(
      q, k, v, spec=spec, segment_ids=segment_ids, interpret=True), q, k, v)
  np.testing.assert_allclose(out, want, atol=2e-6, rtol=2e-6)
  cotangent = jnp.asarray(np.random.default_rng(1).normal(size=want.shape), jnp.float32)
  want_grads = jax.vjp(lambda q, k, v: ops.dot_product_attention(
      q, k, v, implementation="reference", **kwargs, **seg_kwargs), q, k, v)[1](cotangent)
  for name, got, expected in zip("qkv", vjp(cotangent), want_grads):
    np.testing.assert_allclose(got, expected, atol=2e-5, rtol=2e-5, err_msg=f"d{name}")


def test_causal_gqa_values_and_gradients():
  check(*inputs(0, heads=2, kv_heads=1), is_causal=True, scale=0.3)


@pytest.mark.slow
def test_packed_sequences_two_batch_axes():
  ids = np.repeat((np.arange(L) // 40)[None, None], 2, axis=0)
  check(*inputs(1, heads=2, kv_heads=2, batch=(2, 1)), ids)


@pytest.mark.parametrize("v_dim", [8, 48], ids=["narrow-values", "wide-values"])
def test_value_size_other_than_head_size(v_dim):
  q, k, v = inputs(7, heads=2, kv_heads=1)
  check(q, k, jnp.concatenate([v, v], axis=-1)[..., :v_dim], is_causal=True)


def test_public_api_explicit_pallas_gpu_matches_reference():
  q, k, v = inputs(2, heads=2, kv_heads=2)
  np.testing.assert_allclose(
      ops.dot_product_attention(q, k, v, implementation="pallas_gpu"),
      ops.dot_product_attention(q, k, v, implementation="reference"), atol=2e-6, rtol=2e-6)


@pytest.mark.parametrize("kwargs", [
    dict(local_window_size=8), dict(softcap=5.0), dict(mask=jnp.ones((L, L), bool)),
    dict(key_value_seq_lengths=jnp.array([100])), dict(return_residual=True),
    dict(query_segment_ids=jnp.zeros((1, L), jnp.int32),
         key_value_segment_ids=jnp.zeros((1, L), jnp.int32)),
], ids=["window", "softcap", "mask", "lengths", "residual", "two-segment-arrays"])
def test_unsupported_arguments_are_refused_by_name(kwargs):
  q, k, v = inputs(3, heads=2, kv_heads=2)
  with pytest.raises(ValueError, match=r"implementation='pallas_gpu'"):
    ops.dot_product_attention(q, k, v, implementation="pallas_gpu", **kwargs)


@pytest.mark.parametrize("gradient", [False, True], ids=["fwd", "grad"])
def test_cuda_lowering_is_a_triton_call(gradient):
  def forward(q, k, v):
    return ops.dot_product_attention(q, k, v, is_causal=True, implementation="pallas_gpu")

  def gradient_fn(q, k, v):
    return jax.grad(lambda *a: forward(*a).astype(jnp.float32).sum(), argnums=(0, 1, 2))(q, k, v)

  spec = jax.ShapeDtypeStruct((2, L, 4, 64), jnp.bfloat16)
  kv = jax.ShapeDtypeStruct((2, L, 2, 64), jnp.bfloat16)
  triton = "__gpu$xla.gpu.triton"
  # Triton calls carry no serialization compatibility guarantee: jax.export refuses them unless
  # told, so the default path does not pick this kernel yet.
  exp = export.export(jax.jit(gradient_fn if gradient else forward), platforms=["cuda"],
                      disabled_checks=[export.DisabledSafetyCheck.custom_call(triton)])(
                          spec, kv, kv)
  assert triton in set(re.findall(r"custom_call @([\w$.-]+)", exp.mlir_module()))


# The default path on a CUDA GPU, simulated on this CPU host: `_default_platform` is what
# dot_product_attention asks, and the kernel itself runs in interpret mode here.

def _dispatch(monkeypatch, platform, length, dtype=jnp.float32, **kwargs):
  monkeypatch.setattr(attention, "_default_platform", lambda: platform)
  q, k, v = (x.astype(dtype) for x in reference_numpy.random_qkv(4, length, length, 2, 1, D))
  spec = spec_lib.make_spec(scale=None, head_dim=D, is_causal=kwargs.get("is_causal", False),
                            local_window_size=kwargs.get("local_window_size"))
  ids = kwargs.get("query_segment_ids")
  return attention._choose_path(spec, q, k, v, None, None,
                                None if ids is None else (ids, ids), (None, None), False)


@pytest.mark.parametrize("platform, length, dtype, kwargs, path", [
    ("cuda", 256, jnp.float32, dict(is_causal=True), "pallas_gpu"),
    ("cuda", 1024, jnp.float32, dict(query_segment_ids=jnp.zeros((1, 1024), jnp.int32)),
     "pallas_gpu"),
    ("cuda", 256, jnp.bfloat16, dict(is_causal=True), "cudnn"),
    ("cuda", 128, jnp.float32, dict(is_causal=True), "reference"),  # short: XLA's fused reference
    ("cuda", 256, jnp.float32, dict(is_causal=True, local_window_size=(64, 0)), "flash"),
    ("rocm", 256, jnp.float32, dict(is_causal=True), "flash"),  # Triton-on-ROCm is not ours
    ("rocm", 256, jnp.bfloat16, dict(is_causal=True), "flash"),  # nor cuDNN
], ids=["fp32-causal", "fp32-segments", "bf16-cudnn", "short", "window", "rocm", "rocm-bf16"])
def test_default_path_on_a_gpu(monkeypatch, platform, length, dtype, kwargs, path):
  assert _dispatch(monkeypatch, platform, length, dtype, **kwargs) == path


def test_default_leaves_heads_too_large_for_the_kernels_tiles_to_the_blockwise_path(monkeypatch):
  monkeypatch.setattr(attention, "_default_platform", lambda: "cuda")
  spec = spec_lib.make_spec(scale=None, head_dim=128, is_causal=True)
  choose = lambda dtype, dim: attention._choose_path(  # noqa: E731
      spec, jnp.zeros((1, 256, 2, dim), dtype), jnp.zeros((1, 256, 2, dim), dtype),
      jnp.zeros((1, 256, 2, dim), dtype), None, None, None, (None, None), False)
  assert choose(jnp.float32, 64) == "pallas_gpu" and choose(jnp.float32, 128) == "flash"
  # 16-bit heads of 256 (cuDNN takes <= 128): too large for the tiles as well.
  assert choose(jnp.bfloat16, 256) == "flash"


def test_default_path_on_cuda_runs_the_pallas_kernel_with_our_values(monkeypatch):
  monkeypatch.setattr(attention, "_default_platform", lambda: "cuda")
  q, k, v = reference_numpy.random_qkv(5, 256, 256, 2, 1, D)
  fn = lambda q, k, v: ops.dot_product_attention(q, k, v, is_causal=True)  # noqa: E731
  assert "pallas_call" in str(jax.make_jaxpr(fn)(q, k, v))
  want, _ = reference_numpy.attention(q, k, v, is_causal=True)
  np.testing.assert_allclose(fn(q, k, v), want, atol=2e-6, rtol=2e-6)


def test_blockwise_on_an_accelerator_is_logged_once_per_kind_of_call(monkeypatch, caplog):
  monkeypatch.setattr(attention, "_default_platform", lambda: "cuda")
  monkeypatch.setattr(attention, "_BLOCKWISE_NOTED", set())
  q, k, v = reference_numpy.random_qkv(6, 256, 256, 2, 1, D)
  window = lambda q: ops.dot_product_attention(  # noqa: E731
      q, k, v, is_causal=True, local_window_size=(64, 0))
  with caplog.at_level("WARNING", logger=attention.__name__):
    jax.eval_shape(window, q)
    jax.eval_shape(window, q + 1)
    jax.eval_shape(lambda q: ops.dot_product_attention(q, k, v, is_causal=True), q)  # Pallas
  notes = [r.getMessage() for r in caplog.records]
  assert len(notes) == 1, notes
  assert notes[0].startswith("dot_product_attention on cuda: cuDNN or the Pallas GPU flash")
  assert "causal, local window" in notes[0] and "float32[1, 256, 2, 32]" in notes[0]
