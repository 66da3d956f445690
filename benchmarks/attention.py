r"""Attention speed against the peers, measured in one run.

Times the forward pass and forward+backward (gradient of a sum w.r.t. q, k, v) of
``ops.dot_product_attention`` against ``jax.nn.dot_product_attention``,
``flax.linen.dot_product_attention`` and, when installed, PyTorch's ``scaled_dot_product_attention``
on the same inputs. Prints a table of median milliseconds and the ratios ours / peer (below 1 means
we are faster). The implementations take turns call by call, and each row ends with the 1-minute
load average before and after it: a row begun above half the core count (1.0 on 2 cores) prints
"load too high" instead of its ratios unless ``--allow-load`` (``benchmarks/load.py``).

"ours" is the default path (``implementation=None``); "flash" (pure JAX), "cpu_flash" (the
native kernel, where built) and "reference" are our explicit implementations, timed beside it.

  python -m benchmarks.attention                       # default lengths 256 1024
  python -m benchmarks.attention --lengths 256 1024 4096 --causal both --out runs/bench.json
  python -m benchmarks.attention --lengths 4096 --peers jax.nn flax.linen torch   # skip ours' twins
  python -m benchmarks.attention --memory 8192 16384 32768 65536   # peak RSS, fwd+bwd, per length
  python -m benchmarks.attention --causal-speedup --lengths 4096 --repeats 3   # full vs causal

``--memory`` runs forward+backward at batch 1, 1 head, head_dim 64 in a fresh subprocess per
length and implementation and prints each process's peak resident memory; the reference path is
skipped (and says so) where its ``[L, L]`` weights would not fit in this machine's memory.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from attention_jax import ops
from attention_jax.ops import cpu_flash
from benchmarks import load

try:
  import torch
except ImportError:  # PyTorch is optional: its column stays empty.
  torch = None


def interleaved_medians(timers: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
  """Median milliseconds of each timer, the timers taking turns (one call each per round) so
  that load from other processes falls on all of them alike. The order rotates every round and
  each call starts after a short pause: a call right after another framework's otherwise pays for
  that framework's worker threads still spinning (measured: up to 2x for the first in a round)."""
  for fn in timers.values():
    fn()  # compile / warm up
  names = list(timers)
  times = {name: [] for name in names}
  for round_ in range(repeats):
    for name in names[round_ % len(names):] + names[:round_ % len(names)]:
      time.sleep(0.05)
      start = time.perf_counter()
      timers[name]()
      times[name].append((time.perf_counter() - start) * 1e3)
  return {name: statistics.median(t) for name, t in times.items()}


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
      "flash": lambda q, k, v: ops.dot_product_attention(q, k, v, is_causal=causal,
                                                         implementation="flash"),
      "reference": lambda q, k, v: ops.dot_product_attention(q, k, v, is_causal=causal,
                                                             implementation="reference"),
      **({"cpu_flash": lambda q, k, v: ops.dot_product_attention(
          q, k, v, is_causal=causal, implementation="cpu_flash")} if cpu_flash.available()
         else {}),
      "jax.nn": lambda q, k, v: jax.nn.dot_product_attention(q, k, v, is_causal=causal),
      "flax.linen": lambda q, k, v: nn.dot_product_attention(q, k, v, mask=mask,
                                                             deterministic=True),
  }


def run(lengths, causal_options, batch, heads, head_dim, repeats, only=None, guard=None,
        wait_idle=False):
  rows = []
  guard = guard or load.Guard(allow=False)
  for causal in causal_options:
    for length in lengths:
      load.wait_until_quiet(wait_idle)
      guard.start()
      rng = np.random.default_rng(0)
      q, k, v = (jnp.asarray(rng.normal(size=(batch, length, heads, head_dim)), jnp.float32)
                 for _ in range(3))
      row = {"length": length, "causal": causal}
      timers = {}
      for name, attention in peers(causal, length).items():
        if only and name not in only:
          continue
        forward, backward = jax_timers(attention, q, k, v)
        timers[f"{name} fwd"], timers[f"{name} fwd+bwd"] = forward, backward
      if torch is not None and (not only or "torch" in only):
        timers["torch fwd"], timers["torch fwd+bwd"] = torch_timers(q, k, v, causal)
      for kind in ("fwd", "fwd+bwd"):
        row.update(interleaved_medians(
            {name: fn for name, fn in timers.items() if name.endswith(" " + kind)}, repeats))
      row["load average before"] = guard.before
      row["load average"] = load.now()
      rows.append(row)
      print_row(row, guard)
  return rows


PEERS = ("flash", "cpu_flash", "reference", "jax.nn", "flax.linen", "torch")


def print_row(row, guard):
  cells = [f"L={row['length']:<5d} {'causal' if row['causal'] else 'full  '}"]
  for kind in ("fwd", "fwd+bwd"):
    ours = row[f"ours {kind}"]
    parts = [f"{kind}: ours {ours:8.2f} ms"]
    for peer in PEERS:
      if f"{peer} {kind}" in row:
        theirs = row[f"{peer} {kind}"]
        parts.append(f"{peer} {theirs:8.2f} ({guard.ratio(ours, theirs, '{:4.2f}x')})")
    cells.append("  ".join(parts))
  print(" | ".join(cells) + f" | {guard.describe()}", flush=True)


def run_causal_speedup(lengths, batch, heads, head_dim, repeats, guard):
  """Our default path, full and causal interleaved in one run: how much the skipped blocks save."""
  rows = []
  for length in lengths:
    guard.start()
    rng = np.random.default_rng(0)
    q, k, v = (jnp.asarray(rng.normal(size=(batch, length, heads, head_dim)), jnp.float32)
               for _ in range(3))
    timers = {}
    for causal in (False, True):
      attention = lambda q, k, v, causal=causal: ops.dot_product_attention(  # noqa: E731
          q, k, v, is_causal=causal)
      mask = "causal" if causal else "full"
      timers[f"{mask} fwd"], timers[f"{mask} fwd+bwd"] = jax_timers(attention, q, k, v)
    row = {"length": length}
    for kind in ("fwd", "fwd+bwd"):
      row.update(interleaved_medians(
          {name: fn for name, fn in timers.items() if name.endswith(" " + kind)}, repeats))
      row[f"speed-up {kind}"] = row[f"full {kind}"] / row[f"causal {kind}"]
    row["load average before"] = guard.before
    row["load average"] = load.now()
    print(f"L={length:<6d} " + "  ".join(f"{name} {row[name]:9.1f} ms" for name in timers)
          + f"  | causal faster by {guard.ratio(row['full fwd'], row['causal fwd'])} fwd, "
          f"{guard.ratio(row['full fwd+bwd'], row['causal fwd+bwd'])} fwd+bwd | "
          f"{guard.describe()}", flush=True)
    rows.append(row)
  return rows


def memory_child(length, implementation):
  """Forward+backward once at batch 1, 1 head, head_dim 64; prints this process's peak RSS (MiB)."""
  rng = np.random.default_rng(0)
  q, k, v = (jnp.asarray(rng.normal(size=(1, length, 1, 64)), jnp.float32) for _ in range(3))
  loss = lambda q, k, v: jnp.sum(ops.dot_product_attention(  # noqa: E731
      q, k, v, is_causal=True, implementation=implementation))
  jax.block_until_ready(jax.jit(jax.grad(loss, argnums=(0, 1, 2)))(q, k, v))
  peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
  print(json.dumps({"peak_mib": peak_kib / 1024}))


def available_bytes() -> int:
  with open("/proc/meminfo") as f:
    info = dict(line.split(":", 1) for line in f)
  return int(info["MemAvailable"].split()[0]) * 1024


def run_memory(lengths):
  print("peak resident memory of a fresh process, causal forward+backward, batch 1, 1 head, "
        "head_dim 64, fp32")
  rows = []
  for length in lengths:
    row = {"length": length}
    native = ("cpu_flash",) if cpu_flash.available() else ()
    for implementation in (*native, "flash", "reference"):
      # The reference path holds a few [L, L] float32 arrays (logits, weights, their gradients).
      needed = 3 * length * length * 4
      if implementation == "reference" and needed > 0.8 * available_bytes():
        row[implementation] = None
        print(f"L={length:<6d} {implementation:9s} cannot run: needs ~{needed / 2**30:.0f} GiB "
              f"for its [L, L] weights, {available_bytes() / 2**30:.0f} GiB available", flush=True)
        continue
      start = time.perf_counter()
      result = subprocess.run(
          [sys.executable, "-m", "benchmarks.attention", "--memory-child", str(length),
           implementation], capture_output=True, text=True, env=os.environ.copy())
      if result.returncode != 0:
        row[implementation] = None
        print(f"L={length:<6d} {implementation:9s} failed: "
              f"{result.stderr.strip().splitlines()[-1:]}", flush=True)
        continue
      peak = json.loads(result.stdout.strip().splitlines()[-1])["peak_mib"]
      row[implementation] = peak
      print(f"L={length:<6d} {implementation:9s} peak RSS {peak:8.0f} MiB "
            f"({time.perf_counter() - start:.0f} s incl. start-up)", flush=True)
    rows.append(row)
  return rows


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--lengths", type=int, nargs="+", default=[256, 1024])
  parser.add_argument("--causal", choices=["no", "yes", "both"], default="both")
  parser.add_argument("--batch", type=int, default=4)
  parser.add_argument("--heads", type=int, default=8)
  parser.add_argument("--head-dim", type=int, default=64)
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--peers", nargs="+", default=None,
                      choices=PEERS,
                      help="time only these beside ours (default: all)")
  parser.add_argument("--out", default=None, help="also write the rows as JSON here")
  parser.add_argument("--memory", type=int, nargs="*", default=None, metavar="LENGTH",
                      help="measure peak RSS of forward+backward at these lengths instead")
  parser.add_argument("--causal-speedup", action="store_true",
                      help="time our default path full vs causal, interleaved, instead")
  parser.add_argument("--memory-child", nargs=2, default=None, help=argparse.SUPPRESS)
  load.add_flag(parser)
  args = parser.parse_args()
  guard = load.Guard(args.allow_load)
  if args.memory_child:
    memory_child(int(args.memory_child[0]), args.memory_child[1])
    return
  if args.memory is not None:
    rows = run_memory(args.memory or [8192, 16384, 32768, 65536])
    if args.out:
      with open(args.out, "w") as f:
        json.dump(rows, f, indent=2)
    return
  if args.causal_speedup:
    print(f"ours (default path), full vs causal interleaved; batch {args.batch}, {args.heads} "
          f"heads, head_dim {args.head_dim}, fp32; median of {args.repeats}")
    rows = run_causal_speedup(args.lengths, args.batch, args.heads, args.head_dim, args.repeats,
                              guard)
    if args.out:
      with open(args.out, "w") as f:
        json.dump(rows, f, indent=2)
    return
  causal_options = {"no": [False], "yes": [True], "both": [False, True]}[args.causal]
  print(f"jax {jax.__version__} on {jax.devices()[0].platform} ({load.cpu()}); "
        f"torch {torch.__version__ if torch else 'not installed'}; batch {args.batch}, "
        f"{args.heads} heads, head_dim {args.head_dim}, fp32; median of {args.repeats}; "
        f"(ratio = ours / peer, below 1 = ours faster)")
  rows = run(args.lengths, causal_options, args.batch, args.heads, args.head_dim, args.repeats,
             set(args.peers) | {"ours"} if args.peers else None, guard, args.wait_idle)
  if args.out:
    with open(args.out, "w") as f:
      json.dump(rows, f, indent=2)


if __name__ == "__main__":
  main()
