"""Transformer models: shapes, options, causality, KV-cache decoding, errors."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from attention_jax import decoding
from attention_jax.models import transformer

VOCAB, B, T = 13, 2, 10


def _config(**overrides):
  config = transformer.TransformerConfig(
      vocab_size=VOCAB, features=16, num_heads=4, mlp_dim=32, num_layers=2, max_length=12,
      dropout_rate=0.0)
  return dataclasses.replace(config, **overrides)


def _tokens(seed=0, shape=(B, T)):
  return jnp.asarray(np.random.default_rng(seed).integers(0, VOCAB, shape), jnp.int32)


OPTIONS = [
    dict(positions="sinusoidal"),
    dict(positions="learned", pre_norm=True),
    dict(positions="rotary", num_kv_heads=2),
    dict(positions="learned", pre_norm=True, tie_embeddings=False),
]


@pytest.mark.parametrize("options", OPTIONS)
def test_lm_is_causal(options):
  model = transformer.DecoderOnlyLM(_config(**options))
  x = _tokens()
  variables = model.init(jax.random.key(0), x)
  logits = model.apply(variables, x)
  assert logits.shape == (B, T, VOCAB) and logits.dtype == jnp.float32
  changed = x.at[:, 6:].set((x[:, 6:] + 1) % VOCAB)
  other = model.apply(variables, changed)
  np.testing.assert_allclose(other[:, :6], logits[:, :6], atol=1e-5)
  assert not np.allclose(other[:, 6:], logits[:, 6:])


@pytest.mark.parametrize("options", OPTIONS)
def test_lm_cache_decoding_matches_full_pass(options):
  model = transformer.DecoderOnlyLM(_config(**options))
  x = _tokens(1)
  params = model.init(jax.random.key(0), x)["params"]
  full = model.apply({"params": params}, x)
  init_fn, step_fn = transformer.lm_decoding_fns(model, params, x[:, :4], T)
  state = init_fn()  # prompt[:, :3] in one call
  step = jax.jit(step_fn)
  logits = []
  for t in range(3, T):
    out, state, _ = step(state, x[:, t])
    logits.append(out)
  np.testing.assert_allclose(np.stack(logits, 1), full[:, 3:], atol=1e-5)
  assert step._cache_size() == 1  # one compiled step for every token


def test_lm_chunked_decode_with_apply():
  model = transformer.DecoderOnlyLM(_config(positions="sinusoidal"))
  x = _tokens(2)
  # Compiled (init, the full pass, one program per chunk length): op by op costs seconds.
  params = jax.jit(model.init)(jax.random.key(0), x)["params"]
  full = jax.jit(model.apply)({"params": params}, x)
  decoder = model.clone(decode=True)
  cache = jax.jit(decoder.init)(jax.random.key(0), jnp.zeros((B, T), jnp.int32))["cache"]
  chunk = jax.jit(lambda variables, x: decoder.apply(variables, x, mutable=["cache"]))
  outs = []
  for start, stop in [(0, 5), (5, 6), (6, 8), (8, 10)]:
    out, state = chunk({"params": params, "cache": cache}, x[:, start:stop])
    cache = state["cache"]
    outs.append(out)
  np.testing.assert_allclose(np.concatenate(outs, 1), full, atol=1e-5)
  with pytest.raises(ValueError, match="runs past"):
    decoder.apply({"params": params, "cache": cache}, x[:, :3], mutable=["cache"])


@pytest.mark.slow  # three compilations of the generator; test_transformer_gpt2_import covers it
def test_generate_greedy_equals_argmax_rollout_and_temperature_zero():
  model = transformer.DecoderOnlyLM(_config(positions="learned", pre_norm=True))
  prompt = _tokens(3, (B, 3))
  params = model.init(jax.random.key(0), prompt)["params"]
  generated = transformer.generate(model, params, prompt, 5)
  # The argmax rollout without a cache: causal, so the padding after position t is harmless.
  apply = jax.jit(lambda seq: model.apply({"params": params}, seq))
  seq = jnp.zeros((B, 8), jnp.int32).at[:, :3].set(prompt)
  for t in range(3, 8):
    seq = seq.at[:, t].set(jnp.argmax(apply(seq)[:, t - 1], -1).astype(jnp.int32))
  np.testing.assert_array_equal(generated, seq[:, 3:])
  sampled = transformer.generate(model, params, prompt, 5, temperature=1.0, top_k=1,
                        rng=jax.random.key(4))
  np.testing.assert_array_equal(sampled, generated)  # top_k=1 is greedy
  sampled = transformer.generate(model, params, prompt, 5, temperature=2.0, rng=jax.random.key(4))
  assert sampled.shape == (B, 5) and int(sampled.max()) < VOCAB


@pytest.mark.parametrize("options", [dict(), dict(pre_norm=True, positions="learned")])
def test_encoder_decoder_cache_matches_teacher_forcing(options):
  model = transformer.EncoderDecoder(_config(**options))
  src, tgt = _tokens(4, (B, 7)), _tokens(5, (B, 6))
  lengths = jnp.array([7, 4])
  params = jax.jit(model.init)(jax.random.key(0), src, tgt, lengths)["params"]
  assert set(params) == {"embedder", "encoder", "decoder"}  # one embedding, shared
  apply = jax.jit(model.apply)
  full = apply({"params": params}, src, tgt, lengths)
  # Padding beyond the length does not matter.
  padded = src.at[1, 4:].set(0)
  np.testing.assert_allclose(apply({"params": params}, padded, tgt, lengths)[1],
                             full[1], atol=1e-5)
  init_fn, step_fn = transformer.encoder_decoder_decoding_fns(model, params, src, lengths,
                                                              max_len=6)
  state = jax.jit(init_fn)()
  step_fn = jax.jit(step_fn)  # one compiled step for every token
  outs = []
  for t in range(6):
    out, state, _ = step_fn(state, tgt[:, t])
    outs.append(out)
  np.testing.assert_allclose(np.stack(outs, 1), full, atol=1e-5)


def test_encoder_decoder_beam_search_of_one_is_greedy():
  model = transformer.EncoderDecoder(_config())
  src = _tokens(6, (B, 7))
  params = model.init(jax.random.key(0), src, src)["params"]
  fns = transformer.encoder_decoder_decoding_fns(model, params, src, max_len=6)
  greedy, _ = jax.jit(lambda: decoding.greedy_decode(*fns, B, 6, bos_id=1, eos_id=2))()
  beam, _, _ = jax.jit(lambda: decoding.beam_search(*fns, B, 1, 6, bos_id=1, eos_id=2))()
  np.testing.assert_array_equal(beam, greedy)
  beams, scores, _ = decoding.beam_search(*fns, B, 3, 6, bos_id=1, eos_id=2,
                                          return_all_beams=True)
  assert beams.shape == (B, 3, 6)


def test_bf16_compute_keeps_float32_params_and_logits():
  model = transformer.DecoderOnlyLM(_config(pre_norm=True, dtype=jnp.bfloat16))
  x = _tokens()
  variables = model.init(jax.random.key(0), x)
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(variables))
  logits = model.apply(variables, x)
  reference = transformer.DecoderOnlyLM(_config(pre_norm=True)).apply(variables, x)
  assert logits.dtype == jnp.float32
  np.testing.assert_allclose(logits, reference, atol=0.15)


def test_dropout_needs_rng_and_changes_outputs():
  model = transformer.DecoderOnlyLM(_config(dropout_rate=0.5))
  x = _tokens()
  variables = model.init(jax.random.key(0), x)
  a = model.apply(variables, x, deterministic=False, rngs={"dropout": jax.random.key(1)})
  b = model.apply(variables, x, deterministic=False, rngs={"dropout": jax.random.key(2)})
  assert not np.allclose(a, b)
  np.testing.assert_allclose(model.apply(variables, x), model.apply(variables, x))


def test_bert_encoder_token_types_and_pooler():
  config = _config(positions="learned", num_token_types=2, embedding_norm=True)
  model = transformer.BertEncoder(config)
  x = _tokens()
  variables = model.init(jax.random.key(0), x)
  sequence, pooled = model.apply(variables, x)
  assert sequence.shape == (B, T, 16) and pooled.shape == (B, 16)
  other, _ = model.apply(variables, x, token_types=jnp.ones_like(x))
  assert not np.allclose(other, sequence)


def test_errors_name_the_problem():
  model = transformer.DecoderOnlyLM(_config(positions="learned"))
  x = _tokens()
  variables = model.init(jax.random.key(0), x)
  with pytest.raises(ValueError, match="vocab_size=13"):
    model.apply(variables, x.at[0, 0].set(VOCAB))
  with pytest.raises(ValueError, match="max_length=12"):
    model.apply(variables, _tokens(shape=(B, 13)))
  with pytest.raises(ValueError, match="positions must be one of"):
    _config(positions="alibi")
  with pytest.raises(ValueError, match="divisible by num_heads"):
    _config(features=18)
  with pytest.raises(ValueError, match="max_len=20"):
    transformer.lm_decoding_fns(model, variables["params"], x[:, :2], 20)


def test_generate_compiles_once_per_shape():
  model = transformer.DecoderOnlyLM(_config(positions="rotary"))
  prompt = _tokens(7, (B, 3))
  params = model.init(jax.random.key(0), prompt)["params"]
  transformer.generate(model, params, prompt, 4, temperature=1.0, rng=jax.random.key(0))
  before = transformer._generate._cache_size()
  transformer.generate(model, params, (prompt + 1) % VOCAB, 4, temperature=1.0,
                       rng=jax.random.key(1))
  assert transformer._generate._cache_size() == before
  with pytest.raises(ValueError, match="max_length=12"):
    transformer.generate(model, params, prompt, 10)
