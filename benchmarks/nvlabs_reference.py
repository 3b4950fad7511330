"""Write tests/data/nvlabs/: tiny random generators built and run by NVlabs' own code.

    python benchmarks/nvlabs_reference.py --sg2ada /path/to/stylegan2-ada-pytorch \
        --sg3 /path/to/stylegan3 --out tests/data/nvlabs

NVlabs' repositories are not part of this project: pass checkouts of them (their custom ops
fall back to their reference implementations on the CPU, so no compiler is needed; the
stylegan3 checkout needs `pkg_resources`, or its two `parse_version` imports pointed at
`packaging.version`). For each configuration in CONFIGS this writes, numbers only:

- `<name>.safetensors`: the generator's parameters and buffers under NVlabs' state-dict names,
  with metadata `pickle_tree` (JSON): what NVlabs' persistence pickles for each module (class
  name and attribute state, tensors replaced by their names), minus `module_src`, so a test
  can rebuild the pickle's structure without any NVlabs code;
- `<name>.npz`: z, and for each setting the ws and images NVlabs' generator gives for them.

Weights are random (seeded), including what NVlabs initialises to constants (biases, noise
strengths, w_avg, magnitude EMAs), so a tensor that is lost or misread changes the images.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch

# name: (repo, module, class kwargs); small channel counts keep the files tiny.
CONFIGS = {
    # stylegan2-ada-pytorch nests the synthesis kwargs.
    "sg2ada_32_skip": ("sg2ada", "training.networks", dict(
        z_dim=32, c_dim=0, w_dim=32, img_resolution=32, img_channels=3,
        mapping_kwargs=dict(num_layers=2),
        synthesis_kwargs=dict(channel_base=1024, channel_max=32, architecture="skip",
                              conv_clamp=256, num_fp16_res=0))),
    "sg2ada_64_resnet": ("sg2ada", "training.networks", dict(
        z_dim=16, c_dim=0, w_dim=16, img_resolution=64, img_channels=3,
        mapping_kwargs=dict(num_layers=3),
        synthesis_kwargs=dict(channel_base=512, channel_max=16, architecture="resnet",
                              conv_clamp=None, num_fp16_res=0))),
    # The stylegan3 repository's StyleGAN2 passes the synthesis kwargs flat. Every block is
    # capped at channel_max, so shapes alone cannot tell channel_base: the kwargs must.
    "sg2_flat_32_orig": ("sg3", "training.networks_stylegan2", dict(
        z_dim=16, c_dim=0, w_dim=16, img_resolution=32, img_channels=3,
        mapping_kwargs=dict(num_layers=2), channel_base=2048, channel_max=16,
        architecture="orig", conv_clamp=256, num_fp16_res=0)),
    "sg3t_16": ("sg3", "training.networks_stylegan3", dict(
        z_dim=16, c_dim=0, w_dim=16, img_resolution=16, img_channels=3,
        mapping_kwargs=dict(num_layers=2), channel_base=512, channel_max=16, num_layers=6,
        num_critical=2, margin_size=4, conv_clamp=256, num_fp16_res=0)),
    "sg3r_16": ("sg3", "training.networks_stylegan3", dict(
        z_dim=16, c_dim=0, w_dim=16, img_resolution=16, img_channels=3,
        mapping_kwargs=dict(num_layers=2), channel_base=1024, channel_max=32, num_layers=6,
        num_critical=2, margin_size=4, conv_clamp=256, num_fp16_res=0, conv_kernel=1,
        use_radial_filters=True)),
}
SAMPLES = 2
PSI_LOW = 0.5


def randomise(G: torch.nn.Module, seed: int) -> None:
    """Random values for every tensor, including those NVlabs initialises to constants."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in G.named_parameters():
            if name.endswith("noise_strength"):
                p.copy_(torch.rand(p.shape, generator=gen) * 0.4 + 0.1)
            elif name.endswith(".bias"):
                mean = 1.0 if ".affine." in name else 0.0
                p.copy_(torch.randn(p.shape, generator=gen) * 0.2 + mean)
        for name, b in G.named_buffers():
            if name.endswith("w_avg"):
                b.copy_(torch.randn(b.shape, generator=gen))
            elif name.endswith("magnitude_ema"):
                b.copy_(torch.rand(b.shape, generator=gen) * 1.5 + 0.5)


def encode(value, tensor_names: dict[int, str], path: str):
    """A persistence state value as JSON, tagged so a test can rebuild the same objects."""
    if isinstance(value, torch.Tensor):
        return {"__tensor__": tensor_names[id(value)]}
    if isinstance(value, torch.nn.Module):
        return {"__persistent__": module_tree(value, tensor_names, path)}
    if type(value).__name__ == "EasyDict":
        return {"__easydict__": {k: encode(v, tensor_names, path) for k, v in value.items()}}
    if isinstance(value, OrderedDict):
        return {"__odict__": [[k, encode(v, tensor_names, f"{path}{k}.")]
                              for k, v in value.items()]}
    if isinstance(value, dict):
        return {"__dict__": [[k, encode(v, tensor_names, path)] for k, v in value.items()]}
    if isinstance(value, set):
        return {"__set__": sorted(value)}
    if isinstance(value, tuple):
        return {"__tuple__": [encode(v, tensor_names, path) for v in value]}
    if isinstance(value, list):
        return [encode(v, tensor_names, path) for v in value]
    if isinstance(value, np.ndarray):
        return {"__ndarray__": value.tolist(), "dtype": str(value.dtype),
                "shape": list(value.shape)}
    if isinstance(value, np.generic):
        return {"__npscalar__": value.item(), "dtype": str(value.dtype)}
    if value is None or isinstance(value, bool | int | float | str):
        return value
    raise TypeError(f"{path}: cannot encode {type(value)}")


def module_tree(m: torch.nn.Module, tensor_names: dict[int, str], prefix: str = "") -> dict:
    """What persistence pickles for m: (class name, state), recursively."""
    _, (meta,) = m.__reduce__()[:2]
    state = {}
    for key, value in meta["state"].items():
        if key == "_modules":
            state[key] = {"__odict__": [[k, {"__persistent__": module_tree(
                v, tensor_names, f"{prefix}{k}.")}] for k, v in value.items()]}
        else:
            state[key] = encode(value, tensor_names, prefix)
    return {"class_name": meta["class_name"], "state": state}


def render(G: torch.nn.Module, z: torch.Tensor, psi: float, noise_mode: str):
    with torch.no_grad():
        ws = G.mapping(z, None, truncation_psi=psi)
        img = G.synthesis(ws, noise_mode=noise_mode)
    return ws.numpy(), img.numpy()


def write_config(name: str, repo: str, module: str, kwargs: dict, out: Path,
                 commit: str, seed: int) -> None:
    import importlib

    from safetensors.torch import save_file

    networks = importlib.import_module(module)
    easy_dict = importlib.import_module("dnnlib").EasyDict
    # As their train.py does: nested kwargs are EasyDicts, the top level is unpacked.
    kwargs = {k: easy_dict(v) if isinstance(v, dict) else v for k, v in kwargs.items()}
    torch.manual_seed(seed)
    G = networks.Generator(**kwargs).eval().requires_grad_(False)
    randomise(G, seed)
    tensors = dict(G.named_parameters()) | dict(G.named_buffers())
    tensor_names = {id(t): n for n, t in tensors.items()}
    tree = module_tree(G, tensor_names)
    meta = {"nvlabs_repo": {"sg2ada": "NVlabs/stylegan2-ada-pytorch",
                            "sg3": "NVlabs/stylegan3"}[repo],
            "nvlabs_commit": commit, "module": module, "seed": str(seed),
            "pickle_tree": json.dumps(tree)}
    save_file({n: t.detach().contiguous().clone() for n, t in tensors.items()},
              str(out / f"{name}.safetensors"), metadata=meta)
    z = torch.from_numpy(np.random.RandomState(seed).randn(SAMPLES, G.z_dim)).float()
    arrays = {"z": z.numpy()}
    settings = [("psi1_const", 1.0, "const"), ("psilow_const", PSI_LOW, "const")]
    if "stylegan3" not in module:
        settings.append(("psi1_none", 1.0, "none"))
    for key, psi, noise_mode in settings:
        arrays[f"ws_{key}"], arrays[f"img_{key}"] = render(G, z, psi, noise_mode)
    arrays["psi_low"] = np.float32(PSI_LOW)
    np.savez(out / f"{name}.npz", **arrays)
    print(f"{name}: {sum(t.numel() for t in tensors.values())} numbers, "
          f"{sorted(arrays)}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sg2ada", required=True, help="a stylegan2-ada-pytorch checkout")
    ap.add_argument("--sg3", required=True, help="a stylegan3 checkout")
    ap.add_argument("--out", default="tests/data/nvlabs")
    ap.add_argument("--commit-sg2ada", default=None, help="commit of the checkout (else git)")
    ap.add_argument("--commit-sg3", default=None)
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    repos = {"sg2ada": (args.sg2ada, args.commit_sg2ada), "sg3": (args.sg3, args.commit_sg3)}
    for seed, (name, (repo, module, kwargs)) in enumerate(CONFIGS.items()):
        path, commit = repos[repo]
        if commit is None:
            commit = subprocess.run(["git", "-C", path, "rev-parse", "HEAD"],
                                    capture_output=True, text=True, check=True).stdout.strip()
        # Each repository has its own `training` and `torch_utils`: import afresh.
        for mod in [m for m in sys.modules if m.split(".")[0] in
                    ("training", "torch_utils", "dnnlib")]:
            del sys.modules[mod]
        sys.path.insert(0, str(Path(path).resolve()))
        try:
            write_config(name, repo, module, kwargs, out, commit, seed)
        finally:
            sys.path.pop(0)


if __name__ == "__main__":
    main()
