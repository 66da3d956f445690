r"""Seq2seq with and without attention on the dates translation task: the bottleneck, shown.

Trains RNN encoder-decoders with the same budget, one per ``config.attentions`` entry: ``"none"``
(the decoder sees one fixed context vector) and ``"additive"`` (Bahdanau attention: a new context
vector at every decoder step), optionally ``"dot"``. Then decodes the test split and the held-out
``test_long`` split (inputs longer than any training input) and writes into ``--workdir``:

  <attention>/            each model's run: checkpoints (resumed automatically), metrics.jsonl
  eval.json               exact match and per-character accuracy per split, accuracy by length
  accuracy_vs_length.png  exact match against input length, one curve per model (Bahdanau et al.
                          2015, Fig. 2)
  alignment_<locale>.png  attention weights (input characters x output characters)
"""

from __future__ import annotations

import os
import time
from typing import Any

import jax

from attention_jax import data
from attention_jax import plotting
from attention_jax import training
from attention_jax.tasks import dates_translation as task

from . import config as config_lib


def write_heatmaps(workdir: str, decoded, source_tok, target_tok, count: int) -> list[str]:
  """Alignment heatmaps (output characters x input characters) for test inputs in several
  languages."""
  paths = []
  for i in task.heatmap_examples(decoded["records"], count):
    record, prediction = decoded["records"][i], decoded["predictions"][i]
    source_chars = source_tok.tokens(source_tok.encode(record["source"]))
    output_chars = list(prediction) + ["</s>"]
    weights = decoded["attentions"][i][:len(output_chars), :len(source_chars)]
    paths.append(plotting.plot_attention(
        weights, os.path.join(workdir, f"alignment_{record['locale']}.png"),
        x_labels=source_chars, y_labels=output_chars,
        title=f"{record['locale']}: {record['source']!r} -> {prediction!r}",
        x_title="input characters", y_title="output characters"))
  return paths


def run(config, workdir: str) -> dict[str, Any]:
  """Trains every model of ``config.attentions``, evaluates, plots; returns the eval results."""
  config_lib.validate(config)
  start_time = time.perf_counter()
  os.makedirs(workdir, exist_ok=True)
  sources = data.load_dates(split=None, data_dir=config.data.data_dir,
                            config=config.data.dataset_config)
  source_tok, target_tok = task.load_tokenizers(workdir, sources["train"])
  train_batches, val_batches = task.make_batches(config, sources, source_tok, target_tok)

  results: dict[str, Any] = {"config": training.config_to_dict(config), "models": {}}
  for attention in config.attentions:
    model = task.make_rnn(config, attention, source_tok, target_tok)
    model_start = time.perf_counter()
    state = task.train_rnn(config, os.path.join(workdir, attention), model, train_batches,
                           val_batches)
    train_seconds = time.perf_counter() - model_start
    decode = task.make_rnn_decoder(model, config.eval.beam_size, config.data.max_target_len)
    model_results = {"parameters": int(sum(x.size for x in jax.tree.leaves(state.params))),
                     "train_seconds_this_run": round(train_seconds, 1)}
    for split in ("test", "test_long"):
      decoded = task.decode_split(decode, state.params, sources[split], source_tok, target_tok,
                                  config)
      model_results[split] = task.score(decoded["records"], decoded["predictions"])
      if split == "test" and attention != "none":
        model_results["heatmaps"] = write_heatmaps(
            os.path.join(workdir, attention), decoded, source_tok, target_tok,
            config.eval.num_heatmaps)
    results["models"][attention] = model_results
    print(f"[{attention}] test exact match {model_results['test']['exact_match']:.4f}, "
          f"test_long {model_results['test_long']['exact_match']:.4f}", flush=True)

  results["accuracy_vs_length_png"] = task.plot_accuracy_vs_length(
      results["models"], os.path.join(workdir, "accuracy_vs_length.png"))
  results["wall_seconds_this_run"] = round(time.perf_counter() - start_time, 1)
  training.write_eval_json(workdir, results)
  return results
