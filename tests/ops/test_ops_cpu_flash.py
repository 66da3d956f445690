"""The native CPU flash kernel (``implementation="cpu_flash"``) against a float64 NumPy version of
the equations (values) and float64 autodiff of the reference path (gradients), on every mask kind
it takes; its fallback when it was not built; its build without a compiler."""

import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from attention_jax import ops
from attention_jax.ops import attention as attention_lib
from attention_jax.ops import cpu_flash
from tests.ops import reference_numpy

pytestmark = pytest.mark.skipif(not cpu_flash.available(),
                                reason=f"native kernel not built: {cpu_flash.unavailable_reason()}")

ROOT = pathlib.Path(__file__).resolve().parents[2]


def _inputs(seed, batch, q_len, kv_len, heads, kv_heads, dim, v_dim=None, dtype=jnp.float32):
  rng = np.random.default_rng(seed)
  v_dim = v_dim or dim
  q = rng.normal(size=(*batch, q_len, heads, dim))
  k = rng.normal(size=(*batch, kv_len, kv_heads, dim))
  v = rng.normal(size=(*batch, kv_len, kv_heads, v_dim))
  return tuple(jnp.asarray(x, dtype) for x in (q, k, v))


def _segments(batch, length, seed):
  """Sorted ids with runs of random lengths (packed sequences), one row per batch entry."""
  rng = np.random.default_rng(seed)
  rows = [np.sort(rng.integers(0, 4, length)) for _ in range(int(np.prod(batch)))]
  return jnp.asarray(np.reshape(rows, (*batch, length)), jnp.int32)


# (batch, q_len, kv_len, heads, kv_heads, dim, v_dim, options): lengths that are not multiples of
# the kernel's 16-key panels, 64-query and 256-key blocks (300 keys: two key blocks, a partial
# one), GQA and MQA, v_dim != head_dim, q_len != kv_len (bottom-right alignment), and each mask
# kind alone and together.
CASES = {
    "plain": ((2,), 300, 300, 4, 4, 16, 16, {}),
    "causal": ((2,), 300, 300, 4, 2, 16, 16, dict(is_causal=True)),
    "window": ((1,), 300, 300, 2, 2, 8, 8, dict(local_window_size=(40, 7))),
    "causal_window": ((1,), 300, 300, 2, 1, 8, 8, dict(is_causal=True, local_window_size=33)),
    "softcap": ((2,), 70, 90, 4, 2, 16, 24, dict(softcap=1.5)),
    "segments": ((2,), 290, 290, 2, 2, 8, 8, dict(segments=True)),
    "lengths": ((2,), 100, 300, 2, 2, 8, 8, dict(lengths=True)),
    "cross_causal": ((1,), 37, 300, 4, 1, 16, 8, dict(is_causal=True)),
    "more_queries_than_keys": ((1,), 150, 40, 2, 2, 8, 8, dict(is_causal=True)),
    "everything": ((2, 1), 130, 270, 4, 2, 8, 12,
                   dict(is_causal=True, local_window_size=(90, 0), softcap=3.0, segments=True,
                        lengths=True)),
}


def _kwargs(options, batch, q_len, kv_len):
  kwargs = dict(options)
  if kwargs.pop("segments", False):
    kwargs["query_segment_ids"] = _segments(batch, q_len, 1)
    kwargs["key_value_segment_ids"] = (_segments(batch, kv_len, 1) if q_len == kv_len
                                       else _segments(batch, kv_len, 2))
  if kwargs.pop("lengths", False):
    n = int(np.prod(batch))
    kwargs["query_seq_lengths"] = jnp.asarray(
        np.reshape([q_len - 9, 3][:n] if n > 1 else [q_len - 9], batch), jnp.int32)
    kwargs["key_value_seq_lengths"] = jnp.asarray(
        np.reshape([kv_len - 41, 0][:n] if n > 1 else [kv_len - 41], batch), jnp.int32)
  return kwargs


@pytest.mark.parametrize("case", list(CASES))
def test_values_and_lse_match_float64_numpy(case):
  batch, q_len, kv_len, heads, kv_heads, dim, v_dim, options = CASES[case]
  q, k, v = _inputs(0, batch, q_len, kv_len, heads, kv_heads, dim, v_dim)
  kwargs = _kwargs(options, batch, q_len, kv_len)
  want, _, want_lse = reference_numpy.attention(q, k, v, return_lse=True, **kwargs)
  want_lse = np.swapaxes(np.where(np.isfinite(want_lse), want_lse, ops.EMPTY_ROW_LSE), -1, -2)
  out, lse = jax.jit(lambda q, k, v: ops.dot_product_attention(
      q, k, v, implementation="cpu_flash", return_residual=True, **kwargs))(q, k, v)
  np.testing.assert_allclose(out, want, atol=2e-5)
  np.testing.assert_allclose(lse, want_lse, atol=2e-5, rtol=1e-6)


@pytest.mark.parametrize("case", ["causal", "window", "softcap", "segments", "lengths",
                                  "cross_causal", "more_queries_than_keys", "everything"])
def test_gradients_match_float64_autodiff_of_the_reference(case):
  batch, q_len, kv_len, heads, kv_heads, dim, v_dim, options = CASES[case]
  kwargs = _kwargs(options, batch, q_len, kv_len)
  with jax.enable_x64(True):
    q, k, v = _inputs(3, batch, q_len, kv_len, heads, kv_heads, dim, v_dim, jnp.float64)

    def gradients(implementation, dtype):
      def loss(q, k, v):
        out = ops.dot_product_attention(q.astype(dtype), k.astype(dtype), v.astype(dtype),
                                        implementation=implementation, **kwargs)
        return jnp.sum(jnp.sin(out.astype(jnp.float64)))
      return jax.jit(jax.grad(loss, argnums=(0, 1, 2)))(q, k, v)

    want = gradients("reference", jnp.float64)
    got = gradients("cpu_flash", jnp.float32)
  for name, g, w in zip(("query", "key", "value"), got, want):
    np.testing.assert_allclose(g, w, atol=3e-5, err_msg=name)


def test_rows_that_see_no_key_give_zeros_and_zero_gradients():
  q, k, v = _inputs(4, (2,), 80, 80, 2, 2, 8)
  lengths = jnp.asarray([0, 50], jnp.int32)  # row 0: no key at all; row 1: queries >= 50 none
  kwargs = dict(key_value_seq_lengths=lengths, query_seq_lengths=jnp.asarray([80, 50]))

  def f(q, k, v):
    return ops.dot_product_attention(q, k, v, implementation="cpu_flash", return_residual=True,
                                     **kwargs)

  (out, lse), vjp = jax.vjp(f, q, k, v)
  dq, dk, dv = vjp((jnp.ones_like(out), jnp.zeros_like(lse)))
  assert float(jnp.abs(out[0]).max()) == 0.0 and float(jnp.abs(out[1, 50:]).max()) == 0.0
  assert bool((lse[0] == ops.EMPTY_ROW_LSE).all()) and bool((lse[1, :, 50:] == ops.EMPTY_ROW_LSE).all())
  assert float(jnp.abs(dq[0]).max()) == 0.0 and float(jnp.abs(dq[1, 50:]).max()) == 0.0
  assert float(jnp.abs(dk[1, 50:]).max()) == 0.0 and float(jnp.abs(dv[0]).max()) == 0.0
  assert bool(jnp.isfinite(dq).all() & jnp.isfinite(dk).all() & jnp.isfinite(dv).all())


def test_vmap_matches_the_batched_call():
  q, k, v = _inputs(5, (3, 2), 40, 40, 2, 1, 8)
  seg = _segments((3, 2), 40, 6)
  f = lambda q, k, v, s: ops.dot_product_attention(  # noqa: E731
      q, k, v, is_causal=True, query_segment_ids=s, implementation="cpu_flash")
  batched = f(q, k, v, seg)
  mapped = jax.vmap(f)(q, k, v, seg)
  np.testing.assert_allclose(mapped, batched, atol=1e-6)
  g_batched = jax.grad(lambda q: jnp.sum(f(q, k, v, seg) ** 2))(q)
  g_mapped = jax.grad(lambda q: jnp.sum(jax.vmap(f)(q, k, v, seg) ** 2))(q)
  np.testing.assert_allclose(g_mapped, g_batched, atol=1e-5)


def test_second_derivatives_match_the_reference_path():
  q, k, v = _inputs(7, (1,), 24, 24, 2, 1, 8)

  def hessian_vector(implementation):
    def loss(q):
      return jnp.sum(jnp.tanh(ops.dot_product_attention(
          q, k, v, is_causal=True, softcap=2.0, implementation=implementation)))
    forward_over_reverse = jax.jvp(jax.grad(loss), (q,), (jnp.ones_like(q),))[1]
    reverse_over_reverse = jax.grad(lambda q: jnp.sum(jax.grad(loss)(q) ** 2))(q)
    return forward_over_reverse, reverse_over_reverse

  for got, want in zip(jax.jit(hessian_vector, static_argnums=0)("cpu_flash"),
                       jax.jit(hessian_vector, static_argnums=0)("reference")):
    np.testing.assert_allclose(got, want, atol=2e-5, rtol=1e-4)


def test_default_path_on_cpu_is_the_kernel_where_it_applies():
  q, k, v = _inputs(8, (1,), 512, 512, 2, 2, 16)
  spec = ops.make_spec(scale=None, head_dim=16, is_causal=True)
  path = attention_lib._choose_path(spec, q, k, v, None, None, None, (None, None), False)
  assert path == "cpu_flash"
  bf16 = q.astype(jnp.bfloat16)
  assert attention_lib._choose_path(spec, bf16, bf16, bf16, None, None, None, (None, None),
                                    False) != "cpu_flash"
  mask = jnp.ones((512, 512), bool)
  assert attention_lib._choose_path(spec, q, k, v, None, mask, None, (None, None),
                                    False) != "cpu_flash"


def test_unsupported_calls_get_a_one_line_error():
  q, k, v = _inputs(9, (1,), 16, 16, 2, 2, 8)
  with pytest.raises(ValueError, match=r"^implementation='cpu_flash' needs float32") as error:
    ops.dot_product_attention(q.astype(jnp.bfloat16), k.astype(jnp.bfloat16),
                              v.astype(jnp.bfloat16), implementation="cpu_flash")
  assert "\n" not in str(error.value)
  with pytest.raises(ValueError, match="cpu_flash"):
    ops.dot_product_attention(q, k, v, mask=jnp.ones((16, 16), bool), implementation="cpu_flash")


def test_without_the_library_the_default_path_falls_back_and_explicit_use_says_why(monkeypatch):
  monkeypatch.setattr(cpu_flash, "_find_library", lambda: None)
  cpu_flash._load.cache_clear()
  try:
    assert not cpu_flash.available()
    q, k, v = _inputs(10, (1,), 512, 512, 2, 2, 16)
    spec = ops.make_spec(scale=None, head_dim=16, is_causal=True)
    assert attention_lib._choose_path(spec, q, k, v, None, None, None, (None, None),
                                      False) == "flash"
    out = ops.dot_product_attention(q, k, v, is_causal=True)
    want, _ = reference_numpy.attention(q, k, v, is_causal=True)
    np.testing.assert_allclose(out, want, atol=2e-5)
    with pytest.raises(ValueError, match=r"^implementation='cpu_flash' is unavailable: the native"):
      ops.dot_product_attention(q, k, v, implementation="cpu_flash")
  finally:
    monkeypatch.undo()
    cpu_flash._load.cache_clear()  # the real library registers again (idempotent)
  assert cpu_flash.available()


def test_the_build_without_a_compiler_skips_the_kernel_with_a_warning(tmp_path):
  """``setup.py`` marks the kernel optional: a machine without a working C++ compiler still
  installs the package (and then uses the pure-JAX paths)."""
  env = dict(os.environ, CC="false", CXX="false", LDSHARED="false")
  result = subprocess.run(
      [sys.executable, "setup.py", "build_ext", "--build-lib", str(tmp_path / "lib"),
       "--build-temp", str(tmp_path / "tmp")],
      cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
  assert result.returncode == 0, result.stderr[-2000:]
  assert "_flash_attention_cpu" in result.stdout + result.stderr
  assert not list((tmp_path / "lib").rglob("_flash_attention_cpu*"))


def _cpu_has_avx512() -> bool:
  try:
    with open("/proc/cpuinfo") as f:
      return " avx512f" in f.read()
  except OSError:
    return False


@pytest.mark.slow  # a build of the kernel (~1 min) and this file's tests against it
@pytest.mark.skipif(not _cpu_has_avx512(), reason="the default build already is the AVX2 one")
def test_the_avx2_tile_passes_these_tests_on_an_avx512_machine(tmp_path):
  """``-march=native`` gives this machine the AVX-512 tile; the AVX2-only machines build the
  other one, which these tests check here through a build without AVX-512."""
  env = dict(os.environ, ATTENTION_JAX_KERNEL_FLAGS="-mno-avx512f")
  build = subprocess.run(
      [sys.executable, "setup.py", "build_ext", "--build-lib", str(tmp_path / "lib"),
       "--build-temp", str(tmp_path / "tmp")],
      cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
  assert build.returncode == 0, build.stderr[-2000:]
  (library,) = (tmp_path / "lib").rglob("_flash_attention_cpu*")
  disassembly = subprocess.run(["objdump", "-d", str(library)], capture_output=True, text=True)
  if disassembly.returncode == 0:
    assert "zmm" not in disassembly.stdout
  env = dict(os.environ, **{cpu_flash.LIBRARY_ENV: str(library), "JAX_PLATFORMS": "cpu"})
  tests = subprocess.run(
      [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__, "-k",
       "not avx2_tile and not without_a_compiler"],
      cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
  assert tests.returncode == 0, tests.stdout[-3000:]
  assert " passed" in tests.stdout
