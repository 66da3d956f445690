"""The absl flags of an experiment script: ``--config``, ``--workdir``, the several-process
flags (``--coordinator_address``, ``--num_processes``, ``--process_id``, ``--distributed_auto``)
and ``--host_devices`` (data parallelism over the cores of one CPU)."""

from __future__ import annotations


def define_config_flags(
    default_config: str | None = None,
    *,
    flag_values=None,
    lock_config: bool = True,
    sys_argv: list[str] | None = None,
    distributed: bool = True,
):
  """Defines ``--config`` (an ml_collections config file) and ``--workdir`` absl flags.

  With ``distributed`` it also defines the several-process flags ``--coordinator_address``,
  ``--num_processes``, ``--process_id`` and ``--distributed_auto`` and, on the global
  ``FLAGS``, joins the processes with :func:`attention_jax.parallel.initialize` right after the
  flags are parsed (before ``main``, so before any JAX computation). Unset flags fall back to
  ``JAX_COORDINATOR_ADDRESS`` / ``JAX_NUM_PROCESSES`` / ``JAX_PROCESS_ID`` /
  ``JAX_DISTRIBUTED_AUTO``; with none of them a run is one process.

  Usage in an experiment module::

    CONFIG, WORKDIR = define_config_flags()
    def main(argv): train(CONFIG.value, WORKDIR.value, ...)

  ``flag_values`` and ``sys_argv`` (the argv in which ``config_flags`` looks for
  ``--config.<field>`` overrides; default ``sys.argv``) exist for tests.

  Returns:
    ``(config_flag_holder, workdir_flag_holder)``.
  """
  from absl import flags
  from ml_collections import config_flags

  flag_values = flags.FLAGS if flag_values is None else flag_values
  config = config_flags.DEFINE_config_file(
      "config", default_config, "Path to the ml_collections config file (file.py[:name]).",
      flag_values=flag_values, lock_config=lock_config, sys_argv=sys_argv)
  workdir = flags.DEFINE_string(
      "workdir", None, "Directory for checkpoints, metrics and figures; a run resumes from it.",
      flag_values=flag_values)
  if distributed:
    _define_distributed_flags(flags, flag_values)
  return config, workdir


def _define_distributed_flags(flags, flag_values) -> None:
  from absl import app

  from attention_jax import parallel

  address = flags.DEFINE_string(
      "coordinator_address", None, "host:port of process 0, for training on several "
      "processes (hosts); default $JAX_COORDINATOR_ADDRESS.", flag_values=flag_values)
  num = flags.DEFINE_integer(
      "num_processes", None, "Number of processes; default $JAX_NUM_PROCESSES.",
      flag_values=flag_values)
  pid = flags.DEFINE_integer(
      "process_id", None, "This process's index in [0, num_processes); default "
      "$JAX_PROCESS_ID.", flag_values=flag_values)
  auto = flags.DEFINE_bool(
      "distributed_auto", None, "jax.distributed.initialize() with the cluster's own settings "
      "(Cloud TPU slices, SLURM, Open MPI); default $JAX_DISTRIBUTED_AUTO.",
      flag_values=flag_values)
  host_devices = flags.DEFINE_integer(
      "host_devices", None, "Split this CPU into N XLA host devices and train data-parallel "
      "over them (config.mesh), one program per device; the batch must divide by N. Default "
      "$ATTENTION_JAX_HOST_DEVICES (unset: one device).", flag_values=flag_values)
  if flag_values is flags.FLAGS:
    app.call_after_init(_one_line_errors(lambda: parallel.use_host_devices(host_devices.value)))
    app.call_after_init(_one_line_errors(lambda: parallel.initialize(
        address.value, num.value, pid.value, auto=auto.value)))


def _one_line_errors(callback):
  """``callback`` with a bad setting (``ValueError``) reported as the experiments report bad
  flags: one line and exit status 2, or the traceback with ``--traceback``."""

  def call():
    from attention_jax.training import launch  # launch imports this module

    try:
      callback()
    except ValueError as e:
      if launch.wants_traceback():
        raise
      launch.exit_with(str(e))

  return call
