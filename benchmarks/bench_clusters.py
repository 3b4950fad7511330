"""Seconds to cluster a layer's channels (N=128 latents, k=8), cold cache.

    python benchmarks/bench_clusters.py [--samples 128] [--k 8] [--model SPEC] [--skip-default]

Prints, per layer: total seconds (wall, and the process CPU time, steadier on a shared
machine) and its split into rendering up to the layer (the pass stops right after it) and
descriptor + PCA + KMeans; then the cache-hit time of a repeat.
Layers: b16.conv1 of a random 256 px model with 512 channels at 16x16 (channel_base 16384,
channel_max 512), then every conv layer of --model (a zoo spec; default: the embedded
default model, skipped while it does not exist yet).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.gan.stylegan2 import Generator, GeneratorConfig  # noqa: E402
from engine.tools import clusters as cl  # noqa: E402

DEFAULT_MODEL = Path(__file__).resolve().parents[1] / "engine" / "models" / "default_model" / \
    "faces64.safetensors"


def bench_layer(G: torch.nn.Module, layer: str, samples: int, k: int, cache: Path) -> dict:
    """Time one cold clustering, split into render and cluster, then one warm repeat."""
    cl.clear_memory_cache()
    parts: dict[str, float] = {}
    render = cl.capture_layer

    def timed_capture(*args, **kwargs):
        t, c = time.perf_counter(), time.process_time()
        out = render(*args, **kwargs)
        parts["render"] = parts.get("render", 0.0) + time.perf_counter() - t
        parts["render_cpu"] = parts.get("render_cpu", 0.0) + time.process_time() - c
        return out

    cl.capture_layer = timed_capture  # measure the render share without changing the code
    try:
        t0, c0 = time.perf_counter(), time.process_time()
        r = cl.compute_clusters(G, layer, k, samples=samples, seed=0, model_key=f"bench-{id(G)}",
                                cache_dir=cache)
        total, total_cpu = time.perf_counter() - t0, time.process_time() - c0
    finally:
        cl.capture_layer = render
    cl.clear_memory_cache()
    t0 = time.perf_counter()
    cl.compute_clusters(G, layer, k, samples=samples, seed=0, model_key=f"bench-{id(G)}",
                        cache_dir=cache)
    repeat = time.perf_counter() - t0
    return dict(layer=layer, C=len(r.labels), total=total, render=parts.get("render", 0.0),
                cluster=total - parts.get("render", 0.0), repeat=repeat, total_cpu=total_cpu,
                render_cpu=parts.get("render_cpu", 0.0),
                largest=max(r.sizes), sizes=sorted(r.sizes, reverse=True))


def report(name: str, row: dict) -> None:
    print(f"{name:28s} {row['layer']:10s} C={row['C']:4d}  total {row['total']:6.2f} s  "
          f"(render {row['render']:5.2f} s, cluster {row['cluster']:5.2f} s); process CPU "
          f"{row['total_cpu']:5.2f} s (render {row['render_cpu']:5.2f} s)  "
          f"repeat {1000 * row['repeat']:6.1f} ms  sizes {row['sizes']}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=128)
    ap.add_argument("--k", type=int, default=8)
    ap.add_argument("--model", default="default", help="zoo spec of the second model")
    ap.add_argument("--skip-default", action="store_true", help="only the 512-channel layer")
    args = ap.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    print(f"torch {torch.__version__}, device {device}, threads {torch.get_num_threads()}, "
          f"N={args.samples}, k={args.k}, load average {os.getloadavg()[0]:.1f}")
    import sklearn.cluster  # noqa: F401  (import cost is not clustering time)
    import sklearn.decomposition  # noqa: F401

    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(tmp)
        torch.manual_seed(0)
        big = Generator(GeneratorConfig(resolution=256, channel_base=16384,
                                        channel_max=512)).eval().to(device)
        assert big.layer_shapes()["b16.conv1"] == (512, 16, 16)
        cl.compute_clusters(big, "b4.conv1", 2, samples=2, model_key="warm-up",
                            cache_dir=cache)  # first-call costs (allocator, sklearn threads)
        report("random 256px (512 ch)", bench_layer(big, "b16.conv1", args.samples, args.k,
                                                    cache))
        del big

        if args.skip_default:
            return
        if args.model == "default" and not DEFAULT_MODEL.exists():
            print(f"default model: {DEFAULT_MODEL} does not exist yet, skipped")
            return
        from engine.models import zoo
        model = zoo.load(args.model)
        rows = []
        for layer, (C, _, _) in model.G.layer_shapes().items():
            if layer.endswith("torgb"):
                continue
            rows.append(bench_layer(model.G, layer, args.samples, min(args.k, C), cache))
            report(model.title[:28], rows[-1])
        print(f"{model.title}, all {len(rows)} conv layers: "
              f"{sum(r['total'] for r in rows):.2f} s; median layer "
              f"{np.median([r['total'] for r in rows]):.2f} s")


if __name__ == "__main__":
    main()
