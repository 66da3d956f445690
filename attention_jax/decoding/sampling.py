"""Ancestral sampling with temperature, top-k and top-p (nucleus) filtering, as pure JAX.

Uses the ``(init_fn, step_fn)`` contract of :mod:`attention_jax.decoding.search`; the step is
traced once into a ``jax.lax.while_loop`` (wrap the caller in ``jax.jit``).
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp

from attention_jax.decoding import search

Array = jax.Array


def _check_filters(temperature: float, top_k: int | None, top_p: float | None) -> None:
  if temperature < 0:
    raise ValueError(f"temperature must be >= 0 (0 = greedy), got {temperature}")
  if top_k is not None and (not isinstance(top_k, int) or top_k < 1):
    raise ValueError(f"top_k must be a positive int or None, got {top_k!r}")
  if top_p is not None and not 0.0 < top_p <= 1.0:
    raise ValueError(f"top_p must lie in (0, 1] or be None, got {top_p}")


def filter_logits(logits, top_k: int | None = None, top_p: float | None = None) -> Array:
  """Sets to ``-inf`` the logits outside the ``top_k`` largest and outside the smallest set of
  largest tokens whose probability reaches ``top_p`` (the most likely token always stays).

  Args:
    logits: ``[batch..., vocab]``.
    top_k, top_p: the filters, ``None`` = off.

  Returns:
    float32 ``[batch..., vocab]``.
  """
  _check_filters(0.0, top_k, top_p)
  logits = jnp.asarray(logits, jnp.float32)
  if top_k is not None and top_k < logits.shape[-1]:
    kth = jax.lax.top_k(logits, top_k)[0][..., -1:]
    logits = jnp.where(logits < kth, -jnp.inf, logits)
  if top_p is not None and top_p < 1.0:
    sorted_logits = -jnp.sort(-logits, axis=-1)
    probs = jax.nn.softmax(sorted_logits, axis=-1)
    # Keep a token if the mass strictly before it is below top_p.
    before = jnp.cumsum(probs, axis=-1) - probs
    cutoff = jnp.min(jnp.where(before < top_p, sorted_logits, jnp.inf), axis=-1, keepdims=True)
    logits = jnp.where(logits < cutoff, -jnp.inf, logits)
  return logits


def sample_logits(rng, logits, temperature: float = 1.0, top_k: int | None = None,
                  top_p: float | None = None) -> Array:
  """One token per row of ``logits [batch..., vocab]`` -> int32 ``[batch...]``;
  ``temperature=0`` is the argmax."""
  _check_filters(temperature, top_k, top_p)
  if temperature == 0:
    return jnp.argmax(logits, axis=-1).astype(jnp.int32)
  logits = filter_logits(jnp.asarray(logits, jnp.float32) / temperature, top_k, top_p)
  return jax.random.categorical(rng, logits, axis=-1).astype(jnp.int32)


def sample(init_fn: Callable[[], Any], step_fn: search.StepFn, rng, batch_size: int,
           max_len: int, bos_id: int, eos_id: int, temperature: float = 1.0,
           top_k: int | None = None, top_p: float | None = None, pad_id: int = 0):
  """Sampling decoding; with ``temperature=0`` exactly :func:`search.greedy_decode`.

  Args:
    init_fn: ``() -> state`` (leading batch axis on every leaf).
    step_fn: ``(state, tokens [batch]) -> (logits [batch, vocab], new_state, extras)``.
    rng: a PRNG key; step ``t`` uses ``fold_in(rng, t)``.
    batch_size, max_len: static ints (``max_len`` generated tokens at most).
    bos_id: token fed at the first step; eos_id: ends a sequence (``-1``: never);
      pad_id: fills the positions after EOS.
    temperature, top_k, top_p: see :func:`sample_logits` and :func:`filter_logits`.

  Returns:
    ``(tokens int32 [batch, max_len], extras [batch, max_len, ...])`` as in ``greedy_decode``.
  """
  _check_filters(temperature, top_k, top_p)
  if temperature == 0:
    return search.greedy_decode(init_fn, step_fn, batch_size, max_len, bos_id, eos_id, pad_id)

  def wrapped_init():
    return init_fn(), jnp.zeros((batch_size,), jnp.int32)

  def wrapped_step(state, tokens):
    inner, t = state
    logits, inner, extras = step_fn(inner, tokens)
    key = jax.random.fold_in(rng, t[0])
    chosen = sample_logits(key, logits, temperature, top_k, top_p)
    # greedy_decode takes the argmax of what we return: a one-hot of the sampled token.
    one_hot = jnp.where(jax.nn.one_hot(chosen, logits.shape[-1], dtype=bool), 0.0, -jnp.inf)
    return one_hot, (inner, t + 1), extras

  return search.greedy_decode(wrapped_init, wrapped_step, batch_size, max_len, bos_id, eos_id,
                              pad_id)
