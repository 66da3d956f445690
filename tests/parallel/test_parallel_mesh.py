"""Mesh sizes from the config, sharding rules and distributed settings: the checks and their
messages, on this process's single device (the 8-device runs are in subprocesses)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AbstractMesh, PartitionSpec as P

from attention_jax import parallel, training


def _abstract(data=1, fsdp=1, sequence=1):
  return AbstractMesh((data, fsdp, sequence), parallel.AXES)


def test_default_config_has_a_data_parallel_mesh():
  config = training.default_training_config()
  assert dict(config.mesh) == {"data": -1, "fsdp": 1, "sequence": 1}
  assert parallel.mesh_shape(config.mesh, 8) == {"data": 8, "fsdp": 1, "sequence": 1}
  assert parallel.mesh_shape(config.mesh, 1) == {"data": 1, "fsdp": 1, "sequence": 1}


def test_mesh_shape_fills_data_with_the_devices_left():
  assert parallel.mesh_shape({"data": -1, "fsdp": 2, "sequence": 2}, 8) == {
      "data": 2, "fsdp": 2, "sequence": 2}
  assert parallel.mesh_shape({"data": 4, "fsdp": 2}, 8) == {"data": 4, "fsdp": 2, "sequence": 1}


@pytest.mark.parametrize("mesh,devices,message", [
    ({"data": 4}, 8, r"config.mesh data \* fsdp \* sequence = 4 \* 1 \* 1 = 4 must equal the "
                     r"number of devices, 8"),
    ({"data": -1, "fsdp": 3}, 8, r"config.mesh.fsdp \* config.mesh.sequence = 3 \* 1 = 3 must "
                                 r"divide the 8 devices"),
    ({"fsdp": 0}, 8, r"config.mesh.fsdp must be >= 1"),
    ({"sequence": -1}, 8, r"config.mesh.sequence must be >= 1 \(only config.mesh.data may be "
                          r"-1\)"),
    ({"data": 2.0}, 8, r"config.mesh.data must be an integer, got 2.0"),
    ({"model": 2}, 8, r"config.mesh has unknown axes \['model'\]"),
])
def test_bad_mesh_sizes_name_the_field(mesh, devices, message):
  with pytest.raises(ValueError, match=message):
    parallel.mesh_shape(mesh, devices)


def test_validate_training_config_checks_the_mesh_before_training():
  config = training.default_training_config()
  config.mesh.fsdp = 0
  with pytest.raises(ValueError, match="config.mesh.fsdp must be >= 1"):
    training.validate_training_config(config)
  config.mesh.fsdp = 1
  config.mesh.data = jax.device_count() + 1
  with pytest.raises(ValueError, match="must equal the number of devices"):
    training.validate_training_config(config)


def test_make_mesh_on_this_process():
  mesh = parallel.make_mesh(training.default_training_config().mesh)
  assert mesh.axis_names == parallel.AXES
  assert mesh.devices.size == jax.device_count()
  assert parallel.single_device_mesh().devices.size == 1


def test_fsdp_splits_the_largest_divisible_axis_of_float_arrays():
  mesh = _abstract(data=2, fsdp=2)
  assert parallel.param_spec((16, 64), jnp.float32, mesh) == P(None, "fsdp")
  assert parallel.param_spec((64, 3), jnp.float32, mesh) == P("fsdp", None)
  assert parallel.param_spec((8, 8), jnp.float32, mesh) == P(None, "fsdp")  # tie: the last
  assert parallel.param_spec((3, 5), jnp.float32, mesh) == P()  # nothing divides
  assert parallel.param_spec((), jnp.float32, mesh) == P()
  assert parallel.param_spec((2,), jnp.uint32, mesh) == P()  # PRNG key data
  assert parallel.param_spec((16, 64), jnp.float32, _abstract(data=4)) == P()  # no fsdp


def test_batches_split_rows_over_data_and_fsdp_and_tokens_over_sequence():
  assert parallel.batch_spec((8, 16), _abstract(data=2, fsdp=2)) == P(("data", "fsdp"))
  assert parallel.batch_spec((8, 16), _abstract(data=2, sequence=4)) == P(
      ("data", "fsdp"), "sequence")
  assert parallel.batch_spec((8,), _abstract(data=2, sequence=4)) == P(("data", "fsdp"))
  assert parallel.batch_spec((), _abstract(data=2)) == P()


def test_a_batch_that_does_not_split_names_batch_size():
  with pytest.raises(ValueError, match=r"batch\['inputs'\] has 6 rows.*config.batch_size must "
                                       r"be a multiple of 4"):
    parallel.batch_shardings({"inputs": np.zeros((6, 3))}, _abstract(data=2, fsdp=2))


def test_one_device_placement_and_step_reuse_the_state_sharding():
  mesh = parallel.single_device_mesh()
  tx, _ = training.make_optimizer(training.default_training_config())
  state = training.create_train_state({"w": jnp.ones((4, 2))}, tx)
  placed = parallel.place_state(state, mesh)
  assert placed.params["w"].sharding.mesh.shape == mesh.shape
  batch = parallel.place_batch({"x": np.ones((3, 4), np.float32)}, mesh)
  assert batch["x"].sharding.spec == P(("data", "fsdp"))

  def loss_fn(params, batch, rng):
    del rng
    return jnp.mean((batch["x"] @ params["w"]) ** 2), None

  step = parallel.sharded_train_step(training.make_train_step(loss_fn), mesh,
                                     parallel.state_shardings(placed, mesh))
  new, sums = step(placed, batch)
  assert new.params["w"].sharding == placed.params["w"].sharding
  assert float(sums["loss_sum"]) == pytest.approx(16.0)  # (1 x 4 ones . ones)^2
  assert parallel.local_rows(mesh, 12) == slice(0, 12)


def test_ring_attention_without_a_mesh_says_how_to_get_one():
  q = jnp.zeros((1, 8, 2, 4))
  with pytest.raises(ValueError, match=r"ring_attention needs a mesh.*jax.set_mesh"):
    parallel.ring_attention(q, q, q)


def test_ring_attention_checks_lengths_and_axis():
  mesh = parallel.single_device_mesh()
  q = jnp.zeros((1, 8, 2, 4))
  with pytest.raises(ValueError, match=r"key has length 6 but query has 8"):
    parallel.ring_attention(q, jnp.zeros((1, 6, 2, 4)), jnp.zeros((1, 6, 2, 4)), mesh=mesh)
  with pytest.raises(ValueError, match=r"axis_name='model' is not an axis of the mesh"):
    parallel.ring_attention(q, q, q, mesh=mesh, axis_name="model")
  with pytest.raises(ValueError, match=r"length 8, which does not split into the 3 blocks"):
    parallel.ring_attention(q, q, q, mesh=_abstract(sequence=3))


def test_ring_attention_on_one_device_is_dense_attention():
  from attention_jax import ops
  keys = jax.random.split(jax.random.key(1), 3)
  q, k, v = (jax.random.normal(kk, (2, 8, 2, 4)) for kk in keys)
  mesh = parallel.single_device_mesh()
  for causal in (False, True):
    ring = jax.jit(lambda q, k, v, causal=causal: parallel.ring_attention(
        q, k, v, is_causal=causal, mesh=mesh))
    np.testing.assert_allclose(
        ring(q, k, v),
        ops.dot_product_attention(q, k, v, is_causal=causal, implementation="reference"),
        rtol=1e-5, atol=1e-5)


def test_ring_layer_refuses_what_the_ring_cannot_do_on_a_split_sequence():
  from attention_jax import layers
  layer = layers.MultiHeadAttention(num_heads=2, implementation="ring", is_causal=True)
  x = jnp.ones((2, 8, 4))
  params = layer.init(jax.random.key(0), x)  # no mesh: the default path
  with jax.sharding.use_abstract_mesh(_abstract(sequence=2)):
    with pytest.raises(ValueError, match=r"implementation='ring'.*supports is_causal, "
                                         r"local_window_size, softcap and segment ids; got "
                                         r"key_value_seq_lengths"):
      layer.apply(params, x, key_value_seq_lengths=jnp.array([3, 8]))


def test_distributed_settings_from_arguments_and_environment(monkeypatch):
  for name in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"):
    monkeypatch.delenv(name, raising=False)
  assert parallel.distributed_settings() is None
  assert not parallel.initialize()  # one process: nothing to join
  monkeypatch.setenv("JAX_COORDINATOR_ADDRESS", "10.0.0.1:1234")
  monkeypatch.setenv("JAX_NUM_PROCESSES", "4")
  monkeypatch.setenv("JAX_PROCESS_ID", "3")
  assert parallel.distributed_settings() == {
      "coordinator_address": "10.0.0.1:1234", "num_processes": 4, "process_id": 3}
  assert parallel.distributed_settings(process_id=1)["process_id"] == 1  # the flag wins
  with pytest.raises(ValueError, match=r"--process_id must be in \[0, 4\)"):
    parallel.distributed_settings(process_id=4)
  monkeypatch.delenv("JAX_PROCESS_ID")
  with pytest.raises(ValueError, match=r"missing --process_id \(or JAX_PROCESS_ID\)"):
    parallel.distributed_settings()


def test_config_flags_define_the_distributed_flags():
  from absl import flags
  flag_values = flags.FlagValues()
  training.define_config_flags(flag_values=flag_values)
  flag_values(["prog", "--num_processes=2", "--process_id=1",
               "--coordinator_address=host:9"])
  assert (flag_values.num_processes, flag_values.process_id,
          flag_values.coordinator_address) == (2, 1, "host:9")


@pytest.mark.parametrize("jit", [False, True])
def test_ring_attention_never_makes_an_inf_for_rows_that_see_nothing(jit):
  """Queries of segment 2 have no key of their segment: zeros, zero gradients, and no inf
  anywhere, so jax.debug_infs(True) stays usable (it re-runs op by op on any inf output)."""
  mesh = parallel.single_device_mesh()
  q = jax.random.normal(jax.random.key(0), (1, 4, 2, 4))
  q_seg, kv_seg = jnp.array([[1, 1, 2, 2]]), jnp.array([[1, 1, 3, 3]])

  def loss(q):
    out = parallel.ring_attention(q, q, q, query_segment_ids=q_seg, key_value_segment_ids=kv_seg,
                                  mesh=mesh)
    return jnp.sum(out ** 2), out

  fn = jax.value_and_grad(loss, has_aux=True)
  with jax.debug_infs(True), jax.debug_nans(True):
    (_, out), grad = (jax.jit(fn) if jit else fn)(q)
  assert float(jnp.abs(out[:, 2:]).max()) == 0.0 and float(jnp.abs(out[:, :2]).max()) > 0.1
  assert bool(jnp.isfinite(grad).all())
