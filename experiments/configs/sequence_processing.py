"""Configs for experiments/sequence_processing.py: RNN vs 1D CNN vs self-attention.

  --config=experiments/configs/sequence_processing.py        default: a few minutes on a 2-core CPU
  --config=experiments/configs/sequence_processing.py:gpu    longer sequences and training
  --config=experiments/configs/sequence_processing.py:tiny   seconds; used by the tests

The three models are sized to about the same parameter count (~65k by default; eval.json records
the exact counts) and trained with the same budget (steps x batch size, optimiser, schedule).
"""

import ml_collections

from attention_jax import training


def get_config(preset: str = "default") -> ml_collections.ConfigDict:
  config = training.default_training_config()
  config.preset = preset
  config.models = ("rnn", "cnn", "attention")

  config.task = ml_collections.ConfigDict()
  config.task.length = 48  # distances 1 .. 47 are trained and tested
  config.task.num_symbols = 8
  config.task.mode = "recall"  # or "match" (is the marked symbol the last token? much harder)

  config.rnn = ml_collections.ConfigDict()
  config.rnn.cell_type = "gru"
  config.rnn.embed_dim = 32
  config.rnn.hidden_dim = 128
  config.rnn.num_layers = 1

  config.cnn = ml_collections.ConfigDict()
  config.cnn.width = 64
  config.cnn.depth = 4
  config.cnn.kernel_size = 4  # receptive field 1 + 4 * 3 = 13: sees distances up to 12
  config.cnn.dilation_base = 1  # 2 doubles the dilation per layer (receptive field 46)

  config.attention = ml_collections.ConfigDict()
  config.attention.width = 64
  config.attention.depth = 2
  config.attention.num_heads = 4
  config.attention.mlp_dim = 128
  # "reference" materialises the [length, length] weights: the O(n^2) memory of the lecture's
  # table. "flash" (blockwise, online softmax) keeps memory linear in the length.
  config.attention.implementation = "reference"

  config.eval = ml_collections.ConfigDict()
  config.eval.examples_per_distance = 200
  config.eval.batch_size = 500
  # "Learned" a distance: test accuracy at least this at that distance and every shorter one.
  config.eval.learned_threshold = 0.9

  config.benchmark = ml_collections.ConfigDict()
  config.benchmark.lengths = (64, 128, 256, 512, 1024)
  config.benchmark.batch_size = 16
  config.benchmark.timed_steps = 3

  config.batch_size = 64
  config.num_steps = 1000
  config.learning_rate = 2e-3
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
  elif preset == "tiny":
    config.task.length = 8
    config.task.num_symbols = 2
    config.rnn.embed_dim = 8
    config.rnn.hidden_dim = 16
    config.cnn.width = 16
    config.cnn.depth = 2
    config.cnn.kernel_size = 3
    config.attention.width = 16
    config.attention.depth = 1
    config.attention.num_heads = 2
    config.attention.mlp_dim = 32
    config.eval.examples_per_distance = 20
    config.eval.batch_size = 70
    config.benchmark.lengths = (8, 16)
    config.benchmark.batch_size = 2
    config.benchmark.timed_steps = 1
    config.batch_size = 32
    config.num_steps = 60
    config.learning_rate = 1e-2
    config.warmup_steps = 5
    config.log_every = 20
    config.checkpoint_every = 60
  elif preset == "gpu":
    config.task.length = 256
    config.rnn.hidden_dim = 256
    config.cnn.width = 128
    config.cnn.depth = 8
    config.attention.width = 128
    config.attention.depth = 4
    config.attention.mlp_dim = 256
    config.benchmark.lengths = (256, 512, 1024, 2048, 4096, 8192)
    config.benchmark.batch_size = 32
    config.benchmark.timed_steps = 10
    config.batch_size = 256
    config.num_steps = 20_000
    config.warmup_steps = 500
    config.checkpoint_every = 2000
    config.log_every = 200
  else:
    raise ValueError(f"unknown sequence_processing preset {preset!r}; valid: default, tiny, gpu")
  return config
