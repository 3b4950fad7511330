"""ZeroGPU on a CPU: the `spaces` package's own emulation, for tests.

On a ZeroGPU Space, `spaces` patches torch in the main process so `.to("cuda")` gives
stand-in tensors (reported as cuda:0, computed on the CPU originals) and any op mixing them with
CPU tensors raises, as a real GPU would. A `@spaces.GPU` function runs in a forked worker with
real CUDA, and its result is pickled back to the main process, which has no CUDA.

`spaces.zero.torch.patching` is that main-process half, and it runs on a CPU-only torch once
two things a CPU build lacks exist while it is imported: a CUDA version string (it picks its
memory tables by it) and `torch._C._cuda_init`. `ZeroGPU` here enters it, and emulates a
GPU call as a worker thread that enters the same torch function mode (CUDA "works" there)
and hands back its result pickled; unpickling happens in a thread without the mode, like the
main process, so a CUDA tensor in a result fails as it would on a Space. Outside GPU calls,
threads other than the one that entered the emulation see what Gradio's worker threads see:
the stand-ins read as empty memory and `.to("cuda")` raises.
"""

from __future__ import annotations

import pickle
import threading
import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch.overrides import resolve_name
from torch.utils._pytree import tree_map_only


def _cuda_backend(*args: Any, **kwargs: Any) -> tuple[str, Any]:
    return "cuda", torch.cuda


def _no_cuda() -> None:
    raise AssertionError("Torch not compiled with CUDA enabled")


def _import_patching() -> Any:
    restore_version = torch.version.cuda
    added_init = not hasattr(torch._C, "_cuda_init")
    if restore_version is None:
        torch.version.cuda = "12.8"
    if added_init:
        torch._C._cuda_init = _no_cuda
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "cannot read the NVIDIA driver": no GPU here
            from spaces.zero.torch import patching
    finally:
        torch.version.cuda = restore_version
    return patching


def _strict_mode_class(patching: Any) -> type:
    """`spaces`' torch function mode, made as strict as a real GPU where it is lenient and
    as lenient where it is strict:

    - `.numpy()` of a CUDA tensor raises (the stand-in would read its CPU original);
    - `x.to(other)` moves x to other's device and dtype (the stand-in's own device is the
      CPU, so x stayed there);
    - a 0-dim CPU tensor mixed into CUDA work acts as a scalar, as CUDA allows (the
      emulation refused it)."""
    aliases = patching.cuda_aliases

    def stand_in(t: torch.Tensor) -> torch.Tensor:
        fake = patching.empty_fake(t)
        aliases[fake] = t
        return fake

    # What moves, copies or rebinds tensors: the 0-dim rule is about kernels' inputs only.
    moves_or_writes = {torch.Tensor.data.__set__, torch.Tensor.to, torch.Tensor.cuda,
                       torch.Tensor.cpu, torch.Tensor.copy_, torch.Tensor.set_,
                       torch.Tensor.__deepcopy__, torch.Tensor.__setitem__}

    class StrictMode(patching.ZeroGPUFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            kwargs = {} if kwargs is None else kwargs
            if func is torch.Tensor.numpy and args and args[0] in aliases:
                raise TypeError("can't convert cuda:0 device type tensor to numpy. Use "
                                "Tensor.cpu() to copy the tensor to host memory first.")
            if func is torch.Tensor.to and len(args) > 1 and isinstance(args[1], torch.Tensor):
                other = args[1]
                device = "cuda" if other in aliases else "cpu"
                args = (args[0], device, other.dtype, *args[2:])
            tensors = [a for a in _flat(args, kwargs) if isinstance(a, torch.Tensor)]
            if func not in moves_or_writes and any(t in aliases for t in tensors):
                inplace = str(resolve_name(func) or "").endswith("_")
                keep = args[0] if inplace and args else None  # the CPU tensor written to

                def scalar_to_cuda(t: torch.Tensor) -> torch.Tensor:
                    if t is keep or t in aliases or t.dim() != 0 or t.device.type != "cpu":
                        return t
                    return stand_in(t)
                args = tree_map_only(torch.Tensor, scalar_to_cuda, args)
                kwargs = tree_map_only(torch.Tensor, scalar_to_cuda, kwargs)
            return super().__torch_function__(func, types, args, kwargs)

    return StrictMode


def _flat(args: Any, kwargs: Any) -> list:
    from torch.utils._pytree import tree_leaves
    return tree_leaves((args, kwargs))


def in_thread(fn: Callable[[], Any], enter: Callable[[], None] | None = None) -> Any:
    """Run fn in a fresh thread (after `enter` there); return its result or raise its error."""
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            if enter is not None:
                enter()
            box["value"] = fn()
        except BaseException as exc:  # handed to the caller
            box["error"] = exc

    t = threading.Thread(target=run)
    t.start()
    t.join()
    if "error" in box:
        raise box["error"]
    return box.get("value")


class ZeroGPU:
    """Context manager: the emulation on, `gpu_call` the way a `@spaces.GPU` call runs."""

    def __init__(self) -> None:
        self.patching = _import_patching()
        self.calls = 0

    def __enter__(self) -> ZeroGPU:
        self._lenient_mode = self.patching.function_mode
        self.patching.function_mode = _strict_mode_class(self.patching)()
        # accelerate asks torch which accelerator the build has (none on a CPU build):
        # it must find the (stand-in) CUDA, as it would on a Space.
        import accelerate.state
        self._accelerator_backend = accelerate.state.get_torch_accelerator_backend
        accelerate.state.get_torch_accelerator_backend = _cuda_backend
        self.patching.patch()
        return self

    def __exit__(self, *exc: Any) -> None:
        import accelerate.state
        self.patching.unpatch()
        self.patching.function_mode = self._lenient_mode
        accelerate.state.get_torch_accelerator_backend = self._accelerator_backend

    def gpu_call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """fn(*args, **kwargs) as in a ZeroGPU worker: the arguments go there and the result
        comes back through pickle (studio.gpu.set_runner takes this)."""
        self.calls += 1
        sent = pickle.dumps((args, kwargs))

        def worker() -> bytes:
            a, k = pickle.loads(sent)
            return pickle.dumps(fn(*a, **k))
        data = in_thread(worker, enter=self.patching.enter_mode)
        return in_thread(lambda: pickle.loads(data))

    @staticmethod
    def is_stand_in(t: torch.Tensor) -> bool:
        return t.device.type == "cuda"
