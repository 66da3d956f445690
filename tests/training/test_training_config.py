"""Config defaults, validation messages, JSON round trip and absl flags."""

import json

import ml_collections
import pytest
from absl import flags

from attention_jax import training


def test_defaults_have_every_standard_field_and_validate():
  config = training.default_training_config()
  for field in ("seed", "num_steps", "batch_size", "learning_rate", "optimizer", "schedule",
                "warmup_steps", "grad_clip_norm", "weight_decay", "log_every",
                "checkpoint_every", "keep_checkpoints", "eval_every"):
    assert field in config, field
  assert isinstance(config, ml_collections.ConfigDict)
  training.validate_config(config)  # does not raise
  assert set(training.TRAINING_SCHEMA) <= set(config.keys())


@pytest.mark.parametrize(
    "field,value,message",
    [
        ("learning_rate", -1.0, "config.learning_rate must be > 0, got -1.0"),
        ("num_steps", 0, "config.num_steps must be > 0, got 0"),
        ("num_steps", 2.5, "config.num_steps must be an integer, got 2.5"),
        ("batch_size", True, "config.batch_size must be an integer, got True"),
        ("warmup_steps", -3, "config.warmup_steps must be >= 0, got -3"),
        ("grad_clip_norm", -0.5, "config.grad_clip_norm must be >= 0, got -0.5"),
        ("learning_rate", float("nan"), "config.learning_rate must be finite, got nan"),
        ("momentum", 1.5, "config.momentum must be <= 1, got 1.5"),
        ("optimizer", "adamx",
         "config.optimizer must be one of 'adam', 'adamw', 'sgd', got 'adamx'"),
        ("schedule", "linear", "config.schedule must be one of 'constant', 'warmup_cosine', "
         "'warmup_rsqrt', got 'linear'"),
    ],
)
def test_bad_field_raises_value_error_naming_field_and_value(field, value, message):
  config = training.default_training_config().to_dict()  # plain dict: any value type
  config[field] = value
  with pytest.raises(ValueError) as err:
    training.validate_config(config)
  assert str(err.value) == message


def test_grad_clip_norm_none_is_allowed():
  config = training.default_training_config()
  config.grad_clip_norm = None
  training.validate_config(config)


def test_missing_field_is_named():
  config = training.default_training_config().to_dict()
  del config["keep_checkpoints"]
  with pytest.raises(ValueError, match=r"^config\.keep_checkpoints is missing$"):
    training.validate_config(config)


def test_cross_field_checks():
  config = training.default_training_config()
  config.schedule = "warmup_rsqrt"
  config.warmup_steps = 0
  with pytest.raises(ValueError, match="config.warmup_steps must be > 0 when config.schedule"):
    training.validate_config(config)
  config = training.default_training_config()
  config.schedule, config.warmup_steps, config.num_steps = "warmup_cosine", 100, 100
  with pytest.raises(ValueError, match=r"config.warmup_steps must be < config.num_steps \(100\)"):
    training.validate_config(config)
  config = training.default_training_config()
  config.weight_decay = 0.1
  with pytest.raises(ValueError, match="config.weight_decay must be 0 with config.optimizer"):
    training.validate_config(config)
  config.optimizer = "adamw"
  training.validate_config(config)


def test_experiment_schema_with_nested_fields():
  config = training.default_training_config()
  config.model = ml_collections.ConfigDict({"num_heads": 0, "kind": "rnn"})
  schema = {
      **training.TRAINING_SCHEMA,
      "model.num_heads": (training.is_int(), training.greater_than(0)),
      "model.kind": (training.one_of("rnn", "transformer"),),
  }
  with pytest.raises(ValueError, match=r"^config\.model\.num_heads must be > 0, got 0$"):
    training.validate_config(config, schema)
  config.model.num_heads = 4
  training.validate_config(config, schema)
  with pytest.raises(ValueError, match=r"^config\.model\.dim is missing$"):
    training.validate_config(config, {"model.dim": (training.is_int(),)})


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
  training.validate_config(config)
