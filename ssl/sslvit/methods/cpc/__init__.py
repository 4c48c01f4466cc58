"""CPC v2 and what only it uses: overlapping patch grids with per-patch augmentation, the causal context network."""

from sslvit.methods.cpc.context import DIRECTIONS, CausalContext, orient
from sslvit.methods.cpc.method import CPC
from sslvit.methods.cpc.patch_grid import GRID_PRESETS, PatchGrid, augment_patches

__all__ = ["CPC", "DIRECTIONS", "GRID_PRESETS", "CausalContext", "PatchGrid", "augment_patches", "orient"]
