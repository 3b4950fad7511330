"""StyleGAN3 render time per image on this machine (CPU unless --device cuda).

Builds NVlabs-sized stylegan3-t and -r generators with random weights (no download; the
time does not depend on the weights) and prints the median seconds per 256 px image, and
the share of it spent in the filtered leaky ReLU, for the tiled-matmul implementation and
for a direct one (zero stuffing + depthwise convolutions, the textbook reading), run
interleaved so machine load hits both alike.

    python benchmarks/bench_stylegan3.py [--resolution 256] [--repeats 3] [--batch 1]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from unittest import mock

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine import stylegan3  # noqa: E402
from engine.stylegan3 import Generator, StyleGAN3Config  # noqa: E402


def direct_filtered_lrelu(x, fu, fd, b, up=1, down=1, padding=(0, 0, 0, 0), gain=2 ** 0.5,
                          slope=0.2, clamp=None):
    """The textbook order: zero stuffing, padding, depthwise convolutions, subsampling."""
    n, c, h, w = x.shape
    x = x + b.reshape(1, -1, 1, 1)
    if up > 1:
        y = x.new_zeros(n, c, h * up, w * up)
        y[:, :, ::up, ::up] = x
        x = y
    x = F.pad(x, padding)
    if fu is not None:
        k = torch.outer(fu, fu) if fu.ndim == 1 else fu
        x = F.conv2d(x, (k * up * up).flip([0, 1])[None, None].repeat(c, 1, 1, 1), groups=c)
    x = F.leaky_relu(x, slope) * gain if slope != 1 else x * gain
    if clamp is not None:
        x = x.clamp(-clamp, clamp)
    if fd is not None:
        k = torch.outer(fd, fd) if fd.ndim == 1 else fd
        x = F.conv2d(x, k.flip([0, 1])[None, None].repeat(c, 1, 1, 1), groups=c)
    return x[:, :, ::down, ::down]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--resolution", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--skip-direct", action="store_true", help="time only our implementation")
    args = ap.parse_args()
    device = torch.device(args.device)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), device {device}, "
          f"batch {args.batch}")
    for preset in stylegan3.CONFIGS:
        torch.manual_seed(0)
        G = Generator(StyleGAN3Config.preset(preset, resolution=args.resolution)).eval()
        G = G.to(device)
        z = torch.randn(args.batch, G.z_dim, device=device)
        run(G, z, stylegan3.filtered_lrelu)  # warm-up
        ours, direct = [], []
        for _ in range(args.repeats):
            ours.append(run(G, z, stylegan3.filtered_lrelu))
            if not args.skip_direct:
                direct.append(run(G, z, direct_filtered_lrelu))
        params = sum(p.numel() for p in G.parameters()) / 1e6
        for name, rows in (("tiled (engine)", ours), ("direct", direct)):
            if not rows:
                continue
            total = statistics.median(r[0] for r in rows) / args.batch
            cpu = statistics.median(r[2] for r in rows) / args.batch
            share = statistics.median(r[1] / r[0] for r in rows)
            print(f"{preset} {args.resolution}px ({params:.1f} M params) {name:>15}: "
                  f"{total:.2f} s/image wall, {cpu:.2f} s CPU, filtered lrelu "
                  f"{100 * share:.0f} %", flush=True)


def run(G: Generator, z: torch.Tensor, impl: Callable) -> tuple[float, float, float]:
    """(wall seconds for one forward pass, seconds of it inside filtered_lrelu, process CPU
    seconds) with `impl`. On a shared machine the CPU time is the steadier figure."""
    spent = [0.0]

    def counted(*a, **kw):
        t0 = time.perf_counter()
        out = impl(*a, **kw)
        spent[0] += time.perf_counter() - t0
        return out

    with torch.no_grad(), mock.patch.object(stylegan3, "filtered_lrelu", counted):
        t0, c0 = time.perf_counter(), time.process_time()
        G(z)
        if z.device.type == "cuda":
            torch.cuda.synchronize()
        total, cpu = time.perf_counter() - t0, time.process_time() - c0
    return total, spent[0], cpu


if __name__ == "__main__":
    main()
