"""Hugging Face checkpoints in and out, checked against transformers' own outputs.

``tests/fixtures/hf/`` holds tiny random-initialised GPT-2, BERT masked-LM and BERT checkpoints
saved by transformers' ``save_pretrained`` with HF's outputs for fixed inputs
(``tests/fixtures/make_hf_fixtures.py``), so these tests need neither PyTorch nor transformers.
The live tests at the end run against transformers itself when it is installed.
"""

import importlib.util
import json
import os

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

from attention_jax.models import hf_bert
from attention_jax.models import hf_checkpoints
from attention_jax.models import hf_gpt2
from attention_jax.models import transformer

FIXTURES = os.path.join(os.path.dirname(os.path.dirname(__file__)), "fixtures", "hf")


def _fixture(name):
  folder = os.path.join(FIXTURES, name)
  return folder, dict(np.load(os.path.join(folder, "expected.npz")))


def _same_tree(a, b):
  return jax.tree.structure(a) == jax.tree.structure(b) and all(
      np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(jax.tree.leaves(a),
                                                                   jax.tree.leaves(b)))


def test_gpt2_logits_and_greedy_tokens_equal_transformers():
  folder, expected = _fixture("gpt2")
  config = hf_gpt2.gpt2_config(folder, dropout_rate=0.0)  # config.json read from the folder
  assert (config.num_heads, config.mlp_dim, config.max_length) == (4, 48, 32)  # n_inner = 48
  params = hf_gpt2.import_gpt2(folder)
  model = transformer.DecoderOnlyLM(config)
  logits = model.apply({"params": params}, jnp.asarray(expected["tokens"]))
  np.testing.assert_allclose(logits, expected["logits"], atol=1e-5, rtol=1e-5)
  greedy = transformer.generate(model, params, jnp.asarray(expected["prompt"]),
                       expected["greedy"].shape[1])
  np.testing.assert_array_equal(greedy, expected["greedy"])


def test_gpt2_bfloat16_checkpoint_loads_in_the_dtype_asked_for():
  folder, expected = _fixture("gpt2_bf16")
  stored = hf_checkpoints.load_state_dict(folder)
  assert {v.dtype for v in stored.values()} == {np.dtype(ml_dtypes.bfloat16)}
  as_f32 = hf_gpt2.import_gpt2(folder)
  assert {x.dtype for x in jax.tree.leaves(as_f32)} == {jnp.dtype(jnp.float32)}
  as_bf16 = hf_gpt2.import_gpt2(folder, dtype=jnp.bfloat16)
  assert {x.dtype for x in jax.tree.leaves(as_bf16)} == {jnp.dtype(jnp.bfloat16)}
  # The float32 checkpoint rounded to bfloat16 is exactly what the bf16 file holds.
  rounded = jax.tree.map(lambda x: x.astype(jnp.bfloat16).astype(jnp.float32),
                         hf_gpt2.import_gpt2(os.path.join(FIXTURES, "gpt2")))
  assert _same_tree(as_f32, rounded)
  # Arrays given directly (ml_dtypes bfloat16, as from safetensors or a torch tensor's bits).
  assert _same_tree(hf_gpt2.import_gpt2(stored, hf_config=folder), as_f32)
  config = hf_gpt2.gpt2_config(folder, dropout_rate=0.0)
  logits = transformer.DecoderOnlyLM(config).apply({"params": as_f32},
                                                   jnp.asarray(expected["tokens"]))
  np.testing.assert_allclose(logits, expected["logits"], atol=0.25)  # bf16 weights


def test_bert_masked_lm_logits_equal_transformers():
  folder, expected = _fixture("bert_mlm")
  model, params = hf_bert.import_bert(folder)
  assert isinstance(model, transformer.BertForMaskedLM)
  assert (model.config.mlp_dim, model.config.num_token_types, model.config.activation) == (
      37, 2, "gelu_exact")
  logits = model.apply({"params": params}, jnp.asarray(expected["tokens"]),
                       jnp.asarray(expected["lengths"]),
                       token_types=jnp.asarray(expected["token_types"]))
  np.testing.assert_allclose(logits, expected["logits"], atol=1e-5, rtol=1e-5)


def test_bert_sequence_and_pooled_output_equal_transformers():
  folder, expected = _fixture("bert")
  model, params = hf_bert.import_bert(folder)
  assert isinstance(model, transformer.BertEncoder) and model.add_pooler
  sequence, pooled = model.apply({"params": params}, jnp.asarray(expected["tokens"]),
                                 jnp.asarray(expected["lengths"]),
                                 token_types=jnp.asarray(expected["token_types"]))
  np.testing.assert_allclose(sequence, expected["sequence"], atol=1e-5, rtol=1e-5)
  np.testing.assert_allclose(pooled, expected["pooled"], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", ["gpt2", "bert_mlm", "bert"])
def test_export_gives_back_the_checkpoint_exactly(name, tmp_path):
  folder, _ = _fixture(name)
  original = hf_checkpoints.load_state_dict(folder)
  if name == "gpt2":
    config = hf_gpt2.gpt2_config(folder)
    params = hf_gpt2.import_gpt2(folder)
    exported = hf_gpt2.export_gpt2(params, config)
    again = hf_gpt2.import_gpt2(hf_gpt2.save_gpt2(tmp_path, params, config))
  else:
    model, params = hf_bert.import_bert(folder)
    config = model.config
    exported = hf_bert.export_bert(params, config)
    again = hf_bert.import_bert(hf_bert.save_bert(tmp_path, params, config))[1]
  # Every tensor HF saved comes back bit for bit (the export adds only tied names).
  for key, value in original.items():
    np.testing.assert_array_equal(exported[key], value, err_msg=key)
  assert _same_tree(again, params)
  ours = json.loads((tmp_path / "config.json").read_text())
  with open(os.path.join(folder, "config.json")) as f:
    theirs = json.load(f)
  assert {k: theirs[k] for k in ours if k in theirs} == {k: ours[k] for k in ours if k in theirs}


def test_torch_style_tensors_of_any_float_dtype_are_read():
  folder, _ = _fixture("gpt2")
  stored = hf_checkpoints.load_state_dict(folder)
  half = {k: v.astype(np.float16) for k, v in stored.items()}
  params = hf_gpt2.import_gpt2(half, hf_config=folder)
  expected = jax.tree.map(lambda x: x.astype(jnp.float16).astype(jnp.float32),
                          hf_gpt2.import_gpt2(folder))
  assert _same_tree(params, expected)


def test_bert_names_errors_and_config_checks():
  folder, _ = _fixture("bert")
  sd = hf_checkpoints.load_state_dict(folder)
  broken = dict(sd)
  del broken["encoder.layer.1.output.dense.bias"]
  with pytest.raises(ValueError, match=r"missing \['encoder.layer.1.output.dense.bias'\]"):
    hf_bert.import_bert(broken, hf_config=folder)
  with pytest.raises(ValueError, match=r"unknown \['encoder.layer.0.attention.rotary'\]"):
    hf_bert.import_bert(dict(sd, **{"encoder.layer.0.attention.rotary": np.zeros(3)}),
                        hf_config=folder)
  wrong = dict(sd, **{"pooler.dense.weight": np.zeros((32, 31), np.float32)})
  with pytest.raises(ValueError, match=r"pooler.dense.weight has shape \(32, 31\), expected"):
    hf_bert.import_bert(wrong, hf_config=folder)
  with pytest.raises(ValueError, match=r"hf_config\['intermediate_size'\] is 64 but the tensors"):
    hf_bert.import_bert(sd, hf_config={"intermediate_size": 64, "num_attention_heads": 4})
  with pytest.raises(ValueError, match="position_embedding_type"):
    hf_bert.import_bert(sd, hf_config={"position_embedding_type": "relative_key",
                                       "num_attention_heads": 4})
  with pytest.raises(ValueError, match="pass num_heads"):
    hf_bert.import_bert(sd)  # width 32: no config.json, no num_heads
  # With the prefix of BertForPreTraining and the TF-era gamma/beta names, no pooler.
  renamed = {"bert." + k.replace("LayerNorm.weight", "LayerNorm.gamma")
             .replace("LayerNorm.bias", "LayerNorm.beta"): v
             for k, v in sd.items() if not k.startswith("pooler.")}
  model, params = hf_bert.import_bert(renamed, num_heads=4)
  assert isinstance(model, transformer.BertEncoder)
  assert not model.add_pooler and "pooler" not in params


def test_gpt2_config_options_we_do_not_compute_are_refused():
  folder, _ = _fixture("gpt2")
  with pytest.raises(ValueError, match="scale_attn_by_inverse_layer_idx"):
    hf_gpt2.gpt2_config(folder, hf_config={"n_head": 4, "scale_attn_by_inverse_layer_idx": True})
  with pytest.raises(ValueError, match=r"hf_config\['n_layer'\] is 3 but the tensors say 2"):
    hf_gpt2.gpt2_config(folder, hf_config={"n_head": 4, "n_layer": 3})
  with pytest.raises(ValueError, match="activation_function"):
    hf_gpt2.gpt2_config(folder, hf_config={"n_head": 4, "activation_function": "swish"})


_LIVE = importlib.util.find_spec("transformers") is not None and \
    importlib.util.find_spec("torch") is not None
live = pytest.mark.skipif(not _LIVE, reason="transformers and torch are not installed "
                                            "(pip install -e '.[interop]')")


@live
def test_live_models_saved_here_load_in_transformers_and_agree(tmp_path):
  import torch
  import transformers
  tokens = np.random.default_rng(3).integers(0, 50, (2, 7))
  config = hf_gpt2.gpt2_config(os.path.join(FIXTURES, "gpt2"), dropout_rate=0.0)
  model = transformer.DecoderOnlyLM(config)
  params = model.init(jax.random.key(0), jnp.asarray(tokens))["params"]
  hf_model = transformers.GPT2LMHeadModel.from_pretrained(
      hf_gpt2.save_gpt2(tmp_path / "gpt2", params, config)).eval()
  with torch.no_grad():
    theirs = hf_model(torch.from_numpy(tokens)).logits.numpy()
  np.testing.assert_allclose(model.apply({"params": params}, jnp.asarray(tokens)), theirs,
                             atol=1e-5, rtol=1e-5)

  mlm, mlm_params = hf_bert.import_bert(os.path.join(FIXTURES, "bert_mlm"))
  hf_mlm = transformers.BertForMaskedLM.from_pretrained(
      hf_bert.save_bert(tmp_path / "bert", mlm_params, mlm.config)).eval()
  with torch.no_grad():
    theirs = hf_mlm(torch.from_numpy(tokens)).logits.numpy()
  np.testing.assert_allclose(mlm.apply({"params": mlm_params}, jnp.asarray(tokens)), theirs,
                             atol=1e-5, rtol=1e-5)


@live
def test_live_torch_bfloat16_state_dict_imports():
  import torch
  import transformers
  folder = os.path.join(FIXTURES, "gpt2")
  hf_model = transformers.GPT2LMHeadModel.from_pretrained(folder).to(torch.bfloat16)
  params = hf_gpt2.import_gpt2(hf_model.state_dict(), hf_config=folder)
  expected = jax.tree.map(lambda x: x.astype(jnp.bfloat16).astype(jnp.float32),
                          hf_gpt2.import_gpt2(folder))
  assert _same_tree(params, expected)
