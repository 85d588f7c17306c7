"""Processors: creation by kind, parameter validation, and state that survives grow/snapshot/restore."""
from __future__ import annotations

import json

import numpy as np
import pytest
from pydantic import ValidationError

from gridwatch.records import PositionBatch, SensorBatch
from gridwatch.streams.kernels import reference as ref
from gridwatch.streams.processor import Events, Processor, create

SQUARE = {"type": "FeatureCollection", "features": [{
    "type": "Feature", "properties": {"name": "yard"},
    "geometry": {"type": "Polygon", "coordinates": [[[0, 0], [0.01, 0], [0.01, 0.01], [0, 0.01], [0, 0]]]}}]}

RULES = {
    "threshold": {"above": 3.0, "clear_at": 2.0, "min_duration_s": 2},
    "rate_of_change": {"max_per_s": 0.5, "clear_ratio": 0.5},
    "zscore": {"alpha": 0.2, "warmup": 5, "z_raise": 2.5, "z_clear": 1.0},
    "flatline": {"epsilon": 0.1, "duration_s": 10},
    "offline": {"timeout_s": 30},
    "speeding": {"limit_kmh": 60, "min_duration_s": 5, "clear_ratio": 0.9},
    "geofence": {"zones": SQUARE, "mode": "forbidden"},
    "dwell": {"radius_m": 1500, "duration_s": 30, "allowed": SQUARE},
}


def test_every_kind_is_registered_and_created():
    for kind, params in RULES.items():
        p = create(kind, f"rule-{kind}", params)
        assert p.kind == kind and p.name == f"rule-{kind}" and p.capacity >= 1024
    with pytest.raises(KeyError, match="known kinds"):
        create("no-such-kind", "x", {})
    assert set(RULES) <= set(Processor.registry)


def test_every_params_field_is_described():
    for kind in RULES:
        for name, field in Processor.registry[kind].Params.model_fields.items():
            assert field.description, f"{kind}.{name} has no description"


@pytest.mark.parametrize("kind, params, msg", [
    ("threshold", {}, "above` or `below"),
    ("threshold", {"above": 2, "clear_at": 3}, "clear_at` must be <= `above"),
    ("threshold", {"below": 2, "clear_at": 1}, "clear_at` must be >= `below"),
    ("threshold", {"above": 2, "below": 1, "clear_at": 1.5}, "one-sided"),
    ("threshold", {"above": 2, "unknown": 1}, "unknown"),
    ("rate_of_change", {"max_per_s": 1, "direction": "sideways"}, "direction"),
    ("zscore", {"z_raise": 2, "z_clear": 3}, "z_clear"),
    ("flatline", {"duration_s": 0}, "duration_s"),
    ("geofence", {"zones": {"type": "FeatureCollection", "features": []}, "mode": "forbidden"}, "at least one"),
    ("geofence", {"zones": {"type": "FeatureCollection", "features": [{"type": "Feature", "geometry": {
        "type": "Polygon", "coordinates": [[[0, 0], [1, 0], [1, 1], [0, 0.5]]]}}]}, "mode": "allowed"}, "not closed"),
    ("dwell", {"radius_m": 50, "duration_s": 60, "allowed": "/nonexistent/depots.geojson"}, "cannot read"),
])
def test_invalid_params_are_rejected_with_a_reason(kind, params, msg):
    with pytest.raises(ValidationError, match=msg):
        create(kind, "bad", params)


def test_zones_from_a_file(tmp_path):
    f = tmp_path / "fence.geojson"
    f.write_text(json.dumps(SQUARE))
    p = create("geofence", "g", {"zones": str(f), "mode": "allowed"})
    assert p.params.polygons.properties == [{"name": "yard"}]


# --- grow / snapshot / restore ------------------------------------------------------------

def sensor_batches(rng, n_batches=6, n=300, series=40):
    out, t = [], 0
    for _ in range(n_batches):
        ts = t + np.sort(rng.integers(0, 60_000, n))
        t = int(ts[-1])
        s = rng.integers(0, series, n).astype(np.int32)
        v = np.where(rng.random(n) < 0.3, 2.5, rng.normal(2.0, 1.0, n).round(1))
        out.append(SensorBatch(s, s // 2, ts.astype(np.int64), v))
    return out


def position_batches(rng, n_batches=6, n=200, devices=20):
    out, t = [], 0
    for _ in range(n_batches):
        ts = t + np.sort(rng.integers(0, 120_000, n))
        t = int(ts[-1])
        d = rng.integers(0, devices, n).astype(np.int32)
        lat = 0.005 + rng.integers(-3, 4, n) * 0.004
        lon = 0.005 + rng.integers(-3, 4, n) * 0.004
        speed = np.where(rng.random(n) < 0.5, np.nan, rng.uniform(0, 100, n))
        out.append(PositionBatch(d, ts.astype(np.int64), lat, lon, speed, np.full(n, np.nan)))
    return out


def run_all(p: Processor, batches, enable_at) -> list[Events]:
    """Process batches; before batch i, enable the slots in enable_at.get(i); tick 45 s after each."""
    events = []
    for i, b in enumerate(batches):
        for s in enable_at.get(i, ()):
            p.enable(s)
        events += [p.process(b), p.tick(int(b.ts[-1]) + 45_000)]
    return events


def flat(events: list[Events]) -> list[tuple]:
    return [t for e in events for t in ref.as_tuples(e)]


@pytest.mark.parametrize("kind", list(RULES))
def test_snapshot_restore_and_grow_mid_stream_match_an_uninterrupted_run(kind):
    rng = np.random.default_rng(7)
    position = Processor.registry[kind].input == "position"
    batches = position_batches(rng) if position else sensor_batches(rng)
    # most slots from the start; later ones only mid-stream, past the initial capacity of 8 (forces grow)
    enable_at = {0: range(0, 30, 2), 2: range(1, 30, 2), 4: range(30, 40)}

    whole = run_all(create(kind, "r", RULES[kind], capacity=8), batches, enable_at)
    assert any(len(e) for e in whole), "the data must exercise the rule"

    first = create(kind, "r", RULES[kind], capacity=8)
    part = run_all(first, batches[:3], enable_at)
    snap = first.snapshot()
    first.process(batches[3])  # must not leak into the snapshot
    second = create(kind, "r", RULES[kind], capacity=4)
    second.restore(snap)
    part += run_all(second, batches[3:], {i - 3: s for i, s in enable_at.items() if i >= 3})
    assert ref.same_events(flat(part), flat(whole), rel=0)
    assert second.capacity >= 40 and second.nbytes > 0


def test_grow_keeps_state_and_new_slots_start_disabled():
    p = create("threshold", "t", {"above": 1}, capacity=2)
    p.enable(0)
    p.process(SensorBatch(np.zeros(1, np.int32), np.zeros(1, np.int32), np.zeros(1, np.int64), np.full(1, 5.0)))
    p.grow(100)
    assert p.capacity >= 100 and p.active[0] == 1 and not p.enabled[1:].any()


def test_benchmark_runs_at_toy_size():
    from gridwatch.benchmarks.processors import measure, table

    r = measure(devices=300, readings=6_000, batch=1_000, repeat=1, ref_readings=1_000, memory_devices=1_000,
                position_fixes=3_000, position_zones=5, position_ref_fixes=3_000)
    assert r["readings"] == 6_000 and r["numba"]["events"] > 0
    assert r["memory"]["total_mb"] > 0 and "speed-up vs pandas" in table(r)
    # the geofence/dwell part checked its events against the references on all 3,000 fixes
    assert set(r["position"]["rules"]) == {"geofence forbidden", "geofence allowed", "dwell"}
    assert r["position"]["rules"]["dwell"]["events"] > 0 and "geofence allowed" in table(r)
