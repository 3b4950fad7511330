"""Memory bombs in checkpoint and encoder files are refused by what they declare.

Each file is small; a reader that believed its declarations would allocate gigabytes
(measured before these checks: 1.0-4.0 GiB each). Every file is read in a fresh process
whose peak RSS is measured, so the test fails if the memory is taken even briefly.
"""

from __future__ import annotations

import pytest

from tests.helpers import hostile as H

# What reading a refused file may cost (the probe's positive control shows that a real
# allocation of CONTROL_MIB measures as that much).
MAX_PEAK_MIB = 100
CONTROL_MIB = 300

CHECKPOINT_BOMBS = {
    "numpy _reconstruct declaring 1 GiB": (H.numpy_reconstruct_bomb, "numpy's own pickles"),
    "numpy state declaring 2 GiB": (H.numpy_setstate_bomb, "declares a size"),
    "one string encoded 96 times": (H.memo_copies_bomb, "being read"),
    "one buffer made into 96 arrays": (H.frombuffer_copies_bomb, "being read"),
    "nested torch stream declaring 2 GiB": (H.legacy_storage_bomb, "storage"),
    "deflated 256 MiB zip record": (H.deflated_zip_bomb, "compressed record"),
    "64 names viewing one 8 MiB storage": (H.shared_storage_bomb, "declare 512.0 MiB"),
    "one 200k-entry dict copied 60 times": (H.container_copies_bomb, "being read"),
    "the same inside a torch zip": (H.torch_zip_copies_bomb, "being read"),
    "a safetensors header of a million names": (H.many_tensors_safetensors, "tensor names"),
}


@pytest.fixture(scope="module")
def measured(tmp_path_factory) -> dict[str, tuple[str | None, float]]:
    folder = tmp_path_factory.mktemp("bombs")
    loads: list[tuple[str, object]] = []
    for i, (make, _) in enumerate(CHECKPOINT_BOMBS.values()):
        loads.append(("checkpoint", make(folder / f"bomb{i}.pkl")))
    loads.append(("encoder", H.wide_encoder(folder / "wide-encoder")))
    loads.append(("control", CONTROL_MIB))
    results = H.peak_rss_of_loads(loads)
    names = [*CHECKPOINT_BOMBS, "wide encoder", "control"]
    return dict(zip(names, results, strict=True))


def test_the_probe_sees_a_real_allocation(measured):
    _, peak = measured["control"]
    assert 0.95 * CONTROL_MIB <= peak <= CONTROL_MIB + MAX_PEAK_MIB, peak
    assert len({p for _, p in measured.values()}) > 1


@pytest.mark.parametrize("name", list(CHECKPOINT_BOMBS))
def test_checkpoint_bomb_is_refused_cheaply(measured, name):
    message, peak = measured[name]
    assert message is not None, f"{name} loaded"
    assert "\n" not in message and message.endswith("."), message
    assert CHECKPOINT_BOMBS[name][1] in message, message
    assert peak <= MAX_PEAK_MIB, (name, peak)


# ~2 KB pickles naming one layer 10 times per level through the memo, 10 levels deep: a walk
# with no record of what it has seen visits 10**10 layers (measured before the check: depth 7
# took 5.7 s and +116 MB, depth 8 36.8 s and +1.1 GB, each level x10).
SHARED_LAYER_BOMBS = {
    "NVlabs module tree": H.nvlabs_shared_module_bomb,
    "TensorFlow component tree": H.tf_shared_component_bomb,
}


def test_a_layer_named_many_times_is_refused_at_once(tmp_path):
    paths = [make(tmp_path / f"shared{i}.pkl")
             for i, make in enumerate(SHARED_LAYER_BOMBS.values())]
    assert all(p.stat().st_size < 3000 for p in paths)
    # A minute for what would take hours: the probe's process is killed past it.
    results = H.peak_rss_of_loads([("checkpoint", p) for p in paths], timeout=60)
    for name, (message, peak) in zip(SHARED_LAYER_BOMBS, results, strict=True):
        assert message is not None, f"{name} loaded"
        assert "one layer under several names" in message and "\n" not in message, message
        assert peak <= MAX_PEAK_MIB, (name, peak)


def test_a_pickle_claiming_64_gib_in_one_opcode_gets_one_sentence(tmp_path):
    from engine.base.errors import StudioError
    from engine.gan.checkpoints import read_checkpoint

    path = H.binbytes8_claim(tmp_path / "claim.pkl")
    assert path.stat().st_size < 200
    with pytest.raises(StudioError) as err:  # a MemoryError before, which the page showed raw
        read_checkpoint(path)
    message = str(err.value)
    assert "\n" not in message and message.endswith("."), message
    assert "claim.pkl" in message, message


def test_encoder_sidecar_architecture_is_checked_before_building(measured):
    message, peak = measured["wide encoder"]
    assert message is not None and "M parameters" in message and "\n" not in message, message
    assert peak <= MAX_PEAK_MIB, peak


# ----------------------------------------------------------------------------------------
# Files that are not regular files, or too large, cost nothing.


def _within(seconds: float, fn):
    """fn() in a thread; its exception or result, failing the test if it is still running."""
    import threading

    box: dict[str, object] = {}

    def run() -> None:
        try:
            box["result"] = fn()
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            box["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"still running after {seconds} s"
    return box.get("error", box.get("result"))


@pytest.mark.parametrize("kind", ["device", "fifo", "folder"])
def test_special_files_are_refused_unread(tmp_path, kind):
    import os

    from engine.base.errors import StudioError
    from engine.gan.checkpoints import read_checkpoint, sha256_file
    from engine.models import zoo
    from engine.recipes.recipe import Recipe

    path = {"device": "/dev/zero", "fifo": tmp_path / "pipe", "folder": tmp_path}[kind]
    if kind == "fifo":
        os.mkfifo(path)  # opening it for reading would block until a writer came
    for load in (zoo.load, read_checkpoint, sha256_file, Recipe.load):
        err = _within(10, lambda load=load: load(str(path)))
        assert isinstance(err, StudioError), (load, err)
        message = str(err)
        assert "\n" not in message and message.endswith("."), message
        assert ("folder" if kind == "folder" else "not a regular file") in message, message


def test_size_is_checked_before_hashing(tmp_path, monkeypatch):
    from engine.base.errors import StudioError
    from engine.gan import checkpoints
    from engine.models import zoo

    big = tmp_path / "big.pkl"
    big.write_bytes(b"\x80\x04" + b"\x00" * 4096)
    monkeypatch.setenv("STUDIO_MAX_CHECKPOINT_BYTES", "1024")
    monkeypatch.setattr(checkpoints, "sha256_file", lambda p: pytest.fail("hashed"))
    with pytest.raises(StudioError, match="more than the limit of") as err:
        zoo.load(str(big))
    assert "\n" not in str(err.value)


def test_latent_encoder_sidecar_is_checked_before_building(tmp_path, monkeypatch):
    import json

    from safetensors.torch import save_file

    from engine.base.errors import StudioError
    from engine.tools import projector

    path = tmp_path / "latent_encoder.safetensors"
    save_file({"x": projector.torch.zeros(4)}, str(path))
    config = {"resolution": 256, "num_ws": 18, "w_dim": 512, "channels": 4096,
              "max_channels": 4096}
    path.with_suffix(".json").write_text(json.dumps({"kind": "latent_encoder",
                                                     "config": config}))
    monkeypatch.setattr(projector, "LatentEncoder", lambda cfg: pytest.fail("built"))
    with pytest.raises(StudioError, match="M parameters") as err:
        projector.load_latent_encoder(path)
    assert "\n" not in str(err.value)


def test_boundary_files_must_be_regular(tmp_path):
    import os

    from engine.base.errors import StudioError
    from engine.tools.latents import load_boundary

    fifo = tmp_path / "b.npy"
    os.mkfifo(fifo)
    for path in (fifo, "/dev/zero", tmp_path):
        err = _within(10, lambda path=path: load_boundary(path))
        assert isinstance(err, StudioError) and "regular .npy file" in str(err), err
