"""Configs for experiments/captioning.py: Show, Attend and Tell on the shapes captions dataset.

  --config=experiments/configs/captioning.py        default: a few minutes on a 2-core CPU
  --config=experiments/configs/captioning.py:gpu    wider model, longer training
  --config=experiments/configs/captioning.py:tiny   seconds; used by the tests
  --config=experiments/configs/captioning.py:coco   TFDS coco_captions (internet; GPU advised)
"""

import ml_collections

from attention_jax import training


def get_config(preset: str = "default") -> ml_collections.ConfigDict:
  config = training.default_training_config()
  config.preset = preset

  config.data = ml_collections.ConfigDict()
  config.data.dataset = "shapes_captions"
  config.data.dataset_config = "default"  # "small": 1,000 train images
  config.data.data_dir = ml_collections.config_dict.placeholder(str)  # None: TFDS default dir
  config.data.max_caption_len = 24  # 4 objects x 4 words + 3 x "left of" + EOS = 23
  # Catalog datasets only ("coco_captions"): the square side images are resized to, the word
  # vocabulary (incl. 4 reserved ids) built from the references of the first vocab_examples
  # training images.
  config.data.image_size = 96
  config.data.vocab_size = 5000
  config.data.vocab_examples = 20_000

  config.model = ml_collections.ConfigDict()
  config.model.embed_dim = 32
  config.model.hidden_dim = 128
  config.model.attention_dim = 64
  # 48x48 images -> a 12x12 grid; the 4th and 5th convolutions widen a cell's receptive field
  # from 9 to 25 pixels, so the cells inside an object see its outline (size, shape), not a flat
  # patch (measured, mass in the box: 3 convs 0.489; 4 convs 0.506 and 0.395 for seeds 0 and 1;
  # 5 convs 0.507 and 0.521).
  config.model.channels = (32, 64, 64, 64, 64)
  config.model.strides = (1, 2, 2, 1, 1)
  config.model.gate = True
  config.model.coordinates = False  # CoordConv (y, x) input channels
  # LayerNorm on the grid's content features: unnormalised they grow to norm ~25 and drown the
  # position embedding (norm < 1), so no key says where it is and the attention cannot pick
  # "the next object to the right" (measured: 0.19 -> 0.37 of the mass in the box at 600 steps).
  config.model.normalize = True
  config.model.grid_coordinates = True  # (y, x) channels appended to the grid (0.37 -> 0.43)
  config.model.coverage = False  # the attention so far enters the score (coverage)
  config.model.dropout_rate = 0.0
  config.model.init_dropout_rate = 0.0  # dropout on the mean feature of the initial state
  # lambda of the doubly stochastic regulariser (Xu et al. use 1 with 196 positions and longer
  # captions). Here 144 positions, <= 23 words and mostly empty background: full coverage is
  # impossible and the penalty pushes the mass of every step onto the background (measured at
  # 600 steps: lambda 0.01 -> 0.08 of the mass in the box, 0.001 -> 0.17, 0 -> 0.19), so small.
  config.model.attention_penalty = 0.001

  config.eval = ml_collections.ConfigDict()
  config.eval.batch_size = 250
  config.eval.beam_size = 3  # 1 = greedy; > 1 also reports greedy ("test_greedy")
  config.eval.max_examples = 0  # 0 = the whole test split
  config.eval.num_overlays = 6
  config.eval.num_grid = 12

  config.batch_size = 32
  config.num_steps = 1500
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
  elif preset == "tiny":
    config.data.dataset_config = "small"
    config.model.embed_dim = 16
    config.model.hidden_dim = 32
    config.model.attention_dim = 16
    config.model.channels = (8, 16)
    config.model.strides = (2, 2)
    config.batch_size = 16
    config.num_steps = 30
    config.learning_rate = 1e-2
    config.warmup_steps = 5
    config.log_every = 10
    config.checkpoint_every = 15
    config.eval.batch_size = 50
    config.eval.max_examples = 50
    config.eval.beam_size = 1
    config.eval.num_overlays = 2
    config.eval.num_grid = 4
  elif preset == "gpu":
    config.model.embed_dim = 64
    config.model.hidden_dim = 512
    config.model.attention_dim = 256
    config.model.channels = (64, 128, 128, 256)
    config.model.strides = (1, 2, 1, 2)
    config.batch_size = 128
    config.num_steps = 10_000
    config.learning_rate = 2e-3
    config.warmup_steps = 500
    config.checkpoint_every = 2000
    config.eval.beam_size = 3
  elif preset == "coco":
    config.data.dataset = "coco_captions"
    config.data.max_caption_len = 20  # longer references are cut
    config.data.image_size = 96
    config.model.embed_dim = 256
    config.model.hidden_dim = 512
    config.model.attention_dim = 256
    config.model.channels = (64, 128, 256, 256)
    config.model.strides = (2, 2, 2, 1)  # 96x96 -> a 12x12 grid
    config.model.dropout_rate = 0.3
    config.batch_size = 64
    config.num_steps = 50_000
    config.learning_rate = 1e-3
    config.warmup_steps = 1000
    config.checkpoint_every = 2000
    config.eval.beam_size = 3
    config.eval.max_examples = 5000
  else:
    raise ValueError(f"unknown captioning preset {preset!r}; valid: default, tiny, gpu, coco")
  return config
