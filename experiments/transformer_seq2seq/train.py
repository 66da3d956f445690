r"""The Transformer encoder-decoder on the dates translation task, next to the RNN with attention.

Trains ``models.EncoderDecoder`` (Vaswani et al. 2017: self-attention encoder, masked
self-attention + cross-attention decoder, one embedding shared by source, target and output
head) on the dates dataset of ``experiments/seq2seq``, and (``config.compare_rnn``) the RNN with
additive attention of that experiment with the same steps, batch size and data in the same run.
Decodes the test split and the held-out ``test_long`` split (inputs longer than any training
input) with the KV cache (greedy or beam search) and writes into ``--workdir``:

  transformer/, rnn_additive/  each model's run: checkpoints (resumed automatically), metrics
  eval.json                     exact match, per-character accuracy, parameters, training time,
                                decoding throughput per model; the comparison table
  accuracy_vs_length.png        exact match against input length, one curve per model
  transformer/cross_attention_<locale>.png
                                every head's cross-attention of the last decoder layer (output
                                characters x input characters)

"""

from __future__ import annotations

import copy
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from attention_jax import data
from attention_jax import decoding
from attention_jax import plotting
from attention_jax import training
from attention_jax.data.tokenizers import BOS_ID, EOS_ID, PAD_ID
from attention_jax.models import transformer
from attention_jax.tasks import dates_translation as task

from . import config as config_lib

MODEL_NAMES = {"transformer": "Transformer encoder-decoder",
               "rnn_additive": "RNN with additive attention"}


def rnn_config(config):
  """The RNN's config: ``config.rnn`` with this config's data, batch size, steps and seed."""
  rnn = copy.deepcopy(config.rnn)  # works on a locked config too (as from --config flags)
  rnn.data = copy.deepcopy(config.data)
  for field in ("batch_size", "num_steps", "seed", "log_every", "checkpoint_every"):
    rnn[field] = config[field]
  for field in ("batch_size", "beam_size", "max_examples"):
    rnn.eval[field] = config.eval[field]
  task.validate_rnn_config(rnn)
  return rnn


def make_model(config, vocab_size: int) -> transformer.EncoderDecoder:
  m = config.model
  return transformer.EncoderDecoder(transformer.TransformerConfig(
      vocab_size=vocab_size, features=m.features, num_heads=m.num_heads, mlp_dim=m.mlp_dim,
      num_layers=m.num_layers, max_length=max(
          config.data.max_input_len, config.data.max_target_len,
          config.packing.target_length if config.packing.enabled else 0),
      positions=m.positions, pre_norm=m.pre_norm, dropout_rate=m.dropout_rate,
      tie_embeddings=True, scale_embeddings=True, activation="relu",
      dtype=jnp.bfloat16 if m.dtype == "bfloat16" else None))


def _text(value) -> str:
  return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def packed_train_batches(config, source, tokenizer) -> data.packing.RowBatches:
  """The training split as packed rows of pairs (``config.packing``), batched by step."""
  sources, targets = [], []
  for i in range(len(source)):
    record = source[i]
    sources.append(tokenizer.encode(_text(record["source"])))
    targets.append(tokenizer.encode(_text(record["target"])))
  rows = data.packing.packed_seq2seq_rows(
      sources, targets, input_length=config.data.max_input_len,
      target_length=config.packing.target_length, seed=config.seed)
  num_rows = len(rows["inputs"])
  per_row = len(sources) / num_rows
  batch_rows = config.packing.rows or max(1, round(config.batch_size / per_row))
  return data.packing.RowBatches(rows, min(batch_rows, num_rows), config.seed)


def pairs_per_row(batches: data.packing.RowBatches) -> float:
  return float(np.mean([len(set(r.tolist()) - {0}) for r in batches.rows["target_segment_ids"]]))


def train_transformer(config, workdir: str, model: transformer.EncoderDecoder, train_batches,
                      val_batches):
  """Trains (or resumes) the Transformer in ``workdir``; returns the final train state. Batches
  are padded pairs (with ``input_lengths``) or packed rows (with segment ids and positions)."""
  example = train_batches[0]
  params = model.init(jax.random.key(config.seed), example["inputs"], example["decoder_inputs"],
                      example.get("input_lengths"))["params"]

  def logits_fn(params, batch, rng):
    return model.apply({"params": params}, batch["inputs"], batch["decoder_inputs"],
                       batch.get("input_lengths"),
                       input_segment_ids=batch.get("input_segment_ids"),
                       input_positions=batch.get("input_positions"),
                       target_segment_ids=batch.get("target_segment_ids"),
                       target_positions=batch.get("target_positions"),
                       deterministic=rng is None,
                       rngs=None if rng is None else {"dropout": rng})

  return training.train_teacher_forced(config, workdir, model, params, logits_fn, train_batches,
                                       val_batches)


def make_decoder(model: transformer.EncoderDecoder, beam_size: int, max_len: int,
                 length_penalty: float):
  """A jitted ``(params, inputs, input_lengths) -> tokens [B, max_len]``: the encoder runs once,
  then one compiled decoder step per token reads and extends the KV cache."""

  @jax.jit
  def decode(params, inputs, input_lengths):
    init_fn, step_fn = transformer.encoder_decoder_decoding_fns(
        model, params, inputs, input_lengths, max_len=max_len)
    batch = inputs.shape[0]
    if beam_size > 1:
      return decoding.beam_search(init_fn, step_fn, batch, beam_size, max_len, BOS_ID, EOS_ID,
                                  pad_id=PAD_ID, length_penalty=length_penalty)[0]
    return decoding.greedy_decode(init_fn, step_fn, batch, max_len, BOS_ID, EOS_ID, PAD_ID)[0]

  return decode


def cross_attention(model: transformer.EncoderDecoder, params, tokenizer, source: str,
                    prediction: str) -> np.ndarray:
  """Every head's cross-attention in the last decoder layer while the model reads ``source``
  and emits ``prediction`` + EOS: ``[heads, len(prediction) + 1, source tokens]``.

  A teacher-forced pass over BOS + ``prediction`` gives the weights that greedy decoding used,
  since position ``t`` of the causal decoder sees only the tokens before it.
  """
  inputs = tokenizer.encode(source)
  targets_in = [BOS_ID] + tokenizer.encode(prediction)
  _, state = model.apply({"params": params}, jnp.asarray([inputs], jnp.int32),
                         jnp.asarray([targets_in], jnp.int32), sow_weights=True,
                         mutable=["intermediates"])
  last = f"layer_{model.config.decoder_layers - 1}"
  weights = state["intermediates"]["decoder"][last]["cross_attention"]["attention_weights"][0]
  return np.asarray(weights[0], np.float32)


def write_heatmaps(workdir: str, model, params, decoded, tokenizer, count: int) -> list[str]:
  """Cross-attention heatmaps (one panel per head) for test inputs in several languages."""
  paths = []
  for i in task.heatmap_examples(decoded["records"], count):
    record, prediction = decoded["records"][i], decoded["predictions"][i]
    weights = cross_attention(model, params, tokenizer, record["source"], prediction)
    paths.append(plotting.plot_attention_grid(
        weights, os.path.join(workdir, f"cross_attention_{record['locale']}.png"),
        x_labels=tokenizer.tokens(tokenizer.encode(record["source"])),
        y_labels=list(prediction) + ["</s>"],
        suptitle=(f"last decoder layer, every head: {record['locale']} "
                  f"{record['source']!r} -> {prediction!r}")))
  return paths


def _parameters(params) -> int:
  return int(sum(x.size for x in jax.tree.leaves(params)))


def training_time(model_dir: str, examples_per_row: float = 1.0) -> dict[str, float]:
  """Seconds of training and examples per second over the whole run, summed from the logged
  intervals of ``metrics.jsonl`` (so a resumed run still reports all of it, without the time
  spent compiling, checkpointing and evaluating). A logged example is a row: packed rows hold
  ``examples_per_row`` pairs."""
  rows = [r for r in training.read_jsonl(os.path.join(model_dir, "metrics.jsonl"))
          if r.get("split") == "train" and r.get("steps_per_sec")]
  seconds = sum(r["num_steps"] / r["steps_per_sec"] for r in rows)
  examples = sum(r["example_count"] for r in rows) * examples_per_row
  return {"train_seconds": round(seconds, 1),
          "train_examples_per_second": round(examples / seconds, 1) if seconds else None}


def run_transformer(config, workdir: str, sources) -> dict[str, Any]:
  tokenizer, _ = task.load_tokenizers(workdir, sources["train"], joint=True)
  train_batches, val_batches = task.make_batches(config, sources, tokenizer, tokenizer)
  per_row, packed = 1.0, {}
  if config.packing.enabled:
    train_batches = packed_train_batches(config, sources["train"], tokenizer)
    per_row = pairs_per_row(train_batches)
    packed = {"packing": {
        "rows_per_step": train_batches.batch_size, "pairs_per_row": round(per_row, 2),
        "input_padding_fraction": round(
            float(np.mean(train_batches.rows["input_segment_ids"] == 0)), 4),
        "target_padding_fraction": round(train_batches.padding_fraction("target_mask"), 4)}}
  model = make_model(config, tokenizer.vocab_size)
  model_dir = os.path.join(workdir, "transformer")
  start = time.perf_counter()
  state = train_transformer(config, model_dir, model, train_batches, val_batches)
  results = {"parameters": _parameters(state.params),
             "train_seconds_this_run": round(time.perf_counter() - start, 1),
             **training_time(model_dir, per_row), **packed}
  decode = make_decoder(model, config.eval.beam_size, config.data.max_target_len,
                        config.eval.length_penalty)
  for split in ("test", "test_long"):
    decoded = task.decode_split(decode, state.params, sources[split], tokenizer, tokenizer,
                                config)
    results[split] = task.score(decoded["records"], decoded["predictions"])
    results[split]["decode_chars_per_second"] = decoded["chars_per_second"]
    if split == "test":
      results["heatmaps"] = write_heatmaps(model_dir, model, state.params, decoded, tokenizer,
                                           config.eval.num_heatmaps)
  return results


def run_rnn(config, workdir: str, sources) -> dict[str, Any]:
  rnn = rnn_config(config)
  source_tok, target_tok = task.load_tokenizers(workdir, sources["train"])
  train_batches, val_batches = task.make_batches(rnn, sources, source_tok, target_tok)
  model = task.make_rnn(rnn, "additive", source_tok, target_tok)
  start = time.perf_counter()
  model_dir = os.path.join(workdir, "rnn_additive")
  state = task.train_rnn(rnn, model_dir, model, train_batches, val_batches)
  results = {"parameters": _parameters(state.params),
             "train_seconds_this_run": round(time.perf_counter() - start, 1),
             **training_time(model_dir)}
  decode = task.make_rnn_decoder(model, rnn.eval.beam_size, rnn.data.max_target_len)
  for split in ("test", "test_long"):
    decoded = task.decode_split(decode, state.params, sources[split], source_tok, target_tok,
                                rnn)
    results[split] = task.score(decoded["records"], decoded["predictions"])
  return results


def comparison_table(models: dict[str, Any]) -> str:
  """A Markdown table of the models' numbers (the README's)."""
  lines = ["| model | parameters | train s | train examples/s | test exact | test per-char | "
           "test_long exact |",
           "|---|---|---|---|---|---|---|"]
  for name, r in models.items():
    lines.append(
        f"| {MODEL_NAMES[name]} | {r['parameters']:,} | {r['train_seconds']:.0f} | "
        f"{r['train_examples_per_second'] or 0:.0f} | "
        f"{100 * r['test']['exact_match']:.2f}% | {100 * r['test']['char_accuracy']:.2f}% | "
        f"{100 * r['test_long']['exact_match']:.2f}% |")
  return "\n".join(lines)


def run(config, workdir: str) -> dict[str, Any]:
  """Trains the Transformer (and the RNN), evaluates, plots; returns the eval results."""
  config_lib.validate(config)
  start_time = time.perf_counter()
  os.makedirs(workdir, exist_ok=True)
  sources = data.load_dates(split=None, data_dir=config.data.data_dir,
                            config=config.data.dataset_config)
  results: dict[str, Any] = {"config": training.config_to_dict(config), "models": {}}
  results["models"]["transformer"] = run_transformer(config, workdir, sources)
  if config.compare_rnn:
    results["models"]["rnn_additive"] = run_rnn(config, workdir, sources)
  for name, r in results["models"].items():
    print(f"[{name}] test exact match {r['test']['exact_match']:.4f}, "
          f"test_long {r['test_long']['exact_match']:.4f}", flush=True)
  results["table"] = comparison_table(results["models"])
  print(results["table"], flush=True)
  results["accuracy_vs_length_png"] = task.plot_accuracy_vs_length(
      {MODEL_NAMES[name]: r for name, r in results["models"].items()},
      os.path.join(workdir, "accuracy_vs_length.png"))
  results["wall_seconds_this_run"] = round(time.perf_counter() - start_time, 1)
  training.write_eval_json(workdir, results)
  return results

