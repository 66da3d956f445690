"""What the Hugging Face importers and exporters share: arrays of any dtype, files, config.json.

A state dict comes as a mapping of names to arrays (NumPy, ``ml_dtypes``, JAX, or PyTorch tensors
of any float dtype, bfloat16 included), as a ``.safetensors`` file, or as a folder written by
``save_pretrained`` (``model.safetensors`` and ``config.json``). Nothing is downloaded here.
Exporters write that folder layout back, so ``transformers``' ``from_pretrained(folder)`` reads it.
"""

from __future__ import annotations

import json
import os
import re
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"


def to_numpy(value: Any) -> np.ndarray:
  """One tensor as a NumPy array in its own dtype (bfloat16 as ``ml_dtypes.bfloat16``)."""
  if type(value).__module__.startswith("torch"):  # torch is installed if it made the tensor
    import torch  # pylint: disable=import-outside-toplevel
    value = value.detach().cpu()
    if value.dtype == torch.bfloat16:  # NumPy has no bfloat16: reinterpret the bits
      return value.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
    return value.numpy()
  return np.asarray(value)


def load_state_dict(source: Mapping[str, Any] | str | os.PathLike) -> dict[str, np.ndarray]:
  """Names -> NumPy arrays from a mapping, a ``.safetensors`` file or a ``save_pretrained``
  folder."""
  if isinstance(source, Mapping):
    return {name: to_numpy(value) for name, value in source.items()}
  path = os.fspath(source)
  if os.path.isdir(path):
    path = os.path.join(path, WEIGHTS_NAME)
  if not os.path.isfile(path):
    raise ValueError(f"state_dict: no safetensors file at {path!r}")
  # The flax loader reads bfloat16, which safetensors' NumPy loader rejects.
  from safetensors import flax as safetensors_flax  # pylint: disable=import-outside-toplevel
  return {name: np.asarray(value) for name, value in safetensors_flax.load_file(path).items()}


def strip_names(state_dict, prefix: str, ignored: re.Pattern,
                renames: tuple[tuple[str, str], ...] = ()) -> dict[str, np.ndarray]:
  """The state dict's arrays by name without the optional ``prefix``, with the ``renames``
  (regex, replacement) applied and the names ``ignored`` matches (buffers, unmodelled heads)
  dropped."""
  out = {}
  for name, value in load_state_dict(state_dict).items():
    short = name.removeprefix(prefix)
    for pattern, replacement in renames:
      short = re.sub(pattern, replacement, short)
    if ignored.fullmatch(short):
      continue
    if short in out:
      raise ValueError(f"state dict holds {short!r} twice (with and without {prefix!r})")
    out[short] = value
  return out


def read_hf_config(hf_config: Mapping[str, Any] | str | os.PathLike | None,
                   state_dict: Any = None) -> dict[str, Any]:
  """An HF ``config.json`` as a dict: given as a dict, a file or the folder that holds it; if
  None, the one beside ``state_dict`` when that is a ``save_pretrained`` folder, else ``{}``."""
  if hf_config is None:
    beside = (os.path.join(os.fspath(state_dict), CONFIG_NAME)
              if isinstance(state_dict, (str, os.PathLike)) and os.path.isdir(state_dict) else None)
    if beside is None or not os.path.isfile(beside):
      return {}
    hf_config = beside
  if isinstance(hf_config, Mapping):
    return dict(hf_config)
  path = os.fspath(hf_config)
  if os.path.isdir(path):
    path = os.path.join(path, CONFIG_NAME)
  try:
    with open(path, encoding="utf-8") as f:
      return json.load(f)
  except (OSError, json.JSONDecodeError) as error:
    raise ValueError(f"hf_config: cannot read {path!r}: {error}") from None


def check_names_and_shapes(weights: Mapping[str, np.ndarray],
                           expected: Mapping[str, tuple[int, ...]]) -> None:
  """ValueError naming every missing / unknown tensor, or the first misshaped one."""
  missing = sorted(set(expected) - set(weights))
  unknown = sorted(set(weights) - set(expected))
  if missing or unknown:
    raise ValueError(f"state dict does not match the config: missing {missing}, "
                     f"unknown {unknown}")
  for name, shape in expected.items():
    if tuple(weights[name].shape) != tuple(shape):
      raise ValueError(f"{name} has shape {tuple(weights[name].shape)}, expected {tuple(shape)}")


def as_params(tree: Any, dtype: Any) -> Any:
  """Every leaf as a JAX array of ``dtype`` (the importers' output)."""
  return jax.tree.map(lambda x: jnp.asarray(np.asarray(x, np.float32), dtype), tree)


def check_config_value(hf: Mapping[str, Any], key: str, from_tensors: Any) -> None:
  """A config.json entry that the tensors also tell must agree with them."""
  if key in hf and hf[key] is not None and hf[key] != from_tensors:
    raise ValueError(f"hf_config[{key!r}] is {hf[key]!r} but the tensors say {from_tensors!r}")


def save_pretrained(directory: str | os.PathLike, state_dict: Mapping[str, np.ndarray],
                    hf_config: Mapping[str, Any]) -> str:
  """Writes ``model.safetensors`` and ``config.json`` into ``directory`` (HF's layout);
  returns the folder."""
  # The flax writer, like its reader, handles bfloat16, which safetensors' NumPy one does not.
  from safetensors import flax as safetensors_flax  # pylint: disable=import-outside-toplevel
  directory = os.fspath(directory)
  os.makedirs(directory, exist_ok=True)
  safetensors_flax.save_file({name: jnp.asarray(value) for name, value in state_dict.items()},
                             os.path.join(directory, WEIGHTS_NAME), metadata={"format": "pt"})
  from attention_jax.training import run_files  # pylint: disable=import-outside-toplevel
  run_files.atomic_write_text(os.path.join(directory, CONFIG_NAME),
                              json.dumps(dict(hf_config), indent=2, sort_keys=True) + "\n")
  return directory


def default_num_heads(features: int, hf_config: Mapping[str, Any], key: str,
                      num_heads: int | None) -> int:
  """Heads (which no tensor shows): ``num_heads``, else config.json's ``key``, else the 64-wide
  heads every released GPT-2 and BERT size uses."""
  if num_heads is None:
    num_heads = hf_config.get(key)
  if num_heads is None:
    if features % 64:
      raise ValueError(f"width {features} is not a multiple of 64 (the head width of the "
                       f"released models); pass num_heads or hf_config")
    num_heads = features // 64
  if features % num_heads:
    raise ValueError(f"num_heads {num_heads} does not divide the width {features}")
  return num_heads
