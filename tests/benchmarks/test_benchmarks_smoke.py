"""The benchmark scripts run (tiny sizes; their timings are not checked) and refuse to print a
ratio measured on a busy machine."""

import sys

import pytest

from benchmarks import attention
from benchmarks import load
from benchmarks import train_step


def test_a_ratio_from_a_busy_machine_is_not_printed(monkeypatch):
  monkeypatch.setattr(load.os, "cpu_count", lambda: 2)
  monkeypatch.setattr(load.os, "getloadavg", lambda: (1.7, 1.0, 1.0))
  guard = load.Guard(allow=False)
  guard.start()
  assert guard.ratio(3.0, 2.0) == "load too high"
  assert load.Guard(allow=True).ratio(3.0, 2.0) == "1.50x"
  monkeypatch.setattr(load.os, "getloadavg", lambda: (0.6, 1.0, 1.0))
  guard.start()
  assert guard.ratio(3.0, 2.0) == "1.50x"
  assert guard.describe() == "load average 0.60 before, 0.60 after"


@pytest.mark.parametrize("module,argv,expect", [
    (attention, ["--lengths", "32", "--repeats", "1", "--peers", "jax.nn", "--causal", "yes",
                 "--batch", "1", "--heads", "2", "--head-dim", "8"], "L=32"),
    (train_step, ["--preset", "tiny", "--rounds", "1", "--steps", "1"], "tokens/s"),
])
def test_the_benchmark_scripts_run(module, argv, expect, monkeypatch, capsys):
  monkeypatch.setattr(sys, "argv", [module.__name__] + argv)
  module.main()
  out = capsys.readouterr().out
  assert expect in out and "load average" in out


@pytest.mark.parametrize("only", ["ours", "torch"])
def test_train_step_times_one_framework_alone(only, monkeypatch, capsys, tmp_path):
  """``--only``: one side built, timed and written, no ratio."""
  import json
  if only == "torch":
    pytest.importorskip("torch")
  out = tmp_path / "result.json"
  monkeypatch.setattr(sys, "argv", ["train_step", "--preset", "tiny", "--rounds", "1",
                                    "--steps", "1", "--only", only, "--out", str(out)])
  train_step.main()
  assert f"parameters: {only} " in capsys.readouterr().out
  result = json.loads(out.read_text())
  assert list(result["parameters"]) == [only] and result[f"{only} tokens/s"] > 0
  assert "ratio ours/torch" not in result and result["single_malloc_arena"] is False


@pytest.mark.slow  # the driver runs in the default suite with the LM (above)
@pytest.mark.parametrize("experiment", ["seq2seq", "captioning"])
def test_train_step_runs_each_experiment_on_our_side_alone(experiment, monkeypatch, capsys,
                                                            tmp_path):
  """``--experiment`` without PyTorch (as where it is not installed): the experiment's own step,
  its parameter count, examples/s and the JSON."""
  import json
  out = tmp_path / "result.json"
  monkeypatch.setattr(train_step, "torch", None)
  monkeypatch.setattr(sys, "argv", ["train_step", "--experiment", experiment, "--preset", "tiny",
                                    "--rounds", "1", "--steps", "1", "--out", str(out)])
  train_step.main()
  printed = capsys.readouterr().out
  assert f"{experiment} preset 'tiny'" in printed and "examples/s" in printed
  assert "torch" not in printed.split("parameters:")[1].split("\n")[0]
  result = json.loads(out.read_text())
  assert result["experiment"] == experiment and result["parameters"]["ours"] > 0
  assert result["ours examples/s"] > 0 and "ratio ours/torch" not in result


@pytest.mark.slow  # a fresh process: the host devices must be set before JAX starts
@pytest.mark.parametrize("experiment", ["transformer_lm", "seq2seq"])
def test_train_step_runs_ours_data_parallel_over_host_devices(experiment, tmp_path):
  import json
  import subprocess
  out = tmp_path / "result.json"
  subprocess.run([sys.executable, "-m", "benchmarks.train_step", "--experiment", experiment,
                  "--preset", "tiny", "--host-devices", "2", "--rounds", "1", "--steps", "1",
                  "--allow-load", "--out", str(out)], check=True, capture_output=True,
                 timeout=600)
  result = json.loads(out.read_text())
  assert result["jax_devices"] == 2
  assert next(v for k, v in result.items() if k.startswith("ours ") and k.endswith("/s")) > 0
