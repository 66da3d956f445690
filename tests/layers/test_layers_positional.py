"""SinusoidalPositionalEncoding and LearnedPositionalEmbedding."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from attention_jax import layers
from attention_jax import ops


def _x(shape=(2, 5, 8), dtype=jnp.float32, seed=0):
  return jnp.asarray(np.random.default_rng(seed).normal(size=shape), dtype)


def test_sinusoidal_adds_the_ops_table():
  x = _x()
  encoding = layers.SinusoidalPositionalEncoding()
  variables = encoding.init(jax.random.key(0), x)
  assert not variables
  np.testing.assert_allclose(encoding.apply({}, x), x + ops.sinusoidal_positions(5, 8),
                             rtol=1e-6)
  # No length limit without explicit positions.
  long = _x((1, 3000, 8))
  np.testing.assert_allclose(encoding.apply({}, long), long + ops.sinusoidal_positions(3000, 8),
                             rtol=1e-6)


def test_sinusoidal_offset_and_positions_for_decoding():
  x = _x((2, 7, 8))
  encoding = layers.SinusoidalPositionalEncoding(max_length=16)
  full = encoding.apply({}, x)
  # Position by position with a traced offset (as with a cache index under jit).
  step = jax.jit(lambda chunk, offset: encoding.apply({}, chunk, offset=offset))
  stepped = jnp.concatenate([step(x[:, t:t + 1], jnp.int32(t)) for t in range(7)], axis=1)
  np.testing.assert_allclose(stepped, full, rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(encoding.apply({}, x[:, 3:], offset=3), full[:, 3:], rtol=1e-6,
                             atol=1e-6)
  # Per-example positions [batch, length].
  positions = jnp.array([[0, 1, 2, 3, 4, 5, 6], [6, 5, 4, 3, 2, 1, 0]])
  out = encoding.apply({}, x, positions=positions)
  np.testing.assert_allclose(out[0], full[0], rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(out[1], x[1] + ops.sinusoidal_positions(7, 8)[::-1], rtol=1e-6,
                             atol=1e-6)


def test_sinusoidal_bf16_and_errors():
  x = _x(dtype=jnp.bfloat16)
  out = jax.jit(layers.SinusoidalPositionalEncoding().apply)({}, x)
  assert out.dtype == jnp.bfloat16 and np.all(np.isfinite(np.asarray(out, np.float32)))
  encoding = layers.SinusoidalPositionalEncoding(max_length=8)
  with pytest.raises(ValueError, match="positive even dim"):
    encoding.apply({}, _x((2, 5, 7)))
  with pytest.raises(ValueError, match=r"x must be \[batch..., length, features\]"):
    encoding.apply({}, _x((8,)))
  with pytest.raises(ValueError, match=r"positions span \[6, 10\] but max_length=8"):
    encoding.apply({}, _x(), offset=6)
  with pytest.raises(ValueError, match=r"positions of shape \(4,\) must be \[length\]"):
    encoding.apply({}, _x(), positions=jnp.arange(4))
  with pytest.raises(TypeError, match="positions must be integers"):
    encoding.apply({}, _x(), positions=jnp.arange(5.0))


def test_learned_embedding_params_and_positions():
  x = _x((2, 3, 5, 8))
  embedding = layers.LearnedPositionalEmbedding(max_length=10, features=8)
  variables = embedding.init(jax.random.key(0), x)
  table = variables["params"]["embedding"]
  assert table.shape == (10, 8)
  np.testing.assert_allclose(embedding.apply(variables, x), x + table[:5], rtol=1e-6)
  positions = jnp.array([9, 0, 4, 4, 1])
  np.testing.assert_allclose(embedding.apply(variables, x, positions=positions),
                             x + table[positions], rtol=1e-6)
  grad = jax.grad(lambda v: embedding.apply(v, x).sum())(variables)["params"]["embedding"]
  np.testing.assert_allclose(grad[:5], 6.0)  # 2 * 3 batch entries per position
  np.testing.assert_array_equal(grad[5:], 0.0)


def test_learned_embedding_bf16_jit_and_errors():
  x = _x()
  embedding = layers.LearnedPositionalEmbedding(4, 8, dtype=jnp.bfloat16)
  variables = embedding.init(jax.random.key(0), x[:, :4])
  out = jax.jit(embedding.apply)(variables, x[:, :4])
  assert out.dtype == jnp.bfloat16 and np.all(np.isfinite(np.asarray(out, np.float32)))
  with pytest.raises(ValueError, match=r"x has length 5 \(shape \(2, 5, 8\)\) but max_length=4"):
    embedding.apply(variables, x)
  with pytest.raises(ValueError, match="x has 6 features .* but features=8"):
    embedding.apply(variables, x[..., :6])
  with pytest.raises(ValueError, match=r"positions span \[2, 6\] but max_length=4"):
    embedding.apply(variables, x, positions=jnp.arange(2, 7))
