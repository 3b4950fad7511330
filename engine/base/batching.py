"""Batch sizes chosen by measurement, on the job's own work.

Whether a bigger batch renders faster per image depends on the device, the model and the
layer a pass stops at (on a CPU, high-resolution layers gain nothing from batching while
low-resolution ones do). Rather than guess, a job renders its first chunks at growing sizes
(1, 2, 4, ...), times each, and keeps the size with the best time per image; no render is
spent on measuring alone. On a CPU the time is the process's CPU time (clock_for), so a
neighbour's load does not decide the batch.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

# Probing goes on doubling until a size is this much slower per item than the best so far.
# One timing is noisy on a shared machine (a chunk at size 2 measured 10 % slower than at 1
# while 16 was 40 % faster), so stopping at the first size that is not faster often kept a
# batch of 1 for a whole clustering run (1.7x its CPU time); a clearly slower size is where
# batches stop paying (memory traffic), and larger ones would not come back.
STOP_WORSE = 1.15


class BatchSizer:
    """Proposes the next chunk size and learns from the time each chunk took.

    The first chunk (one item) warms caches and is not compared; then sizes double up to
    `largest` until one is clearly slower per item than the best so far (STOP_WORSE), and
    the best size is kept. `fixed` turns the measurement off (a user's explicit --batch).
    """

    def __init__(self, largest: int = 16, fixed: int | None = None,
                 clock: Callable[[], float] = time.perf_counter):
        if largest < 1 or (fixed is not None and fixed < 1):
            raise ValueError("batch sizes must be at least 1")
        self.largest = largest
        self.clock = clock
        self.fixed = fixed
        self.per_item: dict[int, float] = {}   # size -> best seconds per item seen
        self._warm = fixed is not None
        self._probe = 1
        self._settled: int | None = fixed

    @property
    def best(self) -> int:
        """The size with the lowest time per item so far (1 before any measurement)."""
        if self._settled is not None:
            return self._settled
        if not self.per_item:
            return 1
        return min(self.per_item, key=self.per_item.__getitem__)

    def next(self, remaining: int) -> int:
        """The size of the next chunk, at most `remaining`."""
        size = 1 if not self._warm else (self._settled or self._probe)
        return max(1, min(size, remaining))

    def record(self, size: int, seconds: float) -> None:
        """The wall time the chunk of `size` items took."""
        if not self._warm:
            self._warm = True   # compile / allocator / cache warm-up: not representative
            return
        if self._settled is not None or size != self._probe:
            return  # a short last chunk, or measurement is over
        per = seconds / size
        best_so_far = min(self.per_item.values(), default=per)
        self.per_item[size] = min(per, self.per_item.get(size, per))
        if per > best_so_far * STOP_WORSE:
            self._settled = self.best   # clearly slower: batches stopped paying
        elif self._probe * 2 > self.largest:
            self._settled = self.best
        else:
            self._probe *= 2

    @contextmanager
    def timing(self, size: int) -> Iterator[None]:
        """`with sizer.timing(n): render(n items)` records the chunk's time."""
        t0 = self.clock()
        yield
        self.record(size, self.clock() - t0)


def clock_for(device: object) -> Callable[[], float]:
    """The clock to compare batch sizes by: on a CPU the process's CPU time, which measures
    the work and not the time other processes took the cores away (a shared server); on a
    GPU the wall time, which includes the device's work once the caller synchronises."""
    return time.process_time if str(device).startswith("cpu") else time.perf_counter


def chunks(total: int, sizer: BatchSizer, run: Callable[[int, int], None]) -> None:
    """Call run(start, stop) over [0, total) in chunks the sizer picks, timing each."""
    start = 0
    while start < total:
        size = sizer.next(total - start)
        with sizer.timing(size):
            run(start, start + size)
        start += size
