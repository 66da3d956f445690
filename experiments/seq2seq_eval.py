"""Scores and the length curve of the seq2seq experiment (host-side, on decoded strings)."""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from attention_jax.plotting.figures import save_figure  # noqa: E402

LENGTH_BUCKET = 5  # characters per bucket of the accuracy-by-length curve


def char_matches(prediction: str, target: str) -> int:
  """Positions ``i < len(target)`` where the prediction has the target's character."""
  return sum(p == t for p, t in zip(prediction, target))


MAX_MISTAKES = 20  # wrong predictions listed in eval.json per split, for inspection


def score(records: Sequence[Mapping[str, str]], predictions: Sequence[str]) -> dict[str, Any]:
  """Exact match, per-character accuracy and exact match by input length.

  Args:
    records: examples with ``source`` and ``target`` strings.
    predictions: the decoded target strings, one per record.

  Returns:
    ``{"examples", "exact_match", "char_accuracy", "by_length": [{"min_len", "max_len",
    "examples", "exact_match", "char_accuracy"}, ...], "mistakes": [...]}``; per-character
    accuracy counts matching positions over all target characters (a missing or extra character
    is wrong); ``mistakes`` lists the first wrong predictions with their records.
  """
  if len(records) != len(predictions):
    raise ValueError(f"{len(records)} records but {len(predictions)} predictions")
  if not records:
    raise ValueError("score needs at least one record")
  buckets: dict[int, list[int]] = {}
  exact = chars = total_chars = 0
  mistakes = []
  for record, prediction in zip(records, predictions):
    target = record["target"]
    hit = prediction == target
    matched = char_matches(prediction, target)
    # Extra characters beyond the target count against it too.
    length = max(len(target), len(prediction))
    exact += hit
    if not hit and len(mistakes) < MAX_MISTAKES:
      mistakes.append({**record, "prediction": prediction})
    chars += matched
    total_chars += length
    bucket = buckets.setdefault(len(record["source"]) // LENGTH_BUCKET, [0, 0, 0, 0])
    bucket[0] += 1
    bucket[1] += hit
    bucket[2] += matched
    bucket[3] += length
  by_length = [
      {"min_len": b * LENGTH_BUCKET, "max_len": (b + 1) * LENGTH_BUCKET - 1, "examples": n,
       "exact_match": hits / n, "char_accuracy": matched / max(length, 1)}
      for b, (n, hits, matched, length) in sorted(buckets.items())]
  return {"examples": len(records), "exact_match": exact / len(records),
          "char_accuracy": chars / max(total_chars, 1), "by_length": by_length,
          "mistakes": mistakes}


def merged_curve(model_results: Mapping[str, Any], min_examples: int = 10) -> tuple[list, list]:
  """Exact match by input length over the test and test_long splits together."""
  counts: dict[int, list[float]] = {}
  for split in ("test", "test_long"):
    for row in model_results[split]["by_length"]:
      entry = counts.setdefault(row["min_len"], [0, 0.0])
      entry[0] += row["examples"]
      entry[1] += row["exact_match"] * row["examples"]
  xs, ys = [], []
  for start, (n, hits) in sorted(counts.items()):
    if n >= min_examples:
      xs.append(start + LENGTH_BUCKET / 2)
      ys.append(hits / n)
  return xs, ys


def plot_accuracy_vs_length(models: Mapping[str, Any], path: str,
                            longest_train_input: int | None = 35) -> str:
  """One curve per model: exact match against the input length (test + test_long)."""
  names = {"none": "RNN encoder-decoder (fixed context)", "additive": "RNNsearch (additive)",
           "dot": "RNNsearch (dot-product)"}
  fig, ax = plt.subplots(figsize=(6.5, 4))
  for attention, result in models.items():
    xs, ys = merged_curve(result)
    ax.plot(xs, ys, marker="o", label=names.get(attention, attention))
  if longest_train_input:
    ax.axvline(longest_train_input + 0.5, color="gray", linestyle="--", linewidth=1)
    ax.text(longest_train_input + 1, 0.05, "longer than any\ntraining input", fontsize=8,
            color="gray")
  ax.set_xlabel("input length (characters)")
  ax.set_ylabel("exact match")
  ax.set_ylim(-0.02, 1.02)
  ax.grid(alpha=0.3)
  ax.legend(loc="lower left", fontsize=8)
  ax.set_title("Accuracy against input length (cf. Bahdanau et al. 2015, Fig. 2)", fontsize=9)
  return save_figure(fig, path)
