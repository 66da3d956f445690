"""Scaled dot-product attention and additive (Bahdanau) attention as pure JAX functions.

:func:`dot_product_attention` takes every argument of ``jax.nn.dot_product_attention`` with its
meaning and layout, so code written for jax.nn runs unchanged, plus packed sequences
(``query_segment_ids``), logit soft-capping, dropout, the weights, and our blockwise path:

  query ``[batch..., q_len, heads, head_dim]``, key ``[batch..., kv_len, kv_heads, head_dim]``,
  value ``[batch..., kv_len, kv_heads, v_dim]``; ``heads % kv_heads == 0`` gives multi-query /
  grouped-query attention (query head ``h`` reads key/value head ``h // (heads // kv_heads)``).

Masks are boolean with ``True`` = may attend, and are combined as booleans (never as added large
negatives, which overflow in bf16/fp16). Softmax statistics run in float32 whatever the input dtype.
A query whose keys are all masked gets zero output and zero gradients, never NaN, and no path ever
makes an inf (``jax.debug_infs(True)`` stays usable).
"""

from __future__ import annotations

import functools
import logging
import math
from typing import Callable

import jax
import jax.numpy as jnp

from attention_jax.ops import accelerators
from attention_jax.ops import blockwise
from attention_jax.ops import cpu_flash
from attention_jax.ops import masks as masks_lib
from attention_jax.ops import spec as spec_lib
from attention_jax.ops import validation
from attention_jax.ops.spec import IMPLEMENTATIONS, AttentionSpec

Array = jax.Array
#: The log-sum-exp a row that sees no key reports (finite, so it weighs 0 when chunks combine).
EMPTY_ROW_LSE = float(jnp.finfo(jnp.float32).min)


def accumulation_dtype(dtype) -> jnp.dtype:
  """The dtype softmax statistics and matmul accumulators use: float32, or float64 for float64."""
  return jnp.promote_types(dtype, jnp.float32)


def _softmax_and_lse(logits, mask=None, axis: int = -1) -> tuple[Array, Array]:
  """``(weights, logsumexp)`` in float32 (or wider); a fully masked row gives zero weights and
  zero gradients, and ``EMPTY_ROW_LSE``."""
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
  seen = denominator > 0.0
  weights = unnormalized / jnp.where(seen, denominator, 1.0)
  lse = jnp.where(seen, row_max + jnp.log(jnp.where(seen, denominator, 1.0)), EMPTY_ROW_LSE)
  return weights, jnp.squeeze(lse, axis)


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
  return _softmax_and_lse(logits, mask, axis)[0]


def _combined_mask(mask, spec: AttentionSpec, segment_ids, lengths, q_len, kv_len):
  """ANDs the user mask, the causal/window band, the segments and the padding; ``None`` when
  nothing is masked. Broadcastable to ``[batch..., heads, q_len, kv_len]``."""
  combined = mask

  def both(a, b):
    return b if a is None else a & b

  band = spec_lib.position_mask(spec, q_len, kv_len)
  if band is not None:
    combined = both(combined, band)
  if segment_ids is not None:
    q_seg, kv_seg = segment_ids
    combined = both(combined, (q_seg[..., :, None] == kv_seg[..., None, :])[..., None, :, :])
  if any(x is not None for x in lengths):
    combined = both(combined, masks_lib.padding_mask(*lengths, q_len, kv_len))
  return combined


def _grouped_logits(query, key, scale, bias, softcap=None) -> Array:
  """Logits ``[batch..., heads, q_len, kv_len]`` in the accumulation dtype: ``q . k * scale``,
  soft-capped, plus ``bias``; GQA without materialising repeated keys."""
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
  logits = spec_lib.soft_cap(logits, softcap)
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


def _check_inputs(query, key, value, bias, mask, lengths, segment_ids):
  """Arrays (checked, with one-line errors that name the argument) for the paths."""
  query, key = jnp.asarray(query), jnp.asarray(key)
  value = None if value is None else jnp.asarray(value)
  validation.check_qkv(query, key, value)
  *batch, q_len, heads, _ = query.shape
  kv_len = key.shape[-3]
  batch = tuple(batch)
  validation.check_mask_and_bias(mask, bias, (*batch, heads, q_len, kv_len))
  validation.check_lengths("query_seq_lengths", lengths[0], batch)
  validation.check_lengths("key_value_seq_lengths", lengths[1], batch)
  if any(x is not None for x in segment_ids):
    q_seg, kv_seg = segment_ids
    if q_seg is None or kv_seg is None:
      if q_len != kv_len:
        raise ValueError(
            f"query_segment_ids and key_value_segment_ids are both needed when q_len ({q_len}) "
            f"!= kv_len ({kv_len}); one alone is taken for both only in self-attention")
      q_seg = kv_seg = q_seg if q_seg is not None else kv_seg
    validation.check_segment_ids("query_segment_ids", q_seg, (*batch, q_len))
    validation.check_segment_ids("key_value_segment_ids", kv_seg, (*batch, kv_len))
    segment_ids = (jnp.asarray(q_seg), jnp.asarray(kv_seg))
  else:
    segment_ids = None
  return query, key, value, segment_ids


def _hide_unseen_keys(key, value, mask, lengths):
  """Zeros the key and value rows no query may see (padding past ``key_value_seq_lengths``, key
  columns the mask hides from every query and head): a masked weight is 0, but ``0 * NaN`` is
  NaN, so garbage in padding would otherwise leak into outputs and gradients. Rows a query can
  see are left as they are (a NaN there is the caller's and shows)."""
  kv_len = key.shape[-3]
  visible = None
  if lengths[1] is not None:
    visible = jnp.arange(kv_len) < jnp.asarray(lengths[1])[..., None]  # [batch..., kv_len]
  if mask is not None:
    seen = jnp.asarray(mask)
    for _ in range(min(2, seen.ndim - 1)):  # any query, then any head
      seen = jnp.any(seen, axis=-2)
    visible = seen if visible is None else visible & seen
  if visible is None:
    return key, value
  visible = visible[..., None, None]  # over [kv_heads, dim]
  return (jnp.where(visible, key, jnp.zeros((), key.dtype)),
          jnp.where(visible, value, jnp.zeros((), value.dtype)))


def _reference(query, key, value, bias, mask, segment_ids, lengths, spec: AttentionSpec,
               dropout_rng=None):
  """Materialises the weights: O(q_len * kv_len) memory.

  Returns ``(out, weights, lse)``: the output in the input dtype, the weights applied
  ``[batch..., heads, q_len, kv_len]`` and the log-sum-exp ``[batch..., heads, q_len]``, both in
  the accumulation dtype.
  """
  q_len, kv_len = query.shape[-3], key.shape[-3]
  logits = _grouped_logits(query, key, spec.scale, bias, spec.softcap)
  combined = _combined_mask(mask, spec, segment_ids, lengths, q_len, kv_len)
  weights, lse = _softmax_and_lse(logits, combined)
  if spec.dropout_rate > 0.0:
    keep = jax.random.bernoulli(dropout_rng, 1.0 - spec.dropout_rate, weights.shape)
    weights = jnp.where(keep, weights / (1.0 - spec.dropout_rate), 0.0)
  out = _weighted_values(weights, value, query.shape[-2])
  return out.astype(query.dtype), weights, lse


def _flash(query, key, value, bias, mask, segment_ids, lengths, spec: AttentionSpec,
           dropout_rng=None):
  """Blockwise online-softmax path (:mod:`attention_jax.ops.blockwise`); linear memory."""
  del dropout_rng
  if spec.dropout_rate > 0.0:
    raise ValueError(
        "implementation='flash' does not support dropout_rate > 0; use implementation='reference' "
        "or None (which picks a path that supports dropout)")
  out, lse = blockwise.flash_attention(query, key, value, bias, mask, segment_ids, lengths, spec)
  return out, None, lse


def _cpu_flash(query, key, value, bias, mask, segment_ids, lengths, spec: AttentionSpec,
               dropout_rng=None):
  """The native C++ flash kernel (:mod:`attention_jax.ops.cpu_flash`): float32, CPU."""
  del dropout_rng
  if not cpu_flash.available():
    raise ValueError(f"implementation='cpu_flash' is unavailable: "
                     f"{cpu_flash.unavailable_reason()}")
  if not cpu_flash.supports(query, key, value, bias, mask, segment_ids, lengths, spec):
    raise ValueError(
        "implementation='cpu_flash' needs float32 query, key and value and no bias, mask or "
        "dropout; use implementation=None to pick a supported path")
  # Lowered for another platform (jax.export from a CPU host outside lowering_platforms), a
  # pure-JAX path takes its place; only the CPU branch reaches XLA when compiled here. Every branch
  # is differentiated, so that one is the reference (twice differentiable) unless its logits
  # would be large.
  if _logit_bytes(query, key) < _FLASH_MIN_LOGIT_BYTES:
    portable = lambda *args: _reference(*args[:3], None, None, *args[3:], spec)[::2]  # noqa: E731
  else:
    portable = lambda *args: blockwise.flash_attention(  # noqa: E731
        *args[:3], None, None, *args[3:], spec)
  out, lse = jax.lax.platform_dependent(
      query, key, value, segment_ids, lengths,
      cpu=lambda *args: cpu_flash.flash_attention(*args, spec), default=portable)
  return out, None, lse


_BLOCKWISE_NOTED: set[str] = set()


def _note_blockwise_on_accelerator(platform: str, query, key, value, bias, mask, segment_ids,
                                   lengths, spec: AttentionSpec, return_residual: bool) -> None:
  """Logs once per kind of call that no fused kernel of ``platform`` computes it, so the pure-JAX
  blockwise loop (several XLA kernels per block step) runs there."""
  options = [name for name, present in (
      ("bias", bias is not None), ("dense mask", mask is not None),
      ("query lengths", lengths[0] is not None), ("key/value lengths", lengths[1] is not None),
      ("segment ids", segment_ids is not None), ("causal", spec.is_causal),
      ("local window", spec.window is not None), ("soft-cap", spec.softcap is not None),
      ("return_residual", return_residual)) if present]
  call = (f"query {query.dtype}{list(query.shape)}, key {list(key.shape)}, value "
          f"{list(value.shape)}, {', '.join(options) or 'no options'}")
  if call in _BLOCKWISE_NOTED:
    return
  _BLOCKWISE_NOTED.add(call)
  kernels = {"cuda": "cuDNN or the Pallas GPU flash kernel (ops.accelerators)",
             "tpu": "splash attention (ops.accelerators)"}.get(platform, "a fused kernel")
  logging.getLogger(__name__).warning(
      "dot_product_attention on %s: %s does not take this call (%s); it runs the pure-JAX "
      "blockwise loop instead, which is slower there. The dispatch table is in the README.",
      platform, kernels, call)


def _logit_bytes(query, key) -> int:
  return math.prod(query.shape[:-3]) * query.shape[-2] * query.shape[-3] * key.shape[-3] * 4


def _cudnn_supports(query, key, value, bias, mask, segment_ids, lengths,
                    spec: AttentionSpec, platform: str | None = None) -> bool:
  """Whether ``jax.nn.dot_product_attention(implementation="cudnn")`` computes exactly our
  semantics on ``platform`` (``"cuda"``; default: the default backend). Conservative: no
  bias/mask/lengths/segments/window/soft-cap (cuDNN's fully-masked rows are not guaranteed to be
  zero), causal only when top-left and bottom-right alignment coincide."""
  if (platform or jax.default_backend()) not in ("gpu", "cuda"):
    return False
  q_len, kv_len = query.shape[-3], key.shape[-3]
  head_dim = query.shape[-1]
  return (query.ndim == 4 and query.dtype in (jnp.bfloat16, jnp.float16)
          and key.dtype == query.dtype and value.dtype == query.dtype
          and value.shape[-1] == head_dim and head_dim % 8 == 0 and head_dim <= 128
          and bias is None and mask is None and segment_ids is None
          and all(x is None for x in lengths)
          and spec.window is None and spec.softcap is None and spec.dropout_rate == 0.0
          and (not spec.is_causal or q_len == kv_len))


def _cudnn_traceable() -> bool:
  """Whether jax.nn's cuDNN path can be traced here: it asks the installed cuDNN for its version
  while tracing, so without one (a CPU-only host) no cuda lowering can contain it."""
  try:
    from jax._src.cudnn import fused_attention_stablehlo
  except ImportError:
    return False
  return getattr(fused_attention_stablehlo, "cuda_versions", None) is not None


def _cudnn(query, key, value, bias, mask, segment_ids, lengths, spec: AttentionSpec,
           dropout_rng=None, platform: str | None = None):
  """cuDNN's fused kernel through ``jax.nn`` (GPU, fp16/bf16, no mask/bias/lengths/dropout)."""
  del dropout_rng
  if not _cudnn_supports(query, key, value, bias, mask, segment_ids, lengths, spec, platform):
    raise ValueError(
        "implementation='cudnn' needs a GPU, 4-D fp16/bf16 inputs with v_dim == head_dim <= 128, "
        "and no bias, mask, lengths, segments, window, soft-cap or dropout (causal only with "
        "q_len == kv_len); use implementation=None to pick a supported path")
  out, lse = jax.nn.dot_product_attention(query, key, value, scale=spec.scale,
                                          is_causal=spec.is_causal, implementation="cudnn",
                                          return_residual=True)
  return out, None, jnp.swapaxes(lse.astype(jnp.float32), -1, -2)


def _pallas_path(name: str, supports, kernel, platform: str, needs: str):
  """A path through one of JAX's Pallas kernels (:mod:`attention_jax.ops.accelerators`): the
  compiled kernel when lowered for ``platform``, Pallas interpret mode elsewhere (slow: for
  tests). No log-sum-exp (``None``)."""

  def path(query, key, value, bias, mask, segment_ids, lengths, spec: AttentionSpec,
           dropout_rng=None):
    del dropout_rng
    if not supports(query, key, value, bias, mask, segment_ids, lengths, spec):
      raise ValueError(f"implementation={name!r} needs {needs} (and no return_residual); use "
                       f"implementation=None to pick a supported path")
    run = lambda interpret: lambda q, k, v, s, n: kernel(  # noqa: E731
        q, k, v, spec=spec, segment_ids=s, lengths=n, interpret=interpret)
    out = jax.lax.platform_dependent(query, key, value, segment_ids, lengths,
                                     **{platform: run(False)}, default=run(True))
    return out, None, None

  return path


_splash = _pallas_path(
    "splash", accelerators.splash_supports, accelerators.splash_attention, "tpu",
    "float32/bfloat16 inputs, q_len and kv_len multiples of 128, and no "
    "bias, mask or dropout")
_pallas_gpu = _pallas_path(
    "pallas_gpu", accelerators.pallas_gpu_supports, accelerators.pallas_gpu_attention, "cuda",
    "q_len == kv_len, a multiple of 128, one set of segment ids for queries "
    "and keys, and no window, soft-cap, bias, mask, lengths or dropout")


_PATHS: dict[str, Callable[..., tuple[Array, Array | None, Array | None]]] = {
    "reference": _reference,
    "flash": _flash,
    "cpu_flash": _cpu_flash,
    "cudnn": _cudnn,
    "splash": _splash,
    "pallas_gpu": _pallas_gpu,
}
assert set(_PATHS) == set(IMPLEMENTATIONS)
# Measured on a 2-core CPU (benchmarks/attention.py, batch 4 x 8 heads): the blockwise path is
# faster than the reference from L=1024 (both directions) and for causal inputs from L=256 (it skips
# the blocks above the diagonal); below that the reference's few big ops are as fast or faster.
# Beyond 256 MiB of logits the reference's [L, L] arrays stop fitting well in any case.
_FLASH_MIN_LOGITS = 1024 * 1024
_FLASH_MIN_CAUSAL_LOGITS = 256 * 256
_FLASH_MIN_LOGIT_BYTES = 256 * 2**20
# The native kernel (float32, no bias or dense mask) is faster than the reference from here on
# (benchmarks/attention.py, idle 2-core CPU; see docs/performance.md); below, the reference's
# few fused XLA ops cost less than the kernel's packing and call.
_CPU_FLASH_MIN_LOGITS = 128 * 128


def _pallas_gpu_default_fits(query, value) -> bool:
  """Head sizes the default hands to the Pallas GPU kernel, whose 128 x 128 tiles of queries,
  keys and values (keys and values double-buffered) sit in shared memory: up to 128 features in
  16 bits, 64 in float32 (128 would need ~320 KiB, more than a GPU has). Larger heads take the
  blockwise path unless ``implementation="pallas_gpu"`` is asked for. Not yet checked on a GPU."""
  features = max(query.shape[-1], value.shape[-1])
  return features <= (64 if query.dtype == jnp.float32 else 128)


def _default_platform() -> str:
  """The default backend as a lowering platform name: ``"cpu"``, ``"cuda"``, ``"rocm"``,
  ``"tpu"`` (``jax.default_backend()`` says ``"gpu"`` for both CUDA and ROCm)."""
  backend = jax.default_backend()
  if backend != "gpu":
    return backend
  version = getattr(jax.devices()[0].client, "platform_version", "").lower()
  return "rocm" if "rocm" in version else "cuda"


def _choose_path(spec: AttentionSpec, query, key, value, bias, mask, segment_ids, lengths,
                 return_weights: bool, return_residual: bool = False,
                 platform: str | None = None) -> str:
  """The path for ``platform`` (a lowering platform: ``"cpu"``, ``"cuda"``, ``"tpu"``, ...;
  ``None``: the default backend)."""
  implementation = spec.implementation
  if implementation is None:
    platform = platform or _default_platform()
    if return_weights or spec.dropout_rate > 0.0:
      return "reference"
    if _cudnn_supports(query, key, value, bias, mask, segment_ids, lengths, spec, platform):
      return "cudnn"
    if (platform == "tpu" and not return_residual
        and accelerators.splash_supports(query, key, value, bias, mask, segment_ids, lengths,
                                         spec)):
      return "splash"
    logits_per_head = query.shape[-3] * key.shape[-3]
    logit_bytes = _logit_bytes(query, key)
    # Not within lowering_platforms (programs meant for export): the kernel's custom call has no
    # export compatibility guarantee and exists only where this package is installed.
    if (platform == "cpu"
        and not accelerators.requested_lowering_platforms()
        and cpu_flash.supports(query, key, value, bias, mask, segment_ids, lengths, spec)
        and (logits_per_head >= _CPU_FLASH_MIN_LOGITS
             or logit_bytes >= _FLASH_MIN_LOGIT_BYTES)):
      return "cpu_flash"
    if (logits_per_head >= _FLASH_MIN_LOGITS
        or (spec.restricts_positions and logits_per_head >= _FLASH_MIN_CAUSAL_LOGITS)
        or logit_bytes >= _FLASH_MIN_LOGIT_BYTES):
      # On a GPU, where cuDNN does not apply (float32, packed sequences), JAX's Pallas flash
      # kernel; short sequences stay on the reference, which XLA fuses.
      if (platform == "cuda" and not return_residual
          and _pallas_gpu_default_fits(query, value)
          and accelerators.pallas_gpu_supports(query, key, value, bias, mask, segment_ids,
                                               lengths, spec)):
        return "pallas_gpu"
      return "flash"
    return "reference"
  if return_weights and implementation != "reference":
    raise ValueError(
        f"implementation={implementation!r} cannot return the attention weights; use "
        f"implementation='reference' or None with return_weights=True")
  if return_residual and implementation in ("splash", "pallas_gpu"):
    raise ValueError(f"implementation={implementation!r} cannot return the residual (the "
                     f"kernel's log-sum-exp has no gradient); use implementation=None or 'flash'")
  return implementation


def dot_product_attention(
    query,
    key,
    value,
    bias=None,
    mask=None,
    *,
    scale: float | None = None,
    is_causal: bool = False,
    query_seq_lengths=None,
    key_value_seq_lengths=None,
    local_window_size: int | tuple[int, int] | None = None,
    implementation: str | None = None,
    return_residual: bool = False,
    query_segment_ids=None,
    key_value_segment_ids=None,
    softcap: float | None = None,
    dropout_rate: float = 0.0,
    dropout_rng=None,
    return_weights: bool = False,
    block_sizes: tuple[int, int] | None = None,
):
  """Scaled dot-product attention: ``softmax(cap(Q K^T * scale) + bias, masked) V`` per head.

  The arguments up to ``return_residual`` are ``jax.nn.dot_product_attention``'s, with its
  meaning; the alignment of ``is_causal`` and ``local_window_size`` when ``q_len != kv_len`` is
  ours (bottom-right, below), and a row that sees no key gives zeros where jax.nn gives the mean
  of the values.

  Args:
    query: ``[batch..., q_len, heads, head_dim]``.
    key: ``[batch..., kv_len, kv_heads, head_dim]`` with ``heads % kv_heads == 0``.
    value: ``[batch..., kv_len, kv_heads, v_dim]``.
    bias: float, added to the (soft-capped) logits, broadcastable to
      ``[batch..., heads, q_len, kv_len]``.
    mask: bool, ``True`` = may attend, broadcastable to ``[batch..., heads, q_len, kv_len]``
      (right-aligned, as NumPy: a 3-D mask is ``[heads, q_len, kv_len]``; one per batch row is
      ``[batch, 1, q_len, kv_len]``). Flax's float masks: pass ``mask != 0``.
    scale: multiplies the logits; default ``1 / sqrt(head_dim)``.
    is_causal: query ``i`` attends to keys ``j <= i + kv_len - q_len``: aligned **bottom-right**
      (the queries are the last positions), which is what decoding with a KV cache and chunked
      prefill need. ``jax.nn.dot_product_attention`` and PyTorch align top-left (``j <= i``); both
      agree when ``q_len == kv_len``.
    query_seq_lengths: int ``[batch...]``; queries at positions ``>= query_seq_lengths`` get zero
      output.
    key_value_seq_lengths: int ``[batch...]``; keys at positions ``>= key_value_seq_lengths`` are
      masked.
    local_window_size: ``(left, right)`` or an int ``w`` for ``(w, w)``: query ``i`` attends to
      keys ``i' - left <= j <= i' + right`` with ``i' = i + kv_len - q_len`` (sliding-window
      attention, Mistral / Gemma 2; with ``is_causal`` only the left bound matters).
    implementation: ``None`` picks the fastest path that supports the arguments, per platform
      (the table is in the README): ``"cudnn"`` where it applies (CUDA GPU), ``"splash"`` where
      it applies (TPU), ``"cpu_flash"`` on a CPU from ``q_len * kv_len >= 128**2`` where it
      applies; otherwise from ``q_len * kv_len >= 1024**2`` (``256**2`` if causal or windowed)
      or where the reference's ``[L, L]`` arrays get large (over 256 MiB of logits)
      ``"pallas_gpu"`` on a CUDA GPU where it applies and ``"flash"`` elsewhere (logged once per
      kind of call on an accelerator), and ``"reference"`` below that (also whenever weights or
      dropout are requested). Traced on a CPU host within
      :func:`attention_jax.ops.accelerators.lowering_platforms`, the program also carries the
      choice for each of those platforms, e.g. for ``jax.export(platforms=["tpu"])``.
      ``"reference"`` (jax.nn's ``"xla"`` is the same) materialises the weights; ``"flash"`` is
      blockwise with an online softmax and linear memory, skipping the blocks the causal limit or
      the window hide (no dropout, no weights); ``"cpu_flash"`` is our native C++ kernel
      (float32, no bias/mask/dropout; :mod:`attention_jax.ops.cpu_flash`); ``"cudnn"`` is
      ``jax.nn``'s fused GPU kernel (fp16/bf16, no mask/bias/lengths/segments/window);
      ``"splash"`` is JAX's Pallas TPU splash attention (float32/bf16, lengths multiples of 128,
      causal/window/segments/lengths/soft-cap/GQA, no mask/bias/dropout/residual; off TPU it runs
      in Pallas interpret mode, slowly, for tests); ``"pallas_gpu"`` is JAX's Pallas GPU flash
      kernel (Triton; ``q_len == kv_len``, a multiple of 128, causal or not, shared segment ids,
      no lengths/window/soft-cap/residual; interpret mode off GPU; its Triton call has no export
      compatibility guarantee, see
      :func:`attention_jax.ops.accelerators.export_disabled_checks`). All paths are tested
      against ``"reference"`` and a float64 NumPy version.
    return_residual: also return the log-sum-exp of each query's logits ``[batch..., q_len,
      heads]`` (jax.nn's layout; float32, without gradient; ``EMPTY_ROW_LSE`` for a query that
      sees no key), which is what combining attention over chunks of keys needs.
    query_segment_ids: int ``[batch..., q_len]``: packed sequences; a query attends only to keys
      of its own segment.
    key_value_segment_ids: int ``[batch..., kv_len]``; defaults to ``query_segment_ids`` in
      self-attention (``q_len == kv_len``).
    softcap: logits become ``softcap * tanh(logits / softcap)`` before bias and masks (Gemma 2).
    dropout_rate: dropout on the attention weights (inverted: kept weights are divided by
      ``1 - dropout_rate``, so a row of the returned weights may sum to more than one).
    dropout_rng: PRNG key, required when ``dropout_rate > 0``.
    return_weights: also return the attention weights actually applied.
    block_sizes: ``(block_q, block_k)`` for ``"flash"``; default
      :func:`attention_jax.ops.blockwise.default_block_sizes`.

  Returns:
    ``out [batch..., q_len, heads, v_dim]`` in the input dtype; with ``return_weights`` and/or
    ``return_residual`` a tuple ``(out, weights [batch..., heads, q_len, kv_len], lse)`` of those
    asked for, in that order.

  Raises:
    ValueError / TypeError at trace time for inconsistent shapes, dtypes, masks or arguments.
  """
  validation.check_dropout(dropout_rate, dropout_rng)
  lengths = (query_seq_lengths, key_value_seq_lengths)
  query, key, value, segment_ids = _check_inputs(
      query, key, value, bias, mask, lengths, (query_segment_ids, key_value_segment_ids))
  spec = spec_lib.make_spec(
      scale=scale, head_dim=query.shape[-1], is_causal=is_causal,
      local_window_size=local_window_size, softcap=softcap, implementation=implementation,
      block_sizes=block_sizes, dropout_rate=dropout_rate)
  if return_weights:
    validation.check_weights_size(query.shape[:-3], query.shape[-2], query.shape[-3],
                                  key.shape[-3], query.dtype.itemsize)
  path = _choose_path(spec, query, key, value, bias, mask, segment_ids, lengths, return_weights,
                      return_residual)

  def run(path, query, key, value, bias, mask, segment_ids, lengths, dropout_rng):
    if segment_ids is not None and segment_ids[1] is None:
      segment_ids = (segment_ids[0], segment_ids[0])
    if path not in ("cudnn", "pallas_gpu"):  # these run without masks and lengths
      key, value = _hide_unseen_keys(key, value, mask, lengths)
    run_path = functools.partial(_cudnn, platform="cuda") if path == "cudnn" else _PATHS[path]
    out, weights, lse = run_path(query, key, value, bias, mask, segment_ids, lengths, spec,
                                 dropout_rng)
    # Only what was asked for, so that every platform's branch returns the same structure.
    return out, weights if return_weights else None, lse if return_residual else None

  # One array for both sides stays one (Pallas GPU takes only that) through platform_dependent,
  # which would otherwise hand each branch two tracers.
  shared = segment_ids is not None and segment_ids[0] is segment_ids[1]
  args = (query, key, value, bias, mask, (segment_ids[0], None) if shared else segment_ids,
          lengths, dropout_rng)
  per_platform = {}
  targets = accelerators.requested_lowering_platforms()
  if spec.implementation is None and targets and jax.default_backend() == "cpu":
    # Lowered for an accelerator (jax.export, AOT): the fused kernel of that platform where it
    # supports the call. The CPU branch is the path chosen above; the others are traced but only
    # the lowering platform's branch reaches the compiler.
    for platform in (p for p in ("cuda", "tpu") if p in targets):
      other = _choose_path(spec, query, key, value, bias, mask, segment_ids, lengths,
                           return_weights, return_residual, platform)
      # jax.nn's cuDNN path asks the installed cuDNN for its version while tracing: a host
      # without one cannot lower it, so such calls keep the CPU branch's path there.
      if other != path and (other != "cudnn" or _cudnn_traceable()):
        per_platform[platform] = other
      if other == "flash":
        _note_blockwise_on_accelerator(platform, query, key, value, bias, mask, segment_ids,
                                       lengths, spec, return_residual)
  elif path == "flash" and spec.implementation is None and _default_platform() != "cpu":
    _note_blockwise_on_accelerator(_default_platform(), query, key, value, bias, mask,
                                   segment_ids, lengths, spec, return_residual)
  if per_platform:
    branches = {platform: functools.partial(run, other)
                for platform, other in per_platform.items()}
    out, weights, lse = jax.lax.platform_dependent(*args, default=functools.partial(run, path),
                                                   **branches)
  else:
    out, weights, lse = run(path, *args)
  extras = []
  if return_weights:
    extras.append(weights.astype(query.dtype))
  if return_residual:
    extras.append(jax.lax.stop_gradient(jnp.swapaxes(lse.astype(jnp.float32), -1, -2)))
  return (out, *extras) if extras else out


def attention_weights(
    query,
    key,
    bias=None,
    mask=None,
    *,
    scale: float | None = None,
    is_causal: bool = False,
    query_seq_lengths=None,
    key_value_seq_lengths=None,
    local_window_size: int | tuple[int, int] | None = None,
    query_segment_ids=None,
    key_value_segment_ids=None,
    softcap: float | None = None,
) -> Array:
  """The attention weights ``[batch..., heads, q_len, kv_len]`` (input dtype) for plotting.

  Same arguments and semantics as :func:`dot_product_attention`; each unmasked row sums to one,
  a fully masked row is all zeros.
  """
  lengths = (query_seq_lengths, key_value_seq_lengths)
  query, key, _, segment_ids = _check_inputs(
      query, key, None, bias, mask, lengths, (query_segment_ids, key_value_segment_ids))
  spec = spec_lib.make_spec(scale=scale, head_dim=query.shape[-1], is_causal=is_causal,
                            local_window_size=local_window_size, softcap=softcap)
  logits = _grouped_logits(query, key, spec.scale, bias, spec.softcap)
  combined = _combined_mask(mask, spec, segment_ids, lengths, query.shape[-3], key.shape[-3])
  return masked_softmax(logits, combined).astype(query.dtype)


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
  # Integer inputs compute in float32 (tanh and softmax of ints would be truncated to 0).
  dtype = jnp.result_type(query, keys, values, w_query, w_score,
                          *(() if w_key is None else (jnp.asarray(w_key),)))
  if not jnp.issubdtype(dtype, jnp.floating):
    dtype = jnp.float32
  query, keys, values, w_query, w_score = (
      x.astype(dtype) for x in (query, keys, values, w_query, w_score))
  if w_key is not None:
    w_key = jnp.asarray(w_key).astype(dtype)
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
  if k_shape[-2] == 0:
    raise ValueError(f"keys have no positions (shape {k_shape}): additive attention needs at "
                     f"least one; mask positions out instead of removing them")
  for name, x in (("query", query), ("keys", keys), ("values", values)):
    if not (jnp.issubdtype(x.dtype, jnp.floating) or jnp.issubdtype(x.dtype, jnp.integer)):
      raise TypeError(f"{name} must be a real numeric array, got dtype {x.dtype}")
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
