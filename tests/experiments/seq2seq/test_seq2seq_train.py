"""The seq2seq experiment end to end on the tiny config, and its config checks."""

import json
import os
import shutil

import pytest

from attention_jax import training
from experiments.seq2seq import train as seq2seq
from experiments.seq2seq import config as seq2seq_configs


def tiny_config(tmp_path):
  config = seq2seq_configs.get_config("tiny")
  config.data.data_dir = str(tmp_path / "tfds")
  return config


def test_tiny_run_trains_both_models_and_writes_results(tmp_path, check_png,
                                                        dates_small_data_dir):
  workdir = str(tmp_path / "run")
  # The run's shared preparation of the data (tests/conftest.py), copied: the run reads its own.
  shutil.copytree(dates_small_data_dir, tmp_path / "tfds")
  config = tiny_config(tmp_path)
  config.checkpoint_every = config.num_steps  # checkpoints and resuming: tests/reliability
  results = seq2seq.run(config, workdir)
  assert set(results["models"]) == {"none", "additive"}
  for attention, result in results["models"].items():
    for split in ("test", "test_long"):
      scores = result[split]
      assert scores["examples"] == 100
      assert 0.0 <= scores["exact_match"] <= scores["char_accuracy"] <= 1.0
      assert scores["char_accuracy"] > 0.1, (attention, split, scores["char_accuracy"])
      assert sum(row["examples"] for row in scores["by_length"]) == 100
    log = training.read_jsonl(os.path.join(workdir, attention, "metrics.jsonl"))
    losses = [row["loss"] for row in log if row.get("split") == "train"]
    assert losses[-1] < 0.8 * losses[0], f"{attention} did not learn: {losses}"
  check_png(os.path.join(workdir, "accuracy_vs_length.png"))
  heatmaps = results["models"]["additive"]["heatmaps"]
  assert len(heatmaps) == 2
  for path in heatmaps:
    check_png(path)
  with open(os.path.join(workdir, "eval.json")) as f:
    written = json.load(f)
  assert written["models"]["none"]["test"] == results["models"]["none"]["test"]
  # The tokenizers are kept in the workdir, so a resumed run reads the same vocabulary.
  assert os.path.exists(os.path.join(workdir, "tokenizers", "source.json"))


@pytest.mark.parametrize("field,value,match", [
    ("attentions", ("none", "luong"), r"config.attentions must be a non-empty tuple"),
    ("model.hidden_dim", 0, r"config.model.hidden_dim must be > 0, got 0"),
    ("model.cell_type", "rnn", r"config.model.cell_type must be one of 'gru', 'lstm'"),
    ("learning_rate", -1.0, r"config.learning_rate must be > 0, got -1.0"),
    ("eval.beam_size", 0, r"config.eval.beam_size must be > 0"),
])
def test_bad_config_fields_are_named(field, value, match):
  config = seq2seq_configs.get_config("tiny")
  config.update_from_flattened_dict({field: value})
  with pytest.raises(ValueError, match=match):
    seq2seq_configs.validate(config)


def test_unknown_preset():
  with pytest.raises(ValueError, match="unknown preset 'huge'"):
    seq2seq_configs.get_config("huge")
