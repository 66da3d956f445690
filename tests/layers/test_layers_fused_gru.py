"""FusedGRUCell against flax's nn.GRUCell: the same parameters, initialisation, values and
gradients (the reference is flax's cell, which we do not maintain)."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from attention_jax import layers


def _inputs(batch=(3,), in_features=10, features=8):
  x = jax.random.normal(jax.random.key(3), (*batch, in_features))
  h = jax.random.normal(jax.random.key(4), (*batch, features))
  return h, x


def test_parameters_and_initialisation_equal_flax_gru_cell():
  h, x = _inputs()
  ours = layers.FusedGRUCell(8).init(jax.random.key(0), h, x)
  theirs = nn.GRUCell(8).init(jax.random.key(0), h, x)
  assert jax.tree.structure(ours) == jax.tree.structure(theirs)
  for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(theirs)):
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("batch", [(3,), (2, 5)])
def test_values_and_gradients_equal_flax_gru_cell(batch):
  h, x = _inputs(batch)
  variables = nn.GRUCell(8).init(jax.random.key(0), h, x)

  def loss(cell, variables, h, x):
    new_h, out = cell.apply(variables, h, x)
    return jnp.sum(jnp.sin(new_h) * out)

  for argnum in (1, 2, 3):
    ours = jax.jit(jax.grad(loss, argnum), static_argnums=0)(layers.FusedGRUCell(8), variables,
                                                              h, x)
    theirs = jax.jit(jax.grad(loss, argnum), static_argnums=0)(nn.GRUCell(8), variables, h, x)
    for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(theirs)):
      np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(layers.FusedGRUCell(8).apply(variables, h, x)[0],
                             nn.GRUCell(8).apply(variables, h, x)[0], rtol=1e-5, atol=1e-6)


def test_bfloat16_compute_follows_flax_gru_cell():
  h, x = _inputs()
  variables = nn.GRUCell(8).init(jax.random.key(0), h, x)
  ours = layers.FusedGRUCell(8, dtype=jnp.bfloat16).apply(variables, h, x)[0]
  theirs = nn.GRUCell(8, dtype=jnp.bfloat16).apply(variables, h, x)[0]
  assert ours.dtype == theirs.dtype
  np.testing.assert_allclose(np.asarray(ours, np.float32), np.asarray(theirs, np.float32),
                             atol=3e-2)


def test_runs_in_nn_rnn_as_flax_gru_cell_does():
  x = jax.random.normal(jax.random.key(5), (2, 7, 10))
  rnn_ours, rnn_theirs = nn.RNN(layers.FusedGRUCell(8)), nn.RNN(nn.GRUCell(8))
  variables = rnn_theirs.init(jax.random.key(0), x)
  np.testing.assert_allclose(rnn_ours.apply(variables, x), rnn_theirs.apply(variables, x),
                             rtol=1e-5, atol=1e-6)
