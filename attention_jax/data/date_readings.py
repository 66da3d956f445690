"""Every ISO target an all-numeric date/time source can be read as, over all locales' formats.

A source such as ``8/5/2029`` is August 5 in ``en`` (``M/d/y``) and 8 May in ``es`` (``d/M/y``);
``05.03.23`` is a time in ``id`` and a date in ``de``. Such a source has no single correct
translation without its locale, so the dates dataset leaves it out (see ``dates.generate_split``).

Each format whose fields are all numeric (year, month as a number, day, hours, minutes, seconds,
AM/PM) becomes a regular expression over the normalised, Latin-digit text; :func:`readings`
returns the targets of every format that matches a source.
"""

from __future__ import annotations

import datetime as _dt
import re
import unicodedata
from typing import Iterable

from babel import dates as babel_dates

_NUMERIC_FIELDS = frozenset("yMdHhmsa")
_INVISIBLE = {"\u200e", "\u200f", "\u061c"}


def latin_digits(text: str) -> str:
  """Any Unicode decimal digit (Arabic-Indic, Devanagari, ...) replaced by its ASCII digit."""
  return "".join(str(unicodedata.digit(c)) if c.isdecimal() else c for c in text)


def _literal_regex(text: str) -> str:
  text = "".join(c for c in text if c not in _INVISIBLE)
  parts = re.split(r"(\s+)", text)
  return "".join(r"\s*" if part.isspace() else re.escape(part) for part in parts if part)


def _day_period_regex(locale) -> tuple[str, dict[str, str]]:
  """An alternation of the locale's AM/PM strings and the map from each string to am/pm."""
  strings: dict[str, str] = {}
  for context in ("format", "stand-alone"):
    for width in ("abbreviated", "wide", "narrow"):
      periods = locale.day_periods.get(context, {}).get(width, {})
      for period in ("am", "pm"):
        if periods.get(period):
          strings[" ".join(periods[period].split())] = period
  alternation = "|".join(re.escape(s) for s in sorted(strings, key=len, reverse=True))
  return f"(?P<a>{alternation})", strings


_FIELD_REGEX = {
    "y": lambda n: r"(?P<y2>\d{2})" if n == 2 else r"(?P<y>\d{4})",
    "M": lambda n: r"(?P<M>\d{1,2})" if n == 1 else r"(?P<M>\d{2})",
    "d": lambda n: r"(?P<d>\d{1,2})" if n == 1 else r"(?P<d>\d{2})",
    "H": lambda n: r"(?P<H>\d{1,2})" if n == 1 else r"(?P<H>\d{2})",
    "h": lambda n: r"(?P<h>\d{1,2})" if n == 1 else r"(?P<h>\d{2})",
    "m": lambda n: r"(?P<m>\d{1,2})" if n == 1 else r"(?P<m>\d{2})",
    "s": lambda n: r"(?P<s>\d{1,2})" if n == 1 else r"(?P<s>\d{2})",
}


def numeric_regex(pattern: str, locale) -> tuple[re.Pattern, dict[str, str]] | None:
  """The regex of a CLDR pattern whose fields are all numeric, or None for any other pattern."""
  tokens = babel_dates.tokenize_pattern(pattern)
  fields = [v for t, v in tokens if t == "field"]
  if not fields or any(c not in _NUMERIC_FIELDS or (c == "M" and n > 2) for c, n in fields):
    return None
  periods: dict[str, str] = {}
  parts = []
  for kind, value in tokens:
    if kind == "chars":
      parts.append(_literal_regex(value))
    elif value[0] == "a":
      regex, periods = _day_period_regex(locale)
      parts.append(regex)
    else:
      parts.append(_FIELD_REGEX[value[0]](value[1]))
  return re.compile(r"\s*" + "".join(parts) + r"\s*"), periods


def _target(match: re.Match, periods: dict[str, str], granularity: str, pivot: int) -> str | None:
  """The ISO target of a match, or None when the numbers are no valid date/time."""
  groups = match.groupdict()
  try:
    date_part = time_part = None
    if "M" in groups:
      if groups.get("y2") is not None:
        short = int(groups["y2"])
        year = (1900 if short >= pivot else 2000) + short
      else:
        year = int(groups["y"])
      date_part = _dt.date(year, int(groups["M"]), int(groups["d"])).isoformat()
    if "m" in groups:
      if groups.get("h") is not None:
        hour = int(groups["h"])
        if not 1 <= hour <= 12:
          return None
        hour = hour % 12 + (12 if periods[" ".join(groups["a"].split())] == "pm" else 0)
      else:
        hour = int(groups["H"])
      seconds = int(groups["s"]) if groups.get("s") is not None else 0
      time = _dt.time(hour, int(groups["m"]), seconds)
      time_part = time.strftime("%H:%M:%S" if granularity.endswith("seconds") else "%H:%M")
  except (ValueError, KeyError):
    return None
  if date_part and time_part:
    return f"{date_part}T{time_part}"
  return date_part or time_part


class NumericReader:
  """Reads a source with every all-numeric format of a set of specs."""

  def __init__(self, specs: Iterable, locale_of, pivot: int):
    """``specs``: objects with ``pattern``, ``locale`` and ``granularity``; ``locale_of``: name
    -> babel Locale; ``pivot``: two-digit years >= pivot are 19xx, others 20xx."""
    self.pivot = pivot
    compiled = {}
    for spec in specs:
      key = (spec.pattern, spec.locale if "a" in spec.pattern else "", spec.granularity)
      if key not in compiled:
        regex = numeric_regex(spec.pattern, locale_of(spec.locale))
        if regex is not None:
          compiled[key] = (*regex, spec.granularity)
    self.readers = tuple(compiled.values())

  def readings(self, source: str) -> set[str]:
    """The ISO targets of every numeric format that matches ``source``."""
    text = " ".join(latin_digits(source).split())
    if not any(c.isdigit() for c in text):
      return set()
    found = set()
    for regex, periods, granularity in self.readers:
      match = regex.fullmatch(text)
      if match is not None:
        target = _target(match, periods, granularity, self.pivot)
        if target is not None:
          found.add(target)
    return found
