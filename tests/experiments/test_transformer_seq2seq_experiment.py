"""The Transformer encoder-decoder experiment end to end on the tiny config, and its checks."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from attention_jax import data
from attention_jax import training
from experiments import transformer_seq2seq
from experiments.configs import transformer_seq2seq as configs


def tiny_config(tmp_path, **overrides):
  config = configs.get_config("tiny")
  config.data.data_dir = str(tmp_path / "tfds")
  for key, value in overrides.items():
    setattr(config, key, value)
  return config


def test_tiny_run_trains_both_models_and_writes_results(tmp_path):
  workdir = str(tmp_path / "run")
  results = transformer_seq2seq.run(tiny_config(tmp_path), workdir)
  assert set(results["models"]) == {"transformer", "rnn_additive"}
  for name, subdir in (("transformer", "transformer"), ("rnn_additive", "rnn_additive")):
    result = results["models"][name]
    assert result["parameters"] > 0
    for split in ("test", "test_long"):
      assert result[split]["examples"] == 100
    log = training.read_jsonl(os.path.join(workdir, subdir, "metrics.jsonl"))
    losses = [row["loss"] for row in log if row.get("split") == "train"]
    # Same budget: both logged the same steps.
    assert [row["step"] for row in log if row.get("split") == "train"] == [10, 20, 30, 40]
    assert losses[-1] < 0.8 * losses[0], f"{name} did not learn: {losses}"
  assert results["models"]["transformer"]["test"]["decode_chars_per_second"] > 0
  heatmaps = results["models"]["transformer"]["heatmaps"]
  assert len(heatmaps) == 1 and os.path.getsize(heatmaps[0]) > 1000
  assert os.path.getsize(os.path.join(workdir, "accuracy_vs_length.png")) > 1000
  with open(os.path.join(workdir, "eval.json")) as f:
    written = json.load(f)
  assert written["models"]["transformer"]["test"] == results["models"]["transformer"]["test"]
  assert "| Transformer encoder-decoder |" in written["table"]


def test_cross_attention_rows_are_distributions_over_the_source(tmp_path):
  config = tiny_config(tmp_path)
  tokenizer = data.CharTokenizer.build(["0123456789-: abcJun"])
  model = transformer_seq2seq.make_model(config, tokenizer.vocab_size)
  params = model.init(jax.random.key(0), jnp.zeros((1, 8), jnp.int32),
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
  node = config
  *parents, leaf = field.split(".")
  for part in parents:
    node = node[part]
  node[leaf] = value
  with pytest.raises(ValueError, match=match):
    transformer_seq2seq.validate(config)


def test_unknown_preset():
  with pytest.raises(ValueError, match="unknown transformer_seq2seq preset 'huge'"):
    configs.get_config("huge")


def test_rnn_gets_the_same_budget_and_data(tmp_path):
  config = tiny_config(tmp_path)
  config.num_steps = 17
  config.batch_size = 8
  config.data.dataset_config = "small"
  rnn = transformer_seq2seq.rnn_config(config)
  assert (rnn.num_steps, rnn.batch_size, rnn.seed) == (17, 8, config.seed)
  assert rnn.data.to_dict() == config.data.to_dict()
  assert tuple(rnn.attentions) == ("additive",)
