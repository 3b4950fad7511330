"""Generator speed: images/s at batch 1 and 8, multiply-adds per image, and how close the
achieved arithmetic rate comes to a measured fp32 matmul peak on the same machine.

Models: a random 256 px generator with channel_base 16384 (channel_max 512, z/w 512, 8
mapping layers: the NVlabs 256 px config) and the tiny test model (32 px, channel_base
1024, channel_max 32, z/w 32). Multiply-adds are counted analytically from the config for
what engine.stylegan2 actually runs (non-fused path: input scaling, one plain conv, output
scaling) and cross-checked with torch's FLOP counter, which sees only convs and matmuls.

Timings take the best of `--reps` runs after a warm-up, so load from other processes
inflates them less; they still depend on the threads torch may use (OMP_NUM_THREADS).

    python benchmarks/bench_generator.py [--reps 3] [--device cpu|cuda] [--skip-big]
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.stylegan2 import Generator, GeneratorConfig  # noqa: E402

MODELS = {
    "256px cb16384": dict(z_dim=512, w_dim=512, resolution=256, channel_base=16384,
                          channel_max=512, mapping_layers=8),
    "tiny (tests)": dict(z_dim=32, w_dim=32, resolution=32, channel_base=1024, channel_max=32,
                         mapping_layers=2),
}
BATCHES = (1, 8)
FIR_TAPS = 16  # the 4x4 resampling filter


def count_macs(cfg: GeneratorConfig) -> dict[str, int]:
    """Multiply-adds per image of one forward pass (mapping + synthesis), by kind.

    conv:     3x3 convs; conv0 is a stride-2 transposed conv, (res/2)^2 * Cin * Cout * 9.
    modulate: affine layers (w -> styles), demodulation coefficients (styles^2 @ sum W^2),
              input scaling by styles and output scaling by the coefficients.
    resample: the 4x4 FIR after each upsampling conv and on the skip image.
    torgb:    1x1 convs to RGB.
    mapping:  the FC layers (and label embedding).
    Bias, noise, activations and clamps are elementwise and left out.
    """
    macs = dict(mapping=0, modulate=0, conv=0, resample=0, torgb=0)
    embed = 0 if cfg.c_dim == 0 else (cfg.embed_features or cfg.w_dim)
    hidden = cfg.layer_features or cfg.w_dim
    feats = [cfg.z_dim + embed] + [hidden] * (cfg.mapping_layers - 1) + [cfg.w_dim]
    macs["mapping"] = sum(a * b for a, b in zip(feats[:-1], feats[1:]))
    if cfg.c_dim:
        macs["mapping"] += cfg.c_dim * embed
    img = cfg.img_channels
    for res in cfg.block_resolutions:
        out_ch = cfg.channels(res)
        convs = []  # (in_ch, input pixels, up)
        if res > 4:
            in_ch = cfg.channels(res // 2)
            convs.append((in_ch, (res // 2) ** 2, True))
        convs.append((out_ch, res * res, False))
        for in_ch, pixels_in, up in convs:
            macs["modulate"] += cfg.w_dim * in_ch            # affine
            macs["modulate"] += in_ch * out_ch               # demod coefficients
            macs["modulate"] += in_ch * pixels_in + out_ch * res * res  # scale in, scale out
            macs["conv"] += pixels_in * in_ch * out_ch * 9
            if up:  # the 4x4 FIR that brings the transposed conv's res+1 output to res
                macs["resample"] += res * res * out_ch * FIR_TAPS
        if cfg.architecture == "skip" or res == cfg.resolution:
            macs["modulate"] += cfg.w_dim * out_ch + out_ch * res * res
            macs["torgb"] += res * res * out_ch * img
            if res > 4 and cfg.architecture == "skip":
                macs["resample"] += res * res * img * FIR_TAPS // 4  # stride-2 transposed
    macs["total"] = sum(macs.values())
    return macs


def counted_flops(G: Generator, device: str) -> int:
    """FLOPs of one image as torch's FlopCounterMode sees them (convs and matmuls only)."""
    from torch.utils.flop_counter import FlopCounterMode

    z = torch.randn(1, G.cfg.z_dim, device=device)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        G(z)
    return int(counter.get_total_flops())


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def best_time(fn, reps: int, device: str) -> float:
    fn()  # warm-up: allocator, kernels, caches
    sync(device)
    best = math.inf
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        sync(device)
        best = min(best, time.perf_counter() - t0)
    return best


def matmul_peak(device: str, n: int, reps: int) -> float:
    """Best fp32 GFLOP/s of an n x n matmul (2 n^3 FLOPs)."""
    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)
    t = best_time(lambda: torch.mm(a, b), reps, device)
    return 2 * n ** 3 / t / 1e9


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--skip-big", action="store_true", help="only the tiny model")
    ap.add_argument("--matmul-n", type=int, default=1024)
    args = ap.parse_args()
    dev = args.device
    torch.manual_seed(0)
    name = torch.cuda.get_device_name(0) if dev.startswith("cuda") else "CPU"
    print(f"device {dev} ({name}), torch {torch.__version__}, threads "
          f"{torch.get_num_threads()}")
    peak = matmul_peak(dev, args.matmul_n, max(args.reps, 5))
    print(f"fp32 matmul peak ({args.matmul_n}^3): {peak:.1f} GFLOP/s\n")
    header = (f"{'model':<15} {'batch':>5} {'img/s':>9} {'ms/img':>9} {'GMAC/img':>9} "
              f"{'GFLOP/s':>8} {'of peak':>8}")
    print(header)
    print("-" * len(header))
    notes = []
    for label, kw in MODELS.items():
        if args.skip_big and "256" in label:
            continue
        cfg = GeneratorConfig(**kw)
        G = Generator(cfg).eval().requires_grad_(False).to(dev)
        macs = count_macs(cfg)
        flops_counter = counted_flops(G, dev)
        share = ", ".join(f"{k} {v / macs['total']:.1%}" for k, v in macs.items()
                          if k != "total")
        notes.append(f"{label}: {macs['total'] / 1e9:.3f} GMAC/img analytic ({share}); "
                     f"torch FlopCounterMode (convs incl. FIR, matmuls): "
                     f"{flops_counter / 2e9:.3f} GMAC")
        for batch in BATCHES:
            z = torch.randn(batch, cfg.z_dim, device=dev)

            def run(z=z, G=G):
                with torch.no_grad():
                    G(z)

            reps = args.reps if "tiny" not in label else args.reps * 5
            t = best_time(run, reps, dev)
            ips = batch / t
            gflops = 2 * macs["total"] * ips / 1e9
            print(f"{label:<15} {batch:>5} {ips:>9.2f} {1000 / ips:>9.1f} "
                  f"{macs['total'] / 1e9:>9.3f} {gflops:>8.1f} {gflops / peak:>8.1%}")
    print()
    for n in notes:
        print(n)


if __name__ == "__main__":
    main()
