"""Builds the optional native CPU attention kernel (attention_jax/ops/cpu_kernels/).

Everything else about the package is in setup.cfg. The kernel is a C++ file that includes the XLA
FFI headers shipped with jaxlib, so it is built where jaxlib is importable (`make install` runs
`pip install --no-build-isolation -e .` in the locked venv). Without a C++ compiler or without
jaxlib the extension is skipped with a warning and the pure-JAX paths are used
(`attention_jax.ops.cpu_flash.available()` says which).
"""

import importlib.util
import os
import pathlib
import platform
import sys

from setuptools import Extension
from setuptools import setup
from setuptools.command.build_ext import build_ext


def _jaxlib_include() -> str | None:
  spec = importlib.util.find_spec("jaxlib")
  if spec is None or not spec.submodule_search_locations:
    return None
  include = pathlib.Path(next(iter(spec.submodule_search_locations))) / "include"
  return str(include) if (include / "xla" / "ffi" / "api" / "ffi.h").exists() else None


class OptionalBuildExt(build_ext):
  """Skips the kernel, with one warning, when it cannot be built here."""

  def run(self):
    if _jaxlib_include() is None:
      print("warning: jaxlib (with its XLA FFI headers) is not importable at build time: the "
            "native CPU attention kernel is not built; install with "
            "`pip install --no-build-isolation -e .` in an environment that has jax",
            file=sys.stderr)
      return
    for extension in self.extensions:
      extension.include_dirs.append(_jaxlib_include())
    super().run()


def _compile_args() -> list[str]:
  args = ["-O3", "-std=c++17", "-Wno-attributes"]
  if platform.machine().lower() in ("x86_64", "amd64"):
    args.append("-march=native")  # AVX2 / FMA (and AVX-512) micro-kernels where this CPU has them
  # Appended last, so they win: e.g. "-march=x86-64-v3" for a cluster of mixed CPUs, or
  # "-mno-avx512f" for the AVX2 tile on an AVX-512 machine (its tests build it so).
  args += os.environ.get("ATTENTION_JAX_KERNEL_FLAGS", "").split()
  return args


setup(
    ext_modules=[
        Extension(
            "attention_jax.ops._flash_attention_cpu",
            sources=["attention_jax/ops/cpu_kernels/flash_attention.cc"],
            language="c++",
            extra_compile_args=_compile_args(),
            optional=True,
        )
    ],
    cmdclass={"build_ext": OptionalBuildExt},
)
