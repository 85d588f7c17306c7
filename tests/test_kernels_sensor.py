"""Sensor kernels: equal to the plain-Python reference on random batches, plus targeted cases."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gridwatch.records import SensorBatch
from gridwatch.streams.kernels import reference as ref
from gridwatch.streams.kernels import sensor as k
from gridwatch.streams.processor import CLEAR, RAISE, Events, create

PROPS = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
N_SLOTS = 4  # state arrays hold slots 0..3; batches also carry -1 and 4, which must be skipped
# round steps make the boundary cases (rate == limit, silence == timeout) likely
STEPS = st.sampled_from([0, 250, 500, 1000, 2000]) | st.integers(0, 2000)


@st.composite
def stream(draw, values=st.integers(0, 10).map(lambda i: i / 2)):
    """(enabled mask, batches): each batch is (slots, ts, values) lists; ts in order or shuffled."""
    enabled = draw(st.lists(st.booleans(), min_size=N_SLOTS, max_size=N_SLOTS))
    ordered = draw(st.booleans())
    batches, t = [], 0
    for _ in range(draw(st.integers(1, 3))):
        n = draw(st.integers(0, 40))
        slots = draw(st.lists(st.integers(-1, N_SLOTS), min_size=n, max_size=n))
        if ordered:
            steps = draw(st.lists(STEPS, min_size=n, max_size=n))
            ts = list(np.cumsum(steps) + t) if n else []
            t = int(ts[-1]) if n else t
        else:
            ts = draw(st.lists(st.integers(0, 60).map(lambda i: i * 500), min_size=n, max_size=n))
        vals = draw(st.lists(values, min_size=n, max_size=n))
        batches.append(([int(s) for s in slots], [int(x) for x in ts], vals))
    return enabled, batches


def arrays(batch):
    slots, ts, vals = batch
    return np.array(slots, np.int32), np.array(ts, np.int64), np.array(vals, np.float64)


def run(kernel, batch, enabled, state, *params):
    slots, ts, vals = arrays(batch)
    out = Events.alloc(len(ts))
    n = kernel(slots, ts, vals, np.array(enabled), *state, *params, *out)
    return ref.as_tuples(out.head(n))


def _nan(x):
    return float("nan") if x is None else x


def enabled_set(enabled):
    return {s for s, e in enumerate(enabled) if e}


@PROPS
@given(stream(), st.sampled_from(["above", "below", "both"]), st.sampled_from([0.0, 0.5, 1.0]),
       st.sampled_from([0, 1000, 2500]))
def test_threshold_matches_reference(data, side, gap, min_dur):
    enabled, batches = data
    above = 3.0 if side != "below" else None
    below = 1.0 if side != "above" else None
    clear_above = above - gap if above is not None else None
    clear_below = below + gap if below is not None else None
    model = ref.Threshold(enabled_set(enabled), above, below, clear_above, clear_below, min_dur)
    state = (np.zeros(N_SLOTS, np.int8), np.full(N_SLOTS, k.NO_TS, np.int64))
    params = (above is not None, _nan(above), _nan(clear_above), below is not None, _nan(below),
              _nan(clear_below), min_dur)
    for b in batches:
        assert ref.same_events(run(k.threshold, b, enabled, state, *params), model.process(*b))


@PROPS
@given(stream(), st.sampled_from([0.5, 1.0, 2.0]), st.sampled_from([1.0, 0.5]), st.sampled_from(["up", "down", "both"]))
def test_rate_of_change_matches_reference(data, max_per_s, ratio, direction):
    enabled, batches = data
    model = ref.RateOfChange(enabled_set(enabled), max_per_s, max_per_s * ratio, direction)
    state = (np.full(N_SLOTS, k.NO_TS, np.int64), np.zeros(N_SLOTS), np.zeros(N_SLOTS, np.int8))
    d = {"up": 1, "down": -1, "both": 0}[direction]
    for b in batches:
        assert ref.same_events(run(k.rate_of_change, b, enabled, state, max_per_s, max_per_s * ratio, d),
                               model.process(*b))


@PROPS
@given(stream(values=st.floats(-50, 50, allow_nan=False) | st.sampled_from([0.0, 1.0])),
       st.sampled_from([0.1, 0.3, 0.5]), st.integers(1, 5), st.sampled_from([1.5, 3.0]),
       st.sampled_from([0.5, 1.5]), st.sampled_from([1e-3, 0.5]), st.booleans())
def test_zscore_matches_reference(data, alpha, warmup, z_raise, z_clear, min_std, freeze):
    enabled, batches = data
    model = ref.ZScore(enabled_set(enabled), alpha, warmup, z_raise, z_clear, min_std, freeze)
    state = (np.zeros(N_SLOTS), np.zeros(N_SLOTS), np.zeros(N_SLOTS, np.int32), np.zeros(N_SLOTS, np.int8))
    for b in batches:
        got = run(k.zscore, b, enabled, state, alpha, warmup, z_raise, z_clear, min_std, freeze)
        assert ref.same_events(got, model.process(*b))


@PROPS
@given(stream(values=st.sampled_from([0.0, 0.25, 0.5, 3.0])), st.sampled_from([0.0, 0.3]),
       st.sampled_from([1000, 3000]))
def test_flatline_matches_reference(data, epsilon, dur):
    enabled, batches = data
    model = ref.Flatline(enabled_set(enabled), epsilon, dur)
    state = (np.zeros(N_SLOTS), np.full(N_SLOTS, k.NO_TS, np.int64), np.zeros(N_SLOTS, np.int8))
    for b in batches:
        assert ref.same_events(run(k.flatline, b, enabled, state, epsilon, dur), model.process(*b))


@PROPS
@given(stream(), st.sampled_from([500, 3000]),
       st.lists(st.sampled_from([0, 500, 3000]) | st.integers(0, 5000), min_size=3, max_size=3))
def test_offline_matches_reference(data, timeout, tick_after):
    enabled, batches = data
    model = ref.Offline(enabled_set(enabled), timeout)
    last_seen, offline = np.full(N_SLOTS, k.NO_TS, np.int64), np.zeros(N_SLOTS, np.int8)
    mask = np.array(enabled)
    for b, wait in zip(batches, tick_after):
        slots, ts, _ = arrays(b)
        out = Events.alloc(len(ts))
        n = k.offline_seen(slots, ts, mask, last_seen, offline, *out)
        assert ref.same_events(ref.as_tuples(out.head(n)), model.process(b[0], b[1]))
        now = max(b[1], default=0) + wait
        out = Events.alloc(N_SLOTS)
        n = k.offline_tick(now, timeout, mask, last_seen, offline, *out)
        assert ref.same_events(ref.as_tuples(out.head(n)), model.tick(now))


# --- targeted cases, through the processors --------------------------------------------

def batch(values, ts=None, series=0):
    n = len(values)
    ts = np.arange(n, dtype=np.int64) * 1000 if ts is None else np.asarray(ts, np.int64)
    return SensorBatch(np.full(n, series, np.int32), np.full(n, series, np.int32), ts, np.asarray(values, np.float64))


def transitions(ev: Events):
    return [(int(r), int(k)) for r, k in zip(ev.row, ev.kind)]


def test_threshold_hysteresis():
    p = create("threshold", "t", {"above": 2.5, "clear_at": 2.3})
    p.enable(0)
    ev = p.process(batch([2.0, 2.5, 2.4, 2.6, 2.2, 2.4]))
    assert transitions(ev) == [(1, RAISE), (4, CLEAR)]
    assert list(ev.value) == [2.5, 2.2]


def test_threshold_without_hysteresis_clears_below_raise_level():
    p = create("threshold", "t", {"below": 1.0})
    p.enable(0)
    assert transitions(p.process(batch([1.5, 1.0, 0.5, 1.01]))) == [(1, RAISE), (3, CLEAR)]


def test_threshold_min_duration_needs_a_continuous_run():
    p = create("threshold", "t", {"above": 10, "min_duration_s": 2})
    p.enable(0)
    # over at 0s,1s; dips at 2s (run restarts); over from 3s: raise at 5s (2s after 3s)
    ev = p.process(batch([11, 12, 9, 11, 11, 11, 11]))
    assert transitions(ev) == [(5, RAISE)]
    assert int(ev.ts[0]) == 5000


def test_rate_of_change_ignores_out_of_order_and_direction():
    p = create("rate_of_change", "r", {"max_per_s": 1.0, "direction": "up"})
    p.enable(0)
    ev = p.process(batch([0, 0.5, 100, 3, 0], ts=[0, 1000, 500, 2000, 3000]))
    # 100 @500ms is older than 1000ms: ignored; 0.5 -> 3 over 1s = 2.5/s raises; falling clears
    assert transitions(ev) == [(3, RAISE), (4, CLEAR)]
    assert ev.value[0] == pytest.approx(2.5)


def test_zscore_freeze_keeps_a_level_shift_raised():
    base = [10.0, 10.2, 9.8, 10.1, 9.9] * 4
    for freeze, want_clear in ((True, False), (False, True)):
        p = create("zscore", "z", {"alpha": 0.3, "warmup": 5, "z_raise": 4, "z_clear": 2,
                                   "freeze_baseline": freeze})
        p.enable(0)
        ev = p.process(batch(base + [20.0] * 30))
        assert transitions(ev)[0] == (len(base), RAISE)
        assert (CLEAR in ev.kind) is want_clear


def test_flatline_raises_after_duration_and_clears_on_change():
    p = create("flatline", "f", {"epsilon": 0.01, "duration_s": 3})
    p.enable(0)
    ev = p.process(batch([5.0, 5.005, 5.0, 4.995, 5.0, 6.0]))
    assert transitions(ev) == [(3, RAISE), (5, CLEAR)]


def test_offline_tick_and_recovery():
    p = create("offline", "o", {"timeout_s": 60})
    for s in range(3):
        p.enable(s)
    b = SensorBatch(np.array([0, 1], np.int32), np.array([0, 1], np.int32), np.array([0, 30_000], np.int64),
                    np.zeros(2))
    assert len(p.process(b)) == 0
    ev = p.tick(61_000)  # device 0 silent 61s; device 1 only 31s; device 2 never seen
    assert list(ev.slot) == [0] and list(ev.kind) == [RAISE] and list(ev.row) == [-1]
    assert len(p.tick(62_000)) == 0  # already offline: no repeat
    ev = p.process(SensorBatch(np.array([0], np.int32), np.array([0], np.int32), np.array([70_000], np.int64),
                               np.zeros(1)))
    assert list(ev.kind) == [CLEAR] and ev.value[0] == 70.0


def test_disabled_and_unknown_slots_are_skipped():
    p = create("threshold", "t", {"above": 1})
    p.enable(1)
    b = SensorBatch(np.array([0, 5000, -1, 1], np.int32), np.zeros(4, np.int32), np.arange(4, dtype=np.int64),
                    np.full(4, 2.0))
    assert transitions(p.process(b)) == [(3, RAISE)]
    assert p.active[0] == 0
