"""The README's demo learns to reverse and its attention map is the anti-diagonal."""

import json

import pytest

from experiments import demo


@pytest.mark.slow  # make test-all; a learning curve, ~40 s
def test_demo_learns_reversal_through_attention(tmp_path, check_png):
  result = demo.run(str(tmp_path), steps=250, length=8, seed=1)
  assert result["test_accuracy"] > 0.95
  # Each output attends mostly to its mirrored input: the only route for the information.
  assert result["mean_attention_on_mirrored_position"] > 0.5
  check_png(tmp_path / "attention_map.png")
  with open(tmp_path / "eval.json") as f:
    assert json.load(f)["test_accuracy"] == result["test_accuracy"]
