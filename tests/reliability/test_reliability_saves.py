"""A checkpoint folder that cannot be written stops the run at once with one line naming it
(never orbax's background threads waiting minutes for a step folder, then a TimeoutError)."""

import contextlib
import os
import shutil
import stat
import subprocess
import time

import pytest

import _reliability_runs as runs
from attention_jax import training


@contextlib.contextmanager
def _read_only(directory):
  """Makes ``directory`` unwritable: chmod for a user, the immutable flag for root (who ignores
  permissions); skips the test where neither holds."""
  if os.geteuid() != 0:
    mode = stat.S_IMODE(os.stat(directory).st_mode)
    os.chmod(directory, 0o555)
    try:
      yield
    finally:
      os.chmod(directory, mode)
    return
  if shutil.which("chattr") is None or subprocess.run(
      ["chattr", "+i", str(directory)], capture_output=True, check=False).returncode != 0:
    pytest.skip("running as root, which ignores permissions, and chattr +i is not available")
  try:
    yield
  finally:
    subprocess.run(["chattr", "-i", str(directory)], check=True)


def test_an_unwritable_checkpoint_folder_stops_the_run_at_once(tmp_path):
  config = runs.make_config(num_steps=10, log_every=5, checkpoint_every=5)
  runs.crash(config, tmp_path, at=7)  # checkpoint 5 written
  checkpoints = os.path.join(str(tmp_path), "checkpoints")
  with _read_only(checkpoints):
    start = time.perf_counter()
    with pytest.raises(training.CheckpointError) as err:
      runs.run(config, tmp_path)
    seconds = time.perf_counter() - start
  message = str(err.value)
  assert message.startswith(f"cannot write checkpoints in {checkpoints}: "), message
  assert message.endswith("; make the folder writable or choose another workdir")
  assert "\n" not in message
  assert seconds < 30
  assert sorted(os.listdir(checkpoints)) == ["5"]


def test_a_folder_that_turns_unwritable_stops_the_next_save(tmp_path):
  directory = tmp_path / "checkpoints"
  config = runs.make_config(num_steps=10)
  state = runs._training_task.build_task(config)[0]()  # pylint: disable=protected-access
  with training.Checkpointer(directory) as ckpt:
    assert ckpt.save(1, state)
    ckpt.wait()
    with _read_only(directory):
      start = time.perf_counter()
      with pytest.raises(training.CheckpointError, match=f"^cannot write checkpoints in "
                                                         f"{directory}: "):
        ckpt.save(2, state)
      assert time.perf_counter() - start < 5
    assert ckpt.all_steps() == [1]
