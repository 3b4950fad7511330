"""The engine's hostile-input checks, through a real server started from spaces_app.py:
memory-bomb checkpoints uploaded, special files named as models, over-limit recipes. Each
is refused with one sentence, the server's peak memory stays bounded (its /proc peak,
reset before the attack), and it then renders a normal request exactly as the engine does."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.helpers import hostile as H
from tests.helpers.browser import studio_client, studio_server, tiny_model_file

gradio_client = pytest.importorskip("gradio_client")
if not Path("/proc/self/clear_refs").exists():
    pytest.skip("needs Linux /proc to measure the server's peak memory", allow_module_level=True)

MAX_GROWTH_MIB = 300  # the server's peak above its RSS before the attack


def _server_pid(port: str) -> int:
    """The spaces_app.py process serving on `port` (one of ours: /proc/<pid>/environ)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmd = (entry / "cmdline").read_bytes()
            env = (entry / "environ").read_bytes()
        except OSError:
            continue
        if b"spaces_app.py" in cmd and f"GRADIO_SERVER_PORT={port}\0".encode() in env:
            return int(entry.name)
    raise AssertionError(f"no studio server on port {port}")


def _kib(pid: int, field: str) -> int:
    text = Path(f"/proc/{pid}/status").read_text()
    return next(int(line.split()[1]) for line in text.splitlines() if line.startswith(field))


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    folder = tmp_path_factory.mktemp("hostile-server")
    model = tiny_model_file(folder)
    with studio_server(model, env={"STUDIO_OUTPUT_DIR": str(folder / "out"),
                                   "HF_HOME": str(folder / "hf")}) as url:
        port = url.rstrip("/").rsplit(":", 1)[1]
        yield url, model, _server_pid(port), folder


def _refused(call, *args, api_name: str) -> str:
    with pytest.raises(Exception) as err:  # gradio_client raises AppError with the text
        call(*args, api_name=api_name)
    message = str(err.value)
    assert "Traceback" not in message, message
    return message


def test_hostile_uploads_and_paths_cost_nothing_and_the_server_renders_after(server):
    from gradio_client import handle_file

    from engine.models import zoo
    from engine.recipes import recipe

    url, model, pid, folder = server
    client = studio_client(url)
    client.predict(model, api_name="/load_model")
    bombs = folder / "bombs"
    bombs.mkdir()
    files = {
        "numpy _reconstruct": (H.numpy_reconstruct_bomb(bombs / "a.pkl"), "numpy's own"),
        "codecs copies": (H.memo_copies_bomb(bombs / "b.pkl"), "being read"),
        "container copies": (H.container_copies_bomb(bombs / "c.pkl"), "being read"),
        "container copies in a torch zip": (H.torch_zip_copies_bomb(bombs / "f.pt"),
                                            "being read"),
        "deflated zip": (H.deflated_zip_bomb(bombs / "d.pt"), "compressed record"),
        "shared storage": (H.shared_storage_bomb(bombs / "e.pt"), "declare"),
        "one module shared 10x per level, 10 deep": (
            H.nvlabs_shared_module_bomb(bombs / "g.pkl"), "one layer under several names"),
        "a 64 GiB BINBYTES8 claim": (H.binbytes8_claim(bombs / "h.pkl"), "h.pkl"),
    }
    Path(f"/proc/{pid}/clear_refs").write_text("5")
    before = _kib(pid, "VmRSS")
    for name, (path, words) in files.items():
        message = _refused(client.predict, handle_file(str(path)),
                           api_name="/upload_checkpoint")
        assert words in message, (name, message)
    # Special files named as a model: one sentence at once, nothing read.
    fifo = folder / "pipe.pkl"
    os.mkfifo(fifo)
    for path in ("/dev/zero", str(fifo)):
        start = time.monotonic()
        message = _refused(client.predict, path, api_name="/load_model")
        assert time.monotonic() - start < 20, path
        assert "not a regular file" in message or "not allowed" in message, message
    # A recipe over the limits: refused before any clustering, the field named.
    over = folder / "over.json"
    over.write_text(json.dumps({"version": 1, "model": model, "bends": [
        {"layer": "b16.conv1", "op": "invert",
         "channels": {"mode": "clusters", "ids": [0], "k": 4, "samples": 12000}}]}))
    start = time.monotonic()
    message = _refused(client.predict, handle_file(str(over)), api_name="/load_recipe")
    assert "bends[0].channels.samples: 12000 is above the limit" in message, message
    assert time.monotonic() - start < 20
    growth_mib = (_kib(pid, "VmHWM") - before) / 1024
    assert growth_mib < MAX_GROWTH_MIB, growth_mib
    # Still serving, and exactly what the engine renders.
    client.predict(model, api_name="/load_model")
    added = client.predict("invert", "b16.conv1", "all channels", 0.5, api_name="/add_bend")
    _, text = client.predict(api_name="/save_recipe")
    expected = np.asarray(recipe.render(recipe.Recipe.from_json(text), zoo.load(model)))
    assert np.array_equal(np.asarray(Image.open(added[0]).convert("RGB")), expected)


def test_a_zip_bomb_bundle_costs_nothing_and_leaves_nothing(server):
    """A 2 MB bundle holding 2 GiB of zeros (before: +4.1 GB and 2 GiB on disk per request)."""
    from gradio_client import handle_file

    url, model, pid, folder = server
    client = studio_client(url)
    client.predict(model, api_name="/load_model")
    bomb = H.zeros_bundle(folder / "zeros-bundle.zip")
    Path(f"/proc/{pid}/clear_refs").write_text("5")
    before = _kib(pid, "VmRSS")
    message = _refused(client.predict, handle_file(str(bomb)), api_name="/load_recipe")
    growth_mib = (_kib(pid, "VmHWM") - before) / 1024
    assert "more than 1.0 GiB" in message, message
    assert growth_mib < MAX_GROWTH_MIB, growth_mib
    unpacked = [p for p in (folder / "out").rglob("*") if "bundles" in p.parts and p.is_file()]
    assert unpacked == [], unpacked
