"""End to end on a real Mosquitto: vendor publishes with mosquitto_pub -> gridwatch (paho, QoS 1,
password auth, ACL, TLS) -> warning on an operator's subscription and in the store; malformed
messages -> dead letters; the process stays up."""
from __future__ import annotations

import time

import orjson
import pytest

from gridwatch.servers.mosquitto import render_acl
from gridwatch.streams.store import Store
from tests.helpers import RuntimeThread, Subscriber, mosquitto_pub, wait_until

pytestmark = pytest.mark.broker

USERS = {"gridwatch": "svc-secret-1", "aqualine": "vendor-pw-2", "op-north": "op-pw-3"}


def _cfg(mq, tmp_path, tls: bool) -> dict:
    mqtt = {"host": "127.0.0.1", "port": mq.tls_port if tls else mq.port, "username": "gridwatch",
            "password": "${GW_TEST_MQTT_PASSWORD}", "client_id": "gw-e2e", "topics": ["devices/#"]}
    if tls:
        mqtt["tls"] = {"ca_file": str(mq.ca_file)}
    return {
        "site": {"name": "e2e", "data_dir": str(tmp_path)},
        "mqtt": mqtt,
        "regions": {"default": "Jiangcheng/Riverside District/East Town/E-02"},
        "rules": [{"name": "sewer_overflow", "kind": "threshold", "metrics": ["water_level"], "severity": "critical",
                   "params": {"above": 2.5, "clear_at": 2.3}}],
    }


@pytest.mark.parametrize("tls", [False, True], ids=["plain", "tls"])
def test_reading_to_warning_on_mqtt_and_in_store(mosquitto_factory, tmp_path, monkeypatch, tls):
    monkeypatch.setenv("GW_TEST_MQTT_PASSWORD", USERS["gridwatch"])
    mq = mosquitto_factory(users=USERS, acl=render_acl(["gridwatch"], ["op-north"]), tls=tls)
    port = mq.tls_port if tls else mq.port
    sub = Subscriber("127.0.0.1", port, "gridwatch/warnings/Jiangcheng/#", "op-north", USERS["op-north"],
                     ca_file=mq.ca_file if tls else None)
    now = time.time()
    good = [orjson.dumps({"t": now - 10 + i, "lvl": 180 + i * 30}) for i in range(4)]  # 1.8 .. 2.7 m
    bad = [b'{"t": 1, "lvl": 12', b'{"t": %d, "lvl": "high"}' % int(now), b'{"t": %d, "lvl": 1e999}' % int(now)]
    try:
        with RuntimeThread(_cfg(mq, tmp_path, tls), tmp_path) as rt:
            extra = ["--cafile", str(mq.ca_file)] if tls else []
            mosquitto_pub(port, "devices/aqualine/sewer_level/aq-sewer-002", good[:2] + bad + good[2:],
                          "aqualine", USERS["aqualine"], extra=extra)
            topic, msg = sub.get(timeout=30)
            assert topic == "gridwatch/warnings/Jiangcheng/Riverside District/East Town/E-02/sewer_overflow"
            assert msg["event"] == "raised" and msg["schema"] == "gridwatch.warning-event/1"
            w = msg["warning"]
            assert w["source"] == "aq-sewer-002" and w["severity"] == "critical" and w["state"] == "active"
            assert w["value"] == pytest.approx(2.7)
            # a vendor cannot publish into another vendor's subtree (ACL): nothing arrives from it
            mosquitto_pub(port, "devices/gassense/gas/gs-1", [orjson.dumps({"time": "2026-11-21T00:00:00Z", "H2S": 99})],
                          "aqualine", USERS["aqualine"], extra=extra)
            store = Store(tmp_path / "gridwatch.db")
            wait_until(lambda: store.count_readings() == 4 and sum(store.dead_letter_counts().values()) == 3,
                       what="4 readings and 3 dead letters stored")
            # 1e999 is not representable: the strict JSON parser rejects it like NaN/Infinity literals
            assert store.dead_letter_counts() == {"malformed_json": 2, "wrong_type": 1}
            [stored] = store.warnings()
            assert stored["id"] == w["id"] and stored["state"] == "active"
            assert rt.thread.is_alive()
            time.sleep(0.5)
            assert "gs-1" not in {r for r in store.readings()["device"]}
    finally:
        sub.close()
    c = rt.rt.counters.snapshot()["mqtt"]
    assert c["readings_stored"] == 4 and c["rejected"] == {"malformed_json": 2, "wrong_type": 1}


def test_wrong_password_is_refused_and_secret_not_logged(mosquitto_factory, tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("GW_TEST_MQTT_PASSWORD", "not-the-password-xyz")
    mq = mosquitto_factory(users=USERS, acl=render_acl(["gridwatch"], ["op-north"]))
    rt = RuntimeThread(_cfg(mq, tmp_path, False), tmp_path)
    caplog.set_level("DEBUG")
    rt.thread.start()
    try:
        time.sleep(1.5)
        assert not rt.rt.collector.connected.is_set()
    finally:
        rt.stop()
    assert "not-the-password-xyz" not in caplog.text


def test_ack_only_after_commit_nothing_lost_across_restart(mosquitto_factory, tmp_path):
    """QoS 1 + persistent session: readings published while gridwatch is down are delivered when it
    comes back; every reading is stored exactly once."""
    mq = mosquitto_factory(max_queued_messages=100_000)
    cfg = {"site": {"name": "e2e", "data_dir": str(tmp_path)},
           "mqtt": {"host": "127.0.0.1", "port": mq.port, "client_id": "gw-persist", "topics": ["devices/#"]}}
    now = time.time()
    with RuntimeThread(cfg, tmp_path):
        mosquitto_pub(mq.port, "devices/generic/sewer_level/s1", [orjson.dumps({"ts": now - 100 + i, "water_level": 1.0}) for i in range(50)])
        store = Store(tmp_path / "gridwatch.db")
        wait_until(lambda: store.count_readings() == 50, what="first 50 readings")
    # gridwatch is down: the broker queues these for the persistent session
    mosquitto_pub(mq.port, "devices/generic/sewer_level/s1", [orjson.dumps({"ts": now - 40 + i * 0.01, "water_level": 1.1}) for i in range(500)])
    with RuntimeThread(cfg, tmp_path):
        wait_until(lambda: store.count_readings() == 550, what="the 500 queued readings")
        time.sleep(0.5)
    r = store.readings()
    assert len(r["ts"]) == 550 and len(set(r["ts"].tolist())) == 550
