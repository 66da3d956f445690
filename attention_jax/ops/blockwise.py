"""Memory-efficient blockwise attention ("flash"): online softmax forward, recomputing backward.

The FlashAttention-2 scheme in pure JAX. Queries and keys are cut into blocks; the forward pass
keeps a running max and running sum per query row (float32) and stores only the output and the
logsumexp per row; a ``jax.custom_vjp`` backward recomputes each block's weights from them. Memory
is linear in the sequence length unless a dense ``[q_len, kv_len]`` mask or bias is passed (then
that array itself is the quadratic part; it is only ever sliced per block).

Internal layout is block-major: queries ``[num_q_blocks, batch, kv_heads, group * block_q, dim]``
(``heads = kv_heads * group`` gives GQA without repeating keys; the group is folded into the rows
of each query block) and keys/values ``[num_k_blocks, batch, kv_heads, block_k, dim]``, so every
loop step reads one contiguous block and every block matmul is a batched matmul over contiguous
rows. The public layout is transposed once on the way in and once on the way out.

Causal and sliding-window attention (bottom-right aligned, see :mod:`attention_jax.ops.spec`) loop
only over the key blocks a query block can see, so blocks above the diagonal or outside the window
cost nothing: a window of ``w`` costs ``L x w``, not ``L^2``. Packed sequences (segment ids) are
masked inside each block, and a block whose queries and keys share no segment is skipped;
soft-capped logits are computed inside each block.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
from jax import lax

from attention_jax.ops.spec import AttentionSpec

Array = jax.Array
_LOWEST = float(jnp.finfo(jnp.float32).min)
_HIGHEST = float(jnp.finfo(jnp.float32).max)


def default_block_sizes(q_len: int, kv_len: int, platform: str | None = None,
                        batch_heads: int = 1) -> tuple[int, int]:
  """``(block_q, block_k)`` for a platform and shape.

  On CPU the block matmuls are batched over ``batch_heads`` (batch x heads), so the blocks are
  sized to keep one step's float32 logits near 2 MiB (the L2 caches): 128 x 128 at 32 heads
  (the fastest forward+backward of the sizes tried from 64 to 1024 at L=1024 on a 2-core CPU;
  forward alone within noise of the others), up to 512 x 1024 for a single head,
  where smaller blocks would pay the per-step loop overhead many times. Elsewhere 256 x 256
  (pure-JAX blocks; not tuned there). Short sequences use one block.
  """
  platform = platform or jax.default_backend()
  if platform == "cpu":
    per_head = max(128 * 128, _CPU_LOGITS_PER_STEP // max(1, batch_heads))
    block_q = min(512, 1 << (int(math.isqrt(per_head)).bit_length() - 1))
    block_q = max(128, block_q)
    block_k = max(128, min(1024, per_head // block_q))
  else:
    block_q = block_k = 256
  return _fit_block(q_len, block_q), _fit_block(kv_len, block_k)


_CPU_LOGITS_PER_STEP = 2**19  # float32 logits of one block step, all batch x heads: 2 MiB


def _fit_block(length: int, target: int) -> int:
  """The multiple of 8 near ``target`` that covers ``length`` with the least padding."""
  num_blocks = max(1, -(-length // target))
  return max(8, -(-(-(-length // num_blocks)) // 8) * 8)


@dataclasses.dataclass(frozen=True)
class _Config:
  """Static (hashable) description of one call: the spec's options and the block geometry."""
  block_q: int
  block_k: int
  q_len: int       # unpadded lengths
  kv_len: int
  group: int       # query heads per key/value head
  left: int | None   # the band of visible keys around the (bottom-right) diagonal; None = open
  right: int | None
  softcap: float | None
  scale: float
  scale_in_query: bool  # True: q was pre-multiplied by scale (full-precision inputs)
  has_query_lengths: bool
  has_key_lengths: bool
  has_segments: bool

  @property
  def offset(self) -> int:
    """Causal alignment: query ``i`` sees keys ``j <= i + offset`` (bottom-right)."""
    return self.kv_len - self.q_len

  @property
  def padded_k(self) -> bool:
    """Whether the last key block runs past ``kv_len`` (its tail must be masked)."""
    return self.kv_len % self.block_k != 0

  @property
  def banded(self) -> bool:
    return self.left is not None or self.right is not None


# Which key blocks a query block visits. Row r sees key c iff r + offset - left <= c <= r + offset +
# right. A block is "clear" when neither band edge nor the key padding cuts through it: its logits
# need no position mask at all (the user's mask, bias, segments and lengths still apply). Each loop
# runs the cut blocks before the band, the clear ones, then the cut ones after, so the position
# arithmetic is paid only along the band's edges. All bounds are traced int32 scalars.


def _three_ranges(start, clear_start, clear_end, end):
  """``(start, cs, ce, end)`` with ``start <= cs <= ce <= end``: cut ``[start, cs)``, clear
  ``[cs, ce)``, cut ``[ce, end)``."""
  end = jnp.maximum(end, start)
  cs = jnp.clip(clear_start, start, end)
  ce = jnp.clip(clear_end, cs, end)
  return start, cs, ce, end


def _kv_ranges(cfg: _Config, qi, num_k: int):
  """The key blocks query block ``qi`` visits, as :func:`_three_ranges`."""
  last_clear = num_k - 1 if cfg.padded_k else num_k
  first_row = qi * cfg.block_q + cfg.offset  # rows shifted onto the key axis
  last_row = first_row + cfg.block_q - 1
  start, clear_start, clear_end, end = 0, 0, last_clear, num_k
  if cfg.left is not None:
    start = jnp.clip((first_row - cfg.left) // cfg.block_k, 0, num_k)
    clear_start = -(-jnp.maximum(last_row - cfg.left, 0) // cfg.block_k)
  if cfg.right is not None:
    end = jnp.clip((last_row + cfg.right) // cfg.block_k + 1, 0, num_k)
    clear_end = jnp.minimum((first_row + cfg.right + 1) // cfg.block_k, last_clear)
  return _three_ranges(start, clear_start, clear_end, end)


def _q_ranges(cfg: _Config, kj, num_q: int):
  """The query blocks that see key block ``kj``, as :func:`_three_ranges`."""
  first_key = kj * cfg.block_k - cfg.offset  # keys shifted onto the query axis
  last_key = first_key + cfg.block_k - 1
  start, clear_start, clear_end, end = 0, 0, num_q, num_q
  if cfg.right is not None:  # row r sees key c only if r >= c - offset - right
    start = jnp.clip((first_key - cfg.right) // cfg.block_q, 0, num_q)
    clear_start = -(-jnp.maximum(last_key - cfg.right, 0) // cfg.block_q)
  if cfg.left is not None:  # ... and r <= c - offset + left
    end = jnp.clip((last_key + cfg.left) // cfg.block_q + 1, 0, num_q)
    clear_end = (first_key + cfg.left + 1) // cfg.block_q
  if cfg.padded_k:
    last_block = kj == (-(-cfg.kv_len // cfg.block_k) - 1)
    clear_end = jnp.where(last_block, clear_start, clear_end)
  return _three_ranges(start, clear_start, clear_end, end)


def _slice(x, start, size, axis):
  """Slices ``x`` along ``axis`` unless that axis is broadcast (size 1)."""
  if x.shape[axis] == 1:
    return x
  return lax.dynamic_slice_in_dim(x, start, size, axis)


def _block_of(cfg: _Config, x, qi, kj, transposed):
  """The ``[b, hk|1, n|1, bk|1]`` block (``[..., bk|1, n|1]`` if transposed) of a 5-D mask/bias
  ``[b, hk|1, g|1, Lq|1, Lk|1]``; ``n = group * block_q`` flattens (group, query) as the q/k/v
  blocks do."""
  x = _slice(_slice(x, qi * cfg.block_q, cfg.block_q, 3), kj * cfg.block_k, cfg.block_k, 4)
  b, h, g, q, k = x.shape
  if g == 1 and q == 1:
    x = x.reshape(b, h, 1, k)
  else:
    x = jnp.broadcast_to(x, (b, h, cfg.group, cfg.block_q, k))
    x = x.reshape(b, h, cfg.group * cfg.block_q, k)
  return jnp.swapaxes(x, -1, -2) if transposed else x


def _block_logits(cfg, q_blk, k_blk, bias, mask, seg, q_lens, k_lens, qi, kj, cut,
                  transposed=False):
  """Masked float32 logits of one block, and the soft-cap's derivative (or None).

  ``q_blk [b, hk, n, d]`` (``n = group * block_q``), ``k_blk [b, hk, block_k, d]``. Returns
  ``[b, hk, n, block_k]``, or ``[b, hk, block_k, n]`` when ``transposed`` (what the backward pass
  multiplies without transposing). ``seg``: ``(q_seg [b, n], kv_seg [b, block_k])`` of this
  block, or None. ``cut`` (static): the block may be cut by a band edge or the key padding, so
  positions are compared; clear blocks skip that.
  """
  if transposed:
    s = jnp.einsum("bhkd,bhnd->bhkn", k_blk, q_blk, preferred_element_type=jnp.float32)
  else:
    s = jnp.einsum("bhnd,bhkd->bhnk", q_blk, k_blk, preferred_element_type=jnp.float32)
  if not cfg.scale_in_query:
    s = s * cfg.scale
  dcap = None
  if cfg.softcap is not None:
    t = jnp.tanh(s / cfg.softcap)
    s, dcap = cfg.softcap * t, 1.0 - t * t
  if bias is not None:
    s = s + _block_of(cfg, bias, qi, kj, transposed).astype(jnp.float32)
  keep = None

  def both(a, b):
    return b if a is None else a & b

  if mask is not None:
    keep = _block_of(cfg, mask, qi, kj, transposed)
  n = cfg.group * cfg.block_q
  if seg is not None:
    q_seg, kv_seg = seg  # q_seg [b, n], already laid out as the block's rows
    same = (kv_seg[:, None, :, None] == q_seg[:, None, None, :] if transposed
            else q_seg[:, None, :, None] == kv_seg[:, None, None, :])
    keep = both(keep, same)
  if cut or cfg.has_query_lengths or cfg.has_key_lengths:
    # Positions of the rows (flattened group x query) and columns, in the block's orientation.
    rows = qi * cfg.block_q + lax.broadcasted_iota(jnp.int32, (n, 1), 0) % cfg.block_q
    cols = kj * cfg.block_k + lax.broadcasted_iota(jnp.int32, (1, cfg.block_k), 1)
    if transposed:
      rows, cols = rows.T, cols.T
    if cut and cfg.right is not None:
      keep = both(keep, cols <= rows + cfg.offset + cfg.right)
    if cut and cfg.left is not None:
      keep = both(keep, cols >= rows + cfg.offset - cfg.left)
    if cut and cfg.padded_k and not cfg.has_key_lengths:
      keep = both(keep, cols < cfg.kv_len)
    if cfg.has_key_lengths:  # k_lens already clipped to kv_len
      keep = both(keep, cols[None, None] < k_lens[:, None, None, None])
    if cfg.has_query_lengths:
      keep = both(keep, rows[None, None] < q_lens[:, None, None, None])
  if keep is not None:
    s = jnp.where(keep, s, -jnp.inf)
  return s, dcap


_PAD_Q_SEGMENT = int(jnp.iinfo(jnp.int32).min)  # ids of padded rows and columns: no real token
_PAD_KV_SEGMENT = _PAD_Q_SEGMENT + 1             # has them, and they differ from each other


def _segments_meet(q_seg, kv_seg):
  """bool ``[nq, nk]``: whether any query of block ``qi`` shares a segment id with a key of block
  ``kj`` in some batch row. Where the ranges of ids are disjoint no id can be equal, so the block
  is skipped rather than masked (a packed row's sequences are contiguous: most blocks far from
  the diagonal never meet)."""
  big, small = jnp.iinfo(jnp.int32).max, jnp.iinfo(jnp.int32).min

  def ranges(ids, pad):
    real = ids != pad
    return (jnp.where(real, ids, big).min(-1), jnp.where(real, ids, small).max(-1))  # [blocks, b]

  q_min, q_max = ranges(q_seg, _PAD_Q_SEGMENT)
  k_min, k_max = ranges(kv_seg, _PAD_KV_SEGMENT)
  disjoint = ((q_max[:, None] < k_min[None, :]) | (k_max[None, :] < q_min[:, None]))
  return ~jnp.all(disjoint, axis=-1)


def _when_segments_meet(cfg: _Config, meet, qi, kj, step):
  """``step`` run only for the blocks where segments meet (always without segments)."""
  if not cfg.has_segments:
    return step

  def skipping(index, state):
    return lax.cond(meet[qi(index), kj(index)], step, lambda _, s: s, index, state)
  return skipping


def _forward(cfg: _Config, q, k, v, bias, mask, q_seg, kv_seg, q_lens, k_lens):
  """Block-major inputs ``q [nq, b, hk, n, d]``, ``k/v [nk, b, hk, block_k, d|dv]``, segment ids
  ``q_seg [nq, b, n]``, ``kv_seg [nk, b, block_k]`` (or None).

  Returns ``out [nq, b, hk, n, dv]`` and ``lse [nq, b, hk, n]``, both float32: the backward
  pass needs the output unrounded (``delta = rowsum(dO * O)`` from a bfloat16 ``O`` gave a bias
  gradient of 0.1 where the exact one is 0). No inf is ever an output (``jax.debug_infs``): rows
  that see no key keep the running max at float32's lowest value and get ``lse`` = its highest.
  """
  _, b, hk, n, _ = q.shape
  dv = v.shape[-1]
  num_k = k.shape[0]
  meet = _segments_meet(q_seg, kv_seg) if cfg.has_segments else None

  def q_block(_, xs):
    qi, q_blk, q_seg_blk = xs

    def k_block(cut):
      def step(kj, state):
        acc, m, l = state
        k_blk = lax.dynamic_index_in_dim(k, kj, 0, keepdims=False)
        v_blk = lax.dynamic_index_in_dim(v, kj, 0, keepdims=False)
        seg = None
        if cfg.has_segments:
          seg = (q_seg_blk, lax.dynamic_index_in_dim(kv_seg, kj, 0, keepdims=False))
        s, _ = _block_logits(cfg, q_blk, k_blk, bias, mask, seg, q_lens, k_lens, qi, kj, cut)
        # Rows with nothing visible yet keep the lowest float32 as their max: exp(-inf - max) is
        # still 0 for their masked logits.
        m_new = jnp.maximum(m, jnp.max(s, axis=-1))
        p = jnp.exp(s - m_new[..., None])
        alpha = jnp.exp(m - m_new)
        l = alpha * l + jnp.sum(p, axis=-1)
        # P stays float32 (bf16 values are upcast, not P rounded): the backward's
        # delta = rowsum(dO * O) must equal rowsum(P * dP) from the same P, or a bias gradient
        # that should cancel does not.
        pv = jnp.einsum("bhnk,bhkd->bhnd", p, v_blk.astype(jnp.float32),
                        preferred_element_type=jnp.float32)
        return acc * alpha[..., None] + pv, m_new, l
      return _when_segments_meet(cfg, meet, lambda _: qi, lambda kj: kj, step)

    state = (jnp.zeros((b, hk, n, dv), jnp.float32),
             jnp.full((b, hk, n), _LOWEST, jnp.float32),
             jnp.zeros((b, hk, n), jnp.float32))
    start, clear_start, clear_end, end = _kv_ranges(cfg, qi, num_k)
    if cfg.left is not None:
      state = lax.fori_loop(start, clear_start, k_block(True), state)
    state = lax.fori_loop(clear_start, clear_end, k_block(False), state)
    if cfg.right is not None or cfg.padded_k:
      state = lax.fori_loop(clear_end, end, k_block(True), state)
    acc, m, l = state
    visible = l > 0.0
    o_blk = acc / jnp.where(visible, l, 1.0)[..., None]
    lse_blk = jnp.where(visible, m + jnp.log(jnp.where(visible, l, 1.0)), _HIGHEST)
    return None, (o_blk, lse_blk)

  # A scan writes each block's output once into the stacked result: no zero-filled buffer.
  q_segs = q_seg if cfg.has_segments else jnp.zeros((q.shape[0],), jnp.int32)
  _, (out, lse) = lax.scan(q_block, None, (jnp.arange(q.shape[0]), q, q_segs))
  return out, lse


def _backward(cfg: _Config, res, d_out):
  """One sweep, key blocks outer and query blocks inner: ``dk``, ``dv`` accumulate per key block,
  ``dq`` (kept transposed) in place. Each block is recomputed transposed (``[keys, queries]``), so
  ``dv = P^T dO``, ``dk = dS^T Q`` and ``dq^T = K^T dS^T`` are all plain (non-transposed-operand)
  matmuls: on CPU a transposed operand costs a copy or a slower kernel per block (measured).""" 
  q, k, v, bias, mask, q_seg, kv_seg, q_lens, k_lens, out, lse = res
  d_out, _ = d_out  # the log-sum-exp leaves the op without gradient
  num_q, b, hk, n, _ = q.shape
  g = cfg.group
  # D_i = sum_d dO * O: the softmax-Jacobian term, one float32 per query row.
  delta = jnp.einsum("...d,...d->...", d_out.astype(jnp.float32), out.astype(jnp.float32))
  meet = _segments_meet(q_seg, kv_seg) if cfg.has_segments else None
  bias_sum_axes = None
  if bias is not None:
    bias_sum_axes = tuple(a for a in range(5) if bias.shape[a] == 1)

  def row(x, qi):
    return lax.dynamic_index_in_dim(x, qi, 0, keepdims=False)

  def k_block(carry, xs):
    dq, dbias = carry
    kj, k_blk, k_t_blk, v_blk, kv_seg_blk = xs
    k0 = kj * cfg.block_k

    def q_block(cut):
      def step(qi, state):
        dq, dk_blk, dv_blk, dbias = state
        q_blk, do_blk, lse_blk, delta_blk = (row(x, qi) for x in (q, d_out, lse, delta))
        seg = (row(q_seg, qi), kv_seg_blk) if cfg.has_segments else None
        s_t, dcap_t = _block_logits(cfg, q_blk, k_blk, bias, mask, seg, q_lens, k_lens, qi, kj,
                                    cut, transposed=True)  # [b, hk, block_k, n]
        p_t = jnp.exp(s_t - lse_blk[:, :, None, :])
        dv_blk = dv_blk + jnp.einsum("bhkn,bhnd->bhkd", p_t.astype(do_blk.dtype), do_blk,
                                     preferred_element_type=jnp.float32)
        dp_t = jnp.einsum("bhkd,bhnd->bhkn", v_blk, do_blk, preferred_element_type=jnp.float32)
        ds_t = p_t * (dp_t - delta_blk[:, :, None, :])
        if dbias is not None:
          ds = jnp.swapaxes(ds_t, -1, -2).reshape(b, hk, g, cfg.block_q, cfg.block_k)
          db = jnp.sum(ds, axis=bias_sum_axes, keepdims=True) if bias_sum_axes else ds
          q_start = qi * cfg.block_q if dbias.shape[3] != 1 else 0
          k_start = k0 if dbias.shape[4] != 1 else 0
          starts = (0, 0, 0, q_start, k_start)
          old = lax.dynamic_slice(dbias, starts, db.shape)
          dbias = lax.dynamic_update_slice(dbias, old + db, starts)
        if dcap_t is not None:  # through softcap * tanh(x / softcap)
          ds_t = ds_t * dcap_t
        if not cfg.scale_in_query:
          ds_t = ds_t * cfg.scale
        ds_t = ds_t.astype(q.dtype)
        dk_blk = dk_blk + jnp.einsum("bhkn,bhnd->bhkd", ds_t, q_blk,
                                     preferred_element_type=jnp.float32)
        # dq^T = K^T dS^T with K^T stored per block: a plain matmul, not a transposed operand.
        dq_t_blk = jnp.einsum("bhdk,bhkn->bhdn", k_t_blk, ds_t,
                              preferred_element_type=jnp.float32)
        dq = lax.dynamic_update_index_in_dim(dq, row(dq, qi) + dq_t_blk, qi, 0)
        return dq, dk_blk, dv_blk, dbias
      return _when_segments_meet(cfg, meet, lambda qi: qi, lambda _: kj, step)

    state = (dq, jnp.zeros(k_blk.shape, jnp.float32), jnp.zeros(v_blk.shape, jnp.float32), dbias)
    start, clear_start, clear_end, end = _q_ranges(cfg, kj, num_q)
    if cfg.right is not None:
      state = lax.fori_loop(start, clear_start, q_block(True), state)
    state = lax.fori_loop(clear_start, clear_end, q_block(False), state)
    if cfg.left is not None or cfg.padded_k:
      state = lax.fori_loop(clear_end, end, q_block(True), state)
    dq, dk_blk, dv_blk, dbias = state
    return (dq, dbias), (dk_blk.astype(k.dtype), dv_blk.astype(v.dtype))

  dbias0 = None if bias is None else jnp.zeros(bias.shape, jnp.float32)
  dq_t0 = jnp.zeros(q.shape[:3] + (q.shape[4], n), jnp.float32)  # [nq, b, hk, d, n]
  kv_segs = kv_seg if cfg.has_segments else jnp.zeros((k.shape[0],), jnp.int32)
  (dq_t, dbias), (dk, dv) = lax.scan(
      k_block, (dq_t0, dbias0),
      (jnp.arange(k.shape[0]), k, jnp.swapaxes(k, -1, -2), v, kv_segs))
  dq = jnp.swapaxes(dq_t, -1, -2)
  dbias = None if bias is None else dbias.astype(bias.dtype)
  return dq.astype(q.dtype), dk, dv, dbias, None, None, None, None, None


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _flash_core(cfg, q, k, v, bias, mask, q_seg, kv_seg, q_lens, k_lens):
  """``(out in q's dtype, lse float32)``; ``lse`` is ``_HIGHEST`` where a row sees no key."""
  out, lse = _forward(cfg, q, k, v, bias, mask, q_seg, kv_seg, q_lens, k_lens)
  return out.astype(q.dtype), lse


def _flash_core_fwd(cfg, q, k, v, bias, mask, q_seg, kv_seg, q_lens, k_lens):
  out, lse = _forward(cfg, q, k, v, bias, mask, q_seg, kv_seg, q_lens, k_lens)
  return (out.astype(q.dtype), lse), (q, k, v, bias, mask, q_seg, kv_seg, q_lens, k_lens, out,
                                      lse)


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


def flash_attention(query, key, value, bias, mask, segment_ids, lengths,
                    spec: AttentionSpec) -> tuple[Array, Array]:
  """Blockwise attention with linear memory; same semantics as the reference path.

  Args:
    query: ``[batch..., q_len, heads, head_dim]``.
    key: ``[batch..., kv_len, kv_heads, head_dim]``.
    value: ``[batch..., kv_len, kv_heads, v_dim]``.
    bias, mask: broadcastable to ``[batch..., heads, q_len, kv_len]`` (sliced per block), or None.
    segment_ids: ``(query_segment_ids [batch..., q_len], key_value_segment_ids [batch...,
      kv_len])`` or None.
    lengths: ``(query_seq_lengths, key_value_seq_lengths)``, each int ``[batch...]`` or None.
    spec: the call's options; the causal limit and the window skip the key blocks they hide.

  Returns:
    ``(out [batch..., q_len, heads, v_dim]`` in the input dtype, ``lse [batch..., heads, q_len]``
    float32, the float32 lowest where a query sees no key).
  """
  *batch, q_len, heads, head_dim = query.shape
  kv_len, kv_heads = key.shape[-3], key.shape[-2]
  v_dim = value.shape[-1]
  group = heads // kv_heads
  bq, bk = spec.block_sizes or default_block_sizes(
      q_len, kv_len, batch_heads=math.prod(batch) * heads)
  nb = math.prod(batch)
  lq_pad, lk_pad = -(-q_len // bq) * bq, -(-kv_len // bk) * bk
  acc = jnp.promote_types(query.dtype, jnp.float32)
  scale_in_query = query.dtype == acc
  num_q, num_k = lq_pad // bq, lk_pad // bk
  # Block-major layout: each loop step reads one contiguous block.
  q = query.reshape(nb, q_len, kv_heads, group, head_dim)
  if scale_in_query:
    q = q * jnp.asarray(spec.scale, q.dtype)
  q = jnp.pad(q, [(0, 0), (0, lq_pad - q_len), (0, 0), (0, 0), (0, 0)])
  q = q.reshape(nb, num_q, bq, kv_heads, group, head_dim).transpose(1, 0, 3, 4, 2, 5)
  q = q.reshape(num_q, nb, kv_heads, group * bq, head_dim)

  def key_blocks(x):
    x = jnp.pad(x.reshape(nb, kv_len, kv_heads, x.shape[-1]),
                [(0, 0), (0, lk_pad - kv_len), (0, 0), (0, 0)])
    return x.reshape(nb, num_k, bk, kv_heads, x.shape[-1]).transpose(1, 0, 3, 2, 4)

  k, v = key_blocks(key), key_blocks(value)
  shape_args = (batch, heads, kv_heads, q_len, kv_len, lq_pad - q_len, lk_pad - kv_len)
  bias5 = None if bias is None else _to_5d(bias, *shape_args, fill=0)
  mask5 = None if mask is None else _to_5d(mask, *shape_args, fill=False)

  def segment_blocks(x, length, padded, block, fill):
    x = jnp.asarray(x, jnp.int32).reshape(nb, length)
    x = jnp.pad(x, [(0, 0), (0, padded - length)], constant_values=fill)
    return x.reshape(nb, padded // block, block).transpose(1, 0, 2)  # [blocks, b, block]

  q_seg = kv_seg = None
  if segment_ids is not None:
    # Tiled once over the group, as the query rows are laid out ((group, query) flattened, group
    # outer), so no block step repeats it.
    q_seg = jnp.tile(segment_blocks(segment_ids[0], q_len, lq_pad, bq, _PAD_Q_SEGMENT),
                     (1, 1, group))
    kv_seg = segment_blocks(segment_ids[1], kv_len, lk_pad, bk, _PAD_KV_SEGMENT)

  def lengths_of(x, limit):
    if x is None:
      return None
    return jnp.minimum(jnp.broadcast_to(jnp.asarray(x), tuple(batch)).reshape(nb), limit)

  q_lens, k_lens = lengths_of(lengths[0], q_len), lengths_of(lengths[1], kv_len)
  left, right = spec.band
  cfg = _Config(bq, bk, q_len, kv_len, group, left, right, spec.softcap, spec.scale,
                scale_in_query, q_lens is not None, k_lens is not None, q_seg is not None)
  out, lse = _flash_core(cfg, q, k, v, bias5, mask5, q_seg, kv_seg, q_lens, k_lens)
  out = out.reshape(num_q, nb, kv_heads, group, bq, v_dim).transpose(1, 0, 4, 2, 3, 5)
  out = out.reshape(nb, lq_pad, heads, v_dim)[:, :q_len].reshape(*batch, q_len, heads, v_dim)
  lse = jnp.where(lse == _HIGHEST, _LOWEST, lse)  # [nq, b, hk, g * bq]
  lse = lse.reshape(num_q, nb, kv_heads, group, bq).transpose(1, 2, 3, 0, 4)
  lse = lse.reshape(nb, heads, lq_pad)[:, :, :q_len].reshape(*batch, heads, q_len)
  return out, lax.stop_gradient(lse)
