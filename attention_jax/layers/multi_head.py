"""Multi-head dot-product attention (Vaswani et al. 2017) with grouped-query heads, RoPE and a
KV cache for incremental decoding.

Attribute and parameter names are those of ``flax.linen.MultiHeadDotProductAttention``
(``query``/``key``/``value`` are ``DenseGeneral`` to ``(heads, head_dim)``, ``out`` is a
``DenseGeneral`` over the last two axes), so a parameter tree moves between the two unchanged as
long as ``num_kv_heads`` is left at ``None``.
"""

from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from attention_jax import ops
from attention_jax import parallel
from attention_jax.ops import validation

Array = jax.Array
Initializer = Callable[..., Array]

#: ``implementation`` value for sequence-parallel ring attention over the mesh axis RING_AXIS.
RING = "ring"
RING_AXIS = "sequence"


def resolve_deterministic(field: bool | None, argument: bool | None, dropout_rate: float) -> bool:
  """The call argument wins over the field; with neither and dropout on, refuse to guess."""
  deterministic = argument if argument is not None else field
  if deterministic is None:
    if dropout_rate > 0.0:
      raise ValueError(
          f"dropout_rate={dropout_rate} needs `deterministic` (True at evaluation, False for "
          f"training), as a module field or a call argument")
    return True
  return bool(deterministic)


def _is_concrete(x) -> bool:
  return not isinstance(x, jax.core.Tracer)


class MultiHeadAttention(nn.Module):
  """Multi-head attention, self (``inputs_k=None``) or cross; called as flax's
  ``MultiHeadDotProductAttention`` is (``inputs_q, inputs_k, inputs_v``, or ``inputs_kv=``).

  Attributes:
    num_heads: number of query heads.
    num_kv_heads: number of key/value heads (``None`` = ``num_heads``); a divisor of ``num_heads``
      gives grouped-query attention, ``1`` multi-query attention.
    qkv_features: total query width ``heads * head_dim`` (default: the features of ``inputs_q``).
    out_features: output width (default: the features of ``inputs_q``).
    dropout_rate: dropout on the attention weights.
    deterministic: default for the call argument of the same name.
    use_bias: biases in the four projections.
    is_causal: query ``i`` attends to keys ``j <= i + kv_len - q_len`` (bottom-right aligned, see
      :func:`ops.causal_mask`).
    decode: keep a KV cache in the ``cache`` collection (self-attention only; see ``__call__``).
    rotary: rotate queries and keys by their positions (RoPE, :func:`ops.apply_rotary`);
      self-attention only.
    rotary_base: the RoPE frequency base.
    kernel_init, bias_init: initialisers of the projections (Flax's defaults).
    dtype: computation dtype (``None``: from the inputs and parameters).
    param_dtype: parameter dtype.
    local_window_size: sliding-window attention, ``(left, right)`` or an int for ``(w, w)``
      (:func:`ops.dot_product_attention`); with ``decode`` the cache keeps only the last ``left``
      positions (a rolling cache: memory O(window) however long the generation).
    softcap: logits become ``softcap * tanh(logits / softcap)`` (Gemma 2).
    attention_fn: the attention function, called as ``attention_fn(query, key, value, bias, mask,
      **keywords)`` with jax.nn's keywords (``is_causal``, ``query_seq_lengths``,
      ``key_value_seq_lengths``, ``local_window_size``, ``implementation``) and ours
      (``query_segment_ids``, ``key_value_segment_ids``, ``softcap``, ``dropout_rate``,
      ``dropout_rng``, ``return_weights``), each passed only when the call uses it, so
      ``jax.nn.dot_product_attention`` (or a partial of it) drops in for what it supports.
      Default :func:`ops.dot_product_attention`.
    implementation: passed to :func:`ops.dot_product_attention`, or ``"ring"``: sequence
      parallelism with :func:`attention_jax.parallel.ring_attention` over the ``sequence`` axis
      of the context mesh (``jax.set_mesh``; :func:`attention_jax.training.train` sets it), for
      self-attention without mask, bias, lengths, attention dropout or weights (windows,
      soft-capping and segment ids work). Where that axis
      is absent or of size 1, in decode mode and in cross-attention, ``"ring"`` is the default
      path (``None``), so one model trains split and evaluates or generates on one device.
  """

  num_heads: int
  num_kv_heads: int | None = None
  qkv_features: int | None = None
  out_features: int | None = None
  dropout_rate: float = 0.0
  deterministic: bool | None = None
  use_bias: bool = True
  is_causal: bool = False
  decode: bool = False
  rotary: bool = False
  rotary_base: float = 10_000.0
  kernel_init: Initializer = nn.initializers.lecun_normal()
  bias_init: Initializer = nn.initializers.zeros_init()
  dtype: Any = None
  param_dtype: Any = jnp.float32
  local_window_size: int | tuple[int, int] | None = None
  softcap: float | None = None
  attention_fn: Callable[..., Any] = ops.dot_product_attention
  implementation: str | None = None

  @nn.compact
  def __call__(self, inputs_q, inputs_k=None, inputs_v=None, *, inputs_kv=None, mask=None,
               bias=None, query_seq_lengths=None, key_value_seq_lengths=None,
               query_segment_ids=None, key_value_segment_ids=None, positions=None,
               deterministic: bool | None = None, sow_weights: bool = False):
    """Attends from ``inputs_q`` to ``inputs_k`` / ``inputs_v`` (or to itself).

    Args:
      inputs_q: ``[batch..., q_len, features]``.
      inputs_k: ``[batch..., kv_len, kv_features]``, the keys' input for cross-attention, or
        ``None`` (self-attention; so is ``inputs_k`` given as ``inputs_q`` itself).
      inputs_v: ``[batch..., kv_len, v_features]``, the values' input (default ``inputs_k``).
      inputs_kv: both at once (flax's older spelling); not with ``inputs_k``/``inputs_v``.
      mask: bool, ``True`` = may attend, or a flax float/int mask (``nn.make_attention_mask``,
        ``nn.make_causal_mask``: nonzero = may attend), broadcastable to
        ``[batch..., heads, q_len, kv_len]`` (``kv_len`` is the cache length ``max_len`` in
        decode mode).
      bias: float, added to the logits, same broadcast as ``mask``.
      query_seq_lengths: int ``[batch...]``; padded queries get zero attention output.
      key_value_seq_lengths: int ``[batch...]``; padded keys are masked.
      query_segment_ids, key_value_segment_ids: int ``[batch..., q_len]`` / ``[batch...,
        kv_len]``: packed sequences, a query attends only to keys of its own segment (the second
        defaults to the first in self-attention).
      positions: int ``[batch..., length]``, the positions RoPE rotates by (default ``0..L-1``);
        for packed sequences, positions that restart at 0 in every segment.
      deterministic: ``True`` turns dropout off (overrides the field).
      sow_weights: sow the weights ``[batch..., heads, q_len, kv_len]`` as
        ``intermediates/attention_weights``.

    Returns:
      ``[batch..., q_len, out_features]``.

    With ``decode=True`` and self-attention, the first call while the ``cache`` collection is
    empty (normally during ``init``) creates ``cached_key``/``cached_value``
    ``[batch..., max_len, kv_heads, head_dim]`` with ``max_len`` the length of that input, and
    ``cache_index``. Every later call (``apply(..., mutable=['cache'])``) takes a chunk of
    ``L >= 1`` new positions (a whole prompt, then one or more tokens at a time), writes its keys
    and values at ``cache_index``, lets new query ``i`` attend to cache positions
    ``<= cache_index + i`` (causal inside the chunk whatever ``is_causal`` says: a cache only makes
    sense for a causal decoder), and advances ``cache_index`` by ``L``. A chunk that would run past
    ``max_len`` raises a ``ValueError`` when the index is concrete; under ``jit`` the index is a
    tracer, so instead the outputs of that chunk and of every later one are NaN (the index keeps
    growing past ``max_len``) rather than silently wrong.
    """
    inputs_q = jnp.asarray(inputs_q)
    inputs_k, inputs_v, cross = self._key_value_inputs(inputs_q, inputs_k, inputs_v, inputs_kv)
    if self.rotary and cross:
      raise ValueError("rotary=True is for self-attention; got inputs_k for cross-attention")
    if hasattr(mask, "dtype") and jnp.issubdtype(mask.dtype, jnp.number):
      mask = jnp.asarray(mask) != 0  # flax's float masks: nonzero = may attend

    features = self.out_features or inputs_q.shape[-1]
    qkv_features = self.qkv_features or inputs_q.shape[-1]
    kv_heads = self.num_kv_heads or self.num_heads
    head_dim = self._head_dim(qkv_features, kv_heads)

    def projection(heads, name):
      return nn.DenseGeneral(
          features=(heads, head_dim), axis=-1, use_bias=self.use_bias,
          kernel_init=self.kernel_init, bias_init=self.bias_init, dtype=self.dtype,
          param_dtype=self.param_dtype, name=name)

    query = projection(self.num_heads, "query")(inputs_q)
    key = projection(kv_heads, "key")(inputs_k)
    value = projection(kv_heads, "value")(inputs_v)

    is_causal = self.is_causal
    window = self.local_window_size
    if self.decode and not cross and self.has_variable("cache", "cached_key"):
      if self._rolling_window() is not None:
        query, key, value, mask = self._rolling_decode_step(query, key, value, mask, bias)
      else:
        query, key, value, mask = self._decode_step(query, key, value, mask, bias)
      is_causal, window = False, None  # the cache mask is causal (and windowed) already
    else:
      if self.decode and not cross:
        self._create_cache(key, value)
      if self.rotary:
        if positions is None:
          positions = jnp.arange(query.shape[-3])
        query = ops.apply_rotary(query, positions, base=self.rotary_base)
        key = ops.apply_rotary(key, positions, base=self.rotary_base)

    deterministic = resolve_deterministic(self.deterministic, deterministic, self.dropout_rate)
    dropout_rate = 0.0 if deterministic else self.dropout_rate
    implementation = self.implementation
    if implementation == RING:
      if self._ring_active(cross):
        self._check_ring(mask, bias, query_seq_lengths, key_value_seq_lengths, dropout_rate,
                         sow_weights)
        result = parallel.ring_attention(
            query, key, value, is_causal=is_causal, local_window_size=window,
            softcap=self.softcap, query_segment_ids=query_segment_ids,
            key_value_segment_ids=key_value_segment_ids, axis_name=RING_AXIS)
        return self._out(result, features)
      implementation = None
    keywords = dict(
        is_causal=is_causal, query_seq_lengths=query_seq_lengths,
        key_value_seq_lengths=key_value_seq_lengths, implementation=implementation,
        local_window_size=window, query_segment_ids=query_segment_ids,
        key_value_segment_ids=key_value_segment_ids, softcap=self.softcap,
        dropout_rate=dropout_rate, return_weights=sow_weights)
    # Only what this call uses, so jax.nn's function (which lacks our extras) can be plugged in.
    keywords = {name: value for name, value in keywords.items()
                if value is not None and not (isinstance(value, (bool, float)) and not value)}
    if dropout_rate > 0.0:
      keywords["dropout_rng"] = self.make_rng("dropout")
    result = self.attention_fn(query, key, value, bias, mask, **keywords)
    if sow_weights:
      result, weights = result
      self.sow("intermediates", "attention_weights", weights)

    return self._out(result, features)

  def _out(self, result, features):
    return nn.DenseGeneral(
        features=features, axis=(-2, -1), use_bias=self.use_bias, kernel_init=self.kernel_init,
        bias_init=self.bias_init, dtype=self.dtype, param_dtype=self.param_dtype,
        name="out")(result)

  def _ring_active(self, cross: bool) -> bool:
    """Whether ``implementation="ring"`` splits this call over the context mesh."""
    if cross or self.decode:
      return False
    mesh = jax.sharding.get_abstract_mesh()
    return (not mesh.empty and RING_AXIS in mesh.axis_names
            and int(mesh.shape[RING_AXIS]) > 1)

  @staticmethod
  def _check_ring(mask, bias, query_seq_lengths, key_value_seq_lengths, dropout_rate,
                  sow_weights) -> None:
    unsupported = [name for name, value in (
        ("mask", mask), ("bias", bias), ("query_seq_lengths", query_seq_lengths),
        ("key_value_seq_lengths", key_value_seq_lengths)) if value is not None]
    if dropout_rate > 0.0:
      unsupported.append(f"attention dropout_rate={dropout_rate}")
    if sow_weights:
      unsupported.append("sow_weights=True")
    if unsupported:
      raise ValueError(
          f"implementation='ring' (sequence parallelism over mesh axis {RING_AXIS!r}) supports "
          f"is_causal, local_window_size, softcap and segment ids; got "
          f"{', '.join(unsupported)}")

  def _head_dim(self, qkv_features: int, kv_heads: int) -> int:
    if self.num_heads <= 0 or qkv_features % self.num_heads:
      raise ValueError(
          f"qkv_features={qkv_features} must be divisible by num_heads={self.num_heads}")
    if kv_heads <= 0 or self.num_heads % kv_heads:
      raise ValueError(
          f"num_heads={self.num_heads} must be a multiple of num_kv_heads={self.num_kv_heads}")
    return qkv_features // self.num_heads

  @staticmethod
  def _key_value_inputs(inputs_q, inputs_k, inputs_v, inputs_kv):
    """``(inputs_k, inputs_v, cross)`` after flax's rules, each checked against ``inputs_q``."""
    if inputs_q.ndim < 2:
      raise ValueError(f"inputs_q must be [batch..., q_len, features], got shape {inputs_q.shape}")
    name = "inputs_k"
    if inputs_kv is not None:
      if inputs_k is not None or inputs_v is not None:
        raise ValueError("give inputs_kv or inputs_k/inputs_v, not both")
      inputs_k, name = inputs_kv, "inputs_kv"
    if inputs_k is None:
      if inputs_v is not None:
        raise ValueError("inputs_v needs inputs_k (the keys' input)")
      return inputs_q, inputs_q, False
    cross = inputs_k is not inputs_q
    inputs_k = jnp.asarray(inputs_k)
    inputs_v = inputs_k if inputs_v is None else jnp.asarray(inputs_v)
    for arg, x in ((name, inputs_k), ("inputs_v", inputs_v)):
      if x.ndim != inputs_q.ndim or x.shape[:-2] != inputs_q.shape[:-2]:
        raise ValueError(
            f"{arg} has shape {x.shape} but inputs_q has shape {inputs_q.shape}; both are "
            f"[batch..., length, features] with the same batch axes")
    if inputs_v.shape[-2] != inputs_k.shape[-2]:
      raise ValueError(f"inputs_v has {inputs_v.shape[-2]} positions but {name} has "
                       f"{inputs_k.shape[-2]}; keys and values pair up one to one")
    return inputs_k, inputs_v, cross

  def _rolling_window(self) -> int | None:
    """The number of past positions a decoding query sees (the window's left bound), when the
    cache rolls over that many slots; None for a full cache."""
    window = self.local_window_size
    if window is None:
      return None
    left = window if isinstance(window, int) else window[0]
    return None if left is None else max(int(left), 1)

  def _create_cache(self, key, value) -> None:
    shape_key, shape_value = key.shape, value.shape
    slots = self._rolling_window()
    if slots is not None:  # a ring of the last `slots` positions, whatever the input length
      shape_key = (*key.shape[:-3], slots, *key.shape[-2:])
      shape_value = (*value.shape[:-3], slots, *value.shape[-2:])
    self.variable("cache", "cached_key", jnp.zeros, shape_key, key.dtype)
    self.variable("cache", "cached_value", jnp.zeros, shape_value, value.dtype)
    self.variable("cache", "cache_index", lambda: jnp.array(0, dtype=jnp.int32))

  def _rolling_decode_step(self, query, key, value, mask, bias):
    """Sliding-window decoding with a ring of ``W`` cached positions (position ``p`` in slot
    ``p % W``): the chunk attends over the ring and itself, then its last ``W`` keys/values
    replace the oldest. Returns the query, the keys/values ``[batch..., W + chunk, ...]`` and the
    mask of the chunk over them."""
    if mask is not None or bias is not None:
      raise ValueError("decode with local_window_size (a rolling cache) takes no mask or bias: "
                       "the cache's slots are reused, so a mask over them would be meaningless")
    cached_key = self.variable("cache", "cached_key")
    cached_value = self.variable("cache", "cached_value")
    cache_index = self.variable("cache", "cache_index")
    *batch, slots, _, _ = cached_key.value.shape
    if tuple(key.shape[:-3]) != tuple(batch):
      raise ValueError(
          f"decode: inputs_q has batch axes {key.shape[:-3]} but the cache was created for "
          f"{tuple(batch)} (cached_key {cached_key.value.shape})")
    chunk = key.shape[-3]
    index = cache_index.value
    positions = index + jnp.arange(chunk, dtype=jnp.int32)
    if self.rotary:
      query = ops.apply_rotary(query, positions, base=self.rotary_base)
      key = ops.apply_rotary(key, positions, base=self.rotary_base)
    key = key.astype(cached_key.value.dtype)
    value = value.astype(cached_value.value.dtype)
    # The position each slot holds: the latest p < index with p % slots == slot (< 0: empty).
    slot = jnp.arange(slots, dtype=jnp.int32)
    slot_positions = index - 1 - jnp.mod(index - 1 - slot, slots)
    keys = jnp.concatenate([cached_key.value, key], axis=-3)
    values = jnp.concatenate([cached_value.value, value], axis=-3)
    key_positions = jnp.concatenate([slot_positions, positions])
    rows, cols = positions[:, None], key_positions[None, :]
    left = self.local_window_size
    left = left if isinstance(left, int) else left[0]
    visible = (cols >= 0) & (cols <= rows) & (cols >= rows - left)
    kept = min(chunk, slots)  # a chunk longer than the ring keeps only its last positions
    kept_slots = jnp.mod(positions[chunk - kept:], slots)
    cached_key.value = cached_key.value.at[..., kept_slots, :, :].set(key[..., chunk - kept:, :, :])
    cached_value.value = cached_value.value.at[..., kept_slots, :, :].set(
        value[..., chunk - kept:, :, :])
    cache_index.value = index + chunk
    return query.astype(keys.dtype), keys, values, visible

  def _decode_step(self, query, key, value, mask, bias):
    """Writes the chunk's keys/values into the cache; returns the query, the whole cache and the
    mask of the chunk over it."""
    cached_key = self.variable("cache", "cached_key")
    cached_value = self.variable("cache", "cached_value")
    cache_index = self.variable("cache", "cache_index")
    *batch, max_len, kv_heads, head_dim = cached_key.value.shape
    chunk = key.shape[-3]
    if tuple(key.shape[:-3]) != tuple(batch):
      raise ValueError(
          f"decode: inputs_q has batch axes {key.shape[:-3]} but the cache was created for "
          f"{tuple(batch)} (cached_key {cached_key.value.shape})")
    if chunk > max_len:
      raise ValueError(
          f"decode: a chunk of {chunk} positions does not fit a cache of max_len={max_len}")
    index = cache_index.value
    if _is_concrete(index) and int(index) + chunk > max_len:
      raise ValueError(
          f"decode: cache_index={int(index)} + {chunk} new positions overflows the cache of "
          f"max_len={max_len}; initialise the cache with a longer input")
    # The user's mask and bias are checked against the final logits shape before they are
    # combined with the cache mask, so the error names their own shapes.
    validation.check_mask_and_bias(mask, bias, (*batch, self.num_heads, chunk, max_len))

    positions = index + jnp.arange(chunk, dtype=jnp.int32)
    if self.rotary:
      query = ops.apply_rotary(query, positions, base=self.rotary_base)
      key = ops.apply_rotary(key, positions, base=self.rotary_base)
    start = (0,) * len(batch) + (index, 0, 0)
    key = lax.dynamic_update_slice(
        cached_key.value, key.astype(cached_key.value.dtype), start)
    value = lax.dynamic_update_slice(
        cached_value.value, value.astype(cached_value.value.dtype), start)
    cached_key.value, cached_value.value = key, value
    cache_index.value = index + chunk

    # New query i sits at position index + i and sees every cached position up to its own;
    # this also hides the not yet written (zero) slots beyond index + chunk - 1.
    visible = jnp.arange(max_len)[None, :] <= positions[:, None]  # [chunk, max_len]
    mask = visible if mask is None else jnp.logical_and(mask, visible)
    if not _is_concrete(index):
      overflow = index + chunk > max_len
      query = jnp.where(overflow, jnp.asarray(jnp.nan, query.dtype), query)
    return query.astype(key.dtype), key, value, mask


class SelfAttention(MultiHeadAttention):
  """:class:`MultiHeadAttention` of a sequence with itself; one head unless told otherwise."""

  num_heads: int = 1

  @nn.compact
  def __call__(self, x, *, mask=None, bias=None, query_seq_lengths=None,
               key_value_seq_lengths=None, query_segment_ids=None, positions=None,
               deterministic: bool | None = None, sow_weights: bool = False):
    """``x [batch..., length, features]`` -> ``[batch..., length, out_features]``; the keyword
    arguments are those of :meth:`MultiHeadAttention.__call__`."""
    return super().__call__(
        x, None, mask=mask, bias=bias, query_seq_lengths=query_seq_lengths,
        key_value_seq_lengths=key_value_seq_lengths, query_segment_ids=query_segment_ids,
        positions=positions, deterministic=deterministic, sow_weights=sow_weights)
