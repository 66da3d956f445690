"""Greedy and beam search over any autoregressive model, as pure JAX.

The model is seen only through two closures (the *state/step contract*):

  ``init_fn() -> state``
      the decoder state before the first token: a pytree whose every leaf has a leading batch
      axis of size ``batch_size`` (a model's encoder memory may live in it too).
  ``step_fn(state, tokens int[batch]) -> (logits [batch, vocab], new_state, extras)``
      one step: ``tokens`` are the previous tokens (``bos_id`` at the first step); ``extras`` is
      any pytree with leading batch axis (e.g. attention weights ``[batch, src_len]``), or ``None``.

Both functions are traced once into a ``jax.lax.while_loop`` that stops as soon as every sequence
(beam) has emitted ``eos_id``; wrap the caller in ``jax.jit`` to compile the whole search.
Outputs hold the generated tokens only (no BOS), the EOS included, then ``pad_id``.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp

Array = jax.Array
StepFn = Callable[[Any, Array], tuple[Array, Any, Any]]


def gnmt_length_penalty(length, alpha: float) -> Array:
  """GNMT's length penalty ``((5 + length) / 6) ** alpha`` (Wu et al. 2016, eq. 14).

  A hypothesis' score is ``log P(y) / gnmt_length_penalty(|y|, alpha)`` where ``|y|`` counts the
  generated tokens including EOS; ``alpha = 0`` ranks by raw log-probability.
  """
  return ((5.0 + jnp.asarray(length, jnp.float32)) / 6.0) ** alpha


def _check_args(batch_size: int, max_len: int, beam_size: int = 1) -> None:
  for name, value in (("batch_size", batch_size), ("max_len", max_len), ("beam_size", beam_size)):
    if not isinstance(value, int) or value < 1:
      raise ValueError(f"{name} must be a positive Python int (it fixes shapes), got {value!r}")


def _check_state(state, batch_size: int, what: str) -> None:
  for path, leaf in jax.tree_util.tree_leaves_with_path(state):
    shape = jnp.shape(leaf)
    if not shape or shape[0] != batch_size:
      raise ValueError(
          f"every leaf of {what} needs a leading batch axis of size {batch_size}; "
          f"{jax.tree_util.keystr(path) or 'the leaf'} has shape {shape}")


def _check_step_output(out_shapes, leading: int, what: str) -> None:
  if not isinstance(out_shapes, tuple) or len(out_shapes) != 3:
    raise ValueError(f"step_fn must return (logits, new_state, extras), got {out_shapes}")
  logits = out_shapes[0]
  if logits.ndim != 2 or logits.shape[0] != leading:
    raise ValueError(f"step_fn must return logits [{what}={leading}, vocab], got {logits.shape}")
  _check_state(out_shapes[2], leading, "the extras returned by step_fn")


def _zeros_history(extras_shapes, leading: tuple[int, ...], max_len: int):
  """Per-step buffers ``[*leading, max_len, *extra_shape]`` for extras of shape ``[n, ...]``."""
  return jax.tree.map(
      lambda s: jnp.zeros((*leading, max_len, *s.shape[1:]), s.dtype), extras_shapes)


def _where_rows(keep, x, fill=0):
  """``x`` where ``keep`` (bool over the leading axes of ``x``), else ``fill``."""
  keep = keep.reshape(keep.shape + (1,) * (x.ndim - keep.ndim))
  return jnp.where(keep, x, jnp.asarray(fill, x.dtype))


def greedy_decode(init_fn: Callable[[], Any], step_fn: StepFn, batch_size: int, max_len: int,
                  bos_id: int, eos_id: int, pad_id: int = 0):
  """Greedy (argmax) decoding.

  Args:
    init_fn: ``() -> state`` (see the module docstring).
    step_fn: ``(state, tokens [batch]) -> (logits [batch, vocab], new_state, extras)``.
    batch_size: static batch size of the state.
    max_len: static maximal number of generated tokens.
    bos_id: the token fed at the first step.
    eos_id: ends a sequence; later positions hold ``pad_id``.
    pad_id: fills the positions after EOS.

  Returns:
    ``(tokens int32 [batch, max_len], extras [batch, max_len, ...])``; the extras of the positions
    after EOS (and of the steps never run once all sequences ended) are zeros.
  """
  _check_args(batch_size, max_len)
  state = init_fn()
  _check_state(state, batch_size, "the state from init_fn")
  first = jnp.full((batch_size,), bos_id, jnp.int32)
  out_shapes = jax.eval_shape(step_fn, state, first)
  _check_step_output(out_shapes, batch_size, "batch")

  def cond(carry):
    t, _, _, done, _, _ = carry
    return (t < max_len) & ~jnp.all(done)

  def body(carry):
    t, state, last, done, tokens, history = carry
    logits, state, extras = step_fn(state, last)
    chosen = jnp.argmax(logits, axis=-1).astype(jnp.int32)
    chosen = jnp.where(done, pad_id, chosen)
    tokens = tokens.at[:, t].set(chosen)
    history = jax.tree.map(
        lambda h, e: h.at[:, t].set(_where_rows(~done, e)), history, extras)
    return t + 1, state, chosen, done | (chosen == eos_id), tokens, history

  tokens = jnp.full((batch_size, max_len), pad_id, jnp.int32)
  history = _zeros_history(out_shapes[2], (batch_size,), max_len)
  done = jnp.zeros((batch_size,), bool)
  carry = (jnp.int32(0), state, first, done, tokens, history)
  _, _, _, _, tokens, history = jax.lax.while_loop(cond, body, carry)
  return tokens, history


def expand_to_beams(tree, beam_size: int):
  """Repeats every leaf's leading batch axis ``beam_size`` times: ``[b, ...] -> [b * beam, ...]``
  (batch-major, row ``b * beam + k`` is beam ``k`` of example ``b``)."""
  return jax.tree.map(lambda x: jnp.repeat(x, beam_size, axis=0), tree)


def _gather_beams(tree, flat_parents):
  return jax.tree.map(lambda x: jnp.take(x, flat_parents, axis=0), tree)


def beam_search(init_fn: Callable[[], Any], step_fn: StepFn, batch_size: int, beam_size: int,
                max_len: int, bos_id: int, eos_id: int, length_penalty: float = 0.6,
                pad_id: int = 0, return_all_beams: bool = False):
  """Beam search with GNMT length normalisation.

  Every beam is a hypothesis, alive or finished. At each step the candidates are every extension
  of every alive beam (scored ``log P / gnmt_length_penalty(t + 1)``) and every finished beam
  unchanged (its score frozen at ``log P / gnmt_length_penalty(its length)``); the ``beam_size``
  best candidates become the new beams, and the states and histories are gathered from their
  parent beams. Finished hypotheses thus compete by length-normalised score with alive ones, and
  ``beam_size=1`` is exactly greedy decoding. The loop stops when every beam has finished.

  Args:
    init_fn: ``() -> state`` with leading batch axis ``batch_size`` (expanded to
      ``batch_size * beam_size`` rows, batch-major, before the first step).
    step_fn: ``(state, tokens [batch*beam]) -> (logits [batch*beam, vocab], new_state, extras)``.
    batch_size, beam_size, max_len: static ints.
    bos_id, eos_id, pad_id: as in :func:`greedy_decode`.
    length_penalty: GNMT's ``alpha`` (0.6 in Wu et al. 2016 and Vaswani et al. 2017); 0 ranks by
      raw log-probability.
    return_all_beams: return every beam, best first, instead of the best one.

  Returns:
    ``(tokens int32 [batch, max_len], scores float32 [batch], extras [batch, max_len, ...])``, or
    with ``return_all_beams`` the same with a beam axis after the batch axis. ``scores`` are the
    length-normalised log-probabilities (``-inf`` for a beam that has no valid hypothesis, which
    happens only when ``vocab < beam_size``).
  """
  _check_args(batch_size, max_len, beam_size)
  state = init_fn()
  _check_state(state, batch_size, "the state from init_fn")
  rows = batch_size * beam_size
  state = expand_to_beams(state, beam_size)
  first = jnp.full((rows,), bos_id, jnp.int32)
  out_shapes = jax.eval_shape(step_fn, state, first)
  _check_step_output(out_shapes, rows, "batch*beam")
  vocab = out_shapes[0].shape[-1]
  batch_offsets = (jnp.arange(batch_size) * beam_size)[:, None]

  def cond(carry):
    t, finished = carry[0], carry[3]
    return (t < max_len) & ~jnp.all(finished)

  def body(carry):
    t, state, log_probs, finished, lengths, scores, tokens, history = carry
    last = jnp.where(t == 0, bos_id, tokens[:, :, jnp.maximum(t - 1, 0)]).reshape(rows)
    logits, new_state, extras = step_fn(state, last)
    step_log_probs = jax.nn.log_softmax(logits.astype(jnp.float32)).reshape(
        batch_size, beam_size, vocab)

    extended = log_probs[..., None] + step_log_probs
    # A finished beam has one candidate, itself (written as pad_id), with unchanged log P.
    kept = jnp.full((vocab,), -jnp.inf).at[pad_id].set(0.0)
    candidates = jnp.where(finished[..., None], log_probs[..., None] + kept, extended)
    candidate_lengths = jnp.where(finished, lengths, t + 1)[..., None]
    candidate_scores = candidates / gnmt_length_penalty(candidate_lengths, length_penalty)

    scores, flat = jax.lax.top_k(candidate_scores.reshape(batch_size, -1), beam_size)
    parents, chosen = flat // vocab, (flat % vocab).astype(jnp.int32)
    parent_finished = jnp.take_along_axis(finished, parents, axis=1)
    log_probs = jnp.take_along_axis(candidates.reshape(batch_size, -1), flat, axis=1)
    lengths = jnp.where(parent_finished, jnp.take_along_axis(lengths, parents, axis=1), t + 1)
    chosen = jnp.where(parent_finished, pad_id, chosen)
    # A -inf beam (only when vocab < beam_size) can never win: retire it so the loop can stop.
    finished = parent_finished | (chosen == eos_id) | jnp.isneginf(log_probs)

    tokens = jnp.take_along_axis(tokens, parents[..., None], axis=1).at[:, :, t].set(chosen)
    flat_parents = (batch_offsets + parents).reshape(rows)
    state = _gather_beams(new_state, flat_parents)
    extras = _gather_beams(extras, flat_parents)
    keep = ~parent_finished.reshape(rows)
    history = jax.tree.map(
        lambda h, e: _gather_beams(h, flat_parents).at[:, t].set(_where_rows(keep, e)),
        history, extras)
    return t + 1, state, log_probs, finished, lengths, scores, tokens, history

  # Beams 1.. start at -inf so the first step expands beam 0 alone (no duplicate hypotheses).
  log_probs = jnp.tile(jnp.where(jnp.arange(beam_size) == 0, 0.0, -jnp.inf), (batch_size, 1))
  carry = (
      jnp.int32(0),
      state,
      log_probs,
      jnp.zeros((batch_size, beam_size), bool),
      jnp.zeros((batch_size, beam_size), jnp.int32),
      log_probs,
      jnp.full((batch_size, beam_size, max_len), pad_id, jnp.int32),
      _zeros_history(out_shapes[2], (rows,), max_len),
  )
  carry = jax.lax.while_loop(cond, body, carry)
  scores, tokens, history = carry[5], carry[6], carry[7]
  history = jax.tree.map(lambda h: h.reshape(batch_size, beam_size, *h.shape[1:]), history)
  if return_all_beams:
    return tokens, scores, history
  # top_k sorts the beams by score at every step, so beam 0 is the best.
  return tokens[:, 0], scores[:, 0], jax.tree.map(lambda h: h[:, 0], history)
