"""A convolution as one matrix product over gathered patches, for XLA:CPU.

XLA:CPU runs ``lax.conv_general_dilated`` through Eigen's spatial convolution, well below the
CPU's matmul rate: the captioning encoder's five 3x3 convolutions (batch 32, 48x48 images) took
28.6 ms forward and 79.4 ms forward+backward, PyTorch's (oneDNN) 11.8 and 43.9 ms. Gathering the
``k x k`` shifted windows into one ``[positions, k*k*C]`` matrix and multiplying it by the kernel
reshaped to ``[k*k*C, O]`` (im2col) runs the same arithmetic as one large matmul, which XLA:CPU
does at its peak: 19.8 and 55.4 ms (docs/performance.md). The gather is strided slices, whose
gradient is padding and adds, so the backward pass is matmuls too.

:func:`conv_as_matmul` has ``lax.conv_general_dilated``'s signature, so it plugs into
``flax.linen.Conv(..., conv_general_dilated=conv_as_matmul)`` with the same parameters. On the
CPU it computes channel-last convolutions without dilation or feature groups as a matmul; for
any other platform (cuDNN and the TPU's convolutions are fast) or any other convolution it is
``lax.conv_general_dilated`` itself.
"""

from __future__ import annotations

import itertools
from typing import Sequence

import jax.numpy as jnp
from jax import lax


def _channel_last_numbers(ndim: int) -> lax.ConvDimensionNumbers:
  """The dimension numbers of ``[B, *spatial, C]`` inputs, ``[*window, C, O]`` kernels."""
  spatial = tuple(range(1, ndim - 1))
  return lax.ConvDimensionNumbers(lhs_spec=(0, ndim - 1) + spatial,
                                  rhs_spec=(ndim - 1, ndim - 2) + tuple(range(ndim - 2)),
                                  out_spec=(0, ndim - 1) + spatial)


def _is_unit(values) -> bool:
  return values is None or all(v == 1 for v in values)


def _patch_product(lhs, rhs, window_strides: Sequence[int], padding, precision):
  """``lhs [B, *spatial, C]`` convolved with ``rhs [*window, C, O]`` as im2col and one matmul."""
  window = rhs.shape[:-2]
  spatial = lhs.shape[1:-1]
  if isinstance(padding, str):
    padding = lax.padtype_to_pads(spatial, window, window_strides, padding)
  padded = jnp.pad(lhs, [(0, 0), *[tuple(p) for p in padding], (0, 0)])
  out = tuple((padded.shape[1 + d] - window[d]) // window_strides[d] + 1
              for d in range(len(window)))
  patches = []
  for offset in itertools.product(*(range(k) for k in window)):
    index = tuple(slice(o, o + s * (n - 1) + 1, s)
                  for o, s, n in zip(offset, window_strides, out))
    patches.append(padded[(slice(None), *index, slice(None))])
  columns = jnp.concatenate(patches, axis=-1)  # [B, *out, prod(window) * C], rhs's row order
  kernel = rhs.reshape(-1, rhs.shape[-1])
  return jnp.dot(columns, kernel, precision=precision)


def conv_as_matmul(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
                   dimension_numbers=None, feature_group_count: int = 1,
                   batch_group_count: int = 1, precision=None, preferred_element_type=None):
  """``lax.conv_general_dilated``, computed on the CPU as one matmul over gathered patches.

  The CPU path covers channel-last inputs ``[batch, *spatial, channels]`` with kernels
  ``[*window, channels, features]`` (flax's ``nn.Conv`` layout), any strides and padding, no
  dilation, one feature and batch group; every other call, and every other platform, is
  ``lax.conv_general_dilated`` with the same arguments. Values match it to float rounding
  (tested against it and against PyTorch's ``conv2d``).
  """
  args = dict(window_strides=window_strides, padding=padding, lhs_dilation=lhs_dilation,
              rhs_dilation=rhs_dilation, dimension_numbers=dimension_numbers,
              feature_group_count=feature_group_count, batch_group_count=batch_group_count,
              precision=precision, preferred_element_type=preferred_element_type)
  general = lambda: lax.conv_general_dilated(lhs, rhs, **args)
  ndim = jnp.ndim(lhs)
  numbers = (None if dimension_numbers is None else
             lax.conv_dimension_numbers(jnp.shape(lhs), jnp.shape(rhs), dimension_numbers))
  if (ndim < 3 or jnp.ndim(rhs) != ndim or numbers != _channel_last_numbers(ndim)
      or not _is_unit(lhs_dilation) or not _is_unit(rhs_dilation)
      or feature_group_count != 1 or batch_group_count != 1
      or preferred_element_type is not None or jnp.shape(lhs)[-1] != jnp.shape(rhs)[-2]):
    return general()
  strides = tuple(window_strides)
  # Both branches are traced; the one for the platform the program is lowered for is kept.
  return lax.platform_dependent(
      cpu=lambda: _patch_product(lhs, rhs, strides, padding, precision), default=general)
