"""Trace-time checks of attention arguments.

Every check runs in Python on static shapes and dtypes, so under ``jit`` it fires while tracing,
before any compute, with a message that names the argument, its shape and what was expected.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

LAYOUT = "[batch..., length, heads, head_dim]"


def shape_of(x: Any) -> tuple[int, ...]:
  return tuple(jnp.shape(x))


def dtype_of(x: Any):
  return jnp.result_type(x)


def require_floating(name: str, x: Any) -> None:
  if not jnp.issubdtype(dtype_of(x), jnp.floating):
    raise TypeError(f"{name} must be a floating-point array, got dtype {dtype_of(x)}")


def require_bool(name: str, x: Any) -> None:
  if dtype_of(x) != jnp.bool_:
    raise TypeError(
        f"{name} must be a boolean array (True = may attend), got dtype {dtype_of(x)}; "
        f"convert it with `{name} != 0` or `{name}.astype(bool)` after checking its polarity")


def require_broadcastable(name: str, x: Any, target: tuple[int, ...], target_desc: str) -> None:
  """Checks that ``x`` broadcasts to ``target`` without changing ``target`` (right-aligned)."""
  shape = shape_of(x)
  ok = len(shape) <= len(target) and all(
      s == 1 or s == t for s, t in zip(reversed(shape), reversed(target)))
  if not ok:
    raise ValueError(
        f"{name} of shape {shape} does not broadcast to {target_desc} = {target}")


def check_qkv(query: Any, key: Any, value: Any | None) -> None:
  """Checks ranks, dtypes and the agreement of axes between query, key and value."""
  q_shape, k_shape = shape_of(query), shape_of(key)
  for name, shape in (("query", q_shape), ("key", k_shape)):
    if len(shape) < 3:
      raise ValueError(f"{name} must have shape {LAYOUT} (rank >= 3), got {shape}")
  require_floating("query", query)
  if k_shape[:-3] != q_shape[:-3] or len(k_shape) != len(q_shape):
    raise ValueError(
        f"key has batch axes {k_shape[:-3]} (shape {k_shape}) but query has {q_shape[:-3]} "
        f"(shape {q_shape}); both are {LAYOUT} with the same batch axes")
  if dtype_of(key) != dtype_of(query):
    raise TypeError(f"key has dtype {dtype_of(key)} but query has dtype {dtype_of(query)}")
  if k_shape[-1] != q_shape[-1]:
    raise ValueError(
        f"key has head_dim {k_shape[-1]} but query has head_dim {q_shape[-1]} "
        f"(key {k_shape}, query {q_shape})")
  heads, kv_heads = q_shape[-2], k_shape[-2]
  if kv_heads == 0 or heads % kv_heads:
    raise ValueError(
        f"key has {kv_heads} heads but query has {heads}; query heads must be a multiple of key "
        f"heads (multi-query / grouped-query attention)")
  if value is None:
    return
  v_shape = shape_of(value)
  if len(v_shape) != len(k_shape) or v_shape[:-3] != k_shape[:-3]:
    raise ValueError(
        f"value has shape {v_shape} but key has shape {k_shape}; value must be "
        f"[batch..., kv_len, kv_heads, v_dim] with the batch axes of key")
  if dtype_of(value) != dtype_of(query):
    raise TypeError(f"value has dtype {dtype_of(value)} but query has dtype {dtype_of(query)}")
  if v_shape[-3] != k_shape[-3]:
    raise ValueError(
        f"value has length {v_shape[-3]} but key has length {k_shape[-3]} "
        f"(value {v_shape}, key {k_shape})")
  if v_shape[-2] != k_shape[-2]:
    raise ValueError(
        f"value has {v_shape[-2]} heads but key has {k_shape[-2]} (value {v_shape}, key {k_shape})")


def check_lengths(name: str, lengths: Any, batch_shape: tuple[int, ...]) -> None:
  if lengths is None:
    return
  if not jnp.issubdtype(dtype_of(lengths), jnp.integer):
    raise TypeError(f"{name} must be integers, got dtype {dtype_of(lengths)}")
  if shape_of(lengths) != batch_shape:
    raise ValueError(
        f"{name} has shape {shape_of(lengths)} but must have the batch shape {batch_shape} "
        f"(one valid length per sequence)")


def check_segment_ids(name: str, segment_ids: Any, shape: tuple[int, ...]) -> None:
  if not jnp.issubdtype(dtype_of(segment_ids), jnp.integer):
    raise TypeError(f"{name} must be integers, got dtype {dtype_of(segment_ids)}")
  if shape_of(segment_ids) != shape:
    raise ValueError(f"{name} has shape {shape_of(segment_ids)} but must be {shape} "
                     f"([batch..., length]: one segment id per position)")


def check_mask_and_bias(mask: Any, bias: Any, logits_shape: tuple[int, ...]) -> None:
  desc = "[batch..., heads, q_len, kv_len]"
  if mask is not None:
    require_bool("mask", mask)
    require_broadcastable("mask", mask, logits_shape, desc)
  if bias is not None:
    require_floating("bias", bias)
    require_broadcastable("bias", bias, logits_shape, desc)


def check_dropout(dropout_rate: float, dropout_rng: Any) -> None:
  if isinstance(dropout_rate, jax.core.Tracer):
    raise TypeError("dropout_rate must be a Python float (static), not a traced value")
  if not 0.0 <= float(dropout_rate) < 1.0:
    raise ValueError(f"dropout_rate must be in [0, 1), got {dropout_rate}")
  if dropout_rate > 0.0 and dropout_rng is None:
    raise ValueError(f"dropout_rate={dropout_rate} needs a dropout_rng (a PRNG key)")
