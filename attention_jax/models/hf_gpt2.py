"""Hugging Face / OpenAI GPT-2 weights into :class:`DecoderOnlyLM`, and back out.

``import_gpt2`` takes a state dict (a mapping of names to arrays: NumPy, ``ml_dtypes``, JAX or
PyTorch tensors in float32, float16 or bfloat16; a ``.safetensors`` file; or a ``save_pretrained``
folder), ``export_gpt2`` / ``save_gpt2`` give one back that ``GPT2LMHeadModel`` loads. Nothing is
downloaded here. Names (``transformer.`` prefix optional, ``lm_head.weight`` optional since it is
tied)::

  transformer.wte.weight [vocab, d]             transformer.wpe.weight [n_ctx, d]
  transformer.h.{i}.ln_1.{weight,bias} [d]      transformer.h.{i}.ln_2.{weight,bias} [d]
  transformer.h.{i}.attn.c_attn.weight [d, 3d]  .bias [3d]     (Conv1D: y = x @ W + b)
  transformer.h.{i}.attn.c_proj.weight [d, d]   .bias [d]
  transformer.h.{i}.mlp.c_fc.weight [d, m]      .bias [m]      (m = n_inner, 4d by default)
  transformer.h.{i}.mlp.c_proj.weight [m, d]    .bias [d]
  transformer.ln_f.{weight,bias} [d]

Every shape is read from the tensors; the heads, the activation, the LayerNorm epsilon and the
dropout rates from HF's ``config.json`` when given (``hf_config``), else GPT-2's values. The
attention buffers ``attn.bias`` / ``attn.masked_bias`` (causal masks) are ignored. A missing,
unknown or misshaped name, or a config.json option this model does not compute
(``scale_attn_by_inverse_layer_idx``, ...), raises a ``ValueError`` naming it.
"""

from __future__ import annotations

import re
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from attention_jax.models import hf_checkpoints as hf
from attention_jax.models import presets
from attention_jax.models import transformer

_BUFFERS = re.compile(r"h\.\d+\.attn\.(bias|masked_bias)")
# HF's activation_function -> ours.
_ACTIVATIONS = {"gelu_new": "gelu", "gelu_pytorch_tanh": "gelu", "gelu": "gelu_exact",
                "relu": "relu"}
# config.json options that change what the model computes, with the value we compute.
_UNSUPPORTED = {"scale_attn_by_inverse_layer_idx": False, "scale_attn_weights": True,
                "add_cross_attention": False}
StateDict = Mapping[str, Any]


def _strip(state_dict) -> dict[str, np.ndarray]:
  return hf.strip_names(state_dict, "transformer.", _BUFFERS)


def gpt2_config(state_dict, num_heads: int | None = None, hf_config=None,
                **overrides) -> transformer.TransformerConfig:
  """The :func:`presets.gpt2` config whose shapes match ``state_dict``.

  Args:
    state_dict: HF GPT-2 names -> arrays, a safetensors file or a ``save_pretrained`` folder.
    num_heads: attention heads (shapes cannot tell); default ``hf_config["n_head"]``, else
      64-wide heads (every released size).
    hf_config: HF's ``config.json`` (a dict, its path or its folder) for what tensors cannot
      show: heads, activation, epsilon, dropout.
    **overrides: other config fields (e.g. ``dropout_rate=0.0``, ``dtype``).
  """
  hf_cfg = hf.read_hf_config(hf_config, state_dict)
  return _config(_strip(state_dict), num_heads, hf_cfg, overrides)


def _config(weights, num_heads, hf_cfg, overrides) -> transformer.TransformerConfig:
  for name in ("wte.weight", "wpe.weight", "h.0.mlp.c_fc.weight"):
    if name not in weights:
      raise ValueError(f"state dict has no {name!r} (nor 'transformer.{name}')")
  vocab, features = weights["wte.weight"].shape
  max_length = weights["wpe.weight"].shape[0]
  mlp_dim = weights["h.0.mlp.c_fc.weight"].shape[1]
  layer_ids = {int(m.group(1)) for m in map(re.compile(r"h\.(\d+)\.").match, weights) if m}
  num_layers = len(layer_ids)
  if layer_ids != set(range(num_layers)):
    raise ValueError(f"layers {sorted(layer_ids)} are not numbered 0..{num_layers - 1}")
  for key, value in (("vocab_size", vocab), ("n_embd", features), ("n_positions", max_length),
                     ("n_layer", num_layers), ("n_inner", mlp_dim)):
    hf.check_config_value(hf_cfg, key, value)
  for key, ours in _UNSUPPORTED.items():
    if hf_cfg.get(key, ours) != ours:
      raise ValueError(f"hf_config[{key!r}] = {hf_cfg[key]!r} is not supported (only {ours!r})")
  activation = hf_cfg.get("activation_function", "gelu_new")
  if activation not in _ACTIVATIONS:
    raise ValueError(f"hf_config['activation_function'] = {activation!r}; supported: "
                     f"{sorted(_ACTIVATIONS)}")
  from_hf = {"activation": _ACTIVATIONS[activation]}
  if "layer_norm_epsilon" in hf_cfg:
    from_hf["layer_norm_epsilon"] = float(hf_cfg["layer_norm_epsilon"])
  if "resid_pdrop" in hf_cfg:
    from_hf["dropout_rate"] = float(hf_cfg["resid_pdrop"])
  if "attn_pdrop" in hf_cfg:
    from_hf["attention_dropout_rate"] = float(hf_cfg["attn_pdrop"])
  num_heads = hf.default_num_heads(features, hf_cfg, "n_head", num_heads)
  shapes = dict(vocab_size=vocab, max_length=max_length, mlp_dim=mlp_dim)
  return presets.gpt2(num_layers, features, num_heads, **{**shapes, **from_hf, **overrides})


def _expected_shapes(config: transformer.TransformerConfig) -> dict[str, tuple[int, ...]]:
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


def _check_config(config: transformer.TransformerConfig) -> None:
  wanted = dict(positions="learned", pre_norm=True, tie_embeddings=True, use_bias=True,
                num_kv_heads=None, num_token_types=0, embedding_norm=False,
                scale_embeddings=False)
  wrong = {k: getattr(config, k) for k, v in wanted.items() if getattr(config, k) != v}
  if wrong:
    raise ValueError(f"a GPT-2 config needs {wanted}; this one has {wrong}")


def import_gpt2(state_dict, config: transformer.TransformerConfig | None = None, *, hf_config=None,
                num_heads: int | None = None, dtype: Any = jnp.float32):
  """The ``params`` of ``DecoderOnlyLM(config)`` holding GPT-2's weights.

  Args:
    state_dict: HF GPT-2 names -> arrays of any float dtype, a safetensors file or a
      ``save_pretrained`` folder (see the module docstring).
    config: a GPT-2-shaped config (default :func:`gpt2_config` of the state dict).
    hf_config: HF's ``config.json`` (dict, path or folder), read when ``config`` is None.
    num_heads: heads, when neither ``config`` nor ``hf_config`` gives them.
    dtype: dtype of the returned parameters (float32 by default, whatever the file holds).

  Returns:
    a nested dict of jax arrays: ``{'decoder': {'embedder': ..., 'layer_{i}': ...,
    'final_norm': ...}}``.
  """
  weights = _strip(state_dict)
  if config is None:
    config = _config(weights, num_heads, hf.read_hf_config(hf_config, state_dict), {})
  _check_config(config)
  head = weights.pop("lm_head.weight", None)
  hf.check_names_and_shapes(weights, _expected_shapes(config))
  weights = {k: np.asarray(v, np.float32) for k, v in weights.items()}
  if head is not None and not np.array_equal(np.asarray(head, np.float32), weights["wte.weight"]):
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
  return hf.as_params({"decoder": decoder}, dtype)


def export_gpt2(params, config: transformer.TransformerConfig, *, dtype: Any = np.float32
                ) -> dict[str, np.ndarray]:
  """``DecoderOnlyLM`` params -> HF ``GPT2LMHeadModel`` names (``transformer.`` prefix, the tied
  ``lm_head.weight`` included) as NumPy arrays of ``dtype``; the inverse of
  :func:`import_gpt2`."""
  _check_config(config)
  p = jax.tree.map(lambda x: np.asarray(x, np.float32), params)["decoder"]
  d = config.features
  out = {"wte.weight": p["embedder"]["token_embedding"]["embedding"],
         "wpe.weight": p["embedder"]["position_embedding"]["embedding"],
         "ln_f.weight": p["final_norm"]["scale"], "ln_f.bias": p["final_norm"]["bias"]}
  for i in range(config.decoder_layers):
    layer, prefix = p[f"layer_{i}"], f"h.{i}."
    attention = layer["attention"]
    qkv = ("query", "key", "value")
    out.update({
        prefix + "ln_1.weight": layer["attention_norm"]["scale"],
        prefix + "ln_1.bias": layer["attention_norm"]["bias"],
        prefix + "attn.c_attn.weight": np.stack(
            [attention[n]["kernel"] for n in qkv], 1).reshape(d, 3 * d),
        prefix + "attn.c_attn.bias": np.stack([attention[n]["bias"] for n in qkv]).reshape(-1),
        prefix + "attn.c_proj.weight": attention["out"]["kernel"].reshape(d, d),
        prefix + "attn.c_proj.bias": attention["out"]["bias"],
        prefix + "ln_2.weight": layer["mlp_norm"]["scale"],
        prefix + "ln_2.bias": layer["mlp_norm"]["bias"],
        prefix + "mlp.c_fc.weight": layer["mlp"]["hidden"]["kernel"],
        prefix + "mlp.c_fc.bias": layer["mlp"]["hidden"]["bias"],
        prefix + "mlp.c_proj.weight": layer["mlp"]["output"]["kernel"],
        prefix + "mlp.c_proj.bias": layer["mlp"]["output"]["bias"],
    })
  state_dict = {"transformer." + k: np.asarray(v, dtype) for k, v in out.items()}
  state_dict["lm_head.weight"] = state_dict["transformer.wte.weight"]
  return state_dict


def gpt2_hf_config(config: transformer.TransformerConfig) -> dict[str, Any]:
  """HF's ``config.json`` for ``GPT2LMHeadModel`` of these shapes."""
  activation = {ours: theirs for theirs, ours in _ACTIVATIONS.items()
                if theirs != "gelu_pytorch_tanh"}[config.activation]
  return {"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2",
          "vocab_size": config.vocab_size, "n_embd": config.features,
          "n_layer": config.decoder_layers, "n_head": config.num_heads,
          "n_positions": config.max_length, "n_inner": config.mlp_dim,
          "activation_function": activation, "layer_norm_epsilon": config.layer_norm_epsilon,
          "resid_pdrop": config.dropout_rate, "embd_pdrop": config.dropout_rate,
          "attn_pdrop": config.attention_dropout_rate, "tie_word_embeddings": True}


def save_gpt2(directory, params, config: transformer.TransformerConfig, *, dtype: Any = np.float32
              ) -> str:
  """Writes ``model.safetensors`` + ``config.json`` that ``GPT2LMHeadModel.from_pretrained``
  reads; returns the folder."""
  state_dict = export_gpt2(params, config, dtype=dtype)
  del state_dict["lm_head.weight"]  # tied: HF's own files leave it out too
  return hf.save_pretrained(directory, state_dict, gpt2_hf_config(config))
