"""Train state, train/eval steps, metric sums and evaluate()."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from attention_jax import training
from attention_jax.training import metrics as metrics_lib


def _linear_state(seed=0, lr=0.1):
  params = {"w": jnp.zeros((3, 2)), "b": jnp.zeros((2,))}
  return training.create_train_state(params, optax.sgd(lr), seed=seed)


def _linear_loss(params, batch, rng):
  del rng
  logits = batch["x"] @ params["w"] + params["b"]
  sums = training.classification_sums(logits, batch["y"], batch["weights"])
  return sums["loss_sum"] / jnp.maximum(sums["token_count"], 1.0), sums


def _linear_metrics(params, batch):
  return _linear_loss(params, batch, None)[1]


def _batch(n, seed=0, pad=0):
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(n + pad, 3)).astype(np.float32)
  y = rng.integers(0, 2, size=(n + pad,)).astype(np.int32)
  w = np.concatenate([np.ones(n), np.zeros(pad)]).astype(np.float32)
  if pad:  # Garbage in padded rows must not matter, not even in the gradients.
    x[n:] = 1e30  # (finite: NaN inputs poison x @ w's gradient whatever the loss does)
    y[n:] = 99
  return {"x": x, "y": y, "weights": w}


def test_train_state_fields_and_step_rng():
  state = _linear_state(seed=7)
  assert state.step.dtype == jnp.int32 and int(state.step) == 0
  assert state.rng.dtype == jnp.uint32 and state.rng.shape == (2,)
  np.testing.assert_array_equal(state.rng, jax.random.key_data(jax.random.key(7)))
  np.testing.assert_array_equal(state.step_rng(), jax.random.fold_in(state.rng, 0))
  later = state.replace(step=jnp.asarray(5, jnp.int32))
  np.testing.assert_array_equal(later.step_rng(), jax.random.fold_in(state.rng, 5))
  assert not np.array_equal(later.step_rng(), state.step_rng())
  typed = training.TrainState.create(apply_fn=None, params=state.params, tx=optax.sgd(0.1),
                                     rng=jax.random.key(7))
  np.testing.assert_array_equal(typed.rng, state.rng)
  with pytest.raises(ValueError, match="rng must be"):
    training.TrainState.create(apply_fn=None, params={}, tx=optax.sgd(0.1),
                               rng=jnp.zeros(3, jnp.float32))


def test_classification_sums_against_numpy():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(2, 3, 5)).astype(np.float32)
  labels = rng.integers(0, 5, size=(2, 3))
  weights = np.array([[1, 1, 0], [1, 0, 0]], np.float32)
  sums = training.classification_sums(jnp.asarray(logits, jnp.bfloat16).astype(jnp.float32),
                                      labels, weights)
  logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  nll = -np.take_along_axis(logp, labels[..., None], -1)[..., 0]
  assert float(sums["token_count"]) == 3.0
  assert float(sums["loss_sum"]) == pytest.approx(float((nll * weights).sum()), rel=2e-2)
  assert float(sums["correct_sum"]) == float(((logits.argmax(-1) == labels) * weights).sum())
  # Per-example weights broadcast over the token axis.
  per_example = training.classification_sums(logits, labels, np.array([1.0, 0.0]))
  assert float(per_example["token_count"]) == 3.0
  with pytest.raises(ValueError, match="not a prefix"):
    training.classification_sums(logits, labels, np.ones((3,)))
  with pytest.raises(ValueError, match="logits has shape"):
    training.classification_sums(logits, labels[:, :2])


def test_classification_sums_ignore_nonfinite_logits_and_bad_labels_in_padding():
  logits = jnp.array([[2.0, -1.0], [jnp.nan, jnp.inf]])
  labels = jnp.array([0, 12345])
  weights = jnp.array([1.0, 0.0])
  fn = lambda l: training.classification_sums(l, labels, weights)["loss_sum"]
  loss, grad = jax.value_and_grad(fn)(logits)
  assert float(loss) == pytest.approx(float(jnp.log1p(jnp.exp(-3.0))), rel=1e-6)
  assert np.isfinite(np.asarray(grad)).all() and not np.asarray(grad[1]).any()


def test_train_step_metric_sums_ignore_padding_and_match_a_manual_update():
  state = _linear_state()
  batch = _batch(6, pad=2)
  expected_loss, _ = _linear_loss(state.params, batch, None)
  grads = jax.grad(lambda p: _linear_loss(p, batch, None)[0])(state.params)
  assert all(np.isfinite(g).all() for g in jax.tree.leaves(grads))
  unpadded = {k: v[:6] for k, v in batch.items()}
  unpadded_loss = float(_linear_loss(state.params, unpadded, None)[0])
  unpadded_grads = jax.grad(lambda p: _linear_loss(p, unpadded, None)[0])(state.params)
  np.testing.assert_allclose(grads["w"], unpadded_grads["w"], rtol=1e-6)
  train_step = training.make_train_step(_linear_loss)
  new_state, sums = train_step(state, batch)
  assert int(new_state.step) == 1
  np.testing.assert_allclose(new_state.params["w"], -0.1 * grads["w"], rtol=1e-6)
  assert float(sums["token_count"]) == 6.0
  assert float(sums["example_count"]) == 8.0  # leading dim, as nothing else was reported
  assert float(sums["loss_sum"]) == pytest.approx(6 * float(expected_loss), rel=1e-6)
  assert float(sums["grad_norm_sum"]) == pytest.approx(float(optax.tree.norm(grads)), rel=1e-6)
  assert float(sums["num_steps"]) == 1.0
  assert int(sums[metrics_lib.FIRST_NONFINITE_STEP]) == metrics_lib.NO_NONFINITE_STEP
  # Same loss as a batch without the padded rows: padding never skews the mean.
  assert unpadded_loss == pytest.approx(float(sums["loss_sum"]) / 6.0, rel=1e-6)


def test_train_step_donates_the_state():
  state = _linear_state()
  new_state, _ = training.make_train_step(_linear_loss)(state, _batch(4))
  assert state.params["w"].is_deleted()
  assert not new_state.params["w"].is_deleted()
  kept = _linear_state()
  training.make_train_step(_linear_loss, donate=False)(kept, _batch(4))
  assert not kept.params["w"].is_deleted()


def test_train_step_defaults_without_aux_and_the_rng_is_folded_with_the_step():
  seen = []

  def loss_fn(params, batch, rng):
    seen.append(rng)  # runs un-jitted below
    return jnp.sum(params["w"] * batch["x"]), None

  step = training.make_train_step(loss_fn, jit=False)
  state = training.create_train_state({"w": jnp.ones(2)}, optax.sgd(1.0), seed=3)
  state, sums = step(state, {"x": jnp.array([1.0, 2.0])})
  state, sums = step(state, {"x": jnp.array([1.0, 2.0])})
  assert float(sums["loss_sum"]) == pytest.approx(0.0 + (1 - 1) * 1 + (1 - 2) * 2)
  assert float(sums["token_count"]) == 1.0
  np.testing.assert_array_equal(seen[0], jax.random.fold_in(state.rng, 0))
  np.testing.assert_array_equal(seen[1], jax.random.fold_in(state.rng, 1))


def test_nonfinite_step_is_tracked_through_accumulation():
  def loss_fn(params, batch, rng):
    del rng
    return jnp.sum(params["w"] * batch["x"]), {}

  step = training.make_train_step(loss_fn, donate=False)
  acc = jax.jit(training.accumulate)
  state = training.create_train_state({"w": jnp.ones(2)}, optax.sgd(0.0))
  total = None
  for i, x in enumerate([[1.0, 1.0], [np.nan, 0.0], [np.inf, 0.0], [2.0, 2.0]]):
    state = state.replace(step=jnp.asarray(i + 10, jnp.int32))
    _, sums = step(state, {"x": jnp.asarray(x)})
    total = training.accumulate(total, sums) if total is None else acc(total, sums)
  bad = metrics_lib.first_nonfinite(jax.device_get(total))
  assert bad is not None and bad[0] == 11 and np.isnan(bad[1])
  assert metrics_lib.first_nonfinite(jax.device_get(sums)) is None
  summary = training.summarize(total)
  assert not any(k in summary for k in metrics_lib.RESERVED_KEYS)
  assert summary["num_steps"] == 4.0


def test_accumulate_and_summarize_rules():
  a = {"loss_sum": 4.0, "correct_sum": 3.0, "token_count": 4.0, "num_steps": 1.0,
       "grad_norm_sum": 2.0, "bleu_hits": 5.0, "len_sum": 10.0, "sentences": 2.0}
  b = {"loss_sum": 2.0, "correct_sum": 1.0, "token_count": 4.0, "num_steps": 1.0,
       "grad_norm_sum": 4.0, "bleu_hits": 1.0, "len_sum": 2.0, "sentences": 2.0}
  total = training.accumulate({k: jnp.float32(v) for k, v in a.items()},
                              {k: jnp.float32(v) for k, v in b.items()})
  summary = training.summarize(total, denominators={"len_sum": "sentences"})
  assert summary == {"loss": 0.75, "accuracy": 0.5, "token_count": 8.0, "num_steps": 2.0,
                     "grad_norm": 3.0, "bleu_hits": 6.0, "len": 3.0, "sentences": 4.0}
  assert training.summarize({"loss_sum": 0.0, "token_count": 0.0})["loss"] is None
  with pytest.raises(ValueError, match="needs the count 'token_count'"):
    training.summarize({"loss_sum": 1.0})
  with pytest.raises(ValueError, match="metric keys changed"):
    training.accumulate({"a": 1.0}, {"b": 1.0})


def test_evaluate_with_a_padded_final_batch_equals_one_big_batch():
  state = _linear_state()
  state = state.replace(params={"w": jnp.arange(6.0).reshape(3, 2) / 5, "b": jnp.ones(2)})
  full = _batch(10, seed=3)
  # Batches of 4: 4 + 4 + 2 real rows, the last padded to 4 with weight 0.
  batches = []
  for start in (0, 4, 8):
    part = {k: v[start:start + 4] for k, v in full.items()}
    n = len(part["y"])
    if n < 4:
      part = {k: np.concatenate([v, np.zeros((4 - n,) + v.shape[1:], v.dtype) + 7])
              for k, v in part.items()}
      part["weights"][n:] = 0.0
    batches.append(part)
  eval_step = training.make_eval_step(_linear_metrics)
  result = training.evaluate(eval_step, state, iter(batches))
  expected = training.summarize(_linear_metrics(state.params, full))
  assert result["token_count"] == 10.0
  assert result["loss"] == pytest.approx(expected["loss"], rel=1e-6)
  assert result["accuracy"] == pytest.approx(expected["accuracy"])
  with pytest.raises(ValueError, match="no batches"):
    training.evaluate(eval_step, state, [])
