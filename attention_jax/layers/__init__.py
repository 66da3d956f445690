"""Flax Linen modules that own parameters and call :mod:`attention_jax.ops`."""

from attention_jax.layers.additive import AdditiveAttention
from attention_jax.layers.attention_layer import AttentionLayer
from attention_jax.layers.conv import conv_as_matmul
from attention_jax.layers.conv_attention import SelfAttention2D
from attention_jax.layers.decoder_block import DecoderBlock
from attention_jax.layers.mlp import MlpBlock
from attention_jax.layers.multi_head import MultiHeadAttention
from attention_jax.layers.multi_head import SelfAttention
from attention_jax.layers.positional import LearnedPositionalEmbedding
from attention_jax.layers.positional import SinusoidalPositionalEncoding
from attention_jax.layers.transformer_block import TransformerBlock

__all__ = [
    "AdditiveAttention",
    "AttentionLayer",
    "DecoderBlock",
    "LearnedPositionalEmbedding",
    "MlpBlock",
    "MultiHeadAttention",
    "SelfAttention",
    "SelfAttention2D",
    "SinusoidalPositionalEncoding",
    "TransformerBlock",
    "conv_as_matmul",
]
