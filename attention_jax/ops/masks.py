"""Boolean attention masks. Convention everywhere: ``True`` = the query may attend to the key."""

from __future__ import annotations

import jax.numpy as jnp


def causal_mask(q_len: int, kv_len: int | None = None) -> jnp.ndarray:
  """Causal mask aligned bottom-right.

  Query ``i`` may attend to key ``j`` iff ``j <= i + (kv_len - q_len)``: the queries are the *last*
  ``q_len`` positions of the key sequence. This is what decoding with a KV cache and chunked prefill
  need (the new queries sit at the end of the cache). ``jax.nn.dot_product_attention`` and PyTorch's
  ``is_causal`` align top-left instead (``j <= i``); the two agree when ``q_len == kv_len``.

  Args:
    q_len: number of queries.
    kv_len: number of keys; defaults to ``q_len``.

  Returns:
    bool ``[q_len, kv_len]``.
  """
  kv_len = q_len if kv_len is None else kv_len
  if q_len < 0 or kv_len < 0:
    raise ValueError(f"causal_mask needs non-negative lengths, got q_len={q_len}, kv_len={kv_len}")
  offset = kv_len - q_len
  rows = jnp.arange(q_len)[:, None]
  cols = jnp.arange(kv_len)[None, :]
  return cols <= rows + offset


def length_mask(lengths: jnp.ndarray, max_len: int) -> jnp.ndarray:
  """``[batch..., max_len]`` bool: position ``t`` is valid iff ``t < lengths[batch...]``."""
  lengths = jnp.asarray(lengths)
  return jnp.arange(max_len) < lengths[..., None]


def padding_mask(query_seq_lengths, key_value_seq_lengths, q_len: int, kv_len: int) -> jnp.ndarray:
  """Mask of the valid (unpadded) query/key pairs.

  Args:
    query_seq_lengths: int ``[batch...]`` valid query counts, or ``None`` (all valid).
    key_value_seq_lengths: int ``[batch...]`` valid key counts, or ``None`` (all valid).
    q_len: padded query length.
    kv_len: padded key length.

  Returns:
    bool ``[batch..., 1, q_len, kv_len]`` (the ``1`` broadcasts over heads).
  """
  if query_seq_lengths is None and key_value_seq_lengths is None:
    return jnp.ones((1, q_len, kv_len), dtype=bool)
  q_valid = (
      jnp.ones((1, q_len), bool) if query_seq_lengths is None
      else length_mask(query_seq_lengths, q_len)
  )
  k_valid = (
      jnp.ones((1, kv_len), bool) if key_value_seq_lengths is None
      else length_mask(key_value_seq_lengths, kv_len)
  )
  mask = q_valid[..., :, None] & k_valid[..., None, :]
  return mask[..., None, :, :]
