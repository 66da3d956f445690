"""What every experiment script shares: its command line and the eval.json it writes."""

from __future__ import annotations

import json
import os
from typing import Any, Callable, Mapping

from absl import app
from absl import flags
from absl import logging

from attention_jax import training

CONFIGS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs")


def write_eval_json(workdir: str, results: Mapping[str, Any]) -> str:
  """Writes ``results`` to ``workdir/eval.json`` atomically; returns the path."""
  path = os.path.join(workdir, "eval.json")
  training.config_validation.atomic_write_text(
      path, json.dumps(results, indent=2, default=str) + "\n")
  return path


def quiet_libraries() -> None:
  """Keeps the console to our progress bar and results: orbax logs every save at INFO and TFDS
  draws progress bars while preparing data. ``--verbosity`` still wins when given."""
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  tfds.disable_progress_bar()


def launch(run: Callable[[Any, str], Any], name: str) -> None:
  """The ``__main__`` of an experiment: ``--config`` (default ``configs/<name>.py``) and
  ``--workdir`` (default ``runs/<name>``), then ``run(config, workdir)``.

  Flags are defined here, only when a script runs, so experiments can be imported side by side.
  """
  training.define_config_flags(os.path.join(CONFIGS_DIR, f"{name}.py"))

  def main(argv):
    if len(argv) > 1:
      raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    quiet_libraries()
    run(flags.FLAGS.config, flags.FLAGS.workdir or os.path.join("runs", name))

  app.run(main)
