"""Read every StyleGAN2 checkpoint format, and NVlabs StyleGAN3 pickles, into NVlabs-named
tensors; write our own format.

Formats, detected by content (never by file name):

- NVlabs pickles (stylegan2-ada-pytorch, the stylegan3 repo's StyleGAN2 and StyleGAN3): a
  plain pickle of `{'G', 'D', 'G_ema', ...}` whose networks pickle through
  `torch_utils.persistence`. A StyleGAN3 generator's config comes from its init kwargs and
  is checked against every layer's stored name and sampling attributes.
- TensorFlow StyleGAN2 pickles: a tuple `(G, D, Gs)` of `dnnlib.tflib.network.Network`.
- rosinality `.pt` files: a `torch.save` zip (or legacy stream) with `g_ema`, `latent_avg`.
- Ours: a safetensors file plus a JSON sidecar (config, source, sha256). Every other format
  converts to it once (`save_generator`); later loads read it directly.

Pickles from strangers go through `RestrictedUnpickler`, whose allow-list holds only tensor,
storage, container and numpy rebuilders plus inert stand-ins for the NVlabs persistence hook
and the TF network class. The source code NVlabs embeds in each pickle (`module_src`) is
kept as an unread string and never run. Every failure reaches the caller as a
`CheckpointError` with one sentence.
"""

from __future__ import annotations

import _compat_pickle
import argparse
import collections
import contextlib
import contextvars
import hashlib
import io
import json
import math
import os
import pickle
import re
import struct
import zipfile
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch

from engine.base.errors import CheckpointError, StudioError, UnsafePickleError
from engine.base.files import (
    atomic_write_text,
    fsync_file,
    open_regular,
    regular_file_size,
    temp_path_beside,
)
from engine.gan import networks
from engine.gan.stylegan2 import Discriminator, GeneratorConfig, make_resample_filter
from engine.gan.stylegan3 import StyleGAN3Config, layer_specs

FORMAT_VERSION = 1
STUDIO_FORMAT = "activation-studio"
SIDECAR_SUFFIX = ".json"
ZIP_MAGIC = b"PK\x03\x04"
# A legacy (pre-zip) torch.save stream begins with a protocol-2 pickle of this magic number.
TORCH_LEGACY_MAGIC = b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19."
# A forged config could describe a network too large to build; StyleGAN2 at 1024 px has 30 M.
MAX_GENERATOR_PARAMETERS = 400_000_000
W_AVG_SAMPLES = 4096  # z samples to estimate w_avg when a checkpoint lacks it


@dataclass
class LoadedCheckpoint:
    """A generator (and optionally discriminator) as NVlabs-named tensors plus its config."""
    config: GeneratorConfig | StyleGAN3Config  # generator architecture
    state_dict: dict[str, torch.Tensor]     # NVlabs G_ema names, float32 CPU tensors
    source_format: str                      # 'nvlabs-pickle', 'tf-pickle', 'rosinality', ...
    d_state: dict[str, torch.Tensor] | None = None  # NVlabs D names, when asked for
    d_config: GeneratorConfig | None = None          # the discriminator's resolution/channels
    mbstd_group_size: int = 4                         # the discriminator's minibatch-std group
    notes: list[str] = field(default_factory=list)    # facts worth telling the user
    source: Any = None                                # provenance (our sidecar's `source`)


# ----------------------------------------------------------------------------------------
# What one read may cost: a checkpoint's data is in the file, so nothing it builds may
# outgrow the file. Every declaration (an array's shape, a storage's size, a tensor's view) is
# checked against that before memory is taken, so a 100-byte file cannot ask for gigabytes.

# Slack for tiny files: the few small objects a pickle builds beside its data.
BUDGET_SLACK_BYTES = 1 << 20


class _ReadBudget:
    """Byte counters for one checkpoint read; `file_bytes` is the size of what is read."""

    def __init__(self, file_bytes: int, name: str):
        self.file_bytes, self.name = int(file_bytes), name
        # Unpickling may hold the file's data twice (protocol-2 text, then its bytes) and
        # nothing more; tensors handed to the converters must fit in the file once.
        self.unpickle_limit = 2 * self.file_bytes + BUDGET_SLACK_BYTES
        self.unpickled = 0
        self.declared = 0

    def charge(self, nbytes: int) -> None:
        """Count `nbytes` the unpickler is about to allocate; refuse past the limit."""
        self.unpickled += int(nbytes)
        if self.unpickled > self.unpickle_limit:
            raise CheckpointError(
                f"{self.name} asks for more than {_mib(self.unpickle_limit)} of data while "
                f"being read but holds only {_mib(self.file_bytes)}, so it is forged or "
                f"corrupt and was not loaded.")

    def declare(self, tensors: Iterable[Any]) -> None:
        """Count the bytes tensors or arrays declare before any is converted or copied."""
        self.declared += sum(_declared_bytes(t) for t in tensors)
        if self.declared > self.file_bytes + BUDGET_SLACK_BYTES:
            raise CheckpointError(
                f"The tensors in {self.name} declare {_mib(self.declared)} of data but the "
                f"file holds only {_mib(self.file_bytes)}, so it is forged or corrupt and was "
                f"not loaded.")


def _mib(nbytes: int) -> str:
    return f"{nbytes / 2**20:.1f} MiB"


def _declared_bytes(value: Any) -> int:
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, np.ndarray):
        return int(value.size) * int(value.itemsize)
    return 0


_BUDGET: contextvars.ContextVar[_ReadBudget | None] = contextvars.ContextVar(
    "checkpoint_read_budget", default=None)


@contextlib.contextmanager
def _budget(file_bytes: int, name: str) -> Iterator[_ReadBudget]:
    budget = _ReadBudget(file_bytes, name)
    token = _BUDGET.set(budget)
    try:
        yield budget
    finally:
        _BUDGET.reset(token)


def _charge(nbytes: int) -> None:
    budget = _BUDGET.get()
    if budget is not None:
        budget.charge(nbytes)


def _declare(tensors: Iterable[Any]) -> None:
    budget = _BUDGET.get()
    if budget is not None:
        budget.declare(tensors)


# ----------------------------------------------------------------------------------------
# The restricted unpickler.


class PersistentStub:
    """Inert stand-in for an NVlabs persistent object: its class name and state, nothing run."""

    def __init__(self, class_name: str, state: dict[str, Any]):
        self.class_name = class_name
        self.state = state

    def __repr__(self) -> str:
        return f"PersistentStub({self.class_name!r})"


def _reconstruct_persistent_obj(meta: Any) -> PersistentStub:
    """Replaces `torch_utils.persistence._reconstruct_persistent_obj`; ignores `module_src`."""
    if not isinstance(meta, dict) or not isinstance(meta.get("state"), dict):
        raise CheckpointError("A network object in this pickle is malformed (its persistence "
                              "record has no state), so the file cannot be read.")
    if meta.get("type", "class") != "class":
        raise CheckpointError(f"This pickle holds a persistent object of type "
                              f"{meta.get('type')!r}, which the studio cannot read.")
    return PersistentStub(str(meta.get("class_name", "")), dict(meta["state"]))


class TFNetworkStub:
    """Stand-in for `dnnlib.tflib.network.Network`: a plain attribute bag filled by BUILD."""

    def __setstate__(self, state: Any) -> None:
        if not isinstance(state, dict):
            raise CheckpointError("A TensorFlow network in this pickle is malformed, so the "
                                  "file cannot be read.")
        self.__dict__.update(state)


def _numpy_core(name: str) -> Any:
    """A function from numpy's `_core.multiarray` (numpy 2) or `core.multiarray` (numpy 1)."""
    core = getattr(np, "_core", None) or np.core
    return getattr(core.multiarray, name)


class _NDArrayClass:
    """What the name `numpy.ndarray` resolves to: a marker `_reconstruct` accepts, not callable
    (a bare `ndarray(shape, object)` call could otherwise build object arrays)."""


_NDARRAY = _NDArrayClass()


def _refuse_object_dtype(dtype: Any) -> np.dtype:
    if not isinstance(dtype, np.dtype):
        raise UnsafePickleError("This pickle builds a numpy value from something that is not "
                                "a dtype, so it was not loaded.")
    if dtype.hasobject:
        raise UnsafePickleError("This pickle holds a numpy object array, which can carry "
                                "arbitrary objects, so it was not loaded.", "numpy.object_")
    return dtype


class _CheckedArray(np.ndarray):
    """ndarray whose unpickling refuses object dtypes; callers turn it into a plain ndarray."""

    def __setstate__(self, state: Any) -> None:
        if not isinstance(state, tuple) or len(state) not in (4, 5):
            raise CheckpointError("A numpy array in this pickle is malformed, so the file "
                                  "cannot be read.")
        dtype, raw = _refuse_object_dtype(state[-3]), state[-1]
        if not isinstance(raw, bytes | bytearray):
            raise UnsafePickleError("A numpy array in this pickle carries objects instead of "
                                    "raw data, so it was not loaded.")
        # The declared shape must be exactly the data that came with it (numpy checks too,
        # but only after the array exists).
        if _shape_elements(state[-4]) * dtype.itemsize != len(raw):
            raise CheckpointError("A numpy array in this pickle declares a size its data does "
                                  "not have, so the file cannot be read.")
        _charge(len(raw))
        super().__setstate__(state)


def _shape_elements(shape: Any) -> int:
    """The element count of a declared shape; malformed shapes are refused."""
    if not isinstance(shape, tuple | list) or not all(
            isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in shape):
        raise CheckpointError("A numpy array in this pickle has an invalid shape, so the file "
                              "cannot be read.")
    return math.prod(shape)


def _np_reconstruct(subtype: Any, shape: Any, typecode: Any) -> np.ndarray:
    """numpy pickles every array as `_reconstruct(ndarray, (0,), b'b')` and then sets its
    real shape and data from the state; any other call would allocate whatever shape it
    names before a byte of data is seen, so only that exact form is accepted."""
    if subtype is not _NDARRAY:
        raise UnsafePickleError("This pickle rebuilds a numpy array subclass, which is not "
                                "allowed in a checkpoint, so it was not loaded.")
    declared = tuple(shape) if isinstance(shape, tuple | list) else None
    if declared != (0,) or typecode not in (b"b", "b"):
        raise UnsafePickleError("This pickle builds a numpy array in a way numpy's own pickles "
                                "never do (a size declared before its data), so it was not "
                                "loaded.", "numpy.core.multiarray._reconstruct")
    return _numpy_core("_reconstruct")(_CheckedArray, (0,), b"b")


def _np_scalar(dtype: Any, data: Any = None) -> Any:
    _refuse_object_dtype(dtype)
    if not isinstance(data, bytes):
        raise UnsafePickleError("A numpy scalar in this pickle carries an object instead of "
                                "raw bytes, so it was not loaded.")
    _charge(len(data))
    return _numpy_core("scalar")(dtype, data)


def _np_dtype(obj: Any, align: bool = False, copy: bool = False) -> np.dtype:
    if not isinstance(obj, str):
        raise UnsafePickleError("This pickle builds a numpy dtype from something that is not "
                                "a type code, so it was not loaded.", "numpy.dtype")
    if obj.startswith("O"):
        raise UnsafePickleError("This pickle holds a numpy object array, which can carry "
                                "arbitrary objects, so it was not loaded.", "numpy.object_")
    return _refuse_object_dtype(np.dtype(obj, align, copy))


def _np_frombuffer(buf: Any, dtype: Any, shape: Any, order: Any) -> np.ndarray:
    """Protocol-5 numpy arrays: raw bytes reinterpreted, never objects."""
    dtype = _refuse_object_dtype(dtype)
    if not isinstance(buf, bytes | bytearray):
        raise UnsafePickleError("A numpy array in this pickle uses an out-of-band buffer, "
                                "which is not allowed, so it was not loaded.")
    if _shape_elements(shape) * dtype.itemsize != len(buf):
        raise CheckpointError("A numpy array in this pickle declares a size its data does "
                              "not have, so the file cannot be read.")
    _charge(len(buf))  # the copy below; the same buffer may be named many times
    return np.frombuffer(buf, dtype).reshape(shape, order=order).copy()


def _load_storage_from_bytes(data: Any) -> Any:
    """`torch.storage._load_from_bytes`: the one nested load, and it is weights_only."""
    if not isinstance(data, bytes | bytearray):
        raise UnsafePickleError("A tensor storage in this pickle is not raw bytes, so the file "
                                "was not loaded.")
    try:
        storage = torch.load(io.BytesIO(data), weights_only=True, map_location="cpu")
    except pickle.UnpicklingError as exc:
        refused = _refused_global(str(exc))
        raise UnsafePickleError(f"A tensor storage in this pickle hides a nested pickle that "
                                f"asks for {refused or 'a forbidden object'}, so the file was "
                                f"not loaded.", refused) from exc
    except Exception as exc:
        raise CheckpointError("A tensor storage in this pickle is truncated or corrupt, so the "
                              "file cannot be read.") from exc
    if not isinstance(storage, torch.TypedStorage | torch.UntypedStorage):
        raise UnsafePickleError("A tensor storage in this pickle holds something other than "
                                "tensor data, so the file was not loaded.")
    # torch reserves a declared storage lazily and the load above fails unless its bytes
    # were all there, so only data really present is counted (once per copy made).
    # (the private field: the public accessors warn that TypedStorage is old)
    _charge(storage._untyped_storage.nbytes() if isinstance(storage, torch.TypedStorage)
            else storage.nbytes())
    return storage


def _rebuild_tensor_v2(storage: Any, offset: Any, size: Any, stride: Any,
                       *args: Any) -> torch.Tensor:
    """A tensor view of a storage, refused unless the view lies inside the storage: torch
    itself does not check, and an out-of-bounds view would read foreign memory."""
    if not isinstance(storage, torch.TypedStorage):
        raise UnsafePickleError("A tensor in this pickle is built from something other than a "
                                "storage, so the file was not loaded.")
    dims = (offset, *size, *stride)
    if len(size) != len(stride) or not all(isinstance(v, int) and v >= 0 for v in dims):
        raise CheckpointError("A tensor in this pickle has an invalid shape, so the file cannot "
                              "be read.")
    count = storage._size()  # elements; the public size() warns that TypedStorage is old
    if all(size) and offset + sum((n - 1) * st for n, st in zip(size, stride)) >= count:
        raise UnsafePickleError("A tensor in this pickle reaches past the end of its data, so "
                                "the file was not loaded.")
    return torch._utils._rebuild_tensor_v2(storage, offset, tuple(size), tuple(stride), *args)


def _rebuild_parameter(data: Any, requires_grad: Any, backward_hooks: Any,
                       state: Any = None) -> torch.Tensor:
    """Parameters come back as plain tensors; hooks and extra attributes are dropped."""
    if not isinstance(data, torch.Tensor):
        raise UnsafePickleError("A parameter in this pickle wraps something other than a "
                                "tensor, so the file was not loaded.")
    return data


def _latin1_bytes(text: Any, encoding: Any = "latin1") -> bytes:
    """`_codecs.encode`: how protocol-2 pickles spell a bytes object; latin1 text only."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise UnsafePickleError("This pickle calls a text codec other than the latin1 one "
                                "pickle uses for bytes, so it was not loaded.", "_codecs.encode")
    _charge(len(text))  # a new bytes object each call, even for one stored string
    return text.encode("latin1")


# What one entry of a copied container costs, about (a dict entry with its hash slot is ~100
# bytes on CPython; sets a little less): containers are charged by their length because a
# call such as OrderedDict(d) copies `d`, and one stored `d` can be copied many times.
_CONTAINER_ENTRY_BYTES = 100


def _charge_container(arg: Any) -> None:
    try:
        _charge(_CONTAINER_ENTRY_BYTES * len(arg))
    except TypeError:  # no length (an iterator): the constructor below copies what it yields
        raise UnsafePickleError("This pickle builds a container from something other than a "
                                "list or mapping, so it was not loaded.") from None


class _CheckedDict(dict):
    """`dnnlib.util.EasyDict` (and any dict built by a call): copying its argument is
    charged to the read's budget. Pickled EasyDicts arrive empty and are filled by SETITEMS."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        if args:
            _charge_container(args[0])
        _charge(_CONTAINER_ENTRY_BYTES * len(kwargs))
        super().__init__(*args, **kwargs)


class _CheckedOrderedDict(collections.OrderedDict):
    """`collections.OrderedDict`, with copies of its argument charged (see _CheckedDict)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        if args:
            _charge_container(args[0])
        _charge(_CONTAINER_ENTRY_BYTES * len(kwargs))
        super().__init__(*args, **kwargs)


def _checked_set(items: Any = ()) -> set:
    _charge_container(items)
    return set(items)


def _checked_frozenset(items: Any = ()) -> frozenset:
    _charge_container(items)
    return frozenset(items)


def _refused_global(message: str) -> str | None:
    """The global a torch weights_only refusal names, e.g. 'posix.system'."""
    match = re.search(r"GLOBAL ([\w.]+)", message)
    return match.group(1) if match else None


# (module, name) -> what it resolves to. Old spellings map the same way.
_ALLOWED: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): _CheckedOrderedDict,
    # Python 3.7 pickles torch modules with protocol 3, where `_non_persistent_buffers_set`
    # (a set) is written as a call to builtins.set.
    ("builtins", "set"): _checked_set,
    ("builtins", "frozenset"): _checked_frozenset,
    ("_codecs", "encode"): _latin1_bytes,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("torch.storage", "_load_from_bytes"): _load_storage_from_bytes,
    ("torch_utils.persistence", "_reconstruct_persistent_obj"): _reconstruct_persistent_obj,
    ("dnnlib.util", "EasyDict"): _CheckedDict,
    ("dnnlib.tflib.network", "Network"): TFNetworkStub,
    ("numpy", "dtype"): _np_dtype,
    ("numpy", "ndarray"): _NDARRAY,
}
for _core in ("numpy.core", "numpy._core"):
    _ALLOWED[(f"{_core}.multiarray", "scalar")] = _np_scalar
    _ALLOWED[(f"{_core}.multiarray", "_reconstruct")] = _np_reconstruct
    _ALLOWED[(f"{_core}.numeric", "_frombuffer")] = _np_frombuffer


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that resolves only the globals in `_ALLOWED`; anything else is refused."""

    def find_class(self, module: str, name: str) -> Any:
        # Protocol-2 pickles spell some names the Python 2 way (__builtin__.set); map them
        # back as the stock Unpickler does, so the allow-list and messages see Python 3 names.
        module, name = _compat_pickle.NAME_MAPPING.get((module, name), (module, name))
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise UnsafePickleError(
                f"This pickle asks for {module}.{name}, which is not allowed in a checkpoint "
                f"(it could run code), so nothing in it was loaded.", f"{module}.{name}"
            ) from None

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafePickleError("This pickle refers to external objects (persistent ids), "
                                "which a network pickle never does, so it was not loaded.")


def restricted_load(f: Any) -> Any:
    """Unpickle a file object with the allow-list; numpy arrays come back as plain ndarrays.

    What the pickle builds is bounded by the bytes left in `f` (or by the budget of the
    checkpoint read this is part of)."""
    if _BUDGET.get() is not None:
        return RestrictedUnpickler(f).load()
    start = f.tell()
    size = f.seek(0, io.SEEK_END) - start
    f.seek(start)
    with _budget(size, "This pickle"):
        return RestrictedUnpickler(f).load()


# ----------------------------------------------------------------------------------------
# Format detection and helpers.


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open_regular(path, "checkpoint file") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def sidecar_path(path: str | os.PathLike) -> Path:
    """The JSON sidecar of a safetensors file: `model.safetensors` -> `model.safetensors.json`."""
    p = Path(path)
    return p.with_name(p.name + SIDECAR_SUFFIX)


def detect_format(path: str | os.PathLike) -> str:
    """'safetensors', 'torch-zip', 'torch-legacy' or 'pickle', from the first bytes."""
    p = Path(path)
    try:
        size = regular_file_size(p, "checkpoint file")
    except StudioError as exc:
        raise CheckpointError(str(exc)) from None
    if size == 0:
        raise CheckpointError(f"{p.name} is empty (0 bytes); download or copy it again.")
    with open_regular(p) as f:
        head = f.read(16)
    if head.startswith(ZIP_MAGIC):
        return "torch-zip"
    if head.startswith(TORCH_LEGACY_MAGIC):
        return "torch-legacy"
    if len(head) >= 9:
        (header_len,) = struct.unpack("<Q", head[:8])
        if head[8:9] == b"{" and 2 <= header_len <= size - 8:
            return "safetensors"
    if len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5:
        return "pickle"
    raise CheckpointError(f"{p.name} is not a checkpoint the studio can read: expected a "
                          f"network pickle, a torch.save file or safetensors.")


def _tensor(x: Any, name: str) -> torch.Tensor:
    """A float32 CPU tensor from a tensor or ndarray."""
    if isinstance(x, np.ndarray):  # (np.ascontiguousarray would turn 0-d into 1-d)
        x = torch.from_numpy(np.array(x, order="C", copy=True).view(np.ndarray))
    if not isinstance(x, torch.Tensor):
        raise CheckpointError(f"The checkpoint entry {name} is a {type(x).__name__}, not a "
                              f"tensor.")
    return x.detach().to("cpu", torch.float32).contiguous()


def _raw_tensors(entries: Mapping[Any, Any]) -> dict[str, Any]:
    """Name -> tensor or ndarray as stored (no copy, no conversion), once their declared
    bytes are known to fit in the file: many names may view one stored block of data, and
    converting each would copy it again."""
    out: dict[str, Any] = {}
    for key, value in entries.items():
        name = str(key)
        if not isinstance(value, torch.Tensor | np.ndarray):
            raise CheckpointError(f"The checkpoint entry {name} is a {type(value).__name__}, "
                                  f"not a tensor.")
        out[name] = value
    _declare(out.values())
    return out


def _block_resolutions(sd: Mapping[str, Any], prefix: str = "synthesis.b") -> list[int]:
    found = {int(m.group(1)) for k in sd if (m := re.match(re.escape(prefix) + r"(\d+)\.", k))}
    return sorted(found)


def _is_stylegan3(keys: Any) -> bool:
    return any(k.startswith("synthesis.input.") or re.match(r"synthesis\.L\d+_", k)
               for k in keys)


STYLEGAN3_MESSAGE = ("This StyleGAN3 (alias-free) file holds bare tensors without the config "
                     "needed to rebuild its layers; load the NVlabs pickle it came from.")


def _solve_channels(channels: Mapping[int, int], preferred: list[tuple[int, int]]
                    ) -> tuple[int, int]:
    """(channel_base, channel_max) giving `min(base // res, max)` == channels[res] everywhere.

    The lowest resolution's count is the cap; resolutions below the cap pin base to a range.
    A preferred pair (from the checkpoint's kwargs, then the usual values) wins if it fits.
    """
    def fits(base: int, cmax: int) -> bool:
        return all(min(base // r, cmax) == c for r, c in channels.items())

    for base, cmax in preferred:
        if base and cmax and fits(int(base), int(cmax)):
            return int(base), int(cmax)
    cmax = channels[min(channels)]
    lo, hi = 1, 1 << 40
    for r, c in channels.items():
        if c < cmax:
            lo, hi = max(lo, c * r), min(hi, c * r + r - 1)
        else:
            lo = max(lo, cmax * r)
    if lo <= hi and fits(lo, cmax):  # the smallest base that fits (unique unless all capped)
        return lo, cmax
    raise CheckpointError("The channel counts of this model do not follow StyleGAN2's rule "
                          "(channel_base // resolution, capped), so the studio cannot build it.")


def infer_config(sd: Mapping[str, torch.Tensor], hints: Mapping[str, Any] | None = None
                 ) -> GeneratorConfig:
    """The GeneratorConfig an NVlabs-named state dict needs, from its shapes.

    Shapes fix everything except conv_clamp and mapping_lr_mul, which come from `hints`
    (NVlabs per-layer attributes, TF static kwargs) or the NVlabs defaults.
    """
    hints = dict(hints or {})
    if _is_stylegan3(sd):
        raise CheckpointError(STYLEGAN3_MESSAGE)

    def need(key: str) -> torch.Tensor:
        if key not in sd:
            raise CheckpointError(f"This does not look like a StyleGAN2 generator: it has no "
                                  f"{key}.")
        return sd[key]

    fcs = sorted(int(m.group(1)) for k in sd if (m := re.fullmatch(r"mapping\.fc(\d+)\.weight", k)))
    if not fcs or fcs != list(range(len(fcs))):
        need("mapping.fc0.weight")
        raise CheckpointError("The mapping network's layers are not numbered fc0, fc1, ...; "
                              "the file is not a StyleGAN2 generator.")
    fc0 = need("mapping.fc0.weight")
    w_dim = int(need(f"mapping.fc{fcs[-1]}.weight").shape[0])
    c_dim = embed = 0
    if "mapping.embed.weight" in sd:
        embed, c_dim = (int(s) for s in sd["mapping.embed.weight"].shape)
    z_dim = int(fc0.shape[1]) - embed
    hidden = int(fc0.shape[0]) if len(fcs) > 1 else w_dim

    resolutions = _block_resolutions(sd)
    if not resolutions or resolutions[0] != 4:
        need("synthesis.b4.const")
    res = resolutions[-1]
    expected = [2 ** i for i in range(2, int(math.log2(res)) + 1)]
    if resolutions != expected:
        raise CheckpointError(f"The synthesis blocks {resolutions} are not the full ladder "
                              f"4, 8, ..., {res}; the file is not a StyleGAN2 generator.")
    channels = {r: int(need(f"synthesis.b{r}.conv1.weight").shape[0]) for r in resolutions}
    img_channels = int(need(f"synthesis.b{res}.torgb.weight").shape[0])
    if any(f"synthesis.b{r}.skip.weight" in sd for r in resolutions):
        architecture = "resnet"
    elif all(f"synthesis.b{r}.torgb.weight" in sd for r in resolutions):
        architecture = "skip"
    else:
        architecture = "orig"
    base, cmax = _solve_channels(channels, [(hints.get("channel_base"),
                                             hints.get("channel_max")),
                                            (32768, 512), (16384, 512)])
    clamp = hints.get("conv_clamp")
    return GeneratorConfig(
        z_dim=z_dim, w_dim=w_dim, c_dim=c_dim, resolution=res, img_channels=img_channels,
        mapping_layers=len(fcs), mapping_lr_mul=float(hints.get("mapping_lr_mul") or 0.01),
        channel_base=base, channel_max=cmax,
        conv_clamp=float(clamp) if clamp is not None else None, architecture=architecture,
        embed_features=embed if c_dim and embed != w_dim else None,
        layer_features=hidden if hidden != w_dim else None,
    )


def _infer_d_config(d_sd: Mapping[str, torch.Tensor], g_cfg: GeneratorConfig,
                    conv_clamp: float | None) -> GeneratorConfig:
    """The config our residual Discriminator needs for an NVlabs-named D state dict."""
    resolutions = _block_resolutions(d_sd, "b")
    res = resolutions[-1] if resolutions else 0
    if "b4.out.weight" not in d_sd or f"b{res}.fromrgb.weight" not in d_sd:
        raise CheckpointError("The discriminator in this checkpoint is incomplete or not a "
                              "StyleGAN2 discriminator.")
    if int(d_sd["b4.out.weight"].shape[0]) != 1 or any(k.startswith("mapping.") for k in d_sd):
        raise CheckpointError("This discriminator is conditional (class labels), which the "
                              "studio's discriminator does not support; load without it.")
    for r in resolutions[1:-1]:
        if f"b{r}.fromrgb.weight" in d_sd:
            raise CheckpointError("This discriminator uses the 'skip' or 'orig' architecture; "
                                  "the studio supports only the residual one, load without it.")
    if any(f"b{r}.skip.weight" not in d_sd for r in resolutions[1:]):
        raise CheckpointError("This discriminator is not residual (resnet); the studio "
                              "supports only that one, so load without it.")
    channels = {r: int(d_sd[f"b{r}.conv0.weight"].shape[0]) for r in resolutions[1:]}
    channels[4] = int(d_sd["b4.conv.weight"].shape[0])
    if int(d_sd["b4.conv.weight"].shape[1]) != channels[4] + 1:
        raise CheckpointError("This discriminator uses more than one minibatch-stddev "
                              "channel, which the studio does not support; load without it.")
    base, cmax = _solve_channels(channels, [(g_cfg.channel_base, g_cfg.channel_max),
                                            (32768, 512), (16384, 512)])
    return GeneratorConfig(**{**g_cfg.to_dict(), "c_dim": 0, "resolution": res,
                              "img_channels": int(d_sd[f"b{res}.fromrgb.weight"].shape[1]),
                              "channel_base": base, "channel_max": cmax,
                              "conv_clamp": conv_clamp, "embed_features": None})


def _expected_shapes(cfg: GeneratorConfig | StyleGAN3Config,
                     module_fn: Callable[[], torch.nn.Module],
                     available: int | None = None) -> dict[str, tuple[int, ...]]:
    """State-dict shapes of a module built from `cfg` on the CPU.

    Not on the meta device: its first use imports torch's Python reference kernels (about
    3 s, every process). The size checks first keep a forged config from allocating: the
    studio's ceiling, and `available`, the numbers the checkpoint really holds (a config
    far larger than its tensors cannot load, so it is refused before it is built).
    """
    approx = cfg.approx_parameters()
    _check_budget(cfg)
    # approx_parameters overestimates by at most ~15 %; buffers add to the tensors' side.
    if available is not None and approx > 1.25 * available + 65536:
        raise CheckpointError(f"This checkpoint's config describes a generator of about "
                              f"{approx / 1e6:.1f} M parameters but its tensors hold only "
                              f"{available / 1e6:.1f} M numbers, so the config is wrong.")
    with torch.no_grad():
        module = module_fn()
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


def _conform(sd: Mapping[str, Any], expected: Mapping[str, tuple[int, ...]],
             what: str) -> dict[str, torch.Tensor]:
    """Match a state dict to a model's keys and shapes, one clear sentence when it does not.

    NVlabs registers the constant [1,3,3,1] resample filter in more places than we do; the
    extras are dropped once checked, and missing ones are filled (they are constants).
    """
    standard = make_resample_filter()
    out: dict[str, torch.Tensor] = {}
    for key, value in sd.items():
        if key.endswith("resample_filter"):
            if tuple(value.shape) != tuple(standard.shape) or not torch.allclose(
                    _tensor(value, key), standard, atol=1e-6):
                raise CheckpointError(f"This {what} uses a resampling filter other than "
                                      f"[1,3,3,1], which the studio does not support.")
            if key not in expected:
                continue
        out[key] = value
    for key in expected:
        if key.endswith("resample_filter") and key not in out:
            out[key] = standard.clone()
    missing = [k for k in expected if k not in out]
    extra = [k for k in out if k not in expected]
    if missing:
        raise CheckpointError(f"The {what} is missing {len(missing)} tensor(s) its architecture "
                              f"needs, starting with {missing[0]}.")
    if extra:
        raise CheckpointError(f"The {what} has {len(extra)} tensor(s) its architecture does not "
                              f"use, starting with {extra[0]}.")
    for key, shape in expected.items():
        if tuple(out[key].shape) != shape:
            raise CheckpointError(f"The tensor {key} has shape {list(out[key].shape)} but the "
                                  f"{what}'s config needs {list(shape)}.")
    # Converted only now: every name and shape is the architecture's, so the float32 copies
    # are as large as the network and no larger, whatever else the file declared.
    return {k: _tensor(out[k], k) for k in expected}


def _finish(cfg: GeneratorConfig | StyleGAN3Config, sd: Mapping[str, Any], fmt: str,
            notes: list[str], d_sd: Mapping[str, Any] | None = None,
            d_clamp: float | None = None, mbstd: int = 4, source: Any = None
            ) -> LoadedCheckpoint:
    """Check names and shapes against the config, convert to float32, package the result.
    Tensors may arrive as stored (any float dtype, ndarrays)."""
    available = sum(math.prod(v.shape) for v in sd.values())
    g = _conform(sd, _expected_shapes(cfg, lambda: networks.build(cfg, initialise=False),
                                        available),
                 "generator")
    if cfg.c_dim > 0:
        notes.append(f"This model is conditional with {cfg.c_dim} classes: pass a class label "
                     f"(one-hot c) when generating.")
    d_cfg = d_state = None
    if d_sd is not None:
        if isinstance(cfg, StyleGAN3Config):
            raise CheckpointError("The studio reads a StyleGAN3 checkpoint's generator only; "
                                  "load it without its discriminator.")
        d_cfg = _infer_d_config(d_sd, cfg, d_clamp)
        d_state = _conform(d_sd, _expected_shapes(cfg, lambda: Discriminator(d_cfg, mbstd)),
                           "discriminator")
    return LoadedCheckpoint(config=cfg, state_dict=g, source_format=fmt, d_state=d_state,
                            d_config=d_cfg, mbstd_group_size=mbstd, notes=notes, source=source)


# ----------------------------------------------------------------------------------------
# NVlabs PyTorch pickles.


def _stub_tensors(stub: PersistentStub) -> dict[str, Any]:
    """Walk `_parameters` / `_buffers` / `_modules` into dotted NVlabs state-dict names; the
    tensors come as stored, their declared bytes checked against the file."""
    out = _stub_entries(stub)
    _declare(out.values())
    return out


# A trained network names each layer once and nests a few levels deep (synthesis.b4.conv0.affine);
# a pickle can name one object many times through its memo, so a walk that did not record what
# it has seen would visit fanout**depth layers of a 2 KB file.
MAX_NETWORK_LAYERS = 20_000
MAX_NETWORK_DEPTH = 32


def _network_nodes(root: Any, children: Any, what: str) -> Iterator[tuple[str, Any]]:
    """(dotted prefix, node) for `root` and everything below it, depth first in stored order;
    `children(prefix, node)` gives a node's (name, child) pairs. A node reached twice, a tree
    deeper than MAX_NETWORK_DEPTH or larger than MAX_NETWORK_LAYERS is refused."""
    seen: set[int] = set()
    stack: list[tuple[str, int, Any]] = [("", 0, root)]
    while stack:
        prefix, depth, node = stack.pop()
        if id(node) in seen:
            raise CheckpointError(f"This {what} uses one layer under several names "
                                  f"({prefix.rstrip('.') or 'the root'} among them), which a "
                                  f"trained network never does, so it was not loaded.")
        seen.add(id(node))
        if len(seen) > MAX_NETWORK_LAYERS or depth > MAX_NETWORK_DEPTH:
            raise CheckpointError(f"This {what} has more than {MAX_NETWORK_LAYERS} layers or "
                                  f"nests them more than {MAX_NETWORK_DEPTH} deep, far beyond "
                                  f"any StyleGAN network, so it was not loaded.")
        yield prefix, node
        pairs = [(f"{prefix}{name}.", child) for name, child in children(prefix, node)]
        stack.extend((p, depth + 1, child) for p, child in reversed(pairs))


def _stub_children(prefix: str, stub: PersistentStub) -> list[tuple[str, PersistentStub]]:
    children = stub.state.get("_modules") or {}
    if not isinstance(children, Mapping):
        raise CheckpointError(f"The network {stub.class_name} in this pickle is malformed.")
    for name, child in children.items():
        if child is not None and not isinstance(child, PersistentStub):
            raise CheckpointError(f"The layer {prefix}{name} in this pickle is not an NVlabs "
                                  f"network object, so the studio cannot read it.")
    return [(str(name), child) for name, child in children.items() if child is not None]


def _stub_entries(root: PersistentStub) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for prefix, stub in _network_nodes(root, _stub_children, "network pickle"):
        state = stub.state
        skip = state.get("_non_persistent_buffers_set") or set()
        for attr in ("_parameters", "_buffers"):
            entries = state.get(attr) or {}
            if not isinstance(entries, Mapping):
                raise CheckpointError(f"The network {stub.class_name} in this pickle is "
                                      f"malformed.")
            for name, value in entries.items():
                if value is not None and not (attr == "_buffers" and name in skip):
                    if not isinstance(value, torch.Tensor | np.ndarray):
                        raise CheckpointError(f"The checkpoint entry {prefix}{name} is a "
                                              f"{type(value).__name__}, not a tensor.")
                    out[prefix + name] = value
    return out


def _stub_modules(root: PersistentStub) -> dict[str, PersistentStub]:
    """Every sub-module stub by dotted name ('' for the root)."""
    return {prefix.rstrip("."): stub
            for prefix, stub in _network_nodes(root, _stub_children, "network pickle")}


def _plain(value: Any) -> Any:
    """numpy scalars (NVlabs stores some attributes as float64) to Python numbers."""
    return value.item() if isinstance(value, np.generic) else value


def _one_value(stubs: Mapping[str, PersistentStub], names: list[str], attr: str, what: str
               ) -> Any:
    values = {_plain(stubs[n].state.get(attr)) for n in names if n in stubs}
    if len(values) > 1:
        raise CheckpointError(f"This model uses different {what} values in different layers "
                              f"({sorted(map(str, values))}), which the studio does not "
                              f"support.")
    return values.pop() if values else None


def _number(value: Any, what: str, kind: type = float) -> Any:
    value = _plain(value)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise CheckpointError(f"This StyleGAN3 pickle's {what} is {value!r}, not a number.")
    if kind is int and value != int(value):
        raise CheckpointError(f"This StyleGAN3 pickle's {what} is {value!r}, not a whole number.")
    return kind(value)


def _nvlabs_stylegan3(g: PersistentStub, sd: dict[str, Any], notes: list[str]
                      ) -> tuple[StyleGAN3Config, dict[str, Any]]:
    """Config of a `training.networks_stylegan3.Generator` from its init kwargs (synthesis
    kwargs flat, NVlabs defaults for missing ones), checked against every layer's stored
    name and sampling attributes so a config that would rebuild the layers differently is
    refused rather than rendered wrong."""
    kwargs = g.state.get("_init_kwargs") or {}
    kwargs = dict(kwargs) if isinstance(kwargs, Mapping) else {}
    args = g.state.get("_init_args") or ()
    for name, value in zip(("z_dim", "c_dim", "w_dim", "img_resolution", "img_channels"),
                           args if isinstance(args, tuple | list) else ()):
        kwargs.setdefault(name, value)
    mapping = kwargs.get("mapping_kwargs") or {}
    mapping = mapping if isinstance(mapping, Mapping) else {}
    stubs = _stub_modules(g)
    defaults = StyleGAN3Config()
    ints = {"z_dim": "z_dim", "c_dim": "c_dim", "w_dim": "w_dim",
            "img_resolution": "resolution", "img_channels": "img_channels",
            "channel_base": "channel_base", "channel_max": "channel_max",
            "num_layers": "num_layers", "num_critical": "num_critical",
            "margin_size": "margin_size", "conv_kernel": "conv_kernel",
            "filter_size": "filter_size", "lrelu_upsampling": "lrelu_upsampling"}
    floats = {"first_cutoff": "first_cutoff", "first_stopband": "first_stopband",
              "last_stopband_rel": "last_stopband_rel", "output_scale": "output_scale"}
    fields: dict[str, Any] = {}
    for src, dst in ints.items():
        if src in kwargs:
            fields[dst] = _number(kwargs[src], src, int)
        elif dst in ("z_dim", "w_dim", "resolution", "img_channels"):
            raise CheckpointError(f"This StyleGAN3 pickle does not record its {src}, so the "
                                  f"studio cannot rebuild it.")
    for src, dst in floats.items():
        if src in kwargs:
            fields[dst] = _number(kwargs[src], src)
    fields["use_radial_filters"] = bool(_plain(kwargs.get("use_radial_filters", False)))
    fields["mapping_layers"] = _number(mapping.get("num_layers", 2), "mapping num_layers", int)
    fields["mapping_lr_mul"] = _number(mapping.get("lr_multiplier", 0.01), "lr_multiplier")
    layer_names = [n for n in stubs if re.fullmatch(r"synthesis\.L\d+_\d+_\d+", n)]
    clamp = _one_value(stubs, layer_names, "conv_clamp", "conv_clamp") if layer_names else \
        kwargs.get("conv_clamp", defaults.conv_clamp)
    fields["conv_clamp"] = None if clamp is None else _number(clamp, "conv_clamp")
    try:
        cfg = StyleGAN3Config(**fields)
    except ValueError as exc:
        raise CheckpointError(f"This StyleGAN3 pickle's config is invalid ({exc}).") from None
    _check_budget(cfg)
    specs = layer_specs(cfg)
    stored = {n.split(".", 1)[1] for n in layer_names}
    if stored and stored != {s.name for s in specs}:
        raise CheckpointError(f"This StyleGAN3 pickle's layers ({sorted(stored)[0]}, ...) do not "
                              f"follow from its config, so the studio cannot rebuild it.")
    for s in specs:
        stub = stubs.get(f"synthesis.{s.name}")
        if stub is None:
            continue
        got = {k: _plain(stub.state.get(k)) for k in ("up_factor", "down_factor", "padding")}
        want = {"up_factor": s.up, "down_factor": s.down, "padding": list(s.padding)}
        if got["padding"] is not None:
            got["padding"] = [int(_plain(v)) for v in got["padding"]]
        if any(got[k] is not None and got[k] != want[k] for k in want):
            raise CheckpointError(f"This StyleGAN3 pickle's layer {s.name} samples differently "
                                  f"from what its config gives, so the studio cannot rebuild it.")
    user_transform = sd.get("synthesis.input.transform")
    if user_transform is not None and tuple(user_transform.shape) == (3, 3) and not \
            torch.allclose(_tensor(user_transform, "synthesis.input.transform"), torch.eye(3)):
        notes.append("This model stores a non-identity input transform; it is kept as the "
                     "default for renders without translate/rotate.")
    fp16 = kwargs.get("num_fp16_res") or 0
    if fp16:
        notes.append(f"The model ran its top {fp16} resolutions in fp16 on the GPU; the studio "
                     f"renders in fp32, so images can differ very slightly from NVlabs' output.")
    return cfg, sd


def _check_budget(cfg: GeneratorConfig | StyleGAN3Config) -> None:
    if cfg.approx_parameters() > MAX_GENERATOR_PARAMETERS:
        raise CheckpointError(f"This checkpoint's config describes a generator of about "
                              f"{cfg.approx_parameters() / 1e6:.0f} M parameters, more than "
                              f"the studio's limit of {MAX_GENERATOR_PARAMETERS / 1e6:.0f} M.")


def _nvlabs_generator(g: PersistentStub, notes: list[str]
                      ) -> tuple[GeneratorConfig | StyleGAN3Config, dict[str, torch.Tensor]]:
    sd = _stub_tensors(g)
    if "stylegan3" in g.class_name or _is_stylegan3(sd):
        return _nvlabs_stylegan3(g, sd, notes)
    stubs = _stub_modules(g)
    kwargs = g.state.get("_init_kwargs") or {}
    kwargs = kwargs if isinstance(kwargs, Mapping) else {}
    # stylegan2-ada nests synthesis kwargs; the stylegan3 repo passes them flat.
    synth_kwargs = kwargs.get("synthesis_kwargs") or kwargs
    synth_kwargs = synth_kwargs if isinstance(synth_kwargs, Mapping) else {}
    layers = [k.rsplit(".", 1)[0] for k in sd if re.fullmatch(r"synthesis\.b\d+\.(conv[01]|torgb)"
                                                             r"\.weight", k)]
    convs = [n for n in layers if not n.endswith("torgb")]
    for n in convs:
        if stubs.get(n) and stubs[n].state.get("activation", "lrelu") != "lrelu":
            raise CheckpointError(f"This model's layer {n} uses the "
                                  f"{stubs[n].state.get('activation')!r} activation; the studio "
                                  f"supports StyleGAN2's leaky ReLU only.")
        if stubs.get(n) and not stubs[n].state.get("use_noise", True):
            raise CheckpointError("This model was built without noise inputs, which the studio "
                                  "does not support.")
    hints = {
        "conv_clamp": _one_value(stubs, layers, "conv_clamp", "conv_clamp"),
        "mapping_lr_mul": _plain(stubs["mapping.fc0"].state.get("bias_gain", 0.01))
        if "mapping.fc0" in stubs else 0.01,
        "channel_base": synth_kwargs.get("channel_base"),
        "channel_max": synth_kwargs.get("channel_max"),
    }
    fp16 = synth_kwargs.get("num_fp16_res") or 0
    if fp16:
        notes.append(f"The model ran its top {fp16} resolutions in fp16 on the GPU; the studio "
                     f"renders in fp32, so images can differ very slightly from NVlabs' output.")
    return infer_config(sd, hints), sd


def _read_nvlabs(data: Mapping[str, Any], want_d: bool) -> LoadedCheckpoint:
    g = data.get("G_ema", data.get("G"))
    if not isinstance(g, PersistentStub):
        raise CheckpointError("This pickle has no G_ema network, so it is not an NVlabs "
                              "StyleGAN2 checkpoint.")
    notes: list[str] = []
    if "G_ema" not in data:
        notes.append("The pickle has no G_ema; the training generator G is used instead.")
    cfg, sd = _nvlabs_generator(g, notes)
    d_sd = d_clamp = None
    mbstd = 4
    if want_d:
        d = data.get("D")
        if not isinstance(d, PersistentStub):
            raise CheckpointError("This checkpoint has no discriminator D; load it without one.")
        d_sd = _stub_tensors(d)
        d_stubs = _stub_modules(d)
        d_clamp = _one_value(d_stubs, [n for n in d_stubs if re.fullmatch(
            r"b\d+\.(conv\d?|fromrgb)", n)], "conv_clamp", "conv_clamp")
        if "b4.mbstd" in d_stubs:
            group = _plain(d_stubs["b4.mbstd"].state.get("group_size", 4))
            # None means "the whole batch": any group at least the batch size does that.
            mbstd = int(group) if group is not None else 1 << 30
    return _finish(cfg, sd, "nvlabs-pickle", notes, d_sd, d_clamp, mbstd)


# ----------------------------------------------------------------------------------------
# TensorFlow StyleGAN2 pickles.


def _tf_params(net: TFNetworkStub) -> dict[str, np.ndarray]:
    """All variables of a TF network and its components, as 'component/Layer/var' names."""
    out: dict[str, np.ndarray] = {}
    for dotted, node in _network_nodes(net, _tf_components, "TensorFlow pickle"):
        if not isinstance(node, TFNetworkStub):
            raise CheckpointError("A component of this TensorFlow pickle is not a network.")
        prefix = dotted.replace(".", "/")
        for name, value in getattr(node, "variables", []) or []:
            if not isinstance(value, np.ndarray | np.generic):
                raise CheckpointError(f"The TensorFlow variable {prefix}{name} is a "
                                      f"{type(value).__name__}, not an array.")
            out[prefix + str(name)] = np.asarray(value)
    _declare(out.values())
    return out


def _tf_components(prefix: str, node: Any) -> list[tuple[str, Any]]:
    components = getattr(node, "components", {}) or {}
    if not isinstance(components, Mapping):
        raise CheckpointError("A component of this TensorFlow pickle is not a network.")
    return list(components.items())


def _tf_kwargs(net: TFNetworkStub) -> dict[str, Any]:
    if int(getattr(net, "version", 0) or 0) < 4:
        raise CheckpointError("This TensorFlow pickle is too old (StyleGAN1 or an early "
                              "StyleGAN2 build); the studio reads StyleGAN2 pickles only.")
    kwargs = getattr(net, "static_kwargs", {}) or {}
    return dict(kwargs) if isinstance(kwargs, Mapping) else {}


def _tf_conv(w: np.ndarray, flip: bool) -> np.ndarray:
    """TF [kh, kw, in, out] -> NVlabs [out, in, kh, kw]; up/down convs are flipped."""
    w = w[::-1, ::-1] if flip else w
    return np.ascontiguousarray(w.transpose(3, 2, 0, 1))


def _read_tf(data: tuple, want_d: bool) -> LoadedCheckpoint:
    _, tf_d, tf_gs = data
    kw = _tf_kwargs(tf_gs)
    params = _tf_params(tf_gs)
    found = [int(m.group(1)) for k in params if (m := re.match(r"synthesis/(\d+)x\d+/", k))]
    res = max(found) if found else int(kw.get("resolution", 1024))
    arch = kw.get("architecture", "skip")
    for name in list(params):
        m = re.fullmatch(r"synthesis/ToRGB_lod(\d+)/(.*)", name)
        if m:
            r = res // 2 ** int(m.group(1))
            params[f"synthesis/{r}x{r}/ToRGB/{m.group(2)}"] = params.pop(name)
            arch = "orig"
    if kw.get("nonlinearity", "lrelu") != "lrelu" or list(kw.get("resample_kernel",
                                                                  [1, 3, 3, 1])) != [1, 3, 3, 1]:
        raise CheckpointError("This TensorFlow model uses a non-standard activation or "
                              "resampling filter, which the studio does not support.")
    if not kw.get("use_noise", True):
        raise CheckpointError("This model was built without noise inputs, which the studio "
                              "does not support.")

    def get(name: str) -> np.ndarray:
        if name not in params:
            raise CheckpointError(f"This TensorFlow pickle has no variable {name}, so it is not "
                                  f"a StyleGAN2 generator the studio can convert.")
        return params[name]

    sd: dict[str, np.ndarray] = {"mapping.w_avg": get("dlatent_avg")}
    i = 0
    while f"mapping/Dense{i}/weight" in params:
        sd[f"mapping.fc{i}.weight"] = get(f"mapping/Dense{i}/weight").T
        sd[f"mapping.fc{i}.bias"] = get(f"mapping/Dense{i}/bias")
        i += 1
    if "mapping/LabelEmbed/weight" in params:
        sd["mapping.embed.weight"] = get("mapping/LabelEmbed/weight").T
        sd["mapping.embed.bias"] = get("mapping/LabelEmbed/bias")

    def modconv(dst: str, src: str, flip: bool, noise: int | None) -> None:
        sd[f"{dst}.weight"] = _tf_conv(get(f"{src}/weight"), flip)
        sd[f"{dst}.bias"] = get(f"{src}/bias")
        sd[f"{dst}.affine.weight"] = get(f"{src}/mod_weight").T
        sd[f"{dst}.affine.bias"] = get(f"{src}/mod_bias") + 1  # TF adds the 1 at run time
        if noise is not None:
            sd[f"{dst}.noise_strength"] = get(f"{src}/noise_strength")
            sd[f"{dst}.noise_const"] = get(f"synthesis/noise{noise}")[0, 0]

    sd["synthesis.b4.const"] = get("synthesis/4x4/Const/const")[0]
    modconv("synthesis.b4.conv1", "synthesis/4x4/Conv", False, 0)
    for log2 in range(2, int(math.log2(res)) + 1):
        r = 2 ** log2
        tf, dst = f"synthesis/{r}x{r}", f"synthesis.b{r}"
        if r > 4:
            modconv(f"{dst}.conv0", f"{tf}/Conv0_up", True, 2 * log2 - 5)
            modconv(f"{dst}.conv1", f"{tf}/Conv1", False, 2 * log2 - 4)
        # 'orig' networks named ToRGB_lod{n} may keep the lower-resolution ToRGBs of
        # progressive growing; NVlabs (and the forward pass) use only the last one.
        if f"{tf}/ToRGB/weight" in params and (arch != "orig" or r == res):
            modconv(f"{dst}.torgb", f"{tf}/ToRGB", False, None)
        if f"{tf}/Skip/weight" in params:
            sd[f"{dst}.skip.weight"] = _tf_conv(get(f"{tf}/Skip/weight"), True)
            arch = "resnet"
    g_sd = dict(sd)  # converted to float32 by _finish, once names and shapes are checked
    hints = {"conv_clamp": kw.get("conv_clamp"), "mapping_lr_mul": kw.get("mapping_lrmul", 0.01),
             "channel_base": 2 * int(kw.get("fmap_base", 16384)),
             "channel_max": kw.get("fmap_max", 512)}
    cfg = infer_config(g_sd, hints)
    notes = ["Converted from a TensorFlow StyleGAN2 pickle (Gs)."]
    if cfg.architecture != arch:
        notes.append(f"The pickle says architecture {arch!r}; its tensors say "
                     f"{cfg.architecture!r}, which is used.")
    d_sd = None
    d_kw: dict[str, Any] = {}
    if want_d:
        d_kw = _tf_kwargs(tf_d)
        d_sd = _tf_discriminator(_tf_params(tf_d))
    return _finish(cfg, g_sd, "tf-pickle", notes, d_sd, d_kw.get("conv_clamp"),
                   int(d_kw.get("mbstd_group_size") or 4))


def _tf_discriminator(p: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """TF D variables -> NVlabs D names (no flips: TF blurs before its strided convs)."""
    sd: dict[str, np.ndarray] = {}
    for name, value in p.items():
        m = re.fullmatch(r"(\d+)x\d+/(FromRGB|Conv0|Conv1_down|Skip)/(weight|bias)", name)
        if m:
            r, layer, var = m.groups()
            dst = {"FromRGB": "fromrgb", "Conv0": "conv0", "Conv1_down": "conv1",
                   "Skip": "skip"}[layer]
            sd[f"b{r}.{dst}.{var}"] = _tf_conv(value, False) if var == "weight" else value
        elif name.startswith("FromRGB_lod"):
            raise CheckpointError("This TensorFlow discriminator is not residual; the studio "
                                  "supports only that one, so load without it.")
    for src, dst in [("4x4/Conv", "b4.conv"), ("4x4/Dense0", "b4.fc"), ("Output", "b4.out")]:
        for var in ("weight", "bias"):
            if f"{src}/{var}" not in p:
                raise CheckpointError(f"The TensorFlow discriminator has no variable "
                                      f"{src}/{var}, so it cannot be converted.")
            v = p[f"{src}/{var}"]
            sd[f"{dst}.{var}"] = (_tf_conv(v, False) if v.ndim == 4 else v.T) if var == "weight" \
                else v
    if "LabelEmbed/weight" in p:
        sd["mapping.embed.weight"] = p["LabelEmbed/weight"].T
    return sd


# ----------------------------------------------------------------------------------------
# rosinality checkpoints.


def _check_zip_crcs(path: Path) -> None:
    """Check every record of a zip checkpoint before torch reads it: stored, inside the file,
    and matching the CRC-32 torch.save writes.

    torch.save never compresses, while torch.load inflates whatever it finds, so a deflated
    record (a gigabyte of zeros in a megabyte) is refused by its header alone. torch.load
    does not check CRCs, so a flipped bit in tensor data would otherwise load as silently
    wrong weights. A record whose CRC is 0 was written without checksums (torch's
    compute_crc32=False) and is skipped.
    """
    size = path.stat().st_size
    try:
        with zipfile.ZipFile(path) as zf:
            infos = zf.infolist()
            for info in infos:
                if info.compress_type != zipfile.ZIP_STORED:
                    raise CheckpointError(f"{path.name} holds a compressed record "
                                          f"({info.filename}), which torch.save never writes, "
                                          f"so it was not loaded.")
                if info.file_size != info.compress_size or \
                        info.header_offset + info.file_size > size:
                    raise CheckpointError(f"{path.name} declares a record larger than the "
                                          f"file ({info.filename}), so it is forged or "
                                          f"corrupt and was not loaded.")
            if sum(info.file_size for info in infos) > size:
                raise CheckpointError(f"{path.name} declares more data than the file holds, "
                                      f"so it is forged or corrupt and was not loaded.")
            for info in infos:
                if info.CRC == 0:
                    continue
                with zf.open(info) as f:  # zipfile raises BadZipFile on a CRC mismatch
                    while f.read(1 << 20):
                        pass
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError,
            NotImplementedError) as exc:  # (a CheckpointError above passes through)
        raise CheckpointError(f"{path.name} is corrupt (a checksum inside the torch file does "
                              f"not match its data); download it again.") from exc


# The dtypes of the storage classes torch.save names in its persistent ids.
_STORAGE_DTYPES = {
    "FloatStorage": torch.float32, "DoubleStorage": torch.float64,
    "HalfStorage": torch.float16, "BFloat16Storage": torch.bfloat16,
    "ByteStorage": torch.uint8, "CharStorage": torch.int8, "ShortStorage": torch.int16,
    "IntStorage": torch.int32, "LongStorage": torch.int64, "BoolStorage": torch.bool,
    "ComplexFloatStorage": torch.complex64, "ComplexDoubleStorage": torch.complex128,
    "UntypedStorage": torch.uint8,
}


class _StorageType:
    """A storage class named in a persistent id: its dtype, and nothing callable."""

    def __init__(self, dtype: torch.dtype):
        self.dtype = dtype


class _Inert:
    """Stand-in for a global the dry run does not know: it builds nothing and runs nothing
    (torch.load's own allow-list judges the name afterwards); container arguments passed to
    it are charged, as a real constructor could copy them."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        for arg in (*args, kwargs):
            if isinstance(arg, list | tuple | dict | set | frozenset):
                _charge_container(arg)

    def __setstate__(self, state: Any) -> None:
        pass

    def __setitem__(self, key: Any, value: Any) -> None:
        pass

    def append(self, value: Any) -> None:
        pass

    def extend(self, values: Any) -> None:
        pass

    def add(self, value: Any) -> None:
        pass


class _ScanUnpickler(RestrictedUnpickler):
    """A dry run of a torch.save pickle before torch.load reads it.

    torch.load's weights_only unpickler allows containers such as OrderedDict(d), so one
    stored dict copied a thousand times would cost gigabytes there. Here the same pickle runs
    against the read's budget with every storage a meta-device placeholder: copies are
    charged, each storage's declared size is checked against the data the file has for it,
    and nothing real is allocated."""

    def __init__(self, f: Any, records: Mapping[str, int] | None):
        super().__init__(f)
        self.records = records        # zip: record key -> bytes; legacy: None
        self.storages: dict[str, Any] = {}
        self.declared = 0             # bytes of all distinct storages

    def find_class(self, module: str, name: str) -> Any:
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(_STORAGE_DTYPES[name])
        try:
            return super().find_class(module, name)
        except UnsafePickleError:
            return type(name, (_Inert,), {})

    def persistent_load(self, pid: Any) -> Any:
        if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"
                and isinstance(pid[1], _StorageType) and isinstance(pid[2], str)
                and isinstance(pid[4], int) and pid[4] >= 0):
            raise CheckpointError("A tensor reference in this torch file is malformed, so it "
                                  "cannot be read.")
        kind, key, numel = pid[1], pid[2], pid[4]
        if key not in self.storages:
            nbytes = numel * torch.empty((), dtype=kind.dtype).element_size()
            if self.records is not None and self.records.get(key, -1) < nbytes:
                raise CheckpointError("A tensor in this torch file declares more data than "
                                      "its record holds, so it is forged or corrupt and was "
                                      "not loaded.")
            self.declared += nbytes
            self.storages[key] = torch.storage.TypedStorage(
                numel, dtype=kind.dtype, device="meta", _internal=True)
        return self.storages[key]


def _scan_torch_file(path: Path) -> None:
    """Run `_ScanUnpickler` over a torch.save file's pickles before torch.load does."""
    size = path.stat().st_size
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as zf:
            names = [n for n in zf.namelist() if n.endswith("/data.pkl") or n == "data.pkl"]
            if len(names) != 1:
                raise CheckpointError(f"{path.name} is a zip file but not a torch.save file "
                                      f"(it has no single data.pkl).")
            prefix = names[0][: -len("data.pkl")]
            records = {info.filename[len(prefix) + len("data/"):]: info.file_size
                       for info in zf.infolist()
                       if info.filename.startswith(prefix + "data/")}
            with zf.open(names[0]) as f:
                _ScanUnpickler(io.BytesIO(f.read()), records).load()
        return
    with open_regular(path) as f:  # legacy: magic, protocol, system info, then the objects
        for _ in range(3):
            _ScanUnpickler(f, None).load()
        scan = _ScanUnpickler(f, None)
        scan.load()
    if scan.declared > size:
        raise CheckpointError(f"{path.name} declares {_mib(scan.declared)} of tensor data but "
                              f"holds only {_mib(size)}, so it is forged or corrupt and was not "
                              f"loaded.")


def _torch_load(path: Path) -> Any:
    """torch.load with weights_only; argparse.Namespace (rosinality's `args`) is allowed too.
    The file's records and pickle are checked first (`_check_zip_crcs`, `_scan_torch_file`),
    so what torch.load then builds is bounded by the file."""
    if zipfile.is_zipfile(path):
        _check_zip_crcs(path)
    _scan_torch_file(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        refused = _refused_global(str(exc))
        if refused != "argparse.Namespace":
            raise UnsafePickleError(f"This file asks for {refused or 'a forbidden object'}, "
                                    f"which is not allowed in a checkpoint (it could run code), "
                                    f"so it was not loaded.", refused) from exc
    try:  # a rosinality training checkpoint: its `args` is a plain Namespace of settings
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        refused = _refused_global(str(exc))
        raise UnsafePickleError(f"This file asks for {refused or 'a forbidden object'}, which "
                                f"is not allowed in a checkpoint (it could run code), so it "
                                f"was not loaded.", refused) from exc


def _ros_modconv(src: Mapping[str, torch.Tensor], s: str, d: str, sd: dict, scale: bool
                 ) -> None:
    """rosinality StyledConv/ToRGB -> NVlabs layer. rosinality multiplies its conv weight by
    1/sqrt(fan_in) at run time; NVlabs leaves synthesis weights unscaled (demodulation makes
    the scale matter only through the 1e-8 epsilon), so the scale is folded into the weight.
    ToRGB scales its styles by the same factor in NVlabs, so its weight is copied as is."""
    w = src[f"{s}.conv.weight"][0]
    sd[f"{d}.weight"] = _tensor(w, d) * (1 / math.sqrt(w[0].numel())) if scale else w
    sd[f"{d}.affine.weight"] = src[f"{s}.conv.modulation.weight"]
    sd[f"{d}.affine.bias"] = src[f"{s}.conv.modulation.bias"]


def _rosinality_to_nvlabs(src: Mapping[str, torch.Tensor], w_avg: torch.Tensor | None
                          ) -> tuple[dict[str, torch.Tensor], int]:
    """rosinality g_ema names -> NVlabs names; returns (state dict, resolution)."""
    need = [k for k in ("input.input", "conv1.conv.weight", "to_rgb1.conv.weight") if k not in src]
    if need:
        raise CheckpointError(f"This rosinality checkpoint's generator has no {need[0]}, so it "
                              f"is not a StyleGAN2 generator.")
    sd: dict[str, torch.Tensor] = {}
    n_mlp = 0
    while f"style.{n_mlp + 1}.weight" in src:
        sd[f"mapping.fc{n_mlp}.weight"] = src[f"style.{n_mlp + 1}.weight"]
        sd[f"mapping.fc{n_mlp}.bias"] = src[f"style.{n_mlp + 1}.bias"]
        n_mlp += 1
    if w_avg is not None:
        sd["mapping.w_avg"] = w_avg.reshape(-1)
    sd["synthesis.b4.const"] = src["input.input"][0]

    def styled(s: str, d: str, noise: int) -> None:
        _ros_modconv(src, s, d, sd, scale=True)
        sd[f"{d}.bias"] = src[f"{s}.activate.bias"]
        sd[f"{d}.noise_strength"] = src[f"{s}.noise.weight"].reshape([])
        sd[f"{d}.noise_const"] = src[f"noises.noise_{noise}"][0, 0]

    def to_rgb(s: str, d: str) -> None:
        _ros_modconv(src, s, d, sd, scale=False)
        sd[f"{d}.bias"] = src[f"{s}.bias"].reshape(-1)

    styled("conv1", "synthesis.b4.conv1", 0)
    to_rgb("to_rgb1", "synthesis.b4.torgb")
    k = 0
    while f"convs.{2 * k}.conv.weight" in src:
        r = 2 ** (k + 3)
        styled(f"convs.{2 * k}", f"synthesis.b{r}.conv0", 2 * k + 1)
        styled(f"convs.{2 * k + 1}", f"synthesis.b{r}.conv1", 2 * k + 2)
        to_rgb(f"to_rgbs.{k}", f"synthesis.b{r}.torgb")
        k += 1
    return sd, 2 ** (k + 2)


def _rosinality_d_to_nvlabs(src: Mapping[str, torch.Tensor], res: int) -> dict[str, torch.Tensor]:
    """rosinality Discriminator names -> NVlabs D names (same scales, same maths)."""
    sd = {f"b{res}.fromrgb.weight": src["convs.0.0.weight"],
          f"b{res}.fromrgb.bias": src["convs.0.1.bias"]}
    i = 1
    while f"convs.{i}.conv1.0.weight" in src:
        r, p = res // 2 ** (i - 1), f"convs.{i}"
        sd[f"b{r}.conv0.weight"] = src[f"{p}.conv1.0.weight"]
        sd[f"b{r}.conv0.bias"] = src[f"{p}.conv1.1.bias"]
        sd[f"b{r}.conv1.weight"] = src[f"{p}.conv2.1.weight"]
        sd[f"b{r}.conv1.bias"] = src[f"{p}.conv2.2.bias"]
        sd[f"b{r}.skip.weight"] = src[f"{p}.skip.1.weight"]
        i += 1
    for s, d in [("final_conv.0", "b4.conv"), ("final_linear.0", "b4.fc"),
                 ("final_linear.1", "b4.out")]:
        sd[f"{d}.weight"] = src[f"{s}.weight"]
    for s, d in [("final_conv.1", "b4.conv"), ("final_linear.0", "b4.fc"),
                 ("final_linear.1", "b4.out")]:
        sd[f"{d}.bias"] = src[f"{s}.bias"]
    return sd


def _estimate_w_avg(cfg: GeneratorConfig, sd: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """Mean w over W_AVG_SAMPLES fixed-seed z, as rosinality's `mean_latent` does."""
    from engine.gan.stylegan2 import MappingNetwork

    mapping = MappingNetwork(cfg, 1)
    mapping.load_state_dict({k[len("mapping."):]: v for k, v in sd.items()
                             if k.startswith("mapping.")}, strict=True)
    z = torch.randn(W_AVG_SAMPLES, cfg.z_dim, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return mapping(z)[:, 0].mean(dim=0)


def _read_rosinality(obj: Mapping[str, Any], want_d: bool) -> LoadedCheckpoint:
    g = obj.get("g_ema", obj.get("g"))
    if not isinstance(g, Mapping):
        raise CheckpointError("This rosinality checkpoint has no g_ema state dict.")
    notes = ["Converted from a rosinality checkpoint; note that rosinality's truncation "
             "applies to every layer (use no cutoff to match it)."]
    if "g_ema" not in obj:
        notes.append("The checkpoint has no g_ema; the training generator g is used instead.")
    # As stored: names and shapes are checked (by the mapping and _finish) before anything
    # is converted, so junk entries cost nothing.
    src = _raw_tensors(g)
    w_avg = obj.get("latent_avg")
    sd, res = _rosinality_to_nvlabs(src, _raw_tensors({"latent_avg": w_avg})["latent_avg"]
                                    if w_avg is not None else None)
    if "mapping.w_avg" not in sd:
        sd["mapping.w_avg"] = torch.zeros(int(sd["mapping.fc0.weight"].shape[0]))
    cfg = infer_config(sd, {"channel_base": None, "mapping_lr_mul": 0.01})
    if w_avg is None:
        sd["mapping.w_avg"] = _estimate_w_avg(cfg, sd)
        notes.append(f"The checkpoint has no latent_avg; w_avg was estimated from "
                     f"{W_AVG_SAMPLES} random latents for truncation.")
    d_sd = None
    if want_d:
        d = obj.get("d")
        if not isinstance(d, Mapping):
            raise CheckpointError("This rosinality checkpoint has no discriminator d; load it "
                                  "without one.")
        d_src = _raw_tensors(d)
        try:
            d_sd = _rosinality_d_to_nvlabs(d_src, res)
        except KeyError as exc:
            raise CheckpointError(f"The rosinality discriminator has no {exc.args[0]}, so it "
                                  f"cannot be converted.") from None
    return _finish(cfg, sd, "rosinality", notes, d_sd)


# ----------------------------------------------------------------------------------------
# Our format: safetensors + JSON sidecar.


def save_generator(G: networks.AnyGenerator, path: str | os.PathLike, source: Any = None
                   ) -> dict[str, Any]:
    """Write G as `path` (safetensors) + `path.json` (config, source, sha256); both atomic.

    `source` is JSON-able provenance (a Hub id, a URL, the original file's sha256, ...).
    Returns the sidecar dict.
    """
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu").contiguous().clone() for k, v in G.state_dict().items()}
    config = G.cfg.to_dict()
    meta = {"format": STUDIO_FORMAT, "format_version": str(FORMAT_VERSION),
            "config": json.dumps(config)}
    # The pair must change together: a new safetensors beside the old sidecar fails its
    # checksum, so a failure half-way (disk full) would lose the previous model. Both files
    # are written in full before either replaces anything, and the old sidecar is put back
    # if the last rename fails.
    side = sidecar_path(path)
    tmp = temp_path_beside(path)
    try:
        save_file(state, str(tmp), metadata=meta)
        fsync_file(tmp)
        sidecar = {"format": STUDIO_FORMAT, "format_version": FORMAT_VERSION,
                   "config": config, "source": source, "sha256": sha256_file(tmp),
                   "created": datetime.now(UTC).isoformat(timespec="seconds")}
        text = json.dumps(sidecar, indent=2, sort_keys=True) + "\n"
        old_side = side.read_bytes() if side.exists() else None
        atomic_write_text(side, text)
        try:
            os.replace(tmp, path)
        except BaseException:
            if old_side is not None:
                side.write_bytes(old_side)
            else:
                side.unlink(missing_ok=True)
            raise
    finally:
        tmp.unlink(missing_ok=True)
    return sidecar


# A safetensors header lists every tensor; StyleGAN2 at 1024 px needs about 50 KiB. Reading
# one costs ~25x its size in Python objects, so a 60 MB header of empty tensors cost 1.4 GB.
MAX_SAFETENSORS_HEADER_BYTES = 1 << 20


def check_safetensors_header(path: str | os.PathLike) -> None:
    """Refuse a safetensors file whose header (its table of tensors) is implausibly large,
    before the safetensors library parses it."""
    with open_regular(path, "safetensors file") as f:
        head = f.read(8)
    if len(head) < 8:
        raise CheckpointError(f"{Path(path).name} is too short to be a safetensors file.")
    (header_len,) = struct.unpack("<Q", head)
    if header_len > MAX_SAFETENSORS_HEADER_BYTES:
        raise CheckpointError(f"{Path(path).name} lists {_mib(header_len)} of tensor names "
                              f"and shapes, far more than any generator has, so it was not "
                              f"loaded.")


def _read_safetensors(path: Path) -> LoadedCheckpoint:
    from safetensors import safe_open

    check_safetensors_header(path)
    side = sidecar_path(path)
    sidecar: dict[str, Any] | None = None
    notes: list[str] = []
    if side.exists():
        try:
            sidecar = json.loads(side.read_text(encoding="utf-8"))
            if not isinstance(sidecar, dict) or not isinstance(sidecar.get("config"), dict):
                raise ValueError("no config")
        except Exception as exc:
            raise CheckpointError(f"The sidecar {side.name} is not valid JSON with a config; "
                                  f"delete both files and convert the model again.") from exc
        if int(sidecar.get("format_version", 0)) > FORMAT_VERSION:
            raise CheckpointError(f"{path.name} was written by a newer version of the studio "
                                  f"(format {sidecar['format_version']}); update the studio.")
        if sidecar.get("sha256") != sha256_file(path):
            raise CheckpointError(f"{path.name} does not match the checksum in its sidecar: it "
                                  f"is corrupt or was changed, so convert the model again.")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            meta = f.metadata() or {}
            sd = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as exc:
        raise CheckpointError(f"{path.name} is a truncated or corrupt safetensors file; "
                              f"download or convert it again.") from exc
    bad = [k for k, v in sd.items() if v.dtype != torch.float32]
    if bad:  # _finish converts them
        notes.append(f"{len(bad)} tensor(s) were stored as {sd[bad[0]].dtype}; converted to "
                     f"float32.")
    if sidecar is not None:
        try:
            cfg = networks.config_from_dict(sidecar["config"])
        except (TypeError, ValueError) as exc:
            raise CheckpointError(f"The config in {side.name} is invalid ({exc}).") from exc
        # The checksum covers the safetensors file only; its embedded config guards the
        # sidecar's, so an edited or bit-flipped sidecar config cannot build a wrong model.
        if "config" in meta:
            try:
                inner = networks.config_from_dict(json.loads(meta["config"]))
            except (TypeError, ValueError) as exc:
                raise CheckpointError(f"The config inside {path.name} is invalid.") from exc
            if inner != cfg:
                raise CheckpointError(f"The config in {side.name} differs from the one inside "
                                      f"{path.name}; one was changed or is corrupt, so convert "
                                      f"the model again.")
        return _finish(cfg, sd, "studio", notes, source=sidecar.get("source"))
    if "config" in meta and meta.get("format") == STUDIO_FORMAT:
        notes.append(f"{side.name} is missing, so the checksum was not verified.")
        cfg = networks.config_from_dict(json.loads(meta["config"]))
        return _finish(cfg, sd, "studio", notes)
    notes.append("A bare safetensors file: the config was inferred from tensor shapes "
                 "(conv_clamp unknown, assumed none).")
    return _finish(infer_config(sd), sd, "safetensors", notes)


# ----------------------------------------------------------------------------------------
# Public entry points.


def _from_torch_object(obj: Any, want_d: bool) -> LoadedCheckpoint:
    """A torch.load result: rosinality dict, or an NVlabs-named state dict."""
    if isinstance(obj, Mapping) and ("g_ema" in obj or "g" in obj):
        return _read_rosinality(obj, want_d)
    if isinstance(obj, Mapping):
        for key in ("G_ema", "state_dict", "generator"):
            if isinstance(obj.get(key), Mapping):
                obj = obj[key]
                break
        if "mapping.fc0.weight" in obj or _is_stylegan3(obj):
            if want_d:
                raise CheckpointError("This file holds a generator state dict only; load it "
                                      "without a discriminator.")
            sd = _raw_tensors(obj)
            return _finish(infer_config(sd), sd, "state-dict",
                           ["A plain state dict: conv_clamp unknown, assumed none."])
    raise CheckpointError("This torch file is neither a rosinality checkpoint (g_ema) nor a "
                          "StyleGAN2 state dict.")


def _read_pickle(path: Path, want_d: bool) -> LoadedCheckpoint:
    with open_regular(path) as f:
        data = restricted_load(f)
    if isinstance(data, tuple | list) and len(data) == 3 and all(
            isinstance(x, TFNetworkStub) for x in data):
        return _read_tf(tuple(data), want_d)
    if isinstance(data, Mapping) and any(isinstance(v, PersistentStub) for v in data.values()):
        return _read_nvlabs(data, want_d)
    if isinstance(data, PersistentStub):
        return _read_nvlabs({"G_ema": data}, want_d)
    if isinstance(data, Mapping):
        return _from_torch_object(data, want_d)
    raise CheckpointError(f"This pickle holds a {type(data).__name__}, not a StyleGAN2 network.")


def read_checkpoint(path: str | os.PathLike, want_d: bool = False) -> LoadedCheckpoint:
    """Read any supported checkpoint into NVlabs-named tensors and a GeneratorConfig.

    want_d: also convert the discriminator (NVlabs, TF and rosinality files hold one).
    Raises CheckpointError (UnsafePickleError for refused pickles) with one sentence.
    """
    path = Path(path)
    kind = detect_format(path)
    try:
        with _budget(path.stat().st_size, path.name):
            return _read_kind(path, kind, want_d)
    except StudioError:
        raise
    except (EOFError, pickle.UnpicklingError, struct.error) as exc:
        raise CheckpointError(f"{path.name} is truncated or corrupt (the data ends early or is "
                              f"garbled); download it again.") from exc
    except RuntimeError as exc:
        if "zip" in str(exc).lower() or "archive" in str(exc).lower():
            raise CheckpointError(f"{path.name} is a truncated or corrupt torch file; download "
                                  f"it again.") from exc
        raise CheckpointError(f"{path.name} could not be read ({_first_line(exc)}).") from exc
    except MemoryError as exc:
        # Every size the file declares is checked against its length first, so this is a
        # claim the checks cannot see (a BINBYTES8 length the unpickler allocates at once).
        raise CheckpointError(f"{path.name} asks for more memory than the server has while "
                              f"being read, so it is forged or far too large and was not "
                              f"loaded.") from exc
    except Exception as exc:
        raise CheckpointError(f"{path.name} could not be read as a StyleGAN2 checkpoint "
                              f"({_first_line(exc)}).") from exc


def _read_kind(path: Path, kind: str, want_d: bool) -> LoadedCheckpoint:
    if kind == "safetensors":
        if want_d:
            raise CheckpointError("Studio safetensors files hold a generator only; load it "
                                  "without a discriminator.")
        return _read_safetensors(path)
    if kind == "pickle":
        return _read_pickle(path, want_d)
    return _from_torch_object(_torch_load(path), want_d)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    line = text[0] if text else type(exc).__name__
    return line[:200].rstrip(".")


def build_generator(loaded: LoadedCheckpoint) -> networks.AnyGenerator:
    """A generator (StyleGAN2 or 3) in eval mode holding the checkpoint's tensors (strict:
    every key, shape)."""
    G = networks.build(loaded.config, initialise=False)  # the strict load sets every tensor
    _load_strict(G, loaded.state_dict, "generator")
    return G.eval()


def build_discriminator(loaded: LoadedCheckpoint) -> Discriminator:
    """The discriminator of a checkpoint read with want_d=True."""
    if loaded.d_state is None or loaded.d_config is None:
        raise CheckpointError("This checkpoint was read without its discriminator; read it "
                              "with want_d=True.")
    D = Discriminator(loaded.d_config, loaded.mbstd_group_size)
    _load_strict(D, loaded.d_state, "discriminator")
    return D.eval()


def _load_strict(module: torch.nn.Module, sd: Mapping[str, torch.Tensor], what: str) -> None:
    expected = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    sd = _conform(sd, expected, what)  # one clear sentence for any key or shape problem
    try:
        module.load_state_dict(sd, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"The {what}'s tensors do not fit its architecture "
                              f"({_first_line(exc)}).") from exc


def load_generator(path: str | os.PathLike) -> networks.AnyGenerator:
    """Read a checkpoint of any supported format and build its Generator."""
    return build_generator(read_checkpoint(path))
