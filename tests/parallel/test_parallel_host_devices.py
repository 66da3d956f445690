"""``--host_devices`` / ``parallel.use_host_devices``: the CPU split into N XLA host devices (a
fresh process: the count must be set before JAX starts), and the one-line refusals."""

import os
import subprocess
import sys

import jax
import pytest

from attention_jax import parallel

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _run(code: str, **env) -> subprocess.CompletedProcess:
  environ = {k: v for k, v in os.environ.items() if k != parallel.distributed.ENV_HOST_DEVICES}
  return subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                        timeout=300, env={**environ, **env})


def test_a_fresh_process_gets_the_devices_and_keeps_other_xla_flags():
  result = _run("from attention_jax import parallel; import os, jax; "
                "print(parallel.use_host_devices(), parallel.use_host_devices(3), "
                "jax.device_count(), os.environ['XLA_FLAGS'])",
                XLA_FLAGS="--xla_force_host_platform_device_count=8 --xla_cpu_enable_fast_math=false")
  assert result.returncode == 0, result.stderr
  unset, done, count, *flags = result.stdout.split()
  assert (unset, done, count) == ("False", "True", "3")  # nothing asked: nothing set
  assert flags == ["--xla_cpu_enable_fast_math=false",  # the earlier count replaced, not doubled
                   "--xla_force_host_platform_device_count=3"]


def test_the_environment_variable():
  result = _run("from attention_jax import parallel; import jax; "
                "print(parallel.use_host_devices(), jax.device_count())",
                ATTENTION_JAX_HOST_DEVICES="2")
  assert result.stdout.split() == ["True", "2"], result.stderr


def test_refused_in_one_line_when_jax_has_started_or_the_count_is_not_positive():
  jax.devices()  # this test process has started JAX
  with pytest.raises(ValueError, match=r"--host_devices=2 must be set before JAX starts"):
    parallel.use_host_devices(2)
  with pytest.raises(ValueError, match=r"--host_devices must be >= 1, got 0"):
    parallel.use_host_devices(0)
  result = subprocess.run([sys.executable, "-m", "experiments.transformer_lm",
                           "--config=experiments/transformer_lm/config.py:tiny",
                           "--host_devices=0", "--workdir=/nonexistent/never-written"],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
  assert result.returncode == 2
  assert result.stderr.strip() == "error: --host_devices must be >= 1, got 0"
