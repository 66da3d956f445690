"""Each experiment's ``gpu`` preset as one training step: the experiment's own model, loss and
``training.make_train_step``, at the preset's batch shapes. Two consumers: the lowering tests
(``tests/experiments/test_experiments_gpu_lowering.py``: abstract state from ``jax.eval_shape``,
exported for cuda and tpu, nothing allocated) and ``benchmarks/accelerator.py`` (real state and a
random batch, timed on the device, MFU from XLA's own FLOP count of the compiled step).
"""

from __future__ import annotations

import dataclasses
import types
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from attention_jax import training
from attention_jax.data import shapes_captions
from attention_jax.tasks import dates_translation

#: Token vocabulary of the text presets' random batches (about the character sets they read).
VOCAB = 96


@dataclasses.dataclass
class PresetStep:
  """One experiment's ``gpu`` preset: ``model`` with its ``loss_fn(params, batch, rng)``, the
  ``init_inputs`` ``model.init`` takes (shapes, batch 2), the ``batch`` of one step (shapes) and
  the inclusive upper bound of each integer batch field (``int_high``); ``unit`` and ``per_step``
  say what one step processes."""

  name: str
  config: Any
  model: Any
  loss_fn: Callable
  init_inputs: list[jax.ShapeDtypeStruct]
  batch: dict[str, jax.ShapeDtypeStruct]
  int_high: dict[str, int]
  unit: str
  per_step: int
  #: Parameters the experiment adds beside the model's (hard attention's baseline).
  extra_params: dict[str, Any] = dataclasses.field(default_factory=dict)
  #: Wraps the plain step as the experiment does (hard attention's baseline update).
  wrap_step: Callable[[Callable], Callable] | None = None

  def _init(self, params):
    tx, _ = training.make_optimizer(self.config)
    return training.create_train_state(params, tx, seed=1, apply_fn=self.model.apply)

  def _params(self, key):
    inputs = [jnp.zeros(s.shape, s.dtype) for s in self.init_inputs]
    return {**self.model.init(key, *inputs)["params"], **self.extra_params}

  def abstract_state(self):
    """The train state as shapes (``jax.eval_shape``: nothing allocated)."""
    return jax.eval_shape(lambda key: self._init(self._params(key)), jax.random.key(0))

  def init_state(self, seed: int = 0):
    """The train state, initialised on the default device (compiled: one program)."""
    return jax.jit(lambda key: self._init(self._params(key)))(jax.random.key(seed))

  def train_step(self):
    """The jitted ``(state, batch) -> (state, metric sums)``."""
    step = training.make_train_step(self.loss_fn, jit=False)
    return jax.jit(step if self.wrap_step is None else self.wrap_step(step))

  def with_batch_size(self, batch_size: int) -> "PresetStep":
    """The same step on ``batch_size`` examples (a smoke run on a CPU)."""
    batch = {k: jax.ShapeDtypeStruct((batch_size, *s.shape[1:]), s.dtype)
             for k, s in self.batch.items()}
    per_example = self.per_step // next(iter(self.batch.values())).shape[0]
    return dataclasses.replace(self, batch=batch, per_step=per_example * batch_size)

  def random_batch(self, seed: int = 0) -> dict[str, jax.Array]:
    """Random values of the batch's shapes: integers in ``[0, int_high]`` (lengths from half
    the padded length up), images uniform, masks all true."""
    rng = np.random.default_rng(seed)
    batch = {}
    for name, spec in self.batch.items():
      if spec.dtype == jnp.bool_:
        value = np.ones(spec.shape, bool)
      elif jnp.issubdtype(spec.dtype, jnp.integer):
        high = self.int_high[name]
        value = rng.integers(high // 2 if name.endswith("lengths") else 0, high + 1, spec.shape)
      else:
        value = rng.random(spec.shape)
      batch[name] = jnp.asarray(value, spec.dtype)
    return batch


def _mean_loss(sums):
  return sums["loss_sum"] / jnp.maximum(sums["token_count"], 1.0), sums


def transformer_lm() -> PresetStep:
  from experiments.transformer_lm import config as configs
  from experiments.transformer_lm import train

  config = configs.get_config("gpu")
  model = train.make_model(config, VOCAB)
  shape = (config.batch_size, config.model.context)
  batch = {"inputs": jax.ShapeDtypeStruct(shape, jnp.int32),
           "targets": jax.ShapeDtypeStruct(shape, jnp.int32)}

  def loss_fn(params, batch, rng):
    return _mean_loss(train.metric_sums(model, params, batch, rng))

  return PresetStep("transformer_lm", config, model, loss_fn,
                    [jax.ShapeDtypeStruct((2, shape[1]), jnp.int32)], batch,
                    {"inputs": VOCAB - 1, "targets": VOCAB - 1}, "tokens", shape[0] * shape[1])


def transformer_seq2seq() -> PresetStep:
  from experiments.transformer_seq2seq import config as configs
  from experiments.transformer_seq2seq import train

  config = configs.get_config("gpu")
  model = train.make_model(config, VOCAB)
  src = (config.batch_size, config.data.max_input_len)
  tgt = (config.batch_size, config.data.max_target_len)
  batch = {"inputs": jax.ShapeDtypeStruct(src, jnp.int32),
           "decoder_inputs": jax.ShapeDtypeStruct(tgt, jnp.int32),
           "targets": jax.ShapeDtypeStruct(tgt, jnp.int32),
           "input_lengths": jax.ShapeDtypeStruct(src[:1], jnp.int32)}  # padded pairs

  def loss_fn(params, batch, rng):
    logits = model.apply({"params": params}, batch["inputs"], batch["decoder_inputs"],
                         batch["input_lengths"], deterministic=False, rngs={"dropout": rng})
    return _mean_loss(training.classification_sums(logits, batch["targets"]))

  return PresetStep("transformer_seq2seq", config, model, loss_fn,
                    [jax.ShapeDtypeStruct((2, src[1]), jnp.int32),
                     jax.ShapeDtypeStruct((2, tgt[1]), jnp.int32)], batch,
                    {"inputs": VOCAB - 1, "decoder_inputs": VOCAB - 1, "targets": VOCAB - 1,
                     "input_lengths": src[1]}, "pairs", src[0])


def rnn_seq2seq(attention: str) -> PresetStep:
  from experiments.seq2seq import config as configs

  config = configs.get_config("gpu")
  vocab = types.SimpleNamespace(vocab_size=VOCAB)
  model = dates_translation.make_rnn(config, attention, vocab, vocab)
  src = (config.batch_size, dates_translation.train_input_len(config))
  tgt = (config.batch_size, config.data.max_target_len)
  batch = {"inputs": jax.ShapeDtypeStruct(src, jnp.int32),
           "input_lengths": jax.ShapeDtypeStruct(src[:1], jnp.int32),
           "decoder_inputs": jax.ShapeDtypeStruct(tgt, jnp.int32),
           "targets": jax.ShapeDtypeStruct(tgt, jnp.int32)}

  def loss_fn(params, batch, rng):
    logits, _ = model.apply({"params": params}, batch["inputs"], batch["input_lengths"],
                            batch["decoder_inputs"], deterministic=False, rngs={"dropout": rng})
    return _mean_loss(training.classification_sums(logits, batch["targets"]))

  return PresetStep(f"seq2seq_{attention}", config, model, loss_fn,
                    [jax.ShapeDtypeStruct((2, src[1]), jnp.int32),
                     jax.ShapeDtypeStruct((2,), jnp.int32),
                     jax.ShapeDtypeStruct((2, tgt[1]), jnp.int32)], batch,
                    {"inputs": VOCAB - 1, "decoder_inputs": VOCAB - 1, "targets": VOCAB - 1,
                     "input_lengths": src[1]}, "pairs", src[0])


def sequence_processing(name: str) -> PresetStep:
  from experiments.sequence_processing import config as configs
  from experiments.sequence_processing import train

  config = configs.get_config("gpu")
  task = train.make_task(config)
  model = train.make_model(config, name, task)
  shape = (config.batch_size, config.task.length)
  batch = {"inputs": jax.ShapeDtypeStruct(shape, jnp.int32),
           "labels": jax.ShapeDtypeStruct(shape[:1], jnp.int32)}
  return PresetStep(f"sequence_processing_{name}", config, model, train._loss_fn(model),
                    [jax.ShapeDtypeStruct((2, shape[1]), jnp.int32)], batch,
                    {"inputs": task.vocab_size - 1, "labels": task.num_classes - 1},
                    "sequences", shape[0])


def cnn_self_attention() -> PresetStep:
  from experiments.cnn_self_attention import config as configs
  from experiments.cnn_self_attention import train

  config = configs.get_config("gpu")
  model = train.make_model(config, "cnn_attention", num_classes=2)
  size = config.data.image_size
  batch = {"images": jax.ShapeDtypeStruct((config.batch_size, size, size, 1), jnp.float32),
           "labels": jax.ShapeDtypeStruct((config.batch_size,), jnp.int32)}
  return PresetStep("cnn_self_attention", config, model, train._loss_fn(model),
                    [jax.ShapeDtypeStruct((2, size, size, 1), jnp.float32)], batch,
                    {"labels": 1}, "images", config.batch_size)


def captioning(attention: str) -> PresetStep:
  from experiments.captioning import config as caption_configs
  from experiments.captioning import train

  config = caption_configs.get_config("gpu")
  config.model.attention = attention
  model = train.make_model(config)
  size, length = shapes_captions.IMAGE_SIZE, config.data.max_caption_len
  batch = {"image": jax.ShapeDtypeStruct((config.batch_size, size, size, 3), jnp.uint8),
           "decoder_inputs": jax.ShapeDtypeStruct((config.batch_size, length), jnp.int32),
           "targets": jax.ShapeDtypeStruct((config.batch_size, length), jnp.int32),
           "target_mask": jax.ShapeDtypeStruct((config.batch_size, length), jnp.bool_)}
  penalty = float(config.model.attention_penalty)
  words = len(shapes_captions.WordTokenizer().words)
  m = config.model
  # As train.train_model: the loss's weights, and for hard attention the baseline parameter
  # with its moving-average update after each step.
  weights = train.loss_weights(config)
  baseline = train.initial_baseline(config)
  def loss_fn(params, batch, rng):
    return train.losses(model, params, batch, penalty, deterministic=False, rng=rng, **weights)

  return PresetStep(
      f"captioning_{attention}", config, model, loss_fn,
      [jax.ShapeDtypeStruct((2, size, size, 3), jnp.uint8),
       jax.ShapeDtypeStruct((2, length), jnp.int32)], batch,
      {"image": 255, "decoder_inputs": words - 1, "targets": words - 1}, "images",
      config.batch_size,
      extra_params={} if baseline is None else {train.BASELINE: baseline},
      wrap_step=(None if baseline is None else
                 lambda step: train.baseline_update(config)(step).unjitted))


def all_presets() -> dict[str, Callable[[], PresetStep]]:
  """Every experiment's ``gpu`` preset train step, by name (built on call)."""
  from experiments.seq2seq import config as rnn_configs

  return {"transformer_lm": transformer_lm, "transformer_seq2seq": transformer_seq2seq,
          "cnn_self_attention": cnn_self_attention,
          "captioning_soft": lambda: captioning("soft"),
          "captioning_none": lambda: captioning("none"),
          "captioning_hard": lambda: captioning("hard"),
          **{f"seq2seq_{a}": (lambda a=a: rnn_seq2seq(a))
             for a in rnn_configs.get_config("gpu").attentions},
          **{f"sequence_processing_{n}": (lambda n=n: sequence_processing(n))
             for n in ("rnn", "cnn", "attention")}}
