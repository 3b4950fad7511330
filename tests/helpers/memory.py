"""A process's peak resident memory (Linux's VmHWM), restartable so that a check measures
only what it does, not what ran before it in the same process."""

from __future__ import annotations

from pathlib import Path


def peak_rss_mb(pid: int) -> float:
    """The peak resident memory (VmHWM) of a process so far, in MiB (Linux)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc; peak memory needs Linux")


def reset_peak_rss(pid: int) -> float:
    """Restart a process's peak resident memory (VmHWM) from its present RSS (Linux's
    /proc/PID/clear_refs '5'), so that a later peak_rss_mb sees only what follows, not an
    earlier test's peak; returns the restarted peak in MiB."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")
    return peak_rss_mb(pid)
