"""The train() loop in-process: outputs, exact resume after a crash, log truncation, NaN stop."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from _training_task import build_task, make_config, params_to_numpy
from attention_jax import training


class _Crash(Exception):
  pass


class _FakeWriter:

  def __init__(self):
    self.scalars = []
    self.closed = False

  def scalar(self, tag, value, step):
    self.scalars.append((tag, value, step))

  def flush(self):
    pass

  def close(self):
    self.closed = True


def _run(config, workdir, crash_at=None, poison_step=None, **kwargs):
  """Trains with freshly built (and freshly jitted) functions; returns (state, data order)."""
  order = []
  init_state, train_step, get_batch, eval_step, schedule = build_task(
      config, poison_step=poison_step, order=order)

  def batches(step):
    if crash_at is not None and step == crash_at:
      raise _Crash(step)
    return get_batch(step)

  kwargs.setdefault("progress", False)
  kwargs.setdefault("summary_writer", None)
  state = training.train(config, workdir, init_state, train_step, batches,
                         learning_rate_fn=schedule, **kwargs)
  return state, order


def _eval_fn(config):
  _, _, get_batch, eval_step, _ = build_task(config)
  return lambda state: training.evaluate(eval_step, state, (get_batch(10**6 + i) for i in range(3)))


def test_train_writes_metrics_eval_checkpoints_and_nothing_else(tmp_path, capsys):
  config = make_config(num_steps=20, log_every=5, checkpoint_every=5, keep_checkpoints=2,
                       eval_every=10)
  workdir = tmp_path / "run"
  writer = _FakeWriter()
  state, order = _run(config, workdir, eval_fn=_eval_fn(config), summary_writer=writer,
                      progress=True)
  assert int(state.step) == 20 and order == list(range(20))
  assert os.listdir(tmp_path) == ["run"]
  assert sorted(os.listdir(workdir)) == ["checkpoints", "config.json", "final_eval.json",
                                         "metrics.jsonl"]
  assert sorted(os.listdir(workdir / "checkpoints")) == ["15", "20"]
  assert json.loads((workdir / "config.json").read_text())["num_steps"] == 20

  records = training.read_jsonl(workdir / "metrics.jsonl")
  train_lines = [r for r in records if r["split"] == "train"]
  eval_lines = [r for r in records if r["split"] == "eval"]
  assert [r["step"] for r in train_lines] == [5, 10, 15, 20]
  assert [r["step"] for r in eval_lines] == [10, 20]
  _, schedule = training.make_optimizer(config)
  for r in train_lines:
    for key in ("loss", "accuracy", "learning_rate", "steps_per_sec", "examples_per_sec",
                "grad_norm", "token_count"):
      assert key in r, key
    assert r["token_count"] == 5 * config.batch_size
    assert r["example_count"] == 5 * config.batch_size
    assert r["learning_rate"] == pytest.approx(float(schedule(r["step"] - 1)))
    assert r["steps_per_sec"] > 0 and 0.0 <= r["accuracy"] <= 1.0
  assert train_lines[-1]["loss"] < train_lines[0]["loss"]
  assert eval_lines[-1]["token_count"] == 3 * config.batch_size
  final = json.loads((workdir / "final_eval.json").read_text())
  assert final == {k: v for k, v in eval_lines[-1].items() if k != "split"}

  tags = {(tag, step) for tag, _, step in writer.scalars}
  assert {("train/loss", 5), ("train/learning_rate", 20), ("eval/accuracy", 10)} <= tags
  assert writer.closed
  assert "20/20" in capsys.readouterr().err  # the progress bar


def test_crash_and_resume_gives_the_same_trajectory_metrics_and_data_order(tmp_path):
  config = make_config(num_steps=20, log_every=2, checkpoint_every=5, keep_checkpoints=2)
  reference, ref_order = _run(config, tmp_path / "ref")
  assert ref_order == list(range(20))

  workdir = tmp_path / "resumed"
  with pytest.raises(_Crash):
    _run(config, workdir, crash_at=13)  # after checkpoint 10 and log lines up to 12
  lines = (workdir / "metrics.jsonl").read_text().splitlines()
  assert [json.loads(l)["step"] for l in lines][-1] == 12
  with open(workdir / "metrics.jsonl", "a") as f:
    f.write('{"step": 13, "split": "tr')  # a line torn by the crash
  # A new run: fresh model, optimiser, jitted step and loop.
  resumed, order = _run(config, workdir)
  assert order == list(range(10, 20))  # continues with get_batch(10)
  assert int(resumed.step) == 20
  ref_params, got_params = params_to_numpy(reference.params), params_to_numpy(resumed.params)
  for key in ref_params:
    np.testing.assert_array_equal(got_params[key], ref_params[key], err_msg=key)
  for a, b in zip(jax.tree.leaves(reference.opt_state), jax.tree.leaves(resumed.opt_state)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))

  ref_log = training.read_jsonl(tmp_path / "ref" / "metrics.jsonl")
  log = training.read_jsonl(workdir / "metrics.jsonl")
  assert [r["step"] for r in log] == list(range(2, 21, 2))  # no duplicates, nothing torn
  for got, want in zip(log, ref_log):
    for key in ("step", "loss", "accuracy", "learning_rate", "grad_norm", "token_count"):
      assert got[key] == want[key], (got["step"], key)


def test_finished_run_restores_and_returns_without_training(tmp_path):
  config = make_config(num_steps=6, log_every=3, checkpoint_every=3)
  first, _ = _run(config, tmp_path, summary_writer="auto")
  if training.make_summary_writer(tmp_path / "probe") is None:  # no tensorboardX / TF here
    assert not os.path.exists(tmp_path / "tensorboard")
    assert not os.path.exists(tmp_path / "probe")
  again, order = _run(config, tmp_path)
  assert order == [] and int(again.step) == 6
  np.testing.assert_array_equal(params_to_numpy(again.params)["['Dense_0']['kernel']"],
                                params_to_numpy(first.params)["['Dense_0']['kernel']"])
  assert [r["step"] for r in training.read_jsonl(tmp_path / "metrics.jsonl")] == [3, 6]


@pytest.mark.parametrize("log_every", [10, 1000])
def test_nan_loss_stops_with_a_clear_error_and_keeps_the_last_good_checkpoint(
    tmp_path, log_every):
  config = make_config(num_steps=60, log_every=log_every, checkpoint_every=10,
                       keep_checkpoints=3, warmup_steps=0)
  with pytest.raises(FloatingPointError) as err:
    _run(config, tmp_path, poison_step=37)
  ckpt_dir = os.path.join(str(tmp_path), "checkpoints")
  assert str(err.value) == (
      f"loss is nan at step 37; the last good checkpoint is step 30 in {ckpt_dir}")
  assert sorted(int(s) for s in os.listdir(ckpt_dir)) == [10, 20, 30]
  steps = [r["step"] for r in training.read_jsonl(tmp_path / "metrics.jsonl")]
  assert steps == ([10, 20, 30] if log_every == 10 else [])
  # The run resumes from step 30 and fails again at the same step.
  with pytest.raises(FloatingPointError, match="at step 37;"):
    _run(config, tmp_path, poison_step=37)


def test_nonfinite_gradient_with_finite_loss_is_caught(tmp_path):
  config = make_config(num_steps=8, log_every=4, checkpoint_every=4, schedule="constant",
                       warmup_steps=0)

  def loss_fn(params, batch, rng):
    del rng
    return jnp.sqrt(params["w"] * batch["s"]), {}  # d/dw at s == 0 is 0/0

  state = training.create_train_state({"w": jnp.float32(1.0)}, optax.sgd(0.0))
  get_batch = lambda step: {"s": np.float32(0.0 if step == 5 else 1.0)}
  with pytest.raises(FloatingPointError,
                     match=r"^gradient norm is nan \(loss 0.0\) at step 5; the last good "
                           r"checkpoint is step 4 in "):
    training.train(config, tmp_path, state, training.make_train_step(loss_fn), get_batch,
                   progress=False, summary_writer=None)
