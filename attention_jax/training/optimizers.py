"""Optax optimisers and learning-rate schedules chosen by config.

``make_optimizer(config) -> (tx, schedule)``: ``tx`` is an ``optax.GradientTransformation``
(global-norm clipping, then adam / adamw / sgd+momentum driven by ``schedule``; with
``flat_update``, over all parameters as one flat vector); ``schedule`` maps
an update count (int) to the learning rate used for that update, so the current learning rate
can be logged as ``float(schedule(state.step))``.
"""

from __future__ import annotations

from typing import Any, Mapping

import jax.numpy as jnp
import optax

from attention_jax.training.config import OPTIMIZERS, SCHEDULES


def warmup_rsqrt_schedule(peak_value: float, warmup_steps: int) -> optax.Schedule:
  """The Transformer schedule (Vaswani et al. 2017), normalised to peak at ``peak_value``.

  ``lr(count) = peak_value * min(count / warmup_steps, sqrt(warmup_steps / count))``: linear
  warmup from 0 to the peak at ``count == warmup_steps``, then decay as ``1/sqrt(count)``. The
  paper's ``d_model**-0.5 * min(step**-0.5, step * warmup**-1.5)`` is this schedule with
  ``peak_value = (d_model * warmup_steps) ** -0.5``.
  """
  if warmup_steps <= 0:
    raise ValueError(f"warmup_steps must be > 0 for the rsqrt schedule, got {warmup_steps}")

  def schedule(count):
    count = jnp.asarray(count, jnp.float32)
    warm = count / warmup_steps
    decay = jnp.sqrt(warmup_steps / jnp.maximum(count, 1.0))
    return peak_value * jnp.minimum(warm, decay)

  return schedule


def make_schedule(config: Mapping[str, Any]) -> optax.Schedule:
  """The learning-rate schedule named by ``config.schedule``.

  * ``constant``: ``config.learning_rate`` throughout.
  * ``warmup_cosine``: linear warmup from 0 over ``warmup_steps``, then cosine decay to
    ``end_learning_rate`` at ``num_steps``.
  * ``warmup_rsqrt``: :func:`warmup_rsqrt_schedule`.
  """
  name = config["schedule"]
  lr = float(config["learning_rate"])
  if name == "constant":
    return optax.constant_schedule(lr)
  if name == "warmup_cosine":
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=lr, warmup_steps=int(config["warmup_steps"]),
        decay_steps=int(config["num_steps"]),
        end_value=float(config.get("end_learning_rate", 0.0)))
  if name == "warmup_rsqrt":
    return warmup_rsqrt_schedule(lr, int(config["warmup_steps"]))
  valid = ", ".join(repr(s) for s in SCHEDULES)
  raise ValueError(f"config.schedule must be one of {valid}, got {name!r}")


def make_optimizer(
    config: Mapping[str, Any],
) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """Builds ``(tx, schedule)`` from the training fields of ``config``.

  Reads ``optimizer``, ``learning_rate``, ``schedule``, ``warmup_steps``, ``num_steps``,
  ``grad_clip_norm`` (None/0 = no clipping), ``weight_decay``, ``momentum``, ``adam_b1``,
  ``adam_b2``, ``adam_eps`` (missing optional fields take the defaults of
  :func:`default_training_config`).
  """
  schedule = make_schedule(config)
  name = config["optimizer"]
  weight_decay = float(config.get("weight_decay", 0.0))
  b1 = float(config.get("adam_b1", 0.9))
  b2 = float(config.get("adam_b2", 0.999))
  eps = float(config.get("adam_eps", 1e-8))
  if name == "adam":
    if weight_decay:
      raise ValueError(
          f"config.weight_decay must be 0 with config.optimizer 'adam' (use 'adamw'), "
          f"got {weight_decay!r}")
    opt = optax.adam(schedule, b1=b1, b2=b2, eps=eps)
  elif name == "adamw":
    opt = optax.adamw(schedule, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay)
  elif name == "sgd":
    momentum = float(config.get("momentum", 0.9))
    opt = optax.sgd(schedule, momentum=momentum or None)
    if weight_decay:
      opt = optax.chain(optax.add_decayed_weights(weight_decay), opt)
  else:
    valid = ", ".join(repr(o) for o in OPTIMIZERS)
    raise ValueError(f"config.optimizer must be one of {valid}, got {name!r}")
  clip = config.get("grad_clip_norm", None)
  if clip:
    opt = optax.chain(optax.clip_by_global_norm(float(clip)), opt)
  if config.get("flat_update", False) and _fsdp(config) == 1:
    # One update over all parameters as a single vector: a few fused XLA kernels instead of
    # several per parameter (small models are bound by per-kernel overhead on CPU). Not with
    # fsdp, whose optimiser state is sharded parameter by parameter.
    opt = optax.flatten(opt)
  return opt, schedule


def _fsdp(config: Mapping[str, Any]) -> int:
  mesh = config.get("mesh", None)
  return int(mesh.get("fsdp", 1)) if mesh is not None else 1
