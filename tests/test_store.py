"""Embedded store: bit-exact reading round trips, position chunks, warning upserts, dead letters,
retention, and slots that survive a reopen."""
from __future__ import annotations

import math

import numpy as np
import pytest

from gridwatch.hw.profiles import METRIC_ID
from gridwatch.ingest.devices import DeviceDirectory
from gridwatch.records import DeadLetter, PositionBatch, RegionPath, SensorBatch, Warning
from gridwatch.streams.store import Store, warning_from_row

DAY = 86_400_000
T0 = 1_700_000_000_000


@pytest.fixture
def store(tmp_path):
    s = Store(tmp_path / "gw.db", retention_days=10, dead_letter_keep=3)
    yield s
    s.close()


def directory_with(n_dev=3) -> DeviceDirectory:
    d = DeviceDirectory()
    for i in range(n_dev):
        d.add(f"dev-{i}", "aqualine", "sewer_level", lat=1.0 + i, lon=2.0, region=None if i else "c/a/t/g")
    return d


def sensor(d: DeviceDirectory, dev, metric, ts, val) -> SensorBatch:
    dev = np.array(dev, np.int32)
    series = d.series_slots(dev, np.array([METRIC_ID[m] for m in metric], np.int16))
    return SensorBatch(series, dev, np.array(ts, np.int64), np.array(val, np.float64))


def warning(state="active", cleared=None, value=1.5, wid="w-1", start=T0) -> Warning:
    return Warning(wid, "flood", "threshold", "major", "dev-0", RegionPath("c", "a", "t", "g"), state, start,
                   cleared or start, cleared, value, "high water", None, {"metric": "water_level"})


def test_readings_round_trip_bit_exact(store):
    d = directory_with()
    rng = np.random.default_rng(3)
    vals = np.concatenate([rng.normal(0, 1e3, 50), [5e-324, -0.0, 1.7976931348623157e308, 1 / 3, math.pi]])
    n = len(vals)
    b = sensor(d, rng.integers(0, 3, n), ["water_level", "flow"] * (n // 2) + ["water_level"] * (n % 2),
               T0 + rng.permutation(n) * 1000, vals)
    store.commit(d, sensor=b)
    assert store.count_readings() == n
    r = store.readings()
    order = np.argsort(b.ts, kind="stable")
    assert r["ts"].tolist() == b.ts[order].tolist()
    assert r["value"].view(np.int64).tolist() == b.value[order].view(np.int64).tolist()  # bit-exact (-0.0 too)
    assert r["device"].tolist() == [f"dev-{i}" for i in b.device[order]]
    one = store.readings(device="dev-1", metric="flow", since=T0 + 5000, until=T0 + 40_000)
    sel = (b.device == 1) & (d.series_metric[b.series] == METRIC_ID["flow"]) & (b.ts >= T0 + 5000) & (b.ts <= T0 + 40_000)
    assert sorted(one["ts"].tolist()) == sorted(b.ts[sel].tolist()) and len(one["ts"]) > 0
    assert len(store.readings(device="nobody")["ts"]) == 0


def test_position_chunks(store):
    d = directory_with()
    p = PositionBatch(np.array([0, 2], np.int32), np.array([T0, T0 + 1], np.int64), np.array([1.5, -2.5]),
                      np.array([3.25, 4.0]), np.array([np.nan, 12.0]), np.array([100.0, np.nan]))
    store.commit(d, position=p)
    store.commit(d, position=PositionBatch.empty())
    got = store.positions()
    assert store.count_positions() == 2
    assert got["device"].tolist() == ["dev-0", "dev-2"] and got["ts"].tolist() == [T0, T0 + 1]
    assert got["lat"].tolist() == [1.5, -2.5] and np.isnan(got["speed"][0]) and got["alt"][0] == 100.0


def test_warning_upsert_raised_then_cleared_keeps_one_row(store):
    store.commit(warnings=[warning()])
    [w] = store.warnings()
    assert w["state"] == "active" and w["cleared_ts"] is None and w["evidence"] == {"metric": "water_level"}
    store.commit(warnings=[warning("cleared", cleared=T0 + 60_000, value=0.5)])
    rows = store.warnings()
    assert len(rows) == 1 and rows[0]["state"] == "cleared" and rows[0]["cleared_ts"] == T0 + 60_000
    assert rows[0]["value"] == 0.5 and rows[0]["message"] == "high water"  # unchanged columns kept
    back = warning_from_row(rows[0])
    assert back.id == "w-1" and back.region.as_path() == "c/a/t/g"
    assert store.warnings(state="active") == [] and len(store.warnings(region="c/a")) == 1
    assert store.warnings(region="c/b") == []
    store.commit(warnings=[warning(wid="w-2", value=float("nan"))])
    assert math.isnan(warning_from_row(store.warnings(state="active")[0]).value)


def test_dead_letters_and_counts(store):
    dl = [DeadLetter("t/1", "wrong_type", "value is str", b"{}", T0), DeadLetter("t/2", "duplicate", "again", b"x", T0)]
    if hasattr(dl[0], "count"):
        dl[0].count = 4
    store.commit(dead=dl)
    store.commit(dead=[DeadLetter("t/3", "wrong_type", "value is bool", b"[]", T0 + 1)])
    counts = store.dead_letter_counts()
    assert counts == {"wrong_type": getattr(dl[0], "count", 1) + 1, "duplicate": 1}
    got = store.dead_letters(reason="wrong_type")
    assert [g["source"] for g in got] == ["t/3", "t/1"] and got[1]["payload"] == b"{}"


def test_retention(store):
    d = directory_with()
    store.commit(d, sensor=sensor(d, [0], ["water_level"], [T0 - 20 * DAY], [1.0]))
    store.commit(d, sensor=sensor(d, [0], ["water_level"], [T0 - DAY], [2.0]))
    store.commit(d, position=PositionBatch(np.array([1], np.int32), np.array([T0 - 20 * DAY]), np.ones(1), np.ones(1),
                                           np.ones(1), np.ones(1)))
    store.commit(warnings=[warning("cleared", cleared=T0 - 20 * DAY, wid="old", start=T0 - 21 * DAY),
                           warning("active", wid="still-active", start=T0 - 30 * DAY), warning("cleared", cleared=T0, wid="new")])
    store.commit(dead=[DeadLetter("t", "duplicate", "d", b"", T0) for _ in range(5)])
    assert store.dead_letters_pruned == 2  # the commit that passed dead_letter_keep (3) cut the oldest
    out = store.enforce_retention(T0)
    assert out == {"reading_chunks": 1, "position_chunks": 1, "warnings": 1, "dead_letters": 0}
    assert store.readings()["value"].tolist() == [2.0]
    assert {w["id"] for w in store.warnings()} == {"still-active", "new"}
    assert len(store.dead_letters()) == 3


def test_load_directory_restores_identical_slots(tmp_path):
    d = directory_with(4)
    b = sensor(d, [3, 0, 2, 3], ["flow", "water_level", "pressure", "water_level"], [T0] * 4, [1, 2, 3, 4])
    s = Store(tmp_path / "gw.db")
    s.commit(d, sensor=b)
    d.add("dev-late", "gassense", "gas")
    s.commit(d)
    s.close()
    s = Store(tmp_path / "gw.db")
    fresh = DeviceDirectory()
    s.load_directory(fresh)
    assert len(fresh) == 5 and [fresh.device_id(i) for i in range(5)] == [d.device_id(i) for i in range(5)]
    assert fresh.vendor == d.vendor and fresh.kind == d.kind and fresh.lat == d.lat and fresh.region == d.region
    n = len(d.series)
    assert len(fresh.series) == n
    assert fresh.series_device[:n].tolist() == d.series_device[:n].tolist()
    assert fresh.series_metric[:n].tolist() == d.series_metric[:n].tolist()
    # new devices after the reopen continue from there and are saved once
    fresh.add("dev-new", "aqualine", "x")
    s.commit(fresh, sensor=sensor(fresh, [5], ["flow"], [T0 + 1], [9.0]))
    r = s.readings(device="dev-new")
    assert r["value"].tolist() == [9.0] and r["metric"].tolist() == ["flow"]
    assert s.readings(device="dev-3", metric="flow")["value"].tolist() == [1.0]
    s.close()


def test_gateways_survive_a_reopen_and_stores_from_before_them_are_migrated(tmp_path):
    """A store made before gateways were kept (devices without a gateway column, UNIQUE (vendor, id))
    opens, keeps its slots, gets the column; bindings (new and moved) are saved and come back."""
    import sqlite3

    path = tmp_path / "gw.db"
    db = sqlite3.connect(path)
    db.executescript("CREATE TABLE devices (slot INTEGER PRIMARY KEY, id TEXT NOT NULL, vendor TEXT NOT NULL, "
                     "kind TEXT NOT NULL, lat REAL, lon REAL, region TEXT, UNIQUE (vendor, id));"
                     "INSERT INTO devices VALUES (0, 'dock-1', 'dji', 'dock', NULL, NULL, NULL);"
                     "INSERT INTO devices VALUES (1, 'craft-1', 'dji', 'drone', NULL, NULL, NULL);")
    db.close()
    assert [r["gateway"] for r in Store(path).devices()] == [None, None]  # read-only, before any migration
    s = Store(path)
    d = DeviceDirectory()
    s.load_directory(d)
    assert d.gateway == [-1, -1]
    d.set_gateway(1, 0)  # a stored device bound
    d.add("dock-2", "dji", "dock")
    d.add("craft-2", "dji", "drone")
    d.set_gateway(3, 2)  # a new device bound before its first commit
    s.commit(d)
    d.set_gateway(1, 2)  # moved
    d.set_gateway(3, -1)  # released
    s.commit(d)
    s.close()
    fresh = DeviceDirectory()
    Store(path).load_directory(fresh)
    assert fresh.gateway == [-1, 2, -1, -1] and fresh.hosted == {2: {1}} and fresh.gateway_bound == 1
    assert {r["id"]: r["gateway"] for r in Store(path).devices()} == {"dock-1": None, "craft-1": "dock-2",
                                                                     "dock-2": None, "craft-2": None}


def test_gateway_bindings_are_bounded():
    d = DeviceDirectory(max_gateway_bindings=2)
    for i in range(4):
        d.add(f"d{i}", "dji", "drone")
    assert d.set_gateway(1, 0) and d.set_gateway(2, 0)
    assert not d.set_gateway(3, 0) and d.gateway_refused == 1 and d.gateway[3] == -1  # full: refused, counted
    assert d.set_gateway(2, 3)  # a bound device may still move
    assert d.set_gateway(1, -1) and d.set_gateway(3, 0)  # a release makes room
    assert d.gateway_bound == 2 and d.hosted == {0: {3}, 3: {2}}
