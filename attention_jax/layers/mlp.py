"""The position-wise feed-forward network of a Transformer block."""

from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

Array = jax.Array
Initializer = Callable[..., Array]


class MlpBlock(nn.Module):
  """``Dense(mlp_dim) -> activation -> Dense(features)``, applied to every position.

  Attributes:
    mlp_dim: hidden width.
    out_features: output width (default: the input's).
    activation: the nonlinearity (GELU).
    kernel_init: initialiser of both layers.
    dtype: computation dtype (``None``: from the inputs and parameters).
    param_dtype: parameter dtype.
  """

  mlp_dim: int
  out_features: int | None = None
  activation: Callable[[Array], Array] = nn.gelu
  kernel_init: Initializer = nn.initializers.xavier_uniform()
  dtype: Any = None
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x) -> Array:
    """``x [batch..., length, features]`` -> ``[batch..., length, out_features]``."""
    features = self.out_features or x.shape[-1]
    dense = lambda width, name: nn.Dense(
        width, kernel_init=self.kernel_init, dtype=self.dtype, param_dtype=self.param_dtype,
        name=name)
    return dense(features, "output")(self.activation(dense(self.mlp_dim, "hidden")(x)))
