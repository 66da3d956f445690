"""jax.nn's signature on our op, and the options of today's models: sliding windows, packed
sequences (segment ids), logit soft-capping, the log-sum-exp residual; every path, values and
gradients, against jax.nn and a float64 reference."""

import inspect
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import reference_numpy
from attention_jax import ops
from attention_jax.ops import blockwise
from attention_jax.ops import spec as spec_lib


def _inputs(seed, batch, q_len, kv_len, heads, kv_heads, dim, dtype=jnp.float32):
  keys = jax.random.split(jax.random.key(seed), 4)
  q = jax.random.normal(keys[0], (batch, q_len, heads, dim), dtype)
  k = jax.random.normal(keys[1], (batch, kv_len, kv_heads, dim), dtype)
  v = jax.random.normal(keys[2], (batch, kv_len, kv_heads, dim), dtype)
  bias = jax.random.normal(keys[3], (batch, 1, q_len, kv_len), dtype)
  return q, k, v, bias


def test_every_jax_nn_keyword_is_accepted():
  ours = inspect.signature(ops.dot_product_attention).parameters
  theirs = inspect.signature(jax.nn.dot_product_attention).parameters
  assert list(theirs) == list(ours)[:len(theirs)], "jax.nn's arguments, in jax.nn's order"
  for name, parameter in theirs.items():
    assert ours[name].kind == parameter.kind, name
    assert ours[name].default == parameter.default, name


def _slow_unless(default: bool, *values):
  """A parametrize case, marked slow (``make test-all``) unless it is one of the default run's."""
  return pytest.param(*values, marks=() if default else pytest.mark.slow)


# A grid of jax.nn calls; causal and window only where q_len == kv_len: there the alignments
# agree (ours is bottom-right, jax.nn's top-left). The default run takes the grouped-query shape
# with implementation=None; make test-all the rest.
_GRID = [
    _slow_unless(shape[0] == 2 and shape[1] == 33 and implementation is None
                 and set(options) & {"is_causal", "local_window_size", "key_value_seq_lengths",
                                     "mask"}, shape, options, implementation)
    for shape, options, implementation in itertools.product(
        [(1, 16, 16, 4, 4), (2, 33, 33, 4, 2), (2, 12, 40, 8, 1)],   # (batch, T, S, N, K)
        [{}, {"is_causal": True}, {"local_window_size": 3}, {"local_window_size": (5, 0)},
         {"local_window_size": (2, 7), "is_causal": True}, {"scale": 0.3},
         {"key_value_seq_lengths": "lengths"}, {"query_seq_lengths": "lengths"}, {"bias": True},
         {"mask": True}],
        [None, "xla"])
    if shape[1] == shape[2] or not {"is_causal", "local_window_size"} & set(options)]


@pytest.mark.parametrize("shape,options,implementation", _GRID)
def test_a_jax_nn_call_runs_unchanged_and_agrees(shape, options, implementation):
  batch, q_len, kv_len, heads, kv_heads = shape
  q, k, v, bias = _inputs(0, batch, q_len, kv_len, heads, kv_heads, 16)
  kwargs = dict(options)
  if kwargs.pop("bias", False):
    kwargs["bias"] = bias
  if kwargs.pop("mask", False):
    kwargs["mask"] = jax.random.bernoulli(jax.random.key(5), 0.7, (batch, 1, q_len, kv_len))
    kwargs["mask"] = kwargs["mask"].at[..., 0].set(True)  # every row sees a key (jax.nn's
    # fully masked rows average the values; ours give zeros)
  for name in ("key_value_seq_lengths", "query_seq_lengths"):
    if name in kwargs:
      full = kv_len if name.startswith("key") else q_len
      kwargs[name] = jnp.array([full, max(1, full // 3)][:batch], jnp.int32)
  want, want_lse = jax.nn.dot_product_attention(q, k, v, implementation=implementation,
                                                return_residual=True, **kwargs)
  got, got_lse = ops.dot_product_attention(q, k, v, implementation=implementation,
                                           return_residual=True, **kwargs)
  flash, flash_lse = ops.dot_product_attention(
      q, k, v, implementation="flash", block_sizes=(8, 8), return_residual=True, **kwargs)
  valid = np.ones(want.shape[:3], bool)  # the queries jax.nn does not zero
  if "query_seq_lengths" in kwargs:
    lengths = np.asarray(kwargs["query_seq_lengths"])[:, None, None]
    valid = np.broadcast_to(np.arange(q_len)[None, :, None] < lengths, want.shape[:3])
  for out, lse in ((got, got_lse), (flash, flash_lse)):
    np.testing.assert_allclose(out, want, atol=2e-5)
    assert lse.shape == want_lse.shape and lse.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(lse)[valid], np.asarray(want_lse)[valid], atol=2e-5)


_OPTIONS = [
    dict(local_window_size=(6, 2)),
    dict(local_window_size=(5, 0), is_causal=True),
    dict(local_window_size=3, softcap=2.0),
    dict(softcap=1.5, is_causal=True),
    dict(segments=True),
    dict(segments=True, is_causal=True, local_window_size=(4, 0), softcap=3.0),
    dict(segments=True, key_value_seq_lengths=True, local_window_size=2),
]


def _resolve(options, q_len, kv_len, batch):
  kwargs = dict(options)
  if kwargs.pop("segments", False):
    kwargs["query_segment_ids"] = jnp.asarray(
        [[0] * (q_len // 3) + [1] * (q_len - q_len // 3), [7] * q_len][:batch], jnp.int32)
    kwargs["key_value_segment_ids"] = jnp.asarray(
        [[0] * (kv_len // 2) + [1] * (kv_len - kv_len // 2), [7] * kv_len][:batch], jnp.int32)
  if kwargs.pop("key_value_seq_lengths", False):
    kwargs["key_value_seq_lengths"] = jnp.asarray([kv_len, kv_len // 2][:batch], jnp.int32)
  return kwargs


_OPTION_IDS = [str(sorted(o)) for o in _OPTIONS]


@pytest.mark.parametrize("q_len,kv_len", [(29, 29), _slow_unless(False, 13, 40),
                                          _slow_unless(False, 40, 13)])
@pytest.mark.parametrize(
    "options", [_slow_unless(i in (1, 4, 5), o) for i, o in enumerate(_OPTIONS)], ids=_OPTION_IDS)
def test_options_match_the_float64_reference_on_every_path(q_len, kv_len, options):
  q, k, v, bias = _inputs(1, 2, q_len, kv_len, 4, 2, 8)
  kwargs = _resolve(options, q_len, kv_len, 2)
  want, _, want_lse = reference_numpy.attention(q, k, v, bias, return_lse=True, **kwargs)
  want_lse = np.swapaxes(np.where(np.isfinite(want_lse), want_lse, ops.EMPTY_ROW_LSE), -1, -2)
  for implementation, block_sizes in (("reference", None), ("flash", (8, 8)), ("flash", (16, 8)),
                                      (None, None)):
    out, lse = ops.dot_product_attention(q, k, v, bias, implementation=implementation,
                                         block_sizes=block_sizes, return_residual=True, **kwargs)
    np.testing.assert_allclose(out, want, atol=2e-5, err_msg=str(implementation))
    np.testing.assert_allclose(lse, want_lse, atol=2e-5, rtol=1e-6, err_msg=str(implementation))


@pytest.mark.parametrize("q_len,kv_len", [(29, 29), _slow_unless(False, 13, 40)])
@pytest.mark.parametrize(
    "options", [_slow_unless(i == 5, o) for i, o in enumerate(_OPTIONS)], ids=_OPTION_IDS)
def test_options_gradients_match_float64_autodiff(q_len, kv_len, options):
  """Every gradient (query, key, value, bias) of the blockwise path against autodiff of the
  reference path in float64."""
  with jax.enable_x64(True):
    q, k, v, bias = _inputs(2, 2, q_len, kv_len, 4, 2, 8, jnp.float64)
    kwargs = _resolve(options, q_len, kv_len, 2)

    def loss(implementation, dtype):
      def f(q, k, v, bias):
        args = (x.astype(dtype) for x in (q, k, v, bias))
        out = ops.dot_product_attention(*args, implementation=implementation,
                                        block_sizes=(8, 8) if implementation == "flash" else None,
                                        **kwargs)
        return jnp.sum(jnp.sin(out.astype(jnp.float64)))
      return jax.jit(jax.grad(f, argnums=(0, 1, 2, 3)))(q, k, v, bias)

    want = loss("reference", jnp.float64)
    got = loss("flash", jnp.float32)
    for name, g, w in zip(("query", "key", "value", "bias"), got, want):
      np.testing.assert_allclose(g, w, atol=2e-5, err_msg=name)


def test_blockwise_skips_key_blocks_no_query_segment_meets():
  """NaN in the values of key blocks whose segments no query of a block shares cannot reach that
  block's outputs or gradients: such blocks are skipped, not masked (0 * NaN would be NaN)."""
  q, k, v, _ = _inputs(6, 2, 32, 32, 4, 2, 8)
  segments = jnp.asarray([[1] * 8 + [2] * 8 + [9] * 16] * 2, jnp.int32)
  v = v.at[:, 16:].set(jnp.nan)

  def first_half(q, k, v):
    out = ops.dot_product_attention(q, k, v, implementation="flash", block_sizes=(8, 8),
                                    query_segment_ids=segments, key_value_segment_ids=segments)
    return out[:, :16]

  out, vjp = jax.vjp(first_half, q, k, v)
  dq, dk, _ = vjp(jnp.ones_like(out))
  assert bool(jnp.isfinite(out).all())
  assert bool(jnp.isfinite(dq[:, :16]).all()) and bool(jnp.isfinite(dk[:, :16]).all())
  want, _ = reference_numpy.attention(q[:, :16], k[:, :16], v[:, :16],
                                      query_segment_ids=segments[:, :16],
                                      key_value_segment_ids=segments[:, :16])
  np.testing.assert_allclose(out, want, atol=2e-5)


def test_bf16_bias_gradient_of_a_broadcast_bias_matches_jax_nn():
  """A bias broadcast over the key axis shifts every logit of a row equally: its exact gradient
  is 0. Checked in bfloat16 for the blockwise path against jax.nn."""
  q, k, v, _ = _inputs(3, 2, 64, 64, 4, 4, 16, jnp.bfloat16)
  bias = jnp.linspace(-1, 1, 4, dtype=jnp.bfloat16).reshape(4, 1, 1)

  def grad(fn):
    return jax.jit(jax.grad(lambda b: jnp.sum(fn(q, k, v, b).astype(jnp.float32) ** 2)))(bias)

  ours = grad(lambda *a: ops.dot_product_attention(*a, implementation="flash",
                                                   block_sizes=(16, 16), is_causal=True))
  theirs = grad(lambda *a: jax.nn.dot_product_attention(*a, is_causal=True))
  assert float(jnp.abs(ours.astype(jnp.float32)).max()) <= max(
      1e-3, 2 * float(jnp.abs(theirs.astype(jnp.float32)).max()))


@pytest.mark.parametrize("jit,implementation", [
    (False, "reference"), (True, "flash"), _slow_unless(False, True, "reference"),
    _slow_unless(False, False, "flash")])
def test_debug_infs_never_fires_with_the_new_options(jit, implementation):
  q, k, v, bias = _inputs(4, 2, 24, 24, 4, 2, 8)
  kwargs = _resolve(dict(segments=True, is_causal=True, local_window_size=(3, 0), softcap=2.0,
                         key_value_seq_lengths=True), 24, 24, 2)
  kwargs["query_seq_lengths"] = jnp.asarray([24, 5], jnp.int32)  # rows that see nothing

  def f(q, k, v, bias):
    out, lse = ops.dot_product_attention(q, k, v, bias, implementation=implementation,
                                         block_sizes=(8, 8) if implementation == "flash" else None,
                                         return_residual=True, **kwargs)
    return jnp.sum(out) + jnp.sum(jnp.where(lse > ops.EMPTY_ROW_LSE, lse, 0.0))

  fn = jax.jit(jax.value_and_grad(f, argnums=(0, 1, 2, 3))) if jit else jax.value_and_grad(
      f, argnums=(0, 1, 2, 3))
  with jax.debug_infs(True), jax.debug_nans(True):
    value, grads = fn(q, k, v, bias)
  assert np.isfinite(float(value)) and all(bool(jnp.isfinite(g).all()) for g in grads)


def test_a_query_that_sees_no_key_reports_the_empty_row_lse_and_zeros():
  q, k, v, _ = _inputs(5, 1, 8, 8, 2, 2, 4)
  seg = jnp.asarray([[0, 0, 1, 1, 2, 2, 3, 3]])
  kv_seg = jnp.asarray([[0, 0, 1, 1, 2, 2, 9, 9]])  # segment 3 has no keys
  for implementation in ("reference", "flash"):
    out, lse = ops.dot_product_attention(q, k, v, query_segment_ids=seg,
                                         key_value_segment_ids=kv_seg, return_residual=True,
                                         implementation=implementation)
    assert bool(jnp.all(out[0, 6:] == 0)) and bool(jnp.all(lse[0, 6:] == ops.EMPTY_ROW_LSE))
    assert bool(jnp.all(lse[0, :6] > -100))


def test_the_window_skips_the_blocks_it_hides():
  """Blockwise cost grows as length x window: a query block visits only the key blocks its
  rows' windows touch."""
  length, window, block = 16384, 512, 128
  spec = spec_lib.make_spec(scale=1.0, head_dim=64, is_causal=True,
                            local_window_size=(window, 0), block_sizes=(block, block))
  cfg = blockwise._Config(block, block, length, length, 1, *spec.band, None, 1.0, True, False,
                          False, False)
  num = length // block
  visited = []
  for qi in range(num):
    start, _, _, end = (int(x) for x in blockwise._kv_ranges(cfg, qi, num))
    visited.append(end - start)
    rows = np.arange(qi * block, (qi + 1) * block)
    needed = {c // block for r in rows[[0, -1]] for c in (max(r - window, 0), r)}
    assert start == min(needed) and end == max(needed) + 1
  assert max(visited) == window // block + 1
  for kj in range(num):  # the backward's view: which query blocks see key block kj
    start, _, _, end = (int(x) for x in blockwise._q_ranges(cfg, kj, num))
    assert end - start <= window // block + 1


@pytest.mark.parametrize("name,kwargs,error,match", [
    ("window", dict(local_window_size=-1), ValueError, r"local_window_size must be an int or a "
                                                       r"pair \(left, right\) of ints >= 0"),
    ("window pair", dict(local_window_size=(1, 2, 3)), ValueError, r"local_window_size must"),
    ("softcap", dict(softcap=0.0), ValueError, r"softcap must be a positive finite number"),
    ("segments dtype", dict(query_segment_ids=jnp.zeros((1, 8), jnp.float32)), TypeError,
     r"query_segment_ids must be integers"),
    ("segments shape", dict(query_segment_ids=jnp.zeros((1, 7), jnp.int32)), ValueError,
     r"query_segment_ids has shape \(1, 7\) but must be \(1, 8\)"),
    ("cross segments", dict(query_segment_ids=jnp.zeros((1, 8), jnp.int32), kv_len=5),
     ValueError, r"query_segment_ids and key_value_segment_ids are both needed"),
])
def test_bad_options_are_named(name, kwargs, error, match):
  kv_len = kwargs.pop("kv_len", 8)
  q, k, v, _ = _inputs(6, 1, 8, kv_len, 2, 2, 4)
  with pytest.raises(error, match=match):
    ops.dot_product_attention(q, k, v, **kwargs)


@pytest.mark.parametrize("implementation", ["reference", "flash"])
def test_traced_lengths_and_segments_under_jit(implementation):
  q, k, v, _ = _inputs(7, 2, 16, 16, 2, 2, 4)
  lengths = jnp.asarray([16, 9], jnp.int32)
  segments = jnp.asarray([[0] * 8 + [1] * 8, [3] * 16], jnp.int32)

  @jax.jit
  def attend(q, k, v, lengths, segments):
    return ops.dot_product_attention(q, k, v, query_seq_lengths=lengths,
                                     key_value_seq_lengths=lengths, query_segment_ids=segments,
                                     implementation=implementation)

  want, _ = reference_numpy.attention(q, k, v, query_seq_lengths=lengths,
                                      key_value_seq_lengths=lengths, query_segment_ids=segments)
  np.testing.assert_allclose(attend(q, k, v, lengths, segments), want, atol=2e-5)


def test_numpy_scalars_are_accepted_for_scale_and_softcap():
  q, k, v, _ = _inputs(8, 1, 8, 8, 2, 2, 4)
  want = ops.dot_product_attention(q, k, v, scale=0.5, softcap=2.0)
  got = ops.dot_product_attention(q, k, v, scale=np.float32(0.5), softcap=np.float64(2.0))
  np.testing.assert_allclose(got, want)
  with pytest.raises(ValueError, match="scale must be a finite real number, got True"):
    ops.dot_product_attention(q, k, v, scale=True)
