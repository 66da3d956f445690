"""Position information added to token embeddings: fixed sinusoids or a learned table."""

from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from attention_jax import ops

Array = jax.Array
Initializer = Callable[..., Array]


def _check_input(x, features: int | None = None) -> None:
  if x.ndim < 2:
    raise ValueError(f"x must be [batch..., length, features], got shape {x.shape}")
  if features is not None and x.shape[-1] != features:
    raise ValueError(f"x has {x.shape[-1]} features (shape {x.shape}) but features={features}")


def _explicit_positions(x, positions, offset, max_length: int):
  """``positions`` or ``offset + arange(length)`` as int32, broadcastable to
  ``[batch..., length]``; checked against ``max_length`` when the values are known."""
  length = x.shape[-2]
  if positions is None:
    positions = jnp.asarray(offset, jnp.int32) + jnp.arange(length, dtype=jnp.int32)
  positions = jnp.asarray(positions)
  if not jnp.issubdtype(positions.dtype, jnp.integer):
    raise TypeError(f"positions must be integers, got dtype {positions.dtype}")
  if positions.ndim < 1 or positions.shape[-1] != length or positions.ndim > x.ndim - 1:
    raise ValueError(
        f"positions of shape {positions.shape} must be [length] or [batch..., length] for x of "
        f"shape {x.shape}")
  if not isinstance(positions, jax.core.Tracer) and positions.size:
    low, high = int(positions.min()), int(positions.max())
    if low < 0 or high >= max_length:
      raise ValueError(
          f"positions span [{low}, {high}] but max_length={max_length} allows [0, "
          f"{max_length - 1}]")
  return positions


class SinusoidalPositionalEncoding(nn.Module):
  """Adds the sinusoids of :func:`ops.sinusoidal_positions` (Vaswani et al. 2017) to ``x``.

  Without ``positions``/``offset`` the encoding has no length limit; explicit positions (e.g.
  ``offset=cache_index`` while decoding) are looked up in a table of ``max_length`` rows, since
  they may be traced values (traced positions are not range-checked: a gather clamps them).

  Attributes:
    max_length: rows of the table used for explicit positions.
    max_timescale: the longest wavelength.
  """

  max_length: int = 2048
  max_timescale: float = 10_000.0

  def __call__(self, x, positions=None, offset=0) -> Array:
    """``x [batch..., length, features]`` (even ``features``) -> ``x + PE`` in ``x``'s dtype.

    Args:
      x: the embeddings.
      positions: int ``[length]`` or ``[batch..., length]`` absolute positions.
      offset: int (may be traced) position of ``x``'s first element, when ``positions`` is None.
    """
    x = jnp.asarray(x)
    _check_input(x)
    length, features = x.shape[-2:]
    static_start = positions is None and isinstance(offset, int) and offset == 0
    if static_start:
      encoding = ops.sinusoidal_positions(length, features, self.max_timescale)
    else:
      positions = _explicit_positions(x, positions, offset, self.max_length)
      table = ops.sinusoidal_positions(self.max_length, features, self.max_timescale)
      encoding = table[positions]
    return x + encoding.astype(x.dtype)


class LearnedPositionalEmbedding(nn.Module):
  """Adds a learned embedding per position (parameter ``embedding [max_length, features]``).

  Attributes:
    max_length: number of positions.
    features: width of the embeddings (must equal that of ``x``).
    embedding_init: initialiser of the table.
    dtype: computation dtype (``None``: that of ``x`` and the table promoted).
    param_dtype: parameter dtype.
  """

  max_length: int
  features: int
  embedding_init: Initializer = nn.initializers.normal(stddev=0.02)
  dtype: Any = None
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, positions=None) -> Array:
    """``x [batch..., length, features]`` -> ``x + embedding[positions]``.

    Args:
      x: the embeddings.
      positions: int ``[length]`` or ``[batch..., length]``; default ``0 .. length - 1``.
    """
    x = jnp.asarray(x)
    _check_input(x, self.features)
    length = x.shape[-2]
    embedding = self.param(
        "embedding", self.embedding_init, (self.max_length, self.features), self.param_dtype)
    if positions is None:
      if length > self.max_length:
        raise ValueError(
            f"x has length {length} (shape {x.shape}) but max_length={self.max_length}")
      encoding = embedding[:length]
    else:
      encoding = embedding[_explicit_positions(x, positions, 0, self.max_length)]
    dtype = self.dtype or jnp.result_type(x, embedding)
    return x.astype(dtype) + encoding.astype(dtype)
