"""Canonical records, decided once and used everywhere.

Hot paths carry *columnar batches* (numpy arrays, one element per reading); only warnings and
dead letters, which are rare, are Python objects.

Time is always int64 epoch **milliseconds** (UTC) inside gridwatch; codecs convert on the way in.
Values are float64 in canonical units (see ``gridwatch.hw.profiles``).
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, asdict
from typing import Any

import numpy as np

NO_SLOT = -1


@dataclass(slots=True)
class SensorBatch:
    """Scalar sensor readings: one row per (device, metric, ts, value).

    ``series`` is the slot of the (device, metric) pair, ``device`` the slot of the device;
    both index the per-slot state arrays that processors keep.
    """

    series: np.ndarray  # int32
    device: np.ndarray  # int32
    ts: np.ndarray  # int64, epoch ms
    value: np.ndarray  # float64, canonical unit

    def __len__(self) -> int:
        return int(self.ts.shape[0])

    @classmethod
    def empty(cls) -> "SensorBatch":
        return cls(np.empty(0, np.int32), np.empty(0, np.int32), np.empty(0, np.int64), np.empty(0, np.float64))

    def take(self, idx: np.ndarray) -> "SensorBatch":
        return SensorBatch(self.series[idx], self.device[idx], self.ts[idx], self.value[idx])

    @classmethod
    def concat(cls, parts: list["SensorBatch"]) -> "SensorBatch":
        if not parts:
            return cls.empty()
        return cls(*(np.concatenate([getattr(p, f) for p in parts]) for f in ("series", "device", "ts", "value")))


@dataclass(slots=True)
class PositionBatch:
    """Position fixes from GPS trackers and drones: one row per fix.

    ``speed_kmh`` and ``alt_m`` are NaN when the device did not report them.
    """

    device: np.ndarray  # int32 device slot
    ts: np.ndarray  # int64 epoch ms
    lat: np.ndarray  # float64 degrees (WGS84)
    lon: np.ndarray  # float64 degrees (WGS84)
    speed_kmh: np.ndarray  # float64, NaN = not reported
    alt_m: np.ndarray  # float64, NaN = not reported

    def __len__(self) -> int:
        return int(self.ts.shape[0])

    @classmethod
    def empty(cls) -> "PositionBatch":
        z = np.empty(0, np.float64)
        return cls(np.empty(0, np.int32), np.empty(0, np.int64), z, z.copy(), z.copy(), z.copy())

    def take(self, idx: np.ndarray) -> "PositionBatch":
        return PositionBatch(*(getattr(self, f)[idx] for f in ("device", "ts", "lat", "lon", "speed_kmh", "alt_m")))

    @classmethod
    def concat(cls, parts: list["PositionBatch"]) -> "PositionBatch":
        if not parts:
            return cls.empty()
        fields = ("device", "ts", "lat", "lon", "speed_kmh", "alt_m")
        return cls(*(np.concatenate([getattr(p, f) for p in parts]) for f in fields))


SEVERITIES = ("info", "minor", "major", "critical")


@dataclass(slots=True)
class RegionPath:
    """Where a warning is dispatched: city / county / town / grid cell."""

    city: str = ""
    county: str = ""
    town: str = ""
    grid: str = ""

    def as_path(self) -> str:
        return "/".join(p for p in (self.city, self.county, self.town, self.grid) if p)


def warning_id(source: str, rule: str, aux: int, start_ts: int) -> str:
    """Deterministic id: the same cause (source, rule, zone, start time) always gives the same id,
    so replays and rebalances never duplicate a warning."""
    h = hashlib.blake2b(f"{source}\x1f{rule}\x1f{aux}\x1f{start_ts}".encode(), digest_size=10)
    return "w-" + h.hexdigest()


@dataclass(slots=True)
class Warning:
    """A warning lead, dispatched to a grid cell. ``state`` is active or cleared."""

    id: str
    rule: str
    kind: str
    severity: str
    source: str
    region: RegionPath
    state: str
    start_ts: int
    last_ts: int
    cleared_ts: int | None
    value: float
    message: str = ""
    zone: str | None = None
    evidence: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["region"] = asdict(self.region)
        d["region"]["path"] = self.region.as_path()
        if d["value"] != d["value"]:  # NaN is not JSON
            d["value"] = None
        return d


@dataclass(slots=True)
class DeadLetter:
    """A rejected input: why, where it came from, and (truncated) what it was."""

    source: str  # e.g. the MQTT topic or file
    reason: str  # a short code, e.g. "malformed_json", "nan_value"
    detail: str  # a human explanation naming the offending field and value
    payload: bytes  # truncated to DEADLETTER_PAYLOAD_MAX bytes
    received_ms: int
    count: int = 1  # readings of this message rejected for this reason (detail explains the first)


DEADLETTER_PAYLOAD_MAX = 1024
