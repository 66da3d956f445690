"""Keeps the memory a process frees for its next use, instead of giving it back to the OS.

XLA:CPU allocates one temporary buffer per run of a compiled program (49 MiB for the LM
experiment's training step) and frees it when the run ends. glibc's malloc serves an allocation
above its mmap threshold (32 MiB at most) with a fresh ``mmap`` and returns it with ``munmap``,
so every step faults the whole buffer in again, page by page, and the kernel zeroes each page:
~15,000 page faults per LM step, about a third of its time on a 2-core CPU
(docs/performance.md). :func:`keep_freed_memory` turns that off for the process: no ``mmap``
for malloc, and the top of the heap trimmed only above ``trim_threshold`` free bytes. The
experiments and benchmarks call it at start; a user's own training script can too. It changes
the whole process's allocator (PyTorch in the same process included), so a library import never
calls it.

On a C library without glibc's ``mallopt`` (musl, macOS) it does nothing and says so.
``ATTENTION_JAX_KEEP_FREED_MEMORY=0`` turns it off.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

ENV = "ATTENTION_JAX_KEEP_FREED_MEMORY"
# glibc's malloc.h parameter numbers.
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
DEFAULT_TRIM_THRESHOLD = 1 << 30


def _glibc():
  """The process's glibc, or None when the C library is another one."""
  try:
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
  except OSError:
    return None
  if not hasattr(libc, "gnu_get_libc_version") or not hasattr(libc, "mallopt"):
    return None
  return libc


def keep_freed_memory(trim_threshold: int = DEFAULT_TRIM_THRESHOLD) -> bool:
  """Makes glibc's malloc keep freed memory for reuse (no ``mmap``-backed allocations, the heap
  trimmed only when more than ``trim_threshold`` bytes at its top are free).

  Returns:
    Whether the allocator was changed: False when ``$ATTENTION_JAX_KEEP_FREED_MEMORY`` is 0,
    false or no, or the C library is not glibc.

  Raises:
    ValueError: ``trim_threshold`` is not a positive int that fits glibc's parameter.
  """
  if (isinstance(trim_threshold, bool) or not isinstance(trim_threshold, int)
      or not 0 < trim_threshold < 2**31):
    raise ValueError(f"trim_threshold must be an int in (0, 2**31) bytes, got {trim_threshold!r}")
  if os.environ.get(ENV, "1").strip().lower() in ("0", "false", "no"):
    return False
  libc = _glibc()
  if libc is None:
    return False
  # mallopt returns 1 on success, 0 on a refused value.
  return bool(libc.mallopt(_M_MMAP_MAX, 0)) and bool(libc.mallopt(_M_TRIM_THRESHOLD,
                                                                  trim_threshold))
