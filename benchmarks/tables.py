"""Markdown tables from the JSON that ``benchmarks/attention.py --out`` writes.

  python -m benchmarks.tables benchmarks/results/attention_cpu.json [more.json ...]

One row per (length, mask): our default path's milliseconds and the ratio ours / peer for every
peer timed (below 1 = ours faster), forward and forward+backward, and the load average.
"""

from __future__ import annotations

import json
import sys

PEERS = ("jax.nn", "flax.linen", "torch")


def table(rows) -> str:
  lines = ["| length | mask | fwd ours | vs jax.nn | vs flax | vs torch | fwd+bwd ours | vs jax.nn "
           "| vs flax | vs torch | load |", "|" + "---|" * 11]
  for row in rows:
    cells = [str(row["length"]), "causal" if row["causal"] else "full"]
    for kind in ("fwd", "fwd+bwd"):
      ours = row[f"ours {kind}"]
      cells.append(f"{ours:.1f} ms")
      for peer in PEERS:
        theirs = row.get(f"{peer} {kind}")
        cells.append("-" if theirs is None else f"{ours / theirs:.2f}x")
    cells.append(f"{row['load average']:.1f}" if "load average" in row else "-")
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines)


def main():
  rows = []
  for path in sys.argv[1:]:
    with open(path) as f:
      rows.extend(json.load(f))
  rows.sort(key=lambda r: (r["causal"], r["length"]))
  print(table(rows))


if __name__ == "__main__":
  main()
