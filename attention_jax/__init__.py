"""attention-jax: attention mechanisms as pure JAX functions, Flax Linen layers and experiments."""

__version__ = "0.1.0"
