r"""Re-runs every experiment whose results tables are in its README and puts each figure beside it.

  python -m experiments.reproduce --workdir=runs/reproduce --report=docs/reproduce.md

(``make reproduce``; about 1-2 hours on 2 cores.) For every run of ``RUNS`` (the README's
documented command: its config preset and overrides) this reuses ``<workdir>/<run>/eval.json``
when it exists, or runs

  python -m experiments.<experiment> --config=experiments/<experiment>/config.py[:preset] \
      --workdir=<workdir>/<run> [--config.x=y ...]

with the same Python, its output in ``<workdir>/<run>.log``, and stops with an error naming the run
and the log if it fails. ``--rerun`` runs the command even when ``eval.json`` exists: the
experiments resume from their checkpoints, so that re-evaluates a finished run (delete the run's
folder to train it again). Then it writes

  <report>                  Markdown: the environment, then every figure of ``FIGURES`` (the
                            README's value, the measured one, their difference, the tolerance of
                            its kind from ``TOLERANCES``, "ok" or "MOVED"), each run's wall time
                            and the 1-minute load average before it
  <report without ext>.json the same numbers as JSON
  <workdir>/<run>.reproduce.json  for each run executed here: command, wall seconds, load average

Wall-clock figures (training seconds, tokens/s) are not compared: they depend on the machine and
its load. ``--only RUN ...`` takes a subset, ``--preset tiny`` runs every experiment at that
preset instead (a smoke test: the rows say "n/a (preset)"), ``--no-run`` only reports what the
workdir already holds.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import glob
import hashlib
import importlib.metadata
import json
import os
import platform
import re
import subprocess
import sys
import time
from typing import Any


REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_files():
  """attention_jax's atomic file writers, imported when first needed (they bring in JAX)."""
  from attention_jax.training import run_files as module  # pylint: disable=g-import-not-at-top
  return module


def readme_of(experiment: str) -> str:
  """The README that holds an experiment's results tables."""
  return os.path.join(REPO_ROOT, "experiments", experiment, "README.md")


@dataclasses.dataclass(frozen=True)
class Tolerance:
  amount: float
  what: str  # the figures of this kind
  relative: bool = False  # amount is a fraction of the README value
  unit: str = ""

  def describe(self) -> str:
    if self.relative:
      return f"±{100 * self.amount:g}% relative"
    return "exact" if self.amount == 0 else f"±{self.amount}{self.unit}"


# How far a measured figure may be from the README's, by kind of figure. Seeds are fixed, but
# XLA's CPU kernels, library versions and thread counts still move the last digits of a run.
TOLERANCES = {
    "parameters": Tolerance(0, "parameter counts (a function of the config)"),
    "accuracy": Tolerance(1.0, "accuracy and exact-match percentages", unit=" points"),
    "per_char": Tolerance(0.3, "per-character accuracy, %", unit=" points"),
    "loss": Tolerance(0.03, "cross-entropy losses, nats per character"),
    "bpc": Tolerance(0.05, "bits per character"),
    "bleu": Tolerance(0.5, "BLEU-1..4, 0-100"),
    "attention_mass": Tolerance(0.03, "attention mass in the named box (or a uniform map's)"),
    "ratio": Tolerance(0.10, "attention in box / uniform map", relative=True),
    "distance": Tolerance(0, "longest distance learned"),
    "gamma": Tolerance(0.05, "SelfAttention2D's learned gamma"),
}


@dataclasses.dataclass(frozen=True)
class Run:
  """One documented command: ``python -m experiments.<experiment>`` into ``<workdir>/<name>``."""
  name: str
  experiment: str
  overrides: tuple[tuple[str, Any], ...] = ()  # --config.<key>=<value>
  preset: str = "default"


@dataclasses.dataclass(frozen=True)
class Figure:
  """One README figure and where its measured value is in the run's eval.json."""
  run: str  # Run.name
  model: str  # the README table's row, as written there
  label: str  # what is measured, as the README writes it
  readme: str  # the README's value as written ("96.70%", "395,857", "7.1x")
  kind: str  # a key of TOLERANCES
  key: str  # dotted path into eval.json
  scale: float = 1.0  # measured = scale * eval.json value (100 for fractions shown as %)
  column: str | None = ""  # the README table's column ("": the label; None: in the prose)

  @property
  def value(self) -> float:
    return float(re.sub(r"[,%x*]", "", self.readme))


RUNS = (
    Run("seq2seq", "seq2seq"),
    Run("transformer_lm", "transformer_lm"),
    Run("transformer_seq2seq", "transformer_seq2seq"),
    Run("transformer_seq2seq_sinusoidal", "transformer_seq2seq",
        (("model.positions", "sinusoidal"), ("compare_rnn", False))),
    Run("sequence_processing", "sequence_processing"),
    Run("cnn_self_attention", "cnn_self_attention"),
    # The README's single-seed table is the default before the phrase-continuity term (its
    # five-seed table, with the term, is mean +- std over seeds: not one run's figures).
    Run("captioning", "captioning", (("model.continuity_weight", 0.0),)),
)

# (label, kind, key under the row's prefix, scale) of each README table's columns.
_SEQ2SEQ = (("parameters", "parameters", "parameters", 1),
            ("test exact match", "accuracy", "test.exact_match", 100),
            ("test per-char", "per_char", "test.char_accuracy", 100),
            ("test_long exact match", "accuracy", "test_long.exact_match", 100),
            ("test_long per-char", "per_char", "test_long.char_accuracy", 100))
_TRANSFORMER_SEQ2SEQ = (("parameters", "parameters", "parameters", 1),
                        ("test exact", "accuracy", "test.exact_match", 100),
                        ("test per-char", "per_char", "test.char_accuracy", 100),
                        ("test_long exact", "accuracy", "test_long.exact_match", 100))
_SEQUENCES = (("parameters", "parameters", "parameters", 1),
              ("test accuracy (d = 1..47)", "accuracy", "test_accuracy", 100),
              ("longest d learned (>= 90% at d and below)", "distance",
               "longest_distance_learned", 1))
_CNN = (("parameters", "parameters", "parameters", 1),
        ("test accuracy (2,000 images)", "accuracy", "test_accuracy", 100))
_CAPTIONS = (*((f"BLEU-{n}", "bleu", f"bleu_{n}", 1) for n in range(1, 5)),
             ("exact caption", "accuracy", "exact_caption_accuracy", 100),
             ("attention in box", "attention_mass", "localisation.mean_mass_in_box", 1),
             ("uniform map", "attention_mass", "localisation.uniform_baseline", 1),
             ("ratio", "ratio", "localisation.ratio_to_uniform", 1))


def _row(run: str, model: str, prefix: str, columns, values) -> tuple[Figure, ...]:
  """The figures of one README table row: ``values`` as written, in ``columns``' order."""
  assert len(columns) == len(values), (run, model)
  return tuple(Figure(run, model, label, value, kind, f"{prefix}{key}", scale)
               for (label, kind, key, scale), value in zip(columns, values))


FIGURES = (
    *_row("seq2seq", "fixed context (`none`)", "models.none.", _SEQ2SEQ,
          ("395,857", "96.70%", "99.48%", "86.85%", "98.52%")),
    *_row("seq2seq", "attention (`additive`)", "models.additive.", _SEQ2SEQ,
          ("445,265", "99.60%", "99.95%", "97.85%", "99.66%")),
    Figure("transformer_lm", "Transformer LM", "parameters", "814,336", "parameters",
           "parameters", column=None),
    *_row("transformer_lm", "bigram (add-one)", "",
          (("validation loss", "loss", "bigram_loss", 1),
           ("bits per character", "bpc", "bigram_bpc", 1)), ("2.441", "3.522")),
    *_row("transformer_lm", "Transformer LM", "",
          (("validation loss", "loss", "validation_loss", 1),
           ("bits per character", "bpc", "validation_bpc", 1)), ("1.233", "1.779")),
    *_row("transformer_seq2seq", "Transformer, rotary positions (default)",
          "models.transformer.", _TRANSFORMER_SEQ2SEQ, ("728,960", "99.65%", "99.94%", "97.85%")),
    *_row("transformer_seq2seq", "RNN with additive attention", "models.rnn_additive.",
          _TRANSFORMER_SEQ2SEQ, ("445,265", "99.60%", "99.95%", "97.85%")),
    *_row("transformer_seq2seq_sinusoidal", "Transformer, sinusoidal positions",
          "models.transformer.", _TRANSFORMER_SEQ2SEQ, ("728,960", "96.85%", "99.51%", "43.55%")),
    *_row("sequence_processing", "RNN (GRU)", "models.rnn.", _SEQUENCES,
          ("63,528", "100.0%", "47")),
    *_row("sequence_processing", "1D CNN (receptive field 13)", "models.cnn.", _SEQUENCES,
          ("68,040", "34.8%", "12")),
    *_row("sequence_processing", "self-attention", "models.attention.", _SEQUENCES,
          ("68,680", "100.0%", "47")),
    *_row("cnn_self_attention", "CNN", "variants.cnn.", _CNN, ("14,114", "82.9%")),
    *_row("cnn_self_attention", "CNN + `SelfAttention2D`", "variants.cnn_attention.", _CNN,
          ("16,491", "94.55%")),
    Figure("cnn_self_attention", "CNN + `SelfAttention2D`", "learned gamma", "0.22", "gamma",
           "variants.cnn_attention.gamma", column="test accuracy (2,000 images)"),
    Figure("captioning", "Captioner", "parameters", "289,713", "parameters", "parameters",
           column=None),
    *_row("captioning", "greedy", "test_greedy.", _CAPTIONS,
          ("99.99", "99.98", "99.97", "99.95", "99.8%", "0.473", "0.071", "7.1x")),
    *_row("captioning", "beam search, beam 3", "test.", _CAPTIONS,
          ("99.99", "99.98", "99.97", "99.95", "99.8%", "0.473", "0.071", "7.1x")),
)


def compare(kind: str, readme: float, measured: float | None) -> tuple[float | None, str]:
  """``(measured - readme, "ok" | "MOVED")`` under ``TOLERANCES[kind]``; ``(None, "missing")``
  when nothing was measured."""
  if measured is None:
    return None, "missing"
  tolerance = TOLERANCES[kind]
  difference = measured - readme
  allowed = tolerance.amount * abs(readme) if tolerance.relative else tolerance.amount
  return difference, "ok" if abs(difference) <= allowed + 1e-9 else "MOVED"


def read_key(results: dict[str, Any], key: str) -> Any:
  """``results["a"]["b"]`` for ``key="a.b"``; None when a part is missing."""
  for part in key.split("."):
    if not isinstance(results, dict) or part not in results:
      return None
    results = results[part]
  return results


def command(run: Run, workdir: str, preset: str | None = None) -> list[str]:
  """The documented command of ``run`` (at ``preset`` instead of its own, when given)."""
  preset = preset or run.preset
  config = f"experiments/{run.experiment}/config.py" + ("" if preset == "default" else
                                                        f":{preset}")
  return [sys.executable, "-m", f"experiments.{run.experiment}", f"--config={config}",
          f"--workdir={_shown(os.path.join(workdir, run.name))}",
          *(f"--config.{key}={value}" for key, value in run.overrides)]


def _shown(path: str) -> str:
  """A path relative to the repository when inside it (the commands run from there)."""
  path = os.path.abspath(path)
  relative = os.path.relpath(path, REPO_ROOT)
  return path if relative.startswith("..") else relative


def _check_config(run: Run, results: dict[str, Any], preset: str, path: str) -> None:
  """Refuses an eval.json of another config than the run's (a workdir shared by mistake)."""
  config = results.get("config", {})
  for key, want in (("preset", preset), *run.overrides):
    have = read_key(config, key)
    if str(have) != str(want):
      raise SystemExit(f"{path} has config.{key}={have!r}, but run {run.name} needs {want!r}: "
                       "use another --workdir, or delete that run's folder")


def execute(run: Run, workdir: str, preset: str, rerun: bool, no_run: bool) -> dict[str, Any]:
  """Runs (or reuses) ``run``; returns its record: command, eval.json, times, load average."""
  run_dir = os.path.join(workdir, run.name)
  eval_path, log_path = os.path.join(run_dir, "eval.json"), os.path.join(workdir,
                                                                         f"{run.name}.log")
  meta_path = os.path.join(workdir, f"{run.name}.reproduce.json")
  cmd = command(run, workdir, preset)
  record = {"run": run.name, "command": " ".join(["python", *cmd[1:]]), "eval_json": eval_path,
            "log": log_path, "executed": False}
  if no_run or (os.path.exists(eval_path) and not rerun):
    if os.path.exists(meta_path):  # written when this script ran it before
      with open(meta_path) as f:
        record.update(json.load(f))
  else:
    os.makedirs(workdir, exist_ok=True)
    load_before = round(os.getloadavg()[0], 2)
    print(f"[{run.name}] {record['command']}  (log: {log_path}; load {load_before})", flush=True)
    start = time.perf_counter()
    with open(log_path, "w") as log:
      returncode = subprocess.run(cmd, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT,
                                  check=False).returncode
    seconds = round(time.perf_counter() - start, 1)
    if returncode != 0:
      with open(log_path, errors="replace") as log:
        tail = log.read()[-3000:]
      raise SystemExit(f"{tail}\nrun {run.name} failed (exit {returncode}) after {seconds} s; "
                       f"its output is in {log_path}")
    record.update(executed=True, wall_seconds=seconds, load_before=load_before,
                  finished=datetime.datetime.now().astimezone().isoformat(timespec="seconds"))
    run_files().write_json(
        meta_path, {k: record[k] for k in ("command", "wall_seconds", "load_before", "finished")})
    print(f"[{run.name}] done in {seconds} s", flush=True)
  results = None
  if os.path.exists(eval_path):
    with open(eval_path) as f:
      results = json.load(f)
    _check_config(run, results, preset, eval_path)
    record["experiment_wall_seconds"] = results.get("wall_seconds_this_run")
  record["results"] = results
  return record


def figure_rows(run: Run, results: dict[str, Any] | None, meaningful: bool) -> list[dict]:
  rows = []
  for figure in (f for f in FIGURES if f.run == run.name):
    raw = None if results is None else read_key(results, figure.key)
    measured = None if raw is None else figure.scale * float(raw)
    difference, status = compare(figure.kind, figure.value, measured)
    if difference is not None:
      measured, difference = round(measured, 6), round(difference, 6)
    if not meaningful:
      status = "n/a (preset)"
    rows.append({"model": figure.model, "label": figure.label, "kind": figure.kind,
                 "readme": figure.readme, "readme_value": figure.value, "measured": measured,
                 "difference": difference, "tolerance": TOLERANCES[figure.kind].describe(),
                 "status": status})
  return rows


def _version(distribution: str) -> str:
  try:
    return importlib.metadata.version(distribution)
  except importlib.metadata.PackageNotFoundError:
    return "not installed"


def _git(*args: str) -> str:
  try:
    return subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True,
                          check=True).stdout.strip()
  except (OSError, subprocess.CalledProcessError):
    return ""


def _cpu_model() -> str:
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or platform.machine()


def _dataset_stamps() -> dict[str, Any]:
  """The stamp (versions it was generated with, fingerprint) of every prepared embedded dataset
  in the TFDS data dir."""
  data_dir = os.environ.get("TFDS_DATA_DIR") or os.path.expanduser("~/tensorflow_datasets")
  stamps = {}
  for name in ("dates_translation", "shapes_captions"):
    for path in sorted(glob.glob(os.path.join(data_dir, name, "*", "*", "metadata.json"))):
      try:
        with open(path) as f:
          metadata = json.load(f)
      except (OSError, ValueError):
        continue
      config, version = path.split(os.sep)[-3:-1]
      stamps[f"{name}/{config}/{version}"] = {
          "generated_with": metadata.get("generated_with"),
          "fingerprint": (metadata.get("fingerprint") or {}).get("all")}
  return {"data_dir": data_dir, "prepared": stamps}


def environment() -> dict[str, Any]:
  """Where this report was made: machine, Python, library versions, lock file, datasets."""
  status = _git("status", "--porcelain")
  env = {
      "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
      "git_commit": _git("rev-parse", "HEAD") or "unknown",
      "git_dirty": bool(status),
      "git_changed_files": len(status.splitlines()),
      "python": f"{platform.python_implementation()} {platform.python_version()}",
      "platform": platform.platform(),
      "cpu": _cpu_model(),
      "cpu_count": os.cpu_count(),
      "load_average": [round(x, 2) for x in os.getloadavg()],
      "packages": {name: _version(name) for name in (
          "jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "tensorflow-datasets", "grain",
          "numpy", "babel", "matplotlib")},
  }
  try:
    import babel.core  # pylint: disable=g-import-not-at-top
    env["cldr"] = babel.core.get_cldr_version()
  except ImportError:
    env["cldr"] = "babel not installed"
  try:
    import jax  # pylint: disable=g-import-not-at-top
    devices = jax.devices()
    env["jax_devices"] = f"{jax.default_backend()}: {len(devices)} x {devices[0].device_kind}"
  except Exception as e:  # pylint: disable=broad-except
    env["jax_devices"] = f"unavailable ({e})"
  env["variables"] = {k: os.environ[k] for k in ("JAX_PLATFORMS", "XLA_FLAGS", "TFDS_DATA_DIR")
                      if k in os.environ}
  lock = os.path.join(REPO_ROOT, "requirements", "lock.txt")
  if os.path.exists(lock):
    with open(lock, "rb") as f:
      env["lock_sha256"] = hashlib.sha256(f.read()).hexdigest()
  env["datasets"] = _dataset_stamps()
  return env


def _number(value: float | None, readme: str, signed: bool = False) -> str:
  """``value`` in the README's style (thousands separators, unit), one decimal more than it
  unless it is an integer."""
  if value is None:
    return "—"
  text = readme.replace("*", "")
  decimals = len(text.rstrip("%x").split(".")[1]) + 1 if "." in text else 0
  if signed:  # a difference: percentage points, or a ratio's difference
    return f"{value:+,.{decimals}f}"
  return f"{value:,.{decimals}f}" + (text[-1] if text[-1] in "%x" else "")


def _difference(row: dict[str, Any]) -> str:
  shown = _number(row["difference"], row["readme"], signed=True)
  if row["difference"] is not None and TOLERANCES[row["kind"]].relative:
    shown += f" ({100 * row['difference'] / row['readme_value']:+.1f}%)"
  return shown


def markdown(report: dict[str, Any]) -> str:
  env, summary = report["environment"], report["summary"]
  lines = [
      "# Reproducing the README's results", "",
      f"Made by `{report['command']}`. Each figure of the README's results tables beside the same "
      "figure read from the run's `eval.json`; **MOVED** marks a difference beyond the tolerance "
      "of its kind. Wall-clock figures (training seconds, tokens/s) are not compared: they depend "
      "on the machine and its load, so each run's wall time and load average are listed only "
      "as information.", ""]
  if not report["meaningful"]:
    lines += [f"**Preset `{report['preset']}` instead of the documented configs: the comparison "
              "is not meaningful; every row is marked n/a (preset).**", ""]
  lines += [", ".join(f"{n} {status}" for status, n in summary.items()) + "."]
  moved = [f"{run['run']}: {row['model']}, {row['label']}" for run in report["runs"]
           for row in run["figures"] if row["status"] == "MOVED"]
  lines += ["", "Moved:", "", *(f"- {m}" for m in moved)] if moved else []
  lines += ["",
            "## Environment", "", "| | |", "|---|---|"]
  dirty = f" (dirty: {env['git_changed_files']} changed files)" if env["git_dirty"] else ""
  for name, value in (("date", env["date"]), ("git commit", env["git_commit"] + dirty),
                      ("Python", env["python"]), ("platform", env["platform"]),
                      ("CPU", f"{env['cpu']}, {env['cpu_count']} cores"),
                      ("load average at the end (1, 5, 15 min)",
                       ", ".join(map(str, env["load_average"]))),
                      ("JAX devices", env["jax_devices"]),
                      ("environment variables", ", ".join(
                          f"{k}={v}" for k, v in env["variables"].items()) or "none set"),
                      *env["packages"].items(), ("CLDR (babel)", env["cldr"]),
                      ("requirements/lock.txt sha256", env.get("lock_sha256", "missing"))):
    lines.append(f"| {name} | {value} |")
  for dataset, stamp in env["datasets"]["prepared"].items():
    versions = ", ".join(f"{k} {v}" for k, v in sorted((stamp["generated_with"] or {}).items()))
    lines.append(f"| {dataset} | generated with {versions or '?'}; fingerprint "
                 f"{(stamp['fingerprint'] or '?')[:16]} |")
  lines += ["", "## Tolerances", "", "| kind | figures | tolerance |", "|---|---|---|"]
  lines += [f"| {kind} | {TOLERANCES[kind].what} | {tolerance} |"
            for kind, tolerance in report["tolerances"].items()]
  for run in report["runs"]:
    lines += ["", f"## {run['run']}", "", f"`{run['command']}`", ""]
    if run["results"] is None:
      lines.append("Not run: no eval.json in the workdir.")
    else:
      how = "Run now" if run["executed"] else "eval.json reused"
      if not run["executed"] and run.get("finished"):
        how += f" (run here before, finished {run['finished']})"
      wall = run.get("wall_seconds")
      lines.append(
          f"{how}; wall time {'not recorded' if wall is None else f'{wall:,.0f} s'} (the "
          f"experiment's own `wall_seconds_this_run`: {run.get('experiment_wall_seconds')}); "
          f"1-minute load average before it: {run.get('load_before', 'not recorded')}.")
    lines += ["", "| model | figure | README | measured | difference | tolerance | status |",
              "|---|---|---|---|---|---|---|"]
    for row in run["figures"]:
      status = "**MOVED**" if row["status"] == "MOVED" else row["status"]
      lines.append(f"| {row['model']} | {row['label']} | {row['readme']} | "
                   f"{_number(row['measured'], row['readme'])} | "
                   f"{_difference(row)} | "
                   f"{row['tolerance']} | {status} |")
  return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict[str, Any]:
  parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
  parser.add_argument("--workdir", default="runs/reproduce", help="one folder per run")
  parser.add_argument("--report", default="docs/reproduce.md", help="the Markdown report")
  parser.add_argument("--only", nargs="+", choices=[r.name for r in RUNS], metavar="RUN",
                      help=f"a subset of the runs: {', '.join(r.name for r in RUNS)}")
  parser.add_argument("--rerun", action="store_true", help="run even when eval.json exists")
  parser.add_argument("--preset", help="every experiment at this preset (a smoke test)")
  parser.add_argument("--no-run", action="store_true",
                      help="run nothing: report what the workdir holds")
  args = parser.parse_args(argv)
  meaningful = all((args.preset or run.preset) == run.preset for run in RUNS)
  report = {"command": " ".join(["python -m experiments.reproduce",
                                 *(argv if argv is not None else sys.argv[1:])]),
            "preset": args.preset or "documented", "meaningful": meaningful,
            "tolerances": {k: t.describe() for k, t in TOLERANCES.items()}, "runs": []}
  for run in RUNS:
    if args.only and run.name not in args.only:
      continue
    record = execute(run, args.workdir, args.preset or run.preset, args.rerun, args.no_run)
    record["figures"] = figure_rows(run, record["results"], meaningful)
    report["runs"].append(record)
  statuses = [row["status"] for run in report["runs"] for row in run["figures"]]
  report["summary"] = {"figures": len(statuses),
                       **{s: statuses.count(s) for s in dict.fromkeys(statuses)}}
  report["environment"] = environment()
  os.makedirs(os.path.dirname(os.path.abspath(args.report)), exist_ok=True)
  run_files().atomic_write_text(args.report, markdown(report))
  json_report = {**report, "runs": [{k: v for k, v in run.items() if k != "results"}
                                    for run in report["runs"]]}
  run_files().atomic_write_text(os.path.splitext(args.report)[0] + ".json",
                                json.dumps(json_report, indent=2, ensure_ascii=False) + "\n")
  print(f"{args.report}: " + ", ".join(f"{n} {s}" for s, n in report["summary"].items()))
  return report


if __name__ == "__main__":
  main()
