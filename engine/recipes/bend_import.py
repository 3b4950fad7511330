"""Imports of the two bending formats users bring, with the meaning their authors' code gives.

* The seed notebooks' operation template (Jasper Zheng, "Manipulated Network and Feature Map
  Clustering", `codes/NetworkOperations.py`): a list of {resolution, install_after:
  'Conv0_up' | 'Conv1', layers: [{operation, name, clusters, <params>, with_norm}]}, as Python
  literals, JSON or YAML. Each seed operation maps onto the engine operation and parameters
  that reproduce its TensorFlow formula on each channel map (see `SEED_OPERATIONS`).
* Terence Broad's network-bending YAML (`configs/*.yaml`: {transforms: [{layer, transform,
  params, features, feature-param}]}, optionally with his cluster dict {layer:
  [{cluster_index, feature_index}]}); each transform of `transform_layers.py` maps onto the
  operation that reproduces its OpenCV / torch formula (see `BROAD_TRANSFORMS`).

Whatever cannot be reproduced is said in one line per transform (`warnings`), never per
channel. `load_recipe_file` reads any of these files, or a recipe JSON, into a Recipe.
"""

from __future__ import annotations

import ast
import copy
import json
import math
import os
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from engine.base.errors import StudioError
from engine.base.safe_yaml import load_yaml
from engine.tools.bending import (
    DEFAULT_CLUSTER_K,
    OPERATIONS,
    Bend,
    ChannelSelection,
    Operation,
    validate_bend,
)

SEED_CLUSTER_K = 8           # the seed's cluster files are 'labels_<res>_<i>_vggCluster_8.p'
MAX_IMPORT_BYTES = 8 * 2**20  # Broad's cluster dict of a 1024 px model is ~0.2 MiB
MAX_LINE_ITEMS = 3            # problems quoted in one warning line before "and N more"


class _Notes:
    """Warnings gathered per transform, then written one line per transform."""

    def __init__(self) -> None:
        self._by: dict[str, list[str]] = {}

    def add(self, where: str, message: str) -> None:
        msgs = self._by.setdefault(where, [])
        if message not in msgs:
            msgs.append(message)

    def lines(self) -> list[str]:
        return [f"{where}: {'; '.join(msgs)}" for where, msgs in self._by.items()]


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _norm(name: Any) -> str:
    return re.sub(r"[\s\-]+", "_", str(name).strip().lower())


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def _as_int(v: Any) -> int:
    return int(round(float(v)))


def _check_count(count: int, what: str) -> None:
    """Refuse a file with more operations than a recipe may hold before converting any."""
    from engine.base.limits import above_limit

    why = above_limit("bends", count)
    if why:
        raise StudioError(f"this {what} has {count} operations, and a recipe holds at most "
                          f"{why.split('limit of ', 1)[1]} bends")


def _checked(bend: Bend, G: Any, where: str, notes: _Notes) -> Bend | None:
    """The bend if it validates; else None and one line summing up its problems."""
    problems = validate_bend(bend, G)
    if not problems:
        return bend
    shown = "; ".join(problems[:MAX_LINE_ITEMS])
    more = f" and {len(problems) - MAX_LINE_ITEMS} more" if len(problems) > MAX_LINE_ITEMS \
        else ""
    notes.add(where, f"skipped ({shown}{more})")
    return None


def _parse_structured(obj: Any, what: str) -> Any:
    if isinstance(obj, bytes):
        obj = obj.decode("utf-8", errors="replace")
    if isinstance(obj, str):
        import yaml  # JSON is YAML too: one parser for both

        if len(obj) > MAX_IMPORT_BYTES:
            raise StudioError(f"the {what} is larger than {MAX_IMPORT_BYTES // 2**20} MiB")
        try:
            return load_yaml(obj, what)
        except yaml.YAMLError as exc:
            raise StudioError(f"cannot read the {what}: {exc}") from exc
        except RecursionError as exc:
            raise StudioError(f"the {what} is nested too deeply to read") from exc
    return obj


# ----------------------------------------------------------------------------------------
# Names other tools use for our operations and parameters (templates that are not the
# seed's own operations: 'zoom', 'rotate' with 'angle', ...).


OP_ALIASES: dict[str, str] = {
    **{name: name for name in OPERATIONS},
    "none": "identity", "noop": "identity",
    "zero": "ablate", "ablation": "ablate", "zeros": "ablate",
    "scalar_multiply": "multiply", "multiply_scalar": "multiply", "mul": "multiply",
    "scalar": "multiply", "amplify": "multiply",
    "brightness": "add", "scalar_add": "add", "add_scalar": "add",
    "negate": "invert", "inverse": "invert",
    "binary_thresh": "threshold", "binary_threshold": "threshold", "thresh": "threshold",
    "binary": "threshold",
    "translation": "translate", "shift": "translate", "move": "translate",
    "rotation": "rotate", "rot": "rotate",
    "resize": "zoom", "zoom_in": "zoom",
    "flip_horizontal": "flip_h", "fliph": "flip_h", "flip_x": "flip_h",
    "horizontal_flip": "flip_h", "hflip": "flip_h",
    "flip_vertical": "flip_v", "flipv": "flip_v", "flip_y": "flip_v",
    "vertical_flip": "flip_v", "vflip": "flip_v",
    "mirror": "mirror_lr", "mirror_h": "mirror_lr",
    "mirror_horizontal": "mirror_lr", "mirror_left_right": "mirror_lr",
    "mirror_v": "mirror_tb", "mirror_vertical": "mirror_tb",
    "mirror_top_bottom": "mirror_tb",
    "shuffle_channels": "shuffle", "channel_shuffle": "shuffle", "permute": "shuffle",
    "vanishing": "vanish",
    "mean": "mean_filter", "blur": "mean_filter", "box_blur": "mean_filter",
    "average": "mean_filter", "mean_blur": "mean_filter",
    "sharpen_filter": "sharpen", "unsharp": "sharpen",
    "erosion": "erode", "dilation": "dilate",
    "sobel_filter": "sobel", "edges": "sobel", "edge": "sobel", "edge_detect": "sobel",
    "sin": "sinusoidal", "sine": "sinusoidal",
    "sinusoidal_disruption": "sinusoidal", "sinusoid": "sinusoidal", "wave": "sinusoidal",
    "spatial_jitter": "jitter", "random_jitter": "jitter",
    "noise": "gaussian_noise", "gaussian": "gaussian_noise", "add_noise": "gaussian_noise",
    "random_noise": "gaussian_noise",
}

PARAM_ALIASES: dict[str, dict[str, str]] = {
    "multiply": {"scalar": "factor", "value": "factor", "scale": "factor",
                 "multiplier": "factor", "amount": "factor", "k": "factor"},
    "add": {"value": "amount", "brightness": "amount", "scalar": "amount", "offset": "amount",
            "delta": "amount"},
    "threshold": {"thresh": "threshold", "t": "threshold", "value": "threshold"},
    "translate": {"x": "x_shift", "dx": "x_shift", "tx": "x_shift", "shift_x": "x_shift",
                  "translate_x": "x_shift", "y": "y_shift", "dy": "y_shift", "ty": "y_shift",
                  "shift_y": "y_shift", "translate_y": "y_shift", "padding": "fill",
                  "mode": "fill"},
    "rotate": {"degrees": "angle", "deg": "angle", "theta": "angle", "degree": "angle"},
    "zoom": {"factor": "scale", "zoom": "scale", "amount": "scale"},
    "mean_filter": {"kernel_size": "kernel", "size": "kernel", "k": "kernel",
                    "filter_shape": "kernel"},
    "sharpen": {"amount": "factor", "strength": "factor", "alpha": "factor"},
    "erode": {"kernel_size": "kernel", "size": "kernel", "k": "kernel"},
    "dilate": {"kernel_size": "kernel", "size": "kernel", "k": "kernel"},
    "sinusoidal": {"fx": "freq_x", "frequency_x": "freq_x", "x_freq": "freq_x",
                   "fy": "freq_y", "frequency_y": "freq_y", "y_freq": "freq_y",
                   "amp": "amplitude", "strength": "amplitude"},
    "jitter": {"strength": "amount", "pixels": "amount", "magnitude": "amount",
               "max_shift": "amount"},
    "gaussian_noise": {"sigma": "std", "strength": "std", "amount": "std", "scale": "std"},
}
_RADIUS_OPS = ("erode", "dilate", "mean_filter")  # 'radius' r means a (2r+1) window


def _map_params(op: Operation, raw: Any, where: str, notes: _Notes) -> dict[str, Any]:
    """Foreign parameters (a mapping or a positional list) under `op`'s names."""
    params: dict[str, Any] = {}
    if raw is None:
        return params
    if isinstance(raw, list | tuple):
        positional = [p for p in op.params if p.type != "choice"]
        if op.name in _RADIUS_OPS and raw and _is_number(raw[0]):
            raw = [2 * _as_int(raw[0]) + 1, *raw[1:]]
        params.update(zip((p.name for p in positional), raw))
        if len(raw) > len(positional):
            notes.add(where, f"ignored extra parameter(s) {list(raw[len(positional):])} of "
                             f"{op.name}")
        return params
    if not isinstance(raw, Mapping):
        notes.add(where, f"parameters {_short(raw)} are neither a list nor a mapping")
        return params
    aliases = PARAM_ALIASES.get(op.name, {})
    for key, value in raw.items():
        name = _norm(key)
        if name == "radius" and op.name in _RADIUS_OPS and _is_number(value):
            params["kernel"] = 2 * _as_int(value) + 1
        elif op.spec(name) is not None:
            params[name] = value
        elif name in aliases:
            params[aliases[name]] = value
        else:
            notes.add(where, f"parameter {key!r} has no counterpart in {op.name}; ignored")
    return params


def _coerce_numbers(op: Operation, params: dict[str, Any]) -> dict[str, Any]:
    """Foreign files write 2 for 2.0 and 3.0 for 3; fit numbers to our types."""
    out = {}
    for name, value in params.items():
        spec = op.spec(name)
        if spec is not None and _is_number(value):
            if spec.type == "float":
                value = float(value)
            elif spec.type == "int" and float(value).is_integer():
                value = int(value)
        out[name] = value
    return out


# ----------------------------------------------------------------------------------------
# The seed's template.

# Parameter keys the seed's StyleGAN_G_synthesis reads (process_params) and passes to Block.
_SEED_KEYS = {"scale", "delta", "translatex", "translatey", "filter_shape", "rotation",
              "sharpen_factor", "sinx", "siny"}
# Keys of a template item that are not operation parameters ('name' is the seed's Keras
# layer name: it labels the layer and changes nothing in the output).
_META = {"operation", "op", "name", "clusters", "cluster", "cluster_ids", "with_norm", "k",
         "n_clusters", "num_clusters", "enabled", "params"}

SeedStep = tuple[str, dict[str, Any]]


def _seed_value(item: Mapping, key: str, default: float) -> float:
    """A seed parameter; the seed's defaults for sinX / sinY are one-element lists."""
    raw = next((v for k, v in item.items() if _norm(k) == key), default)
    if isinstance(raw, list | tuple) and len(raw) == 1:
        raw = raw[0]
    if not _is_number(raw):
        raise ValueError(f"{key} {_short(raw)} is not a number")
    return float(raw)


def _wrap_reflect_shift(pixels: float, size: int) -> float:
    """A shift under reflect fill repeats every 2 * size pixels: the equivalent within
    [-size, size], as a fraction of the map."""
    return (math.fmod(pixels + size, 2 * size) + (2 * size if pixels + size < 0 else 0)
            - size) / size


def _seed_scale(item: Mapping, res: int, where: str, notes: _Notes) -> list[SeedStep]:
    # Block: x_new = int(x + scale), tf.image.resize(gaussian), resize_with_crop_or_pad.
    pixels = int(res + _seed_value(item, "scale", 0)) - res
    return [("resize_pad", {"pixels": pixels})]


_TF23_REFLECT = ("TensorFlow 2.3 (the seed's pin) blanks samples that land within half a "
                 "pixel outside the map under reflect fill, a bug 2.4 fixed; this follows 2.4+ "
                 "(a few edge pixels differ)")


def _seed_translate(item: Mapping, res: int, where: str, notes: _Notes) -> list[SeedStep]:
    # tfa.image.translate([tX, tY] pixels, nearest, reflect): out(x, y) = in(x - tX, y - tY).
    if not all(float(_seed_value(item, k, 0)).is_integer() for k in ("translatex", "translatey")):
        notes.add(where, _TF23_REFLECT)
    return [("translate", {"x_shift": _wrap_reflect_shift(_seed_value(item, "translatex", 0),
                                                          res),
                           "y_shift": _wrap_reflect_shift(_seed_value(item, "translatey", 0),
                                                          res),
                           "fill": "reflect", "interpolation": "nearest"})]


def _seed_mean_filter(item: Mapping, res: int, where: str, notes: _Notes) -> list[SeedStep]:
    keys = {_norm(k): v for k, v in item.items()}
    k = keys.get("filter_shape", keys.get("kernel_size", 3))
    if "filter_shape" not in keys and "kernel_size" in keys and k != 3:
        notes.add(where, f"the seed's code reads filter_shape (default 3), not kernel_size; "
                         f"using kernel_size {k} as written")
    if not _is_number(k) or not float(k).is_integer():
        raise ValueError(f"filter size {_short(k)} is not a whole number")
    return [("mean_filter", {"kernel": int(k), "border": "reflect"})]


def _seed_rotate(item: Mapping, res: int, where: str, notes: _Notes) -> list[SeedStep]:
    # tfa.image.rotate(radians, fill_mode='reflect'), interpolation its default 'nearest'.
    degrees = math.fmod(math.degrees(_seed_value(item, "rotation", 0)), 360.0)
    if abs(degrees / 90 - round(degrees / 90)) > 1e-6:
        notes.add(where, _TF23_REFLECT)
    return [("rotate", {"angle": degrees, "fill": "reflect", "interpolation": "nearest"})]


def _seed_sharpen(item: Mapping, res: int, where: str, notes: _Notes) -> list[SeedStep]:
    factor = _seed_value(item, "sharpen_factor", 1)
    if factor not in (0.0, 1.0):
        notes.add(where, "tfa's sharpness rounds (and above 1 clips to 0..255) as for 8-bit "
                         "pictures; kept as in the seed (uint8_clip)")
    return [("sharpness", {"factor": factor, "uint8_clip": True})]


def _seed_shuffle(item: Mapping, res: int, where: str, notes: _Notes) -> list[SeedStep]:
    notes.add(where, "tf.random.shuffle's permutation cannot be reproduced here; a seeded "
                     "permutation of all channels instead")
    return [("shuffle", {"source": "all", "seed": 1})]


def _seed_mirror_x(item: Mapping, res: int, where: str, notes: _Notes) -> list[SeedStep]:
    notes.add(where, "the seed's mirrorX concatenates along the channel axis, so it turns "
                     "channels from H/2 on by 180 degrees; kept as its code runs (half_turn "
                     "keep 'left' is the column version)")
    return [("half_turn", {"keep": "low_channels"})]


def _seed_sin(item: Mapping, res: int, where: str, notes: _Notes) -> list[SeedStep]:
    return [("sin_disrupt", {"row_freq": _seed_value(item, "sinx", 1),
                             "col_freq": _seed_value(item, "siny", 1),
                             "row_shift": 4 + _seed_value(item, "translatey", 0),
                             "col_shift": 2 + _seed_value(item, "translatex", 0),
                             "amplitude": 4.0})]


def _fixed(op: str, **params: Any) -> Callable[..., list[SeedStep]]:
    return lambda item, res, where, notes: [(op, dict(params))]


# Every operation of the seed's Block.call, with the parameters it reads.
SEED_OPERATIONS: dict[str, tuple[Callable[..., list[SeedStep]], set[str]]] = {
    "block": (_fixed("ablate"), set()),
    "scale": (_seed_scale, {"scale"}),
    "invert": (_fixed("invert", offset=0.0), set()),
    "shuffle": (_seed_shuffle, set()),
    "brightness": (lambda item, res, where, notes: [
        ("add", {"amount": _seed_value(item, "delta", 0)})], {"delta"}),
    "translate": (_seed_translate, {"translatex", "translatey"}),
    "vanish": (_fixed("vanish", donors="repeat"), set()),
    "mean_filter": (_seed_mean_filter, {"filter_shape"}),
    "rotate": (_seed_rotate, {"rotation"}),
    "sharpen": (_seed_sharpen, {"sharpen_factor"}),
    "erosion": (_fixed("erode", kernel=3, shape="square"), set()),
    "dilation": (_fixed("dilate", kernel=3, shape="square"), set()),
    "mirrory": (_fixed("half_turn", keep="top"), set()),
    "mirrorx": (_seed_mirror_x, set()),
    "sin_disrupt": (_seed_sin, {"sinx", "siny", "translatex", "translatey"}),
}


def _seed_selection(item: Mapping, entry: Mapping, where: str, notes: _Notes
                    ) -> ChannelSelection | None:
    clusters = next((item.get(x) for x in ("clusters", "cluster", "cluster_ids")
                     if x in item), None)
    if clusters is None or clusters == "all" or clusters == []:
        return ChannelSelection()  # the seed: no clusters = every channel
    ids = clusters if isinstance(clusters, list) else [clusters]
    if not all(_is_number(c) and float(c).is_integer() and c >= 0 for c in ids):
        notes.add(where, f"skipped (cluster ids {_short(clusters)} are not whole numbers)")
        return None
    k = next((item.get(x) for x in ("k", "n_clusters", "num_clusters")
              if item.get(x) is not None), entry.get("k", entry.get("n_clusters")))
    kk = _as_int(k) if _is_number(k) else max(SEED_CLUSTER_K, max(int(c) for c in ids) + 1)
    return ChannelSelection(mode="clusters", ids=sorted({int(c) for c in ids}), k=kk)


def _template_layer(entry: Mapping, where: str, notes: _Notes) -> str | None:
    res = entry.get("resolution", entry.get("res"))
    after = _norm(entry.get("install_after", entry.get("layer", "conv1")))
    if not _is_number(res) or res < 4 or not math.log2(res).is_integer():
        notes.add(where, f"skipped (resolution {res!r} is not a power of two >= 4)")
        return None
    res = int(res)
    if after in ("conv0_up", "conv0", "conv_up", "up"):
        if res == 4:
            notes.add(where, "the seed's 4 x 4 Conv0_up bends the constant input, which this "
                             "StyleGAN2 has no tap for; using b4.conv1")
            return "b4.conv1"
        return f"b{res}.conv0"
    if after in ("conv1", "conv"):
        return f"b{res}.conv1"
    if after in ("torgb", "to_rgb"):
        return f"b{res}.torgb"
    notes.add(where, f"skipped (install_after {entry.get('install_after')!r} is not Conv0_up "
                     f"or Conv1)")
    return None


def _template_entries(data: Any) -> list:
    if isinstance(data, Mapping):
        for key in ("template", "operations", "bends", "layers", "transforms"):
            if isinstance(data.get(key), list):
                return data[key]
        return [data]
    if not isinstance(data, list):
        raise StudioError("the bending template must be a list of {resolution, "
                          "install_after, layers} entries")
    return data


def _seed_steps(name: str, item: Mapping, res: int, where: str, notes: _Notes
                ) -> list[SeedStep] | None:
    """The seed operation `name` as engine steps, or None when it is not a seed name."""
    key = _norm(name)
    if key not in SEED_OPERATIONS:
        return None
    convert, reads = SEED_OPERATIONS[key]
    unused = sorted(k for k in item if _norm(k) in _SEED_KEYS and _norm(k) not in reads)
    if unused:
        notes.add(where, f"{', '.join(unused)} not read by the seed's {name}; ignored as "
                         f"there")
    return convert(item, res, where, notes)


def _generic_steps(name: Any, item: Mapping, where: str, notes: _Notes
                   ) -> list[SeedStep] | None:
    op_name = OP_ALIASES.get(_norm(name)) if name is not None else None
    if op_name is None:
        return None
    op = OPERATIONS[op_name]
    extra = {k: v for k, v in item.items() if _norm(k) not in _META}
    params = _map_params(op, item.get("params"), where, notes) if "params" in item else {}
    params.update(_map_params(op, extra, where, notes))
    return [(op_name, params)]


def _template_item(item: Any, entry: Mapping, layer: str, res: int, where: str,
                   notes: _Notes, G: Any) -> list[Bend]:
    if not isinstance(item, Mapping):
        notes.add(where, f"skipped ({_short(item)} is not an operation)")
        return []
    name = item.get("operation", item.get("op"))
    if _norm(name) == "none":
        return []  # the seed installs nothing for 'none'
    try:
        steps = _seed_steps(str(name), item, res, where, notes)
        if steps is not None:
            extra = {k: v for k, v in item.items()
                     if _norm(k) not in _META | _SEED_KEYS | {"kernel_size"}}
            if extra:
                steps[0][1].update(_map_params(OPERATIONS[steps[0][0]], extra, where, notes))
        else:
            steps = _generic_steps(name, item, where, notes)
    except ValueError as exc:
        notes.add(where, f"skipped ({exc})")
        return []
    if steps is None:
        notes.add(where, f"skipped (operation {name!r} has no counterpart here)")
        return []
    sel = _seed_selection(item, entry, where, notes)
    if sel is None:
        return []
    enabled = item.get("enabled", True)
    enabled = enabled if isinstance(enabled, bool) else True
    bends = [Bend(layer=layer, op=op, params=_coerce_numbers(OPERATIONS[op], params),
                  channels=sel, enabled=enabled) for op, params in steps]
    if item.get("with_norm") is True:
        # StyleGAN1's InstanceNorm over the whole layer, right after the seed's Block.
        bends.append(Bend(layer=layer, op="instance_norm", params={}, enabled=enabled))
    return [b for b in (_checked(b, G, where, notes) for b in bends) if b is not None]


def import_notebook_template(obj: Any, G: Any = None) -> tuple[list[Bend], list[str]]:
    """Bends from the seed notebooks' operation template (list, dict, JSON / YAML text).

    `resolution` + `install_after` name our layer (b{res}.conv0 / b{res}.conv1). The seed's
    operations convert as `SEED_OPERATIONS` says (pixel units of that resolution, radians,
    fill modes); other names go through `OP_ALIASES`. Cluster ids select clusters of this
    studio's k-means of the layer (k = 8, the seed's count, unless the entry gives 'k');
    `with_norm: true` adds an instance_norm bend after the operation. Returns (bends,
    warnings), one warning line per entry that needs one.
    """
    data = _template_entries(_parse_structured(obj, "bending template"))
    _check_count(sum(len(e["layers"]) if isinstance(e, Mapping) and
                     isinstance(e.get("layers"), list) else 1 for e in data), "template")
    notes = _Notes()
    bends: list[Bend] = []
    for i, entry in enumerate(data):
        where = f"template[{i}]"
        if not isinstance(entry, Mapping):
            notes.add(where, f"skipped ({_short(entry)} is not an entry)")
            continue
        layer = _template_layer(entry, where, notes)
        if layer is None:
            continue
        items = entry.get("layers")
        if items is None and any(k in entry for k in ("operation", "op")):
            items = [entry]  # a flat entry carrying its own operation
        if not isinstance(items, list):
            notes.add(where, "skipped (no list of operations under 'layers')")
            continue
        res = int(entry.get("resolution", entry.get("res")))
        for j, item in enumerate(items):
            bends += _template_item(item, entry, layer, res, f"{where}.layers[{j}]", notes, G)
    lines = notes.lines()
    if any(b.channels.mode == "clusters" for b in bends):
        lines.append(f"clusters: ids name clusters of this studio's k-means of each layer "
                     f"(k={SEED_CLUSTER_K} like the seed's files), not the seed's own "
                     f"VGG-feature clusters")
    if bends:
        lines.append("architecture: the seed's StyleGAN1 instance-normalises every map after "
                     "its bends, which undoes constant gains and offsets; this StyleGAN2 "
                     "does not, so those show here")
    return bends, lines


# ----------------------------------------------------------------------------------------
# Broad's network-bending YAML.


# Ids stop at 16 for a 1024 px generator; 2**(id // 2) of a stranger's id such as 1e308
# would take minutes and gigabytes before any check could refuse the layer.
MAX_BROAD_LAYER_ID = 32


def broad_layer_name(layer_id: int) -> str:
    """Broad's integer layer ids (rosinality generator order) -> our layer names.

    0 is the 4x4 conv; then each block 8, 16, ... contributes its upsampling conv (odd id)
    and its second conv (even id): 1 = b8.conv0, 2 = b8.conv1, 3 = b16.conv0, ...
    """
    if layer_id < 0:
        raise ValueError(f"layer id {layer_id} is negative")
    if layer_id > MAX_BROAD_LAYER_ID:
        raise ValueError(f"layer id {layer_id} is past the last layer of any generator "
                         f"(at most {MAX_BROAD_LAYER_ID})")
    if layer_id == 0:
        return "b4.conv1"
    res = 2 ** ((layer_id + 1) // 2 + 2)
    return f"b{res}.conv0" if layer_id % 2 else f"b{res}.conv1"


BroadStep = tuple[str, dict[str, Any]]


def _radius(p: list, name: str, notes: _Notes, where: str) -> int:
    r = p[0]
    if not _is_number(r) or r < 0:
        raise ValueError(f"{name} radius {_short(r)} is not a whole number >= 0")
    if not float(r).is_integer():
        notes.add(where, f"{name} radius {r} rounded to {_as_int(r)} (OpenCV takes a whole "
                         f"number)")
    return _as_int(r)


def _number(p: list, i: int, notes: _Notes, where: str) -> float:
    v = p[i]
    if isinstance(v, str):
        # YAML 1.1 (PyYAML, which Broad's scripts use too) reads '-.2' as a string, and his
        # OpenCV op then fails; the author meant the number.
        try:
            number = float(v)
        except ValueError:
            number = math.nan
        if math.isfinite(number):
            notes.add(where, f"{v!r} is a string to YAML 1.1 (Broad's loader fails on it "
                             f"too); read as {number}")
            return number
    if not _is_number(v):
        raise ValueError(f"parameter {_short(v)} is not a number")
    return float(v)


# Broad's transform_layers.py, transform by transform: (converter, parameters it needs).
# OpenCV's warpAffine samples bilinearly at 1/32-pixel positions with a zero border
# (sampling 'opencv'); getRotationMatrix2D turns about (W/2, H/2) in pixel-centre
# coordinates (pivot 'half_pixel').
BROAD_TRANSFORMS: dict[str, tuple[Callable[[list, _Notes, str], BroadStep], int]] = {
    "ablate": (lambda p, n, w: ("ablate", {}), 0),
    "invert": (lambda p, n, w: ("invert", {"offset": 1.0}), 0),   # ones - x
    "flip_h": (lambda p, n, w: ("flip_h", {}), 0),                # flip([1]): columns
    "flip_v": (lambda p, n, w: ("flip_v", {}), 0),                # flip([0]): rows
    "binary_thresh": (lambda p, n, w: ("threshold", {"threshold": _number(p, 0, n, w),
                                                     "high": 1.0}), 1),
    "scalar_multiply": (lambda p, n, w: ("multiply", {"factor": _number(p, 0, n, w)}), 1),
    "translate": (lambda p, n, w: ("translate", {
        "x_shift": _number(p, 0, n, w), "y_shift": _number(p, 1, n, w), "fill": "zero",
        "interpolation": "bilinear", "sampling": "opencv"}), 2),
    "scale": (lambda p, n, w: ("zoom", {"scale": _number(p, 0, n, w), "fill": "zero",
                                        "pivot": "half_pixel", "sampling": "opencv"}), 1),
    "rotate": (lambda p, n, w: ("rotate", {"angle": _number(p, 0, n, w), "fill": "zero",
                                           "interpolation": "bilinear",
                                           "pivot": "half_pixel", "sampling": "opencv"}), 1),
    "erode": (lambda p, n, w: ("erode", {"kernel": 2 * _radius(p, "erode", n, w) + 1,
                                         "shape": "ellipse"}), 1),
    "dilate": (lambda p, n, w: ("dilate", {"kernel": 2 * _radius(p, "dilate", n, w) + 1,
                                           "shape": "ellipse"}), 1),
}
BROAD_UNMATCHED = {
    "resize": "Broad's resize grows the map by replicating its border (copyMakeBorder), "
              "which the next layer here cannot take",
}


def _broad_step(t: Mapping, where: str, notes: _Notes) -> BroadStep | None:
    name = t.get("transform")
    key = _norm(name)
    if key == "binary_tresh":  # the misspelling in Broad's example all-transforms list
        notes.add(where, "'binary-tresh' is not a name Broad's code knows (it would fail); "
                         "read as binary-thresh")
        key = "binary_thresh"
    if key in BROAD_UNMATCHED:
        notes.add(where, f"skipped ({BROAD_UNMATCHED[key]})")
        return None
    if key not in BROAD_TRANSFORMS:
        notes.add(where, f"skipped (transform {name!r} has no counterpart here)")
        return None
    convert, needs = BROAD_TRANSFORMS[key]
    raw = t.get("params")
    params = [] if raw is None else list(raw) if isinstance(raw, list) else [raw]
    if len(params) < needs and key == "binary_thresh":
        notes.add(where, "no threshold given; using 0.5")
        params = [0.5]
    if len(params) < needs:
        notes.add(where, f"skipped ({name} needs {needs} parameter(s), got {params!r})")
        return None
    if len(params) > needs:
        notes.add(where, f"ignored extra parameter(s) {params[needs:]} (not read by Broad's "
                         f"{name} either)")
    try:
        return convert(params, notes, where)
    except ValueError as exc:
        notes.add(where, f"skipped ({exc})")
        return None


def _cluster_indices(clusters: Mapping, layer_id: int, cid: int, channels: int | None,
                     where: str, notes: _Notes) -> ChannelSelection | None:
    entries = clusters.get(layer_id, clusters.get(str(layer_id)))
    if not isinstance(entries, list):
        notes.add(where, f"skipped (the cluster file has no layer {layer_id})")
        return None
    idx = sorted({int(e["feature_index"]) for e in entries
                  if isinstance(e, Mapping) and _is_number(e.get("cluster_index"))
                  and _is_number(e.get("feature_index")) and e["feature_index"] >= 0
                  and int(e["cluster_index"]) == cid})
    if not idx:
        notes.add(where, f"skipped (cluster {cid} of layer {layer_id} is empty in the cluster "
                         f"file)")
        return None
    if channels is not None:
        kept = [i for i in idx if i < channels]
        if len(kept) < len(idx):
            notes.add(where, f"{len(idx) - len(kept)} of cluster {cid}'s {len(idx)} channels "
                             f"lie beyond this layer's {channels}"
                      + ("; skipped" if not kept else f"; using the other {len(kept)}"))
        if not kept:
            return None
        idx = kept
    return ChannelSelection(mode="indices", indices=idx)


def _broad_selection(t: Mapping, layer_id: int, clusters: Any, channels: int | None,
                     where: str, notes: _Notes) -> ChannelSelection | None:
    features = _norm(t.get("features", "all"))
    param = t.get("feature-param", t.get("feature_param"))
    if features == "all":
        return ChannelSelection()
    if features == "random":
        if not _is_number(param) or not 0 < param <= 1:
            notes.add(where, f"skipped (feature-param {param!r} is not a fraction in (0, 1])")
            return None
        notes.add(where, f"Broad draws int(channels x {param}) channels afresh on every run; "
                         f"here one fixed draw (seed 0)")
        return ChannelSelection(mode="random", fraction=float(param), seed=0)
    if features == "cluster":
        if not _is_number(param) or not float(param).is_integer():
            notes.add(where, f"skipped (feature-param {param!r} is not a cluster id)")
            return None
        cid = int(param)
        if isinstance(clusters, Mapping):
            return _cluster_indices(clusters, layer_id, cid, channels, where, notes)
        k = max(DEFAULT_CLUSTER_K, cid + 1)
        notes.add(where, f"no cluster file: cluster {cid} taken from this studio's k-means "
                         f"of the layer (k={k}), not Broad's")
        return ChannelSelection(mode="clusters", ids=[cid], k=k)
    notes.add(where, f"skipped (features {t.get('features')!r} is not all, random or cluster)")
    return None


def _broad_bend(t: Any, where: str, G: Any, clusters: Any, notes: _Notes, enabled: bool
                ) -> Bend | None:
    if not isinstance(t, Mapping):
        notes.add(where, f"skipped ({_short(t)} is not a transform)")
        return None
    layer_id = t.get("layer")
    if not _is_number(layer_id) or not float(layer_id).is_integer() or layer_id < 0:
        notes.add(where, f"skipped (layer {layer_id!r} is not a layer id)")
        return None
    if layer_id > MAX_BROAD_LAYER_ID:
        notes.add(where, f"skipped (layer {_short(layer_id)} is past the last layer of any "
                         f"generator; ids stop at 16 for 1024 px)")
        return None
    layer = broad_layer_name(int(layer_id))
    if G is not None and layer not in G.synthesis.layers:
        notes.add(where, f"skipped (layer {int(layer_id)} is {layer}, which this model does "
                         f"not have)")
        return None
    step = _broad_step(t, where, notes)
    if step is None:
        return None
    channels = G.layer_shapes()[layer][0] if G is not None else None
    sel = _broad_selection(t, int(layer_id), clusters, channels, where, notes)
    if sel is None:
        return None
    op, params = step
    return _checked(Bend(layer=layer, op=op, params=params, channels=sel, enabled=enabled),
                    G, where, notes)


def import_broad_yaml(text: Any, G: Any = None, cluster_dict: Any = None
                      ) -> tuple[list[Bend], list[str]]:
    """Bends from Broad's network-bending YAML ({transforms: [{layer, transform, params,
    features, feature-param}]}). Returns (bends, warnings: one line per transform that needs
    one); never raises on an entry.

    Transforms convert as `BROAD_TRANSFORMS` says. features 'all' selects every channel,
    'random' a seeded fraction (Broad drew a fresh one each run), 'cluster' his cluster id:
    through `cluster_dict` (his {layer: [{feature_index, cluster_index}]} file) when given,
    else this studio's clustering of the layer. The 'all-transforms' list of his example
    (which his generate.py never reads) comes in as disabled bends, one per entry.
    """
    data = _parse_structured(text, "network-bending YAML")
    clusters = _parse_structured(cluster_dict, "cluster file") if cluster_dict else None
    if clusters is not None and not isinstance(clusters, Mapping):
        raise StudioError("the cluster file must map layer ids to lists of {cluster_index, "
                          "feature_index}")
    notes = _Notes()
    catalogue: list = []
    if isinstance(data, Mapping):
        if "transforms" not in data and "all-transforms" not in data:
            if "transform" in data:
                raise StudioError("this is a sample-strip config (one transform, no layer): "
                                  "add a layer and put it under 'transforms'")
            raise StudioError("this YAML has no 'transforms' list: is it a network-bending "
                              "config?")
        ignored = [k for k in data if k not in ("transforms", "all-transforms")]
        if ignored:
            notes.add("config", f"ignored top-level key(s) {ignored}")
        catalogue = data.get("all-transforms") or []
        data = data.get("transforms") or []
    if not isinstance(data, list) or not isinstance(catalogue, list):
        raise StudioError("the network-bending YAML must hold a list of transforms")
    _check_count(len(data) + len(catalogue), "network-bending YAML")
    bends: list[Bend] = []
    for i, t in enumerate(data):
        bend = _broad_bend(t, f"transforms[{i}]", G, clusters, notes, enabled=True)
        if bend is not None:
            bends.append(bend)
    kept = 0
    for i, t in enumerate(catalogue):
        bend = _broad_bend(t, f"all-transforms[{i}]", G, clusters, notes, enabled=False)
        if bend is not None:
            bends.append(bend)
            kept += 1
    lines = notes.lines()
    if catalogue:
        lines.append(f"all-transforms: {kept} of {len(catalogue)} entries imported as "
                     f"disabled bends (Broad's generate.py reads only 'transforms'); enable "
                     f"one to try it")
    return bends, lines


# ----------------------------------------------------------------------------------------
# One loader for every file a user may bring.

_RECIPE_KEYS = {"version", "model", "latent", "bends", "weight_edits", "translator",
                "output_size"}
_ASSIGNMENT = re.compile(r"^\s*(?:#[^\n]*\n\s*)*[A-Za-z_]\w*\s*=\s*")


def _read_capped(path: str | os.PathLike, what: str) -> str:
    """The text of a regular file of at most MAX_IMPORT_BYTES (and the upload limit);
    devices, pipes and folders are refused unopened (engine.base.files)."""
    from engine.base.files import open_regular, regular_file_size
    from engine.base.limits import current_limits

    path = Path(path)
    if not path.exists():
        raise StudioError(f"{what} not found: {path}")
    regular_file_size(path, what, min(MAX_IMPORT_BYTES, current_limits().upload_bytes))
    with open_regular(path, what) as f:
        data = f.read(MAX_IMPORT_BYTES + 1)
    try:
        return data.decode("utf-8-sig")  # -sig: a BOM from a Windows editor is not a key
    except UnicodeDecodeError as exc:
        raise StudioError(f"the {what} is not UTF-8 text; save it as UTF-8 JSON or YAML and "
                          f"load it again") from exc


def _parse_any(text: str, suffix: str) -> Any:
    """JSON, then YAML, then a Python literal (the seed README's `operations = [...]`)."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        if suffix == ".json":
            from engine.recipes.recipe import RecipeError

            raise RecipeError([f"recipe: not valid JSON ({exc.msg} at line {exc.lineno})"]
                              ) from exc
    except RecursionError as exc:
        raise StudioError("the file is nested too deeply to read") from exc
    except ValueError as exc:  # int() refuses over 4300 digits (sys.get_int_max_str_digits)
        raise StudioError("the file holds a number too long to be a recipe value") from exc
    import yaml

    try:
        data = load_yaml(text, "file")
        if isinstance(data, list | dict):
            return data
    except (yaml.YAMLError, RecursionError, ValueError):  # ValueError: a 5000-digit int
        pass
    try:
        return ast.literal_eval(_ASSIGNMENT.sub("", text, count=1).strip())
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError) as exc:
        raise StudioError("cannot read this file as a recipe, a network-bending YAML or a "
                          "seed template (not JSON, YAML or a Python literal)") from exc


def file_kind(data: Any) -> str:
    """'recipe', 'broad' or 'seed' for parsed file contents; StudioError otherwise."""
    if isinstance(data, Mapping):
        if "transforms" in data or "all-transforms" in data or "transform" in data:
            return "broad"
        if any(isinstance(data.get(k), list) for k in ("template", "operations")):
            return "seed"
        if "resolution" in data and "layers" in data:
            return "seed"
        if set(data) & _RECIPE_KEYS:
            return "recipe"
    if isinstance(data, list) and data and all(isinstance(e, Mapping) for e in data) and \
            any("resolution" in e or "res" in e for e in data):
        return "seed"
    raise StudioError("this file is not a recipe, a network-bending YAML (with 'transforms') "
                      "or a seed template (a list of {resolution, install_after, layers})")


def _generator(model: Any) -> Any:
    """A Generator from a Generator, a loaded model (with .G) or an engine.models.zoo spec."""
    if model is None or hasattr(model, "synthesis"):
        return model
    if isinstance(model, str):
        from engine.models import zoo  # lazy: zoo pulls in huggingface_hub

        model = zoo.load(model)
    return model.G


def load_recipe_file(path: str | os.PathLike, cluster_dict: Any = None, model: Any = None,
                     latent: Any = None) -> tuple[Any, list[str]]:
    """A Recipe from a recipe JSON, Broad's network-bending YAML (with `cluster_dict`: his
    cluster file's path or parsed contents) or the seed notebooks' template (Python literal,
    JSON or YAML). Returns (recipe, warnings).

    An imported file gives a recipe of `latent` (a copy; None: the default latent) with the
    file's bends, checked against `model` (a Generator, a loaded model or an engine.models.zoo spec
    such as 'default'; None skips the checks of layers and channel counts): what this model
    cannot take is dropped with one warning line per transform. A zoo spec also becomes the
    recipe's model.
    """
    from engine.recipes.recipe import Recipe

    text = _read_capped(path, "recipe file")
    data = _parse_any(text, Path(path).suffix.lower())
    kind = file_kind(data)
    if kind == "recipe":
        if cluster_dict is not None:
            raise StudioError("a cluster file goes with a network-bending YAML, not a recipe")
        return Recipe.from_dict(data), []
    G = _generator(model)
    if kind == "seed":
        if cluster_dict is not None:
            raise StudioError("a cluster file goes with a network-bending YAML; seed "
                              "templates name clusters by id")
        bends, warnings = import_notebook_template(data, G)
    else:
        if isinstance(cluster_dict, str | os.PathLike):
            cluster_dict = _parse_structured(_read_capped(cluster_dict, "cluster file"),
                                             "cluster file")
        bends, warnings = import_broad_yaml(data, G, cluster_dict)
    recipe = Recipe(bends=bends)
    if latent is not None:  # a bend file says nothing of the latent: keep the user's
        recipe.latent = copy.deepcopy(latent)
    if isinstance(model, str):
        recipe.model = model
    return recipe, warnings
