"""Projection benchmark: PSNR and time per step on images the model generated itself.

    python benchmarks/bench_projector.py --model default --steps 500 --seeds 1,2,3
    python benchmarks/bench_projector.py --checkpoint /path/to/train_state.pt  # G_ema inside

Prints one line per seed and configuration, then the mean PSNR.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time

import numpy as np
import torch

from engine.tools.latents import render_ws, seed_to_ws
from engine.tools.projector import project


def load_model(args: argparse.Namespace) -> torch.nn.Module:
    if args.checkpoint:
        from engine.gan.stylegan2 import Generator, GeneratorConfig
        # The trainer replaces its checkpoint every few minutes: read a private copy.
        with tempfile.NamedTemporaryFile(suffix=".pt") as tmp:
            shutil.copyfile(args.checkpoint, tmp.name)
            state = torch.load(tmp.name, map_location="cpu", weights_only=True)
        G = Generator(GeneratorConfig(z_dim=128, w_dim=128, resolution=64, channel_base=2048,
                                      channel_max=128, mapping_layers=4))
        G.load_state_dict(state["G_ema"])
        return G.eval()
    from engine.models import zoo
    return zoo.load(args.model).G


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", default="default")
    ap.add_argument("--checkpoint", default=None, help="trainer checkpoint with G_ema")
    ap.add_argument("--steps", type=int, default=500)
    ap.add_argument("--seeds", default="1,2,3")
    ap.add_argument("--configs", default="wplus+noise,wplus,w",
                    help="comma list of wplus+noise | wplus | w")
    ap.add_argument("--psi", type=float, default=1.0)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()
    G = load_model(args).to(args.device)
    print(f"device {args.device}, resolution {G.resolution}, num_ws {G.num_ws}, "
          f"steps {args.steps}")
    results: dict[str, list[float]] = {}
    for seed in [int(s) for s in args.seeds.split(",")]:
        target = render_ws(G, seed_to_ws(G, seed, psi=args.psi))[0]
        for conf in args.configs.split(","):
            t0 = time.perf_counter()
            r = project(G, target, steps=args.steps, w_plus=conf != "w",
                        optimize_noise=conf.endswith("noise"), frame_every=10 ** 9, seed=seed)
            dt = time.perf_counter() - t0
            results.setdefault(conf, []).append(r.psnr)
            print(f"seed {seed:4d} {conf:12s} PSNR {r.psnr:6.2f} dB (const noise "
                  f"{r.psnr_const:6.2f}) {1000 * dt / args.steps:7.1f} ms/step  "
                  f"loss={r.loss_name}", flush=True)
    for conf, vals in results.items():
        print(f"mean {conf:12s} PSNR {np.mean(vals):6.2f} dB over {len(vals)} images")


if __name__ == "__main__":
    main()
