"""``python -m experiments.<name> [--config=experiments/<name>/config.py[:preset]] [--workdir=...]``

The workdir defaults to ``runs/<name>``; the folder's name is the experiment's, so a copy of the
folder runs as a new experiment without edits.
"""

import os

from attention_jax import training

from . import train

if __name__ == "__main__":
  training.run_experiment(
      train.run, config_file=os.path.join(os.path.dirname(os.path.abspath(__file__)), "config.py"),
      workdir=os.path.join("runs", __package__.rpartition(".")[2]))
