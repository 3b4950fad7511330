"""Helpers for tests that talk to a real studio server: start it, find Chromium, wait for it.

The server runs `spaces_app.py` in a child process on a free loopback port, exactly as a
user would start it, so the tests cover the entry point, the queue and the HTTP layer.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
DEFAULT_MODEL_FILE = REPO / "engine" / "default_model" / "faces64.safetensors"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--disable-dev-shm-usage"]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def studio_client(url: str) -> Any:
    """A gradio_client.Client for `url` that reuses one SSL context for all its requests.

    gradio_client opens a new httpx client for every request and every file download, and
    each one loads the certificate store again (about 40 ms here). Handing it one ready
    context keeps certificate checks on (they matter for https Spaces) and removes that
    cost from each call.
    """
    import ssl

    from gradio_client import Client

    return Client(url, verbose=False, ssl_verify=ssl.create_default_context())


def chromium_path() -> str | None:
    for name in ("/usr/bin/chromium", "/usr/bin/chromium-browser"):
        if os.path.exists(name):
            return name
    return shutil.which("chromium")


def tiny_model_file(folder: Path) -> str:
    """A 32 px random generator saved in our checkpoint format (for fast API tests)."""
    from engine.checkpoints import save_generator
    from tests.conftest import make_tiny_generator

    path = folder / "tiny.safetensors"
    if not path.exists():
        save_generator(make_tiny_generator(0), path, source="random tiny test model")
    return str(path)


@contextmanager
def studio_server(model: str, env: dict[str, str] | None = None,
                  timeout: float = 90.0) -> Iterator[str]:
    """Run `python spaces_app.py` on a free port; yields its URL, stops it afterwards."""
    port = free_port()
    child_env = {**os.environ, "GRADIO_SERVER_NAME": "127.0.0.1",
                 "GRADIO_SERVER_PORT": str(port), "STUDIO_MODEL": model,
                 "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1",
                 "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"), **(env or {})}
    log = open(REPO / ".pytest_cache" / f"studio-{port}.log", "w") \
        if (REPO / ".pytest_cache").is_dir() else subprocess.DEVNULL
    proc = subprocess.Popen([sys.executable, str(REPO / "spaces_app.py")], cwd=REPO,
                            env=child_env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"the studio server exited with code {proc.returncode}")
            try:
                with urllib.request.urlopen(url, timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"the studio server did not answer on {url}")
            time.sleep(0.3)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if log is not subprocess.DEVNULL:
            log.close()
