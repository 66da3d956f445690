"""The train() loop in-process: outputs, exact resume after a crash, log truncation, NaN stop."""

import glob
import json
import os
import struct
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from _training_task import build_task, make_config, params_to_numpy
from attention_jax import training
from tensorboardX import event_file_writer
from tensorboardX.proto import event_pb2


class _Crash(Exception):
  pass


def _tensorboard_scalars(logdir):
  """``{tag: [(step, value), ...]}`` as TensorBoard shows the event files in ``logdir``: read in
  name order, a START session log at step ``s`` hides what earlier files logged at ``s`` and
  later."""
  scalars = {}
  for path in sorted(glob.glob(os.path.join(logdir, "events.out.tfevents.*"))):
    with open(path, "rb") as f:
      data = f.read()
    pos = 0
    while pos < len(data):  # TFRecords: length (u64), its crc (u32), data, data crc (u32)
      (length,) = struct.unpack("<Q", data[pos:pos + 8])
      event = event_pb2.Event.FromString(data[pos + 12:pos + 12 + length])
      pos += 12 + length + 4
      if event.session_log.status == event_pb2.SessionLog.START:
        for tag, points in scalars.items():
          scalars[tag] = [(step, v) for step, v in points if step < event.step]
      for value in event.summary.value:
        scalars.setdefault(value.tag, []).append((event.step, value.simple_value))
  return scalars


def _assert_tensorboard_matches_log(workdir):
  """TensorBoard holds every number of metrics.jsonl (``<split>/<key>``), and nothing else."""
  want = {}
  for record in training.read_jsonl(workdir / "metrics.jsonl"):
    for key, value in record.items():
      if key not in ("step", "split"):
        want.setdefault(f"{record['split']}/{key}", []).append((record["step"], value))
  got = _tensorboard_scalars(workdir / "tensorboard")
  assert sorted(got) == sorted(want)
  for tag in want:
    assert [s for s, _ in got[tag]] == [s for s, _ in want[tag]], tag
    assert [v for _, v in got[tag]] == pytest.approx([v for _, v in want[tag]], rel=1e-6), tag


def _run(config, workdir, crash_at=None, poison_step=None, **kwargs):
  """Trains with freshly built (and freshly jitted) functions; returns (state, data order)."""
  order = []
  init_state, train_step, get_batch, eval_step, schedule = build_task(
      config, poison_step=poison_step, order=order)

  def batches(step):
    if crash_at is not None and step == crash_at:
      raise _Crash(step)
    return get_batch(step)

  state = training.train(config, workdir, init_state, train_step, batches,
                         learning_rate_fn=schedule, **kwargs)
  return state, order


def _eval_fn(config):
  _, _, get_batch, eval_step, _ = build_task(config)
  return lambda state: training.evaluate(eval_step, state, (get_batch(10**6 + i) for i in range(3)))


def test_train_writes_metrics_eval_checkpoints_and_nothing_else(tmp_path, capsys, monkeypatch):
  config = make_config(num_steps=20, log_every=5, checkpoint_every=5, keep_checkpoints=2,
                       eval_every=10)
  workdir = tmp_path / "run"
  monkeypatch.setattr(sys.stderr, "isatty", lambda: True)  # the bar shows on a terminal
  state, order = _run(config, workdir, eval_fn=_eval_fn(config))
  assert int(state.step) == 20 and order == list(range(20))
  assert os.listdir(tmp_path) == ["run"]
  assert sorted(os.listdir(workdir)) == ["checkpoints", "config.json", "final_eval.json",
                                         "metrics.jsonl", "tensorboard"]
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

  _assert_tensorboard_matches_log(workdir)
  scalars = _tensorboard_scalars(workdir / "tensorboard")
  assert [s for s, _ in scalars["train/loss"]] == [5, 10, 15, 20]
  assert [s for s, _ in scalars["eval/accuracy"]] == [10, 20]
  assert "20/20" in capsys.readouterr().err  # the progress bar


def test_no_progress_bar_when_stderr_is_not_a_terminal(tmp_path, capsys):
  _run(make_config(num_steps=4, log_every=2, checkpoint_every=4), tmp_path)
  assert "4/4" not in capsys.readouterr().err


def test_a_metric_that_cannot_be_written_stops_the_run(tmp_path, monkeypatch):
  config = make_config(num_steps=4, log_every=2, checkpoint_every=4)
  (tmp_path / "a").mkdir()
  (tmp_path / "a" / "tensorboard").write_text("a file where the event directory goes")
  with pytest.raises(FileExistsError):
    _run(config, tmp_path / "a")

  def no_space(self):
    raise OSError(28, "No space left on device")

  monkeypatch.setattr(event_file_writer.EventsWriter, "flush", no_space)
  with pytest.raises(OSError, match="No space left on device"):
    _run(config, tmp_path / "b")
  assert [r["step"] for r in training.read_jsonl(tmp_path / "b" / "metrics.jsonl")] == [2]


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
  # TensorBoard hides what the crashed run logged after checkpoint 10, as the log drops it.
  assert len(glob.glob(str(workdir / "tensorboard" / "events.out.tfevents.*"))) == 2
  _assert_tensorboard_matches_log(workdir)


def test_finished_run_restores_and_returns_without_training(tmp_path):
  config = make_config(num_steps=6, log_every=3, checkpoint_every=3)
  first, _ = _run(config, tmp_path)
  again, order = _run(config, tmp_path)
  assert order == [] and int(again.step) == 6
  np.testing.assert_array_equal(params_to_numpy(again.params)["['Dense_0']['kernel']"],
                                params_to_numpy(first.params)["['Dense_0']['kernel']"])
  assert [r["step"] for r in training.read_jsonl(tmp_path / "metrics.jsonl")] == [3, 6]
  _assert_tensorboard_matches_log(tmp_path)


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
    training.train(config, tmp_path, state, training.make_train_step(loss_fn), get_batch)
