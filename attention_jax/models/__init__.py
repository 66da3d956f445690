"""Whole networks built from ops and layers."""

from attention_jax.models.captioning import CaptionMemory
from attention_jax.models.captioning import Captioner
from attention_jax.models.captioning import ConvEncoder
from attention_jax.models.captioning import doubly_stochastic_penalty
from attention_jax.models.seq2seq import ATTENTION_TYPES
from attention_jax.models.seq2seq import BidirectionalEncoder
from attention_jax.models.seq2seq import CELL_TYPES
from attention_jax.models.seq2seq import EncoderOutput
from attention_jax.models.seq2seq import LuongAttention
from attention_jax.models.seq2seq import Seq2Seq
from attention_jax.models.seq2seq import Seq2SeqMemory
from attention_jax.models.seq2seq import decoding_fns
from attention_jax.models.transformer import BertEncoder
from attention_jax.models.transformer import BertForMaskedLM
from attention_jax.models.transformer import Decoder
from attention_jax.models.transformer import DecoderOnlyLM
from attention_jax.models.transformer import Encoder
from attention_jax.models.transformer import EncoderDecoder
from attention_jax.models.transformer import TransformerConfig
from attention_jax.models.transformer import encoder_decoder_decoding_fns
from attention_jax.models.transformer import generate
from attention_jax.models.transformer import lm_decoding_fns

__all__ = [
    "ATTENTION_TYPES",
    "BertEncoder",
    "BertForMaskedLM",
    "BidirectionalEncoder",
    "CaptionMemory",
    "Captioner",
    "ConvEncoder",
    "CELL_TYPES",
    "Decoder",
    "DecoderOnlyLM",
    "Encoder",
    "EncoderDecoder",
    "EncoderOutput",
    "LuongAttention",
    "Seq2Seq",
    "Seq2SeqMemory",
    "TransformerConfig",
    "decoding_fns",
    "doubly_stochastic_penalty",
    "encoder_decoder_decoding_fns",
    "generate",
    "lm_decoding_fns",
]
