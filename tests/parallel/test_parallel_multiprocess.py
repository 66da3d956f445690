"""Two processes on localhost (gloo CPU collectives, one device each) train a tiny token MLP
through ``training.train`` on a ``data=2`` mesh, each process reading only its own rows of the
global batch, and end with the parameters of one process training on the same global batch.

Also (slow): a checkpoint written by ``training.train`` on 8 fake devices (``data=4, fsdp=2``)
resumes in a one-device process, whose checkpoint resumes on 8 devices (``data=8``), ending
where an uninterrupted one-device run ends.
"""

import os
import socket
import subprocess
import sys

import numpy as np
import pytest

SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_parallel_task.py")
sys.path.insert(0, os.path.dirname(SCRIPT))

import _parallel_task as task  # noqa: E402  pylint: disable=wrong-import-position

TOL = dict(rtol=1e-5, atol=1e-5)


def _env(devices: int = 1) -> dict:
  env = dict(os.environ)
  env["JAX_PLATFORMS"] = "cpu"
  flags = [f for f in env.get("XLA_FLAGS", "").split()
           if not f.startswith("--xla_force_host_platform_device_count")]
  if devices > 1:
    flags.append(f"--xla_force_host_platform_device_count={devices}")
  env["XLA_FLAGS"] = " ".join(flags)
  for name in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"):
    env.pop(name, None)
  return env


def _train_cmd(workdir, params_out, num_steps, mesh="", *extra):
  return [sys.executable, SCRIPT, "train", "--workdir", str(workdir), "--num_steps",
          str(num_steps), "--params_out", str(params_out), "--mesh", mesh, *map(str, extra)]


def _check(proc):
  assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]


def _train(workdir, params_out, num_steps, mesh="", devices=1):
  _check(subprocess.run(_train_cmd(workdir, params_out, num_steps, mesh), env=_env(devices),
                        capture_output=True, text=True, timeout=600))


def _load(path):
  with np.load(path) as data:
    return {k: data[k] for k in data.files}


def _assert_same_params(got, want, steps):
  assert int(got["step"]) == int(want["step"]) == steps
  keys = set(want) - {"step", "devices"}
  assert keys and set(got) - {"step", "devices"} == keys
  for key in keys:
    np.testing.assert_allclose(got[key], want[key], err_msg=key, **TOL)


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


@pytest.mark.slow  # make test-all; two processes, ~30 s
def test_two_processes_train_like_one(tmp_path):
  steps = 3
  address = f"localhost:{_free_port()}"
  procs = [subprocess.Popen(
      _train_cmd(tmp_path / "two", tmp_path / "two.npz", steps, "", "--model", "mlp",
                 "--coordinator_address", address, "--num_processes", 2, "--process_id", i),
      env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in (0, 1)]
  # The one-process run, here in the pytest process (one device) while the two train.
  state, params = task.train_params(str(tmp_path / "one"), steps, model="mlp")
  one = {"step": np.asarray(state.step), "devices": np.int32(1), **params}
  for proc in procs:
    try:
      out, err = proc.communicate(timeout=600)
    finally:
      proc.kill()
    assert proc.returncode == 0, out[-2000:] + err[-4000:]
  two = _load(tmp_path / "two.npz")
  assert int(two["devices"]) == 2
  _assert_same_params(two, one, steps)


@pytest.mark.slow
def test_checkpoint_moves_from_8_devices_to_1_and_back(tmp_path):
  workdir = tmp_path / "moving"
  _train(workdir, tmp_path / "a.npz", 3, "data=4,fsdp=2", devices=8)
  _train(workdir, tmp_path / "b.npz", 6, "", devices=1)
  _train(workdir, tmp_path / "c.npz", 9, "data=8", devices=8)
  _train(tmp_path / "straight", tmp_path / "straight.npz", 9, "", devices=1)
  assert int(_load(tmp_path / "a.npz")["devices"]) == 8
  assert int(_load(tmp_path / "b.npz")["devices"]) == 1
  _assert_same_params(_load(tmp_path / "c.npz"), _load(tmp_path / "straight.npz"), 9)
