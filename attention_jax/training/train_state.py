"""The train state: params, optimiser state, step and a dropout PRNG key, as one pytree.

The dropout key of step ``s`` is ``fold_in(state.rng, s)``: a pure function of the seed and the
step, so a run restored at step ``k`` draws the same dropout masks as one that never stopped.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax
from flax.training import train_state as flax_train_state


class TrainState(flax_train_state.TrainState):
  """``flax.training.train_state.TrainState`` plus ``rng``.

  Fields (pytree leaves, all checkpointed):
    step: int32 scalar array, the number of updates applied so far.
    params: the model parameters (any pytree).
    opt_state: the optax state for ``tx``.
    rng: raw ``uint32[2]`` PRNG key data (the base key for dropout); never advanced, only folded
      with the step by :meth:`step_rng`.
  Static fields (not checkpointed): ``apply_fn`` (may be None), ``tx``.
  """

  rng: jax.Array

  def step_rng(self) -> jax.Array:
    """The key for this step's randomness: ``fold_in(rng, step)``, raw ``uint32[2]``."""
    return jax.random.fold_in(self.rng, self.step)

  @classmethod
  def create(cls, *, apply_fn, params, tx, rng=None, **kwargs):
    """A state at step 0 (int32) with ``opt_state = tx.init(params)``.

    Args:
      apply_fn: ``model.apply`` or None.
      params: parameter pytree.
      tx: optax transformation.
      rng: an int seed, a raw ``uint32[2]`` key or a typed key (stored as its raw data).
    """
    if rng is None:
      rng = 0
    state = super().create(apply_fn=apply_fn, params=params, tx=tx, rng=_raw_key(rng), **kwargs)
    return state.replace(step=jnp.asarray(0, jnp.int32))


def _raw_key(rng: Any) -> jax.Array:
  if isinstance(rng, int):
    return jax.random.key_data(jax.random.key(rng))
  rng = jnp.asarray(rng) if not isinstance(rng, jax.Array) else rng
  if jax.dtypes.issubdtype(rng.dtype, jax.dtypes.prng_key):
    return jax.random.key_data(rng)
  if rng.dtype != jnp.uint32 or rng.shape != (2,):
    raise ValueError(f"rng must be an int seed or a PRNG key, got {rng.dtype}{list(rng.shape)}")
  return rng


def create_train_state(
    params: Any,
    tx: optax.GradientTransformation,
    seed: int | jax.Array = 0,
    apply_fn: Callable | None = None,
) -> TrainState:
  """Shorthand for ``TrainState.create(apply_fn=apply_fn, params=params, tx=tx, rng=seed)``.

  Use a seed (or key) different from the one that initialised ``params`` if the two must be
  independent, e.g. ``jax.random.split(jax.random.key(config.seed))``.
  """
  return TrainState.create(apply_fn=apply_fn, params=params, tx=tx, rng=seed)
