"""Config defaults, validation messages, JSON round trip and absl flags."""

import json

import jax

import ml_collections
import pytest
from absl import flags

from attention_jax import training


_FIELDS = ("seed", "num_steps", "batch_size", "learning_rate", "optimizer", "momentum",
           "adam_b1", "adam_b2", "adam_eps", "schedule", "warmup_steps", "end_learning_rate",
           "grad_clip_norm", "weight_decay", "log_every", "checkpoint_every", "keep_checkpoints",
           "eval_every", "async_checkpointing")


def _config(**changes):
  config = training.default_training_config().to_dict()  # plain dict: any value type
  config.update(changes)
  return config


def test_defaults_have_every_standard_field_and_validate():
  config = training.default_training_config()
  assert isinstance(config, ml_collections.ConfigDict)
  for field in _FIELDS + ("mesh",):
    assert field in config, field
  training.validate_training_config(config)  # does not raise
  training.validate_training_config(config.to_dict())


@pytest.mark.parametrize(
    "field,value,message",
    [
        ("seed", 1.0, "config.seed must be an integer, got 1.0"),
        ("seed", False, "config.seed must be an integer, got False"),
        ("seed", -1, "config.seed must be in [0, 2**32), got -1"),
        ("seed", 2**32, "config.seed must be in [0, 2**32), got 4294967296"),
        ("max_loss", -1.0, "config.max_loss must be >= 0 (0 or None: no divergence guard), "
         "got -1.0"),
        ("num_steps", 0, "config.num_steps must be > 0, got 0"),
        ("num_steps", 2.5, "config.num_steps must be an integer, got 2.5"),
        ("num_steps", "10", "config.num_steps must be an integer, got '10'"),
        ("batch_size", True, "config.batch_size must be an integer, got True"),
        ("batch_size", -4, "config.batch_size must be > 0, got -4"),
        ("log_every", 0, "config.log_every must be > 0, got 0"),
        ("checkpoint_every", True, "config.checkpoint_every must be an integer, got True"),
        ("checkpoint_every", 0, "config.checkpoint_every must be > 0, got 0"),
        ("keep_checkpoints", 0, "config.keep_checkpoints must be > 0, got 0"),
        ("warmup_steps", -3, "config.warmup_steps must be >= 0, got -3"),
        ("warmup_steps", False, "config.warmup_steps must be an integer, got False"),
        ("eval_every", -1, "config.eval_every must be >= 0, got -1"),
        ("eval_every", 1.5, "config.eval_every must be an integer, got 1.5"),
        ("learning_rate", -1.0, "config.learning_rate must be > 0, got -1.0"),
        ("learning_rate", 0, "config.learning_rate must be > 0, got 0"),
        ("learning_rate", float("nan"), "config.learning_rate must be finite, got nan"),
        ("learning_rate", float("inf"), "config.learning_rate must be finite, got inf"),
        ("learning_rate", True, "config.learning_rate must be a number, got True"),
        ("learning_rate", "1e-3", "config.learning_rate must be a number, got '1e-3'"),
        ("momentum", 1.5, "config.momentum must be <= 1, got 1.5"),
        ("momentum", -0.1, "config.momentum must be >= 0, got -0.1"),
        ("adam_b1", 2, "config.adam_b1 must be <= 1, got 2"),
        ("adam_b2", -1e-3, "config.adam_b2 must be >= 0, got -0.001"),
        ("adam_eps", -1e-8, "config.adam_eps must be >= 0, got -1e-08"),
        ("end_learning_rate", -1.0, "config.end_learning_rate must be >= 0, got -1.0"),
        ("weight_decay", -0.1, "config.weight_decay must be >= 0, got -0.1"),
        ("grad_clip_norm", -0.5, "config.grad_clip_norm must be >= 0, got -0.5"),
        ("grad_clip_norm", "1.0", "config.grad_clip_norm must be a number, got '1.0'"),
        ("optimizer", "adamx",
         "config.optimizer must be one of 'adam', 'adamw', 'sgd', got 'adamx'"),
        ("schedule", "linear", "config.schedule must be one of 'constant', 'warmup_cosine', "
         "'warmup_rsqrt', got 'linear'"),
        ("async_checkpointing", 1, "config.async_checkpointing must be True or False, got 1"),
        ("async_checkpointing", None,
         "config.async_checkpointing must be True or False, got None"),
    ],
)
def test_bad_field_raises_value_error_naming_field_and_value(field, value, message):
  with pytest.raises(ValueError) as err:
    training.validate_training_config(_config(**{field: value}))
  assert str(err.value) == message


@pytest.mark.parametrize("field,value", [("grad_clip_norm", None), ("grad_clip_norm", 0),
                                         ("weight_decay", 0), ("momentum", 0), ("momentum", 1),
                                         ("eval_every", 0), ("seed", 0), ("seed", 2**32 - 1),
                                         ("max_loss", None), ("max_loss", 0),
                                         ("learning_rate", 1), ("async_checkpointing", False)])
def test_boundary_values_are_valid(field, value):
  training.validate_training_config(_config(**{field: value}))


@pytest.mark.parametrize("field", _FIELDS)
def test_missing_field_is_named(field):
  config = _config()
  del config[field]
  with pytest.raises(ValueError, match=rf"^config\.{field} is missing$"):
    training.validate_training_config(config)


def test_missing_field_of_a_config_dict_is_named():
  config = training.default_training_config()
  del config["keep_checkpoints"]
  with pytest.raises(ValueError, match=r"^config\.keep_checkpoints is missing$"):
    training.validate_training_config(config)


def test_other_fields_are_left_to_the_experiment():
  config = training.default_training_config()
  config.model = ml_collections.ConfigDict({"num_heads": 0, "kind": object()})
  training.validate_training_config(config)


def test_cross_field_checks():
  config = training.default_training_config()
  config.schedule = "warmup_rsqrt"
  config.warmup_steps = 0
  with pytest.raises(ValueError, match="^config.warmup_steps must be > 0 when config.schedule "
                                       "is 'warmup_rsqrt', got 0$"):
    training.validate_training_config(config)
  config.warmup_steps = 10
  training.validate_training_config(config)

  config = training.default_training_config()
  config.schedule, config.warmup_steps, config.num_steps = "warmup_cosine", 100, 100
  with pytest.raises(ValueError, match=r"^config.warmup_steps must be < config.num_steps "
                                       r"\(100\) when config.schedule is 'warmup_cosine', "
                                       r"got 100$"):
    training.validate_training_config(config)
  config.warmup_steps = 99
  training.validate_training_config(config)

  config = training.default_training_config()
  config.weight_decay = 0.1
  with pytest.raises(ValueError, match="^config.weight_decay must be 0 with config.optimizer "
                                       "'adam'.*, got 0.1$"):
    training.validate_training_config(config)
  config.optimizer = "adamw"
  training.validate_training_config(config)
  config.optimizer = "sgd"
  training.validate_training_config(config)


def test_mesh_is_checked_against_the_devices():
  config = training.default_training_config()
  config.mesh.data = jax.device_count() + 1
  with pytest.raises(ValueError, match="must equal the number of devices"):
    training.validate_training_config(config)


def test_config_json_round_trip(tmp_path):
  config = training.default_training_config()
  config.model = ml_collections.ConfigDict({"dims": (4, 8), "name": "mlp"})
  path = tmp_path / "sub" / "config.json"
  training.save_config_json(config, path)
  on_disk = json.loads(path.read_text())
  assert on_disk["learning_rate"] == config.learning_rate
  assert on_disk["model"] == {"dims": [4, 8], "name": "mlp"}
  loaded = training.load_config_json(path)
  assert loaded.optimizer == "adam" and loaded.model.name == "mlp"
  assert [p.name for p in path.parent.iterdir()] == ["config.json"]  # no temp file left


@pytest.mark.filterwarnings("ignore:the load_module:DeprecationWarning")
def test_define_config_flags_reads_a_config_file_with_overrides(tmp_path):
  config_file = tmp_path / "my_config.py"
  config_file.write_text(
      "from attention_jax import training\n"
      "def get_config():\n"
      "  config = training.default_training_config()\n"
      "  config.hidden = 16\n"
      "  return config\n")
  argv = [
      "prog", f"--config={config_file}", "--workdir=/tmp/run", "--config.num_steps=7",
      "--config.learning_rate=0.5", "--config.hidden=32"
  ]
  flag_values = flags.FlagValues()
  config_flag, workdir_flag = training.define_config_flags(flag_values=flag_values,
                                                           sys_argv=argv)
  flag_values(argv)
  config = config_flag.value
  assert workdir_flag.value == "/tmp/run"
  assert (config.num_steps, config.learning_rate, config.hidden) == (7, 0.5, 32)
  training.validate_training_config(config)
