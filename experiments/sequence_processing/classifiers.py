"""Three ways of processing a sequence into one prediction: recurrence, convolution, attention.

Each classifier embeds tokens ``[batch, length]``, runs its sequence encoder to features
``[batch, length, width]`` and reads the logits ``[batch, num_classes]`` at the *last* position,
so what the last position can see is what the model can use:

* :class:`RecurrentClassifier` -- a GRU/LSTM left to right: O(length) sequential steps, and the
  first token reaches the last through ``length - 1`` state updates.
* :class:`ConvClassifier` -- a stack of causal 1D convolutions (optionally dilated): parallel, but
  the last position sees only the last :meth:`ConvStack.receptive_field` inputs.
* :class:`AttentionClassifier` -- sinusoidal positions and :class:`layers.TransformerBlock` s:
  parallel, every position sees every other in one step, memory O(length^2) per head.
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from attention_jax import layers

Array = jax.Array
CELL_TYPES = ("gru", "lstm")


def _check_tokens(tokens) -> Array:
  tokens = jnp.asarray(tokens)
  if tokens.ndim != 2 or not jnp.issubdtype(tokens.dtype, jnp.integer):
    raise ValueError(
        f"tokens must be int [batch, length], got shape {tokens.shape} dtype {tokens.dtype}")
  return tokens


def dilations(depth: int, dilation_base: int) -> tuple[int, ...]:
  """The dilation of each layer: ``dilation_base ** i`` for ``i < depth`` (1 = undilated)."""
  if depth < 0:
    raise ValueError(f"depth must be >= 0, got {depth}")
  if dilation_base < 1:
    raise ValueError(f"dilation_base must be >= 1, got {dilation_base}")
  return tuple(dilation_base**i for i in range(depth))


def receptive_field(depth: int, kernel_size: int, dilation_base: int = 1) -> int:
  """Inputs that can influence one output of ``depth`` causal convolutions:
  ``1 + (kernel_size - 1) * sum(dilations)`` (linear in depth undilated, exponential when
  ``dilation_base >= 2``)."""
  if kernel_size < 1:
    raise ValueError(f"kernel_size must be >= 1, got {kernel_size}")
  return 1 + (kernel_size - 1) * sum(dilations(depth, dilation_base))


def depth_for(distance: int, kernel_size: int, dilation_base: int = 1) -> int:
  """The fewest layers whose receptive field covers two tokens ``distance`` apart."""
  if kernel_size < 2:
    raise ValueError(f"kernel_size must be >= 2 to see any distance, got {kernel_size}")
  depth = 0
  while receptive_field(depth, kernel_size, dilation_base) < distance + 1:
    depth += 1
  return depth


class ConvStack(nn.Module):
  """``depth`` residual blocks ``x + gelu(CausalConv(LayerNorm(x)))``: ``[batch, length, width]``
  -> same shape; output ``t`` depends only on inputs ``t - receptive_field() + 1 .. t``.

  Attributes:
    width: channels (equal to the input's).
    depth: number of convolutions.
    kernel_size: taps of each convolution.
    dilation_base: layer ``i`` is dilated by ``dilation_base ** i``.
  """

  width: int
  depth: int
  kernel_size: int = 3
  dilation_base: int = 1

  def receptive_field(self) -> int:
    return receptive_field(self.depth, self.kernel_size, self.dilation_base)

  @nn.compact
  def __call__(self, x) -> Array:
    for i, dilation in enumerate(dilations(self.depth, self.dilation_base)):
      y = nn.LayerNorm(name=f"norm_{i}")(x)
      # Left padding only: causal, so the last position is the one that has seen the most.
      y = nn.Conv(self.width, (self.kernel_size,), kernel_dilation=(dilation,),
                  padding=[((self.kernel_size - 1) * dilation, 0)], name=f"conv_{i}")(y)
      x = x + nn.gelu(y)
    return nn.LayerNorm(name="final_norm")(x)


class ConvClassifier(nn.Module):
  """Embedding -> :class:`ConvStack` -> logits at the last position.

  Attributes:
    vocab_size, num_classes: sizes of the input and output vocabularies.
    width: embedding and conv channels.
    depth, kernel_size, dilation_base: see :class:`ConvStack`.
  """

  vocab_size: int
  num_classes: int
  width: int
  depth: int
  kernel_size: int = 3
  dilation_base: int = 1

  def receptive_field(self) -> int:
    return receptive_field(self.depth, self.kernel_size, self.dilation_base)

  @nn.compact
  def __call__(self, tokens) -> Array:
    """``tokens int [batch, length]`` -> ``logits [batch, num_classes]``."""
    x = nn.Embed(self.vocab_size, self.width, name="embed")(_check_tokens(tokens))
    x = ConvStack(self.width, self.depth, self.kernel_size, self.dilation_base, name="stack")(x)
    return nn.Dense(self.num_classes, name="head")(x[:, -1])


class RecurrentClassifier(nn.Module):
  """Embedding -> ``num_layers`` GRU/LSTM layers (left to right) -> logits from the last state.

  Attributes:
    vocab_size, num_classes: sizes of the input and output vocabularies.
    embed_dim: embedding width.
    hidden_dim: recurrent state width.
    num_layers: stacked recurrent layers.
    cell_type: ``"gru"`` or ``"lstm"``.
  """

  vocab_size: int
  num_classes: int
  embed_dim: int
  hidden_dim: int
  num_layers: int = 1
  cell_type: str = "gru"

  @nn.compact
  def __call__(self, tokens) -> Array:
    """``tokens int [batch, length]`` -> ``logits [batch, num_classes]``."""
    if self.cell_type not in CELL_TYPES:
      raise ValueError(f"cell_type must be one of {CELL_TYPES}, got {self.cell_type!r}")
    x = nn.Embed(self.vocab_size, self.embed_dim, name="embed")(_check_tokens(tokens))
    cell = nn.GRUCell if self.cell_type == "gru" else nn.OptimizedLSTMCell
    for i in range(self.num_layers):
      x = nn.RNN(cell(self.hidden_dim), name=f"rnn_{i}")(x)
    return nn.Dense(self.num_classes, name="head")(x[:, -1])


class AttentionClassifier(nn.Module):
  """Embedding + sinusoidal positions -> ``depth`` Transformer blocks -> logits at the last
  position (bidirectional attention, no dropout).

  Attributes:
    vocab_size, num_classes: sizes of the input and output vocabularies.
    width: model width.
    depth: Transformer blocks.
    num_heads: attention heads.
    mlp_dim: hidden width of each block's MLP.
    implementation: passed to :func:`ops.dot_product_attention`; ``"reference"`` materialises
      the ``[length, length]`` weights (the textbook O(length^2) memory), ``None`` lets long
      sequences take the blockwise path with linear memory.
  """

  vocab_size: int
  num_classes: int
  width: int
  depth: int
  num_heads: int
  mlp_dim: int
  implementation: str | None = None

  @nn.compact
  def __call__(self, tokens, *, sow_weights: bool = False) -> Array:
    """``tokens int [batch, length]`` -> ``logits [batch, num_classes]``."""
    x = nn.Embed(self.vocab_size, self.width, name="embed")(_check_tokens(tokens))
    x = layers.SinusoidalPositionalEncoding(name="positions")(x)
    for i in range(self.depth):
      x = layers.TransformerBlock(self.num_heads, self.mlp_dim, dropout_rate=0.0, pre_norm=True,
                                  implementation=self.implementation,
                                  name=f"block_{i}")(x, sow_weights=sow_weights)
    x = nn.LayerNorm(name="final_norm")(x)
    return nn.Dense(self.num_classes, name="head")(x[:, -1])


def parameter_count(params) -> int:
  return int(sum(x.size for x in jax.tree.leaves(params)))


def influence(stack: nn.Module, params, length: int, width: int,
              position: int = -1) -> Array:
  """Which inputs change output ``position`` of a ``[1, length, width]`` -> ``[1, length, width]``
  module: bool ``[length]``, True where the Jacobian of that output w.r.t. the input row is not
  zero (measured at a random input)."""
  x = jax.random.normal(jax.random.key(1), (1, length, width))
  jacobian = jax.jacrev(lambda x: stack.apply(params, x)[0, position])(x)  # [width, 1, L, width]
  return jnp.any(jacobian != 0, axis=(0, 1, 3))


__all__: Sequence[str] = (
    "AttentionClassifier", "CELL_TYPES", "ConvClassifier", "ConvStack", "RecurrentClassifier",
    "depth_for", "dilations", "influence", "parameter_count", "receptive_field")
