"""A tiny encoder-decoder learns the Annotated Transformer's copy task; beam search decodes it."""

import jax
import numpy as np
import optax
import pytest

from attention_jax import decoding
from attention_jax.models import transformer

VOCAB, LENGTH, BOS, EOS = 11, 6, 1, 2  # symbols 3..10


def _batch(step, size=64):
  rng = np.random.default_rng(step)
  src = rng.integers(3, VOCAB, (size, LENGTH)).astype(np.int32)
  targets = np.concatenate([src, np.full((size, 1), EOS, np.int32)], 1)
  targets_in = np.concatenate([np.full((size, 1), BOS, np.int32), src], 1)
  return src, targets_in, targets


@pytest.mark.slow  # make test-all; a learning curve, ~40 s
def test_copy_task_is_learned_and_decoded_with_the_cache():
  config = transformer.TransformerConfig(vocab_size=VOCAB, features=32, num_heads=4, mlp_dim=64,
                                num_layers=1, max_length=LENGTH + 1, dropout_rate=0.0,
                                scale_embeddings=True)  # post-norm, as in the lecture
  model = transformer.EncoderDecoder(config)
  src, tin, _ = _batch(0)
  params = model.init(jax.random.key(0), src, tin)["params"]
  tx = optax.adam(3e-3)
  opt_state = tx.init(params)

  @jax.jit
  def step(params, opt_state, src, tin, tgt):
    def loss_fn(p):
      logits = model.apply({"params": p}, src, tin)
      return optax.softmax_cross_entropy_with_integer_labels(logits, tgt).mean()
    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = tx.update(grads, opt_state)
    return optax.apply_updates(params, updates), opt_state, loss

  for i in range(300):
    params, opt_state, loss = step(params, opt_state, *_batch(i + 1))
  assert loss < 0.05, loss

  src = _batch(10_000, 16)[0]
  fns = transformer.encoder_decoder_decoding_fns(model, params, src, max_len=LENGTH + 1)
  tokens, _ = jax.jit(lambda: decoding.greedy_decode(*fns, 16, LENGTH + 1, BOS, EOS))()
  np.testing.assert_array_equal(tokens[:, :LENGTH], src)
  np.testing.assert_array_equal(tokens[:, LENGTH], EOS)
  beams, _, _ = jax.jit(lambda: decoding.beam_search(*fns, 16, 4, LENGTH + 1, BOS, EOS))()
  np.testing.assert_array_equal(beams, tokens)
