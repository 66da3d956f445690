r"""One training step of the char-level Transformer LM: ours (JAX/Flax/Optax) against an equal
PyTorch model, tokens per second side by side, measured in one run.

The JAX side is the experiment's own model and step: ``experiments.transformer_lm.train.make_model``,
``training.make_optimizer`` (global-norm clipping + AdamW with the warmup-cosine schedule) and
``training.make_train_step`` (which also computes the metric sums and gradient norm the training
loop logs). The PyTorch side rebuilds the same network layer for layer (pre-norm GPT blocks, learned
positions, tied embedding head, tanh-GELU MLP, biases everywhere, LayerNorm epsilon 1e-6) with
``scaled_dot_product_attention(is_causal=True)``, the same AdamW hyperparameters and clipping; the
parameter counts are printed and must agree. Steps alternate between the two frameworks in rounds;
the table gives the median tokens/s per round and the ratio ours / PyTorch (above 1 = ours faster).

  python -m benchmarks.train_step                      # the default (2-core CPU) config
  python -m benchmarks.train_step --preset gpu --rounds 3 --steps 5
  python -m benchmarks.train_step --out benchmarks/results/train_step_cpu.json
  python -m benchmarks.train_step --torch-threads 1   # PyTorch single-threaded (small ops)

PyTorch is an optional benchmark dependency: without it only our side is timed.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from attention_jax import training
from attention_jax.models import transformer
from benchmarks import load
from experiments.transformer_lm import train as transformer_lm
from experiments.transformer_lm import config as lm_configs

try:
  import torch
except ImportError:  # PyTorch is optional: only our side is timed.
  torch = None


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
  holder = {"state": training.create_train_state(params, tx, seed=1, apply_fn=model.apply)}

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


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--preset", default="default", help="experiments/transformer_lm/config.py")
  parser.add_argument("--vocab-size", type=int, default=96,
                      help="characters in the vocabulary (the stdlib text gives about this many)")
  parser.add_argument("--implementation", default=None,
                      help="ops.dot_product_attention implementation (default: None = automatic)")
  parser.add_argument("--rounds", type=int, default=5)
  parser.add_argument("--steps", type=int, default=20, help="steps per framework per round")
  parser.add_argument("--torch-threads", type=int, default=None,
                      help="torch.set_num_threads (default: PyTorch's own choice, one per core)")
  parser.add_argument("--flat-update", choices=("config", "on", "off"), default="config",
                      help="the optimiser over one flat vector (config.flat_update; default: "
                           "the preset's)")
  parser.add_argument("--out", default=None, help="also write the result as JSON here")
  load.add_flag(parser)
  args = parser.parse_args()

  if torch is not None and args.torch_threads:
    torch.set_num_threads(args.torch_threads)
  config = lm_configs.get_config(args.preset)
  if args.flat_update != "config":
    config.flat_update = args.flat_update == "on"
  m = config.model
  tokens_per_step = config.batch_size * m.context
  rng = np.random.default_rng(0)
  ids = rng.integers(0, args.vocab_size, size=(config.batch_size, m.context + 1))
  jax_batch = {"inputs": jnp.asarray(ids[:, :-1], jnp.int32),
               "targets": jnp.asarray(ids[:, 1:], jnp.int32)}
  sides = {"ours": jax_side(config, args.vocab_size, args.implementation)}
  if torch is not None:
    torch_batch = (torch.from_numpy(ids[:, :-1]).long(), torch.from_numpy(ids[:, 1:]).long())
    sides["torch"] = torch_side(config, args.vocab_size)
  batches = {"ours": jax_batch, "torch": torch_batch if torch is not None else None}
  counts = {name: count for name, (_, count) in sides.items()}
  print(f"preset {args.preset!r} (flat_update={config.flat_update}): {m.num_layers} layers, width {m.features}, {m.num_heads} heads, "
        f"mlp {m.mlp_dim}, context {m.context}, batch {config.batch_size}, vocab "
        f"{args.vocab_size}, AdamW + clipping; jax {jax.__version__} on "
        f"{jax.devices()[0].platform}, torch {torch.__version__ if torch else 'not installed'} "
        f"({torch.get_num_threads() if torch else 0} threads)")
  print("parameters: " + ", ".join(f"{name} {count:,}" for name, count in counts.items()))
  if torch is not None and counts["ours"] != counts["torch"]:
    raise SystemExit(f"the models differ: {counts}")

  for name, (step, _) in sides.items():  # compile / warm up
    for _ in range(3):
      step(batches[name])
  rates = {name: [] for name in sides}
  guard = load.Guard(args.allow_load)
  load.wait_until_quiet(args.wait_idle)
  guard.start()
  for _ in range(args.rounds):
    for name, (step, _) in sides.items():
      start = time.perf_counter()
      for _ in range(args.steps):
        step(batches[name])
      rates[name].append(args.steps * tokens_per_step / (time.perf_counter() - start))
  result = {"preset": args.preset, "tokens_per_step": tokens_per_step, "parameters": counts,
            "flat_update": bool(config.flat_update),
            "torch_threads": torch.get_num_threads() if torch else None,
            "load_average_before": guard.before, "load_average": load.now(),
            **{f"{name} tokens/s": statistics.median(r) for name, r in rates.items()},
            "rounds": rates}
  line = "  ".join(f"{name} {statistics.median(r):9.0f} tokens/s" for name, r in rates.items())
  if "torch" in rates:
    result["ratio ours/torch"] = statistics.median(rates["ours"]) / statistics.median(
        rates["torch"])
    ratio = guard.ratio(statistics.median(rates["ours"]), statistics.median(rates["torch"]),
                        "{:.2f}")
    line += f"  ratio ours/torch {ratio}"
  print(f"{line}   (median of {args.rounds} rounds x {args.steps} steps; {guard.describe()})")
  if args.out:
    with open(args.out, "w") as f:
      json.dump(result, f, indent=2)


if __name__ == "__main__":
  main()
