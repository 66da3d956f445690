"""Periodic, atomic, verified, resumable checkpoints of a train state with orbax-checkpoint.

Layout under ``directory`` (one folder per saved step)::

  <directory>/<step>/state/...        the train state (ocp.args.StandardSave)
  <directory>/<step>/checksums/...    shape, dtype and CRC-32 of every state leaf (JSON)
  <directory>/<step>/loop/...         what the loop needs to continue exactly (JSON), if given
  <directory>/<step>/config/...       the run's config as JSON (ocp.args.JsonSave), if given

Orbax writes a step into ``<step>.orbax-checkpoint-tmp-<n>`` and renames it when complete
(asynchronously by default), so a process killed with SIGKILL at any moment leaves either a
complete step folder or a tmp folder; tmp folders are never listed as steps and are deleted
when the next :class:`Checkpointer` opens the directory. The checksums are items of the same
step, so they are committed with the state.

Restoring verifies every leaf against its checksum. A step that is damaged (a file missing,
truncated or altered), incomplete, or of another model's shapes is reported in one warning line
and the next older step is tried; a step found unusable is replaced when the run saves that step
again. With no usable step left, :class:`CheckpointError` says so in one line. A save that
cannot be written raises :class:`CheckpointError` at once (the folder is probed before orbax
starts a save, whose background threads would otherwise wait minutes for a step folder that
never appears).
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from typing import Any, Mapping

import jax
import orbax.checkpoint as ocp
from absl import logging

from attention_jax.errors import UserError
from attention_jax.training import checksums as checksums_lib

_STATE = "state"
_CHECKSUMS = "checksums"
_LOOP = "loop"
_CONFIG = "config"
_ORBAX_STEP_METADATA = "_CHECKPOINT_METADATA"
_DIFFERENT_MODEL = "of a different model"


class CheckpointError(UserError, RuntimeError):
  """A checkpoint folder that cannot be written, or holds no usable checkpoint (one line)."""


class _Unusable(Exception):
  """Why one step cannot be restored: ``kind`` ("damaged", "incomplete" or "of a different
  model") and ``detail`` (the file or leaf, and what is wrong)."""

  def __init__(self, kind: str, detail: str):
    super().__init__(f"is {kind}: {detail}")
    self.reason = f"is {kind}: {detail}"
    self.detail = detail
    self.different_model = kind == _DIFFERENT_MODEL


@dataclasses.dataclass(frozen=True)
class Restored:
  """A verified checkpoint: the state, its step and the loop's JSON item (None if not saved)."""

  state: Any
  step: int
  loop_state: dict[str, Any] | None


def abstract_like(state: Any) -> Any:
  """``jax.ShapeDtypeStruct`` (with sharding) for every array leaf of ``state``."""
  return jax.tree.map(ocp.utils.to_shape_dtype_struct, state)


def _one_line(error: BaseException, limit: int = 300) -> str:
  text = " ".join(str(error).split()) or type(error).__name__
  text = f"{type(error).__name__}: {text}"
  return text if len(text) <= limit else text[:limit] + "..."


class Checkpointer:
  """Saves every ``save_every`` steps, keeps the latest ``keep``, restores the latest intact one.

  Use as a context manager, or call :meth:`close` (it waits for an async save to finish).

  Args:
    directory: where step folders go (created if missing; made absolute).
    save_every: :meth:`save` writes only at multiples of this (unless ``force=True``).
    keep: number of latest checkpoints to keep; older ones are deleted after a save.
    config: a JSON-serialisable dict stored with every checkpoint (or None).
    async_save: write in a background thread; :meth:`save` returns once the arrays are copied
      to host memory, so the caller may donate or overwrite the state right away.
  """

  def __init__(
      self,
      directory: str | os.PathLike,
      *,
      save_every: int = 1,
      keep: int = 3,
      config: Mapping[str, Any] | None = None,
      async_save: bool = True,
  ):
    self.directory = os.path.abspath(os.fspath(directory))
    self._config = None if config is None else dict(config)
    self._unusable: set[int] = set()  # steps found damaged: a save of the same step replaces it
    options = ocp.CheckpointManagerOptions(
        # Explicit policies: the default decision policy also saves at the first step seen
        # whenever no checkpoint exists yet (InitialSavePolicy), and `max_to_keep` is
        # deprecated in favour of `preservation_policy`.
        save_decision_policy=ocp.checkpoint_managers.FixedIntervalPolicy(int(save_every)),
        preservation_policy=ocp.checkpoint_managers.LatestN(n=int(keep)),
        cleanup_tmp_directories=True,
        enable_async_checkpointing=async_save,
        create=True,
    )
    self._manager = ocp.CheckpointManager(self.directory, options=options)
    self._pending_step: int | None = None  # the async save in flight, if any

  # -- queries ----------------------------------------------------------------------------------

  def latest_step(self) -> int | None:
    """The latest *complete* checkpoint's step (an async save in flight is not counted)."""
    self.wait()
    self._manager.reload()
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    self.wait()
    self._manager.reload()
    return sorted(self._manager.all_steps())

  # -- save -------------------------------------------------------------------------------------

  def check_writable(self) -> None:
    """Raises :class:`CheckpointError` unless a step folder can be created in the directory."""
    try:
      os.makedirs(self.directory, exist_ok=True)
      os.rmdir(tempfile.mkdtemp(prefix=".write-probe-", dir=self.directory))
    except OSError as e:
      raise CheckpointError(
          f"cannot write checkpoints in {self.directory}: {e.strerror or e}; make the folder "
          f"writable or choose another workdir") from None

  def save(self, step: int, state: Any, *, force: bool = False,
           loop_state: Mapping[str, Any] | None = None) -> bool:
    """Saves ``state`` as ``step`` if due (or ``force``); returns whether a save started.

    A step that already exists is never overwritten (returns False), unless restoring found it
    unusable. ``loop_state`` is a JSON-serialisable dict saved with it (see
    :meth:`restore_latest_intact`).

    Raises:
      CheckpointError: the directory is not writable, or the previous (async) save failed.
    """
    step = int(step)
    self.wait()  # An error of the previous async save surfaces here, as a CheckpointError.
    if step in self._unusable:
      self._manager.reload()
      if step in self._manager.all_steps():
        self._manager.delete(step)
      self._unusable.discard(step)
    if step in self._manager.all_steps():
      return False
    if not force and not self._manager.should_save(step):
      return False
    self.check_writable()
    items = {_STATE: ocp.args.StandardSave(state),
             _CHECKSUMS: ocp.args.JsonSave(checksums_lib.leaf_checksums(state))}
    if loop_state is not None:
      items[_LOOP] = ocp.args.JsonSave(dict(loop_state))
    if self._config is not None:
      items[_CONFIG] = ocp.args.JsonSave(self._config)
    try:
      saved = self._manager.save(step, args=ocp.args.Composite(**items), force=force)
    except Exception as e:  # pylint: disable=broad-except
      raise self._save_error(step, e) from e
    if saved:
      self._pending_step = step
      logging.info("Saving checkpoint at step %d in %s", step, self.directory)
    return bool(saved)

  def _save_error(self, step: int | None, error: BaseException) -> CheckpointError:
    which = "a checkpoint" if step is None else f"checkpoint step {step}"
    return CheckpointError(
        f"{which} could not be written in {self.directory} ({_one_line(error)}); "
        f"make the folder writable (and give it space) or choose another workdir")

  # -- restore ----------------------------------------------------------------------------------

  def restore(self, like: Any, step: int | None = None) -> Any:
    """Restores and verifies ``step`` (default: the latest intact one) into ``like``'s structure.

    ``like`` is a freshly initialised state (or its :func:`abstract_like`): the result has its
    tree structure, static fields (``apply_fn``, ``tx``), dtypes and shardings.

    Raises:
      FileNotFoundError: if there is no complete checkpoint.
      CheckpointError: ``step`` (or, by default, every step) is damaged or of another model.
    """
    if step is None:
      restored = self.restore_latest_intact(like)
      if restored is None:
        raise FileNotFoundError(f"no complete checkpoint in {self.directory}")
      return restored.state
    try:
      return self._restore_step(like, int(step)).state
    except _Unusable as e:
      raise CheckpointError(f"checkpoint step {step} in {self.directory} {e.reason}") from None

  def restore_latest_intact(self, like: Any) -> Restored | None:
    """The newest checkpoint that restores and verifies, or None if there is no checkpoint.

    Each newer step that fails is reported in one warning line (step, what is wrong) and
    replaced when :meth:`save` writes that step again.

    Raises:
      CheckpointError: checkpoints exist but none is usable (every one of another model, or
        damaged), naming the directory and what to do.
    """
    steps = self.all_steps()
    failures: list[tuple[int, _Unusable]] = []
    for step in reversed(steps):
      try:
        restored = self._restore_step(like, step)
      except _Unusable as e:
        failures.append((step, e))
        logging.warning("Checkpoint step %d in %s %s; trying an earlier one", step,
                        self.directory, e.reason)
        continue
      self._unusable.update(s for s, _ in failures)
      logging.info("Restored checkpoint of step %d from %s", step, self.directory)
      return restored
    if not failures:
      return None
    if all(e.different_model for _, e in failures):
      raise CheckpointError(
          f"this workdir holds a run of a different model: {failures[0][1].detail} (in "
          f"{self.directory}); delete it or choose another workdir")
    reasons = "; ".join(f"step {s} {e.reason}" for s, e in failures)
    raise CheckpointError(
        f"no intact checkpoint in {self.directory} ({reasons}); delete it to train from "
        f"scratch, or put back intact step folders")

  def restore_latest_or(self, like: Any) -> tuple[Any, int | None]:
    """``(restored_state, step)`` of the latest intact checkpoint, else ``(like, None)``."""
    restored = self.restore_latest_intact(like)
    if restored is None:
      return like, None
    return restored.state, restored.step

  def _restore_step(self, like: Any, step: int) -> Restored:
    """Restores ``step`` and verifies it; raises :class:`_Unusable` saying what is wrong."""
    step_dir = os.path.join(self.directory, str(step))
    records = self._read_checksums(step, step_dir)
    if records is not None:
      mismatch = checksums_lib.first_spec_mismatch(records, like)
      if mismatch is not None:
        leaf, stored, model = mismatch
        raise _Unusable(_DIFFERENT_MODEL, f"{leaf} stored {stored}, model has {model}")
    self._check_files(step_dir)
    items = {_STATE: ocp.args.StandardRestore(abstract_like(like))}
    if os.path.isdir(os.path.join(step_dir, _LOOP)):
      items[_LOOP] = ocp.args.JsonRestore()
    try:
      restored = self._manager.restore(step, args=ocp.args.Composite(**items))
      state = restored[_STATE]
      jax.block_until_ready(state)
    except Exception as e:  # pylint: disable=broad-except
      raise _classify_restore_error(e) from None
    if records is not None:
      bad = checksums_lib.first_checksum_mismatch(records, state)
      if bad is not None:
        raise _Unusable("damaged", f"{bad} does not match its checksum")
    loop_state = restored[_LOOP] if _LOOP in items else None
    return Restored(state=state, step=step, loop_state=loop_state)

  def _read_checksums(self, step: int, step_dir: str) -> dict[str, Any] | None:
    """The step's checksum records; None for a checkpoint saved before they existed."""
    if not os.path.isdir(os.path.join(step_dir, _CHECKSUMS)):
      if _CHECKSUMS in _saved_items(step_dir):
        raise _Unusable("damaged", f"its {_CHECKSUMS}/ folder is missing")
      if not os.path.isdir(os.path.join(step_dir, _STATE)):
        raise _Unusable("incomplete", f"its {_STATE}/ folder is missing")
      logging.info("Checkpoint step %d in %s has no checksums (saved by an older version); "
                   "restoring it unverified", step, self.directory)
      return None
    try:
      restored = self._manager.restore(
          step, args=ocp.args.Composite(**{_CHECKSUMS: ocp.args.JsonRestore()}))
      return dict(restored[_CHECKSUMS])
    except Exception as e:  # pylint: disable=broad-except
      raise _Unusable("damaged", f"its checksums cannot be read ({_one_line(e)})") from None

  def _check_files(self, step_dir: str) -> None:
    """Names the file a restore would miss, before orbax fails with a less telling error."""
    state_dir = os.path.join(step_dir, _STATE)
    if not os.path.isdir(state_dir):
      raise _Unusable("incomplete", f"its {_STATE}/ folder is missing")
    required = ["_METADATA"]
    if any(name.startswith("ocdbt.process_") for name in os.listdir(state_dir)):
      required.append("manifest.ocdbt")
    for name in required:
      if not os.path.isfile(os.path.join(state_dir, name)):
        raise _Unusable("damaged", f"{_STATE}/{name} is missing")

  def restore_config(self, step: int | None = None) -> dict[str, Any] | None:
    """The config JSON saved with ``step`` (default: latest), or None if none was saved."""
    step = self.latest_step() if step is None else step
    if step is None:
      return None
    path = os.path.join(self.directory, str(step), _CONFIG)
    if not os.path.exists(path):
      return None
    restored = self._manager.restore(
        int(step), args=ocp.args.Composite(**{_CONFIG: ocp.args.JsonRestore()}))
    return restored[_CONFIG]

  # -- lifetime ---------------------------------------------------------------------------------

  def wait(self) -> None:
    """Blocks until an async save in flight is complete (renamed into place).

    Raises:
      CheckpointError: that save failed.
    """
    step, self._pending_step = self._pending_step, None
    try:
      self._manager.wait_until_finished()
    except Exception as e:  # pylint: disable=broad-except
      raise self._save_error(step, e) from e
    if step is not None and not os.path.isdir(os.path.join(self.directory, str(step))):
      # Orbax logs (and swallows) a failed finalisation; the step folder tells the truth.
      raise CheckpointError(
          f"checkpoint step {step} was not written in {self.directory} (see orbax's error "
          f"above); make the folder writable (and give it space) or choose another workdir")

  def close(self) -> None:
    """Waits for pending saves and deletions and releases orbax's threads.

    Raises:
      CheckpointError: the save in flight failed.
    """
    try:
      self.wait()
    finally:
      self._manager.close()

  def __enter__(self) -> "Checkpointer":
    return self

  def __exit__(self, *exc) -> None:
    self.close()


def _saved_items(step_dir: str) -> list[str]:
  """The item names orbax recorded for a step (empty if its metadata cannot be read)."""
  try:
    with open(os.path.join(step_dir, _ORBAX_STEP_METADATA), encoding="utf-8") as f:
      return list(json.load(f).get("item_handlers") or {})
  except (OSError, ValueError, AttributeError):
    return []


def _classify_restore_error(error: BaseException) -> _Unusable:
  """An orbax/tensorstore restore error as a one-line reason."""
  text = " ".join(str(error).split())
  if "Requested shape" in text or "shape mismatch" in text.lower():
    return _Unusable(_DIFFERENT_MODEL, _one_line(error))
  return _Unusable("damaged", _one_line(error))
