r"""What a sliding window saves: blockwise attention time, and the KV cache of decoding.

  python -m benchmarks.sliding_window                     # L = 16,384, window 512 (~2 min)
  python -m benchmarks.sliding_window --length=4096 --window=256

Times causal attention (``implementation="flash"``, fp32, batch 1, 8 heads, head_dim 64) over the
whole prefix against the same call with ``local_window_size=(window, 0)``: the blockwise loops
visit only the key blocks a window reaches, so the cost should fall from ``L^2 / 2`` to
``L x window``. Then decodes ``--decode_tokens`` tokens one at a time with a
``MultiHeadAttention`` layer and reports its cache: a ring of ``window`` positions against a full
cache of every position. Prints one JSON line per measurement with the load average.
"""

from __future__ import annotations

import argparse
import json

import jax
import jax.numpy as jnp
import numpy as np

from attention_jax import layers
from attention_jax import ops
from benchmarks.attention import interleaved_medians
from benchmarks.attention import jax_timers
from benchmarks import load


def time_attention(length: int, window: int, heads: int, head_dim: int, repeats: int):
  rng = np.random.default_rng(0)
  q, k, v = (jnp.asarray(rng.normal(size=(1, length, heads, head_dim)), jnp.float32)
             for _ in range(3))

  def attention(window_size):
    return lambda q, k, v: ops.dot_product_attention(
        q, k, v, is_causal=True, local_window_size=window_size, implementation="flash")

  causal_fwd, causal_bwd = jax_timers(attention(None), q, k, v)
  window_fwd, window_bwd = jax_timers(attention((window, 0)), q, k, v)
  ms = interleaved_medians({"causal fwd": causal_fwd, "window fwd": window_fwd,
                            "causal fwd+bwd": causal_bwd, "window fwd+bwd": window_bwd}, repeats)
  ms = {name: round(value, 1) for name, value in ms.items()}
  return {"length": length, "window": window, "heads": heads, "head_dim": head_dim, "ms": ms,
          "speed-up fwd": round(ms["causal fwd"] / ms["window fwd"], 2),
          "speed-up fwd+bwd": round(ms["causal fwd+bwd"] / ms["window fwd+bwd"], 2)}


def cache_bytes(window: int | None, tokens: int, features: int = 512, heads: int = 8) -> dict:
  """Decodes ``tokens`` tokens one at a time; returns the cache's size and a check that it
  held its shape."""
  layer = layers.MultiHeadAttention(num_heads=heads, is_causal=True, rotary=True, decode=True,
                                    local_window_size=None if window is None else (window, 0))
  x = jnp.ones((1, tokens, features))  # a full cache is sized by the init input
  variables = layer.init(jax.random.key(0), x)
  params, cache = variables["params"], variables["cache"]
  step = jax.jit(lambda cache, x: layer.apply({"params": params, "cache": cache}, x,
                                              mutable=["cache"])[1]["cache"])
  token = jnp.ones((1, 1, features))
  for _ in range(tokens):
    cache = step(cache, token)
  size = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(cache))
  return {"window": window, "tokens": tokens, "cache_bytes": int(size),
          "cache_index": int(cache["cache_index"])}


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--length", type=int, default=16_384)
  parser.add_argument("--window", type=int, default=512)
  parser.add_argument("--heads", type=int, default=8)
  parser.add_argument("--head_dim", type=int, default=64)
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--decode_tokens", type=int, default=4096)
  load.add_flag(parser)
  args = parser.parse_args()
  guard = load.Guard(args.allow_load)
  guard.start()
  row = time_attention(args.length, args.window, args.heads, args.head_dim, args.repeats)
  if not guard.quiet and not guard.allow:
    row["speed-up fwd"] = row["speed-up fwd+bwd"] = "load too high"
  print(json.dumps({**row, "load average before": round(guard.before, 2),
                    "load average after": round(load.now(), 2)}), flush=True)
  for window in (None, args.window):
    print(json.dumps(cache_bytes(window, args.decode_tokens)), flush=True)


if __name__ == "__main__":
  main()
