"""Keeps the memory a process frees for its next use, instead of giving it back to the OS.

XLA:CPU allocates one temporary buffer per run of a compiled program (49 MiB for the LM
experiment's training step) and frees it when the run ends. glibc's malloc serves an allocation
above its mmap threshold (32 MiB at most) with a fresh ``mmap`` and returns it with ``munmap``,
so every step faults the whole buffer in again, page by page, and the kernel zeroes each page:
~15,000 page faults per LM step, about a third of its time on a 2-core CPU
(docs/performance.md). :func:`keep_freed_memory` turns that off for the process: no ``mmap``
for malloc, the main heap trimmed only above ``trim_threshold`` free bytes, and the heaps of
other threads (where XLA's worker threads allocate) trimmed down to ``top_pad`` spare bytes, not
glibc's 128 KiB. A worker thread's heap cannot exceed 64 MiB, so larger buffers allocated there
(the captioning step's 114 MB) are still mapped each time, unless ``single_arena`` makes every
thread allocate from the main heap, which has no such limit. One heap serialises the threads'
allocations behind one lock: it helps the recurrent experiments, whose steps are long chains of
small kernels (our step alone, idle: captioning 136-162 -> 98-103 ms, seq2seq 109-112 ->
90-97 ms), and slows the Transformer LM, whose threads allocate at once (36-44 -> 49-55 ms), so
it is a config field (``single_malloc_arena``) that those experiments turn on.

The experiments and ``benchmarks.train_step`` call it at start; a user's own training script can
too. It changes the whole process's allocator (PyTorch in the same process included), so a
library import never calls it. On a C library without glibc's ``mallopt`` (musl, macOS) it
does nothing and returns False.
``ATTENTION_JAX_KEEP_FREED_MEMORY=0`` turns it off.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import tempfile

ENV = "ATTENTION_JAX_KEEP_FREED_MEMORY"
# glibc's malloc.h parameter numbers.
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_M_TOP_PAD = -2
_M_ARENA_MAX = -8
DEFAULT_TRIM_THRESHOLD = 1 << 30
# A thread's heap is trimmed down to this much free space at its top (glibc: 128 KiB), so a
# buffer freed there would be faulted in again: keep up to a whole thread heap (64 MiB).
DEFAULT_TOP_PAD = 64 << 20


def _glibc():
  """The process's glibc, or None when the C library is another one."""
  try:
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
  except OSError:
    return None
  if not hasattr(libc, "gnu_get_libc_version") or not hasattr(libc, "mallopt"):
    return None
  return libc


def keep_freed_memory(trim_threshold: int = DEFAULT_TRIM_THRESHOLD,
                      top_pad: int = DEFAULT_TOP_PAD, single_arena: bool = False) -> bool:
  """Makes glibc's malloc keep freed memory for reuse: no ``mmap``-backed allocations, the main
  heap trimmed only when more than ``trim_threshold`` bytes at its top are free, and every heap
  grown and trimmed with ``top_pad`` bytes to spare.

  With ``single_arena``, threads that have not allocated yet share the main heap (glibc's
  ``M_ARENA_MAX`` = 1): call it before JAX starts its backend (before the first computation,
  ``jax.devices()`` or ``jax.device_count()``), whose worker threads would otherwise each take a
  heap of their own.

  Returns:
    Whether the allocator was changed: False when ``$ATTENTION_JAX_KEEP_FREED_MEMORY`` is 0,
    false or no, or the C library is not glibc.

  Raises:
    ValueError: ``trim_threshold`` or ``top_pad`` is not a positive int that fits glibc's
      parameter.
  """
  for name, value in (("trim_threshold", trim_threshold), ("top_pad", top_pad)):
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value < 2**31:
      raise ValueError(f"{name} must be an int in (0, 2**31) bytes, got {value!r}")
  if not isinstance(single_arena, bool):
    raise ValueError(f"single_arena must be True or False, got {single_arena!r}")
  if os.environ.get(ENV, "1").strip().lower() in ("0", "false", "no"):
    return False
  libc = _glibc()
  if libc is None:
    return False
  # mallopt returns 1 on success, 0 on a refused value.
  return (bool(libc.mallopt(_M_MMAP_MAX, 0))
          and bool(libc.mallopt(_M_TRIM_THRESHOLD, trim_threshold))
          and bool(libc.mallopt(_M_TOP_PAD, top_pad))
          and (not single_arena or bool(libc.mallopt(_M_ARENA_MAX, 1))))


def malloc_heaps() -> int | None:
  """How many glibc malloc heaps (arenas) the process has (1 when every thread shares the main
  heap); None when the C library is not glibc."""
  libc = _glibc()
  if libc is None or not hasattr(libc, "malloc_info"):
    return None
  libc.fopen.restype = ctypes.c_void_p
  with tempfile.NamedTemporaryFile("r", suffix=".xml") as report:
    stream = libc.fopen(report.name.encode(), b"w")
    libc.malloc_info(0, ctypes.c_void_p(stream))
    libc.fclose(ctypes.c_void_p(stream))
    return report.read().count("<heap nr=")
