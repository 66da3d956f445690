"""RNN encoder-decoder models, with and without attention (Sutskever 2014, Cho 2014, Bahdanau 2015,
Luong 2015).

Encoder: embeddings -> forward and backward RNNs over the unpadded tokens -> annotations
``h_i = [h_i^fwd; h_i^bwd]`` (zero on padding) and the final states of both directions.

Decoder, one step (``s`` the decoder state, ``y`` the previous target token):

  ``c_t = attend(s_{t-1}, {h_i})``  (``"none"``: the fixed ``c = [h_last^fwd; h_first^bwd]``)
  ``s_t = RNN([embed(y_{t-1}); c_t], s_{t-1})``
  ``logits_t = W_out [s_t; c_t; embed(y_{t-1})] + b``

with ``s_0 = tanh(W_init [h_last^fwd; h_first^bwd] + b)`` in every mode, so the modes differ only
in how the context is formed. ``"additive"``: ``e_ti = v . tanh(W_q s_{t-1} + W_k h_i)``;
``"dot"`` (Luong's "general" score): ``e_ti = s_{t-1} . (W_k h_i) * scale``; both mask the padding
and project the keys once per sequence in :meth:`Seq2Seq.encode`.

Decoding goes through ``encode -> initial_state -> decode_step`` (see
:func:`decoding_fns` for closures that plug into :mod:`attention_jax.decoding`); teacher forcing
(``__call__``) scans the same ``decode_step`` over time, so both share every parameter.
"""

from __future__ import annotations

from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp

from attention_jax import layers
from attention_jax import ops

Array = jax.Array
Dtype = Any

ATTENTION_TYPES: tuple[str, ...] = ("none", "additive", "dot")
CELL_TYPES: tuple[str, ...] = ("gru", "lstm")


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
  if value not in choices:
    raise ValueError(f"{name} must be one of {list(choices)}, got {value!r}")


def _check_tokens(name: str, tokens, rank: int, layout: str) -> None:
  shape, dtype = jnp.shape(tokens), jnp.result_type(tokens)
  if len(shape) != rank:
    raise ValueError(f"{name} must be int {layout} (rank {rank}), got shape {shape}")
  if not jnp.issubdtype(dtype, jnp.integer):
    raise TypeError(f"{name} must hold integer token ids {layout}, got dtype {dtype}")


def _check_lengths(lengths, batch: int, src_len: int) -> None:
  shape, dtype = jnp.shape(lengths), jnp.result_type(lengths)
  if shape != (batch,):
    raise ValueError(
        f"input_lengths must be int [batch={batch}] (valid tokens per row of inputs "
        f"[{batch}, {src_len}]), got shape {shape}")
  if not jnp.issubdtype(dtype, jnp.integer):
    raise TypeError(f"input_lengths must be integers, got dtype {dtype}")


def _make_cell(cell_type: str, features: int, dtype: Dtype, param_dtype: Dtype, name=None):
  cls = nn.GRUCell if cell_type == "gru" else nn.LSTMCell
  return cls(features=features, dtype=dtype, param_dtype=param_dtype, name=name)


def _hidden(cell_type: str, carry) -> Array:
  """The output vector of a cell's carry: ``h`` for a GRU, ``h`` of ``(c, h)`` for an LSTM."""
  return carry[1] if cell_type == "lstm" else carry


@flax.struct.dataclass
class EncoderOutput:
  """``states [B, S, 2H]`` (zero on padding), ``final_forward`` and ``final_backward [B, H]``
  (the forward state after the last real token, the backward state after the first)."""
  states: Array
  final_forward: Array
  final_backward: Array


@flax.struct.dataclass
class Seq2SeqMemory:
  """What the decoder reads at every step, computed once per source sequence.

  ``states [B, S, 2H]`` the annotations h_i (the attention values); ``mask bool [B, S]`` True on
  real tokens; ``keys [B, S, K]`` the projected keys (``[B, S, attention_dim]`` additive,
  ``[B, S, H]`` dot, the states themselves for "none"); ``context [B, 2H]`` the fixed summary
  ``[h_last^fwd; h_first^bwd]``.
  """
  states: Array
  mask: Array
  keys: Array
  context: Array


class BidirectionalEncoder(nn.Module):
  """Embedding and a forward and a backward RNN that both skip the padding.

  Attributes:
    vocab_size: source vocabulary size.
    embed_dim: embedding width.
    hidden_dim: state width of each direction.
    cell_type: ``"gru"`` or ``"lstm"``.
    dropout_rate: dropout on the embeddings.
  """
  vocab_size: int
  embed_dim: int
  hidden_dim: int
  cell_type: str = "gru"
  dropout_rate: float = 0.0
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, inputs, lengths, deterministic: bool = True) -> EncoderOutput:
    """``inputs int [B, S]``, ``lengths int [B]`` (1 <= lengths <= S) -> :class:`EncoderOutput`."""
    _check_choice("cell_type", self.cell_type, CELL_TYPES)
    _check_tokens("inputs", inputs, 2, "[batch, src_len]")
    _check_lengths(lengths, *inputs.shape)
    x = nn.Embed(self.vocab_size, self.embed_dim, dtype=self.dtype,
                 param_dtype=self.param_dtype, name="embed")(inputs)
    x = nn.Dropout(self.dropout_rate)(x, deterministic=deterministic)

    def rnn(name, reverse):
      cell = _make_cell(self.cell_type, self.hidden_dim, self.dtype, self.param_dtype, name)
      # With seq_lengths, reverse=True flips only each row's first `length` tokens, so the
      # backward RNN starts at the last real token; keep_order flips the outputs back, and the
      # returned carry is the one after the last real step (not after the padding).
      return nn.RNN(cell, return_carry=True, reverse=reverse, keep_order=True)(
          x, seq_lengths=lengths)

    fwd_carry, fwd = rnn("forward", False)
    bwd_carry, bwd = rnn("backward", True)
    mask = ops.length_mask(lengths, inputs.shape[1])
    states = jnp.where(mask[..., None], jnp.concatenate([fwd, bwd], axis=-1), 0)
    # nn.RNN's default carry is float32 whatever the cell dtype, which would promote the outputs.
    return EncoderOutput(states.astype(self.dtype),
                         _hidden(self.cell_type, fwd_carry).astype(self.dtype),
                         _hidden(self.cell_type, bwd_carry).astype(self.dtype))


class LuongAttention(nn.Module):
  """Luong's "general" score ``s . (W_k h_i) * scale`` via :func:`ops.dot_product_attention`
  with one query and one head. Param ``key [key_dim, query_dim]``; ``scale=None`` is
  ``1/sqrt(query_dim)``."""
  query_dim: int
  key_dim: int
  scale: float | None = None
  param_dtype: Dtype = jnp.float32

  def setup(self):
    self.key = self.param("key", nn.initializers.lecun_normal(),
                          (self.key_dim, self.query_dim), self.param_dtype)

  def project_keys(self, states):
    """``[B, S, key_dim] -> [B, S, query_dim]``, once per source sequence."""
    return states @ self.key.astype(states.dtype)

  def __call__(self, query, keys, values=None, mask=None, projected_keys=None,
               return_weights: bool = False):
    """The call of :class:`layers.AdditiveAttention`: ``query [B, query_dim]``, ``keys
    [B, S, key_dim]``, ``values [B, S, D]`` (default ``keys``), ``mask bool [B, S]``,
    ``projected_keys = project_keys(keys)`` -> ``context [B, D]`` (and ``weights [B, S]``)."""
    values = keys if values is None else values
    if projected_keys is None:
      projected_keys = self.project_keys(keys)
    mask = None if mask is None else mask[:, None, None, :]
    context, weights = ops.dot_product_attention(
        query[:, None, None, :], projected_keys[:, :, None, :], values[:, :, None, :],
        mask=mask, scale=self.scale, return_weights=True)
    context, weights = context[:, 0, 0], weights[:, 0, 0]
    return (context, weights) if return_weights else context


class Seq2Seq(nn.Module):
  """Bidirectional-RNN encoder and RNN decoder with ``attention`` in ``"none"``, ``"additive"``,
  ``"dot"``.

  Attributes:
    source_vocab_size: encoder vocabulary.
    target_vocab_size: decoder vocabulary (``None``: same as the source).
    attention: ``"none"`` (fixed context, the bottleneck baseline), ``"additive"`` (Bahdanau),
      ``"dot"`` (Luong general).
    embed_dim: embedding width of both sides.
    hidden_dim: decoder state width and encoder state width per direction.
    attention_dim: hidden width of the additive score (unused otherwise).
    cell_type: ``"gru"`` or ``"lstm"`` for both sides.
    dot_scale: the dot score's scale; ``None`` is ``1/sqrt(hidden_dim)``.
    dropout_rate: dropout on embeddings and before the output layer (with
      ``deterministic=False`` and a ``"dropout"`` rng).
  """
  source_vocab_size: int
  target_vocab_size: int | None = None
  attention: str = "additive"
  embed_dim: int = 64
  hidden_dim: int = 128
  attention_dim: int = 128
  cell_type: str = "gru"
  dot_scale: float | None = None
  dropout_rate: float = 0.0
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  def __post_init__(self):
    _check_choice("attention", self.attention, ATTENTION_TYPES)
    _check_choice("cell_type", self.cell_type, CELL_TYPES)
    super().__post_init__()

  @property
  def num_targets(self) -> int:
    return self.source_vocab_size if self.target_vocab_size is None else self.target_vocab_size

  def setup(self):
    dims = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    self.encoder = BidirectionalEncoder(
        self.source_vocab_size, self.embed_dim, self.hidden_dim, self.cell_type,
        self.dropout_rate, **dims)
    self.target_embed = nn.Embed(self.num_targets, self.embed_dim, **dims)
    self.init_dense = nn.Dense(self.hidden_dim, **dims)
    self.cell = _make_cell(self.cell_type, self.hidden_dim, **dims)
    self.output_dense = nn.Dense(self.num_targets, **dims)
    self.dropout = nn.Dropout(self.dropout_rate)
    if self.attention == "additive":
      self.attend = layers.AdditiveAttention(
          self.attention_dim, score_init=nn.initializers.normal(self.attention_dim ** -0.5),
          dtype=self.dtype, param_dtype=self.param_dtype)
    elif self.attention == "dot":
      self.attend = LuongAttention(
          self.hidden_dim, 2 * self.hidden_dim, self.dot_scale, self.param_dtype)

  def encode(self, inputs, input_lengths, deterministic: bool = True) -> Seq2SeqMemory:
    """``inputs int [B, S]``, ``input_lengths int [B]`` (1 <= length <= S) ->
    :class:`Seq2SeqMemory`."""
    encoded = self.encoder(inputs, input_lengths, deterministic)
    states = encoded.states
    keys = states if self.attention == "none" else self.attend.project_keys(states)
    return Seq2SeqMemory(
        states=states,
        mask=ops.length_mask(input_lengths, inputs.shape[1]),
        keys=keys,
        context=jnp.concatenate([encoded.final_forward, encoded.final_backward], axis=-1))

  def initial_state(self, memory: Seq2SeqMemory):
    """The decoder carry ``s_0 = tanh(W_init c + b)``: ``[B, H]`` (GRU) or ``(c_0 = 0, h_0)``
    (LSTM)."""
    hidden = jnp.tanh(self.init_dense(memory.context))
    if self.cell_type == "lstm":
      return jnp.zeros_like(hidden), hidden
    return hidden

  def decode_step(self, memory: Seq2SeqMemory, state, tokens, deterministic: bool = True):
    """One decoder step.

    Args:
      memory: from :meth:`encode`.
      state: the decoder carry from :meth:`initial_state` or the previous step.
      tokens: int ``[B]``, the previous target tokens (BOS first).
      deterministic: disables dropout.

    Returns:
      ``(logits [B, V], new_state, attention_weights [B, S])``; the weights sum to one over the
      real source tokens, are zero on padding, and are all zero for ``attention="none"``.
    """
    _check_tokens("tokens", tokens, 1, "[batch]")
    batch = memory.states.shape[0]
    if tokens.shape[0] != batch:
      raise ValueError(f"tokens has batch {tokens.shape[0]} but memory has batch {batch}")
    embedded = self.dropout(self.target_embed(tokens), deterministic=deterministic)
    if self.attention == "none":
      context = memory.context
      weights = jnp.zeros(memory.mask.shape, memory.states.dtype)
    else:
      query = _hidden(self.cell_type, state)
      context, weights = self.attend(query, memory.states, memory.states, memory.mask,
                                     projected_keys=memory.keys, return_weights=True)
    context = context.astype(embedded.dtype)
    state, output = self.cell(state, jnp.concatenate([embedded, context], axis=-1))
    features = jnp.concatenate([output, context, embedded], axis=-1)
    features = self.dropout(features, deterministic=deterministic)
    return self.output_dense(features), state, weights

  def __call__(self, inputs, input_lengths, decoder_inputs, deterministic: bool = True):
    """Teacher forcing.

    Args:
      inputs: int ``[B, S]`` source tokens, padded after ``input_lengths``.
      input_lengths: int ``[B]``, 1 <= length <= S.
      decoder_inputs: int ``[B, T]``, the targets shifted right (BOS first).
      deterministic: disables dropout.

    Returns:
      ``(logits [B, T, V], attention [B, T, S])``.
    """
    _check_tokens("inputs", inputs, 2, "[batch, src_len]")
    _check_tokens("decoder_inputs", decoder_inputs, 2, "[batch, tgt_len]")
    if decoder_inputs.shape[0] != inputs.shape[0]:
      raise ValueError(f"decoder_inputs {decoder_inputs.shape} and inputs {inputs.shape} must "
                       "have the same batch size")
    memory = self.encode(inputs, input_lengths, deterministic)

    def step(module, state, memory, tokens):
      logits, state, weights = module.decode_step(memory, state, tokens, deterministic)
      return state, (logits, weights)

    scan = nn.scan(step, variable_broadcast="params", split_rngs={"params": False, "dropout": True},
                   in_axes=(nn.broadcast, 1), out_axes=1)
    _, (logits, weights) = scan(self, self.initial_state(memory), memory, decoder_inputs)
    return logits, weights


def decoding_fns(model: Seq2Seq, variables, inputs, input_lengths):
  """``(init_fn, step_fn)`` for :func:`attention_jax.decoding.greedy_decode` / ``beam_search``.

  The encoder runs once here; the decoding state is ``(memory, decoder_state)`` so that beam
  search's per-step gather also reorders (identical) memories, and the step's extras are the
  attention weights ``[B, S]``.
  """
  memory = model.apply(variables, inputs, input_lengths, method=Seq2Seq.encode)
  start = model.apply(variables, memory, method=Seq2Seq.initial_state)

  def init_fn():
    return memory, start

  def step_fn(state, tokens):
    memory, decoder_state = state
    logits, decoder_state, weights = model.apply(
        variables, memory, decoder_state, tokens, method=Seq2Seq.decode_step)
    return logits, (memory, decoder_state), weights

  return init_fn, step_fn
