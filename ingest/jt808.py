"""The JT/T 808 collector: vehicle terminals (2013 and 2019 editions) over TCP.

In China, road-transport vehicles (hazardous-chemicals trucks among them) report their position
through JT/T 808 terminals. This module is the platform side of that protocol, on its own asyncio
(uvloop) event loop and thread; the runtime drains it like the MQTT collector (``take``, ``ack``,
``wake``, ``start``/``stop``).

Wire format (JT/T 808-2013 / -2019, section 4): a frame is ``0x7e`` + escaped(header + body +
checksum) + ``0x7e``; inside, ``0x7e`` is sent as ``0x7d 0x02`` and ``0x7d`` as ``0x7d 0x01``; the
checksum is the XOR of header and body. Header: message id (WORD), body attributes (WORD: bits 0-9
body length, 10-12 encryption, 13 sub-packaged, 14 version flag = 2019 edition), [2019: protocol
version (BYTE)], terminal phone number (BCD[6], 2019: BCD[10]), serial number (WORD), [sub-packaged:
total packages (WORD), package number (WORD), from 1]. All integers are big-endian.

Messages handled:

* 0x0100 registration -> 0x8100 (reply serial, result, auth code); the auth code is an HMAC of the
  phone number under ``jt808.auth_secret``, so it stays valid across restarts;
* 0x0102 authentication (2013: the code; 2019: length, code, IMEI, software version) -> 0x8001;
* 0x0002 heartbeat, 0x0003 logout -> 0x8001;
* 0x0200 location report and 0x0704 batch upload: alarm and status bits, latitude/longitude in
  1e-6 degrees (status bit 2 = south, bit 3 = west, bit 1 = positioned), altitude in m, speed in
  0.1 km/h, direction, BCD time YYMMDDhhmmss in the terminal's time zone (``jt808.timezone``,
  default UTC+8, or the device's own). Each becomes the same :class:`~gridwatch.ingest.codec.Message`
  an MQTT vendor would publish on ``devices/<vendor>/<kind>/<device id>`` (profile
  ``hw/profiles/jt808.toml``), so every codec check, the device directory, the position rules and
  the store apply unchanged. Their 0x8001 goes out only when the runtime calls :meth:`ack` after
  the batch holding them is committed (the MQTT PUBACK rule); a terminal that gets no answer
  re-sends, and a re-sent fix is recognised as a duplicate.
* other terminal messages -> 0x8001 "not supported"; 0x0001 (the terminal's own general response)
  needs no answer.

Sub-packaged messages are reassembled (bounded in parts, bytes, count per connection and time)
and answered, every package, once the whole message is committed.

Misbehaving terminals: a bad frame (escape, checksum, layout) is counted and dead-lettered with its
reason (it goes through the pipeline as a message carrying its rejection, so it lands in the
store's dead letters); the stream resynchronises at the next ``0x7e``; after ``max_bad_frames`` bad
frames in a row, or unframed data longer than ``max_frame_bytes``, the connection is dropped.
Connections without a complete frame for ``idle_timeout_s`` (half-open, slowloris) or with a frame
unfinished for ``frame_timeout_s`` are closed. Bounds, each with a counter: ``max_connections``,
the per-connection buffer (``max_frame_bytes``), per-connection messages awaiting commit
(``max_pending_per_connection``: reading pauses), the inbox (``inbox_max_messages``: reading of
every connection pauses; TCP back-pressure keeps the data in the terminals), the write buffer of a
terminal that does not read (``max_write_buffer_bytes``: dropped).
"""
from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import secrets
import socket
import struct
import threading
import time
from collections import deque
from collections.abc import Callable
from datetime import datetime, timedelta, timezone, tzinfo
from pathlib import Path

import numpy as np
import orjson

from gridwatch.ingest.codec import Message
from gridwatch.observability import Counters

log = logging.getLogger("gridwatch.ingest.jt808")

FLAG = 0x7E
# message ids
T_GENERAL_RESPONSE = 0x0001
T_HEARTBEAT = 0x0002
T_LOGOUT = 0x0003
T_REGISTER = 0x0100
T_AUTH = 0x0102
T_LOCATION = 0x0200
T_LOCATION_BATCH = 0x0704
P_GENERAL_RESPONSE = 0x8001
P_REGISTER_RESPONSE = 0x8100
# 0x8001 results
OK, FAILURE, MESSAGE_ERROR, NOT_SUPPORTED = 0, 1, 2, 3

ATTR_LEN = 0x03FF
ATTR_ENCRYPT = 0x1C00
ATTR_SUBPACKAGE = 0x2000
ATTR_2019 = 0x4000

_LOC = struct.Struct(">IIIIHHH6s")  # alarm, status, lat, lon, altitude, speed, direction, BCD time
_HH = struct.Struct(">HH")
_H = struct.Struct(">H")


class ListenError(SystemExit):
    """The JT/T 808 port cannot be opened (in use, no permission): a setup mistake, so, like other
    configuration errors, ``gridwatch run`` ends with this one line rather than a traceback (it is
    a SystemExit); embedders can catch it by name."""


class FrameError(ValueError):
    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


# --- wire format --------------------------------------------------------------------------
def escape(b: bytes) -> bytes:
    return b.replace(b"\x7d", b"\x7d\x01").replace(b"\x7e", b"\x7d\x02")


def unescape(b: bytes) -> bytes:
    """Undo the escaping; an 0x7d not followed by 0x01/0x02 is an error."""
    if 0x7D not in b:
        return b
    if b.count(b"\x7d") != b.count(b"\x7d\x01") + b.count(b"\x7d\x02"):
        raise FrameError("bad_escape", "0x7d not followed by 0x01 or 0x02")
    return b.replace(b"\x7d\x02", b"\x7e").replace(b"\x7d\x01", b"\x7d")


def xor8(b: bytes) -> int:
    """XOR of all bytes (folding the bytes as one integer: no per-byte Python loop)."""
    n = len(b)
    x = int.from_bytes(b, "little")
    while n > 1:
        half = (n + 1) >> 1
        x = (x & ((1 << (half << 3)) - 1)) ^ (x >> (half << 3))
        n = half
    return x


def bcd(digits: str, n: int) -> bytes:
    """A decimal string -> n bytes of BCD, left-padded with zeros."""
    return bytes.fromhex(digits.rjust(2 * n, "0")[-2 * n:])


def build_frame(msg_id: int, body: bytes, phone_raw: bytes, serial: int, version: int | None = None,
                package: tuple[int, int] | None = None) -> bytes:
    """One escaped frame. ``version`` None = 2013 header (6-byte phone), else the 2019 header with
    that protocol version (10-byte phone); ``package`` = (total, number) for a sub-package."""
    attrs = len(body) | (ATTR_SUBPACKAGE if package else 0)
    if version is None:
        head = _HH.pack(msg_id, attrs) + phone_raw + _H.pack(serial & 0xFFFF)
    else:
        head = _HH.pack(msg_id, attrs | ATTR_2019) + bytes([version]) + phone_raw + _H.pack(serial & 0xFFFF)
    if package:
        head += _HH.pack(*package)
    content = head + body
    return b"\x7e" + escape(content + bytes([xor8(content)])) + b"\x7e"


def parse_frame(raw: bytes):
    """Frame content (between the 0x7e flags, still escaped) -> (msg_id, version or None, phone_raw,
    serial, package (total, number) or None, encrypted, body). Raises FrameError."""
    b = unescape(raw)
    if len(b) < 13:
        raise FrameError("bad_frame", f"frame of {len(b)} bytes is shorter than a header")
    if xor8(b[:-1]) != b[-1]:
        raise FrameError("bad_checksum", f"checksum {b[-1]:#04x} != XOR {xor8(b[:-1]):#04x}")
    msg_id, attrs = _HH.unpack_from(b, 0)
    if attrs & ATTR_2019:
        if len(b) < 18:
            raise FrameError("bad_frame", "2019 frame shorter than its header")
        version, phone_raw = b[4], b[5:15]
        serial = (b[15] << 8) | b[16]
        off = 17
    else:
        version, phone_raw = None, b[4:10]
        serial = (b[10] << 8) | b[11]
        off = 12
    package = None
    if attrs & ATTR_SUBPACKAGE:
        if len(b) < off + 5:
            raise FrameError("bad_frame", "sub-package frame shorter than its header")
        package = _HH.unpack_from(b, off)
        off += 4
    blen = attrs & ATTR_LEN
    if off + blen != len(b) - 1:
        raise FrameError("bad_frame", f"body length {blen} in the header, {len(b) - 1 - off} bytes in the frame")
    return msg_id, version, phone_raw, serial, package, bool(attrs & ATTR_ENCRYPT), b[off:off + blen]


def phone_of(phone_raw: bytes) -> str:
    """BCD phone -> digits without leading zeros ('013800138000' and its 2019 form -> '13800138000')."""
    s = phone_raw.hex()
    if not s.isdigit():
        raise FrameError("bad_frame", f"terminal phone number {s!r} is not BCD")
    return s.lstrip("0") or "0"


def bcd_time_ms(t: bytes, tz: tzinfo) -> int:
    """BCD YYMMDDhhmmss in zone ``tz`` -> epoch ms (UTC)."""
    s = t.hex()
    if not s.isdigit():
        raise FrameError("bad_timestamp", f"BCD time {s!r} has non-decimal digits")
    try:
        d = datetime(2000 + int(s[0:2]), int(s[2:4]), int(s[4:6]), int(s[6:8]), int(s[8:10]), int(s[10:12]), tzinfo=tz)
    except ValueError as e:
        raise FrameError("bad_timestamp", f"BCD time {s!r}: {e}") from None
    return int(d.timestamp()) * 1000


def location(body: bytes, tz: tzinfo, off: int = 0, n: int | None = None) -> dict | None:
    """A location report body (0x0200, or one item of 0x0704) -> a position dict, or None when the
    terminal had no fix (status bit 1 clear)."""
    n = len(body) - off if n is None else n
    if n < 28:
        raise FrameError("bad_body", f"location report of {n} bytes; at least 28 expected")
    alarm, status, lat, lon, alt, speed, direction, t = _LOC.unpack_from(body, off)
    if not status & 0x2:
        return None
    return {"ts": bcd_time_ms(t, tz), "lat": (-lat if status & 0x4 else lat) / 1e6,
            "lon": (-lon if status & 0x8 else lon) / 1e6, "speed": speed / 10.0, "alt": alt,
            "dir": direction, "alarm": alarm, "status": status}


def locations_batch(body: bytes, tz: tzinfo) -> tuple[list[dict], int]:
    """0x0704 body: count (WORD), type (BYTE), then items of length (WORD) + location report.
    -> (the positioned fixes, how many items had no fix)."""
    if len(body) < 3:
        raise FrameError("bad_body", "batch location upload shorter than 3 bytes")
    count = _H.unpack_from(body, 0)[0]
    off, out = 3, []
    for i in range(count):
        if off + 2 > len(body):
            raise FrameError("bad_body", f"batch location upload: item {i} of {count} missing")
        n = _H.unpack_from(body, off)[0]
        off += 2
        if off + n > len(body):
            raise FrameError("bad_body", f"batch location upload: item {i} runs past the body")
        loc = location(body, tz, off, n)
        if loc is not None:
            out.append(loc)
        off += n
    return out, count - len(out)


def general_response(serial: int, msg_id: int, result: int) -> bytes:
    return struct.pack(">HHB", serial & 0xFFFF, msg_id, result)


def registration(body: bytes, v2019: bool) -> tuple[str, str]:
    """0x0100 body -> (terminal id, plate). 2019: manufacturer 11, model 30, terminal id 30 bytes;
    2013: 5, 20, 7; 2011: 5, 8, 7."""
    if v2019:
        sizes = (11, 30, 30)
    elif len(body) >= 37:
        sizes = (5, 20, 7)
    else:
        sizes = (5, 8, 7)
    need = 4 + sum(sizes) + 1
    if len(body) < need:
        raise FrameError("bad_body", f"registration of {len(body)} bytes; at least {need} expected")
    off = 4 + sizes[0] + sizes[1]
    term = body[off:off + sizes[2]].rstrip(b"\0 ").decode("ascii", "replace")
    plate = body[need:].rstrip(b"\0").decode("gbk", "replace")
    return term, plate


class _Reassembly:
    __slots__ = ("parts", "nbytes", "started", "total", "raw")

    def __init__(self, total: int, now: float) -> None:
        self.parts: dict[int, tuple[int, bytes]] = {}
        self.nbytes = 0
        self.started = now
        self.total = total
        self.raw = b""


class _Chunk:
    """Plain location reports (unescaped) of one connection from one read. All chunks of a pipeline
    batch are decoded together with numpy on the pipeline thread (:func:`decode_chunks`, called by
    the codec) and each is answered in bulk after the commit (:meth:`answers`, on the loop)."""

    __slots__ = ("conn", "n", "lens", "bad", "serial", "result", "phone_raw", "version", "mixed")

    def __init__(self, conn: "_Conn", frames: list[bytes]) -> None:
        self.conn = conn
        self.n = len(frames)
        self.lens = list(map(len, frames))
        self.bad = 0
        self.serial = self.result = None
        self.phone_raw = None
        self.version = None
        self.mixed = None

    def answers(self, conn: "_Conn") -> bytes:
        """The 0x8001 frames of this chunk (on the loop: the connection's serial numbers)."""
        if self.serial is None or not len(self.serial):
            return b""
        if self.mixed is not None:
            return b"".join(conn.frame(v, r, P_GENERAL_RESPONSE, general_response(int(s), T_LOCATION, int(res)))
                            for (r, v), s, res in zip(self.mixed, self.serial.tolist(), self.result.tolist()))
        k = len(self.serial)
        out_serial = (conn.out_serial + 1 + np.arange(k)) & 0xFFFF
        conn.out_serial = int(out_serial[-1])
        head = _HH.pack(P_GENERAL_RESPONSE, 5 | (ATTR_2019 if self.version is not None else 0))
        if self.version is not None:
            head += bytes([self.version])
        head += self.phone_raw
        w = len(head)
        m = np.empty((k, w + 8), np.uint8)
        m[:, :w] = np.frombuffer(head, np.uint8)
        m[:, w] = out_serial >> 8
        m[:, w + 1] = out_serial & 0xFF
        m[:, w + 2] = self.serial >> 8
        m[:, w + 3] = self.serial & 0xFF
        m[:, w + 4] = T_LOCATION >> 8
        m[:, w + 5] = T_LOCATION & 0xFF
        m[:, w + 6] = self.result
        m[:, w + 7] = np.bitwise_xor.reduce(m[:, :w + 7], axis=1)
        dirty = ((m == 0x7D) | (m == 0x7E)).any(axis=1)
        clean = m[~dirty]
        framed = np.empty((clean.shape[0], w + 10), np.uint8)
        framed[:, 0] = framed[:, -1] = FLAG
        framed[:, 1:-1] = clean
        out = framed.tobytes()
        if dirty.any():
            out += b"".join(b"\x7e" + escape(row.tobytes()) + b"\x7e" for row in m[dirty])
        return out


def decode_chunks(msgs: list[Message]) -> list[tuple]:
    """Codec hook (``Message.positions``): the location reports of every chunk of a batch, decoded
    at once. Per message: (vendor, kind, device id per fix, ts ms, lat, lon, speed km/h, altitude
    m (lists), [(frame, reason, detail)] to dead-letter); only fixes to store are listed. Each
    chunk keeps what its answers need (serials, results, the terminal's header fields)."""
    chunks: list[_Chunk] = [m.token for m in msgs]
    c = chunks[0].conn.c
    payload = b"".join(m.payload for m in msgs)
    buf = np.frombuffer(payload, np.uint8)
    lens = np.fromiter((x for ch in chunks for x in ch.lens), np.int64)
    n = len(lens)
    per_chunk = np.fromiter((ch.n for ch in chunks), np.int64, len(chunks))
    first = np.zeros(len(chunks) + 1, np.int64)  # frame index where each chunk starts
    np.cumsum(per_chunk, out=first[1:])
    starts = np.zeros(n, np.int64)
    np.cumsum(lens[:-1], out=starts[1:])
    ok = np.bitwise_xor.reduceat(buf, starts) == 0  # the checksum makes a frame's XOR zero
    attrs = (buf[starts + 2].astype(np.int64) << 8) | buf[starts + 3]
    v19 = (attrs & ATTR_2019) != 0
    off = np.where(v19, 17, 12)
    blen = attrs & ATTR_LEN
    len_ok = off + blen + 1 == lens
    long_enough = blen >= 28
    at = np.minimum(starts + off, len(buf) - 28)
    L = buf[at[:, None] + np.arange(28)].astype(np.int64)
    status = (L[:, 4] << 24) | (L[:, 5] << 16) | (L[:, 6] << 8) | L[:, 7]
    lat = ((L[:, 8] << 24) | (L[:, 9] << 16) | (L[:, 10] << 8) | L[:, 11]) / 1e6
    lon = ((L[:, 12] << 24) | (L[:, 13] << 16) | (L[:, 14] << 8) | L[:, 15]) / 1e6
    lat = np.where(status & 4, -lat, lat)
    lon = np.where(status & 8, -lon, lon)
    alt = ((L[:, 16] << 8) | L[:, 17]).astype(np.float64)
    spd = ((L[:, 18] << 8) | L[:, 19]) / 10.0
    b = L[:, 22:28]
    hi, lo = b >> 4, b & 15
    v = hi * 10 + lo
    y, mo, d, h, mi, sec = 2000 + v[:, 0], v[:, 1], v[:, 2], v[:, 3], v[:, 4], v[:, 5]
    leap = ((y % 4 == 0) & (y % 100 != 0)) | (y % 400 == 0)
    dim = _DAYS_IN_MONTH[np.clip(mo, 0, 12)] + ((mo == 2) & leap)
    time_ok = (((hi <= 9) & (lo <= 9)).all(axis=1) & (mo >= 1) & (mo <= 12) & (d >= 1) & (d <= dim)
               & (h < 24) & (mi < 60) & (sec < 60))
    yy = y - (mo <= 2)  # days from the civil date (proleptic Gregorian)
    era = yy // 400
    yoe = yy - era * 400
    doy = (153 * np.where(mo > 2, mo - 3, mo + 9) + 2) // 5 + d - 1
    local_s = (era * 146097 + yoe * 365 + yoe // 4 - yoe // 100 + doy - 719468) * 86400 + h * 3600 + mi * 60 + sec
    serial = (buf[starts + off - 2].astype(np.int64) << 8) | buf[starts + off - 1]
    # the terminals: BCD phone fields, the 2013 ones left-padded to the 2019 width (same digits)
    ph = np.zeros((n, 10), np.uint8)
    ph[:, 4:] = buf[(starts + 4)[:, None] + np.arange(6)]
    if v19.any():
        r = np.flatnonzero(v19)
        ph[r] = buf[(starts[r] + 5)[:, None] + np.arange(10)]
    keys, inv = np.unique(ph.view("V10").ravel(), return_inverse=True)
    dev_of, ts = [], np.empty(n, np.float64)
    phone_ok = np.ones(n, np.bool_)
    for k, key in enumerate(keys.tolist()):
        rows = inv == k if len(keys) > 1 else slice(None)
        try:
            phone = phone_of(bytes(key))
        except FrameError:  # not BCD: a bad frame, as on the frame-by-frame path (no answer)
            dev_of.append("")
            phone_ok[rows] = False
            ts[rows] = 0.0
            continue
        dev_of.append(c.device_of(phone))
        ts[rows] = (local_s[rows] - _tz_offsets(c.tz_of(phone), local_s[rows], time_ok[rows])) * 1000.0
    dev_of = np.array(dev_of, dtype=object)
    # what the frame-by-frame path does with each frame: a frame that does not parse (checksum,
    # length, phone number) is not answered; one that parses is answered, "message error" when its
    # body is too short or its time is not a time (as ``location`` raising in ``_dispatch``)
    parsed = ok & len_ok & phone_ok
    good = parsed & long_enough
    positioned = (status & 2) != 0
    time_ok |= ~positioned  # a report without a fix is not stored: its time does not matter
    time_ok &= long_enough  # a short body's bytes after it belong to the next frame
    store = good & time_ok & positioned
    c.counters.add(c.source, "locations", int(store.sum()))
    unpos = int((good & ~positioned).sum())
    if unpos:
        c.counters.add(c.source, "unpositioned", unpos)
    # the fixes to store, as lists, cut per chunk
    sidx = np.flatnonzero(store)
    scut = np.searchsorted(sidx, first).tolist()
    cols = [dev_of[inv[sidx]].tolist(), ts[sidx].tolist(), lat[sidx].tolist(), lon[sidx].tolist(), spd[sidx].tolist(),
            alt[sidx].tolist()]
    # answers: OK for every good frame (stored or without a fix), "message error" for a short body
    # or a bad time
    gidx = np.flatnonzero(parsed)
    gcut = np.searchsorted(gidx, first).tolist()
    g_serial = serial[gidx]
    g_result = np.where(good[gidx] & time_ok[gidx], OK, MESSAGE_ERROR).astype(np.uint8)
    change = np.flatnonzero((inv[1:] != inv[:-1]) | (v19[1:] != v19[:-1])) + 1  # a frame of another terminal
    bad: list[list] = [[] for _ in chunks]
    nbad = np.zeros(len(chunks), np.int64)
    for i in np.flatnonzero(~good | ~time_ok).tolist():
        k = int(np.searchsorted(first, i, "right")) - 1
        j = i - int(first[k]) + 1
        if not ok[i]:
            bad[k].append((i, "bad_checksum", f"frame {j} of {chunks[k].n}: checksum does not match"))
        elif not len_ok[i]:
            bad[k].append((i, "bad_frame", f"frame {j} of {chunks[k].n}: body length {int(blen[i])} in the header, "
                                           f"{int(lens[i] - off[i] - 1)} in the frame"))
        elif not phone_ok[i]:
            bad[k].append((i, "bad_frame", f"frame {j} of {chunks[k].n}: terminal phone number {ph[i].tobytes().hex()!r} "
                                           "is not BCD"))
        elif not long_enough[i]:
            bad[k].append((i, "bad_body", f"frame {j} of {chunks[k].n}: location report of {int(blen[i])} bytes; at least 28 expected"))
        else:
            bad[k].append((i, "bad_timestamp", f"frame {j} of {chunks[k].n}: BCD time {bytes(b[i].astype(np.uint8)).hex()!r} "
                                               "is not a valid time"))
        if not parsed[i]:
            nbad[k] += 1
    if nbad.any():
        c.counters.add(c.source, "bad_frames", int(nbad.sum()))
    nerr = int((g_result != OK).sum())
    if nerr:  # the frame-by-frame path counts these as bad messages (parsed, answered "message error")
        c.counters.add(c.source, "bad_messages", nerr)
    vendor, kind = c.cfg.vendor, c.cfg.device_kind
    out = []
    for k, ch in enumerate(chunks):
        f0, f1 = int(first[k]), int(first[k + 1])
        ch.bad = int(nbad[k])
        g0, g1 = gcut[k], gcut[k + 1]
        ch.serial, ch.result = g_serial[g0:g1], g_result[g0:g1]
        p0 = int(starts[f0])
        if np.searchsorted(change, f0, "right") == np.searchsorted(change, f1 - 1, "right"):  # one terminal
            w = bool(v19[f0])
            ch.phone_raw = payload[p0 + (5 if w else 4):p0 + (15 if w else 10)]
            ch.version = int(buf[p0 + 4]) if w else None
            ch.mixed = None
        else:
            ch.mixed = [(payload[int(starts[i]) + (5 if v19[i] else 4):int(starts[i]) + (15 if v19[i] else 10)],
                         int(buf[int(starts[i]) + 4]) if v19[i] else None) for i in gidx[g0:g1].tolist()]
        s0, s1 = scut[k], scut[k + 1]
        out.append((vendor, kind, *(col[s0:s1] for col in cols), bad[k]))
    return out


_DAYS_IN_MONTH = np.array([31, 31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31], np.int64)  # [0] unused


def _tz_offsets(tz: tzinfo, local_s: np.ndarray, valid: np.ndarray) -> np.ndarray | int:
    """UTC offsets (s) of local wall-clock times (epoch-like seconds) in ``tz``: one call per
    distinct local hour (a batch spans few)."""
    if isinstance(tz, timezone):
        return int(tz.utcoffset(None).total_seconds())
    hours = np.where(valid, local_s // 3600, 0)
    uniq, inv = np.unique(hours, return_inverse=True)
    offs = np.array([int(tz.utcoffset(datetime(1970, 1, 1) + timedelta(hours=int(hh))).total_seconds()) for hh in uniq.tolist()],
                    np.int64)
    return offs[inv]


# --- connections -------------------------------------------------------------------------
class _Conn(asyncio.Protocol):
    def __init__(self, c: "Jt808Collector") -> None:
        self.c = c
        self.transport: asyncio.Transport | None = None
        self.peer = "?"
        self.buf = bytearray()
        self.frame_started = 0.0  # monotonic time a partial frame began (0 = none)
        self.last_frame = time.monotonic()
        self.bad_streak = 0
        self.garbage = 0  # bytes outside any frame since the last good one
        self.pending = 0
        self.paused = 0  # bit 1: too many pending, bit 2: inbox full
        self.closed = False
        self.out_serial = 0
        self.authed: set[str] = set()
        self.authed_raw: set[bytes] = set()  # the same terminals' BCD phone fields
        self.reasm: dict[tuple, _Reassembly] = {}

    # asyncio callbacks
    def connection_made(self, transport) -> None:
        c = self.c
        self.transport = transport
        p = transport.get_extra_info("peername")
        self.peer = f"{p[0]}:{p[1]}" if p else "?"
        if len(c.conns) >= c.cfg.max_connections:
            c.counters.add(c.source, "refused_connections")
            self.closed = True
            transport.abort()
            return
        sock = transport.get_extra_info("socket")
        if sock is not None:
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
            except OSError:
                pass
        c.conns.add(self)
        c.counters.add(c.source, "connects")
        c.counters.set(c.source, "connections", len(c.conns))
        if c.inbox_paused:
            self._pause(2)

    def connection_lost(self, exc) -> None:
        self.closed = True
        c = self.c
        if self in c.conns:
            c.conns.discard(self)
            c.counters.add(c.source, "disconnects")
            c.counters.set(c.source, "connections", len(c.conns))

    def close(self, counter: str) -> None:
        if not self.closed:
            self.closed = True
            self.c.counters.add(self.c.source, counter)
            if self.transport is not None:
                self.transport.abort()

    def _pause(self, bit: int) -> None:
        if not self.paused and self.transport is not None and not self.closed:
            self.transport.pause_reading()
        self.paused |= bit

    def _resume(self, bit: int) -> None:
        was = self.paused
        self.paused &= ~bit
        if was and not self.paused and not self.closed and self.transport is not None:
            self.last_frame = time.monotonic()  # paused time is not idle time
            if self.frame_started:
                self.frame_started = self.last_frame
            self.transport.resume_reading()

    def data_received(self, data: bytes) -> None:
        if self.closed:
            return
        c = self.c
        buf = self.buf
        buf += data
        pos = 0
        n = len(buf)
        fast: list[bytes] = []
        while pos < n:
            s = buf.find(FLAG, pos)
            if s != pos:
                g = (n if s < 0 else s) - pos
                c.counters.add(c.source, "garbage_bytes", g)
                self.garbage += g
                if self.garbage > c.cfg.max_frame_bytes:
                    c.dead(self, "unsynchronised", f"{self.garbage} bytes without a frame flag (0x7e; limit "
                           f"{c.cfg.max_frame_bytes}): cannot resynchronise", bytes(buf[pos:pos + 256]))
                    self.close("dropped_unsynced")
                    return
                if s < 0:
                    pos = n
                    break
            e = buf.find(FLAG, s + 1)
            if e < 0:
                pos = s
                break
            if e == s + 1:  # 7e 7e: the first closed a frame we lost; the second opens the next
                pos = e
                continue
            raw = bytes(buf[s + 1:e])
            # the common case, a plain location report (2013 or 2019, not sub-packaged, nothing
            # escaped) of an authenticated terminal, is only collected here: it is decoded, checked
            # and answered in bulk (see _Chunk)
            if raw[0] == 0x02 and raw[1] == 0x00 and not raw[2] & 0x3C:
                plain = raw
                if 0x7D in raw:
                    try:
                        plain = unescape(raw)
                    except FrameError:
                        plain = b""
                if len(plain) >= 41 and (not c.cfg.require_auth
                                         or (plain[5:15] if plain[2] & 0x40 else plain[4:10]) in self.authed_raw):
                    fast.append(plain)
                    pos = e + 1
                    continue
            if fast:
                self._flush(fast)
                fast = []
            if self._frame(raw):
                pos = e + 1
            else:
                pos = e  # a bad frame's closing flag may open the next good one
                if self.closed:
                    return
        if fast:
            self._flush(fast)
        if pos:
            del buf[:pos]
        if buf:
            if len(buf) > c.cfg.max_frame_bytes:
                c.dead(self, "oversized", f"unframed data of {len(buf)} bytes (limit {c.cfg.max_frame_bytes}): cannot resynchronise",
                       bytes(buf[:256]))
                self.close("dropped_unsynced")
                return
            if not self.frame_started:
                self.frame_started = time.monotonic()
        else:
            self.frame_started = 0.0

    def _flush(self, frames: list[bytes]) -> None:
        c = self.c
        self.bad_streak = self.garbage = 0  # a bad checksum among them is counted when decoded
        self.last_frame = time.monotonic()
        self.frame_started = 0.0
        c.counters.add(c.source, "frames", len(frames))
        c.put(Message(f"jt808/{self.peer}", b"".join(frames), time.time_ns() // 1_000_000, _Chunk(self, frames),
                      positions=decode_chunks))
        self.pending += len(frames)
        if self.pending >= c.cfg.max_pending_per_connection:
            c.counters.add(c.source, "read_pauses")
            self._pause(1)

    # frames
    def _frame(self, raw: bytes) -> bool:
        c = self.c
        try:
            msg_id, version, phone_raw, serial, package, encrypted, body = parse_frame(raw)
            phone = phone_of(phone_raw)
        except FrameError as e:
            c.counters.add(c.source, "bad_frames")
            c.dead(self, e.reason, str(e), b"\x7e" + raw + b"\x7e")
            self.bad_streak += 1
            if self.bad_streak >= c.cfg.max_bad_frames:
                self.close("dropped_bad_frames")
            return False
        self.bad_streak = self.garbage = 0
        self.last_frame = time.monotonic()
        self.frame_started = 0.0
        c.counters.add(c.source, "frames")
        if encrypted:
            c.counters.add(c.source, "encrypted_unsupported")
            self.reply(version, phone_raw, P_GENERAL_RESPONSE, general_response(serial, msg_id, NOT_SUPPORTED))
            return True
        serials = [serial]
        if package is not None:
            body, serials = self._reassemble(msg_id, version, phone_raw, serial, package, body, raw)
            if body is None:
                return True
        try:
            self._dispatch(msg_id, version, phone_raw, phone, serials, body, raw)
        except FrameError as e:
            c.counters.add(c.source, "bad_messages")
            c.dead(self, e.reason, f"message {msg_id:#06x} from {phone}: {e}", b"\x7e" + raw + b"\x7e", phone)
            self.reply(version, phone_raw, P_GENERAL_RESPONSE,
                       b"".join(general_response(s, msg_id, MESSAGE_ERROR) for s in serials))
        return True

    def _reassemble(self, msg_id, version, phone_raw, serial, package, body, raw):
        c, cfg = self.c, self.c.cfg
        total, number = package
        if not 1 <= number <= total or total > cfg.max_subpackages:
            why = f"package {number} of {total} (at most {cfg.max_subpackages} packages)"
            c.counters.add(c.source, "bad_frames")
            c.dead(self, "bad_subpackage", why, b"\x7e" + raw + b"\x7e")
            return None, None
        key = (phone_raw, msg_id, (serial - number + 1) & 0xFFFF, total)
        r = self.reasm.get(key)
        if r is None:
            if len(self.reasm) >= cfg.max_reassemblies_per_connection:
                old_key = min(self.reasm, key=lambda k: self.reasm[k].started)
                old = self.reasm.pop(old_key)
                c.counters.add(c.source, "reassemblies_dropped")
                c.dead(self, "subpackage_incomplete", f"message {old_key[1]:#06x}: {len(old.parts)} of {old.total} packages "
                       f"when a newer long message displaced it (limit {cfg.max_reassemblies_per_connection})", old.raw)
            r = self.reasm[key] = _Reassembly(total, time.monotonic())
            r.raw = b"\x7e" + raw[:200] + b"\x7e"
        if number not in r.parts:
            r.parts[number] = (serial, body)
            r.nbytes += len(body)
        if r.nbytes > cfg.max_reassembly_bytes:
            del self.reasm[key]
            c.counters.add(c.source, "reassemblies_dropped")
            c.dead(self, "oversized", f"message {msg_id:#06x} reassembled from packages exceeds {cfg.max_reassembly_bytes} bytes", r.raw)
            return None, None
        c.counters.add(c.source, "subpackages")
        if len(r.parts) < total:
            return None, None
        del self.reasm[key]
        c.counters.add(c.source, "reassembled")
        parts = [r.parts[i] for i in range(1, total + 1)]
        return b"".join(p[1] for p in parts), [p[0] for p in parts]

    def _dispatch(self, msg_id, version, phone_raw, phone, serials, body, raw) -> None:
        c = self.c
        if msg_id in (T_LOCATION, T_LOCATION_BATCH):
            if c.cfg.require_auth and phone not in self.authed:
                c.counters.add(c.source, "unauthenticated")
                self.reply(version, phone_raw, P_GENERAL_RESPONSE,
                           b"".join(general_response(s, msg_id, FAILURE) for s in serials))
                return
            tz = c.tz_of(phone)
            if msg_id == T_LOCATION:
                loc = location(body, tz)
                items, unpositioned = ([loc], 0) if loc is not None else ([], 1)
            else:
                items, unpositioned = locations_batch(body, tz)
            c.counters.add(c.source, "locations", len(items))
            if unpositioned:
                c.counters.add(c.source, "unpositioned", unpositioned)
            if not items:  # no fix: nothing to store, nothing to wait for
                self.reply(version, phone_raw, P_GENERAL_RESPONSE, b"".join(general_response(s, msg_id, OK) for s in serials))
                return
            payload = orjson.dumps(items[0] if msg_id == T_LOCATION else items)
            c.put(Message(c.topic_of(phone), payload, time.time_ns() // 1_000_000, (self, version, phone_raw, msg_id, serials)))
            self.pending += 1
            if self.pending >= c.cfg.max_pending_per_connection:
                c.counters.add(c.source, "read_pauses")
                self._pause(1)
            return
        if msg_id == T_HEARTBEAT:
            c.counters.add(c.source, "heartbeats")
            result = OK
        elif msg_id == T_REGISTER:
            term, plate = registration(body, version is not None)
            if c.known is not None and c.device_of(phone) not in c.known:  # 4: no such terminal in the database
                c.counters.add(c.source, "registrations_refused")
                self.reply(version, phone_raw, P_REGISTER_RESPONSE, _H.pack(serials[-1]) + b"\x04")
                return
            c.counters.add(c.source, "registrations")
            log.info("jt808 terminal registered", extra={"fields": {"phone": phone, "terminal": term, "plate": plate, "peer": self.peer}})
            code = c.auth_code(phone).encode()
            self.reply(version, phone_raw, P_REGISTER_RESPONSE, _H.pack(serials[-1]) + b"\x00" + code)
            return
        elif msg_id == T_AUTH:
            if version is not None:
                if not body:
                    raise FrameError("bad_body", "empty authentication")
                code = body[1:1 + body[0]]
            else:
                code = body
            if hmac.compare_digest(code, c.auth_code(phone).encode()) and (c.known is None or c.device_of(phone) in c.known):
                self.authed.add(phone)
                self.authed_raw.add(phone_raw)
                c.counters.add(c.source, "authentications")
                result = OK
            else:
                c.counters.add(c.source, "auth_failures")
                result = FAILURE
        elif msg_id == T_LOGOUT:
            self.authed.discard(phone)
            self.authed_raw.discard(phone_raw)
            result = OK
        elif msg_id == T_GENERAL_RESPONSE:
            return
        else:
            c.counters.add(c.source, "unsupported_messages")
            result = NOT_SUPPORTED
        self.reply(version, phone_raw, P_GENERAL_RESPONSE, b"".join(general_response(s, msg_id, result) for s in serials))

    def frame(self, version, phone_raw, msg_id: int, body: bytes) -> bytes:
        self.out_serial = (self.out_serial + 1) & 0xFFFF
        return build_frame(msg_id, body, phone_raw, self.out_serial, version)

    def reply(self, version, phone_raw, msg_id: int, bodies: bytes) -> None:
        """Send one frame per 5-byte 0x8001 body in ``bodies`` (or one frame of another message)."""
        if self.closed:
            return
        if msg_id == P_GENERAL_RESPONSE and len(bodies) > 5:
            out = b"".join(self.frame(version, phone_raw, msg_id, bodies[i:i + 5]) for i in range(0, len(bodies), 5))
        else:
            out = self.frame(version, phone_raw, msg_id, bodies)
        self.write(out)

    def write(self, data: bytes) -> None:
        t = self.transport
        t.write(data)
        if t.get_write_buffer_size() > self.c.cfg.max_write_buffer_bytes:
            self.close("dropped_slow_readers")


# --- the collector -----------------------------------------------------------------------
class Jt808Collector:
    source = "jt808"

    def __init__(self, cfg, counters: Counters, devices: list | None = None, data_dir: Path | None = None,
                 unknown_devices: str = "register") -> None:
        """``cfg``: the ``[jt808]`` settings; ``devices``: the configured devices (their time zones;
        with ``unknown_devices = "reject"`` only they may register and authenticate)."""
        from gridwatch.hw.profiles import parse_timezone

        self.cfg = cfg
        self.counters = counters
        self.inbox: deque[Message] = deque()
        self.wake: Callable[[], None] | None = None
        self.conns: set[_Conn] = set()
        self.inbox_paused = False
        self.port: int | None = None
        self.ready = threading.Event()
        self.tz = parse_timezone(cfg.timezone)
        self._tz_of_device = {d.id: parse_timezone(d.timezone) for d in (devices or [])
                              if getattr(d, "timezone", None) and d.vendor == cfg.vendor}
        self._names = dict(cfg.device_names)
        self.known: set[str] | None = None  # device ids allowed to register (None: any)
        if unknown_devices == "reject":
            self.known = {d.id for d in (devices or []) if d.vendor == cfg.vendor}
        self._topics: dict[str, str] = {}
        self._tzs: dict[str, tzinfo] = {}
        secret = cfg.auth_secret.encode()
        if not secret:
            secret = _load_secret(data_dir)
        self._secret = secret
        self._codes: dict[str, str] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stop: asyncio.Future | None = None
        self._error: BaseException | None = None

    # identities
    def device_of(self, phone: str) -> str:
        return self._names.get(phone, phone)

    def topic_of(self, phone: str) -> str:
        t = self._topics.get(phone)
        if t is None:
            if len(self._topics) > 1_000_000:
                self._topics.clear()
            t = self._topics[phone] = f"devices/{self.cfg.vendor}/{self.cfg.device_kind}/{self.device_of(phone)}"
        return t

    def tz_of(self, phone: str) -> tzinfo:
        tz = self._tzs.get(phone)
        if tz is None:
            if len(self._tzs) > 1_000_000:
                self._tzs.clear()
            tz = self._tzs[phone] = self._tz_of_device.get(self.device_of(phone), self.tz)
        return tz

    def auth_code(self, phone: str) -> str:
        code = self._codes.get(phone)
        if code is None:
            if len(self._codes) > 1_000_000:
                self._codes.clear()
            code = self._codes[phone] = hmac.new(self._secret, phone.encode(), hashlib.sha256).hexdigest()[:16]
        return code

    # loop side
    def put(self, msg: Message) -> None:
        inbox = self.inbox
        was_empty = not inbox
        inbox.append(msg)
        if len(inbox) >= self.cfg.inbox_max_messages and not self.inbox_paused:
            self.inbox_paused = True
            self.counters.add(self.source, "inbox_pauses")
            for conn in self.conns:
                conn._pause(2)
        if was_empty and self.wake is not None:
            self.wake()

    def dead(self, conn: _Conn, reason: str, detail: str, raw: bytes, phone: str | None = None) -> None:
        """A bad frame or message -> a dead letter, through the pipeline (which stores it)."""
        if len(self.inbox) >= self.cfg.inbox_max_messages + 1000:
            self.counters.drop(self.source, "dead_letter_inbox_full")
            return
        src = f"jt808/{conn.peer}" + (f"/{phone}" if phone else "")
        self.put(Message(src, raw, time.time_ns() // 1_000_000, None, reject=(reason, detail)))

    def _resume_inbox(self) -> None:
        if self.inbox_paused and len(self.inbox) < self.cfg.inbox_max_messages // 2:
            self.inbox_paused = False
            for conn in list(self.conns):
                conn._resume(2)

    def _send_acks(self, tokens: list) -> None:
        per_conn: dict[_Conn, list[bytes]] = {}
        stale = 0
        for tok in tokens:
            if type(tok) is _Chunk:
                conn = tok.conn
                conn.pending -= tok.n
                if tok.bad:
                    conn.bad_streak += tok.bad
                    if conn.bad_streak >= self.cfg.max_bad_frames:
                        conn.close("dropped_bad_frames")
                if conn.closed:
                    stale += tok.n
                    continue
                per_conn.setdefault(conn, []).append(tok.answers(conn))
                continue
            conn, version, phone_raw, msg_id, serials = tok
            conn.pending -= 1
            if conn.closed:
                stale += 1
                continue
            out = per_conn.setdefault(conn, [])
            for s in serials:
                out.append(conn.frame(version, phone_raw, P_GENERAL_RESPONSE, general_response(s, msg_id, OK)))
        for conn, frames in per_conn.items():
            conn.write(b"".join(frames))
            if conn.paused & 1 and conn.pending < self.cfg.max_pending_per_connection // 2:
                conn._resume(1)
        if stale:
            self.counters.add(self.source, "acks_after_disconnect", stale)

    async def _sweep(self) -> None:
        cfg = self.cfg
        while True:
            await asyncio.sleep(1.0)
            now = time.monotonic()
            for conn in list(self.conns):
                if conn.paused:
                    continue
                if conn.frame_started and now - conn.frame_started > cfg.frame_timeout_s:
                    self.dead(conn, "frame_timeout", f"frame unfinished after {cfg.frame_timeout_s:g} s", bytes(conn.buf[:256]))
                    conn.close("frame_timeouts")
                elif now - conn.last_frame > cfg.idle_timeout_s:
                    conn.close("idle_timeouts")
                else:
                    for key, r in list(conn.reasm.items()):
                        if now - r.started > cfg.reassembly_timeout_s:
                            del conn.reasm[key]
                            self.counters.add(self.source, "reassemblies_dropped")
                            self.dead(conn, "subpackage_incomplete", f"message {key[1]:#06x}: {len(r.parts)} of {r.total} "
                                      f"packages after {cfg.reassembly_timeout_s:g} s", r.raw)
            self.counters.set(self.source, "inbox", len(self.inbox))

    async def _serve(self) -> None:
        loop = asyncio.get_running_loop()
        self._stop = loop.create_future()
        try:
            server = await loop.create_server(lambda: _Conn(self), self.cfg.bind, self.cfg.port, backlog=1024, reuse_address=True)
        except OSError as e:
            self._error = e
            self.ready.set()
            return
        self.port = server.sockets[0].getsockname()[1]
        sweeper = loop.create_task(self._sweep())
        self.ready.set()
        log.info("jt808 server listening", extra={"fields": {"bind": self.cfg.bind, "port": self.port}})
        try:
            await self._stop
        finally:
            sweeper.cancel()
            server.close()
            for conn in list(self.conns):
                conn.close("closed_at_stop")
            await server.wait_closed()

    def _run(self) -> None:
        try:
            import uvloop

            loop = uvloop.new_event_loop()
        except ImportError:
            loop = asyncio.new_event_loop()
        self._loop = loop
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(self._serve())
        finally:
            loop.close()

    # pipeline side
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="gridwatch-jt808", daemon=True)
        self._thread.start()
        self.ready.wait(30)
        if self._error is not None:
            e = self._error
            why = getattr(e, "strerror", None) or str(e)
            raise ListenError(f"error: jt808 cannot listen on {self.cfg.bind}:{self.cfg.port} ({why}); "
                              "set jt808.port (and jt808.bind) to a free address")

    def take(self, max_messages: int) -> list[Message]:
        inbox = self.inbox
        n = min(len(inbox), max_messages)
        out = [inbox.popleft() for _ in range(n)]
        if self.inbox_paused and len(inbox) < self.cfg.inbox_max_messages // 2 and self._loop is not None:
            self._loop.call_soon_threadsafe(self._resume_inbox)
        return out

    def ack(self, messages: list[Message]) -> None:
        """Answer (0x8001) the location messages whose batch is committed."""
        tokens = [m.token for m in messages if m.token is not None]
        if tokens and self._loop is not None and not self._loop.is_closed():
            try:
                self._loop.call_soon_threadsafe(self._send_acks, tokens)
            except RuntimeError:  # the loop closed meanwhile: the terminals re-send
                pass

    def stop(self) -> None:
        """Close every connection; messages not yet acknowledged are re-sent by their terminals."""
        if self._loop is not None and self._stop is not None and not self._loop.is_closed():
            try:
                self._loop.call_soon_threadsafe(lambda: self._stop.done() or self._stop.set_result(None))
            except RuntimeError:
                pass
        if self._thread is not None:
            self._thread.join(10)
        self.inbox.clear()


def _load_secret(data_dir: Path | None) -> bytes:
    """The auth-code secret kept in <data_dir>/jt808.key (created, mode 0600, when missing)."""
    if data_dir is None:
        return secrets.token_bytes(32)
    p = Path(data_dir) / "jt808.key"
    try:
        return bytes.fromhex(p.read_text().strip())
    except (OSError, ValueError):
        pass
    key = secrets.token_bytes(32)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(key.hex())
    p.chmod(0o600)
    return key
