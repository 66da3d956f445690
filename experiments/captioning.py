r"""Image captioning with soft attention (Show, Attend and Tell) on the shapes captions dataset.

Trains a :class:`attention_jax.models.captioning.Captioner` (CNN grid, attention LSTM with the
gating scalar and the doubly stochastic regulariser), decodes the test split and writes into
``--workdir``:

  checkpoints/, metrics.jsonl   the run (resumed automatically)
  eval.json                     BLEU-1..4, exact-caption accuracy, attention localisation against
                                the uniform-map baseline, wall time
  attention_<i>.png             the image, then each generated word's attention over it
  captions.png                  a grid of test images with their generated captions

  python -m experiments.captioning --config=experiments/configs/captioning.py --workdir=runs/cap
"""

from __future__ import annotations

import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from attention_jax import decoding
from attention_jax import plotting
from attention_jax import training
from attention_jax.data import shapes_captions as sc
from attention_jax.data.tokenizers import BOS_ID, EOS_ID, PAD_ID
from attention_jax.models import captioning
from experiments import common
from experiments import captioning_eval

CONFIG_SCHEMA = {
    **training.TRAINING_SCHEMA,
    "data.dataset": (training.one_of("shapes_captions"),),
    "data.dataset_config": (training.one_of("default", "small"),),
    "data.max_caption_len": (training.is_int(), training.greater_than(1)),
    "model.embed_dim": (training.is_int(), training.greater_than(0)),
    "model.hidden_dim": (training.is_int(), training.greater_than(0)),
    "model.attention_dim": (training.is_int(), training.greater_than(0)),
    "model.gate": (training.is_bool(),),
    "model.coordinates": (training.is_bool(),),
    "model.dropout_rate": (training.is_number(), training.at_least(0), training.at_most(0.9)),
    "model.attention_penalty": (training.is_number(), training.at_least(0)),
    "eval.batch_size": (training.is_int(), training.greater_than(0)),
    "eval.beam_size": (training.is_int(), training.greater_than(0)),
    "eval.max_examples": (training.is_int(), training.at_least(0)),
    "eval.num_overlays": (training.is_int(), training.at_least(0)),
    "eval.num_grid": (training.is_int(), training.at_least(0)),
}


def validate(config) -> None:
  """Raises ValueError naming the first bad field."""
  training.validate_config(config, CONFIG_SCHEMA, cross_checks=_cross_checks)


def _cross_checks(config) -> None:
  training.validate_config(config)
  if len(config.model.channels) != len(config.model.strides) or not config.model.channels:
    raise ValueError(f"config.model.channels {tuple(config.model.channels)} and "
                     f"config.model.strides {tuple(config.model.strides)} must be non-empty and "
                     "of the same length")
  if sc.IMAGE_SIZE % int(np.prod(config.model.strides)):
    raise ValueError(f"the product of config.model.strides {tuple(config.model.strides)} must "
                     f"divide the image size {sc.IMAGE_SIZE}")


def make_model(config) -> captioning.Captioner:
  m = config.model
  return captioning.Captioner(
      vocab_size=sc.WordTokenizer.vocab_size, embed_dim=m.embed_dim, hidden_dim=m.hidden_dim,
      attention_dim=m.attention_dim, channels=tuple(m.channels), strides=tuple(m.strides),
      gate=m.gate, coordinates=m.coordinates, dropout_rate=m.dropout_rate)


def split_arrays(config, split: str) -> dict[str, np.ndarray]:
  """A split's images, boxes and teacher-forcing arrays (the datasets fit in memory)."""
  source = sc.load_shapes_captions(split, config.data.data_dir, config.data.dataset_config)
  arrays = sc.load_arrays(source)
  arrays.update(sc.encode_captions(list(arrays["caption"]), config.data.max_caption_len))
  return arrays


def batch_at(arrays, batch_size: int, seed: int, step: int) -> dict[str, np.ndarray]:
  """The batch of ``step``: a pure function of (seed, step), each epoch a fresh permutation."""
  n = len(arrays["image"])
  per_epoch = n // batch_size
  if per_epoch == 0:
    raise ValueError(f"batch_size {batch_size} exceeds the {n} training examples")
  epoch, offset = divmod(step, per_epoch)
  order = np.random.default_rng((seed, epoch)).permutation(n)
  rows = order[offset * batch_size:(offset + 1) * batch_size]
  return {k: arrays[k][rows] for k in ("image", "decoder_inputs", "targets", "target_mask")}


def losses(model, params, batch, penalty: float, deterministic: bool, rng=None):
  """``(loss, sums)``: token cross-entropy + ``penalty * mean_b doubly_stochastic_penalty``."""
  logits, weights = model.apply({"params": params}, batch["image"], batch["decoder_inputs"],
                                deterministic=deterministic,
                                rngs=None if rng is None else {"dropout": rng})
  sums = training.classification_sums(logits, batch["targets"], batch["target_mask"])
  reg = captioning.doubly_stochastic_penalty(weights, batch["target_mask"])
  loss = sums["loss_sum"] / jnp.maximum(sums["token_count"], 1.0) + penalty * reg.mean()
  return loss, {**sums, "attention_penalty_sum": reg.sum(),
                "example_count": jnp.float32(reg.shape[0])}


_DENOMINATORS = {"attention_penalty_sum": "example_count"}


def train_model(config, workdir: str, model, train_arrays, val_arrays):
  """Trains (or resumes) in ``workdir``; returns the final train state."""
  example = batch_at(train_arrays, config.batch_size, config.seed, 0)
  params = model.init(jax.random.key(config.seed), example["image"],
                      example["decoder_inputs"])["params"]
  tx, schedule = training.make_optimizer(config)
  penalty = float(config.model.attention_penalty)

  def loss_fn(params, batch, rng):
    return losses(model, params, batch, penalty, deterministic=False, rng=rng)

  def metrics_fn(params, batch):
    return losses(model, params, batch, penalty, deterministic=True)[1]

  eval_step = training.make_eval_step(metrics_fn)
  size = config.eval.batch_size
  keys = ("image", "decoder_inputs", "targets", "target_mask")
  val_batches = [{k: val_arrays[k][i:i + size] for k in keys}
                 for i in range(0, len(val_arrays["image"]), size)]
  return training.train(
      config, workdir,
      lambda: training.create_train_state(params, tx, seed=config.seed + 1, apply_fn=model.apply),
      training.make_train_step(loss_fn),
      lambda step: batch_at(train_arrays, config.batch_size, config.seed, step),
      eval_fn=lambda state: training.evaluate(eval_step, state, val_batches,
                                              denominators=_DENOMINATORS),
      learning_rate_fn=schedule, metric_denominators=_DENOMINATORS)


def make_decoder(model, beam_size: int, max_len: int):
  """A jitted ``(params, images) -> (tokens [B, max_len], attention [B, max_len, N])``; with
  ``beam_size > 1`` the tokens come from beam search and the maps from greedy decoding."""

  @jax.jit
  def decode(params, images):
    init_fn, step_fn = captioning.decoding_fns(model, {"params": params}, images)
    batch = images.shape[0]
    tokens, attention = decoding.greedy_decode(init_fn, step_fn, batch, max_len, BOS_ID, EOS_ID,
                                               PAD_ID)
    if beam_size > 1:
      tokens = decoding.beam_search(init_fn, step_fn, batch, beam_size, max_len, BOS_ID, EOS_ID,
                                    pad_id=PAD_ID)[0]
    return tokens, attention

  return decode


def evaluate_test(config, model, params, test) -> tuple[dict[str, Any], dict[str, Any]]:
  """Decodes the test split; returns ``(scores, decoded)``."""
  n = len(test["image"])
  if config.eval.max_examples:
    n = min(n, config.eval.max_examples)
  decode = make_decoder(model, config.eval.beam_size, config.data.max_caption_len)
  tok = sc.WordTokenizer()
  grid = model.grid_shape(sc.IMAGE_SIZE)
  words, maps = [], []
  for i in range(0, n, config.eval.batch_size):
    tokens, attention = decode(params, test["image"][i:min(i + config.eval.batch_size, n)])
    words += [tok.tokens(row) for row in np.asarray(tokens)]
    maps += list(np.asarray(attention).reshape(len(tokens), -1, *grid))
  refs = [str(c).split() for c in test["caption"][:n]]
  scores = {f"bleu_{k}": 100 * captioning_eval.corpus_bleu(refs, words, k) for k in range(1, 5)}
  scores["exact_caption_accuracy"] = float(np.mean([w == r for w, r in zip(words, refs)]))
  scores["grammatical_fraction"] = float(np.mean(
      [sc.parse_caption(" ".join(w)) is not None for w in words]))
  scores["localisation"] = captioning_eval.localisation(
      words, maps, test["objects"][:n], test["num_objects"][:n], test["boxes"][:n], sc.IMAGE_SIZE)
  scores["num_examples"] = n
  return scores, {"words": words, "maps": maps}


def write_figures(workdir: str, config, test, decoded) -> list[str]:
  paths = []
  for i in range(min(config.eval.num_overlays, len(decoded["words"]))):
    words = decoded["words"][i]
    if len(words) < len(decoded["maps"][i]):
      words = words + ["<eos>"]
    k = int(test["num_objects"][i])
    paths.append(plotting.plot_attention_overlay(
        test["image"][i], decoded["maps"][i], words, os.path.join(workdir, f"attention_{i}.png"),
        boxes=test["boxes"][i, :k], title=f"truth: {test['caption'][i]}"))
  count = min(config.eval.num_grid, len(decoded["words"]))
  if count:
    paths.append(plotting.plot_caption_grid(
        test["image"][:count], [" ".join(w) for w in decoded["words"][:count]],
        os.path.join(workdir, "captions.png")))
  return paths


def run(config, workdir: str) -> dict[str, Any]:
  """Trains, evaluates on the test split, plots; returns (and writes) the eval results."""
  validate(config)
  start_time = time.perf_counter()
  os.makedirs(workdir, exist_ok=True)
  train_arrays, val_arrays, test = (split_arrays(config, s) for s in sc.SPLITS)
  model = make_model(config)
  train_start = time.perf_counter()
  state = train_model(config, workdir, model, train_arrays, val_arrays)
  train_seconds = time.perf_counter() - train_start
  scores, decoded = evaluate_test(config, model, state.params, test)
  results = {"config": training.config_to_dict(config),
             "parameters": int(sum(x.size for x in jax.tree.leaves(state.params))),
             "train_seconds_this_run": round(train_seconds, 1), "test": scores,
             "examples": [{"truth": str(test["caption"][i]),
                           "generated": " ".join(decoded["words"][i])}
                          for i in range(min(10, len(decoded["words"])))]}
  results["figures"] = write_figures(workdir, config, test, decoded)
  results["wall_seconds_this_run"] = round(time.perf_counter() - start_time, 1)
  common.write_eval_json(workdir, results)
  loc = scores["localisation"]
  print(f"test BLEU-4 {scores['bleu_4']:.1f}, exact {scores['exact_caption_accuracy']:.3f}, "
        f"attention in box {loc['mean_mass_in_box']:.3f} vs uniform {loc['uniform_baseline']:.3f}",
        flush=True)
  return results



if __name__ == "__main__":
  common.launch(run, "captioning")
