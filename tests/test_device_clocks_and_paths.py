"""Device clocks (zone-less local times in the profile's or the device's time zone) and dotted paths
in profiles (every field, the timestamp, the device id and the position), with the fields a
profile does not map counted per vendor and field."""
from __future__ import annotations

from datetime import datetime, timezone

import orjson
import pytest

from gridwatch.config import parse
from gridwatch.hw.profiles import METRIC_ID, Profile, ProfileError, load_profiles
from gridwatch.ingest import codec as codec_mod
from gridwatch.ingest.codec import Codec, Message
from gridwatch.ingest.devices import DeviceDirectory
from gridwatch.streams.pipeline import Pipeline

NOW = 1_732_154_400_000  # 2024-11-21 02:00:00 UTC = 10:00:00 in Beijing
BEIJING_NOW = "2024-11-21 10:00:00"


def codec(*extra: dict, **kw) -> Codec:
    profs = load_profiles()
    for d in extra:
        p = Profile.from_dict(d)
        profs[p.vendor] = p
    return Codec(profs, DeviceDirectory(), **kw)


def m(topic: str, payload) -> Message:
    return Message(topic, orjson.dumps(payload), NOW)


# --- device clocks ------------------------------------------------------------------------
CN_GAS = {"vendor": "cngas", "timestamp": "time", "timestamp_unit": "iso", "timezone": "Asia/Shanghai",
          "fields": {"H2S": {"metric": "h2s", "unit": "ppm"}}}


def test_beijing_time_is_not_future_and_is_stored_at_the_right_instant():
    """Issue: '2024-11-21 10:00:00' from a Beijing terminal was read as UTC: 8 h in the future,
    rejected as future_timestamp. With the profile's time zone it is now, and stored as such."""
    c = codec(CN_GAS)
    out = c.decode([m("devices/cngas/gas/g-1", {"time": BEIJING_NOW, "H2S": 3.5}),
                    m("devices/cngas/gas/g-1", [{"time": "2024-11-21T09:59:00", "H2S": 3.0},
                                                {"time": "2024-11-21T09:59:30", "H2S": 3.2}])], NOW)
    assert dict(out.rejected) == {}
    assert sorted(out.sensor.ts.tolist()) == [NOW - 60_000, NOW - 30_000, NOW]
    # a time with its own zone keeps it; numbers are epoch instants (UTC by definition)
    out = c.decode([m("devices/cngas/gas/g-1", {"time": "2024-11-21T01:00:00Z", "H2S": 1}),
                    m("devices/cngas/gas/g-1", {"time": "2024-11-21T09:00:00+08:00", "H2S": 1.5})], NOW)
    assert dict(out.rejected) == {"duplicate": 1} and out.sensor.ts.tolist() == [NOW - 3_600_000]


def test_without_a_time_zone_zone_less_times_are_utc():
    c = codec({**CN_GAS, "vendor": "utcgas", "timezone": ""})
    out = c.decode([m("devices/utcgas/gas/g-1", {"time": "2024-11-21 01:59:00", "H2S": 3.5}),
                    m("devices/utcgas/gas/g-1", {"time": BEIJING_NOW, "H2S": 3.5})], NOW)
    assert out.sensor.ts.tolist() == [NOW - 60_000]
    assert dict(out.rejected) == {"future_timestamp": 1}


def test_a_device_names_its_own_time_zone(tmp_path):
    """[[devices]] timezone overrides the profile's (here: a UTC profile, one device in Beijing)."""
    cfg = parse({"site": {"data_dir": str(tmp_path)}, "ingest": {"max_future_skew_s": 300},
                 "devices": [{"id": "gs-bj", "vendor": "gassense", "kind": "gas", "timezone": "Asia/Shanghai"},
                             {"id": "gs-utc", "vendor": "gassense", "kind": "gas"}]}, base_dir=tmp_path)
    p = Pipeline(cfg)
    out = p.codec.decode([m("devices/gassense/gas/gs-bj", {"time": BEIJING_NOW, "H2S": 1}),
                          m("devices/gassense/gas/gs-utc", {"time": "2024-11-21 02:00:00", "H2S": 1}),
                          m("devices/gassense/gas/gs-utc", {"time": BEIJING_NOW, "H2S": 2})], NOW)
    assert out.sensor.ts.tolist() == [NOW, NOW]
    assert dict(out.rejected) == {"future_timestamp": 1}


@pytest.mark.parametrize("tz", ["Mars/Olympus", "+25:00", "8"])
def test_bad_time_zones_are_refused_with_the_key(tz):
    with pytest.raises(ProfileError, match=r"v\.timezone: time zone"):
        Profile.from_dict({**CN_GAS, "timezone": tz}, where="v")
    from gridwatch.config import ConfigError

    with pytest.raises(ConfigError, match=r"devices\.0\.timezone"):
        parse({"devices": [{"id": "a", "vendor": "gassense", "kind": "gas", "timezone": tz}]})


def test_fixed_offsets_and_names_agree():
    a = codec({**CN_GAS, "vendor": "a", "timezone": "+08:00"}).decode([m("devices/a/gas/x", {"time": BEIJING_NOW, "H2S": 1})], NOW)
    b = codec({**CN_GAS, "vendor": "b", "timezone": "UTC+8"}).decode([m("devices/b/gas/x", {"time": BEIJING_NOW, "H2S": 1})], NOW)
    assert a.sensor.ts.tolist() == b.sensor.ts.tolist() == [NOW]


def test_daylight_saving_zone():
    """A zone with summer time: New York is UTC-4 in July, UTC-5 in January."""
    c = codec({**CN_GAS, "vendor": "ny", "timezone": "America/New_York"})
    summer = int(datetime(2024, 7, 1, 16, tzinfo=timezone.utc).timestamp() * 1000)
    out = c.decode([m("devices/ny/gas/x", {"time": "2024-07-01 12:00:00", "H2S": 1})], summer)
    assert out.sensor.ts.tolist() == [summer]
    winter = int(datetime(2024, 1, 15, 17, tzinfo=timezone.utc).timestamp() * 1000)
    out = c.decode([m("devices/ny/gas/y", {"time": "2024-01-15 12:00:00", "H2S": 1})], winter)
    assert out.sensor.ts.tolist() == [winter]


# --- dotted paths ------------------------------------------------------------------------------
DRONE = {"vendor": "drone2", "timestamp": "data.ts", "timestamp_unit": "ms",
         "fields": {"data.battery.capacity_percent": "battery", "data.height": {"metric": "height", "unit": "m"}},
         "position": {"lat": "data.position.latitude", "lon": "data.position.longitude",
                      "speed": {"field": "data.horizontal_speed", "unit": "m/s"}, "alt": "data.height"}}


def osd(ts: int, battery=87, lat=30.5, lon=114.3) -> dict:
    return {"tid": "t", "bid": "b", "data": {"ts": ts, "height": 42.5, "horizontal_speed": 5.0, "mode_code": 3,
                                            "battery": {"capacity_percent": battery, "remain_flight_time": 900},
                                            "position": {"latitude": lat, "longitude": lon}}}


def test_dotted_paths_for_fields_timestamp_and_position():
    """Issue: with these paths the battery reading and the position were dropped silently and
    'data.ts' was ignored (the time of receipt was used)."""
    c = codec(DRONE)
    ts = NOW - 5000
    out = c.decode([m("devices/drone2/drone/d-1", osd(ts)), m("devices/drone2/drone/d-1", [osd(ts + 1000, 86), osd(ts + 2000, 85)])], NOW)
    assert dict(out.rejected) == {} and out.no_timestamp == 0
    battery = out.sensor.value[out.metric == METRIC_ID["battery"]]
    assert sorted(battery.tolist()) == [85, 86, 87]
    assert sorted(out.sensor.ts[out.metric == METRIC_ID["battery"]].tolist()) == [ts, ts + 1000, ts + 2000]
    assert out.position.lat.tolist() == [30.5] * 3 and out.position.ts.tolist() == [ts, ts + 1000, ts + 2000]
    assert out.position.speed_kmh.tolist() == [18.0] * 3 and out.position.alt_m.tolist() == [42.5] * 3


def test_dotted_device_id_and_literal_dotted_keys():
    c = codec({"vendor": "gw", "device_id": "meta.sn", "timestamp": "t", "fields": {"a.b": "water_level"}})
    out = c.decode([m("devices/gw/level/gateway", [{"meta": {"sn": "s-1"}, "t": NOW // 1000, "a.b": 1.5},
                                                   {"meta": {"sn": "s-2"}, "t": NOW // 1000, "a": {"b": 2.5}}])], NOW)
    assert dict(out.rejected) == {} and sorted(out.sensor.value.tolist()) == [1.5, 2.5]
    assert sorted(c.directory.device_id(int(d)) for d in out.sensor.device) == ["s-1", "s-2"]


@pytest.mark.parametrize("d, msg", [
    ({"vendor": "v", "fields": {"data..x": "battery"}}, r"v\.fields\.data\.\.x: 'data\.\.x' is not a field name or dotted path"),
    ({"vendor": "v", "timestamp": "data.", "fields": {"x": "battery"}}, r"v\.timestamp: 'data\.'"),
    ({"vendor": "v", "position": {"lat": ".la", "lon": "lo"}}, r"v\.position\.lat"),
    ({"vendor": "v", "timestamp": "data.ts", "fields": {"data": "battery"}},
     r"v\.timestamp: 'data\.ts' runs through 'data', which is fields\.data"),
    ({"vendor": "v", "fields": {"bat": "battery", "bat.pct": "battery"}}, r"v\.fields\.bat\.pct: 'bat\.pct' runs through 'bat'"),
    ({"vendor": "v", "timestamp": "x", "fields": {"x": "battery"}}, r"v\.timestamp: 'x' is also fields\.x"),
])
def test_bad_paths_refused_at_load_with_the_key(d, msg):
    with pytest.raises(ProfileError, match=msg):
        Profile.from_dict(d, where="v")


def test_bundled_profiles_still_load():
    assert {"generic", "aqualine", "dji", "gassense", "trackpoint", "jt808"} <= set(load_profiles())


# --- unmapped fields ----------------------------------------------------------------------------
def test_unmapped_fields_counted_per_vendor_and_field_on_every_path():
    c = codec(DRONE)
    t = NOW // 1000
    out = c.decode([
        m("devices/aqualine/sewer_level/a-1", [{"t": t - i, "lvl": 100 + i, "rssi": -70, "fw": 3} for i in range(5)]),  # recogniser
        m("devices/aqualine/sewer_level/a-2", [{"t": t - i, "lvl": 100, "rssi": -70, "note": "x" if i else None} for i in range(3)]),
        m("devices/aqualine/sewer_level/a-3", {"t": t, "lvl": 100, "rssi": -70, "extra": {"x": 1}}),  # item path
        m("devices/drone2/drone/d-1", osd(NOW - 1000)),  # nested: only top-level keys of the item body
    ], NOW)
    assert dict(out.rejected) == {}
    assert dict(out.unmapped) == {("aqualine", "rssi"): 5 + 3 + 1, ("aqualine", "fw"): 5, ("aqualine", "note"): 3,
                                  ("aqualine", "extra"): 1, ("drone2", "tid"): 1, ("drone2", "bid"): 1}


def test_unmapped_names_are_bounded_per_vendor(tmp_path):
    cfg = parse({"site": {"data_dir": str(tmp_path)}}, base_dir=tmp_path)
    p = Pipeline(cfg)
    t = NOW // 1000
    names = [f"f{i}" for i in range(codec_mod.UNMAPPED_NAMES_PER_VENDOR + 10)]
    p.process([m("devices/aqualine/sewer_level/a-1", {"t": t, "lvl": 100, **{k: 1 for k in names}})], NOW)
    dropped = p.counters.snapshot()["profile:aqualine"]["dropped"]
    assert len(dropped) == codec_mod.UNMAPPED_NAMES_PER_VENDOR + 1 and dropped["unmapped:other"] == 10
    assert sum(dropped.values()) == len(names)
