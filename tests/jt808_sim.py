"""A JT/T 808 terminal simulator for the tests, written from the standard independently of
``gridwatch.ingest.jt808`` (its own framing, escaping and checksum), so a mistake made the same way
on both sides cannot pass unnoticed."""
from __future__ import annotations

import asyncio
import functools
import operator
import struct
from datetime import datetime, timedelta, timezone

BEIJING = timezone(timedelta(hours=8))


def xor_all(b: bytes) -> int:
    return functools.reduce(operator.xor, b, 0)


def esc(b: bytes) -> bytes:
    out = bytearray()
    for x in b:
        if x == 0x7E:
            out += b"\x7d\x02"
        elif x == 0x7D:
            out += b"\x7d\x01"
        else:
            out.append(x)
    return bytes(out)


def unesc(b: bytes) -> bytes:
    out, i = bytearray(), 0
    while i < len(b):
        if b[i] == 0x7D:
            out.append({1: 0x7D, 2: 0x7E}[b[i + 1]])
            i += 2
        else:
            out.append(b[i])
            i += 1
    return bytes(out)


def phone_bcd(phone: str, v2019: bool) -> bytes:
    n = 10 if v2019 else 6
    return bytes.fromhex(phone.rjust(2 * n, "0"))


def frame(msg_id: int, body: bytes, phone: str, serial: int, v2019: bool = False, package=None,
          corrupt_checksum: bool = False) -> bytes:
    attrs = len(body) | (0x4000 if v2019 else 0) | (0x2000 if package else 0)
    head = struct.pack(">HH", msg_id, attrs) + (b"\x01" if v2019 else b"") + phone_bcd(phone, v2019) + struct.pack(">H", serial)
    if package:
        head += struct.pack(">HH", *package)
    content = head + body
    cs = xor_all(content) ^ (0xFF if corrupt_checksum else 0)
    return b"\x7e" + esc(content + bytes([cs])) + b"\x7e"


def bcd_time(ts_s: float, tz=BEIJING) -> bytes:
    return bytes.fromhex(datetime.fromtimestamp(int(ts_s), tz).strftime("%y%m%d%H%M%S"))


def location_body(ts_s: float, lat: float, lon: float, speed_kmh: float = 0.0, alt: int = 20, direction: int = 90,
                  alarm: int = 0, positioned: bool = True, tz=BEIJING, extra: bytes = b"\x01\x04\x00\x00\x03\xe8") -> bytes:
    status = (0x2 if positioned else 0) | (0x4 if lat < 0 else 0) | (0x8 if lon < 0 else 0) | 0x1
    return struct.pack(">IIIIHHH", alarm, status, round(abs(lat) * 1e6), round(abs(lon) * 1e6), alt,
                       round(speed_kmh * 10), direction) + bcd_time(ts_s, tz) + extra


def batch_body(locs: list[bytes], kind: int = 0) -> bytes:
    return struct.pack(">HB", len(locs), kind) + b"".join(struct.pack(">H", len(x)) + x for x in locs)


def registration_body(plate: str, v2019: bool) -> bytes:
    if v2019:
        return (struct.pack(">HH", 44, 100) + b"MAKER".ljust(11, b"\0") + b"MODEL-X".ljust(30, b"\0")
                + b"T123456".ljust(30, b"\0") + b"\x02" + plate.encode("gbk"))
    return (struct.pack(">HH", 44, 100) + b"MAKER" + b"MODEL-X".ljust(20, b"\0") + b"T123456"
            + b"\x02" + plate.encode("gbk"))


class Terminal:
    """One simulated terminal: sends frames, parses the platform's answers into a queue."""

    def __init__(self, phone: str, v2019: bool = False) -> None:
        self.phone, self.v2019 = phone, v2019
        self.serial = 0
        self.answers: asyncio.Queue = asyncio.Queue()
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self._task: asyncio.Task | None = None
        self.closed_by_server = asyncio.Event()

    async def connect(self, port: int, host: str = "127.0.0.1") -> "Terminal":
        self.reader, self.writer = await asyncio.open_connection(host, port)
        self._task = asyncio.ensure_future(self._read())
        return self

    async def _read(self) -> None:
        buf = b""
        try:
            while True:
                data = await self.reader.read(65536)
                if not data:
                    break
                buf += data
                while True:
                    s = buf.find(b"\x7e")
                    e = buf.find(b"\x7e", s + 1) if s >= 0 else -1
                    if e < 0:
                        break
                    raw = unesc(buf[s + 1:e])
                    buf = buf[e + 1:]
                    assert xor_all(raw[:-1]) == raw[-1], "platform sent a bad checksum"
                    msg_id, attrs = struct.unpack_from(">HH", raw)
                    v2019 = bool(attrs & 0x4000)
                    off = 17 if v2019 else 12
                    phone = raw[5:15].hex() if v2019 else raw[4:10].hex()
                    assert phone.lstrip("0") == self.phone.lstrip("0"), phone
                    assert v2019 == self.v2019, "answer in the wrong edition"
                    body = raw[off:off + (attrs & 0x3FF)]
                    self.answers.put_nowait((msg_id, body))
        except (ConnectionError, OSError):
            pass
        finally:
            self.closed_by_server.set()

    def next_serial(self) -> int:
        self.serial = (self.serial + 1) & 0xFFFF
        return self.serial

    async def send(self, msg_id: int, body: bytes, **kw) -> int:
        serial = self.next_serial()
        self.writer.write(frame(msg_id, body, self.phone, serial, self.v2019, **kw))
        await self.writer.drain()
        return serial

    async def answer(self, timeout: float = 10.0):
        return await asyncio.wait_for(self.answers.get(), timeout)

    async def general_response(self, timeout: float = 10.0) -> tuple[int, int, int]:
        """The next 0x8001: (reply serial, reply id, result)."""
        msg_id, body = await self.answer(timeout)
        assert msg_id == 0x8001, hex(msg_id)
        return struct.unpack(">HHB", body)

    async def register(self, plate: str = "粤B12345") -> str:
        serial = await self.send(0x0100, registration_body(plate, self.v2019))
        msg_id, body = await self.answer()
        assert msg_id == 0x8100, hex(msg_id)
        rs, result = struct.unpack_from(">HB", body)
        assert rs == serial and result == 0, (rs, serial, result)
        return body[3:].decode("gbk")

    async def authenticate(self, code: str) -> int:
        body = code.encode("gbk")
        if self.v2019:
            body = bytes([len(body)]) + body + b"860000000000001" + b"1.0".ljust(20, b"\0")
        serial = await self.send(0x0102, body)
        rs, rid, result = await self.general_response()
        assert (rs, rid) == (serial, 0x0102)
        return result

    async def login(self) -> None:
        assert await self.authenticate(await self.register()) == 0

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            try:
                await self.writer.wait_closed()
            except (ConnectionError, OSError):
                pass
        if self._task is not None:
            self._task.cancel()
