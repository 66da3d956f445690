"""Ring attention: exact attention with the sequence split over a mesh axis (Liu et al. 2023).

Each device of the ``sequence`` axis holds one block of ``L / n`` consecutive positions of the
queries, keys and values. The key/value blocks travel around the ring with ``lax.ppermute``
(device ``i`` sends to ``i + 1``); after ``n - 1`` hops every query block has met every key
block, and the online softmax (running max ``m``, running sum ``l``, float32) combines the
partial results exactly. A query block skips (``lax.switch``) the key blocks the causal limit or
a sliding window hides and those whose segment ids no query of the block shares, and compares
positions only in the blocks a band edge cuts.

The backward pass (``jax.custom_vjp``) recomputes each block's weights from the saved
logsumexp and sends the key/value gradients around the ring with their blocks, so each device
stores only its own blocks (no ``[L, L]`` array anywhere): memory per device is linear in
``L / n``.

:func:`ring_attention` is the global view (``shard_map`` over the mesh);
:func:`ring_attention_shard` is the per-device function for use inside an existing ``shard_map``.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Sequence

import jax
import jax.numpy as jnp
from jax import lax
from jax.sharding import PartitionSpec as P

from attention_jax.ops import spec as spec_lib
from attention_jax.parallel.mesh import BATCH_AXES

Array = jax.Array
_LOWEST = float(jnp.finfo(jnp.float32).min)
_HIGHEST = float(jnp.finfo(jnp.float32).max)


# ---------------------------------------------------------------------------------------------
# Per-device math. Internal layout: q [b, lq, hk, g, d] (g query heads per key/value head),
# k/v [b, lk, hk, d|dv]; segment ids [b, lq] / [b, lk]; statistics [b, hk, g, lq].


@dataclasses.dataclass(frozen=True)
class _Ring:
  """Static description of one call: the ring and the attention options."""
  axis_name: str
  n: int
  scale: float
  left: int | None   # the band of visible keys around the diagonal (spec.band); None = open
  right: int | None
  softcap: float | None
  has_segments: bool


_CLEAR, _HIDDEN, _CUT = 0, 1, 2


def _block_kind(cfg: _Ring, src, idx, block: int):
  """Whether key block ``src`` is clear, hidden or cut by the band for query block ``idx``.

  Key ``c`` of block ``src`` and query ``r`` of block ``idx`` differ by ``(src - idx) * block +
  c - r`` positions, which ranges over ``delta +- (block - 1)``; the band keeps ``-left <= c - r
  <= right``.
  """
  delta = (src - idx) * block
  lo, hi = delta - (block - 1), delta + (block - 1)
  hidden = jnp.bool_(False)
  clear = jnp.bool_(True)
  if cfg.left is not None:
    hidden |= hi < -cfg.left
    clear &= lo >= -cfg.left
  if cfg.right is not None:
    hidden |= lo > cfg.right
    clear &= hi <= cfg.right
  return jnp.where(hidden, _HIDDEN, jnp.where(clear, _CLEAR, _CUT))


def _segments_meet(q_seg, kv_seg):
  """False when no query row of any batch row shares a segment with the key block: the ranges
  of ids are disjoint, so equal ids are impossible and the block can be skipped."""
  disjoint = ((q_seg.max(-1) < kv_seg.min(-1)) | (kv_seg.max(-1) < q_seg.min(-1)))
  return ~jnp.all(disjoint)


def _logits(cfg: _Ring, q, k, q_seg, kv_seg, src, idx, cut: bool):
  """Float32 ``[b, hk, g, lq, lk]`` logits, ``-inf`` where hidden, and the soft-cap's
  derivative (or None)."""
  s = jnp.einsum("bqhgd,bkhd->bhgqk", q, k, preferred_element_type=jnp.float32) * cfg.scale
  dcap = None
  if cfg.softcap is not None:
    t = jnp.tanh(s / cfg.softcap)
    s, dcap = cfg.softcap * t, 1.0 - t * t
  keep = None
  if cut:
    block = q.shape[1]
    rows = idx * block + jnp.arange(block)[:, None]
    cols = src * block + jnp.arange(block)[None, :]
    if cfg.right is not None:
      keep = cols <= rows + cfg.right
    if cfg.left is not None:
      lower = cols >= rows - cfg.left
      keep = lower if keep is None else keep & lower
  if cfg.has_segments:
    same = (q_seg[:, :, None] == kv_seg[:, None, :])[:, None, None]  # [b, 1, 1, lq, lk]
    keep = same if keep is None else keep & same
  if keep is not None:
    s = jnp.where(keep, s, -jnp.inf)
  return s, dcap


def _ring_perm(n: int):
  return [(i, (i + 1) % n) for i in range(n)]


def _visit(cfg: _Ring, src, idx, block: int, q_seg, kv_seg, compute, skip):
  """Runs ``compute(cut)`` for key block ``src`` seen from query block ``idx``, or ``skip()``
  when the band hides it or no segment meets."""
  if cfg.left is None and cfg.right is None and not cfg.has_segments:
    return compute(False)
  kind = _block_kind(cfg, src, idx, block)
  if cfg.has_segments:
    kind = jnp.where(_segments_meet(q_seg, kv_seg), kind, _HIDDEN)
  return lax.switch(kind, [lambda: compute(False), skip, lambda: compute(True)])


def _forward(cfg: _Ring, q, k, v, q_seg, kv_seg):
  """``(out [b, lq, hk, g, dv] in q's dtype, lse [b, hk, g, lq] float32)``."""
  b, lq, hk, g, _ = q.shape
  dv = v.shape[-1]
  idx = lax.axis_index(cfg.axis_name)

  def update(carry, k_blk, v_blk, kv_seg_blk, src, cut):
    m, l, acc = carry
    s, _ = _logits(cfg, q, k_blk, q_seg, kv_seg_blk, src, idx, cut)
    # Rows with nothing visible yet keep the lowest float32 as their max, so exp(-inf - max) is
    # still 0 and no inf ever leaves the function (jax.debug_infs).
    m_new = jnp.maximum(m, s.max(-1))
    p = jnp.exp(s - m_new[..., None])
    correction = jnp.exp(m - m_new)
    l = l * correction + p.sum(-1)
    pv = jnp.einsum("bhgqk,bkhd->bhgqd", p.astype(v_blk.dtype), v_blk,
                    preferred_element_type=jnp.float32)
    return m_new, l, acc * correction[..., None] + pv

  def block(carry, k_blk, v_blk, kv_seg_blk, src):
    return _visit(cfg, src, idx, lq, q_seg, kv_seg_blk,
                  lambda cut: update(carry, k_blk, v_blk, kv_seg_blk, src, cut),
                  lambda: carry)

  carry = (jnp.full((b, hk, g, lq), _LOWEST, jnp.float32),
           jnp.zeros((b, hk, g, lq), jnp.float32),
           jnp.zeros((b, hk, g, lq, dv), jnp.float32))
  carry = block(carry, k, v, kv_seg, idx)

  def hop(state, t):
    carry, k_blk, v_blk, kv_seg_blk = state
    k_blk, v_blk, kv_seg_blk = (lax.ppermute(x, cfg.axis_name, _ring_perm(cfg.n))
                                for x in (k_blk, v_blk, kv_seg_blk))
    carry = block(carry, k_blk, v_blk, kv_seg_blk, (idx - t) % cfg.n)
    return (carry, k_blk, v_blk, kv_seg_blk), None

  if cfg.n > 1:
    (carry, _, _, _), _ = lax.scan(hop, (carry, k, v, kv_seg), jnp.arange(1, cfg.n))
  m, l, acc = carry
  seen = l > 0
  out = jnp.where(seen[..., None], acc / jnp.where(seen, l, 1.0)[..., None], 0.0)
  # A row that saw nothing gets the highest float32: exp(logit - lse) is 0 in the backward pass.
  lse = jnp.where(seen, m + jnp.log(jnp.where(seen, l, 1.0)), _HIGHEST)
  return jnp.moveaxis(out, 3, 1).astype(q.dtype), lse  # [b, lq, hk, g, dv]


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _ring(cfg, q, k, v, q_seg, kv_seg):
  return _forward(cfg, q, k, v, q_seg, kv_seg)[0]


def _ring_fwd(cfg, q, k, v, q_seg, kv_seg):
  out, lse = _forward(cfg, q, k, v, q_seg, kv_seg)
  return out, (q, k, v, q_seg, kv_seg, out, lse)


def _ring_bwd(cfg, residuals, d_out):
  q, k, v, q_seg, kv_seg, out, lse = residuals
  lq = q.shape[1]
  idx = lax.axis_index(cfg.axis_name)
  d_out32 = d_out.astype(jnp.float32)
  # D_i = sum_d dO_i * O_i = sum_j P_ij dP_ij: the softmax backward's row term.
  delta = jnp.einsum("bqhgd,bqhgd->bhgq", d_out32, out.astype(jnp.float32))

  def grads(dq, k_blk, v_blk, kv_seg_blk, dk, dv, src, cut):
    s, dcap = _logits(cfg, q, k_blk, q_seg, kv_seg_blk, src, idx, cut)
    p = jnp.exp(s - lse[..., None])  # 0 where masked (s = -inf) or the row saw nothing
    dv = dv + jnp.einsum("bhgqk,bqhgd->bkhd", p, d_out32)
    dp = jnp.einsum("bqhgd,bkhd->bhgqk", d_out32, v_blk, preferred_element_type=jnp.float32)
    ds = p * (dp - delta[..., None])
    if dcap is not None:  # through softcap * tanh(x / softcap)
      ds = ds * dcap
    ds = ds * cfg.scale
    dq = dq + jnp.einsum("bhgqk,bkhd->bqhgd", ds, k_blk, preferred_element_type=jnp.float32)
    dk = dk + jnp.einsum("bhgqk,bqhgd->bkhd", ds, q, preferred_element_type=jnp.float32)
    return dq, dk, dv

  def hop(state, t):
    dq, k_blk, v_blk, kv_seg_blk, dk, dv = state
    src = (idx - t) % cfg.n
    dq, dk, dv = _visit(
        cfg, src, idx, lq, q_seg, kv_seg_blk,
        lambda cut: grads(dq, k_blk, v_blk, kv_seg_blk, dk, dv, src, cut),
        lambda: (dq, dk, dv))
    if cfg.n > 1:  # The gradients travel with their blocks; after n hops they are home.
      k_blk, v_blk, kv_seg_blk, dk, dv = (
          lax.ppermute(x, cfg.axis_name, _ring_perm(cfg.n))
          for x in (k_blk, v_blk, kv_seg_blk, dk, dv))
    return (dq, k_blk, v_blk, kv_seg_blk, dk, dv), None

  state = (jnp.zeros(q.shape, jnp.float32), k, v, kv_seg,
           jnp.zeros(k.shape, jnp.float32), jnp.zeros(v.shape, jnp.float32))
  (dq, _, _, _, dk, dv), _ = lax.scan(hop, state, jnp.arange(cfg.n))
  return dq.astype(q.dtype), dk.astype(k.dtype), dv.astype(v.dtype), None, None


_ring.defvjp(_ring_fwd, _ring_bwd)


def _check(query, key, value) -> tuple[int, int]:
  """``(kv_heads, group)``; raises ``ValueError`` naming the argument."""
  if query.ndim < 3:
    raise ValueError(f"query must be [batch..., length, heads, head_dim], got shape "
                     f"{query.shape}")
  for name, x in (("key", key), ("value", value)):
    if x.ndim != query.ndim or x.shape[:-3] != query.shape[:-3]:
      raise ValueError(f"{name} has shape {x.shape} but query has shape {query.shape}; both "
                       f"are [batch..., length, heads, dim] with the same batch axes")
    if x.shape[-3] != query.shape[-3]:
      raise ValueError(f"{name} has length {x.shape[-3]} but query has {query.shape[-3]}: ring "
                       f"attention is self-attention over one split sequence")
  if key.shape[-1] != query.shape[-1]:
    raise ValueError(f"key has head_dim {key.shape[-1]} but query has {query.shape[-1]}")
  if value.shape[-2] != key.shape[-2]:
    raise ValueError(f"value has {value.shape[-2]} heads but key has {key.shape[-2]}")
  heads, kv_heads = query.shape[-2], key.shape[-2]
  if heads % kv_heads:
    raise ValueError(f"key has {kv_heads} heads, which do not divide the query's {heads}")
  return kv_heads, heads // kv_heads


def _segment_ids(query, query_segment_ids, key_value_segment_ids):
  """Both segment id arrays as int32 ``[batch..., L]``, or ``(None, None)``."""
  given = (query_segment_ids is not None, key_value_segment_ids is not None)
  if given == (False, False):
    return None, None
  if not all(given):
    raise ValueError("pass query_segment_ids and key_value_segment_ids together (ring attention "
                     "is self-attention: usually the same array twice)")
  ids = []
  for name, x in (("query_segment_ids", query_segment_ids),
                  ("key_value_segment_ids", key_value_segment_ids)):
    x = jnp.asarray(x)
    if x.shape != query.shape[:-2]:
      raise ValueError(f"{name} must have shape {query.shape[:-2]} ([batch..., length]), got "
                       f"{x.shape}")
    if not jnp.issubdtype(x.dtype, jnp.integer):
      raise ValueError(f"{name} must be integers, got dtype {x.dtype}")
    ids.append(x.astype(jnp.int32))
  return tuple(ids)


def _make_spec(query, is_causal, scale, local_window_size, softcap):
  return spec_lib.make_spec(scale=scale, head_dim=query.shape[-1], is_causal=is_causal,
                            local_window_size=local_window_size, softcap=softcap)


def ring_attention_shard(query, key, value, *, axis_name: str, axis_size: int,
                         is_causal: bool = False, scale: float | None = None,
                         local_window_size: int | tuple[int, int] | None = None,
                         softcap: float | None = None, query_segment_ids=None,
                         key_value_segment_ids=None) -> Array:
  """Per-device ring attention, to call inside ``shard_map`` over ``axis_name``.

  Args:
    query: this device's block ``[batch..., L / n, heads, head_dim]``, blocks in device order
      along ``axis_name``.
    key, value: ``[batch..., L / n, kv_heads, head_dim | v_dim]``; ``kv_heads`` divides ``heads``.
    axis_name: the mesh axis the sequence is split over.
    axis_size: its size ``n``.
    is_causal, scale, local_window_size, softcap: as :func:`ring_attention` (global positions).
    query_segment_ids, key_value_segment_ids: this device's block of the ids, ``[batch...,
      L / n]``.

  Returns:
    ``[batch..., L / n, heads, v_dim]`` in the query's dtype.
  """
  kv_heads, group = _check(query, key, value)
  spec = _make_spec(query, is_causal, scale, local_window_size, softcap)
  q_seg, kv_seg = _segment_ids(query, query_segment_ids, key_value_segment_ids)
  batch_shape = query.shape[:-3]
  lq, heads, d = query.shape[-3:]
  q = query.reshape(-1, lq, kv_heads, group, d)
  k = key.reshape(-1, *key.shape[-3:])
  v = value.reshape(-1, *value.shape[-3:])
  if q_seg is None:  # a placeholder that travels the ring for nothing: one int per row
    q_seg = kv_seg = jnp.zeros((q.shape[0], 1), jnp.int32)
  else:
    q_seg, kv_seg = q_seg.reshape(-1, lq), kv_seg.reshape(-1, lq)
  left, right = spec.band
  cfg = _Ring(axis_name, int(axis_size), spec.scale, left, right, spec.softcap,
              query_segment_ids is not None)
  out = _ring(cfg, q, k, v, q_seg, kv_seg)
  return out.reshape(*batch_shape, lq, heads, v.shape[-1])


def _context_mesh(mesh):
  if mesh is not None:
    return mesh
  mesh = jax.sharding.get_abstract_mesh()
  if mesh is None or mesh.empty:
    raise ValueError("ring_attention needs a mesh: pass mesh=..., or call it under "
                     "jax.set_mesh(mesh) (attention_jax.training.train does)")
  return mesh


def ring_attention(query, key, value, *, is_causal: bool = False, scale: float | None = None,
                   local_window_size: int | tuple[int, int] | None = None,
                   softcap: float | None = None, query_segment_ids=None,
                   key_value_segment_ids=None, axis_name: str = "sequence", mesh=None,
                   batch_axes: Sequence[str] = BATCH_AXES) -> Array:
  """Attention of ``query`` over ``key``/``value`` with the length split over ``axis_name``.

  Equals ``ops.dot_product_attention`` with the same keywords (float32 softmax statistics);
  differentiable (the backward pass is a ring too). Key blocks that the causal limit or the
  window hide, or whose segments no query of the block shares, are skipped, not masked: a window
  of ``w`` costs ``L x max(w, L / n)``.

  Args:
    query: ``[batch..., L, heads, head_dim]``.
    key, value: ``[batch..., L, kv_heads, head_dim | v_dim]``, the same ``L``.
    is_causal: position ``i`` attends to ``j <= i``.
    scale: default ``1 / sqrt(head_dim)``.
    local_window_size: ``w`` or ``(left, right)``: position ``i`` attends to ``i - left <= j <=
      i + right`` (jax.nn's meaning; with ``is_causal`` the right bound is 0).
    softcap: logits become ``softcap * tanh(logits / softcap)`` (Gemma 2).
    query_segment_ids, key_value_segment_ids: int ``[batch..., L]``, packed sequences: a
      position attends only to positions with the same id. Pass both (usually the same array).
    axis_name: the mesh axis to split the length over; ``L`` must be a multiple of its size.
    mesh: a ``Mesh``; default the context mesh (``jax.set_mesh``).
    batch_axes: mesh axes the leading batch axis is split over, where its size allows (the
      product of those of size > 1 must divide it; else the batch is replicated).

  Returns:
    ``[batch..., L, heads, v_dim]``.
  """
  query, key, value = jnp.asarray(query), jnp.asarray(key), jnp.asarray(value)
  _check(query, key, value)
  _make_spec(query, is_causal, scale, local_window_size, softcap)  # refused before any mesh work
  segments = _segment_ids(query, query_segment_ids, key_value_segment_ids)
  mesh = _context_mesh(mesh)
  if axis_name not in mesh.axis_names:
    raise ValueError(f"axis_name={axis_name!r} is not an axis of the mesh {mesh.axis_names}")
  n = int(mesh.shape[axis_name])
  length = query.shape[-3]
  if length % n:
    raise ValueError(f"query has length {length}, which does not split into the {n} blocks of "
                     f"mesh axis {axis_name!r}; use a multiple of {n}")
  batch_shape = query.shape[:-3]
  flat = [x.reshape(-1, *x.shape[-3:]) for x in (query, key, value)]
  rows = flat[0].shape[0]
  used = tuple(a for a in batch_axes if a in mesh.axis_names and a != axis_name
               and mesh.shape[a] > 1)
  if not used or rows % math.prod(mesh.shape[a] for a in used):
    used = None
  spec = P(used, axis_name, None, None)
  options = dict(axis_name=axis_name, axis_size=n, is_causal=is_causal, scale=scale,
                 local_window_size=local_window_size, softcap=softcap)
  if segments[0] is None:
    fn = functools.partial(ring_attention_shard, **options)
    in_specs = (spec, spec, spec)
  else:
    flat += [x.reshape(rows, length) for x in segments]

    def fn(q, k, v, q_seg, kv_seg):
      return ring_attention_shard(q, k, v, query_segment_ids=q_seg, key_value_segment_ids=kv_seg,
                                  **options)
    in_specs = (spec, spec, spec, P(used, axis_name), P(used, axis_name))
  out = jax.shard_map(fn, mesh=mesh, in_specs=in_specs, out_specs=spec,
                      check_vma=False)(*flat)
  return out.reshape(*batch_shape, length, *out.shape[-2:])
