"""The ``__main__`` of an experiment: its flags, a quiet console, then the run.

``experiments/<name>/__main__.py`` is::

  if __name__ == "__main__":
    training.run_experiment_folder(train.run, __file__)

where ``train.run(config, workdir)`` trains and evaluates; ``--config`` defaults to the folder's
``config.py`` and ``--workdir`` to ``runs/<name>``, so a copied folder runs under its new name.
Flags are defined only when a script runs, so experiment modules can be imported side by side.
"""

from __future__ import annotations

import os
from typing import Any, Callable

from absl import app
from absl import flags
from absl import logging

from attention_jax.training.flags import define_config_flags


def quiet_libraries() -> None:
  """Keeps the console to our progress bar and results: orbax logs every save at INFO and TFDS
  draws progress bars while preparing data. ``--verbosity`` still wins when given."""
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  tfds.disable_progress_bar()


def run_experiment(run: Callable[[Any, str], Any], *, config_file: str, workdir: str) -> None:
  """Parses the command line and calls ``run(config, workdir)``; exits when it returns.

  Defines ``--config`` (default ``config_file``; ``--config.<field>=value`` overrides a field),
  ``--workdir`` (default ``workdir``) and the several-process flags
  (:func:`define_config_flags`) on absl's global ``FLAGS``, then runs under ``absl.app.run``:
  arguments that are not flags are a usage error.
  """
  define_config_flags(config_file)

  def main(argv):
    if len(argv) > 1:
      raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    quiet_libraries()
    run(flags.FLAGS.config, flags.FLAGS.workdir or workdir)

  app.run(main)


def run_experiment_folder(run: Callable[[Any, str], Any], main_file: str) -> None:
  """:func:`run_experiment` for ``experiments/<name>/__main__.py`` (``main_file``): the config is
  the folder's ``config.py``, the default workdir ``runs/<name>``."""
  folder = os.path.dirname(os.path.abspath(main_file))
  run_experiment(run, config_file=os.path.join(folder, "config.py"),
                 workdir=os.path.join("runs", os.path.basename(folder)))
