"""Positional information: fixed sinusoidal encodings and rotary embeddings (RoPE)."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np


def sinusoidal_positions(length: int, dim: int, max_timescale: float = 10_000.0) -> jnp.ndarray:
  """Sinusoidal position encodings of "Attention Is All You Need" (Vaswani et al. 2017, sec. 3.5).

  ``PE[pos, 2i] = sin(pos / max_timescale**(2i/dim))``, ``PE[pos, 2i+1] = cos(...)`` (interleaved).

  Returns:
    float32 ``[length, dim]``.
  """
  if dim <= 0 or dim % 2:
    raise ValueError(f"sinusoidal_positions needs a positive even dim, got dim={dim}")
  if length < 0:
    raise ValueError(f"sinusoidal_positions needs length >= 0, got length={length}")
  positions = np.arange(length, dtype=np.float64)[:, None]
  inv_freq = max_timescale ** (-np.arange(0, dim, 2, dtype=np.float64) / dim)
  angles = positions * inv_freq[None, :]
  table = np.empty((length, dim), dtype=np.float64)
  table[:, 0::2] = np.sin(angles)
  table[:, 1::2] = np.cos(angles)
  return jnp.asarray(table, dtype=jnp.float32)


def apply_rotary(x, positions, *, base: float = 10_000.0) -> jnp.ndarray:
  """Rotary position embedding (Su et al. 2021) in the half-split layout (GPT-NeoX / LLaMA).

  Feature ``i`` of the first half is rotated together with feature ``i`` of the second half by
  the angle ``position * base**(-2i/head_dim)``, so the dot product of a rotated query and key
  depends only on their relative position.

  Args:
    x: ``[batch..., length, heads, head_dim]`` with an even ``head_dim``.
    positions: int ``[length]`` or ``[batch..., length]`` absolute positions.
    base: the frequency base.

  Returns:
    ``x`` rotated, same shape and dtype (the rotation is computed in float32).
  """
  x = jnp.asarray(x)
  positions = jnp.asarray(positions)
  if x.ndim < 3:
    raise ValueError(
        f"apply_rotary expects x of shape [batch..., length, heads, head_dim], got {x.shape}")
  head_dim = x.shape[-1]
  if head_dim % 2:
    raise ValueError(f"apply_rotary needs an even head_dim, got x.shape={x.shape}")
  if not jnp.issubdtype(positions.dtype, jnp.integer):
    raise TypeError(f"positions must be integers, got dtype {positions.dtype}")
  if positions.ndim < 1 or positions.shape[-1] != x.shape[-3]:
    raise ValueError(
        f"positions of shape {positions.shape} must end in the length axis of x "
        f"(x.shape={x.shape}, length={x.shape[-3]})")
  half = head_dim // 2
  inv_freq = base ** (-jnp.arange(half, dtype=jnp.float32) * 2.0 / head_dim)
  angles = positions.astype(jnp.float32)[..., None] * inv_freq  # [batch..., length, half]
  cos = jnp.cos(angles)[..., None, :]  # broadcast over heads
  sin = jnp.sin(angles)[..., None, :]
  x32 = x.astype(jnp.float32)
  x1, x2 = x32[..., :half], x32[..., half:]
  rotated = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
  return rotated.astype(x.dtype)
