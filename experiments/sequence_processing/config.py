r"""Config of experiments/sequence_processing: an RNN, a 1D CNN and self-attention on one task.

  python -m experiments.sequence_processing --config=experiments/sequence_processing/config.py \
      --workdir=runs/sequence_processing

Presets (``config.py:<preset>``):
  default  48 symbols, distances d = 1..47, a 2-core CPU, a few minutes. Expected (seed 0, the
           lock): the RNN and self-attention learn every distance (longest d learned 47, test
           accuracy 100%); the 1D CNN stops at its receptive field (longest d 12, 34.8%).
  gpu      longer sequences and training (GPU/TPU).
  tiny     seconds; the tests use it.

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


MODELS = ("rnn", "cnn", "attention")
MODES = ("recall", "match")  # the task's question: which symbol is marked / is it the last one
CELL_TYPES = ("gru", "lstm")


def validate(config) -> None:
  """Raises ValueError naming the first bad field (ConfigDict has already checked the types)."""
  training.validate_training_config(config)
  models = tuple(config.models)
  if not models or any(m not in MODELS for m in models) or len(set(models)) != len(models):
    raise ValueError(f"config.models must be a non-empty tuple of distinct {MODELS}, "
                     f"got {models!r}")
  choices = {"task.mode": (config.task.mode, MODES),
             "rnn.cell_type": (config.rnn.cell_type, CELL_TYPES),
             "attention.implementation": (config.attention.implementation,
                                          (None, "reference", "flash"))}
  for field, (value, valid) in choices.items():
    if value not in valid:
      raise ValueError(f"config.{field} must be one of {', '.join(map(repr, valid))}, "
                       f"got {value!r}")
  greater_than = {"task.length": 1, "task.num_symbols": 1, "cnn.kernel_size": 1,
                  "eval.examples_per_distance": 1}
  for field in ("rnn.embed_dim", "rnn.hidden_dim", "rnn.num_layers", "cnn.width", "cnn.depth",
                "cnn.dilation_base", "attention.width", "attention.depth", "attention.num_heads",
                "attention.mlp_dim", "eval.batch_size", "benchmark.batch_size",
                "benchmark.timed_steps"):
    greater_than[field] = 0
  for field, bound in greater_than.items():
    section, name = field.split(".")
    if not config[section][name] > bound:
      raise ValueError(f"config.{field} must be > {bound}, got {config[section][name]!r}")
  if not 0.5 < config.eval.learned_threshold <= 1:
    raise ValueError(f"config.eval.learned_threshold must be > 0.5 and <= 1, "
                     f"got {config.eval.learned_threshold!r}")
  lengths = tuple(config.benchmark.lengths)
  if not lengths or any(isinstance(n, bool) or not isinstance(n, int) or n < 2 for n in lengths):
    raise ValueError(f"config.benchmark.lengths must be a non-empty tuple of ints >= 2, "
                     f"got {lengths!r}")
  if config.attention.width % config.attention.num_heads:
    raise ValueError(f"config.attention.width ({config.attention.width}) must be divisible by "
                     f"config.attention.num_heads ({config.attention.num_heads})")
