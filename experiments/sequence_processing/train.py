r"""Three ways of processing sequences: an RNN, a 1D CNN and self-attention on one long-range task.

The task (:mod:`.input_pipeline`, ``config.task.mode``): which symbol is marked,
``d`` positions before the last token ("recall"), or is it equal to the last token ("match")? The
answer is read at the last position, so ``d`` is how far information has to travel. Three models of about the same parameter count
(:mod:`.classifiers`) are trained with the same budget, then measured.
Into ``--workdir`` go:

  <model>/                     each model's run: checkpoints (resumed automatically), metrics.jsonl
  eval.json                    parameters, accuracy at every distance, the longest distance
                               learned, train throughput / time per step / forward-pass memory at
                               every benchmark length, per model
  accuracy_vs_distance.png     test accuracy against d, one curve per model
  speed_memory_vs_length.png   train examples/s and forward temp memory against sequence length

Memory is XLA's own account of the compiled forward pass
(``jit(f).lower(...).compile().memory_analysis()``: temporaries + arguments + outputs), which
works on CPU and needs no allocation; time is measured on the jitted train step after a warm-up.

"""

from __future__ import annotations

import os
import time
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from attention_jax import training  # noqa: E402
from attention_jax.plotting.figures import save_figure  # noqa: E402

from . import config as config_lib  # noqa: E402
from . import input_pipeline  # noqa: E402
from . import classifiers  # noqa: E402

LABELS = {"rnn": "RNN", "cnn": "1D CNN", "attention": "self-attention"}

def make_task(config) -> input_pipeline.DistanceTask:
  return input_pipeline.DistanceTask(config.task.length, config.task.num_symbols,
                                    mode=config.task.mode)


def make_model(config, name: str, task: input_pipeline.DistanceTask) -> nn.Module:
  vocab_size, classes = task.vocab_size, task.num_classes
  if name == "rnn":
    c = config.rnn
    return classifiers.RecurrentClassifier(vocab_size, classes, c.embed_dim, c.hidden_dim,
                                               c.num_layers, c.cell_type)
  if name == "cnn":
    c = config.cnn
    return classifiers.ConvClassifier(vocab_size, classes, c.width, c.depth, c.kernel_size,
                                          c.dilation_base)
  if name == "attention":
    c = config.attention
    return classifiers.AttentionClassifier(vocab_size, classes, c.width, c.depth,
                                               c.num_heads, c.mlp_dim, c.implementation)
  raise ValueError(f"model name must be one of {config_lib.MODELS}, got {name!r}")


def _loss_fn(model):

  def loss_fn(params, batch, rng):
    del rng  # no dropout
    sums = training.classification_sums(model.apply({"params": params}, batch["inputs"]),
                                        batch["labels"])
    return sums["loss_sum"] / sums["token_count"], sums

  return loss_fn


def _init_state(config, model, length: int, batch_size: int):
  tokens = jnp.ones((batch_size, length), jnp.int32)
  params = model.init(jax.random.key(config.seed), tokens)["params"]
  tx, schedule = training.make_optimizer(config)
  state = training.create_train_state(params, tx, seed=config.seed + 1, apply_fn=model.apply)
  return state, schedule


def train_model(config, workdir: str, model, task):
  """Trains (or resumes) one model in ``workdir``; returns the final train state."""
  _, schedule = _init_state(config, model, task.length, 1)
  return training.train(
      config, workdir, lambda: _init_state(config, model, task.length, 1)[0],
      training.make_train_step(_loss_fn(model)),
      lambda step: task.batch(config.seed, step, config.batch_size),
      learning_rate_fn=schedule)


def accuracy_by_distance(model, params, test_set, batch_size: int) -> dict[int, float]:
  """Test accuracy at every distance of ``test_set`` (from :meth:`DistanceTask.test_set`)."""
  predict = jax.jit(lambda p, x: jnp.argmax(model.apply({"params": p}, x), axis=-1))
  inputs, labels, distances = (test_set[k] for k in ("inputs", "labels", "distances"))
  correct = []
  for start in range(0, len(inputs), batch_size):
    chunk = inputs[start:start + batch_size]
    pad = batch_size - len(chunk)  # one compiled shape: the last chunk is padded and cut
    chunk = np.concatenate([chunk, np.repeat(chunk[:1], pad, axis=0)]) if pad else chunk
    correct.append(np.asarray(predict(params, chunk))[:batch_size - pad]
                   == labels[start:start + batch_size])
  correct = np.concatenate(correct)
  return {int(d): float(correct[distances == d].mean()) for d in np.unique(distances)}


def longest_learned(accuracy: dict[int, float], threshold: float) -> int:
  """The largest ``d`` such that every distance ``1 .. d`` reaches ``threshold`` (0: none)."""
  longest = 0
  for d in sorted(accuracy):
    if d != longest + 1 or accuracy[d] < threshold:
      break
    longest = d
  return longest


def benchmark(config, model, length: int) -> dict[str, float]:
  """Train throughput, time per step and the forward pass's memory at ``length``."""
  batch_size = config.benchmark.batch_size
  task = input_pipeline.DistanceTask(length, config.task.num_symbols, mode=config.task.mode)
  batch = task.batch(config.seed, 0, batch_size)
  state, _ = _init_state(config, model, length, batch_size)
  forward = jax.jit(lambda p, x: model.apply({"params": p}, x))
  memory = forward.lower(state.params, batch["inputs"]).compile().memory_analysis()
  step = training.make_train_step(_loss_fn(model))
  state, sums = step(state, batch)  # compiles
  jax.block_until_ready(sums)
  start = time.perf_counter()
  for _ in range(config.benchmark.timed_steps):
    state, sums = step(state, batch)
  jax.block_until_ready(sums)
  seconds = (time.perf_counter() - start) / config.benchmark.timed_steps
  result = {"length": length, "batch_size": batch_size, "seconds_per_step": seconds,
            "examples_per_second": batch_size / seconds}
  if memory is not None:
    result["forward_temp_bytes"] = int(memory.temp_size_in_bytes)
    result["forward_peak_bytes"] = int(memory.temp_size_in_bytes + memory.argument_size_in_bytes
                                       + memory.output_size_in_bytes)
  return result


def plot_accuracy(models: dict[str, Any], threshold: float, chance: float, path: str) -> str:
  fig, ax = plt.subplots(figsize=(7, 4))
  for name, result in models.items():
    accuracy = result["accuracy_by_distance"]
    distances = sorted(int(d) for d in accuracy)
    ax.plot(distances, [accuracy[d] for d in distances], marker=".",
            label=f"{LABELS[name]} ({result['parameters']:,} params)")
    if name == "cnn":
      ax.axvline(result["receptive_field"] - 1, color="gray", linestyle=":",
                 label="CNN receptive field - 1")
  ax.axhline(threshold, color="gray", linestyle="--", linewidth=0.8)
  ax.axhline(chance, color="black", linewidth=0.5, label="chance")
  ax.set_xlabel("distance d between the marked token and the last token")
  ax.set_ylabel("test accuracy")
  ax.set_ylim(0.0, 1.02)
  ax.set_title("Same training budget: accuracy against dependency length")
  ax.legend(fontsize=8)
  return save_figure(fig, path)


def plot_speed_memory(models: dict[str, Any], path: str) -> str:
  fig, (left, middle, right) = plt.subplots(1, 3, figsize=(14, 4))
  for name, result in models.items():
    rows = result["benchmark"]
    lengths = [r["length"] for r in rows]
    left.plot(lengths, [r["examples_per_second"] for r in rows], marker="o", label=LABELS[name])
    middle.plot(lengths, [1e3 * r["seconds_per_step"] for r in rows], marker="o",
                label=LABELS[name])
    if all("forward_peak_bytes" in r for r in rows):
      right.plot(lengths, [r["forward_peak_bytes"] / 2**20 for r in rows], marker="o",
                 label=LABELS[name])
  batch_size = next(iter(models.values()))["benchmark"][0]["batch_size"]
  for ax, title in ((left, f"train throughput (examples/s, batch {batch_size})"),
                    (middle, "time per train step (ms)"),
                    (right, "forward pass memory (MiB, XLA temp+args+out)")):
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("sequence length")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
  return save_figure(fig, path)


def run(config, workdir: str) -> dict[str, Any]:
  """Trains every model of ``config.models``, evaluates, benchmarks, plots; returns results."""
  config_lib.validate(config)
  start_time = time.perf_counter()
  os.makedirs(workdir, exist_ok=True)
  task = make_task(config)
  test_set = task.test_set(config.seed, config.eval.examples_per_distance)
  results: dict[str, Any] = {"config": training.config_to_dict(config),
                             "device": jax.devices()[0].device_kind, "models": {}}
  for name in config.models:
    model = make_model(config, name, task)
    model_start = time.perf_counter()
    state = train_model(config, os.path.join(workdir, name), model, task)
    train_seconds = time.perf_counter() - model_start
    accuracy = accuracy_by_distance(model, state.params, test_set, config.eval.batch_size)
    model_results = {
        "parameters": classifiers.parameter_count(state.params),
        "train_seconds_this_run": round(train_seconds, 1),
        "test_accuracy": float(np.mean(list(accuracy.values()))),
        "longest_distance_learned": longest_learned(accuracy, config.eval.learned_threshold),
        "accuracy_by_distance": accuracy,
        "benchmark": [benchmark(config, model, n) for n in config.benchmark.lengths],
    }
    if name == "cnn":
      model_results["receptive_field"] = model.receptive_field()
    results["models"][name] = model_results
    print(f"[{name}] {model_results['parameters']:,} params, test accuracy "
          f"{model_results['test_accuracy']:.3f}, longest distance learned "
          f"{model_results['longest_distance_learned']}", flush=True)

  results["accuracy_vs_distance_png"] = plot_accuracy(
      results["models"], config.eval.learned_threshold, 1 / task.num_classes,
      os.path.join(workdir, "accuracy_vs_distance.png"))
  results["speed_memory_vs_length_png"] = plot_speed_memory(
      results["models"], os.path.join(workdir, "speed_memory_vs_length.png"))
  results["wall_seconds_this_run"] = round(time.perf_counter() - start_time, 1)
  training.write_eval_json(workdir, results)
  return results


