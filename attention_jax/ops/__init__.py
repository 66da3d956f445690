"""Pure attention functions: arrays in, arrays out. No Flax, no state, no config."""

from attention_jax.ops.attention import EMPTY_ROW_LSE
from attention_jax.ops.attention import IMPLEMENTATIONS
from attention_jax.ops.attention import additive_attention
from attention_jax.ops.attention import attention_weights
from attention_jax.ops.attention import dot_product_attention
from attention_jax.ops.attention import masked_softmax
from attention_jax.ops.masks import causal_mask
from attention_jax.ops.masks import length_mask
from attention_jax.ops.masks import padding_mask
from attention_jax.ops.positions import apply_rotary
from attention_jax.ops.positions import sinusoidal_positions
from attention_jax.ops.spec import AttentionSpec
from attention_jax.ops.spec import make_spec
from attention_jax.ops.spec import soft_cap

__all__ = [
    "AttentionSpec",
    "EMPTY_ROW_LSE",
    "IMPLEMENTATIONS",
    "additive_attention",
    "apply_rotary",
    "attention_weights",
    "causal_mask",
    "dot_product_attention",
    "length_mask",
    "make_spec",
    "masked_softmax",
    "padding_mask",
    "sinusoidal_positions",
    "soft_cap",
]
