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
from gridwatch.streams.pipeline import Pipeline
from gridwatch.streams.store import Store

log = logging.getLogger("gridwatch.streams.runtime")
EventSink = Callable[[list[tuple[str, Warning]]], None]


def open_store(cfg: GridwatchConfig) -> Store:
    return Store(cfg.data_dir / cfg.store.path, cfg.store.fsync, cfg.store.retention_days, cfg.ingest.dead_letter_keep)


class EdgeRuntime:
    def __init__(self, cfg: GridwatchConfig, counters: Counters | None = None, on_events: EventSink | None = None) -> None:
        self.cfg = cfg
        self.counters = counters or Counters()
        self.store = open_store(cfg)
        self.pipeline = Pipeline(cfg, self.store, self.counters)
        self.on_events = on_events
        self.collector: MqttCollector | None = None
        self.publisher: MqttAlertPublisher | None = None
        name = cfg.site.name
        if cfg.mqtt is not None:
            self.collector = MqttCollector(cfg.mqtt, cfg.mqtt.client_id or f"{name}-ingest", self.counters)
            self.collector.delivered = load_deliveries(self.store.recent_deliveries(self.collector.client_id))
            if cfg.alerts_mqtt.enabled:
                self.publisher = MqttAlertPublisher(cfg.mqtt, cfg.alerts_mqtt, f"{name}-alerts", name, self.counters)
        self.metrics_port: int | None = None
        self._metrics_server = None
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="gridwatch-shutdown")
        self._stop = threading.Event()
        self._wake = threading.Event()
        if self.collector is not None:
            self.collector.wake = self._wake.set
        self.stopping: asyncio.Event | None = None  # created inside the loop
        self._loop: asyncio.AbstractEventLoop | None = None

    def _step(self, msgs: list[Message]) -> int:
        c = self.collector
        events = self.pipeline.process(msgs, now_ms(), (c.client_id, delivery_blob(msgs, c.delivered)) if c is not None else None)
        if c is not None:
            c.ack(msgs)
        self._emit(events)
        return len(msgs)

    def _tick(self) -> None:
        self._emit(self.pipeline.tick(now_ms()))

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
        if self.collector is not None:
            self.collector.start()
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
        retry_delay = 0.5
        while not self._stop.is_set():
            self._wake.wait(max(0.0, next_tick - time.monotonic()))
            self._wake.clear()
            while self.collector is not None and not self._stop.is_set():
                msgs = self.collector.take(batch_max)
                if not msgs:
                    break
                try:
                    self._step(msgs)
                    retry_delay = 0.5
                except (sqlite3.Error, OSError) as e:
                    # nothing was acknowledged: put the batch back and retry; the broker keeps the rest
                    self.collector.inbox.extendleft(reversed(msgs))
                    self.counters.add("store", "commit_errors")
                    log.error("store commit failed; retrying", extra={"fields": {"error": str(e), "retry_in_s": retry_delay}})
                    self._stop.wait(retry_delay)
                    retry_delay = min(retry_delay * 2, 30.0)
                    break
            t = time.monotonic()
            if t >= next_tick:
                next_tick = t + 1.0
                self._tick()
                if self.collector is not None:
                    self.counters.set("mqtt", "inbox", len(self.collector.inbox))
            if t >= next_retention:
                next_retention = t + 3600.0
                self.store.enforce_retention()

    async def _shutdown(self, loop) -> None:
        if self.collector is not None:
            self.collector.stop()
            rest = self.collector.take(len(self.collector.inbox))
            if rest:
                # stored but never acknowledged (the connection is gone): their redelivery next
                # time is recognised from the deliveries committed with them
                c = self.collector
                await loop.run_in_executor(self._executor, lambda: self._emit(self.pipeline.process(
                    rest, now_ms(), (c.client_id, delivery_blob(rest, c.delivered)))))
        if self.publisher is not None:
            self.publisher.stop()
        if self._metrics_server is not None:
            self._metrics_server.shutdown()
        self._executor.shutdown(wait=True)
        self.store.close()
        log.info("gridwatch stopped", extra={"fields": self.counters.snapshot().get("mqtt", {})})


def run_blocking(coro) -> None:
    """Run a coroutine on uvloop (asyncio's default loop if uvloop is unavailable)."""
    try:
        import uvloop

        uvloop.run(coro)
    except ImportError:
        asyncio.run(coro)
