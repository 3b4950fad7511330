"""StyleGAN3 render time per image beside StyleGAN2's at the same resolution (CPU unless
--device cuda).

Builds NVlabs-sized stylegan3-t and -r generators and a StyleGAN2 config-f one with random
weights (no download; the time does not depend on the weights), then renders one batch
from each in turn, repeatedly (SG2, SG3-t, SG3-r, SG2, ...), so load from other processes
hits all of them alike. Prints the load average before and after, and per generator the
median wall and CPU (time.process_time) seconds per image and the ratio to StyleGAN2's.

--profile adds, per StyleGAN3 layer, the CPU time of its convolution and of its filtered
leaky ReLU (one render). --reference also renders with the previous filtered leaky ReLU
(engine.gan.stylegan3._filtered_lrelu_reference; minutes per -r image at 256 px) and prints its
time and the max abs difference of the images.

    python benchmarks/bench_stylegan3.py [--resolution 256] [--repeats 5] [--batch 1]
        [--profile] [--reference]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from unittest import mock

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.gan import stylegan2, stylegan3  # noqa: E402
from engine.gan.stylegan3 import StyleGAN3Config  # noqa: E402


def build(name: str, resolution: int, device: torch.device) -> torch.nn.Module:
    torch.manual_seed(0)
    if name == "stylegan2":   # config-f: the GeneratorConfig defaults
        G = stylegan2.Generator(stylegan2.GeneratorConfig(resolution=resolution))
    else:
        G = stylegan3.Generator(StyleGAN3Config.preset(name, resolution=resolution))
    return G.eval().to(device)


def timed(G: torch.nn.Module, z: torch.Tensor) -> tuple[float, float, torch.Tensor]:
    """(wall seconds, process CPU seconds, image) of one forward pass."""
    with torch.no_grad():
        t0, c0 = time.perf_counter(), time.process_time()
        img = G(z)
        if z.device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t0, time.process_time() - c0, img


def load() -> str:
    return "/".join(f"{v:.1f}" for v in os.getloadavg())


def profile(G: stylegan3.Generator, z: torch.Tensor) -> None:
    """CPU ms per layer: the whole layer and its filtered leaky ReLU (the rest is the
    modulated convolution)."""
    inside: dict[str, float] = {}
    spent: dict[str, float] = {}
    current = [""]
    impl = stylegan3.filtered_lrelu

    def counted(*a, **kw):
        c0 = time.process_time()
        out = impl(*a, **kw)
        inside[current[0]] = time.process_time() - c0
        return out

    def before(m, _):
        current[0] = m.spec.name
        spent[m.spec.name] = time.process_time()

    def after(m, _, __):
        spent[m.spec.name] = time.process_time() - spent[m.spec.name]

    hooks = []
    for name in G.synthesis.layers:
        layer = getattr(G.synthesis, name)
        hooks += [layer.register_forward_pre_hook(before), layer.register_forward_hook(after)]
    with mock.patch.object(stylegan3, "filtered_lrelu", counted):
        timed(G, z)
    for h in hooks:
        h.remove()
    for name in G.synthesis.layers:
        s = getattr(G.synthesis, name).spec
        kind = "radial" if s.down_radial else "separable"
        print(f"  {name:<14} up {s.up} down {s.down} {kind:<9}  conv "
              f"{1000 * (spent[name] - inside[name]):6.0f} ms  filtered lrelu "
              f"{1000 * inside[name]:6.0f} ms CPU")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--resolution", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--profile", action="store_true", help="per-layer CPU time of StyleGAN3")
    ap.add_argument("--reference", action="store_true",
                    help="also time the previous filtered leaky ReLU and diff the images")
    args = ap.parse_args()
    device = torch.device(args.device)
    names = ("stylegan2", *stylegan3.CONFIGS)
    models = {n: build(n, args.resolution, device) for n in names}
    z = torch.randn(args.batch, 512, device=device)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), device {device}, "
          f"{args.resolution} px, batch {args.batch}, load average {load()} (1/5/15 min)")
    for G in models.values():
        timed(G, z)   # warm-up
    rows: dict[str, list[tuple[float, float]]] = {n: [] for n in names}
    for _ in range(args.repeats):
        for n, G in models.items():
            rows[n].append(timed(G, z)[:2])
    wall = {n: statistics.median(r[0] for r in rows[n]) / args.batch for n in names}
    cpu = {n: statistics.median(r[1] for r in rows[n]) / args.batch for n in names}
    print(f"interleaved x{args.repeats}, medians per image; load average after {load()}")
    for n in names:
        print(f"{n:<12} {wall[n]:7.2f} s wall {cpu[n]:7.2f} s CPU   / stylegan2: "
              f"{wall[n] / wall['stylegan2']:5.2f} wall {cpu[n] / cpu['stylegan2']:5.2f} CPU",
              flush=True)
    for n in stylegan3.CONFIGS:
        if args.profile:
            print(f"{n} per layer (one render):")
            profile(models[n], z)
        if args.reference:
            compare_reference(n, models[n], z)


def compare_reference(name: str, G: torch.nn.Module, z: torch.Tensor) -> None:
    ref_impl: Callable = stylegan3._filtered_lrelu_reference
    wall, cpu, img = timed(G, z)
    with mock.patch.object(stylegan3, "filtered_lrelu", ref_impl):
        ref_wall, ref_cpu, ref = timed(G, z)
    print(f"{name} previous filtered lrelu: {ref_wall:.2f} s wall {ref_cpu:.2f} s CPU "
          f"(engine {wall:.2f} / {cpu:.2f}); max abs image difference "
          f"{(img - ref).abs().max().item():.2e}, load average {load()}", flush=True)


if __name__ == "__main__":
    main()
