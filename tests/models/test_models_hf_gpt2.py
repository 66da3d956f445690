"""GPT-2 state dict import: every tensor mapped, clear errors, agreement with a NumPy GPT-2."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from attention_jax.models import hf_gpt2
from attention_jax.models import transformer

VOCAB, D, HEADS, LAYERS, CTX = 11, 8, 2, 2, 16


def _state_dict(seed=0, layers=LAYERS):
  """Random weights under the names and (Conv1D) shapes of HF's GPT2LMHeadModel."""
  rng = np.random.default_rng(seed)
  normal = lambda *shape: rng.normal(size=shape).astype(np.float32) * 0.5
  sd = {"transformer.wte.weight": normal(VOCAB, D), "transformer.wpe.weight": normal(CTX, D),
        "transformer.ln_f.weight": 1 + normal(D), "transformer.ln_f.bias": normal(D)}
  for i in range(layers):
    p = f"transformer.h.{i}."
    sd.update({
        p + "ln_1.weight": 1 + normal(D), p + "ln_1.bias": normal(D),
        p + "attn.bias": np.tril(np.ones((1, 1, CTX, CTX), np.float32)),  # a buffer
        p + "attn.c_attn.weight": normal(D, 3 * D), p + "attn.c_attn.bias": normal(3 * D),
        p + "attn.c_proj.weight": normal(D, D), p + "attn.c_proj.bias": normal(D),
        p + "ln_2.weight": 1 + normal(D), p + "ln_2.bias": normal(D),
        p + "mlp.c_fc.weight": normal(D, 4 * D), p + "mlp.c_fc.bias": normal(4 * D),
        p + "mlp.c_proj.weight": normal(4 * D, D), p + "mlp.c_proj.bias": normal(D),
    })
  sd["lm_head.weight"] = sd["transformer.wte.weight"].copy()
  return sd


def _numpy_gpt2(sd, tokens):
  """GPT-2's forward pass written out from the HF weights (reference for the import)."""
  w = lambda name: sd["transformer." + name]

  def layer_norm(x, prefix):
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + 1e-5) * w(prefix + ".weight") + w(prefix + ".bias")

  def gelu(x):
    return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x ** 3)))

  length = tokens.shape[-1]
  x = w("wte.weight")[tokens] + w("wpe.weight")[:length]
  causal = np.tril(np.ones((length, length), bool))
  for i in range(LAYERS):
    p = f"h.{i}."
    h = layer_norm(x, p + "ln_1")
    q, k, v = np.split(h @ w(p + "attn.c_attn.weight") + w(p + "attn.c_attn.bias"), 3, -1)
    split = lambda t: t.reshape(*t.shape[:-1], HEADS, D // HEADS).swapaxes(-2, -3)
    q, k, v = split(q), split(k), split(v)  # [batch, heads, length, head_dim]
    logits = q @ k.swapaxes(-1, -2) / np.sqrt(D // HEADS)
    logits = np.where(causal, logits, -np.inf)
    weights = np.exp(logits - logits.max(-1, keepdims=True))
    weights /= weights.sum(-1, keepdims=True)
    a = (weights @ v).swapaxes(-2, -3).reshape(*x.shape)
    x = x + a @ w(p + "attn.c_proj.weight") + w(p + "attn.c_proj.bias")
    h = gelu(layer_norm(x, p + "ln_2") @ w(p + "mlp.c_fc.weight") + w(p + "mlp.c_fc.bias"))
    x = x + h @ w(p + "mlp.c_proj.weight") + w(p + "mlp.c_proj.bias")
  return layer_norm(x, "ln_f") @ w("wte.weight").T


def _model_and_params(sd):
  config = hf_gpt2.gpt2_config(sd, num_heads=HEADS, dropout_rate=0.0)
  return transformer.DecoderOnlyLM(config), hf_gpt2.import_gpt2(sd, config)


def test_config_is_inferred_from_the_shapes():
  config = hf_gpt2.gpt2_config(_state_dict(), num_heads=HEADS)
  assert (config.vocab_size, config.features, config.num_layers, config.max_length,
          config.mlp_dim) == (VOCAB, D, LAYERS, CTX, 4 * D)
  assert config.pre_norm and config.positions == "learned" and config.tie_embeddings


def test_every_tensor_is_mapped_onto_the_model_tree():
  sd = _state_dict()
  model, params = _model_and_params(sd)
  shapes = transformer.parameter_shapes(model, jnp.zeros((1, 4), jnp.int32))
  assert jax.tree.structure(params) == jax.tree.structure(shapes)
  for ours, theirs in zip(jax.tree.leaves(params), jax.tree.leaves(shapes)):
    assert ours.shape == theirs.shape
  # Every number of the state dict (but the buffers and the tied head) lands somewhere.
  imported = sum(x.size for x in jax.tree.leaves(params))
  given = sum(v.size for k, v in sd.items()
              if not re.search(r"h\.\d+\.attn\.bias$", k) and k != "lm_head.weight")
  assert imported == given


def test_logits_agree_with_numpy_gpt2():
  sd = _state_dict()
  model, params = _model_and_params(sd)
  tokens = np.random.default_rng(1).integers(0, VOCAB, (2, 9))
  ours = model.apply({"params": params}, jnp.asarray(tokens))
  np.testing.assert_allclose(ours, _numpy_gpt2(sd, tokens), rtol=2e-4, atol=2e-4)


def test_imported_model_generates_with_the_cache():
  sd = _state_dict()
  model, params = _model_and_params(sd)
  prompt = jnp.asarray([[1, 2, 3]])
  tokens = transformer.generate(model, params, prompt, 4)
  seq = np.asarray(prompt)
  for _ in range(4):
    seq = np.concatenate([seq, _numpy_gpt2(sd, seq)[:, -1:].argmax(-1)], 1)
  np.testing.assert_array_equal(tokens, seq[:, 3:])


def test_prefix_is_optional():
  sd = {k.removeprefix("transformer."): v for k, v in _state_dict().items()}
  _, params = _model_and_params(sd)
  assert "layer_1" in params["decoder"]


def test_missing_unknown_and_misshaped_names_raise():
  sd = _state_dict()
  config = hf_gpt2.gpt2_config(sd, num_heads=HEADS)
  broken = dict(sd)
  del broken["transformer.h.1.mlp.c_fc.bias"]
  with pytest.raises(ValueError, match=r"missing \['h.1.mlp.c_fc.bias'\]"):
    hf_gpt2.import_gpt2(broken, config)
  extra = dict(sd, **{"transformer.h.0.attn.rotary": np.zeros(3)})
  with pytest.raises(ValueError, match=r"unknown \['h.0.attn.rotary'\]"):
    hf_gpt2.import_gpt2(extra, config)
  wrong = dict(sd, **{"transformer.h.0.attn.c_proj.weight": np.zeros((D, D + 1))})
  with pytest.raises(ValueError, match=r"h.0.attn.c_proj.weight has shape \(8, 9\)"):
    hf_gpt2.import_gpt2(wrong, config)
  untied = dict(sd, **{"lm_head.weight": np.zeros((VOCAB, D))})
  with pytest.raises(ValueError, match="lm_head.weight differs"):
    hf_gpt2.import_gpt2(untied, config)
  with pytest.raises(ValueError, match="pass num_heads"):
    hf_gpt2.gpt2_config(sd)
  with pytest.raises(ValueError, match="positions"):
    hf_gpt2.import_gpt2(sd, transformer.TransformerConfig(vocab_size=VOCAB, features=D,
                                                     num_heads=HEADS))
