"""Figures: attention heatmaps, image overlays and curves, written as PNG."""

from attention_jax.plotting.heatmaps import plot_attention
from attention_jax.plotting.heatmaps import plot_attention_grid

__all__ = ["plot_attention", "plot_attention_grid"]
