"""Rebuilds a prepared embedded dataset from scratch, e.g. after a library version changed.

    python -m attention_jax.data.rebuild dates_translation/small [--data_dir=DIR]

Deletes the prepared files of that config and version (under ``--data_dir``, else
``$TFDS_DATA_DIR``, else ``~/tensorflow_datasets``), generates them again with the running
environment and prints the new stamp and fingerprint.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil

import tensorflow_datasets as tfds



def rebuild(name: str, data_dir: str | None = None) -> tfds.core.DatasetBuilder:
  """Regenerates dataset ``name`` ("dates_translation/small") and returns its builder."""
  data_dir = data_dir or os.environ.get("TFDS_DATA_DIR")
  stale = tfds.builder(name, data_dir=data_dir, file_format="array_record")
  if stale.data_path.exists():
    shutil.rmtree(stale.data_path)
  # A builder made after the deletion generates instead of reading the stale metadata.
  builder = tfds.builder(name, data_dir=data_dir, file_format="array_record")
  builder.download_and_prepare(file_format="array_record")
  return builder


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("name", help="dataset/config, e.g. dates_translation/small")
  parser.add_argument("--data_dir", default=None, help="TFDS data dir")
  args = parser.parse_args(argv)
  builder = rebuild(args.name, args.data_dir)
  print(f"rebuilt {builder.info.full_name} in {builder.data_dir}")
  print(json.dumps(dict(builder.info.metadata), indent=1, sort_keys=True))


if __name__ == "__main__":
  main()
