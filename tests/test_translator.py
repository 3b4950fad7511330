"""Translator: encoder shapes, training resume, model checks, Hub push/pull, translation."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import torch
from sklearn.datasets import load_sample_image

from engine.base.errors import StudioError
from engine.tools import translator as T
from engine.tools.latents import LatentSpec

TRAIN = dict(batch=2, stat_samples=8, eval_seeds=(), warmup=1, width=8, max_width=16,
             preview_every=0)


@pytest.fixture(scope="module")
def G():
    from conftest import make_tiny_generator

    return make_tiny_generator()


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    return load_sample_image("china.jpg")


def _saved(G, path: Path, layer: str = T.DEFAULT_LAYER, **arch) -> Path:
    torch.manual_seed(0)
    enc = T.make_encoder(G, layer, **arch)
    return T.save_encoder(enc, path, meta={"base_model_id": "tiny",
                                           "base_model_sha256": "f" * 64,
                                           "base_model_weights_sha256": T.weights_sha256(G)})


def test_encoder_shapes_every_conv_layer(G):
    shapes = G.layer_shapes() if callable(G.layer_shapes) else G.layer_shapes
    layers = T.conv_layers(G)
    assert layers[0] == "b4.conv1" and "b32.conv1" in layers and not any("torgb" in n
                                                                         for n in layers)
    for layer in layers:
        for size in (16, 32, 64):
            if size * 8 < shapes[layer][1] or size > shapes[layer][1] * 16:
                continue
            enc = T.make_encoder(G, layer, input_size=size, width=8, max_width=16)
            out = enc(torch.rand(2, 3, size, size) * 2 - 1)
            assert tuple(out.shape) == (2, *shapes[layer]), (layer, size)
            # The encoder's map enters the generator at that layer.
            img = G.synthesis(G.mapping(torch.randn(2, G.z_dim)), start=(layer, out))
            assert img.shape == (2, 3, 32, 32)


def test_bad_layers_and_sizes_are_refused(G):
    with pytest.raises(StudioError, match="not a conv layer"):
        T.make_encoder(G, "b16.torgb")
    with pytest.raises(StudioError, match="no layer"):
        T.make_encoder(G, "b128.conv1")
    with pytest.raises(StudioError, match="power of two"):
        T.make_encoder(G, "b16.conv1", input_size=48)
    with pytest.raises(StudioError, match="odd"):
        T.make_encoder(G, "b16.conv1", mean_filter=2)


def test_mean_filter_smooths_the_output(G):
    torch.manual_seed(0)
    plain = T.make_encoder(G, mean_filter=0)
    smooth = T.make_encoder(G, mean_filter=3)
    smooth.load_state_dict(plain.state_dict())
    x = torch.rand(1, 3, 32, 32) * 2 - 1
    a, b = plain(x), smooth(x)
    assert torch.allclose(b.mean(), a.mean(), atol=0.05)
    assert b.diff(dim=-1).abs().mean() < a.diff(dim=-1).abs().mean()


def test_resume_gives_the_uninterrupted_result(G, tmp_path):
    full = T.train_encoder(G, steps=4, seed=3, out_dir=tmp_path / "a", jitter=1,
                           checkpoint_every=0, **TRAIN)
    calls = {"n": 0}

    def cancel() -> bool:  # stop before the third step
        calls["n"] += 1
        return calls["n"] == 3

    with pytest.raises(T.TrainingCancelled, match="resume"):
        T.train_encoder(G, steps=4, seed=3, out_dir=tmp_path / "b", jitter=1, cancel=cancel,
                        checkpoint_every=0, **TRAIN)
    ckpt = tmp_path / "b" / T.CHECKPOINT_FILE
    assert ckpt.is_file() and torch.load(ckpt, weights_only=True)["step"] == 2
    resumed = T.train_encoder(G, steps=4, seed=3, out_dir=tmp_path / "b", jitter=1,
                              checkpoint_every=0, **TRAIN)
    a, b = full.encoder.state_dict(), resumed.encoder.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert not ckpt.exists()  # removed once the run finished
    other = T.train_encoder(G, steps=4, seed=4, **TRAIN)
    assert not torch.equal(other.encoder.head.weight, full.encoder.head.weight)
    # A checkpoint from other settings is not silently mixed in.
    with pytest.raises(T.TrainingCancelled):
        T.train_encoder(G, steps=4, seed=3, out_dir=tmp_path / "c", cancel=lambda: True,
                        **TRAIN)
    with pytest.raises(StudioError, match="was written with lr=0.002, not 0.0001"):
        T.train_encoder(G, steps=4, seed=3, out_dir=tmp_path / "c", lr=1e-4, **TRAIN)


def test_saved_encoder_files_and_sidecar(G, tmp_path):
    r = T.train_encoder(G, steps=2, out_dir=tmp_path / "e", model_sha256="ab" * 32,
                        model_id="tiny", act_weight=1.0, image_weight=0.5, **{
                            **TRAIN, "preview_every": 1})
    names = {p.name for p in (tmp_path / "e").iterdir()}
    assert {T.ENCODER_FILE, T.SIDECAR_FILE, T.CARD_FILE, T.PREVIEW_FILE} <= names
    meta = json.loads((tmp_path / "e" / T.SIDECAR_FILE).read_text())
    assert meta["base_model_sha256"] == "ab" * 32
    assert meta["base_model_weights_sha256"] == T.weights_sha256(G)
    assert meta["layer"] == "b16.conv1" and meta["input_size"] == 32
    assert meta["architecture"]["width"] == 8
    assert meta["training"]["image_weight"] == 0.5 and meta["training"]["steps"] == 2
    assert meta["metrics"]["processes"] == 1 and "final_loss" in meta["metrics"]
    enc = T.load_encoder(tmp_path / "e", "ab" * 32)
    assert torch.equal(enc.head.weight, r.encoder.head.weight.cpu())
    assert "b16.conv1" in (tmp_path / "e" / T.CARD_FILE).read_text()
    # A time limit ends the run early and still saves the encoder.
    early = T.train_encoder(G, steps=50, out_dir=tmp_path / "f", max_seconds=0, **TRAIN)
    assert early.steps == 0 and early.metrics["stopped_early_at_step"] == 0
    assert (tmp_path / "f" / T.ENCODER_FILE).is_file()


def test_encoder_for_another_model_is_refused(G, tmp_path):
    from conftest import make_tiny_generator

    path = _saved(G, tmp_path / "enc")
    other = make_tiny_generator(seed=1)
    with pytest.raises(StudioError, match="trained for another model"):
        T.load_encoder(path, expected_model_sha256="0" * 64)
    with pytest.raises(StudioError, match="trained for another model"):
        T.Translator.load(path, other)
    # Another architecture altogether: the layer's shape differs.
    wide = make_tiny_generator(channel_max=64, channel_base=2048)
    with pytest.raises(StudioError, match="another model"):
        T.Translator(wide, T.load_encoder(path))
    # Its own model (by file sha or by weights) is accepted.
    assert T.load_encoder(path, "f" * 64).config.layer == "b16.conv1"
    assert T.Translator.load(path, G).layer == "b16.conv1"
    assert T.Translator.load(path, G, model_sha256="1" * 64).layer == "b16.conv1"  # weights
    with pytest.raises(StudioError, match="no encoder"):
        T.load_encoder(tmp_path / "missing")


def test_a_read_only_frame_is_translated_without_a_numpy_warning(G, tmp_path, photo):
    """np.asarray of a PIL picture is read-only; a tensor built on it without a copy makes
    torch warn 'The given NumPy array is not writable' (once per process, so a fresh one
    runs this with that warning as an error)."""
    import subprocess
    import sys

    from engine.gan.checkpoints import save_generator

    model = tmp_path / "g.safetensors"
    save_generator(G, model, source="random tiny test model")
    encoder = _saved(G, tmp_path / "enc")
    np.save(tmp_path / "frame.npy", photo)
    code = "\n".join([
        "import warnings", "import numpy as np",
        "warnings.filterwarnings('error', message='.*not writable')",
        "from engine.tools import translator as T",
        "from engine.gan.checkpoints import load_generator",
        f"tr = T.Translator.load({str(encoder)!r}, load_generator({str(model)!r}))",
        "tr.set_latent(1)",
        f"frame = np.load({str(tmp_path / 'frame.npy')!r})",
        "frame.flags.writeable = False",
        "for framing in ('crop', 'pad'):",
        "    tr.set_latent(1, framing=framing)",
        "    assert tr.translate_frame(frame).shape == (32, 32, 3)"])
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=Path(__file__).resolve().parents[1], timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]


def test_translate_photo_shapes_latent_and_bends(G, tmp_path, photo):
    tr = T.Translator.load(_saved(G, tmp_path / "enc"), G)
    one = tr.translate(photo, 1)
    assert one.shape == (32, 32, 3) and one.dtype == np.uint8
    from PIL import Image

    batch = tr.translate([photo, Image.fromarray(photo[:200, :300])], LatentSpec(seed=1))
    assert batch.shape == (2, 32, 32, 3)
    assert np.array_equal(batch[0], one)
    t = torch.from_numpy(photo.copy()).permute(2, 0, 1)[None].float() / 127.5 - 1
    assert tr.translate(t, 1).shape == (1, 32, 32, 3)
    # The latent still steers the layers after the start layer.
    assert not np.array_equal(tr.translate(photo, 2), one)
    psi0 = tr.translate(photo, LatentSpec(seed=1, psi=0.0))
    assert np.array_equal(psi0, tr.translate(photo, LatentSpec(seed=5, psi=0.0)))
    # Bends through taps on later layers change it; ws of shape [1, num_ws, w_dim] work.
    ws = tr.ws_for(1)
    bent = tr.translate(photo, ws, taps={"b32.conv0": lambda x: x.flip(-1)})
    assert not np.array_equal(bent, one)
    # The real-time path gives the same frame as translate() for the same latent and anchor
    # (a still's default "match" anchor is fitted to the picture; a frame's is the bank's).
    tr.set_latent(1, anchor="latent")
    still = tr.translate(photo, 1, anchor="latent")
    assert np.abs(tr.translate_frame(photo).astype(int) - still.astype(int)).max() <= 1
    with pytest.raises(StudioError, match="latents for"):
        tr.translate([photo, photo, photo], torch.zeros(2, G.num_ws, G.cfg.w_dim))


def test_translate_folder_and_video(G, tmp_path, photo):
    from PIL import Image

    from engine.base.video import read_video_frames, write_video

    tr = T.Translator.load(_saved(G, tmp_path / "enc"), G)
    src = tmp_path / "pics"
    src.mkdir()
    Image.fromarray(photo).save(src / "china.jpg")
    Image.fromarray(load_sample_image("flower.jpg")).save(src / "flower.png")
    (src / "notes.txt").write_text("not a picture")
    out = tr.translate_folder(src, tmp_path / "out")
    assert [p.name for p in out] == ["china.png", "flower.png"]
    assert np.asarray(Image.open(out[0])).shape == (32, 32, 3)
    frames = [np.roll(photo[:, :400], 8 * i, axis=1) for i in range(4)]
    write_video(frames, tmp_path / "in.gif", fps=10)
    vid = tr.translate_video(tmp_path / "in.gif", tmp_path / "out.gif", walk=[1, 2])
    got = list(read_video_frames(vid))
    assert len(got) == 4 and got[0].shape == (32, 32, 3)
    same = tr.translate_video(tmp_path / "in.gif", tmp_path / "same.gif", latent=3,
                              max_frames=2)
    assert len(list(read_video_frames(same))) == 2


def test_cli_translate_and_train(G, tmp_path, photo, capsys):
    from PIL import Image

    from engine.__main__ import main
    from engine.gan.checkpoints import save_generator

    model = tmp_path / "tiny.safetensors"
    save_generator(G, model, source="test")
    enc_dir = tmp_path / "enc"
    rc = main(["train-encoder", "--model", str(model), "--steps", "2", "--batch", "2",
               "--width", "8", "--max-width", "16", "--out", str(enc_dir),
               "--preview-every", "1"])
    assert rc == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["steps"] == 2
    Image.fromarray(photo).save(tmp_path / "china.png")
    assert main(["translate", str(tmp_path / "china.png"), "--encoder", str(enc_dir),
                 "--model", str(model), "--seed", "4", "--out", str(tmp_path / "t.png")]) == 0
    assert np.asarray(Image.open(tmp_path / "t.png")).shape == (32, 32, 3)
    # An encoder for another model: one clear sentence, exit code 2.
    other = tmp_path / "other.safetensors"
    from conftest import make_tiny_generator

    save_generator(make_tiny_generator(seed=7), other, source="test")
    assert main(["translate", str(tmp_path / "china.png"), "--encoder", str(enc_dir),
                 "--model", str(other), "--out", str(tmp_path / "u.png")]) == 2
    assert "another model" in capsys.readouterr().err


class _FakeApi:
    """Records what push_encoder asks of huggingface_hub.HfApi."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict]] = []
        self.uploaded: dict[str, bytes] = {}

    def create_repo(self, repo_id: str, **kw):
        self.calls.append(("create_repo", {"repo_id": repo_id, **kw}))
        return f"https://huggingface.co/{repo_id}"

    def upload_folder(self, folder_path: str, repo_id: str, allow_patterns=(), **kw):
        self.calls.append(("upload_folder", {"repo_id": repo_id, **kw}))
        for p in Path(folder_path).iterdir():
            if p.name in allow_patterns:
                self.uploaded[p.name] = p.read_bytes()


def test_push_and_pull_through_a_fake_hub(G, tmp_path, monkeypatch):
    folder = tmp_path / "enc"
    _saved(G, folder)
    (folder / "checkpoint.pt").write_bytes(b"training state, not for the Hub")
    api = _FakeApi()
    url = T.push_encoder(folder, "someone/tiny-encoder", token="hf_x", api=api)
    assert url.endswith("someone/tiny-encoder")
    assert [c[0] for c in api.calls] == ["create_repo", "upload_folder"]
    assert api.calls[0][1]["exist_ok"] is True and api.calls[0][1]["token"] == "hf_x"
    assert set(api.uploaded) == {T.ENCODER_FILE, T.SIDECAR_FILE, T.CARD_FILE}
    card = api.uploaded[T.CARD_FILE].decode()
    assert card.startswith("---") and "b16.conv1" in card and "f" * 64 in card

    hub = tmp_path / "hub"
    hub.mkdir()
    for name, data in api.uploaded.items():
        (hub / name).write_bytes(data)

    def fake_download(repo_id: str, filename: str, token=None, **_):
        assert repo_id == "someone/tiny-encoder"
        dst = tmp_path / "cache" / filename
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(hub / Path(filename).name, dst)
        return str(dst)

    monkeypatch.setattr("huggingface_hub.hf_hub_download", fake_download)
    tr = T.Translator.load("hf://someone/tiny-encoder", G)
    assert tr.translate(np.zeros((40, 40, 3), np.uint8), 0).shape == (32, 32, 3)
    assert T.pull_encoder("hf://someone/tiny-encoder/encoder.safetensors").name == T.ENCODER_FILE
    with pytest.raises(StudioError, match="not a Hub encoder"):
        T.pull_encoder("hf://nobody")

    class Failing(_FakeApi):
        def create_repo(self, repo_id: str, **kw):
            raise PermissionError("401 Unauthorized")

    with pytest.raises(StudioError, match="could not push"):
        T.push_encoder(folder, "someone/tiny-encoder", api=Failing())


def _two_process_job(out: str) -> None:
    import torch.distributed as dist
    from conftest import make_tiny_generator

    r = T.train_encoder(make_tiny_generator(), steps=3, seed=1, out_dir=out, **TRAIN)
    state = {k: v.clone() for k, v in r.encoder.state_dict().items()}
    torch.save(state, Path(out) / f"rank{dist.get_rank()}.pt")


@pytest.mark.slow
def test_two_cpu_processes_train_together(tmp_path):
    out = tmp_path / "multi"
    T.run_processes(_two_process_job, 2, (str(out),))
    meta = json.loads((out / T.SIDECAR_FILE).read_text())
    assert meta["metrics"]["processes"] == 2
    a = torch.load(out / "rank0.pt", weights_only=True)
    b = torch.load(out / "rank1.pt", weights_only=True)
    # Gradients were averaged across the processes, so both hold the same weights.
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_default_model_translates_a_photo(photo):
    from engine.models import zoo

    enc = zoo.DEFAULT_MODEL_PATH.parent / "encoder_b16"  # both ship with the studio
    assert zoo.DEFAULT_MODEL_PATH.exists() and (enc / T.ENCODER_FILE).exists()
    m = zoo.load("default")
    tr = T.Translator.load(enc, m.G, model_sha256=m.sha256)
    assert tr.translate(photo, 1).shape == (64, 64, 3)


def test_recipe_render_reuses_a_loaded_encoder_until_its_file_changes(G, tmp_path, photo,
                                                                     monkeypatch):
    import os

    from PIL import Image

    from engine.recipes import recipe as R
    from engine.recipes.recipe import Recipe, TranslatorSpec

    path = _saved(G, tmp_path / "enc")
    Image.fromarray(photo).save(tmp_path / "photo.png")
    loads = []
    real_load = T.Translator.load.__func__
    monkeypatch.setattr(T.Translator, "load", classmethod(
        lambda cls, *a, **k: loads.append(a) or real_load(cls, *a, **k)))
    r = Recipe(model="tiny", translator=TranslatorSpec(encoder=str(path),
                                                       image=str(tmp_path / "photo.png")))
    first = R.render(r, G)
    again = R.render(r, G)
    assert len(loads) == 1 and np.array_equal(np.asarray(first), np.asarray(again))
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    R.render(r, G)
    assert len(loads) == 2  # a newer file is read again


def test_blending_renders_only_up_to_the_start_layer_for_its_activation(G, tmp_path, photo):
    """Below strength 1 the latent's (or anchor's) activation at the start layer comes from
    a render that stops after that layer's block, not a second whole picture; the frame is
    the same as with a whole render."""
    tr = T.Translator.load(_saved(G, tmp_path / "enc"), G)
    calls: list[dict] = []
    forward = type(G.synthesis).forward

    def recorded(self, *args, **kwargs):
        calls.append(kwargs)
        return forward(self, *args, **kwargs)

    with mock.patch.object(type(G.synthesis), "forward", recorded):
        fast = tr.translate(photo, 1, strength=0.4, anchor="latent")
    res = T.parse_layer(tr.layer)[0]
    assert [c.get("stop") for c in calls] == [f"b{res}", None]
    assert "capture" in calls[0] and "start" in calls[1]
    with mock.patch.object(T, "can_stop_early", lambda G: False):
        whole = tr.translate(photo, 1, strength=0.4, anchor="latent")
    assert np.array_equal(fast, whole)
