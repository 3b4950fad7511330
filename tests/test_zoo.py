"""engine.models.zoo: catalogue, specs, Hub download/convert/cache (through a loopback fake
Hub), LRU.

Every Hub test runs the real `huggingface_hub.hf_hub_download` against tests/helpers/hub.py on
127.0.0.1 with a fresh HF_HOME, so nothing here touches the internet.
"""

from __future__ import annotations

import io
import json
import os
import threading
import time
from pathlib import Path

import pytest
import torch
from conftest import make_tiny_generator

from engine.__main__ import main
from engine.base.errors import StudioError
from engine.gan.checkpoints import save_generator, sha256_file, sidecar_path
from engine.models import zoo
from tests.helpers.hub import FakeHub

REPO = "acme/tiny-gan"
FILE = "nets/tiny.pt"
SPEC = f"hf://{REPO}/{FILE}"


def _torch_bytes(obj: object) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


@pytest.fixture(scope="module")
def tiny():
    """A tiny random generator and its checkpoint bytes (an NVlabs-named torch file)."""
    G = make_tiny_generator(seed=3)
    return G, _torch_bytes({"G_ema": G.state_dict()})


@pytest.fixture
def env(tmp_path, monkeypatch):
    """Fresh HF_HOME, no token, online; the LRU emptied before and after."""
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    for name in ("HF_HUB_CACHE", "HF_HUB_OFFLINE", "HF_TOKEN", "HF_ENDPOINT",
                 "HF_HUB_ETAG_TIMEOUT", zoo.ENV_MAX_MODELS, zoo.ENV_MAX_MODEL_MB):
        monkeypatch.delenv(name, raising=False)
    # huggingface_hub reads HF_HUB_OFFLINE at import: a CI run with HF_HUB_OFFLINE=1 would
    # otherwise block every request to the loopback Hub.
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    zoo.clear_cache()
    yield tmp_path
    zoo.clear_cache()


@pytest.fixture
def hub(env, monkeypatch, tiny):
    """A running fake Hub serving the tiny checkpoint; HF_ENDPOINT points at it."""
    with FakeHub() as h:
        h.add_file(REPO, FILE, tiny[1])
        monkeypatch.setenv("HF_ENDPOINT", h.endpoint)
        yield h


def _same_images(G_a: torch.nn.Module, G_b: torch.nn.Module) -> bool:
    z = torch.from_numpy(__import__("numpy").random.RandomState(0).randn(2, G_a.cfg.z_dim))
    z = z.float()
    with torch.no_grad():
        return torch.equal(G_a(z), G_b(z.to(next(G_b.parameters()).device)).cpu())


def _blobs(env: Path) -> list[Path]:
    return [p for p in (env / "hf" / "hub").rglob("blobs/*") if p.is_file()]


# ----------------------------------------------------------------------------------------
# Catalogue and specs.


def test_catalogue_is_valid():
    raw = json.loads(zoo.CATALOGUE_PATH.read_text(encoding="utf-8"))["models"]
    entries = zoo.catalogue()
    assert len(entries) == len(raw) >= 10
    ids = [e.id for e in entries]
    assert len(set(ids)) == len(ids), "ids must be unique"
    assert ids[0] == "default" and entries[0].repo_id is None
    for row, e in zip(raw, entries):
        assert all(k in row for k in zoo.REQUIRED_FIELDS), e.id
        assert e.format in zoo.FORMATS, e.id
        assert e.resolution >= 4 and e.resolution & (e.resolution - 1) == 0, e.id
        assert isinstance(e.verified, bool) and isinstance(e.conditional, bool), e.id
        assert e.title and e.licence and e.description, e.id
        if e.repo_id is not None:
            assert e.repo_id.count("/") == 1 and e.filename, e.id
            assert e.sha256 is None or len(e.sha256) == 64, e.id
            r = zoo.resolve(e.id)
            assert (r.kind, r.repo_id, r.filename) == ("hub", e.repo_id, e.filename)
            assert zoo.resolve(e.spec).entry == e  # the hf:// form finds the same entry


@pytest.mark.parametrize("change, message", [
    (lambda rows: rows.append(dict(rows[1])), "twice"),
    (lambda rows: rows[1].pop("licence"), "licence"),
    (lambda rows: rows[1].update(format="onnx"), "unknown format"),
    (lambda rows: rows.reverse(), "first catalogue entry"),
])
def test_catalogue_validation_rejects(change, message):
    data = json.loads(zoo.CATALOGUE_PATH.read_text(encoding="utf-8"))
    change(data["models"])
    with pytest.raises(StudioError, match=message):
        zoo.parse_catalogue(data)


def test_resolve_specs(tmp_path):
    r = zoo.resolve("hf://Owner/Repo/dir/net.pkl@v1.0")
    assert (r.kind, r.repo_id, r.filename, r.revision) == ("hub", "Owner/Repo", "dir/net.pkl",
                                                          "v1.0")
    assert r.id == "hf://Owner/Repo/dir/net.pkl@v1.0"
    assert zoo.resolve("hf://Owner/Repo/net.pkl@main").id == "hf://Owner/Repo/net.pkl"
    url = "https://huggingface.co/DragGan/DragGan-Models/blob/main/stylegan2-ffhq-512x512.pkl"
    r = zoo.resolve(url)
    assert r.id == "ffhq-512" or r.entry is not None and r.entry.id == "ffhq-512"
    f = tmp_path / "model.pkl"
    f.write_bytes(b"x")
    assert zoo.resolve(str(f)).path == f.resolve()
    for bad in ["", "no-such-model", "hf://only-owner/file.pkl"]:
        with pytest.raises(StudioError):
            zoo.resolve(bad)
    # Hostile Hub locations are refused by us, before huggingface_hub sees them.
    for bad in ["hf://../../x", "hf://a/b/../c.pkl", "hf://a/../b/c.pkl", "hf://a b/c/d.pkl",
                "hf://a/b/c.pkl@x..y", "https://huggingface.co/../b/resolve/main/c.pkl"]:
        with pytest.raises(StudioError, match="not a Hub file location"):
            zoo.resolve(bad)


def test_default_model():
    assert zoo.DEFAULT_MODEL_PATH.exists()  # it ships with the studio
    m = zoo.load("default")
    assert m.resolution == 64 and m.id == "default" and len(m.sha256) == 64


# ----------------------------------------------------------------------------------------
# Hub: first load, cached load, offline.


def test_first_load_converts_and_reports_progress(hub, env, tiny):
    events: list[tuple[float, str]] = []
    m = zoo.load(SPEC, progress=lambda f, msg: events.append((f, msg)))
    assert _same_images(tiny[0], m.G)
    assert not any(p.requires_grad for p in m.G.parameters()) and not m.G.training
    assert m.id == SPEC and m.resolution == 32 and m.config == tiny[0].cfg
    # Our file sits beside the Hub cache, named by the source's sha256, with its sidecar.
    source_sha = sha256_file(next(iter(_blobs(env))))
    ours = env / "hf" / "activation-studio" / "converted" / f"{source_sha}.safetensors"
    assert m.path == ours and ours.exists()
    side = json.loads(sidecar_path(ours).read_text())
    assert side["sha256"] == m.sha256 == sha256_file(ours)
    assert side["source"]["repo_id"] == REPO and side["source"]["source_sha256"] == source_sha
    # Progress: download bytes, then conversion steps, ending at 1.
    fractions = [f for f, _ in events]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    assert any("downloading" in msg and "MB" in msg for _, msg in events)
    assert any("converted" in msg for _, msg in events)
    assert hub.count("GET", "/lfs/") == 1


def test_cached_load_is_fast_and_works_offline(hub, env, tiny, monkeypatch):
    zoo.load(SPEC)
    zoo.clear_cache()

    def no_conversion(*a, **k):
        raise AssertionError("converted again")

    monkeypatch.setattr(zoo, "_convert", no_conversion)
    t0 = time.process_time()  # CPU time: the background training may starve wall time
    m = zoo.load(SPEC)
    assert time.process_time() - t0 < 1.0
    assert hub.count("GET", "/lfs/") == 1  # no second download
    hub.stop()  # the Hub is gone: the cached copy still loads, first as a fallback ...
    zoo.clear_cache()
    assert _same_images(tiny[0], zoo.load(SPEC).G)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # ... then with offline mode asked for
    zoo.clear_cache()
    assert zoo.load(SPEC).sha256 == m.sha256


def test_offline_without_cache(env, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(StudioError, match="offline.*not in the cache"):
        zoo.load(SPEC)


@pytest.fixture
def no_hub_retry(monkeypatch):
    """huggingface_hub retries a failed metadata request with backoff (about 20 s) before
    giving up; tests of the failure itself skip that retry (a private name, hence no raise)."""
    import huggingface_hub.file_download as fd

    monkeypatch.setattr(fd, "_DEFAULT_RETRY_ON_EXCEPTIONS", (), raising=False)
    monkeypatch.setattr(fd, "_DEFAULT_RETRY_ON_STATUS_CODES", (), raising=False)


def test_unreachable_hub_without_cache(env, monkeypatch, no_hub_retry):
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # discard port: nothing listens
    with pytest.raises(StudioError, match="Could not reach the Hub"):
        zoo.load(SPEC)


def test_hub_timeout(hub, monkeypatch, no_hub_retry):
    hub.head_delay_s = 1.0
    monkeypatch.setenv("HF_HUB_ETAG_TIMEOUT", "0.2")
    with pytest.raises(StudioError, match="did not answer in time"):
        zoo.load("hf://acme/slow/net.pt")


# ----------------------------------------------------------------------------------------
# Hub: error answers.


def test_repo_not_found(hub):
    with pytest.raises(StudioError, match="no repository acme/missing"):
        zoo.load("hf://acme/missing/net.pt")


def test_file_not_found(hub):
    with pytest.raises(StudioError, match="has no file 'nets/other.pt'"):
        zoo.load(f"hf://{REPO}/nets/other.pt")


def test_revision_not_found(hub):
    with pytest.raises(StudioError, match="no revision 'v9'"):
        zoo.load(f"{SPEC}@v9")


def test_gated_repo_needs_token(hub, tiny, monkeypatch):
    hub.add_file("acme/gated", "g.pt", tiny[1], gated=True)
    with pytest.raises(StudioError, match="gated.*HF_TOKEN"):
        zoo.load("hf://acme/gated/g.pt")
    monkeypatch.setenv("HF_TOKEN", "hf_wrong")
    with pytest.raises(StudioError, match="gated"):
        zoo.load("hf://acme/gated/g.pt")
    monkeypatch.setenv("HF_TOKEN", hub.repos["acme/gated"].token)
    assert _same_images(tiny[0], zoo.load("hf://acme/gated/g.pt").G)
    assert any(auth for m, p, auth in hub.requests if "gated" in p and m == "HEAD")


# ----------------------------------------------------------------------------------------
# Hub: bad files.


def test_corrupt_download_is_discarded(hub, env, tiny):
    hub.add_file("acme/bad", "g.pt", tiny[1], corrupt=True)  # right size, wrong bytes
    with pytest.raises(StudioError, match="corrupt or incomplete.*removed from the cache"):
        zoo.load("hf://acme/bad/g.pt")
    assert _blobs(env) == []
    assert not (env / "hf" / "activation-studio" / "converted").exists()
    hub.repos["acme/bad"].files["g.pt"].corrupt = False  # the Hub is fixed: loading retries
    assert _same_images(tiny[0], zoo.load("hf://acme/bad/g.pt").G)


def test_truncated_checkpoint_is_discarded(hub, env, tiny):
    hub.add_file("acme/cut", "g.pt", tiny[1][: len(tiny[1]) // 2])
    with pytest.raises(StudioError, match="corrupt or incomplete"):
        zoo.load("hf://acme/cut/g.pt")
    assert _blobs(env) == []


def test_not_a_stylegan_checkpoint(hub, env):
    hub.add_file("acme/other", "model.pt", _torch_bytes({"encoder.weight": torch.zeros(3)}))
    with pytest.raises(StudioError, match="not a StyleGAN2 checkpoint"):
        zoo.load("hf://acme/other/model.pt")
    hub.add_file("acme/other", "notes.txt", b"hello", lfs=False)
    with pytest.raises(StudioError, match="not a StyleGAN2 checkpoint"):
        zoo.load("hf://acme/other/notes.txt")


# ----------------------------------------------------------------------------------------
# Concurrency and the LRU.


def test_two_threads_share_one_load(hub, monkeypatch):
    calls = []
    real = zoo._load_uncached

    def slow_load(*args, **kwargs):
        calls.append(threading.get_ident())
        # Hold the load open until the second caller has joined it (polled, not timed).
        deadline = time.monotonic() + 60
        while sum(len(p.listeners) for p in list(zoo._pending.values())) < 2:
            assert time.monotonic() < deadline, "the second caller never joined the load"
            time.sleep(0.005)
        return real(*args, **kwargs)

    monkeypatch.setattr(zoo, "_load_uncached", slow_load)
    barrier = threading.Barrier(2)
    results, errors, heard = [None, None], [], [[], []]

    def worker(i: int) -> None:
        try:
            barrier.wait()
            results[i] = zoo.load(SPEC, progress=lambda f, m: heard[i].append(f))
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    assert len(calls) == 1 and results[0] is results[1]
    assert hub.count("GET", "/lfs/") == 1
    assert heard[0][-1] == heard[1][-1] == 1.0  # both callers hear the load finish


def test_failed_load_is_not_cached(hub, tiny, monkeypatch):
    """A load that failed runs again on the next request: once its cause is fixed (the file
    is uploaded), the same spec loads, instead of replaying the remembered error."""
    calls = []
    real = zoo._load_uncached

    def counted_load(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(zoo, "_load_uncached", counted_load)
    spec = "hf://acme/missing/net.pt"
    with pytest.raises(StudioError):
        zoo.load(spec)
    hub.add_file("acme/missing", "net.pt", tiny[1])
    model = zoo.load(spec)
    assert len(calls) == 2
    assert _same_images(model.G, tiny[0])


def _local_models(folder: Path, n: int) -> list[str]:
    paths = []
    for i in range(n):
        p = folder / f"g{i}.safetensors"
        save_generator(make_tiny_generator(seed=i), p, source={"test": i})
        paths.append(str(p))
    return paths


def test_lru_bounded_by_count(env, monkeypatch):
    a, b, c = _local_models(env, 3)
    monkeypatch.setenv(zoo.ENV_MAX_MODELS, "2")
    ma = zoo.load(a)
    zoo.load(b)
    assert zoo.load(a) is ma  # a is now the most recent
    zoo.load(c)
    ids = [m.id for m in zoo.loaded_models()]
    assert ids == [str(Path(a).resolve()), str(Path(c).resolve())]  # b was least recent


def test_lru_bounded_by_bytes(env, monkeypatch):
    a, b = _local_models(env, 2)
    m = zoo.load(a)
    assert m.nbytes > 0
    monkeypatch.setenv(zoo.ENV_MAX_MODEL_MB, "1")  # a tiny model is ~0.3 MB: two fit
    zoo.load(b)
    assert len(zoo.loaded_models()) == 2
    monkeypatch.setattr(zoo, "_limits", lambda: (3, m.nbytes + 1))  # room for one only
    zoo.load(a)
    assert [x.id for x in zoo.loaded_models()] == [str(Path(a).resolve())]


# ----------------------------------------------------------------------------------------
# Local files.


def test_local_checkpoint_converted_once(env, tiny, monkeypatch):
    src = env / "tiny.pt"
    src.write_bytes(tiny[1])
    m = zoo.load(str(src))
    assert m.path == zoo.converted_dir() / f"{sha256_file(src)}.safetensors"
    assert _same_images(tiny[0], m.G)
    zoo.clear_cache()
    monkeypatch.setattr(zoo, "_convert", lambda *a, **k: pytest.fail("converted twice"))
    assert zoo.load(str(src)).sha256 == m.sha256


def test_local_studio_file_loads_directly(env):
    (path,) = _local_models(env, 1)
    m = zoo.load(path)
    assert m.path == Path(path).resolve()
    assert m.sha256 == sha256_file(path) and m.source == {"test": 0}
    assert not zoo.converted_dir().exists()


def test_local_corrupt_file(env):
    bad = env / "broken.pt"
    bad.write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(StudioError, match="broken.pt"):
        zoo.load(str(bad))


# ----------------------------------------------------------------------------------------
# CLI.


def test_cli_zoo_list(env, capsys):
    assert main(["zoo", "list"]) == 0
    out = capsys.readouterr().out
    assert "default" in out and "ffhq-512" in out
    assert main(["zoo", "list", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert rows[0]["id"] == "default" and all("cached" in r for r in rows)


def test_cli_zoo_fetch_info_generate(hub, env, capsys):
    assert main(["zoo", "fetch", SPEC]) == 0
    assert "activation-studio/converted" in capsys.readouterr().out.replace(os.sep, "/")
    assert main(["info", "--model", SPEC]) == 0
    out = capsys.readouterr().out
    assert "b32.conv1" in out and "[32, 32, 32]" in out and "num_ws" in out
    out_dir = env / "out"
    assert main(["generate", "--model", SPEC, "--seeds", "0-2,5", "--psi", "0.7",
                 "--out", str(out_dir), "--grid", "--batch", "3"]) == 0
    names = sorted(p.name for p in out_dir.iterdir())
    assert names == ["grid.png", "seed0000.png", "seed0001.png", "seed0002.png", "seed0005.png"]


def test_cli_errors_are_one_sentence(env, capsys):
    assert main(["info", "--model", "no-such-model"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err and err.count("\n") == 1
    assert main(["generate", "--model", "no-such-model", "--seeds", "3-1", "--out", "x"]) == 2


def test_interrupted_download_is_not_cached_and_a_retry_succeeds(hub, env, tiny, no_hub_retry):
    hub.add_file("acme/flaky", "g.pt", tiny[1])
    hub.repos["acme/flaky"].files["g.pt"].cut_downloads = 100  # every try drops half-way
    with pytest.raises(StudioError, match="connection to the Hub broke.*try again"):
        zoo.load("hf://acme/flaky/g.pt")
    assert _blobs(env) == []
    hub.repos["acme/flaky"].files["g.pt"].cut_downloads = 0  # the network is back
    assert _same_images(tiny[0], zoo.load("hf://acme/flaky/g.pt").G)


def test_download_cut_once_resumes_to_the_right_bytes(hub, env, tiny, monkeypatch):
    from huggingface_hub import constants

    # huggingface_hub resumes from the bytes it has written, in chunks of 10 MB; smaller
    # chunks let a 350 kB file be part-written when the line drops.
    monkeypatch.setattr(constants, "DOWNLOAD_CHUNK_SIZE", 16 * 1024)
    hub.add_file("acme/blip", "g.pt", tiny[1])
    hub.repos["acme/blip"].files["g.pt"].cut_downloads = 1
    assert _same_images(tiny[0], zoo.load("hf://acme/blip/g.pt").G)
    assert hub.resumed_downloads == 1


def test_a_folder_is_not_a_checkpoint(env, tmp_path):
    with pytest.raises(StudioError, match="is a folder, not a checkpoint file") as err:
        zoo.load(str(tmp_path))
    assert str(err.value).count(". ") == 0  # one sentence


def test_space_preloads_are_read_from_the_image_cache(hub, env, tiny, monkeypatch):
    """preload_from_hub fills the image's Hub cache at build time; with HF_HOME moved to
    persistent storage the studio reads those files from there instead of downloading."""
    build = env / "build-home"
    monkeypatch.setenv("HF_HOME", str(build))
    zoo.fetch(SPEC)  # what the Space build does: a plain Hub download into the image
    assert hub.count("GET", "/lfs/") == 1
    hub.stop()
    zoo.clear_cache()
    image = sorted(str(p) for p in build.rglob("*"))
    data = env / "data" / "huggingface"
    monkeypatch.setenv("HF_HOME", str(data))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(StudioError, match="not in the cache"):
        zoo.load(SPEC)  # without the preload cache named, the file is nowhere
    monkeypatch.setenv(zoo.ENV_PRELOAD_CACHE, str(build / "hub"))
    m = zoo.load(SPEC)
    assert _same_images(tiny[0], m.G)
    # The conversion goes to persistent storage; the image's cache is only read.
    assert m.path is not None and m.path.is_relative_to(data)
    assert sorted(str(p) for p in build.rglob("*")) == image
