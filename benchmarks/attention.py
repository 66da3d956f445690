r"""Attention speed against the peers, measured in one run.

Times the forward pass and forward+backward (gradient of a sum w.r.t. q, k, v) of
``ops.dot_product_attention`` against ``jax.nn.dot_product_attention``,
``flax.linen.dot_product_attention`` and, when installed, PyTorch's ``scaled_dot_product_attention``
on the same inputs. Prints a table of median milliseconds and the ratios ours / peer (below 1 means
we are faster). Machines are noisy: compare ratios from one run, not absolute times across runs.

  python -m benchmarks.attention                       # default lengths 256 1024
  python -m benchmarks.attention --lengths 256 1024 4096 --causal both --out runs/bench.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from attention_jax import ops

try:
  import torch
except ImportError:  # PyTorch is optional: its column stays empty.
  torch = None


def median_ms(fn: Callable[[], object], repeats: int) -> float:
  fn()  # compile / warm up
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    times.append((time.perf_counter() - start) * 1e3)
  return statistics.median(times)


def jax_timers(attention, q, k, v):
  forward = jax.jit(attention)
  grad = jax.jit(jax.grad(lambda q, k, v: jnp.sum(attention(q, k, v)), argnums=(0, 1, 2)))
  return (lambda: forward(q, k, v).block_until_ready(),
          lambda: jax.block_until_ready(grad(q, k, v)))


def torch_timers(q, k, v, causal):
  # PyTorch's layout is [batch, heads, length, head_dim].
  tq, tk, tv = (torch.from_numpy(np.array(a)).transpose(1, 2).contiguous() for a in (q, k, v))
  sdpa = torch.nn.functional.scaled_dot_product_attention

  def forward():
    with torch.no_grad():
      sdpa(tq, tk, tv, is_causal=causal)

  grads = [t.clone().requires_grad_(True) for t in (tq, tk, tv)]

  def backward():
    for g in grads:
      g.grad = None
    sdpa(*grads, is_causal=causal).sum().backward()

  return forward, backward


def peers(causal, length):
  mask = ops.causal_mask(length) if causal else None
  return {
      "ours": lambda q, k, v: ops.dot_product_attention(q, k, v, is_causal=causal),
      "jax.nn": lambda q, k, v: jax.nn.dot_product_attention(q, k, v, is_causal=causal),
      "flax.linen": lambda q, k, v: nn.dot_product_attention(q, k, v, mask=mask,
                                                             deterministic=True),
  }


def run(lengths, causal_options, batch, heads, head_dim, repeats):
  rows = []
  for causal in causal_options:
    for length in lengths:
      rng = np.random.default_rng(0)
      q, k, v = (jnp.asarray(rng.normal(size=(batch, length, heads, head_dim)), jnp.float32)
                 for _ in range(3))
      row = {"length": length, "causal": causal}
      for name, attention in peers(causal, length).items():
        forward, backward = jax_timers(attention, q, k, v)
        row[f"{name} fwd"] = median_ms(forward, repeats)
        row[f"{name} fwd+bwd"] = median_ms(backward, repeats)
      if torch is not None:
        forward, backward = torch_timers(q, k, v, causal)
        row["torch fwd"] = median_ms(forward, repeats)
        row["torch fwd+bwd"] = median_ms(backward, repeats)
      rows.append(row)
      print_row(row)
  return rows


def print_row(row):
  cells = [f"L={row['length']:<5d} {'causal' if row['causal'] else 'full  '}"]
  for kind in ("fwd", "fwd+bwd"):
    ours = row[f"ours {kind}"]
    parts = [f"{kind}: ours {ours:8.2f} ms"]
    for peer in ("jax.nn", "flax.linen", "torch"):
      if f"{peer} {kind}" in row:
        theirs = row[f"{peer} {kind}"]
        parts.append(f"{peer} {theirs:8.2f} ({ours / theirs:4.2f}x)")
    cells.append("  ".join(parts))
  print(" | ".join(cells), flush=True)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--lengths", type=int, nargs="+", default=[256, 1024])
  parser.add_argument("--causal", choices=["no", "yes", "both"], default="both")
  parser.add_argument("--batch", type=int, default=4)
  parser.add_argument("--heads", type=int, default=8)
  parser.add_argument("--head-dim", type=int, default=64)
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--out", default=None, help="also write the rows as JSON here")
  args = parser.parse_args()
  causal_options = {"no": [False], "yes": [True], "both": [False, True]}[args.causal]
  print(f"jax {jax.__version__} on {jax.devices()[0].platform}; "
        f"torch {torch.__version__ if torch else 'not installed'}; batch {args.batch}, "
        f"{args.heads} heads, head_dim {args.head_dim}, fp32; median of {args.repeats}; "
        f"(ratio = ours / peer, below 1 = ours faster)")
  rows = run(args.lengths, causal_options, args.batch, args.heads, args.head_dim, args.repeats)
  if args.out:
    with open(args.out, "w") as f:
      json.dump(rows, f, indent=2)


if __name__ == "__main__":
  main()
