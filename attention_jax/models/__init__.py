"""Whole networks built from ops and layers."""

from attention_jax.models.seq2seq import ATTENTION_TYPES
from attention_jax.models.seq2seq import BidirectionalEncoder
from attention_jax.models.seq2seq import CELL_TYPES
from attention_jax.models.seq2seq import EncoderOutput
from attention_jax.models.seq2seq import LuongAttention
from attention_jax.models.seq2seq import Seq2Seq
from attention_jax.models.seq2seq import Seq2SeqMemory
from attention_jax.models.seq2seq import decoding_fns

__all__ = [
    "ATTENTION_TYPES",
    "BidirectionalEncoder",
    "CELL_TYPES",
    "EncoderOutput",
    "LuongAttention",
    "Seq2Seq",
    "Seq2SeqMemory",
    "decoding_fns",
]
