"""Schedules and optimisers chosen by config, with global-norm clipping."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from attention_jax import training


def _config(**overrides):
  config = training.default_training_config()
  config.update(overrides)
  return config


def test_constant_schedule():
  schedule = training.make_schedule(_config(learning_rate=0.25))
  assert [float(schedule(s)) for s in (0, 10, 10**6)] == [0.25, 0.25, 0.25]


def test_warmup_cosine_schedule():
  schedule = training.make_schedule(
      _config(schedule="warmup_cosine", learning_rate=1.0, warmup_steps=10, num_steps=110,
              end_learning_rate=0.1))
  assert float(schedule(0)) == 0.0
  assert float(schedule(5)) == pytest.approx(0.5)
  assert float(schedule(10)) == pytest.approx(1.0)
  # Halfway through the cosine part: the mean of the peak and the end value.
  assert float(schedule(60)) == pytest.approx(0.55, abs=1e-6)
  assert float(schedule(110)) == pytest.approx(0.1)


def test_warmup_rsqrt_is_the_transformer_schedule():
  d_model, warmup = 512, 4000
  peak = (d_model * warmup) ** -0.5
  schedule = training.make_schedule(
      _config(schedule="warmup_rsqrt", learning_rate=peak, warmup_steps=warmup))
  for step in (1, 100, 3999, 4000, 4001, 20000, 10**6):
    paper = d_model ** -0.5 * min(step ** -0.5, step * warmup ** -1.5)
    assert float(schedule(step)) == pytest.approx(paper, rel=1e-5), step
  assert float(schedule(0)) == 0.0
  assert float(schedule(4 * warmup)) == pytest.approx(peak / 2, rel=1e-6)
  with pytest.raises(ValueError, match="warmup_steps must be > 0"):
    training.warmup_rsqrt_schedule(1.0, 0)


def _one_update(config, grads, params):
  tx, _ = training.make_optimizer(config)
  state = tx.init(params)
  updates, _ = tx.update(grads, state, params)
  return updates


def test_sgd_momentum_matches_hand_computation():
  config = _config(optimizer="sgd", learning_rate=0.1, momentum=0.9, grad_clip_norm=None)
  tx, _ = training.make_optimizer(config)
  params = {"w": jnp.array([1.0, -2.0])}
  state = tx.init(params)
  g1, g2 = jnp.array([1.0, 2.0]), jnp.array([0.5, -1.0])
  u1, state = tx.update({"w": g1}, state, params)
  u2, state = tx.update({"w": g2}, state, params)
  np.testing.assert_allclose(u1["w"], -0.1 * g1, rtol=1e-6)
  np.testing.assert_allclose(u2["w"], -0.1 * (0.9 * g1 + g2), rtol=1e-6)


def test_adam_first_step_is_lr_times_sign():
  config = _config(optimizer="adam", learning_rate=0.01, grad_clip_norm=None)
  updates = _one_update(config, {"w": jnp.array([3.0, -0.2])}, {"w": jnp.zeros(2)})
  np.testing.assert_allclose(updates["w"], [-0.01, 0.01], rtol=1e-4)


def test_adamw_applies_decoupled_weight_decay():
  params = {"w": jnp.array([2.0, -4.0])}
  grads = {"w": jnp.array([1.0, 1.0])}
  plain = _one_update(_config(optimizer="adamw", learning_rate=0.01, weight_decay=0.0,
                              grad_clip_norm=None), grads, params)
  decayed = _one_update(_config(optimizer="adamw", learning_rate=0.01, weight_decay=0.5,
                                grad_clip_norm=None), grads, params)
  np.testing.assert_allclose(decayed["w"] - plain["w"], -0.01 * 0.5 * params["w"], rtol=1e-5)


def test_sgd_weight_decay_is_added_to_the_gradient():
  params = {"w": jnp.array([2.0])}
  updates = _one_update(
      _config(optimizer="sgd", learning_rate=0.1, momentum=0.0, weight_decay=0.5,
              grad_clip_norm=None), {"w": jnp.array([1.0])}, params)
  np.testing.assert_allclose(updates["w"], [-0.1 * (1.0 + 0.5 * 2.0)], rtol=1e-6)


def test_global_norm_clipping():
  config = _config(optimizer="sgd", learning_rate=1.0, momentum=0.0, grad_clip_norm=2.0)
  grads = {"a": jnp.array([30.0, 40.0]), "b": jnp.array([0.0])}  # global norm 50
  updates = _one_update(config, grads, jax.tree.map(jnp.zeros_like, grads))
  assert float(optax.tree.norm(updates)) == pytest.approx(2.0, rel=1e-6)
  np.testing.assert_allclose(updates["a"], [-1.2, -1.6], rtol=1e-6)
  # Small gradients pass unchanged.
  small = {"a": jnp.array([0.3, 0.4]), "b": jnp.array([0.0])}
  np.testing.assert_allclose(_one_update(config, small, small)["a"], [-0.3, -0.4], rtol=1e-6)


def test_learning_rate_is_loggable_and_drives_the_optimizer():
  config = _config(optimizer="sgd", momentum=0.0, learning_rate=1.0, grad_clip_norm=None,
                   schedule="warmup_cosine", warmup_steps=4, num_steps=20)
  tx, schedule = training.make_optimizer(config)
  params = {"w": jnp.zeros(())}
  state = tx.init(params)
  for count in range(6):
    updates, state = tx.update({"w": jnp.ones(())}, state, params)
    assert float(updates["w"]) == pytest.approx(-float(schedule(count)), abs=1e-7)
  assert math.isclose(float(schedule(4)), 1.0, rel_tol=1e-6)


def test_make_optimizer_rejects_adam_with_weight_decay_and_unknown_names():
  with pytest.raises(ValueError, match="use 'adamw'"):
    training.make_optimizer(_config(optimizer="adam", weight_decay=0.1))
  with pytest.raises(ValueError, match="must be one of 'adam', 'adamw', 'sgd', got 'lamb'"):
    training.make_optimizer(_config(optimizer="lamb"))
