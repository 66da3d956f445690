"""Hugging Face BERT weights into :class:`BertEncoder` / :class:`BertForMaskedLM`, and back out.

``import_bert`` reads the layouts of HF's ``BertModel`` (no prefix, pooler optional) and of
``BertForMaskedLM`` / ``BertForPreTraining`` (``bert.`` prefix, the masked-LM head
``cls.predictions``; the next-sentence head ``cls.seq_relationship`` of pre-training
checkpoints is not modelled and is skipped) as a mapping of arrays of any float dtype, a ``.safetensors`` file or a
``save_pretrained`` folder. Nothing is downloaded here. Names (torch ``Linear``: ``y = x @ W.T +
b``)::

  embeddings.{word,position,token_type}_embeddings.weight [n, d]   embeddings.LayerNorm [d]
  encoder.layer.{i}.attention.self.{query,key,value}.weight [d, d]   .bias [d]
  encoder.layer.{i}.attention.output.dense.weight [d, d]   .LayerNorm [d]   (post-norm)
  encoder.layer.{i}.intermediate.dense.weight [m, d]        encoder.layer.{i}.output.dense [d, m]
  encoder.layer.{i}.output.LayerNorm [d]                     pooler.dense.weight [d, d]
  cls.predictions.transform.dense [d, d]   .LayerNorm [d]    cls.predictions.bias [vocab]

Shapes (vocabulary, width, positions, token types, MLP width, layers) are read from the tensors;
the heads, activation, epsilon and dropout from HF's ``config.json`` when given, else BERT's
(64-wide heads, exact GELU, 1e-12). ``LayerNorm.gamma`` / ``.beta`` (TF-converted files) read as
``.weight`` / ``.bias``; the buffers ``position_ids`` / ``token_type_ids`` are ignored. A missing,
unknown or misshaped name raises a ``ValueError`` naming it.
"""

from __future__ import annotations

import re
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from attention_jax.models import hf_checkpoints as hf
from attention_jax.models import presets
from attention_jax.models import transformer

_IGNORED = re.compile(r"embeddings\.(position_ids|token_type_ids)$|cls\.seq_relationship\..*")
_ACTIVATIONS = {"gelu": "gelu_exact", "gelu_new": "gelu", "gelu_pytorch_tanh": "gelu",
                "relu": "relu"}
_HEAD = "cls.predictions."
_TF_NAMES = ((r"LayerNorm\.gamma$", "LayerNorm.weight"),
             (r"LayerNorm\.beta$", "LayerNorm.bias"))


def _strip(state_dict) -> dict[str, np.ndarray]:
  return hf.strip_names(state_dict, "bert.", _IGNORED, _TF_NAMES)


def bert_config(state_dict, num_heads: int | None = None, hf_config=None,
                **overrides) -> transformer.TransformerConfig:
  """The :func:`presets.bert` config whose shapes match ``state_dict`` (arguments as
  :func:`attention_jax.models.hf_gpt2.gpt2_config`)."""
  hf_cfg = hf.read_hf_config(hf_config, state_dict)
  return _config(_strip(state_dict), num_heads, hf_cfg, overrides)


def _config(weights, num_heads, hf_cfg, overrides) -> transformer.TransformerConfig:
  names = ("embeddings.word_embeddings.weight", "embeddings.position_embeddings.weight",
           "encoder.layer.0.intermediate.dense.weight")
  for name in names:
    if name not in weights:
      raise ValueError(f"state dict has no {name!r} (nor 'bert.{name}')")
  vocab, features = weights[names[0]].shape
  max_length = weights[names[1]].shape[0]
  mlp_dim = weights[names[2]].shape[0]
  types = weights.get("embeddings.token_type_embeddings.weight")
  num_token_types = 0 if types is None else types.shape[0]
  layer_ids = {int(m.group(1))
               for m in map(re.compile(r"encoder\.layer\.(\d+)\.").match, weights) if m}
  num_layers = len(layer_ids)
  if layer_ids != set(range(num_layers)):
    raise ValueError(f"layers {sorted(layer_ids)} are not numbered 0..{num_layers - 1}")
  for key, value in (("vocab_size", vocab), ("hidden_size", features),
                     ("max_position_embeddings", max_length), ("type_vocab_size", num_token_types),
                     ("num_hidden_layers", num_layers), ("intermediate_size", mlp_dim)):
    hf.check_config_value(hf_cfg, key, value)
  if hf_cfg.get("position_embedding_type", "absolute") != "absolute":
    raise ValueError(f"hf_config['position_embedding_type'] = "
                     f"{hf_cfg['position_embedding_type']!r} is not supported (only 'absolute')")
  activation = hf_cfg.get("hidden_act", "gelu")
  if activation not in _ACTIVATIONS:
    raise ValueError(f"hf_config['hidden_act'] = {activation!r}; supported: "
                     f"{sorted(_ACTIVATIONS)}")
  from_hf = {"activation": _ACTIVATIONS[activation]}
  for key, field in (("layer_norm_eps", "layer_norm_epsilon"),
                     ("hidden_dropout_prob", "dropout_rate"),
                     ("attention_probs_dropout_prob", "attention_dropout_rate")):
    if key in hf_cfg:
      from_hf[field] = float(hf_cfg[key])
  num_heads = hf.default_num_heads(features, hf_cfg, "num_attention_heads", num_heads)
  shapes = dict(vocab_size=vocab, max_length=max_length, mlp_dim=mlp_dim,
                num_token_types=num_token_types)
  return presets.bert(num_layers, features, num_heads, **{**shapes, **from_hf, **overrides})


def _dense(d_in: int, d_out: int) -> dict[str, tuple[int, ...]]:
  return {"weight": (d_out, d_in), "bias": (d_out,)}


def _expected_shapes(config: transformer.TransformerConfig, pooler: bool, head: bool):
  d, m = config.features, config.mlp_dim
  layouts: dict[str, dict[str, tuple[int, ...]]] = {
      "embeddings.word_embeddings": {"weight": (config.vocab_size, d)},
      "embeddings.position_embeddings": {"weight": (config.max_length, d)},
      "embeddings.LayerNorm": {"weight": (d,), "bias": (d,)},
  }
  if config.num_token_types:
    layouts["embeddings.token_type_embeddings"] = {"weight": (config.num_token_types, d)}
  for i in range(config.num_layers):
    p = f"encoder.layer.{i}."
    for name in ("attention.self.query", "attention.self.key", "attention.self.value",
                 "attention.output.dense"):
      layouts[p + name] = _dense(d, d)
    layouts[p + "intermediate.dense"] = _dense(d, m)
    layouts[p + "output.dense"] = _dense(m, d)
    for name in ("attention.output.LayerNorm", "output.LayerNorm"):
      layouts[p + name] = {"weight": (d,), "bias": (d,)}
  if pooler:
    layouts["pooler.dense"] = _dense(d, d)
  if head:
    layouts[_HEAD + "transform.dense"] = _dense(d, d)
    layouts[_HEAD + "transform.LayerNorm"] = {"weight": (d,), "bias": (d,)}
    layouts[_HEAD[:-1]] = {"bias": (config.vocab_size,)}
  return {f"{module}.{leaf}": shape for module, leaves in layouts.items()
          for leaf, shape in leaves.items()}


def _check_config(config: transformer.TransformerConfig) -> None:
  wanted = dict(positions="learned", pre_norm=False, use_bias=True, num_kv_heads=None,
                embedding_norm=True, scale_embeddings=False)
  wrong = {k: getattr(config, k) for k, v in wanted.items() if getattr(config, k) != v}
  if wrong:
    raise ValueError(f"a BERT config needs {wanted}; this one has {wrong}")


def import_bert(state_dict, config: transformer.TransformerConfig | None = None, *, hf_config=None,
                num_heads: int | None = None, dtype: Any = jnp.float32
                ) -> tuple[nn.Module, dict[str, Any]]:
  """The model and ``params`` holding a BERT checkpoint.

  Args:
    state_dict: HF BERT names -> arrays of any float dtype, a safetensors file or a
      ``save_pretrained`` folder (see the module docstring).
    config: a BERT-shaped config (default :func:`bert_config` of the state dict).
    hf_config: HF's ``config.json`` (dict, path or folder), read when ``config`` is None.
    num_heads: heads, when neither ``config`` nor ``hf_config`` gives them.
    dtype: dtype of the returned parameters (float32 by default, whatever the file holds).

  Returns:
    ``(model, params)``: :class:`BertForMaskedLM` when the state dict has the masked-LM head,
    else :class:`BertEncoder` (with the pooler if the state dict has one); apply with
    ``model.apply({"params": params}, tokens, lengths, token_types=...)``.
  """
  weights = _strip(state_dict)
  if config is None:
    config = _config(weights, num_heads, hf.read_hf_config(hf_config, state_dict), {})
  _check_config(config)
  tied = {name: weights.pop(name) for name in (_HEAD + "decoder.weight", _HEAD + "decoder.bias")
          if name in weights}
  head = any(name.startswith(_HEAD) for name in weights)
  pooler = "pooler.dense.weight" in weights
  hf.check_names_and_shapes(weights, _expected_shapes(config, pooler, head))
  w = {k: np.asarray(v, np.float32) for k, v in weights.items()}
  for name, twin in ((_HEAD + "decoder.weight", "embeddings.word_embeddings.weight"),
                     (_HEAD + "decoder.bias", _HEAD + "bias")):
    if name in tied and not np.array_equal(np.asarray(tied[name], np.float32), w[twin]):
      raise ValueError(f"{name} differs from {twin}; BertForMaskedLM ties them")

  d, h = config.features, config.num_heads
  dense = lambda p: {"kernel": w[p + ".weight"].T, "bias": w[p + ".bias"]}
  norm = lambda p: {"scale": w[p + ".weight"], "bias": w[p + ".bias"]}
  embedder = {"token_embedding": {"embedding": w["embeddings.word_embeddings.weight"]},
              "position_embedding": {"embedding": w["embeddings.position_embeddings.weight"]},
              "norm": norm("embeddings.LayerNorm")}
  if config.num_token_types:
    embedder["token_type_embedding"] = {
        "embedding": w["embeddings.token_type_embeddings.weight"]}
  encoder: dict[str, Any] = {}
  for i in range(config.num_layers):
    p = f"encoder.layer.{i}."
    attention = {name: {"kernel": w[f"{p}attention.self.{name}.weight"].T.reshape(d, h, d // h),
                        "bias": w[f"{p}attention.self.{name}.bias"].reshape(h, d // h)}
                 for name in ("query", "key", "value")}
    attention["out"] = {"kernel": w[p + "attention.output.dense.weight"].T.reshape(h, d // h, d),
                        "bias": w[p + "attention.output.dense.bias"]}
    encoder[f"layer_{i}"] = {
        "attention": attention, "attention_norm": norm(p + "attention.output.LayerNorm"),
        "mlp": {"hidden": dense(p + "intermediate.dense"), "output": dense(p + "output.dense")},
        "mlp_norm": norm(p + "output.LayerNorm")}
  if head:
    params = {"embedder": embedder, "encoder": encoder,
              "head_transform": dense(_HEAD + "transform.dense"),
              "head_norm": norm(_HEAD + "transform.LayerNorm"), "head_bias": w[_HEAD + "bias"]}
    model = transformer.BertForMaskedLM(config)
  else:
    params = {"encoder": {"embedder": embedder, **encoder}}
    if pooler:
      params["pooler"] = {"dense": dense("pooler.dense")}
    model = transformer.BertEncoder(config, add_pooler=pooler)
  return model, hf.as_params(params, dtype)


def export_bert(params, config: transformer.TransformerConfig, *, dtype: Any = np.float32
                ) -> dict[str, np.ndarray]:
  """Params of ``BertEncoder`` (HF ``BertModel`` names) or ``BertForMaskedLM`` (``bert.`` prefix
  and ``cls.predictions``, tied names included) as NumPy arrays of ``dtype``; the inverse of
  :func:`import_bert`."""
  _check_config(config)
  p = jax.tree.map(lambda x: np.asarray(x, np.float32), params)
  head = "head_bias" in p
  embedder = p["embedder"] if head else p["encoder"]["embedder"]
  layers = p["encoder"]
  d = config.features
  out = {"embeddings.word_embeddings.weight": embedder["token_embedding"]["embedding"],
         "embeddings.position_embeddings.weight": embedder["position_embedding"]["embedding"],
         "embeddings.LayerNorm.weight": embedder["norm"]["scale"],
         "embeddings.LayerNorm.bias": embedder["norm"]["bias"]}
  if config.num_token_types:
    out["embeddings.token_type_embeddings.weight"] = embedder["token_type_embedding"]["embedding"]

  def dense(name, leaf):
    out[name + ".weight"], out[name + ".bias"] = leaf["kernel"].T, leaf["bias"]

  def norm(name, leaf):
    out[name + ".weight"], out[name + ".bias"] = leaf["scale"], leaf["bias"]

  for i in range(config.num_layers):
    layer, prefix = layers[f"layer_{i}"], f"encoder.layer.{i}."
    for name in ("query", "key", "value"):
      leaf = layer["attention"][name]
      dense(f"{prefix}attention.self.{name}",
            {"kernel": leaf["kernel"].reshape(d, d), "bias": leaf["bias"].reshape(d)})
    out_leaf = layer["attention"]["out"]
    dense(prefix + "attention.output.dense",
          {"kernel": out_leaf["kernel"].reshape(d, d), "bias": out_leaf["bias"]})
    norm(prefix + "attention.output.LayerNorm", layer["attention_norm"])
    dense(prefix + "intermediate.dense", layer["mlp"]["hidden"])
    dense(prefix + "output.dense", layer["mlp"]["output"])
    norm(prefix + "output.LayerNorm", layer["mlp_norm"])
  if "pooler" in p:
    dense("pooler.dense", p["pooler"]["dense"])
  if head:
    out = {"bert." + k: v for k, v in out.items()}
    dense(_HEAD + "transform.dense", p["head_transform"])
    norm(_HEAD + "transform.LayerNorm", p["head_norm"])
    out[_HEAD + "bias"] = p["head_bias"]
    out[_HEAD + "decoder.weight"] = out["bert.embeddings.word_embeddings.weight"]
    out[_HEAD + "decoder.bias"] = out[_HEAD + "bias"]
  return {k: np.asarray(v, dtype) for k, v in out.items()}


def bert_hf_config(config: transformer.TransformerConfig, masked_lm: bool) -> dict[str, Any]:
  """HF's ``config.json`` for ``BertForMaskedLM`` (``masked_lm``) or ``BertModel``."""
  activation = {"gelu_exact": "gelu", "gelu": "gelu_new", "relu": "relu"}[config.activation]
  return {"architectures": ["BertForMaskedLM" if masked_lm else "BertModel"],
          "model_type": "bert", "vocab_size": config.vocab_size,
          "hidden_size": config.features, "num_hidden_layers": config.num_layers,
          "num_attention_heads": config.num_heads, "intermediate_size": config.mlp_dim,
          "hidden_act": activation, "max_position_embeddings": config.max_length,
          "type_vocab_size": config.num_token_types, "layer_norm_eps": config.layer_norm_epsilon,
          "hidden_dropout_prob": config.dropout_rate,
          "attention_probs_dropout_prob": config.attention_dropout_rate,
          "position_embedding_type": "absolute", "tie_word_embeddings": True}


def save_bert(directory, params, config: transformer.TransformerConfig, *,
              dtype: Any = np.float32) -> str:
  """Writes ``model.safetensors`` + ``config.json`` that ``BertForMaskedLM`` / ``BertModel``
  ``.from_pretrained`` reads; returns the folder."""
  state_dict = export_bert(params, config, dtype=dtype)
  masked_lm = _HEAD + "bias" in state_dict
  for tied in (_HEAD + "decoder.weight", _HEAD + "decoder.bias"):  # HF's files leave them out
    state_dict.pop(tied, None)
  return hf.save_pretrained(directory, state_dict, bert_hf_config(config, masked_lm))
