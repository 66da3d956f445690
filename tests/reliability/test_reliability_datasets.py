"""Prepared datasets: a damaged file is named with its rebuild command; the stale ``incomplete.*``
folders of killed preparations are removed, a live preparation's kept."""

import os
import shutil
import time

import pytest

from attention_jax.data import dates
from attention_jax.data import shapes_captions
from attention_jax.data import stamped

LOADERS = {"dates_translation": dates.load_dates,
           "shapes_captions": shapes_captions.load_shapes_captions}


@pytest.fixture(scope="module")
def prepared():
  """``{dataset name: its prepared small config folder}`` (prepared on first use, seconds)."""
  folders = {}
  for name, load in LOADERS.items():
    load("train", config="small")
    builder = (dates.dates_builder(config="small") if name == "dates_translation"
               else shapes_captions.shapes_captions_builder(config="small"))
    folders[name] = os.fspath(builder.data_path)
  return folders


def _copy(prepared_dir, data_dir, name):
  """A copy of a prepared config under ``data_dir``; returns its version folder."""
  version = os.path.basename(prepared_dir)
  destination = os.path.join(data_dir, name, "small", version)
  shutil.copytree(prepared_dir, destination)
  return destination


@pytest.mark.parametrize("name", sorted(LOADERS))
def test_a_truncated_file_is_named_with_the_rebuild_command(prepared, tmp_path, name):
  folder = _copy(prepared[name], str(tmp_path), name)
  path = os.path.join(folder, f"{name}-train.array_record-00000-of-00001")
  with open(path, "r+b") as f:
    f.truncate(os.path.getsize(path) // 2)

  with pytest.raises(stamped.DatasetFileError) as err:
    LOADERS[name](None, data_dir=str(tmp_path), config="small")
  message = str(err.value)
  assert "\n" not in message
  assert message.startswith(f"{path} is damaged (")
  assert message.endswith(f"rebuild it with `python -m attention_jax.data.rebuild "
                          f"{name}/small/{os.path.basename(folder)} --data_dir={tmp_path}`")
  # The other splits, intact, still load.
  assert len(LOADERS[name]("test", data_dir=str(tmp_path), config="small")) > 0


def _incomplete(config_dir, suffix, age_seconds, version="1.2.0"):
  path = os.path.join(config_dir, f"incomplete.{suffix}_{version}")
  os.makedirs(os.path.join(path, "sub"))
  with open(os.path.join(path, "sub", "part.tmp"), "w") as f:
    f.write("x")
  then = time.time() - age_seconds
  for p in (os.path.join(path, "sub", "part.tmp"), os.path.join(path, "sub"), path):
    os.utime(p, (then, then))
  return path


def test_only_stale_incomplete_folders_of_this_version_are_removed(tmp_path):
  config_dir = str(tmp_path)
  stale = _incomplete(config_dir, "AAAAAA", 2 * stamped.STALE_SECONDS)
  live = _incomplete(config_dir, "BBBBBB", 10)
  other_version = _incomplete(config_dir, "CCCCCC", 2 * stamped.STALE_SECONDS, version="1.1.0")
  # An old folder in which a file was just written is a live preparation.
  busy = _incomplete(config_dir, "DDDDDD", 2 * stamped.STALE_SECONDS)
  with open(os.path.join(busy, "sub", "new.tmp"), "w") as f:
    f.write("y")
  unrelated = os.path.join(config_dir, "notes")
  os.makedirs(unrelated)
  os.utime(unrelated, (0, 0))

  assert stamped.remove_stale_incomplete(config_dir, "1.2.0") == [stale]
  assert sorted(os.listdir(config_dir)) == sorted(
      os.path.basename(p) for p in (live, other_version, busy, unrelated))


def test_loading_removes_a_stale_incomplete_folder_of_its_config(prepared, tmp_path):
  folder = _copy(prepared["dates_translation"], str(tmp_path), "dates_translation")
  config_dir = os.path.dirname(folder)
  stale = _incomplete(config_dir, "EEEEEE", 2 * stamped.STALE_SECONDS,
                      version=os.path.basename(folder))
  live = _incomplete(config_dir, "FFFFFF", 0, version=os.path.basename(folder))
  assert len(dates.load_dates("validation", data_dir=str(tmp_path), config="small")) == 500
  assert not os.path.exists(stale)
  assert os.path.isdir(live)
