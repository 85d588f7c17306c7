"""Device profiles: how each vendor names its fields and in which units, mapped to canonical ones.

A new vendor is a TOML file in ``hw/profiles/`` (or a folder given in the config), not code::

    vendor = "aqualine"
    description = "Pipe-network level/flow/pressure loggers"
    timestamp = "t"            # payload field holding the time (dotted path allowed: "data.ts")
    timestamp_unit = "auto"    # auto | s | ms | us | ns | iso
    timezone = ""              # zone of zone-less text times ("2024-11-21 10:00:00"): "Asia/Shanghai",
                               # "+08:00"; "" = UTC. A [[devices]] entry's timezone overrides it.
    ignore = []                # fields sent but deliberately not stored (not counted as unmapped)
    [[topics]]                 # optional: fixed topic schemes the vendor's devices publish on
    pattern = "thing/product/{device_id}/osd"   # {device_id} (required), {kind}, + (any one level)
    kind = "drone"             # the device kind when the pattern has no {kind}
    message = "readings"       # readings (default) | changes (partial: may carry no mapped field)
                               # | dji_topology (DJI update_topo: binds sub-devices to the gateway)
    root = ""                  # sub-object that holds the fields ("data" for DJI osd messages)
    device_id = ""             # payload field naming the device; "" = the topic names it
    [fields]
    lvl = { metric = "water_level", unit = "cm", min = 0 }   # min/max narrow the metric's range
    "data.battery.capacity_percent" = "battery"   # dotted paths reach into nested objects
    [position]                 # optional: a position fix per item
    lat = "lat"
    lon = "lng"
    speed = { field = "spd", unit = "km/h" }
    [gateway]                  # optional: devices that speak through another one (DJI docks)
    field = "gateway"          # item field naming the gateway the device's message came through
    sub_device = "sub_device.device_sn"   # (under root) the device a gateway's message says it hosts

Canonical metrics, their units and physical ranges are listed in :data:`METRICS` (and in the
README's table, :func:`metric_table`); values outside a metric's range are rejected as
``out_of_range``. A field may narrow that range with ``min`` and/or ``max``, in the metric's
canonical unit (a level sensor that cannot read below 0: ``min = 0``); a bound that would widen the
range, or min above max, is refused when the profile loads, with the key named.

Every field name, the timestamp, the device id and the position fields may be dotted paths
(``data.battery.capacity_percent``) into nested objects, relative to ``root`` (the timestamp and
device id are also looked up in the item itself). A path with an empty segment, or a path that is
also the prefix of another one (``data`` and ``data.ts``), is refused when the profile loads, with
the key named.
"""
from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from datetime import timedelta, timezone, tzinfo
from pathlib import Path

import numpy as np

PROFILE_DIR = Path(__file__).with_name("profiles")

# unit -> (dimension, factor, offset): value_in_base = value * factor + offset
UNITS: dict[str, tuple[str, float, float]] = {
    "m": ("length", 1.0, 0.0), "cm": ("length", 0.01, 0.0), "mm": ("length", 0.001, 0.0),
    "km": ("length", 1000.0, 0.0), "ft": ("length", 0.3048, 0.0),
    "MPa": ("pressure", 1.0, 0.0), "kPa": ("pressure", 1e-3, 0.0), "Pa": ("pressure", 1e-6, 0.0),
    "bar": ("pressure", 0.1, 0.0), "psi": ("pressure", 0.00689476, 0.0),
    "m3/h": ("flow", 1.0, 0.0), "m3/s": ("flow", 3600.0, 0.0), "L/s": ("flow", 3.6, 0.0), "L/min": ("flow", 0.06, 0.0),
    "ppm": ("concentration", 1.0, 0.0), "ppb": ("concentration", 1e-3, 0.0),
    "%LEL": ("lel", 1.0, 0.0), "%": ("percent", 1.0, 0.0), "ratio": ("percent", 100.0, 0.0),
    "%vol": ("volume_percent", 1.0, 0.0),
    "deg": ("angle", 1.0, 0.0), "rad": ("angle", 57.29577951308232, 0.0),
    "degC": ("temperature", 1.0, 0.0), "degF": ("temperature", 5.0 / 9.0, -32.0 * 5.0 / 9.0), "K": ("temperature", 1.0, -273.15),
    "km/h": ("speed", 1.0, 0.0), "m/s": ("speed", 3.6, 0.0), "knot": ("speed", 1.852, 0.0), "mph": ("speed", 1.609344, 0.0),
    "mm/h": ("rain_rate", 1.0, 0.0),
    "V": ("voltage", 1.0, 0.0), "mV": ("voltage", 1e-3, 0.0),
}


@dataclass(frozen=True, slots=True)
class Metric:
    name: str
    unit: str  # canonical unit (base unit of its dimension)
    lo: float  # physically plausible range, inclusive
    hi: float
    description: str


METRICS: tuple[Metric, ...] = (
    Metric("water_level", "m", -50.0, 500.0, "Water level in a pipe, manhole or channel"),
    Metric("flow", "m3/h", -1e6, 1e6, "Volumetric flow"),
    Metric("pressure", "MPa", -0.2, 100.0, "Pipe pressure (gauge)"),
    Metric("h2s", "ppm", 0.0, 10_000.0, "Hydrogen sulphide concentration"),
    Metric("ch4", "%LEL", 0.0, 100.0, "Methane, percent of the lower explosive limit"),
    Metric("co", "ppm", 0.0, 10_000.0, "Carbon monoxide concentration"),
    Metric("o2", "%vol", 0.0, 100.0, "Oxygen, percent by volume"),
    Metric("tilt", "deg", -180.0, 180.0, "Manhole-cover tilt"),
    Metric("temperature", "degC", -60.0, 200.0, "Temperature"),
    Metric("humidity", "%", 0.0, 100.0, "Relative humidity"),
    Metric("rainfall", "mm/h", 0.0, 500.0, "Rainfall rate"),
    Metric("battery", "%", 0.0, 100.0, "Battery state of charge"),
    Metric("supply_voltage", "V", 0.0, 1000.0, "Supply voltage"),
    Metric("height", "m", -500.0, 10_000.0, "Height above the take-off point (drones)"),
    Metric("speed", "km/h", 0.0, 500.0, "Ground speed"),
)
METRIC_ID: dict[str, int] = {m.name: i for i, m in enumerate(METRICS)}
METRIC_LO = np.array([m.lo for m in METRICS], np.float64)
METRIC_HI = np.array([m.hi for m in METRICS], np.float64)


class ProfileError(ValueError):
    pass


_OFFSET = re.compile(r"^(?:UTC|GMT)?([+-])(\d{1,2})(?::?(\d{2}))?$")


def parse_timezone(name: str) -> tzinfo:
    """An IANA zone name ("Asia/Shanghai"), "UTC", or a fixed offset ("+08:00", "UTC+8") -> tzinfo.
    Raises ProfileError (a ValueError) naming the value."""
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    if not isinstance(name, str) or not name.strip():
        raise ProfileError(f"time zone {name!r}: expected an IANA name such as 'Asia/Shanghai' or an offset such as '+08:00'")
    name = name.strip()
    if name.upper() in ("UTC", "Z", "GMT"):
        return timezone.utc
    m = _OFFSET.match(name)
    if m:
        h, mi = int(m.group(2)), int(m.group(3) or 0)
        if h > 14 or mi > 59:
            raise ProfileError(f"time zone {name!r}: offset out of range")
        off = timedelta(hours=h, minutes=mi)
        return timezone(-off if m.group(1) == "-" else off)
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise ProfileError(f"time zone {name!r} is not known: expected an IANA name such as 'Asia/Shanghai' or an offset such as '+08:00'") from None


def split_path(path: str, where: str) -> tuple[str, ...]:
    """A field name or dotted path -> its segments; empty segments are refused."""
    parts = tuple(path.split("."))
    if not path or any(not p for p in parts):
        raise ProfileError(f"{where}: {path!r} is not a field name or dotted path (empty segment)")
    return parts


def conversion(unit: str, metric: Metric, where: str) -> tuple[float, float]:
    """(factor, offset) taking a value in ``unit`` to the metric's canonical unit."""
    try:
        dim, f, o = UNITS[unit]
    except (KeyError, TypeError):  # TypeError: not a string (an unhashable TOML array/table)
        raise ProfileError(f"{where}: unknown unit {unit!r}; known units: {sorted(UNITS)}") from None
    cdim, cf, co = UNITS[metric.unit]
    if dim != cdim:
        raise ProfileError(f"{where}: unit {unit!r} measures {dim}, but metric {metric.name!r} is {cdim} ({metric.unit})")
    # base = v*f + o ; canonical = (base - co) / cf
    return f / cf, (o - co) / cf


def metric_table() -> str:
    """The README's table of canonical metrics (a test keeps the README in step with METRICS)."""
    rows = ["| metric | unit | range (inclusive) | what |", "|---|---|---|---|"]
    rows += [f"| `{m.name}` | {m.unit} | {m.lo:g} .. {m.hi:g} | {m.description} |" for m in METRICS]
    return "\n".join(rows)


@dataclass(frozen=True, slots=True)
class FieldSpec:
    metric_id: int
    factor: float
    offset: float
    lo: float = float("-inf")  # accepted range in the canonical unit: the metric's, or narrower
    hi: float = float("inf")

    def __post_init__(self) -> None:  # unset bounds are the metric's own
        m = METRICS[self.metric_id]
        if self.lo == float("-inf"):
            object.__setattr__(self, "lo", m.lo)
        if self.hi == float("inf"):
            object.__setattr__(self, "hi", m.hi)

    @property
    def narrowed(self) -> bool:
        m = METRICS[self.metric_id]
        return self.lo != m.lo or self.hi != m.hi


# what a topic scheme's messages are: "readings" (each item carries at least one mapped field or a
# position, else it is rejected as no_readings), "changes" (property changes, e.g. DJI ``state``:
# partial objects; what maps is stored, the rest counted as unmapped, an item with nothing mapped is
# not an error), "dji_topology" (DJI ``update_topo`` on ``sys/product/{gateway}/status``: binds the
# listed sub-devices to the gateway and releases the others)
MESSAGE_KINDS = ("readings", "changes", "dji_topology")


@dataclass(frozen=True, slots=True)
class TopicScheme:
    """A vendor's fixed topic layout, e.g. ``thing/product/{device_id}/osd`` (DJI Cloud API): one
    level per ``/``; ``{device_id}`` names the device, ``{kind}`` its kind (else ``kind``), ``+``
    matches any one level, a final ``#`` any rest. gridwatch subscribes to it (``filter``)."""

    pattern: str
    kind: str
    regex: "re.Pattern[str]"
    filter: str
    message: str = "readings"  # readings | changes | dji_topology (see MESSAGE_KINDS)

    @classmethod
    def parse(cls, d, where: str) -> "TopicScheme":
        if not isinstance(d, dict) or not isinstance(d.get("pattern"), str) or set(d) - {"pattern", "kind", "message"}:
            raise ProfileError(f"{where}: expected a table with pattern (and kind, message)")
        pattern, kind, message = d["pattern"], d.get("kind", ""), d.get("message", "readings")
        if not isinstance(kind, str):
            raise ProfileError(f"{where}.kind: expected a string")
        if message not in MESSAGE_KINDS:
            raise ProfileError(f"{where}.message: {message!r} is not one of {', '.join(MESSAGE_KINDS)}")
        levels = pattern.split("/")
        if levels[0] in ("devices", "") or levels[0].startswith("$"):
            raise ProfileError(f"{where}.pattern: {pattern!r} must not start with 'devices/' (gridwatch's own scheme), '/' or '$'")
        rx, flt, seen = [], [], set()
        for i, lv in enumerate(levels):
            if lv in ("{device_id}", "{kind}"):
                if lv in seen:
                    raise ProfileError(f"{where}.pattern: {lv} appears twice in {pattern!r}")
                seen.add(lv)
                rx.append(f"(?P<{lv[1:-1]}>[^/]+)")
                flt.append("+")
            elif lv == "+":
                rx.append("[^/]+")
                flt.append("+")
            elif lv == "#" and i == len(levels) - 1:
                rx.append(".*")
                flt.append("#")
            elif not lv or any(ch in lv for ch in "+#{}"):
                raise ProfileError(f"{where}.pattern: level {lv!r} of {pattern!r} is not a name, +, a final #, "
                                   "{device_id} or {kind}")
            else:
                rx.append(re.escape(lv))
                flt.append(lv)
        if "{device_id}" not in seen:
            raise ProfileError(f"{where}.pattern: {pattern!r} has no {{device_id}} level")
        if "{kind}" not in seen and not kind:
            raise ProfileError(f"{where}: a pattern without {{kind}} needs kind = \"...\"")
        return cls(pattern, kind, re.compile("/".join(rx)), "/".join(flt), message)


@dataclass(slots=True)
class Profile:
    vendor: str
    description: str = ""
    timestamp: str = "ts"
    timestamp_unit: str = "auto"
    root: str = ""
    device_id: str = ""
    fields: dict[str, FieldSpec] = field(default_factory=dict)  # flattened key ("a.b") -> spec
    position: dict[str, tuple[str, float]] = field(default_factory=dict)  # lat/lon/speed/alt -> (key, factor)
    timezone: str = ""  # zone of zone-less text timestamps; "" = UTC
    ignore: tuple[str, ...] = ()  # fields deliberately not stored (not counted as unmapped)
    tz: tzinfo | None = None  # parsed ``timezone``
    topics: tuple["TopicScheme", ...] = ()  # fixed topic schemes of the vendor's devices
    gateway: str = ""  # item field naming the gateway a device speaks through ([gateway] field)
    sub_device: str = ""  # field (under root) naming the device a gateway hosts ([gateway] sub_device)

    @classmethod
    def from_dict(cls, d: dict, where: str = "profile") -> "Profile":
        known = {"vendor", "description", "timestamp", "timestamp_unit", "root", "device_id", "fields", "position",
                 "timezone", "ignore", "topics", "gateway"}
        extra = set(d) - known
        if extra:
            raise ProfileError(f"{where}: unknown keys {sorted(extra)}; expected {sorted(known)}")
        if "vendor" not in d:
            raise ProfileError(f"{where}: 'vendor' is required")
        for k in ("vendor", "description", "timestamp", "timestamp_unit", "root", "device_id", "timezone"):
            if k in d and not isinstance(d[k], str):
                raise ProfileError(f"{where}.{k}: expected a string, got {type(d[k]).__name__}")
        if not d["vendor"]:
            raise ProfileError(f"{where}.vendor: must not be empty")
        for k in ("fields", "position"):
            if not isinstance(d.get(k) or {}, dict):
                raise ProfileError(f"{where}.{k}: expected a table, got {type(d[k]).__name__}")
        tu = d.get("timestamp_unit", "auto")
        if tu not in ("auto", "s", "ms", "us", "ns", "iso"):
            raise ProfileError(f"{where}.timestamp_unit: {tu!r} is not one of auto, s, ms, us, ns, iso")
        fields: dict[str, FieldSpec] = {}
        for key, spec in (d.get("fields") or {}).items():
            w = f"{where}.fields.{key}"
            if isinstance(spec, str):
                spec = {"metric": spec}
            if not isinstance(spec, dict):
                raise ProfileError(f"{w}: expected a metric name or a table {{ metric = ..., unit = ... }}")
            mname = spec.get("metric")
            if not isinstance(mname, str) or mname not in METRIC_ID:
                raise ProfileError(f"{w}: unknown metric {mname!r}; canonical metrics: {sorted(METRIC_ID)}")
            m = METRICS[METRIC_ID[mname]]
            extra = set(spec) - {"metric", "unit", "min", "max"}
            if extra:
                raise ProfileError(f"{w}: unknown keys {sorted(extra)}; expected metric, unit, min, max")
            f, o = conversion(spec.get("unit", m.unit), m, w)
            lo, hi = m.lo, m.hi
            for b in ("min", "max"):
                if b not in spec:
                    continue
                v = spec[b]
                if type(v) not in (int, float) or v != v:
                    raise ProfileError(f"{w}.{b}: expected a number in {m.unit} (the metric's canonical unit), got {v!r}")
                if not m.lo <= v <= m.hi:
                    raise ProfileError(f"{w}.{b}: {v!r} {m.unit} is outside {m.name}'s physical range "
                                       f"[{m.lo:g}, {m.hi:g}] {m.unit}; a profile may narrow the range, never widen it")
                if b == "min":
                    lo = float(v)
                else:
                    hi = float(v)
            if lo > hi:
                raise ProfileError(f"{w}.min: {lo:g} is above max {hi:g}")
            fields[key] = FieldSpec(METRIC_ID[mname], f, o, lo, hi)
        position: dict[str, tuple[str, float]] = {}
        for role, spec in (d.get("position") or {}).items():
            if role not in ("lat", "lon", "speed", "alt"):
                raise ProfileError(f"{where}.position.{role}: expected lat, lon, speed or alt")
            if isinstance(spec, str):
                spec = {"field": spec}
            if not isinstance(spec, dict) or not isinstance(spec.get("field"), str) or not spec["field"]:
                raise ProfileError(f"{where}.position.{role}: expected a field name or a table {{ field = ..., unit = ... }}")
            factor = 1.0
            if role == "speed":
                factor, _ = conversion(spec.get("unit", "km/h"), METRICS[METRIC_ID["speed"]], f"{where}.position.speed")
            elif role == "alt":
                factor, _ = conversion(spec.get("unit", "m"), METRICS[METRIC_ID["height"]], f"{where}.position.alt")
            position[role] = (spec["field"], factor)
        if position and not {"lat", "lon"} <= set(position):
            raise ProfileError(f"{where}.position: both lat and lon are required")
        ignore = d.get("ignore", [])
        if not isinstance(ignore, list) or not all(isinstance(x, str) and x for x in ignore):
            raise ProfileError(f"{where}.ignore: expected a list of field names")
        tz = None
        if d.get("timezone"):
            try:
                tz = parse_timezone(d["timezone"])
            except ProfileError as e:
                raise ProfileError(f"{where}.timezone: {e}") from None
        # every path must be well formed, and no path may run through another one's value
        paths: dict[tuple[str, ...], str] = {}
        for key in fields:
            paths[split_path(key, f"{where}.fields.{key}")] = f"fields.{key}"
        for role, (key, _) in position.items():
            paths.setdefault(split_path(key, f"{where}.position.{role}"), f"position.{role}")
        for name in ("timestamp", "device_id", "root"):
            v = d.get(name, "ts" if name == "timestamp" else "")
            if v:
                split_path(v, f"{where}.{name}")
        ts_path = tuple(d.get("timestamp", "ts").split("."))
        if ts_path in paths:
            raise ProfileError(f"{where}.timestamp: {'.'.join(ts_path)!r} is also {paths[ts_path]}")
        paths[ts_path] = "timestamp"
        for p, what in paths.items():
            for i in range(1, len(p)):
                if p[:i] in paths:
                    raise ProfileError(f"{where}.{what}: {'.'.join(p)!r} runs through {'.'.join(p[:i])!r}, "
                                       f"which is {paths[p[:i]]} (a value cannot also hold fields)")
        topics = d.get("topics", [])
        if not isinstance(topics, list):
            raise ProfileError(f"{where}.topics: expected an array of tables [[topics]] with pattern and kind")
        schemes = tuple(TopicScheme.parse(t, f"{where}.topics.{i}") for i, t in enumerate(topics))
        gw = d.get("gateway", {})
        if not isinstance(gw, dict) or set(gw) - {"field", "sub_device"}:
            raise ProfileError(f"{where}.gateway: expected a table with field and/or sub_device")
        for k in ("field", "sub_device"):
            if k in gw:
                if not isinstance(gw[k], str):
                    raise ProfileError(f"{where}.gateway.{k}: expected a field name or dotted path")
                split_path(gw[k], f"{where}.gateway.{k}")
        return cls(d["vendor"], d.get("description", ""), d.get("timestamp", "ts"), tu, d.get("root", ""),
                   d.get("device_id", ""), fields, position, d.get("timezone", ""), tuple(ignore), tz, schemes,
                   gw.get("field", ""), gw.get("sub_device", ""))

    @classmethod
    def load(cls, path: Path) -> "Profile":
        try:
            return cls.from_dict(tomllib.loads(path.read_text(encoding="utf-8")), where=path.name)
        except tomllib.TOMLDecodeError as e:
            raise ProfileError(f"{path.name}: not valid TOML: {e}") from None


def generic_profile(vendor: str = "generic") -> Profile:
    """Fields named after canonical metrics, in canonical units; lat/lon/speed/alt as a position."""
    return Profile(vendor=vendor, description="canonical field names and units",
                   fields={m.name: FieldSpec(i, 1.0, 0.0) for i, m in enumerate(METRICS)},
                   position={"lat": ("lat", 1.0), "lon": ("lon", 1.0), "speed": ("speed", 1.0), "alt": ("alt", 1.0)})


def load_profiles(extra_dirs: list[Path] | None = None) -> dict[str, Profile]:
    """Bundled profiles plus any in ``extra_dirs`` (later ones override), keyed by vendor."""
    out: dict[str, Profile] = {"generic": generic_profile()}
    for d in [PROFILE_DIR, *(extra_dirs or [])]:
        for p in sorted(Path(d).glob("*.toml")):
            prof = Profile.load(p)
            out[prof.vendor] = prof
    return out
