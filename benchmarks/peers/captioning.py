"""The captioning peer: experiments/captioning's Show, Attend and Tell model (soft attention) in
PyTorch.

Ours is the experiment's own code: ``experiments.captioning.train.make_model`` and
``train_model`` (its parameters, the optimiser of ``training.make_optimizer`` and the jitted step
over ``train.losses``, taken from the call into the training loop by
:class:`common.capture_training`). PyTorch's is the same network layer for layer:

* encoder: 3x3 convolutions with ``SAME`` padding as XLA places it (for stride 2 on an even side
  one row and column after, none before: an explicit ``F.pad``), ReLU between them, LayerNorm over
  the channels (epsilon 1e-6), the learned position table, the (y, x) grid coordinates appended;
* decoder: ``c_0, h_0 = tanh(W_c mean), tanh(W_h mean)``; per word the additive attention
  ``v . tanh(W_q h + W_k f_ij + b)`` over the keys projected once, the gating scalar
  ``sigmoid(w . h + b)`` on the context, ``nn.LSTMCell`` fed ``[embed(y); z]``, logits
  ``W_out [h; z; embed(y)] + b``;
* loss: token cross-entropy over the mask / token count plus ``attention_penalty`` times the batch
  mean of the doubly stochastic penalty ``sum_i (1 - sum_t mask_t a_ti)^2``, plus
  ``continuity_weight`` times the attention mass moving between consecutive content words (the
  earlier map detached) over the token count; Adam, the warmup-cosine schedule and global-norm
  clipping of the config.

The one difference in parameters: ``nn.LSTMCell`` has two biases (input and hidden side) where
Flax's cell has one; the input-side one stays at zero without a gradient and is not counted.
PyTorch embeds all words before the loop and applies the output layer once after it (the same
products, batched). Images go to PyTorch as NCHW (its layout), to us as NHWC (ours).
"""

from __future__ import annotations

import numpy as np

from attention_jax import training
from attention_jax.data import shapes_captions
from attention_jax.data.tokenizers import BOS_ID, EOS_ID, PAD_ID
from benchmarks.peers import common
from experiments.captioning import config as configs
from experiments.captioning import train as captioning_train

torch = common.torch

VOCAB = shapes_captions.WordTokenizer.vocab_size
#: Words per caption of the default scene (1-4 objects of 3 words, 2 words per relation).
CAPTION_WORDS = (3, 18)


def get_config(preset: str):
  return configs.get_config(preset)


def random_batch(config, batch_size=None, vocab=VOCAB, seed=0):
  """A batch as ``train.batch_at`` makes them (the config's shapes): random uint8 images, random
  words with caption lengths of the default scene."""
  rng = np.random.default_rng(seed)
  b = batch_size or config.batch_size
  size, t = configs.image_size(config), config.data.max_caption_len
  lengths = rng.integers(min(CAPTION_WORDS[0], t - 1), min(CAPTION_WORDS[1], t - 1) + 1,
                         size=b) + 1  # + EOS
  mask = np.arange(t) < lengths[:, None]
  targets = np.where(np.arange(t) == lengths[:, None] - 1, EOS_ID,
                     np.where(mask, rng.integers(4, vocab, size=(b, t)), PAD_ID))
  decoder_inputs = np.where(mask, np.concatenate([np.full((b, 1), BOS_ID), targets[:, :-1]], 1),
                            PAD_ID)
  return {"image": rng.integers(0, 256, size=(b, size, size, 3), dtype=np.uint8),
          "decoder_inputs": decoder_inputs.astype(np.int32), "targets": targets.astype(np.int32),
          "target_mask": mask}


def make_model(config, vocab=VOCAB):
  """The experiment's model (``train.make_model``)."""
  return captioning_train.make_model(config, vocab)


def ours(config, model, batch):
  """``(init_state, train_step)`` of ``train_model`` on ``batch``: the experiment's parameters
  (initialised from ``config.seed``), optimiser and jitted step."""
  with common.capture_training(training) as captured:
    captioning_train.train_model(config, "/nonexistent-workdir", model, batch, batch)
  return captured.init_state, captured.train_step


def ours_loss(config, sums):
  """The loss ``train.losses`` minimised, from the step's metric sums."""
  loss = (sums["loss_sum"] / sums["token_count"] + config.model.attention_penalty
          * sums["attention_penalty_sum"] / sums["example_count"])
  if continuity_weight(config) > 0:
    loss = loss + continuity_weight(config) * sums["attention_moved_sum"] / sums["token_count"]
  return loss


# ---------------------------------------------------------------------------------------------
# PyTorch.


def _same_padding(size: int, stride: int, kernel: int = 3) -> tuple[int, int]:
  """XLA's ``SAME`` padding ``(before, after)`` of one spatial axis."""
  total = max((-(-size // stride) - 1) * stride + kernel - size, 0)
  return total // 2, total - total // 2


def torch_model(config, vocab=VOCAB):
  """The same captioner in PyTorch (soft attention)."""
  nn, F = torch.nn, torch.nn.functional
  m = config.model
  unsupported = {"attention": m.attention != "soft", "coverage": m.coverage,
                 "coordinates": m.coordinates, "dropout_rate": m.dropout_rate,
                 "init_dropout_rate": m.init_dropout_rate,
                 "context_pool": m.get("context_pool", 0)}
  if any(unsupported.values()):
    fields = ", ".join(f"model.{k}" for k, v in unsupported.items() if v)
    raise ValueError(f"the PyTorch peer has soft attention without coverage, CoordConv input, "
                     f"context pooling or dropout; not {fields}")
  size = configs.image_size(config)

  class Captioner(nn.Module):

    def __init__(self):
      super().__init__()
      self.convs, self.pads = nn.ModuleList(), []
      channels, side = 3, size
      for features, stride in zip(m.channels, m.strides):
        pad = _same_padding(side, stride)
        symmetric = pad[0] == pad[1]
        self.convs.append(nn.Conv2d(channels, features, 3, stride,
                                    padding=pad[0] if symmetric else 0))
        self.pads.append(None if symmetric else (pad[0], pad[1], pad[0], pad[1]))
        channels, side = features, -(-side // stride)
      self.norm = nn.LayerNorm(channels, eps=1e-6) if m.normalize else None
      self.position_embedding = nn.Parameter(torch.zeros(side, side, channels))
      grid = torch.linspace(-1, 1, side)
      ys, xs = torch.meshgrid(grid, grid, indexing="ij")
      self.register_buffer("coordinates", torch.stack([ys, xs], -1).reshape(side * side, 2))
      width = channels + (2 if m.grid_coordinates else 0)
      self.query = nn.Linear(m.hidden_dim, m.attention_dim, bias=False)
      self.key = nn.Linear(width, m.attention_dim)
      self.score = nn.Parameter(torch.zeros(m.attention_dim))
      self.init_c = nn.Linear(width, m.hidden_dim)
      self.init_h = nn.Linear(width, m.hidden_dim)
      self.gate_dense = nn.Linear(m.hidden_dim, 1)
      self.embed = nn.Embedding(vocab, m.embed_dim)
      self.cell = nn.LSTMCell(m.embed_dim + width, m.hidden_dim)
      self.cell.bias_ih.requires_grad_(False)  # Flax's LSTM cell has one bias per gate
      with torch.no_grad():
        self.cell.bias_ih.zero_()
      self.output_dense = nn.Linear(m.hidden_dim + width + m.embed_dim, vocab)

    def encode(self, images):
      x = images.float() / 255.0
      for i, (conv, pad) in enumerate(zip(self.convs, self.pads)):
        x = conv(x if pad is None else F.pad(x, pad))
        if i < len(self.convs) - 1:
          x = torch.relu(x)
      x = x.permute(0, 2, 3, 1)  # [B, H, W, C]: LayerNorm over the channels
      if self.norm is not None:
        x = self.norm(x)
      x = (x + self.position_embedding).flatten(1, 2)
      if m.grid_coordinates:
        x = torch.cat([x, self.coordinates.expand(x.shape[0], -1, -1)], dim=-1)
      return x  # [B, N, C (+ 2)]

    def forward(self, images, decoder_inputs):
      """``(logits [B, T, V], attention [B, T, N])``."""
      features = self.encode(images)
      keys = self.key(features)
      mean = features.mean(dim=1)
      c, h = torch.tanh(self.init_c(mean)), torch.tanh(self.init_h(mean))
      embedded = self.embed(decoder_inputs)
      outputs, maps = [], []
      for t in range(decoder_inputs.shape[1]):
        scores = torch.tanh(self.query(h)[:, None, :] + keys) @ self.score
        weights = scores.softmax(dim=-1)
        context = torch.bmm(weights[:, None, :], features)[:, 0]
        if m.gate:
          context = context * torch.sigmoid(self.gate_dense(h))
        h, c = self.cell(torch.cat([embedded[:, t], context], dim=-1), (h, c))
        outputs.append(torch.cat([h, context, embedded[:, t]], dim=-1))
        maps.append(weights)
      return self.output_dense(torch.stack(outputs, dim=1)), torch.stack(maps, dim=1)

  return Captioner()


def param_map(model):
  """Where each Flax parameter of the experiment's ``Captioner`` lives in :func:`torch_model`."""
  E = common.Entry
  h = model.cell.hidden_size
  entries = []
  for i, conv in enumerate(model.convs):
    entries += [E(("encoder", f"conv{i}", "kernel"), conv.weight, kind="conv"),
                E(("encoder", f"conv{i}", "bias"), conv.bias)]
  if model.norm is not None:
    entries += [E(("encoder", "norm", "scale"), model.norm.weight),
                E(("encoder", "norm", "bias"), model.norm.bias)]
  entries += [E(("encoder", "position_embedding"), model.position_embedding),
              E(("attend", "query", "kernel"), model.query.weight, kind="dense"),
              E(("attend", "key", "kernel"), model.key.weight, kind="dense"),
              E(("attend", "key", "bias"), model.key.bias),
              E(("attend", "score"), model.score),
              E(("embed", "embedding"), model.embed.weight)]
  for name in ("init_c", "init_h", "gate_dense", "output_dense"):
    layer = getattr(model, name)
    entries += [E((name, "kernel"), layer.weight, kind="dense"), E((name, "bias"), layer.bias)]
  for k, g in enumerate("ifgo"):  # PyTorch's gate order, as Flax names them
    rows = slice(k * h, (k + 1) * h)
    entries += [E(("cell", f"i{g}", "kernel"), model.cell.weight_ih, rows, "dense"),
                E(("cell", f"h{g}", "kernel"), model.cell.weight_hh, rows, "dense"),
                E(("cell", f"h{g}", "bias"), model.cell.bias_hh, rows)]
  return entries


def torch_batch(batch):
  out = {k: torch.from_numpy(np.asarray(v)) for k, v in batch.items()}
  out["image"] = out["image"].permute(0, 3, 1, 2).contiguous()  # NCHW
  return out


def continuity_weight(config) -> float:
  """The phrase-continuity weight ``train_model`` uses (the embedded scenes only)."""
  if config.data.dataset != configs.EMBEDDED:
    return 0.0
  return float(config.model.get("continuity_weight", 0.0))


def torch_loss_fn(config):
  penalty, continuity = float(config.model.attention_penalty), continuity_weight(config)
  words = shapes_captions.WordTokenizer().words
  is_content = torch.tensor([w in shapes_captions.CONTENT_WORDS for w in words])

  def loss_fn(model, batch):
    """``train.losses`` (soft attention): token cross-entropy / token count + penalty * the
    batch mean of the doubly stochastic penalty + the continuity weight * the attention mass
    that moves between consecutive content words (the earlier map detached) / token count."""
    logits, weights = model(batch["image"], batch["decoder_inputs"])
    mask = batch["target_mask"].float()
    losses = torch.nn.functional.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), batch["targets"].reshape(-1).long(),
        reduction="none")
    tokens = mask.sum().clamp(min=1)
    coverage = (weights * mask[..., None]).sum(dim=1)
    loss = (losses * mask.reshape(-1)).sum() / tokens + penalty * (
        (1.0 - coverage) ** 2).sum(dim=-1).mean()
    if continuity > 0:
      on = is_content[batch["targets"].long()] & batch["target_mask"]
      pairs = (on[:, 1:] & on[:, :-1]).float()
      overlap = torch.minimum(weights[:, 1:], weights[:, :-1].detach()).sum(-1)
      loss = loss + continuity * (pairs * (1.0 - overlap)).sum() / tokens
    return loss

  return loss_fn


# ---------------------------------------------------------------------------------------------
# The benchmark.


def add_arguments(parser) -> None:
  del parser  # the config's preset says it all


def setup(config, args, with_torch: bool) -> common.Peer:
  del args
  batch = random_batch(config)
  model = make_model(config)
  init_state, train_step = ours(config, model, batch)
  state = init_state()
  sides = {"ours": common.Side(
      common.jax_step(lambda: state, train_step, lambda sums: ours_loss(config, sums)),
      common.count_parameters(state.params), batch)}
  if with_torch:
    peer = torch_model(config)
    common.load_params(param_map(peer), state.params)
    sides["torch"] = common.Side(common.make_step(peer, torch_loss_fn(config), config),
                                 common.trainable_count(peer), torch_batch(batch))
  m = config.model
  size = configs.image_size(config)
  grid = model.grid_shape(size)
  describe = (f"captioning preset {config.preset!r} ({m.attention} attention): convs "
              f"{tuple(m.channels)} strides {tuple(m.strides)} on {size}x{size} images -> "
              f"{grid[0]}x{grid[1]} grid, LSTM {m.hidden_dim}, embed {m.embed_dim}, attention "
              f"{m.attention_dim}, captions {config.data.max_caption_len}, vocab {VOCAB}, batch "
              f"{config.batch_size}, penalty {m.attention_penalty}, {config.optimizer} + "
              f"clipping")
  return common.Peer(sides, "examples", config.batch_size, describe)
