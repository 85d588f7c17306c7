"""Wire format of normalised records on Kafka: compact columnar batches, versioned.

A Kafka message on the readings topic carries the readings (or position fixes) of one or more
devices that all hash to the same partition (see :mod:`gridwatch.ingest.kafka_forward`). The
value is a little-endian binary layout, schema version 1::

    offset  size  field
    0       2     magic  b"GW"
    2       1     version (1)
    3       1     record type: 1 = readings (SensorBatch), 2 = positions (PositionBatch)
    4       4     n_devices   (uint32)
    8       4     n_rows      (uint32)
    12      2     n_metrics   (uint16; 0 for positions)
    14      2     reserved (0)
    16      ...   device table: n_devices x (id, vendor, kind), each a uint16 byte length + UTF-8
            ...   metric table: n_metrics x (uint8 length + ASCII name)   [readings only]
            ...   columns, each n_rows long, in this order, no padding:
                  readings : ts int64 | value float64 | device uint32 | metric uint16
                  positions: ts int64 | lat float64 | lon float64 | speed_kmh float64 | alt_m float64 | device uint32

``device`` indexes the message's device table and ``metric`` its metric table, so the layout
needs no shared registry (metric ids are local to the message; names are the contract). A
reading costs 22 bytes + its share of the tables; Kafka-level compression (gzip/lz4/zstd on
the producer) squeezes the repetitive ts/device columns further. Decoding is ``np.frombuffer``
per column (zero-copy views). A reader rejects a magic/version it does not know
(:class:`WireError`); a later version may add columns after the existing ones, tables after the
existing ones, or use the reserved bytes, and bumps the version.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass

import numpy as np

MAGIC = b"GW"
VERSION = 1
READINGS = 1
POSITIONS = 2
_HEAD = struct.Struct("<2sBBIIHH")
_READING_COLS = (("ts", np.dtype("<i8")), ("value", np.dtype("<f8")), ("device", np.dtype("<u4")),
                 ("metric", np.dtype("<u2")))
_POSITION_COLS = (("ts", np.dtype("<i8")), ("lat", np.dtype("<f8")), ("lon", np.dtype("<f8")),
                  ("speed_kmh", np.dtype("<f8")), ("alt_m", np.dtype("<f8")), ("device", np.dtype("<u4")))


class WireError(ValueError):
    """A message that is not a gridwatch columnar batch of a known version."""


@dataclass(slots=True)
class DeviceInfo:
    id: str
    vendor: str
    kind: str


@dataclass(slots=True)
class WireBatch:
    """A decoded message: ``devices`` (the table), ``metrics`` (names, readings only) and the
    columns (``device`` indexes ``devices``, ``metric`` indexes ``metrics``)."""

    type: int
    devices: list[DeviceInfo]
    metrics: list[str]
    cols: dict[str, np.ndarray]

    def __len__(self) -> int:
        return int(self.cols["ts"].shape[0])


def _table(strings) -> bytes:
    out = bytearray()
    for s in strings:
        b = s.encode("utf-8")
        if len(b) > 0xFFFF:
            raise WireError(f"string of {len(b)} bytes is too long for the device table")
        out += struct.pack("<H", len(b)) + b
    return bytes(out)


def _encode(rtype: int, devices: list[DeviceInfo], metrics: list[str], cols: list[np.ndarray]) -> bytes:
    n = int(cols[0].shape[0])
    parts = [_HEAD.pack(MAGIC, VERSION, rtype, len(devices), n, len(metrics), 0),
             _table(s for d in devices for s in (d.id, d.vendor, d.kind))]
    for m in metrics:
        b = m.encode("ascii")
        parts.append(bytes((len(b),)) + b)
    parts.extend(c.tobytes() for c in cols)
    return b"".join(parts)


def encode_readings(devices: list[DeviceInfo], metrics: list[str], device_idx: np.ndarray, metric_idx: np.ndarray,
                    ts: np.ndarray, value: np.ndarray) -> bytes:
    """One readings message; ``device_idx``/``metric_idx`` index ``devices``/``metrics``."""
    if len(metrics) > 0xFFFF:
        raise WireError("more than 65535 metrics in one message")
    return _encode(READINGS, devices, metrics, [
        np.ascontiguousarray(ts, "<i8"), np.ascontiguousarray(value, "<f8"),
        np.ascontiguousarray(device_idx, "<u4"), np.ascontiguousarray(metric_idx, "<u2")])


def encode_positions(devices: list[DeviceInfo], device_idx: np.ndarray, ts: np.ndarray, lat: np.ndarray,
                     lon: np.ndarray, speed_kmh: np.ndarray, alt_m: np.ndarray) -> bytes:
    return _encode(POSITIONS, devices, [], [
        np.ascontiguousarray(ts, "<i8"), np.ascontiguousarray(lat, "<f8"), np.ascontiguousarray(lon, "<f8"),
        np.ascontiguousarray(speed_kmh, "<f8"), np.ascontiguousarray(alt_m, "<f8"),
        np.ascontiguousarray(device_idx, "<u4")])


def decode(buf: bytes | memoryview) -> WireBatch:
    mv = memoryview(buf)
    if len(mv) < _HEAD.size:
        raise WireError(f"message of {len(mv)} bytes is shorter than the header")
    magic, ver, rtype, ndev, n, nmet, _ = _HEAD.unpack_from(mv, 0)
    if magic != MAGIC:
        raise WireError(f"bad magic {bytes(magic)!r}")
    if ver != VERSION:
        raise WireError(f"unsupported schema version {ver} (this reader knows {VERSION})")
    if rtype not in (READINGS, POSITIONS):
        raise WireError(f"unknown record type {rtype}")
    pos = _HEAD.size
    strs = []
    try:
        for _ in range(3 * ndev):
            (ln,) = struct.unpack_from("<H", mv, pos)
            pos += 2
            strs.append(bytes(mv[pos:pos + ln]).decode("utf-8"))
            pos += ln
        metrics = []
        for _ in range(nmet):
            ln = mv[pos]
            metrics.append(bytes(mv[pos + 1:pos + 1 + ln]).decode("ascii"))
            pos += 1 + ln
    except (struct.error, IndexError, UnicodeDecodeError) as e:
        raise WireError(f"truncated or corrupt tables: {e}") from None
    devices = [DeviceInfo(strs[i], strs[i + 1], strs[i + 2]) for i in range(0, len(strs), 3)]
    spec = _READING_COLS if rtype == READINGS else _POSITION_COLS
    need = pos + n * sum(dt.itemsize for _, dt in spec)
    if len(mv) != need:
        raise WireError(f"message is {len(mv)} bytes, its header says {need}")
    cols = {}
    for name, dt in spec:
        cols[name] = np.frombuffer(mv, dt, n, pos)
        pos += n * dt.itemsize
    if n and (int(cols["device"].max()) >= ndev or (rtype == READINGS and int(cols["metric"].max()) >= nmet)):
        raise WireError("a row references a device or metric outside the message's tables")
    return WireBatch(rtype, devices, metrics, cols)


__all__ = ["DeviceInfo", "WireBatch", "WireError", "encode_readings", "encode_positions", "decode",
           "READINGS", "POSITIONS", "VERSION"]
