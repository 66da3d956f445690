"""The lecture's general attention layer: given queries attend over input vectors through learned
key and value projections."""

from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax.linen import dtypes

from attention_jax import ops
from attention_jax.ops import validation

Array = jax.Array
Initializer = Callable[..., Array]


class AttentionLayer(nn.Module):
  """``Y = softmax(Q K^T / sqrt(D_Q)) V`` with ``K = X W_K`` and ``V = X W_V``, one head.

  The queries are an input (not projected); the input vectors ``X`` give the keys (projected to
  the query width ``D_Q``) and the values (projected to ``value_features``). Parameters: ``key``
  and ``value`` (Dense kernels, plus biases with ``use_bias``).

  Attributes:
    value_features: width ``D_V`` of the values and of the output.
    use_bias: biases in the projections (the lecture has none).
    kernel_init: initialiser of the projections.
    dtype: computation dtype (``None``: from the inputs and parameters).
    param_dtype: parameter dtype.
    implementation: passed to :func:`ops.dot_product_attention`.
  """

  value_features: int
  use_bias: bool = False
  kernel_init: Initializer = nn.initializers.lecun_normal()
  dtype: Any = None
  param_dtype: Any = jnp.float32
  implementation: str | None = None

  @nn.compact
  def __call__(self, queries, inputs, *, mask=None, key_value_seq_lengths=None,
               sow_weights: bool = False) -> Array:
    """Attends from ``queries`` over ``inputs``.

    Args:
      queries: ``Q [batch..., N_Q, D_Q]``.
      inputs: ``X [batch..., N_X, D_X]``.
      mask: bool, ``True`` = may attend, broadcastable to ``[batch..., N_Q, N_X]``.
      key_value_seq_lengths: int ``[batch...]``; inputs at positions
        ``>= key_value_seq_lengths`` are masked.
      sow_weights: sow the weights ``[batch..., N_Q, N_X]`` as ``intermediates/attention_weights``.

    Returns:
      ``Y [batch..., N_Q, value_features]``.
    """
    queries, inputs = jnp.asarray(queries), jnp.asarray(inputs)
    if queries.ndim < 2 or inputs.ndim != queries.ndim or inputs.shape[:-2] != queries.shape[:-2]:
      raise ValueError(
          f"queries {queries.shape} and inputs {inputs.shape} must be [batch..., N_Q, D_Q] and "
          f"[batch..., N_X, D_X] with the same batch axes")
    *batch, n_q, d_q = queries.shape
    n_x = inputs.shape[-2]
    if mask is not None:
      validation.require_bool("mask", mask)
      validation.require_broadcastable("mask", mask, (*batch, n_q, n_x), "[batch..., N_Q, N_X]")
      mask = jnp.asarray(mask)
      if mask.ndim >= 2:
        mask = jnp.expand_dims(mask, -3)  # the heads axis
    dense = lambda features, name: nn.Dense(
        features, use_bias=self.use_bias, kernel_init=self.kernel_init, dtype=self.dtype,
        param_dtype=self.param_dtype, name=name)
    keys = dense(d_q, "key")(inputs)
    values = dense(self.value_features, "value")(inputs)
    queries, keys, values = dtypes.promote_dtype(queries, keys, values, dtype=self.dtype)
    result = ops.dot_product_attention(
        queries[..., None, :], keys[..., None, :], values[..., None, :], mask=mask,
        key_value_seq_lengths=key_value_seq_lengths, return_weights=sow_weights,
        implementation=self.implementation)
    if sow_weights:
      result, weights = result
      self.sow("intermediates", "attention_weights", weights[..., 0, :, :])
    return result[..., 0, :]
