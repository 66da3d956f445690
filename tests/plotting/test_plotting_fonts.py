"""Figures draw every script of the dates dataset: no missing glyph in any of its 37 locales."""

import datetime as dt
import warnings

import matplotlib.pyplot as plt
import numpy as np
from matplotlib import font_manager

from attention_jax import plotting
from attention_jax.data import dates

# One value per month, at hours spread over the day (so every day period of a 12-hour clock and
# every flexible period such as "in the evening" / 저녁 is written) and on different weekdays.
VALUES = [dt.datetime(2026, month, 9 + month, (2 * month + 1) % 24, 7, 9) for month in range(1, 13)]


def _characters(locale: str) -> str:
  """Every character the locale writes, space-separated (a combining mark is drawn on a space,
  not on whichever letter sorts before it)."""
  chars = set()
  for spec in dates.locale_specs(locale):
    for value in VALUES:
      chars.update(dates.render(value, spec))
  return " ".join(sorted(chars - {" "}))


def _missing_glyphs(draw) -> list[str]:
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    draw()
  return [str(w.message) for w in caught if "missing from font" in str(w.message)]


def test_every_family_is_installed():
  for family in plotting.FONT_FAMILIES:
    assert font_manager.findfont(font_manager.FontProperties(family=family),
                                 fallback_to_default=False), family


def test_every_character_of_every_locale_has_a_glyph(tmp_path, caplog):
  def draw(text):
    fig = plt.figure(figsize=(8, 1))
    fig.text(0.01, 0.5, text, fontsize=7)
    plotting.save_figure(fig, str(tmp_path / "chars.png"))

  missing = {}
  for locale in dates.LOCALES:
    chars = _characters(locale)
    assert len(chars.split()) > 20, locale  # digits, names of months and weekdays, day periods
    found = _missing_glyphs(lambda: draw(chars))  # pylint: disable=cell-var-from-loop
    if found:
      missing[locale] = found[:2]
  assert not missing, missing
  assert "findfont" not in caplog.text


def test_alignment_figures_label_cjk_hangul_thai_and_indic_inputs(tmp_path):
  for locale in ("ko", "ja", "zh_Hant", "th", "hi", "bn", "fa", "he", "ka", "hy"):
    source = dates.render(VALUES[10], dates.locale_specs(locale)[0])
    weights = np.random.default_rng(0).random((10, len(source)))
    path = str(tmp_path / f"alignment_{locale}.png")
    missing = _missing_glyphs(lambda: plotting.plot_attention(  # pylint: disable=cell-var-from-loop
        weights, path, x_labels=list(source), y_labels=list("2026-11-24"), title=source))
    assert not missing, (locale, missing[:2])
    assert plt.imread(path).shape[2] in (3, 4)
