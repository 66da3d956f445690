"""Seq2Seq: shapes, teacher forcing == stepwise decoding, masking, padding invariance, training,
decoding through attention_jax.decoding, errors."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from attention_jax import decoding
from attention_jax.models import Seq2Seq
from attention_jax.models import decoding_fns

PAD, BOS, EOS = 0, 1, 2
SRC_VOCAB, TGT_VOCAB = 11, 13
LENGTHS = jnp.array([5, 2, 3])
MODES = ["none", "additive", "dot"]


def tiny(attention, cell_type="gru", **kwargs):
  return Seq2Seq(SRC_VOCAB, TGT_VOCAB, attention=attention, embed_dim=8, hidden_dim=12,
                 attention_dim=10, cell_type=cell_type, **kwargs)


def batch(seed=0):
  rng = np.random.default_rng(seed)
  inputs = jnp.asarray(rng.integers(3, SRC_VOCAB, (3, 5)), jnp.int32)
  inputs = jnp.where(jnp.arange(5) < LENGTHS[:, None], inputs, PAD)
  decoder_inputs = jnp.asarray(rng.integers(0, TGT_VOCAB, (3, 4)), jnp.int32).at[:, 0].set(BOS)
  return inputs, decoder_inputs


@functools.lru_cache(maxsize=None)
def jitted(model):
  """``model.apply`` compiled: one compile per call signature instead of eager scans."""
  return jax.jit(model.apply, static_argnames=("method", "deterministic"))


@functools.lru_cache(maxsize=None)
def initialised(attention, cell_type="gru"):
  model = tiny(attention, cell_type)
  inputs, decoder_inputs = batch()
  return model, model.init(jax.random.key(0), inputs, LENGTHS, decoder_inputs)


def stepwise(model, variables, inputs, lengths, decoder_inputs):
  """Teacher forcing through ``encode``, ``initial_state`` and a Python loop of ``decode_step``."""
  memory = model.apply(variables, inputs, lengths, method=Seq2Seq.encode)
  state = model.apply(variables, memory, method=Seq2Seq.initial_state)
  logits, weights = [], []
  for t in range(decoder_inputs.shape[1]):
    step_logits, state, step_weights = model.apply(
        variables, memory, state, decoder_inputs[:, t], method=Seq2Seq.decode_step)
    logits.append(step_logits)
    weights.append(step_weights)
  return memory, jnp.stack(logits, 1), jnp.stack(weights, 1)


@pytest.mark.parametrize("attention,cell_type", [
    ("none", "gru"), ("additive", "gru"), ("dot", "gru"), ("additive", "lstm")])
def test_shapes_and_teacher_forcing_equals_stepwise_decoding(attention, cell_type):
  model, variables = initialised(attention, cell_type)
  inputs, decoder_inputs = batch()

  @jax.jit  # one compilation for both paths
  def both(variables):
    return (model.apply(variables, inputs, LENGTHS, decoder_inputs),
            stepwise(model, variables, inputs, LENGTHS, decoder_inputs))

  (logits, weights), (memory, step_logits, step_weights) = both(variables)
  assert logits.shape == (3, 4, TGT_VOCAB) and weights.shape == (3, 4, 5)
  assert memory.states.shape == (3, 5, 24) and memory.context.shape == (3, 24)
  assert memory.mask.dtype == jnp.bool_
  expected_keys = {"none": 24, "additive": 10, "dot": 12}[attention]
  assert memory.keys.shape == (3, 5, expected_keys)
  np.testing.assert_allclose(logits, step_logits, atol=1e-5)
  np.testing.assert_allclose(weights, step_weights, atol=1e-6)


def test_parameters_are_shared_and_named():
  _, variables = initialised("additive")
  params = variables["params"]
  assert set(params) == {"encoder", "target_embed", "init_dense", "cell", "attend",
                         "output_dense"}
  assert set(params["attend"]) == {"query", "key", "score"}
  # The additive scorer is layers.AdditiveAttention: W_q without bias, W_k with bias, v.
  assert params["attend"]["key"]["kernel"].shape == (24, 10)
  assert params["attend"]["key"]["bias"].shape == (10,)
  assert params["attend"]["query"]["kernel"].shape == (12, 10)
  assert params["attend"]["score"].shape == (10,)
  assert set(params["encoder"]) == {"embed", "forward", "backward"}
  assert params["output_dense"]["kernel"].shape == (12 + 24 + 8, TGT_VOCAB)


@pytest.mark.parametrize("attention", MODES)
def test_attention_weights_sum_to_one_and_are_zero_on_padding(attention):
  model, variables = initialised(attention)
  inputs, decoder_inputs = batch()
  _, weights = jitted(model)(variables, inputs, LENGTHS, decoder_inputs)
  valid = np.arange(5) < np.asarray(LENGTHS)[:, None, None]
  if attention == "none":
    np.testing.assert_array_equal(weights, 0.0)
    return
  np.testing.assert_allclose(weights.sum(-1), 1.0, atol=1e-5)
  assert np.all(np.where(valid, True, weights == 0.0))
  assert np.all(np.where(valid, weights > 0.0, True))


@pytest.mark.parametrize("cell_type", ["gru", "lstm"])
def test_encoder_ignores_padding_and_runs_backward_from_the_last_real_token(cell_type):
  model, variables = initialised("additive", cell_type)
  apply = jitted(model)
  inputs, decoder_inputs = batch()
  memory = apply(variables, inputs, LENGTHS, method=Seq2Seq.encode)
  junk = jnp.where(jnp.arange(5) < LENGTHS[:, None], inputs, 7)
  junk_memory = apply(variables, junk, LENGTHS, method=Seq2Seq.encode)
  np.testing.assert_allclose(junk_memory.states, memory.states, atol=1e-6)
  np.testing.assert_allclose(junk_memory.context, memory.context, atol=1e-6)
  np.testing.assert_array_equal(memory.states[1, 2:], 0.0)
  np.testing.assert_allclose(apply(variables, junk, LENGTHS, decoder_inputs)[0],
                             apply(variables, inputs, LENGTHS, decoder_inputs)[0], atol=1e-6)
  # Row 1 (length 2) encoded alone without padding gives the same states and final states.
  alone = apply(variables, inputs[1:2, :2], LENGTHS[1:2], method=Seq2Seq.encode)
  np.testing.assert_allclose(alone.states[0], memory.states[1, :2], atol=1e-6)
  np.testing.assert_allclose(alone.context[0], memory.context[1], atol=1e-6)
  # The backward half at position 0 is the backward final state (it has read the whole row).
  np.testing.assert_allclose(memory.context[:, 12:], memory.states[:, 0, 12:], atol=1e-6)
  last = np.asarray(memory.states)[np.arange(3), np.asarray(LENGTHS) - 1, :12]
  np.testing.assert_allclose(memory.context[:, :12], last, atol=1e-6)


def test_dropout_needs_rng_and_changes_outputs_only_when_not_deterministic():
  model = tiny("dot", dropout_rate=0.5)
  _, variables = initialised("dot")  # dropout adds no parameters
  inputs, decoder_inputs = batch()
  eval_logits, _ = jitted(model)(variables, inputs, LENGTHS, decoder_inputs)
  train_logits, _ = jitted(model)(variables, inputs, LENGTHS, decoder_inputs, deterministic=False,
                                rngs={"dropout": jax.random.key(1)})
  assert train_logits.shape == eval_logits.shape
  assert not np.allclose(train_logits, eval_logits)


def test_bfloat16_model_computes_in_bfloat16():
  model = tiny("dot", "lstm", dtype=jnp.bfloat16)
  inputs, decoder_inputs = batch()
  logits, weights = jitted(model)(
      initialised("dot", "lstm")[1], inputs, LENGTHS, decoder_inputs)
  assert logits.dtype == jnp.bfloat16 and weights.dtype == jnp.bfloat16
  np.testing.assert_allclose(weights.astype(jnp.float32).sum(-1), 1.0, atol=2e-2)


def reverse_task(rng, n, max_len=6, vocab=10):
  """Source: random symbols; target: the source reversed, then EOS."""
  lengths = rng.integers(2, max_len + 1, n)
  inputs = np.zeros((n, max_len), np.int32)
  targets = np.zeros((n, max_len + 1), np.int32)
  for i, length in enumerate(lengths):
    symbols = rng.integers(3, vocab, length)
    inputs[i, :length] = symbols
    targets[i, :length] = symbols[::-1]
    targets[i, length] = EOS
  decoder_inputs = np.concatenate([np.full((n, 1), BOS), targets[:, :-1]], 1).astype(np.int32)
  mask = np.arange(max_len + 1) <= lengths[:, None]
  return inputs, lengths.astype(np.int32), decoder_inputs, targets, mask


def train(attention, steps=100):
  model = Seq2Seq(10, attention=attention, embed_dim=16, hidden_dim=32, attention_dim=32)
  rng = np.random.default_rng(0)
  inputs, lengths, decoder_inputs, _, _ = reverse_task(rng, 2)
  params = model.init(jax.random.key(0), inputs, lengths, decoder_inputs)["params"]
  optimizer = optax.adam(1e-2)
  opt_state = optimizer.init(params)

  def loss_fn(params, inputs, lengths, decoder_inputs, targets, mask):
    logits, _ = model.apply({"params": params}, inputs, lengths, decoder_inputs)
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
    return (losses * mask).sum() / mask.sum()

  @jax.jit
  def update(params, opt_state, *batch):
    loss, grads = jax.value_and_grad(loss_fn)(params, *batch)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  losses = []
  for _ in range(steps):
    params, opt_state, loss = update(params, opt_state, *reverse_task(rng, 32))
    losses.append(float(loss))
  return model, {"params": params}, losses


@pytest.fixture(scope="module")
def trained():
  return {attention: train(attention) for attention in MODES}


@pytest.mark.slow  # make test-all; the seq2seq experiment's tiny run trains both
@pytest.mark.parametrize("attention", MODES)
def test_tiny_training_reduces_the_loss(trained, attention):
  _, _, losses = trained[attention]
  assert np.mean(losses[-10:]) < 0.5 * losses[0], losses[::10]


@pytest.mark.slow  # make test-all; shares the trained fixture
def test_attention_beats_the_bottleneck_and_greedy_reverses_the_input(trained):
  final = {attention: np.mean(trained[attention][2][-10:]) for attention in MODES}
  assert final["additive"] < 0.5 * final["none"] and final["dot"] < 0.5 * final["none"], final
  inputs, lengths, _, targets, mask = reverse_task(np.random.default_rng(1), 32)
  for attention in ("additive", "dot"):
    model, variables, _ = trained[attention]
    init_fn, step_fn = decoding_fns(model, variables, inputs, lengths)
    tokens, weights = jax.jit(
        lambda: decoding.greedy_decode(init_fn, step_fn, 32, 7, BOS, EOS))()
    assert (np.asarray(tokens) == targets)[mask].mean() > 0.8
    assert weights.shape == (32, 7, 6)


@pytest.mark.parametrize("attention", MODES)
def test_beam_of_one_equals_greedy_on_the_model(attention):
  model, variables = initialised(attention)
  inputs, _ = batch(3)

  @jax.jit
  def search(variables):
    init_fn, step_fn = decoding_fns(model, variables, inputs, LENGTHS)
    return (decoding.greedy_decode(init_fn, step_fn, 3, 6, BOS, EOS),
            decoding.beam_search(init_fn, step_fn, 3, 1, 6, BOS, EOS, length_penalty=0.6),
            decoding.beam_search(init_fn, step_fn, 3, 4, 6, BOS, EOS, return_all_beams=True))

  (tokens, weights), (beam_tokens, _, beam_weights), wide = search(variables)
  np.testing.assert_array_equal(beam_tokens, tokens)
  np.testing.assert_allclose(beam_weights, weights, atol=1e-6)
  wide_tokens, scores, wide_weights = wide
  assert wide_tokens.shape == (3, 4, 6) and scores.shape == (3, 4)
  assert wide_weights.shape == (3, 4, 6, 5)


def test_bad_inputs_raise_clear_errors():
  with pytest.raises(ValueError, match=r"attention must be one of \['none', 'additive', 'dot'\]"):
    tiny("luong")
  with pytest.raises(ValueError, match=r"cell_type must be one of \['gru', 'lstm'\]"):
    tiny("dot", cell_type="rnn")
  model, variables = initialised("additive")
  inputs, decoder_inputs = batch()
  with pytest.raises(TypeError, match="inputs must hold integer token ids"):
    model.apply(variables, inputs.astype(jnp.float32), LENGTHS, decoder_inputs)
  with pytest.raises(ValueError, match=r"inputs must be int \[batch, src_len\].*\(5,\)"):
    model.apply(variables, inputs[0], LENGTHS, decoder_inputs)
  with pytest.raises(ValueError, match=r"input_lengths must be int \[batch=3\].*\(3, 1\)"):
    model.apply(variables, inputs, LENGTHS[:, None], decoder_inputs)
  with pytest.raises(ValueError, match=r"decoder_inputs \(2, 4\) and inputs \(3, 5\)"):
    model.apply(variables, inputs, LENGTHS, decoder_inputs[:2])
  memory = model.apply(variables, inputs, LENGTHS, method=Seq2Seq.encode)
  state = model.apply(variables, memory, method=Seq2Seq.initial_state)
  with pytest.raises(ValueError, match=r"tokens must be int \[batch\]"):
    model.apply(variables, memory, state, decoder_inputs, method=Seq2Seq.decode_step)
