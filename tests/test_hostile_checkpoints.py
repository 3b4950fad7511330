"""Memory bombs in checkpoint and encoder files are refused by what they declare.

Each file is small; a reader that believed its declarations would allocate gigabytes
(measured before these checks: 1.0-4.0 GiB each). Every file is read in a fresh process
whose peak RSS is measured, so the test fails if the memory is taken even briefly.
"""

from __future__ import annotations

import hostile_files as H
import pytest

# What reading a refused file may cost (the probe's positive control shows that a real
# allocation of CONTROL_MIB measures as that much).
MAX_PEAK_MIB = 100
CONTROL_MIB = 300

CHECKPOINT_BOMBS = {
    "numpy _reconstruct declaring 1 GiB": (H.numpy_reconstruct_bomb, "numpy's own pickles"),
    "numpy state declaring 2 GiB": (H.numpy_setstate_bomb, "declares a size"),
    "one string encoded 96 times": (H.memo_copies_bomb, "being read"),
    "one buffer made into 96 arrays": (H.frombuffer_copies_bomb, "being read"),
    "nested torch stream declaring 2 GiB": (H.legacy_storage_bomb, "storage"),
    "deflated 512 MiB zip record": (H.deflated_zip_bomb, "compressed record"),
    "64 names viewing one 8 MiB storage": (H.shared_storage_bomb, "declare 512.0 MiB"),
}


@pytest.fixture(scope="module")
def measured(tmp_path_factory) -> dict[str, tuple[str | None, float]]:
    folder = tmp_path_factory.mktemp("bombs")
    loads: list[tuple[str, object]] = []
    for i, (make, _) in enumerate(CHECKPOINT_BOMBS.values()):
        loads.append(("checkpoint", make(folder / f"bomb{i}.pkl")))
    loads.append(("encoder", H.wide_encoder(folder / "wide-encoder")))
    loads.append(("control", CONTROL_MIB))
    results = H.peak_rss_of_loads(loads)
    names = [*CHECKPOINT_BOMBS, "wide encoder", "control"]
    return dict(zip(names, results, strict=True))


def test_the_probe_sees_a_real_allocation(measured):
    _, peak = measured["control"]
    assert 0.95 * CONTROL_MIB <= peak <= CONTROL_MIB + MAX_PEAK_MIB, peak
    assert len({p for _, p in measured.values()}) > 1


@pytest.mark.parametrize("name", list(CHECKPOINT_BOMBS))
def test_checkpoint_bomb_is_refused_cheaply(measured, name):
    message, peak = measured[name]
    assert message is not None, f"{name} loaded"
    assert "\n" not in message and message.endswith("."), message
    assert CHECKPOINT_BOMBS[name][1] in message, message
    assert peak <= MAX_PEAK_MIB, (name, peak)


def test_encoder_sidecar_architecture_is_checked_before_building(measured):
    message, peak = measured["wide encoder"]
    assert message is not None and "M parameters" in message and "\n" not in message, message
    assert peak <= MAX_PEAK_MIB, peak
