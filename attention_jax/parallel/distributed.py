"""Several processes (hosts) as one JAX program: ``jax.distributed.initialize`` from flags or
the environment.

Where the settings come from, first match wins:

1. explicit arguments (the experiments' ``--coordinator_address``, ``--num_processes``,
   ``--process_id`` flags);
2. the environment variables ``JAX_COORDINATOR_ADDRESS`` (``host:port`` of process 0),
   ``JAX_NUM_PROCESSES`` and ``JAX_PROCESS_ID``;
3. a cluster JAX detects by itself (Cloud TPU slices, SLURM, Open MPI, GKE), when
   ``auto=True`` (``JAX_DISTRIBUTED_AUTO=1``): ``jax.distributed.initialize()`` with no
   arguments.

Nothing set means one process: nothing is initialised. On CPU the cross-process collectives
use gloo. Initialise before any other JAX call.
"""

from __future__ import annotations

import os

import jax

ENV_ADDRESS = "JAX_COORDINATOR_ADDRESS"
ENV_NUM_PROCESSES = "JAX_NUM_PROCESSES"
ENV_PROCESS_ID = "JAX_PROCESS_ID"
ENV_AUTO = "JAX_DISTRIBUTED_AUTO"


def _env_int(name: str) -> int | None:
  value = os.environ.get(name)
  if value in (None, ""):
    return None
  try:
    return int(value)
  except ValueError:
    raise ValueError(f"environment variable {name} must be an integer, got {value!r}") from None


def settings(coordinator_address: str | None = None, num_processes: int | None = None,
             process_id: int | None = None) -> dict | None:
  """The resolved ``(coordinator_address, num_processes, process_id)`` as a dict, or None when
  neither the arguments nor the environment ask for several processes.

  Raises:
    ValueError: an incomplete or inconsistent setting, naming the flag and its variable.
  """
  address = coordinator_address or os.environ.get(ENV_ADDRESS) or None
  num = num_processes if num_processes is not None else _env_int(ENV_NUM_PROCESSES)
  pid = process_id if process_id is not None else _env_int(ENV_PROCESS_ID)
  if address is None and num is None and pid is None:
    return None
  missing = [f"--{flag} (or {env})" for flag, env, value in (
      ("coordinator_address", ENV_ADDRESS, address), ("num_processes", ENV_NUM_PROCESSES, num),
      ("process_id", ENV_PROCESS_ID, pid)) if value is None]
  if missing:
    raise ValueError(f"several processes need all three settings; missing {', '.join(missing)}")
  if num < 1:
    raise ValueError(f"--num_processes must be >= 1, got {num}")
  if not 0 <= pid < num:
    raise ValueError(f"--process_id must be in [0, {num}) for --num_processes={num}, got {pid}")
  if ":" not in address:
    raise ValueError(f"--coordinator_address must be host:port, got {address!r}")
  return {"coordinator_address": address, "num_processes": num, "process_id": pid}


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None, *, auto: bool | None = None) -> bool:
  """Joins the processes into one JAX runtime when asked to (see the module docstring).

  Returns:
    Whether ``jax.distributed.initialize`` was called.
  """
  resolved = settings(coordinator_address, num_processes, process_id)
  auto = os.environ.get(ENV_AUTO, "") not in ("", "0") if auto is None else auto
  if resolved is None and not auto:
    return False
  if jax.distributed.is_initialized():
    return False
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(**(resolved or {}))
  return True


ENV_HOST_DEVICES = "ATTENTION_JAX_HOST_DEVICES"
_HOST_DEVICE_FLAG = "--xla_force_host_platform_device_count"


def use_host_devices(count: int | None = None) -> bool:
  """Splits the CPU into ``count`` XLA host devices (default ``$ATTENTION_JAX_HOST_DEVICES``;
  neither: leaves it whole), so that a run's mesh trains data-parallel over them: one program
  per device, each on its own thread, where one device runs each small kernel across the cores
  with a synchronisation per kernel. Must come before JAX starts its CPU backend.

  Returns:
    Whether the device count was set.

  Raises:
    ValueError: ``count < 1``, or JAX's backends already started (naming the flag).
  """
  if count is None:
    count = _env_int(ENV_HOST_DEVICES)
  if count is None:
    return False
  if count < 1:
    raise ValueError(f"--host_devices must be >= 1, got {count}")
  from jax._src import xla_bridge  # pylint: disable=g-import-not-at-top
  if xla_bridge.backends_are_initialized():
    raise ValueError(f"--host_devices={count} must be set before JAX starts its backends (a "
                     f"JAX computation ran before it)")
  kept = [f for f in os.environ.get("XLA_FLAGS", "").split() if not f.startswith(
      _HOST_DEVICE_FLAG)]
  os.environ["XLA_FLAGS"] = " ".join([*kept, f"{_HOST_DEVICE_FLAG}={count}"])
  return True
