"""Parameter counts of the published presets, traced with jax.eval_shape (nothing allocated)."""

import pytest

from attention_jax.models import presets
from attention_jax.models import transformer


@pytest.mark.parametrize("name", ["gpt2_small", "gpt2_medium", "bert_base", "bert_large"])
def test_exact_counts(name):
  assert presets.count(name) == presets.PRESETS[name][2]


def test_gpt2_small_and_bert_base_exact_numbers():
  assert presets.count("gpt2_small") == 124_439_808
  assert presets.count("bert_base") == 109_482_240


def test_one_layer_of_gpt2_small_holds_7087872():
  shapes = transformer.parameter_shapes(*_build("gpt2_small"))
  assert transformer.count_parameters(shapes["decoder"]["layer_0"]) == 7_087_872


def _build(name):
  model, inputs = presets.build(name)
  return (model, *inputs)


@pytest.mark.parametrize("name", ["gpt2_large", "transformer_big"])
def test_within_one_percent(name):
  ours, published = presets.count(name), presets.PRESETS[name][2]
  assert abs(ours - published) / published < 0.01


def test_transformer_base_within_three_percent():
  # The paper's "65M" is rounded and its vocabulary "about 37000"; with exactly 37000 shared
  # tokens the shapes of Table 3 give 63.08M, 2.95% below.
  assert presets.count("transformer_base") == 63_082_496
  assert abs(presets.count("transformer_base") - 65e6) / 65e6 < 0.03


def test_unknown_preset():
  with pytest.raises(ValueError, match="unknown preset 'gpt5'"):
    presets.config("gpt5")
