"""The standard training fields of every experiment config, and the check that names a bad one.

* :func:`default_training_config` -- a ``ConfigDict`` with the fields the shared loop, optimiser
  factory and checkpointing read. Experiments extend it (``config.model = ...``) in their
  ``get_config()``.
* :func:`validate_training_config` -- raises ``ConfigError`` (a ``ValueError``:
  ``"config.learning_rate must be > 0, got -1.0"``) for the first bad training field; :func:`attention_jax.training.train` calls it.
  Fields it does not know (an experiment's own) are left to the experiment.
"""

from __future__ import annotations

import math
import numbers
from typing import Any, Mapping

import jax
import ml_collections

from attention_jax.errors import ConfigError
from attention_jax.parallel import mesh as mesh_lib

OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULES = ("constant", "warmup_cosine", "warmup_rsqrt")


def default_training_config() -> ml_collections.ConfigDict:
  """Returns the standard training fields with defaults that run in seconds on a CPU.

  Fields (all read by :func:`attention_jax.training.train` or
  :func:`attention_jax.training.make_optimizer`):

  * ``seed`` (int): seeds parameter init, dropout and the data order.
  * ``num_steps`` (int > 0): optimiser updates in the whole run.
  * ``batch_size`` (int > 0): examples per step (read by the experiment's data pipeline).
  * ``learning_rate`` (float > 0): the constant rate, or the peak of a warmup schedule.
  * ``optimizer``: one of ``OPTIMIZERS``; ``momentum`` for sgd, ``adam_b1/b2/eps`` for adam(w).
  * ``schedule``: one of ``SCHEDULES``; ``warmup_steps`` (int >= 0; > 0 for warmup_rsqrt);
    ``end_learning_rate`` is where warmup_cosine ends.
  * ``grad_clip_norm`` (float >= 0 or None): global-norm clipping; 0 or None disables it.
  * ``weight_decay`` (float >= 0): decoupled for adamw, L2 added to the gradient for sgd;
    must be 0 for adam.
  * ``log_every``, ``checkpoint_every`` (int > 0): steps between metric lines / checkpoints.
  * ``keep_checkpoints`` (int > 0): how many of the latest checkpoints to keep.
  * ``eval_every`` (int >= 0): steps between evaluations; 0 evaluates only at the end.
  * ``async_checkpointing`` (bool): write checkpoints in a background thread.
  * ``max_loss`` (float > 0 or None): the divergence guard; a logged training loss above it
    stops the run (as a NaN/Inf loss does), naming the step and the last good checkpoint.
    None or 0 disables it.
  * ``flat_update`` (bool): the optimiser updates all parameters as one flat vector
    (``optax.flatten``: a few fused kernels instead of several per parameter; the same update up
    to float rounding). Ignored with ``mesh.fsdp > 1``.
  * ``single_malloc_arena`` (bool): the experiment launcher makes every thread allocate host
    memory from glibc's main heap (:func:`attention_jax.training.keep_freed_memory`), so XLA's
    per-step buffers above 64 MiB are reused, not mapped anew each step. Faster for the
    recurrent experiments' chains of small kernels, slower where many threads allocate at once
    (the Transformer LM); read once, before JAX starts.
  * ``mesh.data``, ``mesh.fsdp``, ``mesh.sequence`` (int): the device mesh the loop trains on
    (:func:`attention_jax.parallel.make_mesh`); ``mesh.data = -1`` takes every device the other
    axes leave, so the default is data parallelism over all devices (one device: a 1x1x1 mesh).
  """
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.num_steps = 100
  config.batch_size = 32
  config.learning_rate = 1e-3
  config.optimizer = "adam"
  config.momentum = 0.9
  config.adam_b1 = 0.9
  config.adam_b2 = 0.999
  config.adam_eps = 1e-8
  config.schedule = "constant"
  config.warmup_steps = 0
  config.end_learning_rate = 0.0
  config.grad_clip_norm = 1.0
  config.weight_decay = 0.0
  config.flat_update = False
  config.single_malloc_arena = False
  config.log_every = 10
  config.checkpoint_every = 50
  config.keep_checkpoints = 3
  config.eval_every = 0
  config.async_checkpointing = True
  config.max_loss = ml_collections.config_dict.placeholder(float)  # None: no divergence guard
  config.mesh = mesh_lib.default_mesh_config()
  return config


def _field(config: Mapping[str, Any], name: str) -> Any:
  try:
    return config[name]
  except (KeyError, AttributeError, TypeError):
    raise ConfigError(f"config.{name} is missing") from None


def _require(ok: bool, name: str, requirement: str, value: Any) -> None:
  if not ok:
    raise ConfigError(f"config.{name} must be {requirement}, got {value!r}")


def _int(config: Mapping[str, Any], name: str) -> int:
  """The field, which must be an integer (bool excluded)."""
  value = _field(config, name)
  _require(isinstance(value, numbers.Integral) and not isinstance(value, bool), name,
           "an integer", value)
  return value


def _number(config: Mapping[str, Any], name: str) -> float:
  """The field, which must be a finite real number (bool excluded)."""
  value = _field(config, name)
  _require(isinstance(value, numbers.Real) and not isinstance(value, bool), name, "a number",
           value)
  _require(math.isfinite(value), name, "finite", value)
  return value


def _check_mesh(config: Mapping[str, Any]) -> None:
  """The mesh fits this runtime's devices and ``batch_size`` splits over its batch axes."""
  try:
    sizes = mesh_lib.mesh_shape(config.get("mesh"), jax.device_count())
  except ValueError as e:
    raise ConfigError(str(e)) from None
  split = sizes["data"] * sizes["fsdp"]
  if config["batch_size"] % split:
    raise ConfigError(
        f"config.batch_size must be a multiple of config.mesh.data * config.mesh.fsdp = "
        f"{sizes['data']} * {sizes['fsdp']} = {split} (the devices the rows split over), got "
        f"{config['batch_size']}")


def validate_training_config(config: Mapping[str, Any] | ml_collections.ConfigDict) -> None:
  """Raises ``ValueError`` naming the first bad training field and its value.

  Checks the fields of :func:`default_training_config` (other fields are ignored) and how they
  fit together: the mesh against this runtime's devices (so a bad mesh fails before an
  experiment prepares its data), ``warmup_steps`` against the schedule, ``weight_decay``
  against the optimiser.

  Args:
    config: a ``ConfigDict`` or a mapping.
  """
  seed = _int(config, "seed")
  _require(0 <= seed < 2**32, "seed", "in [0, 2**32)", seed)
  for name in ("num_steps", "batch_size", "log_every", "checkpoint_every", "keep_checkpoints"):
    value = _int(config, name)
    _require(value > 0, name, "> 0", value)
  for name in ("warmup_steps", "eval_every"):
    value = _int(config, name)
    _require(value >= 0, name, ">= 0", value)
  value = _number(config, "learning_rate")
  _require(value > 0, "learning_rate", "> 0", value)
  for name in ("momentum", "adam_b1", "adam_b2"):
    value = _number(config, name)
    _require(value >= 0, name, ">= 0", value)
    _require(value <= 1, name, "<= 1", value)
  for name in ("adam_eps", "end_learning_rate", "weight_decay"):
    value = _number(config, name)
    _require(value >= 0, name, ">= 0", value)
  if _field(config, "grad_clip_norm") is not None:
    value = _number(config, "grad_clip_norm")
    _require(value >= 0, "grad_clip_norm", ">= 0", value)
  if config.get("max_loss") is not None:
    value = _number(config, "max_loss")
    _require(value >= 0, "max_loss", ">= 0 (0 or None: no divergence guard)", value)
  for name, choices in (("optimizer", OPTIMIZERS), ("schedule", SCHEDULES)):
    value = _field(config, name)
    _require(value in choices, name, "one of " + ", ".join(repr(c) for c in choices), value)
  for name in ("async_checkpointing", "flat_update", "single_malloc_arena"):
    value = _field(config, name)
    _require(isinstance(value, bool), name, "True or False", value)

  _check_mesh(config)
  if config["schedule"] == "warmup_rsqrt" and config["warmup_steps"] == 0:
    raise ConfigError(
        "config.warmup_steps must be > 0 when config.schedule is 'warmup_rsqrt', got 0")
  if config["schedule"] == "warmup_cosine" and config["warmup_steps"] >= config["num_steps"]:
    raise ConfigError(
        f"config.warmup_steps must be < config.num_steps ({config['num_steps']}) when "
        f"config.schedule is 'warmup_cosine', got {config['warmup_steps']}")
  if config["optimizer"] == "adam" and config["weight_decay"] != 0:
    raise ConfigError(
        f"config.weight_decay must be 0 with config.optimizer 'adam' (use 'adamw' for "
        f"decoupled weight decay), got {config['weight_decay']!r}")
