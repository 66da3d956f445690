"""Evaluation over an iterable of batches: sums on device, one host sync at the end."""

from __future__ import annotations

from typing import Any, Callable, Iterable, Mapping

import jax

from attention_jax.training import metrics as metrics_lib

_accumulate = jax.jit(metrics_lib.accumulate, donate_argnums=(0,))


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
    batches: any iterable of batches (consumed once).
    denominators: passed to :func:`metrics.summarize`.

  Returns:
    ``summarize(total)``, e.g. ``{"loss": ..., "accuracy": ..., "token_count": ...}``: exactly
    the metrics of one big batch holding every non-padding example.

  Raises:
    ValueError: if ``batches`` is empty.
  """
  total = None
  for batch in batches:
    sums = eval_step(state, batch)
    total = dict(sums) if total is None else _accumulate(total, sums)
  if total is None:
    raise ValueError("evaluate() got no batches")
  return metrics_lib.summarize(total, denominators)
