"""The sequence-processing experiment: tiny run end to end, receptive field, config checks."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from attention_jax import training
from experiments.sequence_processing import classifiers
from experiments.sequence_processing import train as sequence_processing
from experiments.sequence_processing import config as configs


@pytest.mark.parametrize("depth,kernel_size,dilation_base,expected", [
    (0, 3, 1, 1), (1, 3, 1, 3), (4, 4, 1, 13), (3, 3, 2, 15), (4, 2, 3, 41),
])
def test_receptive_field_formula(depth, kernel_size, dilation_base, expected):
  assert classifiers.receptive_field(depth, kernel_size, dilation_base) == expected


@pytest.mark.parametrize("depth,kernel_size,dilation_base", [(1, 3, 1), (3, 4, 1), (3, 3, 2)])
def test_receptive_field_is_what_the_conv_stack_builds(depth, kernel_size, dilation_base):
  """The inputs with a non-zero Jacobian on the last output are exactly the last
  ``receptive_field`` ones (causal: nothing after the output position either)."""
  length, width = 24, 4
  stack = classifiers.ConvStack(width, depth, kernel_size, dilation_base)
  params = stack.init(jax.random.key(0), jnp.zeros((1, length, width)))
  field = stack.receptive_field()
  for position in (length - 1, 15):
    seen = np.asarray(classifiers.influence(stack, params, length, width, position))
    expected = np.zeros(length, bool)
    expected[max(0, position - field + 1):position + 1] = True
    np.testing.assert_array_equal(seen, expected, err_msg=f"output {position}")


def test_depth_for_covers_the_distance():
  for distance in (1, 5, 12, 13, 47):
    for base in (1, 2):
      depth = classifiers.depth_for(distance, 4, base)
      assert classifiers.receptive_field(depth, 4, base) >= distance + 1
      assert depth == 0 or classifiers.receptive_field(depth - 1, 4, base) < distance + 1


def test_models_have_about_the_same_parameter_count():
  config = configs.get_config()
  task = sequence_processing.make_task(config)
  counts = []
  for name in configs.MODELS:
    model = sequence_processing.make_model(config, name, task)
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.ones((1, 8), jnp.int32)))
    counts.append(classifiers.parameter_count(shapes["params"]))
  assert max(counts) < 1.25 * min(counts), counts


def test_longest_learned_needs_every_shorter_distance():
  accuracy = {1: 1.0, 2: 0.95, 3: 0.8, 4: 0.99}
  assert sequence_processing.longest_learned(accuracy, 0.9) == 2
  assert sequence_processing.longest_learned({1: 0.5, 2: 1.0}, 0.9) == 0


@pytest.mark.slow  # make test-all; the tiny run above trains all three
@pytest.mark.parametrize("name", configs.MODELS)
def test_tiny_config_learns(name):
  """Each model's loss falls on the tiny config (the train step without the loop's I/O)."""
  config = configs.get_config("tiny")
  config.schedule = "constant"
  task = sequence_processing.make_task(config)
  model = sequence_processing.make_model(config, name, task)
  state, _ = sequence_processing._init_state(config, model, task.length, 1)
  step = training.make_train_step(sequence_processing._loss_fn(model))
  losses = []
  for i in range(40):
    state, sums = step(state, task.batch(config.seed, i, config.batch_size))
    losses.append(sums["loss_sum"])
  losses = [float(x) for x in losses]
  assert np.mean(losses[-5:]) < 0.85 * np.mean(losses[:5]), losses


def test_run_writes_pngs_and_eval_json(tmp_path, check_png):
  workdir = str(tmp_path / "run")
  config = configs.get_config("tiny")
  config.models = ("cnn",)
  config.num_steps = 20
  config.benchmark.lengths = (8,)
  results = sequence_processing.run(config, workdir)
  for png in ("accuracy_vs_distance.png", "speed_memory_vs_length.png"):
    check_png(os.path.join(workdir, png))
  with open(os.path.join(workdir, "eval.json")) as f:
    written = json.load(f)
  cnn = written["models"]["cnn"]
  assert cnn["receptive_field"] == 5 and cnn["parameters"] == results["models"]["cnn"]["parameters"]
  assert len(cnn["accuracy_by_distance"]) == config.task.length - 1
  assert cnn["benchmark"][0]["forward_peak_bytes"] > 0


@pytest.mark.slow
def test_tiny_run_learns_and_writes_results(tmp_path, check_png):
  workdir = str(tmp_path / "run")
  config = configs.get_config("tiny")
  results = sequence_processing.run(config, workdir)
  assert set(results["models"]) == {"rnn", "cnn", "attention"}
  for name, result in results["models"].items():
    log = training.read_jsonl(os.path.join(workdir, name, "metrics.jsonl"))
    losses = [row["loss"] for row in log if row.get("split") == "train"]
    assert losses[-1] < 0.9 * losses[0], f"{name} did not learn: {losses}"
    assert sorted(result["accuracy_by_distance"]) == list(range(1, config.task.length))
    assert result["test_accuracy"] > 0.6, f"{name}: {result['test_accuracy']}"  # chance 0.5
    lengths = [row["length"] for row in result["benchmark"]]
    assert lengths == list(config.benchmark.lengths)
    for row in result["benchmark"]:
      assert row["examples_per_second"] > 0 and row["forward_peak_bytes"] > 0
  assert results["models"]["cnn"]["receptive_field"] == 5
  for png in ("accuracy_vs_distance.png", "speed_memory_vs_length.png"):
    check_png(os.path.join(workdir, png))
  with open(os.path.join(workdir, "eval.json")) as f:
    written = json.load(f)
  assert written["models"]["rnn"]["parameters"] == results["models"]["rnn"]["parameters"]


@pytest.mark.parametrize("field,value,match", [
    ("models", ("rnn", "mlp"), r"config.models must be a non-empty tuple of distinct"),
    ("cnn.kernel_size", 1, r"config.cnn.kernel_size must be > 1, got 1"),
    ("rnn.cell_type", "rnn", r"config.rnn.cell_type must be one of"),
    ("attention.num_heads", 3, r"config.attention.width \(16\) must be divisible"),
    ("benchmark.lengths", (8, 1), r"config.benchmark.lengths must be a non-empty tuple"),
    ("eval.learned_threshold", 0.4, r"config.eval.learned_threshold must be > 0.5"),
])
def test_bad_config_fields_are_named(field, value, match):
  config = configs.get_config("tiny")
  config.update_from_flattened_dict({field: value})
  with pytest.raises(ValueError, match=match):
    configs.validate(config)


def test_unknown_preset():
  with pytest.raises(ValueError, match="unknown sequence_processing preset 'huge'"):
    configs.get_config("huge")
