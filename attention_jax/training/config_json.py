"""The JSON copy of a config that a run keeps in its workdir (and with every checkpoint)."""

from __future__ import annotations

import json
import os
from typing import Any, Mapping

import ml_collections

from attention_jax.training.run_files import atomic_write_text


def config_to_dict(config: Mapping[str, Any] | ml_collections.ConfigDict) -> dict[str, Any]:
  """A JSON-serialisable plain dict of ``config`` (tuples become lists, other values repr)."""
  if isinstance(config, (ml_collections.ConfigDict, ml_collections.FrozenConfigDict)):
    config = config.to_dict()

  def convert(value):
    if isinstance(value, Mapping):
      return {str(k): convert(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
      return [convert(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
      return value
    if hasattr(value, "item") and getattr(value, "shape", None) == ():
      return value.item()
    return repr(value)

  return convert(config)


def save_config_json(config, path: str | os.PathLike) -> None:
  """Writes ``config_to_dict(config)`` as indented JSON, atomically."""
  atomic_write_text(path, json.dumps(config_to_dict(config), indent=2, sort_keys=True) + "\n")


def load_config_json(path: str | os.PathLike) -> ml_collections.ConfigDict:
  """Reads a config written by :func:`save_config_json` back into a ``ConfigDict``."""
  with open(path) as f:
    return ml_collections.ConfigDict(json.load(f))
