"""Configs for experiments/transformer_seq2seq.py: the Transformer encoder-decoder on dates,
next to the RNN with attention trained with the same budget in the same run.

  --config=experiments/configs/transformer_seq2seq.py        default: a 2-core CPU, ~15 min
  --config=experiments/configs/transformer_seq2seq.py:quick  600 steps, 500 test examples
  --config=experiments/configs/transformer_seq2seq.py:gpu    Transformer-base-like, longer
  --config=experiments/configs/transformer_seq2seq.py:tiny   seconds; used by the tests
"""

import copy

import ml_collections

from attention_jax import training
from experiments.configs import seq2seq as seq2seq_configs


PRESETS = ("default", "quick", "tiny", "gpu")


def get_config(preset: str = "default") -> ml_collections.ConfigDict:
  # The RNN with additive attention of experiments/seq2seq.py, trained in the same run
  # (``compare_rnn``): config.rnn holds its model and optimiser (seq2seq's config of the same
  # preset). The data, evaluation and budget (batch size, steps, logging) come from that same
  # config, so both models see the same examples for the same number of steps.
  if preset not in PRESETS:
    raise ValueError(
        f"unknown transformer_seq2seq preset {preset!r}; valid: {', '.join(PRESETS)}")
  rnn = seq2seq_configs.get_config(preset)
  rnn.attentions = ("additive",)

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
