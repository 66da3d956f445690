"""Self-attention over the positions of a feature map (SAGAN, Zhang et al. 2018)."""

from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from attention_jax import ops

Array = jax.Array
Initializer = Callable[..., Array]


class SelfAttention2D(nn.Module):
  """``y = gamma * o + x``: every pixel attends to every pixel of its image.

  1x1 convolutions ``query`` and ``key`` (to ``qk_features``) and ``value`` (to
  ``value_features``) feed single-head dot-product attention over the ``H * W`` positions; a 1x1
  convolution ``out`` maps the result ``o`` back to ``C`` channels. The scalar ``gamma`` starts at
  0, so the layer is the identity at initialisation and learns how much attention to mix in.

  Attributes:
    qk_features: query/key channels (default ``max(C // 8, 1)``).
    value_features: value channels (default ``C``).
    use_bias: biases in the convolutions.
    kernel_init: initialiser of the convolutions.
    dtype: computation dtype (``None``: from the inputs and parameters).
    param_dtype: parameter dtype.
    implementation: passed to :func:`ops.dot_product_attention`.
  """

  qk_features: int | None = None
  value_features: int | None = None
  use_bias: bool = True
  kernel_init: Initializer = nn.initializers.lecun_normal()
  dtype: Any = None
  param_dtype: Any = jnp.float32
  implementation: str | None = None

  @nn.compact
  def __call__(self, x, *, sow_weights: bool = False) -> Array:
    """``x [batch..., H, W, C]`` -> ``[batch..., H, W, C]``.

    With ``sow_weights`` the weights ``[batch..., H*W, H*W]`` (positions in row-major order) are
    sown as ``intermediates/attention_weights``.
    """
    x = jnp.asarray(x)
    if x.ndim < 4:
      raise ValueError(f"x must be [batch..., H, W, C] (rank >= 4), got shape {x.shape}")
    *batch, height, width, channels = x.shape
    conv = lambda features, name: nn.Conv(
        features, kernel_size=(1, 1), use_bias=self.use_bias, kernel_init=self.kernel_init,
        dtype=self.dtype, param_dtype=self.param_dtype, name=name)
    qk_features = self.qk_features or max(channels // 8, 1)
    value_features = self.value_features or channels

    def positions(y):  # [batch..., H, W, F] -> [batch..., H*W, 1 head, F]
      return y.reshape(*batch, height * width, 1, y.shape[-1])

    query = positions(conv(qk_features, "query")(x))
    key = positions(conv(qk_features, "key")(x))
    value = positions(conv(value_features, "value")(x))
    result = ops.dot_product_attention(
        query, key, value, return_weights=sow_weights, implementation=self.implementation)
    if sow_weights:
      result, weights = result
      self.sow("intermediates", "attention_weights", weights[..., 0, :, :])
    attended = result.reshape(*batch, height, width, value_features)
    o = conv(channels, "out")(attended)
    gamma = self.param("gamma", nn.initializers.zeros_init(), (), self.param_dtype)
    dtype = self.dtype or jnp.result_type(x, o, gamma)
    return gamma.astype(dtype) * o.astype(dtype) + x.astype(dtype)
