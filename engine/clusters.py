"""Feature-map clustering: group a layer's channels by where in the image they fire.

For one layer we render N seeded latents, capture the layer's activations [N, C, H, W] and
describe every channel by its spatial pattern across those samples (per-channel normalised,
average-pooled to at most 8x8, concatenated over samples, PCA-reduced). KMeans on those
descriptors puts channels that light up on the same parts of the image (eyes, hair,
background) into one cluster, which the bending tools then address as a unit.

Results are cached in memory and on disk as JSON, keyed by everything that fixes them
(model sha256, layer, k, samples, seed, method, psi), so a repeat is instant.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from engine.errors import StudioError

FeatureExtractor = Callable[[torch.Tensor], torch.Tensor]  # acts [N, C, H, W] -> [C, D]
Progress = Callable[..., Any]                              # progress(fraction, message)

POOL_SIZE = 8            # spatial patterns are average-pooled to at most this many pixels a side
PCA_DIMS = 64            # descriptors are PCA-reduced to at most this many dimensions
KMEANS_N_INIT = 4        # KMeans restarts; more buys little on a few hundred channels
RENDER_BATCH = 16        # latents rendered per forward pass
MEMORY_CACHE_SIZE = 64   # results kept in memory (LRU)
CACHE_VERSION = 1        # bump when the descriptor changes so old cache files are ignored
METHODS = ("spatial", "spatial-raw")  # built-in descriptors: with / without PCA


class ClusteringCancelled(StudioError):
    """The user cancelled a clustering run."""


@dataclass
class ClusterResult:
    """The clustering of one layer's channels."""
    layer: str                    # e.g. 'b16.conv1'
    k: int                        # number of clusters
    labels: list[int]             # cluster id of every channel, length C
    sizes: list[int]              # channels per cluster, length k
    inertia: list[float]          # per-cluster sum of squared distances to its centre
    order: list[int]              # all channels grouped by cluster, nearest-to-centre first
    method: str = "spatial"       # descriptor used
    samples: int = 128            # latents rendered
    seed: int = 0                 # latent and KMeans seed
    psi: float = 0.7              # truncation of the rendered latents
    model_key: str | None = None  # sha256 of the model weights
    meta: dict[str, Any] = field(default_factory=dict)  # free-form (e.g. silhouette)

    @property
    def num_channels(self) -> int:
        return len(self.labels)

    def channels(self, cluster_id: int) -> list[int]:
        """Channel indices of one cluster, nearest to the cluster centre first."""
        if not 0 <= cluster_id < self.k:
            raise StudioError(f"cluster {cluster_id} does not exist on {self.layer}; "
                              f"choose a cluster from 0 to {self.k - 1}.")
        return [c for c in self.order if self.labels[c] == cluster_id]

    def labels_array(self) -> np.ndarray:
        return np.asarray(self.labels, dtype=np.int64)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ClusterResult:
        names = cls.__dataclass_fields__.keys()
        return cls(**{k: v for k, v in d.items() if k in names})


# ----------------------------------------------------------------------------------------
# Caches.

_memory: OrderedDict[str, ClusterResult] = OrderedDict()
_memory_lock = threading.Lock()


def default_cache_dir() -> Path:
    """~/.cache/activation-studio/clusters, or $ACTIVATION_STUDIO_CACHE/clusters."""
    root = os.environ.get("ACTIVATION_STUDIO_CACHE")
    base = Path(root) if root else Path.home() / ".cache" / "activation-studio"
    return base / "clusters"


def model_key_of(G: torch.nn.Module) -> str:
    """The model's sha256 when its loader recorded one, else a hash of its weights."""
    for attr in ("sha256", "model_key"):
        key = getattr(G, attr, None)
        if isinstance(key, str) and key:
            return key
    h = hashlib.sha256()
    for name, t in sorted(G.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return "weights-" + h.hexdigest()


def _cache_key(model_key: str, layer: str, k: int, samples: int, seed: int, method: str,
               psi: float) -> str:
    text = json.dumps([CACHE_VERSION, model_key, layer, k, samples, seed, method,
                       round(float(psi), 6)])
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def _remember(key: str, result: ClusterResult) -> None:
    with _memory_lock:
        _memory[key] = result
        _memory.move_to_end(key)
        while len(_memory) > MEMORY_CACHE_SIZE:
            _memory.popitem(last=False)


def _recall(key: str) -> ClusterResult | None:
    with _memory_lock:
        result = _memory.get(key)
        if result is not None:
            _memory.move_to_end(key)
        return result


def clear_memory_cache() -> None:
    """Forget in-memory results (disk files stay)."""
    with _memory_lock:
        _memory.clear()


def _write_json_atomic(path: Path, data: Any) -> None:
    """Write to a temp file in the same folder and rename, so readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _read_cached(path: Path) -> ClusterResult | None:
    try:
        return ClusterResult.from_dict(json.loads(path.read_text()))
    except (OSError, ValueError, TypeError):
        return None  # missing or corrupt: recompute


# ----------------------------------------------------------------------------------------
# Capturing activations.


class _StopForward(Exception):
    """Raised from a tap to end the forward pass once the wanted layer is computed."""


def _check_layer(G: torch.nn.Module, layer: str) -> tuple[int, int, int]:
    shapes = G.layer_shapes()
    if layer not in shapes or layer.endswith("torgb"):
        convs = [n for n in shapes if not n.endswith("torgb")]
        raise StudioError(f"layer {layer!r} cannot be clustered; choose one of "
                          f"{', '.join(convs)}.")
    return shapes[layer]


def _is_cancelled(cancel: Any) -> bool:
    if cancel is None:
        return False
    if hasattr(cancel, "is_set"):
        return bool(cancel.is_set())
    return bool(cancel())


def sample_ws(G: torch.nn.Module, samples: int, seed: int, psi: float) -> torch.Tensor:
    """The N seeded latents clustering renders: ws [N, num_ws, w_dim] on G's device."""
    z = np.random.RandomState(seed).randn(samples, G.cfg.z_dim)
    z = torch.from_numpy(z).to(torch.float32).to(G.device)
    with torch.no_grad():
        ws = torch.cat([G.mapping(z[i:i + RENDER_BATCH], psi=psi)
                        for i in range(0, samples, RENDER_BATCH)])
    return ws


def capture_layer(G: torch.nn.Module, ws: torch.Tensor, layer: str,
                  reduce: Callable[[torch.Tensor], torch.Tensor] | None = None,
                  progress: Progress | None = None, cancel: Any = None,
                  batch: int = RENDER_BATCH) -> torch.Tensor:
    """Activations of `layer` for ws, batch by batch; the pass stops at that layer.

    `reduce` maps each batch's [n, C, H, W] to something smaller before batches are joined
    (pooling), so a large N never holds the full-resolution activations at once.
    """
    out = []
    n = ws.shape[0]
    holder: dict[str, torch.Tensor] = {}

    def grab(y: torch.Tensor) -> torch.Tensor:
        holder["y"] = y
        raise _StopForward  # nothing after this layer is needed

    with torch.no_grad():
        for i in range(0, n, batch):
            if _is_cancelled(cancel):
                raise ClusteringCancelled("clustering was cancelled.")
            try:
                G.synthesis(ws[i:i + batch], noise_mode="const", taps={layer: grab})
            except _StopForward:
                pass
            y = holder.pop("y").float()
            out.append(reduce(y) if reduce is not None else y)
            if progress is not None:
                progress(0.8 * min(i + batch, n) / n, f"rendering {min(i + batch, n)}/{n}")
    return torch.cat(out)


# ----------------------------------------------------------------------------------------
# Descriptors and KMeans.


def pooled_patterns(acts: torch.Tensor, pool: int = POOL_SIZE) -> torch.Tensor:
    """[N, C, H, W] -> [N, C, h, w] with h, w <= pool (adaptive average pooling)."""
    h = min(pool, acts.shape[2])
    w = min(pool, acts.shape[3])
    if (h, w) == tuple(acts.shape[2:]):
        return acts
    return F.adaptive_avg_pool2d(acts, (h, w))


def spatial_descriptor(pooled: torch.Tensor) -> torch.Tensor:
    """Pooled activations [N, C, h, w] -> per-channel descriptors [C, N*h*w].

    Each channel is centred and scaled to unit norm over all samples and positions, so the
    clustering sees where a channel fires, not how strongly: two channels with the same
    spatial footprint at different gains land together.
    """
    n, c, h, w = pooled.shape
    d = pooled.permute(1, 0, 2, 3).reshape(c, n * h * w).double()
    d = d - d.mean(dim=1, keepdim=True)
    norm = d.norm(dim=1, keepdim=True)
    # A dead (constant) channel has no pattern; leave it at the origin instead of dividing by 0.
    d = torch.where(norm > 1e-12, d / norm.clamp_min(1e-12), torch.zeros_like(d))
    return d.float()


def _reduce_dims(x: np.ndarray, seed: int, dims: int = PCA_DIMS) -> np.ndarray:
    from sklearn.decomposition import PCA
    n_comp = min(dims, x.shape[0], x.shape[1])
    if x.shape[1] <= dims or n_comp < 2:
        return x
    return PCA(n_components=n_comp, svd_solver="randomized" if x.shape[1] > 4 * x.shape[0]
               else "full", random_state=seed).fit_transform(x)


def _kmeans(x: np.ndarray, k: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """KMeans labels and centres, with clusters renumbered by their lowest channel index.

    KMeans numbers clusters arbitrarily; renumbering makes the ids a function of the
    partition alone, so the same partition always prints the same ids.
    """
    from sklearn.cluster import KMeans
    km = KMeans(n_clusters=k, n_init=KMEANS_N_INIT, random_state=seed).fit(x)
    raw = km.labels_.astype(np.int64)
    first = {}
    for ch, lab in enumerate(raw):
        first.setdefault(int(lab), ch)
    # Empty clusters (possible when channels coincide) sort last.
    ranked = sorted(range(k), key=lambda lab: first.get(lab, len(raw) + lab))
    remap = np.empty(k, dtype=np.int64)
    remap[ranked] = np.arange(k)
    return remap[raw], km.cluster_centers_[ranked]


def _build_result(x: np.ndarray, labels: np.ndarray, centres: np.ndarray, layer: str, k: int,
                  **kw: Any) -> ClusterResult:
    dist = ((x - centres[labels]) ** 2).sum(axis=1)
    sizes = np.bincount(labels, minlength=k)
    inertia = np.bincount(labels, weights=dist, minlength=k)
    order = sorted(range(len(labels)), key=lambda c: (int(labels[c]), float(dist[c]), c))
    return ClusterResult(layer=layer, k=k, labels=[int(v) for v in labels],
                         sizes=[int(v) for v in sizes], inertia=[float(v) for v in inertia],
                         order=order, **kw)


def _descriptors(G: torch.nn.Module, layer: str, samples: int, seed: int, psi: float,
                 method: str, feature_extractor: FeatureExtractor | None,
                 progress: Progress | None, cancel: Any) -> np.ndarray:
    ws = sample_ws(G, samples, seed, psi)
    if feature_extractor is not None:
        acts = capture_layer(G, ws, layer, progress=progress, cancel=cancel)
        with torch.no_grad():
            feats = feature_extractor(acts)
        feats = torch.as_tensor(feats).detach().float().cpu()
        if feats.ndim != 2 or feats.shape[0] != acts.shape[1]:
            raise ValueError(f"the feature extractor must return [C={acts.shape[1]}, D], "
                             f"got {list(feats.shape)}")
        return feats.numpy().astype(np.float64)
    pooled = capture_layer(G, ws, layer, reduce=pooled_patterns, progress=progress,
                           cancel=cancel)
    x = spatial_descriptor(pooled).cpu().numpy().astype(np.float64)
    return _reduce_dims(x, seed) if method == "spatial" else x


def compute_clusters(G: torch.nn.Module, layer: str, k: int, samples: int = 128, seed: int = 0,
                     psi: float = 0.7, method: str = "spatial", model_key: str | None = None,
                     cache_dir: str | Path | None = None, progress: Progress | None = None,
                     cancel: Any = None, feature_extractor: FeatureExtractor | None = None
                     ) -> ClusterResult:
    """Cluster the channels of `layer` into k groups by their spatial activation patterns.

    method: 'spatial' (pooled patterns + PCA) or 'spatial-raw' (no PCA); with a
            `feature_extractor` (acts [N, C, H, W] -> [C, D]) `method` names it for the cache
            and must not be a built-in name.
    model_key: the model's sha256 (hashed from the weights when left out).
    cache_dir: where result JSON files live (default: default_cache_dir()).
    progress:  called as progress(fraction, message); cancel: Event or callable -> bool.
    """
    C, _, _ = _check_layer(G, layer)
    if feature_extractor is None and method not in METHODS:
        raise StudioError(f"unknown clustering method {method!r}; use one of "
                          f"{', '.join(METHODS)} or pass a feature extractor.")
    if feature_extractor is not None and method in METHODS:
        # Keep a custom descriptor's results apart from the built-in ones in the cache.
        method = "custom:" + getattr(feature_extractor, "__qualname__", "extractor")
    if not 2 <= k <= C:
        raise StudioError(f"k must be between 2 and {C} (the channels of {layer}), got {k}.")
    if samples < 1:
        raise StudioError(f"samples must be at least 1, got {samples}.")
    model_key = model_key or model_key_of(G)
    key = _cache_key(model_key, layer, k, samples, seed, method, psi)
    cached = _recall(key)
    if cached is not None:
        return cached
    path = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    path = path / f"{key}.json"
    cached = _read_cached(path)
    if cached is not None and cached.layer == layer and len(cached.labels) == C:
        _remember(key, cached)
        return cached

    x = _descriptors(G, layer, samples, seed, psi, method, feature_extractor, progress, cancel)
    if progress is not None:
        progress(0.85, "clustering")
    if _is_cancelled(cancel):
        raise ClusteringCancelled("clustering was cancelled.")
    labels, centres = _kmeans(x, k, seed)
    result = _build_result(x, labels, centres, layer, k, method=method, samples=samples,
                           seed=seed, psi=float(psi), model_key=model_key)
    try:
        _write_json_atomic(path, result.to_dict())
    except OSError:
        pass  # a read-only cache folder only costs the next run its speed-up
    _remember(key, result)
    if progress is not None:
        progress(1.0, "done")
    return result


def cluster_labels(G: torch.nn.Module, model_key: str, layer: str, k: int, samples: int = 128,
                   seed: int = 0) -> np.ndarray:
    """Cluster id of every channel of `layer`, int array of shape [C] (cached)."""
    return compute_clusters(G, layer, k, samples=samples, seed=seed,
                            model_key=model_key).labels_array()


def suggest_k(G: torch.nn.Module, layer: str, ks: Iterable[int] = range(4, 13),
              samples: int = 128, seed: int = 0, psi: float = 0.7,
              progress: Progress | None = None, cancel: Any = None
              ) -> tuple[int, dict[int, float]]:
    """The k with the best silhouette score over `ks`, and every k's score."""
    from sklearn.metrics import silhouette_score
    C, _, _ = _check_layer(G, layer)
    ks = [k for k in ks if 2 <= k < C]
    if not ks:
        raise StudioError(f"no usable k: {layer} has {C} channels, so k must be 2 to {C - 1}.")
    x = _descriptors(G, layer, samples, seed, psi, "spatial", None, None, cancel)
    scores = {}
    for i, k in enumerate(ks):
        if _is_cancelled(cancel):
            raise ClusteringCancelled("clustering was cancelled.")
        labels, _ = _kmeans(x, k, seed)
        scores[k] = (float(silhouette_score(x, labels)) if len(set(labels.tolist())) > 1
                     else -1.0)
        if progress is not None:
            progress((i + 1) / len(ks), f"k={k}")
    best = max(scores, key=lambda k: (scores[k], -k))
    return best, scores
