"""Model-agnostic decoding over an ``(init_fn, step_fn)`` pair: greedy, beam search, sampling."""

from attention_jax.decoding.sampling import filter_logits
from attention_jax.decoding.sampling import sample
from attention_jax.decoding.sampling import sample_logits
from attention_jax.decoding.search import beam_search
from attention_jax.decoding.search import expand_to_beams
from attention_jax.decoding.search import gnmt_length_penalty
from attention_jax.decoding.search import greedy_decode

__all__ = [
    "beam_search",
    "expand_to_beams",
    "filter_logits",
    "gnmt_length_penalty",
    "greedy_decode",
    "sample",
    "sample_logits",
]
