"""The generator's pictures as pixels: one conversion from its output (NCHW floats in
[-1, 1]) to uint8, used by every path that saves, shows or compares an image, so that a
render, a walk frame, a cluster preview and a translation of one latent agree pixel for pixel.
"""

from __future__ import annotations

import numpy as np
import torch


def to_uint8(img: torch.Tensor) -> np.ndarray:
    """NCHW float in [-1, 1] -> [N, H, W, C] uint8, with NVlabs' rounding (x * 127.5 + 128,
    clamped, truncated: gen_images.py's, so our pictures equal their reference images)."""
    x = (img.detach().float() * 127.5 + 128).clamp(0, 255).to(torch.uint8)
    return x.permute(0, 2, 3, 1).cpu().numpy()
