"""The bulk (numpy) decoder of location reports against the frame-by-frame reference
(``parse_frame`` + ``location``): same fixes, same rejections, and the same answers as the
collector's frame-by-frame path sends over a real socket, for random frames of both editions,
several terminals per read, bad checksums, phone numbers that are not BCD, bodies too short for a
report and impossible BCD times."""
from __future__ import annotations

import asyncio
import socket
import struct

import numpy as np
from hypothesis import HealthCheck, given, settings, strategies as st

from gridwatch.config import Jt808Config
from gridwatch.hw.profiles import parse_timezone
from gridwatch.ingest import jt808 as J
from gridwatch.ingest.codec import Message
from gridwatch.observability import Counters
from tests.jt808_sim import frame, unesc

BCD_TIME = st.tuples(st.integers(0, 99), st.integers(0, 13), st.integers(0, 32), st.integers(0, 24),
                     st.integers(0, 60), st.integers(0, 60)).map(lambda t: bytes.fromhex("".join(f"{x:02d}" for x in t)))
REPORT = st.fixed_dictionaries({
    "alarm": st.integers(0, 2**32 - 1), "status": st.integers(0, 2**32 - 1), "lat": st.integers(0, 90_000_000),
    "lon": st.integers(0, 180_000_000), "alt": st.integers(0, 65535), "speed": st.integers(0, 5000),
    "dir": st.integers(0, 359), "time": st.one_of(BCD_TIME, st.binary(min_size=6, max_size=6)),
    "phone": st.sampled_from(["13800000001", "13900000002", "1", "1380000000f"]), "v2019": st.booleans(),
    "serial": st.integers(0, 65535), "corrupt": st.integers(0, 20).map(lambda x: x == 0),
    "extra": st.binary(max_size=12), "cut": st.integers(0, 12).map(lambda x: 14 + 2 * x if x < 6 else None)})


def _frame(r: dict) -> bytes:
    """The frame's content as sent (escaped, without the 0x7e flags)."""
    body = struct.pack(">IIIIHHH", r["alarm"], r["status"], r["lat"], r["lon"], r["alt"], r["speed"], r["dir"]) + r["time"] + r["extra"]
    if r["cut"] is not None:  # a body too short for a location report (the frame itself long enough)
        body = body[:r["cut"]]
    return frame(0x0200, body, r["phone"], r["serial"], r["v2019"], corrupt_checksum=r["corrupt"])[1:-1]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.lists(REPORT, min_size=1, max_size=6), min_size=1, max_size=4), st.sampled_from(["+08:00", "Asia/Shanghai", "America/New_York"]))
def test_bulk_decoder_matches_the_frame_by_frame_reference(reads, tz_name):
    col = J.Jt808Collector(Jt808Config(require_auth=False, auth_secret="x", timezone=tz_name), Counters())
    conn = J._Conn(col)
    tz = parse_timezone(tz_name)
    msgs, want_fixes, want_bad, want_answers = [], [], [], []
    for reports in reads:
        frames = [_frame(r) for r in reports]
        plain = [unesc(f) for f in frames]  # the collector unescapes before collecting
        msgs.append(Message("t", b"".join(plain), 0, J._Chunk(conn, plain)))
        fixes, bad = [], []
        for f in frames:
            try:
                _, version, phone_raw, serial, _, _, body = J.parse_frame(f)
                J.phone_of(phone_raw)
            except J.FrameError as e:
                bad.append(e.reason)
                continue
            try:
                loc = J.location(body, tz)
            except J.FrameError as e:
                bad.append(e.reason)
                continue
            if loc is not None:
                fixes.append((J.phone_of(phone_raw), loc["ts"], loc["lat"], loc["lon"], loc["speed"], float(loc["alt"])))
        want_fixes.append(fixes)
        want_bad.append(bad)
        want_answers.append(_frame_by_frame_answers(col, frames))
    got = J.decode_chunks(msgs)
    for k, (vendor, kind, devs, ts, lat, lon, spd, alt, bad) in enumerate(got):
        assert (vendor, kind) == ("jt808", "vehicle")
        assert list(zip(devs, ts, lat, lon, spd, alt)) == want_fixes[k]
        assert [r for _, r, _ in bad] == want_bad[k]
        # the answers, as frames: same serials, results, terminals and editions as the frame path's
        assert sorted(_answers(msgs[k].token.answers(conn))) == want_answers[k]


def _answers(out: bytes) -> list[tuple]:
    """0x8001 frames as sent -> [(protocol version (-1: 2013 edition), phone field, reply serial,
    reply id, result)]."""
    got = []
    for raw in out.split(b"\x7e")[1::2]:
        msg_id, version, phone_raw, _, _, _, body = J.parse_frame(raw)
        assert msg_id == J.P_GENERAL_RESPONSE
        got.append((-1 if version is None else version, phone_raw, *struct.unpack(">HHB", body)))
    return got


def _frame_by_frame_answers(col: J.Jt808Collector, frames: list[bytes]) -> list[tuple]:
    """What the collector's frame-by-frame path (``_Conn._frame``) answers to ``frames``, read from
    the other end of a socket: its immediate answers, then those it sends once the reports it queued
    are committed (``_send_acks``)."""
    loop = asyncio.new_event_loop()
    ours, theirs = socket.socketpair()
    try:
        conn = J._Conn(col)
        loop.run_until_complete(loop.connect_accepted_socket(lambda: conn, sock=ours))
        for f in frames:
            conn._frame(f)
        col._send_acks([m.token for m in col.inbox if m.token is not None])
        col.inbox.clear()
        conn.transport.close()
        loop.run_until_complete(asyncio.sleep(0.01))
        out = b""
        theirs.settimeout(5)
        while chunk := theirs.recv(65536):
            out += chunk
        return sorted(_answers(out))
    finally:
        theirs.close()
        loop.close()


def test_bcd_time_in_a_zone_with_summer_time():
    """The bulk decoder's zone offsets per local hour: New York is UTC-4 in July, UTC-5 in January."""
    col = J.Jt808Collector(Jt808Config(require_auth=False, auth_secret="x", timezone="America/New_York"), Counters())
    conn = J._Conn(col)
    frames = []
    for t in ("240701120000", "240115120000"):
        body = struct.pack(">IIIIHHH", 0, 2, 30_000_000, 114_000_000, 0, 0, 0) + bytes.fromhex(t)
        frames.append(unesc(frame(0x0200, body, "1", 1)[1:-1]))
    ts = J.decode_chunks([Message("t", b"".join(frames), 0, J._Chunk(conn, frames))])[0][3]
    assert ts == [1719849600000.0, 1705338000000.0]  # 16:00 and 17:00 UTC
    assert np.all(np.array(ts) % 3_600_000 == 0)
