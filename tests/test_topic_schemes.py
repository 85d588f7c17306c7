"""Vendor topic schemes: a profile declares the fixed topics its devices publish on (DJI Cloud API
docks: ``thing/product/{sn}/osd``); gridwatch subscribes to them and reads vendor, kind and device
id from them, so such devices need no bridge. End to end on a real Mosquitto: a docked aircraft's
low battery raises a warning."""
from __future__ import annotations

import time

import orjson
import pytest

from gridwatch.hw.profiles import METRIC_ID, Profile, ProfileError, load_profiles
from gridwatch.ingest.codec import Codec, Message
from gridwatch.ingest.devices import DeviceDirectory
from gridwatch.streams.store import Store
from tests.helpers import RuntimeThread, mosquitto_pub, wait_until

NOW = 1_732_154_400_000
DOCK, AIRCRAFT = "4BADK9S00B0012", "1581F5BKD225D00A0012"


def aircraft_osd(ts: int, battery: int, lat=30.52, lon=114.31) -> dict:
    """An aircraft's osd message as the DJI Cloud API documents it (abridged)."""
    return {"tid": "6a7bfe89-c386-4043-b600-b518e10096cc", "bid": "42a19f36-5117-4520-bd13-fd61d818d52e",
            "timestamp": ts, "gateway": DOCK,
            "data": {"latitude": lat, "longitude": lon, "height": 120.5, "elevation": 100.2, "horizontal_speed": 8.2,
                     "vertical_speed": 0.0, "attitude_head": 90, "mode_code": 5, "gear": 1,
                     "battery": {"capacity_percent": battery, "remain_flight_time": 600, "return_home_power": 25},
                     "position_state": {"is_fixed": 2, "gps_number": 20}}}


def dock_osd(ts: int) -> dict:
    return {"tid": "t", "bid": "b", "timestamp": ts, "gateway": DOCK,
            "data": {"latitude": 30.51, "longitude": 114.30, "height": 20.1, "mode_code": 0, "drone_in_dock": 1,
                     "environment_temperature": 11.5, "temperature": 24.0, "humidity": 63, "rainfall": 0,
                     "wind_speed": 2.1, "drone_charge_state": {"capacity_percent": 88, "state": 1},
                     "sub_device": {"device_sn": AIRCRAFT, "device_online_status": 1}}}


def test_dji_topics_route_to_the_dji_profile():
    d = DeviceDirectory()
    d.add(DOCK, "dji", "dock")
    c = Codec(load_profiles(), d)
    assert c.topic_filters() == ["thing/product/+/osd"]
    out = c.decode([Message(f"thing/product/{AIRCRAFT}/osd", orjson.dumps(aircraft_osd(NOW - 1000, 18)), NOW),
                    Message(f"thing/product/{DOCK}/osd", orjson.dumps(dock_osd(NOW - 1000)), NOW)], NOW)
    assert dict(out.rejected) == {} and dict(out.unmapped) == {}
    by = {(d.device_id(int(dev)), int(m)): v for dev, m, v in zip(out.sensor.device, out.metric, out.sensor.value)}
    assert by[(AIRCRAFT, METRIC_ID["battery"])] == 18
    assert by[(DOCK, METRIC_ID["temperature"])] == 11.5 and by[(DOCK, METRIC_ID["humidity"])] == 63
    assert (DOCK, METRIC_ID["battery"]) not in by  # the charge state is the aircraft's, not the dock's
    assert d.kind[d.get(AIRCRAFT, "dji")] == "drone" and d.kind[d.get(DOCK, "dji")] == "dock"
    assert sorted(d.device_id(int(x)) for x in out.position.device) == sorted([AIRCRAFT, DOCK])
    out = c.decode([Message("thing/product/x/state", b"{}", NOW), Message("sys/product/x/status", b"{}", NOW)], NOW)
    assert dict(out.rejected) == {"bad_topic": 2} and "thing/product/{device_id}/osd" in out.dead[0].detail


def test_kind_from_the_topic():
    p = Profile.from_dict({"vendor": "acme", "timestamp": "t", "fields": {"lvl": "water_level"},
                           "topics": [{"pattern": "acme/{kind}/+/{device_id}/up"}]})
    c = Codec({"acme": p}, DeviceDirectory())
    assert c.topic_filters() == ["acme/+/+/+/up"]
    out = c.decode([Message("acme/sewer_level/site-9/lv-1/up", b'{"t": 1732154399, "lvl": 1.5}', NOW)], NOW)
    assert dict(out.rejected) == {} and c.directory.kind[c.directory.get("lv-1", "acme")] == "sewer_level"


@pytest.mark.parametrize("topics, msg", [
    ([{"pattern": "thing/product/osd", "kind": "drone"}], r"has no \{device_id\} level"),
    ([{"pattern": "devices/x/{device_id}", "kind": "drone"}], "must not start with 'devices/'"),
    ([{"pattern": "a/{serial}/b", "kind": "drone"}], r"level '\{serial\}'"),
    ([{"pattern": "a/#/{device_id}", "kind": "drone"}], r"level '#'"),
    ([{"pattern": "a/{device_id}"}], "needs kind"),
    ([{"pattern": "a/{device_id}/{device_id}", "kind": "d"}], "appears twice"),
    ({"pattern": "a/{device_id}"}, "expected an array"),
])
def test_bad_topic_schemes_are_refused_with_the_key(topics, msg):
    with pytest.raises(ProfileError, match=msg):
        Profile.from_dict({"vendor": "v", "topics": topics}, where="v")


@pytest.mark.broker
def test_docked_aircraft_low_battery_warning_end_to_end(mosquitto, tmp_path):
    """gridwatch subscribes to thing/product/+/osd by itself (its mqtt.topics name only devices/#);
    the aircraft's battery falling to 15 % raises the low-battery warning in the store."""
    cfg = {"site": {"name": "dji", "data_dir": str(tmp_path)},
           "mqtt": {"host": "127.0.0.1", "port": mosquitto.port, "client_id": "gw-dji"},
           "alerts_mqtt": {"enabled": False},
           "devices": [{"id": DOCK, "vendor": "dji", "kind": "dock"}],
           "regions": {"default": "Jiangcheng/Riverside District/East Town/E-02"},
           "rules": [{"name": "drone_low_battery", "kind": "threshold", "metrics": ["battery"], "device_kinds": ["drone"],
                      "severity": "major", "params": {"below": 20, "clear_at": 30}}]}
    now = int(time.time() * 1000)
    with RuntimeThread(cfg, tmp_path) as rt:
        assert "thing/product/+/osd" in rt.rt.collector.topics
        time.sleep(0.3)  # the subscription is sent right after the connection
        mosquitto_pub(mosquitto.port, f"thing/product/{DOCK}/osd", [orjson.dumps(dock_osd(now - 3000))])
        mosquitto_pub(mosquitto.port, f"thing/product/{AIRCRAFT}/osd",
                      [orjson.dumps(aircraft_osd(now - 3000 + 1000 * i, b)) for i, b in enumerate([40, 25, 15])])
        store = Store(tmp_path / "gridwatch.db")
        w = wait_until(lambda: store.warnings(rule="drone_low_battery"), what="the low-battery warning")
        assert w[0]["source"] == AIRCRAFT and w[0]["value"] == 15 and w[0]["state"] == "active"
        assert wait_until(lambda: store.count_readings() == 3 + 3 * 3)  # dock: height, temperature, humidity; aircraft: height, speed, battery
