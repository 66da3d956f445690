"""Ring attention: exact attention with the sequence split over a mesh axis (Liu et al. 2023).

Each device of the ``sequence`` axis holds one block of ``L / n`` consecutive positions of the
queries, keys and values. The key/value blocks travel around the ring with ``lax.ppermute``
(device ``i`` sends to ``i + 1``); after ``n - 1`` hops every query block has met every key
block, and the online softmax (running max ``m``, running sum ``l``, float32) combines the
partial results exactly. With ``is_causal`` a query block skips (``lax.cond``) the key blocks
above the diagonal, i.e. those from devices after its own, and masks only its own block.

The backward pass (``jax.custom_vjp``) recomputes each block's weights from the saved
logsumexp and sends the key/value gradients around the ring with their blocks, so each device
stores only its own blocks (no ``[L, L]`` array anywhere): memory per device is linear in
``L / n``.

:func:`ring_attention` is the global view (``shard_map`` over the mesh);
:func:`ring_attention_shard` is the per-device function for use inside an existing ``shard_map``.
"""

from __future__ import annotations

import functools
import math
from typing import Sequence

import jax
import jax.numpy as jnp
from jax import lax
from jax.sharding import PartitionSpec as P

from attention_jax.parallel.mesh import BATCH_AXES

Array = jax.Array


# ---------------------------------------------------------------------------------------------
# Per-device math. Internal layout: q [b, lq, hk, g, d] (g query heads per key/value head),
# k/v [b, lk, hk, d|dv]; statistics [b, hk, g, lq].


def _logits(q, k, scale, visible):
  """Float32 ``[b, hk, g, lq, lk]`` logits, ``-inf`` where ``visible`` (``[lq, lk]``) is False."""
  s = jnp.einsum("bqhgd,bkhd->bhgqk", q, k, preferred_element_type=jnp.float32) * scale
  if visible is not None:
    s = jnp.where(visible, s, -jnp.inf)
  return s


def _diagonal(lq: int, lk: int) -> Array:
  return jnp.arange(lk)[None, :] <= jnp.arange(lq)[:, None]


def _ring_perm(n: int):
  return [(i, (i + 1) % n) for i in range(n)]


def _visit(is_causal: bool, src, idx, when_visible, when_hidden, when_diagonal=None):
  """Runs the branch for key block ``src`` seen from query block ``idx``."""
  if not is_causal:
    return when_visible()
  branch = jnp.where(src == idx, 2, jnp.where(src < idx, 0, 1))
  return lax.switch(branch, [when_visible, when_hidden, when_diagonal])


def _forward(q, k, v, axis_name: str, n: int, is_causal: bool, scale: float):
  """``(out [b, lq, hk, g, dv] in q's dtype, lse [b, hk, g, lq] float32)``."""
  b, lq, hk, g, _ = q.shape
  lk, dv = k.shape[1], v.shape[-1]
  idx = lax.axis_index(axis_name)
  diagonal = _diagonal(lq, lk)

  def update(carry, k_blk, v_blk, visible):
    m, l, acc = carry
    s = _logits(q, k_blk, scale, visible)
    m_new = jnp.maximum(m, s.max(-1))
    m_safe = jnp.where(jnp.isneginf(m_new), 0.0, m_new)  # rows with nothing visible yet
    p = jnp.exp(s - m_safe[..., None])
    correction = jnp.exp(m - m_safe)
    l = l * correction + p.sum(-1)
    pv = jnp.einsum("bhgqk,bkhd->bhgqd", p.astype(v_blk.dtype), v_blk,
                    preferred_element_type=jnp.float32)
    return m_new, l, acc * correction[..., None] + pv

  def block(carry, k_blk, v_blk, src):
    return _visit(is_causal, src, idx,
                  lambda: update(carry, k_blk, v_blk, None),
                  lambda: carry,
                  lambda: update(carry, k_blk, v_blk, diagonal))

  carry = (jnp.full((b, hk, g, lq), -jnp.inf, jnp.float32),
           jnp.zeros((b, hk, g, lq), jnp.float32),
           jnp.zeros((b, hk, g, lq, dv), jnp.float32))
  carry = block(carry, k, v, idx)

  def hop(state, t):
    carry, k_blk, v_blk = state
    k_blk = lax.ppermute(k_blk, axis_name, _ring_perm(n))
    v_blk = lax.ppermute(v_blk, axis_name, _ring_perm(n))
    carry = block(carry, k_blk, v_blk, (idx - t) % n)
    return (carry, k_blk, v_blk), None

  if n > 1:
    (carry, _, _), _ = lax.scan(hop, (carry, k, v), jnp.arange(1, n))
  m, l, acc = carry
  seen = l > 0
  out = jnp.where(seen[..., None], acc / jnp.where(seen, l, 1.0)[..., None], 0.0)
  lse = jnp.where(seen, m + jnp.log(jnp.where(seen, l, 1.0)), jnp.inf)
  return jnp.moveaxis(out, 3, 1).astype(q.dtype), lse  # [b, lq, hk, g, dv]


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5, 6))
def _ring(q, k, v, axis_name, n, is_causal, scale):
  return _forward(q, k, v, axis_name, n, is_causal, scale)[0]


def _ring_fwd(q, k, v, axis_name, n, is_causal, scale):
  out, lse = _forward(q, k, v, axis_name, n, is_causal, scale)
  return out, (q, k, v, out, lse)


def _ring_bwd(axis_name, n, is_causal, scale, residuals, d_out):
  q, k, v, out, lse = residuals
  lq, lk = q.shape[1], k.shape[1]
  idx = lax.axis_index(axis_name)
  diagonal = _diagonal(lq, lk)
  d_out32 = d_out.astype(jnp.float32)
  # D_i = sum_d dO_i * O_i = sum_j P_ij dP_ij: the softmax backward's row term.
  delta = jnp.einsum("bqhgd,bqhgd->bhgq", d_out32, out.astype(jnp.float32))

  def grads(dq, k_blk, v_blk, dk, dv, visible):
    s = _logits(q, k_blk, scale, visible)
    p = jnp.exp(s - lse[..., None])  # 0 where masked (s = -inf) or the row saw nothing
    dv = dv + jnp.einsum("bhgqk,bqhgd->bkhd", p, d_out32)
    dp = jnp.einsum("bqhgd,bkhd->bhgqk", d_out32, v_blk, preferred_element_type=jnp.float32)
    ds = p * (dp - delta[..., None]) * scale
    dq = dq + jnp.einsum("bhgqk,bkhd->bqhgd", ds, k_blk, preferred_element_type=jnp.float32)
    dk = dk + jnp.einsum("bhgqk,bqhgd->bkhd", ds, q, preferred_element_type=jnp.float32)
    return dq, dk, dv

  def hop(state, t):
    dq, k_blk, v_blk, dk, dv = state
    src = (idx - t) % n
    dq, dk, dv = _visit(is_causal, src, idx,
                        lambda: grads(dq, k_blk, v_blk, dk, dv, None),
                        lambda: (dq, dk, dv),
                        lambda: grads(dq, k_blk, v_blk, dk, dv, diagonal))
    if n > 1:  # The gradients travel with their blocks; after n hops they are home.
      k_blk, v_blk, dk, dv = (lax.ppermute(x, axis_name, _ring_perm(n))
                              for x in (k_blk, v_blk, dk, dv))
    return (dq, k_blk, v_blk, dk, dv), None

  state = (jnp.zeros(q.shape, jnp.float32), k, v,
           jnp.zeros(k.shape, jnp.float32), jnp.zeros(v.shape, jnp.float32))
  (dq, _, _, dk, dv), _ = lax.scan(hop, state, jnp.arange(n))
  return dq.astype(q.dtype), dk.astype(k.dtype), dv.astype(v.dtype)


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


def ring_attention_shard(query, key, value, *, axis_name: str, axis_size: int,
                         is_causal: bool = False, scale: float | None = None) -> Array:
  """Per-device ring attention, to call inside ``shard_map`` over ``axis_name``.

  Args:
    query: this device's block ``[batch..., L / n, heads, head_dim]``, blocks in device order
      along ``axis_name``.
    key, value: ``[batch..., L / n, kv_heads, head_dim | v_dim]``; ``kv_heads`` divides ``heads``.
    axis_name: the mesh axis the sequence is split over.
    axis_size: its size ``n``.
    is_causal: position ``i`` attends to ``j <= i`` (global positions).
    scale: default ``1 / sqrt(head_dim)``.

  Returns:
    ``[batch..., L / n, heads, v_dim]`` in the query's dtype.
  """
  kv_heads, group = _check(query, key, value)
  batch_shape = query.shape[:-3]
  lq, heads, d = query.shape[-3:]
  scale = 1.0 / math.sqrt(d) if scale is None else float(scale)
  q = query.reshape(-1, lq, kv_heads, group, d)
  k = key.reshape(-1, *key.shape[-3:])
  v = value.reshape(-1, *value.shape[-3:])
  out = _ring(q, k, v, axis_name, int(axis_size), bool(is_causal), scale)
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
                   axis_name: str = "sequence", mesh=None,
                   batch_axes: Sequence[str] = BATCH_AXES) -> Array:
  """Attention of ``query`` over ``key``/``value`` with the length split over ``axis_name``.

  Equals ``ops.dot_product_attention(query, key, value, is_causal=is_causal, scale=scale)``
  (float32 softmax statistics); differentiable (the backward pass is a ring too).

  Args:
    query: ``[batch..., L, heads, head_dim]``.
    key, value: ``[batch..., L, kv_heads, head_dim | v_dim]``, the same ``L``.
    is_causal: position ``i`` attends to ``j <= i``.
    scale: default ``1 / sqrt(head_dim)``.
    axis_name: the mesh axis to split the length over; ``L`` must be a multiple of its size.
    mesh: a ``Mesh``; default the context mesh (``jax.set_mesh``).
    batch_axes: mesh axes the leading batch axis is split over, where its size allows (the
      product of those of size > 1 must divide it; else the batch is replicated).

  Returns:
    ``[batch..., L, heads, v_dim]``.
  """
  query, key, value = jnp.asarray(query), jnp.asarray(key), jnp.asarray(value)
  _check(query, key, value)
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
  fn = functools.partial(ring_attention_shard, axis_name=axis_name, axis_size=n,
                         is_causal=is_causal, scale=scale)
  out = jax.shard_map(fn, mesh=mesh, in_specs=(spec, spec, spec), out_specs=spec,
                      check_vma=False)(*flat)
  return out.reshape(*batch_shape, length, *out.shape[-2:])
