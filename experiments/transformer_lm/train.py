r"""A character-level Transformer language model, against a bigram baseline.

Trains :class:`DecoderOnlyLM` on text present on every machine (default: the ``.py`` sources of
the running interpreter's standard library; ``data.source="files"`` with ``data.paths`` for any
text files, or ``"tiny_shakespeare"`` from TFDS), and writes into ``--workdir``:

  checkpoints, metrics.jsonl   the run (resumed automatically)
  tokenizer.json               the character vocabulary
  eval.json                    validation loss and bits per character, the bigram baseline's,
                               tokens per second in training and in generation, parameters
  samples.txt                  generated continuations of the config's prompts (KV cache)
  attention_layer<i>.png       every head's attention map over one prompt, one file per layer


``data.batching``: ``"windows"`` (default) trains on random windows of the text; ``"packed"`` and
``"padded"`` on whole documents (runs of text between blank lines), several per row with segment
ids or one per row with padding: ``benchmarks/packing.py`` compares the two.

On several devices (docs/scaling.md): ``--config.mesh.data``, ``--config.mesh.fsdp`` and
``--config.mesh.sequence`` (the context split over devices with ring attention).
"""

from __future__ import annotations

import functools
import glob
import math
import os
import sysconfig
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from attention_jax import data
from attention_jax import plotting
from attention_jax import training
from attention_jax.models import transformer

from . import config as config_lib

# ----------------------------------------------------------------------------------------------
# Data


def stdlib_files() -> list[str]:
  """The standard library's ``.py`` files, sorted (site-packages excluded)."""
  root = sysconfig.get_paths()["stdlib"]
  files = glob.glob(os.path.join(root, "**", "*.py"), recursive=True)
  return sorted(f for f in files if "site-packages" not in f and "dist-packages" not in f)


def load_text(config) -> str:
  """Up to ``data.max_chars`` characters of the configured source."""
  source = config.data.source
  if source == "tiny_shakespeare":
    import tensorflow_datasets as tfds  # needs the internet and TensorFlow the first time
    split = tfds.as_numpy(tfds.load("tiny_shakespeare", split="train",
                                    data_dir=config.data.data_dir))
    return next(iter(split))["text"].decode("utf-8")[:config.data.max_chars]
  paths = stdlib_files() if source == "stdlib" else list(config.data.paths)
  parts, total = [], 0
  for path in paths:
    with open(path, encoding="utf-8", errors="replace") as f:
      part = f.read()
    parts.append(part)
    total += len(part)
    if total >= config.data.max_chars:
      break
  text = "".join(parts)[:config.data.max_chars]
  if len(text) < 1000:
    raise ValueError(f"only {len(text)} characters of text from {source}: {paths[:3]}...")
  return text


def load_tokenizer(workdir: str, text: str, min_count: int) -> data.CharTokenizer:
  """Characters seen at least ``min_count`` times; kept in the workdir so resuming reads the same
  ids."""
  path = os.path.join(workdir, "tokenizer.json")
  if os.path.exists(path):
    return data.CharTokenizer.load(path)
  chars, counts = np.unique(np.frombuffer(text.encode("utf-32-le"), np.uint32),
                            return_counts=True)
  tokenizer = data.CharTokenizer(chr(c) for c, n in zip(chars, counts) if n >= min_count)
  os.makedirs(workdir, exist_ok=True)
  tokenizer.save(path)
  return tokenizer


def split_ids(tokenizer: data.CharTokenizer, text: str, validation_fraction: float):
  """``(train_ids, val_ids)`` int32: the last ``validation_fraction`` of the text validates."""
  ids = np.asarray(tokenizer.encode(text), np.int32)
  cut = int(len(ids) * (1 - validation_fraction))
  return ids[:cut], ids[cut:]


def make_batch(ids: np.ndarray, seed: int, step: int, batch_size: int, context: int,
               rows: slice | None = None):
  """Random windows, a pure function of ``(seed, step)``: ``inputs``/``targets`` int32
  ``[batch, context]`` with ``targets`` shifted by one; ``rows`` reads only those rows of the
  batch (a process's share when several train together)."""
  rng = np.random.default_rng([seed, step])
  starts = rng.integers(0, len(ids) - context - 1, batch_size)
  if rows is not None:
    starts = starts[rows]
  windows = ids[starts[:, None] + np.arange(context + 1)]
  return {"inputs": windows[:, :-1], "targets": windows[:, 1:]}


def split_documents(ids: np.ndarray, newline_id: int, context: int) -> list[np.ndarray]:
  """The id stream cut into documents: runs of text that end at a blank line (two newlines), each
  cut again into pieces of at most ``context + 1`` ids (an input row and its next-token targets);
  pieces of fewer than 2 ids are dropped."""
  blank = np.flatnonzero((ids[:-1] == newline_id) & (ids[1:] == newline_id)) + 2
  docs = []
  for doc in np.split(ids, blank):
    for start in range(0, len(doc), context + 1):
      piece = doc[start:start + context + 1]
      if len(piece) >= 2:
        docs.append(piece)
  return docs


def document_batches(docs: list[np.ndarray], mode: str, batch_size: int, context: int,
                     seed: int) -> data.packing.RowBatches:
  """Training batches of whole documents by step, a pure function of ``(seed, step)`` like
  :func:`make_batch`: ``inputs``/``targets``/``segment_ids``/``positions``/``weights``
  ``[batch, context]`` (:mod:`attention_jax.data.packing`).

  ``mode="packed"``: several documents per row (grain's first-fit packing, attention kept within
  each by the segment ids); ``"padded"``: one document per row.
  """
  if mode == "packed":
    rows = data.packing.packed_lm_rows(docs, length=context, seed=seed)
  elif mode == "padded":
    rows = data.packing.padded_lm_rows(docs, length=context)
  else:
    raise ValueError(f"mode must be 'packed' or 'padded', got {mode!r}")
  return data.packing.RowBatches(rows, batch_size, seed)


def validation_batches(config, val_ids: np.ndarray, newline_id: int):
  """The validation batches: random windows, or (document batching) the validation documents
  one per row, the same set whether training packs or pads."""
  context, size = config.model.context, config.eval.batch_size
  if config.data.batching == "windows":
    return [make_batch(val_ids, 10_000 + config.seed, i, size, context)
            for i in range(config.eval.num_batches)]
  docs = split_documents(val_ids, newline_id, context)
  batches = data.padded_lm_batches(docs, length=context, batch_size=size)
  return [batch for _, batch in zip(range(config.eval.num_batches), batches)]


def bigram_loss(train_ids: np.ndarray, val_ids: np.ndarray, vocab_size: int,
                alpha: float = 1.0) -> float:
  """Validation cross-entropy (nats per character) of an add-``alpha`` bigram model."""
  counts = np.zeros((vocab_size, vocab_size), np.float64)
  np.add.at(counts, (train_ids[:-1], train_ids[1:]), 1.0)
  probs = (counts + alpha) / (counts + alpha).sum(-1, keepdims=True)
  return float(-np.log(probs[val_ids[:-1], val_ids[1:]]).mean())


# ----------------------------------------------------------------------------------------------
# Model, training, generation


def make_model(config, vocab_size: int) -> transformer.DecoderOnlyLM:
  """The LM; with ``config.mesh.sequence > 1`` its self-attention is ring attention over the
  ``sequence`` mesh axis while training (and the default attention elsewhere)."""
  m = config.model
  return transformer.DecoderOnlyLM(transformer.TransformerConfig(
      vocab_size=vocab_size, features=m.features, num_heads=m.num_heads, mlp_dim=m.mlp_dim,
      num_layers=m.num_layers, max_length=m.context, positions=m.positions,
      pre_norm=m.pre_norm, dropout_rate=m.dropout_rate, tie_embeddings=True,
      dtype=jnp.bfloat16 if m.dtype == "bfloat16" else None,
      implementation="ring" if config.mesh.sequence > 1 else None))


def metric_sums(model: transformer.DecoderOnlyLM, params, batch, rng=None):
  """Cross-entropy sums over the scored positions of ``batch`` (windows, or packed/padded
  documents with their segment ids, positions and weights)."""
  logits = model.apply({"params": params}, batch["inputs"],
                       segment_ids=batch.get("segment_ids"), positions=batch.get("positions"),
                       deterministic=rng is None,
                       rngs=None if rng is None else {"dropout": rng})
  return training.classification_sums(logits, batch["targets"], batch.get("weights"))


def train_model(config, workdir: str, model: transformer.DecoderOnlyLM, get_batch, val_batches):
  params = model.init(jax.random.key(config.seed), get_batch(0)["inputs"][:2])["params"]
  tx, schedule = training.make_optimizer(config)

  def loss_fn(params, batch, rng):
    sums = metric_sums(model, params, batch, rng)
    return sums["loss_sum"] / jnp.maximum(sums["token_count"], 1.0), sums

  eval_step = training.make_eval_step(functools.partial(metric_sums, model))
  return training.train(
      config, workdir,
      lambda: training.create_train_state(params, tx, seed=config.seed + 1,
                                          apply_fn=model.apply),
      training.make_train_step(loss_fn), get_batch,
      eval_fn=lambda state: training.evaluate(eval_step, state, val_batches),
      learning_rate_fn=schedule)


def sample_text(model: transformer.DecoderOnlyLM, params, tokenizer: data.CharTokenizer,
                prompt: str, num_tokens: int, rng, config) -> tuple[str, int]:
  """Continues ``prompt`` by ``num_tokens`` characters; past the context, generation restarts
  from the last half context (same shapes, so the compiled generator is reused). Returns the
  text and the number of generated tokens."""
  context = model.config.max_length
  keep = max(1, context // 2)
  ids = tokenizer.encode(prompt)[-keep:] or [data.tokenizers.UNK_ID]
  out: list[int] = []
  while len(out) < num_tokens:
    window = (ids + out)[-keep:]
    new = min(context - len(window), num_tokens - len(out))
    rng, key = jax.random.split(rng)
    tokens = transformer.generate(
        model, params, jnp.asarray([window], jnp.int32), new, rng=key,
        temperature=config.sample.temperature, top_k=config.sample.top_k or None,
        top_p=config.sample.top_p if config.sample.top_p < 1 else None)
    out += np.asarray(tokens)[0].tolist()
  return prompt + tokenizer.decode(out), len(out)


def generation_speed(model: transformer.DecoderOnlyLM, params, config,
                     batch_size: int = 1) -> float:
  """Generated tokens per second, greedy with the KV cache, after compilation."""
  context = model.config.max_length
  new = context - 1
  prompt = jnp.full((batch_size, 1), data.tokenizers.UNK_ID + 1, jnp.int32)
  transformer.generate(model, params, prompt, new).block_until_ready()  # compile
  start = time.perf_counter()
  repeats = 3
  for _ in range(repeats):
    transformer.generate(model, params, prompt, new).block_until_ready()
  return repeats * new * batch_size / (time.perf_counter() - start)


def _label(c: str) -> str:
  return {"\n": "\\n", " ": "␣", "\t": "\\t"}.get(c, c)


def write_attention_maps(workdir: str, model: transformer.DecoderOnlyLM, params,
                         tokenizer: data.CharTokenizer, prompt: str) -> list[str]:
  """One PNG per layer with every head's attention map (queries x keys) over ``prompt``."""
  ids = tokenizer.encode(prompt)[:model.config.max_length]
  _, state = model.apply({"params": params}, jnp.asarray([ids], jnp.int32), sow_weights=True,
                         mutable=["intermediates"])
  labels = [_label(c) for c in tokenizer.tokens(ids)]
  paths = []
  for i in range(model.config.num_layers):
    weights = state["intermediates"]["decoder"][f"layer_{i}"]["attention"]["attention_weights"]
    paths.append(plotting.plot_attention_grid(
        np.asarray(weights[0][0]), os.path.join(workdir, f"attention_layer{i}.png"),
        x_labels=labels, y_labels=labels, suptitle=f"layer {i}: every head over {prompt!r}"))
  return paths


def run(config, workdir: str) -> dict[str, Any]:
  """Trains (or resumes), evaluates against the bigram baseline, samples, plots."""
  config_lib.validate(config)
  start_time = time.perf_counter()
  os.makedirs(workdir, exist_ok=True)
  text = load_text(config)
  tokenizer = load_tokenizer(workdir, text, config.data.min_char_count)
  train_ids, val_ids = split_ids(tokenizer, text, config.data.validation_fraction)
  context = config.model.context
  newline_id = tokenizer.encode("\n")[0]
  val_batches = validation_batches(config, val_ids, newline_id)
  if config.data.batching == "windows":
    get_batch = functools.partial(make_batch, train_ids, config.seed,
                                  batch_size=config.batch_size, context=context)
    padding = 0.0
  else:
    get_batch = document_batches(split_documents(train_ids, newline_id, context),
                                 config.data.batching, config.batch_size, context, config.seed)
    padding = get_batch.padding_fraction()

  model = make_model(config, tokenizer.vocab_size)
  train_start = time.perf_counter()
  state = train_model(config, workdir, model, get_batch, val_batches)
  train_seconds = time.perf_counter() - train_start
  log = training.read_jsonl(os.path.join(workdir, "metrics.jsonl"))
  steps_per_sec = [row["steps_per_sec"] for row in log
                   if row.get("split") == "train" and "steps_per_sec" in row]
  median_steps_per_sec = float(np.median(steps_per_sec)) if steps_per_sec else None

  eval_step = training.make_eval_step(functools.partial(metric_sums, model))
  val = training.evaluate(eval_step, state, val_batches)
  bigram = bigram_loss(train_ids, val_ids, tokenizer.vocab_size)
  rng = jax.random.key(config.seed + 2)
  samples = []
  for prompt in config.sample.prompts:
    rng, key = jax.random.split(rng)
    samples.append(sample_text(model, state.params, tokenizer, prompt, config.sample.num_tokens,
                               key, config)[0])
  with open(os.path.join(workdir, "samples.txt"), "w", encoding="utf-8") as f:
    f.write("\n\n==========\n\n".join(samples) + "\n")

  results = {
      "config": training.config_to_dict(config),
      "characters": {"train": int(len(train_ids)), "validation": int(len(val_ids))},
      "vocab_size": tokenizer.vocab_size,
      "parameters": transformer.count_parameters(state.params),
      "validation_loss": val["loss"],
      "validation_bpc": val["loss"] / math.log(2),
      "validation_accuracy": val.get("accuracy"),
      "bigram_loss": bigram,
      "bigram_bpc": bigram / math.log(2),
      "train_seconds_this_run": round(train_seconds, 1),
      "batching": config.data.batching,
      "padding_fraction": round(padding, 4),
      "train_tokens_per_sec": (round(median_steps_per_sec * config.batch_size * context, 1)
                               if steps_per_sec else None),
      # Positions of real text per second: what packing raises (padding costs compute too).
      "train_real_tokens_per_sec": (
          round(median_steps_per_sec * config.batch_size * context * (1 - padding), 1)
          if steps_per_sec else None),
      "generation_tokens_per_sec": round(generation_speed(model, state.params, config), 1),
      "samples": samples,
      "attention_pngs": write_attention_maps(workdir, model, state.params, tokenizer,
                                             config.sample.attention_prompt),
  }
  results["wall_seconds_this_run"] = round(time.perf_counter() - start_time, 1)
  training.write_eval_json(workdir, results)
  print(f"validation loss {results['validation_loss']:.4f} ({results['validation_bpc']:.3f} bpc)"
        f", bigram {bigram:.4f} ({results['bigram_bpc']:.3f} bpc); train "
        f"{results['train_tokens_per_sec']} tok/s, generation "
        f"{results['generation_tokens_per_sec']} tok/s", flush=True)
  return results


