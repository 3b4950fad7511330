"""A compact StyleGAN2 trainer on our generator: the one that made the embedded default model.

Non-saturating logistic loss, lazy R1 on reals, optional lazy path-length regularisation,
style mixing, an EMA generator, the NVlabs optimiser settings. One loop, read top to bottom.

Runs on one CPU, one GPU or many processes through `accelerate launch`. Gradients are
all-reduced by hand (as NVlabs does) rather than through DDP, so the G step can freeze D
and the R1 pass can differentiate through D without DDP bookkeeping.

Speed on a 2-core CPU (why it is much faster than a reference trainer): narrow high-res
layers (the FLOPs live there), the fakes made for the G step are reused (detached) for the
D step instead of rendering a second batch, non-fused modulation (one plain conv per layer
for the whole batch), demodulation computed from [N, I] styles without a [N, O, I, 3, 3]
tensor, and R1 only every 16 D steps. Every step draws its latents and real-image indices
from a generator seeded by (seed, step, rank), so a resumed run continues exactly.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from tqdm import tqdm

from engine.files import atomic_torch_save
from engine.stylegan2 import Discriminator, Generator, GeneratorConfig

CHECKPOINT_NAME = "checkpoint.pt"
SAMPLE_GRID_SEEDS = 64  # an 8x8 grid of fixed seeds, the same at every snapshot


@dataclass
class TrainConfig:
    data: str = "faces"              # 'faces' (procedural) or an image folder
    out: str = "runs/faces64"        # output folder: checkpoint, samples, log, exported model
    resolution: int = 64             # image size
    channel_base: int = 2048         # generator/discriminator width (channels = base // res)
    channel_max: int = 128           # ... capped at this
    z_dim: int = 128                 # latent sizes
    w_dim: int = 128
    mapping_layers: int = 4          # FC layers in the mapping network
    batch: int = 16                  # images per step over all processes
    total_kimg: float = 150.0        # training length in thousands of real images shown
    lr_g: float = 0.0025             # Adam learning rates (NVlabs)
    lr_d: float = 0.0025
    r1_gamma: float = 0.1            # R1 weight
    r1_interval: int = 16            # lazy R1: every this many D steps
    pl_weight: float = 0.0           # path-length regularisation weight (0 = off)
    pl_interval: int = 4
    style_mixing: float = 0.9        # probability of mixing two latents in a batch
    ema_kimg: float = 5.0            # EMA half-life in kimg
    ema_rampup: float = 0.05         # EMA half-life ramps up with the images seen
    xflip: bool = False              # random horizontal flips of the reals
    pool: int = 50000                # procedural images rendered once and sampled from
    seed: int = 0
    snapshot_kimg: float = 2.0       # checkpoint every this many kimg
    sample_kimg: float = 4.0         # sample grid every this many kimg
    max_minutes: float = 0.0         # stop (after a checkpoint) after this long; 0 = no limit
    extra: dict[str, Any] = field(default_factory=dict)

    def generator_config(self) -> GeneratorConfig:
        return GeneratorConfig(z_dim=self.z_dim, w_dim=self.w_dim, resolution=self.resolution,
                               channel_base=self.channel_base, channel_max=self.channel_max,
                               mapping_layers=self.mapping_layers)


# ----------------------------------------------------------------------------------------
# Helpers.


def step_generator(seed: int, step: int, rank: int, device: torch.device) -> torch.Generator:
    g = torch.Generator(device=device)
    g.manual_seed((seed * 1_000_003 + step) * 1009 + rank)
    return g


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


def sample_grid(G: Generator, seeds: list[int], device: torch.device) -> np.ndarray:
    """Fixed-seed grid (psi 1, const noise) as a uint8 HxWx3 image."""
    with torch.no_grad():
        z = torch.cat([G.seed_to_z(s) for s in seeds]).to(device)
        img = torch.cat([G(zb) for zb in z.split(16)])
    img = (img.clamp(-1, 1) + 1) * 127.5
    img = img.round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    cols = int(math.ceil(math.sqrt(len(seeds))))
    rows = int(math.ceil(len(seeds) / cols))
    h, w = img.shape[1:3]
    grid = np.zeros((rows * h, cols * w, 3), np.uint8)
    for i, im in enumerate(img):
        grid[(i // cols) * h:(i // cols + 1) * h, (i % cols) * w:(i % cols + 1) * w] = im
    return grid


# ----------------------------------------------------------------------------------------
# Training.


def train(cfg: TrainConfig, progress: Any = None) -> Path:
    """Train (or resume) into cfg.out; returns the path of the exported EMA generator."""
    from accelerate import Accelerator

    from engine.datasets import make_dataset

    acc = Accelerator()
    device, rank, world = acc.device, acc.process_index, acc.num_processes
    out = Path(cfg.out)
    if acc.is_main_process:
        (out / "samples").mkdir(parents=True, exist_ok=True)
    acc.wait_for_everyone()
    torch.manual_seed(cfg.seed)  # same initial weights on every process

    gcfg = cfg.generator_config()
    G = Generator(gcfg).to(device)
    D = Discriminator(gcfg).to(device)
    G_ema = copy.deepcopy(G).eval().requires_grad_(False)
    # Lazy regularisation: scale lr and betas so the regulariser's effect is unchanged.
    d_ratio = cfg.r1_interval / (cfg.r1_interval + 1)
    g_ratio = cfg.pl_interval / (cfg.pl_interval + 1) if cfg.pl_weight > 0 else 1.0
    opt_G = torch.optim.Adam(G.parameters(), lr=cfg.lr_g * g_ratio,
                             betas=(0.0, 0.99 ** g_ratio), eps=1e-8)
    opt_D = torch.optim.Adam(D.parameters(), lr=cfg.lr_d * d_ratio,
                             betas=(0.0, 0.99 ** d_ratio), eps=1e-8)

    step, nimg, pl_mean = 0, 0, torch.zeros([], device=device)
    ckpt_path = out / CHECKPOINT_NAME
    if ckpt_path.exists():
        state = torch.load(ckpt_path, map_location=device, weights_only=True)
        G.load_state_dict(state["G"])
        D.load_state_dict(state["D"])
        G_ema.load_state_dict(state["G_ema"])
        opt_G.load_state_dict(state["opt_G"])
        opt_D.load_state_dict(state["opt_D"])
        step, nimg = int(state["step"]), int(state["nimg"])
        pl_mean = state["pl_mean"].to(device)
        if acc.is_main_process:
            print(f"resumed from {ckpt_path} at {nimg / 1000:.1f} kimg")

    data = make_dataset(cfg.data, cfg.resolution, count=cfg.pool, xflip=False)
    reals_u8 = torch.from_numpy(np.ascontiguousarray(data.images))  # [N, H, W, 3] uint8
    per_gpu = cfg.batch // world
    assert per_gpu * world == cfg.batch, "batch must divide by the number of processes"
    g_params, d_params = list(G.parameters()), list(D.parameters())
    grid_seeds = list(range(SAMPLE_GRID_SEEDS))

    total = int(cfg.total_kimg * 1000)
    bar = tqdm(total=total, initial=nimg, unit="img", unit_scale=True,
               disable=not acc.is_main_process, dynamic_ncols=True, mininterval=5)
    t_start, t_last, nimg_last = time.time(), time.time(), nimg
    next_snapshot = (nimg // int(cfg.snapshot_kimg * 1000) + 1) * int(cfg.snapshot_kimg * 1000)
    next_sample = (nimg // int(cfg.sample_kimg * 1000) + 1) * int(cfg.sample_kimg * 1000)
    log_file = out / "log.jsonl"
    stats: dict[str, float] = {}

    while nimg < total:
        gen = step_generator(cfg.seed, step, rank, device)
        idx = torch.randint(len(reals_u8), [per_gpu],
                            generator=step_generator(cfg.seed, step, rank, torch.device("cpu")))
        real = reals_u8[idx].to(device).permute(0, 3, 1, 2).to(torch.float32) / 127.5 - 1
        if cfg.xflip:
            flip = torch.rand([per_gpu], generator=gen, device=device) < 0.5
            real = torch.where(flip[:, None, None, None], real.flip(3), real)
        z = torch.randn([per_gpu, cfg.z_dim], generator=gen, device=device)

        # G step: make fakes, push D(fake) up. The fakes are reused by the D step.
        D.requires_grad_(False)
        ws = mixed_ws(G, z, cfg.style_mixing, gen)
        fake = G.synthesis(ws, noise_mode="random", noise_generator=gen)
        loss_g = F.softplus(-D(fake)).mean()
        opt_G.zero_grad(set_to_none=True)
        loss_g.backward()
        with torch.no_grad():  # track the mean w for truncation (NVlabs w_avg_beta 0.995)
            w_mean = acc.reduce(ws[:, 0].detach().mean(0), "mean")
            G.mapping.w_avg.copy_(w_mean.lerp(G.mapping.w_avg, 0.995))

        # Path-length regularisation (optional, lazy).
        if cfg.pl_weight > 0 and step % cfg.pl_interval == 0:
            n_pl = max(per_gpu // 2, 1)
            ws_pl = mixed_ws(G, z[:n_pl], cfg.style_mixing, gen)
            img_pl = G.synthesis(ws_pl, noise_mode="random", noise_generator=gen)
            noise = torch.randn(img_pl.shape, generator=gen, device=device)
            noise = noise / math.sqrt(img_pl.shape[2] * img_pl.shape[3])
            (pl_grad,) = torch.autograd.grad((img_pl * noise).sum(), ws_pl, create_graph=True)
            lengths = pl_grad.square().sum(2).mean(1).sqrt()
            pl_mean = pl_mean.lerp(acc.reduce(lengths.mean().detach(), "mean"), 0.01)
            loss_pl = (lengths - pl_mean).square().mean() * cfg.pl_weight * cfg.pl_interval
            loss_pl.backward()
            stats["pl"] = float(loss_pl.detach())
        all_reduce_grads(g_params, world)
        opt_G.step()

        # D step: push D(fake) down and D(real) up; lazy R1 on reals.
        D.requires_grad_(True)
        do_r1 = cfg.r1_gamma > 0 and step % cfg.r1_interval == 0
        real_in = real.detach().requires_grad_(do_r1)
        logits_fake = D(fake.detach())
        logits_real = D(real_in)
        loss_d = F.softplus(logits_fake).mean() + F.softplus(-logits_real).mean()
        if do_r1:
            (r1_grad,) = torch.autograd.grad(logits_real.sum(), real_in, create_graph=True)
            r1 = r1_grad.square().sum([1, 2, 3]).mean()
            loss_d = loss_d + r1 * (cfg.r1_gamma / 2) * cfg.r1_interval
            stats["r1"] = float(r1.detach())
        opt_D.zero_grad(set_to_none=True)
        loss_d.backward()
        all_reduce_grads(d_params, world)
        opt_D.step()

        # EMA of G (weights and buffers).
        nimg += cfg.batch
        step += 1
        ema_nimg = cfg.ema_kimg * 1000
        if cfg.ema_rampup > 0:
            ema_nimg = min(ema_nimg, nimg * cfg.ema_rampup)
        beta = 0.5 ** (cfg.batch / max(ema_nimg, 1e-8))
        with torch.no_grad():
            for p_ema, p in zip(G_ema.parameters(), G.parameters()):
                p_ema.copy_(p.lerp(p_ema, beta))
            for b_ema, b in zip(G_ema.buffers(), G.buffers()):
                b_ema.copy_(b)

        stats.update(loss_g=float(loss_g.detach()), loss_d=float(loss_d.detach()),
                     d_real=float(logits_real.detach().mean()),
                     d_fake=float(logits_fake.detach().mean()))
        if acc.is_main_process:
            now = time.time()
            if now - t_last > 10:
                speed = (nimg - nimg_last) / (now - t_last)
                t_last, nimg_last = now, nimg
                stats["img_per_s"] = speed
                bar.set_postfix({k: f"{v:.3g}" for k, v in stats.items()})
                with open(log_file, "a") as fh:
                    fh.write(json.dumps({"kimg": nimg / 1000, "time_s": now - t_start,
                                         **stats}) + "\n")
            bar.update(nimg - bar.n)
            if progress is not None:
                progress(nimg / total, f"{nimg / 1000:.1f} kimg")
            if nimg >= next_sample or nimg >= total:
                next_sample += int(cfg.sample_kimg * 1000)
                grid = sample_grid(G_ema, grid_seeds, device)
                Image.fromarray(grid).save(out / "samples" / f"fakes{nimg // 1000:06d}.png")
        timed_out = cfg.max_minutes > 0 and time.time() - t_start > cfg.max_minutes * 60
        if nimg >= next_snapshot or nimg >= total or timed_out:
            next_snapshot += int(cfg.snapshot_kimg * 1000)
            if acc.is_main_process:
                atomic_torch_save({"G": G.state_dict(), "D": D.state_dict(),
                                   "G_ema": G_ema.state_dict(), "opt_G": opt_G.state_dict(),
                                   "opt_D": opt_D.state_dict(), "step": step, "nimg": nimg,
                                   "pl_mean": pl_mean, "config": asdict(cfg)}, ckpt_path)
            acc.wait_for_everyone()
        if timed_out:
            break
    bar.close()

    model_path = out / "generator.safetensors"
    if acc.is_main_process:
        from engine.checkpoints import save_generator
        save_generator(G_ema.cpu(), model_path,
                       source=f"engine.train_gan: {cfg.data} {nimg / 1000:.1f} kimg")
    acc.wait_for_everyone()
    return model_path


def add_cli(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("train-gan", help="train a small StyleGAN2 (resumes from --out)")
    defaults = TrainConfig()
    for name, value in asdict(defaults).items():
        if name == "extra":
            continue
        flag = "--" + name.replace("_", "-")
        if isinstance(value, bool):
            p.add_argument(flag, action="store_true", default=value)
        else:
            p.add_argument(flag, type=type(value), default=value)
    p.set_defaults(func=_cli_train)


def _cli_train(args: argparse.Namespace) -> None:
    names = set(TrainConfig.__dataclass_fields__) - {"extra"}
    cfg = TrainConfig(**{k: v for k, v in vars(args).items() if k in names})
    path = train(cfg)
    print(f"exported {path}")
