"""Live frames of big models (issue 34): progressive previews and tail renders, measured at
the live channel (studio/live.py driven in-process, as tests/test_live.py does).

    python benchmarks/bench_live_big.py [--sizes 512,1024] [--drag-seconds 5] [--runs 3]
        [--parts channel,chromium,tail]

For random-weight config-f generators (channel_base 32768, channel_max 512) it prints, with
the load average beside each figure (the machine is shared: compare runs made under the
same load; the comparisons are interleaved):
- one full render (engine.render), median of --runs;
- a drag of a rotate bend on b32.conv1, a new value every 20 ms for --drag-seconds: the time
  between frames the channel sends while it moves (p50, p95), which block they show, and
  the time from the last value to the full frame (the gesture rests after
  studio.live.REST_S), against one full render;
- a bend (and a weight edit) on b256.conv1 of the largest model: a tail render (from what
  the cache kept) against a full render, interleaved, and the ratio;
- the rested frame's pixels against engine.render's (equal or not);
- with --parts chromium, the same drag in headless Chromium through `spaces_app.py`
  (frames drawn on the canvas; the rested canvas read back against engine.render of the
  page's session: the default recipe with a rotate bend on b32.conv1 at the slider's
  value). The server runs with OMP_NUM_THREADS=1 (tests.helpers.browser).
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402


def load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"(load {one:.2f} {five:.2f} {fifteen:.2f})"


def p(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def make_model(folder: Path, res: int) -> str:
    """A random-weight config-f generator at `res` px saved where the studio can load it."""
    from engine.gan.checkpoints import save_generator
    from engine.gan.stylegan2 import Generator, GeneratorConfig

    path = folder / f"configf-{res}.safetensors"
    if not path.exists():
        torch.manual_seed(res)
        G = Generator(GeneratorConfig(resolution=res, channel_base=32768, channel_max=512))
        with torch.no_grad():
            for name, prm in G.named_parameters():
                if name.endswith("noise_strength"):
                    prm.fill_(0.1)
        save_generator(G.eval(), path, source=f"random config-f {res} px (benchmark)")
    return str(path)


def full_render_s(spec: str) -> float:
    import engine
    from studio import models
    from studio import session as S

    rec = S.new_session(spec).recipe
    t0 = time.perf_counter()
    engine.render(rec, models.load(spec))
    return time.perf_counter() - t0


class DragSocket:
    """A page dragging bend slot 0: a value every `every_s` for `seconds`, then still until
    the channel's full frame has come; records when each frame was sent and what it shows."""

    def __init__(self, seconds: float, every_s: float = 0.02) -> None:
        self.seconds, self.every_s = seconds, every_s
        self.frames: list[tuple[float, int, int, float, bytes]] = []  # t, seq, shown, ms, data
        self.texts: list[dict] = []
        self.t0 = self.last_sent = 0.0
        self.seq = 0

    async def receive(self) -> dict:
        if self.t0 == 0.0:
            self.t0 = time.perf_counter()
        now = time.perf_counter()
        if now - self.t0 < self.seconds:
            await asyncio.sleep(self.every_s)
            self.seq += 1
            self.last_sent = time.perf_counter()
            angle = 90.0 * np.sin(self.seq / 15)
            return {"type": "websocket.receive", "text": json.dumps(
                {"kind": "bend", "seq": self.seq, "g": 1, "slot": 0, "value": angle})}
        while not any(f[2] == 0 and f[1] == self.seq for f in self.frames):
            await asyncio.sleep(0.01)
        return {"type": "websocket.disconnect"}

    async def send_text(self, text: str) -> None:
        self.texts.append(json.loads(text))

    async def send_bytes(self, data: bytes) -> None:
        from studio import live
        kind, seq, ms, shown = live.HEADER.unpack(data[:live.HEADER.size])
        self.frames.append((time.perf_counter(), seq, shown, ms, data[live.HEADER.size:]))


def drag(spec: str, layer: str, seconds: float) -> tuple[DragSocket, object]:
    from engine.tools.bending import ChannelSelection
    from studio import live
    from studio import session as S

    sess = S.new_session(spec)
    S.add_bend(sess, layer, "rotate", ChannelSelection(), {"angle": 0.0})
    ws = DragSocket(seconds)

    async def run() -> None:
        conn = live.Connection(ws, sess)
        renderer = asyncio.get_running_loop().create_task(conn.render())
        await conn.receive()
        renderer.cancel()

    asyncio.run(run())
    return ws, sess


def report_drag(spec: str, res: int, seconds: float, full_s: float) -> None:
    import engine
    from studio import models

    ws, sess = drag(spec, "b32.conv1", seconds)
    if ws.texts:
        print("  errors:", ws.texts[:3])
    moving = [f for f in ws.frames if f[0] <= ws.t0 + seconds]
    gaps = [(b[0] - a[0]) * 1000 for a, b in zip(moving, moving[1:])]
    shows: dict[str, int] = {}
    for f in moving:
        key = f"b{f[2]}" if f[2] else "full"
        shows[key] = shows.get(key, 0) + 1
    rest = [f for f in ws.frames if f[2] == 0 and f[1] == ws.seq][-1]
    to_full = rest[0] - ws.last_sent
    print(f"{res} px drag b32.conv1 {seconds:.0f} s: {len(moving)} frames, between frames "
          f"p50 {p(gaps, .5):.0f} ms p95 {p(gaps, .95):.0f} ms, shown {shows}, "
          f"preview render p50 {p([f[3] for f in moving if f[2]] or [0], .5):.0f} ms  "
          f"{load()}")
    want = np.asarray(engine.render(sess.recipe, models.load(spec)))
    got = np.asarray(Image.open(io.BytesIO(rest[4])).convert("RGB"))
    print(f"{res} px rest: last value -> full frame {to_full:.2f} s = "
          f"{to_full / full_s:.2f}x one full render ({full_s:.2f} s; includes the "
          f"{1000 * __import__('studio.live').live.REST_S:.0f} ms rest wait), pixels equal "
          f"engine.render: {np.array_equal(got, want)}  {load()}")


def report_tail(spec: str, res: int, runs: int, edit: str) -> None:
    """edit 'bend': a rotate bend's angle (kept: b256.conv1's output before its bends);
    'weight': a weight edit's factor on that layer (kept: its input)."""
    from engine.recipes import incremental as inc
    from engine.recipes import recipe as R
    from engine.tools.bending import Bend, ChannelSelection, WeightEdit
    from studio import models
    from studio import session as S

    m = models.load(spec)
    G = m.G
    rec = S.new_session(spec).recipe
    if edit == "bend":
        rec.bends = [Bend(layer="b256.conv1", op="rotate", params={"angle": 10.0},
                          channels=ChannelSelection())]
        params, name, starts_at = rec.bends[0].params, "angle", "b256.torgb"
    else:
        rec.weight_edits = [WeightEdit(layer="b256.conv1", op="scale", params={"factor": 1.1},
                                       channels=ChannelSelection())]
        params, name, starts_at = rec.weight_edits[0].params, "factor", "b256.conv1"
    cache = inc.TailCache()
    cache.render(rec, m)
    params[name] += 0.5
    cache.render(rec, m)                        # keeps what this edit needs
    full, tail = [], []
    for _ in range(runs):                        # interleaved: full, tail, full, tail, ...
        params[name] += 0.5
        t0 = time.perf_counter()
        want = R.render_tensor(rec, m)
        full.append(time.perf_counter() - t0)
        assert cache.plan(rec, G)[0] == starts_at, cache.plan(rec, G)
        t0 = time.perf_counter()
        got = cache.render(rec, m)
        tail.append(time.perf_counter() - t0)
        assert torch.equal(got, want)
    f, t = statistics.median(full), statistics.median(tail)
    print(f"{res} px {edit} on b256.conv1: tail from {starts_at} {t:.2f} s vs full {f:.2f} s "
          f"= {t / f:.0%} of a full render (median of {runs}, interleaved; bit-equal), kept "
          f"{cache.nbytes / 2**20:.0f} MiB  {load()}")


# A hand dragging the bend editor's first slider: a new angle every 20 ms for `ms`.
DRAG_JS = """([ms]) => new Promise((done) => { let i = 0; const t0 = performance.now();
    const r = document.querySelector('#p-slider-0 input[type=range]');
    const timer = setInterval(() => {
        r.value = 5 + (i++ % 60); r.dispatchEvent(new Event('input', {bubbles: true}));
        if (performance.now() - t0 > ms) { clearInterval(timer); done([t0, performance.now()]); }
    }, 20); })"""


def chromium(spec: str, res: int, seconds: float) -> None:
    """The same drag in headless Chromium through a real server: frames drawn while the
    slider moves (interval between them, p50 / p95), then the rested full frame's pixels
    read back from the canvas against engine.render."""
    import base64

    from playwright.sync_api import sync_playwright

    import engine
    from studio import models
    from tests.helpers.browser import CHROMIUM_ARGS, chromium_path, studio_server

    with studio_server(spec, timeout=300) as url, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 800})
        page.goto(url)
        page.wait_for_function("window.studioLive && window.studioLive.mode === 'live'",
                               timeout=300_000)
        page.get_by_role("tab", name="Bend").click()
        page.click("#add-layer input")
        page.fill("#add-layer input", "b32.conv1")
        page.get_by_role("option", name="b32.conv1", exact=True).click()
        page.click("#add-bend")
        page.wait_for_selector("#p-slider-0 input[type=range]", state="visible",
                               timeout=300_000)
        page.wait_for_timeout(3000)
        t0, t1 = page.evaluate(DRAG_JS, [seconds * 1000])
        page.wait_for_function("window.studioLive.frames.length && "
                               "window.studioLive.frames.at(-1).preview === 0 && "
                               "window.studioLive.frames.at(-1).seq === window.studioLive.seq",
                               timeout=600_000)
        frames = page.evaluate(f"window.studioLive.frames.filter(f => f.kind === 0 && "
                               f"f.shown >= {t0} && f.shown <= {t1})")
        gaps = [b["shown"] - a["shown"] for a, b in zip(frames, frames[1:])]
        shows = sorted({f["preview"] for f in frames})
        data = page.evaluate("document.querySelector('#live-canvas').toDataURL('image/png')")
        got = np.asarray(Image.open(io.BytesIO(base64.b64decode(data.split(",", 1)[1])))
                         .convert("RGB"))
        angle = float(page.evaluate(
            "document.querySelector('#p-slider-0 input[type=range]').value"))
        browser.close()
    print(f"{res} px Chromium drag b32.conv1 {seconds:.0f} s: {len(frames)} frames drawn, "
          f"between frames p50 {p(gaps, .5) if gaps else 0:.0f} ms "
          f"p95 {p(gaps, .95) if gaps else 0:.0f} ms, blocks shown {shows}  {load()}")
    # The page's session: the default recipe, the default bend (rotate, all channels) added
    # on b32.conv1, its first slider at the value the page shows.
    from engine.tools.bending import ChannelSelection
    from studio import live
    from studio import session as S

    sess = S.new_session(spec)
    S.add_bend(sess, "b32.conv1", "rotate", ChannelSelection())
    live.apply(sess, [{"kind": "bend", "slot": 0, "value": angle}])
    rec = sess.recipe
    threads = torch.get_num_threads()
    torch.set_num_threads(1)   # as the server: a conv's sums in another order differ in ulps
    try:
        want = np.asarray(engine.render(rec, models.load(spec)))
    finally:
        torch.set_num_threads(threads)
    diff = np.abs(got.astype(int) - want)
    print(f"  rested canvas pixels equal engine.render of the page's recipe: "
          f"{np.array_equal(got, want)} ({(diff > 0).sum()} of {diff.size} values differ, "
          f"by at most {diff.max()})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="512,1024")
    ap.add_argument("--drag-seconds", type=float, default=5.0)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--parts", default="channel,tail",
                    help="comma-separated: channel (in-process drag), chromium (the drag in "
                         "headless Chromium through a real server), tail (b256.conv1 edits)")
    ap.add_argument("--folder", default=os.path.join(tempfile.gettempdir(), "bench_live_big"))
    args = ap.parse_args()
    folder = Path(args.folder)
    folder.mkdir(parents=True, exist_ok=True)
    torch.set_grad_enabled(False)
    print(f"torch threads {torch.get_num_threads()}, frame budget "
          f"{os.environ.get('STUDIO_LIVE_BUDGET_MS', '150')} ms  {load()}")
    sizes = [int(s) for s in args.sizes.split(",")]
    specs = {res: make_model(folder, res) for res in sizes}
    parts = set(args.parts.split(","))
    for res in sizes if "channel" in parts else []:
        full_render_s(specs[res])                # load and warm up
        full = [full_render_s(specs[res]) for _ in range(args.runs)]
        full_s = statistics.median(full)
        print(f"{res} px full render: median {full_s:.2f} s of {args.runs}  {load()}")
        report_drag(specs[res], res, args.drag_seconds, full_s)
    for res in sizes if "chromium" in parts else []:
        chromium(specs[res], res, args.drag_seconds)
    if "tail" in parts and max(sizes) >= 512:
        for edit in ("bend", "weight"):
            report_tail(specs[max(sizes)], max(sizes), args.runs, edit)


if __name__ == "__main__":
    main()
