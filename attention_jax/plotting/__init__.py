"""Figures: attention heatmaps, image overlays and curves, written as PNG."""

from attention_jax.plotting.figures import save_figure
from attention_jax.plotting.fonts import FONT_FAMILIES, use_script_fonts
from attention_jax.plotting.heatmaps import plot_attention
from attention_jax.plotting.heatmaps import plot_attention_grid
from attention_jax.plotting.overlays import plot_attention_overlay
from attention_jax.plotting.overlays import plot_caption_grid

__all__ = [
    "plot_attention", "plot_attention_grid", "plot_attention_overlay", "plot_caption_grid",
    "save_figure", "use_script_fonts", "FONT_FAMILIES",
]

use_script_fonts()
