"""Damaged checkpoints: reported in one line, skipped for the newest intact one, never restored
wrong; a workdir of another model or with nothing intact stops with a one-line error."""

import functools
import logging
import os
import shutil

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

import _reliability_runs as runs
import _training_task
from attention_jax import training

CONFIG = dict(num_steps=20, log_every=5, checkpoint_every=5, keep_checkpoints=3)


@pytest.fixture(scope="module")
def finished_and_crashed(tmp_path_factory):
  """``(reference state, reference workdir, crashed workdir)``: the crashed run has
  checkpoints 5, 10 and 15."""
  base = tmp_path_factory.mktemp("runs")
  config = runs.make_config(**CONFIG)
  reference, _ = runs.run(config, base / "reference")
  runs.crash(config, base / "crashed", at=15)
  assert sorted(os.listdir(base / "crashed" / "checkpoints")) == ["10", "15", "5"]
  return reference, base / "reference", base / "crashed"


def _truncate_all(step_dir):
  for path in runs.data_files(step_dir):
    os.truncate(path, os.path.getsize(path) // 2)


def _remove_all(step_dir):
  for path in runs.data_files(step_dir):
    os.remove(path)


DAMAGES = {
    "data files deleted": (_remove_all, "is damaged"),
    "data files truncated": (_truncate_all, "is damaged"),
    "_METADATA deleted": (lambda d: os.remove(d / "state" / "_METADATA"),
                          "is damaged: state/_METADATA is missing"),
    "manifest.ocdbt deleted": (lambda d: os.remove(d / "state" / "manifest.ocdbt"),
                               "is damaged: state/manifest.ocdbt is missing"),
    "state folder deleted": (lambda d: shutil.rmtree(d / "state"),
                             "is incomplete: its state/ folder is missing"),
    "checksums deleted": (lambda d: shutil.rmtree(d / "checksums"),
                          "is damaged: its checksums/ folder is missing"),
}


def _warnings(caplog):
  return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


@pytest.mark.parametrize("damage", sorted(DAMAGES))
def test_a_damaged_latest_checkpoint_falls_back_and_ends_bit_identical(
    finished_and_crashed, tmp_path, caplog, damage):
  reference, reference_dir, crashed = finished_and_crashed
  workdir = runs.copy_run(crashed, tmp_path / "run")
  damage_fn, reason = DAMAGES[damage]
  damage_fn(workdir / "checkpoints" / "15")
  with caplog.at_level(logging.WARNING):
    resumed, order = runs.run(runs.make_config(**CONFIG), workdir)
  checkpoints = os.path.join(str(workdir), "checkpoints")
  warnings = [w for w in _warnings(caplog) if "Checkpoint step" in w]
  assert len(warnings) == 1, warnings
  assert warnings[0].startswith(f"Checkpoint step 15 in {checkpoints} {reason}"), warnings[0]
  assert "\n" not in warnings[0]
  assert order == list(range(10, 20))  # resumed from step 10
  runs.assert_same_state(resumed, reference)
  assert runs.exact_log(workdir) == runs.exact_log(reference_dir)
  # The damaged step 15 was replaced by an intact one.
  like = _training_task.build_task(runs.make_config(**CONFIG))[0]()
  with training.Checkpointer(checkpoints) as ckpt:
    assert ckpt.all_steps() == [10, 15, 20]
    assert int(ckpt.restore(like, step=15).step) == 15


def test_no_intact_checkpoint_stops_with_one_line_naming_the_folder(finished_and_crashed,
                                                                    tmp_path):
  _, _, crashed = finished_and_crashed
  workdir = runs.copy_run(crashed, tmp_path / "run")
  for step in (5, 10, 15):
    os.remove(workdir / "checkpoints" / str(step) / "state" / "_METADATA")
  with pytest.raises(training.CheckpointError) as err:
    runs.run(runs.make_config(**CONFIG), workdir)
  message = str(err.value)
  checkpoints = os.path.join(str(workdir), "checkpoints")
  assert "\n" not in message
  assert message.startswith(f"no intact checkpoint in {checkpoints} (step 15 is damaged: "
                            f"state/_METADATA is missing; step 10 ")
  assert message.endswith("delete it to train from scratch, or put back intact step folders")


def test_another_models_checkpoints_stop_with_one_line(tmp_path, monkeypatch):
  config = runs.make_config(num_steps=10, log_every=5, checkpoint_every=5)
  runs.run(config, tmp_path)
  monkeypatch.setattr(_training_task, "MLP", functools.partial(_training_task.MLP, hidden=48))
  with pytest.raises(training.CheckpointError) as err:
    runs.run(config, tmp_path)
  checkpoints = os.path.join(str(tmp_path), "checkpoints")
  assert str(err.value) == (
      "this workdir holds a run of a different model: .params['Dense_0']['bias'] "
      f"stored (32,), model has (48,) (in {checkpoints}); delete it or choose another workdir")


def _flip(path, offset):
  data = bytearray(path.read_bytes())
  data[offset] ^= 0xFF
  path.write_bytes(bytes(data))


def _orbax_restore(directory, step, like):
  """What plain orbax returns for the step (no verification), or None if it raises."""
  manager = ocp.CheckpointManager(directory)
  try:
    restored = manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(training.abstract_like(like))))
    return jax.device_get(restored["state"])
  except Exception:  # pylint: disable=broad-except
    return None
  finally:
    manager.close()


def _same(a, b):
  return all(np.array_equal(np.asarray(x), np.asarray(y))
             for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def _saved_run(tmp_path):
  """``(saved state on host, fresh state, checkpoints folder)`` of a 4-step run that saved at
  2 and 4."""
  config = runs.make_config(num_steps=4, log_every=4, checkpoint_every=2)
  saved, _ = runs.run(config, tmp_path / "run")
  like = _training_task.build_task(config)[0]()
  return jax.device_get(saved), like, tmp_path / "run" / "checkpoints"


def test_flipped_bytes_are_detected_never_restored_silently(tmp_path):
  """Flips a byte at a few places of each data file: the checkpointer restores exactly what was
  saved or reports the step as damaged; where plain orbax would return other values, it reports
  a checksum mismatch. (Which flips orbax itself notices depends on the file layout.)"""
  saved, like, source = _saved_run(tmp_path)
  for i, path in enumerate(runs.data_files(source / "4")):
    size = os.path.getsize(path)
    for fraction in (0.1, 0.5, 0.9):
      directory = tmp_path / f"flip-{i}-{fraction}"
      shutil.copytree(source, directory)
      _flip(directory / os.path.relpath(path, source), int(size * fraction))
      plain = _orbax_restore(str(directory), 4, like)
      with training.Checkpointer(directory) as ckpt:
        try:
          restored = ckpt.restore(like, step=4)
        except training.CheckpointError as e:
          message = str(e)
          assert message.startswith(f"checkpoint step 4 in {directory} is damaged: "), message
          assert "\n" not in message
          if plain is not None and not _same(plain, saved):
            assert message.endswith("does not match its checksum"), message
          continue
      assert _same(jax.device_get(restored), saved)  # restored: then exactly what was saved


def test_valid_files_with_other_values_fail_their_checksums(tmp_path, caplog):
  """Step 4's state folder replaced by step 2's: orbax restores it without complaint, the
  checksums do not, and the restore falls back to step 2."""
  saved, like, source = _saved_run(tmp_path)
  shutil.rmtree(source / "4" / "state")
  shutil.copytree(source / "2" / "state", source / "4" / "state")
  plain = _orbax_restore(str(source), 4, like)
  assert plain is not None and int(plain.step) == 2 and not _same(plain, saved)
  with caplog.at_level(logging.WARNING), training.Checkpointer(source) as ckpt:
    with pytest.raises(training.CheckpointError,
                       match=r"^checkpoint step 4 in .* is damaged: \.step does not match its "
                             r"checksum$"):
      ckpt.restore(like, step=4)
    restored = ckpt.restore_latest_intact(like)
  assert restored.step == 2 and int(restored.state.step) == 2
  warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
  assert warnings == [f"Checkpoint step 4 in {source} is damaged: .step does not match its "
                      "checksum; trying an earlier one"]
