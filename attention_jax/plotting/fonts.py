"""Fonts for every script the experiments draw, from installed packages (nothing downloaded).

Matplotlib's own DejaVu Sans has no Hangul, kana, Han, Thai, Devanagari or Bengali, so an alignment
figure of a Korean date showed empty boxes where its input characters should be. The Noto fonts of
``manimgx-fonts`` (Noto Sans and the script faces) and ``manimgx-fonts-cjk`` (Noto Sans CJK) are
registered with matplotlib and put behind DejaVu Sans in ``font.family``: matplotlib falls back
glyph by glyph through that list, so one label may mix scripts (``2026년 11월 24일 PM 3:07``).
``use_script_fonts()`` runs when ``attention_jax.plotting`` is imported.
"""

from __future__ import annotations

import dataclasses
import functools
import glob
import os

import matplotlib
from matplotlib import font_manager

#: Fallback order: Latin first in matplotlib's default face, then Noto per script, then CJK.
FONT_FAMILIES = (
    "DejaVu Sans",
    "Noto Sans",
    "Noto Sans Arabic",
    "Noto Sans Hebrew",
    "Noto Sans Armenian",
    "Noto Sans Georgian",
    "Noto Sans Devanagari",
    "Noto Sans Bengali",
    "Noto Sans Thai",
    "Noto Sans CJK JP",
    "Noto Sans Symbols",
)
_NORMAL_WEIGHT = 400


def _package_fonts() -> list[str]:
  import manimgx_fonts  # pylint: disable=import-outside-toplevel
  import manimgx_fonts_cjk  # pylint: disable=import-outside-toplevel
  paths = []
  for package in (manimgx_fonts, manimgx_fonts_cjk):
    folder = os.path.dirname(package.__file__)
    paths += sorted(glob.glob(os.path.join(folder, "*.tt[fc]")))
  return paths


@functools.cache
def use_script_fonts() -> tuple[str, ...]:
  """Registers the packaged Noto fonts and sets ``font.family`` to ``FONT_FAMILIES``; returns
  the font files registered. Idempotent."""
  paths = _package_fonts()
  manager = font_manager.fontManager
  for path in paths:
    first = len(manager.ttflist)
    manager.addfont(path)
    # These are variable fonts: matplotlib reads the weight of their default instance (100 for
    # Noto Sans CJK) and would warn on every lookup of the normal weight; only that instance is
    # ever drawn, so it is registered as the normal weight.
    for i in range(first, len(manager.ttflist)):
      if isinstance(manager.ttflist[i].weight, int):
        manager.ttflist[i] = dataclasses.replace(manager.ttflist[i], weight=_NORMAL_WEIGHT)
  matplotlib.rcParams["font.family"] = list(FONT_FAMILIES)
  return tuple(paths)
