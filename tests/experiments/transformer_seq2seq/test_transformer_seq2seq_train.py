"""The Transformer encoder-decoder experiment end to end on the tiny config, and its checks."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from attention_jax import data
from attention_jax import training
from experiments.transformer_seq2seq import train as transformer_seq2seq
from experiments.transformer_seq2seq import config as configs


def tiny_config(tmp_path, **overrides):
  config = configs.get_config("tiny")
  config.data.data_dir = str(tmp_path / "tfds")
  for key, value in overrides.items():
    setattr(config, key, value)
  return config


def _check_learned(workdir, subdir, name):
  log = training.read_jsonl(os.path.join(workdir, subdir, "metrics.jsonl"))
  rows = [row for row in log if row.get("split") == "train"]
  assert [row["step"] for row in rows] == [10, 20, 30, 40]  # the same budget for every model
  assert rows[-1]["loss"] < 0.8 * rows[0]["loss"], f"{name} did not learn: {rows}"


@pytest.mark.slow  # make test-all; the command itself runs in the fresh-clone check
def test_tiny_run_trains_decodes_and_writes_results(tmp_path, check_png):
  workdir = str(tmp_path / "run")
  results = transformer_seq2seq.run(tiny_config(tmp_path, compare_rnn=False), workdir)
  assert set(results["models"]) == {"transformer"}
  result = results["models"]["transformer"]
  assert result["parameters"] > 0
  for split in ("test", "test_long"):
    assert result[split]["examples"] == 100
    assert result[split]["decode_chars_per_second"] > 0
  _check_learned(workdir, "transformer", "transformer")
  heatmaps = result["heatmaps"]
  assert len(heatmaps) == 1
  check_png(heatmaps[0])
  check_png(os.path.join(workdir, "accuracy_vs_length.png"))
  with open(os.path.join(workdir, "eval.json")) as f:
    written = json.load(f)
  assert written["models"]["transformer"]["test"] == result["test"]
  assert "| Transformer encoder-decoder |" in written["table"]
  # The joint vocabulary is kept in the workdir, so a resumed run reads the same ids.
  assert os.path.exists(os.path.join(workdir, "tokenizers", "joint.json"))


@pytest.mark.slow  # the RNN half is experiments/seq2seq's code, tested there in the default run
def test_tiny_run_with_the_rnn_trains_both_with_one_budget(tmp_path):
  workdir = str(tmp_path / "run")
  results = transformer_seq2seq.run(tiny_config(tmp_path), workdir)
  assert set(results["models"]) == {"transformer", "rnn_additive"}
  for name in results["models"]:
    _check_learned(workdir, name, name)
    assert results["models"][name]["test_long"]["examples"] == 100
  assert "| RNN with additive attention |" in results["table"]


def test_cross_attention_rows_are_distributions_over_the_source(tmp_path):
  config = tiny_config(tmp_path)
  tokenizer = data.CharTokenizer.build(["0123456789-: abcJun"])
  model = transformer_seq2seq.make_model(config, tokenizer.vocab_size)
  params = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 8), jnp.int32),
                              jnp.zeros((1, 5), jnp.int32))["params"]
  weights = transformer_seq2seq.cross_attention(model, params, tokenizer, "12 Jun 1994",
                                                "1994-06-12")
  assert weights.shape == (config.model.num_heads, 11, 11)
  np.testing.assert_allclose(weights.sum(-1), 1.0, rtol=1e-5)


@pytest.mark.parametrize("field,value,match", [
    ("model.num_heads", 3, r"config.model.features \(32\) must be divisible by "
                           r"config.model.num_heads \(3\)"),
    ("model.positions", "alibi", r"config.model.positions must be one of"),
    ("model.dtype", "float16", r"config.model.dtype must be one of 'float32', 'bfloat16'"),
    ("eval.beam_size", 0, r"config.eval.beam_size must be > 0"),
])
def test_bad_config_fields_are_named(tmp_path, field, value, match):
  config = tiny_config(tmp_path)
  config.update_from_flattened_dict({field: value})
  with pytest.raises(ValueError, match=match):
    configs.validate(config)


def test_unknown_preset():
  with pytest.raises(ValueError, match="unknown transformer_seq2seq preset 'huge'"):
    configs.get_config("huge")


def test_rnn_gets_the_same_budget_and_data(tmp_path):
  config = tiny_config(tmp_path)
  config.num_steps = 17
  config.batch_size = 8
  config.data.dataset_config = "small"
  config.eval.beam_size = 3
  config.lock()  # as the --config flag hands it over
  rnn = transformer_seq2seq.rnn_config(config)
  assert rnn.eval.beam_size == 3
  assert (rnn.num_steps, rnn.batch_size, rnn.seed) == (17, 8, config.seed)
  assert rnn.data.to_dict() == config.data.to_dict()
