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
