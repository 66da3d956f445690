"""``python -m experiments.<name>``: the command, presets and expected results are in config.py."""
from attention_jax import training
from . import train
if __name__ == "__main__":
  training.run_experiment_folder(train.run, __file__)
