"""The edge runtime on a real Mosquitto: MQTT 3.1.1, shared subscriptions, a broker restart,
the Prometheus endpoint."""
from __future__ import annotations

import time
import urllib.request

import orjson
import pytest

from gridwatch.benchmarks.mqtt_load import publish_qos1
from gridwatch.servers._base import free_ports
from gridwatch.streams.store import Store
from tests.helpers import RuntimeThread, Subscriber, wait_until

pytestmark = pytest.mark.broker


def _cfg(port, data_dir, **mqtt):
    return {"site": {"name": mqtt.pop("name", "rt"), "data_dir": str(data_dir)},
            "mqtt": {"host": "127.0.0.1", "port": port, "client_id": mqtt.pop("client_id", "gw-rt"), **mqtt},
            "rules": [{"name": "high", "kind": "threshold", "metrics": ["water_level"], "params": {"above": 5.0, "clear_at": 4.0}}]}


def _readings(n, t0=None, value=1.0):
    t0 = t0 or int(time.time() * 1000) - 60_000
    return [orjson.dumps({"ts": t0 + i, "water_level": value}) for i in range(n)]


def test_mqtt311_client_stores_and_raises(mosquitto, tmp_path):
    sub = Subscriber("127.0.0.1", mosquitto.port, "gridwatch/warnings/#")
    try:
        with RuntimeThread(_cfg(mosquitto.port, tmp_path, protocol="3.1.1"), tmp_path):
            publish_qos1(mosquitto.port, "devices/generic/sewer_level/s1", _readings(100) + [orjson.dumps({"ts": int(time.time() * 1000), "water_level": 9.0})])
            _, ev = sub.get(30)
            assert ev["event"] == "raised" and ev["warning"]["source"] == "s1"
            wait_until(lambda: Store(tmp_path / "gridwatch.db").count_readings() == 101, what="101 readings")
    finally:
        sub.close()


def test_shared_subscription_splits_the_stream(mosquitto, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    with RuntimeThread(_cfg(mosquitto.port, a, shared_group="g", client_id="gw-a", name="a"), a), \
            RuntimeThread(_cfg(mosquitto.port, b, shared_group="g", client_id="gw-b", name="b"), b):
        time.sleep(0.3)
        for d in range(20):
            publish_qos1(mosquitto.port, f"devices/generic/sewer_level/d{d}", _readings(50))
        count = lambda: Store(a / "gridwatch.db").count_readings() + Store(b / "gridwatch.db").count_readings()  # noqa: E731
        wait_until(lambda: count() == 1000, what="1000 readings across both processes")
        na, nb = Store(a / "gridwatch.db").count_readings(), Store(b / "gridwatch.db").count_readings()
        assert na > 0 and nb > 0, f"both members of the group get a share ({na}, {nb})"


def test_reconnects_after_broker_restart_and_keeps_ingesting(mosquitto_factory, tmp_path):
    mq = mosquitto_factory(persistence=True)
    with RuntimeThread(_cfg(mq.port, tmp_path, reconnect_min_s=0.5, reconnect_max_s=2), tmp_path) as rt:
        publish_qos1(mq.port, "devices/generic/sewer_level/s1", _readings(100))
        st = Store(tmp_path / "gridwatch.db")
        wait_until(lambda: st.count_readings() == 100, what="first 100")
        mq.restart(downtime=1.0)
        wait_until(lambda: rt.rt.counters.get("mqtt", "connects") >= 2, 20, what="a reconnect")
        publish_qos1(mq.port, "devices/generic/sewer_level/s1", _readings(100, t0=int(time.time() * 1000) - 30_000))
        wait_until(lambda: st.count_readings() == 200, 20, what="readings after the restart")
        assert rt.rt.counters.get("mqtt", "disconnects") >= 1


def test_prometheus_endpoint_exports_counters(mosquitto, tmp_path):
    port = free_ports(1)[0]
    cfg = _cfg(mosquitto.port, tmp_path)
    cfg["metrics"] = {"port": port}
    with RuntimeThread(cfg, tmp_path):
        publish_qos1(mosquitto.port, "devices/generic/sewer_level/s1", _readings(10) + [b"{not json"])
        st = Store(tmp_path / "gridwatch.db")
        wait_until(lambda: st.count_readings() == 10, what="10 readings")
        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    assert 'gridwatch_readings_stored_total{source="mqtt"} 10.0' in body
    assert 'gridwatch_rejected_total{reason="malformed_json",source="mqtt"} 1.0' in body


@pytest.mark.broker
@pytest.mark.timeout(120)
def test_messages_buffered_during_a_read_pause_are_read_when_it_ends(mosquitto):
    """The inbox fills, reading pauses with the tail of a burst already read into the client's
    buffer, and the broker has nothing more to send: when the pipeline has taken messages, the
    buffered rest must come through at once, not when the broker next sends something (the
    keep-alive answer, 60 s here). Before the fix the last ~1,200 messages of a 200k burst waited
    ~27 s in the bench."""
    from gridwatch.config import MqttConfig
    from gridwatch.ingest.mqtt import MqttCollector
    from gridwatch.observability import Counters

    cfg = MqttConfig(port=mosquitto.port, topics=["devices/#"], client_id="pause-tail", inbox_max_messages=50,
                     receive_maximum=65535, keepalive_s=60)
    counters = Counters()
    col = MqttCollector(cfg, "pause-tail", counters)
    col.start()
    try:
        assert col.connected.wait(10)
        n = 3000
        payloads = [orjson.dumps({"ts": 1_700_000_000_000 + i, "water_level": 1.0}) for i in range(n)]
        publish_qos1(mosquitto.port, "devices/generic/sewer_level/tail-1", payloads)
        t0 = time.monotonic()
        taken = 0
        while taken < n and time.monotonic() - t0 < 30:
            msgs = col.take(20)
            col.ack(msgs)
            taken += len(msgs)
            time.sleep(0.001 if msgs else 0.01)
        took = time.monotonic() - t0
    finally:
        col.stop()
    assert counters.get("mqtt", "read_pauses") >= 1
    assert taken == n and took < 15, (taken, took)
