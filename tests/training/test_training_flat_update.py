"""``config.flat_update``: the optimiser over all parameters as one flat vector gives the update of
the per-parameter optimiser (to float rounding), and is left out where fsdp shards parameters."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from attention_jax import training
from attention_jax.errors import ConfigError


def _config(**overrides):
  config = training.default_training_config()
  config.update(overrides)
  return config


def _params_and_grads(seed):
  rng = np.random.default_rng(seed)
  shapes = {"dense": {"kernel": (7, 5), "bias": (5,)}, "embedding": (11, 7), "scale": ()}
  make = lambda shape: jnp.asarray(rng.normal(size=shape), jnp.float32)  # noqa: E731
  params = jax.tree.map(make, shapes, is_leaf=lambda x: isinstance(x, tuple))
  grads = [jax.tree.map(make, shapes, is_leaf=lambda x: isinstance(x, tuple)) for _ in range(3)]
  return params, grads


@pytest.mark.parametrize("optimizer,extra", [("adamw", dict(weight_decay=0.1)), ("adam", {}),
                                             ("sgd", dict(momentum=0.9))])
def test_flat_update_equals_the_per_parameter_update(optimizer, extra):
  params, grads = _params_and_grads(0)
  results = []
  for flat in (False, True):
    config = _config(optimizer=optimizer, flat_update=flat, grad_clip_norm=0.5,
                     schedule="warmup_cosine", warmup_steps=2, num_steps=10, **extra)
    tx, _ = training.make_optimizer(config)

    @jax.jit
    def run(params, grads):
      state, p = tx.init(params), params
      for g in grads:  # three steps: the moments and the clipping both matter
        updates, state = tx.update(g, state, p)
        p = optax.apply_updates(p, updates)
      return p

    results.append(run(params, grads))
  for got, want in zip(jax.tree.leaves(results[1]), jax.tree.leaves(results[0])):
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)


def test_flat_update_keeps_one_flat_state_and_is_off_with_fsdp():
  params, _ = _params_and_grads(1)
  size = sum(x.size for x in jax.tree.leaves(params))
  tx, _ = training.make_optimizer(_config(optimizer="adam", flat_update=True))
  moments = [x for x in jax.tree.leaves(tx.init(params)) if x.ndim == 1 and x.size == size]
  assert len(moments) == 2  # mu and nu over all parameters at once
  config = _config(optimizer="adam", flat_update=True)
  config.mesh.fsdp = 2
  tx, _ = training.make_optimizer(config)
  shapes = {x.shape for x in jax.tree.leaves(tx.init(params))}
  assert (7, 5) in shapes and (11, 7) in shapes  # per parameter, shardable one by one


def test_flat_update_must_be_a_bool():
  config = _config().to_dict()  # a ConfigDict itself refuses the wrong type (TypeError)
  config["flat_update"] = "yes"
  with pytest.raises(ConfigError, match=r"^config.flat_update must be True or False, got 'yes'$"):
    training.validate_training_config(config)
