"""A Mistral- or Gemma-2-like stack is a config: sliding windows on some layers, soft-capped
logits, packed training batches."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from attention_jax.models import transformer


def _config(**options):
  base = dict(vocab_size=50, features=32, num_heads=4, num_kv_heads=2, mlp_dim=64, num_layers=3,
              max_length=64, positions="rotary", pre_norm=True, dropout_rate=0.0)
  return transformer.TransformerConfig(**{**base, **options})


def _tokens(length=24, batch=2):
  return jax.random.randint(jax.random.key(0), (batch, length), 0, 50)


def test_gemma_like_stack_decodes_with_rolling_and_full_caches_like_the_full_pass():
  config = _config(local_window_size=4, global_every=2, attention_softcap=5.0, final_softcap=3.0,
                   num_layers=2)
  tokens = _tokens()
  model = transformer.DecoderOnlyLM(config)
  params = jax.jit(model.init)(jax.random.key(1), tokens)["params"]
  want = jax.jit(model.apply)({"params": params}, tokens)
  assert float(jnp.abs(want).max()) < 3.0  # the final soft-cap bounds every logit
  decoder = transformer.DecoderOnlyLM(config, decode=True)
  cache = jax.jit(decoder.init)(jax.random.key(1), tokens)["cache"]["decoder"]
  # The local layer keeps a ring of 4 positions, the global one the whole sequence.
  assert [cache[f"layer_{i}"]["attention"]["cached_key"].shape[1] for i in range(2)] == [4, 24]
  cache = {"decoder": cache}
  outs = []
  step = jax.jit(lambda variables, x: decoder.apply(variables, x, mutable=["cache"]))
  for start, stop in ((0, 9), (9, 10), (10, 24)):  # a prompt longer than the ring, then tokens
    y, variables = step({"params": params, "cache": cache}, tokens[:, start:stop])
    cache = variables["cache"]
    outs.append(y)
  np.testing.assert_allclose(jnp.concatenate(outs, axis=1), want, atol=1e-5)


def test_window_changes_what_a_position_sees():
  tokens = _tokens()
  plain = transformer.DecoderOnlyLM(_config())
  params = plain.init(jax.random.key(1), tokens)["params"]
  local = transformer.DecoderOnlyLM(_config(local_window_size=3))
  changed = tokens.at[:, 0].set((tokens[:, 0] + 1) % 50)
  far = slice(10, None)  # positions whose window no longer reaches position 0
  delta_local = local.apply({"params": params}, changed) - local.apply({"params": params}, tokens)
  delta_plain = plain.apply({"params": params}, changed) - plain.apply({"params": params}, tokens)
  assert float(jnp.abs(delta_local[:, far]).max()) == 0.0
  assert float(jnp.abs(delta_plain[:, far]).max()) > 0.0


@pytest.mark.parametrize("positions", ["rotary", pytest.param("learned", marks=pytest.mark.slow),
                                       pytest.param("sinusoidal", marks=pytest.mark.slow)])
def test_packed_rows_train_like_separate_sequences(positions):
  config = _config(positions=positions, local_window_size=6, attention_softcap=4.0)
  model = transformer.DecoderOnlyLM(config)
  tokens = _tokens()
  params = model.init(jax.random.key(1), tokens)["params"]
  apply = jax.jit(model.apply)
  first, second = tokens[0, :10], tokens[1, :14]
  packed = jnp.concatenate([first, second])[None]
  segments = jnp.array([[0] * 10 + [1] * 14])
  restart = jnp.array([list(range(10)) + list(range(14))])
  logits = apply({"params": params}, packed, segment_ids=segments, positions=restart)
  np.testing.assert_allclose(logits[0, :10], apply({"params": params}, first[None])[0], atol=1e-5)
  np.testing.assert_allclose(logits[0, 10:], apply({"params": params}, second[None])[0],
                             atol=1e-5)


@pytest.mark.parametrize("options,match", [
    (dict(global_every=2), "global_every needs local_window_size"),
    (dict(local_window_size=-2), "local_window_size must be a non-negative int"),
    (dict(attention_softcap=0.0), "attention_softcap must be > 0"),
])
def test_bad_options_are_named(options, match):
  with pytest.raises(ValueError, match=match):
    _config(**options)


def test_packing_arguments_are_checked():
  model = transformer.DecoderOnlyLM(_config())
  tokens = _tokens()
  params = model.init(jax.random.key(1), tokens)["params"]
  with pytest.raises(ValueError, match=r"segment_ids has shape \(2, 5\) but tokens have"):
    model.apply({"params": params}, tokens, segment_ids=jnp.zeros((2, 5), jnp.int32))
