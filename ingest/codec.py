"""Vendor payloads -> canonical columnar batches, with a reason for everything rejected.

Topic scheme (documented for vendors)::

    devices/<vendor>/<device_kind>/<device_id>[/<anything>]

``<vendor>`` selects the payload profile (``hw/profiles``), ``<device_kind>`` is e.g. sewer_level,
gas, tracker or drone, ``<device_id>`` names the device unless the profile reads it from the payload.
A payload is one JSON object or a JSON array of objects; each object holds a timestamp (epoch s, ms,
us or ns, or ISO-8601; missing = the time gridwatch received it) and any number of fields.

Decoding is done per *batch of messages*: the per-item Python loop only collects raw values, then
type, range and timestamp checks run vectorised over the whole batch. A bad reading never takes the
good ones of the same message with it: each rejected reading (or message, when it cannot be parsed)
becomes a :class:`~gridwatch.records.DeadLetter` with a reason code and an explanation.

Reason codes: oversized, malformed_json, not_an_object, bad_topic, unknown_vendor, unknown_device,
vendor_mismatch, device_limit, bad_device_id, missing_field, no_readings, wrong_type, bad_timestamp, non_finite,
out_of_range, future_timestamp, stale_timestamp, duplicate, too_many_sub_devices, gateway_limit; from the
JT/T 808 collector also bad_checksum, bad_escape, bad_frame, bad_body, bad_subpackage, subpackage_incomplete,
unsynchronised, frame_timeout.

Times: a zone-less ISO timestamp is read in the device's time zone (``[[devices]] timezone``), else
its profile's, else UTC. Profile keys may be dotted paths into nested objects (see hw/profiles.py).

Gateways (profile ``[gateway]``, topic schemes with ``message = "dji_topology"``): a DJI dock's
``update_topo`` on ``sys/product/{gateway}/status`` binds the aircraft it lists to the dock and
releases those it no longer lists (at most ``MAX_SUB_DEVICES`` per message); the dock's osd
(``sub_device.device_sn``) and the aircraft's messages (``gateway``) bind known devices as they
arrive. Each processed ``update_topo`` is answered (:attr:`Decoded.replies`, published by the
runtime after the commit that stored the binding) on the same topic plus ``_reply``.

JSON is parsed strictly (orjson): NaN/Infinity literals and numbers beyond float64 (1e999) are
``malformed_json``; ``non_finite`` catches values that overflow during unit conversion.
"""
from __future__ import annotations

import re
import reprlib
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone

import numpy as np
import orjson

from gridwatch.hw.profiles import METRICS, Profile
from gridwatch.ingest import jsonfast
from gridwatch.ingest.devices import DeviceDirectory
from gridwatch.records import DEADLETTER_PAYLOAD_MAX, DeadLetter, PositionBatch, SensorBatch
from gridwatch.streams.kernels.dedup import DuplicateFilter, WindowFilter

TOPIC_ROOT = "devices"
TOPIC_CACHE_MAX = 100_000  # remembered routes (each topic at most ingest.max_topic_bytes long)
DEADLETTER_SOURCE_MAX = 256  # characters of the topic kept in a dead letter
DEADLETTER_DETAIL_MAX = 512  # characters of the explanation kept in a dead letter
_NUM = (int, float)
_NUMSET = frozenset(_NUM)
_UNIT_CODE = {"auto": 0, "iso": 0, "s": 1, "ms": 2, "us": 3, "ns": 4}
_UNIT_MULT = np.array([np.nan, 1e3, 1.0, 1e-3, 1e-6])
_KEY = re.compile(rb'"([^"\\]*)"\s*:')
MAX_SUB_DEVICES = 16  # sub-devices one update_topo may list (DJI docks list one aircraft)
DJI_DOMAIN_KIND = {"0": "drone", "2": "remote_controller", "3": "dock"}  # update_topo domain -> kind of a new device


@dataclass(slots=True)
class Message:
    """One inbound message. ``token`` is what the collector needs to acknowledge it (an MQTT mid).
    ``reject``: (reason, detail) of an input its collector already found bad (a JT/T 808 frame
    with a wrong checksum ...): decoded straight into a dead letter with that reason.
    ``positions``: for a binary protocol's position fixes (JT/T 808 location reports), a function
    called once per batch with all its messages that carry it, returning per message (vendor,
    kind, and per fix: device id, ts ms, lat, lon, speed km/h, altitude m (lists), then
    [(row, reason, detail)] of bad ones); the fixes then take the same checks (device directory,
    types, ranges, timestamps, duplicates) as JSON ones."""

    topic: str
    payload: bytes
    received_ms: int
    token: object = None
    size: int = -1  # the payload's size as received, where the collector kept only its first bytes
    reject: tuple[str, str] | None = None
    positions: object = None


@dataclass(slots=True)
class Decoded:
    sensor: SensorBatch
    metric: np.ndarray  # int16 canonical metric id per sensor row
    position: PositionBatch
    dead: list[DeadLetter] = field(default_factory=list)
    rejected: Counter = field(default_factory=Counter)
    no_timestamp: int = 0
    unmapped: Counter = field(default_factory=Counter)  # (vendor, field name) -> items that carried it
    replies: list = field(default_factory=list)  # (topic, payload) to publish once the batch is committed


def _auto_ms(t: np.ndarray) -> np.ndarray:
    """Epoch number of unknown unit -> ms, by magnitude (s ~1.7e9, ms ~1.7e12, us ~1.7e15, ns ~1.7e18)."""
    a = np.abs(t)
    with np.errstate(over="ignore", invalid="ignore"):  # huge numbers -> inf, rejected as bad_timestamp
        return np.where(a >= 1e17, t * 1e-6, np.where(a >= 1e14, t * 1e-3, np.where(a >= 1e11, t, t * 1e3)))


def _iso_ms(s: str, tz=None) -> float | None:
    """ISO-8601 text -> epoch ms; a time without a zone is in ``tz`` (the device's or its
    profile's time zone), UTC when none is named."""
    try:
        d = datetime.fromisoformat(s)
    except (ValueError, TypeError):
        return None
    if d.tzinfo is None:
        d = d.replace(tzinfo=tz or timezone.utc)
    return d.timestamp() * 1e3


_MISSING = object()


def _walk(obj, path: tuple[str, ...]):
    """The value at a dotted path (a tuple of keys) in nested objects, or _MISSING."""
    for k in path:
        if type(obj) is not dict:
            return _MISSING
        obj = obj.get(k, _MISSING)
        if obj is _MISSING:
            return _MISSING
    return obj


def _lookup(obj: dict, key: str, path: tuple[str, ...] | None):
    """``obj[key]`` (a literal key, dots and all), else the value at its dotted path; None if absent."""
    v = obj.get(key)
    if v is None and path is not None:
        v = _walk(obj, path)
        if v is _MISSING:
            return None
    return v


UNMAPPED_NAMES_PER_VENDOR = 32  # distinct unmapped field names counted per vendor; the rest: "other"


class _Paths:
    """A profile's dotted paths, split once: timestamp, device id, position roles, nested fields,
    and the top-level keys the profile uses (the others are counted as unmapped)."""

    __slots__ = ("ts", "idf", "pos", "deep", "used", "tz", "gw", "sub")

    def __init__(self, prof: Profile, fmap: dict[str, int]) -> None:
        def split(k: str):
            return tuple(k.split(".")) if "." in k else None

        self.ts = split(prof.timestamp)
        self.idf = split(prof.device_id) if prof.device_id else None
        self.pos = {role: split(key) for role, (key, _) in prof.position.items()}
        self.deep = [(k, tuple(k.split(".")), si) for k, si in fmap.items() if "." in k]
        self.gw = (prof.gateway, split(prof.gateway)) if prof.gateway else None  # (key, path or None)
        self.sub = (prof.sub_device, split(prof.sub_device)) if prof.sub_device else None
        used = {prof.timestamp, prof.device_id, *fmap, *(k for k, _ in prof.position.values()), *prof.ignore,
                prof.gateway, prof.sub_device}
        self.used = frozenset(used | {k.split(".")[0] for k in used if k})
        self.tz = prof.tz


class Codec:
    def __init__(self, profiles: dict[str, Profile], directory: DeviceDirectory, *, max_payload_bytes: int = 256 * 1024,
                 max_future_skew_s: float = 300.0, max_age_s: float = 7 * 86400.0, max_topic_bytes: int = 256,
                 device_timezones: dict | None = None, dedup_window_s: float = 0.0, dedup_max_mb: float = 64.0) -> None:
        self.profiles = profiles
        self.max_topic = max_topic_bytes
        self.directory = directory
        self.max_payload = max_payload_bytes
        self.max_future_ms = max_future_skew_s * 1e3
        self.max_age_ms = max_age_s * 1e3
        # one global table of field specs, so rows carry a small int and conversion is vectorised
        self._spec_metric: list[int] = []
        self._spec_factor: list[float] = []
        self._spec_offset: list[float] = []
        self._spec_lo: list[float] = []  # accepted range (canonical unit): the metric's or the profile's narrower one
        self._spec_hi: list[float] = []
        self._fmap: dict[str, dict[str, int]] = {}
        for vendor, prof in profiles.items():
            m = {}
            for key, spec in prof.fields.items():
                m[key] = len(self._spec_metric)
                self._spec_metric.append(spec.metric_id)
                self._spec_factor.append(spec.factor)
                self._spec_offset.append(spec.offset)
                self._spec_lo.append(spec.lo)
                self._spec_hi.append(spec.hi)
            self._fmap[vendor] = m
        self._sm = np.array(self._spec_metric, np.int16)
        self._sf = np.array(self._spec_factor, np.float64)
        self._so = np.array(self._spec_offset, np.float64)
        self._slo = np.array(self._spec_lo, np.float64)
        self._shi = np.array(self._spec_hi, np.float64)
        self._topics: dict[str, tuple] = {}
        # the Numba recogniser of arrays of flat numeric objects (see jsonfast): vendors whose
        # profile reads device ids and fields from the top level of each item
        self.fast_json = True
        self._keys = jsonfast.KeyTable()
        for vendor, prof in profiles.items():
            if not prof.root and not prof.device_id and "." not in prof.timestamp:
                forbidden = [prof.position[k][0] for k in ("lat", "lon") if k in prof.position]
                self._keys.add_vendor(vendor, prof.timestamp, self._fmap[vendor], forbidden)
        self._keys.freeze()
        self.series_dups = DuplicateFilter()
        self.position_dups = DuplicateFilter()
        # stage 2 of duplicate detection (streams/kernels/dedup.py): every (series, ts) and
        # (device, ts) of the last dedup_window_s; readings get 3/4 of dedup_max_mb, fixes 1/4
        self.series_window = self.position_window = None
        if dedup_window_s > 0:
            budget = int(dedup_max_mb * 2**20)
            self.series_window = WindowFilter(int(dedup_window_s * 1e3), budget * 3 // 4)
            self.position_window = WindowFilter(int(dedup_window_s * 1e3), budget // 4)
        self._paths = {vendor: _Paths(prof, self._fmap[vendor]) for vendor, prof in profiles.items()}
        self._schemes = [(sc, vendor) for vendor, prof in profiles.items() for sc in prof.topics]
        self.device_tz: dict[tuple[str, str], object] = dict(device_timezones or {})  # (vendor, device id) -> tzinfo
        self._unmapped_names: dict[str, set[str]] = {}
        self._m_tz: list = []  # per message of the batch being decoded: the zone of its zone-less times

    # ------------------------------------------------------------------------------------
    def _route(self, topic: str):
        r = self._topics.get(topic)
        if r is None:
            if len(topic) > self.max_topic:  # never split, parsed further or remembered
                return ("bad_topic", f"topic is over the limit of {self.max_topic} characters (ingest.max_topic_bytes)")
            parts = topic.split("/")
            if parts[0] != TOPIC_ROOT and self._schemes:
                r = self._scheme_route(topic)
            elif len(parts) < 4 or parts[0] != TOPIC_ROOT or not all(parts[1:4]):
                r = ("bad_topic", f"topic {topic!r} does not match {TOPIC_ROOT}/<vendor>/<device_kind>/<device_id>")
            elif "\0" in parts[3]:  # NUL separates ids in the Kafka wire tables (and MQTT forbids it)
                r = ("bad_device_id", f"device id {parts[3]!r} in topic {topic!r} contains a NUL character")
            elif parts[1] not in self.profiles:
                r = ("unknown_vendor", f"no device profile for vendor {parts[1]!r} (topic {topic!r})")
            else:
                r = (None, parts[1], parts[2], parts[3], self.profiles[parts[1]], self._fmap[parts[1]], "readings")
            if r[0] is None:  # only routes that decode are remembered: rejected topics cost no memory
                if len(self._topics) >= TOPIC_CACHE_MAX:
                    self._topics.clear()
                self._topics[topic] = r
        return r

    def decode(self, messages: list[Message], now_ms: int) -> Decoded:
        dead: list[DeadLetter] = []
        rejected: Counter = Counter()

        first: dict[tuple[int, str], DeadLetter] = {}

        def reject(mi: int, reason: str, detail) -> None:
            """Count one rejected reading (or message); one dead letter per (message, reason),
            explained by its first case, so a flood of bad readings costs little. ``detail`` may be
            a callable, formatted only for that first case."""
            rejected[reason] += 1
            d = first.get((mi, reason))
            if d is not None:
                d.count += 1
                return
            m = messages[mi]
            d = DeadLetter(_clip(m.topic, DEADLETTER_SOURCE_MAX), reason,
                           _clip(detail() if callable(detail) else detail, DEADLETTER_DETAIL_MAX),
                           bytes(m.payload[:DEADLETTER_PAYLOAD_MAX]), m.received_ms)
            first[(mi, reason)] = d
            dead.append(d)

        # sensor rows are collected in blocks of rows sharing (message, device, field spec):
        # b_* hold one entry per block, r_ts/r_val one per row
        b_msg: list[int] = []
        b_dev: list[int] = []
        b_spec: list[int] = []
        b_len: list[int] = []
        r_ts: list = []
        r_val: list = []
        # per-row raw columns (position)
        p_msg: list[int] = []
        p_dev: list[int] = []
        p_ts: list = []
        p_lat: list = []
        p_lon: list = []
        p_spd: list = []
        p_alt: list = []
        # per-message
        m_unit = np.zeros(len(messages), np.int8)
        m_recv = np.empty(len(messages), np.float64)
        self._m_tz = m_tz = [None] * len(messages)
        unmapped: Counter = Counter()
        replies: list = []
        device_tz = self.device_tz
        resolve = self.directory.resolve
        fast_of, fast = self._recognise(messages)
        binary: dict[int, tuple] = {}  # pre-decoded fixes of binary protocols, per message
        hooks: dict = {}
        for mi, msg in enumerate(messages):
            if msg.positions is not None:
                hooks.setdefault(msg.positions, []).append(mi)
        for fn, mis in hooks.items():
            binary.update(zip(mis, fn([messages[i] for i in mis])))
        f_msg: list[int] = []  # messages decoded by the recogniser: message, candidate, device
        f_cand: list[int] = []
        f_dev: list[int] = []

        for mi, msg in enumerate(messages):
            m_recv[mi] = msg.received_ms
            if msg.reject is not None:
                reject(mi, *msg.reject)
                continue
            if msg.positions is not None:
                m_unit[mi] = _UNIT_CODE["ms"]
                self._binary_positions(mi, binary[mi], reject, p_msg, p_dev, p_ts, p_lat, p_lon, p_spd, p_alt)
                continue
            route = self._route(msg.topic)
            if route[0] is not None:
                reject(mi, route[0], route[1])
                continue
            _, vendor, kind, topic_dev, prof, fmap, mode = route
            paths = self._paths[vendor]
            m_tz[mi] = device_tz.get((vendor, topic_dev), paths.tz) if device_tz else paths.tz
            payload = msg.payload
            if len(payload) > self.max_payload:
                size = msg.size if msg.size >= 0 else len(payload)
                reject(mi, "oversized", f"payload is {size} bytes; the limit is {self.max_payload} (ingest.max_payload_bytes)")
                continue
            if mode == "dji_topology":
                self._topology(mi, msg, vendor, kind, topic_dev, reject, unmapped, replies, now_ms)
                continue
            ci = fast_of.get(mi, -1) if fast_of else -1
            if ci >= 0:  # valid JSON, a non-empty array of flat numeric objects: only the device to check
                m_unit[mi] = _UNIT_CODE[prof.timestamp_unit]
                dev, why = resolve(topic_dev, vendor, kind)
                if why is not None:
                    reject(mi, why, self._topic_device_refused(topic_dev, vendor, why))
                    continue
                f_msg.append(mi); f_cand.append(ci); f_dev.append(dev)
                self._count_fast_unmapped(payload, vendor, paths, unmapped, int(fast[2][ci]))
                continue
            try:
                obj = orjson.loads(payload)
            except orjson.JSONDecodeError as e:
                reject(mi, "malformed_json", f"not valid JSON: {e}")
                continue
            items = obj if type(obj) is list else (obj,)
            if not items:
                reject(mi, "no_readings", "empty JSON array")
                continue
            m_unit[mi] = _UNIT_CODE[prof.timestamp_unit]
            tsf, root, idf, pos = prof.timestamp, prof.root, prof.device_id, prof.position
            dev = -1
            if not idf:
                dev, why = resolve(topic_dev, vendor, kind)
                if why is not None:
                    reject(mi, why, self._topic_device_refused(topic_dev, vendor, why))
                    continue
            if type(obj) is list and not root and not idf and len(items) > 1:
                cols = _columns(items, tsf, fmap, pos)
                if cols is not None:
                    n_it, t_col, fcols = cols
                    for k in items[0]:
                        if k not in paths.used:
                            unmapped[(vendor, k)] += n_it
                    for si, col in fcols:
                        b_msg.append(mi); b_dev.append(dev); b_spec.append(si); b_len.append(n_it)
                        r_ts.extend(t_col); r_val.extend(col)
                    continue
            for it in items:
                if type(it) is not dict:
                    reject(mi, "not_an_object", f"array item is {type(it).__name__}, expected a JSON object")
                    continue
                body = it
                if root:
                    body = it.get(root)
                    if type(body) is not dict:
                        reject(mi, "missing_field", f"field {root!r} is missing or not an object")
                        continue
                d = dev
                if idf:
                    did = _lookup(it, idf, paths.idf)
                    if did is None and body is not it:
                        did = _lookup(body, idf, paths.idf)
                    if type(did) is not str or not did or "\0" in did:
                        reject(mi, "bad_device_id", f"field {idf!r} must be a non-empty string without NUL, got {_short(did, 200)}")
                        continue
                    d, why = resolve(did, vendor, kind)
                    if why is not None:
                        reject(mi, why, f"device {did!r} on vendor {vendor!r}: {why}")
                        continue
                    if device_tz:
                        m_tz[mi] = device_tz.get((vendor, did), paths.tz)
                t = _lookup(it, tsf, paths.ts)
                if t is None and body is not it:
                    t = _lookup(body, tsf, paths.ts)
                before = len(r_ts)
                used = paths.used
                for k, v in body.items():
                    si = fmap.get(k)
                    if si is None:
                        if k not in used:
                            unmapped[(vendor, k)] += 1
                        continue
                    b_msg.append(mi); b_dev.append(d); b_spec.append(si); b_len.append(1)
                    r_ts.append(t); r_val.append(v)
                for key, path, si in paths.deep:  # nested fields ("data.battery.capacity_percent")
                    if key not in body:
                        v = _walk(body, path)
                        if v is not _MISSING:
                            b_msg.append(mi); b_dev.append(d); b_spec.append(si); b_len.append(1)
                            r_ts.append(t); r_val.append(v)
                got_pos = False
                if pos:
                    pp = paths.pos
                    la = _lookup(body, pos["lat"][0], pp["lat"])
                    lo = _lookup(body, pos["lon"][0], pp["lon"])
                    if la is not None or lo is not None:
                        got_pos = True
                        p_msg.append(mi); p_dev.append(d); p_ts.append(t); p_lat.append(la); p_lon.append(lo)
                        sp = pos.get("speed")
                        al = pos.get("alt")
                        sv = _lookup(body, sp[0], pp["speed"]) if sp else None
                        av = _lookup(body, al[0], pp["alt"]) if al else None
                        p_spd.append(sv * sp[1] if type(sv) in _NUM else (sv if sv is not None else np.nan))
                        p_alt.append(av * al[1] if type(av) in _NUM else (av if av is not None else np.nan))
                if d >= 0 and (paths.gw or paths.sub):
                    self._bind_gateway(d, it, body, vendor, paths)
                if len(r_ts) == before and not got_pos and mode != "changes":
                    reject(mi, "no_readings", f"no field of profile {vendor!r} in item (keys: {sorted(body)[:10]})")

        out = Decoded(SensorBatch.empty(), np.empty(0, np.int16), PositionBatch.empty(), dead, rejected)
        out.replies = replies
        if unmapped:
            out.unmapped = self._bound_unmapped(unmapped)
        slow = None
        if r_ts:
            blen = np.array(b_len, np.int64)
            slow = (np.repeat(np.array(b_msg, np.int32), blen), np.repeat(np.array(b_dev, np.int32), blen),
                    np.repeat(np.array(b_spec, np.int32), blen), r_ts, r_val)
        rows = None
        if f_msg:
            rows = self._fast_rows(fast, f_msg, f_cand, f_dev)
        if slow is not None or rows is not None:
            self._finish_sensor(out, reject, now_ms, m_unit, m_recv, slow, rows)
        if p_msg:
            self._finish_position(messages, out, reject, now_ms, m_unit, m_recv, p_msg, p_dev, p_ts, p_lat, p_lon, p_spd, p_alt)
        return out

    def _binary_positions(self, mi: int, fixes: tuple, reject, p_msg, p_dev, p_ts, p_lat, p_lon, p_spd, p_alt) -> None:
        vendor, kind, devs, ts, lat, lon, spd, alt, bad = fixes
        for _, reason, detail in bad:
            reject(mi, reason, detail)
        n = len(ts)
        if not n:
            return
        if vendor not in self.profiles:
            for _ in range(n):
                reject(mi, "unknown_vendor", f"no device profile for vendor {vendor!r}")
            return
        seen: dict[str, tuple] = {}
        slots = []
        for did in devs:
            r = seen.get(did)
            if r is None:
                r = seen[did] = self.directory.resolve(did, vendor, kind)
            slots.append(r[0])
        if any(r[1] is not None for r in seen.values()):
            keep = [i for i, s in enumerate(slots) if s >= 0]
            for did in devs:
                why = seen[did][1]
                if why is not None:
                    reject(mi, why, self._topic_device_refused(did, vendor, why))
            slots, ts, lat, lon, spd, alt = ([col[i] for i in keep] for col in (slots, ts, lat, lon, spd, alt))
            n = len(keep)
        p_msg.extend([mi] * n)
        p_dev.extend(slots)
        p_ts.extend(ts)
        p_lat.extend(lat)
        p_lon.extend(lon)
        p_spd.extend(spd)
        p_alt.extend(alt)

    def _bind_gateway(self, d: int, it: dict, body: dict, vendor: str, paths: "_Paths") -> None:
        """A message of device ``d`` naming its gateway (``[gateway] field``, e.g. an aircraft's
        ``gateway``: its dock) or the device it hosts (``sub_device``, e.g. a dock's
        ``sub_device.device_sn``): bind them, when both are known devices."""
        directory = self.directory
        if paths.gw is not None:
            g = _lookup(it, *paths.gw)
            if g is None and body is not it:
                g = _lookup(body, *paths.gw)
            if type(g) is str and g and g != directory.ids[d]:
                gs = directory.get(g, vendor)
                if gs >= 0:
                    directory.set_gateway(d, gs)
        if paths.sub is not None:
            h = _lookup(body, *paths.sub)
            if type(h) is str and h and h != directory.ids[d]:
                hs = directory.get(h, vendor)
                if hs >= 0:
                    directory.set_gateway(hs, d)

    def _topology(self, mi: int, msg: Message, vendor: str, kind: str, gateway: str, reject, unmapped: Counter,
                  replies: list, now_ms: int) -> None:
        """A DJI gateway's ``update_topo`` (``{tid, bid, timestamp, method, data: {domain, type, ...,
        sub_devices: [{sn, domain, ...}]}}``): its sub-devices are bound to it (registered first if
        new, by their domain's kind), devices it no longer lists are released; then the answer the
        gateway expects is queued. Other methods on the topic are counted as unmapped, not rejected."""
        try:
            obj = orjson.loads(msg.payload)
        except orjson.JSONDecodeError as e:
            reject(mi, "malformed_json", f"not valid JSON: {e}")
            return
        if type(obj) is not dict:
            reject(mi, "not_an_object", f"payload is {type(obj).__name__}, expected a JSON object")
            return
        method = obj.get("method")
        if method != "update_topo":
            unmapped[(vendor, f"method:{_short(method, 40)}")] += 1
            return
        data = obj.get("data")
        subs = data.get("sub_devices") if type(data) is dict else None
        if type(subs) is not list:
            reject(mi, "missing_field", "update_topo: data.sub_devices is missing or not an array")
            return
        if len(subs) > MAX_SUB_DEVICES:
            reject(mi, "too_many_sub_devices", f"update_topo lists {len(subs)} sub-devices; at most {MAX_SUB_DEVICES} are allowed, "
                                                 "so none is bound")
            return
        resolve = self.directory.resolve
        g, why = resolve(gateway, vendor, DJI_DOMAIN_KIND.get(str(data.get("domain")), kind))
        if why is not None:
            reject(mi, why, self._topic_device_refused(gateway, vendor, why))
            return
        slots = []
        for sd in subs:
            sn = sd.get("sn") if type(sd) is dict else None
            if type(sn) is not str or not sn or "\0" in sn:
                reject(mi, "bad_device_id", f"update_topo: sub-device sn must be a non-empty string without NUL, got {_short(sn, 200)}")
                continue
            s, why = resolve(sn, vendor, DJI_DOMAIN_KIND.get(str(sd.get("domain")), "drone"))
            if why is not None:
                reject(mi, why, self._topic_device_refused(sn, vendor, why))
                continue
            if s != g:
                slots.append(s)
        refused = self.directory.set_hosted(g, slots)
        for _ in range(refused):
            reject(mi, "gateway_limit", f"update_topo of {gateway!r}: {self.directory.gateway_bound} devices are bound "
                                        f"to gateways already (the limit); the binding is not stored")
        replies.append((msg.topic + "_reply", orjson.dumps({"tid": obj.get("tid"), "bid": obj.get("bid"), "timestamp": now_ms,
                                                            "method": "update_topo", "data": {"result": 0}})))

    def topic_filters(self) -> list[str]:
        """MQTT subscriptions for the profiles' own topic schemes (``[[topics]]``)."""
        return sorted({sc.filter for sc, _ in self._schemes})

    def _scheme_route(self, topic: str):
        """A topic outside devices/...: the first profile topic scheme it matches names the vendor,
        the device and its kind."""
        for sc, vendor in self._schemes:
            m = sc.regex.fullmatch(topic)
            if m is None:
                continue
            dev = m.group("device_id")
            if "\0" in dev:
                return ("bad_device_id", f"device id {dev!r} in topic {topic!r} contains a NUL character")
            kind = m.group("kind") if "kind" in sc.regex.groupindex else sc.kind
            return (None, vendor, kind, dev, self.profiles[vendor], self._fmap[vendor], sc.message)
        return ("bad_topic", f"topic {topic!r} matches neither {TOPIC_ROOT}/<vendor>/<device_kind>/<device_id> "
                             f"nor a profile's topic scheme ({', '.join(sc.pattern for sc, _ in self._schemes)})")

    def _bound_unmapped(self, unmapped: Counter) -> Counter:
        """At most UNMAPPED_NAMES_PER_VENDOR distinct names per vendor (names come from outside);
        the rest are counted as "other"."""
        out: Counter = Counter()
        for (vendor, name), n in unmapped.items():
            seen = self._unmapped_names.setdefault(vendor, set())
            if name not in seen:
                if len(seen) >= UNMAPPED_NAMES_PER_VENDOR:
                    name = "other"
                else:
                    name = name[:64]
                    seen.add(name)
            out[(vendor, name)] += n
        return out

    @staticmethod
    def _count_fast_unmapped(payload: bytes, vendor: str, paths: "_Paths", unmapped: Counter, rows: int) -> None:
        """The recogniser skips keys it does not know: count them from the first object's keys
        (every object of an accepted message has the same keys)."""
        end = payload.find(b"}")
        keys = [k.decode("ascii", "replace") for k in _KEY.findall(payload, 0, end)]
        extra = [k for k in keys if k not in paths.used]
        if extra:
            known = len(keys) - len(extra) - 1  # numeric fields per object (less the timestamp)
            items = rows // known if known > 0 else 0
            for k in extra:
                unmapped[(vendor, k)] += items

    def _topic_device_refused(self, device: str, vendor: str, why: str) -> str:
        d = self.directory
        return f"device {device!r} on vendor {vendor!r}: " + (
            "not registered and unknown devices are rejected" if why == "unknown_device"
            else f"vendor {vendor!r} already registered ingest.max_devices_per_vendor ({d.max_per_vendor}) devices"
            if why == "device_limit" else f"the config binds it to vendor {d.owner(device)!r}")

    # ------------------------------------------------------------------------------------
    def _recognise(self, messages: list[Message]):
        """Run the Numba recogniser over the messages that look like arrays of a vendor it knows.
        Returns ({message index: candidate index} for the accepted ones, the parse result)."""
        if not self.fast_json:
            return None, None
        vi_of = self._keys.vendor_index
        c_msg: list[int] = []
        c_vendor: list[int] = []
        c_payload: list[bytes] = []
        for mi, msg in enumerate(messages):
            payload = msg.payload
            if payload[:1] == b"[" and len(payload) <= self.max_payload:
                route = self._route(msg.topic)
                if route[0] is None:
                    vi = vi_of.get(route[1])
                    if vi is not None:
                        c_msg.append(mi); c_vendor.append(vi); c_payload.append(payload)
        if not c_msg:
            return None, None
        res = jsonfast.parse(c_payload, np.array(c_vendor, np.int64), self._keys)
        ok = np.flatnonzero(res[0] == jsonfast.OK).tolist()
        return {c_msg[c]: c for c in ok}, res

    @staticmethod
    def _fast_rows(fast, f_msg: list[int], f_cand: list[int], f_dev: list[int]):
        """The recogniser's rows of the messages kept (their devices resolved), message by message."""
        _, row0, nrows, ts, val, spec, is_int = fast
        cand = np.array(f_cand, np.int64)
        counts = nrows[cand]
        total = int(counts.sum())
        if total != ts.shape[0]:  # some accepted messages were dropped (device rejected): gather
            starts = row0[cand]
            idx = np.repeat(starts - (np.cumsum(counts) - counts), counts) + np.arange(total)
            ts, val, spec, is_int = ts[idx], val[idx], spec[idx], is_int[idx]
        return (np.repeat(np.array(f_msg, np.int32), counts), np.repeat(np.array(f_dev, np.int32), counts),
                spec, ts, val, is_int)

    def _numbers(self, raw: list, what: str, mi: np.ndarray, reject, keep: np.ndarray) -> np.ndarray:
        """float64 array of raw values; non-numbers are rejected (JSON true/false and numeric strings too)."""
        try:
            if _NUMSET.issuperset(map(type, raw)):
                return np.array(raw, np.float64)
        except OverflowError:
            pass
        out = np.full(len(raw), np.nan)
        for i, v in enumerate(raw):
            if type(v) in _NUM:
                try:
                    out[i] = float(v)
                    continue
                except OverflowError:
                    pass
            if keep[i]:
                keep[i] = False
                reject(int(mi[i]), "wrong_type", lambda i=i: f"{what} is {type(v).__name__} {_short(v)}, expected a number")
        return out

    def _timestamps(self, raw: list, mi: np.ndarray, m_unit, m_recv, reject, keep, now_ms: int) -> tuple[np.ndarray, int]:
        ts, numeric, missing = self._ts_values(raw, mi, m_recv, reject, keep)
        return self._ts_check(ts, numeric, mi, m_unit, reject, keep, now_ms, raw.__getitem__), missing

    def _ts_values(self, raw: list, mi: np.ndarray, m_recv, reject, keep) -> tuple[np.ndarray, np.ndarray, int]:
        """Raw timestamps -> (float64 as sent or ms for ISO text, which are numbers, how many were missing)."""
        n = len(raw)
        ts = np.empty(n, np.float64)
        missing = 0
        if _NUMSET.issuperset(map(type, raw)):
            ts[:] = raw
            numeric = np.ones(n, np.bool_)
        else:
            numeric = np.zeros(n, np.bool_)
            for i, v in enumerate(raw):
                tv = type(v)
                if tv in _NUM:
                    ts[i] = v
                    numeric[i] = True
                elif v is None:
                    ts[i] = m_recv[mi[i]]
                    missing += 1
                elif tv is str:
                    ms = _iso_ms(v, self._m_tz[mi[i]])
                    if ms is None:
                        ts[i] = np.nan
                        if keep[i]:
                            keep[i] = False
                            reject(int(mi[i]), "bad_timestamp", lambda i=i: f"timestamp {_short(v)} is not ISO-8601")
                    else:
                        ts[i] = ms
                else:
                    ts[i] = np.nan
                    if keep[i]:
                        keep[i] = False
                        reject(int(mi[i]), "bad_timestamp", lambda i=i: f"timestamp is {type(v).__name__} {_short(v)}, expected a number or ISO-8601 text")
        return ts, numeric, missing

    def _ts_check(self, ts, numeric, mi, m_unit, reject, keep, now_ms: int, shown) -> np.ndarray:
        """Numbers in the profile's unit -> int64 ms; non-finite, future and stale ones rejected.
        ``shown(i)`` is row i's timestamp as sent, for the explanations."""
        unit = m_unit[mi]
        mult = _UNIT_MULT[unit]
        with np.errstate(over="ignore", invalid="ignore"):  # huge numbers -> inf: bad_timestamp below
            conv = np.where(unit == 0, _auto_ms(ts), ts * mult)
        ts = np.where(numeric, conv, ts)
        bad = keep & ~np.isfinite(ts)
        for i in np.flatnonzero(bad):
            keep[i] = False
            reject(int(mi[i]), "bad_timestamp", lambda i=i: f"timestamp {shown(i)!r} is not a finite number")
        ts = np.where(np.isfinite(ts), ts, 0.0)
        fut = keep & (ts > now_ms + self.max_future_ms)
        for i in np.flatnonzero(fut):
            keep[i] = False
            reject(int(mi[i]), "future_timestamp", lambda i=i: f"timestamp {_short(shown(i))} is {(ts[i] - now_ms) / 1e3:.0f} s in the future (limit {self.max_future_ms / 1e3:.0f} s)")
        if self.max_age_ms > 0:
            old = keep & (ts < now_ms - self.max_age_ms)
            for i in np.flatnonzero(old):
                keep[i] = False
                reject(int(mi[i]), "stale_timestamp", lambda i=i: f"timestamp {_short(shown(i))} is {(now_ms - ts[i]) / 86400e3:.1f} days old (limit {self.max_age_ms / 86400e3:.1f})")
        with np.errstate(invalid="ignore"):  # rows already rejected may hold out-of-range values
            return ts.astype(np.int64)

    def _finish_sensor(self, out: Decoded, reject, now_ms, m_unit, m_recv, slow, fast) -> None:
        """Sensor rows -> checked, converted, de-duplicated batch. ``slow``: rows of the general path
        (msg, dev, spec arrays; raw timestamp and value lists); ``fast``: rows of the recogniser
        (msg, dev, spec, timestamp and value float64 arrays: numbers already)."""
        if slow is not None:
            mi, dev, spec, r_ts, r_val = slow
            keep = np.ones(len(r_ts), np.bool_)
            raw = self._numbers(r_val, "value", mi, reject, keep)
            ts_raw, numeric, missing = self._ts_values(r_ts, mi, m_recv, reject, keep)
            out.no_timestamp += missing
        if fast is not None:
            f_mi, f_dev, f_spec, f_ts, f_val, f_int = fast
            if slow is None:
                mi, dev, spec, ts_raw, raw = f_mi, f_dev, f_spec, f_ts, f_val
                keep = np.ones(len(f_ts), np.bool_)
                numeric = keep.copy()
            else:  # both: merge back into message order (each part is in message order already)
                # a message is in one part only, so each row's merged place is its place in its
                # own part plus the rows of the other part from earlier messages
                n_slow, n_fast = len(r_ts), len(f_ts)
                order = np.empty(n_slow + n_fast, np.int64)
                order[np.arange(n_slow) + np.searchsorted(f_mi, mi)] = np.arange(n_slow)
                order[np.arange(n_fast) + np.searchsorted(mi, f_mi)] = np.arange(n_slow, n_slow + n_fast)
                mi = np.concatenate([mi, f_mi])[order]
                dev = np.concatenate([dev, f_dev])[order]
                spec = np.concatenate([spec, f_spec.astype(np.int32)])[order]
                raw = np.concatenate([raw, f_val])[order]
                ts_raw = np.concatenate([ts_raw, f_ts])[order]
                numeric = np.concatenate([numeric, np.ones(len(f_ts), np.bool_)])[order]
                keep = np.concatenate([keep, np.ones(len(f_ts), np.bool_)])[order]
                r_ts = _Shown(f_ts, f_int & 1, order, r_ts)
                r_val = _Shown(f_val, f_int & 2, order, r_val)
        if slow is None:
            r_ts = _Shown(ts_raw, f_int & 1)
            r_val = _Shown(raw, f_int & 2)
        metric = self._sm[spec]
        ts = self._ts_check(ts_raw, numeric, mi, m_unit, reject, keep, now_ms, r_ts.__getitem__)
        with np.errstate(over="ignore", invalid="ignore"):  # overflow -> inf, rejected below as non_finite
            val = raw * self._sf[spec] + self._so[spec]
        nonfin = keep & ~np.isfinite(val)
        for i in np.flatnonzero(nonfin):
            keep[i] = False
            reject(int(mi[i]), "non_finite", lambda i=i: f"{METRICS[metric[i]].name} value {r_val[i]!r} is not finite")
        lo, hi = self._slo[spec], self._shi[spec]
        rng = keep & ((val < lo) | (val > hi))
        for i in np.flatnonzero(rng):
            m = METRICS[metric[i]]
            keep[i] = False
            reject(int(mi[i]), "out_of_range", lambda i=i, m=m: f"{m.name} = {val[i]:g} {m.unit} is outside [{lo[i]:g}, {hi[i]:g}]"
                   + ("" if (lo[i], hi[i]) == (m.lo, m.hi) else " (narrowed by the vendor's profile)"))
        if not keep.all():
            idx = np.flatnonzero(keep)
            dev, metric, ts, val, mi = dev[idx], metric[idx], ts[idx], val[idx], mi[idx]
            r_val = None
        series = self.directory.series_slots(dev, metric)
        keep = np.ones(series.shape[0], np.bool_)
        marked = self.series_dups.apply(series, ts, keep)
        if self.series_window is not None:
            marked += self.series_window.apply(series, ts, keep, now_ms)
        if marked:
            for i in np.flatnonzero(~keep):
                reject(int(mi[i]), "duplicate", lambda i=i: f"{METRICS[metric[i]].name} of device {self.directory.device_id(int(dev[i]))!r} at ts {ts[i]} ms was already received")
            idx = np.flatnonzero(keep)
            series, dev, metric, ts, val = series[idx], dev[idx], metric[idx], ts[idx], val[idx]
        out.sensor = SensorBatch(series, dev, ts, val)
        out.metric = metric

    def _finish_position(self, messages, out: Decoded, reject, now_ms, m_unit, m_recv, p_msg, p_dev, p_ts, p_lat, p_lon, p_spd, p_alt) -> None:
        n = len(p_msg)
        mi = np.array(p_msg, np.int32)
        keep = np.ones(n, np.bool_)
        lat = self._numbers(p_lat, "latitude", mi, reject, keep)
        lon = self._numbers(p_lon, "longitude", mi, reject, keep)
        spd = self._numbers(p_spd, "speed", mi, reject, keep)
        alt = self._numbers(p_alt, "altitude", mi, reject, keep)
        ts, missing = self._timestamps(p_ts, mi, m_unit, m_recv, reject, keep, now_ms)
        out.no_timestamp += missing
        bad = keep & ~(np.isfinite(lat) & np.isfinite(lon))
        for i in np.flatnonzero(bad):
            keep[i] = False
            reject(int(mi[i]), "non_finite", lambda i=i: f"position ({p_lat[i]!r}, {p_lon[i]!r}) is not finite")
        bad = keep & ((np.abs(lat) > 90) | (np.abs(lon) > 180) | (spd < 0) | (spd > 500) | np.isinf(alt))
        for i in np.flatnonzero(bad):
            keep[i] = False
            reject(int(mi[i]), "out_of_range", lambda i=i: f"position lat={lat[i]:g} lon={lon[i]:g} speed={spd[i]:g} km/h is out of range")
        dev = np.array(p_dev, np.int32)
        before = keep.copy()
        marked = self.position_dups.apply(dev, ts, keep)
        if self.position_window is not None:
            marked += self.position_window.apply(dev, ts, keep, now_ms)
        if marked:
            for i in np.flatnonzero(before & ~keep):
                reject(int(mi[i]), "duplicate", lambda i=i: f"position of device {self.directory.device_id(int(dev[i]))!r} at ts {ts[i]} ms was already received")
        idx = np.flatnonzero(keep)
        out.position = PositionBatch(dev[idx], ts[idx], lat[idx], lon[idx], spd[idx], alt[idx])


class _Shown:
    """Row i's number as sent (an int if JSON had an integer), for explanations: from a float64
    column of the recogniser, or, in a batch merged from both paths (``order``: merged row ->
    slow rows, then fast rows), from the general path's raw list."""

    __slots__ = ("col", "is_int", "order", "slow")

    def __init__(self, col: np.ndarray, is_int: np.ndarray, order: np.ndarray | None = None,
                 slow: list | None = None) -> None:
        self.col, self.is_int, self.order, self.slow = col, is_int, order, slow

    def __getitem__(self, i: int):
        if self.order is not None:
            j = int(self.order[i])
            if j < len(self.slow):
                return self.slow[j]
            i = j - len(self.slow)
        x = float(self.col[i])
        return int(x) if self.is_int[i] else x


def _columns(items: list, tsf: str, fmap: dict[str, int], pos: dict):
    """Fast path for an array of flat objects that all have the same keys: whole columns at once.
    Returns None when the items are not that regular (the item-by-item path then explains why)."""
    first = items[0]
    if type(first) is not dict or (pos and (pos["lat"][0] in first or pos["lon"][0] in first)):
        return None
    if any("." in k for k in fmap) or "." in tsf or any("." in v[0] for v in pos.values()):
        return None  # dotted paths ("a.b") are looked up by the item path only
    nk = len(first)
    try:
        if set(map(len, items)) != {nk}:
            return None
        t_col = [it[tsf] for it in items] if tsf in first else [None] * len(items)
        fcols = [(fmap[k], [it[k] for it in items]) for k in first if k in fmap]
    except (KeyError, TypeError):
        return None
    if not fcols:
        return None
    return len(items), t_col, fcols


_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxstring, _REPR.maxother = 4, 60, 60


def _clip(s: str, n: int) -> str:
    return s if len(s) <= n else s[: n - 3] + "..."


def _short(v: object, n: int = 60) -> str:
    # bounded depth: repr() of a value nested ~1000 deep (JSON allows it) raises RecursionError
    s = _REPR.repr(v) if type(v) in (list, dict) else repr(v)
    return s if len(s) <= n else s[: n - 3] + "..."
