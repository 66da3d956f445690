r"""One command to measure a GPU or TPU: attention throughput against jax.nn (and PyTorch's flash
kernel where installed), then one training step of each experiment's ``gpu`` preset, in
TFLOP/s and as a fraction of the chip's peak. Writes a JSON and a markdown table.

  python -m benchmarks.accelerator --out runs/accelerator       # on the lent device, < 5 min
  python -m benchmarks.accelerator --smoke --out runs/smoke     # tiny sizes, any backend (CI)

Attention: bf16, fwd and fwd+bwd (gradient of a sum w.r.t. q, k, v), causal and not, L = 1k..32k
with ``batch * L = 32k`` tokens, 16 heads of 128; columns: ours (``implementation=None``, the
kernel the dispatch picks for this platform), ``jax.nn`` with ``implementation=None`` (XLA, or
cuDNN where jax.nn picks it), ``jax.nn`` cuDNN explicitly (GPU), our explicit Pallas kernels
(``pallas_gpu`` on GPU, ``splash`` on TPU) and PyTorch's SDPA (CUDA, where torch with CUDA is
installed). FLOPs: ``4 * B * H * L^2 * D`` forward (half when causal), 3.5x that for fwd+bwd (the
backward's five matmuls against the forward's two). A column that fails (unsupported, out of
memory) records its one-line error instead of a time.

Training: every experiment's ``gpu`` preset step (``benchmarks.gpu_presets``: the experiment's
own model, loss and step, a random batch), per second and TFLOP/s from XLA's FLOP count of the
compiled step; a fused attention kernel's custom call counts zero FLOPs there, so MFU is a lower
bound. ``--smoke`` times no training step unless named (``--train transformer_lm``; at batch 2).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from attention_jax import ops
from benchmarks import load

try:
  import torch
except ImportError:  # optional
  torch = None

#: Dense bf16 peak TFLOP/s per chip, by ``device_kind`` prefix (vendor data sheets; SXM parts).
PEAK_BF16_TFLOPS = {
    "NVIDIA H200": 989.0,
    "NVIDIA H100": 989.0,
    "NVIDIA A100": 312.0,
    "NVIDIA L4": 121.0,
    "NVIDIA A10": 125.0,
    "TPU v4": 275.0,
    "TPU v5 lite": 197.0,
    "TPU v5e": 197.0,
    "TPU v5p": 459.0,
    "TPU v6 lite": 918.0,
    "TPU v6e": 918.0,
}


def peak_tflops(device) -> float | None:
  kind = getattr(device, "device_kind", "")
  for prefix, peak in PEAK_BF16_TFLOPS.items():
    if kind.startswith(prefix):
      return peak
  return None


def attention_flops(batch, heads, length, head_dim, causal, backward) -> float:
  forward = 4.0 * batch * heads * length * length * head_dim * (0.5 if causal else 1.0)
  return forward * (3.5 if backward else 1.0)


def _time(fn, repeats) -> float:
  """Median seconds of ``fn()`` after one warm-up (compilation) call."""
  jax.block_until_ready(fn())
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def jax_columns(platform, causal):
  columns = {
      "ours": lambda q, k, v: ops.dot_product_attention(q, k, v, is_causal=causal),
      "jax.nn": lambda q, k, v: jax.nn.dot_product_attention(q, k, v, is_causal=causal),
  }
  if platform == "gpu":
    columns["jax.nn cudnn"] = lambda q, k, v: jax.nn.dot_product_attention(
        q, k, v, is_causal=causal, implementation="cudnn")
    columns["ours pallas_gpu"] = lambda q, k, v: ops.dot_product_attention(
        q, k, v, is_causal=causal, implementation="pallas_gpu")
  if platform == "tpu":
    columns["ours splash"] = lambda q, k, v: ops.dot_product_attention(
        q, k, v, is_causal=causal, implementation="splash")
  return columns


def torch_column(q, k, v, causal):
  """PyTorch's SDPA on CUDA (its flash kernel for bf16), or None."""
  if torch is None or not torch.cuda.is_available():
    return None
  tq, tk, tv = (torch.from_numpy(np.asarray(x, np.float32)).to("cuda", torch.bfloat16)
                .transpose(1, 2).contiguous() for x in (q, k, v))
  sdpa = torch.nn.functional.scaled_dot_product_attention

  def forward():
    with torch.no_grad():
      sdpa(tq, tk, tv, is_causal=causal)
    torch.cuda.synchronize()

  grads = [t.clone().requires_grad_(True) for t in (tq, tk, tv)]

  def backward():
    sdpa(*grads, is_causal=causal).float().sum().backward()
    torch.cuda.synchronize()

  return forward, backward


def attention_rows(lengths, tokens, heads, head_dim, dtype, repeats, peak):
  platform = jax.default_backend()
  rows = []
  for causal in (False, True):
    for length in lengths:
      batch = max(1, tokens // length)
      rng = np.random.default_rng(0)
      q, k, v = (jnp.asarray(rng.normal(size=(batch, length, heads, head_dim)), dtype)
                 for _ in range(3))
      timers = {}
      for name, attention in jax_columns(platform, causal).items():
        forward = jax.jit(attention)
        grad = jax.jit(jax.grad(lambda q, k, v, f=attention: jnp.sum(f(q, k, v).astype(
            jnp.float32)), argnums=(0, 1, 2)))
        timers[name] = (lambda f=forward: f(q, k, v), lambda g=grad: g(q, k, v))
      if (pair := torch_column(q, k, v, causal)) is not None:
        timers["torch sdpa"] = pair
      for name, (forward, backward) in timers.items():
        for kind, fn in (("fwd", forward), ("fwd+bwd", backward)):
          row = {"length": length, "batch": batch, "heads": heads, "head_dim": head_dim,
                 "causal": causal, "dtype": jnp.dtype(dtype).name, "column": name, "kind": kind}
          flops = attention_flops(batch, heads, length, head_dim, causal, kind == "fwd+bwd")
          try:
            seconds = _time(fn, repeats)
          except Exception as e:  # noqa: BLE001 - a column that cannot run says why, once
            row["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
          else:
            row["ms"] = seconds * 1e3
            row["tflops"] = flops / seconds / 1e12
            if peak:
              row["fraction_of_peak"] = row["tflops"] / peak
          rows.append(row)
          print(json.dumps(row), flush=True)
  return rows


def training_rows(names, steps, peak, batch_size=None):
  """One row per experiment ``gpu`` preset (``benchmarks.gpu_presets``): the experiment's own
  jitted step on a random batch, units per second and TFLOP/s from XLA's FLOP count of the
  compiled step (fused kernels' custom calls, cuDNN or Pallas attention, count as zero there, so
  the MFU of a model whose attention runs in one is a lower bound)."""
  from benchmarks import gpu_presets

  presets = gpu_presets.all_presets()
  rows = []
  for name in names:
    preset = presets[name]()
    if batch_size:
      preset = preset.with_batch_size(batch_size)
    row = {"experiment": name, "unit": preset.unit, "per_step": preset.per_step}
    try:
      state, batch = preset.init_state(), preset.random_batch()
      compiled = preset.train_step().lower(state, batch).compile()
      cost = compiled.cost_analysis()
      cost = cost[0] if isinstance(cost, (list, tuple)) else cost
      flops = float((cost or {}).get("flops", 0.0))
      for _ in range(2):
        state, sums = compiled(state, batch)
      jax.block_until_ready(sums)
      start = time.perf_counter()
      for _ in range(steps):
        state, sums = compiled(state, batch)
      jax.block_until_ready(sums)
      seconds = (time.perf_counter() - start) / steps
      row.update(ms_per_step=seconds * 1e3, per_s=preset.per_step / seconds,
                 parameters=sum(x.size for x in jax.tree.leaves(state.params)),
                 xla_flops_per_step=flops, tflops=flops / seconds / 1e12)
      if peak:
        row["mfu"] = row["tflops"] / peak
    except Exception as e:  # noqa: BLE001 (a failing preset is a row of the table, not the end)
      row["error"] = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:200]
    rows.append(row)
    print(json.dumps(row), flush=True)
  return rows


def markdown(device, peak, rows, train) -> str:
  lines = [f"Device: {device.device_kind} ({jax.default_backend()}), peak "
           f"{peak or 'unknown'} bf16 TFLOP/s; jax {jax.__version__}", "",
           "| L | batch | mask | column | fwd ms | fwd TFLOP/s | fwd+bwd ms | fwd+bwd TFLOP/s |",
           "|---|---|---|---|---|---|---|---|"]
  keyed = {(r["length"], r["causal"], r["column"], r["kind"]): r for r in rows}
  for (length, causal, column, kind), row in keyed.items():
    if kind != "fwd":
      continue
    back = keyed.get((length, causal, column, "fwd+bwd"), {})
    cell = lambda r, key, fmt: fmt.format(r[key]) if key in r else r.get("error", "-")[:40]  # noqa: E731
    lines.append(f"| {length} | {row['batch']} | {'causal' if causal else 'full'} | {column} | "
                 f"{cell(row, 'ms', '{:.2f}')} | {cell(row, 'tflops', '{:.1f}')} | "
                 f"{cell(back, 'ms', '{:.2f}')} | {cell(back, 'tflops', '{:.1f}')} |")
  if train:
    lines += ["", "| experiment (`gpu` preset) | parameters | ms / step | per second | XLA "
              "TFLOP/s | MFU (lower bound) |", "|---|---|---|---|---|---|"]
    for r in train:
      if "error" in r:
        lines.append(f"| {r['experiment']} | {r['error'][:60]} | | | | |")
        continue
      lines.append(f"| {r['experiment']} | {r['parameters']:,} | {r['ms_per_step']:.2f} | "
                   f"{r['per_s']:,.0f} {r['unit']} | {r['tflops']:.2f} | "
                   f"{r.get('mfu', float('nan')):.1%} |")
  return "\n".join(lines) + "\n"


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--lengths", type=int, nargs="+",
                      default=[1024, 2048, 4096, 8192, 16384, 32768])
  parser.add_argument("--tokens", type=int, default=32768, help="batch * length per call")
  parser.add_argument("--heads", type=int, default=16)
  parser.add_argument("--head-dim", type=int, default=128)
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--train", nargs="*", default=None,
                      help="experiments whose gpu preset step is timed (default: all; none "
                           "given: skip training)")
  parser.add_argument("--train-steps", type=int, default=20)
  parser.add_argument("--smoke", action="store_true",
                      help="tiny sizes on any backend (a CI check that the script runs)")
  parser.add_argument("--out", default=None, help="a folder for accelerator.json / .md")
  load.add_flag(parser)
  args = parser.parse_args(argv)
  if args.smoke:
    args.lengths, args.tokens, args.heads, args.head_dim = [128], 256, 2, 32
    args.repeats, args.train_steps = 1, 1
    if args.train is None:
      args.train = []  # the gpu presets compile for tens of seconds on a CPU: ask by name
  device = jax.devices()[0]
  peak = peak_tflops(device)
  dtype = jnp.bfloat16
  print(f"{device.device_kind} ({jax.default_backend()}), peak {peak} bf16 TFLOP/s; "
        f"load average {load.now():.2f}", flush=True)
  rows = attention_rows(args.lengths, args.tokens, args.heads, args.head_dim, dtype,
                        args.repeats, peak)
  if args.train is None:
    from benchmarks import gpu_presets
    args.train = list(gpu_presets.all_presets())
  train = training_rows(args.train, args.train_steps, peak,
                        batch_size=2 if args.smoke else None) if args.train else None
  table = markdown(device, peak, rows, train)
  print(table)
  if args.out:
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "accelerator.json"), "w") as f:
      json.dump({"device": device.device_kind, "platform": jax.default_backend(),
                 "peak_bf16_tflops": peak, "attention": rows, "training": train}, f, indent=2)
    with open(os.path.join(args.out, "accelerator.md"), "w") as f:
      f.write(table)


if __name__ == "__main__":
  main()
