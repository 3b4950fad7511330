"""Generator speed beside NVlabs' code and our plain (pre-#16) generator, on the same weights.

Rows, timed interleaved (every repetition runs each implementation in turn, so load from
other processes hits all of them alike) and reported as medians:

- engine.gan.stylegan2 (this tree);
- the plain generator at `--baseline` (engine/gan/stylegan2.py from git history, default
  8c07525, the last commit before engine/gan/ops.py);
- NVlabs stylegan2-ada-pytorch `training.networks.Generator` when `--nvlabs DIR` points at
  a checkout (on CPU its bias_act / upfirdn2d run their reference implementations).

Each row gives ms per image at batch 1 and 8, achieved GFLOP/s (analytic multiply-adds of
what engine.gan.stylegan2 runs, see count_macs) and the max abs difference of its images from
ours. A profile of our batch-1 forward splits the time into the 3x3/1x1 convs and the rest.

`--cli` also times whole processes on one NVlabs pickle of those weights: `python -m engine
generate` against generate.py's loop (unpickle G_ema, one seed per forward, PNGs) run on
the CPU, as interleaved pairs; wall and CPU seconds of the whole child process. Needs
`--nvlabs`.

    python benchmarks/bench_generator.py --nvlabs /tmp/stylegan2-ada-pytorch [--cli]
        [--reps 5] [--threads 2] [--model 256|tiny] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import pickle
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from engine.gan.stylegan2 import Generator, GeneratorConfig  # noqa: E402

MODELS = {
    "256": dict(z_dim=512, w_dim=512, resolution=256, channel_base=16384, channel_max=512,
                mapping_layers=8),
    "tiny": dict(z_dim=32, w_dim=32, resolution=32, channel_base=1024, channel_max=32,
                 mapping_layers=2),
}
BATCHES = (1, 8)
FIR_TAPS = 16  # the 4x4 resampling filter


def count_macs(cfg: GeneratorConfig) -> dict[str, int]:
    """Multiply-adds per image of one forward pass (mapping + synthesis), by kind.

    conv:     3x3 convs; conv0 is a stride-2 transposed conv, (res/2)^2 * Cin * Cout * 9.
    modulate: affine layers (w -> styles), demodulation coefficients (styles^2 @ sum W^2)
              and scaling either the weight or the activations (the smaller, as
              engine.gan.ops.modulated_conv2d does).
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
            macs["modulate"] += min(in_ch * pixels_in + out_ch * res * res,
                                    in_ch * out_ch * 9)
            macs["conv"] += pixels_in * in_ch * out_ch * 9
            if up:  # the 4x4 FIR that brings the transposed conv's res+1 output to res
                macs["resample"] += res * res * out_ch * FIR_TAPS
        if cfg.architecture == "skip" or res == cfg.resolution:
            macs["modulate"] += cfg.w_dim * out_ch + out_ch * img
            macs["torgb"] += res * res * out_ch * img
            if res > 4 and cfg.architecture == "skip":
                macs["resample"] += res * res * img * FIR_TAPS // 4  # stride-2 transposed
    macs["total"] = sum(macs.values())
    return macs


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def load_baseline(rev: str) -> object | None:
    """engine/gan/stylegan2.py as it was at `rev`, imported as its own module (None if git or
    the revision is unavailable)."""
    src = None
    # Its path and its import of ops after and before #32 (the old names spelt so that the
    # rewriter of engine imports leaves them alone).
    for where in ("engine/gan/stylegan2.py", "/".join(("engine", "stylegan2.py"))):
        try:
            src = subprocess.run(["git", "-C", str(ROOT), "show", f"{rev}:{where}"],
                                 capture_output=True, text=True, check=True).stdout
            break
        except (OSError, subprocess.CalledProcessError):
            continue
    if src is None:
        return None
    src = src.replace("from engine" + ".ops import", "from engine.gan.ops import")
    path = Path(tempfile.mkdtemp()) / f"stylegan2_{rev}.py"
    path.write_text(src)
    spec = importlib.util.spec_from_file_location(f"stylegan2_{rev}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while defining
    spec.loader.exec_module(module)
    return module


def nvlabs_generator(nvlabs: Path, cfg: GeneratorConfig) -> torch.nn.Module:
    sys.path.insert(0, str(nvlabs))
    from training.networks import Generator as NVGenerator  # their code, never committed

    return NVGenerator(z_dim=cfg.z_dim, c_dim=cfg.c_dim, w_dim=cfg.w_dim,
                       img_resolution=cfg.resolution, img_channels=cfg.img_channels,
                       mapping_kwargs=dict(num_layers=cfg.mapping_layers),
                       synthesis_kwargs=dict(channel_base=cfg.channel_base,
                                             channel_max=cfg.channel_max, num_fp16_res=0,
                                             conv_clamp=cfg.conv_clamp))


def median_times(fns: dict[str, Callable[[], object]], reps: int, device: str
                 ) -> dict[str, tuple[list[float], list[float]]]:
    """(wall seconds, process CPU seconds) per call of each function, the functions
    interleaved within a repetition. On a shared machine the CPU seconds move less with
    other processes' load than the wall time does (with N threads, wall >= CPU / N)."""
    times: dict[str, tuple[list[float], list[float]]] = {k: ([], []) for k in fns}
    for fn in fns.values():  # warm-up: allocator, oneDNN primitives, caches
        fn()
    sync(device)
    for _ in range(reps):
        for name, fn in fns.items():
            t0, c0 = time.perf_counter(), time.process_time()
            fn()
            sync(device)
            times[name][0].append(time.perf_counter() - t0)
            times[name][1].append(time.process_time() - c0)
    return times


def conv_share(G: Generator, z: torch.Tensor) -> tuple[float, float]:
    """(ms in the main convs, ms in all ops) of one profiled forward; depthwise resampling
    filters (weights [C, 1, k, k]) count as the rest."""
    from torch.profiler import ProfilerActivity, profile

    with torch.no_grad():
        G(z)
        with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
            G(z)
    conv = total = 0.0
    for e in prof.key_averages(group_by_input_shape=True):
        total += e.self_cpu_time_total
        shapes = e.input_shapes
        depthwise = len(shapes) > 1 and len(shapes[1]) == 4 and shapes[1][1] == 1
        if ("conv" in e.key or e.key in ("aten::bmm", "aten::baddbmm")) and not depthwise:
            conv += e.self_cpu_time_total
    return conv / 1000, total / 1000


NV_DRIVER = """
import sys, numpy as np, torch, PIL.Image
sys.path.insert(0, {nvlabs!r})
import dnnlib, legacy, pickle
with dnnlib.util.open_url({pkl!r}) as f:
    G = pickle.load(f)['G_ema']   # legacy.load_network_pkl's own path for these pickles
for seed in range({n}):
    z = torch.from_numpy(np.random.RandomState(seed).randn(1, G.z_dim))
    img = G(z, None, truncation_psi=1, noise_mode='const')
    img = (img.permute(0, 2, 3, 1) * 127.5 + 128).clamp(0, 255).to(torch.uint8)
    PIL.Image.fromarray(img[0].numpy(), 'RGB').save(f'{out}/seed{{seed:04d}}.png')
"""


def cli_pairs(nvlabs: Path, G_nv: torch.nn.Module, images: int, pairs: int, threads: int
              ) -> None:
    """Whole-process time: our CLI vs generate.py's loop, on one NVlabs pickle."""
    tmp = Path(tempfile.mkdtemp())
    pkl = tmp / "G.pkl"
    with open(pkl, "wb") as f:
        pickle.dump({"G_ema": G_nv, "G": None, "D": None, "augment_pipe": None}, f)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": str(ROOT),
           "HF_HOME": str(tmp / "hf")}
    ours = [sys.executable, "-m", "engine", "generate", "--model", str(pkl), "--device", "cpu",
            "--seeds", f"0-{images - 1}", "--out", str(tmp / "ours")]
    theirs = [sys.executable, "-c", NV_DRIVER.format(nvlabs=str(nvlabs), pkl=str(pkl),
                                                     n=images, out=str(tmp / "nv"))]
    (tmp / "nv").mkdir()
    cmds = {"python -m engine generate": ours, "NVlabs generate.py loop": theirs}
    for cmd in cmds.values():  # warm-up: our first load converts the pickle once
        subprocess.run(cmd, env=env, cwd=ROOT, check=True, capture_output=True)
    times: dict[str, tuple[list[float], list[float]]] = {k: ([], []) for k in cmds}
    for _ in range(pairs):
        for name, cmd in cmds.items():
            t0 = time.perf_counter()
            c0 = resource.getrusage(resource.RUSAGE_CHILDREN)
            subprocess.run(cmd, env=env, cwd=ROOT, check=True, capture_output=True)
            c1 = resource.getrusage(resource.RUSAGE_CHILDREN)
            times[name][0].append(time.perf_counter() - t0)
            times[name][1].append(c1.ru_utime + c1.ru_stime - c0.ru_utime - c0.ru_stime)
    print(f"\nwhole process, {images} images at 256 px, {pairs} interleaved pairs "
          f"(OMP_NUM_THREADS={threads}), medians:")
    med = {k: (statistics.median(w), statistics.median(c)) for k, (w, c) in times.items()}
    for name, (w, c) in med.items():
        print(f"  {name:<26} wall {w:6.2f} s  CPU {c:6.2f} s  (wall runs: "
              f"{', '.join(f'{x:.2f}' for x in times[name][0])})")
    ours, theirs = med["python -m engine generate"], med["NVlabs generate.py loop"]
    print(f"  ours / NVlabs: wall {ours[0] / theirs[0]:.2f}x, CPU {ours[1] / theirs[1]:.2f}x")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--model", choices=sorted(MODELS), default="256")
    ap.add_argument("--nvlabs", type=Path, default=None,
                    help="a stylegan2-ada-pytorch checkout to time beside ours")
    ap.add_argument("--baseline", default="8c07525",
                    help="git revision of the plain generator ('' to skip)")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    ap.add_argument("--cli", action="store_true", help="also time whole CLI processes")
    ap.add_argument("--cli-pairs", type=int, default=3)
    ap.add_argument("--cli-only", action="store_true", help="skip the in-process timings")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    dev = args.device
    name = torch.cuda.get_device_name(0) if dev.startswith("cuda") else "CPU"
    print(f"device {dev} ({name}), torch {torch.__version__}, threads "
          f"{torch.get_num_threads()}, load average {os.getloadavg()[0]:.1f}")
    torch.manual_seed(0)
    cfg = GeneratorConfig(**MODELS[args.model])
    G = Generator(cfg).eval().requires_grad_(False)
    with torch.no_grad():  # noise and biases non-zero, so every input path counts
        for pname, p in G.named_parameters():
            if pname.endswith("noise_strength"):
                p.fill_(0.1)
            elif pname.endswith(".bias") and "synthesis" in pname and "affine" not in pname:
                p.normal_(0, 0.1)
    sd = G.state_dict()
    impls: dict[str, torch.nn.Module] = {"ours": G.to(dev)}
    if args.baseline:
        old = load_baseline(args.baseline)
        if old is None:
            print(f"(baseline {args.baseline} unavailable: no git history here)")
        else:
            G_old = old.Generator(old.GeneratorConfig(**cfg.to_dict())).eval()
            G_old.load_state_dict(sd)
            impls[f"plain @{args.baseline}"] = G_old.requires_grad_(False).to(dev)
    G_nv = None
    if args.nvlabs:
        G_nv = nvlabs_generator(args.nvlabs, cfg).eval().requires_grad_(False)
        missing, unexpected = G_nv.load_state_dict(sd, strict=False)
        assert not unexpected and all(k.endswith("resample_filter") for k in missing)
        impls["NVlabs"] = G_nv.to(dev)

    def runner(G_: torch.nn.Module, z: torch.Tensor) -> Callable[[], torch.Tensor]:
        def run() -> torch.Tensor:
            with torch.no_grad():
                return G_(z, None, noise_mode="const") if G_ is G_nv else G_(z)
        return run

    macs = count_macs(cfg)
    shares = ", ".join(f"{k} {v / macs['total']:.1%}" for k, v in macs.items() if k != "total")
    print(f"model {args.model}: {macs['total'] / 1e9:.2f} GMAC per image ({shares}); "
          f"{args.reps} interleaved repetitions, medians\n")
    rows: dict[tuple[str, int], tuple[float, float]] = {}
    diffs: dict[str, float] = {}
    for batch in () if args.cli_only else BATCHES:
        z = torch.randn(batch, cfg.z_dim, device=dev)
        fns = {k: runner(m, z) for k, m in impls.items()}
        ref = fns["ours"]()
        for k, fn in fns.items():
            diffs[k] = max(diffs.get(k, 0.0), (fn() - ref).abs().max().item())
        times = median_times(fns, args.reps, dev)
        for k, (wall, cpu) in times.items():
            rows[(k, batch)] = (statistics.median(wall) / batch, statistics.median(cpu) / batch)
    if not args.cli_only:
        print_rows(rows, diffs, impls, macs)
        if dev == "cpu":
            conv, total = conv_share(G, torch.randn(1, cfg.z_dim))
            print(f"\nour batch-1 forward, profiled: {total:.0f} ms of which main convs "
                  f"{conv:.0f} ms; total / convs = {total / max(conv, 1e-9):.2f}")
    if args.cli:
        if G_nv is None or args.model != "256":
            print("--cli needs --nvlabs and the 256 model")
        else:
            cli_pairs(args.nvlabs, G_nv.cpu(), 8, args.cli_pairs,
                      args.threads or torch.get_num_threads())


def print_rows(rows: dict, diffs: dict, impls: dict, macs: dict) -> None:
    header = (f"{'implementation':<16} {'b1 ms/img':>10} {'b1 CPU ms':>10} {'b8 ms/img':>10} "
              f"{'b8 CPU ms':>10} {'b1 GFLOP/s':>10} {'vs ours':>8} {'max |diff|':>10}")
    print(header)
    print("-" * len(header))
    for k in impls:
        (w1, c1), (w8, c8) = rows[(k, 1)], rows[(k, 8)]
        print(f"{k:<16} {1000 * w1:>10.1f} {1000 * c1:>10.1f} {1000 * w8:>10.1f} "
              f"{1000 * c8:>10.1f} {2 * macs['total'] / w1 / 1e9:>10.1f} "
              f"{w1 / rows[('ours', 1)][0]:>7.2f}x {diffs[k]:>10.2e}")
    print("(ms/img: wall; CPU ms: process CPU time, all threads; 'vs ours': batch-1 wall)")


if __name__ == "__main__":
    main()
