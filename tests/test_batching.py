"""engine.base.batching: the batch size follows the measured time per item."""

import pytest

from engine.base.batching import BatchSizer, chunks


def run_with(cost, total: int, sizer: BatchSizer) -> list[int]:
    """Feed the sizer a synthetic cost(size) in seconds; return the chunk sizes it chose."""
    sizes: list[int] = []
    start = 0
    while start < total:
        size = sizer.next(total - start)
        sizer.record(size, cost(size))
        sizes.append(size)
        start += size
    return sizes


def test_grows_while_batches_pay_and_keeps_the_best():
    # Per-item time falls up to 8 and rises beyond it.
    per_item = {1: 1.0, 2: 0.8, 4: 0.6, 8: 0.5, 16: 0.7}
    sizer = BatchSizer(largest=16)
    sizes = run_with(lambda n: per_item[n] * n, 100, sizer)
    assert sizes[:6] == [1, 1, 2, 4, 8, 16]      # warm-up, then doubling
    assert sizer.best == 8
    assert set(sizes[6:-1]) == {8} and sum(sizes) == 100


def test_stops_at_once_when_batching_costs():
    sizer = BatchSizer(largest=16)
    sizes = run_with(lambda n: 1.3 * n if n > 1 else 1.0, 20, sizer)  # 30 % slower beyond 1
    assert sizes[:3] == [1, 1, 2] and set(sizes[3:]) == {1}
    assert sizer.best == 1


def test_one_noisy_timing_does_not_end_the_probing():
    # Size 2 measured slower than 1 (a neighbour's load), but the batch pays from 4 on: the
    # old rule (stop at the first size that is not faster) kept 1 for the whole job.
    per_item = {1: 1.0, 2: 1.1, 4: 0.6, 8: 0.5, 16: 0.52}
    sizer = BatchSizer(largest=16)
    sizes = run_with(lambda n: per_item[n] * n, 100, sizer)
    assert sizes[:6] == [1, 1, 2, 4, 8, 16]
    assert sizer.best == 8 and set(sizes[6:-1]) == {8}


def test_warm_up_is_not_compared_and_fixed_sizes_are_kept():
    calls: list[int] = []

    def cost(n: int) -> float:   # the first chunk is slow (warm-up), then 0.1 s per item
        calls.append(n)
        return 100.0 if len(calls) == 1 else 0.1 * n

    sizer = BatchSizer(largest=4)
    run_with(cost, 12, sizer)
    assert sizer.best == 1   # had the warm-up counted, size 2 would look 500x faster
    assert run_with(lambda n: float(n), 10, BatchSizer(fixed=3)) == [3, 3, 3, 1]
    with pytest.raises(ValueError):
        BatchSizer(fixed=0)


def test_chunks_cover_the_range_in_order():
    seen: list[tuple[int, int]] = []
    chunks(10, BatchSizer(largest=4), lambda a, b: seen.append((a, b)))
    assert seen[0] == (0, 1)
    assert [a for a, _ in seen[1:]] == [b for _, b in seen[:-1]] and seen[-1][1] == 10


def test_cpu_jobs_compare_batches_by_cpu_time():
    import time

    from engine.base.batching import clock_for

    assert clock_for("cpu") is time.process_time
    assert clock_for("cuda:0") is time.perf_counter
