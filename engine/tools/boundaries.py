"""Boundaries from labels: InterFaceGAN's linear SVM in W, conditional boundaries, .npy files.

A user marks samples as having an attribute or not; a linear SVM on their w separates the
two groups, and the unit normal of its hyperplane is the boundary: moving a w along it
adds the attribute (Shen et al., "Interpreting the latent space of GANs for semantic face
editing", 2020). Conditional boundaries ("older, but not glasses") remove the components
along other boundaries, as InterFaceGAN's `project_boundary` does, for any number of them.
Boundary files are InterFaceGAN's: a [1, w_dim] float64 .npy of unit length, which
`engine.tools.latents.load_boundary` reads back (and refuses on a model with another w size).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from engine.base.errors import StudioError
from engine.base.files import atomic_save_npy
from engine.tools.latents import MAX_SEED, class_label, load_boundary, model_device, seed_to_z

MAX_LABELLED = 5000               # labelled samples per boundary (an SVC is O(n^2) in memory)
MAX_LABELS_FILE_BYTES = 1 << 20   # a labels CSV larger than this is refused before reading
MIN_PER_GROUP = 2                 # samples needed on each side to fit and cross-validate
DEFAULT_FOLDS = 5
SVM_METHODS = ("auto", "svc", "linear_svc")
SVC_MAX_SAMPLES = 1000            # 'auto' uses libsvm up to here, liblinear beyond (libsvm's
                                  # time grows ~n^2: 5000 noisy labels in 512-d took 217 s)
YES_WORDS = ("1", "yes", "y", "true")
NO_WORDS = ("0", "no", "n", "false")


@dataclass
class BoundaryFit:
    """A boundary learned from labels, with how well the labels support it."""
    boundary: np.ndarray            # [1, w_dim] float64, unit length; + points towards "yes"
    cv_accuracy: float              # mean accuracy on held-out folds of the SVM (unprojected)
    folds: int                      # folds used (fewer than asked when a group is small)
    train_accuracy: float           # accuracy of the SVM fitted on every labelled sample
    positives: int                  # samples marked yes
    negatives: int                  # samples marked no
    conditions: int = 0             # boundaries projected out after fitting

    def summary(self) -> str:
        cond = f", {self.conditions} condition(s) projected out" if self.conditions else ""
        return (f"{self.positives} yes / {self.negatives} no; {self.folds}-fold "
                f"cross-validated accuracy {self.cv_accuracy:.3f} (training "
                f"{self.train_accuracy:.3f}){cond}")


def _labels_array(labels: Sequence[Any], n: int) -> np.ndarray:
    arr = np.asarray(labels)
    if arr.ndim != 1 or arr.shape[0] != n:
        raise StudioError(f"Give one label per sample: {n} samples but "
                          f"{arr.size} labels.")
    if arr.dtype == bool:
        return arr.astype(np.int64)
    try:
        values = arr.astype(np.float64)
    except (TypeError, ValueError) as exc:
        raise StudioError("Labels must be yes/no (1/0, true/false).") from exc
    if not np.isin(values, (0.0, 1.0)).all():
        raise StudioError("Labels must be yes/no (1/0, true/false); other values were given.")
    return values.astype(np.int64)


def _classifier(method: str, C: float, seed: int) -> Any:
    from sklearn import svm  # lazy: scikit-learn is slow to import
    if method == "svc":  # InterFaceGAN's choice: libsvm with a linear kernel
        return svm.SVC(kernel="linear", C=C)
    return svm.LinearSVC(C=C, dual="auto", max_iter=20000, random_state=seed)


def unit_rows(boundary: np.ndarray | Sequence[float], what: str = "The boundary") -> np.ndarray:
    """A direction as [1, w_dim] float64 of unit length, or one sentence why it is not one."""
    arr = np.asarray(boundary, dtype=np.float64)
    if arr.ndim == 1:
        arr = arr[None]
    if arr.ndim != 2 or arr.shape[0] != 1:
        raise StudioError(f"{what} has shape {list(arr.shape)}; a boundary is [1, w_dim].")
    if not np.isfinite(arr).all():
        raise StudioError(f"{what} contains NaN or infinite values.")
    norm = float(np.linalg.norm(arr))
    if norm < 1e-12:
        raise StudioError(f"{what} is all zeros; it has no direction.")
    return arr / norm


def condition_boundary(primal: np.ndarray, conditions: Sequence[np.ndarray]) -> np.ndarray:
    """The primal boundary with its components along the conditions removed, unit length.

    Moving along the result changes the primal attribute while keeping every condition's
    score fixed: it is the primal normal projected onto the orthogonal complement of the
    conditions' span (InterFaceGAN's `project_boundary`, which handles one or two conditions,
    is this for those counts). Conditions need not be orthogonal to each other.
    """
    p = unit_rows(primal, "The primal boundary")
    if not conditions:
        return p
    cond = np.concatenate([unit_rows(c, f"Condition {i + 1}") for i, c in
                           enumerate(conditions)])
    if cond.shape[1] != p.shape[1]:
        raise StudioError(f"The conditions are [1, {cond.shape[1]}] but the boundary is "
                          f"[1, {p.shape[1]}]; use boundaries of the same model.")
    # Least squares gives the span's coefficients even for nearly parallel conditions.
    coef, *_ = np.linalg.lstsq(cond.T, p[0], rcond=None)
    rest = p[0] - cond.T @ coef
    norm = float(np.linalg.norm(rest))
    if norm < 1e-6:
        raise StudioError("The boundary lies in the span of its conditions, so nothing is "
                          "left once they are held fixed; drop a condition.")
    return (rest / norm)[None]


def train_boundary(ws: np.ndarray | torch.Tensor, labels: Sequence[Any], *,
                   conditions: Sequence[np.ndarray] = (), method: str = "auto",
                   folds: int = DEFAULT_FOLDS, C: float = 1.0, seed: int = 0) -> BoundaryFit:
    """Fit a linear SVM on w [N, w_dim] with yes/no labels; its unit normal is the boundary.

    method 'svc' is InterFaceGAN's SVC(kernel='linear'); 'linear_svc' (liblinear) is far
    faster on thousands of samples; 'auto' picks svc up to SVC_MAX_SAMPLES, then linear_svc.
    cv_accuracy is the mean accuracy over stratified folds (as many as `folds`, fewer when a
    group has fewer samples), measured before projecting out the conditions. The boundary
    points from the "no" samples towards the "yes" samples.
    """
    x = ws.detach().cpu().numpy() if isinstance(ws, torch.Tensor) else np.asarray(ws)
    x = np.asarray(x, dtype=np.float64)
    if x.ndim == 2 and x.shape[0] == 0:  # the page's Train button before any mark
        raise StudioError(f"Mark at least {MIN_PER_GROUP} samples yes and {MIN_PER_GROUP} "
                          f"no to train a boundary (got none).")
    if x.ndim != 2:
        raise StudioError(f"Give the samples' w as [N, w_dim]; got shape {list(x.shape)}.")
    if x.shape[0] > MAX_LABELLED:
        raise StudioError(f"{x.shape[0]} labelled samples is more than {MAX_LABELLED}; "
                          f"label fewer.")
    if not np.isfinite(x).all():
        raise StudioError("Some w contain NaN or infinite values.")
    if method not in SVM_METHODS:
        raise StudioError(f"Unknown SVM method {method!r}; use one of "
                          f"{', '.join(SVM_METHODS)}.")
    if not (math.isfinite(C) and C > 0):
        raise StudioError(f"The SVM's C must be a positive number, got {C}.")
    if folds < 2:
        raise StudioError(f"Cross-validation needs at least 2 folds, got {folds}.")
    if method == "auto":
        method = "svc" if x.shape[0] <= SVC_MAX_SAMPLES else "linear_svc"
    y = _labels_array(labels, x.shape[0])
    positives, negatives = int(y.sum()), int((1 - y).sum())
    if min(positives, negatives) < MIN_PER_GROUP:
        raise StudioError(f"Mark at least {MIN_PER_GROUP} samples yes and {MIN_PER_GROUP} "
                          f"no to train a boundary (got {positives} yes, {negatives} no).")
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    n_folds = min(int(folds), positives, negatives)
    splitter = StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    cv = cross_val_score(_classifier(method, C, seed), x, y, cv=splitter)
    clf = _classifier(method, C, seed).fit(x, y)
    normal = np.asarray(clf.coef_, dtype=np.float64).reshape(1, -1)
    if float(np.linalg.norm(normal)) < 1e-12:
        raise StudioError("The labelled samples give the SVM no direction (its normal is "
                          "zero); label more varied samples.")
    primal = unit_rows(normal)
    return BoundaryFit(boundary=condition_boundary(primal, list(conditions)),
                       cv_accuracy=float(np.mean(cv)), folds=n_folds,
                       train_accuracy=float(clf.score(x, y)), positives=positives,
                       negatives=negatives, conditions=len(conditions))


@torch.no_grad()
def seeds_to_w(G: torch.nn.Module, seeds: Sequence[float], psi: float = 1.0,
               class_index: int | None = None, batch: int = 512) -> np.ndarray:
    """w [N, w_dim] float64 of seeds as the page samples them (first w of each seed's ws)."""
    device = model_device(G)
    c = class_label(G, class_index)
    out = []
    for start in range(0, len(seeds), batch):
        z = torch.cat([seed_to_z(float(s), G.cfg.z_dim) for s in seeds[start:start + batch]])
        cs = None if c is None else c.expand(z.shape[0], -1)
        out.append(G.mapping(z.to(device), cs, psi=psi)[:, 0].double().cpu())
    return torch.cat(out).numpy() if out else np.zeros((0, G.cfg.w_dim))


def boundary_from_seeds(G: torch.nn.Module, seeds: Sequence[float], labels: Sequence[Any],
                        *, psi: float = 1.0, class_index: int | None = None,
                        **kwargs: Any) -> BoundaryFit:
    """train_boundary on the w of labelled seeds (keyword arguments pass through)."""
    if len(seeds) != len(labels):
        raise StudioError(f"Give one label per seed: {len(seeds)} seeds but {len(labels)} "
                          f"labels.")
    if len(seeds) > MAX_LABELLED:
        raise StudioError(f"{len(seeds)} labelled seeds is more than {MAX_LABELLED}; "
                          f"label fewer.")
    return train_boundary(seeds_to_w(G, seeds, psi, class_index), labels, **kwargs)


def save_boundary(path: str | os.PathLike, boundary: np.ndarray,
                  G: torch.nn.Module | None = None) -> Path:
    """Write InterFaceGAN's format: [1, w_dim] float64, unit length, atomically."""
    arr = unit_rows(boundary)
    if G is not None and arr.shape[1] != G.cfg.w_dim:
        raise StudioError(f"The boundary is [1, {arr.shape[1]}] but this model's w has "
                          f"{G.cfg.w_dim} dimensions.")
    return atomic_save_npy(path, arr)


# ----------------------------------------------------------------------------------------
# Labels files: "seed,label" rows.

LABELS_FORMAT = ("one sample per line as `seed,label`, label yes/no (also 1/0, true/false, "
                 "y/n); a header line such as `seed,label`, blank lines and lines starting "
                 "with # are skipped")


def _label_word(word: str) -> int | None:
    w = word.strip().lower()
    if w in YES_WORDS:
        return 1
    if w in NO_WORDS:
        return 0
    return None


def read_labels_csv(path: str | os.PathLike) -> tuple[list[float], list[int]]:
    """(seeds, labels 1/0) from a labels CSV; one sentence naming the line when it is wrong."""
    name = os.path.basename(os.fspath(path))
    try:
        size = os.path.getsize(path)
    except OSError as exc:
        raise StudioError(f"Labels file {name!r} was not found.") from exc
    if size > MAX_LABELS_FILE_BYTES:
        raise StudioError(f"Labels file {name!r} is {size} bytes, more than "
                          f"{MAX_LABELS_FILE_BYTES}; a labels file has {LABELS_FORMAT}.")
    try:
        text = Path(path).read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise StudioError(f"Labels file {name!r} is not readable UTF-8 text.") from exc
    return parse_labels(text, f"Labels file {name!r}")


def parse_labels(text: str, what: str = "The labels") -> tuple[list[float], list[int]]:
    """(seeds, labels 1/0) from `seed,label` lines (see LABELS_FORMAT); one sentence naming
    the line when one is wrong."""
    if len(text) > MAX_LABELS_FILE_BYTES:
        raise StudioError(f"{what}: {len(text)} characters is more than "
                          f"{MAX_LABELS_FILE_BYTES}; label fewer samples.")
    seeds: list[float] = []
    labels: list[int] = []
    first_line: dict[float, tuple[int, int]] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = [p.strip() for p in line.replace(";", ",").replace("\t", ",").split(",")]
        try:
            seed = float(parts[0])
        except ValueError:
            if not seeds:
                continue  # a header
            raise StudioError(f"{what} line {number}: {parts[0][:40]!r} is not a seed; "
                              f"the format is {LABELS_FORMAT}.") from None
        label = _label_word(parts[1]) if len(parts) == 2 else None
        if label is None:
            raise StudioError(f"{what} line {number}: expected `seed,label` with label yes "
                              f"or no, got {line[:60]!r}.")
        if not (math.isfinite(seed) and 0 <= seed <= MAX_SEED):
            raise StudioError(f"{what} line {number}: seed {parts[0][:40]} is out of range "
                              f"0..{MAX_SEED}.")
        if seed in first_line and first_line[seed][1] != label:
            raise StudioError(f"{what}: seed {seed:g} is labelled both yes and no (lines "
                              f"{first_line[seed][0]} and {number}).")
        first_line.setdefault(seed, (number, label))
        seeds.append(seed)
        labels.append(label)
        if len(seeds) > MAX_LABELLED:
            raise StudioError(f"{what}: more than {MAX_LABELLED} samples; label fewer.")
    if not seeds:
        raise StudioError(f"{what}: no samples; the format is {LABELS_FORMAT}.")
    return seeds, labels


# ----------------------------------------------------------------------------------------
# Command line: `boundary`.


def add_cli(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "boundary", help="train an InterFaceGAN boundary (linear SVM in W) from labelled seeds",
        description="Train a boundary from labelled seeds and write it as InterFaceGAN's "
                    "[1, w_dim] float64 .npy. The labels file has " + LABELS_FORMAT + ".",
        epilog="example labels.csv:  seed,label / 0,yes / 1,no / 7,yes / 12,no")
    p.add_argument("--model", default="default", help="model spec for engine.models.zoo.load")
    p.add_argument("--labels", required=True, help="CSV of seed,label rows (yes/no)")
    p.add_argument("--out", required=True, help="output boundary .npy")
    p.add_argument("--psi", type=float, default=1.0, help="truncation of the seeds' w")
    p.add_argument("--class-index", type=int, default=None, help="conditional models: class")
    p.add_argument("--condition", action="append", default=[], metavar="NPY",
                   help="a boundary to hold fixed (project out); repeat for several")
    p.add_argument("--method", choices=SVM_METHODS, default="auto",
                   help="svc: InterFaceGAN's SVC(kernel='linear'); linear_svc: liblinear, "
                        f"much faster on many samples; auto: svc up to {SVC_MAX_SAMPLES}")
    p.add_argument("--folds", type=int, default=DEFAULT_FOLDS, help="cross-validation folds")
    p.add_argument("--C", type=float, default=1.0, help="SVM regularisation (larger: less)")
    p.set_defaults(func=_cli_boundary)


def _cli_boundary(args: Any) -> None:
    from engine.tools.cli_models import load_model  # imported here: zoo pulls in the Hub client
    seeds, labels = read_labels_csv(args.labels)
    G = load_model(args.model).G
    conditions = [load_boundary(c, G) for c in args.condition]
    fit = boundary_from_seeds(G, seeds, labels, psi=args.psi, class_index=args.class_index,
                              conditions=conditions, method=args.method, folds=args.folds,
                              C=args.C)
    path = save_boundary(args.out, fit.boundary, G)
    print(f"wrote {path}: [1, {fit.boundary.shape[1]}] float64 boundary from {fit.summary()}")
