"""Hostile checkpoint files, each a few bytes to a few MB that would cost gigabytes to read,
and `peak_rss_of_load`, which reads one in a fresh process and reports the memory it took.

Every file is built by hand (opcodes, zip records, sidecars) the way an attacker would, so
nothing large is ever allocated here: the only large thing is what a careless reader would
build from the file's declarations.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import struct
import subprocess
import sys
import zipfile
import zlib
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

import torch

MIB = 1 << 20
ROOT = Path(__file__).resolve().parents[2]


# ----------------------------------------------------------------------------------------
# Pickle opcodes, written out so a file can declare what it does not contain.


def _global(module: str, name: str) -> bytes:
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def _int(value: int) -> bytes:
    if value < 2**31:
        return b"J" + struct.pack("<i", value)
    raw = value.to_bytes((value.bit_length() + 8) // 8, "little", signed=True)
    return b"\x8a" + bytes([len(raw)]) + raw  # LONG1


def _bytes(data: bytes) -> bytes:
    return (b"C" + bytes([len(data)]) if len(data) < 256
            else b"B" + struct.pack("<I", len(data))) + data


def _text(text: str) -> bytes:
    raw = text.encode("utf-8")
    return b"X" + struct.pack("<I", len(raw)) + raw


PROTO4 = b"\x80\x04"
MARK, TUPLE, TUPLE1, TUPLE3, REDUCE, BUILD, STOP = b"(", b"t", b"\x85", b"\x87", b"R", b"b", b"."
POP = b"0"
EMPTY_LIST, APPENDS, EMPTY_DICT, SETITEM = b"]", b"e", b"}", b"s"


def _memo_put(index: int) -> bytes:
    return b"r" + struct.pack("<I", index)  # LONG_BINPUT


def _memo_get(index: int) -> bytes:
    return b"j" + struct.pack("<I", index)  # LONG_BINGET


def _reconstruct(shape: tuple[int, ...], typecode: bytes = b"b") -> bytes:
    return (_global("numpy._core.multiarray", "_reconstruct") + _global("numpy", "ndarray")
            + MARK + b"".join(_int(n) for n in shape) + TUPLE + _bytes(typecode) + TUPLE3
            + REDUCE)


def _state_dict_of(value: bytes) -> bytes:
    """A pickled `{'mapping.fc0.weight': value}`: what a plain StyleGAN2 state dict opens
    with, so a reader goes on to convert the value to a tensor."""
    return PROTO4 + EMPTY_DICT + _text("mapping.fc0.weight") + value + SETITEM + STOP


def numpy_reconstruct_bomb(path: Path, declared: int = 1 << 30) -> Path:
    """~100 bytes: numpy `_reconstruct` asked for a float32 array of `declared` bytes."""
    path.write_bytes(_state_dict_of(_reconstruct((declared // 4,), b"f4")))
    return path


def numpy_setstate_bomb(path: Path, declared: int = 2 << 30) -> Path:
    """numpy's own form, `_reconstruct(ndarray, (0,), b'b')`, then a BUILD state declaring
    `declared` bytes with no data behind them."""
    dtype = _global("numpy", "dtype") + _text("u1") + b"\x89\x88" + TUPLE3 + REDUCE
    state = MARK + _int(1) + MARK + _int(declared) + TUPLE + dtype + b"\x89" + _bytes(b"") + TUPLE
    path.write_bytes(_state_dict_of(_reconstruct((0,)) + state + BUILD))
    return path


def memo_copies_bomb(path: Path, chunk: int = 16 * MIB, copies: int = 96) -> Path:
    """One `chunk`-byte string stored once and turned into bytes `copies` times by
    `_codecs.encode` (how protocol-2 pickles spell bytes): chunk * copies bytes of output."""
    body = PROTO4 + _text("\x00" * chunk) + _memo_put(0) + EMPTY_LIST + MARK
    call = _global("_codecs", "encode") + _memo_get(0) + _text("latin1") + b"\x86" + REDUCE
    body += call * copies + APPENDS
    path.write_bytes(body + STOP)
    return path


def frombuffer_copies_bomb(path: Path, chunk: int = 16 * MIB, copies: int = 96) -> Path:
    """Protocol-5 style numpy arrays: one buffer, `copies` arrays built from it."""
    body = PROTO4 + _bytes(b"\x00" * chunk) + _memo_put(0) + EMPTY_LIST + MARK
    dtype = _global("numpy", "dtype") + _text("u1") + b"\x89\x88" + TUPLE3 + REDUCE
    call = (_global("numpy._core.numeric", "_frombuffer") + MARK + _memo_get(0) + dtype
            + MARK + _int(chunk) + TUPLE + _text("C") + TUPLE + REDUCE)
    body += call * copies + APPENDS
    path.write_bytes(body + STOP)
    return path


def legacy_storage_bomb(path: Path, declared_floats: int = 1 << 29) -> Path:
    """An NVlabs-style pickle whose tensor storage is a nested legacy torch.save stream that
    declares `declared_floats` floats (2 GiB) and carries 4 bytes of data."""
    inner = io.BytesIO()
    for header in (0x1950A86A20F9469CFC6C, 1001,
                   {"protocol_version": 1001, "little_endian": True,
                    "type_sizes": {"short": 2, "int": 4, "long": 8}}):
        pickle.dump(header, inner, protocol=2)

    class _Storage:
        pass

    marker = _Storage()

    class _Pickler(pickle.Pickler):
        def persistent_id(self, obj: object) -> object:
            if obj is marker:
                return ("storage", torch.FloatStorage, "0", "cpu", declared_floats, None)
            return None

    _Pickler(inner, protocol=2).dump(marker)
    pickle.dump(["0"], inner, protocol=2)
    inner.write(struct.pack("<q", declared_floats) + b"\x00" * 4)
    view = (_global("torch._utils", "_rebuild_tensor_v2") + MARK
            + _global("torch.storage", "_load_from_bytes") + _bytes(inner.getvalue()) + TUPLE1
            + REDUCE + _int(0) + MARK + _int(declared_floats) + TUPLE + MARK + _int(1) + TUPLE
            + b"\x89" + _global("collections", "OrderedDict") + b")" + REDUCE + TUPLE + REDUCE)
    path.write_bytes(PROTO4 + EMPTY_DICT + _text("G_ema") + view + SETITEM + STOP)
    return path


def _torch_zip(path: Path, obj: object, records: dict[str, tuple[int, bytes | int]]) -> Path:
    """A torch.save zip whose data.pkl is `obj` pickled with persistent ids for `records`
    (key -> (compression, data or a length of zeros)); the other records come from a real
    torch.save so the layout matches torch's own."""
    template = io.BytesIO()
    torch.save({}, template)
    with zipfile.ZipFile(template) as src, zipfile.ZipFile(path, "w") as dst:
        prefix = src.namelist()[0].split("/")[0]
        for info in src.infolist():
            if not info.filename.endswith("data.pkl"):
                dst.writestr(info, src.read(info))
        data_pkl = io.BytesIO()

        class _Pickler(pickle.Pickler):
            def persistent_id(self, o: object) -> object:
                return o.pid if isinstance(o, StorageRef) else None

        _Pickler(data_pkl, protocol=2).dump(obj)
        dst.writestr(f"{prefix}/data.pkl", data_pkl.getvalue())
        for key, (compression, data) in records.items():
            info = zipfile.ZipInfo(f"{prefix}/data/{key}")
            info.compress_type = compression
            with dst.open(info, "w", force_zip64=True) as f:
                if isinstance(data, int):  # that many zero bytes, written in chunks
                    zeros = b"\x00" * (4 * MIB)
                    for start in range(0, data, len(zeros)):
                        f.write(zeros[: min(len(zeros), data - start)])
                else:
                    f.write(data)
    return path


class StorageRef:
    """Pickles as a torch.save storage reference (persistent id) to a zip record."""

    def __init__(self, key: str, storage_type: type, numel: int):
        self.pid = ("storage", storage_type, key, "cpu", numel)


class TensorView:
    """Pickles as `_rebuild_tensor_v2(storage, 0, size, stride, False, OrderedDict())`."""

    def __init__(self, storage: StorageRef, size: tuple[int, ...]):
        self.storage, self.size = storage, size

    def __reduce__(self) -> tuple:
        stride = tuple(int(torch.tensor(self.size[i + 1:]).prod()) for i in range(len(self.size)))
        return (torch._utils._rebuild_tensor_v2,
                (self.storage, 0, self.size, stride, False, OrderedDict()))


def deflated_zip_bomb(path: Path, declared: int = 256 * MIB) -> Path:
    """A rosinality-looking torch zip whose one tensor record is `declared` zero bytes,
    deflated to about declared/1000."""
    storage = StorageRef("0", torch.ByteStorage, declared)
    obj = {"g_ema": {"style.1.weight": TensorView(storage, (declared,))}}
    return _torch_zip(path, obj, {"0": (zipfile.ZIP_DEFLATED, declared)})


def shared_storage_bomb(path: Path, chunk: int = 8 * MIB, views: int = 64) -> Path:
    """A rosinality-looking torch zip: one stored `chunk`-byte float16 storage viewed by
    `views` differently named tensors, each of which a float32 conversion copies."""
    storage = StorageRef("0", torch.HalfStorage, chunk // 2)
    g = {f"junk.{i}.weight": TensorView(storage, (chunk // 2,)) for i in range(views)}
    return _torch_zip(path, {"g_ema": g}, {"0": (zipfile.ZIP_STORED, chunk)})


def wide_encoder(folder: Path, width: int = 2048) -> Path:
    """An encoder folder whose sidecar describes a `width`-channel network (gigabytes of
    parameters) beside a tiny weights file."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    save_file({"head.weight": torch.zeros(1)}, str(folder / "encoder.safetensors"))
    arch = {"layer": "b16.conv1", "input_size": 256, "out_channels": 512, "out_size": 16,
            "width": width, "max_width": width, "blocks": 4, "stage_blocks": 2}
    (folder / "encoder.json").write_text(json.dumps({
        "format": "activation-studio-encoder", "format_version": 1, "architecture": arch,
        "layer": arch["layer"], "input_size": arch["input_size"]}))
    return folder


# ----------------------------------------------------------------------------------------
# Reading one in a fresh process.

_PROBE = r"""
import json, sys
import engine.gan.checkpoints, engine.tools.translator
from engine.base.errors import StudioError

def status_kib(field):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))

for kind, path in zip(sys.argv[1::2], sys.argv[2::2]):
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets the peak (VmHWM) to the present RSS
    before = status_kib("VmRSS")
    try:
        if kind == "encoder":
            engine.tools.translator.load_encoder(path)
        elif kind == "bundle":  # unpacked beside itself, into <path>.unpacked
            import engine.recipes.bundle
            engine.recipes.bundle.read_bundle(path, path + ".unpacked")
        elif kind == "control":  # what a real allocation of that many MiB measures as
            block = bytearray(int(path) << 20)
            del block
        else:
            engine.gan.checkpoints.read_checkpoint(path)
        message = None
    except StudioError as exc:
        message = str(exc)
    print(json.dumps({"message": message, "peak_mb": (status_kib("VmHWM") - before) / 1024}),
          flush=True)
"""


def peak_rss_of_loads(loads: list[tuple[str, Path | int]], timeout: float = 300
                      ) -> list[tuple[str | None, float]]:
    """Read each (kind, path) in turn in one fresh Python process: kind 'checkpoint',
    'encoder', 'bundle' (unpacked into <path>.unpacked), or 'control' (allocate that many
    MiB). Returns, per load, the refusal sentence (None if it loaded) and the peak RSS
    during that load above the RSS before it, in MiB (Linux: the peak is reset through
    /proc/self/clear_refs before each load)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    args = [str(x) for load in loads for x in load]
    proc = subprocess.run([sys.executable, "-c", _PROBE, *args], capture_output=True,
                          text=True, timeout=timeout, env=env, cwd=ROOT)
    if proc.returncode != 0:
        raise AssertionError(f"the probe process failed: {proc.stderr[-2000:]}")
    results = [json.loads(line) for line in proc.stdout.strip().splitlines()]
    return [(r["message"], r["peak_mb"]) for r in results]


def peak_rss_of_load(path: Path, kind: str = "checkpoint") -> tuple[str | None, float]:
    """peak_rss_of_loads for one file."""
    return peak_rss_of_loads([(kind, path)])[0]


def container_copies_bomb(path: Path, entries: int = 200_000, copies: int = 60) -> Path:
    """One dict of `entries` small items stored once, then copied `copies` times by
    `collections.OrderedDict(d)` calls: about entries * copies * 100 bytes of dicts."""
    body = PROTO4 + EMPTY_DICT + _memo_put(0) + MARK
    body += b"".join(_int(i) + _int(0) for i in range(entries)) + b"u"  # SETITEMS
    body += EMPTY_LIST + MARK
    call = _global("collections", "OrderedDict") + _memo_get(0) + TUPLE1 + REDUCE
    body += call * copies + APPENDS
    path.write_bytes(body + STOP)
    return path


def torch_zip_copies_bomb(path: Path) -> Path:
    """container_copies_bomb as the data.pkl of a torch.save zip: torch.load's own
    weights_only unpickler allows OrderedDict(d), so the copies would be made there."""
    pickled = container_copies_bomb(path.with_suffix(".tmp")).read_bytes()
    path.with_suffix(".tmp").unlink()
    template = io.BytesIO()
    torch.save({}, template)
    with zipfile.ZipFile(template) as src, zipfile.ZipFile(path, "w") as dst:
        for info in src.infolist():
            dst.writestr(info, pickled if info.filename.endswith("data.pkl") else src.read(info))
    return path


def many_tensors_safetensors(path: Path, count: int = 1_000_000) -> Path:
    """A safetensors file listing `count` empty tensors: a ~60 MB header of names."""
    entry = '"t%d":{"dtype":"F32","shape":[0],"data_offsets":[0,0]}'
    raw = ("{" + ",".join(entry % i for i in range(count)) + "}").encode()
    raw += b" " * (-len(raw) % 8)
    path.write_bytes(struct.pack("<Q", len(raw)) + raw)
    return path


def _shared_tree(depth: int, fanout: int, node: Callable[[bytes], bytes]) -> bytes:
    """Pickle opcodes for a tree `depth` levels deep in which every level names the level
    below `fanout` times through the memo: a few bytes per level, fanout**depth paths."""
    body = node(b"") + _memo_put(0) + POP  # the leaf
    for level in range(1, depth + 1):
        children = b"".join(_text(f"c{i}") + _memo_get(level - 1) for i in range(fanout))
        body += node(EMPTY_DICT + MARK + children + b"u") + _memo_put(level) + POP
    return body + _memo_get(depth)


def _nvlabs_module(children: bytes) -> bytes:
    """`_reconstruct_persistent_obj({'type': 'class', 'class_name': 'M', 'state':
    {'_modules': children}})`, an empty module when `children` is empty."""
    state = EMPTY_DICT + (_text("_modules") + children + SETITEM if children else b"")
    meta = (EMPTY_DICT + MARK + _text("type") + _text("class") + _text("class_name")
            + _text("M") + _text("state") + state + b"u")
    return (_global("torch_utils.persistence", "_reconstruct_persistent_obj") + meta
            + TUPLE1 + REDUCE)


def nvlabs_shared_module_bomb(path: Path, depth: int = 10, fanout: int = 10) -> Path:
    """~2 KB NVlabs pickle whose G_ema module tree shares one child `fanout` times per level:
    a walk without a record of what it has seen visits fanout**depth modules."""
    tree = _shared_tree(depth, fanout, _nvlabs_module)
    path.write_bytes(PROTO4 + EMPTY_DICT + _text("G_ema") + tree + SETITEM + STOP)
    return path


def _tf_network(children: bytes) -> bytes:
    """A `dnnlib.tflib.network.Network` BUILD with `components` = children."""
    state = EMPTY_DICT + MARK + _text("version") + _int(4)
    state += (_text("components") + children if children else b"") + b"u"
    return _global("dnnlib.tflib.network", "Network") + b")" + REDUCE + state + BUILD


def tf_shared_component_bomb(path: Path, depth: int = 10, fanout: int = 10) -> Path:
    """The same for a TensorFlow pickle: (G, D, Gs) whose components share one network."""
    tree = _shared_tree(depth, fanout, _tf_network)
    path.write_bytes(PROTO4 + MARK + tree + _memo_get(depth) * 2 + TUPLE + STOP)
    return path


def binbytes8_claim(path: Path, declared: int = 64 << 30) -> Path:
    """~100 bytes: a BINBYTES8 opcode claiming `declared` bytes with none behind it."""
    path.write_bytes(PROTO4 + EMPTY_DICT + _text("G_ema") + b"\x8e"
                     + struct.pack("<Q", declared) + b"\x00" * 16 + SETITEM + STOP)
    return path


def _deflated_zeros(total: int, chunk: int = 4 * MIB) -> tuple[list[bytes], int]:
    """Raw deflate blocks for `total` zero bytes and their CRC-32, made in well under a second:
    after a full flush the compressor starts afresh, so every whole chunk past the first
    deflates to the same bytes and is compressed once."""
    zeros = b"\x00" * chunk
    whole, rest = divmod(total, chunk)
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    blocks = [c.compress(zeros) + c.flush(zlib.Z_FULL_FLUSH) for _ in range(min(whole, 2))]
    blocks += blocks[-1:] * max(whole - 2, 0)
    blocks.append(c.compress(zeros[:rest]) + c.flush())
    crc = 0
    for _ in range(whole):
        crc = zlib.crc32(zeros, crc)
    return blocks, zlib.crc32(zeros[:rest], crc)


def _zip_by_hand(path: Path, members: list[tuple[str, int, int, int, list[bytes]]]) -> Path:
    """A zip of (name, method, crc, size, data blocks) members written record by record."""
    central = b""
    with open(path, "wb") as f:
        for name, method, crc, size, blocks in members:
            raw, offset = name.encode(), f.tell()
            stored = sum(map(len, blocks))
            f.write(struct.pack("<4s5H3L2H", b"PK\x03\x04", 20, 0, method, 0, 0x21, crc,
                                stored, size, len(raw), 0) + raw)
            for block in blocks:
                f.write(block)
            central += struct.pack("<4s6H3L5H2L", b"PK\x01\x02", 20, 20, 0, method, 0, 0x21,
                                   crc, stored, size, len(raw), 0, 0, 0, 0, 0, offset) + raw
        end = f.tell()
        f.write(central + struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, len(members),
                                      len(members), len(central), end, 0))
    return path


def zeros_bundle(path: Path, member_bytes: int = 2 << 30) -> Path:
    """A recipe bundle (~2 MB for 2 GiB) whose one input is `member_bytes` zero bytes,
    deflated; the recipe names it as its model, so every check on names passes."""
    name = "inputs/0123456789abcdef-model.pkl"
    recipe = json.dumps({"version": 1, "model": name, "bends": []}).encode()
    blocks, crc = _deflated_zeros(member_bytes)
    return _zip_by_hand(path, [("recipe.json", 0, zlib.crc32(recipe), len(recipe), [recipe]),
                               (name, 8, crc, member_bytes, blocks)])
