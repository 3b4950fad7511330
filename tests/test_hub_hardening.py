"""hf:// on a public server (studio mode): the size is read from the Hub's metadata before
any download, the owner's HF_TOKEN reaches only catalogue and allow-listed repositories,
and the cache of downloads and conversions stays within its limit. Against the loopback Hub
(tests/helpers/hub.py); nothing here touches the internet."""

from __future__ import annotations

import io
import json

import pytest
import torch
from conftest import make_tiny_generator

from engine.base.errors import StudioError
from engine.models import zoo
from engine.tools import translator as T
from tests.helpers.hub import FakeHub

OWNER_TOKEN = "hf_owner_secret"


def _torch_bytes(obj: object) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


@pytest.fixture(scope="module")
def checkpoints() -> list[bytes]:
    """Three different tiny checkpoints (different seeds: different files and blobs)."""
    return [_torch_bytes({"G_ema": make_tiny_generator(seed=s).state_dict()}) for s in (1, 2, 3)]


@pytest.fixture
def studio(tmp_path, monkeypatch):
    """Studio mode, a fresh HF_HOME, the owner's token set, a fake Hub, an empty LRU."""
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    for name in ("HF_HUB_CACHE", "HF_HUB_OFFLINE", "HF_HUB_ETAG_TIMEOUT", "SPACE_ID",
                 zoo.ENV_TOKEN_REPOS, "STUDIO_MAX_CHECKPOINT_BYTES",
                 "STUDIO_MAX_HUB_CACHE_BYTES"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("STUDIO_SERVER_FILES", "studio")
    monkeypatch.setenv("HF_TOKEN", OWNER_TOKEN)
    zoo.clear_cache()
    with FakeHub() as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.endpoint)
        yield hub
    zoo.clear_cache()


def _auth_sent(hub: FakeHub, repo: str) -> set[bool]:
    """Whether requests to the Hub for `repo` carried a token (the storage host never gets
    one from huggingface_hub, whatever the token)."""
    return {auth for _, path, auth in hub.requests if path.startswith(f"/{repo}/resolve/")}


def test_a_visitors_repo_never_gets_the_owners_token(studio, checkpoints):
    studio.add_file("visitor/open", "g.pt", checkpoints[0])
    studio.add_file("owner/private", "g.pt", checkpoints[1], gated=True)
    studio.repos["owner/private"].token = OWNER_TOKEN  # the owner's token would open it
    zoo.load("hf://visitor/open/g.pt")
    assert _auth_sent(studio, "visitor/open") == {False}
    with pytest.raises(StudioError, match="gated") as err:
        zoo.load("hf://owner/private/g.pt")
    assert "\n" not in str(err.value)
    assert _auth_sent(studio, "owner/private") == {False}
    assert studio.count("GET", "/lfs/owner/private") == 0


def test_allow_listed_and_catalogue_repos_get_the_token(studio, checkpoints, monkeypatch,
                                                        tmp_path):
    studio.add_file("owner/private", "g.pt", checkpoints[1], gated=True)
    studio.repos["owner/private"].token = OWNER_TOKEN
    monkeypatch.setenv(zoo.ENV_TOKEN_REPOS, "someone/else, owner/private")
    zoo.load("hf://owner/private/g.pt")
    assert _auth_sent(studio, "owner/private") == {True}
    # A catalogue entry's repository is the owner's choice too.
    studio.add_file("owner/catalogued", "c.pt", checkpoints[2], gated=True)
    studio.repos["owner/catalogued"].token = OWNER_TOKEN
    data = json.loads(zoo.CATALOGUE_PATH.read_text())
    data["models"].append({**data["models"][1], "id": "owners-model",
                           "repo_id": "owner/catalogued", "filename": "c.pt",
                           "format": "rosinality-pt", "sha256": None, "revision": None})
    path = tmp_path / "catalogue.json"
    path.write_text(json.dumps(data))
    monkeypatch.setattr(zoo, "CATALOGUE_PATH", path)
    monkeypatch.setattr(zoo, "_catalogue_cache", None)
    monkeypatch.delenv(zoo.ENV_TOKEN_REPOS)
    zoo.load("owners-model")
    assert _auth_sent(studio, "owner/catalogued") == {True}


def test_outside_studio_mode_the_token_goes_everywhere(studio, checkpoints, monkeypatch):
    monkeypatch.setenv("STUDIO_SERVER_FILES", "any")
    studio.add_file("visitor/open", "g.pt", checkpoints[0])
    zoo.load("hf://visitor/open/g.pt")
    assert _auth_sent(studio, "visitor/open") == {True}


def test_size_is_checked_from_metadata_before_downloading(studio, checkpoints, monkeypatch):
    studio.add_file("visitor/big", "g.pt", checkpoints[0])
    studio.add_file("visitor/small", "tiny.json", b"{}", lfs=False)
    monkeypatch.setenv("STUDIO_MAX_CHECKPOINT_BYTES", str(len(checkpoints[0]) - 1))
    with pytest.raises(StudioError, match=r"more than this studio's limit .*STUDIO_MAX_CHECK"
                                          r"POINT_BYTES.*not downloaded") as err:
        zoo.load("hf://visitor/big/g.pt")
    assert "\n" not in str(err.value)
    assert studio.count("HEAD", "/visitor/big/") >= 1
    assert studio.count("GET", "/lfs/") == 0 and studio.count("GET", "/visitor/big/") == 0
    assert not list((zoo.hub_cache_dir()).rglob("blobs/*"))
    # A small (non-LFS) file announces its size through Content-Length: checked the same way.
    with pytest.raises(StudioError, match="not downloaded"):
        zoo.hub_file("visitor/small", "tiny.json", None, max_bytes=1)
    assert studio.count("GET", "/visitor/small/") == 0
    # Under the limit it downloads, pinned to the commit that answered.
    monkeypatch.setenv("STUDIO_MAX_CHECKPOINT_BYTES", str(len(checkpoints[0])))
    zoo.load("hf://visitor/big/g.pt")
    commit = studio.repos["visitor/big"].commit
    assert studio.count("GET", "/lfs/visitor/big/") == 1
    assert any(commit in p for m, p, _ in studio.requests if m == "HEAD")


def test_encoders_from_the_hub_are_size_checked_too(studio, monkeypatch):
    studio.add_file("visitor/enc", "encoder.safetensors", b"\0" * 4096)
    studio.add_file("visitor/enc", "encoder.json", b" " * (T.MAX_SIDECAR_BYTES + 1), lfs=False)
    with pytest.raises(StudioError, match="sidecar size limit"):
        T.pull_encoder("hf://visitor/enc")
    studio.add_file("visitor/enc", "encoder.json", b"{}", lfs=False)
    monkeypatch.setattr(T, "MAX_ENCODER_FILE_BYTES", 1024)
    with pytest.raises(StudioError, match="encoder size limit"):
        T.pull_encoder("hf://visitor/enc")
    assert studio.count("GET", "/lfs/") == 0
    assert _auth_sent(studio, "visitor/enc") == {False}


def test_the_cache_is_bounded_least_recently_used_first(studio, checkpoints, monkeypatch):
    for i, data in enumerate(checkpoints):
        studio.add_file(f"visitor/m{i}", "g.pt", data)
    size = len(checkpoints[0])
    converted = zoo.fetch("hf://visitor/m0/g.pt").stat().st_size
    per_model = size + converted + 4096  # download + conversion + its sidecar
    monkeypatch.setenv("STUDIO_MAX_HUB_CACHE_BYTES", str(int(2.5 * per_model)))
    zoo.fetch("hf://visitor/m1/g.pt")
    zoo.fetch("hf://visitor/m0/g.pt")  # used again: now m1 is the least recent
    zoo.fetch("hf://visitor/m2/g.pt")
    items = zoo._cache_items()
    assert sum(size for _, size, _, _ in items) <= 2.5 * per_model
    cached = {p.parts[-4] for p in zoo.hub_cache_dir().rglob("snapshots/*/g.pt")}
    assert cached == {"models--visitor--m0", "models--visitor--m2"}
    # What was evicted loads again (downloaded anew) and renders.
    model = zoo.load("hf://visitor/m1/g.pt")
    assert model.G is not None and studio.count("GET", "/lfs/visitor/m1/") == 2


def test_catalogue_pins_and_checksums():
    entries = {e.id: e for e in zoo.catalogue()}
    for e in entries.values():
        if e.repo_id == "ZeqiangLai/StyleGAN2":
            assert e.revision == "bb4e00dc8ac0afbb9e0a5b6f72754c679673ee2e", e.id
            assert e.spec.endswith("@bb4e00dc8ac0afbb9e0a5b6f72754c679673ee2e")
    elephants = entries["elephants-512"]
    assert elephants.verified and elephants.sha256 == (
        "56504894f6d7121959af78a74148cf1e9d858e3710312efb11c41dbf27684363")


def test_a_cached_file_still_loads_when_the_hub_does_not_answer(studio, checkpoints,
                                                                monkeypatch):
    import huggingface_hub.file_download as fd

    monkeypatch.setattr(fd, "_DEFAULT_RETRY_ON_EXCEPTIONS", (), raising=False)
    monkeypatch.setattr(fd, "_DEFAULT_RETRY_ON_STATUS_CODES", (), raising=False)
    studio.add_file("visitor/open", "g.pt", checkpoints[0])
    first = zoo.load("hf://visitor/open/g.pt")
    studio.stop()
    zoo.clear_cache()
    again = zoo.load("hf://visitor/open/g.pt")  # by revision 'main', from the cache
    assert again.sha256 == first.sha256
    with pytest.raises(StudioError, match="Could not reach the Hub"):
        zoo.load("hf://visitor/never-fetched/g.pt")


def test_conversions_of_uploaded_checkpoints_are_bounded_too(studio, checkpoints, tmp_path,
                                                             monkeypatch):
    """Issue 30: every distinct uploaded checkpoint left a converted copy under HF_HOME,
    trimmed only when a Hub model loaded; uploads now count toward the same bounded cache."""
    paths = []
    for i, data in enumerate(checkpoints):
        paths.append(tmp_path / f"upload{i}.pt")
        paths[-1].write_bytes(data)
    first = zoo.load(str(paths[0])).path
    per_model = first.stat().st_size + 4096  # the conversion and its sidecar
    monkeypatch.setenv("STUDIO_MAX_HUB_CACHE_BYTES", str(int(1.5 * per_model)))
    for path in paths[1:]:
        zoo.clear_cache()
        zoo.load(str(path))
    kept = sorted(zoo.converted_dir().glob("*.safetensors"))
    assert len(kept) == 1 and sum(size for _, size, _, _ in zoo._cache_items()) \
        <= 1.5 * per_model, kept
