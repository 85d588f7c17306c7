"""The built-in rule kinds: one :class:`Processor` subclass per kind, thin over its kernel.

Sensor kinds (SensorBatch, state per *series* slot): ``threshold``, ``rate_of_change``,
``zscore``, ``flatline``; ``offline`` also reads SensorBatch but keeps state per *device* slot
(``batch.device``). Position kinds (PositionBatch, state per device slot): ``speeding``,
``geofence``, ``dwell``.

Event ``value``/``aux`` per kind (``aux`` is -1 unless listed):

==============  =====================================================  ======================
kind            value                                                  aux
==============  =====================================================  ======================
threshold       the reading                                            -1
rate_of_change  the rate, units per second (signed)                    -1
zscore          the z-score                                            -1
flatline        the reading (the stuck value on raise)                 -1
offline         seconds since last seen (tick raises, reading clears)  -1
speeding        speed, km/h (reported or computed)                     -1
geofence        NaN                                                    zone index: forbidden:
                                                                       the zone entered/left;
                                                                       allowed: on raise the
                                                                       zone last inside (-1 if
                                                                       none), on clear the
                                                                       zone entered
dwell           dwell time, seconds since the anchor was set           -1
==============  =====================================================  ======================

Durations in parameters are seconds; kernels get whole milliseconds.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field, PrivateAttr, model_validator

from gridwatch.records import PositionBatch, SensorBatch

from .fused import FusedRules
from .kernels import position as pk
from .kernels import sensor as sk
from .processor import Events, Params, Processor
from .zones import Polygons

_NO_TS = sk.NO_TS


def _ms(seconds: float) -> int:
    return int(round(seconds * 1000.0))


def _concat(parts: list[Events]) -> Events:
    if len(parts) == 1:
        return parts[0]
    return Events(*(np.concatenate(cols) for cols in zip(*parts)))


# Output buffers start this small (transitions are rare) and grow 4x whenever a call fills them;
# a full-size buffer per call would cost more than many kernels' own work.
_OUT_START = 256


def _run_rows(kernel, rows: tuple[np.ndarray, ...], fixed: tuple, params: tuple) -> Events:
    """Run a row kernel ``kernel(*rows, *fixed, *params, *out)`` over all rows with output buffers
    that start small: when a call fills them, continue with the rows after the last event
    (see the kernels' module docstring) and concatenate."""
    total = rows[0].shape[0]
    out = Events.alloc(min(total, _OUT_START))
    n = kernel(*rows, *fixed, *params, *out)
    if n < len(out) or total == 0:
        return out.head(n)
    parts, start = [], 0
    while True:
        ev = out.head(n)
        ev.row[:] += start
        parts.append(ev)
        if n < len(out):
            return _concat(parts)
        start = int(ev.row[-1]) + 1
        if start >= total:
            return _concat(parts)
        out = Events.alloc(min(total - start, 4 * len(out)))
        n = kernel(*(r[start:] for r in rows), *fixed, *params, *out)


def _run_scan(kernel, head: tuple, state: tuple[np.ndarray, ...], cap: int, oldest: np.ndarray) -> Events:
    """Run a timer kernel ``kernel(*head, *state, oldest, *out)`` that scans slots (``state`` =
    enabled mask then state arrays), resuming after the last event's slot when the output fills
    up; ``oldest[0]`` ends as the minimum the kernel reports over all parts."""
    out = Events.alloc(min(cap, _OUT_START))
    n = kernel(*head, *state, oldest, *out)
    if n < len(out) or cap == 0:
        return out.head(n)
    parts, start, lo = [], 0, int(oldest[0])
    while True:
        ev = out.head(n)
        ev.slot[:] += start
        parts.append(ev)
        if n == len(out):
            start = int(ev.slot[-1]) + 1
        if n < len(out) or start >= cap:
            oldest[0] = lo
            return _concat(parts)
        out = Events.alloc(min(cap - start, 4 * len(out)))
        n = kernel(*head, *(a[start:] for a in state), oldest, *out)
        lo = min(lo, int(oldest[0]))


class _SensorProcessor(Processor):
    """A series rule defined by one per-reading step (see :mod:`.kernels.sensor`), run over batches
    by the kernels :mod:`gridwatch.streams.fused` generates: alone (the rule's state then lives in
    a one-rule set of records), or in one pass with the other series rules of a pipeline. The step
    takes the state arrays in ``_state_arrays`` order (the attributes of those names), then
    ``step_params()``."""

    input = "sensor"
    step: Any  # per-reading step: (slot, ts, value, *state arrays, *step_params()) -> (kind, value), in place

    def step_params(self) -> tuple:
        """The step's parameters (bool, int or float each), in its order."""
        raise NotImplementedError

    def process(self, batch: SensorBatch) -> Events:
        home = self.home if self.home is not None else FusedRules([self])
        return home.process(batch, only=self)[self]


# --- threshold ---------------------------------------------------------------------------

class ThresholdParams(Params):
    above: float | None = Field(None, description="Raise when the value is >= this level.")
    below: float | None = Field(None, description="Raise when the value is <= this level.")
    clear_at: float | None = Field(
        None, description="Clear level for a one-sided threshold (hysteresis): with `above`, clear when the "
        "value drops below it (must be <= above); with `below`, clear when it rises above it (must be >= below). "
        "Defaults to the raise level, i.e. no hysteresis. Not allowed when both sides are set.")
    min_duration_s: float = Field(
        0.0, ge=0, description="The raise condition must hold continuously this long (event time) before it "
        "raises; 0 raises on the first reading.")

    @model_validator(mode="after")
    def _check(self) -> "ThresholdParams":
        if self.above is None and self.below is None:
            raise ValueError("threshold needs `above` or `below` (or both)")
        if self.above is not None and self.below is not None:
            if self.below >= self.above:
                raise ValueError("`below` must be less than `above`")
            if self.clear_at is not None:
                raise ValueError("`clear_at` applies to a one-sided threshold only")
        if self.clear_at is not None:
            if self.above is not None and self.clear_at > self.above:
                raise ValueError("`clear_at` must be <= `above`")
            if self.below is not None and self.clear_at < self.below:
                raise ValueError("`clear_at` must be >= `below`")
        return self


class Threshold(_SensorProcessor):
    """Level threshold with hysteresis and minimum duration."""

    kind = "threshold"
    step = staticmethod(sk.threshold_step)
    Params = ThresholdParams

    def _alloc_state(self, n: int) -> None:
        self.active = np.zeros(n, np.int8)
        self.since = np.full(n, _NO_TS, np.int64)

    def _state_arrays(self) -> dict[str, np.ndarray]:
        return {"active": self.active, "since": self.since}

    def step_params(self) -> tuple:
        p = self.params
        above = np.nan if p.above is None else p.above
        below = np.nan if p.below is None else p.below
        clear_above = above if p.clear_at is None or p.above is None else p.clear_at
        clear_below = below if p.clear_at is None or p.below is None else p.clear_at
        return (p.above is not None, float(above), float(clear_above), p.below is not None, float(below),
                float(clear_below), _ms(p.min_duration_s))


# --- rate of change ----------------------------------------------------------------------

class RateOfChangeParams(Params):
    max_per_s: float = Field(gt=0, description="Raise when the rate between successive readings exceeds this, "
                             "in value units per second.")
    direction: Literal["up", "down", "both"] = Field(
        "both", description="Which changes count: rising only, falling only, or both (absolute rate).")
    clear_ratio: float = Field(
        1.0, gt=0, le=1, description="Clear when the rate falls below max_per_s * clear_ratio (1 = no hysteresis).")


class RateOfChange(_SensorProcessor):
    """Too fast a change between successive readings; out-of-order readings are ignored."""

    kind = "rate_of_change"
    step = staticmethod(sk.rate_of_change_step)
    Params = RateOfChangeParams

    def _alloc_state(self, n: int) -> None:
        self.last_ts = np.full(n, _NO_TS, np.int64)
        self.last_value = np.zeros(n, np.float64)
        self.active = np.zeros(n, np.int8)

    def _state_arrays(self) -> dict[str, np.ndarray]:
        return {"last_ts": self.last_ts, "last_value": self.last_value, "active": self.active}

    def step_params(self) -> tuple:
        p = self.params
        return float(p.max_per_s), float(p.max_per_s * p.clear_ratio), {"up": 1, "down": -1, "both": 0}[p.direction]


# --- z-score -----------------------------------------------------------------------------

class ZScoreParams(Params):
    alpha: float = Field(0.05, gt=0, lt=1, description="EWMA smoothing factor for the baseline mean and variance.")
    warmup: int = Field(30, ge=1, le=2**31 - 1,
                        description="Readings that only build the baseline before any scoring.")
    z_raise: float = Field(4.0, gt=0, description="Raise when |z| >= this.")
    z_clear: float = Field(2.0, gt=0, description="Clear when |z| < this (must be <= z_raise).")
    min_std: float = Field(1e-6, gt=0, description="Floor for the baseline standard deviation, in the "
                           "series' unit, so a near-constant series does not produce huge z-scores.")
    freeze_baseline: bool = Field(
        True, description="Readings with |z| >= z_raise do not update the baseline, so a sustained "
        "excursion stays raised instead of being absorbed (a permanent level shift then stays raised).")

    @model_validator(mode="after")
    def _check(self) -> "ZScoreParams":
        if self.z_clear > self.z_raise:
            raise ValueError("`z_clear` must be <= `z_raise`")
        return self


class ZScore(_SensorProcessor):
    """Anomaly against an EWMA baseline."""

    kind = "zscore"
    step = staticmethod(sk.zscore_step)
    Params = ZScoreParams

    def _alloc_state(self, n: int) -> None:
        self.mean = np.zeros(n, np.float64)
        self.var = np.zeros(n, np.float64)
        self.count = np.zeros(n, np.int32)
        self.active = np.zeros(n, np.int8)

    def _state_arrays(self) -> dict[str, np.ndarray]:
        return {"mean": self.mean, "var": self.var, "count": self.count, "active": self.active}

    def step_params(self) -> tuple:
        p = self.params
        return float(p.alpha), int(p.warmup), float(p.z_raise), float(p.z_clear), float(p.min_std), bool(p.freeze_baseline)


# --- flatline ----------------------------------------------------------------------------

class FlatlineParams(Params):
    epsilon: float = Field(0.0, ge=0, description="Readings within this of the run's first value count as "
                           "unchanged.")
    duration_s: float = Field(gt=0, description="Raise when the value has stayed unchanged this long (event time).")


class Flatline(_SensorProcessor):
    """Stuck sensor; clears on the first change."""

    kind = "flatline"
    step = staticmethod(sk.flatline_step)
    Params = FlatlineParams

    def _alloc_state(self, n: int) -> None:
        self.run_value = np.zeros(n, np.float64)
        self.run_ts = np.full(n, _NO_TS, np.int64)
        self.active = np.zeros(n, np.int8)

    def _state_arrays(self) -> dict[str, np.ndarray]:
        return {"run_value": self.run_value, "run_ts": self.run_ts, "active": self.active}

    def step_params(self) -> tuple:
        return float(self.params.epsilon), _ms(self.params.duration_s)


# --- offline -----------------------------------------------------------------------------

class OfflineParams(Params):
    timeout_s: float = Field(gt=0, description="A seen device silent for longer than this is offline "
                             "(checked by tick(now)).")


class Offline(Processor):
    """Device silence, per *device* slot: tick() raises, the next reading clears.

    A tick scans every slot, so the processor keeps a lower bound of the last-seen time of
    the devices that could still go offline (seen and online): while ``now - bound`` is within
    the timeout no device can be overdue and the tick skips its scan (same events, no work).
    Each scan recomputes the bound; each batch lowers it to the batch's earliest timestamp.
    """

    kind = "offline"
    input = "sensor"
    keyed_by = "device"
    Params = OfflineParams

    def _alloc_state(self, n: int) -> None:
        self.last_seen = np.full(n, _NO_TS, np.int64)
        self.offline = np.zeros(n, np.int8)

    def _state_arrays(self) -> dict[str, np.ndarray]:
        return {"last_seen": self.last_seen, "offline": self.offline}

    def _bind(self) -> None:
        super()._bind()
        self._oldest: int | None = None  # the bound; None = unknown (state replaced): scan

    def process(self, batch: SensorBatch) -> Events:
        if self._oldest is not None and len(batch):
            self._oldest = min(self._oldest, int(batch.ts.min()))
        return _run_rows(sk.offline_seen, (batch.device, batch.ts), (self.enabled, *self._state), ())

    def tick(self, now_ms: int) -> Events:
        timeout = _ms(self.params.timeout_s)
        if self._oldest is not None and now_ms - self._oldest <= timeout:
            return Events.empty()
        oldest = np.empty(1, np.int64)
        ev = _run_scan(sk.offline_scan, (np.int64(now_ms), timeout), (self.enabled, *self._state), self.capacity,
                       oldest)
        self._oldest = int(oldest[0])
        return ev


# --- speeding ----------------------------------------------------------------------------

class SpeedingParams(Params):
    limit_kmh: float = Field(gt=0, description="Raise when the speed exceeds this, km/h.")
    min_duration_s: float = Field(0.0, ge=0, description="The speed must stay over the limit this long "
                                  "(event time) before it raises.")
    clear_ratio: float = Field(1.0, gt=0, le=1, description="Clear when the speed is <= limit_kmh * clear_ratio.")


class Speeding(Processor):
    """Over-speed, from reported speed or, when not reported, from successive fixes."""

    kind = "speeding"
    input = "position"
    Params = SpeedingParams

    def _alloc_state(self, n: int) -> None:
        self.last_ts = np.full(n, _NO_TS, np.int64)
        self.last_lat = np.zeros(n, np.float64)
        self.last_lon = np.zeros(n, np.float64)
        self.since = np.full(n, _NO_TS, np.int64)
        self.active = np.zeros(n, np.int8)

    def _state_arrays(self) -> dict[str, np.ndarray]:
        return {"last_ts": self.last_ts, "last_lat": self.last_lat, "last_lon": self.last_lon,
                "since": self.since, "active": self.active}

    def process(self, batch: PositionBatch) -> Events:
        p = self.params
        out = Events.alloc(len(batch))
        n = pk.speeding(batch.device, batch.ts, batch.lat, batch.lon, batch.speed_kmh, self.enabled,
                        *self._state_arrays().values(),
                        p.limit_kmh, p.limit_kmh * p.clear_ratio, _ms(p.min_duration_s), *out)
        return out.head(n)


# --- zones (geofence, dwell) -------------------------------------------------------------

ZonesSource = str | dict[str, Any]


def _load_zones(src: ZonesSource | None) -> Polygons:
    if src is None:
        return Polygons.empty()
    return Polygons.from_geojson(Path(src) if isinstance(src, str) else src)


class GeofenceParams(Params):
    zones: ZonesSource = Field(description="The zones: a GeoJSON FeatureCollection (Polygon/MultiPolygon "
                               "features) inline, or the path of a GeoJSON file. Event aux is a feature index.")
    mode: Literal["forbidden", "allowed"] = Field(
        description="forbidden: being inside a zone raises, leaving it clears (one event per zone). "
        "allowed: a corridor; being outside every zone raises, re-entering any clears.")
    _polygons: Polygons = PrivateAttr()

    @model_validator(mode="after")
    def _load(self) -> "GeofenceParams":
        self._polygons = _load_zones(self.zones)
        if not len(self._polygons):
            raise ValueError("geofence needs at least one zone")
        return self

    @property
    def polygons(self) -> Polygons:
        return self._polygons


class Geofence(Processor):
    """Forbidden zones or an allowed corridor. State per (device, zone) for forbidden zones."""

    kind = "geofence"
    input = "position"
    Params = GeofenceParams

    def _alloc_state(self, n: int) -> None:
        self.last_ts = np.full(n, _NO_TS, np.int64)
        if self.params.mode == "forbidden":
            self.inside = np.zeros((n, len(self.params.polygons)), np.int8)
        else:
            self.outside = np.zeros(n, np.int8)
            self.last_zone = np.full(n, -1, np.int32)

    def _state_arrays(self) -> dict[str, np.ndarray]:
        if self.params.mode == "forbidden":
            return {"last_ts": self.last_ts, "inside": self.inside}
        return {"last_ts": self.last_ts, "outside": self.outside, "last_zone": self.last_zone}

    def process(self, batch: PositionBatch) -> Events:
        rows = (batch.device, batch.ts, batch.lat, batch.lon, self.enabled)
        zones = self.params.polygons.arrays
        if self.params.mode == "allowed":
            out = Events.alloc(len(batch))
            n = pk.geofence_allowed(*rows, self.last_ts, self.outside, self.last_zone, *zones, *out)
            return out.head(n)
        room = len(batch) + len(self.params.polygons)
        parts, start = [], 0
        while True:
            out = Events.alloc(room)
            n, start = pk.geofence_forbidden(start, *rows, self.last_ts, self.inside, *zones, *out)
            parts.append(out.head(n))
            if start >= len(batch):
                return _concat(parts)


class DwellParams(Params):
    radius_m: float = Field(gt=0, description="A fix farther than this from the anchor moves the anchor there.")
    duration_s: float = Field(gt=0, description="Raise when the device has stayed within radius_m of the anchor "
                              "for longer than this (event time).")
    allowed: ZonesSource | None = Field(
        None, description="Zones where dwelling is fine (e.g. depots): GeoJSON FeatureCollection inline or a file "
        "path. An anchor inside any of them never raises.")
    _polygons: Polygons = PrivateAttr()

    @model_validator(mode="after")
    def _load(self) -> "DwellParams":
        self._polygons = _load_zones(self.allowed)
        return self

    @property
    def polygons(self) -> Polygons:
        return self._polygons


class Dwell(Processor):
    """A device lingering in one place outside the allowed zones (e.g. a hazmat truck parked off-depot)."""

    kind = "dwell"
    input = "position"
    Params = DwellParams

    def _alloc_state(self, n: int) -> None:
        self.last_ts = np.full(n, _NO_TS, np.int64)
        self.anchor_lat = np.zeros(n, np.float64)
        self.anchor_lon = np.zeros(n, np.float64)
        self.anchor_ts = np.full(n, _NO_TS, np.int64)
        self.anchor_allowed = np.zeros(n, np.bool_)
        self.active = np.zeros(n, np.int8)

    def _state_arrays(self) -> dict[str, np.ndarray]:
        return {"last_ts": self.last_ts, "anchor_lat": self.anchor_lat, "anchor_lon": self.anchor_lon,
                "anchor_ts": self.anchor_ts, "anchor_allowed": self.anchor_allowed, "active": self.active}

    def process(self, batch: PositionBatch) -> Events:
        p = self.params
        out = Events.alloc(len(batch))
        n = pk.dwell(batch.device, batch.ts, batch.lat, batch.lon, self.enabled, *self._state_arrays().values(),
                     p.radius_m, _ms(p.duration_s), *p.polygons.arrays, *out)
        return out.head(n)
