"""Captioner: shapes, teacher forcing == stepwise decoding, weights, penalty, greedy == beam(1),
and a tiny model that learns."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from attention_jax import decoding
from attention_jax.models import captioning

VOCAB = 9
SMALL = dict(vocab_size=VOCAB, embed_dim=8, hidden_dim=16, attention_dim=8, channels=(4, 8),
             strides=(2, 2))


def _setup(batch=3, size=16, steps=5, seed=0):
  model = captioning.Captioner(**SMALL)
  rng = np.random.default_rng(seed)
  images = rng.integers(0, 256, (batch, size, size, 3)).astype(np.uint8)
  tokens = jnp.asarray(rng.integers(1, VOCAB, (batch, steps)), jnp.int32)
  variables = model.init(jax.random.key(seed), images, tokens)
  return model, variables, images, tokens


def test_shapes_and_weights_sum_to_one_over_the_grid():
  model, variables, images, tokens = _setup()
  logits, weights = model.apply(variables, images, tokens)
  assert logits.shape == (3, 5, VOCAB)
  assert model.grid_shape(16) == (4, 4)
  assert weights.shape == (3, 5, 16)
  np.testing.assert_allclose(weights.sum(-1), 1.0, rtol=1e-5)
  assert np.all(np.asarray(weights) >= 0)


def test_teacher_forcing_equals_stepwise_decoding():
  model, variables, images, tokens = _setup()
  logits, weights = model.apply(variables, images, tokens)
  init_fn, step_fn = captioning.decoding_fns(model, variables, images)
  state = init_fn()
  for t in range(tokens.shape[1]):
    step_logits, state, step_weights = step_fn(state, tokens[:, t])
    np.testing.assert_allclose(step_logits, logits[:, t], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(step_weights, weights[:, t], rtol=1e-5, atol=1e-6)


@pytest.mark.slow  # coverage is off by default; two compilations (~3 s)
def test_coverage_state_accumulates_the_weights_and_enters_the_score():
  model = captioning.Captioner(**SMALL, coverage=True)
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (2, 16, 16, 3)).astype(np.uint8)
  tokens = jnp.asarray(rng.integers(1, VOCAB, (2, 4)), jnp.int32)
  variables = model.init(jax.random.key(0), images, tokens)
  assert not np.any(variables["params"]["coverage_vector"])  # starts as the plain model
  variables["params"]["coverage_vector"] = jnp.linspace(-2.0, 2.0, 8)
  apply = jax.jit(model.apply)
  logits, weights = apply(variables, images, tokens)
  init_fn, step_fn = captioning.decoding_fns(model, variables, images)
  state, step_fn = init_fn(), jax.jit(step_fn)
  for t in range(4):  # teacher forcing == stepwise, the state's coverage is the sum so far
    np.testing.assert_allclose(state[1][2], np.asarray(weights[:, :t]).sum(1), atol=1e-5)
    step_logits, state, _ = step_fn(state, tokens[:, t])
    np.testing.assert_allclose(step_logits, logits[:, t], rtol=1e-5, atol=1e-5)
  # u = 0 is the plain model: the same first step (no coverage yet), different later steps
  variables["params"]["coverage_vector"] = jnp.zeros(8)
  _, plain_weights = apply(variables, images, tokens)
  np.testing.assert_allclose(plain_weights[:, 0], weights[:, 0], rtol=1e-5)
  assert not np.allclose(plain_weights[:, 1:], weights[:, 1:])


def test_initial_state_comes_from_the_mean_feature():
  model, variables, images, _ = _setup()
  memory = model.apply(variables, images, method=captioning.Captioner.encode)
  c0, h0 = model.apply(variables, memory, method=captioning.Captioner.initial_state)
  params = variables["params"]
  mean = np.asarray(memory.features).mean(axis=1)
  expected = np.tanh(mean @ params["init_h"]["kernel"] + params["init_h"]["bias"])
  np.testing.assert_allclose(h0, expected, rtol=1e-5, atol=1e-6)
  assert c0.shape == h0.shape == (3, 16)
  # init_dropout_rate: dropout on the mean feature in training only
  dropped = captioning.Captioner(**SMALL, init_dropout_rate=0.5)
  _, h0_eval = dropped.apply(variables, memory, method=captioning.Captioner.initial_state)
  np.testing.assert_allclose(h0_eval, h0, rtol=1e-6)
  _, h0_train = dropped.apply(variables, memory, False, method=captioning.Captioner.initial_state,
                              rngs={"dropout": jax.random.key(1)})
  assert not np.allclose(h0_train, h0)


def test_coordinate_channels_make_features_position_aware():
  """CoordConv input channels, and (y, x) appended to the grid."""
  encoder = captioning.ConvEncoder((4, 8), (2, 2), coordinates=True, grid_coordinates=True)
  images = np.zeros((1, 16, 16, 3), np.uint8)
  variables = encoder.init(jax.random.key(0), images)
  grid = encoder.apply(variables, images)
  assert variables["params"]["conv0"]["kernel"].shape[2] == 5  # RGB + (y, x)
  assert grid.shape == (1, 4, 4, 10)  # 8 channels + the cell's (y, x)
  ys, xs = np.meshgrid(np.linspace(-1, 1, 4), np.linspace(-1, 1, 4), indexing="ij")
  np.testing.assert_allclose(grid[0, ..., 8:], np.stack([ys, xs], -1), atol=1e-6)


def test_context_pool_appends_the_neighbourhood_maximum():
  """The context channels hold each cell's k x k neighbourhood maximum of the last conv."""
  plain = captioning.ConvEncoder((4, 8), (2, 2), position_embedding=False)
  pooled = captioning.ConvEncoder((4, 8), (2, 2), position_embedding=False, context_pool=3)
  images = np.random.default_rng(0).integers(0, 256, (2, 16, 16, 3)).astype(np.uint8)
  variables = plain.init(jax.random.key(0), images)
  base = np.asarray(plain.apply(variables, images))
  grid = np.asarray(pooled.apply(variables, images))  # no new parameters
  assert grid.shape == (2, 4, 4, 16)
  np.testing.assert_allclose(grid[..., :8], base, rtol=1e-6)
  padded = np.pad(base, ((0, 0), (1, 1), (1, 1), (0, 0)), constant_values=-np.inf)
  expected = np.max([padded[:, i:i + 4, j:j + 4] for i in range(3) for j in range(3)], axis=0)
  np.testing.assert_allclose(grid[..., 8:], expected, rtol=1e-6)
  model = captioning.Captioner(**SMALL, context_pool=3)
  tokens = jnp.ones((2, 3), jnp.int32)
  _, weights = model.apply(model.init(jax.random.key(0), images, tokens), images, tokens)
  assert weights.shape == (2, 3, 16)


def test_phrase_continuity_penalty_counts_the_moved_mass_within_phrases_only():
  a = np.array([[[1.0, 0, 0, 0], [0.5, 0.5, 0, 0], [0, 0, 1.0, 0], [0, 0, 0, 1.0]]])
  content = np.array([[True, True, False, True]])
  mask = np.ones((1, 4), bool)
  # pairs (0, 1) only: step 2 is not a content word, so (1, 2) and (2, 3) are phrase breaks
  np.testing.assert_allclose(captioning.phrase_continuity_penalty(a, content, mask), [0.5])
  np.testing.assert_allclose(
      captioning.phrase_continuity_penalty(a, np.ones((1, 4), bool), mask), [0.5 + 1 + 1])
  np.testing.assert_allclose(captioning.phrase_continuity_penalty(
      a, np.ones((1, 4), bool), np.array([[True, True, False, False]])), [0.5])
  # the gradient reaches the later map only: the earlier one is the fixed target
  grad = jax.grad(lambda w: captioning.phrase_continuity_penalty(w, content, mask).sum())(
      jnp.asarray(a))
  assert np.all(np.asarray(grad[0, 0]) == 0) and np.any(np.asarray(grad[0, 1]) != 0)
  with pytest.raises(ValueError, match="content"):
    captioning.phrase_continuity_penalty(a, content[:, :3], mask)


def test_gate_scales_the_context():
  model, variables, images, tokens = _setup()
  closed = jax.tree.map(lambda x: x, variables)
  closed["params"]["gate_dense"]["bias"] = jnp.full((1,), -1e4)
  gate = closed["params"]["gate_dense"]
  gate["kernel"] = jnp.zeros_like(gate["kernel"])
  ungated = captioning.Captioner(**SMALL, gate=False)
  # beta = 0 removes the context; the ungated model with the same parameters keeps it
  gated_logits, _ = model.apply(closed, images, tokens)
  open_logits, _ = ungated.apply(variables, images, tokens)
  assert not np.allclose(gated_logits, open_logits)


def test_doubly_stochastic_penalty_matches_numpy():
  rng = np.random.default_rng(1)
  weights = rng.random((2, 4, 6))
  weights /= weights.sum(-1, keepdims=True)
  mask = np.array([[1, 1, 1, 0], [1, 1, 0, 0]], bool)
  expected = [np.sum((1.0 - weights[b][mask[b]].sum(0)) ** 2) for b in range(2)]
  np.testing.assert_allclose(captioning.doubly_stochastic_penalty(weights, mask), expected,
                             rtol=1e-6)
  with pytest.raises(ValueError, match="mask"):
    captioning.doubly_stochastic_penalty(weights, mask[:, :3])


def test_greedy_equals_beam_of_one():
  model, variables, images, _ = _setup()
  init_fn, step_fn = captioning.decoding_fns(model, variables, images)
  greedy, maps = decoding.greedy_decode(init_fn, step_fn, 3, 6, bos_id=1, eos_id=2)
  beam, _, _ = decoding.beam_search(init_fn, step_fn, 3, 1, 6, bos_id=1, eos_id=2)
  np.testing.assert_array_equal(greedy, beam)
  assert maps.shape == (3, 6, 16)


def test_errors_name_the_argument():
  model, variables, images, tokens = _setup()
  with pytest.raises(ValueError, match="decoder_inputs"):
    model.apply(variables, images, tokens[:2])
  with pytest.raises(ValueError, match="images"):
    model.apply(variables, images[..., :1], tokens)


def test_tiny_training_lowers_the_loss():
  """The caption is the colour of the single bright quadrant: the model must look at the image."""
  rng = np.random.default_rng(0)
  n = 64
  quadrant = rng.integers(0, 4, n)
  images = np.zeros((n, 16, 16, 3), np.uint8)
  for i, q in enumerate(quadrant):
    r, c = divmod(int(q), 2)
    images[i, 8 * r:8 * r + 8, 8 * c:8 * c + 8] = 255
  targets = np.stack([quadrant + 4, np.full(n, 2)], 1).astype(np.int32)
  inputs = np.stack([np.ones(n), quadrant + 4], 1).astype(np.int32)
  model = captioning.Captioner(**SMALL)
  params = model.init(jax.random.key(0), images[:2], inputs[:2])["params"]
  tx = optax.adam(1e-2)
  opt = tx.init(params)

  def loss_fn(params):
    logits, weights = model.apply({"params": params}, images, inputs)
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, targets).mean()
    return ce + 0.01 * captioning.doubly_stochastic_penalty(weights, np.ones((n, 2))).mean()

  @jax.jit
  def step(params, opt):
    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt = tx.update(grads, opt)
    return optax.apply_updates(params, updates), opt, loss

  first = None
  for _ in range(40):
    params, opt, loss = step(params, opt)
    first = loss if first is None else first
  assert float(loss) < 0.3 * float(first)


# --- Hard attention (Xu et al. 2015, sec. 4.1) and no attention -------------------------------

def _toy_problem():
  """Two steps over N = 4 locations: a_1 = softmax(w), a_2 = softmax(w + U[s_1]) (the second
  distribution depends on the first sample, as an LSTM's would), and log p(y_t | s_t) =
  log_softmax(V[s_t])[y_t]. Parameters theta = (w, U, V)."""
  rng = np.random.default_rng(0)
  theta = {"w": jnp.asarray(rng.normal(size=4), jnp.float32),
           "U": jnp.asarray(rng.normal(size=(4, 4)), jnp.float32),
           "V": jnp.asarray(2 * rng.normal(size=(4, 3)), jnp.float32)}
  targets = (0, 2)
  return theta, targets


def _toy_terms(theta, targets, s1, s2):
  """``(log p(y_t | s_t) [2], log p(s_t) [2], H(a_1) + H(a_2), p(s_1, s_2))`` for fixed
  locations."""
  a1 = jax.nn.softmax(theta["w"])
  a2 = jax.nn.softmax(theta["w"] + theta["U"][s1])
  used = jnp.stack([jax.nn.one_hot(s1, 4), jax.nn.one_hot(s2, 4)])[None]
  probs = jnp.stack([a1, a2])[None]
  mask = jnp.ones((1, 2))
  step_log_probs = captioning.hard_attention_step_log_probs(used, probs, mask)[0]
  _, entropy = captioning.hard_attention_terms(used, probs, mask)
  token_log_lik = jnp.stack([jax.nn.log_softmax(theta["V"][s1])[targets[0]],
                             jax.nn.log_softmax(theta["V"][s2])[targets[1]]])
  return token_log_lik, step_log_probs, entropy[0], a1[s1] * a2[s2]


def _flat(tree):
  return np.concatenate([np.ravel(x) for x in jax.tree.leaves(tree)])


def _sample_locations(theta, key):
  k1, k2 = jax.random.split(key)
  s1 = jax.random.categorical(k1, theta["w"])
  return s1, jax.random.categorical(k2, theta["w"] + theta["U"][s1])


def _estimates(estimator, samples=20_000, baseline=-2.5, entropy_weight=0.1):
  """``(estimates [samples, 36], exact gradient [36])`` of ``L_s + lambda_e E[H]`` on the toy.

  ``estimator``: "paper" (:func:`captioning.reinforce_surrogate`, lambda_r = 1), "no_score"
  (the same with lambda_r = 0: biased), "caption" / "to_go" (the per-step surrogate with that
  reward and a constant baseline), or "leave_one_out" (two samples per estimate, reward to go,
  each compared with the other)."""
  theta, targets = _toy_problem()

  def exact(theta):  # enumerating all 16 location pairs
    total = 0.0
    for s1 in range(4):
      for s2 in range(4):
        token_log_lik, _, entropy, p = _toy_terms(theta, targets, s1, s2)
        total += p * (token_log_lik.sum() + entropy_weight * entropy)
    return total

  exact_grad = _flat(jax.jit(jax.grad(exact))(theta))

  def surrogate(theta, locations, baseline):
    terms = [_toy_terms(theta, targets, *pair) for pair in locations]
    token_log_lik = jnp.stack([t[0] for t in terms])
    step_log_probs = jnp.stack([t[1] for t in terms])
    entropy = jnp.stack([t[2] for t in terms])
    if estimator in ("paper", "no_score"):
      return captioning.reinforce_surrogate(
          token_log_lik.sum(-1), step_log_probs.sum(-1), entropy, baseline,
          1.0 if estimator == "paper" else 0.0, entropy_weight).mean()
    reward = "caption" if estimator == "caption" else "to_go"
    if estimator == "leave_one_out":
      rewards = captioning.reinforce_rewards(jax.lax.stop_gradient(token_log_lik), reward)
      baseline = captioning.leave_one_out_baseline(rewards, len(locations))
    return captioning.reinforce_surrogate_per_step(
        token_log_lik, step_log_probs, entropy, baseline, reward,
        entropy_weight=entropy_weight).mean()

  def one_estimate(key):
    count = 2 if estimator == "leave_one_out" else 1
    locations = [_sample_locations(theta, k) for k in jax.random.split(key, count)]
    grads = jax.grad(surrogate)(theta, locations, baseline)
    return jax.tree.map(lambda g: -g, grads)  # the estimate of +grad

  grads = jax.jit(jax.vmap(one_estimate))(jax.random.split(jax.random.key(1), samples))
  flat = np.concatenate([np.asarray(g).reshape(samples, -1) for g in jax.tree.leaves(grads)], 1)
  return flat, exact_grad


def _z_scores(flat, exact_grad):
  """|mean estimate - exact gradient| / (sample std / sqrt(samples)) per parameter."""
  stderr = flat.std(0) / np.sqrt(flat.shape[0])
  error = np.abs(flat.mean(0) - exact_grad)
  # A parameter whose estimate has no spread (none here) must then be exact.
  return np.where(stderr > 0, error / np.maximum(stderr, 1e-12), np.where(error < 1e-6, 0, np.inf))


# The default estimator's two parts run by default; the other choices in the slow suite.
@pytest.mark.parametrize("estimator", [pytest.param("paper", marks=pytest.mark.slow),
                                       pytest.param("caption", marks=pytest.mark.slow),
                                       "to_go", "leave_one_out"])
def test_reinforce_estimator_is_unbiased_against_exact_enumeration(estimator):
  # 36 parameters; under no bias each z is ~|N(0, 1)|, P(max > 5) < 36 * 6e-7.
  z = _z_scores(*_estimates(estimator))
  assert z.max() < 5.0, z


def test_the_unbiasedness_check_catches_a_biased_estimator():
  # Without the score-function term (lambda_r = 0) the attention parameters get only the entropy
  # gradient: the same check must reject it, or it could not tell a biased estimator apart.
  z = _z_scores(*_estimates("no_score"))
  assert z.max() > 20.0, z


@pytest.mark.slow  # ~14 s of sampling; unbiasedness, by default above, is the correctness claim
def test_reward_to_go_and_sibling_baselines_lower_the_estimators_variance():
  paper, _ = _estimates("paper")
  caption, _ = _estimates("caption")
  np.testing.assert_allclose(caption, paper, rtol=1e-4, atol=1e-5)  # the same estimator
  to_go, _ = _estimates("to_go")
  variance = {name: flat.var(0) for name, flat in
              (("caption", caption), ("to_go", to_go), ("leave_one_out", _estimates(
                  "leave_one_out")[0]))}
  # the second location's credit no longer holds the first word's noise
  assert variance["to_go"].sum() < 0.9 * variance["caption"].sum(), variance
  # two samples, each compared with the other (no hand-set baseline)
  assert variance["leave_one_out"].sum() < variance["to_go"].sum(), variance


def test_rewards_and_leave_one_out_baseline_match_numpy():
  token_log_lik = np.array([[-1.0, -2.0, -0.5, 0.0], [-0.1, -0.2, 0.0, 0.0]])
  np.testing.assert_allclose(captioning.reinforce_rewards(token_log_lik, "to_go"),
                             [[-3.5, -2.5, -0.5, 0.0], [-0.3, -0.2, 0.0, 0.0]])
  np.testing.assert_allclose(captioning.reinforce_rewards(token_log_lik, "caption"),
                             [[-3.5] * 4, [-0.3] * 4])
  rewards = np.array([[1.0], [2.0], [6.0], [10.0], [20.0], [30.0]])  # 2 examples x 3 samples
  np.testing.assert_allclose(captioning.leave_one_out_baseline(jnp.asarray(rewards), 3),
                             [[4.0], [3.5], [1.5], [25.0], [20.0], [15.0]])
  with pytest.raises(ValueError, match="num_samples"):
    captioning.leave_one_out_baseline(jnp.asarray(rewards), 4)
  with pytest.raises(ValueError, match="reward"):
    captioning.reinforce_rewards(token_log_lik, "sentence")


def test_hard_attention_uses_one_location_and_none_uses_the_mean():
  _, variables, images, tokens = _setup()
  hard = captioning.Captioner(**SMALL, attention="hard")
  logits, used, probs = hard.apply(variables, images, tokens, return_probs=True)
  # deterministic: the most probable location, one-hot
  np.testing.assert_array_equal(np.asarray(used).argmax(-1), np.asarray(probs).argmax(-1))
  np.testing.assert_allclose(np.asarray(used).sum(-1), 1.0)
  assert set(np.unique(np.asarray(used))) <= {0.0, 1.0}
  # training: locations sampled from the distribution (near uniform at initialisation, so 15
  # draws all equal to the most probable location would be a broken sampler)
  sampled = hard.apply(variables, images, tokens, deterministic=False,
                       rngs={"sample": jax.random.key(1)})[1]
  assert not np.array_equal(np.asarray(sampled), np.asarray(used))
  np.testing.assert_allclose(np.asarray(sampled).sum(-1), 1.0)
  none = captioning.Captioner(**SMALL, attention="none")
  none_variables = none.init(jax.random.key(0), images, tokens)
  assert "attend" not in none_variables["params"]
  _, weights = none.apply(none_variables, images, tokens)
  np.testing.assert_allclose(weights, 1.0 / 16, rtol=1e-6)
  with pytest.raises(ValueError, match="attention"):
    captioning.Captioner(**SMALL, attention="sharp").init(jax.random.key(0), images, tokens)


def test_hard_attention_terms_leave_out_the_expected_context_steps():
  probs = np.array([[[0.5, 0.25, 0.25], [0.2, 0.3, 0.5], [0.6, 0.2, 0.2]]])
  sampled = np.array([[[0, 1.0, 0], [0, 0, 1.0], [1.0, 0, 0]]])
  mask = np.ones((1, 3))
  log_prob, entropy = captioning.hard_attention_terms(sampled, probs, mask)
  np.testing.assert_allclose(log_prob, [np.log(0.25 * 0.5 * 0.6)], rtol=1e-6)
  mixed = sampled.copy()
  mixed[0, 1] = probs[0, 1]  # step 1 read the expected context
  log_prob, entropy_mixed = captioning.hard_attention_terms(mixed, probs, mask)
  np.testing.assert_allclose(log_prob, [np.log(0.25 * 0.6)], rtol=1e-6)
  np.testing.assert_allclose(entropy_mixed, entropy)  # the entropy counts every step


@pytest.mark.slow  # two compilations of the scanned decoder
def test_expected_context_prob_mixes_soft_steps_into_hard_attention_training():
  _, variables, images, tokens = _setup(batch=64)
  rngs = {"sample": jax.random.key(3)}
  always = captioning.Captioner(**SMALL, attention="hard", expected_context_prob=1.0)
  _, used, probs = always.apply(variables, images, tokens, deterministic=False,
                                return_probs=True, rngs=rngs)
  np.testing.assert_allclose(used, probs)  # every step the expected context
  half = captioning.Captioner(**SMALL, attention="hard", expected_context_prob=0.5)
  _, used, probs = half.apply(variables, images, tokens, deterministic=False, return_probs=True,
                              rngs=rngs)
  one_hot = np.all((np.asarray(used) == 0) | (np.asarray(used) == 1), -1)
  assert 0.35 < one_hot.mean() < 0.65  # 320 coin flips
  np.testing.assert_allclose(np.asarray(used)[~one_hot], np.asarray(probs)[~one_hot])
  # deterministic decoding still reads the most probable location
  _, used, probs = half.apply(variables, images, tokens, return_probs=True)
  np.testing.assert_array_equal(np.asarray(used).argmax(-1), np.asarray(probs).argmax(-1))
  assert set(np.unique(np.asarray(used))) <= {0.0, 1.0}
