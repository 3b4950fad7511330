"""Feature-map clustering: determinism, caching, partitions, files, pictures and the CLI."""

from __future__ import annotations

import threading
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from engine.base.errors import StudioError
from engine.tools import clusters as cl
from tests.conftest import make_tiny_generator

LAYER = "b16.conv1"   # 32 channels at 16x16 in the tiny generator
SAMPLES = 16          # enough latents for a stable partition, cheap on CPU
DEFAULT_MODEL = Path(__file__).resolve().parents[1] / "engine" / "models" / "default_model" / \
    "faces64.safetensors"


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    """Every test gets its own disk cache and an empty memory cache."""
    monkeypatch.setenv("ACTIVATION_STUDIO_CACHE", str(tmp_path / "cache"))
    cl.clear_memory_cache()
    yield
    cl.clear_memory_cache()


@pytest.fixture(scope="module")
def G():
    return make_tiny_generator()


@pytest.fixture(scope="module")
def result(G, tmp_path_factory):
    return cl.compute_clusters(G, LAYER, 4, samples=SAMPLES, model_key="tiny",
                               cache_dir=tmp_path_factory.mktemp("c"))


def test_labels_are_deterministic_for_a_fixed_seed(G, tmp_path):
    a = cl.compute_clusters(G, LAYER, 4, samples=SAMPLES, seed=3, cache_dir=tmp_path / "a")
    cl.clear_memory_cache()
    b = cl.compute_clusters(G, LAYER, 4, samples=SAMPLES, seed=3, cache_dir=tmp_path / "b")
    assert a.labels == b.labels and a.order == b.order
    np.testing.assert_allclose(a.inertia, b.inertia, rtol=1e-6)
    # Canonical ids: cluster i's lowest channel comes before cluster i+1's.
    firsts = [a.labels.index(i) for i in range(a.k)]
    assert firsts == sorted(firsts) and firsts[0] == 0


def test_cluster_labels_shape_and_key(G):
    labels = cl.cluster_labels(G, "tiny-key", "b8.conv1", 3, samples=8, seed=0)
    assert labels.shape == (32,) and labels.dtype.kind == "i"
    assert set(labels.tolist()) == {0, 1, 2}


def test_a_loaded_model_keys_the_cache_by_its_sha256(G, tmp_path):
    from types import SimpleNamespace
    r = cl.compute_clusters(SimpleNamespace(G=G, sha256="abc123"), "b8.conv0", 3, samples=4,
                            cache_dir=tmp_path)
    assert r.model_key == "abc123"
    assert cl.model_key_of(G).startswith("weights-")  # a bare Generator: hashed weights


def test_every_channel_is_assigned_exactly_once(result):
    C = 32
    assert len(result.labels) == C and sum(result.sizes) == C
    assert sorted(result.order) == list(range(C))
    members = [c for i in range(result.k) for c in result.channels(i)]
    assert sorted(members) == list(range(C))
    assert all(len(result.channels(i)) == result.sizes[i] for i in range(result.k))
    assert all(result.sizes) and len(result.inertia) == result.k
    with pytest.raises(StudioError):
        result.channels(result.k)


def test_repeat_is_a_cache_hit(G, tmp_path, monkeypatch):
    t0 = time.perf_counter()
    first = cl.compute_clusters(G, LAYER, 4, samples=SAMPLES, cache_dir=tmp_path)
    compute_s = time.perf_counter() - t0
    assert len(list(tmp_path.glob("*.json"))) == 1

    def boom(*args, **kwargs):
        raise AssertionError("a cached result was recomputed")

    monkeypatch.setattr(cl, "_descriptors", boom)
    t0 = time.perf_counter()
    again = cl.compute_clusters(G, LAYER, 4, samples=SAMPLES, cache_dir=tmp_path)  # memory
    cl.clear_memory_cache()
    from_disk = cl.compute_clusters(G, LAYER, 4, samples=SAMPLES, cache_dir=tmp_path)
    hit_s = time.perf_counter() - t0
    assert again.labels == first.labels == from_disk.labels
    assert hit_s < max(0.5, compute_s / 5)
    with pytest.raises(AssertionError):  # any other key (here k) is a miss
        cl.compute_clusters(G, LAYER, 5, samples=SAMPLES, cache_dir=tmp_path)
    with pytest.raises(AssertionError):  # so is another truncation
        cl.compute_clusters(G, LAYER, 4, samples=SAMPLES, psi=0.5, cache_dir=tmp_path)


class _WatchedLock:
    """A key lock that counts the callers waiting at its door."""

    def __init__(self, lock: threading.Lock) -> None:
        self.lock, self.arrived = lock, 0

    def __enter__(self) -> None:
        self.arrived += 1
        self.lock.acquire()

    def __exit__(self, *exc: object) -> None:
        self.lock.release()


class _WatchedLocks(dict):
    def setdefault(self, key, default=None):
        return super().setdefault(key, _WatchedLock(default))


def test_concurrent_requests_compute_once(G, tmp_path, monkeypatch):
    calls = []
    real = cl._descriptors
    locks = _WatchedLocks()
    monkeypatch.setattr(cl, "_key_locks", locks)

    def counted(*args, **kwargs):
        calls.append(1)
        # Compute only once the second caller stands at the key's lock (polled, not timed).
        deadline = time.monotonic() + 60
        while sum(lock.arrived for lock in locks.values()) < 2:
            assert time.monotonic() < deadline, "the second caller never came"
            time.sleep(0.005)
        return real(*args, **kwargs)

    monkeypatch.setattr(cl, "_descriptors", counted)
    out = []
    threads = [threading.Thread(target=lambda: out.append(cl.compute_clusters(
        G, "b8.conv1", 3, samples=4, cache_dir=tmp_path))) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1 and out[0].labels == out[1].labels


def test_corrupt_cache_file_is_recomputed(G, tmp_path):
    first = cl.compute_clusters(G, LAYER, 4, samples=8, cache_dir=tmp_path)
    (path,) = tmp_path.glob("*.json")
    path.write_text("{not json")
    cl.clear_memory_cache()
    assert cl.compute_clusters(G, LAYER, 4, samples=8, cache_dir=tmp_path).labels == \
        first.labels


def test_env_var_sets_the_cache_folder(G, tmp_path):
    cl.compute_clusters(G, "b8.conv0", 3, samples=4)
    assert list((tmp_path / "cache" / "clusters").glob("*.json"))


def test_feature_extractor_is_pluggable(G, tmp_path):
    calls = []

    def mean_map(acts: torch.Tensor) -> torch.Tensor:  # [N, C, H, W] -> [C, H*W]
        calls.append(acts.shape)
        return acts.mean(0).flatten(1)

    r = cl.compute_clusters(G, LAYER, 3, samples=4, cache_dir=tmp_path,
                            feature_extractor=mean_map)
    assert calls and calls[0][1:] == (32, 16, 16)
    assert r.method.startswith("custom:") and len(r.labels) == 32
    with pytest.raises(ValueError):
        cl.compute_clusters(G, LAYER, 3, samples=4, cache_dir=tmp_path, method="other",
                            feature_extractor=lambda a: a.mean(0))


def test_bad_arguments_are_user_errors(G, tmp_path):
    with pytest.raises(StudioError, match="b16.conv1"):
        cl.compute_clusters(G, "b16.torgb", 4, samples=4, cache_dir=tmp_path)
    with pytest.raises(StudioError, match="between 2 and 32"):
        cl.compute_clusters(G, LAYER, 33, samples=4, cache_dir=tmp_path)
    with pytest.raises(StudioError):
        cl.compute_clusters(G, LAYER, 4, samples=4, method="nope", cache_dir=tmp_path)


def test_cancel_stops_the_run(G, tmp_path):
    stop = threading.Event()
    stop.set()
    with pytest.raises(cl.ClusteringCancelled):
        cl.compute_clusters(G, LAYER, 4, samples=8, cache_dir=tmp_path, cancel=stop)
    seen = []
    cl.compute_clusters(G, LAYER, 4, samples=8, cache_dir=tmp_path,
                        progress=lambda f, msg="": seen.append(f))
    assert seen and seen[-1] == 1.0 and seen == sorted(seen)


def test_suggest_k(G):
    best, scores = cl.suggest_k(G, LAYER, ks=range(3, 6), samples=8)
    assert best in (3, 4, 5) and set(scores) == {3, 4, 5}
    assert all(-1 <= s <= 1 for s in scores.values())


def test_broad_layer_ids_map_both_ways():
    assert cl.broad_layer_id("b4.conv1") == 0
    assert [cl.layer_from_broad_id(i) for i in (1, 2, 3, 16)] == \
        ["b8.conv0", "b8.conv1", "b16.conv0", "b1024.conv1"]
    for i in range(17):
        assert cl.broad_layer_id(cl.layer_from_broad_id(i)) == i
    with pytest.raises(StudioError):
        cl.broad_layer_id("b16.torgb")
    with pytest.raises(StudioError, match="past the last layer"):  # not 2**(10**9): seconds
        cl.layer_from_broad_id(2_000_000_000)


def test_yaml_and_json_round_trip(result, tmp_path):
    other = cl.result_from_labels("b8.conv0", [1, 0, 1, 2])
    y = cl.save_broad_yaml([result, other], tmp_path / "c.yaml")
    text = y.read_text()
    assert text.startswith("1:\n- {cluster_index: 1, feature_index: 0}")  # Broad's shape
    back = cl.load_cluster_file(y)
    assert back["b16.conv1"].labels == result.labels
    assert back["b8.conv0"].labels == [1, 0, 1, 2] and back["b8.conv0"].k == 3
    j = cl.save_json([result, other], tmp_path / "c.json")
    loaded = cl.load_cluster_file(j)
    assert loaded["b16.conv1"] == result and loaded["b8.conv0"] == other


@pytest.mark.parametrize("text, match", [
    ("a: " + "[" * 150 + "]" * 150, "nested too deeply"),  # within what libyaml survives
    ("l0: &a0 [1, 1]\n" + "".join(f"l{i}: &a{i} [*a{i - 1}, *a{i - 1}]\n"
                                   for i in range(1, 30)), "aliases"),  # 2**30 values
    ("3: []\n" + "#" * (9 * 2**20), "larger than"),
])
def test_yaml_import_refuses_hostile_yaml_in_one_sentence(text, match):
    """Broad's cluster YAML goes through the guarded reader of recipes and bending files
    (engine.base.safe_yaml): deep nesting, alias bombs and huge texts are refused unread."""
    with pytest.raises(StudioError, match=match):
        cl.from_broad_yaml(text)


def test_yaml_import_accepts_our_names_and_rejects_gaps():
    text = "b16.conv1:\n- {cluster_index: 0, feature_index: 1}\n" \
           "- {cluster_index: 1, feature_index: 0}\n"
    assert cl.from_broad_yaml(text)["b16.conv1"].labels == [1, 0]
    with pytest.raises(StudioError, match="exactly once"):
        cl.from_broad_yaml("3:\n- {cluster_index: 0, feature_index: 1}\n")
    with pytest.raises(StudioError, match="nested too deeply"):
        cl.from_broad_yaml("[" * 100_000)
    with pytest.raises(StudioError):
        cl.load_json(Path(__file__))


def test_colormap_is_monotonic_in_lightness():
    rgb = cl.colormap(np.linspace(0, 1, 32)).astype(float)
    luma = rgb @ np.array([0.299, 0.587, 0.114])
    assert rgb.dtype == float and np.all(np.diff(luma) > 0)
    assert cl.colormap(np.zeros((2, 3))).shape == (2, 3, 3)


def test_overlay_sheet(G, result):
    sheet = cl.cluster_overlays(G, result, 5, tile=64, cols=5)
    # One row of 5 tiles (image + 4 clusters), each 64 px plus a caption strip, 2 px gaps.
    assert sheet.dtype == np.uint8 and sheet.shape == (64 + cl.LABEL_HEIGHT, 5 * 64 + 8, 3)
    tiles = [sheet[cl.LABEL_HEIGHT:, i * 66:i * 66 + 64] for i in range(5)]
    assert all(t.std() > 0 for t in tiles)
    # NEAREST upscaling: with the image blended out (alpha 1) a 16x16 map in a 64 px tile
    # is made of 4x4 blocks, no blur.
    pure = cl.cluster_overlays(G, result, 5, tile=64, cols=5, alpha=1.0)
    heat = pure[cl.LABEL_HEIGHT:, 66:130].astype(int)
    assert np.array_equal(heat[::4, ::4].repeat(4, 0).repeat(4, 1), heat)


def test_channel_sheet_shows_strongest_channels(G, result):
    cid = int(np.argmax(result.sizes))
    sheet = cl.cluster_channel_sheet(G, result, cid, 5, top=3, tile=32, cols=3)
    assert sheet.shape == (32 + cl.LABEL_HEIGHT, 3 * 32 + 4, 3)


def test_ablation_preview_changes_only_the_after_image(G, result):
    ws = G.mapping(G.seed_to_z(5), psi=0.7)
    before_params = {k: v.clone() for k, v in G.state_dict().items()}
    pic = cl.ablation_preview(G, result, 0, ws, tile=32)
    assert pic.shape == (32 + cl.LABEL_HEIGHT, 66, 3)
    before, after = pic[cl.LABEL_HEIGHT:, :32], pic[cl.LABEL_HEIGHT:, 34:]
    assert np.abs(before.astype(int) - after.astype(int)).max() > 0
    assert all(torch.equal(v, G.state_dict()[k]) for k, v in before_params.items())
    plain = cl.to_uint8_image(G.synthesis(ws, noise_mode="const"))
    np.testing.assert_array_equal(cl._upscale(plain, 32), before)


def test_cli_writes_cluster_files_and_sheet(G, tmp_path, monkeypatch):
    from engine.__main__ import main
    monkeypatch.setattr(cl, "_load_model", lambda spec: G)
    rc = main(["cluster", "--model", "tiny", "--layer", LAYER, "--k", "3", "--samples", "8",
               "--out", str(tmp_path / "out")])
    assert rc == 0
    names = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert names == ["clusters_b16_conv1_k3.json", "clusters_b16_conv1_k3.yaml",
                     "clusters_b16_conv1_k3_overlays.png"]
    loaded = cl.load_cluster_file(tmp_path / "out" / "clusters_b16_conv1_k3.yaml")
    assert sum(loaded[LAYER].sizes) == 32


@pytest.mark.slow
@pytest.mark.skipif(not DEFAULT_MODEL.exists(),
                    reason="the embedded default model (engine/models/default_model/"
                           "faces64.safetensors) is still training and not shipped yet")
def test_default_model_clusters_are_not_degenerate():
    from engine.models import zoo
    r = cl.compute_clusters(zoo.load("default"), "b16.conv1", 8, samples=128, seed=0)
    C = len(r.labels)
    # A degenerate clustering puts nearly every channel in one cluster and leaves the rest as
    # singletons (outlier or dead channels), which is useless for picking "the eyes". We
    # require: no cluster holds half of the channels, and at least 6 of the 8 clusters are
    # real groups (>= 2 channels) rather than lone outliers. Calibration on training snapshots
    # (2, 11 and 40 kimg; seeds 0-3 at 40 kimg): the largest cluster held 15-27 % of the 128
    # channels and all 8 clusters had >= 5 channels, so the bounds leave a wide margin and
    # still fail on the failure mode that matters (one cluster swallowing the layer).
    assert max(r.sizes) < 0.5 * C, r.sizes
    assert sum(s >= 2 for s in r.sizes) >= 6, r.sizes


def _planted_groups_generator(groups: np.ndarray) -> torch.nn.Module:
    """The tiny generator with LAYER's output channels rewired into known groups.

    Every channel of a group gets its group's 3x3 kernels (plus 5% of its own noise) and
    bias, so the channels of a group fire at the same places for every latent; the groups'
    kernels are independent, so different groups fire at different places. Demodulation
    divides out each channel's gain, so the group kernel fixes where a channel fires.
    """
    G = make_tiny_generator(seed=3)
    conv = G.synthesis.get_submodule(LAYER)
    gen = torch.Generator().manual_seed(7)
    k = int(groups.max()) + 1
    kernels = torch.randn((k,) + tuple(conv.weight.shape[1:]), generator=gen)
    biases = torch.randn(k, generator=gen) * 0.5
    with torch.no_grad():
        for ch, g in enumerate(groups):
            own = torch.randn(conv.weight.shape[1:], generator=gen)
            conv.weight[ch] = kernels[g] + 0.05 * own
            conv.bias[ch] = biases[g]
    return G


def _same_partition(a, b) -> bool:
    """True when labels a and b split the channels the same way (ids may be permuted)."""
    pairs = set(zip(np.asarray(a).tolist(), np.asarray(b).tolist()))
    return len(pairs) == len(set(np.asarray(a).tolist())) == len(set(np.asarray(b).tolist()))


def test_planted_channel_groups_are_recovered_exactly(tmp_path):
    # 4 groups of 8 channels, scattered over the 32 channels (not blocks, not ch % 4).
    groups = np.random.RandomState(11).permutation(np.arange(32) % 4)
    G = _planted_groups_generator(groups)
    res = cl.compute_clusters(G, LAYER, 4, samples=SAMPLES, model_key="planted",
                              cache_dir=tmp_path)
    assert _same_partition(res.labels, groups), (res.labels, groups.tolist())
    # The partition check itself can tell partitions apart.
    assert not _same_partition(np.arange(32) % 4, groups)


def test_planted_gain_and_offset_do_not_change_a_descriptor():
    """A channel's descriptor is where it fires: 3 x a channel + 5 has the same descriptor,
    centred (mean 0) and of unit norm; a dead channel's is zero; a different one differs."""
    gen = torch.Generator().manual_seed(0)
    a, b = torch.randn(2, 4, 1, 6, 6, generator=gen)
    pooled = torch.cat([a, 3 * a + 5, b, torch.full_like(a, 2.0)], dim=1)  # [4, 4, 6, 6]
    d = cl.spatial_descriptor(pooled)
    assert d.shape == (4, 4 * 6 * 6)
    assert torch.allclose(d[1], d[0], atol=1e-6)
    assert torch.allclose(d[:3].mean(dim=1), torch.zeros(3), atol=1e-6)
    assert torch.allclose(d[:3].norm(dim=1), torch.ones(3), atol=1e-6)
    assert torch.equal(d[3], torch.zeros_like(d[3]))
    centred = a.flatten() - a.mean()
    assert torch.allclose(d[0], centred / centred.norm(), atol=1e-6)  # plain arithmetic
    assert (d[2] - d[0]).abs().max() > 0.1


def test_empty_clusters_take_the_last_ids():
    """Channels that coincide leave KMeans clusters empty: the filled ones are numbered by
    their first channel (0, 1), the empty ones after them, so ids never skip a number."""
    x = np.zeros((10, 3))
    x[9] = 5.0  # two distinct descriptors, asked for 6 clusters
    with warnings.catch_warnings():  # sklearn: fewer distinct clusters than n_clusters
        warnings.simplefilter("ignore")
        labels, centres = cl._kmeans(x, 6, seed=0)
    assert labels.tolist() == [0] * 9 + [1]
    assert centres.shape == (6, 3)
    assert np.allclose(centres[0], 0.0) and np.allclose(centres[1], 5.0)
