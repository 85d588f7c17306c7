"""Retained vendor messages and restarts, on a real Mosquitto.

A broker sends a topic's retained message to every new subscription, and gridwatch subscribes
again on every (re)connect; before ``mqtt.retained`` a retained reading was stored once more on
every restart of gridwatch (a reading without its own timestamp each time under a new time)."""
from __future__ import annotations

import time

import orjson
import paho.mqtt.client as mqtt
import pytest

from gridwatch.streams.store import Store
from tests.helpers import RuntimeThread, wait_until

pytestmark = pytest.mark.broker


def _cfg(port, data_dir, **mqtt_kw):
    return {"site": {"name": "ret", "data_dir": str(data_dir)},
            "mqtt": {"host": "127.0.0.1", "port": port, "client_id": "gw-ret", **mqtt_kw}}


def _publish(port, topic, payload, retain):
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"vendor-{time.monotonic_ns()}", protocol=mqtt.MQTTv5)
    c.connect("127.0.0.1", port)
    c.loop_start()
    try:
        c.publish(topic, payload, qos=1, retain=retain).wait_for_publish(5)
    finally:
        c.disconnect()
        c.loop_stop()


def _settle(rt, what):
    """Wait until the runtime has taken and committed everything the broker sent at subscribe."""
    col = rt.rt.collector
    wait_until(lambda: not col.inbox, 10, what=what)
    time.sleep(0.5)


@pytest.mark.timeout(90)
@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
def test_a_retained_reading_is_stored_once_across_restarts(mosquitto_factory, tmp_path, protocol):
    mq = mosquitto_factory(persistence=True)
    now = int(time.time() * 1000)
    # a retained reading without its own timestamp (stamped on arrival) and one with it
    _publish(mq.port, "devices/generic/sewer_level/r1", orjson.dumps({"water_level": 1.5}), retain=True)
    _publish(mq.port, "devices/generic/sewer_level/r2", orjson.dumps({"ts": now - 5000, "water_level": 2.5}), retain=True)
    st = Store(tmp_path / "gridwatch.db")
    counts = []
    for run in range(3):
        with RuntimeThread(_cfg(mq.port, tmp_path, protocol=protocol), tmp_path) as rt:
            _settle(rt, "the retained messages")
            if run == 0:
                # a retained reading published while gridwatch runs is live data: stored (stamped
                # later than any arrival time stamped on r1 so far, so never out of order)
                _publish(mq.port, "devices/generic/sewer_level/r1", orjson.dumps({"ts": now + 60_000, "water_level": 3.0}),
                         retain=True)
                wait_until(lambda: 3.0 in st.readings()["value"].tolist(), 15, what="the live retained reading")
                _settle(rt, "the live message")
        counts.append((st.count_readings(), st.dead_letter_counts().get("duplicate", 0)))
    # restarts store nothing again (before: one more reading, or one more duplicate dead letter, per restart)
    assert counts == [(1, 0)] * 3, counts
    assert st.readings()["value"].tolist() == [3.0]
    skipped = rt.rt.counters.get("mqtt", "retained_skipped")
    if protocol == "5":
        assert skipped == 0, "MQTT 5: Retain Handling 2, the broker sends none"
    else:
        assert skipped == 2, "MQTT 3.1.1: both arrive flagged RETAIN and are dropped (counted)"


@pytest.mark.timeout(60)
def test_retained_ingest_option_stores_the_last_value_at_subscribe(mosquitto, tmp_path):
    """``mqtt.retained = "ingest"``: the broker's retained last value is taken at (re)subscribe,
    as before: for vendors whose devices publish state retained and rarely."""
    _publish(mosquitto.port, "devices/generic/sewer_level/r9", orjson.dumps({"ts": int(time.time() * 1000) - 1000,
                                                                             "water_level": 7.0}), retain=True)
    st = Store(tmp_path / "gridwatch.db")
    with RuntimeThread(_cfg(mosquitto.port, tmp_path, retained="ingest"), tmp_path):
        wait_until(lambda: st.count_readings() == 1, 15, what="the retained reading")
