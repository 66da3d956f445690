"""Configs for experiments/cnn_self_attention.py: a small CNN with and without SelfAttention2D.

  --config=experiments/configs/cnn_self_attention.py          default: shape pairs, a 2-core CPU
  --config=experiments/configs/cnn_self_attention.py:cifar10  TFDS cifar10 (internet needed)
  --config=experiments/configs/cnn_self_attention.py:tiny     seconds; used by the tests
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
  else:
    raise ValueError(f"unknown cnn_self_attention preset {preset!r}; valid: default, tiny, cifar10")
  return config
