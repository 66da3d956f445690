r"""A Markdown table of several captioning runs (seeds, or variants), with the mean and std.

  python -m experiments.captioning.summarize runs/captioning_seed0 runs/captioning_seed1 ...

Reads each workdir's ``eval.json`` and prints one row per run (its seed, attention, decoding
``test``) and, for two runs or more, a row of ``mean +- std`` (sample std, ddof 1) over them:
BLEU-4, exact captions, the attention mass in the named box counted both ways (each cell spread
over its pixels; whole cells that cover part of the box) with the uniform map of each, pointing
accuracy, for hard attention the mass of the distribution the cell was chosen from on the box's
cells (for soft and no attention the map itself), and the mass by word kind (size / colour /
shape) on the box's cells.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Sequence

import numpy as np

COLUMNS = (
    ("BLEU-4", lambda t, loc: t["bleu_4"], "{:.2f}"),
    ("exact", lambda t, loc: 100 * t["exact_caption_accuracy"], "{:.1f}%"),
    ("in box (pixels)", lambda t, loc: loc["mean_mass_in_box"], "{:.3f}"),
    ("x uniform", lambda t, loc: loc["ratio_to_uniform"], "{:.1f}"),
    ("on box cells", lambda t, loc: loc.get("mean_cell_mass_in_box", np.nan), "{:.3f}"),
    ("x uniform ", lambda t, loc: loc.get("cell_ratio_to_uniform", np.nan), "{:.1f}"),
    ("pointing", lambda t, loc: loc.get("pointing_accuracy", np.nan), "{:.3f}"),
    # hard attention: the distribution a_t the cell was chosen from (the map for soft and none)
    ("a_t on box cells", lambda t, loc: t.get("localisation_of_distribution", loc).get(
        "mean_cell_mass_in_box", np.nan), "{:.3f}"),
    ("size / colour / shape (cells)",
     lambda t, loc: tuple(loc.get(f"mean_cell_mass_in_box_{k}_words", np.nan)
                          for k in ("size", "colour", "shape")), "{:.2f}"),
)


def _cell(value, fmt: str) -> str:
  if isinstance(value, tuple):
    return " / ".join(fmt.format(v) for v in value)
  return fmt.format(value)


def table(workdirs: Sequence[str], key: str = "test") -> str:
  """The Markdown table of the runs in ``workdirs`` (see the module docstring)."""
  rows, values = [], []
  for workdir in workdirs:
    with open(os.path.join(workdir, "eval.json")) as f:
      results = json.load(f)
    scores = results[key]
    loc = scores["localisation"]
    config = results["config"]
    row = [str(config.get("seed")), config["model"].get("attention", "soft"), scores["decoding"]]
    vals = [get(scores, loc) for _, get, _ in COLUMNS]
    rows.append(row + [_cell(v, fmt) for v, (_, _, fmt) in zip(vals, COLUMNS)])
    values.append(vals)
  header = ["seed", "attention", "decoding"] + [name.strip() for name, _, _ in COLUMNS]
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  lines += ["| " + " | ".join(r) + " |" for r in rows]
  if len(values) > 1:
    summary = []
    for i, (_, _, fmt) in enumerate(COLUMNS):
      column = np.array([v[i] for v in values], np.float64)
      mean, std = column.mean(0), column.std(0, ddof=1)
      if column.ndim == 2:
        summary.append(" / ".join(fmt.format(m) for m in mean))
      else:
        summary.append(f"{fmt.format(mean)} +- {fmt.format(std)}")
    lines.append("| **mean +- std** | | | " + " | ".join(summary) + " |")
  return "\n".join(lines)


def main(argv: Sequence[str]) -> None:
  key = "test"
  args = list(argv)
  if args and args[0].startswith("--key="):
    key = args.pop(0).split("=", 1)[1]
  if not args:
    raise SystemExit("usage: python -m experiments.captioning.summarize [--key=test_greedy] "
                     "WORKDIR...")
  print(table(args, key))


if __name__ == "__main__":
  main(sys.argv[1:])
