"""What the PyTorch peers share: the parameter map between Flax and PyTorch, the optimiser built
from our config, one training step, and the benchmark's description of a peer."""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable

import jax
import numpy as np

try:
  import torch
except ImportError:  # PyTorch is optional: only our side is timed.
  torch = None


@dataclasses.dataclass
class Side:
  """One framework's step: ``step(batch)`` runs one update and waits for it (returning the loss
  as a Python float, or None), its parameter count and the batch it runs on."""
  step: Callable[[Any], float]
  parameters: int
  batch: Any


@dataclasses.dataclass
class Peer:
  """What the driver times: ``sides`` by name ("ours", and "torch" when installed); ``unit`` of the
  rate ("examples" or "tokens") and ``per_step`` units in one step; ``describe`` one line;
  ``same_start``: PyTorch starts from our initial parameters, so the first losses must agree."""
  sides: dict[str, Side]
  unit: str
  per_step: int
  describe: str
  same_start: bool = True


class Captured(Exception):
  """Raised by :func:`capture_training` in place of the training loop."""


class capture_training:  # noqa: N801 (a context manager used like a function)
  """Replaces ``module.train`` (an experiment's training loop) for the duration of a ``with``: the
  experiment's own code then builds its parameters, optimiser and jitted train step and hands them
  to the loop, which raises :class:`Captured` instead of training. ``self.init_state()`` is the
  experiment's initial train state, ``self.train_step`` its step."""

  def __init__(self, module):
    self.module = module
    self.init_state = self.train_step = None

  def _train(self, config, workdir, init_state, train_step, *args, **kwargs):
    del config, workdir, args, kwargs
    self.init_state, self.train_step = init_state, train_step
    raise Captured

  def __enter__(self):
    self.original = self.module.train
    self.module.train = self._train
    return self

  def __exit__(self, kind, value, traceback):
    self.module.train = self.original
    return kind is Captured  # swallow only our own exception


def count_parameters(params) -> int:
  return int(sum(np.size(x) for x in jax.tree.leaves(params)))


# ---------------------------------------------------------------------------------------------
# The parameter map. An entry says that the Flax parameter at ``path`` lives in ``tensor[rows]``
# of the PyTorch model, as ``kind``: "copy" (same layout), "dense" (Flax kernel [in, out] is
# PyTorch weight [out, in]) or "conv" (Flax [kh, kw, in, out] is PyTorch [out, in, kh, kw]).


@dataclasses.dataclass
class Entry:
  path: tuple[str, ...]
  tensor: Any  # a torch.nn.Parameter
  rows: slice | None = None
  kind: str = "copy"


def _to_torch(value: np.ndarray, kind: str) -> np.ndarray:
  if kind == "dense":
    return value.T
  if kind == "conv":
    return value.transpose(3, 2, 0, 1)
  return value


def _from_torch(value: np.ndarray, kind: str) -> np.ndarray:
  if kind == "dense":
    return value.T
  if kind == "conv":
    return value.transpose(2, 3, 1, 0)
  return value


def _flat(params) -> dict[tuple[str, ...], np.ndarray]:
  flat = jax.tree_util.tree_flatten_with_path(params)[0]
  return {tuple(k.key for k in path): np.asarray(v) for path, v in flat}


def _check_covers(entries, params) -> None:
  mapped = [e.path for e in entries]
  ours = set(_flat(params))
  if len(set(mapped)) != len(mapped) or set(mapped) != ours:
    raise ValueError(f"the parameter map does not match the Flax parameters: unmapped "
                     f"{sorted(ours - set(mapped))}, unknown {sorted(set(mapped) - ours)}")


def load_params(entries, params) -> None:
  """Copies the Flax ``params`` into the PyTorch tensors of ``entries`` (every Flax parameter
  must be mapped exactly once)."""
  _check_covers(entries, params)
  flat = _flat(params)
  with torch.no_grad():
    for e in entries:
      value = torch.from_numpy(np.array(_to_torch(flat[e.path], e.kind)))
      target = e.tensor if e.rows is None else e.tensor[e.rows]
      if tuple(target.shape) != tuple(value.shape):
        raise ValueError(f"{'/'.join(e.path)}: Flax {tuple(value.shape)} (as PyTorch) but the "
                         f"PyTorch tensor has {tuple(target.shape)}")
      target.copy_(value)


def gather(entries, field: str = "grad") -> dict:
  """The PyTorch ``field`` ("grad" or "data") of every entry, as a nested dict in Flax layout."""
  out: dict = {}
  for e in entries:
    value = getattr(e.tensor, field)
    value = value if e.rows is None else value[e.rows]
    node = out
    for key in e.path[:-1]:
      node = node.setdefault(key, {})
    node[e.path[-1]] = _from_torch(value.detach().numpy(), e.kind)
  return out


def trainable_count(model, frozen: int = 0) -> int:
  """Parameters that train: those with ``requires_grad`` less ``frozen`` elements whose gradient
  a hook keeps at zero (see :func:`freeze_rows`)."""
  return sum(p.numel() for p in model.parameters() if p.requires_grad) - frozen


def freeze_rows(parameter, rows: slice) -> int:
  """Keeps ``parameter[rows]`` at its value (zero gradient, so Adam never moves it): PyTorch's
  fused cells carry biases our cells do not have. Returns the number of elements frozen."""
  mask = torch.ones_like(parameter)
  mask[rows] = 0
  parameter.register_hook(lambda grad: grad * mask)
  return int(parameter[rows].numel())


# ---------------------------------------------------------------------------------------------
# The optimiser and the step.


def schedule_multiplier(config) -> Callable[[int], float]:
  """``attention_jax.training.make_schedule`` as a multiplier of ``config.learning_rate`` (for
  ``torch.optim.lr_scheduler.LambdaLR``)."""
  name = config.schedule
  if name == "constant":
    return lambda step: 1.0
  if name == "warmup_cosine":
    warmup, total = config.warmup_steps, config.num_steps
    end = config.end_learning_rate / config.learning_rate

    def warmup_cosine(step):  # optax.warmup_cosine_decay_schedule
      if step < warmup:
        return step / warmup
      progress = min(1.0, (step - warmup) / max(1, total - warmup))
      return end + (1 - end) * 0.5 * (1 + math.cos(math.pi * progress))

    return warmup_cosine
  raise ValueError(f"no PyTorch peer for config.schedule {name!r}")


def make_optimizer(config, parameters):
  """``attention_jax.training.make_optimizer``'s adam / adamw with its schedule."""
  parameters = [p for p in parameters if p.requires_grad]
  betas, eps = (config.adam_b1, config.adam_b2), config.adam_eps
  if config.optimizer == "adam":
    optimizer = torch.optim.Adam(parameters, lr=config.learning_rate, betas=betas, eps=eps)
  elif config.optimizer == "adamw":
    optimizer = torch.optim.AdamW(parameters, lr=config.learning_rate, betas=betas, eps=eps,
                                  weight_decay=config.weight_decay)
  else:
    raise ValueError(f"no PyTorch peer for config.optimizer {config.optimizer!r}")
  return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, schedule_multiplier(config))


def make_step(model, loss_fn, config) -> Callable[[Any], float]:
  """One update: ``loss_fn(model, batch)``, backward, global-norm clipping, the optimiser and the
  schedule; returns the loss (``.item()`` synchronises, like ``block_until_ready``)."""
  model.train()
  optimizer, scheduler = make_optimizer(config, model.parameters())
  trainable = [p for p in model.parameters() if p.requires_grad]

  def step(batch):
    loss = loss_fn(model, batch)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if config.grad_clip_norm:
      torch.nn.utils.clip_grad_norm_(trainable, config.grad_clip_norm)
    optimizer.step()
    scheduler.step()
    return loss.item()

  return step


def _data_mesh():
  return jax.make_mesh((jax.device_count(),), ("data",),
                       axis_types=(jax.sharding.AxisType.Auto,))


def replicated(tree):
  """``tree`` on every device (a train state); unchanged with one device."""
  if jax.device_count() == 1:
    return tree
  return jax.device_put(tree, jax.sharding.NamedSharding(_data_mesh(), jax.sharding.PartitionSpec()))


def split_batch(batch):
  """``batch`` split along its first axis over every device (data parallelism, e.g. over the
  host devices of ``--host-devices``); unchanged with one device."""
  if jax.device_count() == 1:
    return batch
  return jax.device_put(batch, jax.sharding.NamedSharding(_data_mesh(),
                                                          jax.sharding.PartitionSpec("data")))


def jax_step(init_state, train_step, loss_of_sums) -> Callable[[Any], float]:
  """Our side's ``step(batch) -> loss``: the experiment's jitted ``train_step`` on a state it
  keeps (on every device, when there are several); ``loss_of_sums`` reads the loss from the
  step's metric sums."""
  holder = {"state": replicated(init_state())}

  def step(batch):
    holder["state"], sums = train_step(holder["state"], batch)
    return float(loss_of_sums(sums))  # synchronises

  return step
