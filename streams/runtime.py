"""The single-node runtime for an edge box or a small county server (asyncio on uvloop).

One event loop owns the schedule; the CPU work of a batch (decode, Numba kernels, SQLite commit)
runs on one worker thread so the loop stays responsive; paho's network threads only fill the inbox.

    MQTT inbox --take--> Pipeline.process --> commit --> ack --> publish warnings   (pipeline thread)
    every second: Pipeline.tick (offline devices, held-back clears, updates)         (pipeline thread)
    every hour:   store retention                                                   (pipeline thread)

The pipeline thread sleeps until the collector reports that the inbox went from empty to
non-empty; it then drains the inbox in batches of up to ``ingest.batch_max_messages``, so a batch
is whatever arrived while the previous one was processed: one message when idle (lowest
latency), thousands under load (highest throughput). The event loop owns start, stop, signals
and the metrics endpoint.

Store-and-forward (``[forward]`` + ``[spool]``): each remote sink (the time-series server over
the InfluxDB v2 write API, Kafka) gets a disk spool (:mod:`gridwatch.streams.spool`) and a
forwarder thread that drains it with retries and backoff. A batch is appended to every spool
*before* the store commit and the MQTT acknowledgement::

    decode -> rules -> spool append (fsync) -> store commit (+ deliveries) -> PUBACK

so an acknowledged message is on disk for every sink, and a crash between the append and the
commit only re-spools the redelivered batch (the sinks are idempotent: replays upsert). When a
spool is full the pipeline thread holds the batch and retries the append: nothing more is taken
from the inbox and nothing acknowledged, MQTT 5 Receive Maximum asks the broker to stop sending
(Mosquitto 2.0.11 does not once PUBACKs flow), the collector stops reading the socket when its
inbox reaches ``mqtt.inbox_max_messages``, and the broker keeps the backlog (counted: ``spool.backpressure_batches``,
``spool.held_messages``); nothing is dropped.
"""
from __future__ import annotations

import asyncio
import logging
import signal
import sqlite3
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from gridwatch.config import GridwatchConfig
from gridwatch.ingest.codec import Message
from gridwatch.ingest.mqtt import MqttCollector, delivery_blob, load_deliveries
from gridwatch.observability import Counters, now_ms, start_metrics_server
from gridwatch.records import Warning
from gridwatch.streams.mqtt_alerts import MqttAlertPublisher
from gridwatch.streams.datadir import DataDirLock
from gridwatch.streams.pipeline import Pipeline
from gridwatch.streams.store import Store, StoreWriteError

log = logging.getLogger("gridwatch.streams.runtime")


class StoreBlocked(RuntimeError):
    """The runtime is stopping while the store cannot be written: the held batch is neither
    committed nor acknowledged, so the broker delivers it again after a restart."""


class SpoolBlocked(RuntimeError):
    """A batch could not be spooled (a spool is full) and the runtime is stopping: it is neither
    committed nor acknowledged, so the broker delivers it again after a restart."""


class _Forward:
    """One remote sink behind its spool, drained by its own thread."""

    def __init__(self, name: str, spool, drainer, positions: bool, warnings: bool = True) -> None:
        self.name, self.spool, self.drainer = name, spool, drainer
        self.positions, self.warnings = positions, warnings
        self.stop = threading.Event()
        self.thread: threading.Thread | None = None
        self.last_error: str | None = None


def open_forwards(cfg: GridwatchConfig) -> list[_Forward]:
    """The spooled remote sinks configured under ``[forward]``."""
    from gridwatch.streams.spool import Spool, SpooledInfluxSink, SpooledKafkaForwarder

    sp = cfg.spool
    root = cfg.data_dir / sp.dir

    def spool(name: str) -> Spool:
        return Spool(root / name, max_bytes=int(sp.max_mb * 2**20), segment_bytes=int(sp.segment_mb * 2**20), fsync=sp.fsync)

    out = []
    if cfg.forward.influx:
        from gridwatch.streams.influx_sink import InfluxSink

        i = cfg.influx
        prepare = None
        if i.questdb_dedup:
            def prepare(i=i):
                from gridwatch.streams.cluster import questdb_create_warnings_table, questdb_exec
                from gridwatch.streams.spool import questdb_readings_table_sql

                questdb_exec(i.url, questdb_readings_table_sql(i.readings_measurement))
                questdb_create_warnings_table(i.url, i.warnings_measurement)
        sink = InfluxSink(i.url, i.token, i.org, i.bucket, batch_lines=i.batch_lines, gzip=i.gzip, max_retries=2,
                          readings_measurement=i.readings_measurement, warnings_measurement=i.warnings_measurement)
        s = spool("influx")
        out.append(_Forward("influx", s, SpooledInfluxSink(s, sink, prepare=prepare), positions=False))
    if cfg.forward.kafka:
        from gridwatch.ingest.kafka_security import forwarder

        origin = cfg.site.name
        s = spool("kafka")
        out.append(_Forward("kafka", s, SpooledKafkaForwarder(
            s, lambda: forwarder(cfg, origin=origin, client_id=f"{origin}-forward")), positions=True))
    return out


EventSink = Callable[[list[tuple[str, Warning]]], None]


def open_store(cfg: GridwatchConfig) -> Store:
    return Store(cfg.data_dir / cfg.store.path, cfg.store.fsync, cfg.store.retention_days, cfg.ingest.dead_letter_keep,
                 int(cfg.ingest.dead_letter_max_mb * 2**20))


class EdgeRuntime:
    def __init__(self, cfg: GridwatchConfig, counters: Counters | None = None, on_events: EventSink | None = None) -> None:
        self.cfg = cfg
        self.counters = counters or Counters()
        self.lock = DataDirLock(cfg.data_dir).acquire()  # DataDirBusy: another instance runs here
        self.store = open_store(cfg)
        self.pipeline = Pipeline(cfg, self.store, self.counters)
        self.on_events = on_events
        self.collector: MqttCollector | None = None
        self.publisher: MqttAlertPublisher | None = None
        name = cfg.site.name
        if cfg.mqtt is not None:
            self.collector = MqttCollector(cfg.mqtt, cfg.mqtt.client_id or f"{name}-ingest", self.counters,
                                           max_topic=cfg.ingest.max_topic_bytes, max_payload=cfg.ingest.max_payload_bytes)
            self.collector.delivered = load_deliveries(self.store.recent_deliveries(self.collector.client_id))
            for t in self.pipeline.codec.topic_filters():  # the profiles' own topic schemes ([[topics]])
                self.collector.topics.append(f"$share/{cfg.mqtt.shared_group}/{t}" if cfg.mqtt.shared_group else t)
            if cfg.alerts_mqtt.enabled:
                self.publisher = MqttAlertPublisher(cfg.mqtt, cfg.alerts_mqtt, f"{name}-alerts", name, self.counters)
        self.forwards = open_forwards(cfg)
        self.metrics_port: int | None = None
        self._metrics_server = None
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="gridwatch-shutdown")
        self._stop = threading.Event()
        self._wake = threading.Event()
        if self.collector is not None:
            self.collector.wake = self._wake.set
        self.jt808 = None  # JT/T 808 terminals over TCP: drained like the MQTT collector
        if cfg.jt808.enabled:
            from gridwatch.ingest.jt808 import Jt808Collector

            self.jt808 = Jt808Collector(cfg.jt808, self.counters, cfg.devices, cfg.data_dir, cfg.ingest.unknown_devices)
            self.jt808.wake = self._wake.set
        self.stopping: asyncio.Event | None = None  # created inside the loop
        self._loop: asyncio.AbstractEventLoop | None = None

    def _step(self, msgs: list[Message]) -> int:
        """One batch: compute it once, spool it, commit it (retrying the same result while the
        store cannot be written), then acknowledge it and publish its warnings."""
        c = self.collector
        blob = delivery_blob(msgs) if c is not None else b""
        b = self.pipeline.compute(msgs, now_ms(), (c.client_id, blob) if c is not None else None)
        if self.forwards:
            self._handoff(b.sensor, b.position, b.events, len(msgs))
        self._until_stored(lambda: self.pipeline.commit(b))
        if c is not None:
            if blob:  # only what is stored counts as delivered (recognises redeliveries)
                c.delivered.update(load_deliveries([blob]))
            c.ack(msgs)
            if b.decoded is not None and b.decoded.replies:  # e.g. a DJI dock's topology, now stored
                c.publish(b.decoded.replies)
        self._emit(b.events)
        return len(msgs)

    def _tick(self) -> None:
        b = self.pipeline.compute_tick(now_ms())
        if b.events and self.forwards:
            self._handoff(None, None, b.events)
        self._until_stored(lambda: self.pipeline.commit_tick(b))
        self._emit(b.events)
        for f in self.forwards:
            self.counters.set("spool", f"{f.name}_records", len(f.spool))
            self.counters.set("spool", f"{f.name}_bytes", f.spool.bytes_on_disk)
            for k in ("torn_tails", "corrupt_regions", "corrupt_records", "quarantined_bytes", "quarantine_dropped_bytes",
                      "corrupt_acked_regions", "disk_full"):  # found on open or while appending
                self.counters.set("spool", f"{f.name}_{k}", f.spool.stats[k])
        self.counters.set("store", "dead_letters_pruned", self.store.dead_letters_pruned)

    def _until_stored(self, commit: Callable[[], None]) -> None:
        """Run ``commit`` until it succeeds. A batch's memory effects happened once, in compute;
        while the store cannot be written (disk full, read-only, locked) the same result is
        committed again with backoff, nothing else is taken from the inbox and nothing is
        acknowledged (the broker keeps the backlog). Stopping meanwhile raises StoreBlocked:
        the batch stays unacknowledged and is delivered again after a restart."""
        delay, failed, last = 0.2, 0, ""
        while True:
            try:
                commit()
            except StoreWriteError as e:
                failed += 1
                self.counters.add("store", "commit_errors")
                self.counters.add("store", f"commit_errors_{e.kind}")
                self.counters.set("store", "writable", 0)
                if str(e) != last or failed % 20 == 0:
                    log.error("store commit failed; holding the batch (not acknowledged) and retrying the same commit",
                              extra={"fields": {"error": str(e), "kind": e.kind, "attempt": failed, "retry_in_s": delay}})
                last = str(e)
                if self._stop.wait(delay):
                    raise StoreBlocked(str(e)) from e
                delay = min(delay * 2, 10.0)
                continue
            if failed:
                self.counters.set("store", "writable", 1)
                log.warning("store writable again; the held batch is committed", extra={"fields": {"failed_attempts": failed}})
            return

    def _handoff(self, sensor, position, events, n_messages: int = 0) -> None:
        """Append the batch to every spool (durable per ``spool.fsync`` on return). A full spool
        is back-pressure: hold the batch and retry until the forwarder frees space - the caller
        neither commits nor acknowledges meanwhile, so the broker keeps the messages."""
        from gridwatch.streams.spool import SpoolFull, batch_parts, pack_batch

        parts = batch_parts(self.pipeline.directory, sensor, position, events)
        if not parts:
            return
        pending = list(self.forwards)
        held = False
        delay = 0.01
        while True:
            for f in list(pending):
                mine = [(k, b) for k, b in parts if (k != b"P" or f.positions) and (k != b"W" or f.warnings)]
                try:
                    if mine:
                        f.spool.append(pack_batch(mine))
                    pending.remove(f)
                except SpoolFull as e:
                    if not held:
                        self.counters.add("spool", "backpressure_batches")
                        self.counters.add("spool", "held_messages", n_messages)
                        self.counters.add("spool", f"{f.name}_full")
                        log.warning("spool full: holding the batch, MQTT messages stay unacknowledged (the broker keeps them)",
                                    extra={"fields": {"sink": f.name, "messages": n_messages, "error": str(e)}})
            if not pending:
                if held:
                    self.counters.add("spool", "backpressure_released")
                return
            held = True
            if self._stop.is_set():
                raise SpoolBlocked(f"spool {pending[0].name} full while stopping")
            self._stop.wait(delay)
            delay = min(delay * 2, 0.5)

    def _start_forwards(self) -> None:
        sp = self.cfg.spool
        for f in self.forwards:
            def on_error(e: Exception, f=f) -> None:
                self.counters.add("spool", f"{f.name}_send_failures")
                msg = f"{type(e).__name__}: {e}"[:300]
                if msg != f.last_error:
                    log.warning("forwarding to %s failed; the data waits in the spool, retrying with backoff", f.name,
                                extra={"fields": {"error": msg, "spooled_records": len(f.spool)}})
                f.last_error = msg

            f.thread = threading.Thread(target=f.drainer.run_forever, args=(f.stop,), daemon=True,
                                        kwargs={"backoff_s": sp.retry_min_s, "max_backoff_s": sp.retry_max_s, "on_error": on_error},
                                        name=f"gridwatch-forward-{f.name}")
            f.thread.start()

    def _stop_forwards(self) -> None:
        for f in self.forwards:
            f.stop.set()
        for f in self.forwards:
            if f.thread is not None:
                f.thread.join(30)
            close = getattr(f.drainer, "sink", None)
            if close is not None:
                try:
                    close.client.close()
                except Exception:  # noqa: BLE001
                    pass
            f.spool.close()

    def _emit(self, events: list[tuple[str, Warning]]) -> None:
        if not events:
            return
        if self.publisher is not None:
            self.publisher.publish(events)
        if self.on_events is not None:
            self.on_events(events)

    def request_stop(self) -> None:
        """Ask a running runtime to stop (callable from any thread)."""
        if self._loop is not None and self.stopping is not None:
            self._loop.call_soon_threadsafe(self.stopping.set)

    async def run(self, duration_s: float | None = None, install_signals: bool = True) -> None:
        loop = asyncio.get_running_loop()
        self._loop = loop
        self.stopping = asyncio.Event()
        if install_signals:
            for sig in (signal.SIGINT, signal.SIGTERM):
                try:
                    loop.add_signal_handler(sig, self.stopping.set)
                except (NotImplementedError, RuntimeError):
                    pass
        await loop.run_in_executor(self._executor, self.pipeline.warm_up)
        if self.cfg.metrics.port:
            self._metrics_server, self.metrics_port = start_metrics_server(self.counters, self.cfg.metrics.port, self.cfg.metrics.bind)
        if self.publisher is not None:
            self.publisher.start()
        self._start_forwards()
        if self.collector is not None:
            self.collector.start()
        if self.jt808 is not None:
            self.jt808.start()
        log.info("gridwatch running", extra={"fields": {"site": self.cfg.site.name, "rules": len(self.pipeline.rules),
                                                         "store": str(self.store.path), "metrics_port": self.metrics_port}})
        worker = threading.Thread(target=self._worker, name="gridwatch-pipeline", daemon=True)
        worker.start()
        try:
            if duration_s is None:
                await self.stopping.wait()
            else:
                try:
                    await asyncio.wait_for(self.stopping.wait(), duration_s)
                except asyncio.TimeoutError:
                    pass
        finally:
            self._stop.set()
            self._wake.set()
            await loop.run_in_executor(None, worker.join)
            await self._shutdown(loop)

    def _worker(self) -> None:
        """The pipeline thread: wakes when the inbox gets messages, drains it batch by batch
        (batches grow by themselves under load), and runs the timers between batches."""
        batch_max = self.cfg.ingest.batch_max_messages
        next_tick = time.monotonic() + 1.0
        next_retention = time.monotonic() + 5.0
        while not self._stop.is_set():
            self._wake.wait(max(0.0, next_tick - time.monotonic()))
            self._wake.clear()
            while self.collector is not None and not self._stop.is_set():
                msgs = self.collector.take(batch_max)
                if not msgs:
                    break
                try:
                    self._step(msgs)
                except (SpoolBlocked, StoreBlocked):
                    return  # stopping: not committed, not acknowledged -> redelivered
            if self.jt808 is not None:
                try:
                    self._drain_jt808(batch_max)
                except (SpoolBlocked, StoreBlocked):
                    return
            t = time.monotonic()
            if t >= next_tick and not self._stop.is_set():
                next_tick = t + 1.0
                try:
                    self._tick()
                except (SpoolBlocked, StoreBlocked):
                    return
                if self.collector is not None:
                    self.counters.set("mqtt", "inbox", len(self.collector.inbox))
            if t >= next_retention:
                next_retention = t + 3600.0
                try:
                    self.store.enforce_retention()
                except sqlite3.Error as e:  # e.g. disk full: the next round tries again
                    log.warning("store retention failed; retrying in an hour", extra={"fields": {"error": str(e)}})

    def _drain_jt808(self, batch_max: int) -> None:
        """Like the MQTT drain: compute the batch once, commit it (retried as is while the store
        cannot be written), then answer its reports (0x8001); unanswered, the terminals keep them."""
        c, p = self.jt808, self.pipeline
        while not self._stop.is_set():
            msgs = c.take(batch_max)
            if not msgs:
                return
            prev, p.source = p.source, c.source  # counted under jt808, on this (the pipeline's) thread
            try:
                b = p.compute(msgs, now_ms())
                if self.forwards:
                    self._handoff(b.sensor, b.position, b.events, len(msgs))
                self._until_stored(lambda: p.commit(b))
            finally:
                p.source = prev
            c.ack(msgs)
            self._emit(b.events)

    async def _shutdown(self, loop) -> None:
        if self.collector is not None:
            self.collector.stop()
            rest = self.collector.take(len(self.collector.inbox))
            if rest:
                # stored but never acknowledged (the connection is gone): their redelivery next
                # time is recognised from the deliveries committed with them
                c = self.collector
                handoff = (lambda s, pos, events: self._handoff(s, pos, events, len(rest))) if self.forwards else None
                try:
                    await loop.run_in_executor(self._executor, lambda: self._emit(self.pipeline.process(
                        rest, now_ms(), (c.client_id, delivery_blob(rest, c.delivered)), handoff=handoff)))
                except SpoolBlocked:
                    log.warning("spool full at shutdown: %d messages left unacknowledged for redelivery", len(rest))
                except StoreWriteError as e:
                    log.warning("store not writable at shutdown: %d messages left unacknowledged for redelivery", len(rest),
                                extra={"fields": {"error": str(e)}})
        if self.jt808 is not None:
            self.jt808.stop()  # unanswered reports stay with their terminals, which re-send them
        if self.publisher is not None:
            self.publisher.stop()
        if self._metrics_server is not None:
            self._metrics_server.shutdown()
        self._executor.shutdown(wait=True)
        await loop.run_in_executor(None, self._stop_forwards)
        self.store.close()
        self.lock.release()
        log.info("gridwatch stopped", extra={"fields": self.counters.snapshot().get("mqtt", {})})


def run_blocking(coro) -> None:
    """Run a coroutine on uvloop (asyncio's default loop if uvloop is unavailable)."""
    try:
        import uvloop

        uvloop.run(coro)
    except ImportError:
        asyncio.run(coro)
