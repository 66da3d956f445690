"""Image captioning with soft attention over a CNN feature grid (Show, Attend and Tell, Xu 2015).

Encoder: a small CNN maps an image ``[B, S, S, 3]`` to a grid ``h [B, H, W, C]`` (plus a learned
position embedding, so the decoder can tell left from right), flattened to ``N = H * W``
annotation vectors.

Decoder, one step (``s = (c, h)`` the LSTM state, ``y`` the previous word):

  ``a_t = softmax_ij(v . tanh(W_q h_{t-1} + W_k h_ij))``   (``layers.AdditiveAttention``)
  ``z_t = beta_t * sum_ij a_tij h_ij``, ``beta_t = sigmoid(w_beta . h_{t-1} + b)``  (gating scalar)
  ``s_t = LSTM([embed(y_{t-1}); z_t], s_{t-1})``
  ``logits_t = W_out [h_t; z_t; embed(y_{t-1})] + b``

with ``c_0 = tanh(W_c mean_ij h_ij)``, ``h_0 = tanh(W_h mean_ij h_ij)``. Training adds Xu et
al.'s doubly stochastic regulariser :func:`doubly_stochastic_penalty`.

``attention`` chooses how ``z_t`` reads the grid: ``"soft"`` (the expectation above, Xu et al.
sec. 4.2), ``"hard"`` (sec. 4.1: one location ``s_t ~ Multinoulli(a_t)`` and ``z_t = h_{s_t}``;
the sampling needs a ``"sample"`` rng when not ``deterministic``, and deterministic decoding takes
the most probable location; trained with :func:`reinforce_surrogate`) or ``"none"`` (no
attention: ``z_t`` is the mean feature, the weights reported are uniform). The maps the decoder
returns are ``a_t`` for soft attention and the one-hot of the location used for hard attention.

As in :mod:`attention_jax.models.seq2seq`: ``encode -> initial_state -> decode_step``, teacher
forcing scans the same ``decode_step``, and :func:`decoding_fns` plugs into
:mod:`attention_jax.decoding`.
"""

from __future__ import annotations

from typing import Any, Sequence

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp

from attention_jax import layers
from attention_jax.layers import conv

Array = jax.Array
Dtype = Any
ATTENTION_KINDS = ("soft", "hard", "none")


@flax.struct.dataclass
class CaptionMemory:
  """What the decoder reads at every step: ``features [B, N, C]`` (the grid, flattened row-major)
  and ``keys [B, N, attention_dim]`` (the projected keys, computed once per image)."""
  features: Array
  keys: Array


class ConvEncoder(nn.Module):
  """3x3 convolutions with ReLU; ``strides`` downsample, so the grid is ``S / prod(strides)``.

  Attributes:
    channels: output channels per layer.
    strides: stride per layer (same length as ``channels``).
    position_embedding: add a learned ``[H, W, C]`` table to the last layer's output.
    coordinates: append the pixel's (y, x) in [-1, 1] to the image channels (CoordConv), so the
      features say where they are, not only what is there.
    grid_coordinates: append the cell's (y, x) in [-1, 1] to the output grid (``C + 2``
      channels), so a key's position is a fixed linear feature from the start.
    normalize: LayerNorm over the channels of the last convolution (before the position
      embedding), so content features have unit scale and do not drown the position signal
      (unnormalised, their norm grows to ~25 while a learned position embedding stays < 1).
    context_pool: if > 0, a context channel block: the last convolution's output max-pooled over
      a ``context_pool x context_pool`` window of cells (stride 1) is concatenated to it
      (``2 C`` channels before the grid coordinates), so a cell also holds what its neighbours
      see (e.g. a cell inside an object the edges of its outline).
  """
  channels: Sequence[int] = (32, 64, 64)
  strides: Sequence[int] = (1, 2, 2)
  position_embedding: bool = True
  coordinates: bool = False
  grid_coordinates: bool = False
  normalize: bool = False
  context_pool: int = 0
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, images) -> Array:
    """``images [B, S, S, 3]`` (uint8 or float in [0, 1]) -> ``grid [B, H, W, C]``."""
    if len(self.channels) != len(self.strides) or not self.channels:
      raise ValueError(f"channels {tuple(self.channels)} and strides {tuple(self.strides)} must "
                       "be non-empty and of the same length")
    if jnp.ndim(images) != 4 or jnp.shape(images)[-1] != 3:
      raise ValueError(f"images must be [batch, height, width, 3], got shape {jnp.shape(images)}")
    x = jnp.asarray(images)
    x = x.astype(self.dtype) / 255.0 if x.dtype == jnp.uint8 else x.astype(self.dtype)
    if self.coordinates:
      x = _append_coordinates(x)
    for i, (features, stride) in enumerate(zip(self.channels, self.strides)):
      x = nn.Conv(features, (3, 3), strides=stride, dtype=self.dtype, param_dtype=self.param_dtype,
                  conv_general_dilated=conv.conv_as_matmul, name=f"conv{i}")(x)
      if i < len(self.channels) - 1:
        x = nn.relu(x)
    if self.context_pool:
      window = (self.context_pool, self.context_pool)
      x = jnp.concatenate([x, nn.max_pool(x, window, strides=(1, 1), padding="SAME")], axis=-1)
    if self.normalize:
      x = nn.LayerNorm(dtype=self.dtype, param_dtype=self.param_dtype, name="norm")(x)
    if self.position_embedding:
      table = self.param("position_embedding", nn.initializers.normal(0.02), x.shape[1:],
                         self.param_dtype)
      x = x + table.astype(x.dtype)
    if self.grid_coordinates:
      x = _append_coordinates(x)
    return x


def _append_coordinates(x) -> Array:
  """``x [B, H, W, C]`` -> ``[B, H, W, C + 2]`` with each position's (y, x) in [-1, 1]."""
  b, h, w, _ = x.shape
  ys, xs = jnp.meshgrid(jnp.linspace(-1, 1, h), jnp.linspace(-1, 1, w), indexing="ij")
  grid = jnp.broadcast_to(jnp.stack([ys, xs], -1).astype(x.dtype), (b, h, w, 2))
  return jnp.concatenate([x, grid], axis=-1)


class Captioner(nn.Module):
  """CNN encoder, attention LSTM decoder (see the module docstring).

  Attributes:
    vocab_size: output vocabulary (with the reserved pad/bos/eos/unk ids).
    embed_dim: word embedding width.
    hidden_dim: LSTM width.
    attention_dim: hidden width of the additive score.
    channels, strides: the encoder's convolutions (grid ``S / prod(strides)``,
      ``C = channels[-1]``).
    gate: use the gating scalar beta (Xu et al. 2015, section 4.2.1).
    coordinates: CoordConv input channels in the encoder.
    grid_coordinates: (y, x) channels appended to the grid (``C + 2`` features).
    normalize: LayerNorm on the grid's content features (see :class:`ConvEncoder`).
    context_pool: the max-pooled context channels of :class:`ConvEncoder` (0: none).
    dropout_rate: dropout before the output layer.
    init_dropout_rate: dropout on the mean feature that initialises the LSTM (training only):
      the initial state then cannot carry the whole scene reliably, so the decoder has to read
      the objects through the attention.
    attention: "soft", "hard" or "none" (module docstring).
    expected_context_prob: hard attention only, in training (not ``deterministic``): the
      probability, per example and word, of reading the expected (soft) context instead of a
      sampled location (Xu et al. 2015 sec. 4.1 use 0.5). Those steps report the distribution
      itself as the weights used, and :func:`hard_attention_terms` leaves them out of the
      score-function term; their gradient reaches the attention through the context.
    coverage: coverage-aware scores (Tu et al. 2016; See et al. 2017): the attention so far,
      ``cov_ij = sum_{t' < t} a_t'ij``, enters the score as ``v . tanh(W_q h + W_k h_ij + b +
      cov_ij u)``, so the decoder can tell what it has already looked at; the state is then
      ``(c, h, cov [B, N])``.
  """
  vocab_size: int
  embed_dim: int = 32
  hidden_dim: int = 128
  attention_dim: int = 64
  channels: Sequence[int] = (32, 64, 64)
  strides: Sequence[int] = (1, 2, 2)
  gate: bool = True
  coordinates: bool = False
  grid_coordinates: bool = False
  normalize: bool = False
  context_pool: int = 0
  dropout_rate: float = 0.0
  init_dropout_rate: float = 0.0
  coverage: bool = False
  attention: str = "soft"
  expected_context_prob: float = 0.0
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  def setup(self):
    if self.attention not in ATTENTION_KINDS:
      raise ValueError(f"attention must be one of {ATTENTION_KINDS}, got {self.attention!r}")
    dims = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    self.encoder = ConvEncoder(tuple(self.channels), tuple(self.strides),
                               coordinates=self.coordinates,
                               grid_coordinates=self.grid_coordinates,
                               normalize=self.normalize, context_pool=self.context_pool,
                               **dims)
    self.attend = layers.AdditiveAttention(
        self.attention_dim, score_init=nn.initializers.normal(self.attention_dim ** -0.5), **dims)
    self.init_c = nn.Dense(self.hidden_dim, **dims)
    self.init_h = nn.Dense(self.hidden_dim, **dims)
    self.gate_dense = nn.Dense(1, **dims)
    self.embed = nn.Embed(self.vocab_size, self.embed_dim, **dims)
    # LSTMCell's parameters and initialisation, its eight gate products fused into two
    self.cell = nn.OptimizedLSTMCell(self.hidden_dim, **dims)
    self.output_dense = nn.Dense(self.vocab_size, **dims)
    self.dropout = nn.Dropout(self.dropout_rate)
    self.init_dropout = nn.Dropout(self.init_dropout_rate)
    if self.coverage:
      self.coverage_vector = self.param("coverage_vector", nn.initializers.zeros,
                                        (self.attention_dim,), self.param_dtype)

  def encode(self, images) -> CaptionMemory:
    """``images [B, S, S, 3]`` -> :class:`CaptionMemory` with ``N = H * W`` grid positions."""
    grid = self.encoder(images)
    features = grid.reshape(grid.shape[0], -1, grid.shape[-1])
    if self.attention == "none":  # no scores, no keys (and no attention parameters)
      return CaptionMemory(features, features[..., :0])
    return CaptionMemory(features, self.attend.project_keys(features))

  def grid_shape(self, image_size: int) -> tuple[int, int]:
    """``(H, W)`` of the grid for square ``image_size`` images (SAME padding)."""
    size = image_size
    for stride in self.strides:
      size = -(-size // stride)
    return size, size

  def initial_state(self, memory: CaptionMemory, deterministic: bool = True):
    """The LSTM carry ``(c_0, h_0)`` from the mean feature, each ``[B, hidden_dim]``
    (``init_dropout_rate`` applies when not ``deterministic``); with ``coverage`` also
    ``cov_0 = 0 [B, N]``."""
    mean = self.init_dropout(memory.features.mean(axis=1), deterministic=deterministic)
    carry = jnp.tanh(self.init_c(mean)), jnp.tanh(self.init_h(mean))
    if self.coverage:
      carry += (jnp.zeros(memory.features.shape[:2], jnp.float32),)
    return carry

  def decode_step(self, memory: CaptionMemory, state, tokens, deterministic: bool = True):
    """One word.

    Args:
      memory: from :meth:`encode`.
      state: the carry from :meth:`initial_state` or the previous step.
      tokens: int ``[B]``, the previous words (BOS first).
      deterministic: disables dropout (and, for hard attention, sampling: the most probable
        location is used).

    Returns:
      ``(logits [B, V], new_state, attention_weights [B, N])``, the weights summing to one (the
      one-hot of the location used, for hard attention).
    """
    logits, state, used, _ = self.decode_step_with_probs(memory, state, tokens, deterministic)
    return logits, state, used

  def decode_step_with_probs(self, memory: CaptionMemory, state, tokens,
                             deterministic: bool = True):
    """:meth:`decode_step` that also returns the attention distribution ``a_t [B, N]`` (for
    hard attention the weights used are a one-hot sample of it)."""
    outputs, state, used, probs = self._recurrent_step(memory, state, tokens, deterministic)
    return self._output_layer(outputs, deterministic), state, used, probs

  def _output_layer(self, outputs, deterministic: bool):
    """``[..., F] -> logits [..., V]``: dropout, then ``W_out``."""
    return self.output_dense(self.dropout(outputs, deterministic=deterministic))

  def _recurrent_step(self, memory: CaptionMemory, state, tokens, deterministic: bool):
    """One word up to the output layer: ``([h_t; z_t; embed(y_{t-1})] [B, F], new_state,
    used [B, N], a_t [B, N])``."""
    if jnp.ndim(tokens) != 1 or not jnp.issubdtype(jnp.result_type(tokens), jnp.integer):
      raise ValueError(f"tokens must be int [batch], got {jnp.result_type(tokens)}"
                       f"{list(jnp.shape(tokens))}")
    if tokens.shape[0] != memory.features.shape[0]:
      raise ValueError(f"tokens has batch {tokens.shape[0]} but memory has batch "
                       f"{memory.features.shape[0]}")
    query = state[1]
    keys = memory.keys
    if self.coverage:
      keys = keys + state[2][..., None].astype(keys.dtype) * self.coverage_vector.astype(keys.dtype)
    features = memory.features
    if self.attention == "none":
      n = features.shape[1]
      context = features.mean(axis=1)
      probs = used = jnp.full(features.shape[:2], 1.0 / n, jnp.float32)
    else:
      context, probs = self.attend(query, features, features, projected_keys=keys,
                                   return_weights=True)
      used = probs
      if self.attention == "hard":
        log_probs = jnp.log(jnp.maximum(probs.astype(jnp.float32), 1e-30))
        if deterministic:
          location = jnp.argmax(log_probs, axis=-1)
        else:
          location = jax.random.categorical(self.make_rng("sample"), log_probs, axis=-1)
        used = jax.nn.one_hot(location, features.shape[1], dtype=probs.dtype)
        if not deterministic and self.expected_context_prob > 0:
          expected = jax.random.bernoulli(self.make_rng("sample"), self.expected_context_prob,
                                          probs.shape[:1])
          used = jnp.where(expected[:, None], probs, used)
        context = jnp.einsum("bn,bnc->bc", used.astype(features.dtype), features)
    if self.gate:
      context = context * nn.sigmoid(self.gate_dense(query))
    embedded = self.embed(tokens)
    context = context.astype(embedded.dtype)
    lstm_state, output = self.cell(state[:2], jnp.concatenate([embedded, context], axis=-1))
    state = lstm_state + ((state[2] + used.astype(jnp.float32),) if self.coverage else ())
    return jnp.concatenate([output, context, embedded], axis=-1), state, used, probs

  def __call__(self, images, decoder_inputs, deterministic: bool = True,
               return_probs: bool = False, num_samples: int = 1):
    """Teacher forcing: ``images [B, S, S, 3]``, ``decoder_inputs int [B, T]`` (BOS + words)
    -> ``(logits [B, T, V], attention [B, T, N])``, with ``return_probs`` also the attention
    distributions ``[B, T, N]`` (the same as the attention unless it is hard).

    ``num_samples = K > 1`` decodes every caption ``K`` times from one encoding (for several
    hard-attention samples per image): the outputs are ``[B * K, ...]``, example ``b``'s samples
    at rows ``b * K .. b * K + K - 1``."""
    if jnp.ndim(decoder_inputs) != 2 or decoder_inputs.shape[0] != jnp.shape(images)[0]:
      raise ValueError(f"decoder_inputs must be int [batch, T] with the batch of images "
                       f"{jnp.shape(images)}, got shape {jnp.shape(decoder_inputs)}")
    if num_samples < 1:
      raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    memory = self.encode(images)
    if num_samples > 1:
      memory = jax.tree.map(lambda x: jnp.repeat(x, num_samples, axis=0), memory)
      decoder_inputs = jnp.repeat(decoder_inputs, num_samples, axis=0)

    # The output layer runs once over all steps after the scan (one [B * T, F] x [F, V]
    # product instead of T small ones, forward and backward); the same products as
    # decode_step's.
    def step(module, state, memory, tokens):
      outputs, state, used, probs = module._recurrent_step(memory, state, tokens, deterministic)
      return state, (outputs, used, probs)

    scan = nn.scan(step, variable_broadcast="params",
                   split_rngs={"params": False, "dropout": True, "sample": True},
                   in_axes=(nn.broadcast, 1), out_axes=1)
    start = self.initial_state(memory, deterministic)
    _, (outputs, used, probs) = scan(self, start, memory, decoder_inputs)
    logits = self._output_layer(outputs, deterministic)
    return (logits, used, probs) if return_probs else (logits, used)


def doubly_stochastic_penalty(weights, mask) -> Array:
  """Xu et al.'s regulariser per example: ``sum_i (1 - sum_t mask_t a_ti)^2``.

  Args:
    weights: ``[B, T, N]`` attention weights.
    mask: ``[B, T]`` (bool or 0/1), the real (non-padding) steps.

  Returns:
    float32 ``[B]``; multiply by lambda and average over the batch for the loss.
  """
  weights = jnp.asarray(weights, jnp.float32)
  if jnp.ndim(weights) != 3 or jnp.shape(mask) != weights.shape[:2]:
    raise ValueError(f"weights must be [B, T, N] and mask [B, T]; got weights {weights.shape}, "
                     f"mask {jnp.shape(mask)}")
  coverage = jnp.sum(weights * jnp.asarray(mask, jnp.float32)[..., None], axis=1)
  return jnp.sum((1.0 - coverage) ** 2, axis=-1)


def phrase_continuity_penalty(weights, content, mask) -> Array:
  """Per example, the attention mass that moves between consecutive words of one phrase:
  ``sum_t [content_{t-1} and content_t] (1 - sum_i min(a_ti, sg(a_{t-1,i})))``, i.e. half the L1
  distance of the two maps, the earlier map held fixed (``sg``: no gradient), so each word of a
  phrase ("a large red circle": size, colour, shape) is pulled to where the word before it
  looked and never the other way round. Uses only which target words are content words (the
  caption's grammar), no boxes.

  Args:
    weights: ``[B, T, N]`` attention weights.
    content: ``[B, T]`` bool, the steps whose target is a content (size, colour, shape) word.
    mask: ``[B, T]`` the real (non-padding) steps.

  Returns:
    float32 ``[B]``.
  """
  weights = jnp.asarray(weights, jnp.float32)
  if jnp.ndim(weights) != 3 or jnp.shape(mask) != weights.shape[:2] or (
      jnp.shape(content) != weights.shape[:2]):
    raise ValueError(f"weights must be [B, T, N], content and mask [B, T]; got weights "
                     f"{weights.shape}, content {jnp.shape(content)}, mask {jnp.shape(mask)}")
  on = jnp.asarray(content, bool) & jnp.asarray(mask, bool)
  pairs = (on[:, 1:] & on[:, :-1]).astype(jnp.float32)
  overlap = jnp.sum(jnp.minimum(weights[:, 1:], jax.lax.stop_gradient(weights[:, :-1])), -1)
  return jnp.sum(pairs * (1.0 - overlap), axis=-1)


def reinforce_surrogate(log_likelihood, log_prob_locations, entropy, baseline,
                        reinforce_weight: float = 1.0, entropy_weight: float = 0.0) -> Array:
  """Per example, a loss whose gradient is Xu et al.'s (2015, eq. 12, with the moving-average
  baseline and the entropy term) estimate of ``-grad L_s``, for locations sampled from the model.

  ``L_s = sum_s p(s | a) log p(y | s, a)``, a lower bound of ``log p(y | a)``. For a sample
  ``s~ ~ p(s | a)`` the estimate of its gradient is

    ``d log p(y | s~, a) + lambda_r (log p(y | s~, a) - b) d log p(s~ | a) + lambda_e d H[s~]``

  (``b`` the baseline; ``H`` the entropy of the attention distributions), unbiased for ``L_s``
  (plus ``lambda_e E[H]``) when ``lambda_r = 1`` and ``b`` does not depend on ``s~``. The surrogate
  is the negative of ``log p(y | s~) + lambda_r sg(log p(y | s~) - b) log p(s~) + lambda_e H``
  (``sg`` stops the gradient).

  Args:
    log_likelihood: ``[B]``, ``log p(y | s~, a)`` of each caption (differentiable).
    log_prob_locations: ``[B]``, ``sum_t log p(s~_t | a)`` of the sampled locations.
    entropy: ``[B]``, ``sum_t H(a_t)``.
    baseline: scalar ``b`` (no gradient flows into it).
    reinforce_weight, entropy_weight: ``lambda_r``, ``lambda_e``.
  """
  advantage = jax.lax.stop_gradient(log_likelihood - baseline)
  return -(log_likelihood + reinforce_weight * advantage * log_prob_locations
           + entropy_weight * entropy)


def hard_attention_step_log_probs(used, probs, mask) -> Array:
  """``log p(s_t | a_t)`` per example and real step, ``[B, T]`` (0 at padding steps and at steps
  that read the expected context).

  Args:
    used: ``[B, T, N]`` one-hot sampled locations; a step whose row is not one-hot read the
      expected context (``Captioner.expected_context_prob``) and is left out (its gradient
      reaches the attention through the context).
    probs: ``[B, T, N]`` the attention distributions they were drawn from.
    mask: ``[B, T]`` the real (non-padding) steps.
  """
  probs = jnp.asarray(probs, jnp.float32)
  used = jax.lax.stop_gradient(jnp.asarray(used, jnp.float32))
  log_probs = jnp.log(jnp.maximum(probs, 1e-30))
  sampled = jnp.all((used == 0) | (used == 1), axis=-1).astype(jnp.float32)
  return jnp.sum(used * log_probs, -1) * jnp.asarray(mask, jnp.float32) * sampled


def attention_entropy(probs, mask) -> Array:
  """``sum_t H(a_t)`` per example over the real steps: ``probs [B, T, N]``, ``mask [B, T]``."""
  probs = jnp.asarray(probs, jnp.float32)
  log_probs = jnp.log(jnp.maximum(probs, 1e-30))
  return jnp.sum(-jnp.sum(probs * log_probs, -1) * jnp.asarray(mask, jnp.float32), -1)


def hard_attention_terms(used, probs, mask) -> tuple[Array, Array]:
  """``(sum_t log p(s_t | a), sum_t H(a_t))`` per example over the real steps (arguments as
  :func:`hard_attention_step_log_probs`)."""
  return (jnp.sum(hard_attention_step_log_probs(used, probs, mask), -1),
          attention_entropy(probs, mask))


def suffix_sum(values) -> Array:
  """``out[..., t] = sum_{t' >= t} values[..., t']`` over the last axis."""
  return jnp.flip(jnp.cumsum(jnp.flip(values, -1), -1), -1)


REINFORCE_REWARDS = ("caption", "to_go")


def reinforce_rewards(token_log_likelihood, kind: str) -> Array:
  """The reward credited to each step's sampled location, ``[B, T]``, from
  ``token_log_likelihood [B, T]`` (``log p(y_t | ...)``, 0 at padding):

  - ``"caption"`` (Xu et al.): every step gets the caption's ``log p(y | s~)``;
  - ``"to_go"``: step ``t`` gets ``sum_{t' >= t} log p(y_t' | ...)``, the words its location can
    still change. ``s_t`` is drawn after ``y_<t`` were predicted, so the dropped terms are
    independent of it and the estimate stays unbiased, with less variance (the words before a
    step no longer add noise to its credit).
  """
  if kind not in REINFORCE_REWARDS:
    raise ValueError(f"reward must be one of {REINFORCE_REWARDS}, got {kind!r}")
  token_log_likelihood = jnp.asarray(token_log_likelihood, jnp.float32)
  if kind == "caption":
    total = jnp.sum(token_log_likelihood, -1, keepdims=True)
    return jnp.broadcast_to(total, token_log_likelihood.shape)
  return suffix_sum(token_log_likelihood)


def leave_one_out_baseline(rewards, num_samples: int) -> Array:
  """For ``rewards [B * K, ...]`` holding ``K = num_samples`` consecutive samples of each
  example, each sample's baseline is the mean reward of the example's other ``K - 1`` samples
  (Kool et al. 2019): independent of its own sample, so the estimate stays unbiased."""
  if num_samples < 2 or rewards.shape[0] % num_samples:
    raise ValueError(f"num_samples must be >= 2 and divide the batch {rewards.shape[0]}, got "
                     f"{num_samples}")
  grouped = rewards.reshape(-1, num_samples, *rewards.shape[1:])
  others = (jnp.sum(grouped, 1, keepdims=True) - grouped) / (num_samples - 1)
  return others.reshape(rewards.shape)


def reinforce_surrogate_per_step(token_log_likelihood, step_log_probs, entropy, baseline,
                                 reward: str = "to_go", reinforce_weight: float = 1.0,
                                 entropy_weight: float = 0.0) -> Array:
  """:func:`reinforce_surrogate` with a reward and a baseline per step: the negative of
  ``log p(y | s~) + lambda_r sum_t sg(R_t - b_t) log p(s~_t) + lambda_e H``, ``R_t`` from
  :func:`reinforce_rewards`.

  Args:
    token_log_likelihood: ``[B, T]``, ``log p(y_t | s~, ...)`` (0 at padding; differentiable).
    step_log_probs: ``[B, T]`` from :func:`hard_attention_step_log_probs`.
    entropy: ``[B]``, ``sum_t H(a_t)``.
    baseline: broadcastable to ``[B, T]`` (a scalar, a per-step ``[T]`` moving average, or
      :func:`leave_one_out_baseline`); it must not depend on the sample it is compared with.
  """
  rewards = reinforce_rewards(token_log_likelihood, reward)
  advantage = jax.lax.stop_gradient(rewards - baseline)
  log_likelihood = jnp.sum(jnp.asarray(token_log_likelihood, jnp.float32), -1)
  return -(log_likelihood + reinforce_weight * jnp.sum(advantage * step_log_probs, -1)
           + entropy_weight * entropy)


def decoding_fns(model: Captioner, variables, images, with_distributions: bool = False):
  """``(init_fn, step_fn)`` for :func:`attention_jax.decoding.greedy_decode` / ``beam_search``;
  the state is ``(memory, lstm_state)``, the step's extras the attention weights used ``[B, N]``,
  or with ``with_distributions`` the pair ``(weights used, a_t)`` (they differ for hard
  attention: the one-hot of the chosen location, and the distribution it was chosen from)."""
  memory = model.apply(variables, images, method=Captioner.encode)
  start = model.apply(variables, memory, method=Captioner.initial_state)

  def init_fn():
    return memory, start

  def step_fn(state, tokens):
    memory, lstm_state = state
    logits, lstm_state, used, probs = model.apply(variables, memory, lstm_state, tokens,
                                                  method=Captioner.decode_step_with_probs)
    return logits, (memory, lstm_state), ((used, probs) if with_distributions else used)

  return init_fn, step_fn
