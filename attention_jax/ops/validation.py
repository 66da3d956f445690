"""Trace-time checks of attention arguments.

Every check runs in Python on static shapes and dtypes, so under ``jit`` it fires while tracing,
before any compute, with a message that names the argument, its shape and what was expected.
"""

from __future__ import annotations

import math
import numbers
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

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
  if k_shape[-3] == 0:
    raise ValueError(f"key has length 0 (shape {k_shape}): every query needs at least one key "
                     f"position (mask positions out instead of removing them)")
  if q_shape[-1] == 0:
    raise ValueError(f"query and key have head_dim 0 (query {q_shape}): the logits need at "
                     f"least one feature")
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


def require_array(name: str, x: Any, what: str) -> None:
  """Refuses Python lists, tuples, strings and other non-arrays (they would be read as arrays of
  whatever dtype jnp guesses, or crash deep inside)."""
  if not isinstance(x, (jax.Array, np.ndarray, np.generic)):
    raise TypeError(f"{name} must be {what} (a jax or numpy array), got {type(x).__name__} "
                    f"{x!r:.60}; wrap it with jnp.asarray(...)")


def check_lengths(name: str, lengths: Any, batch_shape: tuple[int, ...]) -> None:
  if lengths is None:
    return
  require_array(name, lengths, f"an int array of the batch shape {batch_shape}")
  if not jnp.issubdtype(dtype_of(lengths), jnp.integer):
    raise TypeError(f"{name} must be integers, got dtype {dtype_of(lengths)}")
  if shape_of(lengths) != batch_shape:
    raise ValueError(
        f"{name} has shape {shape_of(lengths)} but must have the batch shape {batch_shape} "
        f"(one valid length per sequence)")


def check_segment_ids(name: str, segment_ids: Any, shape: tuple[int, ...]) -> None:
  require_array(name, segment_ids, f"an int array of shape {shape}")
  if not jnp.issubdtype(dtype_of(segment_ids), jnp.integer):
    raise TypeError(f"{name} must be integers, got dtype {dtype_of(segment_ids)}")
  if shape_of(segment_ids) != shape:
    raise ValueError(f"{name} has shape {shape_of(segment_ids)} but must be {shape} "
                     f"([batch..., length]: one segment id per position)")


def check_mask_and_bias(mask: Any, bias: Any, logits_shape: tuple[int, ...]) -> None:
  """Masks and biases broadcast right-aligned, like NumPy: a 3-D mask ``[n, q_len, kv_len]`` is
  ``[heads, q_len, kv_len]`` (one mask per head), never per batch row, even when ``n`` equals
  the batch size; a per-row mask needs its heads axis: ``mask[:, None]``."""
  desc = "[batch..., heads, q_len, kv_len]"
  for name, x, require in (("mask", mask, require_bool), ("bias", bias, require_floating)):
    if x is None:
      continue
    require(name, x)
    shape = shape_of(x)
    batch_rank = len(logits_shape) - 3
    if (len(shape) == 3 and batch_rank >= 1 and shape[0] not in (1, logits_shape[-3])
        and shape[0] == logits_shape[0]):
      raise ValueError(
          f"{name} of shape {shape} does not broadcast to {desc} = {logits_shape}: a 3-D {name} "
          f"is [heads, q_len, kv_len]; for one per batch row add the heads axis "
          f"({name}[:, None])")
    require_broadcastable(name, x, logits_shape, desc)


def check_dropout(dropout_rate: Any, dropout_rng: Any) -> None:
  if isinstance(dropout_rate, jax.core.Tracer):
    raise TypeError("dropout_rate must be a Python float (static), not a traced value")
  if isinstance(dropout_rate, bool) or not isinstance(dropout_rate, numbers.Real):
    raise TypeError(f"dropout_rate must be a float in [0, 1), got {type(dropout_rate).__name__} "
                    f"{dropout_rate!r}")
  if not 0.0 <= float(dropout_rate) < 1.0:
    raise ValueError(f"dropout_rate must be in [0, 1), got {dropout_rate}")
  if dropout_rate > 0.0:
    if dropout_rng is None:
      raise ValueError(f"dropout_rate={dropout_rate} needs a dropout_rng (a PRNG key)")
    check_rng("dropout_rng", dropout_rng)


def check_rng(name: str, rng: Any) -> None:
  """A PRNG key: a typed key array of shape ``()`` (``jax.random.key``) or a raw uint32 ``[2]``
  (``jax.random.PRNGKey``)."""
  shape = shape_of(rng) if isinstance(rng, (jax.Array, np.ndarray)) else None
  dtype = getattr(rng, "dtype", None)
  if dtype is not None and jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key):
    if shape == ():
      return
  elif dtype == jnp.uint32 and shape == (2,):
    return
  raise TypeError(f"{name} must be one PRNG key (jax.random.key(seed), or a uint32 [2] from "
                  f"jax.random.PRNGKey), got {type(rng).__name__} of shape {shape} and dtype "
                  f"{dtype}")


def check_weights_size(batch: tuple[int, ...], heads: int, q_len: int, kv_len: int,
                       itemsize: int) -> None:
  """Refuses ``return_weights`` (the ``[batch..., heads, q_len, kv_len]`` array) when it would not
  fit in the device's memory, before anything is computed."""
  needed = math.prod(batch) * heads * q_len * kv_len * max(itemsize, 4)  # float32 softmax
  available = device_memory_bytes()
  if needed > available:
    raise ValueError(
        f"return_weights=True needs the weights [batch..., heads, q_len, kv_len] = "
        f"{(*batch, heads, q_len, kv_len)}: {needed / 2**30:.1f} GiB, more than the "
        f"{available / 2**30:.1f} GiB of this device; attend without weights "
        f"(return_weights=False) or over fewer queries at a time")


def device_memory_bytes() -> int:
  """The memory of the default device: an accelerator's ``bytes_limit``, else the host's RAM."""
  try:
    stats = jax.devices()[0].memory_stats() or {}
  except Exception:  # pylint: disable=broad-except  # some backends do not implement it
    stats = {}
  if "bytes_limit" in stats:
    return int(stats["bytes_limit"])
  return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
