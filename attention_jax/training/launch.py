"""The ``__main__`` of an experiment: its flags, the checks of what the user gave, then the run.

``experiments/<name>/__main__.py`` is::

  if __name__ == "__main__":
    training.run_experiment_folder(train.run, __file__)

where ``train.run(config, workdir)`` trains and evaluates; ``--config`` defaults to the folder's
``config.py`` and ``--workdir`` to ``runs/<name>``, so a copied folder runs under its new name.
Flags are defined only when a script runs, so experiment modules can be imported side by side.

A user's mistake stops the script with one line on stderr (``error: <what and the fix>``) and
exit status 2, before any data is prepared or any folder created: an unknown or badly typed
flag or config field (``--config.learning_rte``: the closest field names are suggested), a
config that its folder's ``validate(config)`` refuses (values, the mesh against the devices, the
batch against the mesh, data lengths), an empty or unusable ``--workdir``. A
:class:`~attention_jax.errors.UserError` raised while running (a damaged prepared file, an
unusable checkpoint folder, a diverged run) is one line too, with exit status 1. Any other
exception is a bug and keeps its traceback. ``--traceback`` or ``ATTENTION_JAX_TRACEBACK=1``
shows the traceback of the one-line errors as well.
"""

from __future__ import annotations

import difflib
import importlib
import importlib.util
import os
import sys
from typing import Any, Callable, Sequence

from absl import app
from absl import flags
from absl import logging

from attention_jax.errors import ConfigError, UserError
from attention_jax.training import host_memory
from attention_jax.training.flags import define_config_flags

USAGE_EXIT = 2  # a usage error, as argparse and the shells use it
FAILURE_EXIT = 1
TRACEBACK_ENV = "ATTENTION_JAX_TRACEBACK"


def quiet_libraries() -> None:
  """Keeps the console to our progress bar and results: orbax logs every save at INFO and TFDS
  draws progress bars while preparing data. ``--verbosity`` still wins when given."""
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  tfds.disable_progress_bar()


def wants_traceback(argv: Sequence[str] | None = None) -> bool:
  """Whether the user asked for full tracebacks (``--traceback`` or ``$ATTENTION_JAX_TRACEBACK``);
  read from ``argv`` because a flag parsing error comes before the flag has a value."""
  argv = sys.argv if argv is None else argv
  if os.environ.get(TRACEBACK_ENV, "").strip().lower() not in ("", "0", "false", "no"):
    return True
  return any(a in ("--traceback", "--traceback=true", "--traceback=1") for a in argv)


def exit_with(message: str, status: int = USAGE_EXIT) -> None:
  """Prints ``error: <message>`` as one line on stderr and exits with ``status``."""
  line = " ".join(str(message).split())  # one line, whatever the message held
  print(f"error: {line}", file=sys.stderr, flush=True)
  sys.exit(status)


def _config_path(argv: Sequence[str], default: str | None) -> str | None:
  """The ``--config`` value in ``argv`` (the last one, as absl takes it) or ``default``."""
  path = default
  for i, arg in enumerate(argv):
    if arg.startswith("--config="):
      path = arg.split("=", 1)[1]
    elif arg == "--config" and i + 1 < len(argv):
      path = argv[i + 1]
  return path


def _overrides(argv: Sequence[str]) -> list[str]:
  """The field paths of the ``--config.<path>[=value]`` arguments, in order."""
  paths = []
  for arg in argv:
    if arg.startswith("--config."):
      paths.append(arg[len("--config."):].split("=", 1)[0])
  return paths


def unknown_field_message(config, path: str) -> str | None:
  """``config.<path> is not a field ...; did you mean ...`` for the first part of ``path`` that
  ``config`` lacks, or None when every part exists."""
  node, walked = config, []
  for part in path.split("."):
    keys = list(node.keys()) if hasattr(node, "keys") else []
    if part not in keys:
      where = "config." + ".".join(walked) if walked else "the config"
      name = "config." + ".".join(walked + [part])
      close = difflib.get_close_matches(part, keys, n=3, cutoff=0.6)
      if close:
        fix = "did you mean " + " or ".join(
            "config." + ".".join(walked + [c]) for c in close) + "?"
      else:
        fix = "its fields are " + ", ".join(sorted(str(k) for k in keys))
      return f"{name} is not a field of {where}; {fix}"
    node = node[part]
    walked.append(part)
  return None


def _unknown_field(argv: Sequence[str], default_config: str | None) -> str | None:
  """The message naming the first ``--config.<path>`` override that the config lacks."""
  from ml_collections.config_flags import config_flags  # pylint: disable=g-import-not-at-top
  try:
    config = config_flags.ConfigFileFlagParser("config").parse(_config_path(argv, default_config))
  except Exception:  # pylint: disable=broad-except
    return None  # the config itself fails to load: reported as such
  for path in _overrides(argv):
    message = unknown_field_message(config, path)
    if message:
      return message
  return None


def _flag_error_message(error: Exception) -> str:
  """absl's message of a flag error, cut to its last line for a config file that failed to load
  (ml_collections puts the traceback of ``get_config`` in the message)."""
  text = str(error)
  if "Error whilst parsing config file" in text:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    head = text.split(":", 1)[0]  # "flag --config=<path>"
    return f"{head}: {lines[-1]}"
  return text


def make_flags_parser(default_config: str | None) -> Callable[[list[str]], list[str]]:
  """absl's ``flags_parser`` for :func:`app.run`: parses the flags, and turns a bad flag, a
  config file that fails to load or an unknown ``--config.<field>`` into :func:`exit_with`."""

  def parse(argv: list[str]) -> list[str]:
    try:
      return flags.FLAGS(argv)
    except flags.Error as e:
      if wants_traceback(argv):
        raise
      exit_with(_unknown_field(argv, default_config) or _flag_error_message(e))
    except (AttributeError, KeyError, TypeError, ValueError) as e:
      # ml_collections applies --config.<field> overrides while parsing and raises a bare
      # AttributeError/KeyError for a field the config lacks.
      if wants_traceback(argv):
        raise
      exit_with(_unknown_field(argv, default_config) or f"{type(e).__name__}: {e}")
    return []  # not reached

  return parse


def check_workdir(workdir: str | None) -> str:
  """Returns ``workdir`` if a run can write there; raises ``ConfigError`` naming the problem
  (empty, a file, a parent that is a file or not writable), before anything is created."""
  if workdir is None or not str(workdir).strip():
    raise ConfigError("--workdir is empty; give the run's folder (--workdir=runs/<name>) or "
                      "leave the flag out for the default")
  path = os.path.abspath(workdir)
  if os.path.exists(path) and not os.path.isdir(path):
    raise ConfigError(f"--workdir={workdir} is a file, not a folder; give a folder")
  existing = path
  while not os.path.exists(existing):
    existing = os.path.dirname(existing)
  if not os.path.isdir(existing):
    raise ConfigError(f"--workdir={workdir} cannot be created: {existing} is a file")
  if not os.access(existing, os.W_OK | os.X_OK):
    raise ConfigError(f"--workdir={workdir} is not writable: {existing} does not allow writing "
                      f"(choose another folder or fix its permissions)")
  return workdir


def run_experiment(run: Callable[[Any, str], Any], *, config_file: str, workdir: str,
                   validate: Callable[[Any], None] | None = None) -> None:
  """Parses the command line, checks it and calls ``run(config, workdir)``; exits when it returns.

  Defines ``--config`` (default ``config_file``; ``--config.<field>=value`` overrides a field),
  ``--workdir`` (default ``workdir``), ``--traceback`` and the several-process flags
  (:func:`define_config_flags`) on absl's global ``FLAGS``, then runs under ``absl.app.run``:
  arguments that are not flags are a usage error. ``validate(config)`` (raising ``ValueError``
  or ``TypeError`` naming a field) runs before ``run``; its error and the others of the user
  are one line (the module doc).
  """
  define_config_flags(config_file)
  flags.DEFINE_bool("traceback", False, "Show the full traceback of the one-line errors "
                    f"(bad flags, config fields, paths, prepared data); also ${TRACEBACK_ENV}=1.")

  def main(argv):
    traceback = wants_traceback(argv) or flags.FLAGS.traceback
    try:
      if len(argv) > 1:
        raise ConfigError(f"unexpected arguments: {argv[1:]}; flags take the form --name=value")
      run_workdir = workdir if flags.FLAGS.workdir is None else flags.FLAGS.workdir
      check_workdir(run_workdir)
      # Before validate, whose mesh check starts JAX's backend and its worker threads: a thread
      # keeps the malloc heap it first allocated from.
      host_memory.keep_freed_memory(
          single_arena=flags.FLAGS.config.get("single_malloc_arena", False) is True)
      if validate is not None:
        validate(flags.FLAGS.config)
    except (ValueError, TypeError) as e:
      if traceback:
        raise
      exit_with(str(e))
    quiet_libraries()
    try:
      run(flags.FLAGS.config, run_workdir)
    except UserError as e:
      if traceback:
        raise
      exit_with(str(e), FAILURE_EXIT)

  app.run(main, flags_parser=make_flags_parser(config_file))


def _folder_validate(run: Callable[..., Any], folder: str) -> Callable[[Any], None] | None:
  """The ``validate`` of the experiment folder's ``config.py``: the module of ``run``'s package
  when that is the folder's (the file is imported once), else the file loaded by its path."""
  config_file = os.path.join(folder, "config.py")
  if not os.path.exists(config_file):
    return None
  package = getattr(run, "__module__", "").rpartition(".")[0]
  module = None
  if package:
    try:
      candidate = importlib.import_module(package + ".config")
      if os.path.abspath(getattr(candidate, "__file__", "")) == os.path.abspath(config_file):
        module = candidate
    except ImportError:
      module = None
  if module is None:
    spec = importlib.util.spec_from_file_location(
        f"_{os.path.basename(folder)}_config", config_file)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
  return getattr(module, "validate", None)


def run_experiment_folder(run: Callable[[Any, str], Any], main_file: str) -> None:
  """:func:`run_experiment` for ``experiments/<name>/__main__.py`` (``main_file``): the config is
  the folder's ``config.py`` (whose ``validate(config)`` checks it before the run), the default
  workdir ``runs/<name>``."""
  folder = os.path.dirname(os.path.abspath(main_file))
  run_experiment(run, config_file=os.path.join(folder, "config.py"),
                 workdir=os.path.join("runs", os.path.basename(folder)),
                 validate=_folder_validate(run, folder))
