"""keep_freed_memory: XLA:CPU's per-run temporary buffer is reused, not faulted in again."""

import os
import platform
import subprocess
import sys

import pytest

from attention_jax import training
from attention_jax.training import host_memory

# One run of a program whose 40 MiB intermediate (the [3200, 3200] tanh) XLA keeps in its
# temporary buffer; transparent huge pages are turned off so a fault is one 4 KiB page.
PROGRAM = """
import ctypes, resource, sys
ctypes.CDLL(None).prctl(41, 1, 0, 0, 0)  # PR_SET_THP_DISABLE
from attention_jax.training import host_memory
print(host_memory.keep_freed_memory())
import jax, jax.numpy as jnp
f = jax.jit(lambda a, b: jnp.tanh(a @ b) @ a)
a, b = jnp.ones((3200, 8)), jnp.ones((8, 3200))
for _ in range(30):  # until every worker thread's heap has the room its parts of a run need
  f(a, b).block_until_ready()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
  f(a, b).block_until_ready()
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 10)
"""

# The malloc heaps (glibc arenas) in use after XLA's worker threads have run a program.
HEAPS = """
import sys
from attention_jax.training import host_memory
print(host_memory.keep_freed_memory(single_arena=sys.argv[1] == "1"))
import jax, jax.numpy as jnp
f = jax.jit(lambda a, b: jnp.tanh(a @ b) @ a)
a, b = jnp.ones((3200, 8)), jnp.ones((8, 3200))
for _ in range(3):
  f(a, b).block_until_ready()
print(host_memory.malloc_heaps())
"""

glibc_linux = pytest.mark.skipif(
    platform.system() != "Linux" or host_memory._glibc() is None, reason="needs Linux's glibc")


def _faults_per_run(keep: str) -> tuple[bool, float]:
  env = dict(os.environ, JAX_PLATFORMS="cpu", **{host_memory.ENV: keep})
  out = subprocess.run([sys.executable, "-c", PROGRAM], env=env, capture_output=True, text=True,
                       timeout=120, check=True).stdout.split()
  return out[0] == "True", float(out[1])


@glibc_linux
def test_the_temporary_buffer_is_reused_rather_than_faulted_in_every_run():
  changed, faults = _faults_per_run("1")
  assert changed
  # 40 MiB are 10,240 pages; what is left (0-1,000 per run measured) is a worker thread's
  # scratch landing, now and then, in a heap that has not held it before.
  assert faults < 5000
  # The control: glibc's default maps and unmaps the buffer on every run.
  changed, faults = _faults_per_run("0")
  assert not changed
  assert faults > 9000


def _heaps(single_arena: bool) -> tuple[bool, int]:
  env = dict(os.environ, JAX_PLATFORMS="cpu", **{host_memory.ENV: "1"})
  out = subprocess.run([sys.executable, "-c", HEAPS, str(int(single_arena))], env=env,
                       capture_output=True, text=True, timeout=120, check=True).stdout.split()
  return out[0] == "True", int(out[1])


@glibc_linux
def test_single_arena_puts_every_thread_on_the_main_heap():
  assert _heaps(single_arena=True) == (True, 1)
  # The control: XLA's worker threads each take a heap of their own.
  changed, heaps = _heaps(single_arena=False)
  assert changed and heaps > 1


def test_single_arena_must_be_a_bool():
  with pytest.raises(ValueError, match="single_arena must be True or False, got 1"):
    training.keep_freed_memory(single_arena=1)


@pytest.mark.parametrize("name", ["trim_threshold", "top_pad"])
def test_sizes_must_be_positive_ints(name):
  for bad in (0, -1, 2**31, 1.5, True):
    with pytest.raises(ValueError, match=rf"{name} must be an int in \(0, 2\*\*31\) bytes, got"):
      training.keep_freed_memory(**{name: bad})


def test_the_environment_turns_it_off(monkeypatch):
  monkeypatch.setenv(host_memory.ENV, "0")
  assert training.keep_freed_memory() is False
