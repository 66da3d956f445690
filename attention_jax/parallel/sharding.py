"""Where each array of a run lives on the mesh: ``NamedSharding`` rules for state and batches.

State (parameters and optimiser state, one rule for both since Adam's moments have the
parameters' shapes): replicated over ``data`` and ``sequence``; with ``fsdp > 1`` every floating
array is split along its largest axis that ``fsdp`` divides (ties: the last such axis), so each
device stores ``1/fsdp`` of it. Integer leaves (the step, the PRNG key, Adam's count), scalars
and arrays with no divisible axis stay replicated.

Batches: the leading (row) axis is split over ``("data", "fsdp")``; with ``sequence > 1`` axis 1
(the tokens) of every array with at least two axes is split over ``sequence`` too.

Placement works with one process (``jax.device_put`` of the global batch) and with several
(:func:`place_batch` builds the global array from each process's own rows with
``jax.make_array_from_process_local_data``; :func:`process_box` says which rows those are).
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from attention_jax.parallel.mesh import BATCH_AXES, batch_parallelism


def param_spec(shape: tuple[int, ...], dtype, mesh: Mesh) -> P:
  """The ``PartitionSpec`` of one state array of ``shape`` and ``dtype`` (see module doc)."""
  fsdp = int(mesh.shape["fsdp"])
  if fsdp == 1 or len(shape) == 0 or not jax.dtypes.issubdtype(dtype, np.inexact):
    return P()
  candidates = [i for i, n in enumerate(shape) if n % fsdp == 0 and n >= fsdp]
  if not candidates:
    return P()
  axis = max(candidates, key=lambda i: (shape[i], i))
  spec = [None] * len(shape)
  spec[axis] = "fsdp"
  return P(*spec)


def state_shardings(state: Any, mesh: Mesh) -> Any:
  """A pytree of ``NamedSharding`` matching ``state``'s array leaves."""

  def sharding(x):
    dtype = x.dtype if hasattr(x, "dtype") else np.result_type(x)  # Python scalars too
    return NamedSharding(mesh, param_spec(tuple(np.shape(x)), dtype, mesh))

  return jax.tree.map(sharding, state)


def place_state(state: Any, mesh: Mesh) -> Any:
  """``state`` with every array leaf on ``mesh`` per :func:`state_shardings` (static fields
  such as ``apply_fn`` and ``tx`` untouched)."""
  return jax.device_put(state, state_shardings(state, mesh))


def batch_spec(shape: tuple[int, ...], mesh: Mesh, name: str = "batch") -> P:
  """The ``PartitionSpec`` of one batch array ``[rows, tokens?, ...]``.

  Raises:
    ValueError: the rows do not divide over ``data * fsdp`` (naming ``config.batch_size``).
  """
  if len(shape) == 0:
    return P()
  split = batch_parallelism(mesh)
  if shape[0] % split:
    raise ValueError(
        f"{name} has {shape[0]} rows, which do not split over config.mesh.data * "
        f"config.mesh.fsdp = {mesh.shape['data']} * {mesh.shape['fsdp']} = {split} devices; "
        f"config.batch_size must be a multiple of {split}")
  sequence = int(mesh.shape["sequence"])
  if sequence > 1 and len(shape) >= 2 and shape[1] % sequence == 0:
    return P(BATCH_AXES, "sequence")
  return P(BATCH_AXES)


def batch_shardings(batch: Mapping[str, Any], mesh: Mesh) -> Any:
  """A pytree of ``NamedSharding`` matching ``batch`` (arrays or ``ShapeDtypeStruct``s)."""
  flat, treedef = jax.tree_util.tree_flatten_with_path(batch)
  shardings = [NamedSharding(mesh, batch_spec(tuple(np.shape(x)), mesh,
                                              f"batch{jax.tree_util.keystr(path)}"))
               for path, x in flat]
  return jax.tree.unflatten(treedef, shardings)


def process_box(sharding: NamedSharding, global_shape: tuple[int, ...]) -> tuple[slice, ...]:
  """The slices of a ``global_shape`` array that this process's devices hold, one per axis.

  Raises:
    ValueError: the process's part is not one box (the mesh interleaves processes on an axis).
  """
  indices = sharding.addressable_devices_indices_map(tuple(global_shape)).values()
  box = []
  for axis, size in enumerate(global_shape):
    starts, stops = [], []
    for index in indices:
      start, stop, _ = index[axis].indices(size)
      starts.append(start)
      stops.append(stop)
    box.append(slice(min(starts), max(stops)))
  held = {tuple(i[a].indices(n)[:2] for a, n in enumerate(global_shape)) for i in indices}
  box_size = int(np.prod([b.stop - b.start for b in box]))
  held_size = sum(int(np.prod([stop - start for start, stop in h])) for h in held)
  if held_size != box_size:
    raise ValueError(
        f"process {jax.process_index()} holds a part of the batch that is not one block "
        f"({sorted(held)}); build the mesh with the processes' devices contiguous on 'data'")
  return tuple(box)


def place_batch(batch: Mapping[str, Any], mesh: Mesh, global_rows: int | None = None) -> Any:
  """Puts a batch on ``mesh`` (see :func:`batch_shardings`).

  With one process ``batch`` is the global batch (``jax.device_put``). With several, ``batch``
  holds only this process's rows (:func:`local_rows` of ``global_rows``, every other axis whole)
  and :func:`place_local_batch` assembles the global arrays from every process's rows.
  """
  if jax.process_count() == 1:
    return jax.device_put(batch, batch_shardings(batch, mesh))
  if global_rows is None:
    raise ValueError("global_rows is needed to place a batch with several processes")
  return place_local_batch(batch, mesh, global_rows)


def local_rows(mesh: Mesh, global_rows: int) -> slice:
  """The rows of a ``[global_rows, ...]`` batch that this process feeds (all with one process)."""
  sharding = NamedSharding(mesh, batch_spec((global_rows,), mesh))
  return process_box(sharding, (global_rows,))[0]


def place_local_batch(local: Mapping[str, Any], mesh: Mesh, global_rows: int) -> Any:
  """Global arrays of ``global_rows`` rows from this process's rows ``local`` (the rows
  :func:`local_rows` names, every other axis whole). Works with any number of processes."""
  rows = local_rows(mesh, global_rows)

  def place(x):
    x = np.asarray(x)
    if x.ndim == 0:
      return jax.make_array_from_process_local_data(NamedSharding(mesh, P()), x, ())
    if x.shape[0] != rows.stop - rows.start:
      raise ValueError(
          f"this process must feed rows {rows.start}:{rows.stop} of the global batch, i.e. "
          f"{rows.stop - rows.start} rows, got an array of shape {x.shape}")
    global_shape = (global_rows,) + x.shape[1:]
    sharding = NamedSharding(mesh, batch_spec(global_shape, mesh))
    box = process_box(sharding, global_shape)
    part = x[(slice(None),) + tuple(box[1:])]
    return jax.make_array_from_process_local_data(sharding, part, global_shape)

  return jax.tree.map(place, local)


def sharded_train_step(train_step: Callable, mesh: Mesh, state_sharding: Any) -> Callable:
  """``train_step`` compiled for ``mesh``: the new state keeps ``state_sharding`` and the metric
  sums come back replicated, so every step reuses one executable and donation reuses buffers.

  ``train_step`` from :func:`attention_jax.training.make_train_step` carries its unjitted
  function (``.unjitted``) and is re-jitted with these output shardings; any other callable is
  returned unchanged (its inputs are placed, XLA picks its outputs).
  """
  raw = getattr(train_step, "unjitted", None)
  if raw is None:
    return train_step
  donate = (0,) if getattr(train_step, "donate", False) else ()
  replicated = NamedSharding(mesh, P())
  return jax.jit(raw, out_shardings=(state_sharding, replicated), donate_argnums=donate)
