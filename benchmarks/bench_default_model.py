"""Quality of the embedded default model: sliced Wasserstein distance (Laplacian patches).

Prints SWD x1e3 against the procedural training distribution for: a second draw of real
faces (the floor), the shipped model, and a random-weight generator of the same shape.
Usage: python benchmarks/bench_default_model.py [--count 2000] [--model PATH]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.base.metrics import swd  # noqa: E402
from engine.gan.stylegan2 import Generator  # noqa: E402
from engine.models import zoo  # noqa: E402
from engine.training.faces import render_faces  # noqa: E402


def generate(G: Generator, count: int, first_seed: int, psi: float = 1.0) -> np.ndarray:
    out = []
    with torch.no_grad():
        for start in range(first_seed, first_seed + count, 64):
            seeds = range(start, min(start + 64, first_seed + count))
            z = torch.cat([G.seed_to_z(s) for s in seeds])
            img = G(z, psi=psi)
            out.append(((img.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
                       .permute(0, 2, 3, 1).numpy())
    return np.concatenate(out)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument("--model", default="default")
    args = parser.parse_args()
    t0 = time.time()
    model = zoo.load(args.model, device="cpu")
    reals = render_faces(range(10_000_000, 10_000_000 + args.count), model.resolution)
    reals2 = render_faces(range(20_000_000, 20_000_000 + args.count), model.resolution)
    fakes = generate(model.G, args.count, 0)
    torch.manual_seed(0)
    random_G = Generator(model.G.cfg).eval()
    randoms = generate(random_G, args.count, 0)
    figures = {
        "floor (second draw of real faces)": swd(reals, reals2),
        "shipped model (psi 1)": swd(reals, fakes),
        "random-weight generator": swd(reals, randoms),
    }
    for name, value in figures.items():
        levels = ", ".join(f"{k}px {v:.1f}" for k, v in value.items() if k != "mean")
        print(f"{name:36s} SWD x1e3 mean {value['mean']:7.2f}   ({levels})")
    print(f"images per set: {args.count}; {time.time() - t0:.0f} s")
    print(json.dumps({k: v["mean"] for k, v in figures.items()}))


if __name__ == "__main__":
    main()
