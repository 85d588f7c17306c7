"""JT/T 808 terminals against the real edge runtime (TCP on loopback, SQLite store): registration and
authentication in both editions, location reports answered only after their commit, sub-packages,
BCD time in UTC+8, misbehaving terminals, several hundred trucks at once, and a hazardous-chemicals
truck dwelling off its depot raising the dwell warning."""
from __future__ import annotations

import asyncio
import struct
import threading
import time
from datetime import timezone

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from gridwatch.ingest import jt808
from gridwatch.streams.store import Store
from tests.helpers import RuntimeThread, wait_until
from tests.jt808_sim import BEIJING, Terminal, batch_body, esc, frame, location_body, registration_body, unesc, xor_all

LAT, LON = 30.5728, 114.2839  # somewhere in Wuhan


def _cfg(tmp_path, **jt) -> dict:
    j = {"enabled": True, "port": 0, "idle_timeout_s": 30, "frame_timeout_s": 10, "max_bad_frames": 3,
         "auth_secret": "test-secret"}
    j.update(jt)
    return {"site": {"name": "jt", "data_dir": str(tmp_path)}, "jt808": j, "alerts_mqtt": {"enabled": False}}


class Gw(RuntimeThread):
    def __enter__(self):
        super().__enter__()
        wait_until(lambda: self.rt.jt808.port, timeout=60, what="the JT/T 808 server listening")
        self.port = self.rt.jt808.port
        self.store = Store(self.cfg.data_dir / self.cfg.store.path)
        return self

    def counter(self, name: str) -> int:
        return self.rt.counters.get("jt808", name)


# --- wire format ----------------------------------------------------------------------------
@given(st.binary(max_size=300))
@settings(max_examples=200, deadline=None)
def test_escape_roundtrip_and_checksum(b):
    e = jt808.escape(b)
    assert 0x7E not in e and e == esc(b)
    assert jt808.unescape(e) == b == unesc(e)
    assert jt808.xor8(b) == xor_all(b)


@pytest.mark.parametrize("bad", [b"\x01\x7d", b"\x7d\x03\x00", b"\x7d\x7d\x01"])
def test_bad_escape_is_a_frame_error(bad):
    with pytest.raises(jt808.FrameError) as e:
        jt808.unescape(bad)
    assert e.value.reason == "bad_escape"


def test_parse_both_editions_and_bcd_time():
    ts = 1_732_154_400  # 2024-11-21 02:00:00 UTC = 10:00:00 in Beijing
    body = location_body(ts, -LAT, -LON, 61.3)
    assert body[28 - 6:28].hex() == "241121100000"
    for v2019 in (False, True):
        f = frame(0x0200, body, "13800138000", 7, v2019)
        msg_id, version, phone_raw, serial, package, enc, got = jt808.parse_frame(f[1:-1])
        assert (msg_id, serial, package, enc, got) == (0x0200, 7, None, False, body)
        assert (version is not None) == v2019 and len(phone_raw) == (10 if v2019 else 6)
        assert jt808.phone_of(phone_raw) == "13800138000"
    loc = jt808.location(body, BEIJING)
    assert loc["ts"] == ts * 1000 and loc["lat"] == pytest.approx(-LAT) and loc["lon"] == pytest.approx(-LON)
    assert loc["speed"] == pytest.approx(61.3)
    with pytest.raises(jt808.FrameError, match="checksum"):
        jt808.parse_frame(frame(0x0200, body, "1", 1, corrupt_checksum=True)[1:-1])


# --- against the runtime -------------------------------------------------------------------
def test_registration_auth_and_ack_only_after_commit(tmp_path):
    """The 0x8001 of a location report is sent only once its batch is committed: with the commit
    held back no answer comes; released, the answer comes and the fix is in the store."""
    with Gw(_cfg(tmp_path), tmp_path) as gw:
        release = threading.Event()
        real_commit = gw.rt.store.commit

        def slow_commit(*a, **kw):
            if kw.get("position") is not None and len(kw["position"]) or (len(a) > 2 and a[2] is not None and len(a[2])):
                release.wait(10)
            return real_commit(*a, **kw)

        gw.rt.store.commit = slow_commit

        async def go():
            t = await Terminal("13800138000").connect(gw.port)
            code = await t.register()
            assert len(code) == 16
            assert await t.authenticate("wrong") == 1
            assert await t.authenticate(code) == 0
            serial = await t.send(0x0002, b"")
            assert await t.general_response() == (serial, 0x0002, 0)
            now = time.time()
            serial = await t.send(0x0200, location_body(now - 5, LAT, LON, 42.0))
            with pytest.raises(asyncio.TimeoutError):
                await t.general_response(timeout=1.0)  # the commit is held: no answer yet
            assert gw.store.count_positions() == 0
            release.set()
            assert await t.general_response() == (serial, 0x0200, 0)
            pos = gw.store.positions()  # the answer came: the fix must be there already
            assert list(pos["device"]) == ["13800138000"]
            assert pos["ts"][0] == int(now - 5) * 1000
            assert pos["speed"][0] == pytest.approx(42.0)
            await t.close()

        asyncio.run(go())
        assert gw.counter("registrations") == 1 and gw.counter("authentications") == 1
        assert gw.counter("auth_failures") == 1


def test_unauthenticated_location_is_refused(tmp_path):
    with Gw(_cfg(tmp_path), tmp_path) as gw:
        async def go():
            t = await Terminal("13900000001").connect(gw.port)
            serial = await t.send(0x0200, location_body(time.time(), LAT, LON))
            assert await t.general_response() == (serial, 0x0200, 1)
            await t.close()

        asyncio.run(go())
        assert gw.counter("unauthenticated") == 1 and gw.store.count_positions() == 0


def test_2019_edition_subpackages_batch_and_beijing_time(tmp_path):
    """A 2019 terminal (10-byte phone) sends a 0x0704 batch of 3 fixes split into 3 packages; its
    clock is Beijing time (UTC+8, the default): each fix is stored at its UTC instant, none is
    rejected as future_timestamp, and every package is answered after the commit."""
    with Gw(_cfg(tmp_path, device_names={"13800000019": "粤B0019危"}), tmp_path) as gw:
        now = int(time.time())

        async def go():
            t = await Terminal("13800000019", v2019=True).connect(gw.port)
            await t.login()
            body = batch_body([location_body(now - 30 + 10 * i, LAT + i * 1e-3, LON, 30 + i) for i in range(3)], kind=1)
            parts = [body[:20], body[20:70], body[70:]]
            first = t.serial + 1
            for i, part in enumerate(parts):
                await t.send(0x0704, part, package=(3, i + 1))
            # (the first JSON-array batch may load or compile the codec's Numba recogniser: be patient)
            got = sorted([await t.general_response(60) for _ in range(3)])
            assert got == [(first + i, 0x0704, 0) for i in range(3)]
            await t.close()

        asyncio.run(go())
        pos = gw.store.positions()
        assert list(pos["device"]) == ["粤B0019危"] * 3
        assert sorted(pos["ts"].tolist()) == [(now - 30 + 10 * i) * 1000 for i in range(3)]
        assert np.allclose(sorted(pos["lat"]), [LAT + i * 1e-3 for i in range(3)])
        assert gw.rt.counters.snapshot().get("jt808", {}).get("rejected", {}) == {}
        assert gw.counter("reassembled") == 1


def test_timezone_setting_changes_the_instant(tmp_path):
    """With jt808.timezone = "UTC" the same BCD digits mean 8 h later than in Beijing time."""
    now = int(time.time())
    with Gw(_cfg(tmp_path, timezone="+00:00"), tmp_path) as gw:
        async def go():
            t = await Terminal("13800000020").connect(gw.port)
            await t.login()
            await t.send(0x0200, location_body(now - 60, LAT, LON, tz=timezone.utc))
            await t.general_response()
            await t.close()

        asyncio.run(go())
        assert gw.store.positions()["ts"].tolist() == [(now - 60) * 1000]


def test_misbehaving_terminals(tmp_path):
    """Bad checksum (counted, dead-lettered, the stream goes on), garbage (dropped after
    max_bad_frames), unframed flood (dropped: cannot resynchronise), slowloris and half-open
    (closed by the frame / idle timeouts), too many connections (refused)."""
    with Gw(_cfg(tmp_path, idle_timeout_s=1.5, frame_timeout_s=1.0, max_frame_bytes=512, max_connections=8), tmp_path) as gw:
        async def go():
            now = time.time()
            good = await Terminal("13800000031").connect(gw.port)
            await good.login()
            # one bad checksum between good frames: answered frames go on
            good.writer.write(frame(0x0200, location_body(now - 9, LAT, LON), good.phone, 99, corrupt_checksum=True))
            s = await good.send(0x0200, location_body(now - 8, LAT, LON))
            assert await good.general_response() == (s, 0x0200, 0)
            # garbage frames: dropped after 3 in a row
            junk = await Terminal("13800000032").connect(gw.port)
            junk.writer.write(b"\x7e\x01\x02\x03\x7e" * 3 + b"\x7eHELLO\x7e")
            await asyncio.wait_for(junk.closed_by_server.wait(), 10)
            # a flood without any 0x7e, and a frame opened but never closed: cannot resynchronise
            flood = await Terminal("13800000033").connect(gw.port)
            flood.writer.write(b"A" * 2000)
            await asyncio.wait_for(flood.closed_by_server.wait(), 10)
            open_ended = await Terminal("13800000036").connect(gw.port)
            open_ended.writer.write(b"\x7e" + b"A" * 2000)
            await asyncio.wait_for(open_ended.closed_by_server.wait(), 10)
            # slowloris: a frame begun, never finished
            slow = await Terminal("13800000034").connect(gw.port)
            slow.writer.write(b"\x7e\x02\x00")
            # half-open: connected, silent
            silent = await Terminal("13800000035").connect(gw.port)
            await asyncio.wait_for(slow.closed_by_server.wait(), 10)
            await asyncio.wait_for(silent.closed_by_server.wait(), 10)
            # connection limit: 8
            alive = len(gw.rt.jt808.conns)
            extra = [await Terminal(f"1380000010{i}").connect(gw.port) for i in range(10)]
            await asyncio.sleep(0.3)
            closed = sum(t.closed_by_server.is_set() for t in extra)
            assert closed == alive + 10 - 8, (closed, alive)
            for t in [good, junk, flood, open_ended, slow, silent, *extra]:
                await t.close()

        asyncio.run(go())
        assert gw.counter("dropped_bad_frames") == 1
        assert gw.counter("dropped_unsynced") == 2
        assert gw.counter("frame_timeouts") == 1
        assert gw.counter("idle_timeouts") >= 1
        assert gw.counter("refused_connections") >= 2
        assert gw.counter("garbage_bytes") >= 2000
        wait_until(lambda: gw.store.dead_letter_counts().get("frame_timeout"), what="dead letters stored")
        counts = gw.store.dead_letter_counts()
        assert counts == {"bad_checksum": 1, "bad_frame": 3, "unsynchronised": 1, "oversized": 1, "frame_timeout": 1}
        assert gw.store.count_positions() == 1


def test_several_hundred_trucks_some_misbehaving(tmp_path):
    """300 trucks (half 2013, half 2019) log in and send 4 fixes each, pipelined, while 40 others
    misbehave; every good fix is stored once and answered once, within a bounded time."""
    n, k = 300, 4
    with Gw(_cfg(tmp_path, idle_timeout_s=6, frame_timeout_s=2.0), tmp_path) as gw:
        now = time.time()

        async def truck(i: int) -> int:
            t = await Terminal(f"1390000{i:04d}", v2019=i % 2 == 1).connect(gw.port)
            await t.login()
            serials = [await t.send(0x0200, location_body(now - 60 + j, LAT + i * 1e-4, LON, 50 + j)) for j in range(k)]
            got = sorted([(await t.general_response(30))[0] for _ in range(k)])
            await t.close()
            return int(got == sorted(serials))

        async def misbehave(i: int) -> None:
            t = await Terminal(f"1370000{i:04d}").connect(gw.port)
            if i % 4 == 0:
                for j in range(5):
                    t.writer.write(frame(0x0200, location_body(now, LAT, LON), t.phone, j, corrupt_checksum=True))
            elif i % 4 == 1:
                t.writer.write(b"\x00garbage\xff" * 50)
            elif i % 4 == 2:
                t.writer.write(b"\x7e\x02\x00\x00")  # slowloris
            # else: half-open, says nothing
            await asyncio.wait_for(t.closed_by_server.wait(), 20)
            await t.close()

        async def go():
            started = time.time()
            res = await asyncio.gather(*[truck(i) for i in range(n)], *[misbehave(i) for i in range(40)])
            assert sum(r for r in res if r is not None) == n
            assert time.time() - started < 60

        asyncio.run(go())
        assert gw.store.count_positions() == n * k
        pos = gw.store.positions()
        assert len(set(zip(pos["device"].tolist(), pos["ts"].tolist()))) == n * k
        assert gw.counter("authentications") == n


def test_hazmat_truck_dwelling_off_depot_raises_dwell_warning(tmp_path):
    """End to end: a hazardous-chemicals truck (its terminal mapped to its plate, kind hazmat_truck)
    parks 3 minutes outside its depot; the dwell rule raises a critical warning in the store."""
    depot = {"type": "FeatureCollection", "features": [{"type": "Feature", "properties": {"name": "depot"},
             "geometry": {"type": "Polygon", "coordinates": [[[114.30, 30.60], [114.31, 30.60], [114.31, 30.61],
                                                              [114.30, 30.61], [114.30, 30.60]]]}}]}
    cfg = _cfg(tmp_path, device_names={"13800138888": "鄂A12345"})
    cfg["devices"] = [{"id": "鄂A12345", "vendor": "jt808", "kind": "hazmat_truck"}]
    cfg["regions"] = {"default": "Jiangcheng/Riverside District/East Town/E-02"}
    cfg["rules"] = [{"name": "hazmat_dwell", "kind": "dwell", "device_kinds": ["hazmat_truck"], "severity": "critical",
                     "params": {"radius_m": 150, "duration_s": 120, "allowed": depot}}]
    with Gw(cfg, tmp_path) as gw:
        now = time.time()

        async def go():
            t = await Terminal("013800138888").connect(gw.port)
            await t.login()
            for j in range(10):  # every 20 s for 3 minutes, a few metres apart
                s = await t.send(0x0200, location_body(now - 200 + 20 * j, LAT + j * 1e-5, LON, 0.0))
                assert (await t.general_response())[:2] == (s, 0x0200)
            await t.close()

        asyncio.run(go())
        w = wait_until(lambda: gw.store.warnings(rule="hazmat_dwell"), what="the dwell warning")
        assert w[0]["source"] == "鄂A12345" and w[0]["severity"] == "critical" and w[0]["state"] == "active"


def test_config_errors_name_the_key(tmp_path):
    from gridwatch.config import ConfigError, parse

    with pytest.raises(ConfigError, match="jt808.timezone.*Mars/Olympus"):
        parse({"jt808": {"timezone": "Mars/Olympus"}})
    with pytest.raises(ConfigError, match="jt808.device_names.*must be digits"):
        parse({"jt808": {"device_names": {"abc": "x"}}})
    assert parse({"jt808": {"device_names": {"013800138000": "A1"}}}).jt808.device_names == {"13800138000": "A1"}


def test_batch_body_layout():
    b = batch_body([b"x" * 28, b"y" * 30])
    assert struct.unpack_from(">HB", b) == (2, 0) and len(b) == 3 + 2 + 28 + 2 + 30



def test_escaped_serials_and_a_bad_bcd_time(tmp_path):
    """Serial numbers holding 0x7d/0x7e (escaped in the report and in its answer) and a report whose
    BCD time is not a time (answered 'message error', dead-lettered), in one write."""
    with Gw(_cfg(tmp_path), tmp_path) as gw:
        now = time.time()

        async def go():
            a = await Terminal("13800000041").connect(gw.port)
            await a.login()
            a.serial = 0x7D7C  # the next ones are 0x7d7d, 0x7d7e, 0x7d7f, 0x7d80
            bad_time = location_body(now - 40, LAT, LON)
            bad_time = bad_time[:22] + bytes.fromhex("241341256199") + bad_time[28:]
            bodies = [location_body(now - 50 + j, LAT, LON) for j in range(3)] + [bad_time]
            serials = [a.next_serial() for _ in bodies]
            a.writer.write(b"".join(frame(0x0200, body, a.phone, s) for body, s in zip(bodies, serials)))
            got = sorted([await a.general_response() for _ in range(4)])
            assert got == sorted([(s, 0x0200, 0) for s in serials[:3]] + [(serials[3], 0x0200, 2)])
            await a.close()

        asyncio.run(go())
        assert len(gw.store.positions()["ts"]) == 3
        assert wait_until(lambda: gw.store.dead_letter_counts().get("bad_timestamp")) == 1


def test_a_short_2019_location_body_is_answered_message_error(tmp_path):
    """A 2019-edition terminal's location report whose body is 24 bytes (28 needed), sent in one
    write with good reports (the bulk path takes such a read): it is answered 0x8001 result 2
    ("message error") for its serial, like on the frame-by-frame path, and dead-lettered; the good
    ones are stored and answered 0."""
    with Gw(_cfg(tmp_path), tmp_path) as gw:
        now = time.time()

        async def go():
            a = await Terminal("13800000061", v2019=True).connect(gw.port)
            await a.login()
            bodies = [location_body(now - 50, LAT, LON), location_body(now - 40, LAT, LON)[:24],
                      location_body(now - 30, LAT, LON)]
            serials = [a.next_serial() for _ in bodies]
            a.writer.write(b"".join(frame(0x0200, body, a.phone, s, True) for body, s in zip(bodies, serials)))
            got = sorted([await a.general_response() for _ in range(3)])
            assert got == sorted([(serials[0], 0x0200, 0), (serials[1], 0x0200, 2), (serials[2], 0x0200, 0)])
            await a.close()

        asyncio.run(go())
        assert len(gw.store.positions()["ts"]) == 2
        assert wait_until(lambda: gw.store.dead_letter_counts().get("bad_body")) == 1


def test_two_terminals_multiplexed_on_one_connection(tmp_path):
    """A gateway carrying a 2013 and a 2019 terminal on one connection, their reports in one write."""

    with Gw(_cfg(tmp_path), tmp_path) as gw:
        now = time.time()

        async def go():
            r, w = await asyncio.open_connection("127.0.0.1", gw.port)
            buf = b""

            async def answer():
                nonlocal buf
                while True:
                    s = buf.find(b"\x7e")
                    e = buf.find(b"\x7e", s + 1)
                    if s >= 0 and e > 0:
                        raw, buf = unesc(buf[s + 1:e]), buf[e + 1:]
                        msg_id, attrs = struct.unpack_from(">HH", raw)
                        off = 17 if attrs & 0x4000 else 12
                        phone = (raw[5:15] if attrs & 0x4000 else raw[4:10]).hex().lstrip("0")
                        return msg_id, phone, raw[off:off + (attrs & 0x3FF)]
                    buf += await asyncio.wait_for(r.read(65536), 10)

            terms = [("13800000051", False), ("13800000052", True)]
            for ph, v in terms:
                w.write(frame(0x0100, registration_body("X", v), ph, 1, v))
                msg_id, phone, body = await answer()
                assert (msg_id, phone) == (0x8100, ph)
                code = body[3:]
                w.write(frame(0x0102, bytes([len(code)]) + code + b"0" * 35 if v else code, ph, 2, v))
                msg_id, phone, body = await answer()
                assert (msg_id, phone, body[4]) == (0x8001, ph, 0)
            w.write(b"".join(frame(0x0200, location_body(now - 30 + j, LAT, LON), ph, 10 + j, v)
                             for j in range(3) for ph, v in terms))
            got = sorted([(await answer())[1:] for _ in range(6)])
            assert got == sorted((ph, struct.pack(">HHB", 10 + j, 0x0200, 0)) for j in range(3) for ph, _ in terms)
            w.close()

        asyncio.run(go())
        pos = gw.store.positions()
        assert sorted(pos["device"].tolist()) == ["13800000051"] * 3 + ["13800000052"] * 3


def test_back_pressure_when_the_pipeline_falls_behind(tmp_path):
    """With the commit held, the inbox (bound 10) and a connection's pending reports (bound 8) fill:
    reading pauses (counted) instead of buffering; released, every report is stored and answered."""
    with Gw(_cfg(tmp_path, inbox_max_messages=10, max_pending_per_connection=8), tmp_path) as gw:
        release = threading.Event()
        real_commit = gw.rt.store.commit
        gw.rt.store.commit = lambda *a, **kw: (release.wait(20), real_commit(*a, **kw))[1]
        now = time.time()

        async def go():
            ts = [await Terminal(f"1350000{i:04d}").connect(gw.port) for i in range(6)]
            for t in ts:
                await t.login()
            for j in range(30):  # one report per write: each read is its own message
                for t in ts:
                    await t.send(0x0200, location_body(now - 100 + j, LAT, LON))
                await asyncio.sleep(0.002)
            await asyncio.sleep(0.5)
            assert gw.counter("inbox_pauses") >= 1 or gw.counter("read_pauses") >= 1
            assert len(gw.rt.jt808.inbox) <= 10 + 6  # the bound, plus what was in flight per connection
            release.set()
            for t in ts:
                got = [await t.general_response(30) for _ in range(30)]
                assert all(r == 0 for _, _, r in got)
                await t.close()

        asyncio.run(go())
        assert gw.store.count_positions() == 6 * 30


def test_subpackage_bounds_and_timeout(tmp_path):
    """Too many packages is a bad frame; a long message whose other packages never come is
    dropped after reassembly_timeout_s and dead-lettered; nothing is answered for either."""
    with Gw(_cfg(tmp_path, max_subpackages=4, reassembly_timeout_s=1.0), tmp_path) as gw:
        async def go():
            t = await Terminal("13800000061").connect(gw.port)
            await t.login()
            await t.send(0x0704, b"\x00" * 10, package=(9, 1))
            await t.send(0x0704, b"\x00\x02\x00", package=(3, 1))
            with pytest.raises(asyncio.TimeoutError):
                await t.general_response(timeout=2.5)
            await t.close()

        asyncio.run(go())
        counts = wait_until(lambda: gw.store.dead_letter_counts().get("subpackage_incomplete") and gw.store.dead_letter_counts())
        assert counts == {"bad_subpackage": 1, "subpackage_incomplete": 1}


def test_other_messages_no_fix_logout_and_encryption(tmp_path):
    """A report without a fix is answered and not stored; an unknown message is answered 'not
    supported', as is an RSA-encrypted one; after logout (0x0003) reports are refused."""
    with Gw(_cfg(tmp_path), tmp_path) as gw:
        now = time.time()

        async def go():
            t = await Terminal("13800000071").connect(gw.port)
            await t.login()
            s = await t.send(0x0200, location_body(now - 5, LAT, LON, positioned=False))
            assert await t.general_response() == (s, 0x0200, 0)
            s = await t.send(0x0704, batch_body([location_body(now - 4, LAT, LON, positioned=False),
                                                 location_body(now - 3, LAT, LON)]))
            assert await t.general_response() == (s, 0x0704, 0)
            s = await t.send(0x0900, b"\x01hello")  # data uplink: not handled
            assert await t.general_response() == (s, 0x0900, 3)
            serial = t.next_serial()
            f = bytearray(unesc(frame(0x0200, location_body(now - 2, LAT, LON), t.phone, serial)[1:-1]))
            f[2] |= 0x04  # RSA encryption flag
            f[-1] = xor_all(bytes(f[:-1]))
            t.writer.write(b"\x7e" + esc(bytes(f)) + b"\x7e")
            assert await t.general_response() == (serial, 0x0200, 3)
            s = await t.send(0x0003, b"")
            assert await t.general_response() == (s, 0x0003, 0)
            s = await t.send(0x0200, location_body(now - 1, LAT, LON))
            assert await t.general_response() == (s, 0x0200, 1)
            await t.close()

        asyncio.run(go())
        assert gw.store.positions()["ts"].tolist() == [int(now - 3) * 1000]
        assert gw.counter("unpositioned") == 2 and gw.counter("unsupported_messages") == 1
        assert gw.counter("encrypted_unsupported") == 1 and gw.counter("unauthenticated") == 1


def test_a_terminal_of_another_vendor_is_refused_by_the_codec(tmp_path):
    """The codec's device checks apply to JT/T 808 fixes: a device id registered to another
    vendor is rejected (vendor_mismatch), answered (the rejection is committed) and not stored."""
    cfg = _cfg(tmp_path, device_names={"13800000081": "tp-hz-0031"})
    cfg["devices"] = [{"id": "tp-hz-0031", "vendor": "trackpoint", "kind": "hazmat_truck"}]
    with Gw(cfg, tmp_path) as gw:
        async def go():
            t = await Terminal("13800000081").connect(gw.port)
            await t.login()
            s = await t.send(0x0200, location_body(time.time() - 5, LAT, LON))
            assert await t.general_response() == (s, 0x0200, 0)
            await t.close()

        asyncio.run(go())
        assert gw.store.count_positions() == 0
        assert gw.store.dead_letter_counts() == {"vendor_mismatch": 1}


def test_unknown_terminals_cannot_register_when_unknown_devices_are_rejected(tmp_path):
    """ingest.unknown_devices = "reject": a terminal not listed under [[devices]] gets 0x8100 result
    4 (no such terminal) and cannot authenticate; a listed one (by its plate) registers."""
    cfg = _cfg(tmp_path, device_names={"13800000091": "鄂A00091"})
    cfg["ingest"] = {"unknown_devices": "reject"}
    cfg["devices"] = [{"id": "鄂A00091", "vendor": "jt808", "kind": "hazmat_truck"}]
    with Gw(cfg, tmp_path) as gw:
        async def go():
            stranger = await Terminal("13800000092").connect(gw.port)
            s = await stranger.send(0x0100, registration_body("X", False))
            msg_id, body = await stranger.answer()
            assert msg_id == 0x8100 and struct.unpack(">HB", body[:3]) == (s, 4) and body[3:] == b""
            assert await stranger.authenticate(gw.rt.jt808.auth_code("13800000092")) == 1
            known = await Terminal("13800000091").connect(gw.port)
            await known.login()
            await stranger.close()
            await known.close()

        asyncio.run(go())
        assert gw.counter("registrations_refused") == 1 and gw.counter("authentications") == 1


def test_a_busy_port_is_one_clear_line(tmp_path):
    import socket
    import subprocess
    import sys

    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    port = busy.getsockname()[1]
    (tmp_path / "gw.toml").write_text(f'[site]\ndata_dir = "var"\n[jt808]\nenabled = true\nport = {port}\nauth_secret = "x"\n')
    try:
        r = subprocess.run([sys.executable, "-m", "gridwatch.cli", "run", "-c", str(tmp_path / "gw.toml"), "--duration", "5"],
                           capture_output=True, text=True, timeout=120)
    finally:
        busy.close()
    assert r.returncode != 0
    assert "Traceback" not in r.stderr
    assert f"jt808 cannot listen on 127.0.0.1:{port}" in r.stderr and "jt808.port" in r.stderr


def test_check_config_names_a_jt808_vendor_without_profile(tmp_path):
    from gridwatch.config import parse, preflight

    cfg = parse({"site": {"data_dir": str(tmp_path)}, "jt808": {"enabled": True, "vendor": "jt809"}}, base_dir=tmp_path)
    assert [p for p in preflight(cfg) if p.startswith("jt808.vendor: no profile for vendor 'jt809'")]
    cfg = parse({"site": {"data_dir": str(tmp_path)}, "jt808": {"enabled": True}}, base_dir=tmp_path)
    assert not [p for p in preflight(cfg) if p.startswith("jt808")]
