"""What every experiment shares: train state, steps, optimisers, checkpoints, metrics, the loop.

Typical use in an experiment::

  from attention_jax import training

  config = training.default_training_config()      # + the experiment's own fields
  tx, schedule = training.make_optimizer(config)
  state = training.create_train_state(params, tx, seed=config.seed + 1, apply_fn=model.apply)

  def loss_fn(params, batch, rng):                    # -> (loss, sums)
    logits = model.apply({"params": params}, batch["x"], rngs={"dropout": rng})
    sums = training.classification_sums(logits, batch["y"], batch["weights"])
    return sums["loss_sum"] / jnp.maximum(sums["token_count"], 1.0), sums

  state = training.train(config, workdir, state, training.make_train_step(loss_fn),
                         get_batch=lambda step: data.batch(config.seed, step),
                         learning_rate_fn=schedule)

Modules:

* ``config`` -- :func:`default_training_config` and :func:`validate_training_config`.
* ``config_json`` -- the JSON copy of a config in the workdir.
* ``run_files`` -- files written atomically: :func:`atomic_write_text`, :func:`write_json`,
  :func:`write_eval_json`.
* ``flags`` / ``launch`` -- an experiment script's absl flags and its ``__main__``
  (:func:`run_experiment`).
* ``checksums`` -- the CRC-32 of every saved array leaf, which a restore verifies.
* ``loop`` (:func:`train`), ``checkpointing``, ``metric_writers``, ``metrics``, ``optimizers``,
  ``steps``, ``train_state``, ``evaluation``.
* ``host_memory`` -- :func:`keep_freed_memory`: glibc's malloc keeps the buffers XLA:CPU frees
  after every step, rather than unmapping them and faulting them in again.
* ``teacher_forcing`` -- :func:`train_teacher_forced`, a sequence-to-sequence model's training.
"""

from attention_jax.training.checkpointing import CheckpointError, Checkpointer, abstract_like
from attention_jax.training.config import (
    OPTIMIZERS,
    SCHEDULES,
    default_training_config,
    validate_training_config,
)
from attention_jax.training.config_json import config_to_dict, load_config_json, save_config_json
from attention_jax.training.evaluation import evaluate
from attention_jax.training.flags import define_config_flags
from attention_jax.training.host_memory import keep_freed_memory
from attention_jax.training.launch import run_experiment, run_experiment_folder
from attention_jax.training.loop import TrainingDiverged, train
from attention_jax.training.metric_writers import (
    JsonlWriter,
    SummaryWriter,
    make_progress_bar,
    read_jsonl,
)
from attention_jax.training.metrics import accumulate, classification_sums, summarize
from attention_jax.training.optimizers import make_optimizer, make_schedule, warmup_rsqrt_schedule
from attention_jax.training.run_files import atomic_write_text, write_eval_json, write_json
from attention_jax.training.steps import make_eval_step, make_train_step
from attention_jax.training.teacher_forcing import train_teacher_forced
from attention_jax.training.train_state import TrainState, create_train_state

__all__ = [
    "CheckpointError", "Checkpointer", "JsonlWriter", "OPTIMIZERS", "SCHEDULES", "SummaryWriter",
    "TrainState", "TrainingDiverged",
    "abstract_like", "accumulate", "atomic_write_text", "classification_sums", "config_to_dict",
    "create_train_state", "default_training_config", "define_config_flags", "evaluate",
    "keep_freed_memory", "load_config_json", "make_eval_step", "make_optimizer",
    "make_progress_bar", "make_schedule", "make_train_step", "read_jsonl", "run_experiment",
    "run_experiment_folder", "save_config_json",
    "summarize", "train", "train_teacher_forced", "validate_training_config",
    "warmup_rsqrt_schedule", "write_eval_json", "write_json",
]
