"""The shared training loop: restore if present, train, log, evaluate, checkpoint, return.

Everything a run writes goes under ``workdir``::

  workdir/config.json          the config (rewritten at each start)
  workdir/checkpoints/<step>/  orbax checkpoints (state + config JSON), the latest few
  workdir/metrics.jsonl        one line per log interval ("split": "train") and evaluation
                               ("split": "eval"), truncated to the restored step on resume
  workdir/tensorboard/         TensorBoard scalars, only when tensorboardX (or TF) is installed
  workdir/final_eval.json      eval_fn's result at num_steps, if eval_fn is given

Per step ``s`` (``s = state.step``, from the restored step up to ``num_steps - 1``) the loop
calls ``batch = get_batch(s)`` and ``state, sums = train_step(state, batch)``. ``get_batch``
must be a pure function of the step (the data pipeline derives the batch from ``(seed, s)``), so
a run killed and restored at step ``k`` continues with ``get_batch(k)`` and follows the same
trajectory as one that never stopped. Metric sums stay on device between log intervals; the
host syncs only when logging, evaluating or checkpointing.

After ``done = s + 1`` updates: log (if ``done % log_every == 0``), evaluate (if
``done % eval_every == 0``), checkpoint (if ``done % checkpoint_every == 0``), in this order, so
a checkpoint at step ``k`` implies the log lines up to ``k`` were written. All three also happen
at ``done == num_steps``. Before any of them the loop checks that no step produced a NaN/Inf
loss or gradient norm (and, before saving, that the parameters are finite); otherwise it raises
``FloatingPointError`` without saving, leaving the last good checkpoint in place.

Devices: the loop builds the mesh of ``config.mesh`` (:mod:`attention_jax.parallel`; default
data parallelism over all devices), places the state with its ``NamedSharding`` rules (``fsdp``
splits parameters and optimiser state) before restoring into it, places each batch (rows over
``data`` x ``fsdp``, tokens over ``sequence``), compiles the step with the state's shardings as
outputs and runs it under ``jax.set_mesh(mesh)``: XLA partitions the step, no experiment code
changes. With several processes (``jax.process_count() > 1``) each process feeds only its own
rows of the global batch of ``config.batch_size`` rows: ``get_batch(step, rows=slice)`` when
``get_batch`` takes a ``rows`` argument, else the rows sliced from ``get_batch(step)``.
"""

from __future__ import annotations

import inspect
import json
import os
import time
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from attention_jax import parallel
from attention_jax.training import metric_writers
from attention_jax.training import metrics as metrics_lib
from attention_jax.training.checkpointing import Checkpointer
from attention_jax.training.config_validation import (atomic_write_text, config_to_dict,
                                                      save_config_json, validate_config)

_accumulate = jax.jit(metrics_lib.accumulate, donate_argnums=(0,))


@jax.jit
def _all_finite(tree) -> jax.Array:
  leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)
            if jnp.issubdtype(x.dtype, jnp.inexact)]
  return jnp.all(jnp.stack(leaves)) if leaves else jnp.bool_(True)


class _NullLog:
  """The metrics log of a non-primary host: writes nothing."""

  def truncate_to(self, step):
    del step

  def write(self, record):
    del record

  def close(self):
    pass


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
    raise FloatingPointError(f"{what} at step {step}; {_last_good(checkpointer)}")
  loss_sum = float(np.asarray(host_sums.get("loss_sum", 0.0)))
  if not np.isfinite(loss_sum):  # a train_step that does not track the first bad step
    raise FloatingPointError(
        f"loss is {loss_sum} in steps {first_step}..{last_step}; {_last_good(checkpointer)}")


def _takes_rows(get_batch: Callable) -> bool:
  try:
    return "rows" in inspect.signature(get_batch).parameters
  except (TypeError, ValueError):
    return False


def _batch_feeder(config, mesh, get_batch, prepare_batch):
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
    if prepare_batch is not None:
      batch = prepare_batch(batch)
    return parallel.place_batch(batch, mesh, global_rows)

  return feed


def train(
    config,
    workdir: str | os.PathLike,
    init_state: Any | Callable[[], Any],
    train_step: Callable[[Any, Mapping[str, Any]], tuple[Any, Mapping[str, jax.Array]]],
    get_batch: Callable[[int], Mapping[str, np.ndarray]],
    *,
    eval_fn: Callable[[Any], Mapping[str, float | None]] | None = None,
    learning_rate_fn: Callable[[int], Any] | None = None,
    prepare_batch: Callable[[Mapping[str, Any]], Mapping[str, Any]] | None = None,
    progress: bool | None = None,
    summary_writer: Any = "auto",
    metric_denominators: Mapping[str, str] | None = None,
    on_checkpoint: Callable[[int], None] | None = None,
) -> Any:
  """Trains from the latest checkpoint in ``workdir`` (or from scratch) to ``config.num_steps``.

  Args:
    config: a ConfigDict with the fields of :func:`default_training_config` (validated here);
      reads ``num_steps``, ``log_every``, ``eval_every``, ``checkpoint_every``,
      ``keep_checkpoints``, ``async_checkpointing``. Saved as JSON in the workdir and with every
      checkpoint.
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
    prepare_batch: applied to each host batch before it is placed on the mesh.
    progress: show a tqdm bar; None shows it only when stderr is a terminal.
    summary_writer: "auto" (TensorBoard in ``workdir/tensorboard`` if installed), None, or an
      object with ``scalar(tag, value, step)``, ``flush()`` (and optionally ``close()``).
    metric_denominators: passed to :func:`metrics.summarize`.
    on_checkpoint: called with the step after each checkpoint save has started.

  Returns:
    The state after ``config.num_steps`` updates.

  Raises:
    FloatingPointError: a step had a NaN/Inf loss or gradient norm (the message names the
      step and the last good checkpoint), or the parameters became non-finite.
  """
  validate_config(config)
  workdir = os.path.abspath(os.fspath(workdir))
  os.makedirs(workdir, exist_ok=True)
  primary = jax.process_index() == 0  # Other hosts write only their checkpoint shards.
  if primary:
    save_config_json(config, os.path.join(workdir, "config.json"))
  checkpoint_every = int(config.checkpoint_every)

  mesh = parallel.make_mesh(config.get("mesh"))
  logging.info("Training on mesh %s (%s devices, %d processes)", dict(mesh.shape),
               mesh.devices.size, jax.process_count())
  state = init_state() if callable(init_state) else init_state
  state = parallel.place_state(state, mesh)
  step_fn = parallel.sharded_train_step(train_step, mesh, parallel.state_shardings(state, mesh))
  feed = _batch_feeder(config, mesh, get_batch, prepare_batch)
  checkpointer = Checkpointer(
      os.path.join(workdir, "checkpoints"), save_every=checkpoint_every,
      keep=int(config.keep_checkpoints), config=config_to_dict(config),
      async_save=bool(config.get("async_checkpointing", True)))
  log = (metric_writers.JsonlWriter(os.path.join(workdir, "metrics.jsonl")) if primary
         else _NullLog())
  try:
    with jax.set_mesh(mesh):
      return _run(config, workdir, state, step_fn, feed, checkpointer, log, eval_fn,
                  learning_rate_fn, progress, summary_writer, metric_denominators,
                  on_checkpoint, primary)
  finally:
    log.close()
    checkpointer.close()  # Waits for an async save in flight: it is complete on return.


def _run(config, workdir, state, train_step, get_batch, checkpointer, log, eval_fn,
         learning_rate_fn, progress, summary_writer, metric_denominators, on_checkpoint,
         primary):
  """The body of :func:`train` once the mesh, state, step and feeder are set up."""
  num_steps = int(config.num_steps)
  log_every = int(config.log_every)
  eval_every = int(config.eval_every)
  checkpoint_every = int(config.checkpoint_every)
  writer = None
  pbar = None
  try:
    state, restored = checkpointer.restore_latest_or(state)
    start = int(jax.device_get(state.step))
    if restored is not None and restored != start:
      raise ValueError(f"checkpoint {restored} holds a state at step {start}")
    if restored is not None:
      logging.info("Resuming from step %d in %s", start, workdir)
    log.truncate_to(start)
    if not primary:
      writer = None
    elif summary_writer == "auto":
      writer = metric_writers.make_summary_writer(os.path.join(workdir, "tensorboard"))
    else:
      writer = summary_writer
    pbar = metric_writers.make_progress_bar(num_steps, start, progress if primary else False)

    sums = None
    interval_start, interval_time = start, time.perf_counter()
    for step in range(start, num_steps):
      batch = get_batch(step)
      state, step_sums = train_step(state, batch)
      sums = step_sums if sums is None else _accumulate(sums, step_sums)
      pbar.update(1)
      done = step + 1
      last = done == num_steps
      do_log = last or done % log_every == 0
      do_eval = eval_fn is not None and (last or (eval_every > 0 and done % eval_every == 0))
      do_save = last or done % checkpoint_every == 0
      if not (do_log or do_eval or do_save):
        continue

      host_sums = jax.device_get(sums)  # The only host sync, once per interval.
      _raise_if_nonfinite(host_sums, interval_start, step, checkpointer)

      if do_log:
        now = time.perf_counter()
        elapsed = max(now - interval_time, 1e-9)
        record = {"step": done, "split": "train"}
        record.update(metrics_lib.summarize(host_sums, metric_denominators))
        if learning_rate_fn is not None:
          record["learning_rate"] = float(learning_rate_fn(done - 1))
        record["steps_per_sec"] = (done - interval_start) / elapsed
        record["examples_per_sec"] = record.get("example_count", 0.0) / elapsed
        record["tokens_per_sec"] = record.get("token_count", 0.0) / elapsed
        log.write(record)
        metric_writers.write_scalars(writer, done, record, prefix="train/")
        loss = record.get("loss")
        pbar.set_postfix({"loss": "n/a" if loss is None else f"{loss:.4g}",
                          "steps/s": f"{record['steps_per_sec']:.3g}",
                          "ex/s": f"{record['examples_per_sec']:.3g}"}, refresh=False)
        sums = None
        interval_start, interval_time = done, time.perf_counter()

      side_start = time.perf_counter()  # Evaluation and saving are not counted in throughput.
      if do_eval:
        result = dict(eval_fn(state))
        log.write({"step": done, "split": "eval", **result})
        metric_writers.write_scalars(writer, done, result, prefix="eval/")
        if last and primary:
          atomic_write_text(os.path.join(workdir, "final_eval.json"),
                            json.dumps({"step": done, **result}, indent=2) + "\n")

      if do_save:
        if not bool(_all_finite(state.params)):
          raise FloatingPointError(
              f"parameters are not finite after step {step}; {_last_good(checkpointer)}")
        if checkpointer.save(done, state, force=True) and on_checkpoint is not None:
          on_checkpoint(done)
      interval_time += time.perf_counter() - side_start
    return state
  finally:
    if pbar is not None:
      pbar.close()
    if writer is not None and hasattr(writer, "close"):
      writer.close()
