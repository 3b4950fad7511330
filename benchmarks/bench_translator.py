"""Translator figures: translate() frames/s at batch 1, training images/s, and fidelity.

Fidelity (the issue's must-show): two encoders for b16.conv1 trained with the same steps,
batch, lr and seed, one on the activation MSE alone (the seed's loss), one on the default
loss (activation MSE + image loss through the frozen rest of G); each translates the
generator's own images for 64 held-out seeds and the mean PSNR (dB, vs those images) is
printed with steps and training time. For reference it also prints the PSNR of rendering
from the TRUE activation without the earlier blocks' skip image, which is what an encoder
that matched the activation exactly would reach when translating a stranger's picture.

Photos (issue #18): real photos that ship with scikit-learn (china, flower) and
scikit-image (astronaut, chelsea, coffee, rocket), a head-and-shoulders crop of the
astronaut, and four corner crops of each: 31 pictures, each translated with 4 latents. Per
encoder layer, domain strength and what it blends towards (--strengths: the latent's own
activation; --match-strengths: the anchor, engine/tools/anchors.py):
  gap closed  = 1 - (SWD(translations, samples) - floor) / (SWD(photos, samples) - floor),
                floor = SWD between two sets of the model's samples (engine/base/metrics.py);
  layout kept = mean correlation of 8x8-pooled luminance, photo (as framed) vs translation;
  fidelity    = PSNR of translating the model's own images (64 held-out seeds).
The picture sheet (photo as the encoder saw it | translation per setting) goes to --sheet.
None of these photos is in the shipped encoders' training folder (see its README).

Model: the embedded default model, or while it is still training the latest snapshot of
its run (`--model snapshot`), or any zoo spec / file. Target: >= 25 frames/s at batch 1.

    python benchmarks/bench_translator.py [--what fps,train,fidelity,photos] [--steps 300]
        [--batch 8] [--model default|snapshot|SPEC] [--json out.json]
        [--encoders b16=PATH,b8=PATH] [--strengths 1,0.75,0.5] [--match-strengths 0.3]
        [--framing crop|fit|pad] [--sheet docs/translations.png]
        [--sheet-settings b16:1,b16:0.3:match]

It also prints how far the model's own images alone get (for each photo the 4 bank images
laid out most like it, no translation).

Halves (issue 36, `--what halves`): the photos split into a tuning half and a held-out half
(TUNING_PHOTOS, HELD_OUT_PHOTOS: faces and non-faces in both; every photo the shipped
encoders were trained on is in the tuning half); per half and setting, with the same 4
latents for every photo: gap closed and layout kept as above, and
  colour kept = mean correlation of the 8x8 mean colours (192 numbers), photo vs translation;
  variety     = mean pairwise RMS distance of the photos' translations with one latent, over
                that of the model's own samples (different seeds), averaged over the latents;
  fidelity    = as above, at the setting's strength and anchor.
Defaults are chosen on the tuning half only; the sheet (--sheet) shows the held-out half.

    python benchmarks/bench_translator.py --what halves [--halves tuning,held_out]
        [--settings b16:default,b16:1,b16:0.3:match:blend=1:latent=2]   (knobs: blend,
        sharp, latent, psi set engine.tools.anchors' BLEND, BLEND_SHARPNESS, LATENT_BLOCKS, PSI;
        fit=N the match anchor's fit steps, 0 the bank's alone; cells, lr set
        engine.tools.translate_match's FIT_CELLS, FIT_LR)
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.gan.stylegan2 import Generator, GeneratorConfig  # noqa: E402
from engine.tools import translator as T  # noqa: E402

SNAPSHOT = Path("/work/runs/faces64/checkpoint.pt")
FACES64 = dict(z_dim=128, w_dim=128, resolution=64, channel_base=2048, channel_max=128,
               mapping_layers=4)
HELD_OUT = [1_000_000 + i for i in range(64)]  # NVlabs seeds; training draws z elsewhere


def load_model(spec: str) -> tuple[str, Generator]:
    from engine.models import zoo

    if spec == "default" and not zoo.DEFAULT_MODEL_PATH.exists():
        spec = "snapshot"
    if spec == "snapshot":
        with tempfile.TemporaryDirectory() as tmp:  # the trainer replaces the file
            copy = Path(tmp) / "snap.pt"
            shutil.copy(SNAPSHOT, copy)
            state = torch.load(copy, weights_only=True)
        G = Generator(GeneratorConfig(**FACES64))
        G.load_state_dict(state["G_ema"])
        kimg = int(state.get("nimg", 0)) / 1000
        return f"faces64 snapshot ({kimg:.1f} kimg)", G.eval().requires_grad_(False)
    m = zoo.load(spec)
    return m.id, m.G


def _rates(fn, frames: int) -> tuple[float, float]:
    """(wall frames/s, CPU-time frames/s): the second ignores time lost to other processes
    on a shared machine (with one thread it is what a free core would give)."""
    w, c = time.perf_counter(), time.process_time()
    for _ in range(frames):
        fn()
    return frames / (time.perf_counter() - w), frames / (time.process_time() - c)


def bench_fps(G: Generator, frames: int = 40, reps: int = 3) -> dict[str, float]:
    """translate_frame and translate() at batch 1 on a real photo (median of reps)."""
    from sklearn.datasets import load_sample_image

    photo = load_sample_image("china.jpg")
    torch.manual_seed(0)
    tr = T.Translator(G, T.make_encoder(G).eval(), check_model=False)
    tr.set_latent(1)
    ws = tr.ws_for(1)
    for _ in range(3):
        tr.translate_frame(photo)

    def full_render() -> None:
        with torch.inference_mode():
            G.synthesis(ws)

    jobs = {"translate_frame": lambda: tr.translate_frame(photo),
            "translate": lambda: tr.translate(photo, ws),
            "generator_full_render": full_render}
    out: dict[str, list[float]] = {}
    for _ in range(reps):
        for name, fn in jobs.items():
            wall, cpu = _rates(fn, frames)
            out.setdefault(f"{name}_fps_wall", []).append(wall)
            out.setdefault(f"{name}_fps_cpu_time", []).append(cpu)
    return {k: round(statistics.median(v), 1) for k, v in out.items()}


@torch.no_grad()
def oracle_psnr(G: Generator, layer: str = T.DEFAULT_LAYER, psi: float = 1.0) -> float:
    """PSNR of rendering from the true activation with no skip image from earlier blocks."""
    from engine.tools.latents import seed_to_z

    z = torch.cat([seed_to_z(s, G.cfg.z_dim) for s in HELD_OUT])
    ws = G.mapping(z, None, psi=psi)
    img, cap = G.synthesis(ws, capture=[layer])
    out = G.synthesis(ws, start=(layer, cap[layer]))
    return float(T.psnr(out, img).mean())


def bench_fidelity(G: Generator, steps: int, batch: int, lr: float, psi: float,
                   seed: int = 0) -> dict[str, dict]:
    """Train act-MSE-only and default-loss encoders alike; PSNR on the held-out seeds."""
    results = {}
    for name, image_weight in (("act_mse_only", 0.0), ("default_loss", 1.0)):
        r = T.train_encoder(G, steps=steps, batch=batch, lr=lr, psi=psi, seed=seed,
                            image_weight=image_weight, eval_seeds=(), show_bar=True)
        p = T.fidelity_psnr(G, r.encoder, HELD_OUT, psi)
        results[name] = {"psnr_db": round(p, 2), "steps": steps, "batch": batch,
                         "train_seconds": round(r.seconds, 1),
                         "images_per_s": r.images_per_s}
        print(name, results[name], flush=True)
    results["true_activation_no_skip_image"] = {"psnr_db": round(oracle_psnr(G, psi=psi), 2)}
    return results


# ----------------------------------------------------------------------------------------
# Real photos.

DEFAULT_MODEL_DIR = Path(__file__).resolve().parents[1] / "engine" / "models" / "default_model"
SHEET_PHOTOS = ("astronaut_portrait", "astronaut", "chelsea", "coffee", "rocket", "china",
                "flower")
LATENTS_PER_PHOTO = 4


def bench_photos_set() -> dict[str, np.ndarray]:
    """Name -> uint8 HxWx3: the packages' photos, a portrait crop and corner crops."""
    from skimage import data
    from sklearn.datasets import load_sample_image

    base = {"astronaut": data.astronaut(), "chelsea": data.chelsea(), "coffee": data.coffee(),
            "rocket": data.rocket(), "china": load_sample_image("china.jpg"),
            "flower": load_sample_image("flower.jpg")}
    # The model's framing: head in the upper middle, shoulders at the bottom edge.
    out = {"astronaut_portrait": base["astronaut"][0:360, 45:405]}
    out.update(base)
    for name, img in base.items():
        h, w = img.shape[:2]
        side = int(min(h, w) * 0.6)
        for tag, (top, left) in {"tl": (0, 0), "tr": (0, w - side), "bl": (h - side, 0),
                                 "br": (h - side, w - side)}.items():
            out[f"{name}_{tag}"] = img[top:top + side, left:left + side]
    return out


TRAINING_PHOTOS = ("hubble_deep_field", "immunohistochemistry", "retina", "brick", "grass",
                   "gravel", "camera", "coins", "moon", "page", "cell", "colorwheel")


def write_training_photos(folder: str | Path) -> int:
    """The shipped encoders' unlabelled photo folder: scikit-image pictures that are NOT in
    the benchmark set, plus the 100 face crops of its LFW subset (25 px, grey)."""
    from PIL import Image
    from skimage import data

    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    count = 0
    for name in TRAINING_PHOTOS:
        img = np.asarray(getattr(data, name)())
        if img.ndim == 2:
            img = np.stack([img] * 3, -1)
        img = img[..., :3]
        if img.dtype != np.uint8:
            img = (255 * (img - img.min()) / (np.ptp(img) + 1e-9)).astype(np.uint8)
        Image.fromarray(img).save(out / f"{name}.png")
        count += 1
    faces = data.lfw_subset()[:100]   # the first 100 of the subset are faces
    for i, face in enumerate(faces):
        grey = (face * 255).astype(np.uint8)
        Image.fromarray(np.stack([grey] * 3, -1)).save(out / f"lfw_{i:03d}.png")
        count += 1
    return count


def luminance_layout(images: np.ndarray, cells: int = 8) -> np.ndarray:
    """uint8 [N, H, W, 3] -> [N, cells * cells] mean luminance (Rec. 601) per cell."""
    t = torch.from_numpy(images).float().permute(0, 3, 1, 2)
    lum = (t * torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1, keepdim=True)
    return torch.nn.functional.adaptive_avg_pool2d(lum, cells).flatten(1).numpy()


def layout_kept(photos: np.ndarray, translations: np.ndarray) -> float:
    """Mean Pearson correlation of 8x8-pooled luminance, photo i vs translation i."""
    a, b = luminance_layout(photos), luminance_layout(translations)
    a = a - a.mean(1, keepdims=True)
    b = b - b.mean(1, keepdims=True)
    corr = (a * b).sum(1) / np.sqrt((a * a).sum(1) * (b * b).sum(1) + 1e-12)
    return float(corr.mean())


def model_samples(G: Generator, seeds: list[int]) -> np.ndarray:
    from engine.tools.latents import seed_to_z, to_uint8

    out = []
    with torch.inference_mode():
        for i in range(0, len(seeds), 32):
            z = torch.cat([seed_to_z(s, G.cfg.z_dim) for s in seeds[i:i + 32]])
            out.append(to_uint8(G.synthesis(G.mapping(z, None))))
    return np.concatenate(out)


def _swd_mean(a: np.ndarray, b: np.ndarray) -> float:
    from engine.base.metrics import swd

    return swd(a, b, seed=0)["mean"]


Setting = tuple[str, float, str]   # (encoder name, domain strength, anchor)


def bench_photos(G: Generator, encoders: dict[str, str], strengths: list[float],
                 framing: str = "crop", sheet: str | None = None,
                 sheet_settings: list[Setting] | None = None,
                 match_strengths: tuple[float, ...] = ()) -> dict:
    """Gap closed, layout kept and fidelity per encoder, strength and anchor on the photo
    set: `strengths` blend towards the latent, `match_strengths` towards the anchor
    (engine/tools/anchors.py)."""
    photos = bench_photos_set()
    names = list(photos)
    n = len(names) * LATENTS_PER_PHOTO
    latents = [2_000_000 + i for i in range(n)]          # one latent per translation
    samples_a = model_samples(G, [3_000_000 + i for i in range(n)])
    samples_b = model_samples(G, [4_000_000 + i for i in range(n)])
    floor = _swd_mean(samples_b, samples_a)
    translators = {name: T.Translator.load(path, G) for name, path in encoders.items()}
    any_tr = next(iter(translators.values()))
    framed = np.stack([any_tr.translate(photos[k], 0, framing=framing, return_framed=True)[1]
                       for k in names])
    if framed.shape[1] != G.cfg.resolution:  # an encoder with another input size
        from PIL import Image
        framed = np.stack([np.asarray(Image.fromarray(f).resize((G.cfg.resolution,) * 2))
                           for f in framed])
    framed_rep = np.repeat(framed, LATENTS_PER_PHOTO, 0)
    photo_swd = _swd_mean(framed_rep, samples_a)
    report: dict = {"photos": len(names), "translations_per_setting": n, "framing": framing,
                    "swd_floor": round(floor, 2), "swd_photos_vs_samples": round(photo_swd, 2),
                    "settings": []}
    sheet_tiles: dict[Setting, dict[str, np.ndarray]] = {}
    runs = [(s, "latent") for s in strengths] + [(s, "match") for s in match_strengths]
    for enc_name, tr in translators.items():
        for strength, anchor in runs:
            outs = []
            for i, k in enumerate(names):
                ws = torch.cat([tr.ws_for(latents[i * LATENTS_PER_PHOTO + j])
                                for j in range(LATENTS_PER_PHOTO)])
                pics = [photos[k]] * LATENTS_PER_PHOTO
                outs.append(tr.translate(pics, ws, framing=framing, strength=strength,
                                         anchor=anchor))
            trans = np.concatenate(outs)
            t_swd = _swd_mean(trans, samples_a)
            row = {"encoder": enc_name, "layer": tr.layer, "strength": strength,
                   "anchor": anchor,
                   "gap_closed": round(1 - (t_swd - floor) / (photo_swd - floor), 3),
                   "layout_kept": round(layout_kept(framed_rep, trans), 3),
                   "swd": round(t_swd, 2),
                   "fidelity_psnr_db": round(fidelity_at(G, tr, strength, anchor), 2)}
            report["settings"].append(row)
            print(row, flush=True)
            sheet_tiles[(enc_name, strength, anchor)] = {k: trans[i * LATENTS_PER_PHOTO]
                                                         for i, k in enumerate(names)}
    report["anchors_alone"] = anchors_alone(G, framed, samples_a, floor, photo_swd)
    print("the bank's images alone:", report["anchors_alone"], flush=True)
    if sheet:
        write_sheet(sheet, {k: framed[names.index(k)] for k in SHEET_PHOTOS}, sheet_tiles,
                    sheet_settings or list(sheet_tiles))
        report["sheet"] = sheet
    return report


# ----------------------------------------------------------------------------------------
# Issue 36: a tuning half and a held-out half, and two more figures.
#
# Base photos (each with its four 0.6 corner crops) split by hand, deterministically, with
# faces and non-faces in both halves. Every photo the shipped encoders were trained on
# (TRAINING_PHOTOS: camera, coins, immunohistochemistry, hubble_deep_field) is in the tuning
# half, so the held-out half is new to the encoders as well as to the defaults.
# (skimage.data.cat() is chelsea: one of them only.)

TUNING_PHOTOS = ("chelsea", "camera", "coins", "immunohistochemistry", "hubble_deep_field",
                 "flower", "rocket")            # faces: a cat, a man behind a camera
HELD_OUT_PHOTOS = ("astronaut", "china", "coffee", "motorcycle")  # face: the astronaut


def _package_photo(name: str) -> np.ndarray:
    """uint8 HxWx3 of a photo shipped by scikit-learn or scikit-image."""
    from skimage import data
    from sklearn.datasets import load_sample_image

    if name in ("china", "flower"):
        img = load_sample_image(f"{name}.jpg")
    elif name == "motorcycle":
        img = data.stereo_motorcycle()[0]
    else:
        img = getattr(data, name)()
    img = np.asarray(img)
    if img.ndim == 2:
        img = np.stack([img] * 3, -1)
    return np.ascontiguousarray(img[..., :3])


def eval_photos(half: str) -> dict[str, np.ndarray]:
    """'tuning' or 'held_out': name -> uint8 photo, each base photo with its corner crops
    (and, held out, the astronaut's head-and-shoulders crop)."""
    out: dict[str, np.ndarray] = {}
    for name in {"tuning": TUNING_PHOTOS, "held_out": HELD_OUT_PHOTOS}[half]:
        img = _package_photo(name)
        out[name] = img
        if name == "astronaut":
            out["astronaut_portrait"] = img[0:360, 45:405]
        h, w = img.shape[:2]
        side = int(min(h, w) * 0.6)
        for tag, (top, left) in {"tl": (0, 0), "tr": (0, w - side), "bl": (h - side, 0),
                                 "br": (h - side, w - side)}.items():
            out[f"{name}_{tag}"] = img[top:top + side, left:left + side]
    return out


def colour_layout(images: np.ndarray, cells: int = 8) -> np.ndarray:
    """uint8 [N, H, W, 3] -> [N, cells * cells * 3] mean colour per cell."""
    t = torch.from_numpy(images).float().permute(0, 3, 1, 2)
    return torch.nn.functional.adaptive_avg_pool2d(t, cells).flatten(1).numpy()


def _row_correlation(a: np.ndarray, b: np.ndarray) -> float:
    a = a - a.mean(1, keepdims=True)
    b = b - b.mean(1, keepdims=True)
    return float(((a * b).sum(1) / np.sqrt((a * a).sum(1) * (b * b).sum(1) + 1e-12)).mean())


def colour_kept(photos: np.ndarray, translations: np.ndarray) -> float:
    """Mean Pearson correlation of the 8x8 mean colours (all 192 numbers: where the light,
    the dark and each hue sit), photo i vs translation i."""
    return _row_correlation(colour_layout(photos), colour_layout(translations))


def mean_pairwise_distance(images: np.ndarray) -> float:
    """Mean RMS difference (pixels in [0, 1]) over all pairs of a set."""
    x = torch.from_numpy(images).float().flatten(1) / 255
    d = torch.cdist(x, x) / math.sqrt(x.shape[1])
    n = len(images)
    return float(d.sum() / (n * (n - 1)))


def variety(by_latent: list[np.ndarray], samples: np.ndarray) -> float:
    """How different the translations of different photos are: for each latent, the mean
    pairwise distance of all photos' translations with that latent, over the mean pairwise
    distance of the model's own samples (different seeds); averaged over the latents."""
    own = mean_pairwise_distance(samples)
    return float(np.mean([mean_pairwise_distance(t) for t in by_latent]) / own)


def bench_halves(G: Generator, encoders: dict[str, str], settings: list[str],
                 framing: str = T.DEFAULT_FRAMING, sheet: str | None = None,
                 halves: tuple[str, ...] = ("tuning", "held_out")) -> dict:
    """Per half and setting ('b16:0.3:match', 'b16:default'): gap closed, layout kept,
    colour kept, variety, fidelity. The sheet shows the held-out half."""
    translators = {name: T.Translator.load(path, G) for name, path in encoders.items()}
    report: dict = {"framing": framing}
    for half in halves:
        photos = eval_photos(half)
        names = list(photos)
        n = len(names) * LATENTS_PER_PHOTO
        samples_a = model_samples(G, [3_000_000 + i for i in range(n)])
        samples_b = model_samples(G, [4_000_000 + i for i in range(n)])
        floor = _swd_mean(samples_b, samples_a)
        any_tr = next(iter(translators.values()))
        framed = np.stack([any_tr.translate(photos[k], 0, framing=framing, strength=1.0,
                                            return_framed=True)[1] for k in names])
        framed_rep = np.repeat(framed, LATENTS_PER_PHOTO, 0)
        photo_swd = _swd_mean(framed_rep, samples_a)
        rows, tiles = [], {}
        latents = [2_000_000 + j for j in range(LATENTS_PER_PHOTO)]   # the same for all
        for setting in settings:
            enc, rest = setting.split(":", 1)
            tr = translators[enc]
            kw = _setting_kwargs(rest)
            by_latent = [tr.translate([photos[k] for k in names], lat, framing=framing, **kw)
                         for lat in latents]
            trans = np.stack(by_latent, 1).reshape(n, *by_latent[0].shape[1:])
            t_swd = _swd_mean(trans, samples_a)
            row = {"half": half, "setting": setting, "photos": len(names),
                   "gap_closed": round(1 - (t_swd - floor) / (photo_swd - floor), 3),
                   "layout_kept": round(layout_kept(framed_rep, trans), 3),
                   "colour_kept": round(colour_kept(framed_rep, trans), 3),
                   "variety": round(variety(by_latent, samples_a), 3),
                   "fidelity_psnr_db": round(fidelity_at(
                       G, tr, kw.get("strength", T.DEFAULTS.strength),
                       kw.get("anchor", T.DEFAULTS.anchor), kw.get("fit_steps")), 2)}
            rows.append(row)
            print(row, flush=True)
            tiles[setting] = {k: by_latent[0][i] for i, k in enumerate(names)}
        report[half] = {"swd_floor": round(floor, 2), "swd_photos": round(photo_swd, 2),
                        "settings": rows}
        if sheet and half == "held_out":
            shown = [k for k in names if not k.endswith(("_tr", "_bl"))]
            write_sheet(sheet, {k: framed[names.index(k)] for k in shown},
                        {(s, 0.0, ""): v for s, v in tiles.items()},
                        [(s, 0.0, "") for s in settings], label=lambda key: key[0])
    return report


ANCHOR_KNOBS = {"blend": "BLEND", "sharp": "BLEND_SHARPNESS", "latent": "LATENT_BLOCKS",
                "psi": "PSI"}   # setting 'b16:0.3:match:blend=1:latent=2' -> engine.tools.anchors
MATCH_KNOBS = {"cells": "FIT_CELLS", "lr": "FIT_LR"}   # -> engine.tools.translate_match


def _setting_kwargs(text: str) -> dict:
    """'default' -> {} (the library's defaults); '0.3:match' -> strength and anchor; any
    'knob=value' after them sets that engine.tools.anchors constant for this setting."""
    from engine.tools import anchors

    parts = text.split(":")
    knobs = dict(p.split("=") for p in parts if "=" in p)
    parts = [p for p in parts if "=" not in p]
    from engine.tools import translate_match

    for name, (module, const) in {**{k: (anchors, c) for k, c in ANCHOR_KNOBS.items()},
                                  **{k: (translate_match, c) for k, c in MATCH_KNOBS.items()}
                                  }.items():   # back to the shipped values, then the knobs
        setattr(module, const, _SHIPPED_KNOBS.setdefault(const, getattr(module, const)))
        if name in knobs:
            setattr(module, const, type(getattr(module, const))(float(knobs[name])))
    kw: dict = {}
    if parts != ["default"]:
        kw = {"strength": float(parts[0]), "anchor": parts[1] if len(parts) > 1 else "latent"}
    if "fit" in knobs:   # the match anchor's fit steps (engine/tools/translate_match.py)
        kw["fit_steps"] = int(knobs["fit"])
    return kw


_SHIPPED_KNOBS: dict[str, float] = {}


@torch.no_grad()
def anchors_alone(G: Generator, framed: np.ndarray, samples: np.ndarray, floor: float,
                  photo_swd: float) -> dict[str, float]:
    """No translation: for each photo the LATENTS_PER_PHOTO bank images (engine/tools/anchors.py,
    psi 1) laid out most like it. How far layout and gap can agree with the model's own
    images alone."""
    from engine.tools import anchors
    from engine.tools.latents import to_uint8

    bank = anchors.bank_for(G)
    x = torch.from_numpy(framed).permute(0, 3, 1, 2).float() / 127.5 - 1
    top = (anchors.layouts(x) @ bank.layouts.T).topk(LATENTS_PER_PHOTO, dim=1).indices
    seeds = (top.flatten() + bank.first_seed).tolist()
    imgs = np.concatenate([to_uint8(G.synthesis(anchors.seed_ws(G, seeds[i:i + 32], 1.0)))
                           for i in range(0, len(seeds), 32)])
    t_swd = _swd_mean(imgs, samples)
    return {"gap_closed": round(1 - (t_swd - floor) / (photo_swd - floor), 3),
            "layout_kept": round(layout_kept(np.repeat(framed, LATENTS_PER_PHOTO, 0), imgs),
                                 3)}


@torch.no_grad()
def fidelity_at(G: Generator, tr: T.Translator, strength: float, anchor: str = "latent",
                fit_steps: int | None = None) -> float:
    """PSNR of translating the model's own images (held-out seeds) at a strength, with
    their own latents (blended towards them, or towards the anchor their layout finds)."""
    from engine.tools.latents import seed_to_z

    z = torch.cat([seed_to_z(s, G.cfg.z_dim) for s in HELD_OUT])
    ws = G.mapping(z, None)
    img = G.synthesis(ws)
    act = tr.encode(img)
    out = tr.render(act, ws, strength,
                    anchor_ws=tr.anchor_for(img, ws, strength, anchor, fit_steps))
    return float(T.psnr(out, img).mean())


def write_sheet(path: str, framed: dict[str, np.ndarray],
                tiles: dict[Setting, dict[str, np.ndarray]],
                settings: list[Setting], scale: int = 2, label=None) -> None:
    """Rows: photos; columns: the framed photo, then one translation per setting."""
    from PIL import Image, ImageDraw

    res = next(iter(framed.values())).shape[0]
    cell, head = res * scale, 14
    cols = 1 + len(settings)
    sheet = Image.new("RGB", (cols * cell, head + len(framed) * cell), "white")
    draw = ImageDraw.Draw(sheet)
    labels = ["photo (as framed)"] + [
        label(key) if label else f"{key[0]} s={key[1]:g}" + (" match" if key[2] == "match"
                                                            else "")
        for key in settings]
    for c, text in enumerate(labels):
        draw.text((c * cell + 3, 2), text, fill="black")
    for r, (name, photo) in enumerate(framed.items()):
        row = [photo] + [tiles[key][name] for key in settings]
        for c, tile in enumerate(row):
            im = Image.fromarray(tile).resize((cell, cell), Image.Resampling.NEAREST)
            sheet.paste(im, (c * cell, head + r * cell))
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path)


def _encoders_arg(text: str | None) -> dict[str, str]:
    if not text:
        found = {"b16": DEFAULT_MODEL_DIR / "encoder_b16", "b8": DEFAULT_MODEL_DIR / "encoder_b8"}
        return {k: str(v) for k, v in found.items() if v.is_dir()}
    return dict(item.split("=", 1) for item in text.split(","))


def _floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x.strip()]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--what", default="fps,train,fidelity")
    ap.add_argument("--model", default="default")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--psi", type=float, default=1.0)
    ap.add_argument("--json", default=None, help="also write the figures here")
    ap.add_argument("--encoders", default=None,
                    help="photos: name=path,... (default: the default model's shipped ones)")
    ap.add_argument("--strengths", default="1,0.75,0.5,0.25",
                    help="photos: domain strengths blending towards the latent")
    ap.add_argument("--match-strengths", default=f"{T.DEFAULT_STRENGTH:g}",
                    help="photos: domain strengths blending towards the anchor ('' none)")
    ap.add_argument("--framing", default=T.DEFAULT_FRAMING, choices=T.FRAMINGS)
    ap.add_argument("--halves", default="tuning,held_out",
                    help="halves: which halves to run (choose defaults on tuning only)")
    ap.add_argument("--settings", default="b16:default,b16:1,b16:0.3:match,b16:0.5:latent",
                    help="halves: encoder:default (the library's defaults) or "
                         "encoder:strength[:anchor], comma-separated")
    ap.add_argument("--training-photos", default=None,
                    help="write the shipped encoders' unlabelled photo folder here")
    ap.add_argument("--sheet", default=None, help="photos: write the picture sheet here")
    ap.add_argument("--sheet-settings", default=None,
                    help="photos: sheet columns as name:strength[:match],... (default: all)")
    args = ap.parse_args()
    name, G = load_model(args.model)
    what = set(args.what.split(","))
    report: dict = {"model": name, "threads": torch.get_num_threads()}
    print(f"model: {name}, torch threads: {torch.get_num_threads()}", flush=True)
    if "fps" in what:
        report["fps_batch1"] = bench_fps(G)
        print("frames/s at batch 1:", report["fps_batch1"], "(target >= 25)", flush=True)
    if "train" in what:
        r = T.train_encoder(G, steps=20, batch=args.batch, eval_seeds=(), stat_samples=64)
        report["training_images_per_s"] = r.images_per_s
        print(f"training images/s (batch {args.batch}, default loss): {r.images_per_s}",
              flush=True)
    if "fidelity" in what:
        report["fidelity"] = bench_fidelity(G, args.steps, args.batch, args.lr, args.psi)
        f = report["fidelity"]
        print(f"PSNR on 64 held-out seeds after {args.steps} steps x {args.batch}: "
              f"act-MSE only {f['act_mse_only']['psnr_db']} dB "
              f"({f['act_mse_only']['train_seconds']} s), default loss "
              f"{f['default_loss']['psnr_db']} dB ({f['default_loss']['train_seconds']} s); "
              f"true activation without skip image "
              f"{f['true_activation_no_skip_image']['psnr_db']} dB", flush=True)
    if args.training_photos:
        print(f"wrote {write_training_photos(args.training_photos)} training photos to "
              f"{args.training_photos}")
    if "photos" in what:
        columns = None
        if args.sheet_settings:
            columns = [(c.split(":")[0], float(c.split(":")[1]),
                        c.split(":")[2] if c.count(":") == 2 else "latent")
                       for c in args.sheet_settings.split(",")]
            runs = {(e, st, "latent") for e in _encoders_arg(args.encoders)
                    for st in _floats(args.strengths)} | {
                (e, st, "match") for e in _encoders_arg(args.encoders)
                for st in _floats(args.match_strengths)}
            missing = [c for c in columns if c not in runs]
            if missing:
                ap.error(f"sheet column(s) {missing} are not among the settings run")
        report["photos"] = bench_photos(
            G, _encoders_arg(args.encoders), _floats(args.strengths), args.framing,
            args.sheet, columns, tuple(_floats(args.match_strengths)))
    if "halves" in what:
        report["halves"] = bench_halves(G, _encoders_arg(args.encoders),
                                        args.settings.split(","), args.framing, args.sheet,
                                        tuple(args.halves.split(",")))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
