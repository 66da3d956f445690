"""Temperature / top-k / top-p sampling over the (init_fn, step_fn) contract."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from attention_jax import decoding

VOCAB = 6


def _markov(table):
  """A toy model: logits of the next token depend only on the previous one."""
  table = jnp.asarray(table, jnp.float32)

  def init_fn():
    return jnp.zeros((3,), jnp.int32)

  def step_fn(state, tokens):
    return table[tokens], state + 1, None

  return init_fn, step_fn


def _table(seed=0):
  return np.random.default_rng(seed).normal(size=(VOCAB, VOCAB)) * 3


def test_temperature_zero_is_greedy():
  fns = _markov(_table())
  greedy, _ = decoding.greedy_decode(*fns, 3, 7, bos_id=0, eos_id=-1)
  sampled, _ = decoding.sample(*fns, jax.random.key(0), 3, 7, bos_id=0, eos_id=-1,
                               temperature=0.0)
  np.testing.assert_array_equal(sampled, greedy)
  top1, _ = jax.jit(lambda key: decoding.sample(*fns, key, 3, 7, bos_id=0, eos_id=-1,
                                                top_k=1))(jax.random.key(3))
  np.testing.assert_array_equal(top1, greedy)


def test_filter_logits_top_k_and_top_p():
  logits = jnp.log(jnp.array([[0.5, 0.2, 0.15, 0.1, 0.05]]))
  kept = lambda out: np.isfinite(np.asarray(out))[0].tolist()
  assert kept(decoding.filter_logits(logits, top_k=2)) == [True, True, False, False, False]
  assert kept(decoding.filter_logits(logits, top_p=0.5)) == [True, False, False, False, False]
  assert kept(decoding.filter_logits(logits, top_p=0.6)) == [True, True, False, False, False]
  assert kept(decoding.filter_logits(logits, top_p=0.86)) == [True, True, True, True, False]
  assert kept(decoding.filter_logits(logits, top_k=3, top_p=1.0)) == [True] * 3 + [False] * 2


def test_sampling_frequencies_follow_the_temperature_scaled_distribution():
  logits = jnp.array([1.0, 0.0, -1.0, 0.5])
  keys = jax.random.split(jax.random.key(0), 20000)
  draws = jax.vmap(lambda k: decoding.sample_logits(k, logits, temperature=2.0))(keys)
  freq = np.bincount(np.asarray(draws), minlength=4) / draws.size
  np.testing.assert_allclose(freq, jax.nn.softmax(logits / 2.0), atol=0.02)
  draws = jax.vmap(lambda k: decoding.sample_logits(k, logits, top_k=2))(keys)
  assert set(np.unique(np.asarray(draws)).tolist()) == {0, 3}


def test_sample_stops_at_eos_and_pads():
  table = np.full((VOCAB, VOCAB), -1e9)
  table[0, 4] = table[4, 2] = 0.0  # 0 -> 4 -> 2 (eos)
  tokens, _ = decoding.sample(*_markov(table), jax.random.key(0), 3, 5, bos_id=0, eos_id=2,
                              temperature=1.0, pad_id=5)
  np.testing.assert_array_equal(tokens, [[4, 2, 5, 5, 5]] * 3)


def test_bad_arguments():
  with pytest.raises(ValueError, match="temperature"):
    decoding.sample_logits(jax.random.key(0), jnp.zeros(3), temperature=-1.0)
  with pytest.raises(ValueError, match="top_k"):
    decoding.filter_logits(jnp.zeros(3), top_k=0)
  with pytest.raises(ValueError, match="top_p"):
    decoding.filter_logits(jnp.zeros(3), top_p=1.5)
