"""The shared training loop: restore if present, train, log, evaluate, checkpoint, return.

Everything a run writes goes under ``workdir``::

  workdir/config.json          the config (rewritten at each start)
  workdir/checkpoints/<step>/  orbax checkpoints (state, its checksums, the open log interval,
                               config JSON), the latest few; a resume restores the newest intact
                               one (see :mod:`checkpointing`)
  workdir/metrics.jsonl        one line per log interval ("split": "train") and evaluation
                               ("split": "eval"), truncated to the restored step on resume
  workdir/tensorboard/         TensorBoard scalars (train/<metric>, eval/<metric>)
  workdir/final_eval.json      eval_fn's result at num_steps, if eval_fn is given

Per step ``s`` (``s = state.step``, from the restored step up to ``num_steps - 1``) the loop
calls ``batch = get_batch(s)`` and ``state, sums = train_step(state, batch)``. ``get_batch``
must be a pure function of the step (the data pipeline derives the batch from ``(seed, s)``), so
a run killed and restored at step ``k`` continues with ``get_batch(k)`` and follows the same
trajectory as one that never stopped. Metric sums stay on device between log intervals; the
host syncs only when logging, evaluating or checkpointing.

After ``done = s + 1`` updates: log (if ``done % log_every == 0``), evaluate (if
``done % eval_every == 0``), checkpoint (if ``done % checkpoint_every == 0``), in this order, so
a checkpoint at step ``k`` implies the log lines up to ``k`` were written; it also holds the metric
sums of a log interval still open at ``k``, so a resumed run's next line covers the same steps as
an uninterrupted run's (bit-identical values). All three also happen
at ``done == num_steps``. Before any of them the loop checks that no step produced a NaN/Inf
loss or gradient norm (and, before saving, that the parameters are finite); otherwise it raises
``TrainingDiverged`` (a ``FloatingPointError``) without saving, leaving the last good checkpoint
in place. With ``config.max_loss`` set, a finite logged training loss above it stops the run
the same way, after its log line is written.

Devices: the loop builds the mesh of ``config.mesh`` (:mod:`attention_jax.parallel`; default
data parallelism over all devices), places the state with its ``NamedSharding`` rules (``fsdp``
splits parameters and optimiser state) before restoring into it, places each batch (rows over
``data`` x ``fsdp``, tokens over ``sequence``), compiles the step with the state's shardings as
outputs and runs it under ``jax.set_mesh(mesh)``: XLA partitions the step, no experiment code
changes. With several processes (``jax.process_count() > 1``) each process feeds only its own
rows of the global batch of ``config.batch_size`` rows: ``get_batch(step, rows=slice)`` when
``get_batch`` takes a ``rows`` argument, else the rows sliced from ``get_batch(step)``; only
process 0 writes ``config.json``, the metrics and ``final_eval.json``.

A tqdm bar shows the steps when stderr is a terminal.
"""

from __future__ import annotations

import dataclasses
import inspect
import os
import time
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from attention_jax import parallel
from attention_jax.errors import UserError
from attention_jax.training import metric_writers
from attention_jax.training import metrics as metrics_lib
from attention_jax.training.checkpointing import Checkpointer
from attention_jax.training.config import validate_training_config
from attention_jax.training.config_json import config_to_dict, save_config_json
from attention_jax.training.run_files import write_json


class TrainingDiverged(UserError, FloatingPointError):
  """A run stopped by a NaN/Inf loss, gradient norm or parameter, or a loss over
  ``config.max_loss``; the message names the step and the last good checkpoint."""


_accumulate = jax.jit(metrics_lib.accumulate, donate_argnums=(0,))


@jax.jit
def _all_finite(tree) -> jax.Array:
  leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)
            if jnp.issubdtype(x.dtype, jnp.inexact)]
  return jnp.all(jnp.stack(leaves)) if leaves else jnp.bool_(True)


def _last_good(checkpointer: Checkpointer) -> str:
  step = checkpointer.latest_step()
  if step is None:
    return f"no checkpoint has been saved in {checkpointer.directory}"
  return f"the last good checkpoint is step {step} in {checkpointer.directory}"


def _raise_if_nonfinite(host_sums: Mapping[str, Any], first_step: int, last_step: int,
                        checkpointer: Checkpointer) -> None:
  bad = metrics_lib.first_nonfinite(host_sums)
  if bad is not None:
    step, loss, grad_norm = bad
    if not np.isfinite(loss):
      what = f"loss is {loss}"
    else:
      what = f"gradient norm is {grad_norm} (loss {loss})"
    raise TrainingDiverged(f"{what} at step {step}; {_last_good(checkpointer)}")
  loss_sum = float(np.asarray(host_sums.get("loss_sum", 0.0)))
  if not np.isfinite(loss_sum):  # a train_step that does not track the first bad step
    raise TrainingDiverged(
        f"loss is {loss_sum} in steps {first_step}..{last_step}; {_last_good(checkpointer)}")


def _raise_if_over(max_loss: float | None, loss: float | None, step: int,
                   checkpointer: Checkpointer) -> None:
  """The divergence guard: a finite loss logged at ``step`` over ``config.max_loss`` (None or 0:
  off)."""
  if max_loss and loss is not None and loss > max_loss:
    raise TrainingDiverged(
        f"training loss {loss:.6g} logged at step {step} exceeds config.max_loss = {max_loss:g}; "
        f"{_last_good(checkpointer)} (lower config.learning_rate or raise config.max_loss)")


def _interval_state(interval_start: int, sums, host_sums) -> dict[str, Any]:
  """The open log interval as JSON: its first step and metric sums (exact: a float32 is a
  float64, which JSON writes exactly); no sums when a log line just closed it."""
  if sums is None:
    return {"interval_start": interval_start, "sums": None}
  return {"interval_start": interval_start,
          "sums": {k: {"dtype": str(np.asarray(v).dtype), "value": np.asarray(v).item()}
                   for k, v in host_sums.items()}}


def _open_interval(loop_state: Mapping[str, Any] | None, start: int) -> tuple[Any, int]:
  """``(sums, interval_start)`` to go on from: the checkpoint's open interval, if it saved one
  (a checkpoint of an older version did not: the interval then starts at ``start``)."""
  if not loop_state or loop_state.get("sums") is None:
    return None, start
  sums = {k: jnp.asarray(np.asarray(v["value"], dtype=v["dtype"]))
          for k, v in loop_state["sums"].items()}
  return sums, int(loop_state["interval_start"])


def _takes_rows(get_batch: Callable) -> bool:
  try:
    return "rows" in inspect.signature(get_batch).parameters
  except (TypeError, ValueError):
    return False


def _batch_feeder(config, mesh, get_batch):
  """``step -> batch placed on the mesh``; with several processes, only this process's rows."""
  global_rows = int(config.batch_size)
  several = jax.process_count() > 1
  rows = parallel.local_rows(mesh, global_rows) if several else None
  takes_rows = _takes_rows(get_batch)

  def feed(step):
    if not several:
      batch = get_batch(step)
    elif takes_rows:
      batch = get_batch(step, rows=rows)
    else:
      batch = jax.tree.map(lambda x: np.asarray(x)[rows] if np.ndim(x) else x, get_batch(step))
    return parallel.place_batch(batch, mesh, global_rows)

  return feed


class _Outputs:
  """What the primary process writes as it trains: ``metrics.jsonl`` (first truncated to the
  step the run starts from), TensorBoard scalars and ``final_eval.json``."""

  def __init__(self, workdir: str, start: int):
    self._workdir = workdir
    self._jsonl = metric_writers.JsonlWriter(os.path.join(workdir, "metrics.jsonl"))
    self._jsonl.truncate_to(start)
    # TensorBoard hides what earlier runs logged after `start`, as the truncation drops it.
    self._tensorboard = metric_writers.SummaryWriter(os.path.join(workdir, "tensorboard"),
                                                     purge_step=start + 1)

  def write(self, split: str, step: int, values: Mapping[str, Any]) -> None:
    self._jsonl.write({"step": step, "split": split, **values})
    metric_writers.write_scalars(self._tensorboard, step, values, prefix=f"{split}/")

  def write_final_eval(self, step: int, result: Mapping[str, Any]) -> None:
    write_json(os.path.join(self._workdir, "final_eval.json"), {"step": step, **result})

  def close(self) -> None:
    self._jsonl.close()
    self._tensorboard.close()


class _NoOutputs:
  """The outputs of a non-primary process: nothing (it writes only its checkpoint shards)."""

  def write(self, split, step, values):
    del split, step, values

  def write_final_eval(self, step, result):
    del step, result

  def close(self):
    pass


@dataclasses.dataclass(frozen=True)
class _Run:
  """One call of :func:`train` once the mesh, state, step and feeder are set up."""

  config: Any
  workdir: str
  primary: bool
  train_step: Callable[[Any, Any], tuple[Any, Any]]  # sharded and jitted
  get_batch: Callable[[int], Any]  # step -> batch placed on the mesh
  checkpointer: Checkpointer
  eval_fn: Callable[[Any], Mapping[str, Any]] | None
  learning_rate_fn: Callable[[int], Any] | None
  metric_denominators: Mapping[str, str] | None

  def restore(self, state) -> tuple[Any, int, dict[str, Any] | None]:
    """The latest intact checkpoint restored into ``state`` (or ``state``), its step and the
    loop's saved state (None from scratch)."""
    restored = self.checkpointer.restore_latest_intact(state)
    if restored is None:
      return state, int(jax.device_get(state.step)), None
    start = int(jax.device_get(restored.state.step))
    if restored.step != start:
      raise ValueError(f"checkpoint {restored.step} holds a state at step {start}")
    logging.info("Resuming from step %d in %s", start, self.workdir)
    return restored.state, start, restored.loop_state

  def train(self, state):
    num_steps = int(self.config.num_steps)
    log_every = int(self.config.log_every)
    eval_every = int(self.config.eval_every)
    checkpoint_every = int(self.config.checkpoint_every)
    state, start, loop_state = self.restore(state)
    outputs = _Outputs(self.workdir, start) if self.primary else _NoOutputs()
    pbar = metric_writers.make_progress_bar(num_steps, start, None if self.primary else False)
    try:
      # A log interval open at the checkpoint goes on from its saved sums, so its line covers
      # the same steps as in a run that never stopped.
      sums, interval_start = _open_interval(loop_state, start)
      timed_from, interval_time = start, time.perf_counter()
      for step in range(start, num_steps):
        state, step_sums = self.train_step(state, self.get_batch(step))
        sums = step_sums if sums is None else _accumulate(sums, step_sums)
        pbar.update(1)
        done = step + 1
        last = done == num_steps
        do_log = last or done % log_every == 0
        do_eval = self.eval_fn is not None and (
            last or (eval_every > 0 and done % eval_every == 0))
        do_save = last or done % checkpoint_every == 0
        if not (do_log or do_eval or do_save):
          continue

        host_sums = jax.device_get(sums)  # The only host sync, once per interval.
        _raise_if_nonfinite(host_sums, interval_start, step, self.checkpointer)

        if do_log:
          elapsed = max(time.perf_counter() - interval_time, 1e-9)
          record = self.train_record(host_sums, done, done - timed_from, elapsed)
          outputs.write("train", done, record)
          loss = record.get("loss")
          pbar.set_postfix({"loss": "n/a" if loss is None else f"{loss:.4g}",
                            "steps/s": f"{record['steps_per_sec']:.3g}",
                            "ex/s": f"{record['examples_per_sec']:.3g}"}, refresh=False)
          _raise_if_over(self.config.get("max_loss"), loss, done, self.checkpointer)
          sums = None
          interval_start = timed_from = done
          interval_time = time.perf_counter()

        side_start = time.perf_counter()  # Evaluation and saving are not counted in throughput.
        if do_eval:
          result = dict(self.eval_fn(state))
          outputs.write("eval", done, result)
          if last:
            outputs.write_final_eval(done, result)
        if do_save:
          if not bool(_all_finite(state.params)):
            raise TrainingDiverged(f"parameters are not finite after step {step}; "
                                     f"{_last_good(self.checkpointer)}")
          self.checkpointer.save(done, state, force=True,
                                 loop_state=_interval_state(interval_start, sums, host_sums))
        interval_time += time.perf_counter() - side_start
      return state
    finally:
      pbar.close()
      outputs.close()

  def train_record(self, host_sums, done: int, steps: int, elapsed: float) -> dict[str, Any]:
    """The metrics of a log interval of ``steps`` steps ending after ``done`` updates."""
    record = metrics_lib.summarize(host_sums, self.metric_denominators)
    if self.learning_rate_fn is not None:
      record["learning_rate"] = float(self.learning_rate_fn(done - 1))
    record["steps_per_sec"] = steps / elapsed
    record["examples_per_sec"] = record.get("example_count", 0.0) / elapsed
    record["tokens_per_sec"] = record.get("token_count", 0.0) / elapsed
    return record


def train(
    config,
    workdir: str | os.PathLike,
    init_state: Any | Callable[[], Any],
    train_step: Callable[[Any, Mapping[str, Any]], tuple[Any, Mapping[str, jax.Array]]],
    get_batch: Callable[[int], Mapping[str, np.ndarray]],
    *,
    eval_fn: Callable[[Any], Mapping[str, float | None]] | None = None,
    learning_rate_fn: Callable[[int], Any] | None = None,
    metric_denominators: Mapping[str, str] | None = None,
) -> Any:
  """Trains from the latest checkpoint in ``workdir`` (or from scratch) to ``config.num_steps``.

  Args:
    config: a ConfigDict with the fields of :func:`default_training_config` (validated here
      with :func:`validate_training_config`); reads ``num_steps``, ``log_every``,
      ``eval_every``, ``checkpoint_every``, ``keep_checkpoints``, ``async_checkpointing``,
      ``batch_size`` and ``mesh``. Saved as JSON in the workdir and with every checkpoint.
    workdir: the run's directory (created).
    init_state: a freshly initialised train state, or a zero-argument function returning one.
      A checkpoint is restored into its structure (dtypes, shardings, ``apply_fn``, ``tx``).
      Its buffers may be donated: do not use it after the call.
    train_step: ``(state, batch) -> (state, metric_sums)``, e.g. ``make_train_step(loss_fn)``.
    get_batch: ``step -> dict of numpy arrays``, a pure function of the step; with several
      processes, optionally ``(step, rows=slice) -> those rows only`` (see the module doc).
    eval_fn: ``state -> dict of floats`` (e.g. ``lambda s: evaluate(eval_step, s, batches())``),
      run every ``eval_every`` steps and at the end.
    learning_rate_fn: the optax schedule, to log ``learning_rate`` (the rate of the latest
      update, ``learning_rate_fn(step - 1)``).
    metric_denominators: passed to :func:`metrics.summarize`.

  Returns:
    The state after ``config.num_steps`` updates.

  Raises:
    TrainingDiverged: (a ``FloatingPointError``) a step had a NaN/Inf loss or gradient norm
      (the message names the step and the last good checkpoint), the parameters became
      non-finite, or a logged loss exceeded ``config.max_loss``.
  """
  validate_training_config(config)
  workdir = os.path.abspath(os.fspath(workdir))
  os.makedirs(workdir, exist_ok=True)
  primary = jax.process_index() == 0  # Other hosts write only their checkpoint shards.
  if primary:
    save_config_json(config, os.path.join(workdir, "config.json"))

  mesh = parallel.make_mesh(config.get("mesh"))
  logging.info("Training on mesh %s (%s devices, %d processes)", dict(mesh.shape),
               mesh.devices.size, jax.process_count())
  state = init_state() if callable(init_state) else init_state
  state = parallel.place_state(state, mesh)
  step_fn = parallel.sharded_train_step(train_step, mesh, parallel.state_shardings(state, mesh))
  feed = _batch_feeder(config, mesh, get_batch)
  checkpointer = Checkpointer(
      os.path.join(workdir, "checkpoints"), save_every=int(config.checkpoint_every),
      keep=int(config.keep_checkpoints), config=config_to_dict(config),
      async_save=bool(config.get("async_checkpointing", True)))
  run = _Run(config=config, workdir=workdir, primary=primary, train_step=step_fn,
             get_batch=feed, checkpointer=checkpointer, eval_fn=eval_fn,
             learning_rate_fn=learning_rate_fn, metric_denominators=metric_denominators)
  try:
    checkpointer.check_writable()  # Fails now, not after the first interval of training.
    with jax.set_mesh(mesh):
      return run.train(state)
  finally:
    checkpointer.close()  # Waits for an async save in flight: it is complete on return.
