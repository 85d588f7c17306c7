"""Store-and-forward spool: order, crash recovery (torn tails), the size bound as back-pressure,
a really full disk (a small tmpfs, where mounting is allowed), and QuestDB down for a while during
ingest, then back: every reading arrives exactly once."""
from __future__ import annotations

import os
import subprocess
import threading
import time
import uuid

import numpy as np
import pytest

from gridwatch.streams.spool import Spool, SpoolDiskFull, SpooledInfluxSink, SpoolFull, questdb_readings_table_sql


def test_fifo_ack_and_replay_after_reopen(tmp_path):
    s = Spool(tmp_path, segment_bytes=200)
    seqs = [s.append(f"rec-{i}".encode()) for i in range(20)]
    assert seqs == list(range(20)) and len(list(tmp_path.glob("seg-*.log"))) > 1
    got = s.peek(5)
    assert [p for _, p in got] == [f"rec-{i}".encode() for i in range(5)]
    s.ack(got[-1][0])
    s.close()
    s2 = Spool(tmp_path, segment_bytes=200)  # a crash/restart: the unacknowledged rest, in order
    assert len(s2) == 15 and [p for _, p in s2.peek(100)] == [f"rec-{i}".encode() for i in range(5, 20)]
    assert s2.append(b"next") == 20
    s2.ack(20)
    assert len(s2) == 0 and s2.bytes_on_disk == 0 and not list(tmp_path.glob("seg-*.log"))


def test_torn_tail_from_a_crash_mid_append_is_cut_off(tmp_path):
    s = Spool(tmp_path)
    for i in range(3):
        s.append(b"x" * 100)
    s.close()
    [seg] = tmp_path.glob("seg-*.log")
    with open(seg, "ab") as f:  # half a record: header + part of the payload
        f.write(b"\x64\x00\x00\x00\x01\x02\x03\x04" + b"\x03" + b"\x00" * 7 + b"y" * 10)
    s2 = Spool(tmp_path)
    assert len(s2) == 3 and s2.stats["torn_tails"] == 1
    assert s2.append(b"after") == 3 and [p for _, p in s2.peek(10)][-1] == b"after"


def _write_records(path, n, segment_bytes=16 * 2**20):
    s = Spool(path, segment_bytes=segment_bytes)
    recs = [f"record-{i:03d}|".encode() * (1 + i % 3) for i in range(n)]
    for r in recs:
        s.append(r)
    s.close()
    return recs


def _segments(path):
    return sorted(path.glob("seg-*.log"))


def test_a_flipped_bit_mid_segment_costs_one_record_not_every_later_one(tmp_path, caplog):
    """Was: 'recovered 10 of 100 ... truncating a torn record': a corrupt record ended the scan."""
    recs = _write_records(tmp_path, 100)
    [seg] = _segments(tmp_path)
    data = bytearray(seg.read_bytes())
    start = data.index(recs[10])  # record 10's payload
    original = bytes(data)
    data[start + 3] ^= 0x10
    seg.write_bytes(bytes(data))
    caplog.set_level("WARNING")
    s = Spool(tmp_path)
    got = s.peek(1000)
    assert len(s) == 99 and [p for _, p in got] == recs[:10] + recs[11:]
    assert [q for q, _ in got] == [i for i in range(100) if i != 10]
    assert s.stats["corrupt_regions"] == 1 and s.stats["corrupt_records"] == 1 and s.stats["torn_tails"] == 0
    # the bad bytes (header + payload of record 10) are kept aside, the segment itself untouched
    [q] = (tmp_path / "quarantine").glob("*.bad")
    hdr = 24
    assert q.read_bytes() == bytes(data[start - hdr:start + len(recs[10])])
    assert s.stats["quarantined_bytes"] == hdr + len(recs[10]) and seg.read_bytes() == bytes(data)
    assert "corrupt record" in caplog.text and "seq 10..10" in caplog.text
    assert original != bytes(data)
    # delivery goes on past the gap; new appends continue the sequence
    assert s.append(b"after") == 100
    s.ack(got[-1][0])
    assert [p for _, p in s.peek(10)] == [b"after"]
    s.close()


@pytest.mark.parametrize("field,offset", [("sync", 1), ("length", 5), ("seq", 9), ("payload crc", 17), ("header crc", 21)])
def test_a_corrupt_header_field_is_skipped_by_resynchronising(tmp_path, field, offset):
    recs = _write_records(tmp_path, 30)
    [seg] = _segments(tmp_path)
    data = bytearray(seg.read_bytes())
    rec_start = data.index(recs[7]) - 24
    data[rec_start + offset] ^= 0x40  # e.g. a length that now points far past the record
    seg.write_bytes(bytes(data))
    s = Spool(tmp_path)
    assert [p for _, p in s.peek(100)] == recs[:7] + recs[8:], field
    assert s.stats["corrupt_records"] == 1 and s.stats["torn_tails"] == 0


def test_every_single_byte_corruption_loses_at_most_the_record_it_hit(tmp_path):
    """Sweep: flip one bit in each byte of a three-segment spool in turn; every time, every record
    but the one holding that byte is replayed, in order. Damage to the newest segment's last record
    is indistinguishable from a crash mid-append and cut as a torn tail; anywhere else it is
    quarantined."""
    src = tmp_path / "src"
    recs = _write_records(src, 12, segment_bytes=200)
    segs = _segments(src)
    assert len(segs) == 3
    images = {p.name: p.read_bytes() for p in segs}
    layout = []  # (segment name, byte offset) -> the record index holding it
    for name, data in images.items():
        pos = 0
        while pos < len(data):
            assert data[pos:pos + 4] == b"\xa5GWs", "every record starts with the sync marker"
            ln = int.from_bytes(data[pos + 4:pos + 8], "little")
            seq = int.from_bytes(data[pos + 8:pos + 16], "little")
            layout += [(name, b, seq) for b in range(pos, pos + 24 + ln)]
            pos += 24 + ln
    last_seq = len(recs) - 1
    for i, (name, b, hit) in enumerate(layout):
        d = tmp_path / f"case{i}"
        d.mkdir()
        for n, data in images.items():
            if n == name:
                data = bytearray(data)
                data[b] ^= 1 << (i % 8)
            (d / n).write_bytes(bytes(data))
        s = Spool(d)
        got = s.peek(100)
        assert [p for _, p in got] == [r for k, r in enumerate(recs) if k != hit], (name, b)
        if hit == last_seq:
            assert s.stats["torn_tails"] + s.stats["corrupt_records"] == 1
        else:
            assert s.stats["corrupt_records"] == 1 and s.stats["torn_tails"] == 0, (name, b)
            assert len(list((d / "quarantine").glob("*.bad"))) == 1
        s.close()


def test_corrupt_bytes_of_acknowledged_records_are_ignored_not_quarantined(tmp_path):
    recs = _write_records(tmp_path, 20)
    s = Spool(tmp_path)
    s.ack(9)
    s.close()
    [seg] = _segments(tmp_path)
    data = bytearray(seg.read_bytes())
    data[data.index(recs[4]) + 2] ^= 0x01
    seg.write_bytes(bytes(data))
    s = Spool(tmp_path)
    assert [p for _, p in s.peek(100)] == recs[10:]
    assert s.stats["corrupt_acked_regions"] == 1 and s.stats["corrupt_records"] == 0
    assert not (tmp_path / "quarantine").exists()


def test_quarantine_is_bounded_and_counts_what_it_could_not_keep(tmp_path):
    recs = _write_records(tmp_path, 40)
    [seg] = _segments(tmp_path)
    data = bytearray(seg.read_bytes())
    for k in (5, 15, 25):
        data[data.index(recs[k]) + 1] ^= 0x02
    seg.write_bytes(bytes(data))
    one = 24 + len(recs[5])
    s = Spool(tmp_path, quarantine_max_bytes=one)  # room for the first bad record only
    assert len(s) == 37 and s.stats["corrupt_records"] == 3
    assert s.stats["quarantined_bytes"] == one and s.stats["quarantine_dropped_bytes"] > 0
    assert len(list((tmp_path / "quarantine").glob("*.bad"))) == 1


def test_segments_of_the_first_record_format_are_still_replayed(tmp_path):
    import struct
    import zlib

    old = [f"old-{i}".encode() for i in range(5)]
    with open(tmp_path / "seg-0000000000000000.log", "wb") as f:  # <u32 len><u32 crc><u64 seq> + payload
        for i, p in enumerate(old):
            f.write(struct.pack("<IIQ", len(p), zlib.crc32(p), i) + p)
    s = Spool(tmp_path)
    assert [p for _, p in s.peek(10)] == old
    assert s.append(b"new") == 5  # a new segment in the current format
    s.close()
    s = Spool(tmp_path)
    assert [p for _, p in s.peek(10)] == old + [b"new"] and len(_segments(tmp_path)) == 2
    s.ack(5)
    assert not _segments(tmp_path)


def test_full_spool_is_back_pressure_never_a_drop(tmp_path):
    s = Spool(tmp_path, max_bytes=1000)
    fwd = SpooledInfluxSink(s, sink=None)
    accepted = 0
    for i in range(100):
        if fwd.offer_readings([f"d{i}"], "water_level", [1_700_000_000_000 + i], [1.0]):
            accepted += 1
    assert 0 < accepted < 100 and fwd.stats["backpressure"] == 100 - accepted
    assert s.stats["full_rejections"] == 100 - accepted and s.bytes_on_disk <= 1000
    with pytest.raises(SpoolFull, match="stop acknowledging"):
        s.append(b"z" * 200)
    # every accepted record is there, in order
    assert [i for i in range(accepted)] == [int(__import__("orjson").loads(p)["d"][0][1:]) for _, p in s.peek(1000)]
    s.ack(s.peek(1000)[-1][0])
    assert s.append(b"z" * 200) >= 0  # space returned


@pytest.fixture
def small_fs(tmp_path):
    mnt = tmp_path / "small"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mnt)], capture_output=True)
    if r.returncode != 0:
        why = f"cannot mount a small tmpfs here: {r.stderr.decode().strip()}"
        if os.environ.get("CI") == "true":  # CI runs as root: there this fault test must run
            pytest.fail(why)
        pytest.skip(why)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def test_real_disk_full_is_a_clear_error_back_pressure_and_recovers(small_fs, caplog):
    s = Spool(small_fs / "spool", max_bytes=10 * 2**20)  # the bound is not what stops it: the disk is
    filler = small_fs / "filler"
    caplog.set_level("ERROR")
    n = 0
    with pytest.raises(SpoolDiskFull, match="no space left"):
        while True:
            s.append(os.urandom(1000))
            n += 1
    assert n > 10 and s.stats["disk_full"] == 1
    assert "disk holding" in caplog.text and "back-pressure" in caplog.text
    # a second failure raises again; the log line is not repeated
    filler.write_bytes(b"")
    with pytest.raises(SpoolDiskFull):
        s.append(os.urandom(20_000))
    assert caplog.text.count("is full") == 1
    # nothing half-written: a reopen sees exactly the n good records
    s.close()
    s = Spool(small_fs / "spool", max_bytes=10 * 2**20)
    assert len(s) == n and s.stats["torn_tails"] == 0
    # space returns (records delivered and acknowledged): appends work again
    s.ack(s.peek(n)[-1][0])
    assert s.append(b"back") == n and len(s) == 1


@pytest.mark.questdb
@pytest.mark.timeout(180)
def test_questdb_down_for_a_while_then_back_every_reading_exactly_once(tmp_path):
    from gridwatch.servers.questdb import QuestDBServer
    from gridwatch.streams.influx_sink import InfluxSink
    from tests.conftest import start_or_skip

    qdb = start_or_skip(QuestDBServer(), "questdb")
    table = "readings_" + uuid.uuid4().hex[:8]
    try:
        qdb.exec(questdb_readings_table_sql(table))
        n_batches, rows = 60, 200
        spool = Spool(tmp_path / "spool")

        def sink():
            return InfluxSink(qdb.url, "t", "gridwatch", "gridwatch", readings_measurement=table, gzip=False,
                              max_retries=1, backoff_base_s=0.05, timeout_ms=2000)

        fwd = SpooledInfluxSink(spool, sink())
        stop = threading.Event()
        errors: list = []
        t = threading.Thread(target=fwd.run_forever, args=(stop,), kwargs={"backoff_s": 0.1, "max_backoff_s": 0.5,
                                                                         "on_error": errors.append}, daemon=True)
        t.start()
        base = 1_700_000_000_000
        for b in range(n_batches):
            devs = [f"dev-{i % 37}" for i in range(rows)]
            ts = base + b * rows + np.arange(rows)
            assert fwd.offer_readings(devs, "water_level", ts, np.full(rows, float(b)))
            if b == 15:
                qdb.kill()  # the time-series server dies mid-ingest ...
            if b == 40:
                # ... the forwarder crashes too (its sink buffer is lost; the spool is not) ...
                stop.set()
                t.join(10)
                spool.close()
                spool = Spool(tmp_path / "spool")
                fwd = SpooledInfluxSink(spool, sink())
                stop = threading.Event()
                t = threading.Thread(target=fwd.run_forever, args=(stop,),
                                     kwargs={"backoff_s": 0.1, "max_backoff_s": 0.5, "on_error": errors.append}, daemon=True)
                t.start()
            time.sleep(0.05)
        assert len(spool) > 0 and errors  # the outage was felt and the data waited on disk
        qdb.start()  # ... and the server comes back
        deadline = time.time() + 60
        while len(spool) and time.time() < deadline:
            time.sleep(0.1)
        stop.set()
        t.join(10)
        assert len(spool) == 0, f"{len(spool)} records not delivered"
        want = n_batches * rows
        got = qdb.wait_rows(f"select count(), count_distinct(timestamp) from {table}",
                            lambda r: r and r[0][0] >= want, timeout=30)
        assert got == [[want, want]]
        [[s]] = qdb.query(f"select sum(value) from {table}")
        assert s == sum(float(b) * rows for b in range(n_batches))
    finally:
        qdb.stop()


def test_spool_corruption_found_on_open_reaches_the_runtimes_counters(tmp_path):
    """The counters of a corrupt region found when `gridwatch run` opens its spool are exported
    with the other spool figures (the forwarder is never started here: no server is needed)."""
    from gridwatch.config import parse
    from gridwatch.servers._base import free_ports
    from gridwatch.streams.runtime import EdgeRuntime

    cfg = parse({"site": {"name": "sp", "data_dir": str(tmp_path)}, "forward": {"influx": True},
                 "influx": {"url": f"http://127.0.0.1:{free_ports(1)[0]}", "token": "t"}}, base_dir=tmp_path)
    spool_dir = tmp_path / cfg.spool.dir / "influx"
    recs = _write_records(spool_dir, 20)
    [seg] = _segments(spool_dir)
    data = bytearray(seg.read_bytes())
    data[data.index(recs[5]) + 2] ^= 0x01
    seg.write_bytes(bytes(data))
    rt = EdgeRuntime(cfg)
    try:
        rt._tick()
        snap = rt.counters.snapshot()["spool"]
        assert snap["influx_records"] == 19 and snap["influx_corrupt_records"] == 1 and snap["influx_corrupt_regions"] == 1
        assert snap["influx_quarantined_bytes"] > len(recs[5])
    finally:
        rt._stop_forwards()
        rt.store.close()
        rt.lock.release()
