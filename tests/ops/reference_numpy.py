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
              query_lengths=None, key_lengths=None):
  """query [batch..., q, h, d]; key/value [batch..., k, kvh, d]. Returns (out, weights)."""
  query, key, value = (np.asarray(a, np.float64) for a in (query, key, value))
  heads, kv_heads = query.shape[-2], key.shape[-2]
  key = np.repeat(key, heads // kv_heads, axis=-2)
  value = np.repeat(value, heads // kv_heads, axis=-2)
  scale = 1.0 / np.sqrt(query.shape[-1]) if scale is None else scale
  logits = np.einsum("...qhd,...khd->...hqk", query, key) * scale
  if bias is not None:
    logits = logits + np.asarray(bias, np.float64)
  q_len, kv_len = query.shape[-3], key.shape[-3]
  full = np.ones(logits.shape, bool)
  if mask is not None:
    full &= np.broadcast_to(np.asarray(mask), logits.shape)
  if is_causal:
    i = np.arange(q_len)[:, None]
    j = np.arange(kv_len)[None, :]
    full &= j <= i + (kv_len - q_len)
  if query_lengths is not None:
    valid_q = np.arange(q_len) < np.asarray(query_lengths)[..., None]
    full &= valid_q[..., None, :, None]
  if key_lengths is not None:
    valid_k = np.arange(kv_len) < np.asarray(key_lengths)[..., None]
    full &= valid_k[..., None, None, :]
  weights = softmax_masked(logits, full)
  out = np.einsum("...hqk,...khd->...qhd", weights, value)
  return out, weights
