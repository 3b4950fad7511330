"""Live sources in headless Chromium (studio/osc.py, studio/perform.js, studio/sources.py).

    python benchmarks/bench_osc.py [--model default] [--messages 40] [--seconds 6]

Prints, through a real `spaces_app.py` server, with the load average beside each figure:
- OSC message -> new canvas pixels: a python-osc SimpleUDPClient sets a bend's angle; the
  time from the send to the page drawing the frame (the browser's performance.timeOrigin +
  the frame's draw time against the sender's wall clock: one machine, one clock), p50 / p95;
- microphone feature -> frame: Chromium's fake microphone, its loudness mapped onto the
  bend's angle; the time from the page sending a feature message to drawing the frame that
  includes it, p50 / p95, and the frames a second the microphone drove.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_live import load, p  # noqa: E402

from tests.helpers.browser import CHROMIUM_ARGS, chromium_path, studio_server  # noqa: E402

MEDIA = ["--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream"]


def osc_latency(page, messages: int) -> list[float]:
    from pythonosc.udp_client import SimpleUDPClient
    key = page.evaluate("window.studioLive.key")
    host, port = page.evaluate("window.studioLive.osc").rsplit(":", 1)
    client = SimpleUDPClient(host, int(port))
    out = []
    for i in range(messages):
        n = page.evaluate("window.studioLive.frames.length")
        sent = time.time() * 1000
        client.send_message(f"/studio/{key}/bends/0/params/angle", float(10 + 7 * i))
        page.wait_for_function(f"window.studioLive.frames.length > {n}", timeout=30_000)
        shown = page.evaluate(f"performance.timeOrigin + window.studioLive.frames[{n}].shown")
        out.append(shown - sent)
        page.wait_for_timeout(300)     # past REST_S: each message starts a new gesture
    return out


def mic_latency(page, seconds: float) -> tuple[list[float], float]:
    page.evaluate("""() => window.studioLive.send({kind: "learn", name: "loud", slot: 0,
        event: {kind: "audio", feature: "loudness"}, out: [0, 360]})""")
    page.click("#perf-open")
    page.click("#perf-mic")
    page.wait_for_function("window.studioPerform.features !== undefined", timeout=60_000)
    page.wait_for_timeout(1000)
    t0 = page.evaluate("performance.now()")
    page.wait_for_timeout(seconds * 1000)
    lat = page.evaluate(f"""window.studioLive.frames.filter(f => f.kind === 0 &&
        f.shown > {t0} && f.latency !== null).map(f => f.latency)""")
    page.click("#perf-mic")
    return lat, len(lat) / seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="default", help="model the server opens on")
    ap.add_argument("--messages", type=int, default=40, help="OSC messages timed")
    ap.add_argument("--seconds", type=float, default=6.0, help="microphone run length")
    args = ap.parse_args()
    from playwright.sync_api import sync_playwright

    with studio_server(args.model, env={"STUDIO_OSC": "127.0.0.1:0"}) as url, \
            sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium_path(),
                                     args=CHROMIUM_ARGS + MEDIA)
        page = browser.new_page(viewport={"width": 1280, "height": 800})
        page.goto(url)
        page.wait_for_function("window.studioLive && window.studioLive.mode === 'live'",
                               timeout=120_000)
        page.get_by_role("tab", name="Bend").click()
        page.click("#add-bend")
        page.wait_for_selector("#p-slider-0 input[type=range]", state="visible",
                               timeout=60_000)
        page.wait_for_timeout(1500)
        lat = osc_latency(page, args.messages)
        print(f"OSC message -> canvas: p50 {p(lat, .5):.1f} ms, p95 {p(lat, .95):.1f} ms "
              f"({len(lat)} messages)  {load()}")
        lat, fps = mic_latency(page, args.seconds)
        if lat:
            print(f"microphone feature -> canvas: p50 {p(lat, .5):.1f} ms, p95 "
                  f"{p(lat, .95):.1f} ms, {fps:.1f} frames/s driven  {load()}")
        else:
            print(f"microphone feature -> canvas: no frame in {args.seconds} s  {load()}")
        browser.close()


if __name__ == "__main__":
    main()
