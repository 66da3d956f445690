r"""A small CNN with and without self-attention (SAGAN's SelfAttention2D) where global context matters.

The task (:mod:`.input_pipeline`): four shapes, one per quadrant; is the top-left
shape the same as the bottom-right one? The two variants are the same CNN (3x3 convs, 2x2 pooling,
global average pooling, a linear head); ``cnn_attention`` adds :class:`layers.SelfAttention2D`
after ``config.model.attention_after`` conv stages, so every position of that feature map can read
every other. Both are trained with the same budget. Into ``--workdir`` go:

  <variant>/                 each run: checkpoints (resumed automatically), metrics.jsonl
  eval.json                  parameters and test accuracy of both, the learned gamma
  attention_maps.png         for a few test images: the image, then where each query position
                             (a marked cell of the attention grid) attends, upsampled over it
"""

from __future__ import annotations

import os
import time
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from attention_jax import layers  # noqa: E402
from attention_jax import training  # noqa: E402
from attention_jax.plotting.figures import save_figure  # noqa: E402

from . import config as config_lib  # noqa: E402
from . import input_pipeline  # noqa: E402

class SmallCnn(nn.Module):
  """``images [batch, H, W, C]`` -> ``logits [batch, num_classes]``.

  One 3x3 conv + ReLU per ``channels`` entry, with 2x2 max pooling between stages (not after the
  last); with ``attention``, :class:`layers.SelfAttention2D` after ``attention_after`` stages;
  then ``head_convs`` 3x3 convs, global average pooling and a linear layer.
  """

  channels: Sequence[int]
  num_classes: int
  attention: bool = False
  attention_after: int = 2
  head_convs: int = 1

  @nn.compact
  def __call__(self, images, *, sow_weights: bool = False):
    images = jnp.asarray(images)
    if images.ndim != 4:
      raise ValueError(f"images must be [batch, H, W, C], got shape {images.shape}")
    x = images
    for i, features in enumerate(self.channels):
      x = nn.relu(nn.Conv(features, (3, 3), name=f"conv_{i}")(x))
      if i + 1 < len(self.channels):
        x = nn.max_pool(x, (2, 2), strides=(2, 2))
      if self.attention and i + 1 == self.attention_after:
        x = layers.SelfAttention2D(name="attention")(x, sow_weights=sow_weights)
    for i in range(self.head_convs):
      x = nn.relu(nn.Conv(self.channels[-1], (3, 3), name=f"head_conv_{i}")(x))
    return nn.Dense(self.num_classes, name="head")(jnp.mean(x, axis=(1, 2)))


class ShapesData:
  """The embedded task: ``train(step)`` and ``test()`` batches of images/labels."""

  num_classes = 2

  def __init__(self, config):
    self.task = input_pipeline.ShapePairs(config.data.image_size, config.data.noise)
    self.seed, self.batch_size = config.seed, config.batch_size
    self.test_set = self.task.test_set(config.seed, config.eval.num_examples)

  def train(self, step: int) -> dict[str, np.ndarray]:
    batch = self.task.batch(self.seed, step, self.batch_size)
    return {"images": batch["images"], "labels": batch["labels"]}

  def test(self) -> dict[str, np.ndarray]:
    return {"images": self.test_set["images"], "labels": self.test_set["labels"]}


class TfdsData:
  """A TFDS catalog image dataset (e.g. cifar10), read with ``tfds.data_source``; its first use
  downloads and prepares it (internet needed). Images scaled to [0, 1]."""

  def __init__(self, config):
    import tensorflow_datasets as tfds  # only this option needs TFDS at run time

    kwargs = dict(data_dir=config.data.data_dir)
    self.train_source = tfds.data_source(config.data.name, split="train", **kwargs)
    self.test_source = tfds.data_source(config.data.name, split="test", **kwargs)
    info = tfds.builder(config.data.name, data_dir=config.data.data_dir).info
    self.num_classes = info.features["label"].num_classes
    self.seed, self.batch_size = config.seed, config.batch_size
    self.num_test = min(config.eval.num_examples, len(self.test_source))

  def _read(self, source, indices) -> dict[str, np.ndarray]:
    records = [source[int(i)] for i in indices]
    return {"images": np.stack([r["image"] for r in records]).astype(np.float32) / 255.0,
            "labels": np.array([r["label"] for r in records], np.int32)}

  def train(self, step: int) -> dict[str, np.ndarray]:
    n = len(self.train_source)
    epoch, offset = divmod(step * self.batch_size, n)
    order = np.random.default_rng([self.seed, epoch]).permutation(n)
    indices = np.take(order, np.arange(offset, offset + self.batch_size), mode="wrap")
    return self._read(self.train_source, indices)

  def test(self) -> dict[str, np.ndarray]:
    return self._read(self.test_source, range(self.num_test))


def make_data(config):
  return ShapesData(config) if config.data.source == "shapes" else TfdsData(config)


def make_model(config, variant: str, num_classes: int) -> SmallCnn:
  if variant not in config_lib.VARIANTS:
    raise ValueError(f"variant must be one of {config_lib.VARIANTS}, got {variant!r}")
  return SmallCnn(tuple(config.model.channels), num_classes, attention=variant == "cnn_attention",
                  attention_after=config.model.attention_after,
                  head_convs=config.model.head_convs)


def _loss_fn(model):

  def loss_fn(params, batch, rng):
    del rng
    sums = training.classification_sums(model.apply({"params": params}, batch["images"]),
                                        batch["labels"])
    return sums["loss_sum"] / sums["token_count"], sums

  return loss_fn


def init_state(config, model, example):
  params = model.init(jax.random.key(config.seed), example["images"][:1])["params"]
  tx, schedule = training.make_optimizer(config)
  return training.create_train_state(params, tx, seed=config.seed + 1,
                                     apply_fn=model.apply), schedule


def test_accuracy(model, params, test, batch_size: int) -> float:
  predict = jax.jit(lambda p, x: jnp.argmax(model.apply({"params": p}, x), axis=-1))
  correct = 0
  for start in range(0, len(test["labels"]), batch_size):
    images = test["images"][start:start + batch_size]
    correct += int(np.sum(np.asarray(predict(params, images))
                          == test["labels"][start:start + batch_size]))
  return correct / len(test["labels"])


def attention_weights(model, params, images) -> np.ndarray:
  """``[batch, h*w, h*w]`` weights of the SelfAttention2D layer (row-major positions)."""
  _, state = model.apply({"params": params}, images, sow_weights=True,
                         mutable=["intermediates"])
  return np.asarray(state["intermediates"]["attention"]["attention_weights"][0])


def plot_attention_maps(images, weights, queries, path: str) -> str:
  """One row per image: the image, then one panel per query position (a red dot) with its
  attention over the grid, upsampled to the image and drawn over it."""
  images, weights = np.asarray(images), np.asarray(weights)
  grid = int(round(np.sqrt(weights.shape[-1])))
  size = images.shape[1]
  scale = size / grid
  rows, cols = len(images), 1 + len(queries)
  fig, axes = plt.subplots(rows, cols, figsize=(2.4 * cols, 2.4 * rows), squeeze=False)
  for r in range(rows):
    picture = images[r] if images.shape[-1] == 3 else images[r, ..., 0]
    axes[r, 0].imshow(picture, cmap="gray", vmin=0, vmax=1)
    axes[r, 0].set_title("image", fontsize=8)
    for c, (qi, qj) in enumerate(queries, start=1):
      if not (0 <= qi < grid and 0 <= qj < grid):
        raise ValueError(f"query ({qi}, {qj}) is outside the {grid}x{grid} attention grid")
      attention = weights[r, qi * grid + qj].reshape(grid, grid)
      attention = np.kron(attention, np.ones((int(scale), int(scale))))
      axes[r, c].imshow(picture, cmap="gray", vmin=0, vmax=1)
      axes[r, c].imshow(attention, cmap="inferno", alpha=0.6)
      axes[r, c].plot([(qj + 0.5) * scale - 0.5], [(qi + 0.5) * scale - 0.5], "o", color="red",
                      markersize=5)
      axes[r, c].set_title(f"query ({qi}, {qj})", fontsize=8)
  for ax in axes.flat:
    ax.set_xticks([])
    ax.set_yticks([])
  return save_figure(fig, path)


def run(config, workdir: str) -> dict[str, Any]:
  """Trains both variants with one budget, scores the test set, draws attention maps."""
  config_lib.validate(config)
  start_time = time.perf_counter()
  os.makedirs(workdir, exist_ok=True)
  data = make_data(config)
  test = data.test()
  results: dict[str, Any] = {"config": training.config_to_dict(config), "variants": {}}
  for variant in config.variants:
    model = make_model(config, variant, data.num_classes)
    _, schedule = init_state(config, model, test)
    variant_start = time.perf_counter()
    state = training.train(
        config, os.path.join(workdir, variant), lambda: init_state(config, model, test)[0],
        training.make_train_step(_loss_fn(model)), data.train, learning_rate_fn=schedule)
    result = {"parameters": int(sum(x.size for x in jax.tree.leaves(state.params))),
              "train_seconds_this_run": round(time.perf_counter() - variant_start, 1),
              "test_accuracy": test_accuracy(model, state.params, test, config.eval.batch_size)}
    if variant == "cnn_attention":
      result["gamma"] = float(state.params["attention"]["gamma"])
      if config.eval.num_maps:
        images = test["images"][:config.eval.num_maps]
        result["attention_maps_png"] = plot_attention_maps(
            images, attention_weights(model, state.params, images), config.eval.queries,
            os.path.join(workdir, "attention_maps.png"))
    results["variants"][variant] = result
    print(f"[{variant}] {result['parameters']:,} params, test accuracy "
          f"{result['test_accuracy']:.3f}", flush=True)
  results["wall_seconds_this_run"] = round(time.perf_counter() - start_time, 1)
  training.write_eval_json(workdir, results)
  return results


