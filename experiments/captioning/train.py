r"""Image captioning with soft attention (Show, Attend and Tell) on the shapes captions dataset.

Trains a :class:`attention_jax.models.captioning.Captioner` (CNN grid, attention LSTM with the
gating scalar and the doubly stochastic regulariser), decodes the test split and writes into
``--workdir``:

  checkpoints/, metrics.jsonl   the run (resumed automatically)
  eval.json                     BLEU-1..4, exact-caption accuracy, attention localisation against
                                the uniform-map baseline, wall time; ``test`` decoded with
                                ``eval.beam_size`` and, when that is > 1, ``test_greedy``
  attention_<i>.png             the image, then each generated word's attention over it
  captions.png                  a grid of test images with their generated captions

With ``--config.data.dataset=coco_captions`` (or the ``:coco`` preset) the same model trains on a
TFDS catalog captioning dataset read through ``tfds.data_source`` (internet needed the first
time): BLEU is computed against all references of an image, localisation is skipped (the
catalog has no box per generated word).
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
from attention_jax.data import shapes_captions
from attention_jax.data.tokenizers import BOS_ID, EOS_ID, PAD_ID
from attention_jax.models import captioning

from . import catalog
from . import config as config_lib
from . import evaluation
from .config import CATALOG, EMBEDDED, image_size


def make_model(config,
               vocab_size: int = shapes_captions.WordTokenizer.vocab_size) -> captioning.Captioner:
  m = config.model
  return captioning.Captioner(
      vocab_size=vocab_size, embed_dim=m.embed_dim, hidden_dim=m.hidden_dim,
      attention_dim=m.attention_dim, channels=tuple(m.channels), strides=tuple(m.strides),
      gate=m.gate, coordinates=m.coordinates, dropout_rate=m.dropout_rate,
      init_dropout_rate=m.init_dropout_rate, coverage=m.coverage,
      grid_coordinates=m.grid_coordinates, normalize=m.normalize, attention=m.attention,
      context_pool=m.context_pool, expected_context_prob=m.expected_context_prob)


def split_arrays(config, split: str) -> dict[str, np.ndarray]:
  """A split's images, boxes and teacher-forcing arrays (the datasets fit in memory)."""
  source = shapes_captions.load_shapes_captions(split, config.data.data_dir,
                                                config.data.dataset_config)
  arrays = shapes_captions.load_arrays(source)
  arrays.update(shapes_captions.encode_captions(list(arrays["caption"]),
                                                config.data.max_caption_len,
                                                tokenizer=embedded_tokenizer(config)))
  return arrays


def scene(config) -> str:
  """The embedded dataset's scene: "hard" for its hard configs, else "default"."""
  return "hard" if config.data.dataset_config.startswith("hard") else "default"


def embedded_tokenizer(config) -> shapes_captions.WordTokenizer:
  """The word tokenizer of the embedded dataset's scene."""
  return shapes_captions.tokenizer_for(scene(config))


class CatalogSplit:
  """A catalog split for the loop: lazy images, references, and teacher-forcing batches.

  Training batches use one reference per image, chosen by ``(epoch + row) mod references``, so
  every reference is seen over the epochs; captions longer than ``max_len - 1`` words are cut.
  """

  def __init__(self, captions: catalog.CatalogCaptions, tokenizer: catalog.CaptionVocabulary,
               max_len: int):
    self.captions, self.tokenizer, self.max_len = captions, tokenizer, max_len

  def __len__(self) -> int:
    return len(self.captions)

  def take(self, rows, epoch: int = 0) -> dict[str, np.ndarray]:
    images, references = self.captions.read(rows)
    chosen = [refs[(epoch + int(r)) % len(refs)] if refs else ""
              for r, refs in zip(rows, references)]
    words = [" ".join(catalog.caption_words(c)[:self.max_len - 1]) for c in chosen]
    encoded = _encode(self.tokenizer, words, self.max_len)
    return {"image": images, **encoded}


def _encode(tokenizer, captions, max_len: int) -> dict[str, np.ndarray]:
  n = len(captions)
  inputs = np.full((n, max_len), PAD_ID, np.int32)
  targets = np.full((n, max_len), PAD_ID, np.int32)
  for i, text in enumerate(captions):
    ids = tokenizer.encode(text, add_eos=True)
    targets[i, :len(ids)] = ids
    inputs[i, :len(ids)] = [BOS_ID] + ids[:-1]
  return {"decoder_inputs": inputs, "targets": targets, "target_mask": targets != PAD_ID}


def load_catalog(config):
  """``(train, validation, test, tokenizer)`` of a catalog dataset: :class:`CatalogSplit` each,
  the vocabulary built from the references of the first ``data.vocab_examples`` train images."""
  splits = CATALOG[config.data.dataset]
  sources = [catalog.CatalogCaptions(catalog.load_catalog_captions(config.data.dataset, s,
                                                         config.data.data_dir),
                                image_size(config)) for s in splits]
  rows = range(min(len(sources[0]), config.data.vocab_examples))
  texts = [t for refs in sources[0].references(rows) for t in refs]
  tokenizer = catalog.CaptionVocabulary.build(texts, config.data.vocab_size)
  return (*(CatalogSplit(s, tokenizer, config.data.max_caption_len) for s in sources), tokenizer)


def batch_at(data, batch_size: int, seed: int, step: int) -> dict[str, np.ndarray]:
  """The batch of ``step``: a pure function of (seed, step), each epoch a fresh permutation.
  ``data`` is a split's arrays (dict) or a :class:`CatalogSplit`."""
  n = len(data) if isinstance(data, CatalogSplit) else len(data["image"])
  per_epoch = n // batch_size
  if per_epoch == 0:
    raise ValueError(f"batch_size {batch_size} exceeds the {n} training examples")
  epoch, offset = divmod(step, per_epoch)
  order = np.random.default_rng((seed, epoch)).permutation(n)
  rows = order[offset * batch_size:(offset + 1) * batch_size]
  if isinstance(data, CatalogSplit):
    return data.take(rows, epoch)
  return {k: data[k][rows] for k in ("image", "decoder_inputs", "targets", "target_mask")}


BASELINE = "reward_baseline"  # the moving-average baseline of hard attention, kept in params


def content_targets(targets, tokenizer) -> jax.Array:
  """``[B, T]`` bool: the steps whose target is a content word (size, colour, shape)."""
  ids = [i for i, w in enumerate(tokenizer.words) if w in shapes_captions.CONTENT_WORDS]
  return jnp.isin(targets, jnp.asarray(ids, targets.dtype))


def losses(model, params, batch, penalty: float, deterministic: bool, rng=None,
           reinforce_weight: float = 1.0, entropy_weight: float = 0.0,
           continuity_weight: float = 0.0, tokenizer=None, reinforce_reward: str = "caption",
           reinforce_samples: int = 1):
  """``(loss, sums)``: token cross-entropy + ``penalty * mean_b doubly_stochastic_penalty``
  (+ ``continuity_weight`` times :func:`captioning.phrase_continuity_penalty` summed over the
  batch and divided by the token count, when > 0; ``tokenizer`` says which words are content).

  With hard attention and not ``deterministic``, the caption term is
  :func:`captioning.reinforce_surrogate_per_step` over the sampled locations (its sum over the
  batch divided by the token count, as the cross-entropy), credited with ``reinforce_reward``
  (:func:`captioning.reinforce_rewards`). With ``reinforce_samples = K > 1`` every caption is
  decoded ``K`` times and each sample's baseline is the mean of its ``K - 1`` siblings;
  otherwise ``params`` holds the moving-average baseline ``b`` under ``BASELINE`` that
  :func:`with_baseline_update` keeps from ``reward_sum`` (``sum_b log p(y | s~)``): the mean
  caption log-likelihood for the caption reward, the mean per word for the reward to go, whose
  step ``t`` is then compared with ``b`` times the words left from ``t`` (known before any
  sample, so the estimate stays unbiased).
  """
  params = dict(params)
  baseline = params.pop(BASELINE, None)
  rngs = None
  if rng is not None:  # the dropout rng as before hard attention existed
    rngs = {"dropout": rng, "sample": jax.random.fold_in(rng, 1)}
  hard = model.attention == "hard" and not deterministic
  samples = reinforce_samples if hard else 1
  logits, used, probs = model.apply({"params": params}, batch["image"], batch["decoder_inputs"],
                                    deterministic=deterministic, return_probs=True, rngs=rngs,
                                    num_samples=samples)
  targets, mask = batch["targets"], batch["target_mask"]
  if samples > 1:
    targets, mask = (jnp.repeat(x, samples, axis=0) for x in (targets, mask))
  sums = training.classification_sums(logits, targets, mask)
  reg = captioning.doubly_stochastic_penalty(probs, mask)
  tokens = jnp.maximum(sums["token_count"], 1.0)
  extra = {}
  if hard:
    log_p = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    picked = jnp.take_along_axis(log_p, targets[..., None], axis=-1)[..., 0]
    token_log_likelihood = picked * mask
    step_log_probs = captioning.hard_attention_step_log_probs(used, probs, mask)
    entropy = captioning.attention_entropy(probs, mask)
    rewards = captioning.reinforce_rewards(token_log_likelihood, reinforce_reward)
    if samples > 1:
      baseline = captioning.leave_one_out_baseline(rewards, samples)
    elif baseline is None:
      baseline = 0.0
    elif reinforce_reward == "to_go":  # b per word, times the words left
      baseline = baseline * captioning.suffix_sum(mask.astype(jnp.float32))
    surrogate = captioning.reinforce_surrogate_per_step(
        token_log_likelihood, step_log_probs, entropy, baseline, reinforce_reward,
        reinforce_weight, entropy_weight)
    caption_loss = surrogate.sum() / tokens
    extra = {"reward_sum": jnp.sum(token_log_likelihood), "attention_entropy_sum": jnp.sum(entropy)}
  else:
    caption_loss = sums["loss_sum"] / tokens
  loss = caption_loss + penalty * reg.mean()
  if continuity_weight > 0:
    content = content_targets(targets, tokenizer or shapes_captions.WordTokenizer())
    moved = captioning.phrase_continuity_penalty(probs, content, mask)
    loss = loss + continuity_weight * moved.sum() / tokens
    extra["attention_moved_sum"] = moved.sum()
  return loss, {**sums, "attention_penalty_sum": reg.sum(), **extra,
                "example_count": jnp.float32(reg.shape[0])}


_DENOMINATORS = {"attention_penalty_sum": "example_count", "reward_sum": "example_count",
                 "attention_entropy_sum": "example_count", "attention_moved_sum": "example_count"}


def loss_weights(config, tokenizer=None) -> dict[str, Any]:
  """The keyword arguments of :func:`losses` that the config sets (besides the penalty)."""
  m = config.model
  return dict(reinforce_weight=float(m.reinforce_weight),
              entropy_weight=float(m.entropy_weight),
              continuity_weight=(float(m.continuity_weight)
                                 if config.data.dataset == EMBEDDED else 0.0),
              tokenizer=tokenizer, reinforce_reward=str(m.reinforce_reward),
              reinforce_samples=int(m.reinforce_samples))


def initial_baseline(config) -> jax.Array | None:
  """Hard attention's moving-average baseline before the first step (a scalar); None without
  one (other attention, or ``reinforce_samples > 1``, whose baseline is the siblings' mean)."""
  m = config.model
  if m.attention != "hard" or m.reinforce_samples > 1:
    return None
  return jnp.zeros((), jnp.float32)


def with_baseline_update(train_step, decay: float, per_word: bool = False):
  """Wraps ``training.make_train_step(loss_fn, jit=False)``: after each update the baseline in
  the parameters becomes ``decay * b + (1 - decay) * r`` (Xu et al.'s moving average; the first
  step sets it to ``r``), ``r`` the batch's mean ``log p(y | s~)`` per caption, or per word when
  ``per_word`` (the reward to go). The loss never lets a gradient reach it."""
  count = "token_count" if per_word else "example_count"

  def step(state, batch):
    new_state, sums = train_step(state, batch)
    reward = sums["reward_sum"] / sums[count]
    old = state.params[BASELINE]
    baseline = jnp.where(state.step == 0, reward, decay * old + (1.0 - decay) * reward)
    params = {**new_state.params, BASELINE: baseline.astype(old.dtype)}
    return new_state.replace(params=params), sums

  jitted = jax.jit(step, donate_argnums=(0,))
  jitted.unjitted = step  # what training.train re-jits with the mesh's shardings
  jitted.donate = True
  return jitted


def baseline_update(config):
  """``train_step -> train_step`` with the config's moving-average baseline update."""
  m = config.model
  return lambda step: with_baseline_update(step, float(m.baseline_decay),
                                           per_word=m.reinforce_reward == "to_go")


def train_model(config, workdir: str, model, train_arrays, val_arrays, tokenizer=None):
  """Trains (or resumes) in ``workdir``; returns the final train state."""
  example = batch_at(train_arrays, config.batch_size, config.seed, 0)
  params = model.init(jax.random.key(config.seed), example["image"],
                      example["decoder_inputs"])["params"]
  baseline = initial_baseline(config)
  if baseline is not None:
    params = {**params, BASELINE: baseline}
  tx, schedule = training.make_optimizer(config)
  penalty = float(config.model.attention_penalty)
  weights = loss_weights(config, tokenizer)

  def loss_fn(params, batch, rng):
    return losses(model, params, batch, penalty, deterministic=False, rng=rng, **weights)

  def metrics_fn(params, batch):
    return losses(model, params, batch, penalty, deterministic=True, **weights)[1]

  if baseline is not None:
    train_step = baseline_update(config)(training.make_train_step(loss_fn, jit=False))
  else:
    train_step = training.make_train_step(loss_fn)
  eval_step = training.make_eval_step(metrics_fn)
  size = config.eval.batch_size
  keys = ("image", "decoder_inputs", "targets", "target_mask")
  if isinstance(val_arrays, CatalogSplit):  # the first 1,000 validation images
    count = min(len(val_arrays), 1000)
    val_batches = [val_arrays.take(np.arange(i, min(i + size, count)))
                   for i in range(0, count, size)]
  else:
    val_batches = [{k: val_arrays[k][i:i + size] for k in keys}
                   for i in range(0, len(val_arrays["image"]), size)]
  return training.train(
      config, workdir,
      lambda: training.create_train_state(params, tx, seed=config.seed + 1, apply_fn=model.apply),
      train_step,
      lambda step: batch_at(train_arrays, config.batch_size, config.seed, step),
      eval_fn=lambda state: training.evaluate(eval_step, state, val_batches,
                                              denominators=_DENOMINATORS),
      learning_rate_fn=schedule, metric_denominators=_DENOMINATORS)


def model_params(params):
  """The model's parameters (without hard attention's baseline)."""
  return {k: v for k, v in params.items() if k != BASELINE}


def make_decoder(model, beam_size: int, max_len: int):
  """A jitted ``(params, images) -> (tokens [B, max_len], attention [B, max_len, N])``: greedy
  decoding (``beam_size == 1``) or beam search, the maps those of the returned words (for beam
  search, the attention history of the best beam). For hard attention ``attention`` is the pair
  ``(the one-hot of the location read, the distribution it was chosen from)``."""
  hard = model.attention == "hard"

  @jax.jit
  def decode(params, images):
    init_fn, step_fn = captioning.decoding_fns(model, {"params": params}, images,
                                               with_distributions=hard)
    batch = images.shape[0]
    if beam_size == 1:
      return decoding.greedy_decode(init_fn, step_fn, batch, max_len, BOS_ID, EOS_ID, PAD_ID)
    tokens, _, attention = decoding.beam_search(init_fn, step_fn, batch, beam_size, max_len,
                                                BOS_ID, EOS_ID, pad_id=PAD_ID)
    return tokens, attention

  return decode


def evaluate_test(config, model, params, test, beam_size: int | None = None,
                  tokenizer=None) -> tuple[dict[str, Any], dict[str, Any]]:
  """Decodes the test split (``beam_size`` default ``config.eval.beam_size``); returns
  ``(scores, decoded)``. On a catalog split BLEU uses every reference, a caption is exact when it
  equals one of them, and localisation is skipped (no boxes)."""
  is_catalog = isinstance(test, CatalogSplit)
  n = len(test) if is_catalog else len(test["image"])
  if config.eval.max_examples:
    n = min(n, config.eval.max_examples)
  beam_size = config.eval.beam_size if beam_size is None else beam_size
  decode = make_decoder(model, beam_size, config.data.max_caption_len)
  tok = tokenizer or embedded_tokenizer(config)
  grid = model.grid_shape(image_size(config))
  words, maps, distributions, refs = [], [], [], []
  for i in range(0, n, config.eval.batch_size):
    rows = np.arange(i, min(i + config.eval.batch_size, n))
    if is_catalog:
      images, references = test.captions.read(rows)
      refs += [[catalog.caption_words(r) for r in rs] for rs in references]
    else:
      images = test["image"][rows]
      refs += [[str(c).split()] for c in test["caption"][rows]]
    tokens, attention = decode(params, images)
    if model.attention == "hard":
      attention, probs = attention
      distributions += list(np.asarray(probs).reshape(len(tokens), -1, *grid))
    words += [tok.tokens(row) for row in np.asarray(tokens)]
    maps += list(np.asarray(attention).reshape(len(tokens), -1, *grid))
  scores = {f"bleu_{k}": 100 * evaluation.corpus_bleu_multi(refs, words, k)
            for k in range(1, 5)}
  scores["exact_caption_accuracy"] = float(np.mean([w in r for w, r in zip(words, refs)]))
  scores["decoding"] = "greedy" if beam_size == 1 else f"beam search, beam {beam_size}"
  if is_catalog:
    scores["localisation"] = {"skipped": "the catalog dataset has no box per generated word"}
  else:
    scores["grammatical_fraction"] = float(np.mean(
        [shapes_captions.parses(" ".join(w), scene(config)) for w in words]))
    scores["localisation"] = evaluation.localisation(
        words, maps, test["objects"][:n], test["num_objects"][:n], test["boxes"][:n],
        shapes_captions.IMAGE_SIZE)
    if distributions:  # hard attention: where the distributions' mass lies, beside the choice
      scores["localisation_of_distribution"] = evaluation.localisation(
          words, distributions, test["objects"][:n], test["num_objects"][:n],
          test["boxes"][:n], shapes_captions.IMAGE_SIZE)
  scores["num_examples"] = n
  decoded = {"words": words, "maps": maps, "references": refs}
  if distributions:
    decoded["distributions"] = distributions
  return scores, decoded


def write_figures(workdir: str, config, test, decoded) -> list[str]:
  """``attention_<i>.png`` (image, then each word's map; boxes where known) and
  ``captions.png``."""
  is_catalog = isinstance(test, CatalogSplit)
  count = max(min(config.eval.num_overlays, len(decoded["words"])),
              min(config.eval.num_grid, len(decoded["words"])))
  images = test.captions.images(range(count)) if is_catalog else test["image"][:count]
  paths = []
  for i in range(min(config.eval.num_overlays, len(decoded["words"]))):
    words = decoded["words"][i]
    if len(words) < len(decoded["maps"][i]):
      words = words + ["<eos>"]
    boxes = None if is_catalog else test["boxes"][i, :int(test["num_objects"][i])]
    truth = " ".join(decoded["references"][i][0])
    locations = title_note = None
    shown = decoded["maps"][i]
    if config.model.attention == "hard":  # the distribution, and the cell each word read (red)
      maps = np.asarray(decoded["maps"][i])
      locations = [divmod(int(np.argmax(m)), maps.shape[2]) for m in maps[:len(words)]]
      shown = decoded["distributions"][i]
      title_note = "; heat: a_t; red: the location hard attention chose"
    paths.append(plotting.plot_attention_overlay(
        images[i], shown, words, os.path.join(workdir, f"attention_{i}.png"),
        boxes=boxes, title=f"truth: {truth}{title_note or ''}", locations=locations))
  count = min(config.eval.num_grid, len(decoded["words"]))
  if count:
    paths.append(plotting.plot_caption_grid(
        images[:count], [" ".join(w) for w in decoded["words"][:count]],
        os.path.join(workdir, "captions.png")))
  return paths


def run(config, workdir: str) -> dict[str, Any]:
  """Trains, evaluates on the test split, plots; returns (and writes) the eval results."""
  config_lib.validate(config)
  start_time = time.perf_counter()
  os.makedirs(workdir, exist_ok=True)
  if config.data.dataset == EMBEDDED:
    train_arrays, val_arrays, test = (split_arrays(config, s) for s in shapes_captions.SPLITS)
    tokenizer = embedded_tokenizer(config)
  else:
    train_arrays, val_arrays, test, tokenizer = load_catalog(config)
  model = make_model(config, tokenizer.vocab_size)
  train_start = time.perf_counter()
  state = train_model(config, workdir, model, train_arrays, val_arrays,
                      tokenizer if config.data.dataset == EMBEDDED else None)
  train_seconds = time.perf_counter() - train_start
  eval_start = time.perf_counter()
  params = model_params(state.params)
  scores, decoded = evaluate_test(config, model, params, test, tokenizer=tokenizer)
  results = {"config": training.config_to_dict(config),
             "parameters": int(sum(x.size for x in jax.tree.leaves(params))),
             "train_seconds_this_run": round(train_seconds, 1), "test": scores}
  if config.eval.beam_size > 1:  # greedy beside beam search, same model and images
    results["test_greedy"] = evaluate_test(config, model, params, test, beam_size=1,
                                           tokenizer=tokenizer)[0]
  results["eval_seconds"] = round(time.perf_counter() - eval_start, 1)
  results["examples"] = [{"truth": " ".join(decoded["references"][i][0]),
                          "generated": " ".join(decoded["words"][i])}
                         for i in range(min(10, len(decoded["words"])))]
  results["figures"] = write_figures(workdir, config, test, decoded)
  results["wall_seconds_this_run"] = round(time.perf_counter() - start_time, 1)
  training.write_eval_json(workdir, results)
  for key in ("test", "test_greedy"):
    if key in results:
      print(summary_line(results[key]), flush=True)
  return results


def summary_line(scores) -> str:
  """One line: decoding, BLEU-4, exact captions, localisation against the uniform map."""
  line = (f"test ({scores['decoding']}): BLEU-4 {scores['bleu_4']:.1f}, exact "
          f"{scores['exact_caption_accuracy']:.3f}")
  loc = scores["localisation"]
  if "mean_mass_in_box" in loc:
    line += (f", attention in box {loc['mean_mass_in_box']:.3f} vs uniform "
             f"{loc['uniform_baseline']:.3f}")
  if "mean_cell_mass_in_box" in loc:
    line += (f"; on the box's cells {loc['mean_cell_mass_in_box']:.3f} vs uniform "
             f"{loc['cell_uniform_baseline']:.3f}, pointing {loc['pointing_accuracy']:.3f}")
  return line


