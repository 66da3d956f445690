"""The seq2seq experiment end to end on the tiny config, its scoring and its config checks."""

import json
import os

import pytest

from attention_jax import training
from experiments import seq2seq
from experiments import seq2seq_eval
from experiments.configs import seq2seq as seq2seq_configs


def tiny_config(tmp_path):
  config = seq2seq_configs.get_config("tiny")
  config.data.data_dir = str(tmp_path / "tfds")
  return config


def test_tiny_run_trains_both_models_and_writes_results(tmp_path, check_png):
  workdir = str(tmp_path / "run")
  results = seq2seq.run(tiny_config(tmp_path), workdir)
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


def test_score_exact_and_per_character_accuracy():
  records = [{"source": "24.11.26", "target": "2026-11-24"},
             {"source": "Tuesday, November 24, 2026", "target": "2026-11-24"},
             {"source": "3:07 PM", "target": "15:07"}]
  predictions = ["2026-11-24", "2026-11-25", "15:07:00"]
  scores = seq2seq_eval.score(records, predictions)
  assert scores["exact_match"] == pytest.approx(1 / 3)
  # 10 + 9 matching characters of 10 + 10; the 3 extra characters count against the third.
  assert scores["char_accuracy"] == pytest.approx((10 + 9 + 5) / (10 + 10 + 8))
  buckets = {row["min_len"]: row for row in scores["by_length"]}
  assert buckets[5]["examples"] == 2 and buckets[25]["exact_match"] == 0.0
  with pytest.raises(ValueError, match="3 records but 2 predictions"):
    seq2seq_eval.score(records, predictions[:2])


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
    seq2seq.validate(config)


def test_unknown_preset():
  with pytest.raises(ValueError, match="unknown seq2seq preset 'huge'"):
    seq2seq_configs.get_config("huge")


def test_heatmap_examples_take_one_record_per_locale_in_order():
  records = [{"locale": "de", "style": "date:long"}, {"locale": "en", "style": "date@x"},
             {"locale": "en", "style": "date:short"}, {"locale": "ko", "style": "time"},
             {"locale": "de", "style": "time"}]
  assert seq2seq.heatmap_examples(records, 6) == [2, 0, 3]  # en, de, ko: HEATMAP_LOCALES order
  assert seq2seq.heatmap_examples(records, 2) == [2, 0]
  assert seq2seq.heatmap_examples(records, 0) == []
