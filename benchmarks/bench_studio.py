"""Round-trip latency of a live bend-parameter change through the real studio server.

Starts `spaces_app.py` on a loopback port, scripts it with gradio_client exactly as the
page's slider does (/bend_slider_0 after /add_bend), and times N changes of a rotate bend's
angle from request to the downloaded image. Prints p50 / p95 / mean in milliseconds
for tests/helpers/browser.studio_client (one shared SSL context) and for a default Client(),
plus plain HTTP and the server-side render time alone for comparison.

    python benchmarks/bench_studio.py                 # the embedded default model
    python benchmarks/bench_studio.py --model PATH    # any model spec
    python benchmarks/bench_studio.py --snapshot /work/runs/faces64/checkpoint.pt
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def snapshot_model(checkpoint: str, folder: Path) -> str:
    """Export a training snapshot's G_ema (64 px faces config) in our format."""
    import torch

    from engine.gan.checkpoints import save_generator
    from engine.gan.stylegan2 import Generator, GeneratorConfig

    copy = folder / "snapshot.pt"
    shutil.copy(checkpoint, copy)  # the trainer replaces the file every few minutes
    state = torch.load(copy, weights_only=True, map_location="cpu")
    G = Generator(GeneratorConfig(z_dim=128, w_dim=128, resolution=64, channel_base=2048,
                                  channel_max=128, mapping_layers=4))
    G.load_state_dict(state["G_ema"])
    out = folder / "snapshot.safetensors"
    save_generator(G, out, source=f"training snapshot {checkpoint}")
    return str(out)


def percentile(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    i = min(len(xs) - 1, max(0, round(q / 100 * (len(xs) - 1))))
    return xs[i]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="default", help="model spec (default: the embedded one)")
    ap.add_argument("--snapshot", help="a trainer checkpoint.pt to export and use instead")
    ap.add_argument("--changes", type=int, default=50, help="timed parameter changes")
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--layer", default="b16.conv1")
    ap.add_argument("--where", default="selected clusters",
                    choices=["selected clusters", "all channels"])
    ap.add_argument("--browser", action="store_true",
                    help="also time the same change in Chromium: typed angle -> new image")
    args = ap.parse_args()

    from gradio_client import Client

    from tests.helpers.browser import studio_client, studio_server

    folder = Path(tempfile.mkdtemp(prefix="bench-studio-"))
    model = snapshot_model(args.snapshot, folder) if args.snapshot else args.model
    env = {"STUDIO_OUTPUT_DIR": str(folder / "out")}
    with studio_server(model, env=env, timeout=300) as url:
        client = studio_client(url)
        client.predict(model, api_name="/load_model")
        if args.where == "selected clusters":
            client.predict(args.layer, 8, 64, api_name="/compute_clusters")
            client.predict([0, 2], api_name="/select_clusters")
        client.predict("rotate", args.layer, args.where, 0.5, api_name="/add_bend")
        times = slider_times(client, args)
        # The same session through a Client with default settings: each request then
        # loads the certificate store twice (post + image download).
        default_client = Client(url, verbose=False)
        default_client.session_hash = client.session_hash
        default_times = slider_times(default_client, args)
        raw = raw_http_times(url, client.session_hash, args)
        page = browser_times(url, args) if args.browser else None
        render_ms = server_side_render_ms(model, args)
    print(f"model: {model}")
    print(f"bend: rotate on {args.layer} ({args.where}); {args.changes} changes of the angle "
          f"through /bend_slider_0 (gradio_client, loopback, image downloaded)")
    print(f"round trip ms (studio_client: one shared SSL context): p50 "
          f"{percentile(times, 50):.1f}  p95 {percentile(times, 95):.1f}  "
          f"mean {statistics.mean(times):.1f}  min {min(times):.1f}")
    print(f"round trip ms (Client() with default settings): p50 "
          f"{percentile(default_times, 50):.1f}  p95 {percentile(default_times, 95):.1f}")
    print(f"same changes over plain HTTP (/gradio_api/call, same session; no client polling) "
          f"ms: p50 {percentile(raw, 50):.1f}  p95 {percentile(raw, 95):.1f}")
    if page:
        print(f"in Chromium (angle typed into the slider box -> new image on the canvas) ms: "
              f"p50 {percentile(page, 50):.1f}  p95 {percentile(page, 95):.1f}")
    print(f"render alone (engine.recipes.recipe.render in-process) ms: p50 {render_ms:.1f}")


def slider_times(client, args: argparse.Namespace) -> list[float]:
    """Time warmup + N changes of bend 0's first slider; returns the timed ones in ms."""
    times = []
    for i in range(args.warmup + args.changes):
        angle = float((7 * i) % 360 - 180)  # a new value each time, like a drag
        t0 = time.perf_counter()
        client.predict(angle, api_name="/bend_slider_0")
        dt = time.perf_counter() - t0
        if i >= args.warmup:
            times.append(dt * 1000)
    return times


def browser_times(url: str, args: argparse.Namespace) -> list[float]:
    """What a user sees: the page's own websocket-free SSE path, no client polling."""
    from playwright.sync_api import sync_playwright

    from tests.helpers.browser import CHROMIUM_ARGS, chromium_path

    times = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.set_default_timeout(120_000)
        page.goto(url)
        page.wait_for_selector("#canvas img")
        page.get_by_role("tab", name="Bend").click()
        page.locator("#add-where").get_by_text("all channels").click()
        page.click("#add-bend")
        box = page.locator("#p-slider-0 input[type=number]").first
        box.wait_for()
        src = page.locator("#canvas img").get_attribute("src")
        for i in range(args.warmup + args.changes):
            angle = (13 * i) % 360 - 180 + 0.5  # never a repeat, so the image always changes
            t0 = time.perf_counter()
            box.fill(str(angle))
            page.wait_for_function(
                "old => { const i = document.querySelector('#canvas img');"
                " return i && i.getAttribute('src') !== old; }", arg=src)
            dt = (time.perf_counter() - t0) * 1000
            src = page.locator("#canvas img").get_attribute("src")
            if i >= args.warmup:
                times.append(dt)
        browser.close()
    return times


def raw_http_times(url: str, session_hash: str, args: argparse.Namespace) -> list[float]:
    """The documented REST route: POST the value, read the SSE answer, fetch the image.

    gradio_client polls its message queue every 50 ms; this shows what the server itself
    needs for the same request in the same session.
    """
    import json

    import httpx

    base = url.rstrip("/") + "/gradio_api"
    times = []
    with httpx.Client(timeout=60) as http:
        for i in range(args.warmup + args.changes):
            angle = float((11 * i) % 360 - 180)
            t0 = time.perf_counter()
            r = http.post(f"{base}/call/bend_slider_0",
                          json={"data": [angle], "session_hash": session_hash})
            event = r.json()["event_id"]
            text = http.get(f"{base}/call/bend_slider_0/{event}").text
            data = None
            for line in text.splitlines():
                if line.startswith("data:"):
                    data = json.loads(line[5:])
            files = [d for d in data or [] if isinstance(d, dict) and d.get("url")]
            if not files:  # (the State output comes back as null on this route)
                raise RuntimeError(f"unexpected answer: {text[:200]}")
            http.get(files[-1]["url"]).raise_for_status()
            if i >= args.warmup:
                times.append((time.perf_counter() - t0) * 1000)
    return times


def server_side_render_ms(model: str, args: argparse.Namespace) -> float:
    """The same render in this process: what the server spends outside Gradio."""
    from engine.models import zoo
    from engine.recipes import recipe
    from engine.tools.bending import Bend, ChannelSelection
    from engine.tools.latents import LatentSpec

    m = zoo.load(model)
    sel = ChannelSelection(mode="all")
    if args.where == "selected clusters":
        sel = ChannelSelection(mode="clusters", layer=args.layer, k=8, ids=[0, 2], samples=64)
    r = recipe.Recipe(model=model, latent=LatentSpec(seed=0, psi=0.7),
                      bends=[Bend(layer=args.layer, op="rotate",
                                  params={"angle": 45.0, "fill": "zero"}, channels=sel)])
    recipe.render(r, m)
    ts = []
    for i in range(30):
        r.bends[0].params["angle"] = float(i * 7)
        t0 = time.perf_counter()
        recipe.render(r, m)
        ts.append((time.perf_counter() - t0) * 1000)
    return percentile(ts, 50)


if __name__ == "__main__":
    main()
