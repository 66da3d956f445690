"""The character-level Transformer LM experiment end to end on the tiny config."""

import json
import os

import numpy as np
import pytest

from attention_jax import training
from experiments.transformer_lm import train as transformer_lm
from experiments.transformer_lm import config as configs


@pytest.mark.slow  # make test-all; the LM's parts are tested in tests/models
def test_tiny_run_writes_results_samples_and_attention_maps(tmp_path, check_png):
  workdir = str(tmp_path / "run")
  results = transformer_lm.run(configs.get_config("tiny"), workdir)
  log = training.read_jsonl(os.path.join(workdir, "metrics.jsonl"))
  losses = [row["loss"] for row in log if row.get("split") == "train"]
  assert losses[-1] < 0.7 * losses[0], losses
  assert results["validation_bpc"] == pytest.approx(results["validation_loss"] / np.log(2))
  assert 0 < results["bigram_loss"] < np.log(results["vocab_size"])
  assert results["train_tokens_per_sec"] > 0 and results["generation_tokens_per_sec"] > 0
  assert all(len(s) >= 20 for s in results["samples"])
  assert len(results["attention_pngs"]) == 1
  for path in results["attention_pngs"]:
    check_png(path)
  with open(os.path.join(workdir, "eval.json")) as f:
    assert json.load(f)["validation_loss"] == results["validation_loss"]
  assert os.path.getsize(os.path.join(workdir, "samples.txt")) > 20


def test_bigram_baseline_and_batches():
  ids = np.array([0, 1, 0, 1, 0, 1, 0, 1], np.int32)
  # A deterministic alternation: the add-alpha bigram is nearly certain.
  assert transformer_lm.bigram_loss(ids, ids, 2, alpha=1e-6) < 1e-3
  batch = transformer_lm.make_batch(np.arange(100, dtype=np.int32), 0, 3, 4, 10)
  np.testing.assert_array_equal(batch["targets"], batch["inputs"] + 1)
  again = transformer_lm.make_batch(np.arange(100, dtype=np.int32), 0, 3, 4, 10)
  np.testing.assert_array_equal(again["inputs"], batch["inputs"])


def test_config_checks():
  for preset in ("default", "gpu", "tiny"):
    configs.validate(configs.get_config(preset))
  config = configs.get_config("tiny")
  config.data.source = "files"
  with pytest.raises(ValueError, match="data.paths"):
    configs.validate(config)
  config = configs.get_config("tiny")
  config.model.positions = "alibi"
  with pytest.raises(ValueError, match="positions"):
    configs.validate(config)
