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

import os
import pickle
import signal
import threading
import uuid
import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
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
        comes back through pickle, in threads of this process (ForkedZeroGPU runs calls in
        spaces' forked workers; this is for checks of the emulation itself)."""
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


# ----------------------------------------------------------------------------------------
# The `spaces` package's own ZeroGPU path: its decorator, forked workers and queues.


class DeviceAPI:
    """ZeroGPU's device API (schedule, allow, release), answered here instead of over HTTP.

    Everything between it and the studio is the `spaces` package's own code: the decorator,
    `client.schedule` (which reads the visitor's X-IP-Token from the Gradio request in the
    caller's context), the forked workers with their argument and result queues, and their
    reuse. `reuse`: whether a schedule finds the GPU idle, so the last worker is reused (else
    every call forks a fresh one). Workers announce their pid through `allow`, into files
    (they are other processes), so `close` can end them."""

    def __init__(self, folder: Path, reuse: bool = True) -> None:
        self.folder, self.reuse = folder, reuse
        self.schedules: list[dict[str, Any]] = []   # one per GPU call booked
        self.failed_releases = 0
        folder.mkdir(parents=True, exist_ok=True)

    def schedule(self, cgroup_path: str, task_id: int = 0, token: str | None = None,
                 token_version: int = 1, duration_seconds: int | None = None,
                 enable_queue: bool = True, gpu_size: str | None = None) -> tuple:
        from spaces.zero.api import ScheduleMetadata, ScheduleResponse

        self.schedules.append({"task_id": task_id, "token": token,
                               "duration": duration_seconds})
        return ScheduleResponse(idle=self.reuse, nvidiaIndex=0, nvidiaUUID="emulated",
                                allowToken=uuid.uuid4().hex), ScheduleMetadata()

    def allow(self, allow_token: str, pid: int) -> Any:
        import httpx
        (self.folder / str(pid)).touch()
        return httpx.codes.OK

    def release(self, allow_token: str, fail: bool = False) -> Any:
        import httpx
        self.failed_releases += bool(fail)
        return httpx.codes.OK

    def worker_pids(self) -> list[int]:
        return sorted(int(p.name) for p in self.folder.iterdir() if p.name.isdigit())

    def close(self) -> None:
        for pid in self.worker_pids():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


class ForkedZeroGPU(ZeroGPU):
    """The emulation with `spaces`' real workers: a GPU call is `spaces.GPU`'s wrapper, which
    forks a worker process (or reuses the last one), pickles the arguments to it through its
    queue and the result back. Two things a CPU lacks are stood in for: the device API
    (DeviceAPI) and the worker's CUDA start (`spaces.zero.torch.init`: here the worker enters
    the strict stand-in CUDA instead, in every thread that runs a task, and its torch runs on
    one thread, since OpenMP's pool does not survive a fork). The studio's GPU functions run
    through studio.gpu's one entry point, as on a Space."""

    def __init__(self, folder: Path, reuse: bool = True) -> None:
        super().__init__()
        self.api = DeviceAPI(folder, reuse)
        self._saved: list[tuple[Any, str, Any]] = []

    @property
    def calls(self) -> int:  # type: ignore[override]
        return len(self.api.schedules)

    @calls.setter
    def calls(self, value: int) -> None:  # ZeroGPU.__init__ sets it
        pass

    def _set(self, obj: Any, name: str, value: Any) -> None:
        self._saved.append((obj, name, getattr(obj, name)))
        setattr(obj, name, value)

    def __enter__(self) -> ForkedZeroGPU:
        super().__enter__()
        import spaces.zero.torch as zero_torch
        from spaces.config import Config
        from spaces.zero import client, wrappers

        patching = self.patching

        def init_in_worker(nvidia_uuid: str) -> None:
            torch.set_num_threads(1)
            patching.patch()  # the stand-in CUDA (spaces' worker start had left it)

        def executor(*args: Any, **kwargs: Any) -> ThreadPoolExecutor:
            if wrappers.forked:  # a worker's task thread: CUDA "works" there
                kwargs.setdefault("initializer", patching.enter_mode)
            return ThreadPoolExecutor(*args, **kwargs)

        self._set(Config, "zero_gpu", True)
        self._set(client, "api_client", lambda: self.api)
        self._set(zero_torch, "init", init_in_worker)
        self._set(zero_torch, "size", lambda: 0)
        self._set(zero_torch, "move", lambda callback=None: None)
        self._set(wrappers, "ThreadPoolExecutor", executor)
        return self

    def __exit__(self, *exc: Any) -> None:
        from spaces.zero import decorator

        self.api.close()
        from studio import gpu
        decorator.decorated_cache.pop(gpu._run, None)  # the next one starts a fresh pool
        for obj, name, value in reversed(self._saved):
            setattr(obj, name, value)
        self._saved.clear()
        super().__exit__(*exc)

    def gpu_call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """fn(*args, **kwargs) in a GPU call through studio.gpu's entry point, in a freshly
        forked worker (one forked now has fn, which need not pickle; its arguments and result
        cross by pickle)."""
        from studio import gpu

        name = gpu.register(f"tests.zerogpu.{uuid.uuid4().hex}", fn, lambda *a, **k: 3600)
        reuse, self.api.reuse = self.api.reuse, False
        try:
            return in_thread(lambda: gpu.book(name, args, kwargs))
        finally:
            self.api.reuse = reuse
            del gpu._JOBS[name], gpu._SECONDS[name]
