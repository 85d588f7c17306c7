"""Plain-Python reference implementations of every kernel (tests and benchmarks only).

Written for obviousness: one object per rule, a dict of small per-slot state objects, one
loop over readings. Each ``process`` takes plain lists and returns the transitions as a list
of ``(row, slot, kind, ts, value, aux)`` tuples, the same rows the Numba kernels emit.
``enabled`` is a set of slots; ``ts`` are epoch ms and durations are given in ms.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

RAISE, CLEAR = 1, -1
Event = tuple[int, int, int, int, float, int]


@dataclass
class _Threshold:
    active: bool = False
    since: int | None = None


class Threshold:
    def __init__(self, enabled, above=None, below=None, clear_above=None, clear_below=None, min_dur_ms=0):
        self.enabled, self.above, self.below, self.min_dur_ms = enabled, above, below, min_dur_ms
        self.clear_above = above if clear_above is None else clear_above
        self.clear_below = below if clear_below is None else clear_below
        self.state: dict[int, _Threshold] = {}

    def _high(self, v):
        return (self.above is not None and v >= self.above) or (self.below is not None and v <= self.below)

    def _normal(self, v):
        return ((self.above is None or v < self.clear_above)
                and (self.below is None or v > self.clear_below))

    def process(self, slots, ts, values) -> list[Event]:
        out = []
        for row, (s, t, v) in enumerate(zip(slots, ts, values)):
            if s not in self.enabled:
                continue
            st = self.state.setdefault(s, _Threshold())
            if st.active:
                if self._normal(v):
                    st.active, st.since = False, None
                    out.append((row, s, CLEAR, t, v, -1))
            elif self._high(v):
                if st.since is None:
                    st.since = t
                if t - st.since >= self.min_dur_ms:
                    st.active = True
                    out.append((row, s, RAISE, t, v, -1))
            else:
                st.since = None
        return out


@dataclass
class _Prev:
    ts: int
    value: float
    active: bool = False


class RateOfChange:
    def __init__(self, enabled, max_per_s, clear_per_s, direction="both"):
        self.enabled, self.max_per_s, self.clear_per_s, self.direction = enabled, max_per_s, clear_per_s, direction
        self.state: dict[int, _Prev] = {}

    def process(self, slots, ts, values) -> list[Event]:
        out = []
        for row, (s, t, v) in enumerate(zip(slots, ts, values)):
            if s not in self.enabled:
                continue
            prev = self.state.get(s)
            if prev is None:
                self.state[s] = _Prev(t, v)
                continue
            if t <= prev.ts:
                continue
            rate = (v - prev.value) * 1000.0 / (t - prev.ts)
            r = {"up": rate, "down": -rate, "both": abs(rate)}[self.direction]
            if prev.active and r < self.clear_per_s:
                prev.active = False
                out.append((row, s, CLEAR, t, rate, -1))
            elif not prev.active and r > self.max_per_s:
                prev.active = True
                out.append((row, s, RAISE, t, rate, -1))
            prev.ts, prev.value = t, v
        return out


@dataclass
class _Ewma:
    mean: float
    var: float = 0.0
    n: int = 1
    active: bool = False


class ZScore:
    def __init__(self, enabled, alpha, warmup, z_raise, z_clear, min_std, freeze=True):
        self.enabled, self.alpha, self.warmup = enabled, alpha, warmup
        self.z_raise, self.z_clear, self.min_std, self.freeze = z_raise, z_clear, min_std, freeze
        self.state: dict[int, _Ewma] = {}

    def process(self, slots, ts, values) -> list[Event]:
        out = []
        for row, (s, t, v) in enumerate(zip(slots, ts, values)):
            if s not in self.enabled:
                continue
            st = self.state.get(s)
            if st is None:
                self.state[s] = _Ewma(mean=v)
                continue
            anomalous = False
            if st.n < self.warmup:
                st.n += 1
            else:
                z = (v - st.mean) / max(math.sqrt(st.var), self.min_std)
                anomalous = abs(z) >= self.z_raise
                if st.active and abs(z) < self.z_clear:
                    st.active = False
                    out.append((row, s, CLEAR, t, z, -1))
                elif not st.active and anomalous:
                    st.active = True
                    out.append((row, s, RAISE, t, z, -1))
            if not (self.freeze and anomalous):
                d = v - st.mean
                st.mean = st.mean + self.alpha * d
                st.var = (1.0 - self.alpha) * (st.var + self.alpha * d * d)
        return out


@dataclass
class _Run:
    value: float
    ts: int
    active: bool = False


class Flatline:
    def __init__(self, enabled, epsilon, dur_ms):
        self.enabled, self.epsilon, self.dur_ms = enabled, epsilon, dur_ms
        self.state: dict[int, _Run] = {}

    def process(self, slots, ts, values) -> list[Event]:
        out = []
        for row, (s, t, v) in enumerate(zip(slots, ts, values)):
            if s not in self.enabled:
                continue
            run = self.state.get(s)
            if run is None:
                self.state[s] = _Run(v, t)
            elif abs(v - run.value) <= self.epsilon:
                if not run.active and t - run.ts >= self.dur_ms:
                    run.active = True
                    out.append((row, s, RAISE, t, v, -1))
            else:
                if run.active:
                    out.append((row, s, CLEAR, t, v, -1))
                self.state[s] = _Run(v, t)
        return out


class Offline:
    def __init__(self, enabled, timeout_ms):
        self.enabled, self.timeout_ms = enabled, timeout_ms
        self.last_seen: dict[int, int] = {}
        self.offline: set[int] = set()

    def process(self, devices, ts) -> list[Event]:
        out = []
        for row, (d, t) in enumerate(zip(devices, ts)):
            if d not in self.enabled:
                continue
            if d in self.offline:
                self.offline.discard(d)
                out.append((row, d, CLEAR, t, (t - self.last_seen[d]) / 1000.0, -1))
            self.last_seen[d] = max(t, self.last_seen.get(d, t))
        return out

    def tick(self, now_ms) -> list[Event]:
        out = []
        for d in sorted(self.last_seen):
            if d in self.enabled and d not in self.offline and now_ms - self.last_seen[d] > self.timeout_ms:
                self.offline.add(d)
                out.append((-1, d, RAISE, now_ms, (now_ms - self.last_seen[d]) / 1000.0, -1))
        return out


# --- position ---------------------------------------------------------------------------

def haversine_m(lat1, lon1, lat2, lon2):
    p1, p2 = math.radians(lat1), math.radians(lat2)
    a = (math.sin((p2 - p1) / 2) ** 2
         + math.cos(p1) * math.cos(p2) * math.sin(math.radians(lon2 - lon1) / 2) ** 2)
    return 2 * 6371008.8 * math.asin(math.sqrt(min(a, 1.0)))


def point_in_rings(lon, lat, rings) -> bool:
    """Even-odd rule: count the rings' edges a ray to the east of the point crosses."""
    crossings = 0
    for ring in rings:
        for (x1, y1), (x2, y2) in zip(ring, ring[1:] + ring[:1]):
            if (y1 > lat) != (y2 > lat):
                x_at = (x1 - x2) * (lat - y2) / (y1 - y2) + x2
                if lon < x_at:
                    crossings += 1
    return crossings % 2 == 1


def locate(lon, lat, zones) -> int:
    """``zones``: a list of zones, each a list of rings of (lon, lat)."""
    for z, rings in enumerate(zones):
        if point_in_rings(lon, lat, rings):
            return z
    return -1


@dataclass
class _Fix:
    ts: int
    lat: float
    lon: float


class Speeding:
    def __init__(self, enabled, limit_kmh, clear_kmh, min_dur_ms):
        self.enabled, self.limit_kmh, self.clear_kmh, self.min_dur_ms = enabled, limit_kmh, clear_kmh, min_dur_ms
        self.prev: dict[int, _Fix] = {}
        self.since: dict[int, int] = {}
        self.active: set[int] = set()

    def process(self, devices, ts, lats, lons, speeds) -> list[Event]:
        out = []
        for row, (d, t, lat, lon, v) in enumerate(zip(devices, ts, lats, lons, speeds)):
            if d not in self.enabled:
                continue
            prev = self.prev.get(d)
            if prev is not None and t < prev.ts:
                continue
            if math.isnan(v) and prev is not None and t > prev.ts:
                v = haversine_m(prev.lat, prev.lon, lat, lon) / ((t - prev.ts) / 1000.0) * 3.6
            self.prev[d] = _Fix(t, lat, lon)
            if math.isnan(v):
                continue
            if d in self.active:
                if v <= self.clear_kmh:
                    self.active.discard(d)
                    self.since.pop(d, None)
                    out.append((row, d, CLEAR, t, v, -1))
            elif v > self.limit_kmh:
                self.since.setdefault(d, t)
                if t - self.since[d] >= self.min_dur_ms:
                    self.active.add(d)
                    out.append((row, d, RAISE, t, v, -1))
            else:
                self.since.pop(d, None)
        return out


class Geofence:
    def __init__(self, enabled, zones, mode):
        self.enabled, self.zones, self.mode = enabled, zones, mode
        self.last_ts: dict[int, int] = {}
        self.inside: dict[int, set[int]] = {}  # forbidden: zones each device is in
        self.outside: set[int] = set()  # allowed: devices outside every zone
        self.last_zone: dict[int, int] = {}

    def process(self, devices, ts, lats, lons) -> list[Event]:
        out = []
        for row, (d, t, lat, lon) in enumerate(zip(devices, ts, lats, lons)):
            if d not in self.enabled or t < self.last_ts.get(d, t):
                continue
            self.last_ts[d] = t
            if self.mode == "forbidden":
                now = {z for z, rings in enumerate(self.zones) if point_in_rings(lon, lat, rings)}
                before = self.inside.get(d, set())
                for z in sorted(now | before):
                    if z in now and z not in before:
                        out.append((row, d, RAISE, t, math.nan, z))
                    elif z in before and z not in now:
                        out.append((row, d, CLEAR, t, math.nan, z))
                self.inside[d] = now
            else:
                z = locate(lon, lat, self.zones)
                if z < 0 and d not in self.outside:
                    self.outside.add(d)
                    out.append((row, d, RAISE, t, math.nan, self.last_zone.get(d, -1)))
                elif z >= 0:
                    self.last_zone[d] = z
                    if d in self.outside:
                        self.outside.discard(d)
                        out.append((row, d, CLEAR, t, math.nan, z))
        return out


@dataclass
class _Anchor:
    ts: int
    lat: float
    lon: float
    allowed: bool
    active: bool = False


class Dwell:
    def __init__(self, enabled, radius_m, dur_ms, allowed_zones):
        self.enabled, self.radius_m, self.dur_ms, self.allowed_zones = enabled, radius_m, dur_ms, allowed_zones
        self.last_ts: dict[int, int] = {}
        self.anchor: dict[int, _Anchor] = {}

    def process(self, devices, ts, lats, lons) -> list[Event]:
        out = []
        for row, (d, t, lat, lon) in enumerate(zip(devices, ts, lats, lons)):
            if d not in self.enabled or t < self.last_ts.get(d, t):
                continue
            self.last_ts[d] = t
            a = self.anchor.get(d)
            if a is not None and haversine_m(a.lat, a.lon, lat, lon) <= self.radius_m:
                if not a.active and not a.allowed and t - a.ts > self.dur_ms:
                    a.active = True
                    out.append((row, d, RAISE, t, (t - a.ts) / 1000.0, -1))
                continue
            if a is not None and a.active:
                out.append((row, d, CLEAR, t, (t - a.ts) / 1000.0, -1))
            self.anchor[d] = _Anchor(t, lat, lon, locate(lon, lat, self.allowed_zones) >= 0)
        return out


def as_tuples(events) -> list[Event]:
    """Kernel output (columnar ``Events``) as the reference's list of tuples."""
    return [(int(r), int(s), int(k), int(t), float(v), int(a)) for r, s, k, t, v, a in zip(*events)]


def same_events(got: list[Event], want: list[Event], rel: float = 1e-9) -> bool:
    """Equal transitions: exact rows, slots, kinds, ts and aux; values to ``rel`` (NaN equals NaN)."""
    def close(a: float, b: float) -> bool:
        return (math.isnan(a) and math.isnan(b)) or math.isclose(a, b, rel_tol=rel, abs_tol=1e-12)

    return len(got) == len(want) and all(
        g[:4] == w[:4] and g[5] == w[5] and close(g[4], w[4]) for g, w in zip(got, want))
