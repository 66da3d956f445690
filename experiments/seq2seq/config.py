r"""Config of experiments/seq2seq: RNN encoder-decoders with and without attention on dates.

  python -m experiments.seq2seq --config=experiments/seq2seq/config.py --workdir=runs/seq2seq

Presets (``config.py:<preset>``):
  default  both models on a 2-core CPU, ~9 min idle (190 s + 318 s of training). Expected
           (seed 0, the lock): test exact match 96.7% without attention (``none``), 99.6% with
           additive attention; on ``test_long`` (inputs longer than any seen in training) 86.9%
           and 97.9%.
  quick    600 steps, 500 test examples: both curves, ~3 min.
  tiny     seconds; the tests use it.
  gpu      wider LSTMs, beam search, 20,000 steps, and the dot-product variant too (GPU/TPU).
"""

import ml_collections

from attention_jax.tasks import dates_translation


def get_config(preset: str = "default") -> ml_collections.ConfigDict:
  config = dates_translation.rnn_config(preset)  # data, model, eval and optimiser per preset
  # The models compared with the same budget: "none" (one fixed context vector), "additive"
  # (Bahdanau), "dot" (Luong's general score).
  config.attentions = ("none", "additive", "dot") if preset == "gpu" else ("none", "additive")
  # The step is a chain of small recurrent kernels; with one malloc heap XLA's threads reuse
  # their buffers (idle, our step alone: 109-112 -> 90-97 ms; docs/performance.md).
  config.single_malloc_arena = True
  return config


def validate(config) -> None:
  """Raises ValueError naming the first bad field."""
  dates_translation.validate_rnn_config(config)
  attentions = tuple(config.attentions)
  valid = dates_translation.ATTENTIONS
  if not attentions or any(a not in valid for a in attentions):
    raise ValueError(f"config.attentions must be a non-empty tuple of {valid}, got {attentions!r}")
  if len(set(attentions)) != len(attentions):
    raise ValueError(f"config.attentions has duplicates: {attentions!r}")
