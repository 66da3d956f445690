"""Files a run writes: atomic, readable by others (the umask's mode, not mkstemp's 0600), JSON."""

import json
import math
import os
import stat

import pytest

from attention_jax import training


def _mode(path):
  return stat.S_IMODE(os.stat(path).st_mode)


def test_atomic_write_text_creates_directories_and_leaves_no_temp_file(tmp_path):
  path = tmp_path / "a" / "b" / "out.txt"
  training.atomic_write_text(path, "first\n")
  assert path.read_text() == "first\n"
  training.atomic_write_text(str(path), "second\n")  # replaces it
  assert path.read_text() == "second\n"
  assert os.listdir(path.parent) == ["out.txt"]


@pytest.mark.parametrize("umask", [0o022, 0o027, 0o077])
def test_written_files_get_the_mode_open_would_give(tmp_path, umask):
  old = os.umask(umask)
  try:
    training.atomic_write_text(tmp_path / "new.txt", "x")
    existing = tmp_path / "existing.txt"
    existing.write_text("old")
    os.chmod(existing, 0o600)  # a file that was written before the fix
    training.write_json(existing, {"a": 1})
    with open(tmp_path / "plain.txt", "w") as f:
      f.write("x")
  finally:
    os.umask(old)
  want = 0o666 & ~umask
  assert _mode(tmp_path / "plain.txt") == want
  assert _mode(tmp_path / "new.txt") == want
  assert _mode(existing) == want


def test_results_are_readable_by_others_under_umask_022(tmp_path, umask_022):
  training.write_eval_json(tmp_path, {"accuracy": 0.5})
  training.save_config_json(training.default_training_config(), tmp_path / "config.json")
  assert _mode(tmp_path / "eval.json") == 0o644
  assert _mode(tmp_path / "config.json") == 0o644


def test_a_failed_write_keeps_the_old_file_and_no_temp_file(tmp_path):
  path = tmp_path / "out.json"
  training.write_json(path, {"old": True})

  class Unprintable:

    def __str__(self):
      raise RuntimeError("cannot serialise")

  with pytest.raises(RuntimeError, match="cannot serialise"):
    training.write_json(path, {"bad": Unprintable()})
  assert json.loads(path.read_text()) == {"old": True}

  (tmp_path / "taken").mkdir()  # the rename onto a directory fails after the write
  with pytest.raises(IsADirectoryError):
    training.atomic_write_text(tmp_path / "taken", "text")
  assert os.listdir(tmp_path / "taken") == []
  assert sorted(os.listdir(tmp_path)) == ["out.json", "taken"]


def test_write_json_is_indented_with_a_trailing_newline_and_strs_the_rest(tmp_path):
  path = tmp_path / "x.json"
  training.write_json(path, {"b": [1, 2], "path": tmp_path, "nan": math.nan})
  text = path.read_text()
  assert text == json.dumps({"b": [1, 2], "path": str(tmp_path), "nan": math.nan},
                            indent=2) + "\n"
  assert text.startswith('{\n  "b": [\n')


def test_write_eval_json(tmp_path):
  workdir = tmp_path / "run"
  results = {"accuracy": 0.75, "by_length": {"3": 1.0}, "examples": ["a", "b"],
             "workdir": workdir}
  path = training.write_eval_json(workdir, results)
  assert path == os.path.join(str(workdir), "eval.json")
  assert json.loads((workdir / "eval.json").read_text()) == {
      "accuracy": 0.75, "by_length": {"3": 1.0}, "examples": ["a", "b"],
      "workdir": str(workdir)}
  assert (workdir / "eval.json").read_text().endswith("}\n")
