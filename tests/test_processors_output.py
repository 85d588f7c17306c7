"""Processors' output handling: small output buffers that grow and resume (offline), batches cut
into chunks (the series rules' generated kernels), and the offline tick that skips its scan, give
exactly the reference's transitions."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gridwatch.records import SensorBatch
from gridwatch.streams import fused
from gridwatch.streams import processors as procs
from gridwatch.streams.kernels import reference as ref
from gridwatch.streams.kernels import sensor as k
from gridwatch.streams.processor import Events, create

PROPS = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
N_SLOTS = 5


@st.composite
def batches(draw):
    """Batches of (slots, ts, values); ts mostly rising with some late readings."""
    out, t = [], 0
    for _ in range(draw(st.integers(1, 4))):
        n = draw(st.integers(0, 30))
        slots = draw(st.lists(st.integers(-1, N_SLOTS), min_size=n, max_size=n))
        steps = draw(st.lists(st.sampled_from([0, 500, 1000, 30_000]) | st.integers(-3000, 40_000),
                              min_size=n, max_size=n))
        ts = []
        for step in steps:
            t = max(0, t + step)
            ts.append(t)
        vals = draw(st.lists(st.sampled_from([0.0, 0.5, 1.0, 3.0, 9.0]), min_size=n, max_size=n))
        out.append((slots, ts, vals))
    return out


def sensor_batch(b) -> SensorBatch:
    slots, ts, vals = b
    s = np.array(slots, np.int32)
    return SensorBatch(s, s, np.array(ts, np.int64), np.array(vals, np.float64))


MODELS = {
    "threshold": ({"above": 3.0, "clear_at": 1.0, "min_duration_s": 1},
                  lambda en: ref.Threshold(en, above=3.0, clear_above=1.0, min_dur_ms=1000)),
    "rate_of_change": ({"max_per_s": 0.5, "clear_ratio": 0.5}, lambda en: ref.RateOfChange(en, 0.5, 0.25)),
    "zscore": ({"alpha": 0.3, "warmup": 2, "z_raise": 1.5, "z_clear": 0.5, "min_std": 0.1},
               lambda en: ref.ZScore(en, 0.3, 2, 1.5, 0.5, 0.1)),
    "flatline": ({"epsilon": 0.0, "duration_s": 1}, lambda en: ref.Flatline(en, 0.0, 1000)),
}


@pytest.fixture(params=[1, 2, 256], ids=lambda n: f"out{n}")
def out_start(request, monkeypatch):
    """Offline's first output buffer, and the rows per call of the series rules' kernels."""
    monkeypatch.setattr(procs, "_OUT_START", request.param)
    monkeypatch.setattr(fused, "_CHUNK", request.param)
    return request.param


@pytest.mark.parametrize("kind", list(MODELS))
def test_small_output_buffers_resume_exactly(kind, out_start):
    params, make_model = MODELS[kind]

    @PROPS
    @given(batches(), st.sets(st.integers(0, N_SLOTS - 1)))
    def check(bs, enabled):
        p = create(kind, "r", params, capacity=N_SLOTS)
        for s in enabled:
            p.enable(s)
        model = make_model(enabled)
        for b in bs:
            assert ref.same_events(ref.as_tuples(p.process(sensor_batch(b))), model.process(*b))

    check()


def test_offline_with_skipped_scans_matches_reference(out_start):
    @PROPS
    @given(batches(), st.sets(st.integers(0, N_SLOTS - 1)), st.sampled_from([1000, 30_000]),
           st.lists(st.integers(-5000, 90_000), min_size=8, max_size=8), st.booleans())
    def check(bs, enabled, timeout, waits, restore):
        p = create("offline", "o", {"timeout_s": timeout / 1000}, capacity=N_SLOTS)
        for s in enabled:
            p.enable(s)
        model = ref.Offline(enabled, timeout)
        now = 0
        for i, b in enumerate(bs):
            assert ref.same_events(ref.as_tuples(p.process(sensor_batch(b))), model.process(b[0], b[1]))
            if restore and i == 1:  # a restored processor must not trust a stale bound
                q = create("offline", "o", {"timeout_s": timeout / 1000}, capacity=2)
                q.restore(p.snapshot())
                p = q
            # several ticks per batch, some going back in time
            for w in waits[:3] if i % 2 else waits[3:]:
                now = max(now, max(b[1], default=0)) + w
                assert ref.same_events(ref.as_tuples(p.tick(now)), model.tick(now))

    check()


def test_offline_tick_resumes_when_many_devices_go_silent(monkeypatch):
    monkeypatch.setattr(procs, "_OUT_START", 3)
    n = 50
    p = create("offline", "o", {"timeout_s": 10}, capacity=n)
    for s in range(n):
        p.enable(s)
    s = np.arange(n, dtype=np.int32)
    p.process(SensorBatch(s, s, np.arange(n, dtype=np.int64) * 10, np.zeros(n)))
    ev = p.tick(10_000 + 250)  # silent > 10 s: slots with ts < 250, i.e. 0..24
    assert list(ev.slot) == list(range(25)) and set(ev.row) == {-1}
    assert list(ev.value) == [(10_250 - 10 * i) / 1000 for i in range(25)]
    ev = p.tick(10_000 + 1000)
    assert list(ev.slot) == list(range(25, 50))
    assert len(p.tick(99_000)) == 0


def test_a_kernel_stops_when_its_output_is_full():
    """The row-kernel protocol (offline_seen): a full output stops right after the row that filled
    it, with that row's state updated and the next rows untouched."""
    slots = np.arange(6, dtype=np.int32)
    ts = np.arange(6, dtype=np.int64) * 1000 + 10_000
    last_seen, offline = np.zeros(6, np.int64), np.ones(6, np.int8)  # all offline: each reading clears
    out = Events.alloc(2)
    assert k.offline_seen(slots, ts, np.ones(6, np.bool_), last_seen, offline, *out) == 2
    assert list(out.row) == [0, 1] and list(offline) == [0, 0, 1, 1, 1, 1] and last_seen[2] == 0
    out = Events.alloc(10)
    assert k.offline_seen(slots[2:], ts[2:], np.ones(6, np.bool_), last_seen, offline, *out) == 4
    assert list(out.row[:4]) == [0, 1, 2, 3] and not offline.any()
