"""The static options of one attention call, in one frozen (hashable) value.

Every implementation of :func:`attention_jax.ops.dot_product_attention` takes
``(query, key, value, bias, mask, segment_ids, lengths, spec)``: the arrays travel as arguments,
everything that changes the compiled program travels as an :class:`AttentionSpec`. A new option is
a field here, its meaning in :func:`visible` (if it restricts which keys a query sees) or in the
logits, and its handling in each path.
"""

from __future__ import annotations

import dataclasses
import math
import numbers

import jax
import jax.numpy as jnp

#: Names ``implementation`` accepts: ours, and jax.nn's (``"xla"`` is our materialising path).
IMPLEMENTATIONS: tuple[str, ...] = ("reference", "flash", "cpu_flash", "cudnn", "splash",
                                    "pallas_gpu")
ALIASES = {"xla": "reference"}


@dataclasses.dataclass(frozen=True)
class AttentionSpec:
  """Static options of an attention call.

  Attributes:
    scale: multiplies ``q . k``.
    is_causal: query ``i`` sees keys ``j <= i + offset`` (``offset = kv_len - q_len``: aligned
      bottom-right, so the queries are the last positions of the keys).
    window: ``(left, right)``: query ``i`` sees keys ``i + offset - left <= j <= i + offset +
      right`` (jax.nn's ``local_window_size``; a bound of ``None`` is unbounded). With
      ``is_causal`` the right bound is ``min(right, 0)``.
    softcap: logits become ``softcap * tanh(logits / softcap)`` before the bias and masks (Gemma 2).
    implementation: a name of :data:`IMPLEMENTATIONS`, or ``None`` (chosen per call).
    block_sizes: ``(block_q, block_k)`` of the blockwise path, or ``None`` (chosen per shape).
    dropout_rate: dropout on the attention weights.
  """

  scale: float
  is_causal: bool = False
  window: tuple[int | None, int | None] | None = None
  softcap: float | None = None
  implementation: str | None = None
  block_sizes: tuple[int, int] | None = None
  dropout_rate: float = 0.0

  @property
  def band(self) -> tuple[int | None, int | None]:
    """``(left, right)`` of the keys a query sees around its diagonal (``None`` = unbounded):
    the window and the causal limit together."""
    left, right = self.window if self.window is not None else (None, None)
    if self.is_causal:
      right = 0 if right is None else min(right, 0)
    return left, right

  @property
  def restricts_positions(self) -> bool:
    return self.band != (None, None)


def make_spec(*, scale, head_dim: int, is_causal=False, local_window_size=None, softcap=None,
              implementation=None, block_sizes=None, dropout_rate=0.0) -> AttentionSpec:
  """An :class:`AttentionSpec` from the keyword arguments of ``dot_product_attention``, each
  checked with a one-line error that names it."""
  if scale is None:
    scale = 1.0 / math.sqrt(head_dim)
  elif (isinstance(scale, bool) or not isinstance(scale, numbers.Real)
        or not math.isfinite(scale)):
    raise ValueError(f"scale must be a finite real number, got {scale!r}")
  window = _window(local_window_size)
  if softcap is not None and (isinstance(softcap, bool) or not isinstance(softcap, numbers.Real)
                              or not softcap > 0
                              or not math.isfinite(softcap)):
    raise ValueError(f"softcap must be a positive finite number or None, got {softcap!r}")
  implementation = ALIASES.get(implementation, implementation)
  if implementation is not None and implementation not in IMPLEMENTATIONS:
    raise ValueError(
        f"implementation must be one of {sorted(IMPLEMENTATIONS + tuple(ALIASES))} or None, "
        f"got {implementation!r}")
  if block_sizes is not None:
    if (len(tuple(block_sizes)) != 2
        or not all(isinstance(b, int) and not isinstance(b, bool) for b in block_sizes)):
      raise ValueError(f"block_sizes must be two ints (block_q, block_k), got {block_sizes!r}")
    if min(block_sizes) <= 0:
      raise ValueError(f"block_sizes must be positive, got {tuple(block_sizes)}")
    block_sizes = tuple(block_sizes)
  return AttentionSpec(scale=float(scale), is_causal=bool(is_causal), window=window,
                       softcap=None if softcap is None else float(softcap),
                       implementation=implementation, block_sizes=block_sizes,
                       dropout_rate=float(dropout_rate))


def _window(local_window_size):
  if local_window_size is None:
    return None
  if isinstance(local_window_size, int) and not isinstance(local_window_size, bool):
    local_window_size = (local_window_size, local_window_size)
  try:
    left, right = local_window_size
  except (TypeError, ValueError):
    raise ValueError(f"local_window_size must be an int or a pair (left, right) of ints >= 0, "
                     f"got {local_window_size!r}") from None
  for bound in (left, right):
    if bound is not None and (isinstance(bound, bool) or not isinstance(bound, int)
                              or bound < 0):
      raise ValueError(f"local_window_size must be an int or a pair (left, right) of ints "
                       f">= 0, got {local_window_size!r}")
  return left, right


def visible(spec: AttentionSpec, rows, cols, q_len: int, kv_len: int):
  """Whether query positions ``rows`` see key positions ``cols`` (broadcast together) under the
  causal limit and the window; ``None`` when nothing is restricted."""
  left, right = spec.band
  offset = kv_len - q_len
  keep = None
  if right is not None:
    keep = cols <= rows + offset + right
  if left is not None:
    lower = cols >= rows + offset - left
    keep = lower if keep is None else keep & lower
  return keep


def position_mask(spec: AttentionSpec, q_len: int, kv_len: int) -> jax.Array | None:
  """bool ``[q_len, kv_len]`` of :func:`visible`, or ``None``."""
  rows = jnp.arange(q_len)[:, None]
  cols = jnp.arange(kv_len)[None, :]
  return visible(spec, rows, cols, q_len, kv_len)


def soft_cap(logits, softcap: float | None):
  """``softcap * tanh(logits / softcap)`` (identity for ``None``), in the logits' dtype."""
  if softcap is None:
    return logits
  cap = jnp.asarray(softcap, logits.dtype)
  return cap * jnp.tanh(logits / cap)
