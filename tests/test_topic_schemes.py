"""Vendor topic schemes: a profile declares the fixed topics its devices publish on (DJI Cloud API
docks: ``thing/product/{sn}/osd`` and ``/state``, ``sys/product/{sn}/status``); gridwatch
subscribes to them and reads vendor, kind and device id from them, so such devices need no bridge.
The dock's topology binds its aircraft to it (stored, answered, rebound when it changes). End to
end on a real Mosquitto: a docked aircraft's low battery raises a warning that names its dock."""
from __future__ import annotations

import contextlib
import io
import time

import orjson
import pytest

from gridwatch.cli import main
from gridwatch.hw.profiles import METRIC_ID, Profile, ProfileError, load_profiles
from gridwatch.ingest.codec import Codec, Message
from gridwatch.ingest.devices import DeviceDirectory
from gridwatch.streams.store import Store
from tests.helpers import RuntimeThread, Subscriber, mosquitto_pub, wait_until

NOW = 1_732_154_400_000
DOCK, AIRCRAFT = "4BADK9S00B0012", "1581F5BKD225D00A0012"
DOCK2 = "4BADK9S00B0077"


def aircraft_osd(ts: int, battery: int, lat=30.52, lon=114.31, dock: str | None = DOCK) -> dict:
    """An aircraft's osd message as the DJI Cloud API documents it (abridged); ``dock`` None leaves
    out its ``gateway`` field."""
    m = {"tid": "6a7bfe89-c386-4043-b600-b518e10096cc", "bid": "42a19f36-5117-4520-bd13-fd61d818d52e",
         "timestamp": ts, "gateway": dock,
         "data": {"latitude": lat, "longitude": lon, "height": 120.5, "elevation": 100.2, "horizontal_speed": 8.2,
                  "vertical_speed": 0.0, "attitude_head": 90, "mode_code": 5, "gear": 1,
                  "battery": {"capacity_percent": battery, "remain_flight_time": 600, "return_home_power": 25},
                  "position_state": {"is_fixed": 2, "gps_number": 20}}}
    if dock is None:
        del m["gateway"]
    return m


def dock_osd(ts: int, dock: str = DOCK) -> dict:
    return {"tid": "t", "bid": "b", "timestamp": ts, "gateway": dock,
            "data": {"latitude": 30.51, "longitude": 114.30, "height": 20.1, "mode_code": 0, "drone_in_dock": 1,
                     "environment_temperature": 11.5, "temperature": 24.0, "humidity": 63, "rainfall": 0,
                     "wind_speed": 2.1, "drone_charge_state": {"capacity_percent": 88, "state": 1},
                     "sub_device": {"device_sn": AIRCRAFT, "device_online_status": 1}}}


def test_dji_topics_route_to_the_dji_profile():
    d = DeviceDirectory()
    d.add(DOCK, "dji", "dock")
    c = Codec(load_profiles(), d)
    assert c.topic_filters() == ["sys/product/+/status", "thing/product/+/osd", "thing/product/+/state"]
    out = c.decode([Message(f"thing/product/{AIRCRAFT}/osd", orjson.dumps(aircraft_osd(NOW - 1000, 18)), NOW),
                    Message(f"thing/product/{DOCK}/osd", orjson.dumps(dock_osd(NOW - 1000)), NOW)], NOW)
    assert dict(out.rejected) == {} and dict(out.unmapped) == {}
    by = {(d.device_id(int(dev)), int(m)): v for dev, m, v in zip(out.sensor.device, out.metric, out.sensor.value)}
    assert by[(AIRCRAFT, METRIC_ID["battery"])] == 18
    assert by[(DOCK, METRIC_ID["temperature"])] == 11.5 and by[(DOCK, METRIC_ID["humidity"])] == 63
    assert (DOCK, METRIC_ID["battery"]) not in by  # the charge state is the aircraft's, not the dock's
    assert d.kind[d.get(AIRCRAFT, "dji")] == "drone" and d.kind[d.get(DOCK, "dji")] == "dock"
    assert sorted(d.device_id(int(x)) for x in out.position.device) == sorted([AIRCRAFT, DOCK])
    out = c.decode([Message("thing/product/x/events", b"{}", NOW), Message("sys/product/x/status_reply", b"{}", NOW)], NOW)
    assert dict(out.rejected) == {"bad_topic": 2} and "thing/product/{device_id}/osd" in out.dead[0].detail


def update_topo(ts: int, aircraft: list[str], tid: str = "tid-1") -> dict:
    """A dock's topology on sys/product/{dock}/status, laid out as the DJI Cloud API documents it:
    the dock (domain 3) and the aircraft it hosts (domain 0); none when the aircraft went offline."""
    return {"tid": tid, "bid": "bid-1", "timestamp": ts, "method": "update_topo",
            "data": {"domain": "3", "type": 119, "sub_type": 0, "device_secret": "secret", "nonce": "nonce",
                     "thing_version": "1.1.2",
                     "sub_devices": [{"sn": sn, "domain": "0", "type": 91, "sub_type": 0, "index": "A",
                                      "device_secret": "secret", "nonce": "nonce", "thing_version": "1.1.2"}
                                     for sn in aircraft]}}


def _m(topic: str, obj: dict) -> Message:
    return Message(topic, orjson.dumps(obj), NOW)


def test_update_topo_binds_rebinds_and_releases_and_is_answered():
    d = DeviceDirectory()
    c = Codec(load_profiles(), d)
    out = c.decode([_m(f"sys/product/{DOCK}/status", update_topo(NOW - 1000, [AIRCRAFT], tid="t-42"))], NOW)
    assert dict(out.rejected) == {} and not out.dead
    dock, craft = d.get(DOCK, "dji"), d.get(AIRCRAFT, "dji")
    assert d.kind[dock] == "dock" and d.kind[craft] == "drone"  # new devices take their domain's kind
    assert d.gateway_id(craft) == DOCK and d.gateway_id(dock) is None
    assert [(t, orjson.loads(p)) for t, p in out.replies] == [
        (f"sys/product/{DOCK}/status_reply", {"tid": "t-42", "bid": "bid-1", "timestamp": NOW, "method": "update_topo",
                                              "data": {"result": 0}})]
    # the aircraft lands in another dock: that dock's topology moves it
    c.decode([_m(f"sys/product/{DOCK2}/status", update_topo(NOW - 900, [AIRCRAFT]))], NOW)
    assert d.gateway_id(craft) == DOCK2 and d.hosted == {d.get(DOCK2, "dji"): {craft}}
    # the old dock reporting itself empty does not release an aircraft it no longer hosts
    c.decode([_m(f"sys/product/{DOCK}/status", update_topo(NOW - 800, []))], NOW)
    assert d.gateway_id(craft) == DOCK2
    # the new dock's aircraft goes offline (sub_devices empty): released
    c.decode([_m(f"sys/product/{DOCK2}/status", update_topo(NOW - 700, []))], NOW)
    assert d.gateway_id(craft) is None and d.gateway_bound == 0 and d.hosted == {}
    # the osd messages bind known devices too: the aircraft's gateway field, the dock's sub_device
    c.decode([_m(f"thing/product/{AIRCRAFT}/osd", aircraft_osd(NOW - 600, 50, dock=DOCK2))], NOW)
    assert d.gateway_id(craft) == DOCK2
    c.decode([_m(f"thing/product/{DOCK}/osd", dock_osd(NOW - 500))], NOW)  # sub_device.device_sn = AIRCRAFT
    assert d.gateway_id(craft) == DOCK


def test_topology_that_cannot_be_taken_is_dead_lettered_with_its_reason():
    d = DeviceDirectory(max_gateway_bindings=1)
    c = Codec(load_profiles(), d)
    out = c.decode([_m(f"sys/product/{DOCK}/status", update_topo(NOW, [AIRCRAFT])),
                    _m(f"sys/product/{DOCK2}/status", update_topo(NOW, ["SECOND-AIRCRAFT"])),
                    _m(f"sys/product/{DOCK2}/status", update_topo(NOW, [f"A{i}" for i in range(17)])),
                    _m(f"sys/product/{DOCK2}/status", {"tid": "t", "method": "update_topo", "data": {}}),
                    _m(f"sys/product/{DOCK2}/status", {"tid": "t", "method": "update_topo",
                                                       "data": {"sub_devices": [{"sn": ""}]}}),
                    _m(f"sys/product/{DOCK2}/status", {"tid": "t", "method": "something_new", "data": {}})], NOW)
    assert dict(out.rejected) == {"gateway_limit": 1, "too_many_sub_devices": 1, "missing_field": 1, "bad_device_id": 1}
    assert d.gateway_bound == 1 and d.gateway_refused == 1  # the bound holds; the refusal is counted
    assert "the limit" in next(x.detail for x in out.dead if x.reason == "gateway_limit")
    assert d.get("A0", "dji") < 0  # an over-long list registers nothing
    assert out.unmapped == {("dji", "method:'something_new'"): 1}  # another method: counted, not an error


def test_state_messages_store_what_maps_and_count_the_rest():
    """thing/product/{sn}/state carries property changes: partial data, often nothing gridwatch
    stores. What maps is stored, the rest is counted per field; nothing is dead-lettered."""
    d = DeviceDirectory()
    d.add(DOCK, "dji", "dock")
    c = Codec(load_profiles(), d)
    out = c.decode([_m(f"thing/product/{DOCK}/state", {"tid": "t", "bid": "b", "timestamp": NOW - 1000, "gateway": DOCK,
                                                       "data": {"humidity": 71}}),
                    _m(f"thing/product/{DOCK}/state", {"tid": "t", "bid": "b", "timestamp": NOW - 900, "gateway": DOCK,
                                                       "data": {"firmware_version": "10.01.16.04", "mode_code": 2}}),
                    _m(f"thing/product/{DOCK}/state", {"tid": "t", "bid": "b", "timestamp": NOW - 800, "gateway": DOCK,
                                                       "data": {"live_capacity": {"available_video_number": 1}}})], NOW)
    assert dict(out.rejected) == {} and not out.dead
    assert out.sensor.value.tolist() == [71.0] and out.metric.tolist() == [METRIC_ID["humidity"]]
    assert out.unmapped == {("dji", "firmware_version"): 1, ("dji", "live_capacity"): 1}  # mode_code: ignored by the profile


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
    ([{"pattern": "a/{device_id}", "kind": "d", "message": "events"}], r"topics\.0\.message: 'events' is not one of"),
    ({"pattern": "a/{device_id}"}, "expected an array"),
])
def test_bad_topic_schemes_are_refused_with_the_key(topics, msg):
    with pytest.raises(ProfileError, match=msg):
        Profile.from_dict({"vendor": "v", "topics": topics}, where="v")


@pytest.mark.parametrize("gateway, msg", [
    ({"field": 3}, r"v\.gateway\.field: expected a field name"),
    ({"sub_device": "a..b"}, r"v\.gateway\.sub_device: 'a\.\.b' is not a field name"),
    ({"hosts": "x"}, r"v\.gateway: expected a table with field and/or sub_device"),
    ("gateway", r"v\.gateway: expected a table"),
])
def test_bad_gateway_tables_are_refused_with_the_key(gateway, msg):
    with pytest.raises(ProfileError, match=msg):
        Profile.from_dict({"vendor": "v", "gateway": gateway}, where="v")


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


@pytest.mark.broker
def test_aircraft_bound_to_its_dock_end_to_end(mosquitto, tmp_path):
    """On a real Mosquitto, with the dock simulated as the DJI Cloud API lays its messages out:
    update_topo binds the aircraft to the dock and is answered on status_reply once stored; state
    messages are taken without a dead letter; the aircraft's low-battery warning names its dock.
    After a restart the binding is still there (no new topology, no gateway field); another
    dock's topology then moves the aircraft, and `gridwatch devices` shows where it is."""
    cfg = {"site": {"name": "dji", "data_dir": str(tmp_path)},
           "mqtt": {"host": "127.0.0.1", "port": mosquitto.port, "client_id": "gw-dji"},
           "devices": [{"id": DOCK, "vendor": "dji", "kind": "dock"}, {"id": DOCK2, "vendor": "dji", "kind": "dock"}],
           "regions": {"default": "Jiangcheng/Riverside District/East Town/E-02"},
           "rules": [{"name": "drone_low_battery", "kind": "threshold", "metrics": ["battery"], "device_kinds": ["drone"],
                      "severity": "major", "params": {"below": 20, "clear_at": 30},
                      "message": "{source} (dock {gateway}): battery {value:.0f} %"}]}
    store = Store(tmp_path / "gridwatch.db")
    replies = Subscriber("127.0.0.1", mosquitto.port, "sys/product/+/status_reply", client_id="dock-sim")
    events = Subscriber("127.0.0.1", mosquitto.port, "gridwatch/warnings/#", client_id="operator")
    now = int(time.time() * 1000)

    def gateways():
        return {r["id"]: r["gateway"] for r in store.devices(vendor="dji")}

    try:
        with RuntimeThread(cfg, tmp_path) as rt:
            assert {"sys/product/+/status", "thing/product/+/state"} <= set(rt.rt.collector.topics)
            time.sleep(0.3)  # the subscriptions are sent right after the connection
            mosquitto_pub(mosquitto.port, f"sys/product/{DOCK}/status", [orjson.dumps(update_topo(now - 5000, [AIRCRAFT], "boot"))])
            topic, reply = replies.get()
            assert topic == f"sys/product/{DOCK}/status_reply"
            assert (reply["tid"], reply["bid"], reply["method"], reply["data"]) == ("boot", "bid-1", "update_topo", {"result": 0})
            assert gateways()[AIRCRAFT] == DOCK  # answered only once the binding was stored
            mosquitto_pub(mosquitto.port, f"thing/product/{DOCK}/state", [
                orjson.dumps({"tid": "s1", "bid": "b", "timestamp": now - 4500, "gateway": DOCK,
                              "data": {"firmware_version": "10.01.16.04", "compatible_status": 0}}),
                orjson.dumps({"tid": "s2", "bid": "b", "timestamp": now - 4400, "gateway": DOCK, "data": {"humidity": 70}})])
            mosquitto_pub(mosquitto.port, f"thing/product/{AIRCRAFT}/state", [
                orjson.dumps({"tid": "s3", "bid": "b", "timestamp": now - 4300, "gateway": DOCK,
                              "data": {"payloads": [{"payload_index": "39-0-7", "zoom_factor": 2}]}})])
            mosquitto_pub(mosquitto.port, f"thing/product/{AIRCRAFT}/osd",
                          [orjson.dumps(aircraft_osd(now - 4000 + 500 * i, b)) for i, b in enumerate([40, 25, 15])])
            w = wait_until(lambda: store.warnings(rule="drone_low_battery"), what="the low-battery warning")
            assert w[0]["source"] == AIRCRAFT and w[0]["value"] == 15 and w[0]["evidence"]["gateway"] == DOCK
            assert w[0]["message"] == f"{AIRCRAFT} (dock {DOCK}): battery 15 %"
            ev = events.get()[1]
            assert ev["event"] == "raised" and ev["warning"]["evidence"]["gateway"] == DOCK  # on the operators' topic too
            assert wait_until(lambda: rt.rt.counters.snapshot().get("mqtt", {}).get("messages") == 7)
            assert store.dead_letter_counts() == {}  # state messages are not errors
            dropped = rt.rt.counters.dropped["profile:dji"]
            assert dropped["unmapped:firmware_version"] == 1 and dropped["unmapped:payloads"] == 1
            assert rt.rt.counters.get("mqtt", "replies") == 1 and rt.rt.counters.gauges[("devices", "gateway_bound")] == 1
        with RuntimeThread(cfg, tmp_path) as rt:
            d = rt.rt.pipeline.directory
            assert d.gateway_id(d.get(AIRCRAFT, "dji")) == DOCK  # from the store, before any message
            time.sleep(0.3)
            mosquitto_pub(mosquitto.port, f"thing/product/{AIRCRAFT}/osd",
                          [orjson.dumps(aircraft_osd(now - 2000, 12, dock=None))])
            w = wait_until(lambda: [x for x in store.warnings(rule="drone_low_battery") if x["value"] == 12],
                           what="the warning after the restart")
            assert w[0]["evidence"]["gateway"] == DOCK
            # the aircraft lands in the second dock: its topology moves it, the first dock's empty one does not
            mosquitto_pub(mosquitto.port, f"sys/product/{DOCK2}/status", [orjson.dumps(update_topo(now - 1000, [AIRCRAFT], "move"))])
            assert replies.get()[1]["tid"] == "move"
            mosquitto_pub(mosquitto.port, f"sys/product/{DOCK}/status", [orjson.dumps(update_topo(now - 900, [], "empty"))])
            assert replies.get()[1]["tid"] == "empty"
            assert gateways() == {DOCK: None, DOCK2: None, AIRCRAFT: DOCK2}
    finally:
        replies.close()
        events.close()
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["devices", "--db", str(tmp_path / "gridwatch.db"), "--vendor", "dji"]) == 0
    line = next(x for x in out.getvalue().splitlines() if x.startswith(AIRCRAFT))
    assert line.split()[:4] == [AIRCRAFT, "dji", "drone", DOCK2]
