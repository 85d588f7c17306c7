"""The column-wise readings encoder of the Influx sink: byte-identical to the per-line reference
``f"{prefix}{value!r} {ts}"``, batches aligned across calls, rows kept on failure, and gzip
applied by the sink (not by the client) on the wire."""
from __future__ import annotations

import zlib

import numpy as np
import pytest

from gridwatch.streams.influx_sink import InfluxSink, InfluxWriteError, _WriteService, escape_key

from test_influx_lineprotocol import FakeWriteApi, api_error, make_sink, parse_line


def reference(meas: str, devs, metrics, ts, vals) -> bytes:
    out = []
    for d, m, t, v in zip(devs, metrics, ts.tolist(), vals.tolist()):
        out.append(f"{meas},device={escape_key(d)},metric={escape_key(m)} value={v!r} {t}\n")
    return "".join(out).encode()


def odd_floats(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    bits = rng.integers(0, 2**64, size=n, dtype=np.uint64)
    x = bits.view(np.float64)
    x = x[np.isfinite(x)]
    special = [0.0, -0.0, 1e16, -1e16, 9999999999999998.0, 1e-4, -1e-4, 9.999999999999999e-05, 1e-5, 5e-324,
               -5e-324, 1.7976931348623157e308, 2.0**53, 123456789.12345679, 0.1, 1 / 3, 100.0, 1e22, 1.5]
    return np.concatenate([np.array(special), x, rng.normal(size=n) * 10.0 ** rng.integers(-12, 20, size=n)])


def test_encoding_is_byte_identical_to_the_reference():
    vals = odd_floats(30_000, 1)
    n = vals.shape[0]
    rng = np.random.default_rng(2)
    ts = rng.integers(-2**62, 2**62, size=n)
    ts[:5] = [0, -1, 1_700_000_000_000, 2**63 - 1, -2**63]
    tricky = ["d 1", "d,2", "d=3", "d\\4", 'q"5', "Zürich 東京", "nl\nx", "x"]
    devs = [tricky[i % len(tricky)] + str(i % 101) for i in range(n)]
    sink, _ = make_sink(batch_lines=10**9)
    assert sink.write_readings(np.array(devs, object), "pm2.5 µg", ts, vals) == n
    [item] = sink._buf
    assert item.data == reference("readings", devs, ["pm2.5 µg"] * n, ts, vals)


def test_per_row_metrics_and_id_types():
    sink, _ = make_sink(batch_lines=10**9)
    devs = [b"raw-bytes", np.str_("np-str"), 17, "plain", "plain"]
    mets = ["a", np.str_("b"), "c", "a", b"d"]
    ts = np.arange(5) + 1_000
    vals = np.array([1.0, 2.5, -3.0, 1e-7, 4e20])
    assert sink.write_readings(devs, mets, ts, vals) == 5
    # again, now from the cache
    assert sink.write_readings(devs, mets, ts, vals) == 5
    expect = reference("readings", ["raw-bytes", "np-str", "17", "plain", "plain"], ["a", "b", "c", "a", "d"], ts, vals)
    assert b"".join(x.data for x in sink._buf) == expect * 2


def test_invalid_ids_are_skipped_inside_pieces():
    sink, _ = make_sink(batch_lines=4)
    devs = ["a", "", "b", "c", "\ud800", "d", "e", "f", "", "g"]
    vals = np.array([1.0, 2.0, np.nan, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0])
    ts = np.arange(10)
    assert sink.write_readings(devs, "m", ts, vals) == 6  # NaN, 2 empty, 1 lone surrogate skipped
    assert sink.stats.skipped_rows == {"non_finite": 1, "invalid_identifier": 3}
    assert sink.write_readings(devs, "m", ts, vals) == 6  # cached invalid ids are skipped the same way
    assert sink.stats.skipped_rows == {"non_finite": 2, "invalid_identifier": 6}
    sink.flush()
    got = [(t["device"], f["value"]) for _, t, f, _ in map(parse_line, sink._write_api.lines())]
    assert got == [("a", 1.0), ("c", 4.0), ("d", 6.0), ("e", 7.0), ("f", 8.0), ("g", 10.0)] * 2


def test_batches_stay_exact_across_calls_and_warnings():
    sink, _ = make_sink(batch_lines=7)
    rows = 0

    def write(k):
        nonlocal rows
        sink.write_readings([f"d{rows + i}" for i in range(k)], "m", np.arange(rows, rows + k), np.ones(k))
        rows += k

    write(3)
    write(20)
    sink.write_warnings([{"id": "w1", "rule": "r", "start_ts": 1}, {"id": "w2", "rule": "r", "start_ts": 2}])
    write(11)
    sink.flush()
    sizes = [len(b.decode().splitlines()) for b in sink._write_api.bodies]
    assert sizes == [7, 7, 7, 7, 7, 1]
    parsed = [parse_line(ln) for ln in sink._write_api.lines()]
    devices = [t["device"] for m, t, _, _ in parsed if m == "readings"]
    assert devices == [f"d{i}" for i in range(34)]
    assert [f["id"] for m, _, f, _ in parsed if m == "warnings"] == ["w1", "w2"]
    assert sink.stats.lines_written == 36 and sink.stats.batches_written == 6


def test_failed_send_keeps_every_row_of_the_call():
    sink, sleeps = make_sink([api_error(503)], batch_lines=5, max_retries=0)
    with pytest.raises(InfluxWriteError):
        sink.write_readings([f"d{i}" for i in range(12)], "m", np.arange(12), np.arange(12.0))
    assert sink.pending_lines == 12 and sink.stats.failed_flushes == 1
    sink.flush()
    assert [t["device"] for _, t, _, _ in map(parse_line, sink._write_api.lines())] == [f"d{i}" for i in range(12)]
    assert sink.stats.batches_written == 3 and sink.pending_lines == 0


class FakeService:
    def __init__(self):
        self.calls = []

    def post_write(self, **kw):
        self.calls.append(kw)


def test_the_sink_gzips_at_its_level_not_the_client():
    from influxdb_client import InfluxDBClient

    body = b"m,device=a,metric=b value=1.5 1\n" * 1000
    for enable_gzip, gzip, level, compressed in [(False, True, 1, True), (False, False, 1, False),
                                                 (True, True, 1, False)]:
        client = InfluxDBClient(url="http://127.0.0.1:9", token="t", org="o", enable_gzip=enable_gzip)
        sink = InfluxSink("http://127.0.0.1:9", "t", "o", "b", client=client, gzip=gzip, gzip_level=level)
        w = sink._write_api
        assert isinstance(w, _WriteService)
        w._svc = FakeService()
        w.write(bucket="b", org="o", record=body, write_precision="ms")
        [kw] = w._svc.calls
        assert kw["precision"] == "ms" and kw["bucket"] == "b"
        if compressed:
            assert kw["content_encoding"] == "gzip" and zlib.decompress(kw["body"], wbits=31) == body
            assert len(kw["body"]) < len(body) // 10
        else:
            assert "content_encoding" not in kw and kw["body"] == body
        client.close()


def test_fake_write_api_still_sees_plain_line_protocol():
    sink, _ = make_sink()
    assert isinstance(sink._write_api, FakeWriteApi)
    sink.write_readings(["a"], "m", np.array([1]), np.array([0.5]))
    sink.flush()
    assert sink._write_api.bodies == [b"readings,device=a,metric=m value=0.5 1\n"]


def test_bulk_prefixes_match_the_reference_and_fall_back_per_call():
    sink, _ = make_sink(batch_lines=10**9)
    plain = [f"lvl-{i:05d}" for i in range(300)] + ["Zürich-東京", "tab\tid", "😀"]
    n = 2_000
    rng = np.random.default_rng(4)
    devs = [plain[i] for i in rng.integers(0, len(plain), n)]
    ts, vals = np.arange(n, dtype=np.int64), rng.normal(size=n)
    sink.write_readings(devs, "pm2.5", ts, vals)  # all new, none needs escaping: built in bulk
    assert all(d in sink._prefix["pm2.5"] for d in plain) and sink._cached == len(set(devs))
    # new ids that need escaping (or hold the NUL joiner, or cannot be encoded) go the per-id way
    odd = ["a b", "c,d", "e=f", 'g"h', "i\\j", "k\nl", "nul\x00id", "", "\ud800"]
    devs2 = devs[:50] + odd + [f"new-{i}" for i in range(20)]
    sink.write_readings(devs2, "pm2.5", np.arange(len(devs2)), np.ones(len(devs2)))
    assert sink.stats.skipped_rows == {"invalid_identifier": 2}
    ok = [d for d in devs2 if d not in ("", "\ud800")]
    assert b"".join(x.data for x in sink._buf) == (reference("readings", devs, ["pm2.5"] * n, ts, vals)
                                                   + reference("readings", ok, ["pm2.5"] * len(ok),
                                                               np.array([i for i, d in enumerate(devs2) if d in ok]),
                                                               np.ones(len(ok))))


class GatedWriteApi(FakeWriteApi):
    """Blocks each write until released; fails the writes whose (1-based) numbers are in ``fail``."""

    def __init__(self, fail=()):
        super().__init__()
        import threading
        self.fail = set(fail)
        self.entered = threading.Semaphore(0)
        self.release = threading.Semaphore(0)

    def write(self, bucket, org, record, write_precision):
        self.entered.release()
        assert self.release.acquire(timeout=20), "never released"
        self.calls += 1
        if self.calls in self.fail:
            raise api_error(503)
        self.bodies.append(record)


def test_requests_go_out_while_the_caller_encodes_the_next_batch():
    sink, _ = make_sink(batch_lines=100, in_flight=2)
    api = sink._write_api = GatedWriteApi()
    ids = [f"d{i}" for i in range(250)]
    # 2 full batches: both handed over while the server has not answered the first one
    sink.write_readings(ids, "m", np.arange(250), np.ones(250))
    assert api.entered.acquire(timeout=10) and api.calls == 0
    assert sink.pending_lines == 250 and len(sink._buf) == 1 and len(sink._sent) == 2
    for _ in range(3):
        api.release.release()
    sink.flush()
    assert api.calls == 3 and sink.pending_lines == 0 and sink.stats.batches_written == 3
    assert [t["device"] for _, t, _, _ in map(parse_line, api.lines())] == ids


def test_a_failed_batch_and_those_queued_behind_it_return_to_the_buffer_in_order():
    sink, sleeps = make_sink(batch_lines=10, in_flight=2, max_retries=0)
    api = sink._write_api = GatedWriteApi(fail={2})
    for _ in range(3):
        api.release.release()
    ids = [f"d{i}" for i in range(45)]
    with pytest.raises(InfluxWriteError):
        sink.write_readings(ids, "m", np.arange(45), np.ones(45))  # batch 2 fails: 3 is skipped, not sent
    assert api.calls == 2 and sink.pending_lines == 35 and sink.stats.failed_flushes == 1
    for _ in range(10):
        api.release.release()
    sink.flush()  # everything after the failure goes out, once and in order
    assert [t["device"] for _, t, _, _ in map(parse_line, api.lines())] == ids
    assert sink.stats.batches_written == 5 and sink.pending_lines == 0


def test_gzip_bodies_are_standard_gzip_at_every_level():
    """Levels 1-3 deflate with ISA-L (a declared dependency, so it must be there), 0 and 4-9 with
    zlib; any gzip reader inflates every one of them to the same body."""
    import gzip as gz

    from gridwatch.streams import influx_sink

    assert influx_sink._isal_zlib is not None
    body = b"".join(b"m,device=d%05d,metric=level value=%r %d\n" % (i % 977, i / 7, 1_750_000_000_000 + i)
                    for i in range(20_000))
    sizes = {}
    for level in range(10):
        packed = influx_sink.gzip_compress(body, level)
        assert gz.decompress(packed) == body and zlib.decompress(packed, wbits=31) == body
        sizes[level] = len(packed)
    assert sizes[0] > len(body) and sizes[1] < len(body) / 3  # 0 stores, 1 compresses
