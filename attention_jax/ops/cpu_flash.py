"""The native CPU flash-attention kernel (``ops/cpu_kernels/flash_attention.cc``) behind
:func:`attention_jax.ops.dot_product_attention` (``implementation="cpu_flash"``, and the default
path on CPU where it applies).

The C++ kernel is compiled when the package is installed (``setup.py``: an optional extension,
``-O3 -march=native``, AVX2/FMA micro-kernels where the CPU has them) and called through the XLA
FFI (``jax.ffi.ffi_call``); a ``custom_vjp`` pairs its forward with its backward. Without a
compiler at install time the extension is simply absent: :func:`available` is ``False``, the
default path stays the pure-JAX one (:mod:`attention_jax.ops.blockwise`) and an explicit
``implementation="cpu_flash"`` raises a one-line error saying why.

Semantics are the blockwise path's (bottom-right causal/window band, segment ids, query and key
lengths, soft-cap, GQA, ``v_dim != head_dim``; a query that sees no key gets zero output and
gradients), in float32 only. Second derivatives (``grad`` of ``grad``, Hessians) go through the
pure-JAX blockwise backward: the kernel's backward has a ``custom_jvp`` whose rule
differentiates that backward, so they are exact, just not fast.
"""

from __future__ import annotations

import ctypes
import functools
import importlib.machinery
import math
import os
import pathlib

import jax
import jax.numpy as jnp
import numpy as np

from attention_jax.ops.spec import AttentionSpec

Array = jax.Array
_LIBRARY_STEM = "_flash_attention_cpu"
_FORWARD = "attention_jax_cpu_flash_forward"
_BACKWARD = "attention_jax_cpu_flash_backward"
_LOWEST = float(np.finfo(np.float32).min)


LIBRARY_ENV = "ATTENTION_JAX_CPU_FLASH_LIBRARY"


def _find_library() -> pathlib.Path | None:
  """The kernel built beside this module, or the file ``$ATTENTION_JAX_CPU_FLASH_LIBRARY`` names
  (a build with other flags: ``ATTENTION_JAX_KERNEL_FLAGS`` in setup.py)."""
  if os.environ.get(LIBRARY_ENV):
    return pathlib.Path(os.environ[LIBRARY_ENV])
  here = pathlib.Path(__file__).parent
  for suffix in importlib.machinery.EXTENSION_SUFFIXES:
    candidate = here / f"{_LIBRARY_STEM}{suffix}"
    if candidate.exists():
      return candidate
  return None


@functools.cache
def _load() -> str | None:
  """Registers the FFI targets; ``None`` on success, else why the kernel is unavailable."""
  path = _find_library()
  if path is None:
    return ("the native CPU kernel was not built (no C++ compiler when the package was "
            "installed?); reinstall with one: pip install -e .")
  try:
    library = ctypes.cdll.LoadLibrary(str(path))
    for name, symbol in ((_FORWARD, "AttentionJaxFlashForward"),
                         (_BACKWARD, "AttentionJaxFlashBackward")):
      jax.ffi.register_ffi_target(name, jax.ffi.pycapsule(getattr(library, symbol)),
                                  platform="cpu")
  except (OSError, AttributeError) as e:  # a stale or foreign build
    return f"the native CPU kernel at {path} could not be loaded ({e}); reinstall: pip install -e ."
  return None


def available() -> bool:
  """Whether the native kernel is built and registered."""
  return _load() is None


def unavailable_reason() -> str | None:
  return _load()


def supports(query, key, value, bias, mask, segment_ids, lengths, spec: AttentionSpec) -> bool:
  """Whether the kernel computes this call: float32, no bias, no dense mask, no dropout."""
  del segment_ids, lengths  # both supported
  return (query.dtype == jnp.float32 and key.dtype == jnp.float32
          and value.dtype == jnp.float32 and bias is None and mask is None
          and spec.dropout_rate == 0.0 and query.shape[-3] > 0 and available())


def _attrs(spec: AttentionSpec) -> tuple:
  left, right = spec.band
  return (spec.scale, spec.softcap or 0.0, -1 if left is None else left,
          -1 if right is None else right)


def _call_attrs(attrs):
  scale, softcap, left, right = attrs
  return dict(scale=np.float32(scale), softcap=np.float32(softcap), left=np.int64(left),
              right=np.int64(right))


def _forward_call(attrs, q, k, v, q_seg, kv_seg, q_lens, kv_lens):
  *batch, q_len, heads, _ = q.shape
  out_types = (jax.ShapeDtypeStruct((*batch, q_len, heads, v.shape[-1]), jnp.float32),
               jax.ShapeDtypeStruct((*batch, heads, q_len), jnp.float32))
  return jax.ffi.ffi_call(_FORWARD, out_types, vmap_method="broadcast_all")(
      q, k, v, q_seg, kv_seg, q_lens, kv_lens, **_call_attrs(attrs))


def _backward_call(attrs, q, k, v, out, lse, d_out, q_seg, kv_seg, q_lens, kv_lens):
  out_types = tuple(jax.ShapeDtypeStruct(x.shape, jnp.float32) for x in (q, k, v))
  return jax.ffi.ffi_call(_BACKWARD, out_types, vmap_method="broadcast_all")(
      q, k, v, out, lse, d_out, q_seg, kv_seg, q_lens, kv_lens, **_call_attrs(attrs))


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _attention(attrs, q, k, v, q_seg, kv_seg, q_lens, kv_lens):
  return _forward(attrs, q, k, v, q_seg, kv_seg, q_lens, kv_lens)


def _attention_fwd(attrs, q, k, v, q_seg, kv_seg, q_lens, kv_lens):
  out, lse = _forward(attrs, q, k, v, q_seg, kv_seg, q_lens, kv_lens)
  return (out, lse), (q, k, v, out, lse, q_seg, kv_seg, q_lens, kv_lens)


def _attention_bwd(attrs, residuals, cotangents):
  q, k, v, out, lse, q_seg, kv_seg, q_lens, kv_lens = residuals
  d_out, _ = cotangents  # the log-sum-exp leaves the op without gradient
  dq, dk, dv = _backward(attrs, q, k, v, out, lse, d_out, q_seg, kv_seg, q_lens, kv_lens)
  return dq, dk, dv, None, None, None, None


_attention.defvjp(_attention_fwd, _attention_bwd)


# Second derivatives differentiate the kernel's forward and backward calls once more; their
# custom_jvp rules are the derivatives of the reference path's output and gradient (equal to the
# kernel's as functions of q, k, v, d_out: ``out`` and ``lse`` follow from q, k, v).


@functools.partial(jax.custom_jvp, nondiff_argnums=(0,))
def _forward(attrs, q, k, v, q_seg, kv_seg, q_lens, kv_lens):
  return _forward_call(attrs, q, k, v, q_seg, kv_seg, q_lens, kv_lens)


@_forward.defjvp
def _forward_jvp(attrs, primals, tangents):
  q, k, v, q_seg, kv_seg, q_lens, kv_lens = primals
  out, lse = _forward_call(attrs, *primals)
  reference = functools.partial(_reference, attrs, q_seg=q_seg, kv_seg=kv_seg, q_lens=q_lens,
                                kv_lens=kv_lens)
  _, t_out = jax.jvp(reference, (q, k, v), tuple(tangents[:3]))
  return (out, lse), (t_out, jnp.zeros_like(lse))  # lse leaves the op without gradient


@functools.partial(jax.custom_jvp, nondiff_argnums=(0,))
def _backward(attrs, q, k, v, out, lse, d_out, q_seg, kv_seg, q_lens, kv_lens):
  return _backward_call(attrs, q, k, v, out, lse, d_out, q_seg, kv_seg, q_lens, kv_lens)


@_backward.defjvp
def _backward_jvp(attrs, primals, tangents):
  q, k, v, out, lse, d_out, q_seg, kv_seg, q_lens, kv_lens = primals
  tq, tk, tv, _, _, t_d_out = tangents[:6]
  gradient_out = _backward_call(attrs, *primals)
  reference = functools.partial(_reference, attrs, q_seg=q_seg, kv_seg=kv_seg, q_lens=q_lens,
                                kv_lens=kv_lens)

  def gradient(q, k, v, d_out):
    return jax.vjp(reference, q, k, v)[1](d_out)

  _, t_gradient = jax.jvp(gradient, (q, k, v, d_out), (tq, tk, tv, t_d_out))
  return gradient_out, t_gradient


def _reference(attrs, q, k, v, *, q_seg, kv_seg, q_lens, kv_lens):
  """The kernel's output from the pure-JAX materialising path (for second derivatives)."""
  from attention_jax.ops import attention  # a cycle at import time otherwise
  scale, softcap, left, right = attrs
  q_len, kv_len = q.shape[-3], k.shape[-3]
  band = (None if left < 0 else left, None if right < 0 else right)
  segment_ids = (q_seg, kv_seg) if q_seg.shape[-1] == q_len and q_len else None
  return attention.dot_product_attention(
      q, k, v, scale=scale, softcap=softcap or None, local_window_size=band,
      query_seq_lengths=q_lens, key_value_seq_lengths=kv_lens,
      query_segment_ids=None if segment_ids is None else q_seg,
      key_value_segment_ids=None if segment_ids is None else kv_seg,
      implementation="reference")


def flash_attention(query, key, value, segment_ids, lengths,
                    spec: AttentionSpec) -> tuple[Array, Array]:
  """The native kernel on ``[batch..., len, heads, dim]`` inputs.

  Args:
    query: float32 ``[batch..., q_len, heads, head_dim]``.
    key: float32 ``[batch..., kv_len, kv_heads, head_dim]``.
    value: float32 ``[batch..., kv_len, kv_heads, v_dim]``.
    segment_ids: ``(query_segment_ids [batch..., q_len], key_value_segment_ids [batch...,
      kv_len])`` or ``None``.
    lengths: ``(query_seq_lengths, key_value_seq_lengths)``, each int ``[batch...]`` or ``None``.
    spec: the call's options (scale, causal/window band, soft-cap).

  Returns:
    ``(out [batch..., q_len, heads, v_dim]`` float32, ``lse [batch..., heads, q_len]`` float32
    without gradient, the float32 lowest where a query sees no key).
  """
  reason = _load()
  if reason is not None:
    raise ValueError(f"implementation='cpu_flash' is unavailable: {reason}")
  *batch, q_len, heads, head_dim = query.shape
  kv_len, kv_heads = key.shape[-3], key.shape[-2]
  nb = math.prod(batch)
  q = query.reshape(nb, q_len, heads, head_dim)
  k = key.reshape(nb, kv_len, kv_heads, head_dim)
  v = value.reshape(nb, kv_len, kv_heads, value.shape[-1])
  if segment_ids is None:
    q_seg = kv_seg = jnp.zeros((nb, 0), jnp.int32)
  else:
    q_seg = jnp.broadcast_to(jnp.asarray(segment_ids[0], jnp.int32), (*batch, q_len))
    kv_seg = jnp.broadcast_to(jnp.asarray(segment_ids[1], jnp.int32), (*batch, kv_len))
    q_seg, kv_seg = q_seg.reshape(nb, q_len), kv_seg.reshape(nb, kv_len)

  def length(x, full):
    if x is None:
      return jnp.full((nb,), full, jnp.int32)
    x = jnp.broadcast_to(jnp.asarray(x), tuple(batch)).reshape(nb)
    return jnp.clip(x, 0, full).astype(jnp.int32)

  q_lens, kv_lens = length(lengths[0], q_len), length(lengths[1], kv_len)
  out, lse = _attention(_attrs(spec), q, k, v, q_seg, kv_seg, q_lens, kv_lens)
  out = out.reshape(*batch, q_len, heads, value.shape[-1])
  return out, jax.lax.stop_gradient(lse.reshape(*batch, heads, q_len))
