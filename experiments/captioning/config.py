r"""Config of experiments/captioning: Show, Attend and Tell on the shapes captions dataset.

  python -m experiments.captioning --config=experiments/captioning/config.py --workdir=runs/captioning

Presets (``config.py:<preset>``):
  default  ~3.5 min on an idle 2-core CPU (196 s of training). Expected (seeds 0-4, the lock):
           BLEU-4 99.89 +- 0.05, exact caption 99.6% +- 0.2%, attention mass on the cells
           covering the named object's box 0.78 +- 0.10 (7.3x a uniform map; counted over
           pixels 0.60 +- 0.12; shape words on the box's cells 0.79; seed 0: 0.872 and 0.710).
  tiny     seconds; the tests use it.
  gpu      a wider model, 10,000 steps (GPU/TPU).
  coco     TFDS ``coco_captions`` through ``tfds.data_source`` (internet to prepare; GPU advised).
  hard     the default model on the hard scene (``data.dataset_config="hard"``); set
           ``--config.model.attention=hard`` or ``none`` to compare (README).
  hard_weak  the hard scene with a weaker encoder: the first 3 of the 5 convolutions (a cell's
           receptive field 9 pixels instead of 25), the rest as ``hard``. Measured (seeds 0-1,
           greedy, 500 test images, continuity_weight 0): BLEU-4 85.0, exact 41.5%, against
           88.5 / 46.7% for ``hard`` and 48.7 / 7.4% without attention.

``--config.model.attention=hard`` on the default preset (Xu et al.'s hard attention; the reward
to go, 4 samples per image with leave-one-out baselines), seeds 0-4: BLEU-4 93.0 +- 10.1 (four
seeds 96.7-98.6, seed 3 75.1), the cell read on the named object's box 0.91 +- 0.12; ``none``:
BLEU-4 76.9 +- 2.5 (~13 min and ~4 min on one core).
"""

import ml_collections
import numpy as np

from attention_jax import training
from attention_jax.data import shapes_captions
from attention_jax.errors import ConfigError
from attention_jax.models import captioning

EMBEDDED = "shapes_captions"
#: Catalog datasets with ``image`` and ``captions/text`` records, and their test split names.
CATALOG = {"coco_captions": ("train", "val", "test")}
PRESETS = ("default", "tiny", "gpu", "coco", "hard", "hard_weak")
DATASET_CONFIGS = ("default", "small", "hard", "hard_small")


def get_config(preset: str = "default") -> ml_collections.ConfigDict:
  config = training.default_training_config()
  config.preset = preset

  config.data = ml_collections.ConfigDict()
  config.data.dataset = "shapes_captions"
  # "small": 1,000 train images; "hard": the hard scene (1-6 objects, four relations, occlusion,
  # distractors; 10,000 train images), "hard_small" its 1,000-image version
  config.data.dataset_config = "default"
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
  # > 0: the last convolution's output max-pooled over a k x k window of cells is concatenated
  # to it (a context channel block: a cell inside an object also holds its neighbours' edges)
  config.model.context_pool = 0
  # > 0 (embedded dataset only; catalog datasets ignore it): weight of the attention mass that moves between consecutive
  # words of one phrase (size -> colour -> shape), the earlier map held fixed, per token. Without
  # it shape words looked beside their object (mass on the box's cells 0.35 over seeds 0-4);
  # with 0.1 they look at it (0.79), the captions as right (README; the context_pool channels
  # did not help: 0.24 for seed 0)
  config.model.continuity_weight = 0.1
  config.model.dropout_rate = 0.0
  config.model.init_dropout_rate = 0.0  # dropout on the mean feature of the initial state
  # lambda of the doubly stochastic regulariser (Xu et al. use 1 with 196 positions and longer
  # captions). Here 144 positions, <= 23 words and mostly empty background: full coverage is
  # impossible and the penalty pushes the mass of every step onto the background (measured at
  # 600 steps: lambda 0.01 -> 0.08 of the mass in the box, 0.001 -> 0.17, 0 -> 0.19), so small.
  config.model.attention_penalty = 0.001
  # "soft" (expected context), "hard" (one sampled location, REINFORCE; Xu et al. sec. 4.1) or
  # "none" (the mean feature: no attention).
  config.model.attention = "soft"
  # Hard attention only: lambda_r of the REINFORCE term (1 = the unbiased estimate of the bound's
  # gradient), lambda_e of the entropy term, the decay of the moving-average baseline (0.9 in
  # Xu et al.).
  config.model.reinforce_weight = 1.0
  config.model.entropy_weight = 0.01
  config.model.baseline_decay = 0.9
  # What each sampled location is credited with: "caption" (Xu et al.: the caption's
  # log-likelihood) or "to_go" (the log-likelihood of the words from its step on; unbiased too,
  # less noisy); and K samples per image (> 1: each sample's baseline is the mean of the other
  # K - 1, replacing the moving average; K times the decoder's work). With Xu et al.'s single
  # sample and moving average the attention stayed uniform on both scenes (README); 4 samples
  # with leave-one-out baselines made it learn.
  config.model.reinforce_reward = "to_go"
  config.model.reinforce_samples = 4
  # the probability of reading the expected (soft) context instead of a sample, per word in
  # training (Xu et al. use 0.5; 0 = always sample)
  config.model.expected_context_prob = 0.0

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
  # XLA's 114 MB per-step buffer is allocated on worker threads, whose own heaps stop at 64 MiB,
  # and was mapped anew every step; on the main heap it is reused (idle, our step alone:
  # 136-162 -> 98-103 ms; docs/performance.md).
  config.single_malloc_arena = True
  config.log_every = 100
  config.checkpoint_every = 500
  config.eval_every = 0

  if preset not in PRESETS:
    raise ValueError(f"unknown captioning preset {preset!r}; valid: {', '.join(PRESETS)}")
  if preset == "tiny":
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
  elif preset in ("hard", "hard_weak"):
    config.data.dataset_config = "hard"
    config.data.max_caption_len = 36
    if preset == "hard_weak":
      config.model.channels = (32, 64, 64)
      config.model.strides = (1, 2, 2)
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
    config.model.continuity_weight = 0.0  # no grammar says which words name an object
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
  return config


def image_size(config) -> int:
  """The square image side the model sees: the embedded dataset's, or ``data.image_size``."""
  return (shapes_captions.IMAGE_SIZE if config.data.dataset == EMBEDDED
          else int(config.data.image_size))


def validate(config) -> None:
  """Raises ValueError naming the first bad field (ConfigDict has already checked the types)."""
  training.validate_training_config(config)
  d, m, e = config.data, config.model, config.eval
  if d.dataset not in (EMBEDDED, *CATALOG):
    raise ValueError(f"config.data.dataset must be one of "
                     f"{', '.join(map(repr, (EMBEDDED, *CATALOG)))}, got {d.dataset!r}")
  for field, value, choices in (("data.dataset_config", d.dataset_config, DATASET_CONFIGS),
                                 ("model.attention", m.attention, captioning.ATTENTION_KINDS),
                                 ("model.reinforce_reward", m.reinforce_reward,
                                  captioning.REINFORCE_REWARDS)):
    if value not in choices:
      raise ConfigError(f"config.{field} must be one of {', '.join(map(repr, choices))}, got "
                        f"{value!r}")
  if not 0 <= m.expected_context_prob <= 1:
    raise ConfigError(f"config.model.expected_context_prob must be in [0, 1], got "
                      f"{m.expected_context_prob!r}")
  if m.reinforce_samples < 1:
    raise ConfigError(f"config.model.reinforce_samples must be >= 1, got "
                      f"{m.reinforce_samples!r}")
  if not 0 <= m.baseline_decay < 1:
    raise ConfigError(f"config.model.baseline_decay must be in [0, 1), got {m.baseline_decay!r}")
  if m.context_pool < 0:
    raise ConfigError(f"config.model.context_pool must be >= 0, got {m.context_pool!r}")
  for field in ("reinforce_weight", "entropy_weight", "continuity_weight"):
    if m[field] < 0:
      raise ConfigError(f"config.model.{field} must be >= 0, got {m[field]!r}")
  if d.dataset == EMBEDDED and d.dataset_config.startswith("hard") and d.max_caption_len < 36:
    raise ConfigError(f"config.data.max_caption_len must be >= 36 for the hard scene (6 objects "
                      f"x 4 words + 5 x 2 relation words + EOS = 35), got {d.max_caption_len!r}")
  positive = {"data.image_size": d.image_size, "data.vocab_examples": d.vocab_examples,
              "model.embed_dim": m.embed_dim, "model.hidden_dim": m.hidden_dim,
              "model.attention_dim": m.attention_dim, "eval.batch_size": e.batch_size,
              "eval.beam_size": e.beam_size}
  non_negative = {"model.attention_penalty": m.attention_penalty,
                  "eval.max_examples": e.max_examples, "eval.num_overlays": e.num_overlays,
                  "eval.num_grid": e.num_grid}
  for field, value in positive.items():
    if value <= 0:
      raise ValueError(f"config.{field} must be > 0, got {value!r}")
  for field, value in non_negative.items():
    if value < 0:
      raise ValueError(f"config.{field} must be >= 0, got {value!r}")
  if d.max_caption_len < 2:  # at least one word and EOS
    raise ValueError(f"config.data.max_caption_len must be > 1, got {d.max_caption_len!r}")
  if d.vocab_size < 5:  # 4 reserved ids and a word
    raise ValueError(f"config.data.vocab_size must be > 4, got {d.vocab_size!r}")
  for field in ("dropout_rate", "init_dropout_rate"):
    if not 0 <= m[field] <= 0.9:
      raise ValueError(f"config.model.{field} must be in [0, 0.9], got {m[field]!r}")
  if len(m.channels) != len(m.strides) or not m.channels:
    raise ValueError(f"config.model.channels {tuple(m.channels)} and config.model.strides "
                     f"{tuple(m.strides)} must be non-empty and of the same length")
  size = image_size(config)
  if size % int(np.prod(m.strides)):
    raise ValueError(f"the product of config.model.strides {tuple(m.strides)} must divide the "
                     f"image size {size}")
