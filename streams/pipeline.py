"""The processing core shared by every entry point (edge runtime, demo replay, benchmarks):

    messages -> codec (batches + dead letters) -> processors (Numba) -> warning lifecycle -> store commit

:meth:`Pipeline.process` is synchronous and does one batch; it returns the warning events to
publish. The caller acknowledges the batch's messages after it returns (the commit is done by then).
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from gridwatch.config import GridwatchConfig, RuleConfig
from gridwatch.hw.profiles import METRICS, load_profiles, parse_timezone
from gridwatch.ingest.codec import Codec, Decoded, Message
from gridwatch.ingest.devices import DeviceDirectory
from gridwatch.observability import Counters
from gridwatch.records import PositionBatch, RegionPath, SensorBatch, Warning
from gridwatch.regions import RegionMapper
from gridwatch.streams.lifecycle import Lifecycle, RuleInfo
from gridwatch.streams.fused import FusedRules, fusable
from gridwatch.streams.processor import Processor, create
from gridwatch.streams.store import Store

log = logging.getLogger("gridwatch.streams.pipeline")


@dataclass(slots=True)
class Computed:
    """A batch decoded and run through the rules, not yet stored (see Pipeline.compute)."""

    n_messages: int
    sensor: SensorBatch
    position: PositionBatch
    events: list[tuple[str, Warning]]
    decoded: Decoded | None
    deliveries: tuple[str, bytes] | None
    now_ms: int


VALUE_IS_READING = {"threshold", "flatline", "speeding"}  # kinds whose warning value is the reading itself


def _zone_namer(p: Processor):
    """aux (a zone index) -> the zone's name from its GeoJSON properties."""
    polys = getattr(p.params, "polygons", None)

    def name(aux: int) -> str | None:
        if polys is None or not 0 <= aux < len(polys):
            return None
        props = polys.properties[aux] or {}
        return str(props.get("name", f"zone {aux}"))

    return name


class Pipeline:
    def __init__(self, cfg: GridwatchConfig, store: Store | None = None, counters: Counters | None = None,
                 source: str = "mqtt") -> None:
        self.cfg = cfg
        self.source = source
        self.counters = counters or Counters()
        self.directory = DeviceDirectory(cfg.ingest.unknown_devices, cfg.ingest.max_devices_per_vendor)
        self.codec = Codec(load_profiles([cfg.resolve(d) for d in cfg.ingest.profile_dirs]), self.directory,
                           max_payload_bytes=cfg.ingest.max_payload_bytes,
                           max_future_skew_s=cfg.ingest.max_future_skew_s, max_age_s=cfg.ingest.max_age_s,
                           max_topic_bytes=cfg.ingest.max_topic_bytes,
                           device_timezones={(d.vendor, d.id): parse_timezone(d.timezone) for d in cfg.devices if d.timezone},
                           dedup_window_s=cfg.ingest.dedup_window_s, dedup_max_mb=cfg.ingest.dedup_max_mb)
        geo = None
        if cfg.regions.geojson:
            geo = json.loads(Path(cfg.resolve(cfg.regions.geojson)).read_text(encoding="utf-8"))
        self.regions = RegionMapper(cfg.regions.default, cfg.regions.static, geo)
        self.rules: list[tuple[RuleConfig, Processor, RuleInfo]] = []
        for r in cfg.rules:
            p = create(r.kind, r.name, cfg.rule_params(r))
            info = RuleInfo(r.name, r.kind, r.severity, int(r.cooldown_s * 1000), int(r.min_active_s * 1000),
                            r.message, p.keyed_by, _zone_namer(p), r.kind in VALUE_IS_READING)
            self.rules.append((r, p, info))
        self.rule_info = {info.name: info for _, _, info in self.rules}
        # the series rules that can, run in one pass over each batch (state per slot in one record)
        members = [p for _, p, _ in self.rules if fusable(p)]
        self.fused = FusedRules(members) if len(members) > 1 else None
        self.lifecycle = Lifecycle(self._describe, self._region_of, cfg.alerts_mqtt.update_interval_s, self._tags)
        self.directory.on_new_device.append(self._enable_device)
        self.directory.on_new_series.append(self._enable_series)
        self.store = store
        # the stored directory first (its slots are what the stored readings point at), then the
        # config's devices: new ones get the next slots, edited ones are updated, all are bound
        if store is not None:
            store.load_directory(self.directory)
            self._seed_duplicate_window(store)
        for d in cfg.devices:
            self.directory.bind(d.id, d.vendor, d.kind, d.lat, d.lon, d.region)
        self.last_lat = np.full(0, np.nan)  # latest fix per device slot: places sensor warnings of moving devices
        self.last_lon = np.full(0, np.nan)

    def _seed_duplicate_window(self, store: Store) -> None:
        """Give the duplicate window what the store holds within it, so a vendor re-sending a
        batch after a restart is still recognised. Read newest chunks first, no more than the
        window's memory bound holds; the window is reckoned back from the newest stored time
        (a replay of old data is covered too; what is older than the clock's window goes at the
        first batch)."""
        for kind, win in (("readings", self.codec.series_window), ("positions", self.codec.position_window)):
            if win is None:
                continue
            t0 = time.monotonic()
            key, ts, newest = store.recent_keys(kind, win.window_ms, win.max_entries)
            if newest is None:
                continue
            win.seed(key, ts, newest)
            log.info("duplicate window seeded from the store", extra={"fields": {
                "kind": kind, "rows": int(key.shape[0]), "entries": win.count, "seconds": round(time.monotonic() - t0, 3)}})

    # --- rule binding ---------------------------------------------------------------------
    def _matches(self, r: RuleConfig, dev: int) -> bool:
        d = self.directory
        return (not r.device_kinds or d.kind[dev] in r.device_kinds) and (not r.vendors or d.vendor[dev] in r.vendors)

    def _enable_device(self, dev: int) -> None:
        for r, p, info in self.rules:
            if info.input == "device" and self._matches(r, dev):
                p.enable(dev)

    def _enable_series(self, s: int) -> None:
        d = self.directory
        dev, metric = int(d.series_device[s]), METRICS[int(d.series_metric[s])].name
        for r, p, info in self.rules:
            if info.input == "series" and (not r.metrics or metric in r.metrics) and self._matches(r, dev):
                p.enable(s)

    def _describe(self, inp: str, slot: int) -> tuple[str, str | None]:
        d = self.directory
        if inp == "series":
            return d.display_id(int(d.series_device[slot])), METRICS[int(d.series_metric[slot])].name
        return d.display_id(slot), None

    def _tags(self, inp: str, slot: int) -> dict:
        """Evidence facts of a warning's source: ``gateway``, the device it speaks through (a DJI
        aircraft's dock), when it is bound to one."""
        d = self.directory
        dev = int(d.series_device[slot]) if inp == "series" else slot
        g = d.gateway_id(dev)
        return {} if g is None else {"gateway": g}

    def _region_of(self, inp: str, slot: int, lat: float, lon: float) -> RegionPath:
        d = self.directory
        dev = int(d.series_device[slot]) if inp == "series" else slot
        did = d.device_id(dev)
        if lat != lat and d.lat[dev] is None and dev < self.last_lat.shape[0]:
            lat, lon = float(self.last_lat[dev]), float(self.last_lon[dev])
        if lat == lat and did not in self.regions.static and not d.region[dev]:
            r = self.regions.for_point(lat, lon)
            if r is not None:
                return r
        return self.regions.for_device(did, d.region[dev], d.lat[dev], d.lon[dev])

    # --- work -----------------------------------------------------------------------------
    def process(self, messages: list[Message], now_ms: int, deliveries: tuple[str, bytes] | None = None,
                handoff=None) -> list[tuple[str, Warning]]:
        """One batch; ``deliveries`` (which broker messages these are) is committed with it.
        ``handoff(sensor, positions, events)`` (the store-and-forward spool) runs before the
        commit: a batch is spooled before its deliveries are recorded, so a crash in between
        cannot make a redelivery look already handled; if it raises, nothing is committed."""
        b = self.compute(messages, now_ms, deliveries)
        if handoff is not None:
            handoff(b.sensor, b.position, b.events)
        self.commit(b)
        return b.events

    def compute(self, messages: list[Message], now_ms: int, deliveries: tuple[str, bytes] | None = None) -> "Computed":
        """Decode and run the rules: every change to memory (devices, duplicate filters, rule and
        warning state) happens here, once per batch. Its result is committed by :meth:`commit`,
        which may be called again with the same result after a failure: a batch is never decoded
        twice, so a retried commit stores exactly what the first attempt would have."""
        dec = self.codec.decode(messages, now_ms)
        events = self.run_rules(dec.sensor, dec.position)
        return Computed(len(messages), dec.sensor, dec.position, events, dec, deliveries, now_ms)

    def commit(self, b: "Computed") -> None:
        """Store the batch in one transaction (raises StoreWriteError, leaving nothing stored);
        the counters move only once it is stored."""
        s, pos, dec = b.sensor, b.position, b.decoded
        if self.store is not None:
            self.store.commit(self.directory, s, pos, [w for _, w in b.events], dec.dead, b.deliveries)
        c, src = self.counters, self.source
        c.add(src, "messages", b.n_messages)
        c.add(src, "readings_stored", len(s))
        c.add(src, "positions_stored", len(pos))
        if dec.rejected:
            c.reject(src, dec.rejected)
            for d in dec.dead[:3]:
                log.debug("rejected input", extra={"fields": {"topic": d.source, "reason": d.reason, "detail": d.detail}})
        if dec.no_timestamp:
            c.add(src, "readings_without_timestamp", dec.no_timestamp)
        for (vendor, name), n in dec.unmapped.items():  # fields no profile key maps: dropped, so counted
            c.drop(f"profile:{vendor}", f"unmapped:{name}", n)
        d = self.directory
        if d.gateway_bound or d.gateway_refused:
            c.set("devices", "gateway_bound", d.gateway_bound)
            c.set("devices", "gateway_refused", d.gateway_refused)
        if len(s):
            c.set(src, "lag_ms", float(b.now_ms - s.ts.max()))
        c.add("warnings", "events", len(b.events))
        for what, win in (("readings", self.codec.series_window), ("positions", self.codec.position_window)):
            if win is not None:
                c.set("dedup", f"{what}_window_entries", win.count)
                c.set("dedup", f"{what}_window_bytes", win.nbytes)
                c.set("dedup", f"{what}_evicted", win.evicted)

    def run_rules(self, s: SensorBatch, pos: PositionBatch) -> list[tuple[str, Warning]]:
        """Every rule over normalised batches -> warning events (shared with the cluster workers)."""
        if len(pos):
            if len(self.directory) > self.last_lat.shape[0]:
                n = len(self.directory) + 1024
                self.last_lat = np.concatenate([self.last_lat, np.full(n - self.last_lat.shape[0], np.nan)])
                self.last_lon = np.concatenate([self.last_lon, np.full(n - self.last_lon.shape[0], np.nan)])
            self.last_lat[pos.device] = pos.lat
            self.last_lon[pos.device] = pos.lon
        events: list[tuple[str, Warning]] = []
        fused = self.fused.process(s) if self.fused is not None and len(s) else {}
        for r, p, info in self.rules:
            if p.input == "sensor":
                if len(s):
                    ev = fused.get(p)
                    events += self.lifecycle.on_events(info, p.process(s) if ev is None else ev)
            elif len(pos):
                events += self.lifecycle.on_events(info, p.process(pos), pos.lat, pos.lon)
        if len(s):
            self.lifecycle.observe("series", s.series, s.ts, s.value)
        if len(pos):
            self.lifecycle.observe("device", pos.device, pos.ts, pos.speed_kmh)
        return events

    def tick(self, now_ms: int, handoff=None) -> list[tuple[str, Warning]]:
        """Time-driven work: offline devices, held-back clears, periodic updates."""
        b = self.compute_tick(now_ms)
        if b.events and handoff is not None:
            handoff(None, None, b.events)
        self.commit_tick(b)
        return b.events

    def compute_tick(self, now_ms: int) -> "Computed":
        events: list[tuple[str, Warning]] = []
        for r, p, info in self.rules:
            ev = p.tick(now_ms)
            if len(ev):
                events += self.lifecycle.on_events(info, ev)
        events += self.lifecycle.tick(now_ms, self.rule_info)
        return Computed(0, SensorBatch.empty(), PositionBatch.empty(), events, None, None, now_ms)

    def commit_tick(self, b: "Computed") -> None:
        if b.events and self.store is not None:
            self.store.commit(self.directory, warnings=[w for _, w in b.events])

    def warm_up(self) -> None:
        """Load every compiled kernel now (from Numba's cache, or compile it), not on the first batch:
        throwaway copies of the rules process one reading and one fix."""
        from gridwatch.records import PositionBatch, SensorBatch
        from gridwatch.streams.kernels.dedup import DuplicateFilter, WindowFilter

        one = np.zeros(1, np.int32)
        sensor = SensorBatch(one, one, np.array([1], np.int64), np.array([1.0]))
        pos = PositionBatch(one, np.array([1], np.int64), np.array([30.0]), np.array([114.0]), np.array([10.0]), np.array([np.nan]))
        together = []  # copies of the rules that run fused: only their one-pass kernel is used
        for r, p, _ in self.rules:
            q = create(r.kind, r.name, self.cfg.rule_params(r), capacity=1)
            q.enable(0)
            if self.fused is not None and fusable(q):
                together.append(q)
                continue
            q.process(sensor if q.input == "sensor" else pos)
            q.tick(2)
        if together:
            FusedRules(together).process(sensor)
        DuplicateFilter().apply(one, sensor.ts, np.ones(1, np.bool_))
        WindowFilter(1000, 2**16).apply(one, sensor.ts, np.ones(1, np.bool_), 1)

    def state_bytes(self) -> int:
        c = self.codec
        return (sum(p.nbytes for _, p, _ in self.rules) + c.series_dups.nbytes + c.position_dups.nbytes
                + sum(w.nbytes for w in (c.series_window, c.position_window) if w is not None))

