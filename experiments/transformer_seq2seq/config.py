r"""Config of experiments/transformer_seq2seq: the Transformer encoder-decoder on dates, next to
the RNN with additive attention trained with the same budget in the same run.

  python -m experiments.transformer_seq2seq --config=experiments/transformer_seq2seq/config.py \
      --workdir=runs/transformer_seq2seq

Presets (``config.py:<preset>``):
  default  a 2-core CPU, ~12 min idle for both models (327 s + 301 s of training). Expected
           (seed 0, the lock): test exact match 99.75% for the Transformer (rotary positions),
           99.4% for the RNN; on ``test_long`` (inputs longer than any seen in training) 98.45%
           and 98.5%. With
           ``--config.model.positions=sinusoidal`` the Transformer falls to ~44% on test_long.
  quick    600 steps, 500 test examples.
  tiny     seconds; the tests use it.
  gpu      Transformer-base-like (6+6 layers, width 512, bf16), longer training (GPU/TPU).

``--config.packing.enabled`` trains on packed rows of pairs (``benchmarks/packing.py`` measures
it against the padded batches).
"""

import copy

import ml_collections

from attention_jax import training
from attention_jax.tasks import dates_translation


PRESETS = ("default", "quick", "tiny", "gpu")


def get_config(preset: str = "default") -> ml_collections.ConfigDict:
  # The RNN with additive attention of experiments/seq2seq, trained in the same run
  # (``compare_rnn``): config.rnn holds its model and optimiser (the task's RNN config of the
  # same preset). The data, evaluation and budget (batch size, steps, logging) come from that same
  # config, so both models see the same examples for the same number of steps.
  if preset not in PRESETS:
    raise ValueError(
        f"unknown transformer_seq2seq preset {preset!r}; valid: {', '.join(PRESETS)}")
  rnn = dates_translation.rnn_config(preset)

  config = training.default_training_config()
  config.preset = preset
  config.compare_rnn = True
  config.rnn = rnn
  config.data = copy.deepcopy(rnn.data)
  config.eval = copy.deepcopy(rnn.eval)
  config.eval.length_penalty = 0.6  # GNMT alpha of beam search, Vaswani et al.
  config.eval.num_heatmaps = min(rnn.eval.num_heatmaps, 4)
  for field in ("batch_size", "num_steps", "log_every", "checkpoint_every", "eval_every",
                "grad_clip_norm"):
    config[field] = rnn[field]

  config.model = ml_collections.ConfigDict()
  config.model.features = 128
  config.model.num_heads = 4
  config.model.mlp_dim = 256
  config.model.num_layers = 2  # encoder layers; the decoder has as many
  # Rotary: relative positions carry over to inputs longer than any in training (97.85% exact on
  # test_long against 43.55% with "sinusoidal" absolute positions; README). Or "learned".
  config.model.positions = "rotary"
  config.model.pre_norm = False  # post-norm, as in the lecture and Vaswani et al.
  config.model.dropout_rate = 0.0
  config.model.dtype = "float32"  # or "bfloat16" (GPU/TPU)

  # Packed training batches: several source/target pairs per row (segment ids keep them apart)
  # instead of one pair padded to data.max_input_len / max_target_len. `rows` per step, 0 = as
  # many as hold about batch_size pairs, so a step sees as many examples either way.
  config.packing = ml_collections.ConfigDict()
  config.packing.enabled = False
  config.packing.target_length = 64
  config.packing.rows = 0

  config.learning_rate = 1e-3
  config.optimizer = "adamw"
  config.weight_decay = 0.01
  config.schedule = "warmup_cosine"
  config.warmup_steps = 200
  config.end_learning_rate = 1e-5

  if preset == "tiny":
    config.model.features = 32
    config.model.num_heads = 2
    config.model.mlp_dim = 64
    config.model.num_layers = 1
    config.learning_rate = 3e-3
    config.warmup_steps = 5
    config.eval.num_heatmaps = 1
  elif preset == "gpu":
    config.model.features = 512
    config.model.num_heads = 8
    config.model.mlp_dim = 2048
    config.model.num_layers = 6
    config.model.dropout_rate = 0.1
    config.model.dtype = "bfloat16"
    config.learning_rate = 5e-4
    config.warmup_steps = 2000
  return config


def validate(config) -> None:
  """Raises ValueError naming the first bad field (the RNN's fields only when it is trained)."""
  training.validate_training_config(config)
  dates_translation.validate_data_and_eval(config)
  m = config.model
  for field in ("features", "num_heads", "mlp_dim", "num_layers"):
    if isinstance(m[field], bool) or not isinstance(m[field], int) or m[field] <= 0:
      raise ValueError(f"config.model.{field} must be > 0, got {m[field]!r}")
  if m.features % m.num_heads:
    raise ValueError(f"config.model.features ({m.features}) must be divisible by "
                     f"config.model.num_heads ({m.num_heads})")
  choices = {"positions": ("sinusoidal", "learned", "rotary"), "dtype": ("float32", "bfloat16")}
  for field, valid in choices.items():
    if m[field] not in valid:
      raise ValueError(f"config.model.{field} must be one of {', '.join(map(repr, valid))}, "
                       f"got {m[field]!r}")
  if not 0 <= m.dropout_rate <= 0.9:
    raise ValueError(f"config.model.dropout_rate must be in [0, 0.9], got {m.dropout_rate!r}")
  p = config.packing
  if p.target_length < config.data.max_target_len:
    raise ValueError(f"config.packing.target_length ({p.target_length}) must be >= "
                     f"config.data.max_target_len ({config.data.max_target_len}): a row must hold "
                     f"the longest target")
  if p.rows < 0:
    raise ValueError(f"config.packing.rows must be >= 0 (0 = about batch_size pairs per step), "
                     f"got {p.rows!r}")
  if config.eval.length_penalty < 0:
    raise ValueError(f"config.eval.length_penalty must be >= 0, got {config.eval.length_penalty!r}")
