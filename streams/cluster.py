"""Cluster mode: faust-streaming workers (``gridwatch worker``) over Kafka, running the same
processors, kernels and warning lifecycle as the edge pipeline.

Data flow::

    edge boxes --(columnar batches, placed by device id)--> <readings_topic>  (P partitions)
        -> agent ``readings``: per partition, the rule set of the config (Processor subclasses,
           Numba kernels) + Lifecycle -> warning events
    workers + edge boxes --(JSON, keyed by warning id)--> <warning_events_topic>
        -> agent ``warnings``: merge and de-duplicate by id -> <warnings_topic>, the time-series
           store (InfluxDB v2 write API) and optionally the MQTT operator topics

State: one snapshot per partition
=================================

All rule state of one readings partition is one value of the Faust table ``partition-state``
(key = partition number, changelog-backed, compacted): the device directory of that partition
(device id -> slot, series slots), every processor's state arrays (``Processor.snapshot()``), the
lifecycle's active warnings / cooldowns / held-back clears, the partition's stream time and the
**offset of the last message applied**. Why per partition and not per device:

* the kernels work on dense per-slot arrays; a per-device table would mean one Python dict write
  and one changelog record per device per batch - the per-event cost the columnar design
  removes - and re-assembling arrays from thousands of keys after every rebalance;
* a rebalance moves whole partitions anyway, so the partition is the natural unit: the new
  owner reads one compacted key per partition and restores the arrays in one step;
* the offset inside the snapshot makes processing idempotent: after a crash, Kafka redelivers
  from the last *committed* offset, and messages at or below the snapshot's offset are skipped,
  so no reading is applied twice and none is lost.

**Every offset, once, in order** (the snapshot's offset is the truth, not Faust's commits): before
a partition's messages are applied, the worker checks that they continue the snapshot's offset.
Faust's offset bookkeeping can move past a message that was never handed to the agent (a
prefetched message delivered out of order around a rebalance is taken for a "gap" of offsets that
do not exist, and a single missing offset at the head of the acked list is committed over:
faust-streaming issues #221, #312, #606): that message is then processed by nobody. So a hole
(or, for a partition without a snapshot, a first message after the log's start) is filled by
reading the missing offsets straight from Kafka (:class:`OffsetGapFiller`, outside the consumer
group) and applying them first (counted: ``gap_fills``, ``gap_messages``; offsets already deleted
by retention: ``gap_expired_messages``). A batch that fails part-way (an error, a cancel) leaves
no trace in memory: the partitions it touched fall back to their last stored snapshot, and the
agent retries the batch with backoff (``batch_failures``) instead of letting Faust acknowledge
messages whose effects were lost.

The cost is that the whole partition state is rewritten per batch (pickled numpy arrays, about 480 kB
for 10k devices under the five standard rules); size partitions so that this stays well under the
changelog's ``max.message.bytes`` (see docs/cluster.md). A snapshot is written with an explicit
partition (= the readings partition) and awaited before the batch's offsets are acknowledged, so
a committed offset is never ahead of the stored state. A rebalance hands a partition over only
after its last snapshot from this worker is acknowledged (:meth:`WorkerCore.on_revoked`).

Re-sent readings: the duplicate window per partition
====================================================

A vendor that re-publishes a batch (minutes or hours later) must not have it run through the
rules and stored twice. As on the edge, every (series, ts) and (device, ts) of the last
``ingest.dedup_window_s`` is remembered (the codec's ``WindowFilter``s, one pair per partition,
each bounded by ``ingest.dedup_max_mb`` with the edge's full policy and ``evicted`` counter) and a
row already seen is rejected as a duplicate (``duplicate_readings`` / ``duplicate_positions``): left
out of the rules and of the time-series writes. "Now" for the window is the partition's stream
time (event time), so a replay marks the same rows. The window is *not* in the snapshot (it would
be rewritten per batch: tens of MiB against the snapshot's hundreds of kB); the readings
partition already holds every row the window needs, so a partition restored from the changelog
(a restart, a rebalance, a retried batch) reads it back from Kafka before its first batch
(:meth:`WorkerCore.seed_window`: keys only, no rules, no effects; newest first, stopping when the
bound is full). Retention of the readings topic shorter than the window shortens what is read back.

Exactly-once effect for warnings
================================

Warning ids are deterministic (source, rule, zone, start time); timer work runs on an event-time
grid (``tick_interval_s``) at message boundaries, so a replay after a crash produces the same
transitions with the same ids and values. A crash between "warning events sent" and "snapshot
stored" re-sends them; the ``warnings`` agent keeps the furthest version seen per id (table
``warnings-seen``: state rank, last_ts) and drops anything not newer, so the warnings topic, the
store and MQTT see each version once (the store also upserts by the point key: same
measurement + tags + timestamp, with QuestDB's DEDUP UPSERT KEYS). Warnings forwarded by edge
boxes carry the same ids and merge into the same record. Not covered: a zombie worker that keeps
writing after its partitions moved (that needs Kafka transactions with fencing).
"""
from __future__ import annotations

import asyncio
import json
import logging
import os
import pickle
import threading
import time
import urllib.parse
import urllib.request
from collections import defaultdict
from typing import Any

import numpy as np
import orjson

from gridwatch.config import GridwatchConfig
from gridwatch.hw.profiles import METRIC_ID
from gridwatch.ingest import wire
from gridwatch.ingest.kafka_forward import warning_event_payload
from gridwatch.records import PositionBatch, SensorBatch, Warning, RegionPath
from gridwatch.streams.pipeline import Pipeline
from gridwatch.ingest.devices import device_key
from gridwatch.streams.slots import SlotRegistry

log = logging.getLogger("gridwatch.streams.cluster")
SNAPSHOT_VERSION = 2  # 2: device slots keyed by (vendor, id)
_STATE_RANK = {"active": 0, "cleared": 1}


# ---------------------------------------------------------------------------------------------
# Per-partition state


class PartitionState:
    """The rule set of the config applied to one readings partition."""

    def __init__(self, cfg: GridwatchConfig, partition: int) -> None:
        self.cfg = cfg
        self.partition = partition
        self.pl = Pipeline(cfg, store=None, source=f"kafka-p{partition}")
        self.offset = -1  # last Kafka offset applied
        self.stream_time = np.iinfo(np.int64).min
        self.last_tick = np.iinfo(np.int64).min
        self.tick_ms = max(1, int(cfg.worker.tick_interval_s * 1000))
        self.skipped = 0  # messages at or below the snapshot offset (replays)
        self.bad = 0  # messages that were not valid batches
        # the duplicate window of this partition's devices (ingest.dedup_window_s; None when 0):
        # the codec's two WindowFilters, (series, ts) and (device, ts), reckoned in event time
        # (the partition's stream time), so a replay marks the same rows. Not in the snapshot:
        # a restored state is seeded from the readings partition itself (WorkerCore.seed_window).
        self.series_window = self.pl.codec.series_window
        self.position_window = self.pl.codec.position_window
        self.needs_seed = False  # set by load(): the window has to be read back from Kafka
        self.duplicate_readings = 0  # rows rejected as 'duplicate' (counted, not applied, not stored)
        self.duplicate_positions = 0

    # -- applying messages ----------------------------------------------------------------
    def _slots(self, wb: wire.WireBatch) -> np.ndarray:
        d = self.pl.directory
        get = d.slots._slot.get
        vendor = [v for v, _ in wb.classes]
        out = np.array([get(device_key(vendor[c], i), -1) for i, c in zip(wb.ids, wb.device_class.tolist())], np.int32)
        for i in np.flatnonzero(out < 0).tolist():  # first sight: register (binds the rules)
            dev = wb.device(i)
            out[i] = d.add(dev.id, dev.vendor, dev.kind)
        return out

    def _series(self, dev: np.ndarray, met: np.ndarray) -> np.ndarray:
        """DeviceDirectory.series_slots with a fast path for known series (one dict lookup each)."""
        d = self.pl.directory
        keys = dev.astype(np.int64) * 256 + met
        uniq, inv = np.unique(keys, return_inverse=True)
        get = d.series._slot.get
        slots = np.array([get(k, -1) for k in uniq.tolist()], np.int32)
        new = np.flatnonzero(slots < 0)
        if new.shape[0]:
            k = uniq[new]
            slots[new] = d.series_slots((k // 256).astype(np.int32), k % 256)
        return slots[inv]

    def _sensor(self, wb: wire.WireBatch, now: int) -> tuple[SensorBatch, np.ndarray | None]:
        """The message's readings for the rules, less the duplicates, and which of its rows are
        not duplicates (None: all of them)."""
        c = wb.cols
        mids = np.array([METRIC_ID.get(m, -1) for m in wb.metrics], np.int64)
        met = mids[c["metric"]] if len(mids) else np.empty(0, np.int64)
        dev = self._slots(wb)[c["device"]]
        ts, val = c["ts"], c["value"]
        rows = None
        if (met < 0).any():
            rows = np.flatnonzero(met >= 0)
            dev, met, ts, val = dev[rows], met[rows], ts[rows], val[rows]
        series = self._series(dev, met)
        ts = ts.astype(np.int64)
        fresh = None
        if self.series_window is not None and series.shape[0]:
            keep = np.ones(series.shape[0], np.bool_)
            marked = self.series_window.apply(series, ts, keep, now)
            if marked:
                self.duplicate_readings += marked
                series, dev, ts, val = series[keep], dev[keep], ts[keep], val[keep]
                fresh = np.ones(len(wb), np.bool_)
                fresh[np.flatnonzero(~keep) if rows is None else rows[~keep]] = False
        return SensorBatch(series, dev, ts, val.astype(np.float64)), fresh

    def _position(self, wb: wire.WireBatch, now: int) -> PositionBatch:
        c = wb.cols
        dev = self._slots(wb)[c["device"]]
        ts = c["ts"].astype(np.int64)
        cols = [c[k].astype(np.float64) for k in ("lat", "lon", "speed_kmh", "alt_m")]
        if self.position_window is not None and dev.shape[0]:
            keep = np.ones(dev.shape[0], np.bool_)
            marked = self.position_window.apply(dev, ts, keep, now)
            if marked:
                self.duplicate_positions += marked
                dev, ts, cols = dev[keep], ts[keep], [x[keep] for x in cols]
        return PositionBatch(dev, ts, *cols)

    # -- the duplicate window, read back from the log -----------------------------------------
    def window_keys(self, wb: wire.WireBatch) -> tuple[np.ndarray, np.ndarray]:
        """(window key, ts) of a message this partition already applied: series slots for
        readings, device slots for fixes. Lookups only: nothing is registered, no rule runs."""
        d = self.pl.directory
        get = d.slots._slot.get
        vendor = [v for v, _ in wb.classes]
        slot = np.array([get(device_key(vendor[c], i), -1) for i, c in zip(wb.ids, wb.device_class.tolist())], np.int64)
        c = wb.cols
        dev = slot[c["device"]] if slot.shape[0] else np.empty(0, np.int64)
        ts = c["ts"].astype(np.int64)
        if wb.type != wire.READINGS:
            ok = dev >= 0
            return dev[ok].astype(np.int32), ts[ok]
        mids = np.array([METRIC_ID.get(m, -1) for m in wb.metrics], np.int64)
        met = mids[c["metric"]] if len(mids) else np.empty(0, np.int64)
        ok = (dev >= 0) & (met >= 0)
        keys = dev[ok] * 256 + met[ok]
        uniq, inv = np.unique(keys, return_inverse=True)
        sget = d.series._slot.get
        slots = np.array([sget(k, -1) for k in uniq.tolist()], np.int64)[inv]
        ts = ts[ok]
        ok = slots >= 0
        return slots[ok].astype(np.int32), ts[ok]

    def apply(self, messages: list[tuple[int, bytes]],
              rows: list | None = None) -> tuple[list[tuple[str, Warning]], int, int]:
        """Apply messages (offset, value) in offset order; returns (events, readings, fixes).
        Rows already seen within the duplicate window are left out (counted in
        ``duplicate_readings`` / ``duplicate_positions``). ``rows``: a list that receives, per
        readings message, (device ids, metric names, ts, values) of its rows that are not duplicates
        (what the time-series sink writes)."""
        events: list[tuple[str, Warning]] = []
        sens: list[SensorBatch] = []
        poss: list[PositionBatch] = []
        n_r = n_p = 0
        for off, value in messages:
            if off <= self.offset:
                self.skipped += 1
                continue
            self.offset = off
            try:
                wb = wire.decode(value)
            except wire.WireError as e:
                self.bad += 1
                log.warning("partition %d offset %d: not a gridwatch batch (%s)", self.partition, off, e)
                continue
            if len(wb) == 0:
                continue
            mx = int(wb.cols["ts"].max())
            now = max(self.stream_time, mx)  # the window's "now": event time, the same on a replay
            if wb.type == wire.READINGS:
                b, fresh = self._sensor(wb, now)
                sens.append(b)
                n_r += len(b)
                if rows is not None:
                    c = wb.cols
                    dev, met, ts, val = c["device"], c["metric"], c["ts"], c["value"]
                    if fresh is not None:
                        dev, met, ts, val = dev[fresh], met[fresh], ts[fresh], val[fresh]
                    if dev.shape[0]:
                        rows.append((np.array(wb.ids, object)[dev], np.array(wb.metrics, object)[met], ts, val))
            else:
                b = self._position(wb, now)
                poss.append(b)
                n_p += len(b)
            if mx > self.stream_time:
                self.stream_time = mx
            g = (self.stream_time // self.tick_ms) * self.tick_ms
            if g > self.last_tick:  # timer work at an event-time grid point, at a message boundary
                events += self._process(sens, poss)
                sens, poss = [], []
                events += self.pl.tick(g)
                self.last_tick = g
        events += self._process(sens, poss)
        return events, n_r, n_p

    def _process(self, sens: list[SensorBatch], poss: list[PositionBatch]) -> list[tuple[str, Warning]]:
        """The rule loop of Pipeline.process, on already normalised batches."""
        s = SensorBatch.concat(sens) if sens else SensorBatch.empty()
        pos = PositionBatch.concat(poss) if poss else PositionBatch.empty()
        return self.pl.run_rules(s, pos)

    # -- snapshot ---------------------------------------------------------------------------
    def dump(self) -> bytes:
        pl, d, lc = self.pl, self.pl.directory, self.pl.lifecycle
        ns = len(d.series)
        state = {
            "v": SNAPSHOT_VERSION, "partition": self.partition, "offset": self.offset,
            "stream_time": self.stream_time, "last_tick": self.last_tick,
            "devices": (d.slots.keys, d.vendor, d.kind, d.lat, d.lon, d.region),
            "series": (d.series.keys, d.series_device[:ns].copy(), d.series_metric[:ns].copy()),
            "rules": {p.name: p.snapshot() for _, p, _ in pl.rules},
            "lifecycle": (lc.active, lc._cleared_at, lc._active_slots),
            "last_pos": (pl.last_lat, pl.last_lon),
        }
        return pickle.dumps(state, protocol=5)  # float state arrays barely compress; zlib cost 3x pickle

    @classmethod
    def load(cls, cfg: GridwatchConfig, partition: int, blob: bytes) -> "PartitionState":
        # The changelog topic is written only by gridwatch workers (restrict it with ACLs).
        state = pickle.loads(blob)
        if state.get("v") != SNAPSHOT_VERSION:
            raise ValueError(f"partition snapshot version {state.get('v')} (expected {SNAPSHOT_VERSION})")
        self = cls(cfg, partition)
        pl, d, lc = self.pl, self.pl.directory, self.pl.lifecycle
        d.restore(*state["devices"])
        skeys, d.series_device, d.series_metric = state["series"]
        d.series = _registry(skeys)
        for _, p, _ in pl.rules:
            snap = state["rules"].get(p.name)
            if snap is not None:
                p.restore(snap)
            else:  # a rule added since the snapshot: bind it to the known devices/series
                for dev in range(len(d)):
                    pl._enable_device(dev)
                for s in range(len(d.series)):
                    pl._enable_series(s)
        rule_names = set(pl.rule_info)
        active, cleared, slots = state["lifecycle"]
        lc.active = {k: v for k, v in active.items() if k[0] in rule_names}
        lc._cleared_at = cleared
        lc._active_slots = slots
        pl.last_lat, pl.last_lon = state["last_pos"]
        self.offset, self.stream_time, self.last_tick = state["offset"], state["stream_time"], state["last_tick"]
        self.needs_seed = self.series_window is not None and self.offset >= 0
        return self


def _registry(keys: list) -> SlotRegistry:
    r = SlotRegistry()
    r.keys = list(keys)
    r._slot = {k: i for i, k in enumerate(r.keys)}
    return r


# ---------------------------------------------------------------------------------------------
# Warning merge / de-duplication


def warning_from_dict(d: dict[str, Any]) -> Warning:
    reg = d.get("region") or {}
    return Warning(id=d["id"], rule=d["rule"], kind=d["kind"], severity=d["severity"], source=d["source"],
                   region=RegionPath(reg.get("city", ""), reg.get("county", ""), reg.get("town", ""), reg.get("grid", "")),
                   state=d["state"], start_ts=int(d["start_ts"]), last_ts=int(d["last_ts"]),
                   cleared_ts=None if d.get("cleared_ts") is None else int(d["cleared_ts"]),
                   value=float("nan") if d.get("value") is None else float(d["value"]),
                   message=d.get("message") or "", zone=d.get("zone"), evidence=d.get("evidence") or {})


def version_of(w: dict[str, Any]) -> tuple[int, int]:
    """How far along a warning is: (state rank, last_ts). A version not beyond the stored one is a duplicate."""
    return _STATE_RANK.get(w.get("state"), 0), int(w.get("last_ts") or 0)


QUESTDB_WARNINGS_DDL = (
    "CREATE TABLE IF NOT EXISTS {t} (kind SYMBOL, rule SYMBOL, source SYMBOL, zone SYMBOL, id VARCHAR, "
    "severity VARCHAR, state VARCHAR, region VARCHAR, value DOUBLE, last_ts LONG, cleared_ts LONG, message VARCHAR, "
    "evidence VARCHAR, timestamp TIMESTAMP) TIMESTAMP(timestamp) PARTITION BY DAY WAL "
    "DEDUP UPSERT KEYS(timestamp, kind, rule, source, zone)")


def questdb_exec(url: str, sql: str, timeout: float = 10.0) -> None:
    """Run one SQL statement on QuestDB's HTTP endpoint; its error, if any, as RuntimeError."""
    q = urllib.parse.urlencode({"query": sql})
    with urllib.request.urlopen(f"{url.rstrip('/')}/exec?{q}", timeout=timeout) as r:
        ans = json.loads(r.read())
    if "error" in ans:
        raise RuntimeError(f"QuestDB: {ans['error']}")


def questdb_create_warnings_table(url: str, table: str = "warnings", timeout: float = 10.0) -> None:
    """Create the warnings table deduplicated on the point key (so re-sent versions upsert)."""
    questdb_exec(url, QUESTDB_WARNINGS_DDL.format(t=table), timeout)


# ---------------------------------------------------------------------------------------------
# Topics


async def ensure_topics(cfg: GridwatchConfig, timeout: float = 30.0) -> None:
    """Create the readings / warning-events / warnings topics with ``kafka.partitions`` partitions
    if missing (existing topics are left as they are)."""
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic
    from aiokafka.errors import TopicAlreadyExistsError

    k = cfg.kafka
    from gridwatch.ingest.kafka_security import client_kwargs

    admin = AIOKafkaAdminClient(bootstrap_servers=k.bootstrap_servers, request_timeout_ms=int(timeout * 1000),
                                **client_kwargs(k))
    await admin.start()
    try:
        names = (k.readings_topic, k.warning_events_topic, k.warnings_topic)
        existing = set(await admin.list_topics())
        new = [NewTopic(n, k.partitions, k.replication_factor) for n in names if n not in existing]
        if new:
            try:
                await admin.create_topics(new, timeout_ms=int(timeout * 1000))
            except TopicAlreadyExistsError:
                pass
        deadline = time.monotonic() + timeout
        while True:
            desc = await admin.describe_topics(list(names))
            if all(t.get("partitions") and all(p.get("leader", -1) >= 0 for p in t["partitions"]) for t in desc):
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"topics without leaders after {timeout}s: {desc}")
            await asyncio.sleep(0.1)
    finally:
        await admin.close()


class OffsetGapFiller:
    """Reads a range of offsets of one readings partition straight from Kafka (no consumer group,
    nothing committed): the messages the consumer group's bookkeeping skipped."""

    def __init__(self, cfg: GridwatchConfig, timeout_s: float = 30.0) -> None:
        self.k = cfg.kafka
        self.timeout_s = timeout_s
        self._c = None

    async def _consumer(self):
        if self._c is None:
            from aiokafka import AIOKafkaConsumer

            from gridwatch.ingest.kafka_security import client_kwargs

            c = AIOKafkaConsumer(bootstrap_servers=self.k.bootstrap_servers, group_id=None, enable_auto_commit=False,
                                 auto_offset_reset="earliest", fetch_max_bytes=64 * 1024 * 1024,
                                 max_partition_fetch_bytes=64 * 1024 * 1024, **client_kwargs(self.k))
            await c.start()
            self._c = c
        return self._c

    async def log_start(self, topic: str, partition: int) -> int:
        from aiokafka import TopicPartition

        c = await self._consumer()
        tp = TopicPartition(topic, partition)
        return (await c.beginning_offsets([tp]))[tp]

    async def offset_for_time(self, topic: str, partition: int, ts_ms: int) -> int | None:
        """The first offset whose message timestamp is at or after ``ts_ms`` (None: no such message)."""
        from aiokafka import TopicPartition

        c = await self._consumer()
        tp = TopicPartition(topic, partition)
        got = (await c.offsets_for_times({tp: max(0, int(ts_ms))}))[tp]
        return None if got is None else got.offset

    async def fetch(self, topic: str, partition: int, start: int, end: int,
                    max_bytes: int = 64 * 1024 * 1024) -> tuple[list[tuple[int, bytes]], int]:
        """Messages ``start <= offset < end`` as (offset, value), in order, stopping after about
        ``max_bytes`` (at least one message: the caller applies them and asks for the rest), and
        how many offsets before them retention had already deleted. Raises TimeoutError if Kafka
        does not deliver them in time."""
        from aiokafka import TopicPartition

        c = await self._consumer()
        tp = TopicPartition(topic, partition)
        first = (await c.beginning_offsets([tp]))[tp]
        expired = max(0, min(end, first) - start)
        start = max(start, first)
        out: list[tuple[int, bytes]] = []
        if start >= end:
            return out, expired
        c.assign([tp])
        c.seek(tp, start)
        deadline = time.monotonic() + self.timeout_s
        nxt, size = start, 0
        while nxt < end and size < max_bytes:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{topic}[{partition}]: offsets {nxt}..{end - 1} not readable in {self.timeout_s}s")
            got = await c.getmany(tp, timeout_ms=500, max_records=min(end - nxt, 500))
            for r in got.get(tp, []):
                if nxt <= r.offset < end and size < max_bytes:
                    out.append((r.offset, r.value))
                    size += len(r.value or b"")
                    nxt = r.offset + 1
        return out, expired

    async def close(self) -> None:
        if self._c is not None:
            c, self._c = self._c, None
            await c.stop()


# ---------------------------------------------------------------------------------------------
# The Faust application


class WorkerCore:
    """What the agents do, kept out of the agent bodies so it can be read (and tested) alone."""

    def __init__(self, cfg: GridwatchConfig, app, state_table, seen_table, events_topic, warnings_topic) -> None:
        self.cfg = cfg
        self.app = app
        self.state_table = state_table
        self.seen_table = seen_table
        self.events_topic = events_topic
        self.warnings_topic = warnings_topic
        self.origin = f"worker-{os.getpid()}"
        self.states: dict[int, PartitionState] = {}
        self.blobs: dict[int, bytes] = {}
        self.sink = None
        self._sink_lock = threading.Lock()
        self.mqtt = None
        self.stats: dict[str, Any] = defaultdict(int)
        self.stats["pid"] = os.getpid()
        self.filler = OffsetGapFiller(cfg)
        self.max_fill_bytes = 64 * 1024 * 1024  # a hole is read and applied this much at a time
        # The hand-over of a partition (see on_revoked): partitions revoked and not yet assigned
        # again get no snapshot from this worker; changelog records still on their way to Kafka;
        # whether a readings batch is being applied.
        self.fenced: set[int] = set()
        self.pending_changelog: set[asyncio.Future] = set()
        self._batch_idle = asyncio.Event()
        self._batch_idle.set()

    # -- readings -------------------------------------------------------------------------
    def state_for(self, p: int) -> PartitionState:
        key = str(p).encode()
        blob = self.state_table.data.get(key)
        st = self.states.get(p)
        if st is not None and blob is self.blobs.get(p):
            return st
        if st is not None and blob is not None and blob == self.blobs.get(p):
            # a rebalance left the partition here and the changelog restore put back the snapshot
            # this worker wrote: the state in memory is that snapshot, and its duplicate window
            # is still right (not read back from Kafka again)
            self.blobs[p] = blob
            self.stats["kept_partitions"] += 1
            return st
        if blob is not None:  # recovered from the changelog (a rebalance moved the partition here)
            st = PartitionState.load(self.cfg, p, blob)
            self.stats["restored_partitions"] += 1
            log.info("partition %d: state restored (offset %d, %d devices)", p, st.offset, len(st.pl.directory))
        else:
            st = PartitionState(self.cfg, p)
        self.states[p], self.blobs[p] = st, blob
        return st

    async def seed_window(self, p: int, st: PartitionState) -> None:
        """Give a restored partition its duplicate window back: the (key, ts) of the messages it
        already applied whose timestamps fall in the window, read from the readings partition
        itself (no rules, no effects). Read newest first, a growing range of offsets at a time,
        until both windows hold as many entries as their memory bound allows (a kind of which
        nothing was read while the other filled up counts as done: a partition of sensors only
        does not read its whole window for fixes it never had) or the window's start is reached;
        then inserted oldest first, as they were applied.

        The window is reckoned back from the partition's stream time. The first offset read is
        Kafka's for the message timestamp ``stream time - window - ingest.max_future_skew_s``:
        an edge box stamps a message when it forwards it, after it rejected readings more than
        the skew ahead of its clock, so no earlier message holds a reading inside the window."""
        t0 = time.monotonic()
        topic = self.cfg.kafka.readings_topic
        wins = [w for w in (st.series_window, st.position_window) if w is not None]
        if not wins or st.stream_time == np.iinfo(np.int64).min:  # nothing with a timestamp applied yet
            st.needs_seed = False
            return
        hi = st.offset + 1
        window_ms = wins[0].window_ms
        start_ts = st.stream_time - window_ms - int(self.cfg.ingest.max_future_skew_s * 1000)
        lo = await self.filler.offset_for_time(topic, p, start_ts)
        lo = hi if lo is None else min(lo, hi)
        lo = max(lo, await self.filler.log_start(topic, p))
        want = {wire.READINGS: st.series_window.max_entries, wire.POSITIONS: st.position_window.max_entries}
        have = {wire.READINGS: 0, wire.POSITIONS: 0}
        chunks: list[list[tuple[int, np.ndarray, np.ndarray]]] = []
        n_msgs = n_bytes = 0
        step = 64
        def done(k: int) -> bool:  # full, or none of this kind while the other kind's window filled up
            other = wire.POSITIONS if k == wire.READINGS else wire.READINGS
            return have[k] >= want[k] or (have[k] == 0 and have[other] >= want[other])

        while hi > lo and not all(done(k) for k in have):
            a = max(lo, hi - step)
            got: list[tuple[int, np.ndarray, np.ndarray]] = []
            nxt = a
            while nxt < hi:
                msgs, _ = await self.filler.fetch(topic, p, nxt, hi, self.max_fill_bytes)
                if not msgs:  # deleted by retention meanwhile
                    break
                for _, v in msgs:
                    n_bytes += len(v)
                    try:
                        wb = wire.decode(v)
                    except wire.WireError:
                        continue
                    if len(wb) == 0 or have[wb.type] >= want[wb.type]:
                        continue
                    key, ts = st.window_keys(wb)
                    got.append((wb.type, key, ts))
                n_msgs += len(msgs)
                nxt = msgs[-1][0] + 1
            for k, key, _ in got:
                have[k] += key.shape[0]
            chunks.append(got)
            hi = a
            step *= 2
        for k, win in ((wire.READINGS, st.series_window), (wire.POSITIONS, st.position_window)):
            parts = [(key, ts) for got in reversed(chunks) for kind, key, ts in got if kind == k]
            if parts:
                # the newest rows the bound holds (more would make the table evict down to 3/4)
                key, ts = (np.concatenate(x)[-want[k]:] for x in zip(*parts))
                win.seed(key, ts, st.stream_time)
        st.needs_seed = False
        dt = time.monotonic() - t0
        s = self.stats
        s["dedup_seeds"] += 1
        s["dedup_seed_messages"] += n_msgs
        s["dedup_seed_bytes"] += n_bytes
        s["dedup_seed_s"] = s.get("dedup_seed_s", 0.0) + dt
        log.info("partition %d: duplicate window read back from offsets %d..%d (%d messages, %d readings, "
                 "%d fixes) in %.2fs", p, hi, st.offset, n_msgs, have[wire.READINGS], have[wire.POSITIONS], dt)

    async def process_readings(self, events, *, backoff_s: float = 0.5, max_backoff_s: float = 30.0) -> None:
        """:meth:`on_readings` until it succeeds: a failed try left no trace in memory (see
        there), so the batch is applied again from the last stored snapshot. The agent does not
        move on (Faust would acknowledge the batch's messages) while it fails."""
        delay = backoff_s
        while True:
            try:
                await self.on_readings(events)
                return
            except Exception as e:  # noqa: BLE001 - retried; nothing of the try is kept
                self.stats["batch_failures"] += 1
                log.warning("readings batch failed (%s: %s); its partitions are back at their last snapshot, "
                            "retrying in %.1fs", type(e).__name__, e, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, max_backoff_s)

    async def complete(self, p: int, st: PartitionState,
                       msgs: list[tuple[int, bytes]]) -> tuple[list[tuple[int, bytes]], list[tuple[int, bytes]]]:
        """``msgs`` (sorted) with every offset the consumer did not deliver between the state's
        offset and them read from Kafka and put in place, so that nothing is skipped. A hole is
        read ``self.max_fill_bytes`` at a time (memory stays bounded): returns (messages to apply now, delivered messages
        left for the next round, after those are applied)."""
        topic = self.cfg.kafka.readings_topic
        expected = st.offset + 1 if st.offset >= 0 else None
        out: list[tuple[int, bytes]] = []
        for i, (off, v) in enumerate(msgs):
            if off <= st.offset or (expected is not None and off < expected):
                out.append((off, v))  # a replay (or a duplicate): apply() skips it
                continue
            if expected is None:  # no snapshot: nothing of this partition was applied yet
                expected = await self.filler.log_start(topic, p)
            if off > expected:
                got, expired = await self.filler.fetch(topic, p, expected, off, self.max_fill_bytes)
                self.stats["gap_fills"] += 1
                self.stats["gap_messages"] += len(got)
                self.stats["gap_expired_messages"] += expired
                last = got[-1][0] if got else off - 1
                log.warning("partition %d: offsets %d..%d were not delivered by the consumer; read %d of them from "
                            "Kafka%s", p, expected, last, len(got),
                            f" ({expired} already deleted by retention)" if expired else "")
                out.extend(got)
                if got and last < off - 1:  # more of the hole than one read holds: apply these first
                    return out, msgs[i:]
            out.append((off, v))
            expected = off + 1
        return out, []

    async def on_readings(self, events) -> None:
        t0 = time.time()
        by_p: dict[int, list[tuple[int, bytes]]] = defaultdict(list)
        for e in events:
            by_p[e.message.partition].append((e.message.offset, e.value))
        before = {p: self.state_table.data.get(str(p).encode()) for p in by_p}
        self._batch_idle.clear()
        try:
            await self._on_readings(by_p, len(events), t0, before)
        except BaseException:
            # the batch did not complete: forget what it did to the in-memory state (a state
            # whose offset moved on would take the batch's messages for replays and skip them)
            for p, blob in before.items():
                self._forget(p, blob)
            raise
        finally:
            self._batch_idle.set()

    def _changelog(self, table, p: int, key: bytes, value: bytes):
        """Send a table record to its changelog, remembered until Kafka acknowledged it."""
        fut = table.send_changelog(p, key, value)
        self.pending_changelog.add(fut)
        fut.add_done_callback(self.pending_changelog.discard)
        return fut

    async def on_revoked(self, revoked) -> None:
        """A rebalance takes partitions away (called inside the consumer's revocation, before this
        worker rejoins the group, so before any new owner can restore a partition).

        The new owner restores a partition from the changelog as far as it reaches at that
        moment: a snapshot this worker writes later is not in it, and the messages of that
        snapshot are applied twice. Faust's own flush does not close this: its producer buffer
        flush gives up after 0.1 s without a message sent (so a snapshot can still sit in the
        buffer under load), and with ``stream_wait_empty`` off a batch taken before the
        revocation can still be applied and snapshotted after it. So here, in order: the batch
        being applied may finish (it snapshots while its partitions are still assigned); then
        the revoked partitions are fenced (``owns`` is False for them until they are assigned
        again: a batch arriving now drops their messages, the new owner applies them); then
        every changelog record already sent is awaited until Kafka acknowledged it. Each wait
        is bounded (half the session timeout), and one that runs out is counted
        (``revocation_batch_waits_timed_out``, ``revocation_changelog_unflushed``): that is the
        case in which a message can be applied twice."""
        topic = self.cfg.kafka.readings_topic
        ps = {tp.partition for tp in revoked if tp.topic == topic}
        if not ps:
            return
        limit = max(0.5, self.cfg.worker.session_timeout_s * 0.5)
        t0 = time.monotonic()
        if not self._batch_idle.is_set():
            try:
                await asyncio.wait_for(self._batch_idle.wait(), limit)
                self.stats["revocation_batch_waits"] += 1
            except asyncio.TimeoutError:
                self.stats["revocation_batch_waits_timed_out"] += 1
                log.warning("partitions %s revoked while a readings batch was still being applied after %.1fs; "
                            "it will not snapshot them", sorted(ps), limit)
        self.fenced |= ps
        pending = [f for f in self.pending_changelog if not f.done()]
        if pending:
            left = max(0.1, limit - (time.monotonic() - t0))
            done, not_done = await asyncio.wait(pending, timeout=left)
            self.stats["revocation_changelog_flushed"] += len(done)
            if not_done:
                self.stats["revocation_changelog_unflushed"] += len(not_done)
                log.warning("%d changelog records not acknowledged by Kafka %.1fs into a rebalance; a new owner "
                            "may restore an older snapshot and apply its messages again", len(not_done), limit)
        self.stats["revocation_wait_s"] = self.stats.get("revocation_wait_s", 0.0) + time.monotonic() - t0

    def on_assigned(self, assigned) -> None:
        """The partitions assigned to this worker by a rebalance are its own again."""
        topic = self.cfg.kafka.readings_topic
        self.fenced -= {tp.partition for tp in assigned if tp.topic == topic}

    def owns(self, p: int) -> bool:
        """Whether the readings partition ``p`` is this worker's to apply and snapshot now: assigned
        and not revoked by a rebalance still under way (True when that cannot be told: no consumer
        yet, or a test without one)."""
        return p not in self.fenced and self._assigned(p)

    def _assigned(self, p: int) -> bool:
        try:
            assigned = self.app.consumer.assignment()
        except Exception:  # noqa: BLE001 - not started
            return True
        topic = self.cfg.kafka.readings_topic
        return any(tp.topic == topic and tp.partition == p for tp in assigned)

    def _forget(self, p: int, blob: bytes | None) -> None:
        """Back to the partition's last stored snapshot (``blob``) in memory."""
        key = str(p).encode()
        self.states.pop(p, None)
        self.blobs.pop(p, None)
        if blob is None:
            self.state_table.data.pop(key, None)
        else:
            self.state_table.data[key] = blob

    async def _on_readings(self, by_p: dict[int, list[tuple[int, bytes]]], n_events: int, t0: float,
                           before: dict[int, bytes | None]) -> None:
        futs = []
        sent = 0
        n_r = n_p = 0
        for q in [q for q in self.states if q not in by_p and not self._assigned(q)]:
            # a partition that moved away: its state (duplicate window included, up to
            # ingest.dedup_max_mb) is released; if it comes back it is restored and read back
            self.states.pop(q, None)
            self.blobs.pop(q, None)
            self.stats["released_partitions"] += 1
        applied: dict[str, int] = {}
        skipped = dup_r = dup_p = 0
        for p, msgs in by_p.items():
            # A batch taken before a rebalance can still hold messages of a partition that moved
            # (Faust does not wait for in-flight batches: stream_wait_empty = False). They are the
            # new owner's: applying them here too applied them twice. Dropped (and acknowledged by
            # Faust, which is harmless: an offset committed past unapplied ones is a hole the
            # owner's gap check fills).
            if not self.owns(p):
                self.stats["revoked_messages_dropped"] += len(msgs)
                continue
            msgs.sort(key=lambda m: m[0])
            st = self.state_for(p)
            if st.needs_seed:
                await self.seed_window(p, st)
            skipped0, off0 = st.skipped, st.offset
            dup0 = st.duplicate_readings, st.duplicate_positions
            r = q = 0
            rest, seen = msgs, set()
            while rest:  # one round, unless a hole is read in several parts
                chunk, rest = await self.complete(p, st, rest)
                seen.update(o for o, _ in chunk if o > off0)
                rows = [] if self.sink is not None and self.cfg.influx.write_readings else None
                evs, cr, cq = st.apply(chunk, rows)
                r, q = r + cr, q + cq
                for ev, w in evs:
                    futs.append(await self.events_topic.send(key=w.id.encode(), value=warning_event_payload(ev, w, self.origin)))
                sent += len(evs)
                if rows:
                    await self._write_readings(rows)
            if not self.owns(p):  # revoked while this batch was in flight: no snapshot, the new owner applies them
                self._forget(p, before[p])
                self.stats["revoked_messages_dropped"] += len(msgs)
                continue
            # no await from the check to the enqueued snapshot: a revocation (which fences the
            # partition, then waits for the records sent, see on_revoked) cannot come in between
            applied[str(p)] = len(seen)
            n_r += r
            n_p += q
            skipped += st.skipped - skipped0
            dup_r += st.duplicate_readings - dup0[0]
            dup_p += st.duplicate_positions - dup0[1]
            key = str(p).encode()
            blob = st.dump()
            self.state_table.data[key] = blob
            self.blobs[p] = blob
            futs.append(self._changelog(self.state_table, p, key, blob))
            self.stats["snapshot_bytes"] = len(blob)
        if futs:
            await asyncio.gather(*futs)  # stored before take_events acknowledges the offsets
        s = self.stats
        per_p = s.setdefault("applied_messages", {})  # per partition: offsets applied by this worker
        for k, v in applied.items():
            per_p[k] = per_p.get(k, 0) + v
        s["replayed_messages_skipped"] += skipped
        s["duplicate_readings"] += dup_r  # the edge's reject reason 'duplicate', by kind
        s["duplicate_positions"] += dup_p
        for k in ("series_window", "position_window"):
            wins = [getattr(st, k) for st in self.states.values() if getattr(st, k) is not None]
            if wins:
                s[f"dedup_{k}_entries"] = sum(w.count for w in wins)
                s[f"dedup_{k}_bytes"] = sum(w.nbytes for w in wins)
                s[f"dedup_{k}_evicted"] = sum(w.evicted for w in wins)
        s["readings"] += n_r
        s["positions"] += n_p
        s["messages"] += n_events
        s["batches"] += 1
        s["warning_events_sent"] += sent
        s.setdefault("first_batch_t", t0)
        s["last_batch_t"] = time.time()

    async def _write_readings(self, rows: list) -> None:
        """Rows (device ids, metric names, ts, values) of the readings applied, duplicates left out."""
        sink = self.sink
        done = [0]

        def work():  # resumable: a retry continues with the rows not yet queued
            while done[0] < len(rows):
                r = rows[done[0]]
                done[0] += 1  # first: write_readings queues its lines before a full batch's send can raise
                sink.write_readings(*r)
            sink.flush()

        await self._sink_write(work)

    async def _sink_write(self, work) -> None:
        """Run ``work`` (sink writes + flush) in an executor until the server accepted it.

        No local spool here: Kafka is the worker's store-and-forward log. The agent does not
        return (so its offsets are not acknowledged, and the partition snapshot is not written)
        until the time-series server took the batch; while the server is down the worker waits
        and retries with backoff, the backlog stays in Kafka (readings retention), and a worker
        crash meanwhile replays from the last committed offset into an idempotent store."""
        from gridwatch.streams.influx_sink import InfluxWriteError

        loop = asyncio.get_running_loop()
        delay = 0.5

        def locked():  # the readings and warnings agents share the sink: one caller at a time
            with self._sink_lock:
                work()

        while True:
            try:
                await loop.run_in_executor(None, locked)
                return
            except InfluxWriteError as e:
                self.stats["sink_failures"] += 1
                log.warning("time-series write failed (%s); offsets are held, retrying in %.1fs", e, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)

    # -- warnings -------------------------------------------------------------------------
    async def on_warning_events(self, events) -> None:
        accepted: list[tuple[str, dict]] = []
        latest: dict[bytes, tuple[int, tuple[int, int]]] = {}
        for e in events:
            try:
                d = orjson.loads(e.value)
                w = d["warning"]
                wid = str(w["id"]).encode()
                ver = version_of(w)
            except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
                self.stats["bad_warning_events"] += 1
                log.warning("not a warning event: %s", exc)
                continue
            prev = latest.get(wid)
            if prev is None:
                raw = self.seen_table.data.get(wid)
                prev_ver = tuple(orjson.loads(raw)) if raw is not None else None
            else:
                prev_ver = prev[1]
            if prev_ver is not None and ver <= prev_ver:
                self.stats["duplicate_warning_events"] += 1
                continue
            latest[wid] = (e.message.partition, ver)
            accepted.append((d.get("event", "raised"), w))
        if accepted:
            if self.sink is not None:
                sink = self.sink
                # one line per id: the latest version (two versions of one point in one request
                # are not reliably last-wins under QuestDB's dedup)
                ws = list({w["id"]: w for _, w in accepted}.values())
                queued = [False]

                def work():
                    if not queued[0]:
                        queued[0] = True
                        sink.write_warnings(ws)
                    sink.flush()

                await self._sink_write(work)
            futs = [await self.warnings_topic.send(key=str(w["id"]).encode(),
                                                   value=orjson.dumps({"schema": "gridwatch.warning-event/1", "event": ev, "warning": w}))
                    for ev, w in accepted]
            if self.mqtt is not None:
                self.mqtt.publish([(ev, warning_from_dict(w)) for ev, w in accepted])
            for wid, (p, ver) in latest.items():
                raw = orjson.dumps(list(ver))
                self.seen_table.data[wid] = raw
                futs.append(self._changelog(self.seen_table, p, wid, raw))
            await asyncio.gather(*futs)
        self.stats["warnings_accepted"] += len(accepted)
        self.stats["warning_events_in"] += len(events)

    def write_stats(self) -> None:
        path = self.cfg.worker.stats_file
        if not path:
            return
        s = dict(self.stats)
        s["partitions"] = sorted(self.states)
        try:
            s["assigned"] = sorted(tp.partition for tp in self.app.consumer.assignment()
                                   if tp.topic == self.cfg.kafka.readings_topic)
        except Exception:  # not started yet
            s["assigned"] = []
        s["t"] = time.time()
        if self.sink is not None:
            s["sink_lines_written"] = self.sink.stats.lines_written
        tmp = f"{path}.{os.getpid()}.tmp"
        with open(tmp, "w") as f:
            json.dump(s, f)
        os.replace(tmp, path)


def build_app(cfg: GridwatchConfig, *, naive: bool = False):
    """The Faust app with its agents; returns (app, core)."""
    import faust

    from gridwatch.ingest.kafka_security import faust_credentials

    k, wc = cfg.kafka, cfg.worker
    (cfg.data_dir / "faust").mkdir(parents=True, exist_ok=True)
    app = faust.App(
        wc.app_id, broker=[f"kafka://{h.strip()}" for h in k.bootstrap_servers.split(",")], store="memory://",
        autodiscover=False, web_enabled=False, topic_partitions=k.partitions,
        topic_replication_factor=k.replication_factor, consumer_auto_offset_reset="earliest",
        broker_session_timeout=wc.session_timeout_s, broker_heartbeat_interval=wc.heartbeat_s,
        broker_commit_interval=wc.commit_interval_s, table_standby_replicas=wc.standby_replicas,
        producer_acks=-1, producer_linger=k.linger_ms / 1000.0,
        producer_compression_type=None if k.compression == "none" else k.compression,
        producer_max_request_size=64 * 1024 * 1024, stream_wait_empty=False,
        key_serializer="raw", value_serializer="raw",
        broker_credentials=faust_credentials(k),  # [kafka] SASL/TLS, as the edge producers get them
        datadir=str(cfg.data_dir / "faust"),  # not ./<app_id>-data in the caller's cwd
    )
    raw = dict(key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw")
    readings_topic = app.topic(k.readings_topic, partitions=k.partitions, **raw)
    events_topic = app.topic(k.warning_events_topic, partitions=k.partitions, **raw)
    warnings_topic = app.topic(k.warnings_topic, partitions=k.partitions, **raw)
    tbl = dict(key_type=bytes, value_type=bytes)  # serializers: the app's defaults (raw)
    state_table = app.Table("partition-state", default=None, partitions=k.partitions,
                            extra_topic_configs={"max.message.bytes": str(64 * 1024 * 1024)}, **tbl)
    seen_table = app.Table("warnings-seen", default=None, partitions=k.partitions, **tbl)
    core = WorkerCore(cfg, app, state_table, seen_table, events_topic, warnings_topic)

    if naive:
        _naive_agent(app, cfg, core, readings_topic)
    else:
        @app.agent(readings_topic)
        async def readings(stream):
            async for events in stream.take_events(wc.batch_messages, within=wc.batch_within_s):
                await core.process_readings(events)

    @app.agent(events_topic)
    async def warnings(stream):
        async for events in stream.take_events(1000, within=0.1):
            await core.on_warning_events(events)

    @app.timer(1.0)
    async def stats():
        core.write_stats()

    @app.on_partitions_revoked.connect
    async def on_revoked(sender, revoked, **kwargs):
        await core.on_revoked(revoked)

    @app.on_partitions_assigned.connect
    async def on_assigned(sender, assigned, **kwargs):
        core.on_assigned(assigned)

    @app.task
    async def open_sinks():
        if cfg.influx is not None and core.sink is None:
            from gridwatch.streams.influx_sink import InfluxSink

            i = cfg.influx
            if i.questdb_dedup:
                questdb_create_warnings_table(i.url, i.warnings_measurement)
            core.sink = InfluxSink(i.url, i.token, i.org, i.bucket, batch_lines=i.batch_lines, gzip=i.gzip,
                                   readings_measurement=i.readings_measurement,
                                   warnings_measurement=i.warnings_measurement)
        if wc.mqtt_alerts and cfg.mqtt is not None and core.mqtt is None:
            from gridwatch.observability import Counters
            from gridwatch.streams.mqtt_alerts import MqttAlertPublisher

            core.mqtt = MqttAlertPublisher(cfg.mqtt, cfg.alerts_mqtt, f"{cfg.site.name}-worker-{os.getpid()}",
                                           cfg.site.name, Counters())
            core.mqtt.start()

    return app, core


def _naive_agent(app, cfg: GridwatchConfig, core: WorkerCore, readings_topic) -> None:
    """The benchmark baseline: the textbook Faust agent, one JSON reading per message, one
    threshold rule (the config's first) in plain Python, per-device state in a Faust table
    (one changelog record per event)."""
    rule = next((r for r in cfg.rules if r.kind == "threshold"), None)
    prm = dict(rule.params) if rule else {"above": 8.0}
    above = float(prm.get("above", float("inf")))
    clear_at = float(prm.get("clear_at", above))
    min_ms = int(float(prm.get("min_duration_s", 0)) * 1000)
    name = rule.name if rule else "threshold"
    table = app.Table("naive-state", default=None, partitions=cfg.kafka.partitions,
                      key_type=bytes, value_type=bytes)
    stats = core.stats

    @app.agent(readings_topic)
    async def naive(stream):
        async for ev in stream.events():
            r = json.loads(ev.value)
            key = f"{r['d']}|{r['m']}".encode()
            raw = table.data.get(key)
            st = json.loads(raw) if raw else {"active": False, "since": None}
            v, t = float(r["v"]), int(r["t"])
            if not st["active"]:
                if v >= above:
                    if st["since"] is None:
                        st["since"] = t
                    if t - st["since"] >= min_ms:
                        st["active"] = True
                        w = {"id": f"naive-{r['d']}-{st['since']}", "rule": name, "kind": "threshold",
                             "severity": "major", "source": r["d"], "state": "active", "start_ts": st["since"],
                             "last_ts": t, "value": v}
                        await core.events_topic.send(key=w["id"].encode(), value=json.dumps({"event": "raised", "warning": w}).encode())
                        stats["warning_events_sent"] += 1
                else:
                    st["since"] = None
            elif v < clear_at:
                st = {"active": False, "since": None}
            v = json.dumps(st).encode()
            table.data[key] = v
            table.send_changelog(ev.message.partition, key, v)  # what table[key] = v does
            stats["readings"] += 1
            stats["messages"] += 1
            stats.setdefault("first_batch_t", time.time())
            stats["last_batch_t"] = time.time()


def run_worker(cfg: GridwatchConfig, *, naive: bool = False, loglevel: str = "warning") -> int:
    """Blocking: run one worker process (uvloop) until SIGTERM/SIGINT."""
    import uvloop

    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    asyncio.run(ensure_topics(cfg))
    from faust.worker import Worker

    app, core = build_app(cfg, naive=naive)
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    worker = Worker(app, loglevel=loglevel, quiet=True, loop=loop)
    try:
        worker.execute_from_commandline()
    except SystemExit as e:
        return int(e.code or 0)
    return 0


__all__ = ["OffsetGapFiller", "PartitionState", "WorkerCore", "build_app", "ensure_topics", "run_worker",
           "questdb_create_warnings_table", "questdb_exec", "version_of", "warning_from_dict"]
