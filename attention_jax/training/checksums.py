"""Checksums of the array leaves of a pytree, to tell a damaged checkpoint from an intact one.

A record per leaf, keyed by its path (``jax.tree_util.keystr``, e.g.
``.params['Dense_0']['kernel']``)::

  {"shape": [8, 32], "dtype": "float32", "crc32": 1234567}

The CRC-32 covers the leaf's elements in C order, each in little-endian byte order, so the same
values give the same checksum on any host. A leaf that this process cannot see whole (an array
sharded over several processes) gets ``"crc32": None`` and is not verified.
"""

from __future__ import annotations

import sys
import zlib
from typing import Any, Mapping

import jax
import numpy as np


def _little_endian_bytes(x: np.ndarray) -> bytes:
  x = np.ascontiguousarray(x)
  size = x.dtype.itemsize
  big = x.dtype.byteorder == ">" or (x.dtype.byteorder == "=" and sys.byteorder == "big")
  raw = x.reshape(-1).view(np.uint8).reshape(-1, size) if x.size else np.zeros((0, size),
                                                                                 np.uint8)
  return (raw[:, ::-1] if big and size > 1 else raw).tobytes()


def _host_value(leaf: Any) -> np.ndarray | None:
  """The whole value of ``leaf`` on this host, or None if other processes hold parts of it."""
  if isinstance(leaf, jax.Array):
    if not leaf.is_fully_addressable:
      return None
    if jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
      leaf = jax.random.key_data(leaf)
  return np.asarray(jax.device_get(leaf))


def crc32(value: np.ndarray) -> int:
  """The CRC-32 of ``value``'s elements in C order, little-endian."""
  return zlib.crc32(_little_endian_bytes(np.asarray(value)))


def leaf_specs(tree: Any) -> dict[str, tuple[tuple[int, ...], str]]:
  """``{path: (shape, dtype name)}`` of every leaf (arrays or ``jax.ShapeDtypeStruct``)."""
  out = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    shape = tuple(int(d) for d in np.shape(leaf))
    dtype = getattr(leaf, "dtype", None)
    out[jax.tree_util.keystr(path)] = (shape, str(np.dtype(dtype) if dtype is not None
                                                  else np.asarray(leaf).dtype))
  return out


def leaf_checksums(tree: Any) -> dict[str, dict[str, Any]]:
  """The record (shape, dtype, CRC-32) of every leaf of ``tree``, keyed by its path."""
  records = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    value = _host_value(leaf)
    shape = tuple(int(d) for d in np.shape(leaf))
    dtype = str(np.dtype(leaf.dtype)) if hasattr(leaf, "dtype") else str(value.dtype)
    records[jax.tree_util.keystr(path)] = {
        "shape": list(shape), "dtype": dtype,
        "crc32": None if value is None else crc32(value)}
  return records


def first_spec_mismatch(records: Mapping[str, Mapping[str, Any]],
                        tree: Any) -> tuple[str, str, str] | None:
  """``(leaf, stored, model)`` for the first leaf whose shape or dtype (or presence) differs
  between the saved ``records`` and ``tree``; None if they agree."""
  model = leaf_specs(tree)
  for path, (shape, dtype) in model.items():
    if path not in records:
      return path, "nothing", f"shape {shape}"
    stored = records[path]
    stored_shape = tuple(stored["shape"])
    if stored_shape != shape:
      return path, str(stored_shape), str(shape)
    if stored["dtype"] != dtype:
      return path, stored["dtype"], dtype
  for path, stored in records.items():
    if path not in model:
      return path, f"shape {tuple(stored['shape'])}", "no such leaf"
  return None


def first_checksum_mismatch(records: Mapping[str, Mapping[str, Any]], tree: Any) -> str | None:
  """The path of the first leaf of ``tree`` whose CRC-32 differs from ``records``', or None."""
  for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    key = jax.tree_util.keystr(path)
    want = records[key]["crc32"]
    if want is None:
      continue
    value = _host_value(leaf)
    if value is not None and crc32(value) != want:
      return key
  return None
