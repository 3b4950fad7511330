"""Reference outputs of the plain (pre-#16) StyleGAN2 forward, for tests/test_fast_ops.py.

Weights are drawn by sorted state-dict name, so the cases do not depend on the order in which
modules create their parameters. This file (then tests/golden_stylegan2.py), run as a script,
rewrote tests/data/stylegan2_golden.npz with the generator of commit 8c07525 (before the fast
primitives of engine/gan/ops.py); rerunning it now would only copy the fast path onto itself.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from engine.gan.stylegan2 import Generator, GeneratorConfig  # noqa: E402

GOLDEN = Path(__file__).resolve().parents[1] / "data" / "stylegan2_golden.npz"
BASE = dict(z_dim=32, w_dim=32, resolution=32, channel_base=2048, channel_max=64,
            mapping_layers=2)
# name -> (config overrides, synthesis kwargs, seeds, psi)
CASES: dict[str, tuple[dict, dict, list[int], float]] = {
    "skip_const": ({}, {}, [0, 1, 2], 1.0),
    "skip_none_psi": ({}, {"noise_mode": "none"}, [3], 0.7),
    "skip_random": ({}, {"noise_mode": "random"}, [4, 5], 1.0),
    "skip_clamp": ({"conv_clamp": 0.5}, {}, [6], 1.0),
    "resnet": ({"architecture": "resnet"}, {}, [7, 8], 1.0),
    "orig_clamp": ({"architecture": "orig", "conv_clamp": 1.0}, {}, [9], 1.0),
}


def golden_generator(overrides: dict) -> Generator:
    G = Generator(GeneratorConfig(**{**BASE, **overrides})).eval().requires_grad_(False)
    gen = torch.Generator().manual_seed(1234)
    with torch.no_grad():
        for name, t in sorted(G.state_dict().items()):
            if name.endswith("resample_filter"):
                continue
            if name.endswith("noise_strength"):
                t.copy_(torch.rand(t.shape, generator=gen) * 0.4 + 0.1)
            elif name.endswith(".bias"):
                t.copy_(torch.randn(t.shape, generator=gen) * 0.2 + (1.0 if "affine" in name
                                                                       else 0.0))
            else:
                t.copy_(torch.randn(t.shape, generator=gen))
    return G


def render_case(name: str) -> np.ndarray:
    overrides, kwargs, seeds, psi = CASES[name]
    G = golden_generator(overrides)
    z = torch.cat([G.seed_to_z(s) for s in seeds])
    if kwargs.get("noise_mode") == "random":
        kwargs = {**kwargs, "noise_generator": torch.Generator().manual_seed(99)}
    with torch.no_grad():
        return G(z, psi=psi, **kwargs).numpy()


if __name__ == "__main__":
    GOLDEN.parent.mkdir(exist_ok=True)
    np.savez_compressed(GOLDEN, **{name: render_case(name) for name in CASES})
    print(f"wrote {GOLDEN}")
