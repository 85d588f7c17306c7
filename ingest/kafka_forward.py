"""Edge -> Kafka: publish normalised readings, position fixes and edge warnings.

Readings and positions go to the readings topic as columnar batches (:mod:`gridwatch.ingest.wire`).
**Placement is by device**: every row goes to partition ``murmur2(device id) % partitions`` -
exactly where Kafka's default partitioner puts a record keyed by that device id - so all of a
device's readings and fixes land on one partition, in order, and its rule state lives with that
partition on whichever worker owns it. To amortise Kafka's per-record cost (and the worker's per
event cost), the rows of *all* devices of one partition in one call share a message (split every
``max_rows`` rows), sent with an explicit partition; the record key is the device id when the
message holds a single device (``per_device=True`` forces one message per device, keyed by it).

Warnings that edge boxes raised themselves are forwarded as JSON (the MQTT warning-event
payload: ``{"schema": "gridwatch.warning-event/1", "event": ..., "warning": {...}}``) keyed by
the warning id, so every version of one warning lands on one partition of the warning-events
topic, where the workers merge and de-duplicate them with their own (same deterministic ids).

The producer uses acks=all with idempotence (no duplicates or reordering from producer
retries), ``linger_ms`` batching and optional compression.
"""
from __future__ import annotations

import asyncio
from typing import Iterable, Sequence

import numpy as np
from aiokafka import AIOKafkaProducer
from aiokafka.partitioner import murmur2

from gridwatch.hw.profiles import METRICS
from gridwatch.records import PositionBatch, SensorBatch, Warning
from gridwatch.ingest import wire
from gridwatch.ingest.wire import DeviceInfo


def partition_for(device_id: str, partitions: int) -> int:
    """Kafka's default partition for a record keyed by ``device_id`` (murmur2, positive)."""
    return (murmur2(device_id.encode("utf-8")) & 0x7FFFFFFF) % partitions


def warning_event_payload(event: str, w: Warning | dict, origin: str = "") -> bytes:
    import orjson

    d = w.to_dict() if hasattr(w, "to_dict") else w
    return orjson.dumps({"schema": "gridwatch.warning-event/1", "event": event, "warning": d, "origin": origin})


class KafkaForwarder:
    def __init__(self, bootstrap_servers: str, *, readings_topic: str = "gridwatch.readings",
                 warning_events_topic: str = "gridwatch.warning-events", linger_ms: int = 20,
                 compression: str | None = None, max_rows: int = 20_000, per_device: bool = False,
                 origin: str = "", client_id: str = "gridwatch-edge", **producer_kw) -> None:
        self.readings_topic = readings_topic
        self.warning_events_topic = warning_events_topic
        self.max_rows = max_rows
        self.per_device = per_device
        self.origin = origin
        self.producer = AIOKafkaProducer(
            bootstrap_servers=bootstrap_servers, client_id=client_id, acks="all", enable_idempotence=True,
            linger_ms=linger_ms, compression_type=compression, max_request_size=4 * 1024 * 1024,
            max_batch_size=1024 * 1024, **producer_kw)
        self.partitions = 0
        self._part: dict[str, int] = {}
        self.sent_messages = 0
        self.sent_rows = 0

    async def start(self) -> None:
        await self.producer.start()
        parts = await self.producer.partitions_for(self.readings_topic)
        self.partitions = len(parts)

    async def stop(self) -> None:
        await self.producer.stop()

    async def __aenter__(self) -> "KafkaForwarder":
        await self.start()
        return self

    async def __aexit__(self, *exc) -> None:
        await self.stop()

    def _partition_of(self, devices: Sequence[DeviceInfo]) -> np.ndarray:
        get, P = self._part.get, self.partitions
        out = np.empty(len(devices), np.int32)
        for i, d in enumerate(devices):
            p = get(d.id)
            if p is None:
                p = self._part[d.id] = partition_for(d.id, P)
            out[i] = p
        return out

    # -- readings / positions -------------------------------------------------------------
    def encode_readings(self, devices: Sequence[DeviceInfo], metrics: Sequence[str], dev_idx: np.ndarray,
                        met_idx: np.ndarray, ts: np.ndarray, value: np.ndarray) -> list[tuple[int, bytes | None, bytes]]:
        """(partition, key, value) messages for these rows (see the module doc)."""
        return self._split(devices, dev_idx, lambda devs, di, rows: wire.encode_readings(
            devs, list(metrics), di, met_idx[rows], ts[rows], value[rows]))

    def encode_positions(self, devices: Sequence[DeviceInfo], dev_idx: np.ndarray, ts, lat, lon, speed_kmh,
                         alt_m) -> list[tuple[int, bytes | None, bytes]]:
        return self._split(devices, dev_idx, lambda devs, di, rows: wire.encode_positions(
            devs, di, ts[rows], lat[rows], lon[rows], speed_kmh[rows], alt_m[rows]))

    def _split(self, devices, dev_idx, enc) -> list[tuple[int, bytes | None, bytes]]:
        dev_idx = np.asarray(dev_idx)
        if dev_idx.shape[0] == 0:
            return []
        row_part = self._partition_of(devices)[dev_idx]
        group = dev_idx.astype(np.int64) if self.per_device else row_part.astype(np.int64)
        order = np.argsort(group, kind="stable")  # keeps each device's rows in order
        g_sorted = group[order]
        bounds = np.flatnonzero(np.diff(g_sorted)) + 1
        out = []
        for rows in np.split(order, bounds):
            for s in range(0, rows.shape[0], self.max_rows):
                r = rows[s:s + self.max_rows]
                uniq, local = np.unique(dev_idx[r], return_inverse=True)
                devs = [devices[int(u)] for u in uniq]
                key = devs[0].id.encode() if len(devs) == 1 else None
                out.append((int(row_part[r[0]]), key, enc(devs, local.astype(np.uint32), r)))
        return out

    async def _send_all(self, msgs: list[tuple[int, bytes | None, bytes]], rows: int, wait: bool) -> None:
        futs = [await self.producer.send(self.readings_topic, value=v, key=k, partition=p) for p, k, v in msgs]
        self.sent_messages += len(msgs)
        self.sent_rows += rows
        if wait and futs:
            await asyncio.gather(*futs)

    async def send_readings(self, devices: Sequence[DeviceInfo], metrics: Sequence[str], dev_idx: np.ndarray,
                            met_idx: np.ndarray, ts: np.ndarray, value: np.ndarray, *, wait: bool = True) -> int:
        """Publish rows (``dev_idx``/``met_idx`` index ``devices``/``metrics``); with ``wait`` returns
        after the broker acknowledged them (acks=all). Returns the number of messages."""
        msgs = self.encode_readings(devices, metrics, dev_idx, met_idx, np.asarray(ts), np.asarray(value))
        await self._send_all(msgs, len(ts), wait)
        return len(msgs)

    async def send_sensor(self, directory, batch: SensorBatch, *, wait: bool = True) -> int:
        """Publish an edge SensorBatch (slots resolved through the edge's DeviceDirectory)."""
        if len(batch) == 0:
            return 0
        devices, dev_idx = _devices(directory, batch.device)
        mids = directory.series_metric[batch.series]
        um, met_idx = np.unique(mids, return_inverse=True)
        return await self.send_readings(devices, [METRICS[int(m)].name for m in um], dev_idx, met_idx,
                                        batch.ts, batch.value, wait=wait)

    async def send_positions(self, directory, batch: PositionBatch, *, wait: bool = True) -> int:
        if len(batch) == 0:
            return 0
        devices, dev_idx = _devices(directory, batch.device)
        msgs = self.encode_positions(devices, dev_idx, batch.ts, batch.lat, batch.lon, batch.speed_kmh, batch.alt_m)
        await self._send_all(msgs, len(batch), wait)
        return len(msgs)

    # -- warnings -------------------------------------------------------------------------
    async def send_warnings(self, events: Iterable[tuple[str, Warning]], *, wait: bool = True) -> int:
        futs = []
        for ev, w in events:
            futs.append(await self.producer.send(self.warning_events_topic, key=w.id.encode(),
                                                 value=warning_event_payload(ev, w, self.origin)))
        if wait and futs:
            await asyncio.gather(*futs)
        return len(futs)


def _devices(directory, slots: np.ndarray) -> tuple[list[DeviceInfo], np.ndarray]:
    uniq, idx = np.unique(slots, return_inverse=True)
    devs = [DeviceInfo(directory.device_id(int(s)), directory.vendor[int(s)], directory.kind[int(s)]) for s in uniq]
    return devs, idx


__all__ = ["KafkaForwarder", "partition_for", "warning_event_payload"]
