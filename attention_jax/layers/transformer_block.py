"""A Transformer encoder/decoder-only block: self-attention and an MLP, each with a residual."""

from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from attention_jax.layers.mlp import MlpBlock
from attention_jax.layers.multi_head import SelfAttention

Array = jax.Array


class TransformerBlock(nn.Module):
  """Post-norm as in Vaswani et al. 2017 and the lecture, or pre-norm.

  Post-norm: ``y = LN(x + Dropout(SelfAttention(x)))``, ``out = LN(y + Dropout(MLP(y)))``.
  Pre-norm: ``y = x + Dropout(SelfAttention(LN(x)))``, ``out = y + Dropout(MLP(LN(y)))``; the
  final LayerNorm of a pre-norm stack belongs to the model, not the block.

  Submodules: ``attention`` (:class:`SelfAttention`), ``attention_norm``, ``mlp``
  (:class:`MlpBlock`), ``mlp_norm``.

  Attributes:
    num_heads: attention heads.
    mlp_dim: hidden width of the MLP.
    num_kv_heads: key/value heads (grouped-query attention), default ``num_heads``.
    dropout_rate: dropout on the two residual branches.
    attention_dropout_rate: dropout on the attention weights.
    is_causal: each position attends only to itself and earlier ones.
    pre_norm: LayerNorm inside the residual branches instead of after the sums.
    decode: KV cache in the attention (see :class:`MultiHeadAttention`).
    rotary: RoPE in the attention.
    activation: the MLP's nonlinearity.
    layer_norm_epsilon: epsilon of both LayerNorms (BERT: 1e-12).
    dtype: computation dtype (``None``: from the inputs and parameters).
    param_dtype: parameter dtype.
    local_window_size: sliding-window self-attention (see :class:`MultiHeadAttention`).
    softcap: soft-capping of the attention logits.
    implementation: passed to :func:`ops.dot_product_attention`.
  """

  num_heads: int
  mlp_dim: int
  num_kv_heads: int | None = None
  dropout_rate: float = 0.1
  attention_dropout_rate: float = 0.0
  is_causal: bool = False
  pre_norm: bool = False
  decode: bool = False
  rotary: bool = False
  activation: Callable[[Array], Array] = nn.gelu
  layer_norm_epsilon: float = 1e-6
  dtype: Any = None
  param_dtype: Any = jnp.float32
  local_window_size: int | tuple[int, int] | None = None
  softcap: float | None = None
  implementation: str | None = None

  @nn.compact
  def __call__(self, x, *, mask=None, key_value_seq_lengths=None, segment_ids=None,
               positions=None, deterministic: bool = True, sow_weights: bool = False) -> Array:
    """``x [batch..., length, features]`` -> same shape, in ``dtype`` when given.

    Args:
      x: the sequence.
      mask: bool, ``True`` = may attend, broadcastable to ``[batch..., heads, length, length]``.
      key_value_seq_lengths: int ``[batch...]``; padded positions are not attended to.
      segment_ids: int ``[batch..., length]``: packed sequences attend only within a segment.
      positions: int ``[batch..., length]`` for RoPE (restarting per segment when packed).
      deterministic: ``False`` turns dropout on (needs a ``dropout`` rng).
      sow_weights: sow the attention weights (``attention/intermediates/attention_weights``).
    """
    x = jnp.asarray(x)
    if x.ndim < 2:
      raise ValueError(f"x must be [batch..., length, features], got shape {x.shape}")
    if self.dtype is not None:
      x = x.astype(self.dtype)  # the residual stream too, else pre-norm would promote it back
    norm = lambda name: nn.LayerNorm(
        epsilon=self.layer_norm_epsilon, dtype=self.dtype, param_dtype=self.param_dtype, name=name)
    dropout = nn.Dropout(self.dropout_rate)
    attention = SelfAttention(
        num_heads=self.num_heads, num_kv_heads=self.num_kv_heads,
        dropout_rate=self.attention_dropout_rate, is_causal=self.is_causal, decode=self.decode,
        rotary=self.rotary, dtype=self.dtype, param_dtype=self.param_dtype,
        local_window_size=self.local_window_size, softcap=self.softcap,
        implementation=self.implementation, name="attention")
    mlp = MlpBlock(self.mlp_dim, activation=self.activation, dtype=self.dtype,
                   param_dtype=self.param_dtype, name="mlp")

    def attend(y):
      y = attention(y, mask=mask, key_value_seq_lengths=key_value_seq_lengths,
                    query_segment_ids=segment_ids, positions=positions,
                    deterministic=deterministic, sow_weights=sow_weights)
      return dropout(y, deterministic=deterministic)

    def feed_forward(y):
      return dropout(mlp(y), deterministic=deterministic)

    if self.pre_norm:
      y = x + attend(norm("attention_norm")(x))
      return y + feed_forward(norm("mlp_norm")(y))
    y = norm("attention_norm")(x + attend(x))
    return norm("mlp_norm")(y + feed_forward(y))
