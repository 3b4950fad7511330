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

REPO = Path(__file__).resolve().parents[2]
DEFAULT_MODEL_FILE = REPO / "engine" / "models" / "default_model" / "faces64.safetensors"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--disable-dev-shm-usage"]
# How long a browser test waits for the page: the CI machine may be busy; a render is
# milliseconds when it is not.
BROWSER_WAIT_MS = 120_000


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


def need_chromium() -> str:
    """Chromium's path; a browser test skips without it (CI installs it, .ci/run)."""
    path = chromium_path()
    if path is None:
        import pytest
        pytest.skip("Chromium is not installed (apt-get install chromium; .ci/run does it)")
    return path


def launch_chromium(playwright: Any, args: tuple[str, ...] = ()) -> Any:
    """Headless Chromium (skips the test without it); the caller closes it."""
    return playwright.chromium.launch(executable_path=need_chromium(),
                                      args=[*CHROMIUM_ARGS, *args])


def new_studio_page(browser: Any, url: str, width: int = 1280, height: int = 800,
                    timeout_ms: int = 120_000, **context_options: Any) -> Any:
    """A fresh page on the studio at `url` in a browser context of its own, so a Gradio
    session of its own (nothing left by an earlier test), once its first canvas image is
    shown. `context_options` go to `browser.new_context` (permissions, accept_downloads).
    The caller closes `page.context`."""
    context = browser.new_context(viewport={"width": width, "height": height},
                                  **context_options)
    page = context.new_page()
    page.set_default_timeout(timeout_ms)
    page.goto(url)
    page.wait_for_selector("#canvas img")
    return page


def open_studio_page(playwright: Any, url: str, width: int = 1280, height: int = 800,
                     timeout_ms: int = 120_000, args: tuple[str, ...] = ()) -> tuple[Any, Any]:
    """Headless Chromium on the studio at `url`, once its first canvas image is shown:
    (browser, page). The caller closes the browser."""
    browser = launch_chromium(playwright, args)
    return browser, new_studio_page(browser, url, width, height, timeout_ms)


def src(page: Any, selector: str) -> str | None:
    """The file an image component (`selector`, e.g. '#canvas') shows, or None."""
    el = page.query_selector(f"{selector} img")
    return el.get_attribute("src") if el else None


def wait_new_src(page: Any, selector: str, old: str | None,
                 timeout_ms: int = BROWSER_WAIT_MS) -> str:
    """Wait until the image in `selector` shows a different file (Gradio names files by
    content hash, so a new src means new pixels)."""
    deadline = time.monotonic() + timeout_ms / 1000
    while time.monotonic() < deadline:
        now = src(page, selector)
        if now and now != old:
            return now
        page.wait_for_timeout(100)
    raise AssertionError(f"{selector} did not change from {old}; the page: {page_state(page)}")


def pixels(page: Any, url: str) -> Any:
    """The RGB pixels (uint8 numpy array) of the image the page shows at `url`."""
    import io

    import numpy as np
    from PIL import Image

    body = page.request.get(url).body()
    return np.asarray(Image.open(io.BytesIO(body)).convert("RGB"))


def tab(page: Any, name: str) -> None:
    """Open the studio tab called `name` and wait until its panel is shown."""
    page.get_by_role("tab", name=name).click()
    page.locator(f"#tab-{name.lower()}").first.wait_for(state="visible")


def set_number(page: Any, selector: str, value: float) -> None:
    """Type `value` into the number box of `selector` and press Enter (its event fires)."""
    box = page.locator(f"{selector} input[type=number]").first
    box.fill(str(value))
    box.press("Enter")


def download_recipe_file(page: Any, button: str, dest: Path) -> Path:
    """Open the Recipe panel, press `button` (#recipe-save, #recipe-bundle) and save the
    file it offers to `dest`."""
    page.get_by_text("Recipe", exact=True).first.click()
    page.click(button)
    link = page.locator("#recipe-file a").first
    link.wait_for()
    with page.expect_download() as download:
        link.click()
    download.value.save_as(dest)
    return dest


def tiny_model_file(folder: Path) -> str:
    """A 32 px random generator saved in our checkpoint format (for fast API tests)."""
    from engine.gan.checkpoints import save_generator
    from tests.conftest import make_tiny_generator

    path = folder / "tiny.safetensors"
    if not path.exists():
        save_generator(make_tiny_generator(0), path, source="random tiny test model")
    return str(path)


# The process id of each running studio_server, by URL (tests read its peak memory).
SERVER_PIDS: dict[str, int] = {}


def stop_process(proc: subprocess.Popen) -> None:
    """SIGTERM, then SIGKILL if the process has not ended within 10 s."""
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@contextmanager
def studio_server(model: str, env: dict[str, str] | None = None,
                  timeout: float = 240.0) -> Iterator[str]:
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
        SERVER_PIDS[url] = proc.pid
        yield url
    finally:
        SERVER_PIDS.pop(url, None)
        stop_process(proc)
        if log is not subprocess.DEVNULL:
            log.close()


def job_progress(job: Any) -> float:
    """The share of its work a gradio_client Job has reported done (0 before its first
    report): a test waits on it instead of sleeping while a long job starts."""
    units = job.status().progress_data
    return float(units[0].progress or 0.0) if units else 0.0


def page_state(page: Any) -> str:
    """What the page shows that says why a wait failed: error toasts, the busy line, the live
    channel's status and error, the blend note (for a timed-out wait's message)."""
    return page.evaluate("""() => {
        const text = (sel) => [...document.querySelectorAll(sel)]
            .map((e) => e.innerText.trim()).filter(Boolean).join(' | ');
        return JSON.stringify({toasts: text('.toast-body'), busy: text('#busy'),
                               live: text('#live-status'), live_error: text('#live-error'),
                               blend_note: text('#blend-note')}); }""")


def upload_file(url: str, path: str | Path) -> dict[str, Any]:
    """Upload a file the way the page does; returns the FileData payload naming it."""
    import httpx

    with open(path, "rb") as f:
        r = httpx.post(f"{url}gradio_api/upload", files={"files": (Path(path).name, f)},
                       timeout=60)
    r.raise_for_status()
    return {"path": r.json()[0], "orig_name": Path(path).name, "meta": {"_type": "gradio.FileData"}}


def queue_call(client: Any, api_name: str, data: list[Any], timeout: float = 120) -> list[Any]:
    """Call an endpoint through Gradio's queue in `client`'s session, reading the event
    stream directly: gradio_client cannot read a streaming endpoint's answer (it stops at
    the 'process_streaming' message), and the webcam endpoint is one. Returns the first
    output's data (a stream is then cancelled, as the page does when the webcam stops);
    raises RuntimeError with the server's message when the call fails."""
    import json

    import httpx

    url = client.src if client.src.endswith("/") else client.src + "/"
    fn_index = client._infer_fn_index(api_name, None)
    data = list(client.endpoints[fn_index].insert_empty_state(*data))  # gr.State slots
    ids = {"fn_index": fn_index, "session_hash": client.session_hash}
    joined = httpx.post(f"{url}gradio_api/queue/join", timeout=30,
                        json={"data": data, "event_data": None, "trigger_id": None, **ids})
    joined.raise_for_status()
    event_id = joined.json()["event_id"]
    deadline = time.monotonic() + timeout
    with httpx.stream("GET", f"{url}gradio_api/queue/data",
                      params={"session_hash": client.session_hash}, timeout=timeout) as r:
        for line in r.iter_lines():
            if time.monotonic() > deadline:
                raise TimeoutError(f"{api_name} gave no answer in {timeout:.0f} s")
            if not line.startswith("data:"):
                continue
            msg = json.loads(line[5:])
            if msg.get("event_id") not in (None, event_id):
                continue
            out = msg.get("output") or {}
            if msg.get("msg") == "process_completed" and not msg.get("success", True):
                raise RuntimeError(out.get("error") or "the call failed")
            if out.get("data") is not None or msg.get("msg") == "process_completed":
                break
    httpx.post(f"{url}gradio_api/cancel", json={**ids, "event_id": event_id}, timeout=30)
    return out.get("data") or []
