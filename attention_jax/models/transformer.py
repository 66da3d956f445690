"""The Transformer (Vaswani et al. 2017): encoder, decoder, encoder-decoder and decoder-only LM.

Every model takes a :class:`TransformerConfig` (the shapes and options, see
:mod:`attention_jax.models.presets` for the published ones). Post-norm (the lecture, the paper,
BERT) or pre-norm with a final LayerNorm (GPT-2); sinusoidal, learned or rotary positions; tied
or untied output head; ``dtype=jnp.bfloat16`` computes in bf16 with float32 parameters and
float32 logits.

Incremental decoding: a model built with ``decode=True`` keeps a ``cache`` collection (the
attention KV caches and the position of the next token). Initialise it with an input of the
maximal length, then call ``apply(..., mutable=['cache'])`` with a whole prompt, then with one or
more tokens at a time; positions continue from the cache index. :func:`lm_decoding_fns` and
:func:`encoder_decoder_decoding_fns` turn that into the ``(init_fn, step_fn)`` contract of
:mod:`attention_jax.decoding`; :func:`generate` samples from a language model.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from attention_jax import layers
from attention_jax import ops

Array = jax.Array

POSITIONS = ("sinusoidal", "learned", "rotary", "none")
ACTIVATIONS: dict[str, Callable[[Array], Array]] = {
    "gelu": nn.gelu,  # tanh approximation, GPT-2's "gelu_new"
    "gelu_exact": lambda x: nn.gelu(x, approximate=False),  # BERT
    "relu": nn.relu,  # Vaswani et al.
}


@dataclasses.dataclass(frozen=True)
class TransformerConfig:
  """Shapes and options shared by all the models of this module.

  Attributes:
    vocab_size: tokens (source and target share one vocabulary).
    features: model width ``d_model``.
    num_heads: attention heads.
    mlp_dim: hidden width of the MLPs ``d_ff``.
    num_layers: encoder layers (and decoder layers unless ``num_decoder_layers``).
    num_decoder_layers: decoder layers (default ``num_layers``).
    num_kv_heads: key/value heads of the self-attentions (grouped-query), default ``num_heads``.
    max_length: the longest sequence (rows of a learned position table; checked).
    positions: ``'sinusoidal'``, ``'learned'``, ``'rotary'`` (RoPE in the self-attention) or
      ``'none'``.
    pre_norm: pre-norm blocks and a final LayerNorm instead of post-norm.
    dropout_rate: dropout on the embeddings and the residual branches.
    attention_dropout_rate: dropout on the attention weights.
    tie_embeddings: the output head is the transposed target embedding; else a ``Dense`` without
      bias.
    scale_embeddings: multiply the token embeddings by ``sqrt(features)`` (Vaswani et al.);
      they are then initialised with std ``features**-0.5`` instead of 0.02.
    num_token_types: rows of a token-type (segment) embedding, 0 for none (BERT: 2).
    embedding_norm: LayerNorm after the summed embeddings (BERT).
    activation: a key of :data:`ACTIVATIONS`.
    layer_norm_epsilon: epsilon of every LayerNorm.
    use_bias: biases in the attention projections.
    dtype: computation dtype (``None``: float32).
    param_dtype: parameter dtype.
    implementation: passed to :func:`attention_jax.ops.dot_product_attention`; ``"ring"``
      splits the self-attention over the ``sequence`` axis of the context mesh (sequence
      parallelism, see :class:`attention_jax.layers.MultiHeadAttention`).
    local_window_size: sliding-window self-attention: each position sees the ``w`` positions
      before it (and, in an encoder, after it); ``None`` attends globally. A decoder's KV cache
      then keeps only ``w`` positions (Mistral: 4096).
    global_every: with a window, every ``global_every``-th layer (the last of each group)
      attends globally and the others locally (Gemma 2: 2, Gemma 3: 6); ``None``: every layer
      is local.
    attention_softcap: soft-cap of the attention logits, ``c * tanh(logits / c)`` (Gemma 2: 50).
    final_softcap: soft-cap of the output logits (Gemma 2: 30).
  """

  vocab_size: int
  features: int = 512
  num_heads: int = 8
  mlp_dim: int = 2048
  num_layers: int = 6
  num_decoder_layers: int | None = None
  num_kv_heads: int | None = None
  max_length: int = 512
  positions: str = "sinusoidal"
  pre_norm: bool = False
  dropout_rate: float = 0.1
  attention_dropout_rate: float = 0.0
  tie_embeddings: bool = True
  scale_embeddings: bool = False
  num_token_types: int = 0
  embedding_norm: bool = False
  activation: str = "gelu"
  layer_norm_epsilon: float = 1e-6
  use_bias: bool = True
  dtype: Any = None
  param_dtype: Any = jnp.float32
  implementation: str | None = None
  local_window_size: int | None = None
  global_every: int | None = None
  attention_softcap: float | None = None
  final_softcap: float | None = None

  def __post_init__(self):
    if self.positions not in POSITIONS:
      raise ValueError(f"positions must be one of {POSITIONS}, got {self.positions!r}")
    if self.activation not in ACTIVATIONS:
      raise ValueError(f"activation must be one of {tuple(ACTIVATIONS)}, got {self.activation!r}")
    if self.features % self.num_heads:
      raise ValueError(
          f"features={self.features} must be divisible by num_heads={self.num_heads}")
    for name in ("vocab_size", "features", "num_heads", "mlp_dim", "max_length"):
      if getattr(self, name) < 1:
        raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
    for name in ("local_window_size", "global_every"):
      value = getattr(self, name)
      if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                or value < (0 if name == "local_window_size" else 1)):
        raise ValueError(f"{name} must be a non-negative int or None, got {value!r}")
    if self.global_every is not None and self.local_window_size is None:
      raise ValueError("global_every needs local_window_size (the window of the local layers)")
    for name in ("attention_softcap", "final_softcap"):
      value = getattr(self, name)
      if value is not None and not value > 0:
        raise ValueError(f"{name} must be > 0 or None, got {value!r}")

  @property
  def decoder_layers(self) -> int:
    return self.num_layers if self.num_decoder_layers is None else self.num_decoder_layers

  def window_of(self, layer: int, causal: bool) -> int | tuple[int, int] | None:
    """The ``local_window_size`` of self-attention layer ``layer``: ``None`` (global), ``(w, 0)``
    in a causal stack, ``w`` (both sides) in an encoder."""
    if self.local_window_size is None:
      return None
    if self.global_every is not None and layer % self.global_every == self.global_every - 1:
      return None
    return (self.local_window_size, 0) if causal else self.local_window_size


def _check_tokens(tokens, config: TransformerConfig, name: str = "tokens") -> Array:
  tokens = jnp.asarray(tokens)
  if tokens.ndim < 1 or not jnp.issubdtype(tokens.dtype, jnp.integer):
    raise ValueError(
        f"{name} must be integer [batch..., length], got {tokens.dtype} {tokens.shape}")
  if not isinstance(tokens, jax.core.Tracer) and tokens.size:
    values = np.asarray(tokens)  # numpy: no tracing, even inside an outer trace
    low, high = int(values.min()), int(values.max())
    if low < 0 or high >= config.vocab_size:
      raise ValueError(
          f"{name} hold ids in [{low}, {high}] but vocab_size={config.vocab_size} allows "
          f"[0, {config.vocab_size - 1}]")
  return tokens


def _check_length(length: int, start, config: TransformerConfig, name: str = "tokens") -> None:
  """Refuses sequences past ``max_length`` (``start`` is the cache position, maybe traced)."""
  if length > config.max_length:
    raise ValueError(
        f"{name} have length {length} but the model's max_length={config.max_length}")
  if not isinstance(start, jax.core.Tracer) and int(start) + length > config.max_length:
    raise ValueError(
        f"decode: position {int(start)} + {length} new {name} runs past the model's "
        f"max_length={config.max_length}")


class Embedder(nn.Module):
  """Token embedding (+ positions, token types, LayerNorm, dropout) and the tied output head.

  Parameters: ``token_embedding/embedding [vocab, features]``, and as configured
  ``position_embedding/embedding [max_length, features]``, ``token_type_embedding``,
  ``embedding_norm``.
  """

  config: TransformerConfig

  def setup(self):
    c = self.config
    # Scaled embeddings start at std d^-1/2 so that, times sqrt(d), they match the unit-size
    # sinusoids (tensor2tensor); unscaled ones use GPT-2/BERT's 0.02.
    std = c.features ** -0.5 if c.scale_embeddings else 0.02
    self.token_embedding = nn.Embed(
        c.vocab_size, c.features, embedding_init=nn.initializers.normal(stddev=std),
        param_dtype=c.param_dtype, dtype=c.dtype)
    if c.positions == "learned":
      self.position_embedding = layers.LearnedPositionalEmbedding(
          c.max_length, c.features, dtype=c.dtype, param_dtype=c.param_dtype)
    elif c.positions == "sinusoidal":
      self.position_encoding = layers.SinusoidalPositionalEncoding(max_length=c.max_length)
    if c.num_token_types:
      self.token_type_embedding = nn.Embed(
          c.num_token_types, c.features, embedding_init=nn.initializers.normal(stddev=0.02),
          param_dtype=c.param_dtype, dtype=c.dtype)
    if c.embedding_norm:
      self.norm = nn.LayerNorm(epsilon=c.layer_norm_epsilon, dtype=c.dtype,
                               param_dtype=c.param_dtype)
    self.dropout = nn.Dropout(c.dropout_rate)

  def __call__(self, tokens, *, offset=0, positions=None, token_types=None,
               deterministic: bool = True) -> Array:
    """``tokens int [batch..., length]`` -> ``[batch..., length, features]``.

    Args:
      tokens: token ids.
      offset: position of the first token (an int or a traced scalar, e.g. the cache index).
      positions: int ``[batch..., length]``, each token's position (packed sequences: restarting
        at 0 in every segment); default ``offset + 0..length-1``.
      token_types: int ``[batch..., length]`` segment ids (``num_token_types > 0``; default 0).
      deterministic: ``False`` turns dropout on.
    """
    c = self.config
    x = self.token_embedding(tokens)
    if c.scale_embeddings:
      x = x * jnp.sqrt(jnp.asarray(c.features, x.dtype))
    if positions is None:
      positions = jnp.asarray(offset, jnp.int32) + jnp.arange(tokens.shape[-1], dtype=jnp.int32)
    if c.positions == "learned":
      x = self.position_embedding(x, positions=positions)
    elif c.positions == "sinusoidal":
      x = self.position_encoding(x, positions=positions)
    if c.num_token_types:
      if token_types is None:
        token_types = jnp.zeros(tokens.shape, jnp.int32)
      x = x + self.token_type_embedding(token_types)
    elif token_types is not None:
      raise ValueError("token_types given but the config has num_token_types=0")
    if c.embedding_norm:
      x = self.norm(x)
    if c.dtype is not None:
      x = x.astype(c.dtype)
    return self.dropout(x, deterministic=deterministic)

  def attend(self, x) -> Array:
    """``x [batch..., length, features]`` -> float32 logits ``[batch..., length, vocab]``."""
    return self.token_embedding.attend(x).astype(jnp.float32)


def _check_packing(tokens, segment_ids, positions) -> None:
  for name, value in (("segment_ids", segment_ids), ("positions", positions)):
    if value is not None and jnp.shape(value) != tokens.shape:
      raise ValueError(f"{name} has shape {jnp.shape(value)} but tokens have {tokens.shape}")


def _final_norm(config: TransformerConfig, name: str = "final_norm"):
  return nn.LayerNorm(epsilon=config.layer_norm_epsilon, dtype=config.dtype,
                      param_dtype=config.param_dtype, name=name)


class Encoder(nn.Module):
  """A stack of bidirectional :class:`layers.TransformerBlock` over embedded tokens.

  Attributes:
    config: the shapes.
    embedder: a shared :class:`Embedder` (an encoder-decoder's); ``None`` creates ``embedder``.
  """

  config: TransformerConfig
  embedder: Embedder | None = None

  @nn.compact
  def __call__(self, tokens, lengths=None, *, token_types=None, segment_ids=None,
               positions=None, deterministic: bool = True, sow_weights: bool = False) -> Array:
    """``tokens int [batch..., length]`` -> ``[batch..., length, features]``.

    Args:
      tokens: source token ids.
      lengths: int ``[batch...]``; keys past a row's length are masked (padding).
      token_types: BERT's token type ids (``num_token_types > 0``).
      segment_ids: int ``[batch..., length]``: several sequences packed in one row attend only
        within their segment.
      positions: int ``[batch..., length]``, positions restarting per segment (default
        ``0..length-1``).
      deterministic: ``False`` turns dropout on (needs a ``dropout`` rng).
      sow_weights: sow every layer's attention weights.
    """
    c = self.config
    tokens = _check_tokens(tokens, c)
    _check_packing(tokens, segment_ids, positions)
    _check_length(tokens.shape[-1], 0, c)
    embedder = self.embedder if self.embedder is not None else Embedder(c, name="embedder")
    x = embedder(tokens, positions=positions, token_types=token_types,
                 deterministic=deterministic)
    for i in range(c.num_layers):
      x = layers.TransformerBlock(
          num_heads=c.num_heads, mlp_dim=c.mlp_dim, num_kv_heads=c.num_kv_heads,
          dropout_rate=c.dropout_rate, attention_dropout_rate=c.attention_dropout_rate,
          pre_norm=c.pre_norm, rotary=c.positions == "rotary",
          activation=ACTIVATIONS[c.activation], layer_norm_epsilon=c.layer_norm_epsilon,
          dtype=c.dtype, param_dtype=c.param_dtype, implementation=c.implementation,
          local_window_size=c.window_of(i, causal=False), softcap=c.attention_softcap,
          name=f"layer_{i}")(x, key_value_seq_lengths=lengths, segment_ids=segment_ids,
                             positions=positions, deterministic=deterministic,
                             sow_weights=sow_weights)
    if c.pre_norm:
      x = _final_norm(c)(x)
    return x


class Pooler(nn.Module):
  """BERT's pooler: ``tanh(Dense(x[..., 0, :]))``, ``[batch..., length, features]`` ->
  ``[batch..., features]``."""

  config: TransformerConfig

  @nn.compact
  def __call__(self, x) -> Array:
    c = self.config
    return jnp.tanh(nn.Dense(c.features, dtype=c.dtype, param_dtype=c.param_dtype,
                             name="dense")(x[..., 0, :]))


class BertEncoder(nn.Module):
  """:class:`Encoder` + :class:`Pooler`: returns ``(sequence [batch..., length, features],
  pooled [batch..., features])`` (``pooled`` is None without ``add_pooler``, as in HF's
  ``BertModel(add_pooling_layer=False)``); use with :func:`presets.bert_base` and friends."""

  config: TransformerConfig
  add_pooler: bool = True

  @nn.compact
  def __call__(self, tokens, lengths=None, *, token_types=None, deterministic: bool = True):
    x = Encoder(self.config, name="encoder")(
        tokens, lengths, token_types=token_types, deterministic=deterministic)
    return x, Pooler(self.config, name="pooler")(x) if self.add_pooler else None


class BertForMaskedLM(nn.Module):
  """BERT with its masked-LM head (HF's ``BertForMaskedLM``): ``tokens [batch..., length]`` ->
  float32 logits ``[batch..., length, vocab]``.

  The head: ``Dense(features)``, the activation, LayerNorm, then the transposed token embedding
  (tied) plus a bias per token. Parameters: ``embedder``, ``encoder/layer_{i}``,
  ``head_transform``, ``head_norm``, ``head_bias [vocab]``.
  """

  config: TransformerConfig

  def setup(self):
    c = self.config
    self.embedder = Embedder(c)
    self.encoder = Encoder(c, embedder=self.embedder)
    self.head_transform = nn.Dense(c.features, dtype=c.dtype, param_dtype=c.param_dtype)
    self.head_norm = nn.LayerNorm(epsilon=c.layer_norm_epsilon, dtype=c.dtype,
                                  param_dtype=c.param_dtype)
    self.head_bias = self.param("head_bias", nn.initializers.zeros, (c.vocab_size,),
                                c.param_dtype)

  def __call__(self, tokens, lengths=None, *, token_types=None,
               deterministic: bool = True) -> Array:
    x = self.encoder(tokens, lengths, token_types=token_types, deterministic=deterministic)
    x = self.head_norm(ACTIVATIONS[self.config.activation](self.head_transform(x)))
    return self.embedder.attend(x) + self.head_bias.astype(jnp.float32)


class Decoder(nn.Module):
  """A stack of causal :class:`layers.DecoderBlock` and the output head.

  Attributes:
    config: the shapes.
    cross_attention: attend to an encoder's output (encoder-decoder) or not (language model).
    decode: incremental decoding with a KV cache (see the module docstring).
    embedder: a shared :class:`Embedder`; ``None`` creates ``embedder``.
  """

  config: TransformerConfig
  cross_attention: bool = True
  decode: bool = False
  embedder: Embedder | None = None

  @nn.compact
  def __call__(self, tokens, encoded=None, encoded_lengths=None, *, segment_ids=None,
               positions=None, encoded_segment_ids=None, deterministic: bool = True,
               sow_weights: bool = False) -> Array:
    """``tokens int [batch..., length]`` -> float32 logits ``[batch..., length, vocab]``.

    Args:
      tokens: target ids (shifted right by the caller: position ``t`` predicts token ``t + 1``);
        in decode mode the next chunk of them.
      encoded: ``[batch..., src_len, features]`` (``cross_attention``).
      encoded_lengths: int ``[batch...]`` valid lengths of ``encoded``.
      segment_ids: int ``[batch..., length]``: several sequences packed in one row attend only
        within their segment (not in decode mode); with cross-attention, segment ``s`` of the
        targets reads segment ``s`` of ``encoded`` (``encoded_segment_ids``).
      positions: int ``[batch..., length]``, positions restarting per segment (default
        ``0..length-1``).
      encoded_segment_ids: int ``[batch..., src_len]``, the packed sources' segment ids.
      deterministic: ``False`` turns dropout on (needs a ``dropout`` rng).
      sow_weights: sow every layer's attention weights.
    """
    c = self.config
    tokens = _check_tokens(tokens, c)
    if (segment_ids is not None or positions is not None) and self.decode:
      raise ValueError("segment_ids/positions are for training on packed sequences, not for "
                       "decode mode")
    _check_packing(tokens, segment_ids, positions)
    offset = 0
    if self.decode:
      initialised = self.has_variable("cache", "position")
      position = self.variable("cache", "position", lambda: jnp.array(0, jnp.int32))
      if initialised:  # the first call only sizes the caches, like MultiHeadAttention's
        offset = position.value
        position.value = offset + tokens.shape[-1]
    _check_length(tokens.shape[-1], offset, c)
    embedder = self.embedder if self.embedder is not None else Embedder(c, name="embedder")
    x = embedder(tokens, offset=offset, positions=positions, deterministic=deterministic)
    for i in range(c.decoder_layers):
      x = layers.DecoderBlock(
          num_heads=c.num_heads, mlp_dim=c.mlp_dim, num_kv_heads=c.num_kv_heads,
          cross_attention=self.cross_attention, dropout_rate=c.dropout_rate,
          attention_dropout_rate=c.attention_dropout_rate, pre_norm=c.pre_norm,
          decode=self.decode, rotary=c.positions == "rotary",
          activation=ACTIVATIONS[c.activation], layer_norm_epsilon=c.layer_norm_epsilon,
          use_bias=c.use_bias, dtype=c.dtype, param_dtype=c.param_dtype,
          local_window_size=c.window_of(i, causal=True), softcap=c.attention_softcap,
          implementation=c.implementation, name=f"layer_{i}")(
              x, encoded, encoded_lengths=encoded_lengths, segment_ids=segment_ids,
              positions=positions, encoded_segment_ids=encoded_segment_ids,
              deterministic=deterministic, sow_weights=sow_weights)
    if c.pre_norm:
      x = _final_norm(c)(x)
    if c.tie_embeddings:
      logits = embedder.attend(x)
    else:
      logits = nn.Dense(c.vocab_size, use_bias=False, dtype=c.dtype, param_dtype=c.param_dtype,
                        name="logits")(x).astype(jnp.float32)
    return ops.soft_cap(logits, c.final_softcap)


class DecoderOnlyLM(nn.Module):
  """A GPT-style language model: ``tokens [batch..., length]`` -> logits
  ``[batch..., length, vocab]``; position ``t`` predicts token ``t + 1``.

  Parameters live under ``decoder/`` (``embedder``, ``layer_{i}``, ``final_norm``).
  """

  config: TransformerConfig
  decode: bool = False

  @nn.compact
  def __call__(self, tokens, *, segment_ids=None, positions=None, deterministic: bool = True,
               sow_weights: bool = False) -> Array:
    """``segment_ids``/``positions`` ``[batch..., length]``: packed sequences (see
    :class:`Decoder`)."""
    return Decoder(self.config, cross_attention=False, decode=self.decode, name="decoder")(
        tokens, segment_ids=segment_ids, positions=positions, deterministic=deterministic,
        sow_weights=sow_weights)


class EncoderDecoder(nn.Module):
  """The translation model of "Attention Is All You Need": one embedding shared by the source,
  the target and (``tie_embeddings``) the output head.

  ``__call__(inputs, targets_in, input_lengths)`` is teacher forcing; :meth:`encode` and
  :meth:`decode_step` serve incremental decoding (``decode=True``).
  """

  config: TransformerConfig
  decode: bool = False

  def setup(self):
    self.embedder = Embedder(self.config)
    self.encoder = Encoder(self.config, embedder=self.embedder)
    self.decoder = Decoder(self.config, cross_attention=True, decode=self.decode,
                           embedder=self.embedder)

  def encode(self, inputs, input_lengths=None, *, input_segment_ids=None, input_positions=None,
             deterministic: bool = True, sow_weights: bool = False) -> Array:
    """``inputs int [batch..., src_len]`` -> ``[batch..., src_len, features]``."""
    return self.encoder(inputs, input_lengths, segment_ids=input_segment_ids,
                        positions=input_positions, deterministic=deterministic,
                        sow_weights=sow_weights)

  def decode_step(self, encoded, targets_in, input_lengths=None, *, input_segment_ids=None,
                  target_segment_ids=None, target_positions=None, deterministic: bool = True,
                  sow_weights: bool = False) -> Array:
    """``targets_in int [batch..., length]`` (or the next chunk in decode mode) -> logits."""
    return self.decoder(targets_in, encoded, input_lengths, segment_ids=target_segment_ids,
                        positions=target_positions, encoded_segment_ids=input_segment_ids,
                        deterministic=deterministic, sow_weights=sow_weights)

  def __call__(self, inputs, targets_in, input_lengths=None, *, input_segment_ids=None,
               input_positions=None, target_segment_ids=None, target_positions=None,
               deterministic: bool = True, sow_weights: bool = False) -> Array:
    """``inputs [batch..., src_len]``, ``targets_in [batch..., tgt_len]`` (BOS + target[:-1]) ->
    float32 logits ``[batch..., tgt_len, vocab]``.

    Packed pairs (:func:`attention_jax.data.packing.packed_seq2seq_rows`): ``input_segment_ids``
    / ``input_positions`` ``[batch..., src_len]`` and ``target_segment_ids`` /
    ``target_positions`` ``[batch..., tgt_len]``; target segment ``s`` reads only source segment
    ``s``, so every pair gets the logits it would get alone.
    """
    if (input_segment_ids is None) != (target_segment_ids is None):
      raise ValueError("packed pairs need input_segment_ids and target_segment_ids together")
    encoded = self.encode(inputs, input_lengths, input_segment_ids=input_segment_ids,
                          input_positions=input_positions, deterministic=deterministic,
                          sow_weights=sow_weights)
    return self.decode_step(encoded, targets_in, input_lengths,
                            input_segment_ids=input_segment_ids,
                            target_segment_ids=target_segment_ids,
                            target_positions=target_positions, deterministic=deterministic,
                            sow_weights=sow_weights)


def count_parameters(tree) -> int:
  """Number of scalars in a pytree of arrays or ``ShapeDtypeStruct``s."""
  return int(sum(np.prod(leaf.shape, dtype=np.int64) for leaf in jax.tree.leaves(tree)))


def parameter_shapes(model: nn.Module, *inputs) -> Any:
  """The ``params`` tree of ``model.init(key, *inputs)`` as ``ShapeDtypeStruct``s, without
  allocating anything (``jax.eval_shape``)."""
  return jax.eval_shape(lambda: model.init(jax.random.key(0), *inputs))["params"]


# ----------------------------------------------------------------------------------------------
# Incremental decoding: the (init_fn, step_fn) contract of attention_jax.decoding.


def _empty_cache(model: nn.Module, params, *inputs, method=None):
  """Zero caches sized by ``inputs`` (created by a call with no cache; shapes via eval_shape)."""
  shapes = jax.eval_shape(
      lambda: model.apply({"params": params}, *inputs, method=method, mutable=["cache"])[1])
  return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes["cache"])


def _batch_scalars(cache, batch: int):
  """Scalar cache indices -> ``[batch]`` copies, since the search functions gather every state
  leaf along a leading batch axis."""
  return jax.tree.map(lambda x: jnp.broadcast_to(x, (batch,)) if x.ndim == 0 else x, cache)


def _unbatch_scalars(cache):
  return jax.tree.map(lambda x: x[0] if x.ndim == 1 else x, cache)


def lm_decoding_fns(model: DecoderOnlyLM, params, prompt, max_len: int):
  """``(init_fn, step_fn)`` for :func:`decoding.greedy_decode`, :func:`decoding.sample` or
  :func:`decoding.beam_search` continuing ``prompt``.

  Args:
    model: a :class:`DecoderOnlyLM` (its ``decode`` field is switched on here).
    params: its parameters.
    prompt: int ``[batch, prompt_len]``, ``prompt_len >= 1`` (all rows the same length).
    max_len: cache length: ``prompt_len`` + the number of tokens to generate, at most the
      model's ``max_length``.

  ``init_fn`` runs ``prompt[:, :-1]`` through the cache in one call; the first step feeds
  ``prompt[:, -1]`` whatever token the search passes (its ``bos_id`` is ignored), so the first
  logits predict the token after the prompt. The state is ``(cache, pending, started)``.
  """
  prompt = jnp.asarray(prompt)
  if prompt.ndim != 2 or prompt.shape[1] < 1:
    raise ValueError(f"prompt must be [batch, prompt_len >= 1], got shape {prompt.shape}")
  batch, prompt_len = prompt.shape
  if max_len < prompt_len or max_len > model.config.max_length:
    raise ValueError(
        f"max_len={max_len} must lie in [prompt_len={prompt_len}, "
        f"max_length={model.config.max_length}]")
  model = model.clone(decode=True)
  _check_tokens(prompt, model.config, "prompt")

  def init_fn():
    cache = _empty_cache(model, params, jnp.zeros((batch, max_len), jnp.int32))
    if prompt_len > 1:
      _, state = model.apply({"params": params, "cache": cache}, prompt[:, :-1],
                             mutable=["cache"])
      cache = state["cache"]
    return _batch_scalars(cache, batch), prompt[:, -1].astype(jnp.int32), jnp.zeros(batch, bool)

  def step_fn(state, tokens):
    cache, pending, started = state
    rows = tokens.shape[0]
    tokens = jnp.where(started, tokens, pending)
    logits, new = model.apply({"params": params, "cache": _unbatch_scalars(cache)},
                              tokens[:, None], mutable=["cache"])
    state = (_batch_scalars(new["cache"], rows), pending, jnp.ones_like(started))
    return logits[:, -1], state, None

  return init_fn, step_fn


def encoder_decoder_decoding_fns(model: EncoderDecoder, params, inputs, input_lengths=None,
                                 max_len: int | None = None):
  """``(init_fn, step_fn)`` for :func:`decoding.greedy_decode` / :func:`decoding.beam_search`.

  The encoder runs once here; the state is ``(cache, encoded, input_lengths)`` so that beam
  search's gather reorders the caches (and the identical encodings) with the beams.

  Args:
    model: an :class:`EncoderDecoder`.
    params: its parameters.
    inputs: int ``[batch, src_len]``.
    input_lengths: int ``[batch]`` (default: all of ``src_len``).
    max_len: tokens to generate at most (the cache length), default the model's ``max_length``.
  """
  inputs = jnp.asarray(inputs)
  if inputs.ndim != 2:
    raise ValueError(f"inputs must be [batch, src_len], got shape {inputs.shape}")
  batch = inputs.shape[0]
  if input_lengths is None:
    input_lengths = jnp.full((batch,), inputs.shape[1], jnp.int32)
  max_len = model.config.max_length if max_len is None else max_len
  model = model.clone(decode=True)
  encoded = model.apply({"params": params}, inputs, input_lengths, method=EncoderDecoder.encode)
  cache = _empty_cache(model, params, encoded, jnp.zeros((batch, max_len), jnp.int32),
                       input_lengths, method=EncoderDecoder.decode_step)

  def init_fn():
    return _batch_scalars(cache, batch), encoded, jnp.asarray(input_lengths, jnp.int32)

  def step_fn(state, tokens):
    cache, encoded, lengths = state
    logits, new = model.apply(
        {"params": params, "cache": _unbatch_scalars(cache)}, encoded, tokens[:, None], lengths,
        method=EncoderDecoder.decode_step, mutable=["cache"])
    return logits[:, -1], (_batch_scalars(new["cache"], tokens.shape[0]), encoded, lengths), None

  return init_fn, step_fn


def generate(model: DecoderOnlyLM, params, prompt, max_new_tokens: int, *, rng=None,
             temperature: float = 0.0, top_k: int | None = None, top_p: float | None = None,
             eos_id: int | None = None, pad_id: int = 0) -> Array:
  """Continues ``prompt int [batch, prompt_len]`` by ``max_new_tokens`` tokens with the KV cache;
  greedy at ``temperature=0``.

  The prefill and the whole token loop (one ``while_loop``, the step traced once) compile into
  one function, cached per model, shapes and sampling options: later calls with new params,
  prompts or keys of the same shapes reuse it.

  Returns:
    int32 ``[batch, max_new_tokens]``, ``pad_id`` after an ``eos_id``.
  """
  prompt = _check_tokens(prompt, model.config, "prompt")
  if prompt.ndim != 2 or prompt.shape[1] < 1:
    raise ValueError(f"prompt must be [batch, prompt_len >= 1], got shape {prompt.shape}")
  if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
    raise ValueError(f"max_new_tokens must be a positive int, got {max_new_tokens!r}")
  _check_length(prompt.shape[1] + max_new_tokens, 0, model.config, "prompt + new tokens")
  rng = jax.random.key(0) if rng is None else rng
  return _generate(model, params, prompt.astype(jnp.int32), rng, max_new_tokens, temperature,
                   top_k, top_p, -1 if eos_id is None else eos_id, pad_id)


@functools.partial(jax.jit, static_argnums=(0, 4, 5, 6, 7, 8, 9))
def _generate(model, params, prompt, rng, max_new_tokens, temperature, top_k, top_p, eos_id,
              pad_id):
  from attention_jax.decoding import sampling  # decoding does not import models

  init_fn, step_fn = lm_decoding_fns(model, params, prompt, prompt.shape[-1] + max_new_tokens)
  tokens, _ = sampling.sample(
      init_fn, step_fn, rng, batch_size=prompt.shape[0], max_len=max_new_tokens, bos_id=0,
      eos_id=eos_id, temperature=temperature, top_k=top_k, top_p=top_p, pad_id=pad_id)
  return tokens
