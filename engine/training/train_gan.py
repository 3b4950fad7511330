"""A compact StyleGAN2 trainer on our generator: trains from scratch (it made the embedded
default model) or fine-tunes any StyleGAN2 the zoo loads on a folder or zip of pictures.

Non-saturating logistic loss, lazy R1 on reals, optional lazy path-length regularisation,
style mixing, an EMA generator, the NVlabs optimiser settings, and adaptive discriminator
augmentation (engine/training/augment.py): every image D sees, real or fake, is augmented with
probability p, and p follows the sign of D's outputs on reals towards r_t = 0.6. Fine-tuning
starts from the base model's generator and, when its checkpoint has one (NVlabs pickles,
rosinality `d`), its discriminator; optionally the discriminator's first blocks stay frozen
(FreezeD, Mo et al. 2020). One loop, read top to bottom; the checkpoint, resume, cancel and
metrics scaffolding is engine/training/loop.py.

Runs on one CPU, one GPU or many processes through `accelerate launch`. Gradients are
all-reduced by hand (as NVlabs does) rather than through DDP, so the G step can freeze D
and the R1 pass can differentiate through D without DDP bookkeeping.

Speed on a 2-core CPU: narrow high-res layers (the FLOPs live there), the fakes made for the
G step are reused (detached, already augmented) by the D step instead of rendering a second
batch, non-fused modulation, demodulation from [N, I] styles, and R1 only every 16 D steps.
Every step draws its latents, augmentations and real-image indices from a generator seeded by
(seed, step, rank), and checkpoints hold the ADA state, so a resumed run continues exactly.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from engine.base.errors import StudioError
from engine.base.files import atomic_write, atomic_write_text
from engine.base.seeding import global_draws_from
from engine.gan.stylegan2 import Discriminator, Generator, GeneratorConfig
from engine.training.augment import AdaController, augment
from engine.training.loop import (
    Checkpointer,
    LoopCancelled,
    MetricsCallback,
    StepLoop,
    crossed,
    step_generator,
)

CHECKPOINT_NAME = "checkpoint.pt"
MODEL_NAME = "generator.safetensors"
D_SUFFIX = ".d.safetensors"  # a generator's discriminator beside it: generator.d.safetensors
CARD_NAME = "MODEL_CARD.md"
METRICS_NAME = "log.jsonl"
SAMPLE_GRID_SEEDS = 64  # an 8x8 grid of fixed seeds, the same at every snapshot
MIN_IMAGES = 10         # fewer pictures than this is refused (a few hundred is the sweet spot)
AUGMENT_MODES = ("ada", "fixed", "none")
MAX_DISCRIMINATOR_PARAMETERS = 200_000_000  # a forged config must not allocate without bound

__all__ = ["TrainConfig", "TrainingCancelled", "train", "add_cli", "measure_speed",
           "step_generator"]


class TrainingCancelled(LoopCancelled):
    """GAN training stopped on request; the checkpoint in --out resumes it."""


def _opt(default: Any, help: str, choices: tuple[str, ...] | None = None) -> Any:
    """A config field with its --help text (every CLI option is documented from here)."""
    return dataclasses.field(default=default, metadata={"help": help, "choices": choices})


@dataclass
class TrainConfig:
    data: str = _opt("faces", "training pictures: 'faces' (procedural), 'faces:VARIANT' "
                              "(glasses, no-glasses, bald, long-hair, grin), a folder or a "
                              ".zip of pictures of any size")
    out: str = _opt("runs/faces64", "output folder: checkpoint, sample grids, metrics log, "
                                    "exported model and its card; an existing checkpoint "
                                    "there is resumed")
    base: str = _opt("", "fine-tune this model: a catalogue id ('default', ...), "
                         "hf://owner/repo/file or a checkpoint path; empty trains from scratch")
    resolution: int = _opt(0, "image size; 0 = the base model's, or 64 from scratch (a "
                              "different size than the base model's is refused)")
    fit: str = _opt("crop", "how pictures become square: 'crop' the centre or 'pad' with "
                            "the border colour", choices=("crop", "pad"))
    channel_base: int = _opt(2048, "from scratch: network width (channels = base // res)")
    channel_max: int = _opt(128, "from scratch: ... capped at this many channels")
    z_dim: int = _opt(128, "from scratch: latent size z")
    w_dim: int = _opt(128, "from scratch: intermediate latent size w")
    mapping_layers: int = _opt(4, "from scratch: fully connected layers in the mapping "
                                  "network")
    batch: int = _opt(16, "images per step over all processes")
    total_kimg: float = _opt(150.0, "training length in thousands of real images shown "
                                    "(counted from the start, so a resumed run stops here)")
    lr_g: float = _opt(0.0025, "generator Adam learning rate (fine-tuning a pretrained model: "
                               "0.0005 keeps its colours, see README)")
    lr_d: float = _opt(0.0025, "discriminator Adam learning rate")
    r1_gamma: float = _opt(0.1, "R1 regularisation weight (raise it for bigger models: "
                                "NVlabs uses 0.0002 * res**2 / batch)")
    r1_interval: int = _opt(16, "lazy R1: every this many D steps")
    pl_weight: float = _opt(0.0, "path-length regularisation weight (0 = off)")
    pl_interval: int = _opt(4, "lazy path-length regularisation: every this many G steps")
    style_mixing: float = _opt(0.9, "probability of mixing two latents in a batch")
    ema_kimg: float = _opt(5.0, "half-life of the EMA generator in kimg")
    ema_rampup: float = _opt(0.05, "EMA half-life ramps up with the images seen "
                                   "(0 = no ramp-up)")
    xflip: bool = _opt(False, "also train on left-right mirrored pictures")
    augment: str = _opt("ada", "discriminator augmentation: 'ada' (p adapts), 'fixed' "
                               "(p stays --aug-p) or 'none'", choices=AUGMENT_MODES)
    aug_p: float = _opt(0.0, "initial (or, with --augment fixed, constant) augmentation "
                             "probability")
    ada_target: float = _opt(0.6, "ADA target for E[sign(D(real))]; above it p rises")
    ada_interval: int = _opt(4, "ADA adjusts p every this many steps")
    ada_kimg: float = _opt(100.0, "ADA speed: kimg for p to go from 0 to 1 (NVlabs uses 500 "
                                  "for long runs)")
    d_warmup_kimg: float = _opt(1.0, "fine-tuning with a fresh discriminator (the base "
                                     "checkpoint has none): train D alone on the first this "
                                     "many kimg, so G's first updates come from a D that "
                                     "knows the pictures")
    freeze_d: int = _opt(0, "FreezeD: keep this many of D's highest-resolution blocks "
                            "frozen when fine-tuning")
    pool: int = _opt(50000, "procedural faces rendered once and sampled from")
    seed: int = _opt(0, "random seed of the whole run (weights, latents, augmentations)")
    snapshot_kimg: float = _opt(2.0, "write a checkpoint every this many kimg")
    sample_kimg: float = _opt(4.0, "write a sample grid of fixed seeds every this many kimg")
    max_minutes: float = _opt(0.0, "stop after this long (after a checkpoint) and export; "
                                   "0 = no limit")
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)

    def generator_config(self) -> GeneratorConfig:
        return GeneratorConfig(z_dim=self.z_dim, w_dim=self.w_dim,
                               resolution=self.resolution or 64,
                               channel_base=self.channel_base, channel_max=self.channel_max,
                               mapping_layers=self.mapping_layers)


# Settings a resumed run may change: its length and how often it reports.
RESUMABLE_CHANGES = ("out", "total_kimg", "snapshot_kimg", "sample_kimg", "max_minutes",
                     "extra")


# ----------------------------------------------------------------------------------------
# Helpers.


def all_reduce_grads(params: list[torch.nn.Parameter], world: int) -> None:
    """Average gradients over processes in one flat all-reduce (no-op for one process)."""
    if world == 1:
        return
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.flatten() for g in grads])
    torch.distributed.all_reduce(flat)
    flat /= world
    for p, g in zip(params, flat.split([q.numel() for q in params])):
        p.grad = g.reshape(p.shape)


def mixed_ws(G: Generator, z: torch.Tensor, prob: float, gen: torch.Generator) -> torch.Tensor:
    """Map z to ws; with probability `prob` the ws after a random cutoff come from a 2nd z."""
    ws = G.mapping(z)
    if prob > 0 and torch.rand([], generator=gen, device=z.device) < prob:
        cutoff = int(torch.randint(1, ws.shape[1], [], generator=gen, device=z.device))
        z2 = torch.randn(z.shape, generator=gen, device=z.device)
        ws = ws.clone()
        ws[:, cutoff:] = G.mapping(z2)[:, cutoff:]
    return ws


def tile(images: np.ndarray) -> np.ndarray:
    """uint8 [N, H, W, 3] -> one near-square grid image."""
    cols = int(math.ceil(math.sqrt(len(images))))
    rows = int(math.ceil(len(images) / cols))
    h, w = images.shape[1:3]
    grid = np.zeros((rows * h, cols * w, 3), np.uint8)
    for i, im in enumerate(images):
        grid[(i // cols) * h:(i // cols + 1) * h, (i % cols) * w:(i % cols + 1) * w] = im
    return grid


def sample_grid(G: Generator, seeds: list[int], device: torch.device) -> np.ndarray:
    """Fixed-seed grid (psi 1, const noise) as a uint8 HxWx3 image."""
    with torch.no_grad():
        z = torch.cat([G.seed_to_z(s) for s in seeds]).to(device)
        img = torch.cat([G(zb) for zb in z.split(16)])
    img = (img.clamp(-1, 1) + 1) * 127.5
    return tile(img.round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy())


def _save_png(path: Path, grid: np.ndarray) -> None:
    atomic_write(path, lambda tmp: Image.fromarray(grid).save(tmp, format="PNG"))


# ----------------------------------------------------------------------------------------
# Networks: from scratch or from a base model.


@dataclass
class Networks:
    G: Generator
    D: Discriminator
    base: dict[str, Any] | None   # the base model's id, title, sha256 (None from scratch)
    notes: list[str]              # sentences for the user (e.g. "fresh discriminator")
    fresh_d: bool                 # D starts from random weights while G is trained


def check_base_generator(G: Any, spec: str, resolution: int) -> None:
    """One sentence when a loaded model cannot be fine-tuned here."""
    if not isinstance(G, Generator):
        raise StudioError(f"{spec} is not a StyleGAN2 generator (it is a "
                          f"{type(G).__name__}); the trainer fine-tunes StyleGAN2 models only.")
    cfg = G.cfg
    if cfg.c_dim > 0:
        raise StudioError(f"{spec} is a conditional model ({cfg.c_dim} classes); the trainer "
                          f"fine-tunes unconditional models only.")
    if cfg.img_channels != 3:
        raise StudioError(f"{spec} makes {cfg.img_channels}-channel images but the training "
                          f"pictures are RGB; pick an RGB model.")
    if resolution and resolution != cfg.resolution:
        raise StudioError(f"{spec} makes {cfg.resolution} px images, not {resolution} px; "
                          f"leave --resolution at 0 (or set it to {cfg.resolution}), the "
                          f"pictures are resized to fit.")


def load_base(spec: str, resolution: int = 0) -> Networks:
    """G from any model the zoo loads (a private copy: the zoo's is shared) and its D when
    the checkpoint holds a usable one, else a fresh D of the generator's shape."""
    from engine.gan.checkpoints import build_discriminator, read_checkpoint
    from engine.models import zoo

    model = zoo.load(spec, device="cpu")
    check_base_generator(model.G, spec, resolution)
    G = copy.deepcopy(model.G).train().requires_grad_(True)
    notes: list[str] = []
    D = None
    try:
        source = zoo.source_file(spec)
        beside = discriminator_path(source)
        if beside.is_file():
            D_loaded = load_discriminator(beside)
        elif source.suffix == ".safetensors":
            raise StudioError(f"{source.name} holds a generator only")
        else:
            D_loaded = build_discriminator(read_checkpoint(source, want_d=True))
        if D_loaded.cfg.resolution != G.cfg.resolution or D_loaded.cfg.img_channels != 3:
            notes.append(f"The base checkpoint's discriminator is for "
                         f"{D_loaded.cfg.resolution} px, {D_loaded.cfg.img_channels}-"
                         f"channel images, so training starts from a fresh one.")
        else:
            D = D_loaded.train()
            notes.append("Fine-tuning with the base checkpoint's own discriminator.")
    except StudioError as exc:
        notes.append(f"The base checkpoint has no discriminator the trainer can use "
                     f"({str(exc).rstrip('.')}), so training starts from a fresh one.")
    fresh_d = D is None
    if D is None:
        D = Discriminator(G.cfg).train()
    base = {"spec": spec, "id": model.id, "title": model.title, "sha256": model.sha256,
            "source": model.source}
    return Networks(G=G, D=D, base=base, notes=notes, fresh_d=fresh_d)


def discriminator_path(generator_path: Path) -> Path:
    """Where a studio generator file keeps its discriminator: X.safetensors -> X.d.safetensors."""
    return generator_path.with_name(generator_path.name.removesuffix(".safetensors") + D_SUFFIX)


def save_discriminator(D: Discriminator, path: Path) -> Path:
    """D's tensors as safetensors with its config in the metadata (written atomically)."""
    from safetensors.torch import save_file

    state = {k: v.detach().cpu().contiguous().clone() for k, v in D.state_dict().items()}
    meta = {"format": "activation-studio-discriminator", "config": json.dumps(D.cfg.to_dict()),
            "mbstd_group_size": str(D.b4.mbstd.group_size)}
    return atomic_write(path, lambda tmp: save_file(state, str(tmp), metadata=meta))


def load_discriminator(path: Path) -> Discriminator:
    """A discriminator written by save_discriminator; one sentence when it does not fit."""
    from safetensors import safe_open

    from engine.gan.checkpoints import _load_strict

    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            meta = f.metadata() or {}
            state = {k: f.get_tensor(k).to(torch.float32) for k in f.keys()}
        cfg = GeneratorConfig.from_dict(json.loads(meta["config"]))
        group = int(meta.get("mbstd_group_size", 4))
    except Exception as exc:
        raise StudioError(f"{path.name} is not a discriminator file the trainer can read.") from exc
    if cfg.approx_parameters() > MAX_DISCRIMINATOR_PARAMETERS:
        raise StudioError(f"{path.name} describes a discriminator too large to build.")
    D = Discriminator(cfg, group)
    _load_strict(D, state, "discriminator")
    return D


def _frozen_d_blocks(D: Discriminator, count: int) -> list[str]:
    """Names of D's `count` highest-resolution blocks (the ones next to the image)."""
    names = [f"b{res}" for res in D.res_list]
    if count < 0 or count > len(names):
        raise StudioError(f"--freeze-d must be between 0 and {len(names)} (the discriminator's "
                          f"blocks below the 4x4 epilogue); got {count}.")
    return names[:count]


def _check_config(cfg: TrainConfig) -> None:
    if cfg.augment not in AUGMENT_MODES:
        raise StudioError(f"--augment must be one of {', '.join(AUGMENT_MODES)}; got "
                          f"{cfg.augment!r}.")
    if not 0.0 <= cfg.aug_p <= 1.0:
        raise StudioError(f"--aug-p is a probability between 0 and 1; got {cfg.aug_p}.")
    if cfg.batch < 1 or cfg.total_kimg <= 0:
        raise StudioError("--batch and --total-kimg must be positive.")
    if cfg.resolution and (cfg.resolution < 8 or cfg.resolution & (cfg.resolution - 1)):
        raise StudioError(f"--resolution must be a power of two of at least 8; got "
                          f"{cfg.resolution}.")


# ----------------------------------------------------------------------------------------
# Training.


def _starting_networks(cfg: TrainConfig, state: dict[str, Any] | None
                       ) -> tuple[Generator, Discriminator, dict | None, int, list[str]]:
    """(G, D, base model record, images a fresh D trains alone, notes) a run starts from:
    the checkpoint's shapes when resuming (their weights are loaded later), else the base
    model's networks when fine-tuning, else new networks of cfg's shape."""
    notes: list[str] = []
    if state is not None:  # rebuild the networks the checkpoint was made with
        G = Generator(GeneratorConfig.from_dict(state["g_config"]))
        D = Discriminator(GeneratorConfig.from_dict(state["d_config"]),
                          int(state["mbstd_group_size"]))
        base = state["base"] or None
        warmup_nimg = int(state["warmup_nimg"])
    elif cfg.base:
        nets = load_base(cfg.base, cfg.resolution)
        G, D, base, notes = nets.G, nets.D, nets.base, nets.notes
        warmup_nimg = int(cfg.d_warmup_kimg * 1000) if nets.fresh_d else 0
        if warmup_nimg:
            notes.append(f"The fresh discriminator trains alone for the first "
                         f"{cfg.d_warmup_kimg:g} kimg.")
    else:
        gcfg = cfg.generator_config()
        # The same initial weights on every process, without reseeding the process-wide
        # generator (a studio's other users draw from it).
        with global_draws_from(cfg.seed):
            G, D = Generator(gcfg), Discriminator(gcfg)
        base, warmup_nimg = None, 0
    return G, D, base, warmup_nimg, notes


@dataclass
class _Run:
    """One training run's networks, optimisers and ADA, and the steps that change them."""
    cfg: TrainConfig
    acc: Any                  # the accelerate.Accelerator
    G: Generator
    D: Discriminator
    G_ema: Generator
    g_params: list[torch.nn.Parameter]
    d_params: list[torch.nn.Parameter]  # D's parameters but the frozen blocks'
    opt_G: torch.optim.Optimizer
    opt_D: torch.optim.Optimizer
    ada: AdaController
    pl_mean: torch.Tensor     # running mean of the path lengths
    base: dict | None         # the fine-tuned model's record (None from scratch)
    warmup_nimg: int          # images a fresh discriminator trains alone

    @classmethod
    def build(cls, cfg: TrainConfig, acc: Any, G: Generator, D: Discriminator,
              base: dict | None, warmup_nimg: int) -> _Run:
        device = acc.device
        G, D = G.to(device).train(), D.to(device).train()
        G_ema = copy.deepcopy(G).eval().requires_grad_(False)
        frozen = _frozen_d_blocks(D, cfg.freeze_d)
        for name in frozen:
            getattr(D, name).requires_grad_(False)
        g_params = list(G.parameters())
        d_params = [p for n, p in D.named_parameters() if n.split(".")[0] not in frozen]
        # Lazy regularisation: scale lr and betas so the regulariser's effect is unchanged.
        d_ratio = cfg.r1_interval / (cfg.r1_interval + 1)
        g_ratio = cfg.pl_interval / (cfg.pl_interval + 1) if cfg.pl_weight > 0 else 1.0
        opt_G = torch.optim.Adam(g_params, lr=cfg.lr_g * g_ratio,
                                 betas=(0.0, 0.99 ** g_ratio), eps=1e-8)
        opt_D = torch.optim.Adam(d_params, lr=cfg.lr_d * d_ratio,
                                 betas=(0.0, 0.99 ** d_ratio), eps=1e-8)
        ada = AdaController(p=cfg.aug_p if cfg.augment != "none" else 0.0,
                            target=cfg.ada_target, interval=cfg.ada_interval,
                            speed_kimg=cfg.ada_kimg, adaptive=cfg.augment == "ada")
        return cls(cfg, acc, G, D, G_ema, g_params, d_params, opt_G, opt_D, ada,
                   torch.zeros([], device=device), base, warmup_nimg)

    def load(self, state: dict[str, Any]) -> None:
        """Take the weights, optimiser and ADA states of a checkpoint."""
        self.G.load_state_dict(state["G"])
        self.D.load_state_dict(state["D"])
        self.G_ema.load_state_dict(state["G_ema"])
        self.opt_G.load_state_dict(state["opt_G"])
        self.opt_D.load_state_dict(state["opt_D"])
        self.ada.load_state_dict(state["ada"])
        self.pl_mean = state["pl_mean"].to(self.acc.device)

    def state(self, nimg: int, data_description: str) -> dict[str, Any]:
        """What the checkpoint holds (load and _starting_networks read it back)."""
        G, D = self.G, self.D
        return {"G": G.state_dict(), "D": D.state_dict(), "G_ema": self.G_ema.state_dict(),
                "opt_G": self.opt_G.state_dict(), "opt_D": self.opt_D.state_dict(),
                "nimg": nimg, "pl_mean": self.pl_mean, "ada": self.ada.state_dict(),
                "g_config": G.cfg.to_dict(), "d_config": D.cfg.to_dict(),
                "mbstd_group_size": D.b4.mbstd.group_size, "base": self.base or {},
                "warmup_nimg": self.warmup_nimg, "data_description": data_description}

    def generator_step(self, z: torch.Tensor, gen: torch.Generator, step: int, nimg: int,
                       stats: dict[str, float]) -> torch.Tensor:
        """G step: make fakes, push D(augment(fake)) up; returns the (augmented) fakes, which
        the D step reuses. During a fresh discriminator's warm-up G only makes the fakes."""
        cfg, G = self.cfg, self.G
        train_g = nimg >= self.warmup_nimg
        self.D.requires_grad_(False)
        with torch.set_grad_enabled(train_g):
            ws = mixed_ws(G, z, cfg.style_mixing, gen)
            fake = augment(G.synthesis(ws, noise_mode="random", noise_generator=gen),
                           self.ada.p, gen)
        if not train_g:
            return fake
        loss_g = F.softplus(-self.D(fake)).mean()
        self.opt_G.zero_grad(set_to_none=True)
        loss_g.backward()
        with torch.no_grad():  # track the mean w (NVlabs w_avg_beta 0.995)
            w_mean = self.acc.reduce(ws[:, 0].detach().mean(0), "mean")
            G.mapping.w_avg.copy_(w_mean.lerp(G.mapping.w_avg, 0.995))
        stats["loss_g"] = float(loss_g.detach())
        if cfg.pl_weight > 0 and step % cfg.pl_interval == 0:
            stats["pl"] = self._path_length_backward(z, gen)
        all_reduce_grads(self.g_params, self.acc.num_processes)
        self.opt_G.step()
        return fake

    def _path_length_backward(self, z: torch.Tensor, gen: torch.Generator) -> float:
        """Path-length regularisation (lazy): adds its gradients to G's; returns its loss."""
        cfg, G = self.cfg, self.G
        n_pl = max(z.shape[0] // 2, 1)
        ws_pl = mixed_ws(G, z[:n_pl], cfg.style_mixing, gen)
        img_pl = G.synthesis(ws_pl, noise_mode="random", noise_generator=gen)
        noise = torch.randn(img_pl.shape, generator=gen, device=self.acc.device)
        noise = noise / math.sqrt(img_pl.shape[2] * img_pl.shape[3])
        (pl_grad,) = torch.autograd.grad((img_pl * noise).sum(), ws_pl, create_graph=True)
        lengths = pl_grad.square().sum(2).mean(1).sqrt()
        self.pl_mean = self.pl_mean.lerp(self.acc.reduce(lengths.mean().detach(), "mean"),
                                         0.01)
        loss_pl = (lengths - self.pl_mean).square().mean() * cfg.pl_weight * cfg.pl_interval
        loss_pl.backward()
        return float(loss_pl.detach())

    def discriminator_step(self, fake: torch.Tensor, real: torch.Tensor,
                           gen: torch.Generator, step: int, stats: dict[str, float]
                           ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """D step: push D(fake) down and D(real) up, both augmented; lazy R1 on reals,
        differentiated through the augmentation to the pictures themselves.
        Returns (loss_d, D's logits on the reals, on the fakes)."""
        cfg, D = self.cfg, self.D
        for p in self.d_params:
            p.requires_grad_(True)
        do_r1 = cfg.r1_gamma > 0 and step % cfg.r1_interval == 0
        real_in = real.detach().requires_grad_(do_r1)
        logits_fake = D(fake.detach())
        logits_real = D(augment(real_in, self.ada.p, gen))
        self.ada.observe(logits_real)
        loss_d = F.softplus(logits_fake).mean() + F.softplus(-logits_real).mean()
        if do_r1:
            (r1_grad,) = torch.autograd.grad(logits_real.sum(), real_in, create_graph=True)
            r1 = r1_grad.square().sum([1, 2, 3]).mean()
            loss_d = loss_d + r1 * (cfg.r1_gamma / 2) * cfg.r1_interval
            stats["r1"] = float(r1.detach())
        self.opt_D.zero_grad(set_to_none=True)
        loss_d.backward()
        all_reduce_grads(self.d_params, self.acc.num_processes)
        self.opt_D.step()
        return loss_d, logits_real, logits_fake

    def update_ema(self, nimg: int) -> None:
        """Move G_ema (weights and buffers) towards G; nimg: images shown, this step's too."""
        cfg = self.cfg
        ema_nimg = cfg.ema_kimg * 1000
        if cfg.ema_rampup > 0:
            ema_nimg = min(ema_nimg, nimg * cfg.ema_rampup)
        beta = 0.5 ** (cfg.batch / max(ema_nimg, 1e-8))
        with torch.no_grad():
            for p_ema, p in zip(self.G_ema.parameters(), self.G.parameters()):
                p_ema.copy_(p.lerp(p_ema, beta))
            for b_ema, b in zip(self.G_ema.buffers(), self.G.buffers()):
                b_ema.copy_(b)


def _real_batch(reals_u8: torch.Tensor, n_reals: int, count: int, seed: int, step: int,
                rank: int, device: torch.device) -> torch.Tensor:
    """The step's real pictures, [count, 3, H, W] in [-1, 1], drawn from (seed, step, rank).

    reals_u8 is [N, H, W, 3] uint8; an index >= N (n_reals is 2N with x-flips) is that
    picture mirrored."""
    idx = torch.randint(n_reals, [count], generator=step_generator(seed, step, rank, "cpu"))
    real = reals_u8[idx % len(reals_u8)].to(device).permute(0, 3, 1, 2)
    real = real.to(torch.float32) / 127.5 - 1
    return torch.where((idx >= len(reals_u8)).to(device)[:, None, None, None],
                       real.flip(3), real)


def _accelerator(cfg: TrainConfig) -> tuple[Any, int]:
    """(this process's accelerate.Accelerator, its share of cfg.batch); makes the output
    folder (the main process does, the others wait for it)."""
    from accelerate import Accelerator

    from engine.base import devices

    # STUDIO_DEVICE decides; cpu=True (also without CUDA) lets a multi-process CPU launch
    # form a gloo group.
    acc = Accelerator(cpu=devices.default_device().type != "cuda")
    if acc.is_main_process:
        (Path(cfg.out) / "samples").mkdir(parents=True, exist_ok=True)
    acc.wait_for_everyone()
    world = acc.num_processes
    per_gpu = cfg.batch // world
    if per_gpu * world != cfg.batch:
        raise StudioError(f"--batch {cfg.batch} must divide by the {world} processes.")
    return acc, per_gpu


def _training_loop(cfg: TrainConfig, acc: Any, total: int, out: Path,
                   state: Any, cancel: Any, progress: Any,
                   on_metrics: MetricsCallback | None) -> StepLoop:
    """The run's StepLoop: it counts images (a step shows cfg.batch of them), checkpoints
    `state()` into out, logs metrics and describes the progress."""
    return StepLoop(
        total, per_step=cfg.batch, accelerator=acc,
        checkpointer=Checkpointer(out / CHECKPOINT_NAME, asdict(cfg),
                                  may_change=RESUMABLE_CHANGES),
        state=state, checkpoint_every=max(int(cfg.snapshot_kimg * 1000), 1),
        cancel=cancel, max_seconds=cfg.max_minutes * 60 or None,
        cancelled=lambda loop: TrainingCancelled(
            f"Training stopped at {loop.done / 1000:.2f} kimg; run it again with the same "
            f"output folder to resume."),
        progress=progress, on_metrics=on_metrics, metrics_path=out / METRICS_NAME,
        describe=lambda loop, m: (f"step {loop.step} of {loop.total_steps} "
                                  f"({loop.done / 1000:.2f} of {total / 1000:g} kimg), "
                                  f"augmentation p {m['aug_p']:.3f}"),
        bar="training", bar_keys=("loss_g", "loss_d", "aug_p", "img_per_s"))


def _load_data(cfg: TrainConfig, resolution: int) -> Any:
    """The training pictures at the generator's resolution; one sentence when too few."""
    from engine.training.datasets import make_dataset

    data = make_dataset(cfg.data, resolution, count=cfg.pool, xflip=cfg.xflip, fit=cfg.fit)
    if len(data.images) < MIN_IMAGES:
        raise StudioError(f"{cfg.data} has {len(data.images)} readable pictures; training "
                          f"needs at least {MIN_IMAGES} (a few hundred is better).")
    return data


def train(cfg: TrainConfig, progress: Any = None, cancel: Any = None,
          on_metrics: MetricsCallback | None = None) -> Path:
    """Train, fine-tune or resume into cfg.out; returns the exported EMA generator's path.

    progress(fraction, message) hears every step; on_metrics(step, metrics) gets the step's
    numbers (losses, D's outputs, augmentation p, images/s) as a dict; `cancel` (an Event, a
    callable or a bool) stops between steps with TrainingCancelled after a checkpoint.
    """
    _check_config(cfg)
    acc, per_gpu = _accelerator(cfg)
    device, rank, world = acc.device, acc.process_index, acc.num_processes
    out = Path(cfg.out)

    # Resume, cancel, time limit, metrics log, progress and checkpoints: engine/training/loop.py.
    # The networks, optimisers and ADA the checkpoint holds are built below (from the
    # checkpoint when resuming); `run` and `data` are bound before the first checkpoint.
    total = int(cfg.total_kimg * 1000)
    loop = _training_loop(cfg, acc, total, out,
                          lambda: run.state(loop.done, data.description),
                          cancel, progress, on_metrics)
    state = loop.resume(device)
    G, D, base, warmup_nimg, notes = _starting_networks(cfg, state)
    run = _Run.build(cfg, acc, G, D, base, warmup_nimg)
    G, D, G_ema, ada = run.G, run.D, run.G_ema, run.ada
    if state is not None:
        run.load(state)
        if acc.is_main_process:
            print(f"resumed from {loop.checkpointer.path} at {loop.done / 1000:.3f} kimg")

    data = _load_data(cfg, G.cfg.resolution)
    notes += data.notes
    if acc.is_main_process:
        for note in notes:
            print(note)
    reals_u8 = torch.from_numpy(np.ascontiguousarray(data.images))  # [N, H, W, 3] uint8
    n_reals = len(data)  # x-flips double it: index >= N means "mirrored"
    grid_seeds = list(range(SAMPLE_GRID_SEEDS))
    sample_every = max(int(cfg.sample_kimg * 1000), 1)

    if acc.is_main_process and loop.step == 0:
        _save_png(out / "samples" / "reals.png", tile(data.images[:SAMPLE_GRID_SEEDS]))
        _save_png(out / "samples" / "fakes_init.png", sample_grid(G_ema, grid_seeds, device))
    t_start = t_last = time.time()
    nimg_last = loop.done

    for step in loop:
        gen = step_generator(cfg.seed, step, rank, device)
        real = _real_batch(reals_u8, n_reals, per_gpu, cfg.seed, step, rank, device)
        z = torch.randn([per_gpu, G.cfg.z_dim], generator=gen, device=device)
        stats: dict[str, float] = {}
        fake = run.generator_step(z, gen, step, loop.done, stats)
        loss_d, logits_real, logits_fake = run.discriminator_step(fake, real, gen, step, stats)
        # EMA of G, then ADA's adjustment of p.
        nimg = loop.done + cfg.batch  # images shown, this step's included
        run.update_ema(nimg)
        ada.end_step(cfg.batch, reduce=(lambda t: acc.reduce(t.to(device), "sum").cpu())
                     if world > 1 else None)

        # Sample grids before the step's checkpoint: a checkpoint implies its grids exist.
        if acc.is_main_process and (crossed(nimg - cfg.batch, nimg, sample_every)
                                    or nimg >= total):
            _save_png(out / "samples" / f"fakes{nimg // 1000:06d}.png",
                      sample_grid(G_ema, grid_seeds, device))
        stats.update(kimg=nimg / 1000, loss_d=float(loss_d.detach()),
                     d_real=float(logits_real.detach().mean()),
                     d_fake=float(logits_fake.detach().mean()),
                     sign_real=float(torch.sign(logits_real.detach()).mean()),
                     aug_p=ada.p, time_s=time.time() - t_start)
        if time.time() - t_last > 10:
            stats["img_per_s"] = (nimg - nimg_last) / (time.time() - t_last)
            t_last, nimg_last = time.time(), nimg
        loop.end_step(stats)

    model_path = out / MODEL_NAME
    if acc.is_main_process:
        export(G_ema, model_path, cfg, loop.done, loop.step, base, data.description, ada.p)
        save_discriminator(D, discriminator_path(model_path))  # to fine-tune further
    acc.wait_for_everyone()
    return model_path


# ----------------------------------------------------------------------------------------
# Export.


def export(G_ema: Generator, path: Path, cfg: TrainConfig, nimg: int, steps: int,
           base: dict[str, Any] | None, data_description: str, aug_p: float) -> Path:
    """The EMA generator as safetensors + sidecar (loadable by the zoo) and a model card."""
    from engine.gan.checkpoints import save_generator

    source = {"trainer": "engine.training.train_gan", "data": data_description,
              "kimg": round(nimg / 1000, 3), "steps": steps, "augment": cfg.augment,
              "final_aug_p": round(aug_p, 4), "config": asdict(cfg)}
    if base:
        source["base_model"] = {k: base.get(k) for k in ("spec", "title", "sha256")}
    save_generator(G_ema.cpu(), path, source=source)
    atomic_write_text(path.parent / CARD_NAME, model_card(G_ema.cfg, source))
    return path


def model_card(gcfg: GeneratorConfig, source: dict[str, Any]) -> str:
    c = source["config"]
    base = source.get("base_model")
    origin = (f"fine-tuned from **{base['title']}** (`{base['spec']}`, sha256 "
              f"`{str(base['sha256'])[:12]}`)" if base else "trained from scratch")
    return "\n".join([
        f"# {Path(c['out']).name}: a StyleGAN2 {origin}",
        "",
        "| | |",
        "|---|---|",
        f"| data | {source['data']}{', x-flips' if c['xflip'] else ''} |",
        f"| resolution | {gcfg.resolution} px; z {gcfg.z_dim}, w {gcfg.w_dim} |",
        f"| length | {source['kimg']} kimg ({source['steps']} steps at batch {c['batch']}) |",
        f"| augmentation | {source['augment']}, final p {source['final_aug_p']} "
        f"(target {c['ada_target']}) |",
        f"| optimiser | Adam lr G {c['lr_g']}, D {c['lr_d']}; R1 gamma {c['r1_gamma']}; "
        f"FreezeD {c['freeze_d']} blocks |",
        f"| file | `{MODEL_NAME}` + `{MODEL_NAME}.json` (config, provenance, sha256); its "
        f"discriminator `{MODEL_NAME.removesuffix('.safetensors')}{D_SUFFIX}` for further "
        f"fine-tuning |",
        "",
        "Made with `python -m engine train-gan` (engine/training/train_gan.py). Load it in the "
        "studio or with `python -m engine generate --model <this folder>/generator.safetensors`.",
        "",
    ])


# ----------------------------------------------------------------------------------------
# How fast a fine-tuning would run here, before starting it.


def measure_speed(G: Generator, batch: int, aug_p: float = 0.0, steps: int = 2,
                  device: torch.device | str | None = None) -> float:
    """Images per second of training steps like `train`'s (a G step and a D step, forward
    and backward, augmented with probability aug_p) for a generator of G's shape, timed over
    `steps` steps after one warm-up step. Works on private copies: G is not changed and
    torch's global generator is not drawn from. Leaves out the optimiser update, the EMA and
    the lazy R1 pass (one step in 16), so the real loop runs a little slower than this."""
    device = torch.device(device) if device is not None else next(G.parameters()).device
    G = copy.deepcopy(G).to(device).train().requires_grad_(True)
    with global_draws_from(0):
        D = Discriminator(G.cfg).to(device).train()
    gen = step_generator(0, 0, 0, device)
    res = G.cfg.resolution
    reals = torch.rand([batch, 3, res, res], generator=gen, device=device) * 2 - 1

    def one_step() -> None:
        z = torch.randn([batch, G.cfg.z_dim], generator=gen, device=device)
        fake = augment(G.synthesis(G.mapping(z), noise_mode="random", noise_generator=gen),
                       aug_p, gen)
        F.softplus(-D(fake)).mean().backward()
        loss_d = (F.softplus(D(fake.detach())).mean()
                  + F.softplus(-D(augment(reals, aug_p, gen))).mean())
        loss_d.backward()

    one_step()  # first-touch allocations and kernel choices
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    for _ in range(max(1, steps)):
        one_step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return batch * max(1, steps) / max(time.perf_counter() - t0, 1e-9)


# ----------------------------------------------------------------------------------------
# Command line.


def add_cli(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "train-gan", help="train a StyleGAN2 from scratch or fine-tune a model on your "
                          "pictures (resumes from --out)",
        description="Train a StyleGAN2 from scratch, or fine-tune any model the zoo loads "
                    "(--base) on a folder or zip of pictures, with adaptive discriminator "
                    "augmentation. Several GPUs: accelerate launch --multi_gpu "
                    "--num_processes N -m engine train-gan ...",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    for f in dataclasses.fields(TrainConfig):
        if f.name == "extra":
            continue
        flag = "--" + f.name.replace("_", "-")
        help_text = f.metadata["help"]
        if isinstance(f.default, bool):
            p.add_argument(flag, action="store_true", default=f.default, help=help_text)
        else:
            choices = f.metadata.get("choices")
            p.add_argument(flag, type=type(f.default), default=f.default, help=help_text,
                           choices=choices, metavar=None if choices else f.name.upper())
    p.set_defaults(func=_cli_train)


def _cli_train(args: argparse.Namespace) -> None:
    names = {f.name for f in dataclasses.fields(TrainConfig)} - {"extra"}
    cfg = TrainConfig(**{k: v for k, v in vars(args).items() if k in names})
    path = train(cfg)
    print(f"exported {path}")
