"""``benchmarks/accelerator.py`` (the one command for a lent GPU/TPU) runs end to end on any backend
at tiny sizes and writes its JSON and markdown table; its FLOP counts follow the usual convention."""

import json
import types

import pytest

from benchmarks import accelerator


def test_the_smoke_run_writes_a_table_and_json(tmp_path, capsys):
  accelerator.main(["--smoke", "--out", str(tmp_path)])
  result = json.loads((tmp_path / "accelerator.json").read_text())
  timed = [r for r in result["attention"] if "ms" in r]
  assert {r["column"] for r in timed} >= {"ours", "jax.nn"}
  assert {(r["causal"], r["kind"]) for r in timed} == {
      (c, k) for c in (False, True) for k in ("fwd", "fwd+bwd")}
  assert all(r["tflops"] > 0 for r in timed)
  assert result["training"] is None
  table = (tmp_path / "accelerator.md").read_text()
  assert "| 128 | 2 | causal | ours |" in table
  assert "load average" in capsys.readouterr().out


@pytest.mark.slow  # the LM's gpu preset compiles for about half a minute on a CPU
def test_the_smoke_run_times_a_named_gpu_preset_training_step(tmp_path):
  accelerator.main(["--smoke", "--lengths", "128", "--train", "transformer_lm", "--out",
                    str(tmp_path)])
  (row,) = json.loads((tmp_path / "accelerator.json").read_text())["training"]
  assert "error" not in row, row
  assert row["experiment"] == "transformer_lm" and row["per_step"] == 2 * 256  # batch 2 x context
  assert row["per_s"] > 0 and row["xla_flops_per_step"] > 0 and row["parameters"] > 10**6
  assert "| transformer_lm |" in (tmp_path / "accelerator.md").read_text()


def test_flops_and_peaks():
  # Forward: two matmuls of 2 * L^2 * D per head; causal half; backward five more (3.5x).
  assert accelerator.attention_flops(2, 3, 8, 4, False, False) == 4 * 2 * 3 * 64 * 4
  assert accelerator.attention_flops(2, 3, 8, 4, True, True) == pytest.approx(
      0.5 * 3.5 * 4 * 2 * 3 * 64 * 4)
  assert accelerator.peak_tflops(types.SimpleNamespace(device_kind="NVIDIA H200")) == 989.0
  assert accelerator.peak_tflops(types.SimpleNamespace(device_kind="TPU v5 lite")) == 197.0
  assert accelerator.peak_tflops(types.SimpleNamespace(device_kind="cpu")) is None
