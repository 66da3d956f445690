"""The layout a user forks from: one self-contained folder per experiment."""

import ast
import os
import shutil
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
EXPERIMENTS = sorted(
    name for name in os.listdir(os.path.join(REPO, "experiments"))
    if os.path.isfile(os.path.join(REPO, "experiments", name, "__main__.py")))


def _imports(path):
  """Every absolute module name ``path`` imports, and whether it imports relatively."""
  names, relative = set(), False
  for node in ast.walk(ast.parse(open(path, encoding="utf-8").read(), path)):
    if isinstance(node, ast.Import):
      names.update(alias.name for alias in node.names)
    elif isinstance(node, ast.ImportFrom):
      if node.level:
        relative = True
      else:
        names.add(node.module)
        names.update(f"{node.module}.{alias.name}" for alias in node.names)
  return names, relative


def _python_files(root):
  for folder, _, files in os.walk(root):
    yield from (os.path.join(folder, f) for f in files if f.endswith(".py"))


def test_every_experiment_folder_has_the_same_parts():
  assert {"captioning", "cnn_self_attention", "seq2seq", "sequence_processing", "transformer_lm",
          "transformer_seq2seq"} <= set(EXPERIMENTS)
  for name in EXPERIMENTS:
    folder = os.path.join(REPO, "experiments", name)
    for part in ("__init__.py", "__main__.py", "config.py", "train.py", "README.md"):
      assert os.path.isfile(os.path.join(folder, part)), f"experiments/{name}/{part} is missing"
    with open(os.path.join(folder, "config.py"), encoding="utf-8") as f:
      docstring = ast.get_docstring(ast.parse(f.read()))
    assert f"python -m experiments.{name}" in docstring, f"{name}/config.py: no command"
    assert "Expected" in docstring, f"{name}/config.py: no expected result"


def test_no_experiment_imports_another_and_the_library_imports_none():
  for name in EXPERIMENTS:
    for path in _python_files(os.path.join(REPO, "experiments", name)):
      names, _ = _imports(path)
      foreign = sorted(n for n in names if n.startswith("experiments"))
      assert not foreign, f"{os.path.relpath(path, REPO)} imports {foreign}"
  for path in _python_files(os.path.join(REPO, "attention_jax")):
    names, _ = _imports(path)
    assert not any(n.startswith("experiments") for n in names), os.path.relpath(path, REPO)


@pytest.mark.slow  # a subprocess run; the import rules above keep folders independent
def test_a_copied_folder_runs_as_a_new_experiment(tmp_path):
  """``cp -r`` one folder under a new name and its documented command works unchanged."""
  package = tmp_path / "mine"
  package.mkdir()
  (package / "__init__.py").write_text("")
  shutil.copytree(os.path.join(REPO, "experiments", "cnn_self_attention"),
                  package / "my_idea", ignore=shutil.ignore_patterns("__pycache__"))
  env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
  subprocess.run(
      [sys.executable, "-m", "mine.my_idea", "--config=mine/my_idea/config.py:tiny",
       "--config.variants=('cnn',)", "--config.num_steps=8", "--config.eval.num_examples=50"],
      cwd=tmp_path, env=env, check=True, capture_output=True, timeout=600)
  assert (tmp_path / "runs" / "my_idea" / "eval.json").exists()


def test_extra_arguments_are_refused_in_one_line(tmp_path):
  result = subprocess.run([sys.executable, "-m", "experiments.seq2seq", "oops"], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
  assert result.returncode != 0
  assert "unexpected arguments: ['oops']" in result.stderr
  assert "Traceback" not in result.stderr
