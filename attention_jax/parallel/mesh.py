"""The device mesh of a run, built from ``config.mesh``.

Three named axes, always present (size 1 when unused), so sharding rules never branch on which
axes exist:

* ``data``: data parallelism. Every device on it holds a full copy of the parameters and a slice
  of the batch rows; gradients are averaged by the all-reduce XLA inserts.
* ``fsdp``: fully sharded data parallelism. The batch rows are split over it too (it is data
  parallel for the activations), but each parameter and its optimiser state is stored in ``fsdp``
  slices (:mod:`attention_jax.parallel.sharding`); XLA all-gathers them for the matmuls.
* ``sequence``: sequence (context) parallelism. Token axis 1 of the batch is split over it; the
  attention runs as ring attention (:mod:`attention_jax.parallel.ring_attention`), everything
  else is per token.

``config.mesh.data = -1`` takes every device not used by the other axes (the default: all the
devices on ``data``). Devices are all of ``jax.devices()`` (every process's after
``jax.distributed.initialize``).
"""

from __future__ import annotations

import math
import numbers
from typing import Any, Mapping, Sequence

import jax
import ml_collections
import numpy as np
from jax.sharding import AxisType, Mesh

AXES = ("data", "fsdp", "sequence")
#: The axes that split the batch rows (the data-parallel axes).
BATCH_AXES = ("data", "fsdp")


def default_mesh_config() -> ml_collections.ConfigDict:
  """``data=-1`` (all remaining devices), ``fsdp=1``, ``sequence=1``."""
  return ml_collections.ConfigDict({"data": -1, "fsdp": 1, "sequence": 1})


def _sizes(mesh_config: Mapping[str, Any] | None) -> dict[str, int]:
  """Checked axis sizes; raises ``ValueError`` naming ``config.mesh.<axis>``."""
  mesh_config = default_mesh_config() if mesh_config is None else mesh_config
  unknown = sorted(set(mesh_config.keys()) - set(AXES))
  if unknown:
    raise ValueError(f"config.mesh has unknown axes {unknown}; the axes are {list(AXES)}")
  sizes = {}
  for axis in AXES:
    value = mesh_config.get(axis, -1 if axis == "data" else 1)
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
      raise ValueError(f"config.mesh.{axis} must be an integer, got {value!r}")
    if value == -1 and axis != "data":
      raise ValueError(f"config.mesh.{axis} must be >= 1 (only config.mesh.data may be -1), "
                       f"got -1")
    if value == 0 or value < -1:
      raise ValueError(f"config.mesh.{axis} must be >= 1 (or -1 for data: all remaining "
                       f"devices), got {value}")
    sizes[axis] = int(value)
  return sizes


def validate_mesh_config(mesh_config: Mapping[str, Any] | None) -> None:
  """Checks the field types and values (not the device count, which needs the devices)."""
  _sizes(mesh_config)


def mesh_shape(mesh_config: Mapping[str, Any] | None, num_devices: int) -> dict[str, int]:
  """``{"data": d, "fsdp": f, "sequence": s}`` with ``d * f * s == num_devices``.

  Raises:
    ValueError: naming the field when the sizes do not divide or do not fill the devices.
  """
  sizes = _sizes(mesh_config)
  others = sizes["fsdp"] * sizes["sequence"]
  if sizes["data"] == -1:
    if num_devices % others:
      raise ValueError(
          f"config.mesh.fsdp * config.mesh.sequence = {sizes['fsdp']} * {sizes['sequence']} = "
          f"{others} must divide the {num_devices} devices when config.mesh.data is -1")
    sizes["data"] = num_devices // others
  total = math.prod(sizes.values())
  if total != num_devices:
    raise ValueError(
        f"config.mesh data * fsdp * sequence = {sizes['data']} * {sizes['fsdp']} * "
        f"{sizes['sequence']} = {total} must equal the number of devices, {num_devices} (set "
        f"config.mesh.data=-1 to use all the devices the other axes leave)")
  return sizes


def make_mesh(mesh_config: Mapping[str, Any] | None = None,
              devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A ``Mesh`` with axes ``("data", "fsdp", "sequence")`` over ``devices`` (default: all).

  Axis types are ``Auto``: shardings are placed on inputs and outputs and XLA's partitioner
  propagates them through the step.
  """
  devices = list(jax.devices() if devices is None else devices)
  sizes = mesh_shape(mesh_config, len(devices))
  shape = tuple(sizes[a] for a in AXES)
  if len(devices) == len(jax.devices()) and devices == list(jax.devices()):
    # The topology-aware order (neighbouring TPU chips on the same axis, hosts along data).
    return jax.make_mesh(shape, AXES, axis_types=(AxisType.Auto,) * len(AXES))
  return Mesh(np.asarray(devices, dtype=object).reshape(shape), AXES,
              axis_types=(AxisType.Auto,) * len(AXES))


def single_device_mesh(device: jax.Device | None = None) -> Mesh:
  """A 1 x 1 x 1 mesh on ``device`` (default: the first device)."""
  return make_mesh({"data": 1}, [device or jax.devices()[0]])


def batch_parallelism(mesh: Mesh) -> int:
  """How many slices the batch rows are split into: ``data * fsdp``."""
  return int(mesh.shape["data"] * mesh.shape["fsdp"])
