r"""A few seconds of attention on the CPU: a self-attention layer learns to reverse a sequence.

Output position ``i`` must copy input token ``L-1-i``. The only way information moves between
positions is the attention layer, so a trained model's attention map is the anti-diagonal: every
query attends to the mirrored key. The demo trains, reports accuracy on fresh sequences and writes
the attention map of one example as a PNG.

  python -m experiments.demo --workdir=runs/demo
"""

from __future__ import annotations

import json
import os
import time

from absl import app
from absl import flags
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from attention_jax import layers
from attention_jax import plotting
from attention_jax import training

VOCAB = 10


class Reverser(nn.Module):
  """Token + learned position embeddings, one attention layer, a per-position classifier."""

  length: int
  features: int = 64
  num_heads: int = 1

  @nn.compact
  def __call__(self, tokens, sow_weights: bool = False):
    """tokens int ``[batch, length]`` -> logits ``[batch, length, VOCAB]``."""
    x = nn.Embed(VOCAB, self.features)(tokens)
    x = layers.LearnedPositionalEmbedding(self.length, self.features)(x)
    attended = layers.MultiHeadAttention(num_heads=self.num_heads)(x, sow_weights=sow_weights)
    hidden = nn.gelu(nn.Dense(self.features)(attended))
    return nn.Dense(VOCAB)(hidden)


def random_batch(rng, batch_size, length):
  return jax.random.randint(rng, (batch_size, length), 0, VOCAB)


def run(workdir: str, steps: int = 400, length: int = 12, seed: int = 0) -> dict:
  """Trains the reverser, writes ``attention_map.png`` and ``eval.json``; returns the results."""
  os.makedirs(workdir, exist_ok=True)
  model = Reverser(length=length)
  init_rng, data_rng = jax.random.split(jax.random.key(seed))
  params = model.init(init_rng, random_batch(init_rng, 1, length))["params"]
  optimizer = optax.adam(3e-3)
  opt_state = optimizer.init(params)

  def loss_fn(params, tokens):
    logits = model.apply({"params": params}, tokens)
    targets = tokens[:, ::-1]
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, targets).mean()
    return loss, jnp.mean(jnp.argmax(logits, -1) == targets)

  @jax.jit
  def train_step(params, opt_state, rng):
    tokens = random_batch(rng, 128, length)
    (loss, accuracy), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, tokens)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss, accuracy

  start = time.perf_counter()
  for step in range(steps):
    params, opt_state, loss, accuracy = train_step(params, opt_state,
                                                   jax.random.fold_in(data_rng, step))
    if step % 100 == 0 or step == steps - 1:
      print(f"step {step:4d}  loss {float(loss):.4f}  accuracy {float(accuracy):.3f}")
  train_seconds = time.perf_counter() - start

  test_tokens = random_batch(jax.random.key(seed + 1), 1000, length)
  _, test_accuracy = loss_fn(params, test_tokens)
  _, state = model.apply({"params": params}, test_tokens[:1], sow_weights=True,
                         mutable=["intermediates"])
  weights = jax.tree_util.tree_leaves(state["intermediates"])[0][0, 0]  # [q_len, kv_len]
  digits = [str(int(t)) for t in test_tokens[0]]
  png = plotting.plot_attention(
      weights, os.path.join(workdir, "attention_map.png"), x_labels=digits,
      y_labels=digits[::-1], title="reverse: output i attends to input L-1-i",
      x_title="input tokens (keys)", y_title="output tokens (queries)")
  anti_diagonal = float(jnp.mean(weights[jnp.arange(length), length - 1 - jnp.arange(length)]))
  result = {"test_accuracy": float(test_accuracy), "train_seconds": round(train_seconds, 2),
            "steps": steps, "mean_attention_on_mirrored_position": anti_diagonal}
  training.write_eval_json(workdir, result)
  print(json.dumps(result))
  print(f"attention map written to {png}")
  return result


def main(argv):
  del argv
  f = flags.FLAGS
  run(f.workdir, f.steps, f.length, f.seed)


if __name__ == "__main__":
  # Flags are defined only when run as a script, so experiments can be imported side by side.
  flags.DEFINE_string("workdir", "runs/demo", "Where the PNG and metrics go.")
  flags.DEFINE_integer("steps", 400, "Training steps.")
  flags.DEFINE_integer("length", 12, "Sequence length.")
  flags.DEFINE_integer("seed", 0, "PRNG seed.")
  app.run(main)
