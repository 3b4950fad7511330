"""Isolation under load: N concurrent gradio_client users, each with its own recipe.

Starts `spaces_app.py` on a loopback port (tests/helpers/browser.py's helper) and opens
`--clients` sessions at once. Each session sets its own seed, truncation and bend (a
different operation and layer per client; half of them on their own clusters, a third with a
weight edit), then sends `--requests` parameter changes through
/set_bend_param. Every image that comes back must equal the engine's solo render of that
client's recipe at that parameter value (`engine.recipes.recipe.render`, computed in this process
before the load starts; the recipe names its clusters by layer, k and ids, so the solo
render recomputes them), so any leak of one user's state into another's shows up as a
mismatch. Prints failures, mismatches, throughput and latency percentiles.

    python benchmarks/load_test.py                       # tiny random model, 8 x 25
    python benchmarks/load_test.py --model default       # the embedded default model
    python benchmarks/load_test.py --clients 4 --requests 5
    python benchmarks/load_test.py --fairness --model default   # renders beside long jobs

The fairness run measures one client's render latency (p50 of bend-parameter changes) on an
idle server, then again while four other clients train an encoder, project a photo, render
a walk video and a sweep video (the goal of issue #14: at most twice the idle p50).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

# (operation, parameter the requests sweep, start, stop); one per client, cycled.
PLANS = [("rotate", "angle", 0.0, 180.0), ("multiply", "factor", 0.0, 3.0),
         ("translate", "x_shift", -0.5, 0.5), ("add", "amount", -2.0, 2.0),
         ("zoom", "scale", 0.5, 2.0), ("threshold", "threshold", -1.0, 1.0),
         ("sharpen", "factor", 0.0, 3.0), ("sinusoidal", "freq_x", 0.5, 4.0)]
N_DIRECTIONS = 5  # the Explore tab's direction sliders (studio.app.N_DIRECTIONS)


@dataclass
class ClientResult:
    """What one simulated user saw."""
    latencies: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    mismatches: int = 0
    worst_diff: int = 0  # largest pixel difference (0-255) of a mismatch


def percentile(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, round(q / 100 * (len(xs) - 1))))]


def _pixels(path: str) -> np.ndarray:
    from PIL import Image
    return np.asarray(Image.open(path).convert("RGB"))


def setup_client(url: str, model: str, i: int, layers: list[str]) -> tuple:
    """Open a session with client i's own recipe; returns (client, recipe, plan).

    Every client gets its own seed, truncation and bend (operation and layer). Even clients
    bend only two of their own clusters (k and the chosen ids differ per client); every
    third client also scales some conv weights, so cluster caches, channel selections and
    weight edits are all under load at once.
    """
    from engine.recipes.recipe import Recipe
    from tests.helpers.browser import studio_client

    client = studio_client(url)
    client.predict(model, api_name="/load_model")
    psi = 0.5 + 0.05 * i
    client.predict(100 + i, 0, psi, 0, "const", 0, False, 1, 0, 8, "sefa", None,
                   *([0] * N_DIRECTIONS), 0, 8, api_name="/set_latent")
    op, param, _, _ = PLANS[i % len(PLANS)]
    layer = layers[i % len(layers)]
    where = "all channels"
    if i % 2 == 0:
        k = 3 + i % 4
        client.predict(layer, k, 16, api_name="/compute_clusters")
        client.predict([i % k, (i + 1) % k], api_name="/select_clusters")
        where = "selected clusters"
    if i % 3 == 0:
        client.predict("scale", layers[(i + 1) % len(layers)], "in", 0.5 + 0.1 * i,
                       "random fraction", api_name="/add_weight_edit")
    client.predict(op, layer, where, 0.5, api_name="/add_bend")
    _, text = client.predict(api_name="/save_recipe")
    r = Recipe.from_json(text)
    assert r.latent.seed == 100 + i and r.bends[0].op == op, "the session lost its recipe"
    assert (r.bends[0].channels.mode == "clusters") == (i % 2 == 0)
    assert len(r.weight_edits) == (1 if i % 3 == 0 else 0)
    return client, r, PLANS[i % len(PLANS)]


def expected_images(r, plan: tuple, values: list[float], G) -> list[np.ndarray]:
    """The engine's solo renders of a recipe at each value of the swept parameter."""
    import copy

    import torch

    from engine.recipes.recipe import render

    _, param, _, _ = plan
    out = []
    # The same intra-op thread count as the server (studio_server passes OMP_NUM_THREADS,
    # default 1): another count splits the matrix products differently, and float rounding
    # then moves a few pixels by 1/255, which would hide a real leak among noise.
    threads = torch.get_num_threads()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    try:
        for v in values:
            rv = copy.deepcopy(r)
            rv.bends[0].params[param] = float(v)
            out.append(np.asarray(render(rv, G)))
    finally:
        torch.set_num_threads(threads)
    return out


def run_client(client, plan: tuple, values: list[float], expected: list[np.ndarray],
               start: threading.Barrier, result: ClientResult) -> None:
    _, param, _, _ = plan
    start.wait()
    for v, want in zip(values, expected):
        t0 = time.perf_counter()
        try:
            path = client.predict(0, param, repr(float(v)), api_name="/set_bend_param")
            got = _pixels(path)
        except Exception as exc:  # a failed request is a finding, not a crash of the bench
            result.failures.append(f"{param}={v}: {str(exc).splitlines()[0][:200]}")
            continue
        result.latencies.append(time.perf_counter() - t0)
        if got.shape != want.shape or not np.array_equal(got, want):
            result.mismatches += 1
            diff = 255 if got.shape != want.shape else int(
                np.abs(got.astype(int) - want.astype(int)).max())
            result.worst_diff = max(result.worst_diff, diff)


def _burst(client, n: int) -> list[float]:
    """n bend-angle changes in a row; the latency of each, image downloaded."""
    lat = []
    for i in range(n):
        t0 = time.perf_counter()
        _pixels(client.predict(0, "angle", repr(float(i * 37 % 360)), api_name="/set_bend_param"))
        lat.append(time.perf_counter() - t0)
    return lat


def _start_long_jobs(url: str, model: str, layer: str, folder: Path) -> list[tuple]:
    """Four clients, each starting one long job; returns (client, job, cancel endpoint)."""
    from gradio_client import handle_file
    from PIL import Image

    from tests.helpers.browser import studio_client

    photo = folder / "photo.png"
    Image.fromarray(np.random.RandomState(0).randint(0, 255, (96, 96, 3), np.uint8)).save(photo)
    clients = [studio_client(url) for _ in range(4)]
    for c in clients:
        c.predict(model, api_name="/load_model")
    clients[3].predict("rotate", layer, "all channels", 0.5, api_name="/add_bend")
    return [(clients[0], clients[0].submit(layer, 3000, 8, api_name="/train_encoder"),
             "/cancel_training"),
            (clients[1], clients[1].submit(handle_file(str(photo)), 1000, True,
                                           api_name="/project"), "/cancel_projection"),
            (clients[2], clients[2].submit("0, 1, 2", 240, 24, True, "z",
                                           api_name="/render_walk"), "/cancel_walk"),
            (clients[3], clients[3].submit("angle", 0, 360, 240, 24,
                                           api_name="/render_sweep"), "/cancel_sweep")]


def fairness(url: str, model: str, layer: str, requests: int, folder: Path) -> dict:
    """One client's render p50 idle, then while four others run long jobs."""
    from tests.helpers.browser import studio_client

    victim = studio_client(url)
    victim.predict(model, api_name="/load_model")
    victim.predict("rotate", layer, "all channels", 0.5, api_name="/add_bend")
    _burst(victim, 3)  # warm up
    idle = _burst(victim, requests)
    jobs = _start_long_jobs(url, model, layer, folder)
    time.sleep(5)  # every job submitted; the first ones running
    running = sum(1 for _, job, _ in jobs if job.status().progress_data)
    loaded = _burst(victim, requests)
    still = sum(1 for _, job, _ in jobs if not job.done())
    for client, _, cancel in jobs:
        client.predict(api_name=cancel)
    idle_p50, loaded_p50 = percentile(idle, 50), percentile(loaded, 50)
    return {"requests": requests, "idle_p50_ms": round(1000 * idle_p50, 1),
            "loaded_p50_ms": round(1000 * loaded_p50, 1),
            "loaded_p95_ms": round(1000 * percentile(loaded, 95), 1),
            "ratio": round(loaded_p50 / idle_p50, 2),
            "long_jobs_reporting_at_start": running, "long_jobs_unfinished_at_end": still}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="tiny",
                    help="'tiny' (a random 32 px model, default), 'default', or any model spec")
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--requests", type=int, default=25, help="requests per client")
    ap.add_argument("--json", help="also write the figures to this JSON file")
    ap.add_argument("--fairness", action="store_true",
                    help="measure one client's renders idle and beside four long jobs")
    ap.add_argument("--heavy-jobs", type=int, default=None,
                    help="STUDIO_HEAVY_JOBS for the server (default: the studio's)")
    args = ap.parse_args(argv)

    from engine.gan import stylegan2
    from engine.models import zoo
    from tests.helpers.browser import studio_server, tiny_model_file

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        model = tiny_model_file(folder) if args.model == "tiny" else args.model
        G = zoo.load(model)
        layers = [n for n in stylegan2.layer_names(G.config) if ".conv" in n]
        env = {"STUDIO_OUTPUT_DIR": str(folder / "out"),
               "ACTIVATION_STUDIO_CACHE": str(folder / "cache")}
        if args.heavy_jobs:
            env["STUDIO_HEAVY_JOBS"] = str(args.heavy_jobs)
        if args.fairness:
            with studio_server(model, env=env) as url:
                figures = fairness(url, model, layers[len(layers) // 2], args.requests, folder)
            print(json.dumps(figures, indent=2))
            if args.json:
                Path(args.json).write_text(json.dumps(figures, indent=2))
            return 0 if figures["ratio"] <= 2 else 1
        with studio_server(model, env=env) as url:
            print(f"server {url}, model {args.model}, {args.clients} clients x "
                  f"{args.requests} requests")
            setups = [setup_client(url, model, i, layers) for i in range(args.clients)]
            plans_values = []
            for client, r, plan in setups:
                _, _, lo, hi = plan
                values = list(np.linspace(lo, hi, args.requests))
                plans_values.append((client, plan, values, expected_images(r, plan, values, G)))
            results = [ClientResult() for _ in setups]
            barrier = threading.Barrier(len(setups))
            threads = [threading.Thread(target=run_client, args=(*pv, barrier, res))
                       for pv, res in zip(plans_values, results)]
            t0 = time.perf_counter()
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            wall = time.perf_counter() - t0

    lat = [x for r in results for x in r.latencies]
    failures = [f for r in results for f in r.failures]
    mismatches = sum(r.mismatches for r in results)
    total = args.clients * args.requests
    figures = {
        "model": args.model, "clients": args.clients, "requests_per_client": args.requests,
        "requests": total, "failed": len(failures), "mismatched": mismatches,
        "wall_s": round(wall, 2), "throughput_rps": round(len(lat) / wall, 2) if wall else 0.0,
        "p50_ms": round(1000 * percentile(lat, 50), 1) if lat else None,
        "p95_ms": round(1000 * percentile(lat, 95), 1) if lat else None,
        "mean_ms": round(1000 * statistics.fmean(lat), 1) if lat else None,
    }
    for f in failures[:10]:
        print("FAILED", f)
    for i, r in enumerate(results):
        if r.mismatches:
            print(f"client {i} ({PLANS[i % len(PLANS)][0]}): {r.mismatches} mismatched, "
                  f"largest pixel difference {r.worst_diff}")
    print(json.dumps(figures, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))
    ok = not failures and mismatches == 0
    print("OK: every output equals its recipe's solo render" if ok else
          "NOT OK: failed or mismatched requests")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
