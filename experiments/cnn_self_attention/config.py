r"""Config of experiments/cnn_self_attention: a small CNN with and without SelfAttention2D.

  python -m experiments.cnn_self_attention --config=experiments/cnn_self_attention/config.py \
      --workdir=runs/cnn_self_attention

Presets (``config.py:<preset>``):
  default  shape pairs (is the top-left shape the bottom-right one?), a 2-core CPU, ~1.5 min.
           Expected over seeds 0-4 (the lock): test accuracy 84.2 +- 3.8% for the CNN,
           88.8 +- 1.9% with self-attention; which run leaves the chance plateau first decides
           a seed's margin, so one seed moves between machines (seed 0: 94.55% on one, 88.55%
           on another).
  cifar10  TFDS cifar10 (internet to prepare).
  gpu      shape pairs at 64x64 with self-attention over a 32x32 grid (1,024 positions, where
           the default path takes JAX's fused kernels: Pallas on a GPU, splash on a TPU), wider
           and longer (GPU/TPU; lowered for both in CI, not yet run on one).
  tiny     seconds; the tests use it.
"""

import ml_collections

from attention_jax import training


def get_config(preset: str = "default") -> ml_collections.ConfigDict:
  config = training.default_training_config()
  config.preset = preset
  config.variants = ("cnn", "cnn_attention")  # the same CNN without / with SelfAttention2D

  config.data = ml_collections.ConfigDict()
  config.data.source = "shapes"  # or "tfds": a TFDS catalog image dataset (config.data.name)
  config.data.image_size = 16  # shapes only
  config.data.noise = 0.2  # shapes only
  config.data.name = "cifar10"  # tfds only
  config.data.data_dir = ml_collections.config_dict.placeholder(str)  # tfds only

  config.model = ml_collections.ConfigDict()
  config.model.channels = (16, 32)  # one 3x3 conv (+ ReLU) per entry, then 2x2 pooling
  # Where SelfAttention2D goes in the "cnn_attention" variant: after this many conv stages.
  config.model.attention_after = 2
  config.model.head_convs = 1  # 3x3 convs after the attention point, before global pooling

  config.eval = ml_collections.ConfigDict()
  config.eval.num_examples = 2000
  config.eval.batch_size = 500
  config.eval.num_maps = 3  # test images whose attention maps are drawn
  config.eval.queries = ((1, 1), (6, 6), (1, 6))  # query positions on the attention grid

  config.batch_size = 64
  config.num_steps = 3000  # the attention variant leaves the chance plateau after ~1,300
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
    config.model.channels = (8, 8)
    config.eval.num_examples = 100
    config.eval.batch_size = 50
    config.eval.num_maps = 1
    config.eval.queries = ((1, 1),)
    config.batch_size = 32
    config.num_steps = 40
    config.learning_rate = 5e-3
    config.warmup_steps = 5
    config.log_every = 10
    config.checkpoint_every = 40
  elif preset == "cifar10":
    config.data.source = "tfds"
    config.data.name = "cifar10"
    config.model.channels = (32, 64, 128)
    config.model.attention_after = 2
    config.eval.num_examples = 10_000
    config.eval.queries = ((1, 1), (4, 4), (6, 2))
    config.batch_size = 128
    config.num_steps = 10_000
  elif preset == "gpu":
    config.data.image_size = 64
    config.model.channels = (64, 128, 256)
    config.model.attention_after = 1  # after one conv and pooling: a 32x32 grid
    config.eval.num_examples = 10_000
    config.batch_size = 256
    config.num_steps = 10_000
    config.checkpoint_every = 1000
  else:
    raise ValueError(f"unknown cnn_self_attention preset {preset!r}; valid: default, tiny, "
                     f"cifar10, gpu")
  return config


VARIANTS = ("cnn", "cnn_attention")


def validate(config) -> None:
  """Raises ValueError naming the first bad field (ConfigDict has already checked the types)."""
  training.validate_training_config(config)
  d, m, e = config.data, config.model, config.eval
  variants = tuple(config.variants)
  if not variants or any(v not in VARIANTS for v in variants) or len(set(variants)) != len(
      variants):
    raise ValueError(f"config.variants must be a non-empty tuple of distinct {VARIANTS}, "
                     f"got {variants!r}")
  if d.source not in ("shapes", "tfds"):
    raise ValueError(f"config.data.source must be one of 'shapes', 'tfds', got {d.source!r}")
  if d.image_size <= 9:  # a 5x5 shape per quadrant
    raise ValueError(f"config.data.image_size must be > 9, got {d.image_size!r}")
  if not 0 <= d.noise <= 0.99:
    raise ValueError(f"config.data.noise must be in [0, 0.99], got {d.noise!r}")
  positive = {"model.attention_after": m.attention_after, "eval.num_examples": e.num_examples,
              "eval.batch_size": e.batch_size}
  for field, value in positive.items():
    if value <= 0:
      raise ValueError(f"config.{field} must be > 0, got {value!r}")
  for field, value in {"model.head_convs": m.head_convs, "eval.num_maps": e.num_maps}.items():
    if value < 0:
      raise ValueError(f"config.{field} must be >= 0, got {value!r}")
  channels = tuple(m.channels)
  if not channels or any(isinstance(c, bool) or not isinstance(c, int) or c < 1
                         for c in channels):
    raise ValueError(f"config.model.channels must be a non-empty tuple of ints >= 1, "
                     f"got {channels!r}")
  if m.attention_after > len(channels):
    raise ValueError(f"config.model.attention_after ({m.attention_after}) must be "
                     f"<= len(config.model.channels) ({len(channels)})")
