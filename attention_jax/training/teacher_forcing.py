"""Training a sequence-to-sequence model with teacher forcing: the decoder reads the gold previous
token at every position, and the loss is the token cross-entropy over the target mask."""

from __future__ import annotations

from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp

from attention_jax.training.evaluation import evaluate
from attention_jax.training.loop import train
from attention_jax.training.metrics import classification_sums
from attention_jax.training.optimizers import make_optimizer
from attention_jax.training.steps import make_eval_step, make_train_step
from attention_jax.training.train_state import create_train_state


def train_teacher_forced(
    config,
    workdir: str,
    model,
    params,
    logits_fn: Callable[[Any, Mapping[str, jax.Array], jax.Array | None], jax.Array],
    train_batches,
    val_batches,
):
  """Trains (or resumes) ``model`` in ``workdir`` with :func:`attention_jax.training.train`;
  returns the final train state.

  Args:
    config: the training fields of :func:`default_training_config` (optimiser, steps, seed).
    model: the Flax module (its ``apply`` goes into the train state).
    params: the initial parameters.
    logits_fn: ``(params, batch, rng) -> logits [batch, target_length, vocab]``; ``rng=None``
      is evaluation (deterministic), a key turns dropout on.
    train_batches: ``step -> batch`` (``batches[step]``) with ``targets`` and ``target_mask``
      ``[batch, target_length]``.
    val_batches: an iterable of such batches, evaluated at ``eval_every`` and at the end.
  """
  tx, schedule = make_optimizer(config)

  def loss_fn(params, batch, rng):
    sums = classification_sums(logits_fn(params, batch, rng), batch["targets"],
                               batch["target_mask"])
    return sums["loss_sum"] / jnp.maximum(sums["token_count"], 1.0), sums

  def metrics_fn(params, batch):
    return classification_sums(logits_fn(params, batch, None), batch["targets"],
                               batch["target_mask"])

  eval_step = make_eval_step(metrics_fn)
  return train(
      config, workdir,
      lambda: create_train_state(params, tx, seed=config.seed + 1, apply_fn=model.apply),
      make_train_step(loss_fn), train_batches.__getitem__,
      eval_fn=lambda state: evaluate(eval_step, state, val_batches),
      learning_rate_fn=schedule)
