"""Run files: the metrics log survives bad lines and resumes to exactly the uninterrupted log;
every file a run writes is readable by others (0644 under umask 022)."""

import json
import logging
import os
import stat

import matplotlib
import pytest

import _reliability_runs as runs
from attention_jax import data
from attention_jax import training

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # pylint: disable=wrong-import-position

from attention_jax import plotting  # pylint: disable=wrong-import-position


def test_bad_metrics_lines_are_dropped_with_a_warning_and_the_log_resumes_exactly(
    tmp_path, caplog):
  config = runs.make_config(num_steps=20, log_every=2, checkpoint_every=5, keep_checkpoints=2)
  runs.run(config, tmp_path / "reference")
  workdir = tmp_path / "run"
  runs.crash(config, workdir, at=13)  # checkpoint 10, log lines up to 12
  log = workdir / "metrics.jsonl"
  lines = log.read_bytes().splitlines(keepends=True)
  assert len(lines) == 6
  # Line 3 gets invalid UTF-8, line 4 a bad step; a crash tore a last line.
  lines[2] = lines[2].replace(b'"split"', b'"spl\xff\xfeit"')
  lines[3] = b'{"step": "six", "split": "train", "loss": 1.0}\n'
  log.write_bytes(b"".join(lines) + b'{"step": 13, "split": "tr')
  with caplog.at_level(logging.WARNING):
    runs.run(config, workdir)
  warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
  assert warnings == [f"{log} line 3 dropped: invalid UTF-8",
                      f"{log} line 4 dropped: step is 'six', not a step number",
                      f"{log} line 7 dropped: not valid JSON (torn by a crash?)"]
  # The dropped lines 3 and 4 (steps 6 and 8) are lost for good: the checkpoint cannot
  # rewrite lines before it. Everything else equals the uninterrupted log.
  want = [r for r in runs.exact_log(tmp_path / "reference") if r["step"] not in (6, 8)]
  assert runs.exact_log(workdir) == want
  assert training.read_jsonl(log)  # and the file now reads without a warning
  assert len([r for r in caplog.records if r.levelno == logging.WARNING]) == 3


@pytest.mark.parametrize("crash_at", [13, 16])
def test_the_first_log_line_after_a_resume_covers_the_same_steps(tmp_path, crash_at):
  """log_every is not a multiple of checkpoint_every: the line at 20 covers steps 10..19 in
  both runs (sums from before the checkpoint at 12 or 16 come back from it)."""
  config = runs.make_config(num_steps=20, log_every=10, checkpoint_every=4, keep_checkpoints=2)
  runs.run(config, tmp_path / "reference")
  workdir = tmp_path / "run"
  runs.crash(config, workdir, at=crash_at)
  runs.run(config, workdir)
  log = runs.exact_log(workdir)
  assert [r["step"] for r in log] == [10, 20]
  assert log[1]["num_steps"] == 10 and log[1]["token_count"] == 10 * config.batch_size
  assert log == runs.exact_log(tmp_path / "reference")


def _modes(directory):
  return {os.path.relpath(os.path.join(root, name), directory):
          stat.S_IMODE(os.stat(os.path.join(root, name)).st_mode)
          for root, _, names in os.walk(directory) for name in names}


def test_every_file_a_run_writes_is_0644_under_umask_022(tmp_path, umask_022):
  config = runs.make_config(num_steps=4, log_every=2, checkpoint_every=2, eval_every=2)
  runs.crash(config, tmp_path, at=3)
  runs.run(config, tmp_path, with_eval=True)  # resumed: metrics.jsonl rewritten
  training.write_eval_json(tmp_path, {"accuracy": 1.0})
  data.CharTokenizer(list("abc")).save(tmp_path / "tokenizer.json")
  figure, axes = plt.subplots()
  axes.plot([0, 1])
  plotting.save_figure(figure, str(tmp_path / "curve.png"))
  modes = _modes(tmp_path)
  for name in ("config.json", "metrics.jsonl", "final_eval.json", "eval.json", "tokenizer.json",
               "curve.png"):
    assert modes.pop(name) == 0o644, name
  assert modes and all(mode == 0o644 for mode in modes.values()), modes  # checkpoints, events
  assert json.loads((tmp_path / "final_eval.json").read_text())["step"] == 4


def test_a_damaged_tokenizer_file_is_named_with_the_fix(tmp_path):
  from attention_jax.errors import DamagedFileError, UserError  # pylint: disable=g-import-not-at-top
  path = tmp_path / "tokenizer.json"
  data.CharTokenizer("abc").save(str(path))
  assert data.CharTokenizer.load(str(path)) == data.CharTokenizer("abc")
  path.write_bytes(path.read_bytes()[:-7])  # torn, as an interrupted non-atomic write left it
  with pytest.raises(DamagedFileError, match=r"tokenizer.json' is damaged \(JSONDecodeError: .*"
                                             r"restore it, or start in a new workdir"):
    data.CharTokenizer.load(str(path))
  assert issubclass(DamagedFileError, UserError)  # one line from an experiment's __main__
