"""A Transformer decoder block: masked self-attention, optional cross-attention, an MLP."""

from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from attention_jax.layers.mlp import MlpBlock
from attention_jax.layers.multi_head import MultiHeadAttention

Array = jax.Array


class DecoderBlock(nn.Module):
  """Causal self-attention, cross-attention to an encoder's output (optional), then an MLP.

  Post-norm (Vaswani et al. 2017, the lecture): ``y = LN(x + Dropout(Sublayer(x)))`` for each of
  the sublayers. Pre-norm (GPT-2): ``y = x + Dropout(Sublayer(LN(x)))``; the final LayerNorm of a
  pre-norm stack belongs to the model.

  Submodules: ``attention``, ``attention_norm``, ``cross_attention``, ``cross_attention_norm``
  (only with ``cross_attention=True``), ``mlp`` (:class:`MlpBlock`, ``hidden``/``output``),
  ``mlp_norm``.

  Attributes:
    num_heads: attention heads (self and cross).
    mlp_dim: hidden width of the MLP.
    num_kv_heads: key/value heads of the self-attention (grouped-query), default ``num_heads``.
    cross_attention: include the cross-attention sublayer (an encoder-decoder's decoder).
    dropout_rate: dropout on every residual branch.
    attention_dropout_rate: dropout on the attention weights.
    pre_norm: LayerNorm inside the residual branches instead of after the sums.
    decode: KV cache in the self-attention (see :class:`MultiHeadAttention`); the
      cross-attention's keys are recomputed from ``encoded`` at every call.
    rotary: RoPE in the self-attention.
    activation: the MLP's nonlinearity.
    layer_norm_epsilon: epsilon of every LayerNorm (GPT-2: 1e-5, BERT: 1e-12).
    use_bias: biases in the attention projections.
    dtype: computation dtype (``None``: from the inputs and parameters).
    param_dtype: parameter dtype.
    local_window_size: sliding-window self-attention (see :class:`MultiHeadAttention`).
    softcap: soft-capping of the attention logits (self and cross).
    implementation: passed to :func:`ops.dot_product_attention`.
  """

  num_heads: int
  mlp_dim: int
  num_kv_heads: int | None = None
  cross_attention: bool = True
  dropout_rate: float = 0.1
  attention_dropout_rate: float = 0.0
  pre_norm: bool = False
  decode: bool = False
  rotary: bool = False
  activation: Callable[[Array], Array] = nn.gelu
  layer_norm_epsilon: float = 1e-6
  use_bias: bool = True
  dtype: Any = None
  param_dtype: Any = jnp.float32
  local_window_size: int | tuple[int, int] | None = None
  softcap: float | None = None
  implementation: str | None = None

  @nn.compact
  def __call__(self, x, encoded=None, *, encoded_lengths=None, segment_ids=None,
               positions=None, encoded_segment_ids=None, deterministic: bool = True,
               sow_weights: bool = False) -> Array:
    """``x [batch..., length, features]`` -> same shape, in ``dtype`` when given.

    Args:
      x: the target sequence (in decode mode: the new chunk of it).
      encoded: ``[batch..., src_len, features]``, the encoder's output (``cross_attention``).
      encoded_lengths: int ``[batch...]``; padded encoder positions are not attended to.
      segment_ids: int ``[batch..., length]``: packed target sequences attend only within a
        segment; with ``cross_attention`` segment ``s`` reads segment ``s`` of ``encoded``.
      positions: int ``[batch..., length]`` for RoPE (restarting per segment when packed).
      encoded_segment_ids: int ``[batch..., src_len]``: the segments of ``encoded`` (packed
        sources; needed with ``segment_ids`` and ``cross_attention``).
      deterministic: ``False`` turns dropout on (needs a ``dropout`` rng).
      sow_weights: sow the attention weights (``attention/...`` and ``cross_attention/...``
        ``intermediates/attention_weights``).
    """
    x = jnp.asarray(x)
    if x.ndim < 2:
      raise ValueError(f"x must be [batch..., length, features], got shape {x.shape}")
    if self.cross_attention and encoded is None:
      raise ValueError("cross_attention=True needs `encoded` [batch..., src_len, features]")
    if not self.cross_attention and encoded is not None:
      raise ValueError("got `encoded` but cross_attention=False")
    if self.dtype is not None:
      x = x.astype(self.dtype)  # keep the residual stream in the compute dtype
    dropout = nn.Dropout(self.dropout_rate)

    def norm(name):
      return nn.LayerNorm(epsilon=self.layer_norm_epsilon, dtype=self.dtype,
                          param_dtype=self.param_dtype, name=name)

    def attention(name, **kwargs):
      return MultiHeadAttention(
          num_heads=self.num_heads, dropout_rate=self.attention_dropout_rate,
          use_bias=self.use_bias, dtype=self.dtype, param_dtype=self.param_dtype,
          softcap=self.softcap, implementation=self.implementation, name=name, **kwargs)

    def residual(y, sublayer, name):
      if self.pre_norm:
        return y + dropout(sublayer(norm(name)(y)), deterministic=deterministic)
      return norm(name)(y + dropout(sublayer(y), deterministic=deterministic))

    if self.cross_attention and (segment_ids is None) != (encoded_segment_ids is None):
      raise ValueError("packed pairs need segment_ids (targets) and encoded_segment_ids "
                       "(sources) together")
    if not self.cross_attention and encoded_segment_ids is not None:
      raise ValueError("got encoded_segment_ids but cross_attention=False")
    self_attention = attention("attention", num_kv_heads=self.num_kv_heads, is_causal=True,
                               decode=self.decode, rotary=self.rotary,
                               local_window_size=self.local_window_size)
    x = residual(x, lambda y: self_attention(y, query_segment_ids=segment_ids,
                                             positions=positions, deterministic=deterministic,
                                             sow_weights=sow_weights), "attention_norm")
    if self.cross_attention:
      cross = attention("cross_attention")
      x = residual(x, lambda y: cross(y, jnp.asarray(encoded),
                                      key_value_seq_lengths=encoded_lengths,
                                      query_segment_ids=segment_ids,
                                      key_value_segment_ids=encoded_segment_ids,
                                      deterministic=deterministic, sow_weights=sow_weights),
                   "cross_attention_norm")
    mlp = MlpBlock(self.mlp_dim, activation=self.activation, dtype=self.dtype,
                   param_dtype=self.param_dtype, name="mlp")
    return residual(x, mlp, "mlp_norm")
