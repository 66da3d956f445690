"""Scaling out on JAX's own SPMD engine: the mesh, sharding rules, several hosts, ring attention.

A run's mesh comes from ``config.mesh`` (axes ``data``, ``fsdp``, ``sequence``);
:func:`attention_jax.training.train` builds it, places the state and every batch with
``NamedSharding`` and lets XLA partition the jitted step, so experiments need no code of their
own. See README "Scaling out".
"""

from attention_jax.parallel.distributed import (initialize, settings as distributed_settings,
                                                use_host_devices)
from attention_jax.parallel.mesh import (AXES, BATCH_AXES, batch_parallelism,
                                         default_mesh_config, make_mesh, mesh_shape,
                                         single_device_mesh, validate_mesh_config)
from attention_jax.parallel.ring_attention import ring_attention, ring_attention_shard
from attention_jax.parallel.sharding import (batch_shardings, batch_spec, local_rows,
                                             param_spec, place_batch, place_local_batch,
                                             place_state, process_box, sharded_train_step,
                                             state_shardings)

__all__ = [
    "AXES", "BATCH_AXES", "batch_parallelism", "batch_shardings", "batch_spec",
    "default_mesh_config", "distributed_settings", "initialize", "local_rows", "make_mesh",
    "mesh_shape", "param_spec", "place_batch", "place_local_batch", "place_state",
    "process_box", "ring_attention", "ring_attention_shard", "sharded_train_step",
    "single_device_mesh", "state_shardings", "use_host_devices", "validate_mesh_config",
]
