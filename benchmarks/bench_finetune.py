"""Images/s of fine-tuning the default model, without augmentation and with ADA's pipeline at
a fixed p (ADA costs nothing while p = 0, so p is pinned to show what augmenting costs).

Each setting trains a few steps through `engine.training.train_gan.train` (the real loop: G step, D
step, lazy R1 every 16 steps, EMA) on procedural faces; images/s comes from the per-step
metrics log and skips the first steps (start-up, first-touch allocations). Beside it, the
Train tab's estimate for the same setting (`engine.training.train_gan.measure_speed`: one timed step
after a warm-up one, no optimiser or R1), to show how far the page's sentence is from the
real loop. Settings are interleaved round by round, so a busy machine slows them alike; the
load average is printed with the figures.

    python benchmarks/bench_finetune.py [--rounds 2] [--steps 10] [--batch 16]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.models import zoo  # noqa: E402
from engine.training.loop import read_metrics  # noqa: E402
from engine.training.train_gan import METRICS_NAME, TrainConfig, measure_speed, train  # noqa: E402

SETTINGS = {
    "no augmentation": dict(augment="none"),
    "ADA pipeline, p = 0.2": dict(augment="fixed", aug_p=0.2),
    "ADA pipeline, p = 1 (every transform)": dict(augment="fixed", aug_p=1.0),
}
SKIP_STEPS = 2


def run(setting: dict, steps: int, batch: int, folder: Path) -> tuple[float, float]:
    """(images/s of wall-clock time, images/s of this process's CPU time) over the timed
    steps. With one thread the CPU-time figure is what an idle core gives, whatever else
    the machine is doing; the wall-clock one is what this run got."""
    cfg = TrainConfig(base="default", data="faces", pool=256, batch=batch,
                      total_kimg=steps * batch / 1000, snapshot_kimg=1000, sample_kimg=1000,
                      out=str(folder), **setting)
    cpu: dict[int, float] = {}
    train(cfg, on_metrics=lambda step, _: cpu.__setitem__(step, time.process_time()))
    log = read_metrics(folder / METRICS_NAME)
    first, last = log[SKIP_STEPS - 1], log[-1]
    images = (last["step"] - first["step"]) * batch
    return (images / (last["time_s"] - first["time_s"]),
            images / (cpu[last["step"]] - cpu[first["step"]]))


def probe(setting: dict, batch: int) -> float:
    p = setting.get("aug_p", 0.0) if setting.get("augment") != "none" else 0.0
    return measure_speed(zoo.load("default").G, batch, aug_p=p, steps=1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=2, help="interleaved rounds per setting")
    ap.add_argument("--steps", type=int, default=10, help="training steps per measurement")
    ap.add_argument("--batch", type=int, default=16, help="images per step")
    args = ap.parse_args()
    results: dict[str, list[float]] = {name: [] for name in SETTINGS}
    cpu_results: dict[str, list[float]] = {name: [] for name in SETTINGS}
    probes: dict[str, list[float]] = {name: [] for name in SETTINGS}
    t0 = time.time()
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            for i, (name, setting) in enumerate(SETTINGS.items()):
                speed, cpu_speed = run(setting, args.steps, args.batch,
                                       Path(tmp) / f"r{r}s{i}")
                results[name].append(speed)
                cpu_results[name].append(cpu_speed)
                probes[name].append(probe(setting, args.batch))
                print(f"round {r + 1}: {name}: {speed:.2f} img/s wall, {cpu_speed:.2f} img/s "
                      f"CPU (estimate {probes[name][-1]:.2f})", flush=True)
    load_after = os.getloadavg()
    print(f"\nfine-tuning the default model (64 px), batch {args.batch}, "
          f"{args.steps - SKIP_STEPS} timed steps x {args.rounds} rounds "
          f"({time.time() - t0:.0f} s in all; {torch.get_num_threads()} threads; 1-min load "
          f"average {load_before[0]:.1f} before, {load_after[0]:.1f} after on "
          f"{os.cpu_count()} cores):")
    base = statistics.median(cpu_results["no augmentation"])
    for name, values in cpu_results.items():
        med = statistics.median(values)
        print(f"  {name:40s} {med:6.2f} img/s of CPU time ({med / base:.2f}x; "
              f"{', '.join(f'{v:.2f}' for v in values)}); wall clock "
              f"{statistics.median(results[name]):.2f} img/s; Train tab estimate "
              f"{statistics.median(probes[name]):.2f} img/s")


if __name__ == "__main__":
    main()
