"""The standard training fields of every experiment config, and checks that name the bad field.

Experiments build their config with ml_collections and absl flags (``config_flags``); this module
provides the shared part:

* :func:`default_training_config` -- a ``ConfigDict`` with the fields the shared loop, optimiser
  factory and checkpointing read. Experiments extend it (``config.model = ...``) in their
  ``get_config()``.
* :func:`validate_config` -- checks fields against a schema (``TRAINING_SCHEMA`` by default) and
  raises ``ValueError("config.learning_rate must be > 0, got -1.0")``.
* :func:`config_to_dict` / :func:`save_config_json` / :func:`load_config_json` -- the JSON copy of
  the config that a run keeps in its workdir.
* :func:`define_config_flags` -- ``--config`` and ``--workdir`` flags, as in the Flax examples.
"""

from __future__ import annotations

import json
import math
import numbers
import os
import tempfile
from typing import Any, Callable, Mapping, Sequence

import ml_collections

from attention_jax.parallel import mesh as mesh_lib

OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULES = ("constant", "warmup_cosine", "warmup_rsqrt")

# A check takes (field_name, value) and raises ValueError with a message naming the field.
Check = Callable[[str, Any], None]


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
  config.log_every = 10
  config.checkpoint_every = 50
  config.keep_checkpoints = 3
  config.eval_every = 0
  config.async_checkpointing = True
  config.mesh = mesh_lib.default_mesh_config()
  return config


# ---------------------------------------------------------------------------------------------
# Field checks. Each returns a Check; messages read "config.<field> must be ..., got <value>".


def _fmt(value: Any) -> str:
  return repr(value)


def is_int() -> Check:
  """The value is an integer (bool excluded)."""

  def check(name, value):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
      raise ValueError(f"config.{name} must be an integer, got {_fmt(value)}")

  return check


def is_number() -> Check:
  """The value is a finite real number (bool excluded)."""

  def check(name, value):
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
      raise ValueError(f"config.{name} must be a number, got {_fmt(value)}")
    if not math.isfinite(value):
      raise ValueError(f"config.{name} must be finite, got {_fmt(value)}")

  return check


def is_bool() -> Check:
  def check(name, value):
    if not isinstance(value, bool):
      raise ValueError(f"config.{name} must be True or False, got {_fmt(value)}")

  return check


def greater_than(bound: float) -> Check:
  def check(name, value):
    if not value > bound:
      raise ValueError(f"config.{name} must be > {bound}, got {_fmt(value)}")

  return check


def at_least(bound: float) -> Check:
  def check(name, value):
    if not value >= bound:
      raise ValueError(f"config.{name} must be >= {bound}, got {_fmt(value)}")

  return check


def at_most(bound: float) -> Check:
  def check(name, value):
    if not value <= bound:
      raise ValueError(f"config.{name} must be <= {bound}, got {_fmt(value)}")

  return check


def one_of(*choices: str) -> Check:
  """The value is one of ``choices``; the message lists the valid ones."""

  def check(name, value):
    if value not in choices:
      valid = ", ".join(repr(c) for c in choices)
      raise ValueError(f"config.{name} must be one of {valid}, got {_fmt(value)}")

  return check


def optional(*checks: Check) -> Check:
  """``None`` passes; anything else must pass ``checks``."""

  def check(name, value):
    if value is not None:
      for c in checks:
        c(name, value)

  return check


TRAINING_SCHEMA: dict[str, Sequence[Check]] = {
    "seed": (is_int(),),
    "num_steps": (is_int(), greater_than(0)),
    "batch_size": (is_int(), greater_than(0)),
    "learning_rate": (is_number(), greater_than(0)),
    "optimizer": (one_of(*OPTIMIZERS),),
    "momentum": (is_number(), at_least(0), at_most(1)),
    "adam_b1": (is_number(), at_least(0), at_most(1)),
    "adam_b2": (is_number(), at_least(0), at_most(1)),
    "adam_eps": (is_number(), at_least(0)),
    "schedule": (one_of(*SCHEDULES),),
    "warmup_steps": (is_int(), at_least(0)),
    "end_learning_rate": (is_number(), at_least(0)),
    "grad_clip_norm": (optional(is_number(), at_least(0)),),
    "weight_decay": (is_number(), at_least(0)),
    "log_every": (is_int(), greater_than(0)),
    "checkpoint_every": (is_int(), greater_than(0)),
    "keep_checkpoints": (is_int(), greater_than(0)),
    "eval_every": (is_int(), at_least(0)),
    "async_checkpointing": (is_bool(),),
}


def _training_cross_checks(config: Mapping[str, Any]) -> None:
  """Checks between fields of the training schema, and the optional ``mesh`` fields against
  this runtime's devices (so a bad mesh fails before an experiment prepares its data)."""
  import jax  # pylint: disable=g-import-not-at-top

  mesh_lib.mesh_shape(config.get("mesh"), jax.device_count())
  if config["schedule"] == "warmup_rsqrt" and config["warmup_steps"] == 0:
    raise ValueError(
        "config.warmup_steps must be > 0 when config.schedule is 'warmup_rsqrt', got 0")
  if config["schedule"] == "warmup_cosine" and config["warmup_steps"] >= config["num_steps"]:
    raise ValueError(
        f"config.warmup_steps must be < config.num_steps ({config['num_steps']}) when "
        f"config.schedule is 'warmup_cosine', got {config['warmup_steps']}")
  if config["optimizer"] == "adam" and config["weight_decay"] != 0:
    raise ValueError(
        f"config.weight_decay must be 0 with config.optimizer 'adam' (use 'adamw' for "
        f"decoupled weight decay), got {config['weight_decay']!r}")


def validate_config(
    config: Mapping[str, Any] | ml_collections.ConfigDict,
    schema: Mapping[str, Sequence[Check]] | None = None,
    *,
    cross_checks: Callable[[Mapping[str, Any]], None] | None = None,
) -> None:
  """Raises ``ValueError`` naming the first bad field and its value.

  Args:
    config: a ``ConfigDict`` (or mapping). Fields not in ``schema`` are ignored, so an
      experiment's own fields may sit beside the training ones.
    schema: field name -> sequence of checks (``is_int()``, ``greater_than(0)``, ``one_of(...)``,
      ``optional(...)``, or any callable ``(name, value) -> None`` that raises ``ValueError``).
      Defaults to ``TRAINING_SCHEMA`` with its cross-field checks. Dotted names
      (``"model.num_heads"``) reach into nested ConfigDicts. Experiments validate their own
      fields with ``validate_config(config, {**TRAINING_SCHEMA, "model.num_heads": (...)})``.
    cross_checks: called with the config after the field checks; defaults to the training
      cross checks when ``schema`` is None.
  """
  if schema is None:
    schema = TRAINING_SCHEMA
    if cross_checks is None:
      cross_checks = _training_cross_checks
  for name, checks in schema.items():
    node: Any = config
    for part in name.split("."):
      try:
        node = node[part]
      except (KeyError, AttributeError, TypeError):
        raise ValueError(f"config.{name} is missing") from None
    for check in checks:
      check(name, node)
  if cross_checks is not None:
    cross_checks(config)


# ---------------------------------------------------------------------------------------------
# JSON copy of the config and absl flags.


def config_to_dict(config: Mapping[str, Any] | ml_collections.ConfigDict) -> dict[str, Any]:
  """A JSON-serialisable plain dict of ``config`` (tuples become lists, other values repr)."""
  if isinstance(config, (ml_collections.ConfigDict, ml_collections.FrozenConfigDict)):
    config = config.to_dict()

  def convert(value):
    if isinstance(value, Mapping):
      return {str(k): convert(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
      return [convert(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
      return value
    if hasattr(value, "item") and getattr(value, "shape", None) == ():
      return value.item()
    return repr(value)

  return convert(config)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
  """Writes ``text`` to ``path`` through a temporary file and a rename (never half-written)."""
  path = os.fspath(path)
  directory = os.path.dirname(path) or "."
  os.makedirs(directory, exist_ok=True)
  fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=directory)
  try:
    with os.fdopen(fd, "w") as f:
      f.write(text)
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise


def save_config_json(config, path: str | os.PathLike) -> None:
  """Writes ``config_to_dict(config)`` as indented JSON, atomically."""
  atomic_write_text(path, json.dumps(config_to_dict(config), indent=2, sort_keys=True) + "\n")


def load_config_json(path: str | os.PathLike) -> ml_collections.ConfigDict:
  """Reads a config written by :func:`save_config_json` back into a ``ConfigDict``."""
  with open(path) as f:
    return ml_collections.ConfigDict(json.load(f))


def define_config_flags(
    default_config: str | None = None,
    *,
    flag_values=None,
    lock_config: bool = True,
    sys_argv: list[str] | None = None,
    distributed: bool = True,
):
  """Defines ``--config`` (an ml_collections config file) and ``--workdir`` absl flags.

  With ``distributed`` it also defines the several-process flags ``--coordinator_address``,
  ``--num_processes``, ``--process_id`` and ``--distributed_auto`` and, on the global
  ``FLAGS``, joins the processes with :func:`attention_jax.parallel.initialize` right after the
  flags are parsed (before ``main``, so before any JAX computation). Unset flags fall back to
  ``JAX_COORDINATOR_ADDRESS`` / ``JAX_NUM_PROCESSES`` / ``JAX_PROCESS_ID`` /
  ``JAX_DISTRIBUTED_AUTO``; with none of them a run is one process.

  Usage in an experiment module::

    CONFIG, WORKDIR = define_config_flags()
    def main(argv): train(CONFIG.value, WORKDIR.value, ...)

  ``flag_values`` and ``sys_argv`` (the argv in which ``config_flags`` looks for
  ``--config.<field>`` overrides; default ``sys.argv``) exist for tests.

  Returns:
    ``(config_flag_holder, workdir_flag_holder)``.
  """
  from absl import flags
  from ml_collections import config_flags

  flag_values = flags.FLAGS if flag_values is None else flag_values
  config = config_flags.DEFINE_config_file(
      "config", default_config, "Path to the ml_collections config file (file.py[:name]).",
      flag_values=flag_values, lock_config=lock_config, sys_argv=sys_argv)
  workdir = flags.DEFINE_string(
      "workdir", None, "Directory for checkpoints, metrics and figures; a run resumes from it.",
      flag_values=flag_values)
  if distributed:
    _define_distributed_flags(flags, flag_values)
  return config, workdir


def _define_distributed_flags(flags, flag_values) -> None:
  from absl import app

  from attention_jax import parallel

  address = flags.DEFINE_string(
      "coordinator_address", None, "host:port of process 0, for training on several "
      "processes (hosts); default $JAX_COORDINATOR_ADDRESS.", flag_values=flag_values)
  num = flags.DEFINE_integer(
      "num_processes", None, "Number of processes; default $JAX_NUM_PROCESSES.",
      flag_values=flag_values)
  pid = flags.DEFINE_integer(
      "process_id", None, "This process's index in [0, num_processes); default "
      "$JAX_PROCESS_ID.", flag_values=flag_values)
  auto = flags.DEFINE_bool(
      "distributed_auto", None, "jax.distributed.initialize() with the cluster's own settings "
      "(Cloud TPU slices, SLURM, Open MPI); default $JAX_DISTRIBUTED_AUTO.",
      flag_values=flag_values)
  if flag_values is flags.FLAGS:
    app.call_after_init(lambda: parallel.initialize(address.value, num.value, pid.value,
                                                    auto=auto.value))
