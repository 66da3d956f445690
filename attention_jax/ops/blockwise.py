"""Memory-efficient blockwise attention ("flash"): online softmax forward, recomputing backward.

The FlashAttention-2 scheme in pure JAX. Queries and keys are cut into blocks; the forward pass
keeps a running max and running sum per query row (float32) and stores only the output and the
logsumexp per row; a ``jax.custom_vjp`` backward recomputes each block's weights from them. Memory
is linear in the sequence length unless a dense ``[q_len, kv_len]`` mask or bias is passed (then
that array itself is the quadratic part; it is only ever sliced per block).

Internal layout: ``[batch, kv_heads, group, length, dim]`` for queries (``heads = kv_heads * group``
gives GQA without repeating keys) and ``[batch, kv_heads, length, dim]`` for keys and values, so
every block matmul is a batched matmul over contiguous rows. The public layout is transposed once
on the way in and once on the way out.

Causal attention (bottom-right aligned, as :func:`attention_jax.ops.masks.causal_mask`) loops only
over the key blocks a query block can see, so blocks above the diagonal cost nothing.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
from jax import lax

Array = jax.Array


def default_block_sizes(q_len: int, kv_len: int, platform: str | None = None) -> tuple[int, int]:
  """``(block_q, block_k)`` for a platform and shape.

  On CPU large blocks amortise the loop overhead and keep the batched matmuls big enough for the
  thread pool; on accelerators smaller blocks bound the live logits. Short sequences use one block.
  """
  platform = platform or jax.default_backend()
  target = 256
  return _fit_block(q_len, target), _fit_block(kv_len, target)


def _fit_block(length: int, target: int) -> int:
  """The multiple of 8 near ``target`` that covers ``length`` with the least padding."""
  num_blocks = max(1, -(-length // target))
  return max(8, -(-(-(-length // num_blocks)) // 8) * 8)


@dataclasses.dataclass(frozen=True)
class _Config:
  """Static (hashable) description of one call; the arrays travel separately."""
  block_q: int
  block_k: int
  q_len: int       # unpadded lengths
  kv_len: int
  is_causal: bool
  scale: float
  scale_in_query: bool  # True: q was pre-multiplied by scale (full-precision inputs)
  has_query_lengths: bool
  has_key_lengths: bool


def _num_kv_blocks(cfg: _Config, qi, num_k: int):
  """Key blocks ``[0, n)`` that query block ``qi`` can see."""
  if not cfg.is_causal:
    return num_k
  offset = cfg.kv_len - cfg.q_len
  last_key = (qi + 1) * cfg.block_q - 1 + offset  # the largest key index any row may see
  return jnp.clip((last_key + cfg.block_k) // cfg.block_k, 0, num_k)


def _first_q_block(cfg: _Config, kj, num_q: int):
  """Query blocks ``[n, num_q)`` that can see key block ``kj``."""
  if not cfg.is_causal:
    return 0
  offset = cfg.kv_len - cfg.q_len
  first_query = kj * cfg.block_k - offset  # the first row whose diagonal reaches this block
  return jnp.clip(first_query // cfg.block_q, 0, num_q)


def _slice(x, start, size, axis):
  """Slices ``x`` along ``axis`` unless that axis is broadcast (size 1)."""
  if x.shape[axis] == 1:
    return x
  return lax.dynamic_slice_in_dim(x, start, size, axis)


def _block_logits(cfg, q_blk, k_blk, bias, mask, q_lens, k_lens, qi, kj):
  """Masked float32 logits ``[batch, kv_heads, group, block_q, block_k]`` and whether any entry
  may be masked (``None`` when nothing is)."""
  q0, k0 = qi * cfg.block_q, kj * cfg.block_k
  s = jnp.einsum("bhgqd,bhkd->bhgqk", q_blk, k_blk, preferred_element_type=jnp.float32)
  if not cfg.scale_in_query:
    s = s * cfg.scale
  if bias is not None:
    b = _slice(_slice(bias, q0, cfg.block_q, 3), k0, cfg.block_k, 4)
    s = s + b.astype(jnp.float32)
  keep = None

  def both(a, b):
    return b if a is None else a & b

  if mask is not None:
    keep = _slice(_slice(mask, q0, cfg.block_q, 3), k0, cfg.block_k, 4)
  rows = q0 + lax.broadcasted_iota(jnp.int32, (cfg.block_q, 1), 0)
  cols = k0 + lax.broadcasted_iota(jnp.int32, (1, cfg.block_k), 1)
  if cfg.is_causal:
    keep = both(keep, cols <= rows + (cfg.kv_len - cfg.q_len))
  padded_k = -(-cfg.kv_len // cfg.block_k) * cfg.block_k != cfg.kv_len
  if padded_k and not cfg.has_key_lengths:
    keep = both(keep, cols < cfg.kv_len)
  if cfg.has_key_lengths:  # k_lens already clipped to kv_len
    keep = both(keep, cols[None] < k_lens[:, None, None, None, None])
  if cfg.has_query_lengths:
    keep = both(keep, rows[None] < q_lens[:, None, None, None, None])
  if keep is not None:
    s = jnp.where(keep, s, -jnp.inf)
  return s


def _forward(cfg: _Config, q, k, v, bias, mask, q_lens, k_lens):
  """Returns ``out [b, hk, g, Lq, dv]`` (input dtype) and ``lse [b, hk, g, Lq]`` (float32)."""
  b, hk, g, lq, _ = q.shape
  dv = v.shape[-1]
  num_q, num_k = lq // cfg.block_q, k.shape[2] // cfg.block_k

  def q_block(qi, carry):
    out, lse = carry
    q_blk = lax.dynamic_slice_in_dim(q, qi * cfg.block_q, cfg.block_q, 3)

    def k_block(kj, state):
      acc, m, l = state
      k_blk = lax.dynamic_slice_in_dim(k, kj * cfg.block_k, cfg.block_k, 2)
      v_blk = lax.dynamic_slice_in_dim(v, kj * cfg.block_k, cfg.block_k, 2)
      s = _block_logits(cfg, q_blk, k_blk, bias, mask, q_lens, k_lens, qi, kj)
      m_new = jnp.maximum(m, jnp.max(s, axis=-1))
      # Rows with nothing visible yet keep max -inf; shifting them by 0 keeps exp(-inf) = 0.
      m_safe = jnp.where(m_new == -jnp.inf, 0.0, m_new)
      p = jnp.exp(s - m_safe[..., None])
      alpha = jnp.exp(m - m_safe)
      l = alpha * l + jnp.sum(p, axis=-1)
      pv = jnp.einsum("bhgqk,bhkd->bhgqd", p.astype(v.dtype), v_blk,
                      preferred_element_type=jnp.float32)
      return acc * alpha[..., None] + pv, m_new, l

    init = (jnp.zeros((b, hk, g, cfg.block_q, dv), jnp.float32),
            jnp.full((b, hk, g, cfg.block_q), -jnp.inf, jnp.float32),
            jnp.zeros((b, hk, g, cfg.block_q), jnp.float32))
    acc, m, l = lax.fori_loop(0, _num_kv_blocks(cfg, qi, num_k), k_block, init)
    visible = l > 0.0
    o_blk = acc / jnp.where(visible, l, 1.0)[..., None]
    lse_blk = jnp.where(visible, m + jnp.log(jnp.where(visible, l, 1.0)), jnp.inf)
    out = lax.dynamic_update_slice_in_dim(out, o_blk.astype(q.dtype), qi * cfg.block_q, 3)
    lse = lax.dynamic_update_slice_in_dim(lse, lse_blk, qi * cfg.block_q, 3)
    return out, lse

  init = (jnp.zeros((b, hk, g, lq, dv), q.dtype), jnp.zeros((b, hk, g, lq), jnp.float32))
  return lax.fori_loop(0, num_q, q_block, init)


def _backward(cfg: _Config, res, d_out):
  q, k, v, bias, mask, q_lens, k_lens, out, lse = res
  b, hk, g, lq, _ = q.shape
  num_q, num_k = lq // cfg.block_q, k.shape[2] // cfg.block_k
  # D_i = sum_d dO * O: the softmax-Jacobian term, one float32 per query row.
  delta = jnp.einsum("bhgqd,bhgqd->bhgq", d_out.astype(jnp.float32), out.astype(jnp.float32))
  bias_sum_axes = None
  if bias is not None:
    bias_sum_axes = tuple(a for a in range(5) if bias.shape[a] == 1)

  def k_block(kj, carry):
    dq, dk, dv, dbias = carry
    k0 = kj * cfg.block_k
    k_blk = lax.dynamic_slice_in_dim(k, k0, cfg.block_k, 2)
    v_blk = lax.dynamic_slice_in_dim(v, k0, cfg.block_k, 2)

    def q_block(qi, state):
      dq, dk_blk, dv_blk, dbias = state
      q0 = qi * cfg.block_q
      q_blk = lax.dynamic_slice_in_dim(q, q0, cfg.block_q, 3)
      do_blk = lax.dynamic_slice_in_dim(d_out, q0, cfg.block_q, 3)
      lse_blk = lax.dynamic_slice_in_dim(lse, q0, cfg.block_q, 3)
      delta_blk = lax.dynamic_slice_in_dim(delta, q0, cfg.block_q, 3)
      s = _block_logits(cfg, q_blk, k_blk, bias, mask, q_lens, k_lens, qi, kj)
      p = jnp.exp(s - lse_blk[..., None])
      dv_blk = dv_blk + jnp.einsum("bhgqk,bhgqd->bhkd", p.astype(do_blk.dtype), do_blk,
                                   preferred_element_type=jnp.float32)
      dp = jnp.einsum("bhgqd,bhkd->bhgqk", do_blk, v_blk, preferred_element_type=jnp.float32)
      ds = p * (dp - delta_blk[..., None])
      if dbias is not None:
        db = jnp.sum(ds, axis=bias_sum_axes, keepdims=True) if bias_sum_axes else ds
        q_start = q0 if dbias.shape[3] != 1 else 0
        k_start = k0 if dbias.shape[4] != 1 else 0
        starts = (0, 0, 0, q_start, k_start)
        old = lax.dynamic_slice(dbias, starts, db.shape)
        dbias = lax.dynamic_update_slice(dbias, old + db, starts)
      if not cfg.scale_in_query:
        ds = ds * cfg.scale
      ds_lo = ds.astype(q.dtype)
      dq_blk = jnp.einsum("bhgqk,bhkd->bhgqd", ds_lo, k_blk, preferred_element_type=jnp.float32)
      old = lax.dynamic_slice_in_dim(dq, q0, cfg.block_q, 3)
      dq = lax.dynamic_update_slice_in_dim(dq, old + dq_blk, q0, 3)
      dk_blk = dk_blk + jnp.einsum("bhgqk,bhgqd->bhkd", ds_lo, q_blk,
                                   preferred_element_type=jnp.float32)
      return dq, dk_blk, dv_blk, dbias

    init = (dq, jnp.zeros(k_blk.shape, jnp.float32), jnp.zeros(v_blk.shape, jnp.float32), dbias)
    dq, dk_blk, dv_blk, dbias = lax.fori_loop(
        _first_q_block(cfg, kj, num_q), num_q, q_block, init)
    dk = lax.dynamic_update_slice_in_dim(dk, dk_blk.astype(k.dtype), k0, 2)
    dv = lax.dynamic_update_slice_in_dim(dv, dv_blk.astype(v.dtype), k0, 2)
    return dq, dk, dv, dbias

  dbias0 = None if bias is None else jnp.zeros(bias.shape, jnp.float32)
  init = (jnp.zeros(q.shape, jnp.float32), jnp.zeros_like(k), jnp.zeros_like(v), dbias0)
  dq, dk, dv, dbias = lax.fori_loop(0, num_k, k_block, init)
  dbias = None if bias is None else dbias.astype(bias.dtype)
  return dq.astype(q.dtype), dk, dv, dbias, None, None, None


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _flash_core(cfg, q, k, v, bias, mask, q_lens, k_lens):
  return _forward(cfg, q, k, v, bias, mask, q_lens, k_lens)[0]


def _flash_core_fwd(cfg, q, k, v, bias, mask, q_lens, k_lens):
  out, lse = _forward(cfg, q, k, v, bias, mask, q_lens, k_lens)
  return out, (q, k, v, bias, mask, q_lens, k_lens, out, lse)


_flash_core.defvjp(_flash_core_fwd, _backward)


def _to_5d(x, batch, heads, kv_heads, q_len, kv_len, pad_q, pad_k, fill):
  """Broadcasts a mask/bias (broadcastable to ``[batch..., heads, q_len, kv_len]``) to
  ``[b, kv_heads|1, group|1, q_len|1, kv_len|1]``, padding the length axes it carries."""
  x = jnp.asarray(x)
  full_ndim = len(batch) + 3
  x = x.reshape((1,) * (full_ndim - x.ndim) + x.shape)
  x = jnp.broadcast_to(x, tuple(batch) + x.shape[len(batch):])
  x = x.reshape((math.prod(batch),) + x.shape[len(batch):])
  h = x.shape[1]
  if h == 1:
    x = x[:, :, None]
  else:
    x = x.reshape(x.shape[0], kv_heads, heads // kv_heads, *x.shape[2:])
  pads = [(0, 0)] * 3 + [(0, pad_q if x.shape[3] != 1 else 0), (0, pad_k if x.shape[4] != 1 else 0)]
  if any(p[1] for p in pads):
    x = jnp.pad(x, pads, constant_values=fill)
  return x


def flash_attention(query, key, value, bias=None, mask=None, *, is_causal=False, scale,
                    query_lengths=None, key_lengths=None, block_sizes=None) -> Array:
  """Blockwise attention with linear memory; same semantics as the reference path.

  Args:
    query: ``[batch..., q_len, heads, head_dim]``.
    key: ``[batch..., kv_len, kv_heads, head_dim]``.
    value: ``[batch..., kv_len, kv_heads, v_dim]``.
    bias, mask: broadcastable to ``[batch..., heads, q_len, kv_len]`` (sliced per block).
    is_causal: bottom-right aligned causal mask; key blocks above the diagonal are skipped.
    scale: multiplies the logits.
    query_lengths, key_lengths: int ``[batch...]`` or ``None``.
    block_sizes: ``(block_q, block_k)``; default :func:`default_block_sizes`.

  Returns:
    ``[batch..., q_len, heads, v_dim]`` in the input dtype.
  """
  *batch, q_len, heads, head_dim = query.shape
  kv_len, kv_heads = key.shape[-3], key.shape[-2]
  v_dim = value.shape[-1]
  group = heads // kv_heads
  bq, bk = block_sizes or default_block_sizes(q_len, kv_len)
  if bq <= 0 or bk <= 0:
    raise ValueError(f"implementation='flash' needs positive block_sizes, got {(bq, bk)}")
  nb = math.prod(batch)
  lq_pad, lk_pad = -(-q_len // bq) * bq, -(-kv_len // bk) * bk
  acc = jnp.promote_types(query.dtype, jnp.float32)
  scale_in_query = query.dtype == acc
  q = query.reshape(nb, q_len, kv_heads, group, head_dim).transpose(0, 2, 3, 1, 4)
  if scale_in_query:
    q = q * jnp.asarray(scale, q.dtype)
  k = key.reshape(nb, kv_len, kv_heads, head_dim).transpose(0, 2, 1, 3)
  v = value.reshape(nb, kv_len, kv_heads, v_dim).transpose(0, 2, 1, 3)
  q = jnp.pad(q, [(0, 0)] * 3 + [(0, lq_pad - q_len), (0, 0)])
  k = jnp.pad(k, [(0, 0)] * 2 + [(0, lk_pad - kv_len), (0, 0)])
  v = jnp.pad(v, [(0, 0)] * 2 + [(0, lk_pad - kv_len), (0, 0)])
  shape_args = (batch, heads, kv_heads, q_len, kv_len, lq_pad - q_len, lk_pad - kv_len)
  bias5 = None if bias is None else _to_5d(bias, *shape_args, fill=0)
  mask5 = None if mask is None else _to_5d(mask, *shape_args, fill=False)

  def lengths(x, limit):
    if x is None:
      return None
    return jnp.minimum(jnp.broadcast_to(jnp.asarray(x), tuple(batch)).reshape(nb), limit)

  q_lens, k_lens = lengths(query_lengths, q_len), lengths(key_lengths, kv_len)
  cfg = _Config(bq, bk, q_len, kv_len, bool(is_causal), float(scale), scale_in_query,
                q_lens is not None, k_lens is not None)
  out = _flash_core(cfg, q, k, v, bias5, mask5, q_lens, k_lens)
  out = out[:, :, :, :q_len].transpose(0, 3, 1, 2, 4)
  return out.reshape(*batch, q_len, heads, v_dim)
