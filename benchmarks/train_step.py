r"""One training step of an experiment: ours (JAX/Flax/Optax) against an equal PyTorch model, side
by side in one run.

``--experiment`` picks the model; each peer lives in :mod:`benchmarks.peers`:

* ``transformer_lm`` (default): the char-level Transformer LM (:mod:`benchmarks.peers.
  transformer_lm`), tokens per second.
* ``seq2seq``: experiments/seq2seq's RNN encoder-decoder with additive attention (``--attention
  none`` for the fixed-context one; :mod:`benchmarks.peers.seq2seq`), examples per second.
* ``captioning``: experiments/captioning's Show, Attend and Tell model with soft attention and the
  doubly stochastic penalty (:mod:`benchmarks.peers.captioning`), examples per second.

The JAX side is the experiment's own model, optimiser and jitted train step (for seq2seq and
captioning taken from the experiment's training function itself); the PyTorch side rebuilds the
same network layer for layer with the same optimiser, schedule and clipping. The parameter counts
are printed and must agree. The seq2seq and captioning peers start from our initial parameters
(copied in), so their first-step losses are printed side by side and must agree too. The batch is
fixed and random, of the config's shapes. Steps alternate between the two frameworks in rounds;
the table gives the median rate per round and the ratio ours / PyTorch (above 1 = ours faster).
The process keeps freed memory (:func:`attention_jax.training.keep_freed_memory`, as the
experiments do; ``ATTENTION_JAX_KEEP_FREED_MEMORY=0`` for glibc's default), with one malloc heap
for all threads where the config says so (``config.single_malloc_arena``; ``--single-arena``).
The two frameworks share these settings, and what suits one can slow the other (PyTorch's
captioning step is slower on one heap), so ``--only ours`` / ``--only torch`` time one framework
in a process of its own, each with its best settings. Like every benchmark
here it prints the load average and refuses to print a ratio measured on a
busy machine (``--allow-load``, ``--wait-idle``; :mod:`benchmarks.load`).

  python -m benchmarks.train_step                      # the LM, default (2-core CPU) config
  python -m benchmarks.train_step --preset gpu --rounds 3 --steps 5
  python -m benchmarks.train_step --out benchmarks/results/train_step_cpu.json
  python -m benchmarks.train_step --torch-threads 1   # PyTorch single-threaded (small ops)
  python -m benchmarks.train_step --host-devices 2    # ours data-parallel over 2 host devices
  python -m benchmarks.train_step --experiment seq2seq
  python -m benchmarks.train_step --experiment seq2seq --attention none
  python -m benchmarks.train_step --experiment captioning
  python -m benchmarks.train_step --experiment captioning --preset tiny --rounds 1 --steps 2
  python -m benchmarks.train_step --experiment captioning --only ours
  ATTENTION_JAX_KEEP_FREED_MEMORY=0 python -m benchmarks.train_step --experiment captioning \
      --only torch                                     # PyTorch alone, glibc's default malloc

PyTorch is an optional benchmark dependency: without it only our side is timed.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import statistics
import time

import jax

from attention_jax import parallel
from attention_jax import training
from benchmarks import load
from benchmarks.peers import common

torch = common.torch

EXPERIMENTS = ("transformer_lm", "seq2seq", "captioning")
#: The largest relative difference of the first-step losses of peers that start from our
#: parameters (fp32 rounding gives ~1e-6; a different model gives ~1e-1).
SAME_LOSS = 1e-4


def peer_module(experiment: str):
  return importlib.import_module(f"benchmarks.peers.{experiment}")


def parse_args(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--experiment", choices=EXPERIMENTS, default="transformer_lm")
  parser.add_argument("--preset", default="default",
                      help="the experiment's config preset (experiments/<experiment>/config.py)")
  parser.add_argument("--rounds", type=int, default=5)
  parser.add_argument("--steps", type=int, default=20, help="steps per framework per round")
  parser.add_argument("--torch-threads", type=int, default=None,
                      help="torch.set_num_threads (default: PyTorch's own choice, one per core)")
  parser.add_argument("--flat-update", choices=("config", "on", "off"), default="config",
                      help="the optimiser over one flat vector (config.flat_update; default: "
                           "the preset's)")
  parser.add_argument("--single-arena", choices=("config", "on", "off"), default="config",
                      help="every thread allocates from glibc's main heap "
                           "(config.single_malloc_arena; default: the preset's); the PyTorch "
                           "side, in the same process, shares it")
  parser.add_argument("--only", choices=("ours", "torch"), default=None,
                      help="time one framework alone, in a process with its own allocator "
                           "settings (the two share one in a run with both)")
  parser.add_argument("--host-devices", type=int, default=None,
                      help="split the CPU into this many XLA host devices and run our step "
                           "data-parallel over them (one per core: each device's program runs "
                           "on its own thread); default: one device")
  parser.add_argument("--out", default=None, help="also write the result as JSON here")
  load.add_flag(parser)
  for experiment in EXPERIMENTS:
    peer_module(experiment).add_arguments(parser)
  return parser.parse_args(argv)


def main():
  args = parse_args()
  module = peer_module(args.experiment)
  config = module.get_config(args.preset)
  if args.flat_update != "config":
    config.flat_update = args.flat_update == "on"
  if args.single_arena != "config":
    config.single_malloc_arena = args.single_arena == "on"
  # As the experiments do, before JAX starts its threads; both frameworks share it.
  kept = training.keep_freed_memory(single_arena=config.single_malloc_arena)
  if args.host_devices:
    try:
      parallel.use_host_devices(args.host_devices)
    except ValueError as e:
      raise SystemExit(str(e).replace("--host_devices", "--host-devices")) from None
  if torch is not None and args.torch_threads:
    torch.set_num_threads(args.torch_threads)
  if args.only == "torch" and torch is None:
    raise SystemExit("--only torch needs PyTorch installed")
  peer = module.setup(config, args, with_torch=torch is not None and args.only != "ours")
  if args.only == "torch":
    del peer.sides["ours"]
  if jax.device_count() > 1:
    if config.batch_size % jax.device_count():
      raise SystemExit(f"--host-devices {jax.device_count()} must divide the batch size "
                       f"{config.batch_size}")
    if "ours" in peer.sides:
      ours = peer.sides["ours"]
      peer.sides["ours"] = dataclasses.replace(ours, batch=common.split_batch(ours.batch))
  sides, unit = peer.sides, peer.unit
  counts = {name: side.parameters for name, side in sides.items()}
  print(f"{peer.describe}; jax {jax.__version__} on {jax.devices()[0].platform}, torch "
        f"{torch.__version__ if torch else 'not installed'} "
        f"({torch.get_num_threads() if torch else 0} threads); "
        f"keep_freed_memory {kept} (single arena {kept and config.single_malloc_arena}); "
        f"{load.cpu()}")
  print("parameters: " + ", ".join(f"{name} {count:,}" for name, count in counts.items()))
  if len(counts) == 2 and counts["ours"] != counts["torch"]:
    raise SystemExit(f"the models differ: {counts}")

  first = {name: side.step(side.batch) for name, side in sides.items()}  # compiles
  if peer.same_start and len(first) == 2:
    print(f"first-step loss (same initial parameters): ours {first['ours']:.6f}, torch "
          f"{first['torch']:.6f}")
    if abs(first["ours"] - first["torch"]) > SAME_LOSS * abs(first["torch"]):
      raise SystemExit(f"the models differ: first-step losses {first}")
  for side in sides.values():  # warm up
    for _ in range(2):
      side.step(side.batch)
  rates = {name: [] for name in sides}
  guard = load.Guard(args.allow_load)
  load.wait_until_quiet(args.wait_idle)
  guard.start()
  for _ in range(args.rounds):
    for name, side in sides.items():
      start = time.perf_counter()
      for _ in range(args.steps):
        side.step(side.batch)
      rates[name].append(args.steps * peer.per_step / (time.perf_counter() - start))
  result = {"experiment": args.experiment, "preset": args.preset,
            "jax_devices": jax.device_count(),
            f"{unit}_per_step": peer.per_step, "parameters": counts,
            "flat_update": bool(config.flat_update), "keep_freed_memory": kept,
            "single_malloc_arena": kept and bool(config.single_malloc_arena),
            "cpu": load.cpu(),
            "torch_threads": torch.get_num_threads() if torch else None,
            "load_average_before": guard.before, "load_average": load.now(),
            **{f"{name} {unit}/s": statistics.median(r) for name, r in rates.items()},
            "rounds": rates}
  line = "  ".join(f"{name} {statistics.median(r):9.0f} {unit}/s" for name, r in rates.items())
  if len(rates) == 2:
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
