"""The model's own image that is laid out most like a picture: the translator's anchor.

A translation at domain strength s blends the encoder's activation with another one at the
start layer (engine/tools/translator.py, Translator.render). Blended towards the user's latent,
a lower s gives more of the model's content but puts the latent's head where the picture
had something else, so layout and domain trade almost one for one. Blended towards an
*anchor*, a latent of the model whose image already has the picture's coarse layout, a low
s keeps the layout and still draws nothing but the model's content.

The anchor is found by look-up, fast enough for every webcam frame: a bank holds the 8x8
luminance layout of the model's images for `count` fixed seeds; the picture's layout is
compared with all of them by correlation (the figure bench_translator.py reports as
"layout kept") and the best is taken (with `candidates` > 1: of that many best, the one
whose w is nearest the user's, so the latent chooses between good layouts; on the default
model 16 candidates kept less layout for the same gap, 0.615 vs 0.628 at gap 0.81). It is
truncated towards w_avg by `psi` (more typical faces: psi 0.8 closed 0.81 of the gap where
psi 1 closed 0.79, both keeping 0.63 of the layout). The anchor writes the layers up to
the start layer; the user's latent writes every later one.

The default model ships its bank (`engine/models/default_model/faces64.anchors.safetensors`, written
by `python -m engine.tools.anchors --model default --out FILE`); for any other model a smaller one
(build_count images) is rendered on first use, with progress and cancel, kept while the model
lives and on disk by its weights' sha256 (bank_cache_dir), so it is rendered once per model.
An interactive call (a translate or a webcam frame in the studio: `only_ready`) never renders
one: it is refused in a sentence and the studio makes it as a long job.
"""

from __future__ import annotations

import argparse
import contextlib
import contextvars
import os
import threading
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from engine.base.errors import StudioError, cancel_requested

CELLS = 8                    # the layout is the luminance pooled to CELLS x CELLS
FIRST_SEED = 5_000_000       # bank seeds: FIRST_SEED + i (none of the benchmarks' seeds)
BANK_SIZE = 4096             # images in a shipped bank
CANDIDATES = 1               # best layouts among which the latent chooses
BLEND = 4                    # the anchor is the similarity-weighted mean w of this many best
BLEND_SHARPNESS = 40.0       # softmax(correlation * this) weighs them (0: a plain mean)
LATENT_BLOCKS = 1            # the user's latent writes this many last (finest) blocks; the
                             # anchor every earlier one (its colours and coarse shapes)
PSI = 0.8                    # truncation of the anchor towards w_avg
STICKY = 0.05                # a kept anchor stays while within this correlation of the best
BUILD_PIXELS = 1024 * 64 * 64  # a bank built on first use renders about this many pixels,
BUILD_RANGE = (256, 1024)      # ... in this many images
SHIPPED = (Path(__file__).resolve().parents[1] / "models" / "default_model"
           / "faces64.anchors.safetensors")
FORMAT = "activation-studio-anchors"
_LUMA = (0.299, 0.587, 0.114)  # Rec. 601, as the benchmark's layout figure


def colour_layouts(images: torch.Tensor, cells: int = CELLS) -> torch.Tensor:
    """NCHW RGB images -> [N, cells * cells * 3] mean colours per cell, zero mean and unit
    length over all of them: the dot product of two is the correlation that
    bench_translator.py reports as "colour kept" (where light, dark and each hue sit)."""
    flat = F.adaptive_avg_pool2d(images.float(), cells).flatten(1)
    flat = flat - flat.mean(1, keepdim=True)
    return flat / flat.norm(dim=1, keepdim=True).clamp_min(1e-6)


def layouts(images: torch.Tensor, cells: int = CELLS) -> torch.Tensor:
    """NCHW RGB images -> [N, cells * cells] luminance layouts, zero mean and unit length
    (the dot product of two is their Pearson correlation)."""
    luma = torch.tensor(_LUMA, device=images.device, dtype=torch.float32).view(1, 3, 1, 1)
    lum = (images.float() * luma).sum(1, keepdim=True)
    flat = F.adaptive_avg_pool2d(lum, cells).flatten(1)
    flat = flat - flat.mean(1, keepdim=True)
    return flat / flat.norm(dim=1, keepdim=True).clamp_min(1e-6)


@dataclass
class AnchorBank:
    """Layouts of the model's images for seeds first_seed .. first_seed + count - 1."""
    layouts: torch.Tensor          # [count, CELLS * CELLS] float32, as layouts()
    first_seed: int
    weights_sha256: str  # the generator's weights (engine.gan.networks.weights_sha256)
    colours: torch.Tensor | None = None  # [count, CELLS * CELLS * 3], as colour_layouts()

    @property
    def count(self) -> int:
        return int(self.layouts.shape[0])

    def save(self, path: str | Path) -> Path:
        from safetensors.torch import save_file

        from engine.base.files import atomic_write

        meta = {"format": FORMAT, "first_seed": str(self.first_seed), "cells": str(CELLS),
                "base_model_weights_sha256": self.weights_sha256}
        tensors = {"layouts": self.layouts.to(torch.float16).contiguous()}
        if self.colours is not None:
            tensors["colours"] = self.colours.to(torch.float16).contiguous()
        atomic_write(Path(path), lambda tmp: save_file(tensors, str(tmp), metadata=meta))
        return Path(path)

    @classmethod
    def load(cls, path: str | Path) -> AnchorBank:
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(str(path), "pt") as f:
                meta = f.metadata() or {}
                table = f.get_tensor("layouts").float()
                colours = (f.get_tensor("colours").float() if "colours" in f.keys()
                           else None)
        except (SafetensorError, OSError, KeyError) as exc:
            raise StudioError(f"{path} is not an anchor bank (python -m engine.tools.anchors "
                              f"writes one)") from exc
        if meta.get("format") != FORMAT or int(meta.get("cells", 0)) != CELLS \
                or table.ndim != 2 or table.shape[1] != CELLS * CELLS:
            raise StudioError(f"{path} is not an anchor bank of {CELLS}x{CELLS} layouts")
        if colours is not None and colours.shape != (table.shape[0], CELLS * CELLS * 3):
            raise StudioError(f"{path}: its colour layouts do not match its layouts")
        return cls(table, int(meta["first_seed"]), meta.get("base_model_weights_sha256", ""),
                   colours)


def seed_ws(G: nn.Module, seeds: list[int], psi: float | None = None) -> torch.Tensor:
    """ws [len(seeds), num_ws, w_dim] of bank seeds, truncated by psi (PSI)."""
    from engine.tools.latents import seed_to_z

    z = torch.cat([seed_to_z(s, G.cfg.z_dim) for s in seeds]).to(G.mapping.w_avg.device)
    return G.mapping(z, None, psi=PSI if psi is None else psi)


class BankCancelled(StudioError):
    """The user cancelled the rendering of an anchor bank."""


@torch.no_grad()
def build_bank(G: nn.Module, count: int, first_seed: int = FIRST_SEED, batch: int = 64,
               weights_sha256: str | None = None,
               progress: Callable[[float, str], None] | None = None, cancel: Any = None
               ) -> AnchorBank:
    """Render `count` images of G (psi 1, constant noise) and keep their layouts, as the
    file stores them (float16), so a bank read back chooses as the one built. progress
    (fraction, message) after each batch; `cancel` (engine.base.errors.cancel_requested) is
    checked before each and raises BankCancelled."""
    from engine.gan.networks import weights_sha256 as sha_of

    out, colours = [], []
    for start in range(0, count, batch):
        if cancel_requested(cancel):
            raise BankCancelled("making the anchor bank was cancelled.")
        seeds = list(range(first_seed + start, first_seed + min(count, start + batch)))
        img = G.synthesis(seed_ws(G, seeds, psi=1.0))
        out.append(layouts(img).cpu().half().float())
        colours.append(colour_layouts(img).cpu().half().float())
        if progress is not None:
            done = start + len(seeds)
            progress(done / count, f"anchor bank: {done} of {count} images")
    return AnchorBank(torch.cat(out), first_seed, weights_sha256 or sha_of(G),
                      torch.cat(colours))


def build_count(G: nn.Module) -> int:
    """Images in a bank built on first use: fewer for larger models (render time)."""
    res = int(G.cfg.resolution)
    return max(BUILD_RANGE[0], min(BUILD_RANGE[1], BUILD_PIXELS // (res * res)))


_banks: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_banks_lock = threading.Lock()
_ONLY_READY: contextvars.ContextVar[bool] = contextvars.ContextVar("anchors_only_ready",
                                                                   default=False)


def bank_cache_dir() -> Path:
    """~/.cache/activation-studio/anchors, or $ACTIVATION_STUDIO_CACHE/anchors."""
    root = os.environ.get("ACTIVATION_STUDIO_CACHE")
    base = Path(root) if root else Path.home() / ".cache" / "activation-studio"
    return base / "anchors"


def _cached_path(sha: str) -> Path:
    return bank_cache_dir() / f"{sha}.anchors.safetensors"


@contextlib.contextmanager
def only_ready() -> Iterator[None]:
    """Inside: bank_for returns a bank that is ready (shipped, kept or on disk) and refuses,
    in one sentence, one it would have to render (seconds to minutes by the model)."""
    token = _ONLY_READY.set(True)
    try:
        yield
    finally:
        _ONLY_READY.reset(token)


def ready_bank(G: nn.Module) -> AnchorBank | None:
    """G's bank when it needs no rendering: kept for G, shipped for its weights, or on disk
    (bank_cache_dir) from an earlier build for its weights; None otherwise."""
    from engine.gan.networks import weights_sha256, weights_stamp

    stamp = weights_stamp(G)
    with _banks_lock:
        hit = _banks.get(G)
    if hit is not None and hit[0] == stamp:
        return hit[1]
    sha = weights_sha256(G)
    bank = None
    for path in (SHIPPED, _cached_path(sha)):
        if path.is_file():
            try:
                found = AnchorBank.load(path)
            except StudioError:
                continue   # a damaged cache file: rendered again
            if found.weights_sha256 == sha and found.colours is not None:
                bank = found
                break
    if bank is not None:
        with _banks_lock:
            _banks[G] = (stamp, bank)
    return bank


def bank_for(G: nn.Module, progress: Callable[[float, str], None] | None = None,
             cancel: Any = None) -> AnchorBank:
    """G's bank: a ready one (ready_bank), else one rendered now (build_count images, with
    progress and cancel as build_bank), kept for G and written to bank_cache_dir. Inside
    only_ready() a bank that is not ready is refused in a sentence instead."""
    from engine.gan.networks import weights_sha256, weights_stamp

    bank = ready_bank(G)
    if bank is not None:
        return bank
    if _ONLY_READY.get():
        raise StudioError(
            "this model has no anchor bank yet (the images 'blend towards: match' picks "
            "from): translate a picture once to make it (a long job with progress), or "
            "blend towards the latent.")
    stamp, sha = weights_stamp(G), weights_sha256(G)
    bank = build_bank(G, build_count(G), weights_sha256=sha, progress=progress, cancel=cancel)
    try:
        bank.save(_cached_path(sha))
    except OSError:
        pass   # a read-only cache: the bank still lives with G
    with _banks_lock:
        _banks[G] = (stamp, bank)
    return bank


def choose(G: nn.Module, pictures: torch.Tensor, ws: torch.Tensor,
           bank: AnchorBank | None = None, candidates: int | None = None,
           psi: float | None = None, keep: torch.Tensor | None = None,
           margin: float = STICKY) -> torch.Tensor:
    """Bank indices [N] of the pictures' anchors (NCHW, [-1, 1], any size): among the
    `candidates` (CANDIDATES) bank images laid out most like each, the one whose w (psi
    PSI) is nearest to that picture's ws[:, 0]. `keep` (an index per picture, -1 for none)
    stays chosen while its layout correlates within `margin` of the best one's: webcam
    frames of one scene then keep one face instead of flickering between near-equals."""
    bank = bank or bank_for(G)
    candidates = CANDIDATES if candidates is None else candidates
    score = similarity(pictures, bank)                                    # [N, count]
    k = max(1, min(int(candidates), bank.count))
    top = score.topk(k, dim=1).indices                                    # [N, k]
    rows = torch.arange(top.shape[0], device=top.device)
    best = top[:, 0]
    if k > 1:
        cand = seed_ws(G, (top + bank.first_seed).flatten().tolist(), psi)
        cand = cand.view(top.shape[0], k, *cand.shape[1:])
        dist = (cand[:, :, 0] - ws[:, None, 0].to(cand)).pow(2).sum(-1)   # [N, k]
        best = top[rows, dist.argmin(1).to(top.device)]
    if keep is not None:
        keep = keep.to(best.device)
        held = score[rows, keep.clamp(0, bank.count - 1)]
        stay = (keep >= 0) & (keep < bank.count) & (held >= score[rows, best] - margin)
        best = torch.where(stay, keep, best)
    return best


def similarity(pictures: torch.Tensor, bank: AnchorBank) -> torch.Tensor:
    """[N, count] how alike each picture and each bank image are: the correlation of their
    8x8 colours (light, dark and hue together) when the bank holds them, else of their
    luminance layouts."""
    if bank.colours is not None:
        return colour_layouts(pictures) @ bank.colours.to(pictures.device).T
    return layouts(pictures) @ bank.layouts.to(pictures.device).T


@torch.no_grad()
def blended_ws(G: nn.Module, pictures: torch.Tensor, bank: AnchorBank | None = None,
               count: int = BLEND, sharpness: float = BLEND_SHARPNESS,
               psi: float | None = None) -> torch.Tensor:
    """For each picture the mean w of its `count` most alike bank images, weighted by
    softmax(similarity * sharpness), truncated by psi (PSI): [N, num_ws, w_dim]. A mean of
    a few near neighbours in W is still the model's own image, closer to the picture than
    any one of them, and different pictures get different anchors."""
    bank = bank or bank_for(G)
    score = similarity(pictures, bank)
    k = max(1, min(int(count), bank.count))
    top = score.topk(k, dim=1)
    weight = torch.softmax(top.values * sharpness, dim=1)                 # [N, k]
    cand = seed_ws(G, (top.indices + bank.first_seed).flatten().tolist(), psi)
    cand = cand.view(top.indices.shape[0], k, *cand.shape[1:])
    weight = weight.to(device=cand.device, dtype=cand.dtype)   # (.to(tensor): CPU on ZeroGPU)
    return (weight[:, :, None, None] * cand).sum(1)


def anchor_ws(G: nn.Module, pictures: torch.Tensor, ws: torch.Tensor,
              bank: AnchorBank | None = None, candidates: int | None = None,
              psi: float | None = None, blend: int | None = None) -> torch.Tensor:
    """For each picture the ws of its anchor: the blend of its `blend` (BLEND) most alike
    bank images (blended_ws), or with blend 1 the one choose() picks; truncated by psi."""
    bank = bank or bank_for(G)
    blend = BLEND if blend is None else int(blend)
    if blend > 1:
        out = blended_ws(G, pictures, bank, count=blend, psi=psi)
    else:
        idx = choose(G, pictures, ws, bank, candidates, psi)
        out = seed_ws(G, (idx + bank.first_seed).tolist(), psi)
    return out.to(device=ws.device, dtype=ws.dtype)


def with_latent(G: nn.Module, anchor: torch.Tensor, ws: torch.Tensor,
                latent_blocks: int | None = None) -> torch.Tensor:
    """The ws a translation's later layers read: the user's latent's for the last
    `latent_blocks` (LATENT_BLOCKS) blocks, the anchor's for every earlier one."""
    blocks = LATENT_BLOCKS if latent_blocks is None else int(latent_blocks)
    index = getattr(G.synthesis, "w_index", {})
    first = int(G.cfg.resolution) >> max(blocks - 1, 0)
    if blocks < 1 or first not in index:   # (StyleGAN3 has no blocks: the latent's ws)
        return ws
    cut = index[first]
    return torch.cat([anchor[:, :cut], ws[:, cut:]], 1)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="Write a model's anchor bank (the layouts of "
                                             "its images for fixed seeds).")
    ap.add_argument("--model", default="default", help="engine.models.zoo spec")
    ap.add_argument("--count", type=int, default=BANK_SIZE)
    ap.add_argument("--out", required=True, help="the .safetensors file to write")
    args = ap.parse_args(argv)
    from engine.models import zoo

    m = zoo.load(args.model)
    bank = build_bank(m.G, args.count)
    print(f"{bank.save(args.out)}: {bank.count} layouts of {args.model}")


if __name__ == "__main__":
    main()

