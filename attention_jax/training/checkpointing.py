"""Periodic, atomic, resumable checkpoints of a train state with orbax-checkpoint.

Layout under ``directory`` (one folder per saved step)::

  <directory>/<step>/state/...        the train state (ocp.args.StandardSave)
  <directory>/<step>/config/...       the run's config as JSON (ocp.args.JsonSave), if given

Orbax writes a step into ``<step>.orbax-checkpoint-tmp-<n>`` and renames it when complete
(asynchronously by default), so a process killed with SIGKILL at any moment leaves either a
complete step folder or a tmp folder; tmp folders are never listed as steps and are deleted
when the next :class:`Checkpointer` opens the directory.
"""

from __future__ import annotations

import os
from typing import Any, Mapping

import jax
import orbax.checkpoint as ocp
from absl import logging

_STATE = "state"
_CONFIG = "config"


def abstract_like(state: Any) -> Any:
  """``jax.ShapeDtypeStruct`` (with sharding) for every array leaf of ``state``."""
  return jax.tree.map(ocp.utils.to_shape_dtype_struct, state)


class Checkpointer:
  """Saves every ``save_every`` steps, keeps the latest ``keep``, restores the latest.

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

  # -- queries ----------------------------------------------------------------------------------

  def latest_step(self) -> int | None:
    """The latest *complete* checkpoint's step (an async save in flight is not counted)."""
    self._manager.wait_until_finished()
    self._manager.reload()
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    self._manager.wait_until_finished()
    self._manager.reload()
    return sorted(self._manager.all_steps())

  # -- save / restore ---------------------------------------------------------------------------

  def save(self, step: int, state: Any, *, force: bool = False) -> bool:
    """Saves ``state`` as ``step`` if due (or ``force``); returns whether a save started.

    A step that already exists is never overwritten (returns False).
    """
    step = int(step)
    if step in self._manager.all_steps():
      return False
    if not force and not self._manager.should_save(step):
      return False
    items = {_STATE: ocp.args.StandardSave(state)}
    if self._config is not None:
      items[_CONFIG] = ocp.args.JsonSave(self._config)
    saved = self._manager.save(step, args=ocp.args.Composite(**items), force=force)
    if saved:
      logging.info("Saving checkpoint at step %d in %s", step, self.directory)
    return bool(saved)

  def restore(self, like: Any, step: int | None = None) -> Any:
    """Restores ``step`` (default: the latest) into the structure of ``like``.

    ``like`` is a freshly initialised state (or its :func:`abstract_like`): the result has its
    tree structure, static fields (``apply_fn``, ``tx``), dtypes and shardings.

    Raises:
      FileNotFoundError: if there is no complete checkpoint.
    """
    if step is None:
      step = self.latest_step()
      if step is None:
        raise FileNotFoundError(f"no complete checkpoint in {self.directory}")
    restored = self._manager.restore(
        int(step),
        args=ocp.args.Composite(**{_STATE: ocp.args.StandardRestore(abstract_like(like))}))
    logging.info("Restored checkpoint of step %d from %s", step, self.directory)
    return restored[_STATE]

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

  def restore_latest_or(self, like: Any) -> tuple[Any, int | None]:
    """``(restored_state, step)`` if a complete checkpoint exists, else ``(like, None)``."""
    step = self.latest_step()
    if step is None:
      return like, None
    return self.restore(like, step), step

  # -- lifetime ---------------------------------------------------------------------------------

  def wait(self) -> None:
    """Blocks until an async save in flight is complete (renamed into place)."""
    self._manager.wait_until_finished()

  def close(self) -> None:
    """Waits for pending saves and deletions and releases orbax's threads."""
    self._manager.close()

  def __enter__(self) -> "Checkpointer":
    return self

  def __exit__(self, *exc) -> None:
    self.close()
