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

  python -m experiments.seq2seq --config=experiments/configs/seq2seq.py --workdir=runs/seq2seq
  python -m experiments.seq2seq --config=experiments/configs/seq2seq.py:gpu --workdir=runs/s2s_gpu
"""

from __future__ import annotations

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
from attention_jax.models import seq2seq
from experiments import common
from experiments import seq2seq_eval

ATTENTIONS = ("none", "additive", "dot")
HEATMAP_LOCALES = ("en", "de", "ko", "ru", "ar", "ja", "fr", "hi", "el", "zh", "th", "fa")

# The data and evaluation fields, shared with experiments/transformer_seq2seq.py.
DATA_EVAL_SCHEMA = {
    "data.dataset_config": (training.one_of("default", "small"),),
    "data.max_input_len": (training.is_int(), training.greater_than(0)),
    "data.max_target_len": (training.is_int(), training.greater_than(1)),
    "eval.batch_size": (training.is_int(), training.greater_than(0)),
    "eval.beam_size": (training.is_int(), training.greater_than(0)),
    "eval.max_examples": (training.is_int(), training.at_least(0)),
    "eval.num_heatmaps": (training.is_int(), training.at_least(0)),
}

CONFIG_SCHEMA = {
    **training.TRAINING_SCHEMA,
    **DATA_EVAL_SCHEMA,
    "model.embed_dim": (training.is_int(), training.greater_than(0)),
    "model.hidden_dim": (training.is_int(), training.greater_than(0)),
    "model.attention_dim": (training.is_int(), training.greater_than(0)),
    "model.cell_type": (training.one_of("gru", "lstm"),),
    "model.dropout_rate": (training.is_number(), training.at_least(0), training.at_most(0.9)),
}


def validate(config) -> None:
  """Raises ValueError naming the first bad field."""
  training.validate_config(config, CONFIG_SCHEMA, cross_checks=_cross_checks)


def _cross_checks(config) -> None:
  training.validate_config(config)  # the training fields' own cross checks
  attentions = tuple(config.attentions)
  if not attentions or any(a not in ATTENTIONS for a in attentions):
    raise ValueError(f"config.attentions must be a non-empty tuple of {ATTENTIONS}, "
                     f"got {attentions!r}")
  if len(set(attentions)) != len(attentions):
    raise ValueError(f"config.attentions has duplicates: {attentions!r}")


def load_tokenizers(workdir: str, train_source) -> tuple[data.CharTokenizer, data.CharTokenizer]:
  """Source and target character vocabularies, built from the training split once and kept in
  the workdir so a resumed run (or a later evaluation) reads the same ids."""
  paths = [os.path.join(workdir, "tokenizers", f"{side}.json") for side in ("source", "target")]
  if all(os.path.exists(p) for p in paths):
    return tuple(data.CharTokenizer.load(p) for p in paths)
  tokenizers = (data.build_char_tokenizer(train_source, keys=("source",)),
                data.build_char_tokenizer(train_source, keys=("target",)))
  os.makedirs(os.path.dirname(paths[0]), exist_ok=True)
  for tokenizer, path in zip(tokenizers, paths):
    tokenizer.save(path)
  return tokenizers


def make_batches(config, sources, source_tok, target_tok):
  """``(train_batches, val_batches)``: the training pipeline (``batches[step]``) and the
  validation batches, shaped by ``config.data`` and the batch sizes of ``config``."""
  lengths = dict(max_input_len=config.data.max_input_len,
                 max_target_len=config.data.max_target_len, target_tokenizer=target_tok)
  train_batches = data.make_train_batches(sources["train"], source_tok,
                                          batch_size=config.batch_size, seed=config.seed,
                                          **lengths)
  val_batches = data.eval_batches(sources["validation"], source_tok,
                                  batch_size=config.eval.batch_size, **lengths)
  return train_batches, val_batches


def make_model(config, attention: str, source_tok, target_tok) -> seq2seq.Seq2Seq:
  return seq2seq.Seq2Seq(
      source_vocab_size=source_tok.vocab_size, target_vocab_size=target_tok.vocab_size,
      attention=attention, embed_dim=config.model.embed_dim, hidden_dim=config.model.hidden_dim,
      attention_dim=config.model.attention_dim, cell_type=config.model.cell_type,
      dropout_rate=config.model.dropout_rate)


def train_teacher_forced(config, workdir: str, model, params, logits_fn, train_batches,
                         val_batches):
  """Trains (or resumes) a sequence-to-sequence ``model`` with teacher forcing in ``workdir``;
  returns the final train state. Shared with experiments/transformer_seq2seq.py.

  Args:
    params: the initial parameters.
    logits_fn: ``(params, batch, rng) -> logits [B, T, vocab]``; ``rng=None`` is evaluation
      (deterministic), a key turns dropout on.
  """
  tx, schedule = training.make_optimizer(config)

  def loss_fn(params, batch, rng):
    sums = training.classification_sums(logits_fn(params, batch, rng), batch["targets"],
                                        batch["target_mask"])
    return sums["loss_sum"] / jnp.maximum(sums["token_count"], 1.0), sums

  def metrics_fn(params, batch):
    return training.classification_sums(logits_fn(params, batch, None), batch["targets"],
                                        batch["target_mask"])

  eval_step = training.make_eval_step(metrics_fn)
  return training.train(
      config, workdir,
      lambda: training.create_train_state(params, tx, seed=config.seed + 1,
                                          apply_fn=model.apply),
      training.make_train_step(loss_fn), train_batches.__getitem__,
      eval_fn=lambda state: training.evaluate(eval_step, state, val_batches),
      learning_rate_fn=schedule)


def train_model(config, workdir: str, model: seq2seq.Seq2Seq, train_batches, val_batches):
  """Trains (or resumes) one RNN model in ``workdir``; returns the final train state."""
  example = train_batches[0]
  params = model.init(jax.random.key(config.seed), example["inputs"], example["input_lengths"],
                      example["decoder_inputs"])["params"]

  def logits_fn(params, batch, rng):
    logits, _ = model.apply({"params": params}, batch["inputs"], batch["input_lengths"],
                            batch["decoder_inputs"], deterministic=rng is None,
                            rngs=None if rng is None else {"dropout": rng})
    return logits

  return train_teacher_forced(config, workdir, model, params, logits_fn, train_batches,
                              val_batches)


def make_decoder(model: seq2seq.Seq2Seq, beam_size: int, max_len: int):
  """A jitted ``(params, inputs, input_lengths) -> (tokens [B, max_len], attention [B, max_len, S])``.

  With ``beam_size > 1`` the tokens come from beam search and the attention from greedy decoding
  (beam search keeps no per-step extras of the winning beam).
  """

  @jax.jit
  def decode(params, inputs, input_lengths):
    init_fn, step_fn = seq2seq.decoding_fns(model, {"params": params}, inputs, input_lengths)
    batch = inputs.shape[0]
    tokens, attention = decoding.greedy_decode(init_fn, step_fn, batch, max_len, BOS_ID, EOS_ID,
                                               PAD_ID)
    if beam_size > 1:
      tokens = decoding.beam_search(init_fn, step_fn, batch, beam_size, max_len, BOS_ID, EOS_ID,
                                    pad_id=PAD_ID)[0]
    return tokens, attention

  return decode


def decode_split(decode, params, source, source_tok, target_tok, config) -> dict[str, Any]:
  """Decodes every example of ``source`` (up to ``config.eval.max_examples``)."""
  if config.eval.max_examples:
    source = [source[i] for i in range(min(len(source), config.eval.max_examples))]
  batches = data.eval_batches(source, source_tok, batch_size=config.eval.batch_size,
                              max_input_len=config.data.max_input_len,
                              max_target_len=config.data.max_target_len,
                              target_tokenizer=target_tok)
  predictions, attentions = [], []
  for batch in batches:
    tokens, attention = decode(params, batch["inputs"], batch["input_lengths"])
    keep = np.asarray(batch["weights"]) > 0
    predictions += [target_tok.decode(row) for row in np.asarray(tokens)[keep]]
    attentions += list(np.asarray(attention)[keep])
  records = [data.decode_example(source[i]) for i in range(len(source))]
  return {"records": records, "predictions": predictions, "attentions": attentions}


def heatmap_examples(records, count: int) -> list[int]:
  """Indices of up to ``count`` records to draw, one per locale of ``HEATMAP_LOCALES`` in that
  order (the first of each locale whose style has no "@" variant)."""
  chosen = []
  for locale in HEATMAP_LOCALES:
    if len(chosen) >= count:
      break
    for i, record in enumerate(records):
      if record["locale"] == locale and "@" not in record["style"]:
        chosen.append(i)
        break
  return chosen


def write_heatmaps(workdir: str, decoded, source_tok, target_tok, count: int) -> list[str]:
  """Alignment heatmaps (output characters x input characters) for test inputs in several
  languages."""
  paths = []
  for i in heatmap_examples(decoded["records"], count):
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
  validate(config)
  start_time = time.perf_counter()
  os.makedirs(workdir, exist_ok=True)
  sources = data.load_dates(split=None, data_dir=config.data.data_dir,
                            config=config.data.dataset_config)
  source_tok, target_tok = load_tokenizers(workdir, sources["train"])
  train_batches, val_batches = make_batches(config, sources, source_tok, target_tok)

  results: dict[str, Any] = {"config": training.config_to_dict(config), "models": {}}
  for attention in config.attentions:
    model = make_model(config, attention, source_tok, target_tok)
    model_start = time.perf_counter()
    state = train_model(config, os.path.join(workdir, attention), model, train_batches,
                        val_batches)
    train_seconds = time.perf_counter() - model_start
    decode = make_decoder(model, config.eval.beam_size, config.data.max_target_len)
    model_results = {"parameters": int(sum(x.size for x in jax.tree.leaves(state.params))),
                     "train_seconds_this_run": round(train_seconds, 1)}
    for split in ("test", "test_long"):
      decoded = decode_split(decode, state.params, sources[split], source_tok, target_tok,
                             config)
      model_results[split] = seq2seq_eval.score(decoded["records"], decoded["predictions"])
      if split == "test" and attention != "none":
        model_results["heatmaps"] = write_heatmaps(
            os.path.join(workdir, attention), decoded, source_tok, target_tok,
            config.eval.num_heatmaps)
    results["models"][attention] = model_results
    print(f"[{attention}] test exact match {model_results['test']['exact_match']:.4f}, "
          f"test_long {model_results['test_long']['exact_match']:.4f}", flush=True)

  results["accuracy_vs_length_png"] = seq2seq_eval.plot_accuracy_vs_length(
      results["models"], os.path.join(workdir, "accuracy_vs_length.png"))
  results["wall_seconds_this_run"] = round(time.perf_counter() - start_time, 1)
  common.write_eval_json(workdir, results)
  return results



if __name__ == "__main__":
  common.launch(run, "seq2seq")
