"""Ring attention with windows, segments and soft-capping on 4 fake CPU devices, against the
float64 NumPy reference (values) and the materialising path (gradients).

Run as a subprocess by ``test_parallel_ring_options.py`` (the device count is fixed at import):
``python _ring_options_task.py OUT.npz`` writes, per case, the maximum errors.
"""

import os
import sys

os.environ["JAX_PLATFORMS"] = "cpu"
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           " --xla_force_host_platform_device_count=4").strip()

import functools  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "ops"))
import reference_numpy  # noqa: E402  pylint: disable=wrong-import-position

from attention_jax import ops, parallel  # noqa: E402

LENGTH = 32  # 4 devices x 8 positions
# Segments cut through device blocks (5 | 20 | 7) in row 0; row 1 is one sequence.
SEGMENTS = np.array([[1] * 5 + [2] * 20 + [3] * 7, [1] * LENGTH], np.int32)
CASES = {
    "causal_window9": dict(is_causal=True, local_window_size=9),
    "window_3_10": dict(local_window_size=(3, 10)),
    "softcap": dict(softcap=2.0),
    "segments": dict(segments=True),
    "all": dict(is_causal=True, local_window_size=4, softcap=1.5, segments=True),
}


def _keywords(case):
  options = dict(case)
  if options.pop("segments", False):
    options.update(query_segment_ids=SEGMENTS, key_value_segment_ids=SEGMENTS)
  return options


def main(out_path):
  mesh = parallel.make_mesh({"sequence": 4})
  keys = jax.random.split(jax.random.key(0), 4)
  q = jax.random.normal(keys[0], (2, LENGTH, 4, 8))
  k = jax.random.normal(keys[1], (2, LENGTH, 2, 8))
  v = jax.random.normal(keys[2], (2, LENGTH, 2, 8))
  cotangent = jax.random.normal(keys[3], (2, LENGTH, 4, 8))
  results = {}
  for name, case in CASES.items():
    options = _keywords(case)

    def out_and_grads(fn, options=options):
      out, vjp = jax.vjp(lambda q, k, v: fn(q, k, v, **options), q, k, v)
      return out, vjp(cotangent)

    ring, ring_grads = jax.jit(functools.partial(
        out_and_grads, functools.partial(parallel.ring_attention, mesh=mesh)))()
    _, ref_grads = jax.jit(functools.partial(
        out_and_grads, functools.partial(ops.dot_product_attention,
                                         implementation="reference")))()
    want, _ = reference_numpy.attention(np.asarray(q), np.asarray(k), np.asarray(v), **options)
    results[f"{name}/out"] = np.abs(np.asarray(ring) - want).max()
    results[f"{name}/out_scale"] = np.abs(want).max()
    for arg, got, ref in zip("qkv", ring_grads, ref_grads):
      results[f"{name}/d{arg}"] = np.abs(np.asarray(got) - np.asarray(ref)).max()
      results[f"{name}/d{arg}_scale"] = np.abs(np.asarray(ref)).max()

  # Blocks no query segment meets are skipped, not masked: NaN in the values of positions 16-31
  # (segment 9, devices 2 and 3) cannot reach the rows of segments 1 and 2 (devices 0 and 1).
  segments = np.array([[1] * 8 + [2] * 8 + [9] * 16] * 2, np.int32)
  poisoned = v.at[:, 16:].set(jnp.nan)

  def first_half(q, k, v):
    out = parallel.ring_attention(q, k, v, query_segment_ids=segments,
                                  key_value_segment_ids=segments, mesh=mesh)
    return out[:, :16]

  @jax.jit  # one compile, instead of one per op of the ring's forward and backward passes
  def out_and_dq(q, k, v):
    out, vjp = jax.vjp(first_half, q, k, v)
    return out, vjp(cotangent[:, :16])[0]

  out, dq = out_and_dq(q, k, poisoned)
  results["skip/out_finite"] = np.isfinite(np.asarray(out)).all()
  results["skip/dq_finite"] = np.isfinite(np.asarray(dq)[:, :16]).all()

  # The layer takes the ring for a split sequence with a window, soft-capping and segments.
  from attention_jax import layers  # pylint: disable=import-outside-toplevel
  x = jax.random.normal(keys[0], (2, LENGTH, 16))
  outs = {}
  for implementation in (None, "ring"):
    layer = layers.MultiHeadAttention(num_heads=4, num_kv_heads=2, is_causal=True,
                                      local_window_size=6, softcap=3.0,
                                      implementation=implementation)
    params = jax.jit(layer.init)(jax.random.key(1), x)
    apply = functools.partial(layer.apply, query_segment_ids=SEGMENTS,
                              key_value_segment_ids=SEGMENTS)
    with jax.set_mesh(mesh):
      outs[implementation] = jax.jit(apply)(params, x)
      results[f"layer/{implementation}_uses_ring"] = "ppermute" in str(
          jax.make_jaxpr(apply)(params, x))
  results["layer/out"] = np.abs(np.asarray(outs["ring"]) - np.asarray(outs[None])).max()
  results["layer/out_scale"] = np.abs(np.asarray(outs[None])).max()
  np.savez(out_path, **results)


if __name__ == "__main__":
  main(sys.argv[1])
