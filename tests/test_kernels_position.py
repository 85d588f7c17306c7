"""Position kernels: equal to the plain-Python reference on random tracks, plus targeted cases."""
from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gridwatch.records import PositionBatch
from gridwatch.streams.kernels import position as k
from gridwatch.streams.kernels import reference as ref
from gridwatch.streams.processor import CLEAR, RAISE, Events, create
from gridwatch.streams.zones import Polygons

PROPS = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
N_DEV = 3
LON0, LAT0, STEP = 120.0, 30.0, 0.001  # a 11 x 11 grid of fixes, ~100 m apart


def square(x0, y0, x1, y1):
    return [[LON0 + x0 * STEP, LAT0 + y0 * STEP], [LON0 + x1 * STEP, LAT0 + y0 * STEP],
            [LON0 + x1 * STEP, LAT0 + y1 * STEP], [LON0 + x0 * STEP, LAT0 + y1 * STEP],
            [LON0 + x0 * STEP, LAT0 + y0 * STEP]]


def feature(gtype, coords, **props):
    return {"type": "Feature", "properties": props, "geometry": {"type": gtype, "coordinates": coords}}


ZONES = {"type": "FeatureCollection", "features": [
    feature("Polygon", [square(1, 1, 6, 6), square(2.5, 2.5, 4.5, 4.5)], name="park-with-pond"),
    feature("MultiPolygon", [[square(7, 0, 9, 2)], [square(0, 7, 2, 9)]], name="two-yards"),
    feature("Polygon", [[[LON0 + 5 * STEP, LAT0 + 5 * STEP], [LON0 + 10 * STEP, LAT0 + 5 * STEP],
                         [LON0 + 5 * STEP, LAT0 + 10 * STEP], [LON0 + 5 * STEP, LAT0 + 5 * STEP]]], name="tri"),
]}
POLY = Polygons.from_geojson(ZONES)
REF_ZONES = [[[tuple(p) for p in ring] for part in ([f["geometry"]["coordinates"]] if f["geometry"]["type"] == "Polygon"
                                                     else f["geometry"]["coordinates"]) for ring in part]
             for f in ZONES["features"]]


@st.composite
def tracks(draw, fine=False):
    """(enabled, batches); each batch is (devices, ts, lats, lons, speeds) lists."""
    enabled = draw(st.lists(st.booleans(), min_size=N_DEV, max_size=N_DEV))
    ordered = draw(st.booleans())
    grid = st.integers(0, 10).map(lambda i: i / 2 if fine else i)
    batches, t = [], 0
    for _ in range(draw(st.integers(1, 3))):
        n = draw(st.integers(0, 30))
        dev = draw(st.lists(st.integers(-1, N_DEV), min_size=n, max_size=n))
        if ordered:
            steps = draw(st.lists(st.sampled_from([0, 1000, 5000]) | st.integers(0, 10_000), min_size=n, max_size=n))
            ts = [int(x) for x in np.cumsum(steps) + t]
            t = ts[-1] if n else t
        else:
            ts = draw(st.lists(st.integers(0, 60_000), min_size=n, max_size=n))
        lats = [LAT0 + g * STEP for g in draw(st.lists(grid, min_size=n, max_size=n))]
        lons = [LON0 + g * STEP for g in draw(st.lists(grid, min_size=n, max_size=n))]
        speeds = draw(st.lists(st.sampled_from([math.nan, math.nan, 20.0, 50.0, 80.0]), min_size=n, max_size=n))
        batches.append((dev, ts, lats, lons, speeds))
    return enabled, batches


def cols(b):
    dev, ts, lats, lons, speeds = b
    return (np.array(dev, np.int32), np.array(ts, np.int64), np.array(lats, np.float64),
            np.array(lons, np.float64), np.array(speeds, np.float64))


def enabled_set(enabled):
    return {s for s, e in enumerate(enabled) if e}


def no_ts(n=N_DEV):
    return np.full(n, k.NO_TS, np.int64)


def test_haversine_known_distance():
    # one degree of latitude on the mean-radius sphere
    assert k.haversine_m(0.0, 0.0, 1.0, 0.0) == pytest.approx(111_195.08, abs=0.1)
    assert k.haversine_m(LAT0, LON0, LAT0, LON0) == 0.0
    assert k.haversine_m(10.0, 20.0, 11.0, 21.5) == pytest.approx(ref.haversine_m(10.0, 20.0, 11.0, 21.5))


@PROPS
@given(tracks(), st.sampled_from([0, 5000]), st.sampled_from([1.0, 0.5]))
def test_speeding_matches_reference(data, min_dur, ratio):
    enabled, batches = data
    model = ref.Speeding(enabled_set(enabled), 50.0, 50.0 * ratio, min_dur)
    state = (no_ts(), np.zeros(N_DEV), np.zeros(N_DEV), no_ts(), np.zeros(N_DEV, np.int8))
    for b in batches:
        out = Events.alloc(len(b[0]))
        n = k.speeding(*cols(b), np.array(enabled), *state, 50.0, 50.0 * ratio, min_dur, *out)
        assert ref.same_events(ref.as_tuples(out.head(n)), model.process(*b))


@PROPS
@given(tracks(), st.sampled_from(["forbidden", "allowed"]), st.integers(1, 4))
def test_geofence_matches_reference(data, mode, room):
    enabled, batches = data
    model = ref.Geofence(enabled_set(enabled), REF_ZONES, mode)
    last_ts, inside = no_ts(), np.zeros((N_DEV, len(POLY)), np.int8)
    outside, last_zone = np.zeros(N_DEV, np.int8), np.full(N_DEV, -1, np.int32)
    for b in batches:
        dev, ts, lat, lon, _ = cols(b)
        if mode == "allowed":
            out = Events.alloc(len(ts))
            n = k.geofence_allowed(dev, ts, lat, lon, np.array(enabled), last_ts, outside, last_zone,
                                   *POLY.arrays, *out)
            got = ref.as_tuples(out.head(n))
        else:  # small output buffers force the kernel to stop and resume
            got, start = [], 0
            while start < len(ts) or start == 0 == len(ts):
                out = Events.alloc(len(POLY) + room)
                n, start = k.geofence_forbidden(start, dev, ts, lat, lon, np.array(enabled), last_ts, inside,
                                                *POLY.arrays, *out)
                got += ref.as_tuples(out.head(n))
                if not len(ts):
                    break
        assert ref.same_events(got, model.process(*b[:4]))


@PROPS
@given(tracks(fine=True), st.sampled_from([60.0, 150.0]), st.sampled_from([0, 5000]), st.booleans())
def test_dwell_matches_reference(data, radius, dur, with_depot):
    enabled, batches = data
    zones, ref_zones = (POLY, REF_ZONES) if with_depot else (Polygons.empty(), [])
    model = ref.Dwell(enabled_set(enabled), radius, dur, ref_zones)
    state = (no_ts(), np.zeros(N_DEV), np.zeros(N_DEV), no_ts(), np.zeros(N_DEV, np.bool_), np.zeros(N_DEV, np.int8))
    for b in batches:
        dev, ts, lat, lon, _ = cols(b)
        out = Events.alloc(len(ts))
        n = k.dwell(dev, ts, lat, lon, np.array(enabled), *state, radius, dur, *zones.arrays, *out)
        assert ref.same_events(ref.as_tuples(out.head(n)), model.process(*b[:4]))


# --- targeted cases, through the processors --------------------------------------------

def fixes(points, ts, speed=math.nan, device=0):
    n = len(points)
    return PositionBatch(np.full(n, device, np.int32), np.asarray(ts, np.int64),
                         np.array([LAT0 + y * STEP for x, y in points]), np.array([LON0 + x * STEP for x, y in points]),
                         np.full(n, speed), np.full(n, math.nan))


def transitions(ev):
    return [(int(r), int(k_), int(a)) for r, k_, a in zip(ev.row, ev.kind, ev.aux)]


def test_dwell_outside_depot_raises_inside_depot_does_not():
    depot = {"type": "FeatureCollection", "features": [feature("Polygon", [square(0, 0, 2, 2)], name="depot")]}
    p = create("dwell", "hazmat", {"radius_m": 50, "duration_s": 600, "allowed": depot})
    p.enable(0)
    p.enable(1)
    minute = 60_000
    parked = [(1, 1)] * 12  # inside the depot for 11 minutes: fine
    assert len(p.process(fixes(parked, np.arange(12) * minute))) == 0
    # drives off, parks on a street corner for 11 minutes, then leaves
    street = [(5, 5)] * 12 + [(8, 8)]
    ev = p.process(fixes(street, (12 + np.arange(13)) * minute))
    assert transitions(ev) == [(11, RAISE, -1), (12, CLEAR, -1)]
    assert ev.value[0] == pytest.approx(660.0)  # seconds since the anchor was set
    assert float(p.anchor_lat[0]) == pytest.approx(LAT0 + 8 * STEP)


def test_geofence_forbidden_zone_events_carry_zone_index():
    p = create("geofence", "g", {"zones": ZONES, "mode": "forbidden"})
    p.enable(0)
    # outside -> park (zone 0) -> pond (hole: leaves 0) -> overlap of park and triangle -> out
    ev = p.process(fixes([(0, 0), (2, 2), (3.5, 3.5), (5.5, 5.5), (10, 0)], np.arange(5) * 1000))
    assert transitions(ev) == [(1, RAISE, 0), (2, CLEAR, 0), (3, RAISE, 0), (3, RAISE, 2), (4, CLEAR, 0),
                               (4, CLEAR, 2)]


def test_geofence_allowed_corridor():
    p = create("geofence", "g", {"zones": ZONES, "mode": "allowed"})
    p.enable(0)
    ev = p.process(fixes([(8, 1), (10, 10), (0, 0), (1, 8)], np.arange(4) * 1000))
    assert transitions(ev) == [(1, RAISE, 1), (3, CLEAR, 1)]


def test_speeding_from_fixes_with_min_duration():
    p = create("speeding", "s", {"limit_kmh": 50, "min_duration_s": 10, "clear_ratio": 0.8})
    p.enable(0)
    # 0.001 deg of latitude (~111 m) every 5 s is ~80 km/h; then standing still
    pts = [(0, y) for y in range(5)] + [(0, 4)] * 2
    ev = p.process(fixes(pts, np.arange(7) * 5000))
    assert transitions(ev) == [(3, RAISE, -1), (5, CLEAR, -1)]
    assert ev.value[0] == pytest.approx(80.05, abs=0.1)
    # reported speed wins over computed; a stale fix is ignored
    ev = p.process(PositionBatch(np.zeros(3, np.int32), np.array([40_000, 1_000, 50_000], np.int64),
                                 np.full(3, LAT0), np.full(3, LON0), np.array([90.0, 200.0, 90.0]), np.full(3, math.nan)))
    assert transitions(ev) == [(2, RAISE, -1)]
