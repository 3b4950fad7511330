"""Directions and blending: how close, how many labels, how fast.

1. SeFa on the default model against the official formula (genforce/sefa, re-derived here
   in numpy: unit style-channel rows, every conv + the last ToRGB) and against rosinality's
   closed_form_factorization.py (no normalisation, no ToRGB): |cos| of directions 1-5 and
   the smallest principal cosine of the top-1/3/5 subspaces.
2. Boundaries from labels: labels made from a known random direction on the default model's
   w (optionally with a share flipped, as a tired labeller would), |cos| of the recovered
   boundary and its cross-validated accuracy against the number of labelled samples.
3. Blending: time to build a blend (default model and a 256 px model), and render time of
   the blend vs model A, interleaved.

    python benchmarks/bench_directions.py [--repeats 3] [--flip 0.1]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.gan.stylegan2 import Generator, GeneratorConfig  # noqa: E402
from engine.models import zoo  # noqa: E402
from engine.tools.blend import BlendSpec, blend_generators, block_alphas  # noqa: E402
from engine.tools.boundaries import seeds_to_w, train_boundary  # noqa: E402
from engine.tools.latents import clear_caches, sefa_directions, sefa_layer_names  # noqa: E402


def _affine(G: torch.nn.Module, name: str) -> np.ndarray:
    block, part = name.split(".")
    return getattr(getattr(G.synthesis, block), part).affine.weight.detach().double().numpy()


def official_sefa(G: torch.nn.Module) -> np.ndarray:
    w = np.concatenate([_affine(G, n).T for n in sefa_layer_names(G)], axis=1)
    w = w / np.linalg.norm(w, axis=0, keepdims=True)
    values, vectors = np.linalg.eigh(w @ w.T)
    return vectors[:, ::-1].T


def rosinality_sefa(G: torch.nn.Module) -> np.ndarray:
    convs = [n for n in G.synthesis.layers if not n.endswith("torgb")]
    w = np.concatenate([_affine(G, n) for n in convs])
    return np.linalg.svd(w, full_matrices=False)[2]


def agreement(ours: np.ndarray, ref: np.ndarray) -> str:
    per = np.abs((ours[:5] * ref[:5]).sum(1))
    sub = [np.linalg.svd(ours[:k] @ ref[:k].T, compute_uv=False).min() for k in (1, 3, 5)]
    return (f"|cos| d1-d5 {' '.join(f'{c:.4f}' for c in per)}; subspace top1/3/5 "
            f"{' '.join(f'{s:.4f}' for s in sub)}")


def bench_sefa(G: torch.nn.Module) -> None:
    clear_caches()
    t = time.perf_counter()
    ours = sefa_directions(G, top=G.cfg.w_dim).astype(np.float64)
    ms = (time.perf_counter() - t) * 1e3
    print(f"SeFa ({len(sefa_layer_names(G))} layers, {ms:.1f} ms uncached)")
    print(f"  vs official formula:   {agreement(ours, official_sefa(G))}")
    print(f"  vs rosinality formula: {agreement(ours, rosinality_sefa(G))}")


def bench_boundaries(G: torch.nn.Module, repeats: int, flip: float) -> None:
    pool = seeds_to_w(G, list(range(2000)))
    print(f"Boundaries (w_dim {G.cfg.w_dim}; labels from a known direction, {flip:.0%} "
          f"flipped; median of {repeats})")
    print("  labelled   |cos|   CV acc   fit ms")
    for n in (16, 32, 64, 128, 256, 512, 1000):
        cosines, accs, times = [], [], []
        for r in range(repeats):
            rng = np.random.RandomState(100 + r)
            truth = rng.randn(pool.shape[1])
            truth /= np.linalg.norm(truth)
            w = pool[rng.permutation(len(pool))[:n]]
            labels = (w - pool.mean(0)) @ truth > 0
            labels ^= rng.rand(n) < flip
            if min(labels.sum(), (~labels).sum()) < 2:
                continue
            t = time.perf_counter()
            fit = train_boundary(w, labels)
            times.append((time.perf_counter() - t) * 1e3)
            cosines.append(float(fit.boundary[0] @ truth))
            accs.append(fit.cv_accuracy)
        print(f"  {n:8d}   {statistics.median(cosines):.3f}   {statistics.median(accs):.3f}"
              f"   {statistics.median(times):7.1f}")


def bench_blend(name: str, A: torch.nn.Module, repeats: int) -> None:
    B = Generator(A.cfg).eval()
    B.load_state_dict({k: v + 0.01 * torch.randn_like(v) if v.is_floating_point() else v
                       for k, v in A.state_dict().items()})
    spec = BlendSpec(model="B", mode="interpolate", alpha=0.5)
    alphas = block_alphas(spec, A)
    build, render_a, render_ab = [], [], []
    ws = A.mapping(torch.randn(4, A.cfg.z_dim))
    with torch.no_grad():
        for _ in range(repeats):
            t = time.perf_counter()
            AB = blend_generators(A, B, alphas)
            build.append(time.perf_counter() - t)
            for G, out in ((A, render_a), (AB, render_ab), (AB, render_ab), (A, render_a)):
                t = time.perf_counter()
                G.synthesis(ws)
                out.append(time.perf_counter() - t)
    params = sum(p.numel() for p in A.parameters()) / 1e6
    print(f"Blend {name} ({params:.1f} M parameters): build {statistics.median(build) * 1e3:.0f}"
          f" ms; render batch 4: A {statistics.median(render_a) * 1e3:.0f} ms, blend "
          f"{statistics.median(render_ab) * 1e3:.0f} ms")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--flip", type=float, default=0.0, help="share of labels flipped")
    args = ap.parse_args()
    torch.manual_seed(0)
    G = zoo.load("default").G
    bench_sefa(G)
    bench_boundaries(G, args.repeats, args.flip)
    bench_blend("default 64 px", G, args.repeats)
    big = Generator(GeneratorConfig(resolution=256, channel_base=16384, channel_max=512)).eval()
    bench_blend("random 256 px", big, args.repeats)


if __name__ == "__main__":
    main()
