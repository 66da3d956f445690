"""Scaled dot-product attention and additive (Bahdanau) attention as pure JAX functions.

Layout (that of ``jax.nn.dot_product_attention``, so users can swap one for the other):
  query ``[batch..., q_len, heads, head_dim]``, key ``[batch..., kv_len, kv_heads, head_dim]``,
  value ``[batch..., kv_len, kv_heads, v_dim]``; ``heads % kv_heads == 0`` gives multi-query /
  grouped-query attention (query head ``h`` reads key/value head ``h // (heads // kv_heads)``).

Masks are boolean with ``True`` = may attend, and are combined as booleans (never as added large
negatives, which overflow in bf16/fp16). Softmax statistics run in float32 whatever the input dtype.
A query whose keys are all masked gets zero output and zero gradients, never NaN.
"""

from __future__ import annotations

import math
from typing import Callable

import jax
import jax.numpy as jnp

from attention_jax.ops import blockwise
from attention_jax.ops import masks as masks_lib
from attention_jax.ops import validation

Array = jax.Array

IMPLEMENTATIONS: tuple[str, ...] = ("reference", "flash", "cudnn")


def accumulation_dtype(dtype) -> jnp.dtype:
  """The dtype softmax statistics and matmul accumulators use: float32, or float64 for float64."""
  return jnp.promote_types(dtype, jnp.float32)


def masked_softmax(logits, mask=None, axis: int = -1) -> Array:
  """Softmax in float32 (or wider) that gives an all-zero row and zero gradients where every entry
  is masked.

  Args:
    logits: any float array.
    mask: bool, broadcastable to ``logits``; ``True`` = keep.
    axis: the axis to normalise over.

  Returns:
    float32 (float64 for float64 logits) weights of ``logits``' shape; each row sums to 1, or to 0
    if fully masked.
  """
  logits = jnp.asarray(logits)
  logits = logits.astype(accumulation_dtype(logits.dtype))
  if mask is not None:
    # Masked entries are zeroed after the exp rather than filled with -inf before it: no inf is
    # ever made, so jax.debug_infs(True) can stay on (and a NaN in a masked logit cannot leak).
    logits = jnp.where(mask, logits, jnp.finfo(logits.dtype).min)
  row_max = jnp.max(logits, axis=axis, keepdims=True)
  # The shift is mathematically irrelevant to softmax, so no gradient flows through it; a row
  # whose entries are all -inf (from the caller's bias) is shifted by 0.
  row_max = jax.lax.stop_gradient(jnp.where(jnp.isfinite(row_max), row_max, 0.0))
  unnormalized = jnp.exp(logits - row_max)
  if mask is not None:
    unnormalized = jnp.where(mask, unnormalized, 0.0)
  denominator = jnp.sum(unnormalized, axis=axis, keepdims=True)
  return unnormalized / jnp.where(denominator == 0.0, 1.0, denominator)


def _combined_mask(mask, is_causal, query_lengths, key_lengths, q_len, kv_len):
  """ANDs the user mask, the causal mask and the padding mask; ``None`` when nothing is masked."""
  combined = mask
  if is_causal:
    causal = masks_lib.causal_mask(q_len, kv_len)
    combined = causal if combined is None else combined & causal
  if query_lengths is not None or key_lengths is not None:
    padding = masks_lib.padding_mask(query_lengths, key_lengths, q_len, kv_len)
    combined = padding if combined is None else combined & padding
  return combined


def _grouped_logits(query, key, scale, bias) -> Array:
  """Logits ``[batch..., heads, q_len, kv_len]`` in the accumulation dtype; GQA without
  materialising repeated keys."""
  *batch, q_len, heads, head_dim = query.shape
  kv_len, kv_heads = key.shape[-3], key.shape[-2]
  acc = accumulation_dtype(query.dtype)
  if query.dtype == acc:
    # Scaling the [q_len, head_dim] query is cheaper than the [q_len, kv_len] logits; for low
    # precision inputs the scale is applied to the float32 logits instead to avoid a rounding.
    query, scale = query * jnp.asarray(scale, acc), None
  if heads == kv_heads:
    logits = jnp.einsum("...qhd,...khd->...hqk", query, key, preferred_element_type=acc)
  else:
    grouped_query = query.reshape(*batch, q_len, kv_heads, heads // kv_heads, head_dim)
    logits = jnp.einsum(
        "...qhgd,...khd->...hgqk", grouped_query, key, preferred_element_type=acc)
    logits = logits.reshape(*batch, heads, q_len, kv_len)
  if scale is not None:
    logits = logits * jnp.asarray(scale, acc)
  if bias is not None:
    logits = logits + jnp.asarray(bias).astype(acc)
  return logits


def _weighted_values(weights, value, heads) -> Array:
  """``weights [batch..., heads, q_len, kv_len]`` x ``value`` -> ``[batch..., q_len, heads, v_dim]``
  in the accumulation dtype."""
  *batch, q_len, kv_len = weights.shape[:-3] + weights.shape[-2:]
  kv_heads = value.shape[-2]
  weights = weights.astype(value.dtype)
  acc = accumulation_dtype(value.dtype)
  if heads == kv_heads:
    return jnp.einsum("...hqk,...khd->...qhd", weights, value, preferred_element_type=acc)
  grouped = weights.reshape(*batch, kv_heads, heads // kv_heads, q_len, kv_len)
  out = jnp.einsum("...hgqk,...khd->...qhgd", grouped, value, preferred_element_type=acc)
  return out.reshape(*batch, q_len, heads, value.shape[-1])


def _check_and_prepare(query, key, value, bias, mask, query_lengths, key_lengths, scale):
  query, key = jnp.asarray(query), jnp.asarray(key)
  value = None if value is None else jnp.asarray(value)
  validation.check_qkv(query, key, value)
  *batch, q_len, heads, head_dim = query.shape
  kv_len = key.shape[-3]
  batch = tuple(batch)
  validation.check_mask_and_bias(mask, bias, (*batch, heads, q_len, kv_len))
  validation.check_lengths("query_lengths", query_lengths, batch)
  validation.check_lengths("key_lengths", key_lengths, batch)
  if scale is None:
    scale = 1.0 / math.sqrt(head_dim)
  return query, key, value, scale


def _reference_weights(query, key, bias, mask, is_causal, scale, query_lengths, key_lengths):
  q_len, kv_len = query.shape[-3], key.shape[-3]
  logits = _grouped_logits(query, key, scale, bias)
  combined = _combined_mask(mask, is_causal, query_lengths, key_lengths, q_len, kv_len)
  return masked_softmax(logits, combined)


def _reference_attention(query, key, value, bias, mask, is_causal, scale, query_lengths,
                         key_lengths, dropout_rate, dropout_rng):
  """Materialises the weights: O(q_len * kv_len) memory. Returns (out, weights in float32+)."""
  weights = _reference_weights(
      query, key, bias, mask, is_causal, scale, query_lengths, key_lengths)
  if dropout_rate > 0.0:
    keep = jax.random.bernoulli(dropout_rng, 1.0 - dropout_rate, weights.shape)
    weights = jnp.where(keep, weights / (1.0 - dropout_rate), 0.0)
  out = _weighted_values(weights, value, query.shape[-2])
  return out.astype(query.dtype), weights


def _flash_attention(query, key, value, bias, mask, is_causal, scale, query_lengths, key_lengths,
                     dropout_rate, dropout_rng, block_sizes=None):
  """Blockwise online-softmax path (:mod:`attention_jax.ops.blockwise`); linear memory."""
  del dropout_rng
  if dropout_rate > 0.0:
    raise ValueError(
        "implementation='flash' does not support dropout_rate > 0; use implementation='reference' "
        "or None (which picks a path that supports dropout)")
  out = blockwise.flash_attention(
      query, key, value, bias, mask, is_causal=is_causal, scale=scale,
      query_lengths=query_lengths, key_lengths=key_lengths, block_sizes=block_sizes)
  return out, None


def _cudnn_supports(query, key, value, bias, mask, is_causal, query_lengths, key_lengths,
                    dropout_rate) -> bool:
  """Whether ``jax.nn.dot_product_attention(implementation="cudnn")`` computes exactly our
  semantics. Conservative: no bias/mask/lengths (cuDNN's fully-masked rows are not guaranteed to be
  zero), causal only when top-left and bottom-right alignment coincide."""
  if jax.default_backend() != "gpu":
    return False
  q_len, kv_len = query.shape[-3], key.shape[-3]
  head_dim = query.shape[-1]
  return (query.ndim == 4 and query.dtype in (jnp.bfloat16, jnp.float16)
          and key.dtype == query.dtype and value.dtype == query.dtype
          and value.shape[-1] == head_dim and head_dim % 8 == 0 and head_dim <= 128
          and bias is None and mask is None and query_lengths is None and key_lengths is None
          and dropout_rate == 0.0 and (not is_causal or q_len == kv_len))


def _cudnn_attention(query, key, value, bias, mask, is_causal, scale, query_lengths, key_lengths,
                     dropout_rate, dropout_rng, block_sizes=None):
  """cuDNN's fused kernel through ``jax.nn`` (GPU, fp16/bf16, no mask/bias/lengths/dropout)."""
  del dropout_rng, block_sizes
  if not _cudnn_supports(query, key, value, bias, mask, is_causal, query_lengths, key_lengths,
                         dropout_rate):
    raise ValueError(
        "implementation='cudnn' needs a GPU, 4-D fp16/bf16 inputs with v_dim == head_dim <= 128, "
        "and no bias, mask, lengths or dropout (causal only with q_len == kv_len); "
        "use implementation=None to pick a supported path")
  out = jax.nn.dot_product_attention(query, key, value, scale=scale, is_causal=is_causal,
                                     implementation="cudnn")
  return out, None


def _reference_impl(query, key, value, bias, mask, is_causal, scale, query_lengths, key_lengths,
                    dropout_rate, dropout_rng, block_sizes=None):
  del block_sizes
  return _reference_attention(query, key, value, bias, mask, is_causal, scale, query_lengths,
                              key_lengths, dropout_rate, dropout_rng)


_IMPLEMENTATION_FNS: dict[str, Callable[..., tuple[Array, Array | None]]] = {
    "reference": _reference_impl,
    "flash": _flash_attention,
    "cudnn": _cudnn_attention,
}
_WEIGHT_IMPLEMENTATIONS = ("reference",)
# Measured on a 2-core CPU (benchmarks/attention.py, batch 4 x 8 heads): the blockwise path is
# faster than the reference from L=1024 (both directions) and for causal inputs from L=256 (it skips
# the blocks above the diagonal); below that the reference's few big ops are as fast or faster.
# Beyond 256 MiB of logits the reference's [L, L] arrays stop fitting well in any case.
_FLASH_MIN_LOGITS = 1024 * 1024
_FLASH_MIN_CAUSAL_LOGITS = 256 * 256
_FLASH_MIN_LOGIT_BYTES = 256 * 2**20


def _resolve_implementation(implementation: str | None, query, key, value, bias, mask, is_causal,
                            query_lengths, key_lengths, dropout_rate, return_weights) -> str:
  if implementation is None:
    if return_weights or dropout_rate > 0.0:
      return "reference"
    if _cudnn_supports(query, key, value, bias, mask, is_causal, query_lengths, key_lengths,
                       dropout_rate):
      return "cudnn"
    logits_per_head = query.shape[-3] * key.shape[-3]
    logit_bytes = math.prod(query.shape[:-3]) * query.shape[-2] * logits_per_head * 4
    if (logits_per_head >= _FLASH_MIN_LOGITS
        or (is_causal and logits_per_head >= _FLASH_MIN_CAUSAL_LOGITS)
        or logit_bytes >= _FLASH_MIN_LOGIT_BYTES):
      return "flash"
    return "reference"
  if implementation not in _IMPLEMENTATION_FNS:
    raise ValueError(
        f"implementation must be one of {sorted(_IMPLEMENTATION_FNS)} or None, "
        f"got {implementation!r}")
  if return_weights and implementation not in _WEIGHT_IMPLEMENTATIONS:
    raise ValueError(
        f"implementation={implementation!r} cannot return the attention weights; use "
        f"implementation='reference' or None with return_weights=True")
  return implementation


def dot_product_attention(
    query,
    key,
    value,
    bias=None,
    mask=None,
    *,
    is_causal: bool = False,
    scale: float | None = None,
    query_lengths=None,
    key_lengths=None,
    dropout_rate: float = 0.0,
    dropout_rng=None,
    return_weights: bool = False,
    implementation: str | None = None,
    block_sizes: tuple[int, int] | None = None,
):
  """Scaled dot-product attention: ``softmax(Q K^T * scale + bias, masked) V`` per head.

  Args:
    query: ``[batch..., q_len, heads, head_dim]``.
    key: ``[batch..., kv_len, kv_heads, head_dim]`` with ``heads % kv_heads == 0``.
    value: ``[batch..., kv_len, kv_heads, v_dim]``.
    bias: float, added to the logits, broadcastable to ``[batch..., heads, q_len, kv_len]``.
    mask: bool, ``True`` = may attend, broadcastable to ``[batch..., heads, q_len, kv_len]``.
    is_causal: query ``i`` attends to keys ``j <= i + kv_len - q_len``: aligned **bottom-right**
      (the queries are the last positions), which is what decoding with a KV cache and chunked
      prefill need. ``jax.nn.dot_product_attention`` and PyTorch align top-left (``j <= i``); both
      agree when ``q_len == kv_len``.
    scale: multiplies the logits; default ``1 / sqrt(head_dim)``.
    query_lengths: int ``[batch...]``; queries at positions ``>= query_lengths`` get zero output.
    key_lengths: int ``[batch...]``; keys at positions ``>= key_lengths`` are masked.
    dropout_rate: dropout on the attention weights (inverted: kept weights are divided by
      ``1 - dropout_rate``, so a row of the returned weights may sum to more than one).
    dropout_rng: PRNG key, required when ``dropout_rate > 0``.
    return_weights: also return the attention weights actually applied.
    implementation: ``None`` picks the fastest path that supports the arguments: ``"cudnn"``
      where it applies, else ``"flash"`` from ``q_len * kv_len >= 1024**2`` (``256**2`` if
      causal) or where the reference's ``[L, L]`` arrays get large (over 256 MiB of logits),
      otherwise ``"reference"``, and ``"reference"`` whenever weights or dropout are requested.
      ``"reference"`` materialises the weights; ``"flash"`` is blockwise with an online softmax
      and linear memory (no dropout, no weights); ``"cudnn"`` is ``jax.nn``'s fused GPU kernel
      (fp16/bf16, no mask/bias/lengths). All paths share this signature and are tested against
      ``"reference"``.
    block_sizes: ``(block_q, block_k)`` for ``"flash"``; default
      :func:`attention_jax.ops.blockwise.default_block_sizes`.

  Returns:
    ``out [batch..., q_len, heads, v_dim]`` in the input dtype, or
    ``(out, weights [batch..., heads, q_len, kv_len])`` with ``return_weights=True``.

  Raises:
    ValueError / TypeError at trace time for inconsistent shapes, dtypes, masks or arguments.
  """
  validation.check_dropout(dropout_rate, dropout_rng)
  query, key, value, scale = _check_and_prepare(
      query, key, value, bias, mask, query_lengths, key_lengths, scale)
  impl = _resolve_implementation(implementation, query, key, value, bias, mask, is_causal,
                                 query_lengths, key_lengths, dropout_rate, return_weights)
  out, weights = _IMPLEMENTATION_FNS[impl](
      query, key, value, bias, mask, is_causal, scale, query_lengths, key_lengths,
      dropout_rate, dropout_rng, block_sizes=block_sizes)
  if return_weights:
    return out, weights.astype(query.dtype)
  return out


def attention_weights(
    query,
    key,
    bias=None,
    mask=None,
    *,
    is_causal: bool = False,
    scale: float | None = None,
    query_lengths=None,
    key_lengths=None,
) -> Array:
  """The attention weights ``[batch..., heads, q_len, kv_len]`` (input dtype) for plotting.

  Same arguments and semantics as :func:`dot_product_attention`; each unmasked row sums to one,
  a fully masked row is all zeros.
  """
  query, key, _, scale = _check_and_prepare(
      query, key, None, bias, mask, query_lengths, key_lengths, scale)
  weights = _reference_weights(
      query, key, bias, mask, is_causal, scale, query_lengths, key_lengths)
  return weights.astype(query.dtype)


def additive_attention(query, keys, values, w_query, w_key, w_score, mask=None,
                       return_weights: bool = False):
  """Additive (Bahdanau) attention: ``e_i = w_score . tanh(W_query q + W_key k_i)``.

  Args:
    query: decoder state ``[batch..., dq]``.
    keys: encoder states ``[batch..., n, dk]``. With ``w_key=None`` the keys are taken as already
      projected (``[batch..., n, da]``), which lets a decoder project them once per sequence
      instead of once per step.
    values: ``[batch..., n, dv]`` (often the same array as ``keys``).
    w_query: ``[dq, da]``.
    w_key: ``[dk, da]`` or ``None``.
    w_score: ``[da]``.
    mask: bool ``[batch..., n]`` (broadcastable), ``True`` = may attend.
    return_weights: also return the weights.

  Returns:
    context ``[batch..., dv]``, or ``(context, weights [batch..., n])``; a fully masked row gives a
    zero context.
  """
  query, keys, values = jnp.asarray(query), jnp.asarray(keys), jnp.asarray(values)
  w_query, w_score = jnp.asarray(w_query), jnp.asarray(w_score)
  _check_additive(query, keys, values, w_query, w_key, w_score, mask)
  projected_keys = keys if w_key is None else keys @ jnp.asarray(w_key)
  hidden = jnp.tanh((query @ w_query)[..., None, :] + projected_keys)  # [batch..., n, da]
  scores = hidden @ w_score  # [batch..., n]
  weights = masked_softmax(scores, mask)
  context = jnp.einsum("...n,...nd->...d", weights.astype(values.dtype), values,
                       preferred_element_type=accumulation_dtype(values.dtype))
  context = context.astype(values.dtype)
  if return_weights:
    return context, weights.astype(values.dtype)
  return context


def _check_additive(query, keys, values, w_query, w_key, w_score, mask) -> None:
  q_shape, k_shape, v_shape = query.shape, keys.shape, values.shape
  if query.ndim < 1 or keys.ndim != query.ndim + 1:
    raise ValueError(
        f"keys must be [batch..., n, dk] for a query [batch..., dq]; got keys {k_shape}, "
        f"query {q_shape}")
  if k_shape[:-2] != q_shape[:-1]:
    raise ValueError(f"keys have batch axes {k_shape[:-2]} but query has {q_shape[:-1]}")
  if values.ndim != keys.ndim or v_shape[:-1] != k_shape[:-1]:
    raise ValueError(f"values {v_shape} must be [batch..., n, dv] matching keys {k_shape}")
  if w_query.ndim != 2 or w_query.shape[0] != q_shape[-1]:
    raise ValueError(f"w_query must be [dq={q_shape[-1]}, da], got {w_query.shape}")
  attention_dim = w_query.shape[1]
  if w_score.shape != (attention_dim,):
    raise ValueError(f"w_score must be [da={attention_dim}], got {w_score.shape}")
  if w_key is None:
    if k_shape[-1] != attention_dim:
      raise ValueError(
          f"with w_key=None the keys must be projected to da={attention_dim}, got {k_shape}")
  else:
    w_key_shape = jnp.shape(w_key)
    if w_key_shape != (k_shape[-1], attention_dim):
      raise ValueError(f"w_key must be [dk={k_shape[-1]}, da={attention_dim}], got {w_key_shape}")
  if mask is not None:
    validation.require_bool("mask", mask)
    validation.require_broadcastable("mask", mask, k_shape[:-1], "[batch..., n]")
