"""The seq2seq peer: experiments/seq2seq's RNN encoder-decoder (bidirectional GRU encoder over the
unpadded tokens, GRU decoder with Bahdanau's additive attention, teacher forcing) in PyTorch.

Ours is the experiment's own code: ``tasks.dates_translation.make_rnn`` and ``train_rnn`` (its
parameters, the optimiser of ``training.make_optimizer`` and the jitted step of
``training.train_teacher_forced``, taken from the call into the training loop by
:class:`common.capture_training`). PyTorch's is the same network layer for layer:

* encoder: ``nn.Embedding`` and one bidirectional ``nn.GRU`` over a ``PackedSequence`` (so the
  backward direction starts at each row's last real token, as ``flax.linen.RNN`` with
  ``seq_lengths`` does), annotations zero on the padding, ``s_0 = tanh(W_init [h_fwd; h_bwd])``;
* decoder: ``nn.GRUCell`` fed ``[embed(y_{t-1}); c_t]``, ``c_t`` the additive attention
  ``v . tanh(W_q s_{t-1} + W_k h_i + b)`` with the keys projected once and the padding masked,
  logits ``W_out [s_t; c_t; embed(y_{t-1})] + b``;
* loss: token cross-entropy over the target mask / token count; Adam, the warmup-cosine schedule
  and global-norm clipping of the config.

The one difference in parameters: PyTorch's GRU has a hidden-side bias on the reset and update
gates where Flax's has none (the input-side bias already covers it). Those ``2 * hidden`` entries
per GRU stay at zero with a zero gradient (:func:`common.freeze_rows`) and are not counted, so
the function, the update and the count are ours. PyTorch embeds all decoder inputs before the
loop and applies the output layer once after it (the same products, batched), as one would write
it in PyTorch.
"""

from __future__ import annotations

import types

import numpy as np

from attention_jax.data.tokenizers import BOS_ID, EOS_ID, PAD_ID
from attention_jax.tasks import dates_translation as task
from attention_jax.training import teacher_forcing
from benchmarks.peers import common
from experiments.seq2seq import config as configs

torch = common.torch

#: Vocabulary sizes of the dates data (default config): 519 source characters and 17 target
#: ones give the 445,265 parameters experiments/seq2seq/README.md reports for "additive".
SOURCE_VOCAB = 519
TARGET_VOCAB = 17
#: Lengths of the training split's sources (characters) and targets (+ EOS), dates.py docstring.
SOURCE_LENGTHS = (4, 35)
TARGET_LENGTHS = (6, 20)
ATTENTIONS = ("additive", "none")


def get_config(preset: str):
  return configs.get_config(preset)


def random_batch(config, batch_size=None, source_vocab=SOURCE_VOCAB, target_vocab=TARGET_VOCAB,
                 seed=0):
  """A batch as ``data.make_train_batches`` makes them (the config's shapes), random tokens and
  lengths in the training split's ranges."""
  rng = np.random.default_rng(seed)
  b = batch_size or config.batch_size
  # Padded as the experiment pads its training batches (not to test_long's max_input_len).
  s, t = task.train_input_len(config), config.data.max_target_len
  input_lengths = rng.integers(SOURCE_LENGTHS[0], min(SOURCE_LENGTHS[1], s) + 1, size=b)
  target_lengths = rng.integers(min(TARGET_LENGTHS[0], t), min(TARGET_LENGTHS[1], t) + 1, size=b)
  inputs = np.where(np.arange(s) < input_lengths[:, None],
                    rng.integers(4, source_vocab, size=(b, s)), PAD_ID)
  words = rng.integers(4, target_vocab, size=(b, t))
  target_mask = np.arange(t) < target_lengths[:, None]
  targets = np.where(np.arange(t) == target_lengths[:, None] - 1, EOS_ID,
                     np.where(target_mask, words, PAD_ID))
  decoder_inputs = np.where(target_mask, np.concatenate(
      [np.full((b, 1), BOS_ID), targets[:, :-1]], axis=1), PAD_ID)
  return {"inputs": inputs.astype(np.int32), "input_lengths": input_lengths.astype(np.int32),
          "decoder_inputs": decoder_inputs.astype(np.int32), "targets": targets.astype(np.int32),
          "target_mask": target_mask}


def make_model(config, attention="additive", source_vocab=SOURCE_VOCAB, target_vocab=TARGET_VOCAB):
  """The experiment's model (``dates_translation.make_rnn``)."""
  tokenizers = (types.SimpleNamespace(vocab_size=source_vocab),
                types.SimpleNamespace(vocab_size=target_vocab))
  return task.make_rnn(config, attention, *tokenizers)


def ours(config, model, batch):
  """``(init_state, train_step)`` of ``train_rnn`` on ``batch``: the experiment's parameters
  (initialised from ``config.seed`` on its first batch), optimiser and jitted step."""
  with common.capture_training(teacher_forcing) as captured:
    task.train_rnn(config, "/nonexistent-workdir", model, [batch], [batch])
  return captured.init_state, captured.train_step


# ---------------------------------------------------------------------------------------------
# PyTorch.


def torch_model(config, attention="additive", source_vocab=SOURCE_VOCAB,
                target_vocab=TARGET_VOCAB):
  """The same encoder-decoder in PyTorch; ``.frozen`` counts the pinned GRU bias entries."""
  nn = torch.nn
  m = config.model
  if attention not in ATTENTIONS:
    raise ValueError(f"the PyTorch peer has attention {ATTENTIONS}, not {attention!r}")
  if m.cell_type != "gru":
    raise ValueError(f"the PyTorch peer has the GRU cell, not {m.cell_type!r}")
  hidden = m.hidden_dim

  class Seq2Seq(nn.Module):

    def __init__(self):
      super().__init__()
      self.source_embed = nn.Embedding(source_vocab, m.embed_dim)
      self.encoder = nn.GRU(m.embed_dim, hidden, batch_first=True, bidirectional=True)
      self.target_embed = nn.Embedding(target_vocab, m.embed_dim)
      self.init_dense = nn.Linear(2 * hidden, hidden)
      self.cell = nn.GRUCell(m.embed_dim + 2 * hidden, hidden)
      self.output_dense = nn.Linear(hidden + 2 * hidden + m.embed_dim, target_vocab)
      if attention == "additive":
        self.query = nn.Linear(hidden, m.attention_dim, bias=False)
        self.key = nn.Linear(2 * hidden, m.attention_dim)
        self.score = nn.Parameter(torch.zeros(m.attention_dim))
      # PyTorch's GRUs have b_hr and b_hz (rows :2H of bias_hh) where Flax's have none.
      pinned = [self.encoder.bias_hh_l0, self.encoder.bias_hh_l0_reverse, self.cell.bias_hh]
      with torch.no_grad():
        for bias in pinned:
          bias[:2 * hidden].zero_()
      self.frozen = sum(common.freeze_rows(b, slice(0, 2 * hidden)) for b in pinned)

    def forward(self, inputs, input_lengths, decoder_inputs):
      b, s = inputs.shape
      packed = nn.utils.rnn.pack_padded_sequence(
          self.source_embed(inputs), input_lengths, batch_first=True, enforce_sorted=False)
      states, last = self.encoder(packed)
      states, _ = nn.utils.rnn.pad_packed_sequence(states, batch_first=True, total_length=s)
      # The forward state after each row's last token, the backward one after its first.
      fixed = torch.cat([last[0], last[1]], dim=-1)
      state = torch.tanh(self.init_dense(fixed))
      if attention == "additive":
        keys = self.key(states)
        padding = torch.arange(s)[None, :] >= input_lengths[:, None]
      embedded = self.target_embed(decoder_inputs)
      features = []
      for t in range(decoder_inputs.shape[1]):
        if attention == "additive":
          scores = torch.tanh(self.query(state)[:, None, :] + keys) @ self.score
          weights = scores.masked_fill(padding, float("-inf")).softmax(dim=-1)
          context = torch.bmm(weights[:, None, :], states)[:, 0]
        else:
          context = fixed
        state = self.cell(torch.cat([embedded[:, t], context], dim=-1), state)
        features.append(torch.cat([state, context, embedded[:, t]], dim=-1))
      return self.output_dense(torch.stack(features, dim=1))

  return Seq2Seq()


def param_map(model, attention="additive"):
  """Where each Flax parameter of the experiment's ``Seq2Seq`` lives in :func:`torch_model`."""
  h = model.cell.hidden_size
  gates = {"r": slice(0, h), "z": slice(h, 2 * h), "n": slice(2 * h, 3 * h)}
  E = common.Entry

  def gru(prefix, weight_ih, weight_hh, bias_ih, bias_hh):
    entries = []
    for g, rows in gates.items():
      entries += [E(prefix + (f"i{g}", "kernel"), weight_ih, rows, "dense"),
                  E(prefix + (f"i{g}", "bias"), bias_ih, rows),
                  E(prefix + (f"h{g}", "kernel"), weight_hh, rows, "dense")]
    return entries + [E(prefix + ("hn", "bias"), bias_hh, gates["n"])]

  enc = model.encoder
  entries = [E(("encoder", "embed", "embedding"), model.source_embed.weight),
             E(("target_embed", "embedding"), model.target_embed.weight),
             E(("init_dense", "kernel"), model.init_dense.weight, kind="dense"),
             E(("init_dense", "bias"), model.init_dense.bias),
             E(("output_dense", "kernel"), model.output_dense.weight, kind="dense"),
             E(("output_dense", "bias"), model.output_dense.bias)]
  entries += gru(("encoder", "forward"), enc.weight_ih_l0, enc.weight_hh_l0, enc.bias_ih_l0,
                 enc.bias_hh_l0)
  entries += gru(("encoder", "backward"), enc.weight_ih_l0_reverse, enc.weight_hh_l0_reverse,
                 enc.bias_ih_l0_reverse, enc.bias_hh_l0_reverse)
  entries += gru(("cell",), model.cell.weight_ih, model.cell.weight_hh, model.cell.bias_ih,
                 model.cell.bias_hh)
  if attention == "additive":
    entries += [E(("attend", "query", "kernel"), model.query.weight, kind="dense"),
                E(("attend", "key", "kernel"), model.key.weight, kind="dense"),
                E(("attend", "key", "bias"), model.key.bias),
                E(("attend", "score"), model.score)]
  return entries


def torch_batch(batch):
  return {k: torch.from_numpy(np.asarray(v)) for k, v in batch.items()}


def torch_loss(model, batch):
  """Token cross-entropy over the target mask / token count (``train_teacher_forced``)."""
  logits = model(batch["inputs"], batch["input_lengths"], batch["decoder_inputs"])
  mask = batch["target_mask"]
  losses = torch.nn.functional.cross_entropy(
      logits.reshape(-1, logits.shape[-1]), batch["targets"].reshape(-1).long(), reduction="none")
  return (losses * mask.reshape(-1)).sum() / mask.sum().clamp(min=1)


# ---------------------------------------------------------------------------------------------
# The benchmark.


def add_arguments(parser) -> None:
  group = parser.add_argument_group("seq2seq")
  group.add_argument("--attention", choices=ATTENTIONS, default="additive",
                     help="the seq2seq model (experiments/seq2seq trains both)")
  group.add_argument("--source-vocab-size", type=int, default=SOURCE_VOCAB)
  group.add_argument("--target-vocab-size", type=int, default=TARGET_VOCAB)


def setup(config, args, with_torch: bool) -> common.Peer:
  vocab = dict(source_vocab=args.source_vocab_size, target_vocab=args.target_vocab_size)
  batch = random_batch(config, **vocab)
  model = make_model(config, args.attention, **vocab)
  init_state, train_step = ours(config, model, batch)
  state = init_state()
  sides = {"ours": common.Side(
      common.jax_step(lambda: state, train_step,
                      lambda sums: sums["loss_sum"] / sums["token_count"]),
      common.count_parameters(state.params), batch)}
  if with_torch:
    peer = torch_model(config, args.attention, **vocab)
    common.load_params(param_map(peer, args.attention), state.params)
    sides["torch"] = common.Side(common.make_step(peer, torch_loss, config),
                                 common.trainable_count(peer, peer.frozen), torch_batch(batch))
  m = config.model
  describe = (f"seq2seq preset {config.preset!r} ({args.attention} attention): bidirectional "
              f"{m.cell_type.upper()} encoder + decoder, embed {m.embed_dim}, hidden "
              f"{m.hidden_dim}, attention {m.attention_dim}, batch {config.batch_size}, source "
              f"{task.train_input_len(config)} (lengths {SOURCE_LENGTHS[0]}-{SOURCE_LENGTHS[1]}), "
              f"target {config.data.max_target_len}, vocab {args.source_vocab_size}/"
              f"{args.target_vocab_size}, {config.optimizer} + clipping")
  return common.Peer(sides, "examples", config.batch_size, describe)
