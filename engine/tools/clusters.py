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

import contextlib
import contextvars
import hashlib
import json
import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from engine.base.batching import BatchSizer, chunks, clock_for
from engine.base.errors import StudioError, cancel_requested
from engine.base.files import atomic_write, atomic_write_text
from engine.base.images import to_uint8
from engine.base.safe_yaml import load_yaml
from engine.gan import networks

FeatureExtractor = Callable[[torch.Tensor], torch.Tensor]  # acts [N, C, H, W] -> [C, D]
Progress = Callable[..., Any]                              # progress(fraction, message)

POOL_SIZE = 8            # spatial patterns are average-pooled to at most this many pixels a side
PCA_DIMS = 64            # descriptors are PCA-reduced to at most this many dimensions
KMEANS_N_INIT = 4        # KMeans restarts; more buys little on a few hundred channels
RENDER_BATCH = 16        # latents mapped per forward pass
RENDER_BATCH_MAX = 32    # the largest render batch the measured choice may try ...
RENDER_MEMORY = 1 << 28  # ... and the activation bytes (x12 for a pass's temporaries) it may use
MEMORY_CACHE_SIZE = 64   # results kept in memory (LRU)
CACHE_VERSION = 2        # bump when the descriptor changes so old cache files are ignored
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
_key_locks: dict[str, threading.Lock] = {}  # one computation per key at a time


def _after_fork_in_child() -> None:
    """Locks held by other threads at fork time (a ZeroGPU worker) would stay held here."""
    global _memory_lock
    _memory_lock = threading.Lock()
    _key_locks.clear()


os.register_at_fork(after_in_child=_after_fork_in_child)


def default_cache_dir() -> Path:
    """~/.cache/activation-studio/clusters, or $ACTIVATION_STUDIO_CACHE/clusters."""
    root = os.environ.get("ACTIVATION_STUDIO_CACHE")
    base = Path(root) if root else Path.home() / ".cache" / "activation-studio"
    return base / "clusters"


def _unwrap(model: Any) -> tuple[torch.nn.Module, str | None]:
    """(Generator, sha256 or None) from a Generator or a zoo.LoadedModel-like object."""
    if isinstance(model, torch.nn.Module):
        return model, None
    G = getattr(model, "G", None)
    if isinstance(G, torch.nn.Module):
        return G, getattr(model, "sha256", None)
    raise TypeError(f"expected a Generator or a loaded model, got {type(model).__name__}")


def model_key_of(G: torch.nn.Module) -> str:
    """The model's sha256 when its loader recorded one, else a hash of its weights."""
    for attr in ("sha256", "model_key"):
        key = getattr(G, attr, None)
        if isinstance(key, str) and key:
            return key
    return "weights-" + networks.weights_sha256(G)


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


# A server refuses to compute a clustering where it must answer at once (a render); there a
# clustering is only read from the cache, and computed as a long job elsewhere.
_ONLY_CACHED: contextvars.ContextVar[bool] = contextvars.ContextVar("clusters_only_cached",
                                                                    default=False)


class ClusteringNotCached(StudioError):
    """A clustering was asked for where only cached ones may be used (see only_cached)."""


@contextlib.contextmanager
def only_cached() -> Iterator[None]:
    """Inside: compute_clusters returns cached results only and refuses, in one sentence,
    a clustering it would have to compute (seconds to hours, by its samples and model)."""
    token = _ONLY_CACHED.set(True)
    try:
        yield
    finally:
        _ONLY_CACHED.reset(token)


def clear_memory_cache() -> None:
    """Forget in-memory results (disk files stay)."""
    with _memory_lock:
        _memory.clear()


def _write_json_atomic(path: Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data))


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
    if layer not in shapes or networks.is_rgb_layer(G, layer):
        convs = networks.conv_layers(G)
        raise StudioError(f"layer {layer!r} cannot be clustered; choose one of "
                          f"{', '.join(convs)}.")
    return shapes[layer]


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
                  batch: int | None = None) -> torch.Tensor:
    """Activations of `layer` for ws, batch by batch; the pass stops at that layer.

    `reduce` maps each batch's [n, C, H, W] to something smaller before batches are joined
    (pooling), so a large N never holds the full-resolution activations at once. `batch`
    None picks the batch size by timing the first batches (engine.base.batching), up to what
    RENDER_MEMORY allows for this layer.
    """
    out = []
    n = ws.shape[0]
    holder: dict[str, torch.Tensor] = {}
    try:
        c, h, w = G.layer_shapes()[layer]
        largest = max(1, min(RENDER_BATCH_MAX, RENDER_MEMORY // (12 * c * h * w)))
    except (AttributeError, KeyError):  # a generator without a shape table
        largest = RENDER_BATCH
    sizer = BatchSizer(largest=largest, fixed=batch, clock=clock_for(ws.device))

    def grab(y: torch.Tensor) -> torch.Tensor:
        holder["y"] = y
        raise _StopForward  # nothing after this layer is needed

    def render(start: int, stop: int) -> None:
        if cancel_requested(cancel):
            raise ClusteringCancelled("clustering was cancelled.")
        try:
            G.synthesis(ws[start:stop], noise_mode="const", taps={layer: grab})
        except _StopForward:
            pass
        y = holder.pop("y").float()
        out.append(reduce(y) if reduce is not None else y)
        if out[-1].is_cuda:
            torch.cuda.synchronize()  # so the batch sizer times the work, not its launch
        if progress is not None:
            progress(0.8 * stop / n, f"rendering {stop}/{n}")

    with torch.no_grad():
        chunks(n, sizer, render)
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
    d = pooled.permute(1, 0, 2, 3).reshape(c, n * h * w).float()
    d = d - d.mean(dim=1, keepdim=True)
    norm = d.norm(dim=1, keepdim=True)
    # A dead (constant) channel has no pattern; leave it at the origin instead of dividing by 0.
    return torch.where(norm > 1e-6, d / norm.clamp_min(1e-6), torch.zeros_like(d))


def _reduce_dims(x: np.ndarray | torch.Tensor, dims: int = PCA_DIMS) -> np.ndarray:
    """PCA scores of the rows of x [C, D] on its top `dims` components.

    Descriptors have far more dimensions than there are channels (D = N*h*w, e.g. 8192 vs
    512), so we diagonalise the C x C Gram matrix of the centred rows instead of a D x D
    covariance: the same scores, exact and deterministic, in a fraction of sklearn's time.
    """
    c, d = x.shape
    n_comp = min(dims, c - 1, d)
    if d <= dims or n_comp < 2:
        return np.asarray(x, dtype=np.float64)
    t = x.float() if torch.is_tensor(x) else torch.from_numpy(np.asarray(x, np.float32))
    t = t - t.mean(dim=0, keepdim=True)
    gram = (t @ t.t()).double()
    evals, evecs = torch.linalg.eigh(gram)                  # ascending
    evals, evecs = evals.flip(0)[:n_comp], evecs.flip(1)[:, :n_comp]
    scores = evecs * evals.clamp_min(0).sqrt()              # = centred x @ top directions
    return scores.numpy()


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
    x = spatial_descriptor(pooled).cpu()
    return _reduce_dims(x) if method == "spatial" else x.double().numpy()


def compute_clusters(G: torch.nn.Module, layer: str, k: int, samples: int = 128, seed: int = 0,
                     psi: float = 0.7, method: str = "spatial", model_key: str | None = None,
                     cache_dir: str | Path | None = None, progress: Progress | None = None,
                     cancel: Any = None, feature_extractor: FeatureExtractor | None = None
                     ) -> ClusterResult:
    """Cluster the channels of `layer` into k groups by their spatial activation patterns.

    method: 'spatial' (pooled patterns + PCA) or 'spatial-raw' (no PCA). With a
            `feature_extractor` (acts [N, C, H, W] -> [C, D], e.g. a pretrained network's
            embedding of each channel's maps) `method` names it in the cache; a built-in
            name is replaced by 'custom:<extractor's qualname>' so results never mix.
    model_key: the model's sha256 (hashed from the weights when left out).
    cache_dir: where result JSON files live (default: default_cache_dir()).
    progress:  called as progress(fraction, message); cancel: Event or callable -> bool.
    """
    G, known_key = _unwrap(G)
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
    model_key = model_key or known_key or model_key_of(G)
    key = _cache_key(model_key, layer, k, samples, seed, method, psi)
    cached = _recall(key)
    if cached is not None:
        if progress is not None:
            progress(1.0, "done (cached)")
        return cached
    path = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    path = path / f"{key}.json"
    if _ONLY_CACHED.get():
        cached = _read_cached(path)
        if cached is None or cached.layer != layer or len(cached.labels) != C:
            how = ("compute it on the Clusters tab (a long job you can cancel), then try again"
                   if seed == 0 and psi == 0.7 and method == "spatial" else
                   "the studio computes clusterings with cluster_seed 0 only, so set it to 0")
            raise ClusteringNotCached(f"the clustering of {layer} into {k} clusters from "
                                      f"{samples} samples (cluster_seed {seed}) has not been "
                                      f"computed on this server yet; {how}.")
        _remember(key, cached)
        return cached
    with _memory_lock:
        key_lock = _key_locks.setdefault(f"{key}|{path}", threading.Lock())
    # A second caller asking for the same clustering (a double click in the studio) waits for
    # the first and then reads its result instead of computing it again.
    with key_lock:
        return _compute_or_load(G, layer, k, samples, seed, psi, method, model_key, key, path,
                                C, progress, cancel, feature_extractor)


def _compute_or_load(G: torch.nn.Module, layer: str, k: int, samples: int, seed: int,
                     psi: float, method: str, model_key: str, key: str, path: Path, C: int,
                     progress: Progress | None, cancel: Any,
                     feature_extractor: FeatureExtractor | None) -> ClusterResult:
    cached = _recall(key)
    if cached is not None:  # computed by the caller we waited for
        if progress is not None:
            progress(1.0, "done (cached)")
        return cached
    cached = _read_cached(path)
    if cached is not None and cached.layer == layer and len(cached.labels) == C:
        _remember(key, cached)
        if progress is not None:
            progress(1.0, "done (cached)")
        return cached

    x = _descriptors(G, layer, samples, seed, psi, method, feature_extractor, progress, cancel)
    if progress is not None:
        progress(0.85, "clustering")
    if cancel_requested(cancel):
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
    G, _ = _unwrap(G)
    C, _, _ = _check_layer(G, layer)
    ks = [k for k in ks if 2 <= k < C]
    if not ks:
        raise StudioError(f"no usable k: {layer} has {C} channels, so k must be 2 to {C - 1}.")
    x = _descriptors(G, layer, samples, seed, psi, "spatial", None, None, cancel)
    scores = {}
    for i, k in enumerate(ks):
        if cancel_requested(cancel):
            raise ClusteringCancelled("clustering was cancelled.")
        labels, _ = _kmeans(x, k, seed)
        scores[k] = (float(silhouette_score(x, labels)) if len(set(labels.tolist())) > 1
                     else -1.0)
        if progress is not None:
            progress((i + 1) / len(ks), f"k={k}")
    best = max(scores, key=lambda k: (scores[k], -k))
    return best, scores


# ----------------------------------------------------------------------------------------
# Files: our JSON and Broad's cluster YAML.

JSON_FORMAT = "activation-studio-clusters"
JSON_VERSION = 1


def broad_layer_id(layer: str) -> int:
    """Broad's integer layer id of one of our conv layers.

    Broad's network-bending (a rosinality StyleGAN2) numbers the styled convs in forward
    order: 0 is the 4x4 conv (our b4.conv1), then two per block, the upsampling conv first:
    1 = b8.conv0, 2 = b8.conv1, 3 = b16.conv0, ... Its cluster files use ids from 1 on.
    """
    block, part = layer.split(".") if "." in layer else (layer, "")
    try:
        res = int(block[1:])
    except ValueError:
        res = 0
    log2 = res.bit_length() - 1
    if res == 4 and part == "conv1":
        return 0
    if res >= 8 and res == 2 ** log2 and part in ("conv0", "conv1"):
        return 2 * (log2 - 3) + (1 if part == "conv0" else 2)
    raise StudioError(f"layer {layer!r} has no Broad layer id; only conv layers "
                      f"(b4.conv1, b8.conv0, b8.conv1, ...) do.")


def layer_from_broad_id(layer_id: int) -> str:
    """Our layer name for Broad's integer layer id (inverse of broad_layer_id)."""
    if layer_id < 0:
        raise StudioError(f"Broad layer ids are 0 or more, got {layer_id}.")
    if layer_id > 32:  # 16 is a 1024 px model's last; 2**(id // 2) of id 2e9 takes seconds
        raise StudioError(f"Broad layer id {layer_id} is past the last layer of any "
                          f"generator (at most 32).")
    if layer_id == 0:
        return "b4.conv1"
    res = 2 ** (2 + (layer_id + 1) // 2)
    return f"b{res}.conv0" if layer_id % 2 == 1 else f"b{res}.conv1"


def result_from_labels(layer: str, labels: Iterable[int], **kw: Any) -> ClusterResult:
    """A ClusterResult from bare labels (an imported file): ids kept as given, no inertia."""
    labels = [int(v) for v in labels]
    if not labels or min(labels) < 0:
        raise StudioError(f"the cluster labels for {layer} are empty or negative.")
    k = max(labels) + 1
    sizes = np.bincount(labels, minlength=k)
    order = sorted(range(len(labels)), key=lambda c: (labels[c], c))
    kw.setdefault("method", "imported")
    return ClusterResult(layer=layer, k=k, labels=labels, sizes=[int(s) for s in sizes],
                         inertia=[0.0] * k, order=order, **kw)


def _as_results(results: ClusterResult | Iterable[ClusterResult]) -> list[ClusterResult]:
    return [results] if isinstance(results, ClusterResult) else list(results)


def save_json(results: ClusterResult | Iterable[ClusterResult], path: str | Path) -> Path:
    """Write one or more results (one per layer) as our JSON file, atomically."""
    items = _as_results(results)
    data = {"format": JSON_FORMAT, "version": JSON_VERSION,
            "layers": {r.layer: r.to_dict() for r in items}}
    path = Path(path)
    _write_json_atomic(path, data)
    return path


def load_json(path: str | Path) -> dict[str, ClusterResult]:
    """Read our JSON cluster file: {layer: ClusterResult}."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
        if data.get("format") != JSON_FORMAT:
            raise ValueError("not a cluster file")
        return {layer: ClusterResult.from_dict(d) for layer, d in data["layers"].items()}
    except (OSError, ValueError, TypeError, KeyError, AttributeError) as exc:
        raise StudioError(f"{path.name} is not a readable Activation Studio cluster file; "
                          f"export the clusters again.") from exc


def to_broad_yaml(results: ClusterResult | Iterable[ClusterResult]) -> str:
    """Broad's cluster YAML text: {layer_id: [{cluster_index, feature_index}, ...]}.

    Keys are Broad's integer layer ids (see broad_layer_id) so his scripts read the file as
    is; one flow-style line per channel, as his files have.
    """
    lines = []
    for r in sorted(_as_results(results), key=lambda r: broad_layer_id(r.layer)):
        lines.append(f"{broad_layer_id(r.layer)}:")
        lines += [f"- {{cluster_index: {lab}, feature_index: {ch}}}"
                  for ch, lab in enumerate(r.labels)]
    return "\n".join(lines) + "\n"


def save_broad_yaml(results: ClusterResult | Iterable[ClusterResult], path: str | Path) -> Path:
    """Write Broad's cluster YAML (see to_broad_yaml), atomically."""
    text = to_broad_yaml(results)
    return atomic_write_text(path, text)


def from_broad_yaml(text: str) -> dict[str, ClusterResult]:
    """Parse Broad's cluster YAML into {our layer name: ClusterResult}.

    Integer keys are Broad's layer ids and are mapped to our names; string keys that already
    are our layer names (e.g. 'b16.conv1') are kept. Every feature_index 0..C-1 must appear
    exactly once per layer.
    """
    import yaml

    try:
        data = load_yaml(text, "cluster YAML")  # size, depth and alias guards first
    except (yaml.YAMLError, RecursionError) as exc:
        raise StudioError("the cluster YAML could not be parsed; check the file.") from exc
    if not isinstance(data, dict):
        raise StudioError("the cluster YAML must map layer ids to lists of "
                          "{cluster_index, feature_index}.")
    out = {}
    for key, items in data.items():
        layer = layer_from_broad_id(int(key)) if isinstance(key, int) or str(key).isdigit() \
            else str(key)
        try:
            pairs = {int(it["feature_index"]): int(it["cluster_index"]) for it in items}
        except (TypeError, KeyError, ValueError) as exc:
            raise StudioError(f"layer {key} in the cluster YAML needs a list of "
                              f"{{cluster_index, feature_index}} entries.") from exc
        if sorted(pairs) != list(range(len(items))):
            raise StudioError(f"layer {key} in the cluster YAML must list every feature index "
                              f"from 0 to {len(items) - 1} exactly once.")
        out[layer] = result_from_labels(layer, [pairs[c] for c in range(len(pairs))],
                                        method="broad-yaml")
    return out


def load_broad_yaml(path: str | Path) -> dict[str, ClusterResult]:
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise StudioError(f"cannot read {path}; check the path.") from exc
    return from_broad_yaml(text)


def load_cluster_file(path: str | Path) -> dict[str, ClusterResult]:
    """Read either format, chosen by extension (.json ours, .yaml/.yml Broad's)."""
    path = Path(path)
    if path.suffix.lower() in (".yaml", ".yml"):
        return load_broad_yaml(path)
    return load_json(path)


# ----------------------------------------------------------------------------------------
# Pictures.

# A viridis-like perceptual colour map: dark blue-violet -> teal -> green -> yellow. Anchor
# colours are interpolated linearly into a 256-entry table; lightness rises monotonically,
# so it stays readable in grey and for common colour-vision deficiencies.
_CMAP_ANCHORS = np.array([
    (68, 1, 84), (72, 40, 120), (62, 74, 137), (49, 104, 142), (38, 130, 142),
    (31, 158, 137), (53, 183, 121), (109, 205, 89), (180, 222, 44), (253, 231, 37),
], dtype=np.float64)
_CMAP = np.stack([np.interp(np.linspace(0, 1, 256), np.linspace(0, 1, len(_CMAP_ANCHORS)),
                            _CMAP_ANCHORS[:, i]) for i in range(3)], axis=1).round().astype(
                                np.uint8)

LABEL_HEIGHT = 14   # pixels of the caption strip above each tile
MIN_TILE = 128      # small images and maps are upscaled (NEAREST) to at least this size


def colormap(values: np.ndarray) -> np.ndarray:
    """Values in [0, 1] (any shape) -> uint8 RGB (shape + (3,)) via the viridis-like table."""
    idx = np.clip(np.nan_to_num(np.asarray(values, dtype=np.float64)) * 255, 0, 255)
    return _CMAP[idx.round().astype(np.int64)]


def _normalise(m: np.ndarray) -> np.ndarray:
    lo, hi = float(m.min()), float(m.max())
    return (m - lo) / (hi - lo) if hi - lo > 1e-12 else np.zeros_like(m)


def _upscale(img: np.ndarray, size: int) -> np.ndarray:
    """Resize a uint8 HxW(x3) array to size x size: NEAREST when enlarging, so no blur."""
    from PIL import Image
    if img.shape[0] == size and img.shape[1] == size:
        return img
    resample = Image.NEAREST if size >= img.shape[0] else Image.BOX
    return np.asarray(Image.fromarray(img).resize((size, size), resample))


def _caption(tile: np.ndarray, text: str) -> np.ndarray:
    """The tile with a dark caption strip above it (PIL's default bitmap font)."""
    from PIL import Image, ImageDraw
    h, w = tile.shape[:2]
    canvas = Image.new("RGB", (w, h + LABEL_HEIGHT), (20, 20, 20))
    canvas.paste(Image.fromarray(tile), (0, LABEL_HEIGHT))
    ImageDraw.Draw(canvas).text((3, 1), text, fill=(235, 235, 235))
    return np.asarray(canvas)


def _grid(tiles: list[np.ndarray], cols: int | None = None, gap: int = 2) -> np.ndarray:
    cols = cols or max(1, int(np.ceil(np.sqrt(len(tiles)))))
    rows = int(np.ceil(len(tiles) / cols))
    th, tw = tiles[0].shape[:2]
    sheet = np.full((rows * th + (rows - 1) * gap, cols * tw + (cols - 1) * gap, 3), 255,
                    dtype=np.uint8)
    for i, t in enumerate(tiles):
        r, c = divmod(i, cols)
        sheet[r * (th + gap):r * (th + gap) + th, c * (tw + gap):c * (tw + gap) + tw] = t
    return sheet


def _as_ws(G: torch.nn.Module, latent: Any, psi: float) -> torch.Tensor:
    """ws [1, num_ws, w_dim] from a seed (int, mapped with truncation psi), ws [num_ws, w_dim]
    (optionally with a batch axis; the first is used), z [z_dim] (mapped) or one w [w_dim]
    (broadcast to every layer). A 1-D vector is read as z when z_dim == w_dim."""
    if isinstance(latent, (int, np.integer)):
        with torch.no_grad():
            return G.mapping(G.seed_to_z(int(latent)), psi=psi)[:1]
    t = latent if torch.is_tensor(latent) else torch.as_tensor(np.asarray(latent))
    t = t.to(G.device, torch.float32)
    num_ws, w_dim, z_dim = G.num_ws, G.cfg.w_dim, G.cfg.z_dim
    if t.ndim == 3 and t.shape[1:] == (num_ws, w_dim):
        return t[:1]
    if t.ndim == 2 and t.shape == (num_ws, w_dim):
        return t[None]
    flat = t.reshape(-1) if t.ndim == 1 or (t.ndim == 2 and t.shape[0] == 1) else None
    if flat is not None and flat.numel() == z_dim:
        with torch.no_grad():
            return G.mapping(flat[None], psi=psi)
    if flat is not None and flat.numel() == w_dim:
        return flat.view(1, 1, -1).expand(1, num_ws, -1)
    raise StudioError(f"a latent must be a seed, z [{z_dim}], w [{w_dim}] or ws "
                      f"[{num_ws}, {w_dim}]; got shape {list(t.shape)}.")


def to_uint8_image(img: torch.Tensor) -> np.ndarray:
    """The first NCHW image in [-1, 1] -> uint8 HxWx3 (one channel repeated, a fourth dropped)."""
    x = to_uint8(img[:1])[0]
    return np.repeat(x, 3, axis=2) if x.shape[2] == 1 else x[:, :, :3]


def _render_with_layer(G: torch.nn.Module, ws: torch.Tensor, layer: str,
                       taps: dict | None = None) -> tuple[np.ndarray, np.ndarray]:
    with torch.no_grad():
        img, cap = G.synthesis(ws, noise_mode="const", capture=[layer], taps=taps or {})
    return to_uint8_image(img), cap[layer][0].float().cpu().numpy()


def _tile_size(G: torch.nn.Module, tile: int | None) -> int:
    return int(tile) if tile else max(MIN_TILE, G.cfg.resolution)


def cluster_overlays(G: torch.nn.Module, result: ClusterResult, latent: Any, psi: float = 0.7,
                     tile: int | None = None, alpha: float = 0.6, cols: int | None = None
                     ) -> np.ndarray:
    """The image, then one tile per cluster (cluster_tiles), as one uint8 HxWx3 sheet."""
    return _grid(cluster_tiles(G, result, latent, psi, tile, alpha), cols)


def cluster_tiles(G: torch.nn.Module, result: ClusterResult, latent: Any, psi: float = 0.7,
                  tile: int | None = None, alpha: float = 0.6) -> list[np.ndarray]:
    """The image, then one tile per cluster: its mean activation as a heatmap over the image.

    Each tile is captioned with the cluster id and size. The heatmap of a cluster is the mean
    of its channels' maps for this latent, min-max scaled within the tile; maps and image are
    enlarged with NEAREST so a 16x16 layer shows its true 16x16 cells. Returns k + 1 uint8
    HxWx3 tiles (a page shows them as it likes; no sheet to cut up).
    """
    G, _ = _unwrap(G)
    _check_layer(G, result.layer)
    ws = _as_ws(G, latent, psi)
    image, act = _render_with_layer(G, ws, result.layer)
    if act.shape[0] != result.num_channels:
        raise StudioError(f"these clusters were made for {result.num_channels} channels but "
                          f"{result.layer} of this model has {act.shape[0]}; recompute them.")
    size = _tile_size(G, tile)
    base = _upscale(image, size).astype(np.float64)
    grey = base.mean(axis=2, keepdims=True).repeat(3, axis=2)  # colour would fight the map
    tiles = [_caption(base.astype(np.uint8), "image")]
    labels = result.labels_array()
    for cid in range(result.k):
        members = labels == cid
        heat = act[members].mean(axis=0) if members.any() else np.zeros(act.shape[1:])
        colour = _upscale(colormap(_normalise(heat)), size).astype(np.float64)
        blend = ((1 - alpha) * grey + alpha * colour).round().astype(np.uint8)
        tiles.append(_caption(blend, f"#{cid}  n={int(members.sum())}"))
    return tiles


def cluster_channel_sheet(G: torch.nn.Module, result: ClusterResult, cluster_id: int,
                          latent: Any, top: int = 16, psi: float = 0.7, tile: int | None = None,
                          cols: int | None = None) -> np.ndarray:
    """Contact sheet of a cluster's strongest channels (mean |activation|) for one latent.

    Each tile is one channel's map, min-max scaled and colour-mapped, captioned with the
    channel index. Returns a uint8 HxWx3 sheet.
    """
    G, _ = _unwrap(G)
    channels = result.channels(cluster_id)
    ws = _as_ws(G, latent, psi)
    _, act = _render_with_layer(G, ws, result.layer)
    strength = np.abs(act[channels]).mean(axis=(1, 2))
    ranked = [channels[i] for i in np.argsort(-strength, kind="stable")[:max(1, top)]]
    size = tile or max(64, min(MIN_TILE, act.shape[1] * 4))
    tiles = [_caption(_upscale(colormap(_normalise(act[c])), size), f"ch {c}") for c in ranked]
    return _grid(tiles, cols)


def ablation_tap(channels: Iterable[int]) -> Callable[[torch.Tensor], torch.Tensor]:
    """A per-call tap that zeroes the given channels of a layer's output."""
    idx = sorted(set(int(c) for c in channels))

    def tap(x: torch.Tensor) -> torch.Tensor:
        mask = torch.ones(x.shape[1], device=x.device, dtype=x.dtype)
        mask[idx] = 0
        return x * mask.view(1, -1, 1, 1)

    return tap


def ablation_preview(G: torch.nn.Module, result: ClusterResult, cluster_id: int, latent: Any,
                     psi: float = 0.7, tile: int | None = None) -> np.ndarray:
    """Before / after: the same latent rendered as is and with the cluster's channels zeroed.

    The channels are zeroed through a per-call tap, so the shared model is untouched.
    Returns a uint8 HxWx3 image of the two captioned tiles side by side.
    """
    G, _ = _unwrap(G)
    channels = result.channels(cluster_id)
    _check_layer(G, result.layer)
    ws = _as_ws(G, latent, psi)
    with torch.no_grad():
        before = to_uint8_image(G.synthesis(ws, noise_mode="const"))
        after = to_uint8_image(G.synthesis(ws, noise_mode="const",
                                           taps={result.layer: ablation_tap(channels)}))
    size = _tile_size(G, tile)
    return _grid([_caption(_upscale(before, size), "before"),
                  _caption(_upscale(after, size), f"#{cluster_id} off ({len(channels)} ch)")],
                 cols=2)


def save_png(img: np.ndarray, path: str | Path) -> Path:
    """Write a uint8 HxWx3 array as PNG (atomic)."""
    from PIL import Image
    return atomic_write(path, lambda tmp: Image.fromarray(img).save(tmp, format="PNG"))


# ----------------------------------------------------------------------------------------
# Command line.


def add_cli(subparsers: Any) -> None:
    p = subparsers.add_parser("cluster", help="cluster a layer's channels; write the cluster "
                              "file (JSON + Broad YAML) and the overlay sheet")
    p.add_argument("--model", default="default", help="model spec for engine.models.zoo.load")
    p.add_argument("--layer", required=True, help="conv layer, e.g. b16.conv1")
    p.add_argument("--k", type=int, default=8, help="number of clusters (0 = suggest)")
    p.add_argument("--samples", type=int, default=128, help="latents rendered")
    p.add_argument("--seed", type=int, default=0, help="latent and KMeans seed")
    p.add_argument("--psi", type=float, default=0.7, help="truncation of the latents")
    p.add_argument("--preview-seed", type=int, default=0, help="latent of the overlay sheet")
    p.add_argument("--out", required=True, help="output folder")
    p.set_defaults(func=_cli)


def _load_model(spec: str) -> Any:
    from engine.models import zoo  # imported here: zoo pulls in the Hub client
    return zoo.load(spec)  # a LoadedModel: its sha256 keys the cache


def _cli(args: Any) -> None:
    from tqdm import tqdm

    model = _load_model(args.model)
    out = Path(args.out)
    k = args.k
    if k <= 0:
        k, scores = suggest_k(model, args.layer, samples=args.samples, seed=args.seed, psi=args.psi)
        print("silhouette: " + ", ".join(f"k={kk}: {s:.3f}" for kk, s in scores.items()))
    bar = tqdm(total=100, unit="%")

    def progress(fraction: float, message: str = "") -> None:
        bar.n = int(round(100 * fraction))
        bar.set_description(message)
        bar.refresh()

    result = compute_clusters(model, args.layer, k, samples=args.samples, seed=args.seed,
                              psi=args.psi, progress=progress)
    bar.close()
    stem = f"clusters_{args.layer.replace('.', '_')}_k{k}"
    paths = [save_json(result, out / f"{stem}.json"),
             save_broad_yaml(result, out / f"{stem}.yaml"),
             save_png(cluster_overlays(model, result, args.preview_seed, psi=args.psi),
                      out / f"{stem}_overlays.png")]
    print("sizes: " + " ".join(f"#{i}:{n}" for i, n in enumerate(result.sizes)))
    for path in paths:
        print(f"wrote {path}")
