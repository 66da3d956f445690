"""Published model shapes as :class:`TransformerConfig` presets, with the parameter counts their
papers report (exact where the count is known to the parameter).

``PRESETS[name]`` is ``(config, model class, published count)``; :func:`build` returns the
model and a dummy input for ``init``. Counts need no memory: :func:`count` traces ``init`` with
``jax.eval_shape``.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import jax.numpy as jnp

from attention_jax.models import transformer

GPT2_VOCAB = 50257
BERT_VOCAB = 30522
WMT_VOCAB = 37000  # the shared En-De BPE vocabulary of Vaswani et al. 2017, sec. 5.1


def gpt2(num_layers: int, features: int, num_heads: int,
         **overrides) -> transformer.TransformerConfig:
  """GPT-2 (Radford et al. 2019): pre-norm with a final LayerNorm, learned positions, tied head,
  biases everywhere, MLP 4x with (tanh) GELU, LayerNorm epsilon 1e-5, context 1024."""
  config = transformer.TransformerConfig(
      vocab_size=GPT2_VOCAB, features=features, num_heads=num_heads, mlp_dim=4 * features,
      num_layers=num_layers, max_length=1024, positions="learned", pre_norm=True,
      dropout_rate=0.1, tie_embeddings=True, activation="gelu", layer_norm_epsilon=1e-5)
  return dataclasses.replace(config, **overrides)


def bert(num_layers: int, features: int, num_heads: int,
         **overrides) -> transformer.TransformerConfig:
  """BERT (Devlin et al. 2019): post-norm, learned positions (512), 2 token types, embedding
  LayerNorm, exact GELU, epsilon 1e-12; use with :class:`BertEncoder` (adds the pooler)."""
  config = transformer.TransformerConfig(
      vocab_size=BERT_VOCAB, features=features, num_heads=num_heads, mlp_dim=4 * features,
      num_layers=num_layers, max_length=512, positions="learned", pre_norm=False,
      dropout_rate=0.1, num_token_types=2, embedding_norm=True, activation="gelu_exact",
      layer_norm_epsilon=1e-12)
  return dataclasses.replace(config, **overrides)


def vaswani(features: int, num_heads: int, mlp_dim: int,
            **overrides) -> transformer.TransformerConfig:
  """The Transformer of Vaswani et al. 2017: 6 + 6 post-norm layers, sinusoids, ReLU, one
  embedding shared by source, target and output head, scaled by ``sqrt(d_model)``."""
  config = transformer.TransformerConfig(
      vocab_size=WMT_VOCAB, features=features, num_heads=num_heads, mlp_dim=mlp_dim,
      num_layers=6, max_length=1024, positions="sinusoidal", pre_norm=False, dropout_rate=0.1,
      tie_embeddings=True, scale_embeddings=True, activation="relu")
  return dataclasses.replace(config, **overrides)


PRESETS: dict[str, tuple[Callable[[], transformer.TransformerConfig], type, int]] = {
    "transformer_base": (lambda: vaswani(512, 8, 2048), transformer.EncoderDecoder, 65_000_000),
    "transformer_big": (lambda: vaswani(1024, 16, 4096, dropout_rate=0.3),
                        transformer.EncoderDecoder, 213_000_000),
    "bert_base": (lambda: bert(12, 768, 12), transformer.BertEncoder, 109_482_240),
    "bert_large": (lambda: bert(24, 1024, 16), transformer.BertEncoder, 335_141_888),
    "gpt2_small": (lambda: gpt2(12, 768, 12), transformer.DecoderOnlyLM, 124_439_808),
    "gpt2_medium": (lambda: gpt2(24, 1024, 16), transformer.DecoderOnlyLM, 354_823_168),
    "gpt2_large": (lambda: gpt2(36, 1280, 20), transformer.DecoderOnlyLM, 774_030_080),
}
"""name -> (config factory, model class, published parameter count). The GPT-2 and BERT counts
are exact (of the released checkpoints); the Transformer's are the paper's rounded ones."""


def config(name: str) -> transformer.TransformerConfig:
  """The config of preset ``name``."""
  if name not in PRESETS:
    raise ValueError(f"unknown preset {name!r}; choose from {sorted(PRESETS)}")
  return PRESETS[name][0]()


def build(name: str, length: int = 8):
  """``(model, dummy_inputs)``: ``model.init(key, *dummy_inputs)`` creates the parameters."""
  cfg = config(name)
  model = PRESETS[name][1](cfg)
  tokens = jnp.zeros((1, length), jnp.int32)
  if isinstance(model, transformer.EncoderDecoder):
    return model, (tokens, tokens)
  return model, (tokens,)


def count(name: str) -> int:
  """Parameters of preset ``name``, counted from ``jax.eval_shape`` (nothing allocated)."""
  model, inputs = build(name)
  return transformer.count_parameters(transformer.parameter_shapes(model, *inputs))
