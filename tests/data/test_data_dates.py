"""The dates translation dataset: determinism, valid targets, disjoint splits, held-out lengths."""

import datetime as dt
import re

import numpy as np
import pytest
import tensorflow_datasets as tfds

from attention_jax.data import date_readings
from attention_jax.data import dates

SPLITS = ("train", "validation", "test", "test_long")
SMALL_SIZES = {"train": 5000, "validation": 500, "test": 500, "test_long": 500}
TARGET_FORMS = {
    "date": re.compile(r"^\d{4}-\d{2}-\d{2}$"),
    "datetime_minutes": re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}$"),
    "datetime_seconds": re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}$"),
    "time_minutes": re.compile(r"^\d{2}:\d{2}$"),
    "time_seconds": re.compile(r"^\d{2}:\d{2}:\d{2}$"),
}


def _read_all(sources):
  return {
      split: [dates.decode_example(r) for r in src.__getitems__(list(range(len(src))))]
      for split, src in sources.items()
  }


@pytest.fixture(scope="module")
def small(dates_small_data_dir):
  # The run's shared preparation (tests/conftest.py); test_two_builds_are_identical builds again.
  return _read_all(dates.load_dates(None, data_dir=dates_small_data_dir, config="small"))


def _parse_target(target: str) -> dt.datetime:
  """The target as a datetime; parts it does not carry get arbitrary fixed values."""
  if "T" in target or len(target) == 10:
    return dt.datetime.fromisoformat(target)
  return dt.datetime.combine(dt.date(2001, 2, 3), dt.time.fromisoformat(target))


def test_sizes_and_features(small):
  assert {k: len(v) for k, v in small.items()} == SMALL_SIZES
  for split in SPLITS:
    assert set(small[split][0]) == {"source", "target", "locale", "style"}


def test_two_builds_are_identical(small, tmp_path):
  again = _read_all(dates.load_dates(None, data_dir=tmp_path, config="small"))
  assert again == small
  # Also by name through tfds, with no TensorFlow installed.
  source = tfds.data_source("dates_translation/small", data_dir=tmp_path)
  assert dates.decode_example(source["test"][7]) == small["test"][7]


def test_targets_are_iso_and_carry_exactly_the_source_information(small):
  rng = np.random.default_rng(0)
  for split in SPLITS:
    examples = small[split]
    for example in examples:
      spec = dates.spec_for(example["locale"], example["style"])
      assert TARGET_FORMS[spec.granularity].match(example["target"]), example
      value = _parse_target(example["target"])
      if spec.granularity.startswith("date"):
        assert dates.FIRST_DATE <= value.date() <= dates.LAST_DATE
    # Re-render the target with the example's own format: the source is a function of the
    # target (nothing in the source that the target lacks).
    for i in rng.choice(len(examples), size=200, replace=False):
      example = examples[i]
      spec = dates.spec_for(example["locale"], example["style"])
      assert dates.render(_parse_target(example["target"]), spec) == example["source"]


def test_source_determines_target(small):
  # Over the whole dataset, one source text never has two different targets.
  target_of = {}
  for examples in small.values():
    for example in examples:
      assert target_of.setdefault(example["source"], example["target"]) == example["target"]


def test_spot_check_with_strptime():
  rng = np.random.default_rng(1)
  cases = [
      ("en", "date:long", "%B %d, %Y"),
      ("en", "date:medium", "%b %d, %Y"),
      ("en", "datetime:medium+medium", "%b %d, %Y, %I:%M:%S %p"),
      ("en", "datetime:full+short", "%A, %B %d, %Y, %I:%M %p"),
      ("de", "date:medium", "%d.%m.%Y"),
      ("de", "datetime:medium+short", "%d.%m.%Y, %H:%M"),
      ("fr", "skeleton:yMd+Hms", "%d/%m/%Y, %H:%M:%S"),
      ("fr", "datetime:short+medium", "%d/%m/%Y %H:%M:%S"),
      ("ja", "date:medium", "%Y/%m/%d"),
  ]
  for locale, style, fmt in cases:
    spec = dates.spec_for(locale, style)
    for _ in range(25):
      value, _ = dates.sample(rng)
      example = dates.make_example(value, spec)
      parsed = dt.datetime.strptime(example["source"], fmt)
      assert parsed.isoformat()[: len(example["target"])] == example["target"], example


def test_known_examples():
  value = dt.datetime(2026, 11, 24, 15, 7, 9)
  expected = {
      ("de", "date:short"): ("24.11.26", "2026-11-24"),
      ("en", "datetime:full+medium"): (
          "Tuesday, November 24, 2026, 3:07:09 PM",
          "2026-11-24T15:07:09",
      ),
      ("ko", "datetime:full+short"): ("2026년 11월 24일 화요일 PM 3:07", "2026-11-24T15:07"),
      ("fa", "datetime:long+short@arabext"): ("۲۴ نوامبر ۲۰۲۶، ساعت ۱۵:۰۷", "2026-11-24T15:07"),
      ("zh_Hant", "time:short"): ("下午3:07", "15:07"),
  }
  for (locale, style), (source, target) in expected.items():
    example = dates.make_example(value, dates.spec_for(locale, style))
    assert (example["source"], example["target"]) == (source, target)


def test_two_digit_years_are_unambiguous():
  spec = dates.spec_for("de", "date:short")  # dd.MM.yy
  for year in (1950, 1999, 2000, 2049):
    example = dates.make_example(dt.datetime(year, 1, 2), spec)
    yy = int(example["source"][-2:])
    assert (1900 if yy >= dates.TWO_DIGIT_YEAR_PIVOT else 2000) + yy == year


def test_no_zone_or_unsupported_fields():
  allowed = set("GyMLdEcabBhHkKms")
  for spec in dates.all_specs():
    letters = {c for c, _ in dates._fields(spec.pattern)}
    assert letters <= allowed, spec
    assert spec.granularity in TARGET_FORMS


def test_splits_are_disjoint(small):
  keys = {split: {(e["target"], e["locale"], e["style"]) for e in small[split]} for split in SPLITS}
  texts = {split: {(e["source"], e["target"]) for e in small[split]} for split in SPLITS}
  for a, b in [("train", "test"), ("train", "validation"), ("validation", "test")]:
    assert not keys[a] & keys[b], (a, b)
    assert not texts[a] & texts[b], (a, b)
  for split, buckets in [
      ("train", range(90)),
      ("validation", range(90, 95)),
      ("test", range(95, 100)),
  ]:
    assert all(dates.split_bucket(s, t) in buckets for s, t in texts[split])
  for split in SPLITS:  # no duplicates within a split
    assert len({e["source"] for e in small[split]}) == len(small[split])


def test_test_long_is_held_out(small):
  limit = dates.MAX_SOURCE_LEN
  regular = ("train", "validation", "test")
  longest_regular = max(len(e["source"]) for s in regular for e in small[s])
  shortest_long = min(len(e["source"]) for e in small["test_long"])
  assert longest_regular <= limit < shortest_long
  # What the seq2seq batches are padded to (tasks.dates_translation.train_input_len) relies on it.
  assert dates.source_length_bound("small") == dates.source_length_bound("default") == limit
  with pytest.raises(ValueError, match="config must be one of"):
    dates.source_length_bound("huge")


def test_lengths_vary_at_least_4x(small):
  train = np.array([len(e["source"]) for e in small["train"]])
  everything = np.array([len(e["source"]) for ex in small.values() for e in ex])
  assert everything.max() / everything.min() >= 4
  assert train.max() / train.min() >= 4
  # Not only a few outliers: the 95th percentile is 4x the 5th.
  assert np.percentile(train, 95) / np.percentile(train, 5) >= 4


def test_variety(small):
  train = small["train"]
  assert len({e["locale"] for e in train}) == len(dates.LOCALES) >= 30
  kinds = {e["style"].split(":")[0] for e in train}
  assert kinds == {"date", "datetime", "time", "skeleton"}
  assert len({e["style"] for e in train}) > 100
  assert any("@" in e["style"] for e in train)  # native digits
  scripts = {e["locale"] for e in train} & {"ar", "he", "fa", "hi", "bn", "th", "ja", "ko", "ru"}
  assert len(scripts) == 9


def test_generation_is_seeded_per_split():
  a = list(dates.generate_split("validation", 20, max_source_len=35, seed=1))
  b = list(dates.generate_split("validation", 20, max_source_len=35, seed=1))
  c = list(dates.generate_split("validation", 20, max_source_len=35, seed=2))
  assert a == b and a != c
  with pytest.raises(ValueError, match="unknown split"):
    next(dates.generate_split("dev", 1, max_source_len=35, seed=1))


def test_numeric_reader_finds_every_reading():
  reader = dates.numeric_reader()
  assert reader.readings("8/5/2029") == {"2029-08-05", "2029-05-08"}
  assert reader.readings("05.03.23") == {"2023-03-05", "05:03:23"}
  assert reader.readings("۲۴/۱۱/۲۰۲۶") == {"2026-11-24"}  # native digits read as Latin ones
  assert reader.readings("3:07 PM") == {"15:07"}
  assert reader.readings("Tuesday, November 24, 2026") == set()  # names: no numeric format


def test_every_numeric_format_reads_its_own_examples():
  rng = np.random.default_rng(3)
  reader = dates.numeric_reader()
  for _ in range(300):
    example = dates.make_example(*dates.sample(rng))
    spec = dates.spec_for(example["locale"], example["style"])
    if date_readings.numeric_regex(spec.pattern, dates._locale(spec.locale)) is not None:
      assert example["target"] in reader.readings(example["source"]), example


def test_generated_sources_are_unambiguous():
  examples = list(dates.generate_split("test", 300, max_source_len=35, seed=0))
  assert not any(dates.is_ambiguous(e) for e in examples)
  assert dates.is_ambiguous({"source": "12/8/61", "target": "1961-12-08"})
