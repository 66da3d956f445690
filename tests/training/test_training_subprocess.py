"""Resume exactness across processes: a clean stop at N/2, and a SIGKILL mid-run."""

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_training_task.py")
NUM_STEPS = 20


def _cmd(workdir, name, *extra):
  return [sys.executable, SCRIPT, "--workdir", str(workdir), "--num_steps", str(NUM_STEPS),
          "--checkpoint_every", "5", "--order_file", str(workdir.parent / f"{name}.order"),
          "--params_out", str(workdir.parent / f"{name}.npz"), *map(str, extra)]


def _env():
  env = dict(os.environ)
  env["JAX_PLATFORMS"] = "cpu"
  return env


def _run(workdir, name, *extra):
  proc = subprocess.run(_cmd(workdir, name, *extra), env=_env(), capture_output=True,
                        text=True, timeout=120)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return proc.stdout


def _order(workdir, name):
  with open(workdir.parent / f"{name}.order") as f:
    return [int(line) for line in f]


def _params(workdir, name):
  with np.load(workdir.parent / f"{name}.npz") as data:
    return {k: data[k] for k in data.files}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("reference") / "run"
  out = _run(workdir, "ref")
  assert out.splitlines() == ["checkpoint 5", "checkpoint 10", "checkpoint 15",
                              "checkpoint 20", "done"]
  assert _order(workdir, "ref") == list(range(NUM_STEPS))
  return _params(workdir, "ref")


def _assert_same_params(got, want):
  assert set(got) == set(want)
  assert int(got["step"]) == NUM_STEPS
  for key in want:
    np.testing.assert_array_equal(got[key], want[key], err_msg=key)


@pytest.mark.slow  # make test-all; the SIGKILL test below resumes in a new process too
def test_resume_in_a_new_process_is_exact(tmp_path, reference):
  workdir = tmp_path / "run"
  out = _run(workdir, "first", "--stop_at", NUM_STEPS // 2)
  assert out.splitlines() == ["checkpoint 5", "checkpoint 10", "stopped"]
  assert sorted(os.listdir(workdir / "checkpoints")) == ["10", "5"]
  _run(workdir, "second")
  assert _order(workdir, "first") == list(range(NUM_STEPS // 2))
  assert _order(workdir, "second") == list(range(NUM_STEPS // 2, NUM_STEPS))
  _assert_same_params(_params(workdir, "second"), reference)


def test_sigkill_mid_run_then_restart_matches_an_uninterrupted_run(tmp_path, reference):
  workdir = tmp_path / "run"
  proc = subprocess.Popen(_cmd(workdir, "killed", "--sleep", 0.1), env=_env(),
                          stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
  try:
    seen = []
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
      line = proc.stdout.readline()
      if not line:
        break
      seen.append(line.strip())
      if line.strip() == "checkpoint 10":
        time.sleep(0.15)  # into step 11 or 12, possibly while checkpoint 10 is being written
        os.kill(proc.pid, signal.SIGKILL)
        break
    proc.wait(timeout=30)
  finally:
    if proc.poll() is None:
      proc.kill()
      proc.wait()
  assert seen[-1] == "checkpoint 10", seen
  assert proc.returncode == -signal.SIGKILL
  killed_order = _order(workdir, "killed")
  assert killed_order == list(range(len(killed_order))) and 10 <= len(killed_order) < NUM_STEPS

  _run(workdir, "restarted")
  restarted_order = _order(workdir, "restarted")
  # Checkpoint 5 was complete before checkpoint 10 started; 10 may or may not have finished.
  assert restarted_order[0] in (5, 10)
  assert restarted_order == list(range(restarted_order[0], NUM_STEPS))
  _assert_same_params(_params(workdir, "restarted"), reference)
  checkpoints = sorted(int(s) for s in os.listdir(workdir / "checkpoints"))
  assert checkpoints == [15, 20]  # keep_checkpoints=2; no tmp directory left behind
