"""Configs for experiments/transformer_seq2seq.py: the Transformer encoder-decoder on dates,
next to the RNN with attention trained with the same budget in the same run.

  --config=experiments/configs/transformer_seq2seq.py        default: a 2-core CPU, ~15 min
  --config=experiments/configs/transformer_seq2seq.py:gpu    Transformer-base-like, longer
  --config=experiments/configs/transformer_seq2seq.py:tiny   seconds; used by the tests
"""

import ml_collections

from attention_jax import training
from experiments.configs import seq2seq as seq2seq_configs


def get_config(preset: str = "default") -> ml_collections.ConfigDict:
  config = training.default_training_config()
  config.preset = preset

  # Also train the RNN with additive attention of experiments/seq2seq.py in the same run:
  # config.rnn holds its model and optimiser (seq2seq's config of the same preset); its data,
  # batch size, steps and seed are always this config's, so both get the same budget.
  config.compare_rnn = True

  config.data = ml_collections.ConfigDict()
  config.data.dataset_config = "default"  # "small" for quick runs; see attention_jax.data.dates
  config.data.data_dir = ml_collections.config_dict.placeholder(str)  # None: TFDS default dir
  config.data.max_input_len = 72  # sized for test_long (sources up to 65 characters)
  config.data.max_target_len = 20  # ISO 8601 target + EOS

  config.model = ml_collections.ConfigDict()
  config.model.features = 128
  config.model.num_heads = 4
  config.model.mlp_dim = 256
  config.model.num_layers = 2  # encoder layers; the decoder has as many
  config.model.positions = "sinusoidal"  # or "learned", "rotary"
  config.model.pre_norm = False  # post-norm, as in the lecture and Vaswani et al.
  config.model.dropout_rate = 0.0
  config.model.dtype = "float32"  # or "bfloat16" (GPU/TPU)

  config.eval = ml_collections.ConfigDict()
  config.eval.batch_size = 250
  config.eval.beam_size = 1  # 1 = greedy; > 1 = beam search with length penalty
  config.eval.length_penalty = 0.6  # GNMT alpha, Vaswani et al.
  config.eval.max_examples = 0  # 0 = the whole split
  config.eval.num_heatmaps = 4

  # The same budget as the RNN's default config (experiments/configs/seq2seq.py).
  config.batch_size = 64
  config.num_steps = 2500
  config.learning_rate = 1e-3
  config.optimizer = "adamw"
  config.weight_decay = 0.01
  config.schedule = "warmup_cosine"
  config.warmup_steps = 200
  config.end_learning_rate = 1e-5
  config.grad_clip_norm = 1.0
  config.log_every = 100
  config.checkpoint_every = 500
  config.eval_every = 0

  rnn_preset = preset
  if preset == "default":
    pass
  elif preset == "tiny":
    config.data.dataset_config = "small"
    config.model.features = 32
    config.model.num_heads = 2
    config.model.mlp_dim = 64
    config.model.num_layers = 1
    config.batch_size = 32
    config.num_steps = 40
    config.learning_rate = 3e-3
    config.warmup_steps = 5
    config.log_every = 10
    config.checkpoint_every = 20
    config.eval.batch_size = 50
    config.eval.max_examples = 100
    config.eval.num_heatmaps = 1
  elif preset == "gpu":
    config.model.features = 512
    config.model.num_heads = 8
    config.model.mlp_dim = 2048
    config.model.num_layers = 6
    config.model.dropout_rate = 0.1
    config.model.dtype = "bfloat16"
    config.batch_size = 256
    config.num_steps = 20_000
    config.learning_rate = 5e-4
    config.warmup_steps = 2000
    config.checkpoint_every = 2000
    config.log_every = 200
    config.eval.beam_size = 4
  else:
    raise ValueError(
        f"unknown transformer_seq2seq preset {preset!r}; valid: default, tiny, gpu")
  config.rnn = seq2seq_configs.get_config(rnn_preset)
  config.rnn.attentions = ("additive",)
  return config
