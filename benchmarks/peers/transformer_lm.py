"""The Transformer LM peer (experiments/transformer_lm): a char-level decoder-only LM in PyTorch.

The JAX side is the experiment's own model and optimiser: ``experiments.transformer_lm.train.
make_model``, ``training.make_optimizer`` (global-norm clipping + AdamW with the warmup-cosine
schedule) and ``training.make_train_step`` (which also computes the metric sums and gradient norm
the training loop logs). The PyTorch side rebuilds the same network layer for layer (pre-norm GPT
blocks, learned positions, tied embedding head, tanh-GELU MLP, biases everywhere, LayerNorm
epsilon 1e-6) with ``scaled_dot_product_attention(is_causal=True)``, the same AdamW
hyperparameters and clipping. Each side starts from its own initialisation.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np

from attention_jax import training
from attention_jax.models import transformer
from benchmarks.peers import common
from experiments.transformer_lm import config as lm_configs
from experiments.transformer_lm import train as transformer_lm

torch = common.torch


def get_config(preset: str):
  return lm_configs.get_config(preset)


def jax_side(config, vocab_size, implementation):
  """Returns ``(step(batch), parameter count)``; ``step`` runs one optimiser update."""
  model = transformer_lm.make_model(config, vocab_size)
  if implementation is not None:
    model = model.clone(config=dataclasses.replace(model.config, implementation=implementation))
  context = config.model.context
  example = jnp.zeros((2, context), jnp.int32)
  params = model.init(jax.random.key(0), example)["params"]
  tx, _ = training.make_optimizer(config)
  deterministic = config.model.dropout_rate == 0.0

  def loss_fn(params, batch, rng):
    logits = model.apply({"params": params}, batch["inputs"], deterministic=deterministic,
                         rngs={"dropout": rng})
    sums = training.classification_sums(logits, batch["targets"])
    return sums["loss_sum"] / jnp.maximum(sums["token_count"], 1.0), sums

  train_step = training.make_train_step(loss_fn)
  holder = {"state": common.replicated(
      training.create_train_state(params, tx, seed=1, apply_fn=model.apply))}

  def step(batch):
    holder["state"], sums = train_step(holder["state"], batch)
    jax.block_until_ready(sums)

  return step, transformer.count_parameters(params)


def torch_model(config, vocab_size):
  """The same decoder-only LM in PyTorch (built only when torch is installed)."""
  nn = torch.nn
  m = config.model
  eps = 1e-6  # TransformerConfig.layer_norm_epsilon

  class Block(nn.Module):

    def __init__(self):
      super().__init__()
      self.attention_norm = nn.LayerNorm(m.features, eps=eps)
      self.query = nn.Linear(m.features, m.features)
      self.key = nn.Linear(m.features, m.features)
      self.value = nn.Linear(m.features, m.features)
      self.out = nn.Linear(m.features, m.features)
      self.mlp_norm = nn.LayerNorm(m.features, eps=eps)
      self.hidden = nn.Linear(m.features, m.mlp_dim)
      self.output = nn.Linear(m.mlp_dim, m.features)
      self.dropout = nn.Dropout(m.dropout_rate)

    def forward(self, x):
      b, t, f = x.shape
      y = self.attention_norm(x)
      heads = [p(y).view(b, t, m.num_heads, f // m.num_heads).transpose(1, 2)
               for p in (self.query, self.key, self.value)]
      a = torch.nn.functional.scaled_dot_product_attention(*heads, is_causal=True)
      x = x + self.dropout(self.out(a.transpose(1, 2).reshape(b, t, f)))
      y = self.output(torch.nn.functional.gelu(self.hidden(self.mlp_norm(x)), approximate="tanh"))
      return x + self.dropout(y)

  class LM(nn.Module):

    def __init__(self):
      super().__init__()
      self.token_embedding = nn.Embedding(vocab_size, m.features)
      self.position_embedding = nn.Embedding(m.context, m.features)
      self.blocks = nn.ModuleList(Block() for _ in range(m.num_layers))
      self.final_norm = nn.LayerNorm(m.features, eps=eps)
      self.dropout = nn.Dropout(m.dropout_rate)
      for e in (self.token_embedding, self.position_embedding):
        nn.init.normal_(e.weight, std=0.02)

    def forward(self, tokens):
      positions = torch.arange(tokens.shape[1])
      x = self.dropout(self.token_embedding(tokens) + self.position_embedding(positions))
      for block in self.blocks:
        x = block(x)
      return self.final_norm(x) @ self.token_embedding.weight.T  # tied head

  return LM()


def torch_side(config, vocab_size):
  model = torch_model(config, vocab_size)
  model.train()
  optimizer = torch.optim.AdamW(
      model.parameters(), lr=config.learning_rate, betas=(0.9, config.adam_b2), eps=1e-8,
      weight_decay=config.weight_decay)
  warmup, total = config.warmup_steps, config.num_steps
  end = config.end_learning_rate / config.learning_rate

  def warmup_cosine(step):  # optax.warmup_cosine_decay_schedule as a multiplier
    if step < warmup:
      return step / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return end + (1 - end) * 0.5 * (1 + math.cos(math.pi * progress))

  scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine)

  def step(batch):
    inputs, targets = batch
    logits = model(inputs)
    loss = torch.nn.functional.cross_entropy(logits.reshape(-1, vocab_size), targets.reshape(-1))
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip_norm)
    optimizer.step()
    scheduler.step()
    loss.item()  # synchronise like block_until_ready

  return step, sum(p.numel() for p in model.parameters())


def add_arguments(parser) -> None:
  group = parser.add_argument_group("transformer_lm")
  group.add_argument("--vocab-size", type=int, default=96,
                     help="characters in the vocabulary (the stdlib text gives about this many)")
  group.add_argument("--implementation", default=None,
                     help="ops.dot_product_attention implementation (default: None = automatic)")


def setup(config, args, with_torch: bool) -> common.Peer:
  m = config.model
  rng = np.random.default_rng(0)
  ids = rng.integers(0, args.vocab_size, size=(config.batch_size, m.context + 1))
  batch = {"inputs": jnp.asarray(ids[:, :-1], jnp.int32),
           "targets": jnp.asarray(ids[:, 1:], jnp.int32)}
  sides = {"ours": common.Side(*jax_side(config, args.vocab_size, args.implementation), batch)}
  if with_torch:
    torch_batch = (torch.from_numpy(ids[:, :-1]).long(), torch.from_numpy(ids[:, 1:]).long())
    sides["torch"] = common.Side(*torch_side(config, args.vocab_size), torch_batch)
  describe = (f"preset {args.preset!r} (flat_update={config.flat_update}): {m.num_layers} layers, "
              f"width {m.features}, {m.num_heads} heads, mlp {m.mlp_dim}, context {m.context}, "
              f"batch {config.batch_size}, vocab {args.vocab_size}, AdamW + clipping")
  return common.Peer(sides, "tokens", config.batch_size * m.context, describe, same_start=False)
