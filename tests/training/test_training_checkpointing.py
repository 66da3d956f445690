"""Checkpointer: save interval, retention, exact restore into a fresh structure, crash leftovers."""

import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from attention_jax import training


def _state(seed=0, offset=0.0):
  params = {
      "dense": {"kernel": jnp.full((3, 4), 1.5 + offset, jnp.bfloat16),
                "bias": jnp.arange(4, dtype=jnp.float32) + offset},
  }
  return training.create_train_state(params, optax.adamw(1e-3), seed=seed)


def _advance(state, step):
  params = jax.tree.map(lambda x: x + step, state.params)
  return state.replace(step=jnp.asarray(step, jnp.int32), params=params)


@pytest.mark.parametrize("async_save", [True, False])
def test_saves_every_n_steps_and_keeps_the_latest(tmp_path, async_save):
  state = _state()
  with training.Checkpointer(tmp_path / "ckpt", save_every=3, keep=2,
                             async_save=async_save) as ckpt:
    saved = [s for s in range(1, 11) if ckpt.save(s, _advance(state, s))]
    assert saved == [3, 6, 9]
    assert ckpt.save(10, _advance(state, 10), force=True)
    assert not ckpt.save(10, _advance(state, 10), force=True)  # never overwritten
    assert ckpt.all_steps() == [9, 10]
    assert ckpt.latest_step() == 10
  assert sorted(os.listdir(tmp_path / "ckpt")) == ["10", "9"]


def test_restore_matches_saved_values_dtypes_and_structure(tmp_path):
  saved = _advance(_state(seed=5), 7)
  saved = saved.replace(
      opt_state=jax.tree.map(lambda x: x + jnp.ones((), x.dtype), saved.opt_state))
  with training.Checkpointer(tmp_path, save_every=1, config={"lr": 0.5, "name": "x"}) as ckpt:
    ckpt.save(7, saved)
  with training.Checkpointer(tmp_path, save_every=1) as ckpt:  # a fresh manager
    fresh = _state(seed=0)
    restored, step = ckpt.restore_latest_or(fresh)
    assert step == 7
    assert ckpt.restore_config() == {"lr": 0.5, "name": "x"}
  assert isinstance(restored, training.TrainState)
  assert restored.tx is fresh.tx and restored.apply_fn is fresh.apply_fn
  assert jax.tree.structure(restored) == jax.tree.structure(fresh)  # fresh tx, not saved.tx
  for got, want in zip(jax.tree.leaves(restored), jax.tree.leaves(saved)):
    assert got.dtype == want.dtype and got.shape == want.shape
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
  assert restored.params["dense"]["kernel"].dtype == jnp.bfloat16
  assert restored.step.dtype == jnp.int32 and int(restored.step) == 7
  np.testing.assert_array_equal(restored.rng, saved.rng)
  # The restored state trains like the original.
  grads = jax.tree.map(jnp.ones_like, restored.params)
  assert int(restored.apply_gradients(grads=grads).step) == 8


def test_empty_directory_restores_nothing(tmp_path):
  with training.Checkpointer(tmp_path / "none") as ckpt:
    state = _state()
    same, step = ckpt.restore_latest_or(state)
    assert same is state and step is None and ckpt.restore_config() is None
    with pytest.raises(FileNotFoundError, match="no complete checkpoint"):
      ckpt.restore(state)


def test_incomplete_tmp_checkpoints_are_ignored_and_cleaned(tmp_path):
  """What a SIGKILL during a save leaves behind never counts as a checkpoint."""
  directory = tmp_path / "ckpt"
  with training.Checkpointer(directory, save_every=1) as ckpt:
    ckpt.save(4, _advance(_state(), 4))
  # A save of step 8 killed half way: complete files under orbax's tmp name, and one killed
  # before it wrote anything.
  shutil.copytree(directory / "4", directory / "8.orbax-checkpoint-tmp-1234567")
  os.makedirs(directory / "12.orbax-checkpoint-tmp-99")
  with training.Checkpointer(directory, save_every=1) as ckpt:
    assert ckpt.latest_step() == 4 and ckpt.all_steps() == [4]
    restored = ckpt.restore(_state())
    assert int(restored.step) == 4
    # A new save of the same step succeeds.
    assert ckpt.save(8, _advance(_state(), 8))
  assert sorted(os.listdir(directory)) == ["4", "8"]
