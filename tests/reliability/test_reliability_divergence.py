"""The divergence guard: a logged training loss over config.max_loss stops the run in one line
naming the step, the loss and the last good checkpoint, and saves nothing after it."""

import os
import re

import pytest

import _reliability_runs as runs
from attention_jax import training


def test_a_loss_over_max_loss_stops_at_its_log_step_keeping_the_last_good_checkpoint(tmp_path):
  workdir = str(tmp_path / "run")
  runs.run(runs.make_config(num_steps=10), workdir)  # checkpoints 5 and 10, losses finite

  config = runs.make_config(num_steps=20, max_loss=1e-6)
  with pytest.raises(training.TrainingDiverged) as err:
    runs.run(config, workdir)
  assert isinstance(err.value, FloatingPointError)
  checkpoints = os.path.join(workdir, "checkpoints")
  assert re.fullmatch(
      r"training loss [0-9.e+-]+ logged at step 15 exceeds config.max_loss = 1e-06; the last "
      rf"good checkpoint is step 10 in {re.escape(checkpoints)} \(lower config.learning_rate or "
      r"raise config.max_loss\)", str(err.value)), str(err.value)
  assert sorted(os.listdir(checkpoints)) == ["10", "5"]
  # The line that stopped it is logged, so the user sees the loss.
  assert [r["step"] for r in training.read_jsonl(os.path.join(workdir, "metrics.jsonl"))
          if r["split"] == "train"] == [5, 10, 15]


def test_max_loss_none_or_zero_is_off(tmp_path):
  for i, max_loss in enumerate((None, 0.0)):
    state, _ = runs.run(runs.make_config(num_steps=5, max_loss=max_loss), str(tmp_path / str(i)))
    assert int(state.step) == 5
