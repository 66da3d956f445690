"""A GRU cell with flax's ``nn.GRUCell`` parameters whose six gate products run as two."""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp
from flax.linen.dtypes import promote_dtype
from flax.linen.recurrent import DenseParams


class FusedGRUCell(nn.GRUCell):
  """``nn.GRUCell`` (same parameters ``ir iz in hr hz hn``, same initialisation, same equations)
  computing ``x [W_ir | W_iz | W_in] + b_i`` and ``h [W_hr | W_hz | W_hn] + (0, 0, b_hn)`` as two
  products instead of six, as flax's ``OptimizedLSTMCell`` does for the LSTM: inside a scan each
  small product is a separate kernel launch, and the step is a chain of them.

    ``r = sigmoid(W_ir x + b_ir + W_hr h)``, ``z = sigmoid(W_iz x + b_iz + W_hz h)``,
    ``n = tanh(W_in x + b_in + r * (W_hn h + b_hn))``, ``h' = (1 - z) n + z h``.
  """

  @nn.compact
  def __call__(self, carry, inputs):
    """``carry [..., features]``, ``inputs [..., in_features]`` -> ``(h', h')``."""
    h = carry
    features = h.shape[-1]

    def params(name, x, use_bias, kernel_init):
      return DenseParams(features=features, use_bias=use_bias, param_dtype=self.param_dtype,
                         kernel_init=kernel_init, bias_init=self.bias_init, name=name)(x)

    ir, iz, in_ = (params(n, inputs, True, self.kernel_init) for n in ("ir", "iz", "in"))
    hr, hz = (params(n, h, False, self.recurrent_kernel_init) for n in ("hr", "hz"))
    hn = params("hn", h, True, self.recurrent_kernel_init)
    input_kernel = jnp.concatenate([ir[0], iz[0], in_[0]], axis=-1)
    input_bias = jnp.concatenate([ir[1], iz[1], in_[1]])
    hidden_kernel = jnp.concatenate([hr[0], hz[0], hn[0]], axis=-1)
    hidden_bias = jnp.concatenate([jnp.zeros((2 * features,), hn[1].dtype), hn[1]])
    inputs, h_in, input_kernel, input_bias, hidden_kernel, hidden_bias = promote_dtype(
        inputs, h, input_kernel, input_bias, hidden_kernel, hidden_bias, dtype=self.dtype)
    x_r, x_z, x_n = jnp.split(jnp.dot(inputs, input_kernel) + input_bias, 3, axis=-1)
    h_r, h_z, h_n = jnp.split(jnp.dot(h_in, hidden_kernel) + hidden_bias, 3, axis=-1)
    r = self.gate_fn(x_r + h_r)
    z = self.gate_fn(x_z + h_z)
    n = self.activation_fn(x_n + r * h_n)
    new_h = (1.0 - z) * n + z * h
    return new_h, new_h
