"""Real image -> W / W+ (and noise): optimisation projector and a learned latent encoder.

The optimisation follows the schedule described for the StyleGAN2 projector (Karras et al.
2020, appendix D): Adam on w starting from the mean w, learning rate ramped up over the
first 5% of steps and down with a cosine over the last 25%, Gaussian noise added to w whose
scale decays to zero over the first 75%, and the per-layer noise maps optimised too, kept
at zero mean / unit variance every step and pushed towards white noise by a penalty on
their autocorrelation at several scales.

The shared model is never mutated: optimised noise maps enter each forward as that call's
`noise=` argument (the model's `noise_const` buffers stay as they are), and gradients are
taken only with respect to the latent and the noise (`torch.autograd.grad`), so the model's
parameters never collect `.grad`.

The loss is pluggable: 'builtin' (multi-scale L1 + L2 + SSIM, plus discriminator features
when a D is given), a TorchScript VGG16 feature network file (NVlabs' vgg16.pt API) or any
callable `loss(synth, target) -> scalar` on NCHW images in [-1, 1]. The result says which.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from engine.base.errors import StudioError
from engine.base.files import atomic_write, atomic_write_text
from engine.base.images import to_uint8
from engine.base.seeding import build_seeded
from engine.gan import networks
from engine.tools.latents import model_device, save_w, w_stats
from engine.training.datasets import square_rgb
from engine.training.loop import (
    Checkpointer,
    LoopCancelled,
    MetricsCallback,
    StepLoop,
    step_generator,
)

# Schedule constants (the StyleGAN2 projector's published values).
INITIAL_LR = 0.1                  # Adam learning rate at the plateau
LR_RAMPUP = 0.05                  # fraction of steps to ramp the lr up from 0
LR_RAMPDOWN = 0.25                # fraction of steps of the final cosine ramp-down
W_NOISE_SCALE = 0.05              # initial std of the noise on w, relative to std of W
W_NOISE_RAMP = 0.75               # fraction of steps over which that noise decays to 0
NOISE_REG_WEIGHT = 1e5            # weight of the noise-map autocorrelation penalty
NOISE_REG_MIN_SIZE = 8            # stop the noise pyramid at this size
ADAM_BETAS = (0.9, 0.999)
CHECKPOINT_VERSION = 1
ENCODER_FILE = "latent_encoder.safetensors"
ENCODER_STATE = "latent_encoder_state.pt"

Progress = Callable[..., Any]     # progress(fraction, message)


class ProjectionCancelled(LoopCancelled):
    """The user stopped a projection; its checkpoint (when asked for) lets it resume."""


@dataclass
class ProjectionResult:
    w: np.ndarray                  # fitted latent, [1, num_ws, w_dim] float32
    image: np.ndarray              # reconstruction, uint8 HxWx3 (with the fitted noise)
    target: np.ndarray             # the prepared target, uint8 HxWx3 at model resolution
    psnr: float                    # PSNR (dB) of `image` against `target`
    psnr_const: float              # PSNR when rendered with the model's constant noise
    loss_history: list[float]      # image loss per step (without the noise penalty)
    frames: list[np.ndarray] = field(default_factory=list)  # reconstructions every k steps
    loss_name: str = "builtin"     # which loss was used, for the UI
    noise: dict[str, np.ndarray] | None = None  # fitted noise maps per layer (when optimised)
    steps: int = 0                 # steps run (including resumed ones)
    init: str = "w_avg"            # where the optimisation started
    image_const: np.ndarray | None = None  # reconstruction with constant noise
    resumed_from: int = 0          # step a checkpoint resumed at (0 = started afresh)


# ----------------------------------------------------------------------------------------
# Images.


def prepare_image(image: Any, resolution: int) -> np.ndarray:
    """Any PIL image / uint8 array / path -> uint8 [res, res, 3]: EXIF upright, RGB,
    centre-cropped to a square, resized with Lanczos."""
    from PIL import Image

    if isinstance(image, (str, os.PathLike)):
        try:
            image = Image.open(image)
            image.load()
        except (FileNotFoundError, OSError) as exc:
            raise StudioError(f"Cannot read the image {os.fspath(image)!r}; use a PNG or "
                              f"JPEG file.") from exc
    if isinstance(image, np.ndarray):
        arr = image
        if arr.dtype != np.uint8:
            if np.issubdtype(arr.dtype, np.floating) and arr.max() <= 1.0:
                arr = arr * 255.0
            arr = np.clip(arr, 0, 255).astype(np.uint8)
        if arr.ndim == 3 and arr.shape[2] == 1:
            arr = arr[:, :, 0]
        if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] not in (3, 4)):
            raise StudioError(f"The image array has shape {list(arr.shape)}; give an "
                              f"H x W x 3 picture.")
        image = Image.fromarray(arr)
    if not isinstance(image, Image.Image):
        raise StudioError("Give the image as a PIL image, a uint8 array or a file path.")
    return square_rgb(image, resolution)


def image_to_tensor(img: np.ndarray, device: torch.device | str = "cpu") -> torch.Tensor:
    """uint8 HxWx3 -> float [1, 3, H, W] in [-1, 1]."""
    t = torch.from_numpy(np.ascontiguousarray(img)).to(device).permute(2, 0, 1)[None]
    return t.to(torch.float32) / 127.5 - 1


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """Peak signal-to-noise ratio (dB) of two uint8 images."""
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else float(10 * np.log10(255.0 ** 2 / mse))


# ----------------------------------------------------------------------------------------
# Losses.


def _gaussian_window(size: int, sigma: float, device: torch.device) -> torch.Tensor:
    x = torch.arange(size, dtype=torch.float32, device=device) - (size - 1) / 2
    g = torch.exp(-x ** 2 / (2 * sigma ** 2))
    g = g / g.sum()
    return torch.outer(g, g)


def ssim(x: torch.Tensor, y: torch.Tensor, window: int = 11, sigma: float = 1.5,
         data_range: float = 2.0) -> torch.Tensor:
    """Mean structural similarity (Wang et al. 2004) of NCHW images; Gaussian window.

    Local means, variances and covariance come from a depthwise Gaussian filter over the
    valid region; the window shrinks (odd size) for images smaller than it.
    """
    size = min(window, x.shape[-1], x.shape[-2])
    size -= 1 - size % 2
    k = _gaussian_window(size, sigma * size / window, x.device)
    c = x.shape[1]
    k = k[None, None].repeat(c, 1, 1, 1).to(x.dtype)

    def blur(t: torch.Tensor) -> torch.Tensor:
        return F.conv2d(t, k, groups=c)

    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    mx, my = blur(x), blur(y)
    vx = blur(x * x) - mx * mx
    vy = blur(y * y) - my * my
    cov = blur(x * y) - mx * my
    s = ((2 * mx * my + c1) * (2 * cov + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
    return s.mean()


def discriminator_features(D: nn.Module, img: torch.Tensor) -> list[torch.Tensor]:
    """Outputs of the discriminator's resolution blocks (coarse-to-fine texture statistics)."""
    feats = []
    x = None
    for res in D.res_list:
        x = getattr(D, f"b{res}")(x, img)
        feats.append(x)
    return feats


class BuiltinLoss(nn.Module):
    """Multi-scale pixel L1 + L2 + (1 - SSIM), plus discriminator features when D is given.

    Needs no download. The pyramid (average pooling down to 8 px) makes coarse colour and
    layout errors count as much as fine detail; SSIM rewards matching local structure.
    """

    def __init__(self, D: nn.Module | None = None, l1: float = 1.0, l2: float = 1.0,
                 ssim_weight: float = 0.5, d_weight: float = 0.1, min_size: int = 8):
        super().__init__()
        self.D, self.l1, self.l2 = D, l1, l2
        self.ssim_weight, self.d_weight, self.min_size = ssim_weight, d_weight, min_size
        self._target_key: Any = None
        self._target_feats: list[torch.Tensor] | None = None

    @property
    def name(self) -> str:
        return "builtin (multi-scale L1+L2+SSIM" + (" + discriminator features)"
                                                     if self.D is not None else ")")

    def forward(self, synth: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        total = synth.new_zeros([])
        x, y = synth, target
        scales = 0
        while True:
            diff = x - y
            total = total + self.l1 * diff.abs().mean() + self.l2 * diff.square().mean()
            if x.shape[-1] >= 16 and self.ssim_weight > 0:
                total = total + self.ssim_weight * (1 - ssim(x, y))
            scales += 1
            if x.shape[-1] // 2 < self.min_size:
                break
            x, y = F.avg_pool2d(x, 2), F.avg_pool2d(y, 2)
        total = total / scales
        if self.D is not None and self.d_weight > 0:
            key = (target.data_ptr(), target.shape)
            if self._target_key != key:  # the target's features are fixed: compute once
                with torch.no_grad():
                    self._target_feats = discriminator_features(self.D, target)
                self._target_key = key
            feats = discriminator_features(self.D, synth)
            d = synth.new_zeros([])
            for f, g in zip(feats, self._target_feats):
                d = d + (f - g).square().mean() / (g.square().mean() + 1e-8)
            total = total + self.d_weight * d / len(feats)
        return total


class VGGFeatureLoss(nn.Module):
    """LPIPS-style distance through a TorchScript VGG16 feature network (NVlabs vgg16.pt).

    The network takes images in [0, 255] and returns normalised features when called with
    `return_lpips=True`; the distance is their summed squared difference. Images larger
    than 256 px are area-downsampled to 256 first, as the StyleGAN2 projector does.
    """

    name = "perceptual (VGG16 features)"

    def __init__(self, net: nn.Module | str | os.PathLike):
        super().__init__()
        if isinstance(net, (str, os.PathLike)):
            try:
                net = torch.jit.load(os.fspath(net), map_location="cpu").eval()
            except (RuntimeError, OSError, ValueError) as exc:
                raise StudioError(f"Cannot load the perceptual network {os.fspath(net)!r}; "
                                  f"it must be a TorchScript file.") from exc
        self.net = net
        self._target_key: Any = None
        self._target_feats: torch.Tensor | None = None

    def _features(self, img: torch.Tensor) -> torch.Tensor:
        x = (img + 1) * 127.5
        if x.shape[-1] > 256:
            x = F.interpolate(x, size=(256, 256), mode="area")
        return self.net(x, resize_images=False, return_lpips=True)

    def forward(self, synth: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        key = (target.data_ptr(), target.shape)
        if self._target_key != key:
            with torch.no_grad():
                self._target_feats = self._features(target)
            self._target_key = key
        return (self._features(synth) - self._target_feats).square().sum()


def make_loss(loss: Any, D: nn.Module | None, device: torch.device) -> tuple[Callable, str]:
    """Resolve the `loss` argument of `project` to (callable, name for the UI)."""
    if loss is None or loss == "builtin":
        fn = BuiltinLoss(D).to(device)
        return fn, fn.name
    if loss == "pixel":
        fn = BuiltinLoss(None, ssim_weight=0.0).to(device)
        return fn, "pixel (multi-scale L1+L2)"
    if isinstance(loss, (str, os.PathLike)):
        fn = VGGFeatureLoss(loss).to(device)
        return fn, fn.name
    if isinstance(loss, nn.Module):
        return loss.to(device), str(getattr(loss, "name", type(loss).__name__))
    if callable(loss):
        return loss, str(getattr(loss, "name", getattr(loss, "__name__", "custom")))
    raise StudioError(f"Unknown projection loss {loss!r}; use 'builtin', 'pixel', a "
                      f"TorchScript VGG16 file or a callable.")


def saturate_like(synth: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Where the target is clipped white (black) and the synthesis is brighter (darker),
    use the target value: those pixels already render identically in uint8.

    Generators overshoot [-1, 1] freely (untrained ones on a third of their pixels), and
    without this the loss spends its effort pulling such pixels back for no visible gain.
    """
    over = (target >= 1.0) & (synth > target)
    under = (target <= -1.0) & (synth < target)
    return torch.where(over | under, target.expand_as(synth), synth)


# ----------------------------------------------------------------------------------------
# Noise maps through taps.


def noise_layers(G: nn.Module) -> list[str]:
    """Synthesis layers that take a noise input, in forward order."""
    return networks.noise_layers(G)


def noise_regularisation(noise: dict[str, torch.Tensor]) -> torch.Tensor:
    """Squared autocorrelation of each noise map at one-pixel shifts, over a pyramid.

    White noise has none; penalising it stops the maps from smuggling image content.
    """
    total = None
    for buf in noise.values():
        x = buf
        while True:
            term = ((x * torch.roll(x, 1, dims=3)).mean() ** 2
                    + (x * torch.roll(x, 1, dims=2)).mean() ** 2)
            total = term if total is None else total + term
            if x.shape[-1] <= NOISE_REG_MIN_SIZE:
                break
            x = F.avg_pool2d(x, 2) * 2  # *2 keeps unit variance for white noise
    return total if total is not None else torch.zeros([])


def _normalise_noise_(noise: dict[str, torch.Tensor]) -> None:
    with torch.no_grad():
        for buf in noise.values():
            buf -= buf.mean()
            buf *= buf.square().mean().rsqrt()


# ----------------------------------------------------------------------------------------
# Schedule.


def learning_rate(t: float, initial: float = INITIAL_LR) -> float:
    """lr at progress t in [0, 1): linear ramp-up, cosine ramp-down over the last 25%."""
    down = min(1.0, (1.0 - t) / LR_RAMPDOWN)
    down = 0.5 - 0.5 * math.cos(down * math.pi)
    up = min(1.0, t / LR_RAMPUP)
    return initial * down * up


def w_noise_strength(t: float, w_std: float) -> float:
    """Std of the Gaussian added to w at progress t: quadratic decay to 0 at 75%."""
    return w_std * W_NOISE_SCALE * max(0.0, 1.0 - t / W_NOISE_RAMP) ** 2


# ----------------------------------------------------------------------------------------
# Projection.


def _run_key(target: np.ndarray, G: nn.Module, steps: int, w_plus: bool,
             optimize_noise: bool, loss_name: str, init: str, seed: int) -> str:
    h = hashlib.sha256(target.tobytes())
    h.update(json.dumps([G.num_ws, G.cfg.w_dim, G.resolution, steps, w_plus, optimize_noise,
                         loss_name, init, seed]).encode())
    return h.hexdigest()


def project(G: nn.Module, image: Any, steps: int = 500, w_plus: bool = True,
            optimize_noise: bool = True, loss: Any = "builtin", init: str = "w_avg",
            progress: Progress | None = None, cancel: Any = None,
            checkpoint_path: str | os.PathLike | None = None, D: nn.Module | None = None,
            encoder: Any = None, frame_every: int | None = None, seed: int = 0,
            checkpoint_every: int = 25, initial_lr: float = INITIAL_LR,
            on_metrics: MetricsCallback | None = None, show_bar: bool = False
            ) -> ProjectionResult:
    """Fit a latent (W or W+, and optionally the noise maps) so that G renders `image`.

    image: PIL image, uint8 array or path; any size and mode (centre-cropped and resized).
    init: 'w_avg' (mean w) or 'encoder' (a LatentEncoder or its file, given as `encoder`).
    loss: 'builtin' | 'pixel' | path of a TorchScript VGG16 | callable(synth, target).
    progress(fraction, message) and on_metrics(step, {"loss": image loss}) hear every step;
    `cancel` (callable/Event/bool) raises ProjectionCancelled after saving the checkpoint.
    With checkpoint_path the run saves its state every `checkpoint_every` steps (atomically)
    and resumes from it when the same projection is started again, e.g. after the process
    was killed. show_bar: a tqdm bar on stderr (the CLI).
    """
    _check_settings(steps, init)
    device = model_device(G)
    target_np = prepare_image(image, G.resolution)
    target = image_to_tensor(target_np, device)
    loss_fn, loss_name = make_loss(loss, D, device)
    num_ws = G.num_ws
    w_mean, w_sd = w_stats(G)
    w_std = float(np.sqrt(np.sum(w_sd.astype(np.float64) ** 2)))
    frame_every = frame_every or max(1, steps // 100)

    w_opt = _starting_latent(target, init, encoder, w_plus, num_ws, w_mean, device)
    noise = _fittable_noise(G, device) if optimize_noise else {}
    params = [w_opt] + list(noise.values())
    opt = torch.optim.Adam(params, lr=initial_lr, betas=ADAM_BETAS)

    def ws_of(w: torch.Tensor) -> torch.Tensor:
        return w if w.shape[1] == num_ws else w.expand(-1, num_ws, -1)

    def render(w: torch.Tensor) -> torch.Tensor:
        return G.synthesis(ws_of(w), noise_mode="const", noise=noise or None)

    # Resume, cancel, progress and checkpoints: engine/training/loop.py. A checkpoint of another
    # projection (another picture, model or setting) is ignored, not refused.
    key = _run_key(target_np, G, steps, w_plus, optimize_noise, loss_name, init, seed)
    frames: list[np.ndarray] = []
    loop = _projection_loop(
        steps, checkpoint_path, checkpoint_every, key,
        state=lambda: {"w": w_opt.detach().cpu(),
                       "noise": {k: v.detach().cpu() for k, v in noise.items()},
                       "opt": opt.state_dict(),
                       "frames": [torch.from_numpy(f) for f in frames]},
        cancel=cancel, progress=progress, on_metrics=on_metrics, show_bar=show_bar)
    saved = loop.resume(device)
    if saved is not None:
        _restore_(saved, w_opt, noise, opt, frames)

    for step in loop:
        t = step / steps
        synth = render(w_opt + _w_noise(w_opt, seed, step, device) * w_noise_strength(t, w_std))
        dist = loss_fn(saturate_like(synth, target), target)
        total = dist
        if optimize_noise:
            total = total + NOISE_REG_WEIGHT * noise_regularisation(noise)
        _descend_(opt, params, total, learning_rate(t, initial_lr))
        _normalise_noise_(noise)
        if (step + 1) % frame_every == 0 or step == steps - 1:
            with torch.no_grad():
                frames.append(to_uint8(render(w_opt))[0])
        loop.end_step({"loss": dist.detach()})

    with torch.no_grad():
        w_final = ws_of(w_opt.detach()).clone()
        image_out = to_uint8(render(w_opt))[0]
        image_const = to_uint8(G.synthesis(w_final, noise_mode="const"))[0]
    return ProjectionResult(
        w=w_final.cpu().numpy().astype(np.float32), image=image_out, target=target_np,
        psnr=psnr(image_out, target_np), psnr_const=psnr(image_const, target_np),
        loss_history=loop.history, frames=frames, loss_name=loss_name,
        noise={k: v.detach().cpu().numpy()[0, 0] for k, v in noise.items()} or None,
        steps=steps, init=init, image_const=image_const, resumed_from=loop.resumed_from)


def _check_settings(steps: int, init: str) -> None:
    if steps < 1:
        raise StudioError(f"Projection needs at least one step (got {steps}).")
    if init not in ("w_avg", "encoder"):
        raise StudioError(f"init must be 'w_avg' or 'encoder', not {init!r}.")


def _projection_loop(steps: int, checkpoint_path: str | os.PathLike | None,
                     checkpoint_every: int, key: str, state: Callable[[], dict], cancel: Any,
                     progress: Progress | None, on_metrics: MetricsCallback | None,
                     show_bar: bool) -> StepLoop:
    """The StepLoop of one projection; its checkpoint (if any) is tagged with the run's key
    so a checkpoint of another projection is ignored (strict=False), not refused."""
    return StepLoop(
        steps, checkpoint_every=checkpoint_every, history_key="loss",
        checkpointer=Checkpointer(checkpoint_path, {"key": key,
                                                    "version": CHECKPOINT_VERSION},
                                  strict=False) if checkpoint_path else None,
        state=state,
        cancel=cancel, cancelled=lambda loop: ProjectionCancelled(
            "The projection was cancelled"
            + (" (it resumes from its checkpoint)." if checkpoint_path else ".")),
        progress=progress, on_metrics=on_metrics, bar="projecting" if show_bar else None)


def _descend_(opt: torch.optim.Optimizer, params: list[torch.Tensor],
              total: torch.Tensor, lr: float) -> None:
    """One optimiser step of size lr on params from total's gradients."""
    for group in opt.param_groups:
        group["lr"] = lr
    # Gradients for the latent and noise only: the shared model never gets .grad.
    grads = torch.autograd.grad(total, params)
    for p, g in zip(params, grads):
        p.grad = g
    opt.step()


def _starting_latent(target: torch.Tensor, init: str, encoder: Any, w_plus: bool,
                     num_ws: int, w_mean: np.ndarray, device: torch.device) -> torch.Tensor:
    """The latent the fit starts from, [1, num_ws or 1, w_dim] fp32 with requires_grad:
    the encoder's guess for `target` (init 'encoder') or the mean w."""
    if init == "encoder":
        if encoder is None:
            raise StudioError("init='encoder' needs a trained latent encoder (train one "
                              "with `python -m engine train-latent-encoder`).")
        enc = load_latent_encoder(encoder) if isinstance(encoder, (str, os.PathLike)) \
            else encoder
        enc = enc.to(device).eval()
        with torch.no_grad():
            start = enc(target, torch.from_numpy(w_mean).to(device))
        if not w_plus:
            start = start.mean(dim=1, keepdim=True)
    else:
        start = torch.from_numpy(w_mean).to(device)[None, None]
        start = start.repeat(1, num_ws if w_plus else 1, 1)
    return start.detach().clone().to(torch.float32).requires_grad_(True)


def _fittable_noise(G: nn.Module, device: torch.device) -> dict[str, torch.Tensor]:
    """{layer: [1, 1, res, res] noise map with requires_grad} for every noise layer of G."""
    noise: dict[str, torch.Tensor] = {}
    # Start from the model's constant noise, so step 0 renders what 'const' mode shows.
    for name in noise_layers(G):
        block, part = name.split(".")
        const = getattr(getattr(G.synthesis, block), part).noise_const
        noise[name] = const.detach().clone().to(device)[None, None].requires_grad_(True)
    _normalise_noise_(noise)
    return noise


def _restore_(saved: dict, w_opt: torch.Tensor, noise: dict[str, torch.Tensor],
              opt: torch.optim.Optimizer, frames: list[np.ndarray]) -> None:
    """Put a checkpoint's latent, noise, optimiser state and frames back in place."""
    with torch.no_grad():
        w_opt.copy_(saved["w"])
        for name, buf in noise.items():
            buf.copy_(saved["noise"][name])
    opt.load_state_dict(saved["opt"])
    frames.extend(f.cpu().numpy() for f in saved["frames"])  # loaded to device


def _w_noise(w_opt: torch.Tensor, seed: int, step: int, device: torch.device) -> torch.Tensor:
    """Unit Gaussian noise shaped like w_opt for this step.

    Drawn on the CPU from a per-step seed, so a resumed run follows the same path.
    """
    gen = torch.Generator().manual_seed(seed * 1_000_003 + step)
    return torch.randn(w_opt.shape, generator=gen).to(device)


def save_projection(result: ProjectionResult, out_dir: str | os.PathLike, fps: float = 20,
                    video: bool = True) -> dict[str, Path]:
    """Write w.npy, reconstruction.png, target.png, (noise.npz), projection.mp4
    (target | reconstruction side by side) and result.json into out_dir."""
    from PIL import Image
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"w": save_w(out / "w.npy", result.w)}
    paths["reconstruction"] = out / "reconstruction.png"
    Image.fromarray(result.image).save(paths["reconstruction"])
    paths["target"] = out / "target.png"
    Image.fromarray(result.target).save(paths["target"])
    if result.noise:
        paths["noise"] = out / "noise.npz"
        np.savez(paths["noise"], **{k.replace(".", "_"): v for k, v in result.noise.items()})
    if video and result.frames:
        from engine.base.video import write_video
        pairs = (np.concatenate([result.target, f], axis=1) for f in result.frames)
        paths["video"] = write_video(pairs, out / "projection.mp4", fps=fps)
    paths["json"] = out / "result.json"
    paths["json"].write_text(json.dumps({
        "psnr": result.psnr, "psnr_const": result.psnr_const, "steps": result.steps,
        "loss": result.loss_name, "init": result.init,
        "final_loss": result.loss_history[-1] if result.loss_history else None}, indent=2))
    return paths


# ----------------------------------------------------------------------------------------
# Latent encoder: image -> W+ offsets from the mean w.


MAX_LATENT_ENCODER_PARAMETERS = 64_000_000  # the studio's are about 2 M


@dataclass
class LatentEncoderConfig:
    resolution: int = 64            # input image size (images are resized to it)
    num_ws: int = 10                # W+ rows to predict
    w_dim: int = 128                # latent size
    channels: int = 32              # width of the first conv; doubles per level
    max_channels: int = 256         # width cap
    model_sha256: str | None = None  # the generator it was trained for

    def parameter_count(self) -> int:
        """LatentEncoder's parameters from the config alone (the same walk as its
        constructor), so a forged sidecar is refused before anything is built."""
        n, ch_in, ch, res = 0, 3, self.channels, self.resolution
        while res > 4:
            n += (9 * ch_in + 1) * ch + (9 * ch + 1) * ch
            ch_in, ch, res = ch, min(ch * 2, self.max_channels), res // 2
        return n + (ch_in * res * res + 1) * 512 + (512 + 1) * self.num_ws * self.w_dim


class LatentEncoder(nn.Module):
    """A small conv net: image [N,3,R,R] in [-1,1] -> W+ [N, num_ws, w_dim] = w_avg + offset.

    Stride-2 convolutions down to 4x4, then a linear head. The head starts at zero, so an
    untrained encoder predicts exactly w_avg: training can only improve the starting point.
    """

    def __init__(self, cfg: LatentEncoderConfig):
        super().__init__()
        self.cfg = cfg
        layers: list[nn.Module] = []
        ch_in, ch, res = 3, cfg.channels, cfg.resolution
        while res > 4:
            layers += [nn.Conv2d(ch_in, ch, 3, stride=2, padding=1), nn.LeakyReLU(0.2),
                       nn.Conv2d(ch, ch, 3, padding=1), nn.LeakyReLU(0.2)]
            ch_in, ch, res = ch, min(ch * 2, cfg.max_channels), res // 2
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(ch_in * res * res, 512),
                                  nn.LeakyReLU(0.2), nn.Linear(512, cfg.num_ws * cfg.w_dim))
        self.reset_private_()

    def reset_private_(self, generator: torch.Generator | None = None) -> None:
        """The head starts at zero (also after engine.base.seeding.build_seeded)."""
        nn.init.zeros_(self.head[-1].weight)
        nn.init.zeros_(self.head[-1].bias)

    def forward(self, img: torch.Tensor, w_avg: torch.Tensor) -> torch.Tensor:
        img = img.clamp(-1, 1)  # what a saved picture holds; generators overshoot
        if img.shape[-1] != self.cfg.resolution:
            img = F.interpolate(img, size=(self.cfg.resolution,) * 2, mode="area"
                                if img.shape[-1] > self.cfg.resolution else "bilinear")
        offset = self.head(self.features(img)).reshape(-1, self.cfg.num_ws, self.cfg.w_dim)
        return w_avg.reshape(1, 1, -1) + offset


def save_latent_encoder(enc: LatentEncoder, path: str | os.PathLike) -> Path:
    """safetensors weights + JSON sidecar (config), both written atomically."""
    from dataclasses import asdict

    from safetensors.torch import save_file
    state = {k: v.detach().cpu().contiguous() for k, v in enc.state_dict().items()}
    path = atomic_write(path, lambda tmp: save_file(state, str(tmp)))
    atomic_write_text(path.with_suffix(".json"),
                      json.dumps({"kind": "latent_encoder", "config": asdict(enc.cfg)}, indent=2))
    return path


def load_latent_encoder(path: str | os.PathLike, G: nn.Module | None = None) -> LatentEncoder:
    """Load a latent encoder from its .safetensors file (JSON beside it); checks G's shapes."""
    from safetensors.torch import load_file
    path = Path(path)
    if path.is_dir():
        path = path / ENCODER_FILE
    side = path.with_suffix(".json")
    if not path.exists() or not side.exists():
        raise StudioError(f"Latent encoder {str(path)!r} (with its .json) was not found.")
    if side.stat().st_size > 1 << 20:
        raise StudioError(f"{side.name} is too large to be a latent encoder's sidecar.")
    try:
        meta = json.loads(side.read_text())
        cfg = LatentEncoderConfig(**meta["config"])
        count = cfg.parameter_count()
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise StudioError(f"{side.name} is not a latent encoder's sidecar.") from exc
    # float32 weights: a config describing more than the file holds is refused unbuilt.
    if count > MAX_LATENT_ENCODER_PARAMETERS or 4 * count > path.stat().st_size + 65536:
        raise StudioError(f"{side.name} describes {count / 1e6:.1f} M parameters, more than "
                          f"{path.name} holds or the limit of "
                          f"{MAX_LATENT_ENCODER_PARAMETERS / 1e6:.0f} M allows.")
    if G is not None and (cfg.num_ws, cfg.w_dim) != (G.num_ws, G.cfg.w_dim):
        raise StudioError(f"This latent encoder predicts [{cfg.num_ws}, {cfg.w_dim}] but the "
                          f"model needs [{G.num_ws}, {G.cfg.w_dim}]; train one for it.")
    enc = LatentEncoder(cfg)
    enc.load_state_dict(load_file(str(path)))
    return enc.eval()


def _training_pairs(G: nn.Module, n: int, gen: torch.Generator, device: torch.device,
                    mix_prob: float = 0.5) -> tuple[torch.Tensor, torch.Tensor]:
    """(images, ws) that G renders itself; half are style-mixed so W+ is covered."""
    with torch.no_grad():
        z = torch.randn(n, G.cfg.z_dim, generator=gen).to(device)
        c = None
        if G.cfg.c_dim > 0:
            idx = torch.randint(0, G.cfg.c_dim, (n,), generator=gen)
            c = F.one_hot(idx, G.cfg.c_dim).float().to(device)
        ws = G.mapping(z, c)
        z2 = torch.randn(n, G.cfg.z_dim, generator=gen).to(device)
        ws2 = G.mapping(z2, c)
        cut = torch.randint(1, G.num_ws, (n,), generator=gen).to(device)
        mix = (torch.rand(n, generator=gen) < mix_prob).to(device)
        idx = torch.arange(G.num_ws, device=device)[None]
        take2 = (idx >= cut[:, None]) & mix[:, None]
        ws = torch.where(take2[..., None], ws2, ws)
        img = G.synthesis(ws, noise_mode="const")
    return img, ws


class LatentEncoderCancelled(LoopCancelled):
    """Latent encoder training stopped on request; its checkpoint resumes it."""


def train_latent_encoder(G: nn.Module, steps: int = 2000, batch: int = 16,
                         out_dir: str | os.PathLike = "latent_encoder",
                         progress: Progress | None = None, cancel: Any = None,
                         lr: float = 1e-3, image_weight: float = 1.0, seed: int = 0,
                         checkpoint_every: int = 100, model_sha256: str | None = None,
                         channels: int = 32, on_metrics: MetricsCallback | None = None,
                         show_bar: bool = False) -> Path:
    """Train a LatentEncoder on (image, W+) pairs G generates; returns the .safetensors path.

    Loss: MSE of the predicted W+ against the true one (relative to the spread of W) plus
    L1 between the image the prediction renders and the input. Runs through accelerate
    (one CPU / GPU, or `accelerate launch`); the state is saved atomically every
    `checkpoint_every` steps in out_dir and a second call with the same settings resumes
    from it (more steps may be asked for). Every step's pairs are drawn from (seed, step),
    so a resumed run equals an uninterrupted one.
    """
    from accelerate import Accelerator

    from engine.base import devices
    acc = Accelerator(cpu=devices.default_device().type != "cuda")  # STUDIO_DEVICE decides
    device = acc.device
    # A private frozen copy: the image loss backpropagates through G, and the shared model
    # must neither move device nor collect .grad.
    G = copy.deepcopy(G).requires_grad_(False).eval().to(device)
    out = Path(out_dir)
    cfg = LatentEncoderConfig(resolution=min(G.resolution, 128), num_ws=G.num_ws,
                              w_dim=G.cfg.w_dim, channels=channels, model_sha256=model_sha256)
    # Initial weights from a private generator: a training never reseeds the global ones.
    enc = build_seeded(lambda: LatentEncoder(cfg),
                       torch.Generator().manual_seed((1 << 48) + seed)).to(device)
    opt = torch.optim.Adam(enc.parameters(), lr=lr, betas=(0.9, 0.99))
    w_mean, w_sd = w_stats(G)
    w_avg = torch.from_numpy(w_mean).to(device)
    w_var = torch.from_numpy(w_sd ** 2).to(device).clamp_min(1e-8)

    # Resume, cancel, progress and checkpoints: engine/training/loop.py.
    settings = {"num_ws": cfg.num_ws, "w_dim": cfg.w_dim, "channels": channels,
                "batch": batch, "lr": lr, "image_weight": image_weight, "seed": seed,
                "model_sha256": model_sha256, "steps": steps}
    loop = StepLoop(
        steps, checkpoint_every=checkpoint_every, accelerator=acc,
        checkpointer=Checkpointer(out / ENCODER_STATE, settings, may_change=["steps"]),
        state=lambda: {"encoder": acc.unwrap_model(enc).state_dict(),
                       "opt": opt.state_dict()},
        cancel=cancel, cancelled=lambda loop: LatentEncoderCancelled(
            f"Latent encoder training stopped at step {loop.step} of {steps}; run it again "
            f"with the same settings to resume."),
        progress=progress, on_metrics=on_metrics,
        bar="training latent encoder" if show_bar else None)
    saved = loop.resume(device)
    if saved is not None:
        enc.load_state_dict(saved["encoder"])
        opt.load_state_dict(saved["opt"])
    enc, opt = acc.prepare(enc, opt)

    enc.train()
    for step in loop:
        img, ws = _training_pairs(G, batch, step_generator(seed, step, acc.process_index,
                                                           "cpu"), device)
        pred = enc(img, w_avg)
        loss = ((pred - ws).square() / w_var).mean()
        if image_weight > 0:
            recon = G.synthesis(pred, noise_mode="const")
            loss = loss + image_weight * (recon - img).abs().mean()
        opt.zero_grad(set_to_none=True)
        acc.backward(loss)
        opt.step()
        loop.end_step({"loss": loss.detach()})
    acc.wait_for_everyone()
    path = out / ENCODER_FILE
    if acc.is_main_process:
        save_latent_encoder(acc.unwrap_model(enc).eval(), path)
    return path


# ----------------------------------------------------------------------------------------
# Command line: `project` and `train-latent-encoder`.


def add_cli(subparsers: Any) -> None:
    p = subparsers.add_parser("project", help="fit W+ (and noise) to a photo; writes w.npy, "
                              "reconstruction.png, projection.mp4 and prints PSNR")
    p.add_argument("image", help="input image (any size; centre-cropped)")
    p.add_argument("--model", default="default", help="model spec for engine.models.zoo.load")
    p.add_argument("--steps", type=int, default=500, help="optimisation steps")
    p.add_argument("--w-only", action="store_true", help="fit one w (W) instead of W+")
    p.add_argument("--no-noise", action="store_true", help="keep the model's constant noise")
    p.add_argument("--loss", default="builtin",
                   help="'builtin', 'pixel' or a TorchScript VGG16 file (NVlabs vgg16.pt)")
    p.add_argument("--init", choices=("w_avg", "encoder"), default="w_avg")
    p.add_argument("--encoder", default=None, help="latent encoder .safetensors (init encoder)")
    p.add_argument("--seed", type=int, default=0, help="seed of the noise added to w")
    p.add_argument("--fps", type=float, default=20, help="fps of the optimisation video")
    p.add_argument("--no-resume", action="store_true",
                   help="ignore a checkpoint left in --out by an interrupted run")
    p.add_argument("--checkpoint-every", type=int, default=25,
                   help="save the state every this many steps (a killed run resumes there)")
    p.add_argument("--out", required=True, help="output folder")
    p.set_defaults(func=_cli_project)

    p = subparsers.add_parser("train-latent-encoder", help="train an image -> W+ encoder on "
                              "images the model generates (resumable)")
    p.add_argument("--model", default="default", help="model spec for engine.models.zoo.load")
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--image-weight", type=float, default=1.0,
                   help="weight of the pixel loss of the re-rendered prediction")
    p.add_argument("--out", required=True, help="output folder (state + safetensors)")
    p.set_defaults(func=_cli_train_encoder)


def _cli_project(args: Any) -> None:
    from engine.models import zoo
    model = zoo.load(args.model)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    ckpt = out / "projection_state.pt"
    if args.no_resume and ckpt.exists():
        ckpt.unlink()
    result = project(model.G, args.image, steps=args.steps, w_plus=not args.w_only,
                     optimize_noise=not args.no_noise, loss=args.loss, init=args.init,
                     encoder=args.encoder, checkpoint_path=ckpt, show_bar=True,
                     checkpoint_every=args.checkpoint_every, seed=args.seed)
    paths = save_projection(result, out, fps=args.fps)
    if result.resumed_from:
        print(f"resumed from the checkpoint at step {result.resumed_from}")
    print(f"PSNR {result.psnr:.2f} dB (with the model's constant noise "
          f"{result.psnr_const:.2f} dB); loss: {result.loss_name}")
    for name, path in paths.items():
        print(f"  {name}: {path}")


def _cli_train_encoder(args: Any) -> None:
    from engine.models import zoo
    model = zoo.load(args.model)
    path = train_latent_encoder(model.G, steps=args.steps, batch=args.batch,
                                out_dir=args.out, lr=args.lr, image_weight=args.image_weight,
                                model_sha256=model.sha256, show_bar=True)
    print(f"wrote {path}")
