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
"""

from attention_jax.training.checkpointing import Checkpointer, abstract_like
from attention_jax.training.config_validation import (
    OPTIMIZERS,
    SCHEDULES,
    TRAINING_SCHEMA,
    at_least,
    at_most,
    config_to_dict,
    default_training_config,
    define_config_flags,
    greater_than,
    is_bool,
    is_int,
    is_number,
    load_config_json,
    one_of,
    optional,
    save_config_json,
    validate_config,
)
from attention_jax.training.evaluation import evaluate
from attention_jax.training.loop import train
from attention_jax.training.metric_writers import (
    JsonlWriter,
    make_progress_bar,
    make_summary_writer,
    read_jsonl,
)
from attention_jax.training.metrics import accumulate, classification_sums, summarize
from attention_jax.training.optimizers import make_optimizer, make_schedule, warmup_rsqrt_schedule
from attention_jax.training.steps import make_eval_step, make_train_step
from attention_jax.training.train_state import TrainState, create_train_state

__all__ = [
    "Checkpointer", "JsonlWriter", "OPTIMIZERS", "SCHEDULES", "TRAINING_SCHEMA", "TrainState",
    "abstract_like", "accumulate", "at_least", "at_most", "classification_sums",
    "config_to_dict", "create_train_state", "default_training_config", "define_config_flags",
    "evaluate", "greater_than", "is_bool", "is_int", "is_number", "load_config_json",
    "make_eval_step", "make_optimizer", "make_progress_bar", "make_schedule",
    "make_summary_writer", "make_train_step", "one_of", "optional", "read_jsonl",
    "save_config_json", "summarize", "train", "validate_config", "warmup_rsqrt_schedule",
]
