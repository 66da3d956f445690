"""The load average around a measurement, and the rule that a ratio taken on a busy machine is not
a result.

On a 2-core machine a 1-minute load average above 1.0 means another job shares the cores: PyTorch's
OpenMP threads then wait on each other while XLA's do not, and the ratios we printed at loads of
7-11 favoured us by 3-14x. Every benchmark prints the load before and after; :func:`ratio`
prints "load too high" instead of a ratio measured above the limit, unless ``--allow-load``.
"""

from __future__ import annotations

import argparse
import os
import time


def limit() -> float:
  """The highest load average at which a ratio counts: half the cores (1.0 on 2 cores)."""
  return (os.cpu_count() or 2) / 2


def cpu() -> str:
  """The CPU in a few words ("AMD EPYC, 2 cores, AVX-512"): figures differ between the AVX2-only
  and the AVX-512 machines that CI and the sessions get."""
  model, flags = "unknown CPU", set()
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        key, _, value = line.partition(":")
        if key.strip() == "model name" and model == "unknown CPU":
          model = value.strip()
        elif key.strip() == "flags" and not flags:
          flags = set(value.split())
  except OSError:
    pass
  simd = "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else "no AVX2"
  return f"{model}, {os.cpu_count()} cores, {simd}"


def now() -> float:
  return os.getloadavg()[0]


def add_flag(parser: argparse.ArgumentParser) -> None:
  parser.add_argument("--allow-load", action="store_true",
                      help=f"print ratios even when the load average before a measurement is "
                           f"above {limit():.1f} (they are then not results)")
  parser.add_argument("--wait-idle", action="store_true",
                      help=f"before each measurement, wait until the load average is below "
                           f"{limit():.1f} (the benchmark's own previous row raises it)")


def wait_until_quiet(enabled: bool, poll_s: float = 5.0, give_up_s: float = 900.0) -> float:
  """With ``enabled``, sleeps until the 1-minute load average is below :func:`limit` (at most
  ``give_up_s``); returns the load average then."""
  deadline = time.monotonic() + give_up_s
  while enabled and now() >= limit() and time.monotonic() < deadline:
    time.sleep(poll_s)
  return now()


class Guard:
  """The load before each measurement; ratios only when it was low enough."""

  def __init__(self, allow: bool):
    self.allow = allow
    self.before = now()

  def start(self) -> float:
    """Marks the start of a measurement; returns the load average just before it."""
    self.before = now()
    return self.before

  @property
  def quiet(self) -> bool:
    return self.before <= limit()

  def ratio(self, ours: float, theirs: float, fmt: str = "{:.2f}x") -> str:
    """``fmt`` of ``ours / theirs``, or ``load too high`` when the measurement began on a busy
    machine and ``--allow-load`` was not given."""
    if not self.quiet and not self.allow:
      return "load too high"
    return fmt.format(ours / theirs)

  def describe(self) -> str:
    return f"load average {self.before:.2f} before, {now():.2f} after"
