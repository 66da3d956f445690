"""User errors of configs, flags and workdirs: one line naming the field and the fix, exit
status 2, no traceback, and nothing created (no workdir, no prepared data)."""

import os
import subprocess
import sys

import pytest

from attention_jax import training
from attention_jax.data import dates
from attention_jax.errors import ConfigError
from attention_jax.training import launch
from experiments.seq2seq import config as seq2seq_config
from experiments.transformer_seq2seq import config as transformer_config

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))


def test_an_unknown_field_names_the_closest_fields():
  config = seq2seq_config.get_config("tiny")
  assert launch.unknown_field_message(config, "learning_rte") == (
      "config.learning_rte is not a field of the config; did you mean config.learning_rate or "
      "config.end_learning_rate?")
  assert launch.unknown_field_message(config, "model.hiden_dim") == (
      "config.model.hiden_dim is not a field of config.model; did you mean "
      "config.model.hidden_dim?")
  assert launch.unknown_field_message(config, "model.zzz").startswith(
      "config.model.zzz is not a field of config.model; its fields are attention_dim, ")
  assert launch.unknown_field_message(config, "model.hidden_dim") is None


@pytest.mark.parametrize("module", [seq2seq_config, transformer_config])
@pytest.mark.parametrize("field,value,message", [
    ("seed", -1, "config.seed must be in [0, 2**32), got -1"),
    ("data.max_input_len", 3, "config.data.max_input_len must be >= 62 (the longest source of "
     "dates_translation/small, in test_long), got 3"),
    ("data.max_target_len", 19, "config.data.max_target_len must be >= 20 (the longest target "
     "of dates_translation/small plus EOS), got 19"),
    ("mesh.data", 2, "config.mesh data * fsdp * sequence = 2 * 1 * 1 = 2 must equal the number "
     "of devices, 1"),
])
def test_validate_names_the_field_before_any_data(module, field, value, message):
  config = module.get_config("tiny")
  config.unlock()
  parent, _, name = field.rpartition(".")
  (config[parent] if parent else config)[name] = value
  with pytest.raises(ConfigError) as err:
    module.validate(config)
  assert str(err.value).startswith(message)


def test_the_data_lengths_known_before_preparing_match_the_prepared_data():
  for name in ("small",):  # "default" holds the same bound by construction but test_long's draw
    records = [dates.decode_example(r) for split in dates.load_dates(None, config=name).values()
               for r in split]
    longest = (max(len(r["source"]) for r in records), max(len(r["target"]) for r in records))
    assert dates.required_lengths(name) == (longest[0], longest[1] + 1)
  config = seq2seq_config.get_config("tiny")
  config.data.max_input_len = 62
  seq2seq_config.validate(config)  # the exact bound fits


def test_batch_size_must_split_over_the_mesh(monkeypatch):
  monkeypatch.setattr(training.config.jax, "device_count", lambda: 8)
  config = training.default_training_config()
  config.batch_size = 30
  with pytest.raises(ConfigError, match=r"^config.batch_size must be a multiple of "
                     r"config.mesh.data \* config.mesh.fsdp = 8 \* 1 = 8 .*got 30$"):
    training.validate_training_config(config)
  config.mesh.data, config.mesh.sequence = 2, 4
  training.validate_training_config(config)  # rows split over 2 only


@pytest.mark.parametrize("workdir,message", [
    ("", "--workdir is empty; give the run's folder"),
    ("FILE", "--workdir=FILE is a file, not a folder; give a folder"),
    ("FILE/run", "--workdir=FILE/run cannot be created: "),
])
def test_check_workdir(tmp_path, monkeypatch, workdir, message):
  monkeypatch.chdir(tmp_path)
  (tmp_path / "FILE").write_text("x")
  with pytest.raises(ConfigError) as err:
    launch.check_workdir(workdir)
  assert str(err.value).startswith(message)
  assert sorted(os.listdir(tmp_path)) == ["FILE"]


def _experiment(tmp_path, *args, **env):
  """``python -m experiments.seq2seq`` (tiny) in ``tmp_path`` with its own TFDS data dir."""
  extra = env
  env = {k: v for k, v in os.environ.items() if k != launch.TRACEBACK_ENV}
  env.update(JAX_PLATFORMS="cpu", PYTHONPATH=ROOT, TFDS_DATA_DIR=str(tmp_path / "tfds"), **extra)
  return subprocess.run(
      [sys.executable, "-m", "experiments.seq2seq",
       f"--config={ROOT}/experiments/seq2seq/config.py:tiny", *args], cwd=tmp_path, env=env,
      capture_output=True, text=True, timeout=120)


def _assert_usage_error(proc, tmp_path, line):
  assert proc.returncode == 2, proc.stderr[-2000:]
  assert proc.stdout == ""
  assert proc.stderr == f"error: {line}\n"
  assert os.listdir(tmp_path) == []  # no workdir, no runs/, no prepared data


def test_cli_unknown_nested_field(tmp_path):
  proc = _experiment(tmp_path, "--config.model.hiden_dim=3", "--workdir=run")
  _assert_usage_error(proc, tmp_path, "config.model.hiden_dim is not a field of config.model; "
                      "did you mean config.model.hidden_dim?")


def test_cli_batch_not_splitting_over_the_devices(tmp_path):
  proc = _experiment(tmp_path, "--config.batch_size=30", "--workdir=run",
                     XLA_FLAGS="--xla_force_host_platform_device_count=8")
  _assert_usage_error(proc, tmp_path, "config.batch_size must be a multiple of config.mesh.data "
                      "* config.mesh.fsdp = 8 * 1 = 8 (the devices the rows split over), got 30")


def test_cli_empty_workdir(tmp_path):
  proc = _experiment(tmp_path, "--workdir=")
  _assert_usage_error(proc, tmp_path, "--workdir is empty; give the run's folder "
                      "(--workdir=runs/<name>) or leave the flag out for the default")


def test_cli_traceback_on_request(tmp_path):
  proc = _experiment(tmp_path, "--config.seed=-1", "--workdir=run", ATTENTION_JAX_TRACEBACK="1")
  assert proc.returncode != 0
  assert "Traceback (most recent call last)" in proc.stderr
  assert proc.stderr.rstrip().endswith("ConfigError: config.seed must be in [0, 2**32), got -1")
  assert os.listdir(tmp_path) == []
