"""conv_as_matmul: lax.conv_general_dilated's values and gradients as one matmul on the CPU, the
same function elsewhere, and a drop-in for flax's nn.Conv."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import export
from jax import lax

from attention_jax.layers import conv

CHANNEL_LAST = {1: ("NWC", "WIO", "NWC"), 2: ("NHWC", "HWIO", "NHWC"),
                3: ("NDHWC", "DHWIO", "NDHWC")}

CASES = [  # input shape, window, strides, padding
    ((2, 9, 7, 3), (3, 3), (1, 1), "SAME"),
    ((2, 48, 48, 3), (3, 3), (2, 2), "SAME"),  # the captioning encoder's downsampling layers
    ((2, 11, 10, 4), (2, 3), (2, 1), "VALID"),
    ((3, 17, 4), (5,), (3,), [(2, 1)]),
    ((1, 5, 6, 7, 2), (3, 1, 2), (1, 2, 2), "SAME"),
    ((2, 4, 4, 3), (1, 1), (1, 1), [(0, 0), (1, 2)]),
]


def _operands(shape, window, features=6, seed=0):
  rng = np.random.RandomState(seed)
  lhs = rng.randn(*shape).astype(np.float32)
  rhs = (rng.randn(*window, shape[-1], features) / np.sqrt(np.prod(window) * shape[-1]))
  return jnp.asarray(lhs), jnp.asarray(rhs.astype(np.float32))


def _numbers(shape):
  return CHANNEL_LAST[len(shape) - 2]


@pytest.mark.parametrize("shape,window,strides,padding", CASES)
def test_values_and_gradients_equal_lax(shape, window, strides, padding):
  lhs, rhs = _operands(shape, window)
  numbers = _numbers(shape)

  def loss(fn, lhs, rhs):
    out = fn(lhs, rhs, strides, padding, dimension_numbers=numbers,
             precision=lax.Precision.HIGHEST)
    return jnp.sum(jnp.sin(out)), out

  (_, want), want_grads = jax.value_and_grad(
      lambda a, b: loss(lax.conv_general_dilated, a, b), argnums=(0, 1), has_aux=True)(lhs, rhs)
  (_, got), got_grads = jax.jit(jax.value_and_grad(
      lambda a, b: loss(conv.conv_as_matmul, a, b), argnums=(0, 1), has_aux=True))(lhs, rhs)
  assert got.shape == want.shape
  np.testing.assert_allclose(got, want, atol=2e-5, rtol=1e-5)
  for g, w in zip(got_grads, want_grads):
    np.testing.assert_allclose(g, w, atol=5e-5, rtol=1e-4)


def test_values_equal_a_float64_numpy_convolution():
  lhs, rhs = _operands((2, 10, 9, 3), (3, 3))
  padded = np.pad(np.float64(lhs), ((0, 0), (1, 1), (1, 1), (0, 0)))
  want = np.zeros((2, 5, 5, 6))
  for y in range(5):
    for x in range(5):
      window = padded[:, 2 * y:2 * y + 3, 2 * x:2 * x + 3, :]
      want[:, y, x] = np.einsum("bijc,ijco->bo", window, np.float64(rhs))
  got = conv.conv_as_matmul(lhs, rhs, (2, 2), [(1, 1), (1, 1)],
                            dimension_numbers=("NHWC", "HWIO", "NHWC"),
                            precision=lax.Precision.HIGHEST)
  np.testing.assert_allclose(got, want, atol=1e-5)


def test_values_equal_torch_conv2d():
  torch = pytest.importorskip("torch")
  lhs, rhs = _operands((2, 13, 12, 5), (3, 3), features=7)
  got = conv.conv_as_matmul(lhs, rhs, (2, 2), [(1, 1), (1, 1)],
                            dimension_numbers=("NHWC", "HWIO", "NHWC"),
                            precision=lax.Precision.HIGHEST)
  want = torch.nn.functional.conv2d(
      torch.from_numpy(np.array(lhs)).permute(0, 3, 1, 2),
      torch.from_numpy(np.array(rhs)).permute(3, 2, 0, 1), stride=2, padding=1)
  np.testing.assert_allclose(got, want.permute(0, 2, 3, 1).numpy(), atol=1e-5)


@pytest.mark.parametrize("kwargs", [
    dict(rhs_dilation=(2, 2)), dict(lhs_dilation=(2, 1)), dict(feature_group_count=3),
    dict(dimension_numbers=("NCHW", "OIHW", "NCHW")), dict(dimension_numbers=None),
    dict(preferred_element_type=jnp.float32)])
def test_other_convolutions_are_lax_itself(kwargs):
  numbers = kwargs.pop("dimension_numbers", ("NHWC", "HWIO", "NHWC"))
  lhs = jnp.asarray(np.random.RandomState(1).randn(2, 9, 9, 6).astype(np.float32))
  if numbers != ("NHWC", "HWIO", "NHWC"):
    lhs = jnp.transpose(lhs, (0, 3, 1, 2))
  in_features = 6 // kwargs.get("feature_group_count", 1)
  shape = (3, 3, in_features, 6) if numbers == ("NHWC", "HWIO", "NHWC") else (6, in_features, 3, 3)
  rhs = jnp.asarray(np.random.RandomState(2).randn(*shape).astype(np.float32))
  args = (lhs, rhs, (1, 1), [(1, 1), (1, 1)])
  got = conv.conv_as_matmul(*args, dimension_numbers=numbers, **kwargs)
  want = lax.conv_general_dilated(*args, dimension_numbers=numbers, **kwargs)
  np.testing.assert_array_equal(got, want)
  jaxpr = str(jax.make_jaxpr(lambda a, b: conv.conv_as_matmul(
      a, b, (1, 1), [(1, 1), (1, 1)], dimension_numbers=numbers, **kwargs))(lhs, rhs))
  assert "platform_index" not in jaxpr and "conv_general_dilated" in jaxpr


def test_the_cpu_program_has_no_convolution_and_accelerators_keep_theirs():
  lhs, rhs = _operands((2, 8, 8, 3), (3, 3))
  fn = jax.jit(lambda a, b: conv.conv_as_matmul(a, b, (2, 2), "SAME",
                                                 dimension_numbers=("NHWC", "HWIO", "NHWC")))
  cpu = fn.lower(lhs, rhs).as_text()
  assert "convolution" not in cpu and "dot_general" in cpu
  for platform in ("cuda", "tpu"):
    text = export.export(fn, platforms=[platform])(lhs, rhs).mlir_module()
    assert "convolution" in text and "dot_general" not in text, platform


def test_a_drop_in_for_flax_conv():
  images = jnp.asarray(np.random.RandomState(3).rand(2, 12, 12, 3).astype(np.float32))
  plain = nn.Conv(8, (3, 3), strides=2)
  fast = nn.Conv(8, (3, 3), strides=2, conv_general_dilated=conv.conv_as_matmul)
  params = plain.init(jax.random.PRNGKey(0), images)
  assert (jax.tree.map(jnp.shape, fast.init(jax.random.PRNGKey(0), images))
          == jax.tree.map(jnp.shape, params))
  np.testing.assert_allclose(fast.apply(params, images), plain.apply(params, images), atol=1e-5)
  # flax's dimension numbers take the matmul path.
  assert "convolution" not in jax.jit(fast.apply).lower(params, images).as_text()
