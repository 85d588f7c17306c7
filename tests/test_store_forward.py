"""Store-and-forward in `gridwatch run` against real servers: Mosquitto -> the edge runtime ->
spool -> QuestDB (InfluxDB v2 write API) and Kafka, with the remote server down for a while, the
spool full, and the Kafka broker restarted mid-stream. Counts are compared exactly."""
from __future__ import annotations

import asyncio
import os
import threading
import time
import uuid

import numpy as np
import orjson
import pytest

from gridwatch.benchmarks.mqtt_load import publish_qos1
from gridwatch.streams.store import Store
from tests.conftest import start_or_skip
from tests.helpers import RuntimeThread, wait_until

pytestmark = pytest.mark.broker
DEVICES = 8


@pytest.fixture(scope="module")
def qdb():
    """A QuestDB of this module's own: the tests kill and restart it."""
    from gridwatch.servers.questdb import QuestDBServer

    srv = QuestDBServer()
    start_or_skip(srv, "questdb")
    yield srv
    srv.stop()


def _payloads(n: int, t0: int, start: int = 0) -> dict[str, list[bytes]]:
    """n readings over DEVICES devices, unique timestamps; every 50th value above the rule's 5.0."""
    out: dict[str, list[bytes]] = {f"s-{d}": [] for d in range(DEVICES)}
    for i in range(start, start + n):
        v = 6.0 + (i % 7) * 0.1 if i % 50 < 3 else 1.0 + (i % 13) * 0.01
        out[f"s-{i % DEVICES}"].append(orjson.dumps({"ts": t0 + i, "water_level": v}))
    return out


def _publish(port: int, payloads: dict[str, list[bytes]]) -> None:
    for dev, msgs in payloads.items():
        publish_qos1(port, f"devices/generic/sewer_level/{dev}", msgs, client_id=f"pub-{uuid.uuid4().hex[:6]}")


def _cfg(tmp_path, mq_port, *, influx=None, kafka=None, spool=None, **mqtt) -> dict:
    cfg = {"site": {"name": "sf", "data_dir": str(tmp_path)},
           "mqtt": {"host": "127.0.0.1", "port": mq_port, "client_id": "gw-sf", **mqtt},
           "rules": [{"name": "high", "kind": "threshold", "metrics": ["water_level"], "params": {"above": 5.0, "clear_at": 4.0}}],
           "spool": {"retry_min_s": 0.1, "retry_max_s": 1.0, **(spool or {})},
           "forward": {"influx": influx is not None, "kafka": kafka is not None},
           "log": {"level": "warning"}}
    if influx is not None:
        cfg["influx"] = influx
    if kafka is not None:
        cfg["kafka"] = kafka
    return cfg


def _influx(qdb, tag: str) -> dict:
    return {"url": qdb.url, "token": "t", "readings_measurement": f"readings_{tag}",
            "warnings_measurement": f"warnings_{tag}", "questdb_dedup": True}


def _spooled(rt) -> int:
    return sum(len(f.spool) for f in rt.rt.forwards)


def _check_questdb(qdb, tag: str, store: Store, n: int) -> dict:
    """Every stored reading is in QuestDB exactly once; every stored warning once, final state."""
    t = f"readings_{tag}"
    got = qdb.wait_rows(f"select count(), count_distinct(timestamp) from '{t}'", lambda r: r and r[0][0] >= n, timeout=60)
    qdb.wait_wal_applied(t)
    [[rows, distinct]] = qdb.query(f"select count(), count_distinct(timestamp) from '{t}'")
    r = store.readings()
    assert len(r["ts"]) == n
    assert (rows, distinct) == (n, n), got
    [[qsum]] = qdb.query(f"select sum(value) from '{t}'")
    assert qsum == pytest.approx(float(np.sum(r["value"])), rel=1e-12)
    ws = {w["id"]: w for w in store.warnings(limit=100_000)}
    wt = f"warnings_{tag}"
    qdb.wait_rows(f"select count() from '{wt}'", lambda x: x and x[0][0] >= len(ws), timeout=30)
    qdb.wait_wal_applied(wt)
    q = qdb.query(f"select id, state from '{wt}'")
    assert sorted(x[0] for x in q) == sorted(ws), "each stored warning once in the time-series store"
    assert all(ws[i]["state"] == s for i, s in q)
    return {"readings": rows, "warnings": len(q)}


# how long the time-series server stays down; the long-run mode (GRIDWATCH_FAULT_OUTAGE_S=180)
# keeps it down for minutes while readings keep arriving
OUTAGE_S = float(os.environ.get("GRIDWATCH_FAULT_OUTAGE_S", "3"))


@pytest.mark.questdb
@pytest.mark.timeout(240 + int(OUTAGE_S))
def test_run_with_time_series_server_down_then_back_every_reading_once(mosquitto_factory, qdb, tmp_path):
    tag = uuid.uuid4().hex[:8]
    mq = mosquitto_factory(max_queued_messages=1_000_000)
    t0 = int(time.time() * 1000) - 600_000
    n1, n2, n3 = 800, 3200, 800
    chunks = 8 if OUTAGE_S >= 30 else 1  # a long outage: readings keep coming during it
    cfg = _cfg(tmp_path, mq.port, influx=_influx(qdb, tag))
    store = Store(tmp_path / "gridwatch.db")
    with RuntimeThread(cfg, tmp_path) as rt:
        _publish(mq.port, _payloads(n1, t0))
        qdb.wait_rows(f"select count() from 'readings_{tag}'", lambda r: r and r[0][0] == n1, timeout=60)
        qdb.kill()  # the time-series server dies ...
        down_until = time.monotonic() + OUTAGE_S
        for c in range(chunks):
            _publish(mq.port, _payloads(n2 // chunks, t0, n1 + c * (n2 // chunks)))
            if chunks > 1:
                time.sleep(OUTAGE_S / chunks)
        # ... ingest goes on: stored locally, acknowledged, and spooled for the server
        wait_until(lambda: store.count_readings() == n1 + n2, 60, what="ingest during the outage")
        wait_until(lambda: rt.rt.counters.get("spool", "influx_send_failures") >= 2, 30, what="failed sends")
        spooled = _spooled(rt)
        assert spooled > 0
        # down for a while: retries back off, the data waits on disk
        time.sleep(max(0.0, down_until - time.monotonic()))
        qdb.start()  # ... and comes back (same port, same data)
        _publish(mq.port, _payloads(n3, t0, n1 + n2))
        wait_until(lambda: store.count_readings() == n1 + n2 + n3 and _spooled(rt) == 0, 90, 0.2, "spool drained")
        c = rt.rt.counters.snapshot()
    n = n1 + n2 + n3
    res = _check_questdb(qdb, tag, store, n)
    assert c["mqtt"]["readings_stored"] == n and not c["spool"].get("backpressure_batches")
    print(f"\nserver down {OUTAGE_S:.0f} s: {n} readings published, {n} stored, {res['readings']} rows in QuestDB "
          f"({res['readings']} distinct), {res['warnings']} warnings; {spooled} batches were spooled during the outage, "
          f"{c['spool']['influx_send_failures']} failed sends")


@pytest.mark.questdb
@pytest.mark.timeout(240)
def test_full_spool_is_back_pressure_the_broker_keeps_the_messages(mosquitto_factory, qdb, tmp_path):
    """Server down from the start, a 30 KiB spool: the pipeline holds, acknowledges nothing more;
    gridwatch is then stopped with the spool full and started again once the server is back: the
    broker redelivers what was never acknowledged, the spool replays what it held, and every
    published reading ends up stored once and in QuestDB once."""
    tag = uuid.uuid4().hex[:8]
    mq = mosquitto_factory(max_queued_messages=1_000_000)
    qdb.kill()  # down from the start
    t0 = int(time.time() * 1000) - 600_000
    n = 6000
    cfg = _cfg(tmp_path, mq.port, influx=_influx(qdb, tag), spool={"max_mb": 0.03, "segment_mb": 0.01},
               receive_maximum=100, inbox_max_messages=300)
    cfg["ingest"] = {"batch_max_messages": 50}
    store = Store(tmp_path / "gridwatch.db")
    with RuntimeThread(cfg, tmp_path) as rt:
        _publish(mq.port, _payloads(n, t0))  # returns when the broker acknowledged all n
        wait_until(lambda: rt.rt.counters.get("spool", "backpressure_batches") >= 1, 60, what="back-pressure")
        # the pipeline holds: the stored count stops growing well short of n
        time.sleep(2)
        held_at = store.count_readings()
        time.sleep(2)
        assert store.count_readings() == held_at < n // 2
        sp = rt.rt.forwards[0].spool
        spooled_records, spooled_bytes = len(sp), sp.bytes_on_disk
        assert 0 < spooled_bytes <= sp.max_bytes
        inbox = len(rt.rt.collector.inbox)
        c1 = rt.rt.counters.snapshot()
        # the broker pushes past Receive Maximum, but gridwatch stops reading at its inbox bound
        # (plus what one buffered read already held): the backlog stays in the broker
        assert inbox <= 300 + 300 and c1["mqtt"]["read_pauses"] >= 1, (inbox, c1["mqtt"])
    # stopped with the spool full: the held batch and the inbox are neither stored nor acknowledged
    assert store.count_readings() == held_at
    assert c1["spool"]["held_messages"] >= 1 and not c1["mqtt"].get("dropped")
    qdb.start()
    with RuntimeThread(cfg, tmp_path) as rt:  # same client id: the broker redelivers the rest
        wait_until(lambda: store.count_readings() == n and _spooled(rt) == 0, 120, 0.2, "everything after the restart")
        time.sleep(0.5)
        c2 = rt.rt.counters.snapshot()
    res = _check_questdb(qdb, tag, store, n)
    assert c2["mqtt"]["readings_stored"] == n - held_at and not c2["mqtt"].get("dropped")
    assert store.dead_letter_counts().get("duplicate", 0) == 0
    print(f"\nspool full: {n} published; held at {held_at} stored, spool {spooled_records} records / {spooled_bytes} of "
          f"{sp.max_bytes} bytes; {n - held_at} messages unacknowledged, kept by the broker ({inbox} of them already "
          f"pushed into gridwatch's inbox); {c1['spool']['backpressure_batches']} batch held "
          f"({c1['spool']['held_messages']} messages); after the restart {c2['mqtt']['readings_stored']} more stored "
          f"(total {n}), {res['readings']} rows in QuestDB, {res['warnings']} warnings")


# ---------------------------------------------------------------------------------------------
# Kafka broker restarted mid-stream


async def _consume_all(bootstrap: str, topic: str, timeout: float = 60.0) -> list[bytes]:
    from aiokafka import AIOKafkaConsumer
    from aiokafka.structs import TopicPartition

    c = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, auto_offset_reset="earliest")
    await c.start()
    try:
        parts = [TopicPartition(topic, p) for p in sorted(c.partitions_for_topic(topic) or await _parts(c, topic))]
        c.assign(parts)
        await c.seek_to_beginning(*parts)
        end = await c.end_offsets(parts)
        out: list[bytes] = []
        deadline = time.monotonic() + timeout
        while [tp for tp in parts if await c.position(tp) < end[tp]]:
            if time.monotonic() > deadline:
                raise TimeoutError("could not read the topic back")
            for msgs in (await c.getmany(timeout_ms=500)).values():
                out += [m.value for m in msgs]
        return out
    finally:
        await c.stop()


async def _parts(c, topic):
    await c._client.force_metadata_update()
    return c._client.cluster.partitions_for_topic(topic)


@pytest.mark.kafka
@pytest.mark.timeout(240)
def test_kafka_broker_restarted_mid_stream_nothing_lost(mosquitto_factory, tmp_path):
    from gridwatch.config import parse
    from gridwatch.ingest import wire
    from gridwatch.servers.kafka import KafkaServer
    from gridwatch.streams.cluster import ensure_topics

    kafka = start_or_skip(KafkaServer(), "kafka")  # this test's own broker: it is restarted
    try:
        tag = uuid.uuid4().hex[:8]
        mq = mosquitto_factory(max_queued_messages=1_000_000)
        kcfg = {"bootstrap_servers": kafka.bootstrap_servers, "readings_topic": f"r-{tag}",
                "warning_events_topic": f"we-{tag}", "warnings_topic": f"w-{tag}", "partitions": 2, "linger_ms": 5}
        cfg = _cfg(tmp_path, mq.port, kafka=kcfg)
        asyncio.run(ensure_topics(parse(cfg, base_dir=tmp_path)))
        t0 = int(time.time() * 1000) - 600_000
        parts = [1000, 2000, 1000]
        store = Store(tmp_path / "gridwatch.db")
        t_start = time.monotonic()
        with RuntimeThread(cfg, tmp_path) as rt:
            _publish(mq.port, _payloads(parts[0], t0))
            wait_until(lambda: store.count_readings() == parts[0] and _spooled(rt) == 0, 60, what="first part in Kafka")
            # the broker dies (SIGKILL) mid-stream; the second part is ingested and spooled meanwhile
            kafka.kill()
            _publish(mq.port, _payloads(parts[1], t0, parts[0]))
            wait_until(lambda: store.count_readings() == parts[0] + parts[1], 60, what="ingest while Kafka is down")
            time.sleep(2)
            spooled = _spooled(rt)
            assert spooled > 0, "the outage must hold data in the spool for this test to mean anything"
            kafka.start()  # same data dir and port
            _publish(mq.port, _payloads(parts[2], t0, parts[0] + parts[1]))
            n = sum(parts)
            wait_until(lambda: store.count_readings() == n and _spooled(rt) == 0, 120, 0.2, "spool drained into Kafka")
            c = rt.rt.counters.snapshot()
        values = asyncio.run(_consume_all(kafka.bootstrap_servers, f"r-{tag}"))
        seen: list[tuple[str, int]] = []
        for v in values:
            b = wire.decode(v)
            ids = b.ids
            seen += [(ids[d], t) for d, t in zip(b.cols["device"].tolist(), b.cols["ts"].tolist())]
        want = {(f"s-{i % DEVICES}", t0 + i) for i in range(n)}
        assert set(seen) == want, f"{len(want - set(seen))} readings missing in Kafka"
        dups = len(seen) - len(set(seen))
        events = asyncio.run(_consume_all(kafka.bootstrap_servers, f"we-{tag}"))
        ws = {w["id"] for w in Store(tmp_path / "gridwatch.db").warnings(limit=100_000)}
        got_ws = [orjson.loads(e)["warning"]["id"] for e in events]
        assert set(got_ws) == ws
        elapsed = time.monotonic() - t_start
        print(f"\nkafka restart: {n} readings published, {n} stored, {len(set(seen))} distinct in Kafka "
              f"({dups} duplicate rows re-sent), {len(ws)} warnings forwarded ({len(got_ws)} events); {spooled} batches "
              f"spooled while the broker was down, "
              f"{c['spool'].get('kafka_send_failures', 0)} failed sends, {elapsed:.0f} s")
        assert dups == 0, "the idempotent producer outlived the restart: nothing re-sent"
    finally:
        kafka.stop()
