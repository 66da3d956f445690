"""experiments/reproduce.py: the comparison, its table against the experiments' READMEs, a tiny
run end to end."""

import json
import os
import re

import pytest

from experiments import reproduce

RUNS = {run.name: run for run in reproduce.RUNS}


def _section(experiment: str) -> str:
  """The README of ``experiments/<experiment>``, where its results tables are."""
  with open(reproduce.readme_of(experiment), encoding="utf-8") as f:
    return f.read()


def _tables(section: str) -> list[list[list[str]]]:
  """Every Markdown table of ``section``: rows of stripped cells, the header first."""
  tables, current = [], []
  for line in section.splitlines() + [""]:
    if line.startswith("|"):
      cells = [c.strip() for c in line.strip().strip("|").split("|")]
      if not all(re.fullmatch(r":?-+:?", c) for c in cells):
        current.append(cells)
    elif current:
      tables.append(current)
      current = []
  return tables


@pytest.mark.parametrize("kind,readme,measured,status", [
    ("accuracy", 96.70, 97.70, "ok"),  # exactly at the tolerance
    ("accuracy", 96.70, 95.71, "ok"),
    ("accuracy", 96.70, 97.71, "MOVED"),
    ("accuracy", 96.70, 95.60, "MOVED"),
    ("per_char", 99.48, 99.78, "ok"),
    ("per_char", 99.48, 99.80, "MOVED"),
    ("loss", 1.233, 1.26, "ok"),
    ("loss", 1.233, 1.27, "MOVED"),
    ("bpc", 1.779, 1.74, "ok"),
    ("bpc", 1.779, 1.72, "MOVED"),
    ("bleu", 99.95, 99.5, "ok"),
    ("bleu", 99.95, 99.4, "MOVED"),
    ("attention_mass", 0.507, 0.48, "ok"),
    ("attention_mass", 0.507, 0.47, "MOVED"),
    ("gamma", 0.22, 0.2137, "ok"),
    ("gamma", 0.22, 0.28, "MOVED"),
    ("parameters", 395857, 395857, "ok"),
    ("parameters", 395857, 395858, "MOVED"),
    ("parameters", 395857, 395856, "MOVED"),
    ("distance", 12, 12, "ok"),
    ("distance", 12, 13, "MOVED"),
    # Ratios: 10% of the README's value, so the allowed difference scales with it.
    ("ratio", 7.1, 7.8, "ok"),
    ("ratio", 7.1, 6.4, "ok"),
    ("ratio", 7.1, 7.9, "MOVED"),
    ("ratio", 7.1, 6.3, "MOVED"),
    ("ratio", 2.0, 2.3, "MOVED"),
    ("ratio", 2.0, 1.85, "ok"),
])
def test_compare_applies_the_tolerance_of_each_kind(kind, readme, measured, status):
  difference, got = reproduce.compare(kind, readme, measured)
  assert got == status
  assert difference == pytest.approx(measured - readme)


def test_compare_without_a_measurement_is_missing():
  assert reproduce.compare("accuracy", 96.7, None) == (None, "missing")


def test_tolerances_are_the_documented_ones():
  t = reproduce.TOLERANCES
  assert t["parameters"].amount == 0 and t["distance"].amount == 0
  assert (t["accuracy"].amount, t["per_char"].amount, t["loss"].amount, t["bpc"].amount,
          t["bleu"].amount, t["attention_mass"].amount, t["gamma"].amount) == (
              1.0, 0.3, 0.03, 0.05, 0.5, 0.03, 0.05)
  assert t["ratio"].relative and t["ratio"].amount == 0.10
  assert not any(tol.relative for kind, tol in t.items() if kind != "ratio")
  assert t["parameters"].describe() == "exact" and t["ratio"].describe() == "±10% relative"


@pytest.mark.parametrize("text,value", [("395,857", 395857), ("**99.60%**", 99.6),
                                        ("7.1x", 7.1), ("2.441", 2.441), ("47", 47)])
def test_readme_values_parse(text, value):
  assert reproduce.Figure("r", "m", "l", text, "accuracy", "k").value == value


def test_figure_rows_read_eval_json_and_scale_fractions():
  run = RUNS["cnn_self_attention"]
  results = {"variants": {"cnn": {"parameters": 14114, "test_accuracy": 0.829},
                          "cnn_attention": {"parameters": 16491, "test_accuracy": 0.886,
                                            "gamma": 0.2137}}}
  rows = {(r["model"], r["label"]): r for r in reproduce.figure_rows(run, results, True)}
  assert rows["CNN", "test accuracy (2,000 images)"]["measured"] == pytest.approx(82.9)
  assert rows["CNN", "test accuracy (2,000 images)"]["status"] == "ok"
  assert rows["CNN + `SelfAttention2D`", "test accuracy (2,000 images)"]["status"] == "MOVED"
  assert rows["CNN + `SelfAttention2D`", "learned gamma"]["status"] == "ok"
  assert rows["CNN", "parameters"]["status"] == "ok"
  del results["variants"]["cnn_attention"]["gamma"]
  rows = reproduce.figure_rows(run, results, False)
  assert {r["status"] for r in rows} == {"n/a (preset)"}
  assert [r["measured"] for r in rows if r["label"] == "learned gamma"] == [None]


def test_every_figure_is_the_readme_value_in_its_table_cell():
  for figure in reproduce.FIGURES:
    assert figure.kind in reproduce.TOLERANCES, figure
    section = _section(RUNS[figure.run].experiment)
    value = re.compile(rf"(?<![\d.,]){re.escape(figure.readme)}(?![\d])")
    if figure.column is None:  # a figure of the prose
      assert value.search(section), figure
      continue
    column = figure.column or figure.label
    cells = [row[table[0].index(column)] for table in _tables(section) if column in table[0]
             for row in table[1:] if row[0] == figure.model]
    assert len(cells) == 1, (figure, cells)
    assert value.search(cells[0]), (figure, cells[0])


def test_table_covers_every_run_once_per_figure():
  keys = [(f.run, f.model, f.label) for f in reproduce.FIGURES]
  assert len(keys) == len(set(keys))
  assert {f.run for f in reproduce.FIGURES} == set(RUNS)
  counts = {name: sum(f.run == name for f in reproduce.FIGURES) for name in RUNS}
  assert counts == {"seq2seq": 10, "transformer_lm": 5, "transformer_seq2seq": 8,
                    "transformer_seq2seq_sinusoidal": 4, "sequence_processing": 9,
                    "cnn_self_attention": 5, "captioning": 17}


def test_commands_are_the_documented_ones():
  for run in reproduce.RUNS:
    cmd = reproduce.command(run, "runs/reproduce")
    assert cmd[1:4] == ["-m", f"experiments.{run.experiment}",
                        f"--config=experiments/{run.experiment}/config.py"]
    assert f"--config=experiments/{run.experiment}/config.py --workdir" in _section(
        run.experiment)
    assert cmd[4] == f"--workdir=runs/reproduce/{run.name}"
    for flag in cmd[5:]:
      assert flag in _section(run.experiment), flag
  sinusoidal = reproduce.command(RUNS["transformer_seq2seq_sinusoidal"], "w", preset="tiny")
  assert sinusoidal[3:] == ["--config=experiments/transformer_seq2seq/config.py:tiny",
                            "--workdir=w/transformer_seq2seq_sinusoidal",
                            "--config.model.positions=sinusoidal", "--config.compare_rnn=False"]


def test_no_run_reports_missing_runs_and_refuses_another_config(tmp_path):
  workdir, report = tmp_path / "runs", tmp_path / "report.md"
  result = reproduce.main([f"--workdir={workdir}", f"--report={report}", "--no-run",
                           "--only", "seq2seq"])
  assert result["summary"] == {"figures": 10, "missing": 10}
  assert "Not run: no eval.json" in report.read_text()
  (workdir / "seq2seq").mkdir(parents=True)
  (workdir / "seq2seq" / "eval.json").write_text(json.dumps({"config": {"preset": "tiny"}}))
  with pytest.raises(SystemExit, match=r"config.preset='tiny', but run seq2seq needs 'default'"):
    reproduce.main([f"--workdir={workdir}", f"--report={report}", "--no-run",
                    "--only", "seq2seq"])


def test_a_failing_run_names_itself_and_its_log(tmp_path):
  workdir = tmp_path / "runs"
  with pytest.raises(SystemExit, match=r"run cnn_self_attention failed \(exit \d+\).*"
                                       + re.escape(str(workdir / "cnn_self_attention.log"))):
    reproduce.main([f"--workdir={workdir}", f"--report={tmp_path / 'r.md'}",
                    "--preset", "no_such_preset", "--only", "cnn_self_attention"])
  assert "no_such_preset" in (workdir / "cnn_self_attention.log").read_text()


@pytest.mark.slow  # make test-all; runs two experiments, ~40 s
def test_tiny_preset_end_to_end(tmp_path):
  workdir, report = tmp_path / "runs", tmp_path / "docs" / "reproduce.md"
  args = [f"--workdir={workdir}", f"--report={report}", "--preset", "tiny",
          "--only", "cnn_self_attention"]
  result = reproduce.main(args)
  text = report.read_text()
  figures = [f for f in reproduce.FIGURES if f.run == "cnn_self_attention"]
  assert "not meaningful" in text
  assert "## Environment" in text and "| jax |" in text and "| Python | " in text
  assert "| requirements/lock.txt sha256 |" in text and "| git commit |" in text
  rows = [line for line in text.splitlines() if line.endswith("| n/a (preset) |")]
  assert len(rows) == len(figures)
  for figure in figures:
    assert any(line.startswith(f"| {figure.model} | {figure.label} | {figure.readme} | ")
               for line in rows), figure
  assert result["runs"][0]["executed"]
  assert (workdir / "cnn_self_attention" / "eval.json").exists()
  assert os.path.getsize(workdir / "cnn_self_attention.log") > 0
  twin = json.loads((tmp_path / "docs" / "reproduce.json").read_text())
  assert twin["meaningful"] is False and twin["environment"]["packages"]["jax"]
  assert [r["label"] for r in twin["runs"][0]["figures"]] == [f.label for f in figures]
  assert all(r["measured"] is not None for r in twin["runs"][0]["figures"])
  # A second call reuses the run's eval.json, with the wall time recorded by the first.
  again = reproduce.main(args)
  assert not again["runs"][0]["executed"]
  assert again["runs"][0]["wall_seconds"] == result["runs"][0]["wall_seconds"]
  assert "eval.json reused" in report.read_text()


def test_captioning_test_split_is_the_beam_row():
  """eval.json's ``test`` is the README's beam-3 row only while the default decodes with beam 3
  (``test_greedy`` is then the greedy row)."""
  from experiments.captioning import config as captioning  # pylint: disable=g-import-not-at-top
  assert captioning.get_config().eval.beam_size == 3
  assert {f.key.split(".")[0] for f in reproduce.FIGURES
          if f.run == "captioning" and f.model == "beam search, beam 3"} == {"test"}
