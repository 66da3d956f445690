"""run_experiment, an experiment's __main__, in a new process: flag defaults, overrides, the
quiet console and the usage error on stray arguments."""

import json
import os
import subprocess
import sys
import textwrap

import pytest
from absl.logging import converter

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))

_SCRIPT = """
import ctypes
import json
import sys

import jax
import jax.numpy as jnp

from absl import logging
from tensorflow_datasets.core.utils import tqdm_utils

from attention_jax import training
from attention_jax.training import host_memory


class MallInfo2(ctypes.Structure):
  _fields_ = [(name, ctypes.c_size_t) for name in (
      "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
      "fordblks", "keepcost")]


def large_malloc_is_mapped():
  # Whether glibc serves a 40 MiB malloc with its own mmap (None: not glibc).
  libc = host_memory._glibc()
  if libc is None or not hasattr(libc, "mallinfo2"):
    return None
  libc.mallinfo2.restype = MallInfo2
  libc.malloc.restype = ctypes.c_void_p
  before = libc.mallinfo2().hblkhd
  block = libc.malloc(40 << 20)
  mapped = libc.mallinfo2().hblkhd - before >= 40 << 20
  libc.free(ctypes.c_void_p(block))
  return mapped


def malloc_heaps():
  # glibc's arenas in use (None: not glibc), after JAX's worker threads have run a program.
  f = jax.jit(lambda a, b: jnp.tanh(a @ b) @ a)
  a, b = jnp.ones((3200, 8)), jnp.ones((8, 3200))
  for _ in range(3):
    f(a, b).block_until_ready()
  return host_memory.malloc_heaps()


def run(config, workdir):
  if config.get("count_heaps"):
    print(json.dumps({{"heaps": malloc_heaps()}}))
    return
  print(json.dumps({{
      "num_steps": config.num_steps, "hidden": config.hidden, "workdir": workdir,
      "verbosity": logging.get_verbosity(), "tfds_progress_bar": tqdm_utils._active,
      "large_malloc_mapped": large_malloc_is_mapped(),
  }}))


training.run_experiment(run, config_file={config_file!r}, workdir="runs/demo",
                        validate=training.validate_training_config)  # starts JAX
print("after run_experiment", flush=True)  # never reached: absl's app.run exits
"""


@pytest.fixture(scope="module")
def script(tmp_path_factory):
  directory = tmp_path_factory.mktemp("launch")
  config_file = directory / "demo_config.py"
  config_file.write_text(textwrap.dedent("""
      from attention_jax import training

      def get_config():
        config = training.default_training_config()
        config.num_steps = 3
        config.hidden = 16
        config.count_heaps = False
        return config
      """))
  path = directory / "demo.py"
  path.write_text(_SCRIPT.format(config_file=str(config_file)))
  return path


def _launch(script, *args, env=None):
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=ROOT, **(env or {}))
  return subprocess.run([sys.executable, str(script), *args], env=env, capture_output=True,
                        text=True, timeout=120, cwd=script.parent)


def _result(proc):
  assert proc.returncode == 0, proc.stderr[-3000:]
  lines = proc.stdout.splitlines()
  assert len(lines) == 1, proc.stdout
  return json.loads(lines[0])


def test_defaults_are_the_config_file_and_the_workdir_given(script):
  result = _result(_launch(script))
  mapped = result.pop("large_malloc_mapped")
  assert result == {"num_steps": 3, "hidden": 16, "workdir": "runs/demo",
                    "verbosity": converter.ABSL_WARNING, "tfds_progress_bar": False}
  # training.keep_freed_memory ran: a large block comes from the heap, kept after its free.
  assert mapped in (False, None)


def test_large_blocks_are_mapped_when_keep_freed_memory_is_off(script):
  # The control of the check above: glibc's default maps a 40 MiB block.
  proc = _launch(script, env={"ATTENTION_JAX_KEEP_FREED_MEMORY": "0"})
  assert _result(proc)["large_malloc_mapped"] in (True, None)


def test_the_config_puts_every_thread_on_one_malloc_heap_before_jax_starts(script):
  # config.single_malloc_arena is applied before validate starts JAX's worker threads.
  heaps = _result(_launch(script, "--config.count_heaps=True",
                          "--config.single_malloc_arena=True"))["heaps"]
  assert heaps in (1, None)
  control = _result(_launch(script, "--config.count_heaps=True"))["heaps"]
  assert control is None or control > 1


def test_flags_override_the_workdir_config_fields_and_verbosity(script, tmp_path):
  result = _result(_launch(script, f"--workdir={tmp_path}", "--config.num_steps=7",
                           "--config.hidden=32", "--verbosity=1"))
  assert (result["num_steps"], result["hidden"], result["workdir"]) == (7, 32, str(tmp_path))
  assert result["verbosity"] == 1


def test_a_stray_argument_is_a_usage_error(script):
  proc = _launch(script, "--config.num_steps=7", "extra")
  assert proc.returncode == 2
  assert proc.stdout == ""
  assert proc.stderr.startswith("error: unexpected arguments: ['extra']")
  assert len(proc.stderr.splitlines()) == 1


def test_an_unknown_flag_is_an_error(script):
  proc = _launch(script, "--num_stepz=7")
  assert proc.returncode == 2 and proc.stdout == ""
  assert proc.stderr == "error: Unknown command line flag 'num_stepz'\n"
