"""Generic pure, jitted train and eval steps built from an experiment's loss / metrics function.

Contract of the experiment's functions (``batch`` is a dict of arrays, leading axis = batch):

* ``loss_fn(params, batch, rng) -> (loss, aux)``: ``loss`` is the float scalar to minimise
  (usually ``loss_sum / token_count``); ``rng`` is a raw ``uint32[2]`` key for this step (use it
  as ``model.apply(..., rngs={"dropout": rng})``); ``aux`` is a dict (or None) of float scalar
  *sums* such as :func:`attention_jax.training.metrics.classification_sums` returns:
  ``loss_sum``, ``correct_sum``, ``token_count`` and any ``<name>_sum`` / extra counts.
* ``metrics_fn(params, batch) -> sums``: the same sums for evaluation, weighted by the batch's
  per-example or per-token weights so a padded final batch counts right.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import optax

from attention_jax.training import metrics as metrics_lib
from attention_jax.training.train_state import TrainState

LossFn = Callable[[Any, Mapping[str, jax.Array], jax.Array],
                  tuple[jax.Array, Mapping[str, jax.Array] | None]]
MetricsFn = Callable[[Any, Mapping[str, jax.Array]], Mapping[str, jax.Array]]


def _leading_dim(batch: Mapping[str, Any]) -> int:
  leaves = jax.tree.leaves(batch)
  if not leaves or not getattr(leaves[0], "shape", ()):
    return 1
  return int(leaves[0].shape[0])


def _as_sums(values: Mapping[str, Any] | None) -> dict[str, jax.Array]:
  out = {}
  for k, v in (values or {}).items():
    v = jnp.asarray(v)
    if v.shape != ():
      raise ValueError(f"metric {k!r} must be a scalar sum, got shape {v.shape}")
    out[k] = v.astype(jnp.float32)
  return out


def make_train_step(
    loss_fn: LossFn, *, jit: bool = True, donate: bool = True
) -> Callable[[TrainState, Mapping[str, Any]], tuple[TrainState, dict[str, jax.Array]]]:
  """Returns ``train_step(state, batch) -> (new_state, metric_sums)``.

  One optimiser update on ``grad(loss_fn)(state.params, batch, state.step_rng())``.
  ``metric_sums`` holds ``aux`` (float32 scalars) completed with ``loss_sum``
  (``loss * token_count`` if absent), ``token_count`` (1 if absent, i.e. an average over
  steps), ``example_count`` (the batch's leading dimension if absent), ``grad_norm_sum`` (the
  global norm before clipping), ``num_steps`` (1) and the reserved non-finite trackers (the
  step index if the loss or gradient norm is NaN/Inf), all ready for
  :func:`metrics.accumulate`.

  Args:
    loss_fn: see the module docstring.
    jit: compile with ``jax.jit``.
    donate: donate the input state's buffers to the output (the caller must not reuse the
      ``state`` it passed in).
  """

  def train_step(state: TrainState, batch):
    rng = state.step_rng()
    (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params, batch, rng)
    loss = jnp.asarray(loss, jnp.float32)
    if loss.shape != ():
      raise ValueError(f"loss_fn must return a scalar loss, got shape {loss.shape}")
    sums = _as_sums(aux)
    sums.setdefault("token_count", jnp.float32(1.0))
    sums.setdefault("loss_sum", loss * sums["token_count"])
    sums.setdefault("example_count", jnp.float32(_leading_dim(batch)))
    grad_norm = optax.tree.norm(grads).astype(jnp.float32)
    sums["grad_norm_sum"] = grad_norm
    sums["num_steps"] = jnp.float32(1.0)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    sums[metrics_lib.FIRST_NONFINITE_STEP] = jnp.where(
        finite, metrics_lib.NO_NONFINITE_STEP, state.step).astype(jnp.int32)
    sums[metrics_lib.NONFINITE_LOSS] = loss
    sums[metrics_lib.NONFINITE_GRAD_NORM] = grad_norm
    return state.apply_gradients(grads=grads), sums

  if jit:
    step = jax.jit(train_step, donate_argnums=(0,) if donate else ())
    # What training.train needs to compile the step again with the mesh's output shardings.
    step.unjitted = train_step
    step.donate = donate
    return step
  return train_step


def make_eval_step(
    metrics_fn: MetricsFn, *, jit: bool = True
) -> Callable[[TrainState, Mapping[str, Any]], dict[str, jax.Array]]:
  """Returns ``eval_step(state, batch) -> metric_sums`` (float32 scalars) from ``metrics_fn``."""

  def eval_step(state: TrainState, batch):
    return _as_sums(metrics_fn(state.params, batch))

  return jax.jit(eval_step) if jit else eval_step
