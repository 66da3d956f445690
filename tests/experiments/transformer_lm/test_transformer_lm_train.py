"""The character-level Transformer LM experiment end to end on the tiny config."""

import json
import os

import numpy as np
import pytest

from attention_jax import training
from experiments.transformer_lm import train as transformer_lm
from experiments.transformer_lm import config as configs


@pytest.mark.slow  # make test-all; the LM's parts are tested in tests/models
@pytest.mark.parametrize("batching", ["windows", "packed"])
def test_tiny_run_writes_results_samples_and_attention_maps(tmp_path, check_png, batching):
  workdir = str(tmp_path / "run")
  config = configs.get_config("tiny")
  config.data.batching = batching
  results = transformer_lm.run(config, workdir)
  assert results["batching"] == batching
  assert (results["padding_fraction"] == 0) == (batching == "windows")
  assert 0 < results["train_real_tokens_per_sec"] <= results["train_tokens_per_sec"]
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


def test_documents_end_at_blank_lines_and_fit_the_context():
  newline = 9
  ids = np.array([1, 2, 9, 9, 3, 4, 5, 6, 7, 8, 1, 2, 9, 9, 5], np.int32)
  docs = transformer_lm.split_documents(ids, newline, context=4)
  assert [d.tolist() for d in docs] == [[1, 2, 9, 9], [3, 4, 5, 6, 7], [8, 1, 2, 9, 9]]
  assert np.array_equal(np.concatenate(docs), ids[:-1])  # the 1-id tail cannot be a pair


def test_packed_documents_waste_less_than_padded_ones_and_keep_every_token():
  rng = np.random.default_rng(0)
  docs = [rng.integers(3, 40, size=rng.integers(2, 30)) for _ in range(120)]
  batches = {mode: transformer_lm.document_batches(docs, mode, 4, 32, seed=0)
             for mode in ("packed", "padded")}
  packed, padded = batches["packed"], batches["padded"]
  assert packed.padding_fraction() < 0.2 < padded.padding_fraction()
  assert packed.rows["weights"].sum() == padded.rows["weights"].sum() == sum(
      len(d) - 1 for d in docs)
  batch = packed(5)
  assert set(batch) == {"inputs", "targets", "segment_ids", "positions", "weights"}
  assert batch["inputs"].shape == (4, 32)


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
  config = configs.get_config("tiny")
  config.data.batching = "bucketed"
  with pytest.raises(ValueError, match=r"config.data.batching must be one of 'windows', "
                                       r"'packed', 'padded', got 'bucketed'"):
    configs.validate(config)
