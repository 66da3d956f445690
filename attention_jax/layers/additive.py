"""Additive (Bahdanau) attention: ``e_i = v . tanh(W_q s + W_k h_i + b)`` (Bahdanau et al. 2015)."""

from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax.linen import dtypes

from attention_jax import ops

Array = jax.Array
Initializer = Callable[..., Array]


class _Kernel(nn.Module):
  """The ``kernel`` of ``nn.Dense(features, use_bias=False)``, returned rather than applied so
  that :func:`ops.additive_attention` does the product (the parameter tree is that of the Dense)."""

  features: int
  kernel_init: Initializer
  param_dtype: Any

  @nn.compact
  def __call__(self, in_features: int) -> Array:
    return self.param("kernel", self.kernel_init, (in_features, self.features), self.param_dtype)


class AdditiveAttention(nn.Module):
  """Bahdanau attention of one query (a decoder state) over a sequence of keys.

  Parameters: ``query`` (Dense kernel ``[dq, attention_features]``, no bias), ``key`` (Dense
  ``[dk, attention_features]`` with bias) and ``score`` (``[attention_features]``).

  An RNN decoder projects the encoder states once with :meth:`project_keys` and passes them as
  ``projected_keys`` at every step; the module keeps no state, so it works inside ``nn.scan`` /
  ``nn.RNN`` cells.

  Attributes:
    attention_features: width ``da`` of the hidden layer of the score.
    kernel_init: initialiser of the two projections.
    score_init: initialiser of the score vector.
    dtype: computation dtype (``None``: from the inputs and parameters).
    param_dtype: parameter dtype.
  """

  attention_features: int
  kernel_init: Initializer = nn.initializers.lecun_normal()
  score_init: Initializer = nn.initializers.normal(stddev=0.1)
  dtype: Any = None
  param_dtype: Any = jnp.float32

  def setup(self):
    self.query = _Kernel(self.attention_features, self.kernel_init, self.param_dtype)
    self.key = nn.Dense(self.attention_features, kernel_init=self.kernel_init, dtype=self.dtype,
                        param_dtype=self.param_dtype)
    self.score = self.param("score", self.score_init, (self.attention_features,),
                            self.param_dtype)

  def project_keys(self, keys) -> Array:
    """``keys [batch..., n, dk]`` -> ``W_k keys + b``, ``[batch..., n, attention_features]``."""
    keys = jnp.asarray(keys)
    if keys.ndim < 2:
      raise ValueError(f"keys must be [batch..., n, dk], got shape {keys.shape}")
    return self.key(keys)

  def __call__(self, query, keys, values=None, mask=None, projected_keys=None,
               sow_weights: bool = False, return_weights: bool = False):
    """The context vector.

    Args:
      query: ``[batch..., dq]``.
      keys: ``[batch..., n, dk]``; only their shape is used when ``projected_keys`` is given.
      values: ``[batch..., n, dv]``; default ``keys``.
      mask: bool ``[batch..., n]`` (broadcastable), ``True`` = may attend.
      projected_keys: ``project_keys(keys)``, ``[batch..., n, attention_features]``, to skip the
        key projection.
      sow_weights: sow the weights ``[batch..., n]`` as ``intermediates/attention_weights``.
      return_weights: also return the weights (what a scanned RNN decoder needs: it cannot
        collect sown values per step as easily as scan outputs).

    Returns:
      ``context [batch..., dv]`` (zeros for a query whose keys are all masked), or
      ``(context, weights [batch..., n])`` with ``return_weights``.
    """
    query, keys = jnp.asarray(query), jnp.asarray(keys)
    values = keys if values is None else jnp.asarray(values)
    if query.ndim < 1 or keys.ndim != query.ndim + 1 or keys.shape[:-2] != query.shape[:-1]:
      raise ValueError(
          f"keys must be [batch..., n, dk] for a query [batch..., dq]; got keys {keys.shape}, "
          f"query {query.shape}")
    if projected_keys is None:
      projected_keys = self.project_keys(keys)
    else:
      projected_keys = jnp.asarray(projected_keys)
      expected = (*keys.shape[:-1], self.attention_features)
      if projected_keys.shape != expected:
        raise ValueError(
            f"projected_keys has shape {projected_keys.shape}, expected {expected} "
            f"(keys {keys.shape} projected to attention_features={self.attention_features})")
    w_query = self.query(query.shape[-1])
    query, projected_keys, values, w_query, w_score = dtypes.promote_dtype(
        query, projected_keys, values, w_query, self.score, dtype=self.dtype)
    context, weights = ops.additive_attention(
        query, projected_keys, values, w_query, None, w_score, mask=mask, return_weights=True)
    if sow_weights:
      self.sow("intermediates", "attention_weights", weights)
    return (context, weights) if return_weights else context
