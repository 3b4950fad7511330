"""Latent side of a StyleGAN2: seeds, truncation, style mixing, per-layer W+ edits, directions.

SKELETON: the dataclasses below are the contract that recipe.py and the studio build on.
The functions are being filled in (issue 7).
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class DirectionEdit:
    """Move along a latent direction by `amount` on the ws in [layer_start, layer_end)."""
    method: str = "sefa"            # 'sefa' | 'ganspace' | 'file'
    index: int = 0                  # which component (sefa / ganspace)
    amount: float = 0.0             # signed step along the unit direction
    layer_start: int = 0            # first w index affected
    layer_end: int | None = None    # one past the last w index (None = all)
    path: str | None = None         # boundary .npy for method 'file'
    layers: list[str] | None = None  # sefa: layers whose affine weights define directions


@dataclass
class LayerEdit:
    """Per-layer W+ edits from the seed notebooks."""
    op: str = "swap"                # 'swap' (take w from another seed) | 'random' | 'negate'
    w_index: int = 0                # which w (0 .. num_ws-1)
    seed: int = 0                   # the other seed (swap) or the random w's seed (random)


@dataclass
class LatentSpec:
    """Everything that fixes the ws (and noise) of one render."""
    seed: float = 0.0               # fractional seeds blend neighbouring seeds in Z
    psi: float = 1.0                # truncation
    cutoff: int | None = None       # truncate only the first `cutoff` ws (None = all)
    noise_mode: str = "const"       # 'const' | 'random' | 'none'
    noise_seed: int = 0             # seed of the noise when noise_mode is 'random'
    mix_seed: int | None = None     # style mixing: take ws[mix_start:mix_end] from this seed
    mix_start: int = 0
    mix_end: int | None = None
    class_index: int | None = None  # conditional models: one-hot label
    w: list[list[float]] | None = None  # a saved W+ [num_ws][w_dim]; overrides seed when set
    directions: list[DirectionEdit] = field(default_factory=list)
    layer_edits: list[LayerEdit] = field(default_factory=list)
