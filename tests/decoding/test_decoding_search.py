"""Greedy and beam search on hand-made step functions: known optima, beam(1) == greedy."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from attention_jax import decoding

PAD, BOS, EOS = 0, 1, 2


def table_step(log_table):
  """A first-order Markov 'model': logits = log_table[previous token]; the state counts steps."""
  log_table = jnp.asarray(log_table, jnp.float32)

  def step_fn(state, tokens):
    return log_table[tokens], {"steps": state["steps"] + 1}, state["steps"]

  return step_fn


def counter_init(batch):
  return lambda: {"steps": jnp.zeros((batch,), jnp.int32)}


def known_table():
  """BOS -> A 0.6 / B 0.4; A -> EOS 0.4, A 0.3, B 0.3; B -> EOS 0.9, A 0.1.

  Greedy takes A then EOS (0.24); the best sequence is B EOS (0.36).
  """
  probs = np.full((5, 5), 1e-9)
  a, b = 3, 4
  probs[BOS, [a, b]] = [0.6, 0.4]
  probs[a, [EOS, a, b]] = [0.4, 0.3, 0.3]
  probs[b, [EOS, a]] = [0.9, 0.1]
  probs[[PAD, EOS]] = 1.0 / 5
  return np.log(probs / probs.sum(-1, keepdims=True))


def test_beam_finds_the_better_sequence_greedy_misses():
  step_fn = table_step(known_table())
  greedy, steps = decoding.greedy_decode(counter_init(2), step_fn, 2, 4, BOS, EOS)
  np.testing.assert_array_equal(greedy, [[3, EOS, PAD, PAD]] * 2)
  np.testing.assert_array_equal(steps, [[0, 1, 0, 0]] * 2)  # extras zero after EOS
  tokens, scores, extras = decoding.beam_search(
      counter_init(2), step_fn, 2, 2, 4, BOS, EOS, length_penalty=0.0)
  np.testing.assert_array_equal(tokens, [[4, EOS, PAD, PAD]] * 2)
  np.testing.assert_allclose(scores, np.log(0.36), rtol=1e-5)
  np.testing.assert_array_equal(extras, [[0, 1, 0, 0]] * 2)


def test_all_beams_are_sorted_and_scored_by_gnmt_penalty():
  tokens, scores, _ = decoding.beam_search(
      counter_init(1), table_step(known_table()), 1, 3, 4, BOS, EOS, length_penalty=0.6,
      return_all_beams=True)
  assert tokens.shape == (1, 3, 4) and scores.shape == (1, 3)
  assert np.all(np.diff(np.asarray(scores[0])) <= 0)
  np.testing.assert_array_equal(tokens[0, :2], [[4, EOS, PAD, PAD], [3, EOS, PAD, PAD]])
  penalty = ((5 + 2) / 6) ** 0.6
  np.testing.assert_allclose(scores[0, :2], np.log([0.36, 0.24]) / penalty, rtol=1e-5)


def rnn_like(seed, vocab=7, hidden=5):
  """A history-dependent step (state = tanh RNN over the tokens) with logits for PAD and BOS at
  -inf, so every hypothesis uses symbols and EOS only."""
  rng = np.random.default_rng(seed)
  embed = jnp.asarray(rng.normal(size=(vocab, hidden)), jnp.float32)
  w = jnp.asarray(rng.normal(size=(hidden, hidden)) * 0.8, jnp.float32)
  out = jnp.asarray(rng.normal(size=(hidden, vocab)) * 1.5, jnp.float32)
  banned = jnp.zeros(vocab).at[jnp.array([PAD, BOS])].set(-jnp.inf)

  def step_fn(state, tokens):
    new = jnp.tanh(state @ w + embed[tokens])
    return new @ out + banned, new, new[:, :2]

  def init_fn(batch):
    start = jnp.asarray(rng.normal(size=(batch, hidden)), jnp.float32)
    return lambda: start

  return init_fn, step_fn


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("alpha", [0.0, 0.6, 2.0])
def test_beam_of_one_is_greedy(seed, alpha):
  make_init, step_fn = rnn_like(seed)
  init_fn = make_init(6)
  tokens, extras = decoding.greedy_decode(init_fn, step_fn, 6, 7, BOS, EOS)
  beam_tokens, _, beam_extras = decoding.beam_search(
      init_fn, step_fn, 6, 1, 7, BOS, EOS, length_penalty=alpha)
  np.testing.assert_array_equal(beam_tokens, tokens)
  np.testing.assert_array_equal(beam_extras, extras)


def sequence_log_prob(init_fn, step_fn, b, sequence):
  state = jax.tree.map(lambda x: x[b:b + 1], init_fn())
  previous, total = BOS, 0.0
  for token in sequence:
    logits, state, _ = step_fn(state, jnp.array([previous]))
    total += float(jax.nn.log_softmax(logits[0])[token])
    previous = token
  return total


def penalty(length, alpha):
  return ((5 + length) / 6) ** alpha


@pytest.mark.parametrize("alpha", [0.0, 1.0])
def test_wide_beam_matches_brute_force_and_scores_are_consistent(alpha):
  max_len, vocab = 4, 5
  make_init, step_fn = rnn_like(7, vocab=vocab)
  init_fn = make_init(2)
  symbols = [EOS, 3, 4]
  hypotheses = [seq for n in range(1, max_len + 1) for seq in itertools.product(symbols, repeat=n)
                if EOS not in seq[:-1] and (seq[-1] == EOS or n == max_len)]
  tokens, scores, _ = decoding.beam_search(
      init_fn, step_fn, 2, len(hypotheses), max_len, BOS, EOS, length_penalty=alpha,
      return_all_beams=True)
  for b in range(2):
    best = max(hypotheses, key=lambda s: sequence_log_prob(init_fn, step_fn, b, s)
               / penalty(len(s), alpha))
    np.testing.assert_array_equal(tokens[b, 0], list(best) + [PAD] * (max_len - len(best)))
    # Every returned beam's score is its own sequence's normalised log-probability: the states
    # were gathered from the right parents.
    for k in range(4):
      row = np.asarray(tokens[b, k])
      seq = row[:np.argmax(row == EOS) + 1] if EOS in row else row
      expected = sequence_log_prob(init_fn, step_fn, b, seq) / penalty(len(seq), alpha)
      np.testing.assert_allclose(scores[b, k], expected, rtol=1e-4)


def test_more_beams_than_hypotheses_gives_minus_inf_beams():
  make_init, step_fn = rnn_like(2, vocab=5)  # 3 allowed tokens: 1 + 2 * 3 = 7 hypotheses
  tokens, scores, _ = decoding.beam_search(
      make_init(1), step_fn, 1, 12, 2, BOS, EOS, return_all_beams=True)
  assert np.all(np.isfinite(scores[0, :7])) and np.all(np.isneginf(scores[0, 7:]))
  assert np.all(np.diff(np.asarray(scores[0, :7])) <= 0)
  assert {tuple(row) for row in np.asarray(tokens[0, :7])} == {
      (EOS, PAD), (3, EOS), (3, 3), (3, 4), (4, EOS), (4, 3), (4, 4)}


def test_jit_and_unfinished_sequences():
  make_init, step_fn = rnn_like(1)
  start = make_init(3)()

  @jax.jit
  def run(start):
    greedy = decoding.greedy_decode(lambda: start, step_fn, 3, 5, BOS, EOS)
    beam = decoding.beam_search(lambda: start, step_fn, 3, 4, 5, BOS, EOS)
    return greedy, beam

  (tokens, extras), (beam_tokens, scores, beam_extras) = run(start)
  eager_tokens, _ = decoding.greedy_decode(lambda: start, step_fn, 3, 5, BOS, EOS)
  np.testing.assert_array_equal(tokens, eager_tokens)
  assert extras.shape == (3, 5, 2) and beam_extras.shape == (3, 5, 2)
  assert beam_tokens.shape == (3, 5) and scores.shape == (3,)
  for row, row_extras in zip(np.asarray(tokens), np.asarray(extras)):
    if EOS in row:
      end = np.argmax(row == EOS)
      assert np.all(row[end + 1:] == PAD) and np.all(row_extras[end + 1:] == 0)


def test_bad_arguments_raise_clear_errors():
  step_fn = table_step(known_table())
  with pytest.raises(ValueError, match="leading batch axis of size 3.*'steps'.*\\(2,\\)"):
    decoding.greedy_decode(counter_init(2), step_fn, 3, 4, BOS, EOS)
  with pytest.raises(ValueError, match="max_len must be a positive"):
    decoding.greedy_decode(counter_init(2), step_fn, 2, 0, BOS, EOS)
  with pytest.raises(ValueError, match="beam_size must be a positive"):
    decoding.beam_search(counter_init(2), step_fn, 2, 0, 4, BOS, EOS)
  with pytest.raises(ValueError, match="logits \\[batch\\*beam=4, vocab\\]"):
    decoding.beam_search(counter_init(2), lambda s, t: (jnp.zeros((2, 5)), s, None), 2, 2, 4,
                         BOS, EOS)
