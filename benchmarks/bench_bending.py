"""Bending overhead: render time with 3 bends on 2 layers vs no bends, same batch.

Runs are interleaved (none, bent, bent, none, ...) so drift in machine load hits both
sides alike; the figure is the ratio of median times. Models: the embedded default model
(or, while it is still training, the latest snapshot of its run) and a 256 px random model
with channel_base 16384. Target: overhead under 10 %.

    python benchmarks/bench_bending.py [--batch 8] [--reps 9] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.gan.stylegan2 import Generator, GeneratorConfig  # noqa: E402
from engine.recipes.recipe import Recipe, render_tensor  # noqa: E402
from engine.tools.bending import Bend, ChannelSelection  # noqa: E402

SNAPSHOT = Path("/work/runs/faces64/checkpoint.pt")
FACES64 = dict(z_dim=128, w_dim=128, resolution=64, channel_base=2048, channel_max=128,
               mapping_layers=4)


def default_model(device: str) -> tuple[str, Generator] | None:
    from engine.models import zoo

    if zoo.DEFAULT_MODEL_PATH.exists():
        return "default (faces64)", zoo.load("default", device=device).G
    if SNAPSHOT.exists():
        with tempfile.TemporaryDirectory() as tmp:  # the trainer replaces the file
            copy = Path(tmp) / "snap.pt"
            shutil.copy(SNAPSHOT, copy)
            state = torch.load(copy, map_location="cpu", weights_only=True)
        G = Generator(GeneratorConfig(**FACES64))
        G.load_state_dict(state["G_ema"])
        return "faces64 training snapshot", G.eval().requires_grad_(False).to(device)
    return None


def random256(device: str) -> tuple[str, Generator]:
    torch.manual_seed(0)
    G = Generator(GeneratorConfig(resolution=256, channel_base=16384))
    return "random 256 px, channel_base 16384", G.eval().requires_grad_(False).to(device)


def bends_for(G: Generator) -> list[Bend]:
    """3 bends on 2 mid layers: rotate + ablate half the channels, then a translate."""
    res = [r for r in G.cfg.block_resolutions if r >= 16]
    a, b = f"b{res[0]}.conv0", f"b{res[1]}.conv1"
    return [Bend(a, "rotate", {"angle": 45.0}),
            Bend(a, "ablate", channels=ChannelSelection("random", fraction=0.5, seed=0)),
            Bend(b, "translate", {"x_shift": 0.25, "y_shift": -0.1})]


def timed(fn, device: str) -> float:
    if device == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    fn()
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t


def bench(name: str, G: Generator, batch: int, reps: int, device: str) -> float:
    plain = Recipe()
    bent = Recipe(bends=bends_for(G))
    gen = torch.Generator().manual_seed(0)
    ws = G.mapping(torch.randn(batch, G.cfg.z_dim, generator=gen).to(device))
    with torch.no_grad():
        def run_plain():
            return render_tensor(plain, G, ws=ws)

        def run_bent():
            return render_tensor(bent, G, ws=ws)

        for _ in range(2):  # warm-up: allocator, kernels, lazy imports
            run_plain()
            run_bent()
        t_plain, t_bent = [], []
        for i in range(reps):
            order = [(run_plain, t_plain), (run_bent, t_bent)]
            for fn, out in order if i % 2 == 0 else order[::-1]:
                out.append(timed(fn, device))
    mp, mb = statistics.median(t_plain), statistics.median(t_bent)
    ratio = mb / mp
    pairs = statistics.median(b / p for p, b in zip(t_plain, t_bent))
    print(f"{name}: batch {batch} on {device}, {reps} interleaved runs")
    print(f"  no bends     median {mp * 1000:8.1f} ms  ({mp / batch * 1000:.1f} ms/image)")
    print(f"  3 bends / 2  median {mb * 1000:8.1f} ms  ({mb / batch * 1000:.1f} ms/image)")
    print(f"  overhead     {100 * (ratio - 1):+.1f} % (ratio of medians {ratio:.3f}; "
          f"median pairwise ratio {pairs:.3f})  target < 10 %")
    return ratio


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--reps", type=int, default=9)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--only", choices=["default", "random256"], default=None)
    args = ap.parse_args()
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, device "
          f"{args.device}" + (f" ({torch.cuda.get_device_name()})" if args.device == "cuda"
                              else ""))
    if args.only in (None, "default"):
        found = default_model(args.device)
        if found is None:
            print("default model: not available (neither the shipped file nor a snapshot)")
        else:
            bench(*found, args.batch, args.reps, args.device)
    if args.only in (None, "random256"):
        bench(*random256(args.device), args.batch, args.reps, args.device)


if __name__ == "__main__":
    main()
