"""Re-sends: a vendor re-publishing a batch later, or after gridwatch restarted, gets it stored once
(the duplicate window of streams/kernels/dedup.py, seeded from the store at startup)."""
from __future__ import annotations

import time

import numpy as np
import orjson
import pytest
from hypothesis import given, settings, strategies as st

from gridwatch.config import parse
from gridwatch.ingest.codec import Message
from gridwatch.streams.kernels.dedup import ENTRY_BYTES, REBASE_AFTER, SPAN, WindowFilter, WindowReference
from gridwatch.streams.pipeline import Pipeline
from gridwatch.streams.store import Store
from tests.helpers import RuntimeThread, mosquitto_pub, wait_until


# --- the kernel against its reference ---------------------------------------------------------
# offsets from "now": mostly recent, some a whole time span away (neither checked nor remembered)
batch_st = st.lists(st.tuples(st.integers(0, 7), st.one_of(st.integers(-3000, 200), st.sampled_from([-SPAN, SPAN]))),
                    max_size=120)
# steps of "now": mostly small, some far enough to move the table's time base
step_st = st.one_of(st.integers(0, 400), st.just(REBASE_AFTER + 1))


@settings(max_examples=60, deadline=None)
@given(batches=st.lists(st.tuples(step_st, batch_st, st.lists(st.booleans(), max_size=120)), max_size=12),
       window_ms=st.integers(1, 4000), max_bytes=st.integers(16 * ENTRY_BYTES, 400 * ENTRY_BYTES))
def test_window_kernel_matches_reference(batches, window_ms, max_bytes):
    a, b = WindowFilter(window_ms, max_bytes), WindowReference(window_ms, max_bytes)
    now = 0
    for step, rows, pre in batches:
        now += step
        key = np.array([r[0] for r in rows], np.int32)
        ts = np.array([now + r[1] for r in rows], np.int64)
        keep = np.array([pre[i] if i < len(pre) else True for i in range(len(rows))], np.bool_)
        ka, kb = keep.copy(), keep.copy()
        assert a.apply(key, ts, ka, now) == b.apply(key, ts, kb, now)
        assert (ka == kb).all()
        assert a.evicted == b.evicted and a.forgotten_ms == b.forgotten_ms
        assert a.count == len(b.seen) and a.count <= a.max_entries
        assert a.nbytes <= max(max_bytes, 16 * ENTRY_BYTES) and a.base == b.base


def test_window_marks_within_and_across_batches_not_outside_window():
    w = WindowFilter(10_000, 2**20)
    key = np.array([1, 1, 2, 1], np.int32)
    ts = np.array([100, 100, 100, 200], np.int64)
    keep = np.ones(4, np.bool_)
    assert w.apply(key, ts, keep, 1_000) == 1 and keep.tolist() == [True, False, True, True]
    keep = np.ones(4, np.bool_)
    assert w.apply(key, ts, keep, 5_000) == 4 and not keep.any()
    # older than the window (by the batch's now): neither looked up nor remembered
    keep = np.ones(4, np.bool_)
    assert w.apply(key, ts, keep, 20_000) == 0 and keep.all()


def test_memory_bound_drops_oldest_and_counts_them():
    max_bytes = 1000 * ENTRY_BYTES
    w = WindowFilter(86_400_000, max_bytes)
    now = 10_000_000
    for b in range(20):  # 20 batches of 500 distinct readings: 10,000 > what fits
        key = np.arange(500, dtype=np.int32) % 50
        ts = np.full(500, now - 5_000_000 + b * 10_000, np.int64) + np.arange(500) // 50
        w.apply(key, ts, np.ones(500, np.bool_), now)
        assert w.nbytes <= max_bytes and w.count <= w.max_entries
    assert w.evicted >= 10_000 - w.max_entries and w.evicted + w.count == 10_000
    newest = np.full(500, now - 5_000_000 + 19 * 10_000, np.int64) + np.arange(500) // 50
    keep = np.ones(500, np.bool_)
    assert w.apply(np.arange(500, dtype=np.int32) % 50, newest, keep, now) == 500  # still remembered
    oldest = np.full(500, now - 5_000_000, np.int64) + np.arange(500) // 50
    keep = np.ones(500, np.bool_)
    assert w.apply(np.arange(500, dtype=np.int32) % 50, oldest, keep, now) == 0  # forgotten: accepted again
    assert w.forgotten_ms >= now - 5_000_000


def test_pipeline_exports_window_figures_and_bound(tmp_path):
    cfg = parse({"site": {"name": "t", "data_dir": str(tmp_path)},
                 "ingest": {"dedup_window_s": 3600, "dedup_max_mb": 0.05}}, base_dir=tmp_path)
    p = Pipeline(cfg)
    now = int(time.time() * 1000)
    for b in range(8):
        items = [{"ts": now - 3_000_000 + b * 1000 + i, "water_level": 1.0} for i in range(500)]
        p.process([Message("devices/generic/sewer_level/g-1", orjson.dumps(items), now)], now)
    dedup = p.counters.snapshot()["dedup"]
    assert dedup["readings_evicted"] > 0 and dedup["readings_window_entries"] == p.codec.series_window.count
    assert p.codec.series_window.nbytes <= 0.05 * 2**20 * 3 / 4


# --- end to end: real Mosquitto, the runtime restarted in between ---------------------------------
@pytest.mark.broker
def test_resent_batch_stored_once_later_and_after_restart(mosquitto, tmp_path):
    cfg = {"site": {"name": "resend", "data_dir": str(tmp_path)},
           "mqtt": {"host": "127.0.0.1", "port": mosquitto.port, "client_id": "gw-resend", "topics": ["devices/#"]}}
    now = int(time.time())
    readings = orjson.dumps([{"t": now - 60 + i, "lvl": 100 + i} for i in range(10)])  # aqualine: epoch s, cm
    fixes = orjson.dumps([{"ts": (now - 60 + i) * 1000, "lat": 30.5 + i * 1e-4, "lon": 114.3} for i in range(6)])
    send = lambda: (mosquitto_pub(mosquitto.port, "devices/aqualine/sewer_level/aq-r-1", [readings]),
                    mosquitto_pub(mosquitto.port, "devices/generic/tracker/trk-r-1", [fixes]))
    store = Store(tmp_path / "gridwatch.db")
    dups = lambda: store.dead_letter_counts().get("duplicate", 0)
    with RuntimeThread(cfg, tmp_path):
        send()
        wait_until(lambda: store.count_readings() == 10 and store.count_positions() == 6, what="first send stored")
        time.sleep(1.5)  # the vendor retries later: well past the batch, with the ring filter's depth exceeded
        send()
        wait_until(lambda: dups() == 16, what="the re-send counted as 16 duplicates")
        assert store.count_readings() == 10 and store.count_positions() == 6
    with RuntimeThread(cfg, tmp_path):  # a restart forgets nothing within the window
        send()
        wait_until(lambda: dups() == 32, what="the re-send after the restart counted as duplicates")
        time.sleep(0.3)
        assert store.count_readings() == 10 and store.count_positions() == 6
    d = store.dead_letters(reason="duplicate", limit=1)[0]
    assert "was already received" in d["detail"]


def test_store_recent_keys_newest_chunks_first_within_window_and_row_bound(tmp_path):
    from gridwatch.records import SensorBatch

    store = Store(tmp_path / "s.db")
    assert store.recent_keys("readings", 1000, 10)[2] is None
    for c in range(4):  # chunks at t = 0.., 10_000.., 20_000.., 30_000.. (5 rows each)
        s = np.full(5, c, np.int32)
        store.commit(sensor=SensorBatch(s, s, np.arange(5, dtype=np.int64) + c * 10_000, np.ones(5)))
    key, ts, newest = store.recent_keys("readings", 15_000, 100)
    assert newest == 30_004 and sorted(set(key.tolist())) == [2, 3]  # t_max >= 15_004: chunks 2 and 3
    key, ts, _ = store.recent_keys("readings", 40_000, 6)  # bound: stops at the chunk that passes 6 rows
    assert key.tolist() == [3] * 5 + [2] * 5
    store.close()
