"""PyTorch peers of our training steps, one module per experiment, for ``benchmarks.train_step``.

Each module gives ``setup(config, args) -> Peer`` (our side: the experiment's own model, loss and
jitted train step; PyTorch's side: the same network layer for layer, built only when torch is
installed) and ``param_map`` (which PyTorch tensor, or slice of one, holds each Flax parameter),
through which our initial parameters are copied into the PyTorch model, so that both sides start
from the same point and the tests can compare losses and gradients.
"""
