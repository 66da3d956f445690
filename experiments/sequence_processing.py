r"""Three ways of processing sequences: an RNN, a 1D CNN and self-attention on one long-range task.

The task (:mod:`attention_jax.data.distance_task`, ``config.task.mode``): which symbol is marked,
``d`` positions before the last token ("recall"), or is it equal to the last token ("match")? The
answer is read at the last position, so ``d`` is how far information has to travel. Three models of about the same parameter count
(:mod:`attention_jax.models.sequence_models`) are trained with the same budget, then measured.
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

  python -m experiments.sequence_processing --config=experiments/configs/sequence_processing.py \
      --workdir=runs/sequence_processing
  python -m experiments.sequence_processing \
      --config=experiments/configs/sequence_processing.py:gpu --workdir=runs/seqproc_gpu
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
from attention_jax.data import distance_task  # noqa: E402
from attention_jax.models import sequence_models  # noqa: E402
from experiments import common

MODELS = ("rnn", "cnn", "attention")
LABELS = {"rnn": "RNN", "cnn": "1D CNN", "attention": "self-attention"}

_positive_int = (training.is_int(), training.greater_than(0))
CONFIG_SCHEMA = {
    **training.TRAINING_SCHEMA,
    "task.length": (training.is_int(), training.greater_than(1)),
    "task.num_symbols": (training.is_int(), training.greater_than(1)),
    "task.mode": (training.one_of(*distance_task.MODES),),
    "rnn.cell_type": (training.one_of(*sequence_models.CELL_TYPES),),
    "rnn.embed_dim": _positive_int,
    "rnn.hidden_dim": _positive_int,
    "rnn.num_layers": _positive_int,
    "cnn.width": _positive_int,
    "cnn.depth": _positive_int,
    "cnn.kernel_size": (training.is_int(), training.greater_than(1)),
    "cnn.dilation_base": _positive_int,
    "attention.width": _positive_int,
    "attention.depth": _positive_int,
    "attention.num_heads": _positive_int,
    "attention.mlp_dim": _positive_int,
    "attention.implementation": (training.optional(training.one_of("reference", "flash")),),
    "eval.examples_per_distance": (training.is_int(), training.greater_than(1)),
    "eval.batch_size": _positive_int,
    "eval.learned_threshold": (training.is_number(), training.greater_than(0.5),
                               training.at_most(1.0)),
    "benchmark.batch_size": _positive_int,
    "benchmark.timed_steps": _positive_int,
}


def validate(config) -> None:
  """Raises ValueError naming the first bad field."""
  training.validate_config(config, CONFIG_SCHEMA, cross_checks=_cross_checks)


def _cross_checks(config) -> None:
  training.validate_config(config)
  models = tuple(config.models)
  if not models or any(m not in MODELS for m in models) or len(set(models)) != len(models):
    raise ValueError(f"config.models must be a non-empty tuple of distinct {MODELS}, "
                     f"got {models!r}")
  lengths = tuple(config.benchmark.lengths)
  if not lengths or any(isinstance(n, bool) or not isinstance(n, int) or n < 2 for n in lengths):
    raise ValueError(f"config.benchmark.lengths must be a non-empty tuple of ints >= 2, "
                     f"got {lengths!r}")
  if config.attention.width % config.attention.num_heads:
    raise ValueError(f"config.attention.width ({config.attention.width}) must be divisible by "
                     f"config.attention.num_heads ({config.attention.num_heads})")


def make_task(config) -> distance_task.DistanceTask:
  return distance_task.DistanceTask(config.task.length, config.task.num_symbols,
                                    mode=config.task.mode)


def make_model(config, name: str, task: distance_task.DistanceTask) -> nn.Module:
  vocab_size, classes = task.vocab_size, task.num_classes
  if name == "rnn":
    c = config.rnn
    return sequence_models.RecurrentClassifier(vocab_size, classes, c.embed_dim, c.hidden_dim,
                                               c.num_layers, c.cell_type)
  if name == "cnn":
    c = config.cnn
    return sequence_models.ConvClassifier(vocab_size, classes, c.width, c.depth, c.kernel_size,
                                          c.dilation_base)
  if name == "attention":
    c = config.attention
    return sequence_models.AttentionClassifier(vocab_size, classes, c.width, c.depth,
                                               c.num_heads, c.mlp_dim, c.implementation)
  raise ValueError(f"model name must be one of {MODELS}, got {name!r}")


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
  task = distance_task.DistanceTask(length, config.task.num_symbols, mode=config.task.mode)
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
  validate(config)
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
        "parameters": sequence_models.parameter_count(state.params),
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
  common.write_eval_json(workdir, results)
  return results



if __name__ == "__main__":
  common.launch(run, "sequence_processing")
