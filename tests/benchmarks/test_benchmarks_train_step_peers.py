"""The PyTorch peers of ``benchmarks.train_step`` are our models: equal parameter counts at the
experiments' default configs, and with our parameters copied in the same loss and the same
gradients (tiny sizes), the same first steps of the experiment's own train step (loss, gradient
norm, and the update through Adam, the schedule and clipping)."""

import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from attention_jax.training import metrics  # noqa: E402
from benchmarks.peers import captioning  # noqa: E402
from benchmarks.peers import common  # noqa: E402
from benchmarks.peers import seq2seq  # noqa: E402

VOCAB = {"source_vocab": 30, "target_vocab": 12}


def small_seq2seq_config():
  config = seq2seq.get_config("tiny")
  config.batch_size = 4
  config.data.max_input_len = 12  # lengths 4-12, padding on most rows
  config.data.max_target_len = 8
  return config


def small_captioning_config():
  config = captioning.get_config("tiny")
  config.batch_size = 4
  config.data.max_caption_len = 8
  config.model.attention_penalty = 0.1  # large enough that a wrong penalty shows in the loss
  return config


class Setup:
  """Our model, parameters and experiment step; the PyTorch peer with our parameters in it."""

  def __init__(self, peer, config, model, batch, torch_model, entries, torch_batch, torch_loss,
               jax_loss, ours_loss):
    self.peer, self.config, self.model, self.batch = peer, config, model, batch
    self.init_state, self.train_step = peer.ours(config, model, batch)
    self.params = self.init_state().params
    self.torch_model, self.entries = torch_model, entries
    common.load_params(entries, self.params)
    self.torch_batch, self.torch_loss = torch_batch, torch_loss
    self.ours_loss = ours_loss  # the loss from the train step's metric sums
    # the experiment's loss formula at our initial parameters, and its gradients
    self.loss, self.grads = jax.jit(jax.value_and_grad(jax_loss))(self.params)


def seq2seq_setup(attention):
  config = small_seq2seq_config()
  batch = seq2seq.random_batch(config, **VOCAB)
  model = seq2seq.make_model(config, attention, **VOCAB)
  peer = seq2seq.torch_model(config, attention, **VOCAB)

  def jax_loss(params):  # train_rnn's logits_fn and train_teacher_forced's loss_fn
    logits, _ = model.apply({"params": params}, batch["inputs"], batch["input_lengths"],
                            batch["decoder_inputs"])
    sums = metrics.classification_sums(logits, batch["targets"], batch["target_mask"])
    return sums["loss_sum"] / sums["token_count"]

  return Setup(seq2seq, config, model, batch, peer, seq2seq.param_map(peer, attention),
               seq2seq.torch_batch(batch), seq2seq.torch_loss, jax_loss,
               lambda sums: sums["loss_sum"] / sums["token_count"])


def captioning_setup():
  config = small_captioning_config()
  batch = captioning.random_batch(config)
  model = captioning.make_model(config)
  peer = captioning.torch_model(config)
  penalty = float(config.model.attention_penalty)
  assert captioning.continuity_weight(config) > 0  # the default's continuity term is compared too

  def jax_loss(params):  # train.losses, as train_model's loss_fn calls it
    return captioning.captioning_train.losses(
        model, params, batch, penalty, deterministic=False, rng=jax.random.key(0),
        continuity_weight=captioning.continuity_weight(config))[0]

  return Setup(captioning, config, model, batch, peer, captioning.param_map(peer),
               captioning.torch_batch(batch), captioning.torch_loss_fn(config), jax_loss,
               lambda sums: captioning.ours_loss(config, sums))


@pytest.fixture(scope="module", params=["seq2seq additive", "seq2seq none", "captioning"])
def setup(request):
  if request.param == "captioning":
    return captioning_setup()
  return seq2seq_setup(request.param.split()[1])


def torch_loss_and_grads(s):
  s.torch_model.zero_grad(set_to_none=False)
  loss = s.torch_loss(s.torch_model, s.torch_batch)
  loss.backward()
  return loss.item(), common.gather(s.entries)


def assert_trees_close(ours, theirs, rtol):
  """Every leaf within ``rtol`` of the leaf's largest entry (absolute errors of fp32 sums)."""
  flat_ours = jax.tree_util.tree_flatten_with_path(ours)[0]
  flat_theirs = dict(jax.tree_util.tree_flatten_with_path(theirs)[0])
  assert len(flat_ours) == len(flat_theirs)
  for path, value in flat_ours:
    value, other = np.asarray(value), flat_theirs[path]
    scale = max(float(np.max(np.abs(value))), 1e-6)
    np.testing.assert_allclose(other, value, rtol=0, atol=rtol * scale,
                               err_msg=jax.tree_util.keystr(path))


@pytest.mark.parametrize("name,attention,expected", [
    ("seq2seq", "additive", 445_265), ("seq2seq", "none", 395_857),
    ("captioning", "soft", 289_713)])
def test_parameter_counts_equal_at_the_default_configs(name, attention, expected):
  """The counts the experiments' READMEs report, on both sides."""
  if name == "seq2seq":
    config = seq2seq.get_config("default")
    batch = seq2seq.random_batch(config)
    shapes = jax.eval_shape(seq2seq.make_model(config, attention).init, jax.random.key(0),
                            batch["inputs"], batch["input_lengths"], batch["decoder_inputs"])
    peer = seq2seq.torch_model(config, attention)
    theirs = common.trainable_count(peer, peer.frozen)
  else:
    config = captioning.get_config("default")
    batch = captioning.random_batch(config)
    shapes = jax.eval_shape(captioning.make_model(config).init, jax.random.key(0),
                            batch["image"], batch["decoder_inputs"])
    theirs = common.trainable_count(captioning.torch_model(config))
  assert common.count_parameters(shapes["params"]) == expected
  assert theirs == expected


def test_parameter_counts_equal_and_every_parameter_mapped(setup):
  frozen = getattr(setup.torch_model, "frozen", 0)
  assert common.count_parameters(setup.params) == common.trainable_count(setup.torch_model,
                                                                         frozen)
  # load_params refuses a map that misses or repeats a parameter; gather reads them all back.
  assert_trees_close(setup.params, common.gather(setup.entries, "data"), rtol=0)


def test_same_loss_and_gradients_with_our_parameters(setup):
  torch_loss, torch_grads = torch_loss_and_grads(setup)
  assert torch_loss == pytest.approx(float(setup.loss), rel=1e-5)
  assert_trees_close(setup.grads, torch_grads, rtol=2e-5)


def test_a_changed_parameter_changes_the_loss(setup):
  """The comparison can fail: move one attention parameter of the PyTorch model."""
  loss = float(setup.loss)
  score = [e.tensor for e in setup.entries if e.path[-1] == "score"]
  target = score[0] if score else setup.torch_model.init_dense.bias  # "none": no attention
  with torch.no_grad():
    target.add_(0.5)
  try:
    torch_loss, _ = torch_loss_and_grads(setup)
  finally:
    with torch.no_grad():
      target.sub_(0.5)
  assert abs(torch_loss - loss) > 1e-4 * abs(loss)


def test_the_experiment_step_and_the_peer_step_agree(setup):
  """Three updates of the experiment's own jitted step against the peer's (Adam, schedule,
  clipping): the same losses and gradient norms, then the same parameters."""
  peer = setup.torch_model
  saved = [p.detach().clone() for p in peer.parameters()]
  optimizer, scheduler = common.make_optimizer(setup.config, peer.parameters())
  trainable = [p for p in peer.parameters() if p.requires_grad]
  state = setup.init_state()
  try:
    for _ in range(3):
      state, sums = setup.train_step(state, setup.batch)
      optimizer.zero_grad(set_to_none=True)
      loss = setup.torch_loss(peer, setup.torch_batch)
      loss.backward()
      norm = torch.nn.utils.clip_grad_norm_(trainable, setup.config.grad_clip_norm)
      optimizer.step()
      scheduler.step()
      assert loss.item() == pytest.approx(float(setup.ours_loss(sums)), rel=1e-5)
      assert norm.item() == pytest.approx(float(sums["grad_norm_sum"]), rel=1e-4)
    assert_trees_close(state.params, common.gather(setup.entries, "data"), rtol=1e-4)
  finally:
    with torch.no_grad():
      for p, value in zip(peer.parameters(), saved):
        p.copy_(value)
