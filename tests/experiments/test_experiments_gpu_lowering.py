"""The ``gpu`` presets of the Transformer experiments, the RNN seq2seq (every attention, and its
beam-search decoder), captioning (soft and no attention) and sequence_processing (RNN, CNN,
attention) lower for cuda and tpu from this CPU host: its
jitted train step (and the LM's decode loop) at the preset's shapes, parameters from
``jax.eval_shape`` (nothing allocated). A model that stops lowering for an accelerator fails CI the
day it happens. Within ``ops.accelerators.lowering_platforms("tpu")`` the TPU program carries
splash attention (``tpu_custom_call``); no program meant for an accelerator carries our CPU
kernel's custom call."""

import re
import types

import jax
import jax.numpy as jnp
import pytest
from jax import export

from attention_jax import training
from attention_jax.models import transformer
from attention_jax.ops import accelerators
from experiments.transformer_lm import config as lm_configs
from experiments.transformer_lm import train as lm_train
from attention_jax.tasks import dates_translation
from attention_jax.data import shapes_captions
from experiments.captioning import config as caption_configs
from experiments.captioning import train as caption_train
from experiments.cnn_self_attention import config as cnn_configs
from experiments.cnn_self_attention import train as cnn_train
from experiments.seq2seq import config as rnn_configs
from experiments.sequence_processing import config as sp_configs
from experiments.sequence_processing import train as sp_train
from experiments.transformer_seq2seq import config as s2s_configs
from experiments.transformer_seq2seq import train as s2s_train

VOCAB = 96
CPU_KERNEL = "attention_jax_cpu_flash"


def _custom_calls(exported) -> set[str]:
  return set(re.findall(r"custom_call @([\w$.-]+)", exported.mlir_module()))


def _train_step_specs(model, config, inputs_spec, loss_fn):
  params = jax.eval_shape(lambda: model.init(jax.random.key(0), *[
      jnp.zeros((2,) + s.shape[1:], s.dtype) for s in inputs_spec])["params"])
  tx, _ = training.make_optimizer(config)
  state = jax.eval_shape(
      lambda p: training.create_train_state(p, tx, seed=1, apply_fn=model.apply), params)
  step = training.make_train_step(loss_fn, jit=False)
  return jax.jit(step), state, params


def _lm():
  config = lm_configs.get_config("gpu")
  model = lm_train.make_model(config, VOCAB)
  shape = (config.batch_size, config.model.context)
  batch = {"inputs": jax.ShapeDtypeStruct(shape, jnp.int32),
           "targets": jax.ShapeDtypeStruct(shape, jnp.int32)}

  def loss_fn(params, batch, rng):
    sums = lm_train.metric_sums(model, params, batch, rng)
    return sums["loss_sum"] / jnp.maximum(sums["token_count"], 1.0), sums

  step, state, params = _train_step_specs(model, config, [batch["inputs"]], loss_fn)
  return model, step, state, params, batch


def _seq2seq():
  config = s2s_configs.get_config("gpu")
  model = s2s_train.make_model(config, VOCAB)
  src = (config.batch_size, config.data.max_input_len)
  tgt = (config.batch_size, config.data.max_target_len)
  batch = {"inputs": jax.ShapeDtypeStruct(src, jnp.int32),
           "decoder_inputs": jax.ShapeDtypeStruct(tgt, jnp.int32),
           "targets": jax.ShapeDtypeStruct(tgt, jnp.int32),
           "input_lengths": jax.ShapeDtypeStruct(src[:1], jnp.int32)}  # padded pairs

  def loss_fn(params, batch, rng):
    logits = model.apply({"params": params}, batch["inputs"], batch["decoder_inputs"],
                         batch["input_lengths"], deterministic=False, rngs={"dropout": rng})
    sums = training.classification_sums(logits, batch["targets"])
    return sums["loss_sum"] / jnp.maximum(sums["token_count"], 1.0), sums

  step, state, params = _train_step_specs(
      model, config, [batch["inputs"], batch["decoder_inputs"]], loss_fn)
  return model, step, state, params, batch


def _sequence_processing(name):
  def build():
    config = sp_configs.get_config("gpu")
    task = sp_train.make_task(config)
    model = sp_train.make_model(config, name, task)
    shape = (config.batch_size, config.task.length)
    batch = {"inputs": jax.ShapeDtypeStruct(shape, jnp.int32),
             "labels": jax.ShapeDtypeStruct(shape[:1], jnp.int32)}
    step, state, params = _train_step_specs(model, config, [batch["inputs"]],
                                            sp_train._loss_fn(model))
    return model, step, state, params, batch
  return build


def _rnn_seq2seq(attention):
  def build():
    config = rnn_configs.get_config("gpu")
    vocab = types.SimpleNamespace(vocab_size=VOCAB)
    model = dates_translation.make_rnn(config, attention, vocab, vocab)
    src = (config.batch_size, config.data.max_input_len)
    tgt = (config.batch_size, config.data.max_target_len)
    batch = {"inputs": jax.ShapeDtypeStruct(src, jnp.int32),
             "input_lengths": jax.ShapeDtypeStruct(src[:1], jnp.int32),
             "decoder_inputs": jax.ShapeDtypeStruct(tgt, jnp.int32),
             "targets": jax.ShapeDtypeStruct(tgt, jnp.int32)}

    def loss_fn(params, batch, rng):
      logits, _ = model.apply({"params": params}, batch["inputs"], batch["input_lengths"],
                              batch["decoder_inputs"], deterministic=False,
                              rngs={"dropout": rng})
      sums = training.classification_sums(logits, batch["targets"])
      return sums["loss_sum"] / jnp.maximum(sums["token_count"], 1.0), sums

    step, state, params = _train_step_specs(
        model, config, [batch["inputs"], batch["input_lengths"], batch["decoder_inputs"]],
        loss_fn)
    return model, step, state, params, batch
  return build


def _captioning(attention):
  def build():
    config = caption_configs.get_config("gpu")
    config.model.attention = attention
    model = caption_train.make_model(config)
    size, length = shapes_captions.IMAGE_SIZE, config.data.max_caption_len
    batch = {"image": jax.ShapeDtypeStruct((config.batch_size, size, size, 3), jnp.uint8),
             "decoder_inputs": jax.ShapeDtypeStruct((config.batch_size, length), jnp.int32),
             "targets": jax.ShapeDtypeStruct((config.batch_size, length), jnp.int32),
             "target_mask": jax.ShapeDtypeStruct((config.batch_size, length), jnp.bool_)}
    penalty = float(config.model.attention_penalty)

    def loss_fn(params, batch, rng):
      return caption_train.losses(model, params, batch, penalty, deterministic=False, rng=rng)

    step, state, params = _train_step_specs(model, config,
                                            [batch["image"], batch["decoder_inputs"]], loss_fn)
    return model, step, state, params, batch
  return build


def _cnn_self_attention():
  config = cnn_configs.get_config("gpu")
  model = cnn_train.make_model(config, "cnn_attention", num_classes=2)
  size = config.data.image_size
  batch = {"images": jax.ShapeDtypeStruct((config.batch_size, size, size, 1), jnp.float32),
           "labels": jax.ShapeDtypeStruct((config.batch_size,), jnp.int32)}
  step, state, params = _train_step_specs(model, config, [batch["images"]],
                                          cnn_train._loss_fn(model))
  return model, step, state, params, batch


EXPERIMENTS = {"transformer_lm": _lm, "cnn_self_attention": _cnn_self_attention, "transformer_seq2seq": _seq2seq,
               "captioning_soft": _captioning("soft"), "captioning_none": _captioning("none"),
               **{f"seq2seq_{attention}": _rnn_seq2seq(attention)
                  for attention in rnn_configs.get_config("gpu").attentions},
               **{f"sequence_processing_{name}": _sequence_processing(name)
                  for name in ("rnn", "cnn", "attention")}}


@pytest.mark.parametrize("experiment", list(EXPERIMENTS))
def test_gpu_preset_train_step_lowers(experiment):
  _, step, state, _, batch = EXPERIMENTS[experiment]()
  exported = export.export(step, platforms=["cuda", "tpu"])(state, batch)  # one module, both
  assert exported.platforms == ("cuda", "tpu")
  assert not any(CPU_KERNEL in name for name in _custom_calls(exported))
  assert len(exported.out_avals) == len(jax.tree.leaves(jax.eval_shape(step, state, batch)))


def test_cnn_self_attention_gpu_preset_carries_the_fused_kernels_within_lowering_platforms():
  """Self-attention over the 32x32 grid (1,024 positions, 8 query/key and 64 value features):
  Pallas' Triton kernel for cuda, splash for tpu, from one trace. One module per platform: a
  module lowered for several platforms at once lowers every Pallas kernel for each of them and
  fails (jax-ml/jax#28594)."""
  with accelerators.lowering_platforms("cuda", "tpu"):
    _, train_step, state, _, batch = _cnn_self_attention()
    step = jax.jit(lambda s, b: train_step(s, b))
    for platform, kernel in (("cuda", accelerators.TRITON_CALL), ("tpu", "tpu_custom_call")):
      exported = export.export(step, platforms=[platform],
                               disabled_checks=accelerators.export_disabled_checks())(state, batch)
      assert kernel in _custom_calls(exported), (platform, _custom_calls(exported))


def test_rnn_seq2seq_gpu_preset_beam_search_decoder_lowers():
  config = rnn_configs.get_config("gpu")
  model, _, _, params, _ = _rnn_seq2seq("additive")()
  decode = dates_translation.make_rnn_decoder(model, config.eval.beam_size,
                                              config.data.max_target_len)
  src = (config.eval.batch_size, config.data.max_input_len)
  exported = export.export(decode, platforms=["cuda", "tpu"])(
      params, jax.ShapeDtypeStruct(src, jnp.int32), jax.ShapeDtypeStruct(src[:1], jnp.int32))
  assert exported.out_avals[0].shape == (src[0], config.data.max_target_len)


def test_transformer_seq2seq_gpu_preset_beam_search_decoder_lowers():
  config = s2s_configs.get_config("gpu")
  model, _, _, params, _ = _seq2seq()
  decode = s2s_train.make_decoder(model, config.eval.beam_size, config.data.max_target_len,
                                  config.eval.length_penalty)
  src = (8, config.data.max_input_len)
  exported = export.export(decode, platforms=["cuda", "tpu"])(
      params, jax.ShapeDtypeStruct(src, jnp.int32), jax.ShapeDtypeStruct(src[:1], jnp.int32))
  assert exported.out_avals[0].shape == (8, config.data.max_target_len)


@pytest.mark.parametrize("attention", ["soft", "hard"])
def test_captioning_gpu_preset_beam_search_decoder_lowers(attention):
  config = caption_configs.get_config("gpu")
  model, _, _, params, _ = _captioning(attention)()
  decode = caption_train.make_decoder(model, config.eval.beam_size, config.data.max_caption_len)
  size = shapes_captions.IMAGE_SIZE
  exported = export.export(decode, platforms=["cuda", "tpu"])(
      params, jax.ShapeDtypeStruct((8, size, size, 3), jnp.uint8))
  assert exported.out_avals[0].shape == (8, config.data.max_caption_len)


def test_lm_gpu_preset_carries_splash_within_lowering_platforms_and_decodes():
  with accelerators.lowering_platforms("tpu"):
    _, step, state, _, batch = _lm()
    exported = export.export(jax.jit(lambda s, b: step(s, b)), platforms=["tpu"])(state, batch)
  assert "tpu_custom_call" in _custom_calls(exported)
  model, _, _, params, _ = _lm()
  prompt = jax.ShapeDtypeStruct((4, 8), jnp.int32)
  key = jax.eval_shape(lambda: jax.random.key(0))
  decode = export.export(transformer._generate, platforms=["cuda", "tpu"])(
      model, params, prompt, key, 16, 0.0, None, None, -1, 0)
  assert decode.out_avals[0].shape == (4, 16)
