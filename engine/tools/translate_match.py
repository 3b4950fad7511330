"""The translator's anchor fitted to the picture: a quick coarse projection in z.

The anchor (engine/tools/anchors.py) is the model's own image that a translation at domain
strength s < 1 blends towards. Looked up in the bank alone, it is the nearest of a few
thousand samples, and a mean of several of them drifts to the model's average face: every
photo came out as nearly the same face on the same background (issue 36).

Here the bank's most alike image is only the start. A few Adam steps then move its z so
that the translation's coarse colours (the picture pooled to FIT_CELLS x FIT_CELLS) match
the picture's, rendered exactly as the translation will be, the user's latent writing its
last blocks (anchors.with_latent). The search is in z, not w: the mapping network
normalises z, so every point it can reach is one of the model's samples at psi 1, and the
anchor stays inside the model's domain however far the steps go. Different photos end on
different samples, each keeping its photo's layout and colours.

Cost: `steps` forward and backward passes of the generator for each picture (the default
model: about 40 ms a step on one CPU core). Webcam frames keep the bank's anchor.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

FIT_CELLS = 16          # the colours matched: the picture pooled to this many cells a side
FIT_LR = 0.1            # Adam's step on z (z is normalised: unit variance per dimension)
FIT_MAX_RES = 64        # larger models are rendered up to this block while fitting (cost)


def start_z(G: nn.Module, pictures: torch.Tensor, bank=None) -> torch.Tensor:
    """z [N, z_dim] of each picture's most alike bank image (anchors.similarity: the
    correlation of 8x8 colours), where the fit starts."""
    from engine.tools import anchors
    from engine.tools.latents import seed_to_z

    bank = bank or anchors.bank_for(G)
    best = anchors.similarity(pictures, bank).argmax(1) + bank.first_seed
    z = torch.cat([seed_to_z(int(s), G.cfg.z_dim) for s in best.tolist()])
    return z.to(G.mapping.w_avg.device)


def _fit_stop(G: nn.Module) -> str | None:
    """The block the fit renders up to: the output, or FIT_MAX_RES's block for a larger
    skip-architecture model (others are rendered whole)."""
    res = int(G.cfg.resolution)
    skip = getattr(G.cfg, "architecture", "") == "skip"
    return f"b{FIT_MAX_RES}" if res > FIT_MAX_RES and skip else None


def coarse_loss(rendered: torch.Tensor, pictures: torch.Tensor, cells: int | None = None
                ) -> torch.Tensor:
    """[N] mean squared difference of the cells x cells (FIT_CELLS) mean colours."""
    cells = FIT_CELLS if cells is None else int(cells)
    a = F.adaptive_avg_pool2d(rendered, cells)
    b = F.adaptive_avg_pool2d(pictures, cells)
    return (a - b).square().mean((1, 2, 3))


def fit_anchor_ws(G: nn.Module, pictures: torch.Tensor, ws: torch.Tensor, steps: int,
                  bank=None, lr: float | None = None) -> torch.Tensor:
    """Anchor ws [N, num_ws, w_dim] for framed pictures (NCHW, [-1, 1]) and the user's ws:
    the bank's most alike sample, then `steps` Adam steps on its z towards the pictures'
    coarse colours as the translation renders them. Deterministic (no noise, no sampling)."""
    from engine.tools import anchors

    z0 = start_z(G, pictures, bank)
    if int(steps) <= 0:
        return G.mapping(z0, None)
    stop = _fit_stop(G)
    with torch.inference_mode(False), torch.enable_grad():
        # Clones outside inference mode: autograd cannot save inference tensors.
        target = pictures.detach().clone().float()
        latent = ws.detach().clone().float()
        z = z0.detach().clone().requires_grad_(True)
        opt = torch.optim.Adam([z], lr=FIT_LR if lr is None else lr)
        for _ in range(int(steps)):
            mixed = anchors.with_latent(G, G.mapping(z, None), latent)
            rendered = G.synthesis(mixed, stop=stop)
            loss = coarse_loss(rendered, target).sum()
            (z.grad,) = torch.autograd.grad(loss, [z])
            opt.step()
        z = z.detach()
    return G.mapping(z, None)
