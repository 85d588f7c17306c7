"""Codec.decode: every rejection reason from a crafted input, units and timestamps, devices,
duplicates, and fuzzing (never raises, every reading accounted for, fast path == item path)."""
from __future__ import annotations

import json
from collections import Counter

import numpy as np
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gridwatch.hw.profiles import METRIC_ID, Profile, load_profiles
from gridwatch.ingest import codec as codec_mod
from gridwatch.ingest.codec import Codec, Message
from gridwatch.ingest.devices import DeviceDirectory

NOW = 1_700_000_000_000  # epoch ms
NOW_S = NOW // 1000
FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def make(unknown="register", **kw) -> Codec:
    return Codec(load_profiles(), DeviceDirectory(unknown), **kw)


def msg(topic: str, payload, received: int = NOW) -> Message:
    if not isinstance(payload, (bytes, bytearray)):
        payload = orjson.dumps(payload)
    return Message(topic, bytes(payload), received)


def decode(c: Codec, *messages: Message, now: int = NOW):
    return c.decode(list(messages), now)


def reasons(out) -> Counter:
    return Counter(out.rejected)


def dead(out, reason: str):
    ds = [d for d in out.dead if d.reason == reason]
    assert ds, f"no dead letter {reason!r}; got {[(d.reason, d.detail) for d in out.dead]}"
    return ds[0]


def values(c: Codec, out, metric: str) -> list[float]:
    m = out.metric == METRIC_ID[metric]
    return sorted(out.sensor.value[m].tolist())


AQ = "devices/aqualine/sewer_level/aq-1"
FLEET = Profile.from_dict({"vendor": "fleet", "timestamp": "t", "device_id": "dev", "fields": {"bat": "battery"}})


# --- one crafted input per reason code ---------------------------------------------------

CASES = [
    # (reason, topic, payload, words the detail must contain)
    ("oversized", AQ, b"{" + b" " * 300 + b"}", ["bytes", "limit"]),
    ("malformed_json", AQ, b'{"t": 1, "lvl": ', ["not valid JSON"]),
    ("malformed_json", AQ, b'{"t": 1, "lvl": NaN}', ["not valid JSON"]),
    ("not_an_object", AQ, [{"t": NOW_S, "lvl": 10}, 5], ["int", "JSON object"]),
    ("bad_topic", "sensors/aqualine/x/aq-1", {"lvl": 1}, ["devices/<vendor>"]),
    ("bad_topic", "devices/aqualine//aq-1", {"lvl": 1}, ["does not match"]),
    ("unknown_vendor", "devices/acme/sewer_level/a-1", {"lvl": 1}, ["acme"]),
    ("missing_field", "devices/dji/drone/d-1", {"timestamp": NOW, "nodata": {}}, ["'data'"]),
    ("no_readings", AQ, [], ["empty"]),
    ("no_readings", AQ, {"t": NOW_S, "colour": "red"}, ["aqualine", "colour"]),
    ("wrong_type", AQ, {"t": NOW_S, "lvl": "12"}, ["value", "str", "'12'"]),
    ("wrong_type", AQ, {"t": NOW_S, "lvl": True}, ["bool"]),
    ("bad_timestamp", "devices/gassense/gas/g-1", {"time": "yesterday", "H2S": 1}, ["'yesterday'", "ISO-8601"]),
    ("bad_timestamp", AQ, {"t": [1], "lvl": 1}, ["list"]),
    ("non_finite", AQ, b'{"t": %d, "q": 1e308}' % NOW_S, ["flow", "1e+308", "not finite"]),
    ("out_of_range", AQ, {"t": NOW_S, "lvl": 90_000}, ["water_level", "900", "outside"]),
    ("out_of_range", "devices/trackpoint/tracker/t-1", {"gpsTime": NOW, "lat": 95.0, "lng": 1.0}, ["lat=95"]),
    ("future_timestamp", AQ, {"t": NOW_S + 3600, "lvl": 1}, ["3600 s in the future"]),
    ("stale_timestamp", AQ, {"t": NOW_S - 30 * 86400, "lvl": 1}, ["30.0 days old"]),
]


@pytest.mark.parametrize("reason, topic, payload, words", CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_every_reason_code_from_a_crafted_input(reason, topic, payload, words):
    c = make(max_payload_bytes=256)
    out = decode(c, msg(topic, payload))
    d = dead(out, reason)
    for w in words:
        assert w in d.detail, (w, d.detail)
    assert d.source == topic and d.received_ms == NOW
    assert d.payload == bytes(msg(topic, payload).payload[:1024])


def test_unknown_device_bad_device_id_vendor_mismatch_and_duplicate():
    c = make("reject")
    c.directory.bind("aq-1", "aqualine", "sewer_level")  # a config device: its id is bound to its vendor
    out = decode(c, msg("devices/aqualine/sewer_level/aq-2", {"t": NOW_S, "lvl": 1}))
    assert "aq-2" in dead(out, "unknown_device").detail and len(out.sensor) == 0
    # the device is known, but on another vendor's topic
    out = decode(c, msg("devices/gassense/gas/aq-1", {"time": "2023-11-14T22:13:20Z", "H2S": 1}))
    assert "aqualine" in dead(out, "vendor_mismatch").detail
    # a profile that names the device in the payload
    c = Codec({"fleet": FLEET}, DeviceDirectory())
    out = decode(c, msg("devices/fleet/k/gw-1", [{"t": NOW_S, "dev": "", "bat": 5}, {"t": NOW_S, "bat": 5},
                                                {"t": NOW_S, "dev": "d-1", "bat": 5}]))
    assert "'dev' must be a non-empty string" in dead(out, "bad_device_id").detail
    assert out.rejected["bad_device_id"] == 2 and len(out.sensor) == 1
    assert c.directory.device_id(int(out.sensor.device[0])) == "d-1"
    c = make()
    r = decode(c, msg(AQ, [{"t": NOW_S, "lvl": 100}, {"t": NOW_S, "lvl": 100}]))
    assert len(r.sensor) == 1 and reasons(r) == {"duplicate": 1}
    assert "aq-1" in dead(r, "duplicate").detail
    r = decode(c, msg(AQ, {"t": NOW_S, "lvl": 100}))  # across batches
    assert len(r.sensor) == 0 and reasons(r) == {"duplicate": 1}


def test_good_readings_in_the_same_message_are_kept():
    c = make()
    out = decode(c, msg(AQ, [{"t": NOW_S, "lvl": 50, "q": "x"}, {"t": NOW_S + 1, "lvl": 60}, 7,
                             {"t": "soon", "lvl": 1}, {"t": NOW_S + 2, "lvl": 1e9}]))
    assert values(c, out, "water_level") == [0.5, 0.6]
    assert reasons(out) == {"wrong_type": 1, "not_an_object": 1, "bad_timestamp": 1, "out_of_range": 1}


def test_one_dead_letter_per_message_and_reason_counts_all():
    c = make()
    out = decode(c, msg(AQ, [{"t": NOW_S + i, "lvl": "bad"} for i in range(5)]))
    assert out.rejected["wrong_type"] == 5
    assert sum(getattr(d, "count", 1) for d in out.dead if d.reason == "wrong_type") == 5


@pytest.mark.parametrize("t", [NOW_S, NOW, NOW * 1000, NOW * 1_000_000, NOW / 1000 + 0.25,
                               "2023-11-14T22:13:20+00:00", "2023-11-14T22:13:20", "2023-11-15T06:13:20+08:00",
                               "2023-11-14T22:13:20.000Z"])
def test_timestamps_in_every_unit(t):
    c = Codec({"g": Profile.from_dict({"vendor": "g", "timestamp": "ts", "fields": {"x": "battery"}})}, DeviceDirectory())
    out = decode(c, msg("devices/g/k/d", {"ts": t, "x": 5}))
    want = NOW + (250 if t == NOW / 1000 + 0.25 else 0)
    assert out.sensor.ts.tolist() == [want], (t, dead_or_none(out))


def dead_or_none(out):
    return [(d.reason, d.detail) for d in out.dead]


def test_declared_units_and_missing_timestamp():
    c = make()
    out = decode(c, msg("devices/trackpoint/tracker/t-1", {"gpsTime": NOW, "lat": 1.0, "lng": 2.0, "spd": 50}))
    assert out.position.ts.tolist() == [NOW] and out.position.speed_kmh.tolist() == [50.0]
    out = decode(c, msg(AQ, {"lvl": 25}, received=NOW - 5000))
    assert out.sensor.ts.tolist() == [NOW - 5000] and out.no_timestamp == 1


def test_units_are_converted_by_the_profile():
    c = make()
    out = decode(c, msg(AQ, {"t": NOW_S, "lvl": 250, "q": 2, "p": 300}))  # cm, L/s, kPa
    assert values(c, out, "water_level") == [2.5]
    assert values(c, out, "flow") == [pytest.approx(7.2)]  # m3/h
    assert values(c, out, "pressure") == [pytest.approx(0.3)]  # MPa
    out = decode(c, msg("devices/dji/drone/drone-7", {"timestamp": NOW, "data": {
        "latitude": 1.0, "longitude": 2.0, "horizontal_speed": 10, "height": 30,
        "battery": {"capacity_percent": 80}}}))
    assert values(c, out, "speed") == [pytest.approx(36.0)]  # m/s -> km/h
    assert values(c, out, "battery") == [80.0]
    assert out.position.speed_kmh.tolist() == [pytest.approx(36.0)]
    assert c.directory.device_id(int(out.sensor.device[0])) == "drone-7"
    c = Codec({"fleet": FLEET}, DeviceDirectory())  # a profile naming the device in the payload
    out = decode(c, msg("devices/fleet/k/gateway", {"t": NOW_S, "dev": "d-9", "bat": 5}))
    assert [c.directory.device_id(int(d)) for d in out.sensor.device] == ["d-9"]


def test_unknown_devices_register_on_first_sight():
    c = make("register")
    out = decode(c, msg("devices/aqualine/sewer_level/new-1", {"t": NOW_S, "lvl": 1}))
    assert len(out.sensor) == 1 and c.directory.get("new-1", "aqualine") == int(out.sensor.device[0])
    assert c.directory.vendor[int(out.sensor.device[0])] == "aqualine"


# --- fuzzing ------------------------------------------------------------------------------

TOPICS = st.sampled_from([AQ, "devices/gassense/gas/g-1", "devices/trackpoint/tracker/t-1", "devices/dji/drone/dock",
                          "devices/generic/any/x-1", "devices/nope/a/b", "devices", "devices/aqualine/k/other"]) | st.text(max_size=40)
KEYS = st.sampled_from(["t", "time", "gpsTime", "timestamp", "ts", "lvl", "q", "p", "H2S", "CH4", "lat", "lng",
                        "spd", "vbat", "data", "sn", "height", "battery", "capacity_percent", "water_level",
                        "latitude", "longitude", "horizontal_speed"]) | st.text(max_size=5)
SCALARS = (st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=False, allow_infinity=False)
           | st.sampled_from([NOW_S, NOW, NOW * 1000, "2023-11-14T22:13:20Z", 12.5, 0, -1]) | st.text(max_size=8))
JSON = st.recursive(SCALARS, lambda kids: st.lists(kids, max_size=5) | st.dictionaries(KEYS, kids, max_size=6),
                    max_leaves=25)


@FUZZ
@given(st.lists(st.tuples(TOPICS, st.binary(max_size=200)), max_size=6))
def test_arbitrary_bytes_never_raise(raw):
    c = make()
    out = c.decode([Message(t, p, NOW) for t, p in raw], NOW)
    assert len(out.sensor) + len(out.position) + sum(out.rejected.values()) >= 0
    assert all(d.reason in codec_mod.__doc__ for d in out.dead)


AQ_FIELDS = {"lvl", "q", "p", "tilt", "bat"}


def expected_outcomes(payload: bytes) -> int:
    """Readings (and rejections) an aqualine message must account for: a message that does not
    parse, an empty array, a non-object item and an object with no profile field count once;
    an object counts once per profile field it holds."""
    try:
        obj = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return 1
    items = obj if type(obj) is list else [obj]
    if not items:
        return 1
    return sum(1 if type(it) is not dict else max(1, len(AQ_FIELDS & set(it))) for it in items)


@FUZZ
@given(st.lists(st.tuples(TOPICS, JSON), max_size=6))
def test_arbitrary_json_on_arbitrary_topics_never_raises(msgs):
    c = make("register")
    out = c.decode([msg(t, json.dumps(p).encode()) for t, p in msgs], NOW)
    assert np.isfinite(out.sensor.value).all() and np.isfinite(out.position.lat).all()
    assert ((out.sensor.ts >= NOW - 7 * 86400e3) & (out.sensor.ts <= NOW + 300e3)).all()
    assert len(out.dead) <= sum(out.rejected.values())
    assert all(d.reason in codec_mod.__doc__ and d.detail for d in out.dead)


@FUZZ
@given(st.lists(JSON | st.lists(st.dictionaries(KEYS, JSON, max_size=6), max_size=6), min_size=1, max_size=5))
def test_arbitrary_json_every_reading_is_stored_or_rejected(trees):
    """stored rows + rejections == reading-like items, for any JSON trees as payloads."""
    c = make()
    payloads = [json.dumps(t).encode() for t in trees]
    out = c.decode([msg(AQ, p) for p in payloads], NOW)
    assert len(out.sensor) + len(out.position) + sum(out.rejected.values()) == sum(map(expected_outcomes, payloads))


@st.composite
def aqualine_items(draw):
    """Per item: one field value (valid or not) and one timestamp (valid or not)."""
    n = draw(st.integers(1, 8))
    vals = st.integers(-100, 100_000) | st.floats(-1e3, 1e5, allow_nan=False) | st.sampled_from(["x", None, True])
    ts = st.sampled_from([NOW_S, NOW_S + 1, NOW_S - 60, NOW_S + 10**6, "x", None, NOW_S - 10**7])
    return [{"t": draw(ts), "lvl": draw(vals)} for _ in range(n)]


@FUZZ
@given(st.lists(aqualine_items(), min_size=1, max_size=4))
def test_every_reading_is_stored_or_rejected(payloads):
    """One reading per item (aqualine, one field): stored rows + rejections == items."""
    c = make()
    out = c.decode([msg(AQ, p) for p in payloads], NOW)
    assert len(out.sensor) + sum(out.rejected.values()) == sum(len(p) for p in payloads)


@st.composite
def regular_arrays(draw):
    fields = draw(st.lists(st.sampled_from(["lvl", "q", "p", "tilt", "bat", "other"]), min_size=1, max_size=4, unique=True))
    with_ts = draw(st.booleans())
    n = draw(st.integers(2, 6))
    value = st.integers(-10, 300) | st.floats(-5, 300, allow_nan=False) | st.sampled_from(["3", None, [1], {"a": 1}])
    ts = st.sampled_from([NOW_S, NOW_S + 1, NOW_S + 2, "2023-11-14T22:13:20Z", None, "bad", NOW_S + 10**6])
    items = []
    for _ in range(n):
        it = {"t": draw(ts)} if with_ts else {}
        it.update({f: draw(value) for f in fields})
        items.append(it)
    return items


def snapshot(c: Codec, out):
    ids = [c.directory.device_id(int(d)) for d in out.sensor.device]
    rows = sorted(zip(ids, out.metric.tolist(), out.sensor.ts.tolist(), out.sensor.value.tolist()))
    # one dead letter per (message, reason); which reading's detail explains it may differ
    return rows, Counter(out.rejected), sorted((d.reason, d.count) for d in out.dead), out.no_timestamp


@FUZZ
@given(st.lists(regular_arrays(), min_size=1, max_size=3))
def test_column_fast_path_equals_item_path(payloads):
    fast, slow = make(), make()
    fast.fast_json = slow.fast_json = False  # this compares the column path with the item path
    msgs = [msg(f"devices/aqualine/sewer_level/aq-{i % 2}", p) for i, p in enumerate(payloads)]
    a = snapshot(fast, fast.decode(msgs, NOW))
    orig = codec_mod._columns
    codec_mod._columns = lambda *args: None
    try:
        b = snapshot(slow, slow.decode(msgs, NOW))
    finally:
        codec_mod._columns = orig
    assert a == b


def test_column_fast_path_is_taken_for_regular_arrays(monkeypatch):
    calls = []
    orig = codec_mod._columns
    monkeypatch.setattr(codec_mod, "_columns", lambda *a: calls.append(r := orig(*a)) or r)
    c = make()
    c.fast_json = False  # the Numba recogniser (tests/test_jsonfast.py) would take these first
    out = decode(c, msg(AQ, [{"t": NOW_S + i, "lvl": 100 + i} for i in range(4)]))
    assert len(out.sensor) == 4 and calls and calls[0] is not None


def test_nested_fields_without_root_are_not_dropped_by_the_fast_path():
    prof = Profile.from_dict({"vendor": "nest", "timestamp": "t", "timestamp_unit": "s",
                              "fields": {"lvl": {"metric": "water_level", "unit": "cm"}, "bat.pct": "battery"}})
    c = Codec({"nest": prof}, DeviceDirectory())
    out = decode(c, msg("devices/nest/k/d1", [{"t": NOW_S, "lvl": 10, "bat": {"pct": 50}},
                                               {"t": NOW_S + 1, "lvl": 20, "bat": {"pct": 60}}]))
    assert sorted(out.sensor.value.tolist()) == [0.1, 0.2, 50.0, 60.0]
