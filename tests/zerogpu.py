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
        self.patching.patch()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.patching.unpatch()

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
