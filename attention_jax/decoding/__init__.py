"""Model-agnostic decoding: greedy and beam search over an ``(init_fn, step_fn)`` pair."""

from attention_jax.decoding.search import beam_search
from attention_jax.decoding.search import expand_to_beams
from attention_jax.decoding.search import gnmt_length_penalty
from attention_jax.decoding.search import greedy_decode

__all__ = [
    "beam_search",
    "expand_to_beams",
    "gnmt_length_penalty",
    "greedy_decode",
]
