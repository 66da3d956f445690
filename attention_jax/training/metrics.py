"""Metrics as sums with a count: computed on device, accumulated on device, averaged on the host.

A metrics dict maps names to float32 scalars that *add up* across batches and steps:

* ``token_count``: the denominator, the sum of per-token (or per-example) weights. Padding has
  weight 0, so a padded batch never skews an average.
* ``<name>_sum``: a weighted sum; :func:`summarize` reports ``<name> = <name>_sum / token_count``
  (``correct_sum`` is reported as ``accuracy``). A different denominator can be named per key.
* ``example_count`` and ``num_steps``: reported as they are.
* anything else: an extra sum, reported as it is.

The train step adds reserved keys that track the first non-finite step; :func:`accumulate`
keeps the earliest one instead of adding, and :func:`summarize` leaves them out.
"""

from __future__ import annotations

from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
import optax

# Reserved keys written by the train step (see steps.make_train_step).
FIRST_NONFINITE_STEP = "first_nonfinite_step"  # int32; NO_NONFINITE_STEP when all were finite
NONFINITE_LOSS = "nonfinite_loss"  # the loss at FIRST_NONFINITE_STEP
NONFINITE_GRAD_NORM = "nonfinite_grad_norm"  # the gradient norm at FIRST_NONFINITE_STEP
RESERVED_KEYS = (FIRST_NONFINITE_STEP, NONFINITE_LOSS, NONFINITE_GRAD_NORM)
NO_NONFINITE_STEP = np.iinfo(np.int32).max

COUNT_KEYS = ("token_count", "example_count", "num_steps")
# Default denominators for sums that are per step rather than per token.
DEFAULT_DENOMINATORS = {"grad_norm_sum": "num_steps"}
# Reported names that differ from the stem of the ``_sum`` key.
RENAMES = {"correct": "accuracy"}


def classification_sums(
    logits: jax.Array, labels: jax.Array, weights: jax.Array | None = None
) -> dict[str, jax.Array]:
  """Weighted cross-entropy and accuracy sums.

  Args:
    logits: ``[..., num_classes]`` float (any dtype; the softmax runs in float32).
    labels: ``[...]`` integer class ids.
    weights: ``None`` (all ones) or an array whose shape is a prefix of ``labels.shape``
      (e.g. ``[batch]`` per example or ``[batch, length]`` per token); 0 marks padding.

  Returns:
    ``{"loss_sum", "correct_sum", "token_count"}``, float32 scalars.
  """
  if logits.shape[:-1] != labels.shape:
    raise ValueError(
        f"logits has shape {logits.shape} but labels has shape {labels.shape}; expected "
        f"logits = labels.shape + (num_classes,)")
  if weights is None:
    weights = jnp.ones(labels.shape, jnp.float32)
  else:
    weights = jnp.asarray(weights, jnp.float32)
    if weights.shape != labels.shape[: weights.ndim]:
      raise ValueError(
          f"weights has shape {weights.shape}, which is not a prefix of labels' {labels.shape}")
    weights = jnp.broadcast_to(
        weights.reshape(weights.shape + (1,) * (labels.ndim - weights.ndim)), labels.shape)
  # Padding is replaced *before* the loss (not multiplied by 0 after), so NaN/Inf logits or
  # out-of-range labels there reach neither the sums nor the gradients.
  real = weights != 0
  logits = jnp.where(real[..., None], logits.astype(jnp.float32), 0.0)
  labels = jnp.where(real, labels, 0)
  loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
  correct = (jnp.argmax(logits, axis=-1) == labels).astype(jnp.float32)
  return {
      "loss_sum": jnp.sum(loss * weights),
      "correct_sum": jnp.sum(correct * weights),
      "token_count": jnp.sum(weights),
  }


def accumulate(
    total: Mapping[str, jax.Array] | None, new: Mapping[str, jax.Array]
) -> dict[str, jax.Array]:
  """``total + new`` key by key (the reserved non-finite keys keep the earliest step).

  Pure and jittable; ``total=None`` starts a new accumulation. Both dicts must have the same
  keys.
  """
  if total is None:
    return dict(new)
  if set(total) != set(new):
    raise ValueError(f"metric keys changed between steps: {sorted(total)} vs {sorted(new)}")
  out = {k: total[k] + new[k] for k in new if k not in RESERVED_KEYS}
  if FIRST_NONFINITE_STEP in new:
    take_new = new[FIRST_NONFINITE_STEP] < total[FIRST_NONFINITE_STEP]
    for k in RESERVED_KEYS:
      if k in new:
        out[k] = jnp.where(take_new, new[k], total[k])
  return out


def summarize(
    sums: Mapping[str, Any], denominators: Mapping[str, str] | None = None
) -> dict[str, float | None]:
  """Host-side averages of accumulated sums (see the module docstring for the rules).

  Args:
    sums: accumulated metrics (device arrays are fetched).
    denominators: ``{"<name>_sum": "<count key>"}`` overriding the default ``token_count``
      (``grad_norm_sum`` is averaged over ``num_steps`` by default).

  Returns:
    Plain floats, e.g. ``{"loss": 2.3, "accuracy": 0.1, "token_count": 512.0}``; an average
    whose denominator is 0 is ``None``.
  """
  sums = {k: float(np.asarray(v)) for k, v in jax.device_get(dict(sums)).items()}
  denoms = dict(DEFAULT_DENOMINATORS)
  denoms.update(denominators or {})
  out: dict[str, float | None] = {}
  for key, value in sums.items():
    if key in RESERVED_KEYS:
      continue
    if key in COUNT_KEYS:
      out[key] = value
    elif key.endswith("_sum"):
      stem = key[: -len("_sum")]
      denom_key = denoms.get(key, "token_count")
      if denom_key not in sums:
        raise ValueError(f"metric {key!r} needs the count {denom_key!r}, which is missing")
      denom = sums[denom_key]
      out[RENAMES.get(stem, stem)] = value / denom if denom else None
    else:
      out[key] = value
  return out


def first_nonfinite(sums: Mapping[str, Any]) -> tuple[int, float, float] | None:
  """``(step, loss, grad_norm)`` of the first non-finite step in ``sums``, or None."""
  if FIRST_NONFINITE_STEP not in sums:
    return None
  step = int(np.asarray(sums[FIRST_NONFINITE_STEP]))
  if step == NO_NONFINITE_STEP:
    return None
  return (step, float(np.asarray(sums[NONFINITE_LOSS])),
          float(np.asarray(sums[NONFINITE_GRAD_NORM])))
