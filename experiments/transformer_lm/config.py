r"""Config of experiments/transformer_lm: a character-level Transformer language model.

  python -m experiments.transformer_lm --config=experiments/transformer_lm/config.py \
      --workdir=runs/transformer_lm

Presets (``config.py:<preset>``):
  default  ~0.8M parameters on the standard library's Python sources, a 2-core CPU. Expected
           (seed 0, the lock): validation loss 1.233 (1.78 bits per character) against the
           add-one bigram's 2.441 (3.52 bits).
  gpu      nanoGPT shakespeare-char scale (6 layers x 384), bf16 computation with float32
           parameters and optimiser state.
  tiny     seconds; the tests use it.

Every preset trains on the mesh of ``config.mesh`` (default: data parallelism over all devices);
``--config.mesh.sequence=4`` splits the context over 4 devices with ring attention (the context
must be a multiple of it), ``--config.mesh.fsdp=2`` shards parameters and optimiser state.
"""

import ml_collections

from attention_jax import training
from attention_jax.models import transformer


def get_config(preset: str = "default") -> ml_collections.ConfigDict:
  config = training.default_training_config()
  config.preset = preset

  config.data = ml_collections.ConfigDict()
  # "stdlib": the .py sources of the running interpreter's standard library (on every machine);
  # "files": the text files of `data.paths`; "tiny_shakespeare": TFDS (needs the internet).
  config.data.source = "stdlib"
  config.data.paths = ()
  config.data.max_chars = 3_000_000
  config.data.min_char_count = 50  # rarer characters become <unk>
  config.data.validation_fraction = 0.1
  config.data.data_dir = ml_collections.config_dict.placeholder(str)  # TFDS only
  # "windows": random windows of the text; "packed" / "padded": whole documents (text between
  # blank lines, cut to the context), several per row (segment ids) or one per row.
  config.data.batching = "windows"

  # nanoGPT's CPU shakespeare-char model: 4 layers, 4 heads, width 128, context 64.
  config.model = ml_collections.ConfigDict()
  config.model.num_layers = 4
  config.model.features = 128
  config.model.num_heads = 4
  config.model.mlp_dim = 512
  config.model.context = 64
  config.model.positions = "learned"
  config.model.pre_norm = True
  config.model.dropout_rate = 0.0
  config.model.dtype = "float32"  # or "bfloat16"

  config.eval = ml_collections.ConfigDict()
  config.eval.num_batches = 20
  config.eval.batch_size = 64

  config.sample = ml_collections.ConfigDict()
  config.sample.prompts = ("def ", "class ", "import ")
  config.sample.num_tokens = 200
  config.sample.temperature = 0.8
  config.sample.top_k = 0  # 0 = off
  config.sample.top_p = 0.95
  config.sample.attention_prompt = "    def __init__(self, name):\n        self.name = name\n"

  # nanoGPT's 2000 iterations take ~2 minutes here; 8000 fill the ~10-minute CPU budget.
  config.batch_size = 12
  config.num_steps = 8000
  config.learning_rate = 1e-3
  config.optimizer = "adamw"
  config.adam_b2 = 0.99
  config.weight_decay = 0.1
  config.schedule = "warmup_cosine"
  config.warmup_steps = 100
  config.end_learning_rate = 1e-4
  config.grad_clip_norm = 1.0
  config.log_every = 100
  config.checkpoint_every = 1000
  config.eval_every = 1000

  if preset == "default":
    pass
  elif preset == "gpu":
    config.model.dtype = "bfloat16"  # float32 parameters, optimiser state, softmax statistics
    config.model.num_layers = 6
    config.model.features = 384
    config.model.num_heads = 6
    config.model.mlp_dim = 1536
    config.model.context = 256
    config.model.dropout_rate = 0.2
    config.batch_size = 64
    config.num_steps = 5000
    config.eval.num_batches = 50
    config.checkpoint_every = 1000
  elif preset == "tiny":
    config.data.max_chars = 200_000
    config.data.min_char_count = 5
    config.model.num_layers = 1
    config.model.features = 32
    config.model.num_heads = 2
    config.model.mlp_dim = 64
    config.model.context = 32
    config.batch_size = 16
    config.num_steps = 150
    config.warmup_steps = 10
    config.learning_rate = 3e-3
    config.log_every = 25
    config.checkpoint_every = 75
    config.eval_every = 0
    config.eval.num_batches = 4
    config.eval.batch_size = 32
    config.sample.prompts = ("def ",)
    config.sample.num_tokens = 20
    config.sample.attention_prompt = "def f(x):\n    return x\n"
  else:
    raise ValueError(f"unknown preset {preset!r}; choose default, gpu or tiny")
  return config


def validate(config) -> None:
  """Raises ValueError naming the first bad field (ConfigDict has already checked the types)."""
  training.validate_training_config(config)
  d, m = config.data, config.model
  choices = {"data.source": (d.source, ("stdlib", "files", "tiny_shakespeare")),
             "data.batching": (d.batching, ("windows", "packed", "padded")),
             "model.positions": (m.positions, transformer.POSITIONS),
             "model.dtype": (m.dtype, ("float32", "bfloat16"))}
  for field, (value, valid) in choices.items():
    if value not in valid:
      raise ValueError(f"config.{field} must be one of {', '.join(map(repr, valid))}, "
                       f"got {value!r}")
  if d.source == "files" and not d.paths:
    raise ValueError("config.data.source='files' needs config.data.paths")
  greater_than = {"data.max_chars": 1000, "data.min_char_count": 0, "model.num_layers": 0,
                  "model.features": 0, "model.num_heads": 0, "model.mlp_dim": 0,
                  "model.context": 1, "eval.num_batches": 0, "eval.batch_size": 0,
                  "sample.num_tokens": 0}
  for field, bound in greater_than.items():
    section, name = field.split(".")
    if not config[section][name] > bound:
      raise ValueError(f"config.{field} must be > {bound}, got {config[section][name]!r}")
  for field in ("temperature", "top_k"):
    if config.sample[field] < 0:
      raise ValueError(f"config.sample.{field} must be >= 0, got {config.sample[field]!r}")
  if not 0 < d.validation_fraction <= 0.5:
    raise ValueError(f"config.data.validation_fraction must be in (0, 0.5], "
                     f"got {d.validation_fraction!r}")
  if not 0 < config.sample.top_p <= 1:
    raise ValueError(f"config.sample.top_p must be in (0, 1], got {config.sample.top_p!r}")
  if not 0 <= m.dropout_rate <= 0.9:
    raise ValueError(f"config.model.dropout_rate must be in [0, 0.9], got {m.dropout_rate!r}")
  if m.context % int(config.mesh.sequence):
    raise ValueError(f"config.model.context={m.context} must be a multiple of "
                     f"config.mesh.sequence={config.mesh.sequence} (the context is split over it)")
  if m.features % m.num_heads:
    raise ValueError(f"config.model.features={m.features} must be divisible by "
                     f"config.model.num_heads={m.num_heads}")
