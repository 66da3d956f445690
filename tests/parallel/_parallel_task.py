"""A tiny language-model task run in a *new process*, so the tests can fake 8 CPU devices
(``XLA_FLAGS=--xla_force_host_platform_device_count=8``) or join several processes without
touching the device count of the pytest process.

  python _parallel_task.py steps --out F.npz
      one model, the same 3 training steps on each mesh of MESHES (the shared machinery:
      place_state, sharded_train_step, place_batch), plus ring attention forward and gradients
      on its own; writes every loss, final parameter, output and gradient to F.npz
  python _parallel_task.py train --workdir W --mesh data=4,fsdp=2 --num_steps N --params_out P
      [--model mlp] [--coordinator_address A --num_processes K --process_id I]
      training.train() on that mesh (resumes from W), final params to P.npz (process 0)
"""

from __future__ import annotations

import argparse
import functools
import os
import sys

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..")))

import numpy as np  # pylint: disable=wrong-import-position

VOCAB, CONTEXT, BATCH = 24, 16, 16
NUM_STEPS = 2  # steps per mesh in the "steps" mode
#: name -> config.mesh of the "steps" mode (8 devices; "single" is the first device alone).
MESHES = {
    "single": None,
    "data8": {"data": 8},
    "data4_fsdp2": {"data": 4, "fsdp": 2},
    "data2_sequence4": {"data": 2, "sequence": 4},
}


def make_config(**overrides):
  from attention_jax import training
  config = training.default_training_config()
  config.num_steps = 6
  config.batch_size = BATCH
  config.learning_rate = 1e-2
  config.optimizer = "adamw"
  config.weight_decay = 1e-2
  config.log_every = 3
  config.checkpoint_every = 3
  config.async_checkpointing = False
  config.update(overrides)
  return config


def make_model(kind: str = "lm"):
  """The tiny LM (``"lm"``), or (``"mlp"``) a per-token MLP over embeddings, a model that
  compiles in a fraction of the time for the tests that only exercise the machinery."""
  import flax.linen as nn
  from attention_jax.models import transformer

  if kind == "mlp":
    class TokenMLP(nn.Module):

      @nn.compact
      def __call__(self, tokens, deterministic=True):
        x = nn.Embed(VOCAB, 32)(tokens)
        x = nn.Dropout(0.1)(nn.relu(nn.Dense(64)(x)), deterministic=deterministic)
        return nn.Dense(VOCAB)(x)

    return TokenMLP()
  return transformer.DecoderOnlyLM(transformer.TransformerConfig(
      vocab_size=VOCAB, features=32, num_heads=4, num_kv_heads=2, mlp_dim=64, num_layers=1,
      max_length=CONTEXT, positions="rotary", pre_norm=True, dropout_rate=0.1,
      implementation="ring"))


def make_batch(seed: int, step: int, batch_size: int = BATCH, rows: slice | None = None):
  """Counting sequences mod VOCAB from random starts with random skips: learnable, and a pure
  function of ``(seed, step)``; ``rows`` reads only those rows."""
  rng = np.random.default_rng([seed, step])
  starts = rng.integers(0, VOCAB, batch_size)
  skips = rng.integers(1, 4, batch_size)
  if rows is not None:
    starts, skips = starts[rows], skips[rows]
  tokens = (starts[:, None] + skips[:, None] * np.arange(CONTEXT + 1)) % VOCAB
  tokens = tokens.astype(np.int32)
  return {"inputs": tokens[:, :-1], "targets": tokens[:, 1:]}


def build(config, kind: str = "lm"):
  """``(init_state, train_step)`` of the task with the model of ``kind``."""
  import jax
  import jax.numpy as jnp
  from attention_jax import training

  model = make_model(kind)

  tx, _ = training.make_optimizer(config)

  @jax.jit  # one compiled program instead of many eager ops: seconds less per process
  def init_state():
    params = model.init(jax.random.key(config.seed), jnp.zeros((2, CONTEXT), jnp.int32))
    return training.create_train_state(params["params"], tx, seed=config.seed + 1,
                                       apply_fn=model.apply)

  def loss_fn(params, batch, rng):
    logits = model.apply({"params": params}, batch["inputs"], deterministic=False,
                         rngs={"dropout": rng})
    sums = training.classification_sums(logits, batch["targets"])
    return sums["loss_sum"] / jnp.maximum(sums["token_count"], 1.0), sums

  return init_state, training.make_train_step(loss_fn)


def flat_params(params, prefix: str) -> dict[str, np.ndarray]:
  import jax
  flat = jax.tree_util.tree_flatten_with_path(params)[0]
  return {prefix + jax.tree_util.keystr(k): np.asarray(v) for k, v in flat}


def restore_elsewhere(state, init_state, directory: str) -> dict[str, np.ndarray]:
  """Saves ``state`` (on its mesh) with orbax and restores it onto one device and onto
  ``data=8``; returns the restored parameters and where their first leaf lives."""
  import jax
  from attention_jax import parallel, training

  results = {}
  with training.Checkpointer(os.path.join(directory, "resharded"), async_save=False) as ckpt:
    ckpt.save(1, state, force=True)
    for name, mesh in (("single", parallel.single_device_mesh()),
                       ("data8", parallel.make_mesh({"data": 8}))):
      restored = ckpt.restore(parallel.place_state(init_state(), mesh))
      leaf = jax.tree.leaves(restored.params)[0]
      results[f"restored_on_{name}/num_devices"] = np.int32(len(leaf.sharding.device_set))
      results.update(flat_params(restored.params, f"restored_on_{name}/params"))
  return results


def run_steps(out_path: str) -> None:
  import jax
  import jax.numpy as jnp
  from attention_jax import ops, parallel

  assert jax.device_count() == 8, jax.devices()
  config = make_config()
  results = {}
  init_state, train_step = build(config)
  for name, mesh_config in MESHES.items():
    mesh = (parallel.single_device_mesh() if mesh_config is None
            else parallel.make_mesh(mesh_config))
    state = parallel.place_state(init_state(), mesh)
    sharding = parallel.state_shardings(state, mesh)
    results[f"{name}/fsdp_sharded_leaves"] = np.int32(sum(
        "fsdp" in s.spec for s in jax.tree.leaves(sharding.params)))
    step = parallel.sharded_train_step(train_step, mesh, sharding)
    losses = []
    with jax.set_mesh(mesh):
      for i in range(NUM_STEPS):
        state, sums = step(state, parallel.place_batch(make_batch(config.seed, i), mesh))
        sums = jax.device_get(sums)
        losses.append(float(sums["loss_sum"] / sums["token_count"]))
    results[f"{name}/losses"] = np.asarray(losses)
    if name == "data4_fsdp2":
      results.update(restore_elsewhere(state, init_state,
                                       os.path.dirname(os.path.abspath(out_path))))
    results.update(flat_params(state.params, f"{name}/params"))

  # Ring attention alone: 4 x 32 positions, 4 query heads over 2 key/value heads.
  keys = jax.random.split(jax.random.key(0), 4)
  q = jax.random.normal(keys[0], (4, 32, 4, 8))
  k = jax.random.normal(keys[1], (4, 32, 2, 8))
  v = jax.random.normal(keys[2], (4, 32, 2, 8))
  cotangent = jax.random.normal(keys[3], (4, 32, 4, 8))
  for causal in (False, True):
    def out_and_grads(fn, q, k, v):
      out, vjp = jax.vjp(fn, q, k, v)
      return out, vjp(cotangent)

    def reference(q, k, v):
      return ops.dot_product_attention(q, k, v, is_causal=causal, implementation="reference")

    mesh = parallel.make_mesh({"sequence": 8})
    ring = functools.partial(parallel.ring_attention, is_causal=causal, mesh=mesh)
    for name, fn in (("reference", reference), ("sequence8", ring)):
      out, grads = jax.jit(functools.partial(out_and_grads, fn))(q, k, v)
      tag = f"ring/causal{int(causal)}/{name}"
      results[f"{tag}/out"] = np.asarray(out)
      for arg, g in zip("qkv", grads):
        results[f"{tag}/d{arg}"] = np.asarray(g)
  np.savez(out_path, **results)


def train_params(workdir: str, num_steps: int, mesh: str = "", model: str = "lm"):
  """``training.train`` of the task on the mesh ``"data=4,fsdp=2"`` (default config.mesh),
  resuming from ``workdir``; returns ``(state, {name: params as numpy})``."""
  import jax
  from attention_jax import training

  sizes = dict(item.split("=") for item in mesh.split(",")) if mesh else {}
  config = make_config(num_steps=num_steps)
  config.mesh.update({k: int(v) for k, v in sizes.items()})
  init_state, train_step = build(config, model)
  state = training.train(
      config, workdir, init_state, train_step,
      lambda step, rows=None: make_batch(config.seed, step, rows=rows))
  return state, flat_params(jax.device_get(state.params), "")


def run_train(args) -> None:
  from attention_jax import parallel
  parallel.initialize(args.coordinator_address, args.num_processes, args.process_id)
  import jax

  state, params = train_params(args.workdir, args.num_steps, args.mesh, args.model)
  if jax.process_index() == 0:
    np.savez(args.params_out, step=np.asarray(jax.device_get(state.step)),
             devices=np.int32(jax.device_count()), **params)
  print("done", flush=True)


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("mode", choices=("steps", "train"))
  parser.add_argument("--out")
  parser.add_argument("--workdir")
  parser.add_argument("--mesh", default="")
  parser.add_argument("--num_steps", type=int, default=6)
  parser.add_argument("--params_out")
  parser.add_argument("--model", choices=("lm", "mlp"), default="lm")
  parser.add_argument("--coordinator_address")
  parser.add_argument("--num_processes", type=int)
  parser.add_argument("--process_id", type=int)
  args = parser.parse_args()
  if args.mode == "steps":
    run_steps(args.out)
  else:
    run_train(args)


if __name__ == "__main__":
  main()
