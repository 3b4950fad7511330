"""Live channel figures in headless Chromium with the fake camera (studio/live.py).

    python benchmarks/bench_live.py [--model default] [--edits 40] [--pages 8]

Prints, through a real `spaces_app.py` server:
- edit latency, control change to new canvas pixels (the frame decoded and on screen), for a
  typed seed and for a dragged bend slider, p50 / p95;
- webcam translation as displayed: frames/s and camera-to-screen latency p50;
- N pages at once, each dragging psi: frames/s each, and whether every frame was its own
  (each page's frames carry only its own sequence numbers).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.browser_util import CHROMIUM_ARGS, chromium_path, studio_server  # noqa: E402

CAMERA = ["--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream"]


def p(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def open_page(browser, url: str):
    page = browser.new_page(viewport={"width": 1280, "height": 800})
    page.goto(url)
    page.wait_for_function("window.studioLive && window.studioLive.mode === 'live'",
                           timeout=120_000)
    return page


def edit_latency(page, elem_id: str, values: list[float], selector: str) -> list[float]:
    """Set the control to each value in turn; the time until that frame is on screen."""
    out = []
    for v in values:
        n = page.evaluate("window.studioLive.frames.length")
        page.evaluate("""([sel, v]) => { const r = document.querySelector(sel);
            r.value = v; r.dispatchEvent(new Event('input', {bubbles: true})); }""",
                      [f"#{elem_id} {selector}", v])
        page.wait_for_function(f"window.studioLive.frames.length > {n} && "
                               "window.studioLive.frames.at(-1).seq === window.studioLive.seq",
                               timeout=30_000)
        out.append(page.evaluate("window.studioLive.frames.at(-1).latency"))
        page.wait_for_timeout(30)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="default", help="model the server opens on")
    ap.add_argument("--edits", type=int, default=40, help="edits per control")
    ap.add_argument("--pages", type=int, default=8, help="pages for the concurrency run")
    ap.add_argument("--seconds", type=float, default=5.0, help="length of each timed run")
    args = ap.parse_args()
    from playwright.sync_api import sync_playwright

    with studio_server(args.model) as url, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium_path(),
                                     args=CHROMIUM_ARGS + CAMERA)
        page = open_page(browser, url)
        seeds = edit_latency(page, "seed", [float(i + 1) for i in range(args.edits)], "input")
        print(f"typed seed -> canvas: p50 {p(seeds, .5):.1f} ms, p95 {p(seeds, .95):.1f} ms")
        page.get_by_role("tab", name="Bend").click()
        page.click("#add-bend")
        page.wait_for_selector("#p-slider-0 input[type=range]", state="visible",
                               timeout=60_000)
        page.wait_for_timeout(1500)
        angles = [float(5 + 3 * i) for i in range(args.edits)]
        bends = edit_latency(page, "p-slider-0", angles, "input[type=range]")
        print(f"bend slider -> canvas: p50 {p(bends, .5):.1f} ms, p95 {p(bends, .95):.1f} ms")

        page.get_by_role("tab", name="Translate").click()
        page.get_by_text("Webcam (live)").click()
        page.click("#live-cam-start")
        page.wait_for_function("window.studioLive.frames.filter(f => f.kind === 1).length > 5",
                               timeout=120_000)
        t0 = time.perf_counter()
        n0 = page.evaluate("window.studioLive.frames.filter(f => f.kind === 1).length")
        page.wait_for_timeout(args.seconds * 1000)
        n1 = page.evaluate("window.studioLive.frames.filter(f => f.kind === 1).length")
        lat = page.evaluate("window.studioLive.frames.filter(f => f.kind === 1)"
                            ".slice(-50).map(f => f.latency)")
        fps = (n1 - n0) / (time.perf_counter() - t0)
        print(f"webcam displayed: {fps:.1f} frames/s, camera to screen p50 "
              f"{statistics.median(lat):.1f} ms")
        page.close()

        pages = [open_page(browser, url) for _ in range(args.pages)]
        for pg in pages:  # each page drags psi back and forth as fast as it can send
            pg.evaluate("""() => { let i = 0; window.benchTimer = setInterval(() => {
                const r = document.querySelector('#psi input[type=range]');
                r.value = 0.2 + (i++ % 50) / 50; r.dispatchEvent(new Event('input',
                {bubbles: true})); }, 20); }""")
        start = [pg.evaluate("window.studioLive.frames.length") for pg in pages]
        t0 = time.perf_counter()
        time.sleep(args.seconds)
        counts = [pg.evaluate("window.studioLive.frames.length") - s
                  for pg, s in zip(pages, start)]
        dt = time.perf_counter() - t0
        own = all(pg.evaluate("window.studioLive.frames.every(f => f.seq <= "
                              "window.studioLive.seq)") for pg in pages)
        rates = [c / dt for c in counts]
        print(f"{args.pages} pages at once: frames/s each min {min(rates):.1f}, median "
              f"{statistics.median(rates):.1f}; every frame its own: {own}")
        browser.close()


if __name__ == "__main__":
    main()
