"""ops.dot_product_attention lowers for GPU and TPU without either: jax.export with
platforms=["cuda"] / ["tpu"] for every kind of masking, forward and gradient, and the fused kernel
each platform's dispatch picks shows as its custom call in the lowered program.

What lowers to what, from this CPU host, traced within accelerators.lowering_platforms (the
dispatch table of docs/performance.md):
  tpu:  splash attention (Mosaic ``tpu_custom_call``) for none, causal, segments, window,
        soft-cap; a dense mask or lengths take the pure-JAX paths (no custom call).
  cuda: from the flash thresholds on (1024^2 logits, 256^2 causal), JAX's Pallas GPU kernel
        (Triton, ``__gpu$xla.gpu.triton``) for none, causal and segments; a dense mask, lengths,
        window or soft-cap take the pure-JAX paths. bf16/fp16 none/causal would take cuDNN
        (``__cudnn$fmha...``), but jax.nn's cuDNN path asks the installed cuDNN for its version
        while tracing, so from a host without one those keep the CPU branch's path. Short
        sequences: the reference (no custom call).
"""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import export

from attention_jax import ops
from attention_jax.ops import accelerators
from attention_jax.ops import attention

B, L, H, KH, D = 2, 128, 4, 2, 64
# kind: (static keyword arguments, array keyword arguments as (name, shape, dtype), splash?)
KINDS = {
    "none": ({}, (), True),
    "causal": (dict(is_causal=True), (), True),
    "mask": ({}, (("mask", (B, 1, L, L), jnp.bool_),), False),
    "kv_lengths": ({}, (("key_value_seq_lengths", (B,), jnp.int32),), True),  # as splash segment ids
    "segments": ({}, (("query_segment_ids", (B, L), jnp.int32),), True),
    "window": (dict(is_causal=True, local_window_size=(32, 0)), (), True),
    "softcap": (dict(softcap=20.0), (), True),
}


def custom_calls(mlir_text: str) -> set[str]:
  return set(re.findall(r"custom_call @([\w$.-]+)", mlir_text))


def exported(kind: str, platform: str, gradient: bool, dtype=jnp.float32, length: int = L):
  static, arrays, _ = KINDS[kind]
  specs = [jax.ShapeDtypeStruct((B, length, H, D), dtype),
           jax.ShapeDtypeStruct((B, length, KH, D), dtype),
           jax.ShapeDtypeStruct((B, length, KH, D), dtype)]
  specs += [jax.ShapeDtypeStruct(tuple(length if s == L else s for s in shape), dt)
            for _, shape, dt in arrays]
  names = [name for name, _, _ in arrays]

  def forward(q, k, v, *extra):
    return ops.dot_product_attention(q, k, v, **static, **dict(zip(names, extra)))

  def gradient_fn(q, k, v, *extra):
    loss = lambda q, k, v: forward(q, k, v, *extra).astype(jnp.float32).sum()
    return jax.grad(loss, argnums=(0, 1, 2))(q, k, v)

  fn = gradient_fn if gradient else forward
  with accelerators.lowering_platforms(platform):
    return export.export(jax.jit(fn), platforms=[platform],
                         disabled_checks=accelerators.export_disabled_checks())(*specs)


@pytest.mark.parametrize("gradient", [False, True], ids=["fwd", "grad"])
@pytest.mark.parametrize("kind", list(KINDS))
def test_tpu_lowering_uses_splash_where_it_applies(kind, gradient):
  exp = exported(kind, "tpu", gradient)
  assert exp.platforms == ("tpu",)
  calls = custom_calls(exp.mlir_module())
  if KINDS[kind][2]:
    assert "tpu_custom_call" in calls, calls
  else:
    assert "tpu_custom_call" not in calls, calls


@pytest.mark.parametrize("gradient", [False, True], ids=["fwd", "grad"])
@pytest.mark.parametrize("kind", list(KINDS))
def test_cuda_lowering(kind, gradient):
  exp = exported(kind, "cuda", gradient, dtype=jnp.bfloat16)
  assert exp.platforms == ("cuda",)
  calls = custom_calls(exp.mlir_module())
  if attention._cudnn_traceable() and kind in ("none", "causal"):
    assert any(c.startswith("__cudnn$fmha") for c in calls), calls
  else:
    # No fused GPU kernel is reachable from a host without cuDNN; nor a TPU kernel, ever.
    assert not calls, calls


@pytest.mark.parametrize("kind", list(KINDS))
def test_cuda_lowering_of_long_float32_sequences(kind):
  exp = exported(kind, "cuda", gradient=True, dtype=jnp.float32, length=1024)
  calls = custom_calls(exp.mlir_module())
  if kind in ("none", "causal", "segments"):
    assert calls == {accelerators.TRITON_CALL}, calls
  else:
    assert not calls, calls


def test_tpu_lowering_of_bf16_and_unsupported_lengths():
  assert "tpu_custom_call" in custom_calls(
      exported("causal", "tpu", True, dtype=jnp.bfloat16).mlir_module())
  # Splash tiles by 128: other lengths take the pure-JAX paths.
  assert not custom_calls(exported("causal", "tpu", False, length=96).mlir_module())


@pytest.mark.parametrize("kind", ["none", "causal", "segments", "window"])
def test_cpu_program_is_unchanged_by_the_accelerator_branches(kind, monkeypatch):
  """The CPU compilation keeps only the CPU branch: no conditional, no kernel call, and the same
  values as with the splash branch never traced."""
  static, arrays, _ = KINDS[kind]
  rng = np.random.default_rng(0)
  q = jnp.asarray(rng.normal(size=(B, L, H, D)), jnp.float32)
  k, v = (jnp.asarray(rng.normal(size=(B, L, KH, D)), jnp.float32) for _ in range(2))
  extra = {name: jnp.asarray(np.arange(L) >= L // 3, jnp.int32)[None].repeat(B, 0)
           for name, _, _ in arrays}

  def grads(q, k, v):
    loss = lambda q, k, v: ops.dot_product_attention(q, k, v, **static, **extra).sum()
    return jax.value_and_grad(loss, argnums=(0, 1, 2))(q, k, v)

  with accelerators.lowering_platforms("tpu"):
    compiled = jax.jit(grads).lower(q, k, v).compile()
  text = compiled.as_text()
  assert "conditional" not in text and "tpu_custom_call" not in text
  with_branch = compiled(q, k, v)
  monkeypatch.setattr(attention.accelerators, "splash_supports", lambda *args: False)
  without_branch = jax.jit(grads)(q, k, v)
  for got, want in zip(jax.tree.leaves(with_branch), jax.tree.leaves(without_branch)):
    np.testing.assert_array_equal(got, want)


def test_tpu_branch_only_within_lowering_platforms():
  """Outside the block the default path has no TPU branch, so second-order derivatives (which no
  Pallas kernel has) keep working under jit on the CPU; within it a TPU export carries splash."""
  spec = jax.ShapeDtypeStruct((1, L, 2, 16), jnp.float32)
  loss = lambda q: ops.dot_product_attention(q, q, q, is_causal=True).sum()
  second_order = jax.jit(jax.grad(lambda q: jax.grad(loss)(q).sum()))
  assert second_order(jnp.ones(spec.shape)).shape == spec.shape
  assert "tpu_custom_call" not in custom_calls(
      export.export(jax.jit(loss), platforms=["tpu"])(spec).mlir_module())
  with accelerators.lowering_platforms("tpu"):
    # A new function: jit's cache would hand back the trace made outside the block.
    assert "tpu_custom_call" in custom_calls(
        export.export(jax.jit(lambda q: loss(q)), platforms=["tpu"])(spec).mlir_module())
