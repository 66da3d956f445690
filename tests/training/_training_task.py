"""A tiny training task for the tests: a 2-layer MLP with dropout on random data.

Importable (``build_task``) and runnable as a script, so a test can train in a *new process*::

  python _training_task.py --workdir W --num_steps N --checkpoint_every C \
      --order_file F --params_out P [--sleep S]

The script prints ``checkpoint <step>`` (flushed) once each checkpoint save has started: the loop
starts saving checkpoint ``k`` before it asks for batch ``k``, and saves the last one before it
returns. It appends the step of every ``get_batch`` call to ``--order_file`` and writes the
final params to ``--params_out`` (``.npz``). ``--stop_at K`` ends the run cleanly when step
``K`` is asked for (after the loop has finalised its checkpoints), as a run cut short on purpose.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..")))

from attention_jax import training  # pylint: disable=wrong-import-position

IN_DIM, HIDDEN, CLASSES = 8, 32, 4


class MLP(nn.Module):
  hidden: int = HIDDEN
  classes: int = CLASSES
  dropout: float = 0.2

  @nn.compact
  def __call__(self, x, deterministic: bool):
    x = nn.relu(nn.Dense(self.hidden)(x))
    x = nn.Dropout(self.dropout)(x, deterministic=deterministic)
    return nn.Dense(self.classes)(x)


def make_config(**overrides):
  config = training.default_training_config()
  config.num_steps = 20
  config.batch_size = 16
  config.learning_rate = 3e-2
  config.optimizer = "adamw"
  config.weight_decay = 1e-4
  config.schedule = "warmup_cosine"
  config.warmup_steps = 3
  config.log_every = 5
  config.checkpoint_every = 5
  config.keep_checkpoints = 2
  config.update(overrides)
  return config


def make_batch(seed: int, step: int, batch_size: int, poison_step: int | None = None):
  """The batch of ``step``: a pure function of ``(seed, step)``; labels from a fixed teacher."""
  rng = np.random.default_rng([seed, step])
  x = rng.normal(size=(batch_size, IN_DIM)).astype(np.float32)
  teacher = np.random.default_rng([seed, 10**6]).normal(size=(IN_DIM, CLASSES))
  y = np.argmax(x @ teacher, axis=-1).astype(np.int32)
  if poison_step is not None and step == poison_step:
    x[0, 0] = np.nan
  return {"x": x, "y": y, "weights": np.ones((batch_size,), np.float32)}


def build_task(config, poison_step: int | None = None, order: list | None = None):
  """Returns ``(init_state_fn, train_step, get_batch, eval_step, schedule)``."""
  model = MLP()

  def init_state():
    params = model.init(jax.random.key(config.seed), jnp.zeros((1, IN_DIM)),
                        deterministic=True)["params"]
    tx, _ = training.make_optimizer(config)
    return training.create_train_state(params, tx, seed=config.seed + 1, apply_fn=model.apply)

  def loss_fn(params, batch, rng):
    logits = model.apply({"params": params}, batch["x"], deterministic=False,
                         rngs={"dropout": rng})
    sums = training.classification_sums(logits, batch["y"], batch["weights"])
    return sums["loss_sum"] / jnp.maximum(sums["token_count"], 1.0), sums

  def metrics_fn(params, batch):
    logits = model.apply({"params": params}, batch["x"], deterministic=True)
    return training.classification_sums(logits, batch["y"], batch["weights"])

  def get_batch(step):
    if order is not None:
      order.append(step)
    return make_batch(config.seed, step, config.batch_size, poison_step)

  _, schedule = training.make_optimizer(config)
  return (init_state, training.make_train_step(loss_fn), get_batch,
          training.make_eval_step(metrics_fn), schedule)


def params_to_numpy(params) -> dict[str, np.ndarray]:
  flat = jax.tree_util.tree_flatten_with_path(params)[0]
  return {jax.tree_util.keystr(k): np.asarray(v) for k, v in flat}


class _Stop(Exception):
  pass


def main(argv=None):
  parser = argparse.ArgumentParser()
  parser.add_argument("--workdir", required=True)
  parser.add_argument("--num_steps", type=int, required=True)
  parser.add_argument("--checkpoint_every", type=int, default=5)
  parser.add_argument("--order_file", required=True)
  parser.add_argument("--params_out", required=True)
  parser.add_argument("--sleep", type=float, default=0.0)
  parser.add_argument("--stop_at", type=int, default=None,
                      help="stop cleanly (exception from get_batch) when asked for this step")
  args = parser.parse_args(argv)

  config = make_config(num_steps=args.num_steps, checkpoint_every=args.checkpoint_every)
  init_state, train_step, get_batch, _, schedule = build_task(config)

  asked = []

  def logged_get_batch(step):
    if asked and step % args.checkpoint_every == 0:  # not the step a resumed run starts from
      print(f"checkpoint {step}", flush=True)
    asked.append(step)
    if step == args.stop_at:
      raise _Stop()
    with open(args.order_file, "a") as f:
      f.write(f"{step}\n")
    if args.sleep:
      time.sleep(args.sleep)
    return get_batch(step)

  try:
    state = training.train(config, args.workdir, init_state, train_step, logged_get_batch,
                           learning_rate_fn=schedule)
    print(f"checkpoint {args.num_steps}", flush=True)
  except _Stop:
    print("stopped", flush=True)
    return
  np.savez(args.params_out, step=np.asarray(state.step), **params_to_numpy(state.params))
  print("done", flush=True)


if __name__ == "__main__":
  main()
