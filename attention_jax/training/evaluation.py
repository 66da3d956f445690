"""Evaluation over an iterable of batches: sums on device, one host sync at the end."""

from __future__ import annotations

from typing import Any, Callable, Iterable, Mapping

import jax
import numpy as np

from attention_jax import parallel
from attention_jax.training import metrics as metrics_lib

_accumulate = jax.jit(metrics_lib.accumulate, donate_argnums=(0,))


def _state_mesh(state: Any):
  """The mesh of a state placed by :func:`training.train` when it spans several devices of one
  process (then batches are split like training batches), else None."""
  if jax.process_count() > 1:
    return None  # numpy batches are then global values every process passes alike
  for leaf in jax.tree.leaves(state):
    sharding = getattr(leaf, "sharding", None)
    if isinstance(sharding, jax.sharding.NamedSharding):
      return sharding.mesh if sharding.mesh.size > 1 else None
  return None


def _split_rows(batch, mesh):
  """The batch placed with the training rules when its rows split over the mesh, else as is."""
  rows = [np.shape(x)[0] for x in jax.tree.leaves(batch) if np.ndim(x)]
  if not rows or any(r % parallel.batch_parallelism(mesh) for r in rows):
    return batch
  return parallel.place_batch(batch, mesh)


def evaluate(
    eval_step: Callable[[Any, Mapping[str, Any]], Mapping[str, jax.Array]],
    state: Any,
    batches: Iterable[Mapping[str, Any]],
    *,
    denominators: Mapping[str, str] | None = None,
) -> dict[str, float | None]:
  """Sums ``eval_step(state, batch)`` over ``batches`` and returns the averages.

  Args:
    eval_step: from :func:`make_eval_step`; returns metric sums weighted by the batch's
      per-example/per-token weights (padding weight 0), including ``token_count``.
    state: the train state (only read).
    batches: any iterable of batches (consumed once). When ``state`` lives on a mesh of
      several devices (as :func:`train` leaves it), each batch whose rows split over
      ``data * fsdp`` is placed like a training batch, so evaluation is data parallel too.
    denominators: passed to :func:`metrics.summarize`.

  Returns:
    ``summarize(total)``, e.g. ``{"loss": ..., "accuracy": ..., "token_count": ...}``: exactly
    the metrics of one big batch holding every non-padding example.

  Raises:
    ValueError: if ``batches`` is empty.
  """
  total = None
  mesh = _state_mesh(state)
  for batch in batches:
    if mesh is not None:
      batch = _split_rows(batch, mesh)
    sums = eval_step(state, batch)
    total = dict(sums) if total is None else _accumulate(total, sums)
  if total is None:
    raise ValueError("evaluate() got no batches")
  return metrics_lib.summarize(total, denominators)
