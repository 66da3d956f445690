r"""Packed against padded batches: real data per second, padding, final loss and accuracy.

  python -m benchmarks.packing                   # LM and seq2seq, 3 seeds each
  python -m benchmarks.packing --experiments=lm --seeds=1 --steps=100   # a smoke run

Trains the character LM of ``experiments/transformer_lm`` (default model) on whole documents (text
between blank lines, cut to the context) twice per seed: ``padded``, one document per row, and
``packed``, several documents per row kept apart by segment ids (grain's first-fit packing). Both
take ``--steps`` steps with the same number of real (non-padding) positions per step: the packed
batch has fewer rows. So both see the same text in the same number of updates and should end at
the same validation loss (evaluated on the same padded validation documents), the packed one
sooner.

Then the Transformer of ``experiments/transformer_seq2seq`` (``--seq2seq_preset``, without the
RNN) on padded pairs and on packed rows holding about as many pairs per step: equal steps, equal
examples, so equal test accuracy is expected and the packed run should train faster.

Prints one JSON line per run (with the load average before it) and markdown tables of mean +-
std over seeds.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

import numpy as np
from absl import logging

from attention_jax import data
from attention_jax import training
from benchmarks import load
from experiments.transformer_lm import config as lm_config
from experiments.transformer_lm import train as lm
from experiments.transformer_seq2seq import config as s2s_config
from experiments.transformer_seq2seq import train as s2s


def lm_config_for(mode: str, seed: int, steps: int, context: int):
  config = lm_config.get_config("default")
  config.seed = seed
  config.data.batching = mode
  config.model.context = context
  config.num_steps = steps
  config.warmup_steps = max(1, min(config.warmup_steps, steps // 10))
  config.log_every = max(1, steps // 10)
  config.checkpoint_every = steps
  config.eval_every = 0
  lm_config.validate(config)
  return config


class LMDocuments:
  """The text, tokenizer, training documents and validation batches, shared by every run."""

  def __init__(self, context: int, workdir: str):
    config = lm_config_for("padded", 0, 100, context)
    text = lm.load_text(config)
    self.tokenizer = lm.load_tokenizer(workdir, text, config.data.min_char_count)
    train_ids, val_ids = lm.split_ids(self.tokenizer, text, config.data.validation_fraction)
    newline_id = self.tokenizer.encode("\n")[0]
    self.docs = lm.split_documents(train_ids, newline_id, context)
    self.val_batches = lm.validation_batches(config, val_ids, newline_id)


def lm_run(documents: LMDocuments, mode: str, batches, seed: int, steps: int, context: int,
           workdir: str) -> dict:
  config = lm_config_for(mode, seed, steps, context)
  config.batch_size = batches.batch_size
  model = lm.make_model(config, documents.tokenizer.vocab_size)
  start = time.perf_counter()
  state = lm.train_model(config, workdir, model, batches, documents.val_batches)
  wall = time.perf_counter() - start
  log = training.read_jsonl(os.path.join(workdir, "metrics.jsonl"))
  # The first log line includes compilation; the others are steady state.
  rates = [row["steps_per_sec"] for row in log if row.get("split") == "train"][1:]
  steps_per_sec = float(np.median(rates))
  padding = batches.padding_fraction()
  eval_step = training.make_eval_step(lambda p, b: lm.metric_sums(model, p, b))
  val = training.evaluate(eval_step, state, documents.val_batches)
  real_per_step = config.batch_size * context * (1 - padding)
  return {"mode": mode, "seed": seed, "steps": steps, "rows_per_step": batches.batch_size,
          "padding_fraction": round(padding, 4), "steps_per_sec": round(steps_per_sec, 2),
          "real_tokens_per_sec": round(steps_per_sec * real_per_step, 1),
          "real_tokens": int(round(steps * real_per_step)),
          "validation_loss": round(val["loss"], 4), "train_wall_s": round(wall, 1)}


def seq2seq_run(packed: bool, seed: int, preset: str, workdir: str, steps: int = 0,
                eval_examples: int = 0) -> dict:
  """The Transformer of ``experiments/transformer_seq2seq`` (``preset``, without the RNN);
  ``steps`` / ``eval_examples`` > 0 shorten it (for a throughput-only measurement)."""
  config = s2s_config.get_config(preset)
  config.seed = seed
  if steps:
    config.num_steps = steps
    config.warmup_steps = min(config.warmup_steps, steps // 10)
    config.log_every = max(1, steps // 5)
  if eval_examples:
    config.eval.max_examples = eval_examples
  config.compare_rnn = False
  config.packing.enabled = packed
  config.eval.num_heatmaps = 0
  results = s2s.run(config, workdir)["models"]["transformer"]
  packing = results.get("packing", {})
  return {"mode": "packed" if packed else "padded", "seed": seed, "steps": config.num_steps,
          "rows_per_step": packing.get("rows_per_step", config.batch_size),
          "pairs_per_row": packing.get("pairs_per_row", 1.0),
          "input_padding_fraction": packing.get("input_padding_fraction"),
          "target_padding_fraction": packing.get("target_padding_fraction"),
          "train_examples_per_second": results["train_examples_per_second"],
          "train_seconds": results["train_seconds"],
          "test_exact_match": results["test"]["exact_match"],
          "test_long_exact_match": results["test_long"]["exact_match"]}


def padded_fractions(preset: str) -> tuple[float, float]:
  """The padded pipeline's padding of sources and targets over the training split."""
  config = s2s_config.get_config(preset)
  source = data.load_dates(split="train", data_dir=config.data.data_dir,
                           config=config.data.dataset_config)
  lengths = np.array([[len(source[i]["source"].decode("utf-8")),
                       len(source[i]["target"].decode("utf-8")) + 1]
                      for i in range(0, len(source), 10)], np.float64)
  return (1 - lengths[:, 0].mean() / config.data.max_input_len,
          1 - lengths[:, 1].mean() / config.data.max_target_len)


def seq2seq_table(rows: list[dict], padded_padding: tuple[float, float]) -> str:
  lines = ["| batching | rows x pairs per step | source / target padding | train examples/s | "
           "training s | test exact | test_long exact |",
           "|---|---|---|---|---|---|---|"]
  for mode in ("padded", "packed"):
    runs = [r for r in rows if r["mode"] == mode]

    def stat(key, digits, scale=1.0, runs=runs):
      values = scale * np.array([r[key] for r in runs], np.float64)
      return f"{values.mean():.{digits}f} +- {values.std():.{digits}f}"
    padding = (padded_padding if mode == "padded" else
               (runs[0]["input_padding_fraction"], runs[0]["target_padding_fraction"]))
    lines.append(f"| {mode} | {runs[0]['rows_per_step']} x {runs[0]['pairs_per_row']} | "
                 f"{padding[0]:.2f} / {padding[1]:.2f} | "
                 f"{stat('train_examples_per_second', 0)} | {stat('train_seconds', 1)} | "
                 f"{stat('test_exact_match', 2, 100)}% | {stat('test_long_exact_match', 2, 100)}% |")
  return "\n".join(lines)


def summarise(rows: list[dict]) -> str:
  lines = ["| batching | rows per step | padding | real tokens/s | validation loss | training s |",
           "|---|---|---|---|---|---|"]
  for mode in ("padded", "packed"):
    runs = [r for r in rows if r["mode"] == mode]

    def stat(key, digits, runs=runs):
      values = np.array([r[key] for r in runs], np.float64)
      return f"{values.mean():.{digits}f} +- {values.std():.{digits}f}"
    lines.append(f"| {mode} | {runs[0]['rows_per_step']} | {stat('padding_fraction', 3)} | "
                 f"{stat('real_tokens_per_sec', 0)} | {stat('validation_loss', 3)} | "
                 f"{stat('train_wall_s', 1)} |")
  return "\n".join(lines)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--experiments", default="lm,seq2seq")
  parser.add_argument("--steps", type=int, default=300, help="steps of the padded LM run")
  parser.add_argument("--context", type=int, default=256)
  parser.add_argument("--seq2seq_preset", default="quick")
  parser.add_argument("--seeds", type=int, default=3)
  parser.add_argument("--seq2seq_steps", type=int, default=0, help="0 = the preset's")
  parser.add_argument("--seq2seq_eval_examples", type=int, default=0, help="0 = the preset's")
  parser.add_argument("--wait_idle", action="store_true",
                      help="before each run, wait until the load average is below half the cores")
  parser.add_argument("--out", default="", help="also write the rows as JSON here")
  args = parser.parse_args()

  def wait_idle():
    return load.wait_until_quiet(args.wait_idle)
  logging.set_verbosity(logging.WARNING)  # orbax and the loop log at INFO
  experiments = args.experiments.split(",")
  rows, tables = [], []
  with tempfile.TemporaryDirectory() as tmp:
    if "lm" in experiments:
      documents = LMDocuments(args.context, tmp)
      batch_size = lm_config_for("padded", 0, 100, args.context).batch_size
      lm_rows = []
      for seed in range(args.seeds):
        padded = lm.document_batches(documents.docs, "padded", batch_size, args.context, seed)
        packed = lm.document_batches(documents.docs, "packed", batch_size, args.context, seed)
        # Equal steps and equal real positions per step: the packed batch has fewer rows.
        packed_rows = round(batch_size * (1 - padded.padding_fraction())
                            / (1 - packed.padding_fraction()))
        packed = data.packing.RowBatches(packed.rows, packed_rows, seed)
        for mode, batches in (("padded", padded), ("packed", packed)):
          before = wait_idle()
          row = lm_run(documents, mode, batches, seed, args.steps, args.context,
                       os.path.join(tmp, f"lm_{mode}{seed}"))
          lm_rows.append({"experiment": "lm", **row, "load average before": round(before, 2)})
          print(json.dumps(lm_rows[-1]), flush=True)
      rows += lm_rows
      tables.append(f"LM, context {args.context}, {args.steps} steps, equal real tokens per step:"
                    f"\n" + summarise(lm_rows))
    if "seq2seq" in experiments:
      s2s_rows = []
      for seed in range(args.seeds):
        for packed in (False, True):
          before = wait_idle()
          row = seq2seq_run(packed, seed, args.seq2seq_preset,
                            os.path.join(tmp, f"s2s_{packed}{seed}"), args.seq2seq_steps,
                            args.seq2seq_eval_examples)
          s2s_rows.append({"experiment": "seq2seq", **row,
                           "load average before": round(before, 2)})
          print(json.dumps(s2s_rows[-1]), flush=True)
      rows += s2s_rows
      tables.append(f"Transformer seq2seq ({args.seq2seq_preset}), equal steps and pairs per "
                    f"step:\n" + seq2seq_table(s2s_rows, padded_fractions(args.seq2seq_preset)))
  print("\n\n".join(tables))
  if args.out:
    with open(args.out, "w", encoding="utf-8") as f:
      json.dump(rows, f, indent=1)


if __name__ == "__main__":
  main()
