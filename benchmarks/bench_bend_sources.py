"""Our bending operations beside the libraries the two sources ran on, on random activations.

The test suite compares against numpy re-derivations (tests/test_bend_sources.py); this
script compares against the real libraries, which the project does not depend on:
* the seed's operations against TensorFlow + tensorflow-addons. TensorFlow wants numpy < 2,
  so it runs in its own interpreter (--tf-python, e.g. a venv with tensorflow-cpu==2.15.1
  and tensorflow-addons==0.23.0, whose image ops match the seed's tfa 0.13) and hands its
  outputs back through an .npz file;
* Broad's operations against OpenCV (cv2 importable here, e.g. opencv-python-headless; his
  ops were built against OpenCV 4, whose warpAffine samples at 1/32 pixel: sampling
  'opencv'. OpenCV 5 samples at exact positions: compare the 'exact' column there).
Prints max |ours - library| per operation (float32 maps, 16 x 16, 12 channels).

    python benchmarks/bench_bend_sources.py --tf-python /tmp/tfenv/bin/python
"""

from __future__ import annotations

import argparse
import math
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.recipes.bend_import import import_broad_yaml  # noqa: E402
from engine.tools.bending import OPERATIONS, apply_operation, resolve_params  # noqa: E402

# Runs under the TensorFlow interpreter: each seed Block operation on the transposed maps.
TF_SCRIPT = r'''
import sys, numpy as np, tensorflow as tf, tensorflow_addons as tfa
x = np.load(sys.argv[1])["x"]
t = tf.transpose(tf.constant(x), [1, 2, 3, 0])
back = lambda r: tf.transpose(r, [3, 0, 1, 2]).numpy()
size = x.shape[-1]
out = {}
for s in (-3, 0, 5):
    new = int(size + s)
    out[f"scale {s}"] = back(tf.image.resize_with_crop_or_pad(
        tf.image.resize(t, [new, new], method="gaussian"), size, size))
for dx, dy in ((7, -9), (2.3, -1.6)):
    out[f"translate {dx},{dy}"] = back(tfa.image.translate(
        t, [dx, dy], interpolation="nearest", fill_mode="reflect"))
for a in (0.3, 1.1, 2.0):
    out[f"rotate {a}"] = back(tfa.image.rotate(t, tf.constant(a), fill_mode="reflect"))
for k in (3, 5):
    out[f"mean_filter {k}"] = back(tfa.image.mean_filter2d(t, filter_shape=(k, k)))
for f in (0.5, 5.0):
    out[f"sharpen {f}"] = back(tfa.image.sharpness(t * 40, tf.constant(f, dtype=tf.float32)))
z = tf.zeros((3, 3, 1))
kw = dict(strides=(1, 1, 1, 1), padding="SAME", data_format="NHWC", dilations=(1, 1, 1, 1))
out["erosion"] = back(tf.nn.erosion2d(t, filters=z, **kw))
out["dilation"] = back(tf.nn.dilation2d(t, filters=z, **kw))
full = tfa.image.rotate(t, tf.constant(np.pi), fill_mode="reflect")
h = int(t.shape[1] / 2)
out["mirrorY"] = back(tf.concat([t[:, :h], full[:, h:]], axis=1))
out["mirrorX"] = back(tf.concat([t[:h], full[h:]], axis=0))
out["brightness 0.7"] = tf.image.adjust_brightness(tf.constant(x), delta=0.7).numpy()
np.savez(sys.argv[2], **out)
print(f"TensorFlow {tf.__version__}, tensorflow-addons {tfa.__version__}")
'''


def ours(name: str, x: np.ndarray, selected: list[int] | None = None, **params) -> np.ndarray:
    op = OPERATIONS[name]
    sel = torch.tensor(selected) if selected is not None else None
    return apply_operation(op, torch.from_numpy(x), resolve_params(op, params), sel).numpy()


def seed_ours(x: np.ndarray) -> dict[str, np.ndarray]:
    size = x.shape[-1]
    out = {f"scale {s}": ours("resize_pad", x, pixels=s) for s in (-3, 0, 5)}
    for dx, dy in ((7, -9), (2.3, -1.6)):
        out[f"translate {dx},{dy}"] = ours("translate", x, x_shift=dx / size,
                                           y_shift=dy / size, fill="reflect",
                                           interpolation="nearest")
    for a in (0.3, 1.1, 2.0):
        out[f"rotate {a}"] = ours("rotate", x, angle=math.degrees(a), fill="reflect",
                                  interpolation="nearest")
    for k in (3, 5):
        out[f"mean_filter {k}"] = ours("mean_filter", x, kernel=k, border="reflect")
    for f in (0.5, 5.0):
        out[f"sharpen {f}"] = ours("sharpness", x * 40, factor=f, uint8_clip=True)
    out["erosion"] = ours("erode", x, kernel=3)
    out["dilation"] = ours("dilate", x, kernel=3)
    out["mirrorY"] = ours("half_turn", x, keep="top")
    out["mirrorX"] = ours("half_turn", x, keep="low_channels")
    out["brightness 0.7"] = ours("add", x, amount=0.7)
    return out


def seed_vs_tensorflow(x: np.ndarray, tf_python: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        src, dst = Path(tmp) / "in.npz", Path(tmp) / "out.npz"
        np.savez(src, x=x)
        run = subprocess.run([tf_python, "-c", TF_SCRIPT, str(src), str(dst)],
                             capture_output=True, text=True,
                             env={"TF_CPP_MIN_LOG_LEVEL": "3", "OMP_NUM_THREADS": "1"})
        if run.returncode != 0:
            print("TensorFlow run failed:\n" + run.stderr[-2000:])
            return
        print("seed vs " + run.stdout.strip().splitlines()[-1])
        theirs = dict(np.load(dst))
    for name, got in seed_ours(x).items():
        print(f"  {name:18s} max |ours - tf| = {np.abs(got - theirs[name]).max():.1e}")


def broad_vs_opencv(x: np.ndarray) -> None:
    import cv2

    print(f"Broad vs OpenCV {cv2.__version__}")
    size = x.shape[-1]
    sel = [1, 2, 6, 10]

    def theirs(fn) -> np.ndarray:
        out = x.copy()
        for n in range(x.shape[0]):
            for c in sel:
                out[n, c] = fn(np.ascontiguousarray(x[n, c]))
        return out

    centre = (size / 2.0, size / 2.0)   # Broad: (image.size(0) / 2, image.size(1) / 2)
    warps = [("translate", [0.13, 0.31], np.float32([[1, 0, 0.13 * size], [0, 1, 0.31 * size]])),
             ("rotate", [10.0], cv2.getRotationMatrix2D(centre, 10.0, 1)),
             ("rotate", [45.0], cv2.getRotationMatrix2D(centre, 45.0, 1)),
             ("scale", [1.2], cv2.getRotationMatrix2D(centre, 0, 1.2))]
    cases = [(name, params, lambda m, mat=mat: cv2.warpAffine(m, mat, (size, size)))
             for name, params, mat in warps]
    for r in (1, 2, 3):
        el = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1), (r, r))
        cases += [("erode", [r], lambda m, el=el: cv2.erode(m, el)),
                  ("dilate", [r], lambda m, el=el: cv2.dilate(m, el))]
    for name, params, fn in cases:
        bends, _ = import_broad_yaml({"transforms": [{"layer": 4, "transform": name,
                                                      "params": params}]})
        want = theirs(fn)
        got = ours(bends[0].op, x, sel, **bends[0].params)
        line = f"  {name} {params}: max |ours - cv2| = {np.abs(got - want).max():.1e}"
        if "sampling" in bends[0].params:   # also at exact positions (OpenCV 5 samples so)
            exact = ours(bends[0].op, x, sel, **{**bends[0].params, "sampling": "exact"})
            line += f"; sampling 'exact': {np.abs(exact - want).max():.1e}"
        print(line)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tf-python", help="interpreter with tensorflow and tensorflow-addons")
    ap.add_argument("--seed", type=int, default=3)
    args = ap.parse_args()
    rng = np.random.default_rng(args.seed)
    x = rng.normal(size=(1, 12, 16, 16))
    x = (np.where(x > 0, x, 0.2 * x) * 1.4).astype(np.float32)   # leaky-ReLU-like maps
    print(f"maps: {x.shape}, mean |x| {np.abs(x).mean():.2f}")
    if args.tf_python:
        seed_vs_tensorflow(x, args.tf_python)
    try:
        broad_vs_opencv(x)
    except ImportError:
        print("Broad vs OpenCV: cv2 is not installed; skipped")


if __name__ == "__main__":
    main()
