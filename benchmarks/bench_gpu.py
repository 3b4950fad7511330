"""GPU figures in one go: render latency at 256/512/1024 px (fp32 and fp16), translator
frames/s and clustering time, printed as one table.

Meant for a session with a lent GPU: `python benchmarks/bench_gpu.py` (about 2-4 minutes on
one GPU, cuDNN autotuning on). Models have random weights with NVlabs' configs
(channel_base 32768 for 512/1024 px, 16384 for 256 px, channel_max 512, conv_clamp 256);
fp16 runs the top 4 resolutions in half precision (num_fp16_res=4, NVlabs' default), the
rest and the RGB image in fp32. Latency is the median of `--reps` batch-1 renders (mapping
+ synthesis, synchronised), after warm-up; `img/s b8` renders batches of 8.

Issue 34's cases, each at fp32 and fp16: an edit's tail render (a rotate bend on
b{res/4}.conv1 of the largest model re-rendered from the kept activations, engine.recipes.
incremental.TailCache) against a full render, the b32 preview a drag shows while it moves,
a webcam frame whole and as a b32 preview, StyleGAN3-t/-r beside StyleGAN2 at 256 px (fp32:
the engine renders StyleGAN3 in fp32 only), and an anchor bank of 256 images (what a model
without a shipped one renders once).

On a CPU it runs a quick version (32/64 px models, fewer repetitions, fp32 only: CPUs have
no fast fp16 convolutions) so the script itself can be checked anywhere:
`python benchmarks/bench_gpu.py --quick`.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.gan.stylegan2 import Generator, GeneratorConfig, prepare_for_device  # noqa: E402
from engine.tools import clusters as cl  # noqa: E402
from engine.tools import translator as T  # noqa: E402

FULL_SIZES = {256: 16384, 512: 32768, 1024: 32768}   # resolution -> channel_base
QUICK_SIZES = {32: 2048, 64: 4096}
NUM_FP16_RES = 4


def precisions(device: torch.device) -> tuple[tuple[str, int], ...]:
    """(label, num_fp16_res) to measure: fp16 as NVlabs runs it on a GPU only."""
    if device.type == "cuda":
        return (("fp32", 0), ("fp16", NUM_FP16_RES))
    return (("fp32", 0),)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], reps: int, device: torch.device) -> list[float]:
    for _ in range(3):   # warm-up: cuDNN autotuning, allocator, kernels
        fn()
    sync(device)
    out = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        sync(device)
        out.append(time.perf_counter() - t0)
    return out


def random_generator(res: int, channel_base: int, device: torch.device) -> Generator:
    torch.manual_seed(res)
    cfg = GeneratorConfig(z_dim=512, w_dim=512, resolution=res, channel_base=channel_base,
                          channel_max=512, conv_clamp=256)
    G = Generator(cfg).eval().requires_grad_(False)
    with torch.no_grad():
        for name, p in G.named_parameters():
            if name.endswith("noise_strength"):
                p.fill_(0.1)
    return prepare_for_device(G.to(device))


def render_fn(G: Generator, z: torch.Tensor, num_fp16_res: int) -> Callable[[], torch.Tensor]:
    def render() -> torch.Tensor:
        with torch.inference_mode():
            return G(z, num_fp16_res=num_fp16_res)
    return render


def render_rows(sizes: dict[int, int], device: torch.device, reps: int) -> list[list[str]]:
    rows = []
    for res, base in sizes.items():
        G = random_generator(res, base, device)
        z1 = torch.randn(1, 512, device=device)
        z8 = torch.randn(8, 512, device=device)
        with torch.no_grad():
            ref = G(z1)
        for label, n16 in precisions(device):
            one, eight = render_fn(G, z1, n16), render_fn(G, z8, n16)
            t1 = timed(one, reps, device)
            t8 = timed(eight, max(2, reps // 4), device)
            diff = (one() - ref).abs().max().item()
            rows.append([f"render {res} px {label}", f"{1000 * statistics.median(t1):.2f} ms",
                         f"p90 {1000 * np.percentile(t1, 90):.2f} ms",
                         f"{8 / statistics.median(t8):.1f} img/s b8",
                         f"max|fp16-fp32| {diff:.3f}" if n16 else ""])
        del G
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return rows


def translator_rows(res: int, base: int, device: torch.device, frames: int) -> list[list[str]]:
    """translate_frame at batch 1 on a real photo (an untrained encoder: speed only)."""
    from sklearn.datasets import load_sample_image

    photo = load_sample_image("china.jpg")
    G = random_generator(res, base, device)
    layer = "b16.conv1"
    tr = T.Translator(G, T.make_encoder(G, layer).eval(), check_model=False)
    tr.set_latent(1)
    rows = []
    for label, n16 in precisions(device):
        G.synthesis.num_fp16_res = n16   # the translator renders with the model's default
        for stop in (None, "b32"):
            times = timed(lambda s=stop: tr.translate_frame(photo, stop=s), frames, device)
            what = "whole" if stop is None else f"preview {stop}"
            rows.append([f"translate {res} px {label} ({layer}, {what})",
                         f"{1 / statistics.median(times):.1f} frames/s",
                         f"{1000 * statistics.median(times):.2f} ms/frame", "", ""])
    G.synthesis.num_fp16_res = 0
    return rows


def tail_rows(res: int, base: int, device: torch.device, reps: int) -> list[list[str]]:
    """A bend dragged on b{res/4}.conv1: the tail render from the kept activations and the
    full render; and the b32 preview a drag of an edit up to b32 shows (from the start),
    interleaved per repetition."""
    from engine.recipes import incremental as inc
    from engine.recipes.recipe import LatentSpec, Recipe, render_tensor
    from engine.tools.bending import Bend, ChannelSelection

    G = random_generator(res, base, device)
    layer = f"b{res // 4}.conv1"
    rec = Recipe(model="bench", latent=LatentSpec(seed=1),
                 bends=[Bend(layer=layer, op="rotate", params={"angle": 10.0},
                             channels=ChannelSelection())])
    rows = []
    for label, n16 in precisions(device):
        G.synthesis.num_fp16_res = n16
        cache = inc.TailCache()
        cache.render(rec, G)
        times: dict[str, list[float]] = {"full": [], "tail": [], "preview b32": []}
        for i in range(reps + 2):   # the first two: warm-up and the cache keeping
            rec.bends[0].params["angle"] += 0.5
            for what, fn in (("full", lambda: render_tensor(rec, G)),
                             ("tail", lambda c=cache: c.render(rec, G)),
                             ("preview b32", lambda: render_tensor(rec, G, stop="b32"))):
                t0 = time.perf_counter()
                with torch.inference_mode():
                    fn()
                sync(device)
                if i >= 2:
                    times[what].append(time.perf_counter() - t0)
        full = statistics.median(times["full"])
        for what, t in times.items():
            rows.append([f"edit {layer} of {res} px {label}: {what}",
                         f"{1000 * statistics.median(t):.2f} ms",
                         f"{statistics.median(t) / full:.0%} of full", "", ""])
    G.synthesis.num_fp16_res = 0
    return rows


def stylegan3_rows(res: int, device: torch.device, reps: int) -> list[list[str]]:
    """StyleGAN3-t and -r (NVlabs presets) beside StyleGAN2 config-f at `res`, interleaved."""
    from engine.gan import stylegan3

    models = {"stylegan2": random_generator(res, 32768 if res > 64 else 4096, device)}
    for name in stylegan3.CONFIGS:
        torch.manual_seed(0)
        scale = {} if res > 64 else {"channel_base": 4096, "channel_max": 128}
        cfg = stylegan3.StyleGAN3Config.preset(name, resolution=res, **scale)
        models[name] = stylegan3.Generator(cfg).eval().requires_grad_(False).to(device)
    z = torch.randn(1, 512, device=device)
    fns = {n: render_fn(G, z, 0) for n, G in models.items()}
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {n: [] for n in fns}
    for _ in range(reps):
        for n, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            sync(device)
            times[n].append(time.perf_counter() - t0)
    sg2 = statistics.median(times["stylegan2"])
    return [[f"render {res} px {n} fp32", f"{1000 * statistics.median(t):.2f} ms",
             f"{statistics.median(t) / sg2:.2f}x stylegan2", "", ""] for n, t in times.items()]


def anchor_rows(res: int, base: int, device: torch.device, count: int) -> list[list[str]]:
    """An anchor bank of `count` images rendered (batches of 64)."""
    from engine.tools import anchors

    G = random_generator(res, base, device)
    rows = []
    for label, n16 in precisions(device):
        G.synthesis.num_fp16_res = n16
        t0 = time.perf_counter()
        anchors.build_bank(G, count, weights_sha256="bench")
        sync(device)
        rows.append([f"anchor bank {res} px {count} images {label}",
                     f"{time.perf_counter() - t0:.2f} s", "", "", ""])
    G.synthesis.num_fp16_res = 0
    return rows


def clustering_rows(res: int, base: int, device: torch.device, samples: int
                    ) -> list[list[str]]:
    """compute_clusters on b16.conv1 (512 channels at 16x16 in the 256 px model), cold cache."""
    G = random_generator(res, base, device)
    layer = "b16.conv1"
    rows = []
    with tempfile.TemporaryDirectory() as cache:
        for label, n16 in precisions(device):
            cl.clear_memory_cache()
            G.synthesis.num_fp16_res = n16
            t0 = time.perf_counter()
            cl.compute_clusters(G, layer, k=8, samples=samples, cache_dir=cache,
                                model_key=f"bench-gpu-{res}-{label}")
            sync(device)
            rows.append([f"cluster {res} px {layer} N={samples} k=8 {label}",
                         f"{time.perf_counter() - t0:.2f} s", "cold cache", "", ""])
    G.synthesis.num_fp16_res = 0
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--quick", action="store_true",
                    help="small models and few repetitions (the default on a CPU)")
    ap.add_argument("--reps", type=int, default=None)
    args = ap.parse_args()
    device = torch.device(args.device)
    quick = args.quick or device.type == "cpu"
    sizes = QUICK_SIZES if quick else FULL_SIZES
    reps = args.reps or (5 if quick else 50)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"device {device} ({name}), torch {torch.__version__}, "
          f"{'quick (small models)' if quick else 'full'}; cudnn.benchmark "
          f"{torch.backends.cudnn.benchmark if device.type == 'cuda' else 'n/a'}")
    small_res, small_base = next(iter(sizes.items()))
    rows = render_rows(sizes, device, reps)
    rows += translator_rows(small_res if quick else 256, small_base if quick else 16384,
                            device, reps)
    rows += clustering_rows(small_res if quick else 256, small_base if quick else 16384,
                            device, 16 if quick else 128)
    big_res, big_base = list(sizes.items())[-1]
    rows += tail_rows(big_res, big_base, device, reps)
    rows += stylegan3_rows(64 if quick else 256, device, max(2, reps // 5))
    rows += anchor_rows(small_res if quick else 1024, small_base if quick else 32768, device,
                        64 if quick else 256)
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    print()
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())


if __name__ == "__main__":
    main()
