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
    16      ...   device ids: uint32 byte length + the ids in UTF-8, joined by NUL
            ...   device classes: uint32 byte length + "vendor NUL kind" pairs, joined by NUL
            ...   class of each device: uint16 x n_devices (index into the class pairs)
            ...   metric names: uint32 byte length + ASCII names joined by NUL   [readings only]
            ...   columns, each n_rows long, in this order, no padding:
                  readings : ts int64 | value float64 | device uint32 | metric uint16
                  positions: ts int64 | lat float64 | lon float64 | speed_kmh float64 | alt_m float64 | device uint32

``device`` indexes the message's device ids and ``metric`` its metric names, so the layout
needs no shared registry (ids cannot hold NUL: MQTT topic names never do) ; metric ids are local to the message, names are the contract. Tables are
single joined strings so a reader splits them with one call, whatever the number of devices. A
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
    ids: list[str]  # device ids
    classes: list[tuple[str, str]]  # distinct (vendor, kind) pairs
    device_class: np.ndarray  # index into classes, per device
    metrics: list[str]
    cols: dict[str, np.ndarray]

    def __len__(self) -> int:
        return int(self.cols["ts"].shape[0])

    def device(self, i: int) -> DeviceInfo:
        return DeviceInfo(self.ids[i], *self.classes[int(self.device_class[i])])

    @property
    def devices(self) -> list[DeviceInfo]:
        return [self.device(i) for i in range(len(self.ids))]


def _blob(strings) -> bytes:
    b = "\0".join(strings).encode("utf-8")
    return struct.pack("<I", len(b)) + b


def _encode(rtype: int, devices: list[DeviceInfo], metrics: list[str], cols: list[np.ndarray]) -> bytes:
    n = int(cols[0].shape[0])
    classes: dict[tuple[str, str], int] = {}
    cls = np.fromiter((classes.setdefault((d.vendor, d.kind), len(classes)) for d in devices), np.uint16, len(devices))
    if len(classes) > 0xFFFF:
        raise WireError("more than 65535 (vendor, kind) pairs in one message")
    parts = [_HEAD.pack(MAGIC, VERSION, rtype, len(devices), n, len(metrics), 0),
             _blob(d.id for d in devices), _blob(x for pair in classes for x in pair), cls.astype("<u2").tobytes()]
    if rtype == READINGS:
        parts.append(_blob(metrics))
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

    def blob() -> list[str]:
        nonlocal pos
        (ln,) = struct.unpack_from("<I", mv, pos)
        if pos + 4 + ln > len(mv):
            raise WireError("truncated table")
        text = bytes(mv[pos + 4:pos + 4 + ln]).decode("utf-8")
        pos += 4 + ln
        return text.split("\0") if text else []

    try:
        ids = blob()
        pairs = blob()
        cls = np.frombuffer(mv, "<u2", ndev, pos).astype(np.int64)
        pos += 2 * ndev
        metrics = blob() if rtype == READINGS else []
    except (struct.error, ValueError, UnicodeDecodeError) as e:
        raise WireError(f"truncated or corrupt tables: {e}") from None
    if len(ids) != ndev or len(metrics) != nmet or len(pairs) % 2 or (ndev and int(cls.max()) * 2 + 1 >= len(pairs)):
        raise WireError("device/metric tables disagree with the header")
    classes = [(pairs[i], pairs[i + 1]) for i in range(0, len(pairs), 2)]
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
    return WireBatch(rtype, ids, classes, cls, metrics, cols)


__all__ = ["DeviceInfo", "WireBatch", "WireError", "encode_readings", "encode_positions", "decode",
           "READINGS", "POSITIONS", "VERSION"]
