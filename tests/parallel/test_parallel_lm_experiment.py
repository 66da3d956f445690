"""The LM experiment trains with its context split over the ``sequence`` axis by config alone:
``python -m experiments.transformer_lm ... --config.mesh.sequence=4`` on 8 fake CPU devices logs
the losses and reaches the validation loss of the one-device run (slow: two whole runs)."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))


def _run(workdir, devices, *overrides):
  env = dict(os.environ)
  env["JAX_PLATFORMS"] = "cpu"
  env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
  cmd = [sys.executable, "-m", "experiments.transformer_lm",
         "--config=experiments/transformer_lm/config.py:tiny", f"--workdir={workdir}",
         "--config.num_steps=6", "--config.warmup_steps=2", "--config.log_every=3",
         "--config.sample.num_tokens=4", *overrides]
  proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
  assert proc.returncode == 0, proc.stderr[-4000:]
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    losses = [row["loss"] for row in map(json.loads, f) if row["split"] == "train"]
  with open(os.path.join(workdir, "eval.json")) as f:
    return losses, json.load(f)


@pytest.mark.slow
def test_lm_trains_with_the_context_split_over_sequence(tmp_path):
  split_losses, split = _run(tmp_path / "split", 8, "--config.mesh.data=2",
                             "--config.mesh.sequence=4")
  one_losses, one = _run(tmp_path / "one", 1)
  assert split["config"]["mesh"] == {"data": 2, "fsdp": 1, "sequence": 4}
  assert len(split_losses) == 2
  np.testing.assert_allclose(split_losses, one_losses, rtol=1e-5)
  np.testing.assert_allclose(split["validation_loss"], one["validation_loss"], rtol=1e-5)
