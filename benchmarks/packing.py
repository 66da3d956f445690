r"""Packed against padded batches: positions of real text per second, padding, final loss.

  python -m benchmarks.packing                   # LM, context 256, 3 seeds (~6 min on 2 cores)
  python -m benchmarks.packing --seeds=1 --steps=100   # a smoke run

Trains the character LM of ``experiments/transformer_lm`` (default model) on whole documents (text
between blank lines, cut to the context) twice per seed: ``padded``, one document per row, and
``packed``, several documents per row kept apart by segment ids (grain's first-fit packing). The
padded run takes ``--steps`` steps; the packed run takes the steps that hold the same number of
real (non-padding) positions, so both see the same amount of text and should end at the same
validation loss (evaluated on the same padded validation documents), the packed one sooner.

Prints one JSON line per run (with the load average before it) and a markdown table of mean +-
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

from attention_jax import training
from experiments.transformer_lm import config as lm_config
from experiments.transformer_lm import train as lm


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
  return {"mode": mode, "seed": seed, "steps": steps,
          "padding_fraction": round(padding, 4), "steps_per_sec": round(steps_per_sec, 2),
          "real_tokens_per_sec": round(steps_per_sec * real_per_step, 1),
          "real_tokens": int(round(steps * real_per_step)),
          "validation_loss": round(val["loss"], 4), "train_wall_s": round(wall, 1)}


def summarise(rows: list[dict]) -> str:
  lines = ["| batching | padding | steps | real tokens/s | validation loss | training s |",
           "|---|---|---|---|---|---|"]
  for mode in ("padded", "packed"):
    runs = [r for r in rows if r["mode"] == mode]

    def stat(key, digits, runs=runs):
      values = np.array([r[key] for r in runs], np.float64)
      return f"{values.mean():.{digits}f} +- {values.std():.{digits}f}"
    lines.append(f"| {mode} | {stat('padding_fraction', 3)} | {runs[0]['steps']} | "
                 f"{stat('real_tokens_per_sec', 0)} | {stat('validation_loss', 3)} | "
                 f"{stat('train_wall_s', 1)} |")
  return "\n".join(lines)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--steps", type=int, default=600, help="steps of the padded run")
  parser.add_argument("--context", type=int, default=256)
  parser.add_argument("--seeds", type=int, default=3)
  parser.add_argument("--out", default="", help="also write the rows as JSON here")
  args = parser.parse_args()
  logging.set_verbosity(logging.WARNING)  # orbax and the loop log at INFO
  rows = []
  with tempfile.TemporaryDirectory() as tmp:
    documents = LMDocuments(args.context, tmp)
    batch_size = lm_config_for("padded", 0, 100, args.context).batch_size
    for seed in range(args.seeds):
      runs = {mode: lm.document_batches(documents.docs, mode, batch_size, args.context, seed)
              for mode in ("padded", "packed")}
      # Equal real positions: the packed run needs fewer steps by the ratio of real fractions.
      steps = {"padded": args.steps,
               "packed": int(round(args.steps * (1 - runs["padded"].padding_fraction())
                                   / (1 - runs["packed"].padding_fraction())))}
      for mode, batches in runs.items():
        load = os.getloadavg()[0]
        row = lm_run(documents, mode, batches, seed, steps[mode], args.context,
                     os.path.join(tmp, f"{mode}{seed}"))
        rows.append({**row, "load average before": round(load, 2)})
        print(json.dumps(rows[-1]), flush=True)
  print(summarise(rows))
  if args.out:
    with open(args.out, "w", encoding="utf-8") as f:
      json.dump(rows, f, indent=1)


if __name__ == "__main__":
  main()
