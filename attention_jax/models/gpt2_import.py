"""Hugging Face / OpenAI GPT-2 weights into :class:`DecoderOnlyLM`.

Takes a PyTorch-style state dict as a mapping of names to arrays (numpy, or anything
``np.asarray`` reads, e.g. ``{k: v.numpy() for k, v in torch_model.state_dict().items()}`` or a
safetensors file read with ``safetensors.numpy.load_file``); nothing is downloaded here.

HF names (``transformer.`` prefix optional, ``lm_head.weight`` optional since it is tied)::

  transformer.wte.weight [vocab, d]             transformer.wpe.weight [n_ctx, d]
  transformer.h.{i}.ln_1.{weight,bias} [d]      transformer.h.{i}.ln_2.{weight,bias} [d]
  transformer.h.{i}.attn.c_attn.weight [d, 3d]  .bias [3d]     (Conv1D: y = x @ W + b)
  transformer.h.{i}.attn.c_proj.weight [d, d]   .bias [d]
  transformer.h.{i}.mlp.c_fc.weight [d, 4d]     .bias [4d]
  transformer.h.{i}.mlp.c_proj.weight [4d, d]   .bias [d]
  transformer.ln_f.{weight,bias} [d]

The attention buffers ``attn.bias`` / ``attn.masked_bias`` (causal masks, not parameters) are
ignored. Any other name, a missing name or a wrong shape raises a ``ValueError`` naming it.
"""

from __future__ import annotations

import re
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from attention_jax.models import presets
from attention_jax.models import transformer as tf

_HEADS_BY_WIDTH = {768: 12, 1024: 16, 1280: 20, 1600: 25}  # small, medium, large, xl
_BUFFERS = re.compile(r"h\.\d+\.attn\.(bias|masked_bias)$")


def _strip(state_dict: Mapping[str, Any]) -> dict[str, np.ndarray]:
  """Drops the ``transformer.`` prefix and the mask buffers; arrays as float32 numpy."""
  out = {}
  for name, value in state_dict.items():
    short = name[len("transformer."):] if name.startswith("transformer.") else name
    if _BUFFERS.fullmatch(short):
      continue
    if short in out:
      raise ValueError(f"state dict holds {short!r} twice (with and without 'transformer.')")
    out[short] = np.asarray(value, np.float32)
  return out


def gpt2_config(state_dict: Mapping[str, Any], num_heads: int | None = None,
                **overrides) -> tf.TransformerConfig:
  """The :func:`presets.gpt2` config whose shapes match ``state_dict``.

  Args:
    state_dict: HF GPT-2 names -> arrays.
    num_heads: attention heads (shapes cannot tell); default from the width of the released
      sizes (768: 12, 1024: 16, 1280: 20, 1600: 25).
    **overrides: other config fields (e.g. ``dropout_rate=0.0``, ``dtype``).
  """
  weights = _strip(state_dict)
  for name in ("wte.weight", "wpe.weight"):
    if name not in weights:
      raise ValueError(f"state dict has no {name!r} (nor 'transformer.{name}')")
  vocab, features = weights["wte.weight"].shape
  max_length = weights["wpe.weight"].shape[0]
  layer_ids = {int(m.group(1)) for m in map(re.compile(r"h\.(\d+)\.").match, weights) if m}
  num_layers = len(layer_ids)
  if layer_ids != set(range(num_layers)):
    raise ValueError(f"layers {sorted(layer_ids)} are not numbered 0..{num_layers - 1}")
  if num_heads is None:
    if features not in _HEADS_BY_WIDTH:
      raise ValueError(f"width {features} is not a released GPT-2 size; pass num_heads")
    num_heads = _HEADS_BY_WIDTH[features]
  return presets.gpt2(num_layers, features, num_heads, vocab_size=vocab,
                      max_length=max_length, **overrides)


def _expected_shapes(config: tf.TransformerConfig) -> dict[str, tuple[int, ...]]:
  d, v = config.features, config.vocab_size
  shapes = {"wte.weight": (v, d), "wpe.weight": (config.max_length, d),
            "ln_f.weight": (d,), "ln_f.bias": (d,)}
  for i in range(config.decoder_layers):
    p = f"h.{i}."
    shapes.update({
        p + "ln_1.weight": (d,), p + "ln_1.bias": (d,),
        p + "ln_2.weight": (d,), p + "ln_2.bias": (d,),
        p + "attn.c_attn.weight": (d, 3 * d), p + "attn.c_attn.bias": (3 * d,),
        p + "attn.c_proj.weight": (d, d), p + "attn.c_proj.bias": (d,),
        p + "mlp.c_fc.weight": (d, config.mlp_dim), p + "mlp.c_fc.bias": (config.mlp_dim,),
        p + "mlp.c_proj.weight": (config.mlp_dim, d), p + "mlp.c_proj.bias": (d,),
    })
  return shapes


def _check_config(config: tf.TransformerConfig) -> None:
  wanted = dict(positions="learned", pre_norm=True, tie_embeddings=True, use_bias=True,
                num_kv_heads=None, num_token_types=0, embedding_norm=False,
                scale_embeddings=False)
  wrong = {k: getattr(config, k) for k, v in wanted.items() if getattr(config, k) != v}
  if wrong:
    raise ValueError(f"a GPT-2 config needs {wanted}; this one has {wrong}")


def import_gpt2(state_dict: Mapping[str, Any], config: tf.TransformerConfig | None = None):
  """The ``params`` of ``DecoderOnlyLM(config)`` holding GPT-2's weights.

  Args:
    state_dict: HF GPT-2 names -> arrays (see the module docstring).
    config: a GPT-2-shaped config (default :func:`gpt2_config` of the state dict).

  Returns:
    a nested dict of float32 jax arrays: ``{'decoder': {'embedder': ..., 'layer_{i}': ...,
    'final_norm': ...}}``.
  """
  config = gpt2_config(state_dict) if config is None else config
  _check_config(config)
  weights = _strip(state_dict)
  head = weights.pop("lm_head.weight", None)
  expected = _expected_shapes(config)
  missing = sorted(set(expected) - set(weights))
  unknown = sorted(set(weights) - set(expected))
  if missing or unknown:
    raise ValueError(f"state dict does not match the config: missing {missing}, "
                     f"unknown {unknown}")
  for name, shape in expected.items():
    if weights[name].shape != shape:
      raise ValueError(f"{name} has shape {weights[name].shape}, expected {shape}")
  if head is not None and not np.array_equal(head, weights["wte.weight"]):
    raise ValueError("lm_head.weight differs from wte.weight; DecoderOnlyLM ties them")

  d, h = config.features, config.num_heads
  norm = lambda prefix: {"scale": weights[prefix + ".weight"], "bias": weights[prefix + ".bias"]}
  decoder: dict[str, Any] = {
      "embedder": {"token_embedding": {"embedding": weights["wte.weight"]},
                   "position_embedding": {"embedding": weights["wpe.weight"]}},
      "final_norm": norm("ln_f"),
  }
  for i in range(config.decoder_layers):
    p = f"h.{i}."
    qkv_kernel = weights[p + "attn.c_attn.weight"].reshape(d, 3, h, d // h)
    qkv_bias = weights[p + "attn.c_attn.bias"].reshape(3, h, d // h)
    attention = {name: {"kernel": qkv_kernel[:, j], "bias": qkv_bias[j]}
                 for j, name in enumerate(("query", "key", "value"))}
    attention["out"] = {"kernel": weights[p + "attn.c_proj.weight"].reshape(h, d // h, d),
                        "bias": weights[p + "attn.c_proj.bias"]}
    decoder[f"layer_{i}"] = {
        "attention": attention,
        "attention_norm": norm(p + "ln_1"),
        "mlp": {"hidden": {"kernel": weights[p + "mlp.c_fc.weight"],
                           "bias": weights[p + "mlp.c_fc.bias"]},
                "output": {"kernel": weights[p + "mlp.c_proj.weight"],
                           "bias": weights[p + "mlp.c_proj.bias"]}},
        "mlp_norm": norm(p + "ln_2"),
    }
  return jax.tree.map(jnp.asarray, {"decoder": decoder})
