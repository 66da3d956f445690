"""Configs for experiments/seq2seq.py: RNN encoder-decoder with and without attention.

  --config=experiments/configs/seq2seq.py          default: both models on a 2-core CPU
  --config=experiments/configs/seq2seq.py:quick    a short run that still shows both curves
  --config=experiments/configs/seq2seq.py:gpu      bigger models, longer training (GPU/TPU)
  --config=experiments/configs/seq2seq.py:tiny     seconds; used by the tests
"""

import ml_collections

from attention_jax import training


def get_config(preset: str = "default") -> ml_collections.ConfigDict:
  config = training.default_training_config()
  config.preset = preset

  # The models compared with the same budget: "none" (one fixed context vector), "additive"
  # (Bahdanau), "dot" (Luong's general score).
  config.attentions = ("none", "additive")

  config.data = ml_collections.ConfigDict()
  config.data.dataset_config = "default"  # "small" for quick runs; see attention_jax.data.dates
  config.data.data_dir = ml_collections.config_dict.placeholder(str)  # None: TFDS default dir
  config.data.max_input_len = 72  # sized for test_long (sources up to 65 characters)
  config.data.max_target_len = 20  # ISO 8601 target + EOS

  config.model = ml_collections.ConfigDict()
  config.model.embed_dim = 64
  config.model.hidden_dim = 128
  config.model.attention_dim = 128
  config.model.cell_type = "gru"
  config.model.dropout_rate = 0.0

  config.eval = ml_collections.ConfigDict()
  config.eval.batch_size = 250
  config.eval.beam_size = 1  # 1 = greedy
  config.eval.max_examples = 0  # 0 = the whole split
  config.eval.num_heatmaps = 6

  config.batch_size = 64
  config.num_steps = 2500
  config.learning_rate = 3e-3
  config.optimizer = "adam"
  config.schedule = "warmup_cosine"
  config.warmup_steps = 100
  config.end_learning_rate = 1e-4
  config.grad_clip_norm = 1.0
  config.log_every = 100
  config.checkpoint_every = 500
  config.eval_every = 0

  if preset == "default":
    pass
  elif preset == "quick":
    config.num_steps = 600
    config.eval.max_examples = 500
  elif preset == "tiny":
    config.data.dataset_config = "small"
    config.model.embed_dim = 16
    config.model.hidden_dim = 32
    config.model.attention_dim = 32
    config.batch_size = 32
    config.num_steps = 40
    config.learning_rate = 1e-2
    config.warmup_steps = 5
    config.log_every = 10
    config.checkpoint_every = 10
    config.eval.batch_size = 50
    config.eval.max_examples = 100
    config.eval.num_heatmaps = 2
  elif preset == "gpu":
    config.attentions = ("none", "additive", "dot")
    config.model.embed_dim = 128
    config.model.hidden_dim = 512
    config.model.attention_dim = 512
    config.model.cell_type = "lstm"
    config.batch_size = 256
    config.num_steps = 20_000
    config.learning_rate = 2e-3
    config.warmup_steps = 500
    config.checkpoint_every = 2000
    config.log_every = 200
    config.eval.beam_size = 4
  else:
    raise ValueError(f"unknown seq2seq preset {preset!r}; valid: default, quick, tiny, gpu")
  return config
