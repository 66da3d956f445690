"""Dates translation: dates and times written out in many languages, paired with ISO 8601.

An embedded TFDS dataset for sequence-to-sequence models with attention, in the spirit of the
classic "human-readable date to machine date" exercise, but multilingual and generated from real
locale data: the CLDR date/time patterns, month and weekday names, day periods and date-time glue
that ship with Babel (no download, no TensorFlow). Examples (all for 2026-11-24 15:07:09)::

    2026년 11월 24일 화요일 PM 3:07            ko  datetime:full+short          2026-11-24T15:07
    Tuesday, November 24, 2026, 3:07:09 PM    en  datetime:full+medium         2026-11-24T15:07:09
    24.11.26                                  de  date:short                   2026-11-24
    ۲۴ نوامبر ۲۰۲۶، ساعت ۱۵:۰۷                 fa  datetime:long+short@arabext  2026-11-24T15:07
    下午3:07                                   zh_Hant  time:short             15:07

Generation
----------
* Values: a date drawn uniformly from 1950-01-01 .. 2049-12-31 and a time of day uniformly to the
  second. The 100-year window makes two-digit years unambiguous: ``yy >= 50`` means 19yy,
  ``yy < 50`` means 20yy.
* Locales: ``LOCALES``, 37 of them in Latin, Cyrillic, Greek, Georgian, Armenian, Arabic, Hebrew,
  Devanagari, Bengali, Thai, CJK and Hangul scripts. Locales whose CLDR default numbering system
  is not Latin (ar_EG, fa, mr, ne, bn) also write every format in their native digits (style
  suffix ``@arab``, ``@arabext``, ``@deva``, ``@beng``), as ICU does by default; Babel itself
  always writes Latin digits.
* Styles (the ``style`` feature): ``date:{full,long,medium,short}``,
  ``time:{medium,short,full,long}``, ``datetime:<date style>+<time style>`` (joined with the
  locale's own CLDR date-time glue for the date style) and
  ``skeleton:<date skeleton>[+<time skeleton>]`` from CLDR's flexible formats (``yMd``, ``yMEd``,
  ``yMMMd``, ``yMMMEd``, ``GyMd``, ``GyMMMd``, ``GyMMMEd`` x ``Hm``, ``Hms``, ``hm``, ``hms``,
  ``Bhm``, ``Bhms``). Time zones are removed from the full/long time patterns (the values are
  zone-less); a pattern identical to an earlier style of the same locale is kept once (under the
  earlier name), so a (locale, style) pair always means a distinct pattern. 2,620 (locale, style)
  formats in all, 331 distinct style names.
* Every pattern is checked before use: it may contain only era, year, month, day, weekday, day
  period, hour, minute and second fields; a date needs year, month and day (month-year formats
  are dropped); hours need minutes; 12-hour clocks need a day period; and the rendered text must
  tell apart years, all 12 months, days, all 24 hours (including flexible day periods such as
  "in the afternoon" / 下午) and minutes/seconds. Failing patterns are dropped, so the target is
  always recoverable from the source.
* Across locales a source is kept only if no locale's all-numeric format reads it as another
  target (``date_readings``): ``8/5/2029`` (August 5 in ``en``, 8 May in ``es``) or ``05.03.23``
  (a time in ``id``, a date in ``de``) cannot be translated without the locale, so such sources
  (about 2.6% of the draws) are drawn again. Every source thus has exactly one right target.
* Target = exactly the information in the source: ``YYYY-MM-DD`` for a date,
  ``YYYY-MM-DDTHH:MM`` / ``YYYY-MM-DDTHH:MM:SS`` for a date and time (to minutes / seconds),
  ``HH:MM`` / ``HH:MM:SS`` for a time alone. Weekdays and eras are redundant and not in the target.
* Text normalisation: runs of spaces of any kind (no-break, narrow no-break) become one plain
  space and invisible bidirectional marks (LRM, RLM, ALM) are removed; nothing else changes.
* Sampling: locale uniform, then kind (date 30 %, datetime 35 %, time 10 %, skeleton 25 %), then a
  style uniform among the locale's valid styles of that kind. Each split has its own NumPy
  ``Generator`` seeded with ``(config.seed, split index)``: generation is deterministic and the
  same on every machine (for a given Babel/CLDR version).
* Splits: an example's bucket is ``blake2b(source, target) mod 100``: buckets 0-89 may go to
  ``train``, 90-94 to ``validation``, 95-99 to ``test``, so the three are disjoint in
  (source, target) and hence in (date, locale, style). Sources longer than
  ``config.max_source_len`` (``MAX_SOURCE_LEN`` = 35 characters, the longest ~4 % of the
  distribution) are held out: they appear only in ``test_long``, for length generalisation.
  Duplicates within a split are skipped. All four splits come from the same distribution
  (test_long: conditioned on the length).

Sizes and lengths (measured; lengths in characters of ``source``)
-----------------------------------------------------------------
===========  ======  ==========  =====  =========  ==========================================
config       train   validation  test   test_long  preparation (2 shared CPU cores)
===========  ======  ==========  =====  =========  ==========================================
``default``  50,000  2,000       2,000  2,000      ~10 s, 11 MB on disk
``small``    5,000   500         500    500        ~3 s (used by the tests)
===========  ======  ==========  =====  =========  ==========================================

``default``: train sources 4-35 characters (mean 18.9, median 19, 5th/95th percentiles 7/32),
validation and test alike; test_long 36-65 (mean 39.0, median 38, 95th percentile 45); targets
5-19 characters. Longest/shortest source over the dataset: 16x. The train split has 515 distinct
characters (sources and targets), so a ``CharTokenizer`` built from it has ``vocab_size`` 519.

Use
---
``load_dates("train")`` prepares the dataset on first use into the TFDS data dir (``data_dir``
argument, else ``$TFDS_DATA_DIR``, else ``~/tensorflow_datasets``) as array_record files and
returns a random-access ``tfds`` data source whose records are
``{"source": bytes, "target": bytes, "locale": bytes, "style": bytes}`` (UTF-8;
``decode_example`` turns one into ``str``). After ``import attention_jax.data``,
``tfds.data_source("dates_translation/small")`` works too. ``spec_for(locale, style)`` and
``render(value, spec)`` reproduce any source from its target.

The prepared data records the Babel, CLDR and NumPy versions that generated it and a fingerprint of
its examples (``attention_jax.data.stamped``); reading it under other versions raises
``DatasetStampError`` with the command that rebuilds it. Under ``requirements/lock.txt`` (Babel
2.18.0, CLDR 47) the ``small`` config's fingerprint is pinned by a test.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import functools
import hashlib
import os
import unicodedata
from typing import Iterator, Mapping

import babel
import babel.core
import numpy as np
import tensorflow_datasets as tfds
from babel import Locale
from babel import dates as babel_dates
from etils import epath

from attention_jax.data import date_readings
from attention_jax.data import stamped

# --------------------------------------------------------------------------------------------
# Locales, styles and their validation.
# --------------------------------------------------------------------------------------------

LOCALES: tuple[str, ...] = (
    "en",
    "en_GB",
    "de",
    "fr",
    "es",
    "it",
    "pt",
    "nl",
    "sv",
    "da",
    "fi",
    "pl",
    "cs",
    "hu",
    "ro",
    "tr",
    "id",
    "vi",
    "ru",
    "uk",
    "bg",
    "el",
    "ka",
    "hy",
    "ar",
    "ar_EG",
    "he",
    "fa",
    "hi",
    "mr",
    "ne",
    "bn",
    "th",
    "ja",
    "ko",
    "zh",
    "zh_Hant",
)

#: Date range: 100 years, so that a two-digit year is unambiguous (>= 50: 19yy, < 50: 20yy).
FIRST_DATE = _dt.date(1950, 1, 1)
LAST_DATE = _dt.date(2049, 12, 31)
TWO_DIGIT_YEAR_PIVOT = 50

#: Kinds of formats and how often each is drawn.
KIND_WEIGHTS: Mapping[str, float] = {"date": 0.30, "datetime": 0.35, "time": 0.10, "skeleton": 0.25}

_STYLES = ("full", "long", "medium", "short")
# (Month-year skeletons such as yMMMM have no day: the validation would drop them.)
_DATE_SKELETONS = ("yMd", "yMEd", "yMMMd", "yMMMEd", "GyMd", "GyMMMd", "GyMMMEd")
_TIME_SKELETONS = ("Hm", "Hms", "hm", "hms", "Bhm", "Bhms")

#: Zero digit of the CLDR numbering systems used by LOCALES (checked with unicodedata).
_NATIVE_ZERO = {
    "arab": "\u0660",
    "arabext": "\u06f0",
    "beng": "\u09e6",
    "deva": "\u0966",
    "mymr": "\u1040",
    "thai": "\u0e50",
    "tamldec": "\u0be6",
}

# Pattern fields a source may contain: era, year, month, day, weekday, day periods, hours, minutes,
# seconds. Anything else (week numbers, quarters, zones, fractions of seconds ...) drops a pattern.
_ALLOWED_FIELDS = set("GyMLdEcabBhHkKms")
_DATE_FIELDS = set("GyMLdEc")
_ZONE_FIELDS = set("zZvVOXx")
_INVISIBLE = {"\u200e", "\u200f", "\u061c"}

#: The information a source carries, hence the shape of its target.
GRANULARITIES = ("date", "datetime_minutes", "datetime_seconds", "time_minutes", "time_seconds")


@dataclasses.dataclass(frozen=True)
class FormatSpec:
  """One validated way of writing a value: locale, style name, CLDR pattern, digits."""

  locale: str
  style: str
  pattern: str
  granularity: str
  digits: str = "latn"  # a CLDR numbering system


def normalize_text(text: str) -> str:
  """Plain single spaces for any run of (no-break, narrow ...) spaces; no bidi marks; stripped."""
  return " ".join("".join(c for c in text if c not in _INVISIBLE).split())


def _transliterate_digits(text: str, numbering_system: str) -> str:
  if numbering_system == "latn":
    return text
  zero = ord(_NATIVE_ZERO[numbering_system])
  return "".join(chr(zero + ord(c) - 48) if "0" <= c <= "9" else c for c in text)


def iso_target(value: _dt.datetime, granularity: str) -> str:
  """The ISO 8601 string holding exactly the information of ``granularity``."""
  if granularity == "date":
    return value.strftime("%Y-%m-%d")
  if granularity == "datetime_minutes":
    return value.strftime("%Y-%m-%dT%H:%M")
  if granularity == "datetime_seconds":
    return value.strftime("%Y-%m-%dT%H:%M:%S")
  if granularity == "time_minutes":
    return value.strftime("%H:%M")
  if granularity == "time_seconds":
    return value.strftime("%H:%M:%S")
  raise ValueError(f"unknown granularity {granularity!r}; expected one of {GRANULARITIES}")


def render(value: _dt.datetime, spec: FormatSpec) -> str:
  """The source text of ``value`` written as ``spec`` says (normalised)."""
  text = babel_dates.parse_pattern(spec.pattern).apply(value, _locale(spec.locale))
  return _transliterate_digits(normalize_text(text), spec.digits)


@functools.lru_cache(maxsize=None)
def _locale(name: str) -> Locale:
  return Locale.parse(name)


def _fields(pattern: str) -> list[tuple[str, int]]:
  return [v for t, v in babel_dates.tokenize_pattern(pattern) if t == "field"]


def _strip_zone(pattern: str) -> str:
  """Removes time-zone fields and the spaces/brackets around them from a CLDR pattern."""
  tokens = babel_dates.tokenize_pattern(pattern)
  if not any(t == "field" and v[0] in _ZONE_FIELDS for t, v in tokens):
    return pattern
  out: list[list] = []
  for kind, value in tokens:
    if kind == "field" and value[0] in _ZONE_FIELDS:
      if out and out[-1][0] == "chars":
        out[-1][1] = out[-1][1].rstrip(" \u00a0\u202f([{,\u060c")
      out.append(["gap", None])
    elif kind == "chars" and out and out[-1][0] == "gap":
      out.append(["chars", value.lstrip(" \u00a0\u202f)]}")])
    else:
      out.append([kind, value])
  out = [tok for tok in out if tok[0] == "field" or (tok[0] == "chars" and tok[1])]
  if out and out[0][0] == "chars":
    out[0][1] = out[0][1].lstrip()
  if out and out[-1][0] == "chars":
    out[-1][1] = out[-1][1].rstrip()
  return babel_dates.untokenize_pattern([(k, v) for k, v in out if v])


def _granularity(pattern: str) -> str | None:
  """What a pattern tells about a value, or None if it is unusable for exact targets."""
  try:
    fields = _fields(pattern)
    babel_dates.parse_pattern(pattern)
  except (ValueError, KeyError):
    return None
  letters = {c for c, _ in fields}
  if not letters or not letters <= _ALLOWED_FIELDS:
    return None
  has_date = bool(letters & _DATE_FIELDS)
  if has_date and not ({"y"} <= letters and letters & {"M", "L"} and "d" in letters):
    return None
  has_hour = bool(letters & set("hHkK"))
  if has_hour != ("m" in letters):
    return None  # hours without minutes or minutes without hours
  if "s" in letters and "m" not in letters:
    return None
  if letters & set("hK") and not letters & set("abB"):
    return None  # 12-hour clock without a day period
  if not has_hour:
    return "date" if has_date else None
  unit = "seconds" if "s" in letters else "minutes"
  return f"{'datetime' if has_date else 'time'}_{unit}"


@functools.lru_cache(maxsize=None)
def _is_injective(locale: str, pattern: str, part: str) -> bool:
  """Renders values differing in one component and checks that the texts all differ.

  ``part`` is "date" or "time". Numeric fields are injective by construction, so a few values
  cover them; names (months, weekdays) and day periods (12-hour clocks) are checked in full.
  """
  base = _dt.datetime(2013, 8, 14, 0, 0, 0)
  if part == "date":
    groups = [
        [base.replace(year=y) for y in (1950, 1999, 2000, 2001, 2013, 2049)],
        [base.replace(month=m) for m in range(1, 13)],
        [base.replace(day=d) for d in (1, 2, 10, 11, 12, 21, 31)],
    ]
  else:
    groups = [
        [base.replace(hour=h, minute=m) for h in range(24) for m in (0, 30)],
        [base.replace(hour=13, minute=m) for m in (0, 1, 10, 11, 12, 21, 59)],
    ]
    if any(c == "s" for c, _ in _fields(pattern)):
      groups.append([base.replace(hour=13, second=s) for s in (0, 1, 10, 11, 12, 21, 59)])
  spec = FormatSpec(locale=locale, style="check", pattern=pattern, granularity="date")
  return all(len({render(v, spec) for v in group}) == len(group) for group in groups)


@functools.lru_cache(maxsize=None)
def locale_specs(locale: str) -> tuple[FormatSpec, ...]:
  """All validated, distinct format specs of a locale (Latin digits and, if any, native)."""
  loc = _locale(locale)
  # (style, date part, time part, glue); a glue has "{1}" for the date and "{0}" for the time.
  candidates: list[tuple[str, str | None, str | None, str | None]] = []
  date_patterns = {s: loc.date_formats[s].pattern for s in _STYLES}
  # medium/short first: when a zone-stripped full/long time equals them, they keep their name.
  time_styles = ("medium", "short", "full", "long")
  time_patterns = {s: _strip_zone(loc.time_formats[s].pattern) for s in time_styles}
  for ds in _STYLES:
    candidates.append((f"date:{ds}", date_patterns[ds], None, None))
  for ts in time_styles:
    candidates.append((f"time:{ts}", None, time_patterns[ts], None))
  for ds in _STYLES:
    for ts in time_styles:
      glue = str(loc.datetime_formats[ds])
      candidates.append((f"datetime:{ds}+{ts}", date_patterns[ds], time_patterns[ts], glue))
  skeletons = loc.datetime_skeletons
  date_skeletons = [k for k in _DATE_SKELETONS if k in skeletons]
  time_skeletons = [k for k in _TIME_SKELETONS if k in skeletons]
  glue = str(loc.datetime_formats["medium"])
  for dk in date_skeletons:
    candidates.append((f"skeleton:{dk}", str(skeletons[dk]), None, None))
  for tk in time_skeletons:
    candidates.append((f"skeleton:{tk}", None, str(skeletons[tk]), None))
  for dk in date_skeletons:
    for tk in time_skeletons:
      candidates.append((f"skeleton:{dk}+{tk}", str(skeletons[dk]), str(skeletons[tk]), glue))

  native = loc.default_numbering_system
  numbering = ["latn"]
  if native != "latn" and native in _NATIVE_ZERO and unicodedata.digit(_NATIVE_ZERO[native]) == 0:
    numbering.append(native)
  specs: list[FormatSpec] = []
  seen: set[str] = set()
  for style, date_part, time_part, glue in candidates:
    if glue is not None:
      pattern = glue.replace("{0}", time_part).replace("{1}", date_part)
    else:
      pattern = date_part if date_part is not None else time_part
    granularity = _granularity(pattern)
    if granularity is None or pattern in seen:
      continue
    if date_part is not None and (
        _granularity(date_part) != "date" or not _is_injective(locale, date_part, "date")
    ):
      continue
    if time_part is not None and (
        _granularity(time_part) not in ("time_minutes", "time_seconds")
        or not _is_injective(locale, time_part, "time")
    ):
      continue
    seen.add(pattern)
    for digits in numbering:
      suffix = "" if digits == "latn" else f"@{digits}"
      specs.append(FormatSpec(locale, style + suffix, pattern, granularity, digits))
  return tuple(specs)


def all_specs() -> tuple[FormatSpec, ...]:
  return tuple(spec for locale in LOCALES for spec in locale_specs(locale))


def spec_for(locale: str, style: str) -> FormatSpec:
  """The spec of a (locale, style) pair, as stored in an example's features."""
  for spec in locale_specs(locale):
    if spec.style == style:
      return spec
  raise KeyError(f"no format style {style!r} for locale {locale!r}")


def _kind(spec: FormatSpec) -> str:
  return spec.style.split(":", 1)[0]


# --------------------------------------------------------------------------------------------
# Sampling.
# --------------------------------------------------------------------------------------------

SPLITS = ("train", "validation", "test", "test_long")
_SPLIT_INDEX = {name: i for i, name in enumerate(SPLITS)}
#: Hash buckets (of 100) that each regular split draws from; test_long takes the long sources.
_BUCKETS = {"train": range(0, 90), "validation": range(90, 95), "test": range(95, 100)}


@functools.lru_cache(maxsize=None)
def _specs_by_kind() -> tuple[dict[str, tuple[FormatSpec, ...]], ...]:
  table = []
  for locale in LOCALES:
    specs = locale_specs(locale)
    table.append({k: tuple(s for s in specs if _kind(s) == k) for k in KIND_WEIGHTS})
    missing = [k for k, v in table[-1].items() if not v]
    if missing:
      raise RuntimeError(f"locale {locale!r} has no valid {missing} formats")
  return tuple(table)


@functools.lru_cache(maxsize=None)
def _kind_cdf() -> tuple[tuple[str, ...], np.ndarray]:
  weights = np.asarray(list(KIND_WEIGHTS.values()), dtype=np.float64)
  return tuple(KIND_WEIGHTS), np.cumsum(weights / weights.sum())


def sample(rng: np.random.Generator) -> tuple[_dt.datetime, FormatSpec]:
  """Draws a value and a format: locale uniform, kind by KIND_WEIGHTS, style uniform."""
  table = _specs_by_kind()
  by_kind = table[int(rng.integers(len(table)))]
  kinds, cumulative = _kind_cdf()
  kind = kinds[min(int(np.searchsorted(cumulative, rng.random(), side="right")), len(kinds) - 1)]
  specs = by_kind[kind]
  spec = specs[int(rng.integers(len(specs)))]
  num_days = (LAST_DATE - FIRST_DATE).days + 1
  day = FIRST_DATE + _dt.timedelta(days=int(rng.integers(num_days)))
  value = _dt.datetime.combine(day, _dt.time()) + _dt.timedelta(seconds=int(rng.integers(86400)))
  return value, spec


def make_example(value: _dt.datetime, spec: FormatSpec) -> dict[str, str]:
  if spec.granularity.endswith("minutes"):
    # The seconds are not in the target, so they must not shape the source either: a flexible
    # day period says "midnight" at 00:00:00 only, "at night" at 00:00:30.
    value = value.replace(second=0)
  return {
      "source": render(value, spec),
      "target": iso_target(value, spec.granularity),
      "locale": spec.locale,
      "style": spec.style,
  }


@functools.lru_cache(maxsize=None)
def numeric_reader() -> date_readings.NumericReader:
  """Reads a source with every all-numeric format of every locale (see ``date_readings``)."""
  return date_readings.NumericReader(all_specs(), _locale, TWO_DIGIT_YEAR_PIVOT)


def is_ambiguous(example: Mapping[str, str]) -> bool:
  """True when some locale's numeric format reads the source as another target (``8/5/2029``:
  August 5 in ``en``, 8 May in ``es``): no translation is right without the locale."""
  return bool(numeric_reader().readings(example["source"]) - {example["target"]})


def split_bucket(source: str, target: str) -> int:
  """The hash bucket (0-99) of an example; it decides train/validation/test membership."""
  digest = hashlib.blake2b(f"{source}\x00{target}".encode("utf-8"), digest_size=8).digest()
  return int.from_bytes(digest, "little") % 100


def generate_split(
    split: str, num_examples: int, *, max_source_len: int, seed: int
) -> Iterator[dict[str, str]]:
  """Yields the examples of one split, deterministically (a NumPy Generator per split)."""
  if split not in _SPLIT_INDEX:
    raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
  rng = np.random.default_rng([seed, _SPLIT_INDEX[split]])
  seen: set[str] = set()
  attempts = 0
  while len(seen) < num_examples:
    attempts += 1
    if attempts > 1000 * num_examples + 10_000:
      raise RuntimeError(f"could not draw {num_examples} examples for split {split!r}")
    example = make_example(*sample(rng))
    source = example["source"]
    if source in seen or is_ambiguous(example):
      continue
    if split == "test_long":
      if len(source) <= max_source_len:
        continue
    elif len(source) > max_source_len or (
        split_bucket(source, example["target"]) not in _BUCKETS[split]
    ):
      continue
    seen.add(source)
    yield example


# --------------------------------------------------------------------------------------------
# The TFDS builder.
# --------------------------------------------------------------------------------------------

#: Sources longer than this go to ``test_long`` only (about the longest 4 % of the distribution;
#: 2,000 long examples take ~50,000 draws, about 2 s).
MAX_SOURCE_LEN = 35


@dataclasses.dataclass(eq=False)
class DatesConfig(tfds.core.BuilderConfig):
  """Sizes of the splits, the length threshold of ``test_long`` and the generation seed."""

  num_train: int = 50_000
  num_validation: int = 2_000
  num_test: int = 2_000
  num_test_long: int = 2_000
  max_source_len: int = MAX_SOURCE_LEN
  seed: int = 20_261_124

  def split_sizes(self) -> dict[str, int]:
    return {
        "train": self.num_train,
        "validation": self.num_validation,
        "test": self.num_test,
        "test_long": self.num_test_long,
    }


class DatesTranslation(stamped.StampedBuilder):
  """Dates and times in many languages and CLDR styles -> ISO 8601 (see the module docstring)."""

  name = "dates_translation"
  # Prepared data is cached per version: bump it whenever the generation changes.
  VERSION = tfds.core.Version("1.2.0")
  RELEASE_NOTES = {
      "1.0.0": "First release: 37 locales, Babel/CLDR patterns, 1950-2049.",
      "1.1.0": "Drops sources that another locale's numeric format reads differently (~2.6%); "
      "minute-granularity sources are rendered with zero seconds.",
      "1.2.0": "Same examples; records the Babel/CLDR and NumPy versions that generated them "
      "and a content fingerprint, and refuses to be read under other versions.",
  }
  BUILDER_CONFIGS = [
      DatesConfig(name="default", description="50,000 train, 2,000 validation/test/test_long."),
      DatesConfig(
          name="small",
          description="5,000 train, 500 validation/test/test_long (for tests).",
          num_train=5_000,
          num_validation=500,
          num_test=500,
          num_test_long=500,
      ),
  ]
  DEFAULT_CONFIG_NAME = "default"

  # tfds 4.9.x resolves the code path of a builder defined in a package through
  # `importlib_resources` (a backport that is not installed here, and not needed): give it
  # directly. It only serves to look for a `checksums.tsv` next to this file (there is none:
  # nothing is downloaded).
  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls) -> epath.Path:
    return epath.Path(__file__)

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description=(
            "Dates and times written out in many languages and CLDR styles (Babel), paired "
            "with their ISO 8601 form. Generated locally and deterministically from the CLDR "
            f"data of Babel {babel.__version__}."
        ),
        features=tfds.features.FeaturesDict(
            {
                "source": tfds.features.Text(),
                "target": tfds.features.Text(),
                "locale": tfds.features.Text(),
                "style": tfds.features.Text(),
            }
        ),
        supervised_keys=("source", "target"),
        homepage="https://cldr.unicode.org/",
        metadata=tfds.core.MetadataDict(),
    )

  def generated_with(self) -> dict[str, str]:
    # The CLDR data that ships with Babel writes the sources; NumPy draws values and formats.
    return {"babel": babel.__version__, "cldr": str(babel.core.get_cldr_version()),
            "numpy": np.__version__}

  def _generate_split(self, split: str, num_examples: int):
    config = self.builder_config
    return generate_split(
        split, num_examples, max_source_len=config.max_source_len, seed=config.seed
    )


#: The longest source and target (characters) over all four splits of each config, measured on
#: the prepared data of the locked environment (tests/data checks them against the files). A
#: config's lengths can thus be checked before the data is prepared. train/validation/test
#: sources are bounded by ``max_source_len`` by construction; test_long's longest is drawn.
LONGEST = {"default": {"source": 65, "target": 19}, "small": {"source": 62, "target": 19}}


def source_length_bound(config: str = "default") -> int:
  """The longest source (characters) the train, validation and test splits of ``config`` can
  hold: its ``max_source_len`` (test_long's sources are longer)."""
  configs = {c.name: c for c in DatesTranslation.BUILDER_CONFIGS}
  if config not in configs:
    raise ValueError(f"config must be one of {sorted(configs)}, got {config!r}")
  return configs[config].max_source_len


def required_lengths(config: str = "default") -> tuple[int, int]:
  """``(max_input_len, max_target_len)`` that fit every example of ``config`` with a character
  tokenizer (the target with its BOS/EOS), known without preparing the data."""
  longest = LONGEST[config]
  return longest["source"], longest["target"] + 1


def dates_builder(
    data_dir: str | os.PathLike | None = None, config: str | DatesConfig = "default"
) -> DatesTranslation:
  """The builder of a config, reading/writing array_record files under ``data_dir``."""
  data_dir = data_dir if data_dir is not None else os.environ.get("TFDS_DATA_DIR")
  return DatesTranslation(
      data_dir=None if data_dir is None else os.fspath(data_dir),
      config=config,
      file_format="array_record",
  )


def load_dates(
    split: str | None = "train",
    data_dir: str | os.PathLike | None = None,
    config: str | DatesConfig = "default",
):
  """Prepares the dataset on first use and returns a random-access data source.

  Args:
    split: "train", "validation", "test", "test_long", or None for a dict of all four.
    data_dir: TFDS data dir; default ``$TFDS_DATA_DIR`` or TFDS' own default
      (``~/tensorflow_datasets``).
    config: "default", "small" or a ``DatesConfig``.

  Returns:
    A ``tfds`` ``ArrayRecordDataSource`` (``len``, ``ds[i]``, ``ds.__getitems__``) whose records
    are dicts of UTF-8 ``bytes`` with keys source, target, locale, style (decode with
    ``decode_example``), or a dict of them by split name.
  """
  builder = dates_builder(data_dir, config)
  builder.download_and_prepare(file_format="array_record")
  return builder.as_data_source(split=split)


def decode_example(record: Mapping[str, bytes | str]) -> dict[str, str]:
  """A record of the data source with its ``bytes`` fields decoded to ``str``."""
  return {k: v.decode("utf-8") if isinstance(v, bytes) else v for k, v in record.items()}
