"""The CNN +/- self-attention experiment: tiny run end to end, attention maps, config checks."""

import json
import os

import jax
import numpy as np
import pytest

from attention_jax import training
from experiments.cnn_self_attention import train as cnn_self_attention
from experiments.cnn_self_attention import config as configs


@pytest.mark.slow  # make test-all; the tiny run trains both variants
@pytest.mark.parametrize("variant", configs.VARIANTS)
def test_models_fit_a_fixed_batch(variant):
  """Both variants can learn: the loss on one repeated batch falls."""
  config = configs.get_config("tiny")
  config.schedule, config.learning_rate = "constant", 1e-2
  data = cnn_self_attention.ShapesData(config)
  batch = data.train(0)
  model = cnn_self_attention.make_model(config, variant, data.num_classes)
  state, _ = cnn_self_attention.init_state(config, model, batch)
  step = training.make_train_step(cnn_self_attention._loss_fn(model))
  losses = []
  for _ in range(60):
    state, sums = step(state, batch)
    losses.append(float(sums["loss_sum"]))
  assert np.mean(losses[-5:]) < 0.8 * np.mean(losses[:5]), losses


def test_attention_weights_are_rows_over_the_grid():
  config = configs.get_config("tiny")
  data = cnn_self_attention.ShapesData(config)
  model = cnn_self_attention.make_model(config, "cnn_attention", 2)
  images = data.test()["images"][:2]
  params = model.init(jax.random.key(0), images)["params"]
  weights = cnn_self_attention.attention_weights(model, params, images)
  assert weights.shape == (2, 64, 64)  # 16x16 pooled once to 8x8
  np.testing.assert_allclose(weights.sum(-1), 1.0, atol=1e-5)


def test_tiny_run_writes_eval_json_and_attention_maps(tmp_path, check_png):
  workdir = str(tmp_path / "run")
  results = cnn_self_attention.run(configs.get_config("tiny"), workdir)
  assert set(results["variants"]) == {"cnn", "cnn_attention"}
  for result in results["variants"].values():
    assert 0.0 <= result["test_accuracy"] <= 1.0
  with_attention = results["variants"]["cnn_attention"]
  assert with_attention["parameters"] > results["variants"]["cnn"]["parameters"]
  check_png(os.path.join(workdir, "attention_maps.png"))
  with open(os.path.join(workdir, "eval.json")) as f:
    written = json.load(f)
  assert written["variants"]["cnn"]["test_accuracy"] == results["variants"]["cnn"]["test_accuracy"]


@pytest.mark.parametrize("field,value,match", [
    ("variants", ("cnn", "vit"), r"config.variants must be a non-empty tuple of distinct"),
    ("data.source", "folder", r"config.data.source must be one of"),
    ("model.attention_after", 3, r"config.model.attention_after \(3\) must be <= len"),
    ("model.channels", (8, 0), r"config.model.channels must be a non-empty tuple of ints"),
])
def test_bad_config_fields_are_named(field, value, match):
  config = configs.get_config("tiny")
  config.update_from_flattened_dict({field: value})
  with pytest.raises(ValueError, match=match):
    configs.validate(config)


def test_unknown_preset():
  with pytest.raises(ValueError, match="unknown cnn_self_attention preset 'huge'"):
    configs.get_config("huge")


@pytest.mark.slow
def test_default_config_learns_the_same_shape_task(tmp_path):
  """The real task, not a fixed batch: the attention variant of the default config leaves the
  chance plateau (~1,300 steps) and classifies unseen test images well above chance (0.5)."""
  config = configs.get_config()
  config.variants = ("cnn_attention",)
  config.eval.num_examples = 1000
  config.eval.num_maps = 1
  results = cnn_self_attention.run(config, str(tmp_path / "run"))
  result = results["variants"]["cnn_attention"]
  assert result["test_accuracy"] > 0.75, result
  assert result["gamma"] != 0.0  # the attention branch is in use
