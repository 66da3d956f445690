"""A float64 NumPy transcription of the lecture's attention equations, used as ground truth."""

import numpy as np


def softmax_masked(logits, mask):
  logits = np.where(mask, logits, -np.inf)
  row_max = logits.max(-1, keepdims=True)
  row_max = np.where(np.isfinite(row_max), row_max, 0.0)
  e = np.exp(logits - row_max)
  s = e.sum(-1, keepdims=True)
  return e / np.where(s == 0, 1.0, s)


def attention(query, key, value, bias=None, mask=None, is_causal=False, scale=None,
              query_seq_lengths=None, key_value_seq_lengths=None, local_window_size=None,
              query_segment_ids=None, key_value_segment_ids=None, softcap=None,
              return_lse=False):
  """query [batch..., q, h, d]; key/value [batch..., k, kvh, d]. Returns (out, weights), and the
  log-sum-exp [batch..., h, q] (-inf for a row that sees no key) with ``return_lse``.

  Causal limit and window are aligned bottom-right: query i sits at key position
  i + kv_len - q_len.
  """
  query, key, value = (np.asarray(a, np.float64) for a in (query, key, value))
  heads, kv_heads = query.shape[-2], key.shape[-2]
  key = np.repeat(key, heads // kv_heads, axis=-2)
  value = np.repeat(value, heads // kv_heads, axis=-2)
  scale = 1.0 / np.sqrt(query.shape[-1]) if scale is None else scale
  logits = np.einsum("...qhd,...khd->...hqk", query, key) * scale
  if softcap is not None:
    logits = softcap * np.tanh(logits / softcap)
  if bias is not None:
    logits = logits + np.asarray(bias, np.float64)
  q_len, kv_len = query.shape[-3], key.shape[-3]
  full = np.ones(logits.shape, bool)
  if mask is not None:
    full &= np.broadcast_to(np.asarray(mask), logits.shape)
  i = np.arange(q_len)[:, None] + (kv_len - q_len)
  j = np.arange(kv_len)[None, :]
  if is_causal:
    full &= j <= i
  if local_window_size is not None:
    left, right = ((local_window_size, local_window_size) if np.isscalar(local_window_size)
                   else local_window_size)
    full &= (j >= i - left) & (j <= i + right)
  if query_segment_ids is not None or key_value_segment_ids is not None:
    q_seg = np.asarray(query_segment_ids if query_segment_ids is not None
                       else key_value_segment_ids)
    kv_seg = np.asarray(key_value_segment_ids if key_value_segment_ids is not None
                        else query_segment_ids)
    full &= (q_seg[..., :, None] == kv_seg[..., None, :])[..., None, :, :]
  if query_seq_lengths is not None:
    valid_q = np.arange(q_len) < np.asarray(query_seq_lengths)[..., None]
    full &= valid_q[..., None, :, None]
  if key_value_seq_lengths is not None:
    valid_k = np.arange(kv_len) < np.asarray(key_value_seq_lengths)[..., None]
    full &= valid_k[..., None, None, :]
  weights = softmax_masked(logits, full)
  out = np.einsum("...hqk,...khd->...qhd", weights, value)
  if not return_lse:
    return out, weights
  with np.errstate(divide="ignore"):
    masked = np.where(full, logits, -np.inf)
    peak = masked.max(-1)
    lse = np.where(np.isfinite(peak),
                   peak + np.log(np.exp(masked - np.where(np.isfinite(peak), peak, 0.0)[..., None]
                                        ).sum(-1)), -np.inf)
  return out, weights, lse


def random_qkv(seed, q_len, kv_len, heads, kv_heads, dim, batch=(1,)):
  """Normal float32 ``query [*batch, q_len, heads, dim]``, ``key``/``value [*batch, kv_len,
  kv_heads, dim]`` (jax arrays) for the kernel tests."""
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top  # the rest of this file is NumPy
  rng = np.random.default_rng(seed)
  shapes = ((*batch, q_len, heads, dim), (*batch, kv_len, kv_heads, dim),
            (*batch, kv_len, kv_heads, dim))
  return tuple(jnp.asarray(rng.normal(size=shape), jnp.float32) for shape in shapes)
