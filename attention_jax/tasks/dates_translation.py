"""The multilingual dates translation task, shared by ``experiments/seq2seq`` (RNNs with and
without attention) and ``experiments/transformer_seq2seq`` (the Transformer beside the RNN with
additive attention).

* config: :func:`rnn_config` (the RNN's presets), :func:`validate_data_and_eval`,
  :func:`validate_rnn_config`.
* data: :func:`load_tokenizers` (kept in the workdir), :func:`make_batches`.
* the RNN baseline: :func:`make_rnn`, :func:`train_rnn`, :func:`make_rnn_decoder`.
* evaluation: :func:`decode_split`, :func:`score` (exact match and per-character accuracy, also
  by input length), :func:`plot_accuracy_vs_length`, :func:`heatmap_examples`.
"""

from __future__ import annotations

import os
import time
from typing import Any, Callable, Mapping, Sequence

import jax
import matplotlib
import ml_collections
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from attention_jax import data  # noqa: E402
from attention_jax import decoding  # noqa: E402
from attention_jax import training  # noqa: E402
from attention_jax.data.tokenizers import BOS_ID, EOS_ID, PAD_ID  # noqa: E402
from attention_jax.errors import ConfigError  # noqa: E402
from attention_jax.models import seq2seq  # noqa: E402
from attention_jax.plotting.figures import save_figure  # noqa: E402
from attention_jax.training import train_teacher_forced  # noqa: E402

PRESETS = ("default", "quick", "tiny", "gpu")
ATTENTIONS = ("none", "additive", "dot")
DATASET_CONFIGS = ("default", "small")
HEATMAP_LOCALES = ("en", "de", "ko", "ru", "ar", "ja", "fr", "hi", "el", "zh", "th", "fa")
LENGTH_BUCKET = 5  # characters per bucket of the accuracy-by-length curve
MAX_MISTAKES = 20  # wrong predictions listed in eval.json per split, for inspection

# ---------------------------------------------------------------------------------------------
# Config.


def rnn_config(preset: str = "default") -> ml_collections.ConfigDict:
  """The RNN encoder-decoder's config at ``preset`` (default, quick, tiny, gpu): training fields,
  ``data``, ``model`` and ``eval``. ``experiments/seq2seq/config.py`` adds the attention variants
  it compares; ``experiments/transformer_seq2seq/config.py`` trains the additive one beside the
  Transformer."""
  if preset not in PRESETS:
    raise ValueError(f"unknown preset {preset!r}; valid: {', '.join(PRESETS)}")
  config = training.default_training_config()
  config.preset = preset

  config.data = ml_collections.ConfigDict()
  config.data.dataset_config = "default"  # "small" for quick runs; see attention_jax.data.dates
  config.data.data_dir = ml_collections.config_dict.placeholder(str)  # None: TFDS default dir
  config.data.max_input_len = 72  # sized for test_long (sources up to 65 characters)
  config.data.max_target_len = 20  # ISO 8601 target + EOS

  config.model = ml_collections.ConfigDict()
  config.model.embed_dim = 64
  config.model.hidden_dim = 128
  config.model.attention_dim = 128
  config.model.cell_type = "gru"
  config.model.dropout_rate = 0.0

  config.eval = ml_collections.ConfigDict()
  config.eval.batch_size = 250
  config.eval.beam_size = 1  # 1 = greedy
  config.eval.max_examples = 0  # 0 = the whole split
  config.eval.num_heatmaps = 6

  config.batch_size = 64
  config.num_steps = 2500
  config.learning_rate = 3e-3
  config.optimizer = "adam"
  config.schedule = "warmup_cosine"
  config.warmup_steps = 100
  config.end_learning_rate = 1e-4
  config.grad_clip_norm = 1.0
  config.log_every = 100
  config.checkpoint_every = 500
  config.eval_every = 0

  if preset == "default":
    pass
  elif preset == "quick":
    config.num_steps = 600
    config.eval.max_examples = 500
  elif preset == "tiny":
    config.data.dataset_config = "small"
    config.model.embed_dim = 16
    config.model.hidden_dim = 32
    config.model.attention_dim = 32
    config.batch_size = 32
    config.num_steps = 40
    config.learning_rate = 1e-2
    config.warmup_steps = 5
    config.log_every = 10
    config.checkpoint_every = 10
    config.eval.batch_size = 50
    config.eval.max_examples = 100
    config.eval.num_heatmaps = 2
  elif preset == "gpu":
    config.model.embed_dim = 128
    config.model.hidden_dim = 512
    config.model.attention_dim = 512
    config.model.cell_type = "lstm"
    config.batch_size = 256
    config.num_steps = 20_000
    config.learning_rate = 2e-3
    config.warmup_steps = 500
    config.checkpoint_every = 2000
    config.log_every = 200
    config.eval.beam_size = 4
  return config


def _require(ok: bool, field: str, expected: str, value: Any) -> None:
  if not ok:
    raise ConfigError(f"config.{field} must be {expected}, got {value!r}")


def _is_int(value) -> bool:
  return isinstance(value, int) and not isinstance(value, bool)


def validate_data_and_eval(config) -> None:
  """Raises ValueError naming the first bad ``config.data`` or ``config.eval`` field."""
  d, e = config.data, config.eval
  _require(d.dataset_config in DATASET_CONFIGS, "data.dataset_config",
           "one of " + ", ".join(map(repr, DATASET_CONFIGS)), d.dataset_config)
  _require(_is_int(d.max_input_len) and d.max_input_len > 0, "data.max_input_len",
           "> 0", d.max_input_len)
  _require(_is_int(d.max_target_len) and d.max_target_len > 1, "data.max_target_len",
           "> 1", d.max_target_len)
  need_input, need_target = data.dates.required_lengths(d.dataset_config)
  # Checked here, before the data is prepared; the pipeline would find it only afterwards.
  _require(d.max_input_len >= need_input, "data.max_input_len",
           f">= {need_input} (the longest source of dates_translation/{d.dataset_config}, in "
           f"test_long)", d.max_input_len)
  _require(d.max_target_len >= need_target, "data.max_target_len",
           f">= {need_target} (the longest target of dates_translation/{d.dataset_config} "
           f"plus EOS)", d.max_target_len)
  for field in ("batch_size", "beam_size"):
    _require(_is_int(e[field]) and e[field] > 0, f"eval.{field}", "> 0", e[field])
  for field in ("max_examples", "num_heatmaps"):
    _require(_is_int(e[field]) and e[field] >= 0, f"eval.{field}", ">= 0", e[field])


def validate_rnn_config(config) -> None:
  """Raises ValueError naming the first bad field of an :func:`rnn_config` config."""
  training.validate_training_config(config)
  validate_data_and_eval(config)
  m = config.model
  for field in ("embed_dim", "hidden_dim", "attention_dim"):
    _require(_is_int(m[field]) and m[field] > 0, f"model.{field}", "> 0", m[field])
  _require(m.cell_type in ("gru", "lstm"), "model.cell_type", "one of 'gru', 'lstm'", m.cell_type)
  _require(0 <= m.dropout_rate <= 0.9, "model.dropout_rate", "in [0, 0.9]", m.dropout_rate)


# ---------------------------------------------------------------------------------------------
# Data.


def load_tokenizers(workdir: str, train_source, *,
                    joint: bool = False) -> tuple[data.CharTokenizer, data.CharTokenizer]:
  """``(source_tokenizer, target_tokenizer)``: character vocabularies built from the training
  split once and kept in ``workdir/tokenizers/`` so a resumed run (or a later evaluation) reads
  the same ids. With ``joint`` one vocabulary serves both sides (for a model that shares one
  embedding) and is returned twice."""
  keys = {"joint": ("source", "target"), "source": ("source",), "target": ("target",)}
  names = ("joint",) if joint else ("source", "target")
  paths = [os.path.join(workdir, "tokenizers", f"{name}.json") for name in names]
  if all(os.path.exists(p) for p in paths):
    tokenizers = [data.CharTokenizer.load(p) for p in paths]
  else:
    tokenizers = [data.build_char_tokenizer(train_source, keys=keys[name]) for name in names]
    os.makedirs(os.path.dirname(paths[0]), exist_ok=True)
    for tokenizer, path in zip(tokenizers, paths):
      tokenizer.save(path)
  return (tokenizers[0], tokenizers[0]) if joint else (tokenizers[0], tokenizers[1])


def train_input_len(config) -> int:
  """The source length training and validation batches are padded to: their sources have at
  most the dataset's ``max_source_len`` characters by construction (only test_long's are longer,
  which ``data.max_input_len`` is sized for), rounded up to a multiple of 8. Padding them to
  ``max_input_len`` instead made the bidirectional encoder scan about twice the positions (the
  seq2seq training step took 1.47x as long, idle on 2 cores)."""
  bound = data.dates.source_length_bound(config.data.dataset_config)
  return min(config.data.max_input_len, -(-bound // 8) * 8)


def make_batches(config, sources, source_tok, target_tok):
  """``(train_batches, val_batches)``: the training pipeline (``batches[step]``) and the
  validation batches, shaped by ``config.data`` (sources padded to :func:`train_input_len`) and
  the batch sizes of ``config``."""
  lengths = dict(max_input_len=train_input_len(config),
                 max_target_len=config.data.max_target_len, target_tokenizer=target_tok)
  train_batches = data.make_train_batches(sources["train"], source_tok,
                                          batch_size=config.batch_size, seed=config.seed,
                                          **lengths)
  val_batches = data.eval_batches(sources["validation"], source_tok,
                                  batch_size=config.eval.batch_size, **lengths)
  return train_batches, val_batches


# ---------------------------------------------------------------------------------------------
# The RNN encoder-decoder.


def make_rnn(config, attention: str, source_tok, target_tok) -> seq2seq.Seq2Seq:
  return seq2seq.Seq2Seq(
      source_vocab_size=source_tok.vocab_size, target_vocab_size=target_tok.vocab_size,
      attention=attention, embed_dim=config.model.embed_dim, hidden_dim=config.model.hidden_dim,
      attention_dim=config.model.attention_dim, cell_type=config.model.cell_type,
      dropout_rate=config.model.dropout_rate)


def train_rnn(config, workdir: str, model: seq2seq.Seq2Seq, train_batches, val_batches):
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


def make_rnn_decoder(model: seq2seq.Seq2Seq, beam_size: int, max_len: int):
  """A jitted ``(params, inputs, input_lengths) -> (tokens, attention)``: ``[B, max_len]`` and
  ``[B, max_len, S]``.

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


# ---------------------------------------------------------------------------------------------
# Evaluation.


def decode_split(decode: Callable, params, source, source_tok, target_tok,
                 config) -> dict[str, Any]:
  """Decodes every example of ``source`` (up to ``config.eval.max_examples``).

  Args:
    decode: ``(params, inputs, input_lengths) -> tokens [B, T]``, or ``-> (tokens, attention
      [B, T, S])``.

  Returns:
    ``{"records", "predictions", "attentions", "chars_per_second"}``: ``attentions`` one
    ``[T, S]`` array per example (None when ``decode`` returns tokens only);
    ``chars_per_second`` the decoding throughput in output characters + EOS after the first,
    compiling batch (None with a single batch).
  """
  if config.eval.max_examples:
    source = [source[i] for i in range(min(len(source), config.eval.max_examples))]
  batches = data.eval_batches(source, source_tok, batch_size=config.eval.batch_size,
                              max_input_len=config.data.max_input_len,
                              max_target_len=config.data.max_target_len,
                              target_tokenizer=target_tok)
  predictions, attentions, timed_chars, timed_seconds = [], [], 0, 0.0
  for i, batch in enumerate(batches):
    start = time.perf_counter()
    out = decode(params, batch["inputs"], batch["input_lengths"])
    tokens, attention = out if isinstance(out, tuple) else (out, None)
    keep = np.asarray(batch["weights"]) > 0
    texts = [target_tok.decode(row) for row in np.asarray(tokens)[keep]]
    if i > 0:
      timed_seconds += time.perf_counter() - start
      timed_chars += sum(len(t) + 1 for t in texts)
    predictions += texts
    if attention is not None:
      attentions += list(np.asarray(attention)[keep])
  records = [data.decode_example(source[i]) for i in range(len(source))]
  return {"records": records, "predictions": predictions, "attentions": attentions or None,
          "chars_per_second": round(timed_chars / timed_seconds, 1) if timed_seconds else None}


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


def char_matches(prediction: str, target: str) -> int:
  """Positions ``i < len(target)`` where the prediction has the target's character."""
  return sum(p == t for p, t in zip(prediction, target))


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
