"""Checkpoint reading and writing: all four formats, the restricted unpickler, bad files.

Each foreign format is built here from a random generator the way its authors' code lays it
out (NVlabs persistence records carrying `module_src`, TF network stubs with `variables`,
rosinality's names and run-time scales), read back, and must render the same images.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import pickle
import subprocess
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from engine.base.errors import CheckpointError, StudioError, UnsafePickleError
from engine.gan.checkpoints import (
    build_discriminator,
    build_generator,
    detect_format,
    load_generator,
    read_checkpoint,
    restricted_load,
    save_generator,
    sha256_file,
    sidecar_path,
)
from engine.gan.stylegan2 import Discriminator, Generator, GeneratorConfig
from tests.helpers.nvlabs_pickles import (
    Evil,
    Persistent,
    assert_one_sentence,
    d_to_rosinality,
    nvlabs_tree,
    payload_src,
    to_rosinality,
    write_nvlabs_pickle,
)

SEEDS = (0, 1, 2)


@torch.no_grad()
def images(G: Generator, c: torch.Tensor | None = None) -> torch.Tensor:
    z = torch.cat([G.seed_to_z(s) for s in SEEDS])
    return G(z, c, psi=0.7, noise_mode="const")


def random_d(seed: int = 0, **overrides) -> Discriminator:
    torch.manual_seed(seed)
    cfg = GeneratorConfig(z_dim=32, w_dim=32, resolution=32, channel_base=1024, channel_max=32,
                          **overrides)
    D = Discriminator(cfg).eval()
    with torch.no_grad():
        for name, p in D.named_parameters():
            if name.endswith(".bias"):
                p.normal_(0, 0.2)
    return D


@torch.no_grad()
def logits(D: Discriminator) -> torch.Tensor:
    img = torch.randn(4, 3, D.cfg.resolution, D.cfg.resolution,
                      generator=torch.Generator().manual_seed(5))
    return D(img)


# ----------------------------------------------------------------------------------------
# Format 1: NVlabs pickles.


@pytest.mark.parametrize("arch,clamp", [("skip", None), ("skip", 256.0), ("orig", None),
                                        ("resnet", 0.5)])
def test_nvlabs_pickle_round_trip(tiny_generator, tmp_path, nvlabs_modules, arch, clamp):
    G = tiny_generator(seed=1, architecture=arch, conv_clamp=clamp)
    path = tmp_path / "network-snapshot.pkl"
    raw = write_nvlabs_pickle(path, G, nvlabs_modules)
    assert nvlabs_modules.module_src.encode() in raw  # the payload travels in the file
    loaded = read_checkpoint(path)
    assert loaded.source_format == "nvlabs-pickle"
    assert loaded.config == G.cfg
    G2 = build_generator(loaded)
    assert torch.equal(images(G2), images(G))
    assert not nvlabs_modules.marker.exists()


def test_nvlabs_module_src_is_live_but_never_run(tiny_generator, tmp_path, nvlabs_modules):
    """Control: NVlabs' own loader runs module_src (marker appears); ours never does."""
    G = tiny_generator()
    raw = write_nvlabs_pickle(tmp_path / "g.pkl", G, nvlabs_modules)
    read_checkpoint(tmp_path / "g.pkl")
    assert not nvlabs_modules.marker.exists()
    pickle.loads(raw)  # trusted-style unpickling with the NVlabs-like hook
    assert nvlabs_modules.marker.exists()


def test_nvlabs_pickle_variants_and_discriminator(tiny_generator, tmp_path, nvlabs_modules):
    G, D = tiny_generator(seed=2, conv_clamp=256.0), random_d(seed=3, conv_clamp=256.0)
    raw = write_nvlabs_pickle(tmp_path / "a.pkl", G, nvlabs_modules, D)
    # Pickles written under numpy 1.x name numpy.core.multiarray; protocol 3 is plain text.
    (tmp_path / "b.pkl").write_bytes(raw.replace(b"numpy._core.multiarray",
                                                 b"numpy.core.multiarray"))
    write_nvlabs_pickle(tmp_path / "c.pkl", G, nvlabs_modules, D, protocol=4)
    for name in ("a.pkl", "b.pkl", "c.pkl"):
        loaded = read_checkpoint(tmp_path / name, want_d=True)
        assert torch.equal(images(build_generator(loaded)), images(G))
        D2 = build_discriminator(loaded)
        assert loaded.d_config.conv_clamp == 256.0
        assert torch.equal(logits(D2), logits(D))


def test_nvlabs_conditional_model(tiny_generator, tmp_path, nvlabs_modules):
    G = tiny_generator(seed=4, c_dim=4)
    write_nvlabs_pickle(tmp_path / "cond.pkl", G, nvlabs_modules)
    loaded = read_checkpoint(tmp_path / "cond.pkl")
    assert loaded.config.c_dim == 4
    assert any("conditional" in n for n in loaded.notes)
    c = torch.eye(4)[[0, 1, 3]]
    assert torch.equal(images(build_generator(loaded), c), images(G, c))
    with pytest.raises(ValueError, match="class label"):
        images(build_generator(loaded))


def test_malformed_stylegan3_pickle_is_refused_with_one_sentence(tiny_generator, tmp_path,
                                                                 nvlabs_modules):
    """StyleGAN3 layer names over StyleGAN2 layers: the layers do not follow from the config.
    (Well-formed StyleGAN3 pickles are read: tests/test_stylegan3.py.)"""
    G = tiny_generator()
    tree = nvlabs_tree(G, nvlabs_modules)
    synth = tree.state["_modules"]["synthesis"]
    synth.state["_modules"] = OrderedDict(
        input=Persistent("training.networks_stylegan3.SynthesisInput",
                         {"_parameters": OrderedDict(freqs=torch.zeros(4, 2)),
                          "_buffers": OrderedDict(), "_modules": OrderedDict()}, "x = 1"),
        L0_36_512=synth.state["_modules"]["b4"])
    for class_name in ("training.networks_stylegan3.Generator", "training.networks.Generator"):
        tree.class_name = class_name
        (tmp_path / "sg3.pkl").write_bytes(pickle.dumps({"G_ema": tree}, protocol=3))
        with pytest.raises(CheckpointError) as err:
            read_checkpoint(tmp_path / "sg3.pkl")
        assert "StyleGAN3" in str(err.value)
        assert_one_sentence(err.value)


# ----------------------------------------------------------------------------------------
# Format 2: TensorFlow StyleGAN2 pickles, built by inverting the documented mapping.


def tf_conv(w: torch.Tensor, flip: bool) -> np.ndarray:
    """NVlabs [out, in, kh, kw] -> TF [kh, kw, in, out] (flipped for up/down convs)."""
    a = w.numpy().transpose(2, 3, 1, 0)
    return np.ascontiguousarray(a[::-1, ::-1] if flip else a)


def to_tf(G: Generator, D: Discriminator, mods, lod_names: bool = False):
    sd = {k: v.detach() for k, v in G.state_dict().items()}
    cfg = G.cfg
    mapping = []
    for i in range(cfg.mapping_layers):
        mapping += [(f"Dense{i}/weight", sd[f"mapping.fc{i}.weight"].numpy().T.copy()),
                    (f"Dense{i}/bias", sd[f"mapping.fc{i}.bias"].numpy())]
    synth = [("4x4/Const/const", sd["synthesis.b4.const"].numpy()[None])]

    def modconv(src: str, dst: str, flip: bool, noise: int | None):
        out = [(f"{dst}/weight", tf_conv(sd[f"{src}.weight"], flip)),
               (f"{dst}/bias", sd[f"{src}.bias"].numpy()),
               (f"{dst}/mod_weight", sd[f"{src}.affine.weight"].numpy().T.copy()),
               (f"{dst}/mod_bias", sd[f"{src}.affine.bias"].numpy() - 1)]
        if noise is not None:
            out += [(f"{dst}/noise_strength", sd[f"{src}.noise_strength"].numpy()),
                    (f"noise{noise}", sd[f"{src}.noise_const"].numpy()[None, None])]
        return out

    synth += modconv("synthesis.b4.conv1", "4x4/Conv", False, 0)
    for log2 in range(2, int(math.log2(cfg.resolution)) + 1):
        r = 2 ** log2
        if r > 4:
            synth += modconv(f"synthesis.b{r}.conv0", f"{r}x{r}/Conv0_up", True, 2 * log2 - 5)
            synth += modconv(f"synthesis.b{r}.conv1", f"{r}x{r}/Conv1", False, 2 * log2 - 4)
            if f"synthesis.b{r}.skip.weight" in sd:
                synth.append((f"{r}x{r}/Skip/weight", tf_conv(sd[f"synthesis.b{r}.skip.weight"],
                                                              True)))
        if f"synthesis.b{r}.torgb.weight" in sd:
            name = f"ToRGB_lod{int(math.log2(cfg.resolution)) - log2}" if lod_names \
                else f"{r}x{r}/ToRGB"
            synth += modconv(f"synthesis.b{r}.torgb", name, False, None)
    kwargs = dict(latent_size=cfg.z_dim, dlatent_size=cfg.w_dim, resolution=cfg.resolution,
                  fmap_base=cfg.channel_base // 2, fmap_max=cfg.channel_max,
                  mapping_layers=cfg.mapping_layers, mapping_lrmul=0.01,
                  architecture="orig" if lod_names else cfg.architecture,
                  truncation_psi=0.5)
    if cfg.conv_clamp is not None:
        kwargs["conv_clamp"] = cfg.conv_clamp
    payload = payload_src(mods.marker)
    Network = mods.Network

    def net(name, variables, components=None, static=None):
        return Network(version=4, name=name, static_kwargs=static or {},
                       components=components or {}, build_module_src=payload,
                       build_func_name=f"{name}_main", variables=variables)

    def generator(w_avg: np.ndarray):
        return net("G", [("dlatent_avg", w_avg)], {"mapping": net("G_mapping", mapping),
                                                   "synthesis": net("G_synthesis", synth)},
                   kwargs)

    Gs = generator(sd["mapping.w_avg"].numpy())
    G_train = generator(np.zeros_like(sd["mapping.w_avg"].numpy()))  # the reader must use Gs
    dsd = {k: v.detach() for k, v in D.state_dict().items()}
    dvars = []
    for k, v in dsd.items():
        parts = k.split(".")
        if k.endswith("resample_filter"):
            continue
        if parts[0] == "b4":
            src = {"conv": "4x4/Conv", "fc": "4x4/Dense0", "out": "Output"}[parts[1]]
        else:
            r = parts[0][1:]
            layer = {"fromrgb": "FromRGB", "conv0": "Conv0", "conv1": "Conv1_down",
                     "skip": "Skip"}[parts[1]]
            src = f"{r}x{r}/{layer}"
        value = tf_conv(v, False) if v.ndim == 4 else v.numpy().T.copy() if v.ndim == 2 \
            else v.numpy()
        dvars.append((f"{src}/{parts[-1]}", value))
    d_net = net("D", dvars, static=dict(resolution=cfg.resolution, mbstd_group_size=4,
                                        fmap_base=cfg.channel_base // 2,
                                        fmap_max=cfg.channel_max))
    return (G_train, d_net, Gs)


@pytest.mark.parametrize("arch,lod_names", [("skip", False), ("resnet", False),
                                            ("orig", True)])
def test_tf_pickle_round_trip(tiny_generator, tmp_path, nvlabs_modules, arch, lod_names):
    G = tiny_generator(seed=5, architecture=arch, conv_clamp=None)
    D = random_d(seed=6)
    raw = pickle.dumps(to_tf(G, D, nvlabs_modules, lod_names), protocol=3)
    # TF-era pickles were written under numpy 1.x
    raw = raw.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
    path = tmp_path / "stylegan2-tiny-config-f.pkl"
    path.write_bytes(raw)
    loaded = read_checkpoint(path, want_d=True)
    assert loaded.source_format == "tf-pickle"
    assert loaded.config == G.cfg
    # mod_bias - 1 + 1 is not bit-exact in float32, so compare closely, not exactly
    torch.testing.assert_close(images(build_generator(loaded)), images(G), atol=1e-5, rtol=0)
    assert torch.equal(logits(build_discriminator(loaded)), logits(D))
    assert not nvlabs_modules.marker.exists()


# ----------------------------------------------------------------------------------------
# Format 3: rosinality checkpoints.


@pytest.mark.parametrize("zip_format", [True, False])
def test_rosinality_converted_checkpoint(tiny_generator, tmp_path, zip_format):
    G = tiny_generator(seed=7)
    path = tmp_path / "550000.pkl"  # a misleading name: detection reads content
    torch.save({"g_ema": to_rosinality(G), "latent_avg": G.mapping.w_avg.clone()}, path,
               _use_new_zipfile_serialization=zip_format)  # torch < 1.6 wrote the legacy one
    assert detect_format(path) == ("torch-zip" if zip_format else "torch-legacy")
    loaded = read_checkpoint(path)
    assert loaded.source_format == "rosinality"
    assert loaded.config.resolution == 32 and loaded.config.z_dim == 32
    torch.testing.assert_close(images(build_generator(loaded)), images(G), atol=1e-5, rtol=0)


def test_rosinality_training_checkpoint_with_args(tiny_generator, tmp_path):
    G, D = tiny_generator(seed=8), random_d(seed=9)
    ros = to_rosinality(G)
    path = tmp_path / "000100.pt"
    torch.save({"g": ros, "d": d_to_rosinality(D), "g_ema": ros, "g_optim": {}, "d_optim": {},
                "args": argparse.Namespace(size=32, batch=4, lr=0.002), "ada_aug_p": 0.0}, path)
    loaded = read_checkpoint(path, want_d=True)
    assert any("latent_avg" in n for n in loaded.notes)  # estimated, not stored
    G2 = build_generator(loaded)
    with torch.no_grad():
        ws = torch.randn(3, G.num_ws, 32)
        torch.testing.assert_close(G2.synthesis(ws), G.synthesis(ws), atol=1e-5, rtol=0)
    assert torch.equal(logits(build_discriminator(loaded)), logits(D))


# ----------------------------------------------------------------------------------------
# Format 4: ours (safetensors + sidecar).


def test_safetensors_round_trip_is_bit_exact(tiny_generator, tmp_path):
    G = tiny_generator(seed=10, architecture="resnet", conv_clamp=256.0)
    path = tmp_path / "models" / "tiny.safetensors"
    sidecar = save_generator(G, path, source={"hub": "user/tiny", "file": "tiny.pkl"})
    assert sorted(os.listdir(path.parent)) == ["tiny.safetensors", "tiny.safetensors.json"]
    on_disk = json.loads(sidecar_path(path).read_text())
    assert on_disk == sidecar
    assert on_disk["sha256"] == sha256_file(path) and on_disk["format_version"] == 1
    assert on_disk["config"] == G.cfg.to_dict() and on_disk["source"]["hub"] == "user/tiny"
    loaded = read_checkpoint(path)
    assert loaded.source_format == "studio" and loaded.config == G.cfg
    G2 = load_generator(path)
    for (k, a), (k2, b) in zip(G.state_dict().items(), G2.state_dict().items()):
        assert k == k2 and torch.equal(a, b)
    assert torch.equal(images(G2), images(G))


@pytest.mark.parametrize("fmt", ["nvlabs", "tf", "rosinality"])
def test_every_format_converts_to_safetensors(tiny_generator, tmp_path, nvlabs_modules, fmt):
    G = tiny_generator(seed=11)
    path = tmp_path / "in.bin"
    if fmt == "nvlabs":
        write_nvlabs_pickle(path, G, nvlabs_modules)
    elif fmt == "tf":
        path.write_bytes(pickle.dumps(to_tf(G, random_d(), nvlabs_modules)))
    else:
        torch.save({"g_ema": to_rosinality(G), "latent_avg": G.mapping.w_avg}, path)
    first = load_generator(path)
    save_generator(first, tmp_path / "out.safetensors", source={"sha256": sha256_file(path)})
    again = load_generator(tmp_path / "out.safetensors")
    assert torch.equal(images(again), images(first))


def test_safetensors_checksum_and_shape_checks(tiny_generator, tmp_path):
    G = tiny_generator()
    path = tmp_path / "m.safetensors"
    save_generator(G, path, source="test")
    raw = bytearray(path.read_bytes())
    raw[-5] ^= 0xFF
    path.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match="checksum") as err:
        read_checkpoint(path)
    assert_one_sentence(err.value)

    save_generator(G, path, source="test")
    tensors = load_file(str(path))
    tensors["synthesis.b16.conv0.weight"] = torch.zeros(32, 32, 3, 1)
    save_file(tensors, str(path))
    side = json.loads(sidecar_path(path).read_text())
    side["sha256"] = sha256_file(path)
    sidecar_path(path).write_text(json.dumps(side))
    with pytest.raises(CheckpointError, match=r"synthesis\.b16\.conv0\.weight") as err:
        read_checkpoint(path)
    assert_one_sentence(err.value)


def test_forged_huge_config_is_refused_before_allocating(tiny_generator, tmp_path):
    """A small file whose sidecar and embedded config claim a giant network."""
    G = tiny_generator()
    path = tmp_path / "m.safetensors"
    save_generator(G, path, source="test")
    side = json.loads(sidecar_path(path).read_text())
    side["config"].update(resolution=65536, channel_base=2 ** 30, channel_max=65536)
    tensors = load_file(str(path))
    save_file(tensors, str(path), metadata={"format": "activation-studio",
                                            "config": json.dumps(side["config"])})
    side["sha256"] = sha256_file(path)
    sidecar_path(path).write_text(json.dumps(side))
    with pytest.raises(CheckpointError, match="M parameters") as err:
        read_checkpoint(path)
    assert_one_sentence(err.value)


def test_approx_parameters_is_a_close_upper_bound():
    for kw in [dict(resolution=32, channel_base=256, channel_max=16, z_dim=16, w_dim=16),
               dict(resolution=64, z_dim=128, w_dim=128, channel_base=2048, channel_max=128),
               dict(resolution=32, channel_base=256, channel_max=16, z_dim=16, w_dim=16,
                    architecture="orig", c_dim=10),
               dict(resolution=256, channel_base=16384)]:
        cfg = GeneratorConfig(**kw)
        real = sum(p.numel() for p in Generator(cfg).parameters())
        assert real <= cfg.approx_parameters() <= 1.15 * real, kw


def test_bare_safetensors_without_sidecar_infers_config(tiny_generator, tmp_path):
    G = tiny_generator(seed=12, architecture="orig")
    save_file({k: v.contiguous() for k, v in G.state_dict().items()}, str(tmp_path / "x.bin"))
    loaded = read_checkpoint(tmp_path / "x.bin")
    assert loaded.source_format == "safetensors" and loaded.config == G.cfg
    assert torch.equal(images(build_generator(loaded)), images(G))


def test_build_generator_wrong_shape_is_one_sentence(tiny_generator, tmp_path):
    G = tiny_generator()
    save_generator(G, tmp_path / "m.safetensors", source=None)
    loaded = read_checkpoint(tmp_path / "m.safetensors")
    loaded.state_dict["mapping.fc1.bias"] = torch.zeros(7)
    with pytest.raises(CheckpointError, match=r"mapping\.fc1\.bias.*\[7\]") as err:
        build_generator(loaded)
    assert_one_sentence(err.value)
    del loaded.state_dict["mapping.fc1.bias"]
    with pytest.raises(CheckpointError, match="missing") as err:
        build_generator(loaded)
    assert_one_sentence(err.value)


# ----------------------------------------------------------------------------------------
# Malicious pickles: refused, one sentence, no side effect.


def evil_payloads(marker: Path) -> dict[str, tuple[object, str]]:
    torch_bytes = io.BytesIO()
    torch.save(Evil(os.system, f"touch {marker}"), torch_bytes,
               _use_new_zipfile_serialization=False)
    return {
        "os.system": (Evil(os.system, f"touch {marker}"), os.system.__module__ + ".system"),
        "subprocess": (Evil(subprocess.call, ["touch", str(marker)]), "subprocess.call"),
        "eval": (Evil(eval, f"open({str(marker)!r}, 'w').close()"), "builtins.eval"),
        "exec": (Evil(exec, f"open({str(marker)!r}, 'w').close()"), "builtins.exec"),
        "getattr": (Evil(getattr, "abc", "upper"), "builtins.getattr"),
        "nested storage": (Evil(torch.storage._load_from_bytes, torch_bytes.getvalue()),
                           os.system.__module__ + ".system"),
        "object array": (np.array([1, "x", None], dtype=object), "numpy.object_"),
    }


@pytest.mark.parametrize("name", ["os.system", "subprocess", "eval", "exec", "getattr",
                                  "nested storage", "object array"])
@pytest.mark.parametrize("protocol", [2, 4])
def test_malicious_pickles_are_refused(tmp_path, name, protocol):
    marker = tmp_path / "pwned"
    obj, refused = evil_payloads(marker)[name]
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps({"G_ema": obj, "weights": torch.zeros(3)}, protocol=protocol))
    with pytest.raises(UnsafePickleError) as err:
        read_checkpoint(path)
    assert err.value.global_name == refused
    assert_one_sentence(err.value)
    assert not marker.exists()


@pytest.mark.filterwarnings("ignore:TypedStorage is deprecated")
def test_out_of_bounds_tensor_view_is_refused(tmp_path):
    storage = torch.arange(4.0).storage()
    view = Evil(torch._utils._rebuild_tensor_v2, storage, 0, (1 << 20,), (1,), False,
                OrderedDict())
    path = tmp_path / "oob.pkl"
    path.write_bytes(pickle.dumps({"G_ema": view}))
    with pytest.raises(UnsafePickleError, match="past the end") as err:
        read_checkpoint(path)
    assert_one_sentence(err.value)


def test_restricted_unpickler_rebuilds_tensors_parameters_and_numpy():
    p = torch.nn.Parameter(torch.randn(3, 2))
    p.extra = "kept out"  # makes torch use _rebuild_parameter_with_state
    data = {"p": p, "t": torch.arange(6.0)[1::2], "f64": np.float64(0.25),
            "arr": np.arange(6, dtype=np.float32).reshape(2, 3), "s": {1, 2}}
    for protocol in (2, 3, 4, 5):
        out = restricted_load(io.BytesIO(pickle.dumps(data, protocol=protocol)))
        assert torch.equal(out["p"], p.detach()) and not hasattr(out["p"], "extra")
        assert torch.equal(out["t"], torch.tensor([1.0, 3.0, 5.0]))
        assert out["f64"] == 0.25 and out["s"] == {1, 2}
        assert np.array_equal(np.asarray(out["arr"]), data["arr"])


def test_malicious_object_inside_an_nvlabs_network(tiny_generator, tmp_path, nvlabs_modules):
    marker = tmp_path / "pwned"
    G = tiny_generator()
    tree = nvlabs_tree(G, nvlabs_modules)
    tree.state["_modules"]["mapping"].state["num_layers"] = Evil(os.system, f"touch {marker}")
    (tmp_path / "g.pkl").write_bytes(pickle.dumps({"G_ema": tree}, protocol=3))
    with pytest.raises(UnsafePickleError):
        read_checkpoint(tmp_path / "g.pkl")
    assert not marker.exists() and not nvlabs_modules.marker.exists()


def test_malicious_torch_files_are_refused(tmp_path):
    marker = tmp_path / "pwned"
    for i, obj in enumerate([
        {"g_ema": Evil(os.system, f"touch {marker}")},
        {"g_ema": {}, "args": argparse.Namespace(hook=Evil(os.system, f"touch {marker}"))},
    ]):
        path = tmp_path / f"evil{i}.pt"
        torch.save(obj, path)
        with pytest.raises(UnsafePickleError) as err:
            read_checkpoint(path)
        assert err.value.global_name == os.system.__module__ + ".system"
        assert_one_sentence(err.value)
    assert not marker.exists()


# ----------------------------------------------------------------------------------------
# Broken files.


def test_broken_files_give_one_sentence(tiny_generator, tmp_path, nvlabs_modules):
    G = tiny_generator()
    good = {"pkl": tmp_path / "g.pkl", "pt": tmp_path / "g.pt", "st": tmp_path / "g.safetensors"}
    write_nvlabs_pickle(good["pkl"], G, nvlabs_modules)
    torch.save({"g_ema": to_rosinality(G), "latent_avg": G.mapping.w_avg}, good["pt"])
    save_generator(G, good["st"], source=None)
    cases = {"empty": b"", "random": np.random.RandomState(0).bytes(4096),
             "text": b"<html>404 Not Found</html>"}
    for key, path in good.items():
        raw = path.read_bytes()
        cases[f"truncated {key}"] = raw[: len(raw) // 2]
        cases[f"head of {key}"] = raw[:20]
    for name, raw in cases.items():
        path = tmp_path / "broken.safetensors"
        path.write_bytes(raw)
        sidecar_path(path).unlink(missing_ok=True)
        with pytest.raises(CheckpointError) as err:
            read_checkpoint(path)
        assert_one_sentence(err.value)
        assert not isinstance(err.value, UnsafePickleError), name
    for path in (tmp_path / "missing.pkl", tmp_path):
        with pytest.raises(CheckpointError) as err:
            read_checkpoint(path)
        assert_one_sentence(err.value)
    assert issubclass(CheckpointError, StudioError)


def test_not_a_generator_pickle(tmp_path):
    path = tmp_path / "x.pkl"
    path.write_bytes(pickle.dumps({"hello": [1, 2, 3]}))
    with pytest.raises(CheckpointError) as err:
        read_checkpoint(path)
    assert_one_sentence(err.value)


def test_uninitialised_build_draws_nothing_and_loads_every_tensor(tiny_generator, tmp_path):
    """build_generator skips the random init (every tensor is loaded next): it must leave the
    global RNG as it was and still render the saved model exactly, for both families."""
    from engine.gan import networks
    from tests.conftest import make_tiny_stylegan3

    for G in (tiny_generator(seed=13), make_tiny_stylegan3("stylegan3-t", seed=2)):
        state = torch.random.get_rng_state()
        bare = networks.build(G.cfg, initialise=False)
        assert torch.equal(torch.random.get_rng_state(), state)
        assert {k: v.shape for k, v in bare.state_dict().items()} == {
            k: v.shape for k, v in G.state_dict().items()}
        path = tmp_path / f"{type(G).__module__}.safetensors"
        save_generator(G, path)
        torch.manual_seed(0)
        drawn = torch.randn(4)
        torch.manual_seed(0)
        G2 = load_generator(path)
        assert torch.equal(torch.randn(4), drawn)  # loading consumed no random numbers
        z = torch.randn(2, G.cfg.z_dim, generator=torch.Generator().manual_seed(3))
        with torch.no_grad():
            assert torch.equal(G2(z), G.eval()(z))


def test_uninitialised_build_leaves_other_threads_random():
    """The studio loads models in worker threads: the skipped init must stay in its own."""
    import threading

    from engine.gan.networks import _UninitialisedRandom

    inside, drawn = threading.Event(), {}

    def other() -> None:
        inside.wait(5)
        drawn["x"] = torch.randn(64, generator=torch.Generator().manual_seed(1))

    worker = threading.Thread(target=other)
    worker.start()
    with _UninitialisedRandom():
        inside.set()
        worker.join(5)
    assert torch.equal(drawn["x"], torch.randn(64, generator=torch.Generator().manual_seed(1)))
