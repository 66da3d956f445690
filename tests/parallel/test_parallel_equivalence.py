"""One training step on 8 fake CPU devices equals the single-device step, for every mesh; ring
attention equals dense attention, forward and gradients; a checkpoint moves between meshes.

Everything runs in one subprocess with ``--xla_force_host_platform_device_count=8`` (see
``_parallel_task.py``), so this pytest process keeps its single device.
"""

import os
import subprocess
import sys

import numpy as np
import pytest

SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_parallel_task.py")
sys.path.insert(0, os.path.dirname(SCRIPT))

import _parallel_task as task  # noqa: E402  pylint: disable=wrong-import-position

# make test-all: one 8-device subprocess run (~75 s) feeds every test here; the default run keeps
# the mesh rules (test_parallel_mesh.py) and the sequence-parallel LM experiment.
pytestmark = pytest.mark.slow

TOL = dict(rtol=1e-5, atol=1e-5)


def fake_devices_env(count: int = 8) -> dict:
  env = dict(os.environ)
  env["JAX_PLATFORMS"] = "cpu"
  env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") +
                      f" --xla_force_host_platform_device_count={count}").strip()
  return env


@pytest.fixture(scope="module")
def results(tmp_path_factory):
  out = tmp_path_factory.mktemp("steps") / "steps.npz"
  proc = subprocess.run([sys.executable, SCRIPT, "steps", "--out", str(out)],
                        env=fake_devices_env(), capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-4000:]
  with np.load(out) as data:
    return {k: data[k] for k in data.files}


def _params(results, prefix):
  found = {k[len(prefix):]: v for k, v in results.items() if k.startswith(prefix + "/params")}
  assert found, prefix
  return found


def _assert_same_training(results, name):
  np.testing.assert_allclose(results[f"{name}/losses"], results["single/losses"], **TOL)
  want = _params(results, "single")
  got = _params(results, name)
  assert set(got) == set(want)
  for key in want:
    np.testing.assert_allclose(got[key], want[key], err_msg=key, **TOL)


def test_training_steps_change_the_parameters(results):
  """The comparison below is not between two untouched initialisations."""
  losses = results["single/losses"]
  assert len(losses) == task.NUM_STEPS and np.all(np.isfinite(losses))
  assert losses[-1] < losses[0]


def test_data_parallel_steps_match_one_device(results):
  _assert_same_training(results, "data8")


def test_fsdp_steps_match_one_device_and_shard_parameters(results):
  _assert_same_training(results, "data4_fsdp2")
  assert results["data4_fsdp2/fsdp_sharded_leaves"] > 0
  assert results["data8/fsdp_sharded_leaves"] == 0


def test_sequence_parallel_lm_steps_match_one_device(results):
  """The LM with implementation='ring' on a (data=2, sequence=4) mesh: ring attention in the
  training step, the context split four ways."""
  _assert_same_training(results, "data2_sequence4")


@pytest.mark.parametrize("causal", [0, 1])
@pytest.mark.parametrize("what", ["out", "dq", "dk", "dv"])
def test_ring_attention_matches_dense_attention(results, causal, what):
  want = results[f"ring/causal{causal}/reference/{what}"]
  got = results[f"ring/causal{causal}/sequence8/{what}"]
  assert np.abs(want).max() > 0.1
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=2e-5)


@pytest.mark.parametrize("target,devices", [("single", 1), ("data8", 8)])
def test_fsdp_checkpoint_restores_on_another_mesh(results, target, devices):
  assert results[f"restored_on_{target}/num_devices"] == devices
  want = _params(results, "data4_fsdp2")
  got = _params(results, f"restored_on_{target}")
  assert set(got) == set(want)
  for key in want:
    np.testing.assert_array_equal(got[key], want[key], err_msg=key)
