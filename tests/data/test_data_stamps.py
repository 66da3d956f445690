"""Embedded datasets record what generated them, and refuse to be read under other versions."""

import json
import shutil

import pytest
import tensorflow_datasets as tfds

from attention_jax.data import dates
from attention_jax.data import rebuild
from attention_jax.data import shapes_captions
from attention_jax.data import stamped

# Fingerprints of the `small` configs under requirements/lock.txt (Babel 2.18.0 / CLDR 47,
# NumPy 2.4.6). Another Babel writes other text (Babel 2.19 writes Korean day periods as 오후):
# the README's figures belong to these fingerprints.
DATES_SMALL_FINGERPRINT = "5e112e1e1ce168b69c138df0c92a66549d00b1685b34e2c657fa84e474ad2655"
SHAPES_SMALL_FINGERPRINT = "3fd3583872975fc84b00c9b8439d73636f2c63217a3af6a800e10350a7f3f26a"


@pytest.fixture(scope="module")
def dates_dir(dates_small_data_dir):
  return dates_small_data_dir  # the run's shared preparation (tests/conftest.py); read only here


def _metadata(builder):
  return dict(builder.info.metadata)


def test_dates_stamp_names_babel_cldr_and_numpy(dates_dir):
  import babel
  import numpy as np
  stamp = _metadata(dates.dates_builder(dates_dir, "small"))
  assert stamp["generated_with"] == {"babel": babel.__version__,
                                     "cldr": str(babel.core.get_cldr_version()),
                                     "numpy": np.__version__}


def test_dates_small_fingerprint_is_pinned_and_matches_the_files(dates_dir):
  builder = dates.dates_builder(dates_dir, "small")
  fingerprint = _metadata(builder)["fingerprint"]
  assert fingerprint["all"] == DATES_SMALL_FINGERPRINT
  sources = builder.as_data_source()
  for split, source in sources.items():
    assert stamped.split_fingerprint(source, builder.info.features) == fingerprint[split], split
  assert stamped.combine_splits({k: v for k, v in fingerprint.items() if k != "all"}) == \
      fingerprint["all"]


@pytest.fixture(scope="module")
def shapes_dir(tmp_path_factory):
  """shapes_captions/small, prepared once for this file's tests (copied before a change)."""
  data_dir = tmp_path_factory.mktemp("tfds_shapes")
  shapes_captions.load_shapes_captions(None, data_dir=data_dir, config="small")
  return data_dir


def test_shapes_small_fingerprint_is_pinned_and_matches_the_files(shapes_dir):
  sources = shapes_captions.load_shapes_captions(None, data_dir=shapes_dir, config="small")
  builder = shapes_captions.shapes_captions_builder(shapes_dir, "small")
  fingerprint = _metadata(builder)["fingerprint"]
  assert fingerprint["all"] == SHAPES_SMALL_FINGERPRINT
  assert _metadata(builder)["generated_with"].keys() == {"numpy"}
  for split, source in sources.items():
    assert stamped.split_fingerprint(source, builder.info.features) == fingerprint[split], split


def test_one_changed_example_changes_the_fingerprint():
  features = tfds.features.FeaturesDict({"source": tfds.features.Text(),
                                         "target": tfds.features.Text()})
  examples = [{"source": "24.11.26", "target": "2026-11-24"},
              {"source": "2026년 11월 24일 화요일 PM 3:07", "target": "2026-11-24T15:07"}]
  digests = [stamped.example_digest(e, features) for e in examples]
  changed = dict(examples[1], source="2026년 11월 24일 화요일 오후 3:07")
  assert stamped.combine_digests(digests) == stamped.combine_digests(digests[::-1])
  assert stamped.combine_digests(digests) != stamped.combine_digests(
      [digests[0], stamped.example_digest(changed, features)])
  # str and the bytes read back from the files give one digest.
  as_bytes = {k: v.encode() for k, v in examples[1].items()}
  assert stamped.example_digest(as_bytes, features) == digests[1]


def test_a_dataset_stamped_with_another_babel_is_refused_then_rebuilt(dates_dir, tmp_path):
  data_dir = tmp_path / "tfds"
  shutil.copytree(dates_dir, data_dir)
  builder = dates.dates_builder(data_dir, "small")
  metadata_path = builder.data_path / "metadata.json"
  metadata = json.loads(metadata_path.read_text())
  ours, fingerprint = metadata["generated_with"]["babel"], metadata["fingerprint"]["all"]
  metadata["generated_with"].update(babel="2.7.0", cldr="35")  # as made by an older Babel
  metadata_path.write_text(json.dumps(metadata))

  for load in (lambda: dates.load_dates("test", data_dir=data_dir, config="small"),
               lambda: tfds.data_source("dates_translation/small", split="test",
                                        data_dir=data_dir)):
    with pytest.raises(stamped.DatasetStampError) as error:
      load()
    message = str(error.value)
    assert "\n" not in message
    assert "babel 2.7.0" in message and f"babel {ours}" in message
    assert "cldr 35" in message
    assert f"python -m attention_jax.data.rebuild dates_translation/small/{builder.version}" in \
        message

  rebuilt = rebuild.rebuild("dates_translation/small", data_dir=str(data_dir))
  assert _metadata(rebuilt)["generated_with"]["babel"] == ours
  assert _metadata(rebuilt)["fingerprint"]["all"] == fingerprint
  assert len(dates.load_dates("test", data_dir=data_dir, config="small")) == 500


def test_a_dataset_without_a_stamp_is_refused(shapes_dir, tmp_path):
  shutil.copytree(shapes_dir, tmp_path, dirs_exist_ok=True)
  builder = shapes_captions.shapes_captions_builder(tmp_path, "small")
  (builder.data_path / "metadata.json").unlink()
  with pytest.raises(stamped.DatasetStampError, match="no recorded versions"):
    shapes_captions.load_shapes_captions("test", data_dir=tmp_path, config="small")
