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
