"""Vendor profiles: unit conversion to canonical units and profile errors that say what is wrong."""
from __future__ import annotations

import pytest

from gridwatch.hw.profiles import METRIC_ID, METRICS, UNITS, Profile, ProfileError, conversion, load_profiles


def convert(unit: str, metric: str, v: float) -> float:
    f, o = conversion(unit, METRICS[METRIC_ID[metric]], "test")
    return v * f + o


@pytest.mark.parametrize("unit, metric, v, want", [
    ("cm", "water_level", 250, 2.5), ("mm", "water_level", 1500, 1.5), ("ft", "water_level", 10, 3.048),
    ("kPa", "pressure", 300, 0.3), ("bar", "pressure", 2, 0.2), ("L/s", "flow", 1, 3.6), ("L/min", "flow", 100, 6.0),
    ("ppb", "h2s", 500, 0.5), ("degF", "temperature", 212, 100.0), ("degF", "temperature", 32, 0.0),
    ("degF", "temperature", -40, -40.0), ("K", "temperature", 273.15, 0.0), ("m/s", "speed", 10, 36.0),
    ("knot", "speed", 1, 1.852), ("mV", "supply_voltage", 12_000, 12.0), ("ratio", "humidity", 0.5, 50.0),
    ("rad", "tilt", 3.141592653589793, 180.0),
])
def test_unit_conversions(unit, metric, v, want):
    assert convert(unit, metric, v) == pytest.approx(want, abs=1e-9)


def test_every_canonical_unit_is_the_identity():
    for m in METRICS:
        assert conversion(m.unit, m, "x") == (1.0, 0.0)


def test_bundled_profiles_load():
    profs = load_profiles()
    assert {"generic", "aqualine", "dji", "gassense", "trackpoint"} <= set(profs)
    lvl = profs["aqualine"].fields["lvl"]
    assert lvl.metric_id == METRIC_ID["water_level"] and lvl.factor == pytest.approx(0.01)
    assert profs["dji"].position["speed"] == ("horizontal_speed", pytest.approx(3.6))


def test_profile_with_degf_field():
    p = Profile.from_dict({"vendor": "v", "fields": {"tf": {"metric": "temperature", "unit": "degF"}}})
    spec = p.fields["tf"]
    assert 98.6 * spec.factor + spec.offset == pytest.approx(37.0)


@pytest.mark.parametrize("d, msg", [
    ({"vendor": "v", "fields": {"x": {"metric": "water_level", "unit": "furlong"}}}, r"v\.fields\.x: unknown unit 'furlong'"),
    ({"vendor": "v", "fields": {"x": {"metric": "water_level", "unit": "kPa"}}},
     r"v\.fields\.x: unit 'kPa' measures pressure, but metric 'water_level' is length"),
    ({"vendor": "v", "fields": {"x": {"metric": "wind"}}}, r"v\.fields\.x: unknown metric 'wind'"),
    ({"vendor": "v", "fields": {"x": "nope"}}, "unknown metric 'nope'"),
    ({"vendor": "v", "colour": 1}, r"unknown keys \['colour'\]"),
    ({"fields": {}}, "'vendor' is required"),
    ({"vendor": "v", "timestamp_unit": "fortnights"}, "timestamp_unit: 'fortnights'"),
    ({"vendor": "v", "position": {"lat": "la"}}, "both lat and lon"),
    ({"vendor": "v", "position": {"lat": "a", "lon": "b", "heading": "h"}}, r"position\.heading"),
    ({"vendor": "v", "position": {"lat": "a", "lon": "b", "speed": {"field": "s", "unit": "m"}}}, "measures length"),
])
def test_bad_profiles_say_what_is_wrong(d, msg):
    with pytest.raises(ProfileError, match=msg):
        Profile.from_dict(d, where="v")


def test_bad_toml_file(tmp_path):
    f = tmp_path / "bad.toml"
    f.write_text("vendor = \n")
    with pytest.raises(ProfileError, match="bad.toml: not valid TOML"):
        Profile.load(f)
    f.write_text('vendor = "x"\n[fields]\nq = { metric = "flow", unit = "gallons" }\n')
    with pytest.raises(ProfileError, match=r"bad\.toml\.fields\.q: unknown unit 'gallons'"):
        load_profiles([tmp_path])


def test_extra_profile_dirs_override_bundled(tmp_path):
    (tmp_path / "aq.toml").write_text('vendor = "aqualine"\ntimestamp = "ts"\n[fields]\nlvl = { metric = "water_level", unit = "mm" }\n')
    profs = load_profiles([tmp_path])
    assert profs["aqualine"].timestamp == "ts" and profs["aqualine"].fields["lvl"].factor == pytest.approx(0.001)


# --- physical ranges: documented per metric, narrowed (never widened) by a profile -------------
def _ranged(**spec) -> Profile:
    return Profile.from_dict({"vendor": "lv", "timestamp": "t", "fields": {"lvl": {"metric": "water_level", "unit": "cm", **spec}}})


def test_profile_narrows_a_metric_range_and_the_codec_uses_it_for_that_vendor_only():
    import time

    import orjson

    from gridwatch.hw.profiles import generic_profile
    from gridwatch.ingest.codec import Codec, Message
    from gridwatch.ingest.devices import DeviceDirectory

    prof = _ranged(min=0, max=3)  # canonical unit (m): this sensor cannot read below 0 or above 3 m
    spec = prof.fields["lvl"]
    assert (spec.lo, spec.hi) == (0.0, 3.0) and spec.narrowed
    c = Codec({"lv": prof, "generic": generic_profile()}, DeviceDirectory())
    now = int(time.time() * 1000)
    # -0.5 m and 3.5 m are physically possible water levels, but not for this vendor's sensor
    mine = orjson.dumps([{"t": now - 3000, "lvl": -50}, {"t": now - 2000, "lvl": 120}, {"t": now - 1000, "lvl": 350}])
    other = orjson.dumps([{"ts": now - 3000, "water_level": -0.5}, {"ts": now - 1000, "water_level": 3.5}])
    out = c.decode([Message("devices/lv/sewer_level/l-1", mine, now), Message("devices/generic/sewer_level/g-1", other, now)], now)
    assert out.rejected == {"out_of_range": 2}
    assert sorted(out.sensor.value.tolist()) == [-0.5, 1.2, 3.5]
    [d] = out.dead
    assert d.count == 2 and "[0, 3]" in d.detail and "narrowed by the vendor's profile" in d.detail


@pytest.mark.parametrize("spec, words", [
    ({"min": -100}, ["fields.lvl.min", "-100", "never widen"]),
    ({"max": 501}, ["fields.lvl.max", "501", "never widen"]),
    ({"min": 2, "max": 1}, ["fields.lvl.min", "above max"]),
    ({"min": "0"}, ["fields.lvl.min", "expected a number"]),
    ({"min": True}, ["fields.lvl.min", "expected a number"]),
    ({"minimum": 0}, ["fields.lvl", "unknown keys", "minimum"]),
])
def test_a_range_that_widens_or_is_malformed_is_refused_with_the_key(spec, words):
    with pytest.raises(ProfileError) as e:
        _ranged(**spec)
    for w in words:
        assert w in str(e.value)


def test_unnarrowed_fields_keep_the_metric_range():
    spec = _ranged().fields["lvl"]
    m = METRICS[METRIC_ID["water_level"]]
    assert (spec.lo, spec.hi) == (m.lo, m.hi) and not spec.narrowed


def test_readme_lists_every_canonical_metric_with_unit_and_range():
    from pathlib import Path

    from gridwatch.hw.profiles import metric_table

    readme = (Path(__file__).parents[1] / "README.md").read_text(encoding="utf-8")
    start, end = "<!-- metric table: generated from hw/profiles.py METRICS -->", "<!-- end of metric table -->"
    assert start in readme and end in readme
    assert readme.split(start)[1].split(end)[0].strip() == metric_table()
