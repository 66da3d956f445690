"""Fused accelerator kernels behind :func:`attention_jax.ops.dot_product_attention`.

TPU: JAX's Pallas splash attention (``jax.experimental.pallas.ops.tpu.splash_attention``), a
block-sparse flash kernel lowered through Mosaic (a ``tpu_custom_call`` in the lowered program).
The causal limit and the sliding window are a static splash mask (bottom-right aligned as ours:
the mask's offset is ``kv_len - q_len``), packed sequences are splash's segment ids and GQA/MQA
its grouped heads; soft-capping is the kernel's ``attn_logits_soft_cap``. Without hardware the
same kernel runs in Pallas interpret mode (``interpret=True``), which is how it is tested.

Splash gives a query that sees no key the mean of the values (as ``jax.nn`` does); ours is zero
output and zero gradients, so such rows are zeroed after the kernel.
"""

from __future__ import annotations

import contextlib
import contextvars

import jax
import jax.numpy as jnp
import numpy as np

from attention_jax.ops import spec as spec_lib
from attention_jax.ops.spec import AttentionSpec

Array = jax.Array
_LOWERING_PLATFORMS: contextvars.ContextVar[tuple[str, ...]] = contextvars.ContextVar(
    "lowering_platforms", default=())


@contextlib.contextmanager
def lowering_platforms(*platforms: str):
  """Within this block, the default path traced on a CPU host also carries the fused kernel of
  each of ``platforms`` (``"tpu"``, ``"cuda"``) where it supports the call, chosen when the
  program is lowered (``jax.lax.platform_dependent``), for ``jax.export(platforms=...)`` or AOT
  lowering. The CPU branch is unchanged. Not on by default: the Pallas kernels have no
  second-order derivative, and every branch of a ``platform_dependent`` is differentiated, so
  ``grad`` of ``grad`` under ``jit`` would fail even on the CPU. The block acts when the
  function is traced: jit's cache hands a function already traced outside it (same function,
  same argument shapes) its old trace.

  On ``"cuda"`` the default path may pick JAX's Pallas GPU kernel, a Triton call that
  ``jax.export`` accepts only when told (:func:`export_disabled_checks`); ``jit(...).lower``
  needs nothing.

  Example::

    with ops.accelerators.lowering_platforms("tpu", "cuda"):
      exported = jax.export.export(jax.jit(f), platforms=["tpu", "cuda"],
                                   disabled_checks=ops.accelerators.export_disabled_checks())(
                                       *specs)
  """
  token = _LOWERING_PLATFORMS.set(tuple(platforms))
  try:
    yield
  finally:
    _LOWERING_PLATFORMS.reset(token)


def requested_lowering_platforms() -> tuple[str, ...]:
  """The platforms of the innermost :func:`lowering_platforms` block (``()`` outside any)."""
  return _LOWERING_PLATFORMS.get()


#: The custom call of JAX's Pallas GPU (Triton) kernels.
TRITON_CALL = "__gpu$xla.gpu.triton"


def export_disabled_checks() -> list:
  """``jax.export``'s ``disabled_checks`` that a cuda export of the default path may need: Triton
  calls (the Pallas GPU kernel) carry no serialization compatibility guarantee, so an exported
  program holding one is meant for the jax and jaxlib versions that made it."""
  from jax import export
  return [export.DisabledSafetyCheck.custom_call(TRITON_CALL)]
# Splash tiles the sequence in multiples of the 128 TPU lanes.
_SPLASH_LANES = 128
_SPLASH_DTYPES = (jnp.float32, jnp.bfloat16)


def splash_supports(query, key, value, bias, mask, segment_ids, lengths,
                    spec: AttentionSpec) -> bool:
  """Whether :func:`splash_attention` computes exactly our semantics for these arguments: no
  bias, dense mask or dropout; float32/bfloat16; both lengths multiples of 128 (query and key
  lengths and segment ids are splash segment ids; unequal ``head_dim`` and ``v_dim`` are padded
  with zeros to the larger)."""
  del segment_ids, lengths  # any segment ids and lengths are supported
  q_len, kv_len = query.shape[-3], key.shape[-3]
  return (query.dtype in _SPLASH_DTYPES and key.dtype == query.dtype
          and value.dtype == query.dtype
          and q_len % _SPLASH_LANES == 0 and kv_len % _SPLASH_LANES == 0
          and bias is None and mask is None and spec.dropout_rate == 0.0)


def _segments_with_lengths(segment_ids, lengths, batch, q_len: int, kv_len: int):
  """Segment ids that also carry the padding of ``lengths``: a valid position keeps its id
  doubled (even; 0 without segment ids), a padded key gets 1 and a padded query 3, odd ids no
  position of the other side has, so padding meets nothing. ``None`` if neither is given.
  (Ids must lie in [-2**30, 2**30) to stay distinct when doubled.)"""
  q_lens, kv_lens = lengths
  if q_lens is None and kv_lens is None:
    return segment_ids
  if segment_ids is None:
    q_ids = jnp.zeros((*batch, q_len), jnp.int32)
    kv_ids = jnp.zeros((*batch, kv_len), jnp.int32)
  else:
    q_ids = jnp.broadcast_to(jnp.asarray(segment_ids[0], jnp.int32), (*batch, q_len))
    kv_ids = jnp.broadcast_to(jnp.asarray(segment_ids[1], jnp.int32), (*batch, kv_len))
  q_ids, kv_ids = 2 * q_ids, 2 * kv_ids
  if q_lens is not None:
    valid = jnp.arange(q_len) < jnp.asarray(q_lens)[..., None]
    q_ids = jnp.where(valid, q_ids, 3)
  if kv_lens is not None:
    valid = jnp.arange(kv_len) < jnp.asarray(kv_lens)[..., None]
    kv_ids = jnp.where(valid, kv_ids, 1)
  return q_ids, kv_ids


def _equal_head_dims(query, key, value):
  """``(query, key, value)`` with ``head_dim`` and ``v_dim`` padded with zeros to the larger (the
  kernels take one head size): zero features add nothing to ``q . k``, and zero value features
  give output columns that are sliced off, so the result and its gradients are exact."""
  head_dim, v_dim = query.shape[-1], value.shape[-1]
  pad = lambda x, to: jnp.pad(x, [(0, 0)] * (x.ndim - 1) + [(0, to - x.shape[-1])])  # noqa: E731
  if head_dim < v_dim:
    return pad(query, v_dim), pad(key, v_dim), value
  if v_dim < head_dim:
    return query, key, pad(value, head_dim)
  return query, key, value


def _splash_module():
  # Imported on first use: only calls that may take splash load Pallas.
  from jax.experimental.pallas.ops.tpu import splash_attention
  return splash_attention


def _block(length: int) -> int:
  return next(b for b in (512, 256, 128) if length % b == 0)


def _kernel(band, q_len: int, kv_len: int, heads: int, softcap, interpret: bool):
  """A splash kernel for one static mask. Built per trace, not cached: it holds the block map as
  arrays, which must not outlive one trace (a second export then fails); splash caches the NumPy
  work of the block map itself."""
  splash = _splash_module()
  shape = (q_len, kv_len)
  offset = kv_len - q_len
  left, right = band
  if band == (None, None):
    head_mask = splash.FullMask(shape)
  elif left is None and right == 0:
    head_mask = splash.CausalMask(shape, offset=offset)
  else:
    head_mask = splash.LocalMask(shape, window_size=(left, right), offset=offset)
  bq, bkv = _block(q_len), _block(kv_len)
  block_sizes = splash.BlockSizes(
      block_q=bq, block_kv=bkv, block_kv_compute=bkv, block_q_dkv=bq, block_kv_dkv=bkv,
      block_kv_dkv_compute=bkv, block_q_dq=bq, block_kv_dq=bkv)
  return splash.make_splash_mha(
      splash.MultiHeadMask([head_mask] * heads), block_sizes=block_sizes, head_shards=1,
      q_seq_shards=1, attn_logits_soft_cap=softcap, interpret=interpret)


def _band_rows_seen(spec: AttentionSpec, q_len: int, kv_len: int) -> np.ndarray | None:
  """bool ``[q_len]``: the rows the causal limit / window leave some key (``None``: all)."""
  left, right = spec.band
  rows = np.arange(q_len) + (kv_len - q_len)
  first = np.zeros(q_len, np.int64) if left is None else np.maximum(rows - left, 0)
  last = np.full(q_len, kv_len - 1) if right is None else np.minimum(rows + right, kv_len - 1)
  seen = first <= last
  return None if seen.all() else seen


def _rows_seen(spec: AttentionSpec, segment_ids, q_len: int, kv_len: int):
  """bool broadcastable to ``[batch..., q_len]``: the queries that see at least one key, or
  ``None`` when every query provably does."""
  band_seen = _band_rows_seen(spec, q_len, kv_len)
  if segment_ids is None:
    return None if band_seen is None else jnp.asarray(band_seen)
  q_seg, kv_seg = segment_ids
  if q_seg is kv_seg and band_seen is None and q_len == kv_len:
    return None  # self-attention: each query sees at least itself (the band holds the diagonal)
  # One fused compare-and-reduce: no [q_len, kv_len] array is kept.
  same = q_seg[..., :, None] == kv_seg[..., None, :]
  band = spec_lib.position_mask(spec, q_len, kv_len)
  if band is not None:
    same = same & band
  return jnp.any(same, axis=-1)


def splash_attention(query, key, value, *, spec: AttentionSpec, segment_ids=None, lengths=None,
                     interpret: bool = False) -> Array:
  """Our attention through splash attention (see :func:`splash_supports` for what it takes).

  Args:
    query: ``[batch..., q_len, heads, head_dim]``, float32 or bfloat16; ``q_len % 128 == 0``.
    key: ``[batch..., kv_len, kv_heads, head_dim]`` with ``heads % kv_heads == 0``;
      ``kv_len % 128 == 0``.
    value: ``[batch..., kv_len, kv_heads, head_dim]``.
    spec: scale, causal limit, window and soft-cap (:class:`attention_jax.ops.spec.AttentionSpec`).
    segment_ids: ``(query_segment_ids [batch..., q_len], key_value_segment_ids [batch...,
      kv_len])`` int, or ``None``.
    lengths: ``(query_seq_lengths, key_value_seq_lengths)``, each int ``[batch...]`` or ``None``
      (as splash segment ids).
    interpret: run the kernel in Pallas interpret mode (any platform; slow, for tests).

  Returns:
    ``[batch..., q_len, heads, head_dim]`` in the input dtype; a query that sees no key gets zeros
    (and zero gradients).
  """
  *batch, q_len, heads, head_dim = query.shape
  kv_len = key.shape[-3]
  segment_ids = _segments_with_lengths(segment_ids, lengths or (None, None), tuple(batch),
                                       q_len, kv_len)
  kernel = _kernel(spec.band, q_len, kv_len, heads, spec.softcap, interpret)
  # Splash does not scale; scaling the query before the kernel keeps cap(q . k * scale).
  scaled = query * jnp.asarray(spec.scale, query.dtype)
  to_heads_major = lambda x: jnp.swapaxes(x.reshape(-1, *x.shape[-3:]), -2, -3)
  v_dim = value.shape[-1]
  q, k, v = (to_heads_major(x)  # [batch, heads, len, dim]
             for x in _equal_head_dims(scaled, key, value))
  if segment_ids is None:
    out = jax.vmap(kernel)(q, k, v)
  else:
    segments = _splash_module().SegmentIds
    q_seg, kv_seg = (s.reshape(-1, s.shape[-1]).astype(jnp.int32) for s in segment_ids)
    out = jax.vmap(lambda q, k, v, qs, ks: kernel(q, k, v, segment_ids=segments(qs, ks)))(
        q, k, v, jnp.broadcast_to(q_seg, (q.shape[0], q_len)),
        jnp.broadcast_to(kv_seg, (q.shape[0], kv_len)))
  out = jnp.swapaxes(out, -2, -3)[..., :v_dim].reshape(*batch, q_len, heads, v_dim)
  seen = _rows_seen(spec, segment_ids, q_len, kv_len)
  if seen is not None:
    out = jnp.where(seen[..., :, None, None], out, jnp.zeros((), out.dtype))
  return out.astype(query.dtype)


def pallas_gpu_supports(query, key, value, bias, mask, segment_ids, lengths,
                        spec: AttentionSpec) -> bool:
  """Whether :func:`pallas_gpu_attention` computes exactly our semantics: self-attention shapes
  (``q_len == kv_len``, a multiple of 128), causal or not, one set of
  segment ids for queries and keys; no window, soft-cap, bias, mask, lengths or dropout."""
  q_len, kv_len = query.shape[-3], key.shape[-3]
  return (query.dtype in (jnp.float32, jnp.bfloat16, jnp.float16) and key.dtype == query.dtype
          and value.dtype == query.dtype
          and q_len == kv_len and q_len % _SPLASH_LANES == 0
          and (segment_ids is None or segment_ids[0] is segment_ids[1])
          and bias is None and mask is None and all(x is None for x in lengths)
          and spec.window is None and spec.softcap is None and spec.dropout_rate == 0.0)


def pallas_gpu_attention(query, key, value, *, spec: AttentionSpec, segment_ids=None,
                         lengths=None, interpret: bool = False) -> Array:
  """Our attention through JAX's Pallas GPU flash kernel
  (``jax.experimental.pallas.ops.gpu.attention.mha``, Triton: ``__gpu$xla.gpu.triton``); see
  :func:`pallas_gpu_supports` for what it takes.

  Args:
    query: ``[batch..., length, heads, head_dim]``; ``length % 128 == 0``.
    key: ``[batch..., length, kv_heads, head_dim]`` with ``heads % kv_heads == 0`` (the kernel has
      no GQA: the key/value heads are repeated).
    value: ``[batch..., length, kv_heads, head_dim]``.
    spec: scale and causal limit (:class:`attention_jax.ops.spec.AttentionSpec`).
    segment_ids: ``(ids, ids)`` int ``[batch..., length]``, the same array for queries and keys,
      or ``None``.
    interpret: run the kernel in Pallas interpret mode (any platform; slow, for tests).

  Returns:
    ``[batch..., length, heads, head_dim]`` in the input dtype. Every query sees at least itself,
    so no row is empty.
  """
  from jax.experimental.pallas.ops.gpu import attention as gpu_attention
  if lengths is not None and any(x is not None for x in lengths):
    raise ValueError("pallas_gpu_attention takes no query/key lengths")
  *batch, length, heads, _ = query.shape
  v_dim = value.shape[-1]
  group = heads // key.shape[-2]
  if group > 1:
    key, value = (jnp.repeat(x, group, axis=-2) for x in (key, value))
  q, k, v = (x.reshape(-1, length, heads, x.shape[-1])
             for x in _equal_head_dims(query, key, value))
  ids = None
  if segment_ids is not None:
    ids = jnp.broadcast_to(segment_ids[0].reshape(-1, length).astype(jnp.int32),
                           (q.shape[0], length))
  out = gpu_attention.mha(q, k, v, ids, sm_scale=spec.scale, causal=spec.is_causal,
                          interpret=interpret)
  return out[..., :v_dim].reshape(*batch, length, heads, v_dim).astype(query.dtype)
