"""Tiny training runs for the reliability tests: the MLP task of tests/training, crashed on
purpose, resumed, compared bit for bit with a run that never stopped."""

from __future__ import annotations

import glob
import os
import shutil
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "training"))

import _training_task  # pylint: disable=wrong-import-position
from attention_jax import training  # pylint: disable=wrong-import-position

make_config = _training_task.make_config
params_to_numpy = _training_task.params_to_numpy

# The log keys a resumed run must reproduce exactly (the rest are timings).
EXACT_LOG_KEYS = ("step", "split", "loss", "accuracy", "learning_rate", "grad_norm",
                  "token_count", "example_count", "num_steps")


class Crash(Exception):
  """Raised from get_batch: the run dies as if killed, after its checkpoints are final."""


def run(config, workdir, crash_at=None, with_eval=False):
  """Trains with freshly built functions; returns ``(state, steps asked for)``."""
  order = []
  init_state, train_step, get_batch, eval_step, schedule = _training_task.build_task(
      config, order=order)

  def batches(step):
    if crash_at is not None and step == crash_at:
      raise Crash(step)
    return get_batch(step)

  eval_fn = None
  if with_eval:
    eval_fn = lambda state: training.evaluate(  # pylint: disable=g-long-lambda
        eval_step, state, (_training_task.make_batch(config.seed, 10**6 + i, config.batch_size)
                           for i in range(2)))
  state = training.train(config, str(workdir), init_state, train_step, batches,
                         eval_fn=eval_fn, learning_rate_fn=schedule)
  return state, order


def crash(config, workdir, at):
  """A run that dies when asked for batch ``at`` (its checkpoints up to ``at`` are written)."""
  try:
    run(config, workdir, crash_at=at)
  except Crash:
    return
  raise AssertionError(f"the run did not reach step {at}")


def assert_same_state(got, want):
  """Params and optimiser state bit-identical."""
  got_params, want_params = params_to_numpy(got.params), params_to_numpy(want.params)
  assert sorted(got_params) == sorted(want_params)
  for key, value in want_params.items():
    np.testing.assert_array_equal(got_params[key], value, err_msg=key)
  got_opt, want_opt = params_to_numpy(got.opt_state), params_to_numpy(want.opt_state)
  for key, value in want_opt.items():
    np.testing.assert_array_equal(got_opt[key], value, err_msg=key)
  assert int(got.step) == int(want.step)


def exact_log(workdir):
  """metrics.jsonl without its timings."""
  return [{k: r[k] for k in EXACT_LOG_KEYS if k in r}
          for r in training.read_jsonl(os.path.join(workdir, "metrics.jsonl"))]


def data_files(step_dir):
  """The array data files orbax wrote for a step (OCDBT data under ``state/``)."""
  return sorted(p for p in glob.glob(os.path.join(step_dir, "state", "**", "d", "*"),
                                     recursive=True) if os.path.isfile(p))


def copy_run(source, destination):
  shutil.copytree(source, destination)
  return destination
