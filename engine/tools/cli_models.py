"""CLI verbs about models: `zoo list`, `zoo fetch`, `info` and `generate`.

Every `--model` takes the same specs as `engine.models.zoo.load`: a catalogue id ('default',
'ffhq-512', ...), `hf://owner/repo/file[@revision]`, or a local checkpoint path.
"""

from __future__ import annotations

import argparse
import json
import math
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from engine.base.errors import StudioError

MAX_SEEDS = 100_000  # a guard against '0-4294967295' filling the disk


def add_cli(sub: argparse._SubParsersAction) -> None:
    """Register `zoo`, `info` and `generate`."""
    zoo = sub.add_parser("zoo", help="list or fetch pretrained models")
    zsub = zoo.add_subparsers(dest="zoo_command", required=True, metavar="COMMAND")
    p = zsub.add_parser("list", help="the catalogue, with what is cached here")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=cmd_zoo_list)
    p = zsub.add_parser("fetch", help="download and convert models ahead of time")
    p.add_argument("specs", nargs="+", metavar="MODEL",
                   help="catalogue id, hf://owner/repo/file[@rev] or a checkpoint path")
    p.set_defaults(func=cmd_zoo_fetch)

    p = sub.add_parser("info", help="a model's config, layers and activation shapes")
    _model_arg(p)
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("generate", help="render seeds to PNGs (and a grid)")
    _model_arg(p)
    p.add_argument("--seeds", default="0-7", help="e.g. '0-7' or '1,5,10-12' (default 0-7)")
    p.add_argument("--psi", type=float, default=1.0, help="truncation psi (default 1)")
    p.add_argument("--cutoff", type=int, default=None,
                   help="truncate only the first CUTOFF ws (default: all)")
    p.add_argument("--noise-mode", default="const", choices=["const", "random", "none"])
    p.add_argument("--class", dest="class_index", type=int, default=None,
                   help="class index for a conditional model")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--grid", action="store_true", help="also write grid.png")
    p.add_argument("--batch", type=int, default=None,
                   help="images per forward pass (default: measured on the first images; "
                        "1 with --noise-mode random, so each seed's noise is its own)")
    p.add_argument("--translate", default=None, metavar="X,Y",
                   help="StyleGAN3: shift the input by X,Y image widths, e.g. 0.1,-0.05")
    p.add_argument("--rotate", type=float, default=0.0,
                   help="StyleGAN3: rotate the input by this many degrees")
    p.set_defaults(func=cmd_generate)


def _model_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="default",
                   help="catalogue id, hf://owner/repo/file[@rev] or a checkpoint path "
                        "(default: the embedded model)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if "
                                                  "available)")


# ----------------------------------------------------------------------------------------
# Helpers.


def parse_seeds(text: str) -> list[int]:
    """'0-3,7,10-11' -> [0, 1, 2, 3, 7, 10, 11] (order kept, duplicates dropped)."""
    seeds: list[int] = []
    for part in str(text).replace(" ", "").split(","):
        if not part:
            continue
        m = re.fullmatch(r"(\d+)(?:-(\d+))?", part)
        if not m:
            raise StudioError(f"Cannot read the seeds {text!r}: write numbers and ranges such "
                              f"as '0-7' or '1,5,10-12'.")
        lo = int(m[1])
        hi = int(m[2]) if m[2] else lo
        if hi < lo:
            raise StudioError(f"The seed range {part!r} runs backwards; write it low-high.")
        if hi - lo + 1 + len(seeds) > MAX_SEEDS:
            raise StudioError(f"That is more than {MAX_SEEDS} seeds; ask for fewer.")
        seeds.extend(range(lo, hi + 1))
    if not seeds:
        raise StudioError("No seeds given: write e.g. --seeds 0-7.")
    return list(dict.fromkeys(seeds))


def tqdm_progress(desc: str) -> tuple[Callable[[float, str], None], Callable[[], None]]:
    """A zoo progress callback drawing one tqdm bar (percent), and a function to close it."""
    from tqdm.auto import tqdm

    bars: list[Any] = []  # drawn on the first report, so an early error prints alone

    def update(fraction: float, message: str) -> None:
        if not bars:
            bars.append(tqdm(total=100, desc=desc, unit="%", leave=False,
                             bar_format="{desc}: {percentage:3.0f}%|{bar}| {postfix}"))
        bar = bars[0]
        target = int(round(100 * max(0.0, min(1.0, fraction))))
        if target > bar.n:
            bar.update(target - bar.n)
        bar.set_postfix_str(message[:60], refresh=True)

    def close() -> None:
        for bar in bars:
            bar.close()

    return update, close


def load_model(spec: str, device: str | None = None) -> Any:
    """engine.models.zoo.load with a tqdm bar on stderr."""
    from engine.models import zoo

    update, close = tqdm_progress("model")
    try:
        return zoo.load(spec, progress=update, device=device)
    finally:
        close()


# ----------------------------------------------------------------------------------------
# Verbs.


def cmd_zoo_list(args: argparse.Namespace) -> None:
    from engine.models import zoo

    entries = zoo.catalogue()
    if args.json:
        rows = [{**e.__dict__, "spec": e.spec, "cached": zoo.is_cached(e)} for e in entries]
        print(json.dumps(rows, indent=2))
        return
    print(f"{'id':<24} {'res':>5}  {'format':<13} {'here':<4} {'checked':<7} title")
    for e in entries:
        here = "yes" if zoo.is_cached(e) else "-"
        checked = "yes" if e.verified else "no"
        print(f"{e.id:<24} {e.resolution:>5}  {e.format:<13} {here:<4} {checked:<7} {e.title}")
    print(f"\n'here': loads without network. 'checked': file name confirmed on the Hub. "
          f"Cache: {zoo.converted_dir()}")


def cmd_zoo_fetch(args: argparse.Namespace) -> None:
    from engine.models import zoo

    for spec in args.specs:
        update, close = tqdm_progress(spec)
        try:
            path = zoo.fetch(spec, progress=update)
        finally:
            close()
        print(f"{spec}: {path}")


def model_info(model: Any) -> dict[str, Any]:
    """A JSON-able description of a LoadedModel: config, size, layers and shapes."""
    G = model.G
    shapes = G.layer_shapes()
    layers = [{"layer": name, "w_index": G.synthesis.w_index_of(name),
               "shape": list(shape)} for name, shape in shapes.items()]
    return {"id": model.id, "title": model.title, "sha256": model.sha256,
            "path": str(model.path) if model.path else None, "source": model.source,
            "device": model.device, "config": model.config.to_dict(), "num_ws": G.num_ws,
            "parameters": sum(p.numel() for p in G.parameters()),
            "megabytes": round(model.nbytes / 2 ** 20, 2), "layers": layers,
            "notes": model.notes}


def cmd_info(args: argparse.Namespace) -> None:
    model = load_model(args.model, args.device)
    info = model_info(model)
    if args.json:
        print(json.dumps(info, indent=2, default=str))
        return
    print(f"{info['title']}  ({info['id']})")
    print(f"  sha256      {info['sha256']}")
    print(f"  file        {info['path']}")
    print(f"  source      {json.dumps(info['source'], default=str)}")
    print(f"  parameters  {info['parameters']:,} ({info['megabytes']} MB), "
          f"device {info['device']}")
    for note in info["notes"]:
        print(f"  note        {note}")
    print("config")
    for k, v in info["config"].items():
        print(f"  {k:<16} {v}")
    print(f"  {'num_ws':<16} {info['num_ws']}")
    print(f"layers ({len(info['layers'])}): name, w index, activation [C, H, W] per image")
    for row in info["layers"]:
        c, h, w = row["shape"]
        print(f"  {row['layer']:<12} w{row['w_index']:<3} [{c}, {h}, {w}]")


def parse_translate(text: str | None) -> list[float] | None:
    """'0.1,-0.05' -> [0.1, -0.05]; one clear sentence for anything else."""
    if text is None:
        return None
    try:
        x, y = (float(v) for v in text.split(","))
    except ValueError:
        raise StudioError(f"--translate takes two numbers X,Y (image widths), e.g. 0.1,-0.05; "
                          f"got {text!r}.") from None
    return [x, y]


def cmd_generate(args: argparse.Namespace) -> None:
    import numpy as np
    import torch
    from PIL import Image
    from tqdm.auto import tqdm

    from engine.base.batching import BatchSizer, chunks, clock_for
    from engine.base.images import to_uint8
    from engine.tools.latents import (
        LatentSpec,
        class_label,
        image_grid,
        seed_to_z,
        transform_kwargs,
        validate_latent,
    )

    seeds = parse_seeds(args.seeds)
    if args.batch is not None and args.batch < 1:
        raise StudioError("--batch must be at least 1.")
    model = load_model(args.model, args.device)
    G = model.G
    spec = LatentSpec(translate=parse_translate(args.translate), rotate=args.rotate)
    problems = [p for p in validate_latent(spec, G) if p.startswith(("latent.translate",
                                                                     "latent.rotate"))]
    if problems:
        raise StudioError(problems[0].split(": ", 1)[1])
    extra = transform_kwargs(G, spec)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    device = next(G.parameters()).device
    c = class_label(G, args.class_index)
    images: list[np.ndarray] = []
    fixed = args.batch if args.batch is not None else (
        1 if args.noise_mode == "random" else None)
    sizer = BatchSizer(largest=16, fixed=fixed, clock=clock_for(device))

    def render(start: int, stop: int) -> None:
        chunk = seeds[start:stop]
        z = torch.cat([seed_to_z(s, G.cfg.z_dim) for s in chunk]).to(device)
        cc = None if c is None else c.expand(len(chunk), -1)
        gen = None
        if args.noise_mode == "random":
            gen = torch.Generator().manual_seed(chunk[0])  # CPU: device-independent
        ws = G.mapping(z, cc, psi=args.psi, cutoff=args.cutoff)
        img = G.synthesis(ws, noise_mode=args.noise_mode, noise_generator=gen, **extra)
        for seed, arr in zip(chunk, to_uint8(img)):   # to_uint8 waits for the device
            Image.fromarray(arr).save(out / f"seed{seed:04d}.png")
            images.append(arr)
        bar.update(len(chunk))

    with torch.inference_mode(), tqdm(total=len(seeds), desc="generate", unit="img") as bar:
        chunks(len(seeds), sizer, render)
    print(f"wrote {len(seeds)} image(s) to {out}")
    if args.grid:
        cols = math.ceil(math.sqrt(len(images)))
        Image.fromarray(image_grid(images, cols)).save(out / "grid.png")
        print(f"wrote {out / 'grid.png'}")
