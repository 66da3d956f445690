"""Every experiment's ``gpu`` preset lowers for cuda and tpu from this CPU host: its jitted train
step (``benchmarks.gpu_presets``: the experiment's own model, loss and step at the preset's
shapes, parameters from ``jax.eval_shape``, nothing allocated) and its decoders. A model that
stops lowering for an accelerator fails CI the day it happens. Within
``ops.accelerators.lowering_platforms`` the programs carry the fused kernels (splash's
``tpu_custom_call``, Pallas GPU's Triton call); no program meant for an accelerator carries our
CPU kernel's custom call."""

import re

import jax
import jax.numpy as jnp
import pytest
from jax import export

from attention_jax.data import shapes_captions
from attention_jax.models import transformer
from attention_jax.ops import accelerators
from attention_jax.tasks import dates_translation
from benchmarks import gpu_presets
from experiments.captioning import train as caption_train
from experiments.transformer_seq2seq import train as s2s_train

CPU_KERNEL = "attention_jax_cpu_flash"
PRESETS = gpu_presets.all_presets()


def _custom_calls(exported) -> set[str]:
  return set(re.findall(r"custom_call @([\w$.-]+)", exported.mlir_module()))


@pytest.mark.parametrize("experiment", list(PRESETS))
def test_gpu_preset_train_step_lowers(experiment):
  preset = PRESETS[experiment]()
  step, state = preset.train_step(), preset.abstract_state()
  exported = export.export(step, platforms=["cuda", "tpu"])(state, preset.batch)  # one module
  assert exported.platforms == ("cuda", "tpu")
  assert not any(CPU_KERNEL in name for name in _custom_calls(exported))
  assert len(exported.out_avals) == len(jax.tree.leaves(jax.eval_shape(step, state,
                                                                       preset.batch)))


def test_cnn_self_attention_gpu_preset_carries_the_fused_kernels_within_lowering_platforms():
  """Self-attention over the 32x32 grid (1,024 positions, 8 query/key and 64 value features):
  Pallas' Triton kernel for cuda, splash for tpu, from one trace. One module per platform: a
  module lowered for several platforms at once lowers every Pallas kernel for each of them and
  fails (jax-ml/jax#28594)."""
  preset = gpu_presets.cnn_self_attention()
  with accelerators.lowering_platforms("cuda", "tpu"):
    step, state = preset.train_step(), preset.abstract_state()
    for platform, kernel in (("cuda", accelerators.TRITON_CALL), ("tpu", "tpu_custom_call")):
      exported = export.export(step, platforms=[platform],
                               disabled_checks=accelerators.export_disabled_checks())(
                                   state, preset.batch)
      assert kernel in _custom_calls(exported), (platform, _custom_calls(exported))


def test_rnn_seq2seq_gpu_preset_beam_search_decoder_lowers():
  preset = gpu_presets.rnn_seq2seq("additive")
  config = preset.config
  decode = dates_translation.make_rnn_decoder(preset.model, config.eval.beam_size,
                                              config.data.max_target_len)
  src = (config.eval.batch_size, config.data.max_input_len)
  exported = export.export(decode, platforms=["cuda", "tpu"])(
      preset.abstract_state().params, jax.ShapeDtypeStruct(src, jnp.int32),
      jax.ShapeDtypeStruct(src[:1], jnp.int32))
  assert exported.out_avals[0].shape == (src[0], config.data.max_target_len)


def test_transformer_seq2seq_gpu_preset_beam_search_decoder_lowers():
  preset = gpu_presets.transformer_seq2seq()
  config = preset.config
  decode = s2s_train.make_decoder(preset.model, config.eval.beam_size,
                                  config.data.max_target_len, config.eval.length_penalty)
  src = (8, config.data.max_input_len)
  exported = export.export(decode, platforms=["cuda", "tpu"])(
      preset.abstract_state().params, jax.ShapeDtypeStruct(src, jnp.int32),
      jax.ShapeDtypeStruct(src[:1], jnp.int32))
  assert exported.out_avals[0].shape == (8, config.data.max_target_len)


@pytest.mark.parametrize("attention", ["soft", "hard"])
def test_captioning_gpu_preset_beam_search_decoder_lowers(attention):
  preset = gpu_presets.captioning(attention)
  config = preset.config
  decode = caption_train.make_decoder(preset.model, config.eval.beam_size,
                                      config.data.max_caption_len)
  size = shapes_captions.IMAGE_SIZE
  exported = export.export(decode, platforms=["cuda", "tpu"])(
      caption_train.model_params(preset.abstract_state().params),
      jax.ShapeDtypeStruct((8, size, size, 3), jnp.uint8))
  assert exported.out_avals[0].shape == (8, config.data.max_caption_len)


def test_lm_gpu_preset_carries_splash_within_lowering_platforms_and_decodes():
  preset = gpu_presets.transformer_lm()
  with accelerators.lowering_platforms("tpu"):
    step, state = preset.train_step(), preset.abstract_state()
    exported = export.export(step, platforms=["tpu"])(state, preset.batch)
  assert "tpu_custom_call" in _custom_calls(exported)
  prompt = jax.ShapeDtypeStruct((4, 8), jnp.int32)
  key = jax.eval_shape(lambda: jax.random.key(0))
  decode = export.export(transformer._generate, platforms=["cuda", "tpu"])(
      preset.model, state.params, prompt, key, 16, 0.0, None, None, -1, 0)
  assert decode.out_avals[0].shape == (4, 16)


def test_random_batches_fit_each_preset():
  """What the accelerator benchmark feeds each step: the batch's shapes, integers in range."""
  for name, build in PRESETS.items():
    preset = build()
    batch = preset.random_batch()
    for field, spec in preset.batch.items():
      assert batch[field].shape == spec.shape and batch[field].dtype == spec.dtype, (name, field)
      if field in preset.int_high:
        assert 0 <= int(batch[field].min()) and int(batch[field].max()) <= preset.int_high[field]
