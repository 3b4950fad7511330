"""Which device the engine computes on, how exact fp32 is there, and CPU-side randomness.

Device. `STUDIO_DEVICE` (`cpu`, `cuda`, `cuda:1`, ...; unset or `auto`: CUDA when present)
names the device models load to and work runs on. Names are canonical (`cuda` means
`cuda:0`), so one model is never cached twice under two spellings. On ZeroGPU
(`SPACES_ZERO_GPU`) CUDA exists only inside `@spaces.GPU` calls: models are *stored* on the
CPU (`storage_device`) and moved to the GPU inside those calls.

Precision: a recipe must fully determine its output, so on CUDA the engine computes fp32 convs
and matmuls as IEEE fp32 (TF32 off; torch 2.13 turns TF32 convolutions on by default, which
moves ~6 % of pixels by one level). Then a GPU render matches the CPU render of the same
recipe to within one level per pixel (different summation orders round differently), and
equals itself on the same device. `STUDIO_TF32=1` trades that for TF32's speed.
"Equals itself" also needs one convolution algorithm per shape in every process: cuDNN's
autotuner (`cudnn.benchmark`) times candidates on a shape's first call and keeps the fastest
for that process, and its pick can change with the timing noise (PyTorch's reproducibility
notes: set benchmark off and `cudnn.deterministic` on for repeatable results). A ZeroGPU
worker is a new process every so often, so the policy turns the autotuner off and asks for
deterministic algorithms; `STUDIO_CUDNN_BENCHMARK=1` trades that for the tuned speed
(benchmarks). Not measured on a GPU here (none was lent): settled from the documentation.

Randomness: random draws that a recipe names by seed (noise bends, weight noise, jitter,
noise_mode "random") come from a seeded CPU generator, never the device's own (CUDA's Philox
stream differs from the CPU's), so a recipe renders the same on every device. `seeded`
keeps each draw on its device, so a re-render does not draw and upload it again.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import torch

from engine.base.errors import StudioError

ENV_DEVICE = "STUDIO_DEVICE"
ENV_TF32 = "STUDIO_TF32"
ENV_CUDNN_BENCHMARK = "STUDIO_CUDNN_BENCHMARK"
ENV_ZERO_GPU = "SPACES_ZERO_GPU"
SEEDED_CACHE_BYTES = 256 * 2 ** 20  # seeded draws kept on their devices, all together


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in {"1", "true", "yes", "on"}


def on_zerogpu() -> bool:
    """A ZeroGPU Space: CUDA only inside @spaces.GPU calls."""
    return _truthy(os.environ.get(ENV_ZERO_GPU))


def canonical(device: str | torch.device) -> torch.device:
    """torch.device with an index for CUDA ('cuda' -> 'cuda:0' or the current device)."""
    try:
        d = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise StudioError(f"{device!r} is not a device name; use cpu, cuda or cuda:N") from exc
    if d.type == "cuda" and d.index is None:
        index = torch.cuda.current_device() if torch.cuda.is_initialized() else 0
        d = torch.device("cuda", index)
    return d


def default_device() -> torch.device:
    """STUDIO_DEVICE, else CUDA when available, else the CPU."""
    name = (os.environ.get(ENV_DEVICE) or "auto").strip().lower()
    if name == "auto":
        return canonical("cuda" if torch.cuda.is_available() else "cpu")
    d = canonical(name)
    if d.type == "cuda" and not torch.cuda.is_available():
        raise StudioError(f"{ENV_DEVICE}={name} but this machine has no CUDA device; set it "
                          f"to cpu or leave it unset.")
    return d


def storage_device() -> torch.device:
    """Where loaded models live between calls: the CPU on ZeroGPU, else default_device()."""
    return torch.device("cpu") if on_zerogpu() else default_device()


def module_device(module: torch.nn.Module) -> torch.device:
    p = next(module.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def mark_copy(copy: torch.nn.Module, original: torch.nn.Module) -> None:
    """Record that `copy` holds the same weights as `original` on another device, so caches
    of values that do not depend on the device (directions, statistics) are shared."""
    import weakref

    copy.__dict__["_device_copy_of"] = weakref.ref(original)


def origin_of(module: torch.nn.Module) -> torch.nn.Module:
    """The module a device copy was made from (itself when it is no copy, or that is gone)."""
    ref = module.__dict__.get("_device_copy_of")
    original = ref() if ref is not None else None
    return original if original is not None else module


# ----------------------------------------------------------------------------------------
# Precision.


def tf32_allowed() -> bool:
    return _truthy(os.environ.get(ENV_TF32))


def cudnn_autotune_allowed() -> bool:
    return _truthy(os.environ.get(ENV_CUDNN_BENCHMARK))


def apply_cudnn_policy() -> bool:
    """cuDNN's algorithm choice: fixed and deterministic (a render equals itself in every
    process), or autotuned with STUDIO_CUDNN_BENCHMARK=1; returns whether it autotunes."""
    tune = cudnn_autotune_allowed()
    torch.backends.cudnn.benchmark = tune
    torch.backends.cudnn.deterministic = not tune
    return tune


def apply_precision_policy() -> str:
    """Set CUDA fp32 convs and matmuls to IEEE fp32 ('ieee'), or TF32 with STUDIO_TF32=1;
    returns the mode set. Process-wide (torch's flags are global); cheap to call again."""
    apply_cudnn_policy()
    mode = "tf32" if tf32_allowed() else "ieee"
    backends = torch.backends
    if hasattr(backends.cudnn, "conv") and hasattr(backends.cudnn.conv, "fp32_precision"):
        # torch >= 2.9: the per-backend API (mixing it with allow_tf32 is refused).
        backends.cudnn.conv.fp32_precision = mode
        backends.cuda.matmul.fp32_precision = mode
    else:  # pragma: no cover - older torch
        backends.cudnn.allow_tf32 = mode == "tf32"
        backends.cuda.matmul.allow_tf32 = mode == "tf32"
    return mode


def precision_mode() -> tuple[str, str]:
    """(conv, matmul) fp32 precision as torch reports them now."""
    b = torch.backends
    return str(b.cudnn.conv.fp32_precision), str(b.cuda.matmul.fp32_precision)


# ----------------------------------------------------------------------------------------
# Seeded draws, made on the CPU and kept on their device.


_seeded: OrderedDict[tuple, torch.Tensor] = OrderedDict()
_seeded_lock = threading.Lock()


def _after_fork_in_child() -> None:
    global _seeded_lock
    _seeded_lock = threading.Lock()  # another thread may have held it at fork time


os.register_at_fork(after_in_child=_after_fork_in_child)


def seeded(kind: str, shape: tuple[int, ...], seed: int, device: torch.device | str,
           dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """torch.randn (kind 'normal') or torch.rand ('uniform') of `shape` from a CPU generator
    seeded by `seed`, on `device`: the same numbers on every device. Cached; do not modify."""
    draw: Callable[..., torch.Tensor] = {"normal": torch.randn, "uniform": torch.rand}[kind]
    key = (kind, tuple(int(s) for s in shape), int(seed), str(device), dtype)
    with _seeded_lock:
        hit = _seeded.get(key)
        if hit is not None:
            _seeded.move_to_end(key)
            return hit
    gen = torch.Generator().manual_seed(int(seed))
    value = draw(key[1], generator=gen).to(device=device, dtype=dtype)
    size = value.numel() * value.element_size()
    if size <= SEEDED_CACHE_BYTES // 4:
        with _seeded_lock:
            _seeded[key] = value
            total = sum(t.numel() * t.element_size() for t in _seeded.values())
            while total > SEEDED_CACHE_BYTES and len(_seeded) > 1:
                _, old = _seeded.popitem(last=False)
                total -= old.numel() * old.element_size()
    return value


def clear_seeded() -> None:
    with _seeded_lock:
        _seeded.clear()


# ----------------------------------------------------------------------------------------
# Results leaving a GPU call.


def to_host(obj: Any, _seen: dict[int, Any] | None = None) -> Any:
    """obj with every tensor and module moved to the CPU (modules in place), looking inside
    lists, tuples, dicts and dataclass / plain objects: what a ZeroGPU call may hand back
    (its result is pickled to a process without CUDA)."""
    import dataclasses

    seen = {} if _seen is None else _seen
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu() if obj.device.type != "cpu" else obj
    if isinstance(obj, torch.nn.Module):
        obj.zero_grad(set_to_none=True)  # a result's gradients are not wanted back
        return obj.cpu()
    if isinstance(obj, (str, bytes, int, float, bool, type(None))):
        return obj
    if id(obj) in seen:
        return seen[id(obj)]
    if isinstance(obj, list):
        out: Any = [to_host(v, seen) for v in obj]
    elif isinstance(obj, tuple):
        items = [to_host(v, seen) for v in obj]
        out = type(obj)(*items) if hasattr(obj, "_fields") else tuple(items)
    elif isinstance(obj, dict):
        out = type(obj)((k, to_host(v, seen)) for k, v in obj.items())
    elif dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        changes = {f.name: to_host(getattr(obj, f.name), seen)
                   for f in dataclasses.fields(obj) if f.init}
        out = dataclasses.replace(obj, **changes)
    elif hasattr(obj, "__dict__") and not isinstance(obj, type) and \
            type(obj).__module__.startswith("engine."):
        for name, value in vars(obj).items():
            setattr(obj, name, to_host(value, seen))
        out = obj
    else:
        out = obj
    seen[id(obj)] = out
    return out
