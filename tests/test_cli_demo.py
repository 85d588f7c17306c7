"""The user's front door: gridwatch demo / alerts / dead-letters / check-config."""
from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import jsonschema
import pytest

from gridwatch.cli import main
from gridwatch.streams.mqtt_alerts import event_payload
from gridwatch.streams.store import Store, warning_from_row

SCHEMA = json.loads((Path(__file__).resolve().parents[1] / "streams/schema/warning-event.schema.json").read_text())


@pytest.fixture(scope="module")
def demo_db(tmp_path_factory):
    d = tmp_path_factory.mktemp("demo")
    assert main(["demo", "--data-dir", str(d), "--speed", "0", "--quiet", "--no-console"]) == 0
    return d / "gridwatch.db"


def test_demo_raises_the_scripted_warnings(demo_db):
    st = Store(demo_db)
    raised = {(w["rule"], w["source"]) for w in st.warnings()}
    assert {("sewer_overflow", "aq-sewer-002"), ("sewer_flash_rise", "aq-sewer-003"), ("h2s_high", "gs-gas-004"),
            ("level_sensor_stuck", "aq-sewer-004"), ("sensor_offline", "aq-sewer-005"), ("hazmat_dwell", "tp-hz-0031"),
            ("hazmat_residential", "tp-hz-0031"), ("hazmat_speeding", "tp-hz-0031"), ("drone_corridor", "dji-m30-07"),
            ("drone_low_battery", "dji-m30-07"), ("drone_height", "dji-m30-07"), ("flow_anomaly", "aq-flow-002")} <= raised
    # the truck resting at its depot raises nothing; healthy sensors raise nothing
    assert not any(src == "tp-hz-0044" for _, src in raised)
    assert not any(src == "aq-sewer-001" for _, src in raised)
    counts = st.dead_letter_counts()
    # duplicates: the gateway's redelivery of aq-sewer-001's first message (15 min later: level,
    # battery, pressure; the 4-deep ring had forgotten it and stored it again) and gs-gas-003's
    # H2S at 08:06:00 sent again inside the bad-input message
    assert counts["malformed_json"] == 2 and counts["oversized"] == 1 and counts["duplicate"] == 4
    dwell = [w for w in st.warnings(rule="hazmat_dwell")][0]
    assert dwell["region"] == "Jiangcheng/Riverside District/East Town/E-02"


def test_demo_is_deterministic(demo_db, tmp_path):
    assert main(["demo", "--data-dir", str(tmp_path), "--speed", "0", "--quiet", "--no-console"]) == 0
    ids = lambda p: sorted(w["id"] for w in Store(p).warnings())  # noqa: E731
    assert ids(tmp_path / "gridwatch.db") == ids(demo_db)


def test_warning_events_match_the_published_schema(demo_db):
    for row in Store(demo_db).warnings():
        for event in ("raised", "updated", "cleared"):
            jsonschema.validate(json.loads(event_payload(event, warning_from_row(row))), SCHEMA)


def test_alerts_and_dead_letters_commands(demo_db, capsys):
    assert main(["alerts", "--db", str(demo_db), "--state", "active"]) == 0
    out = capsys.readouterr().out
    assert "sensor_offline" in out and "warning(s)" in out
    assert main(["alerts", "--db", str(demo_db), "--region", "Jiangcheng/Riverside District/East Town", "--json"]) == 0
    rows = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert rows and all(r["region"].startswith("Jiangcheng/Riverside District/East Town") for r in rows)
    assert main(["dead-letters", "--db", str(demo_db), "--reason", "oversized"]) == 0
    out = capsys.readouterr().out
    assert "oversized" in out and "payload is 300028 bytes" in out
    assert main(["alerts", "--db", str(demo_db.parent / "nope.db")]) == 2


def test_check_config_reports_key_value_and_expectation(tmp_path, capsys):
    bad = tmp_path / "bad.toml"
    bad.write_text('[mqtt]\nport = "eighty"\n[[rules]]\nname = "x"\nkind = "threshold"\nparams = { abov = 1 }\n')
    assert main(["check-config", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "mqtt.port" in err and "'eighty'" in err
    bad.write_text('[[rules]]\nname = "x"\nkind = "threshold"\nparams = { abov = 1 }\n')
    assert main(["check-config", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "rules.0.params (x)" in err and "abov" in err


def test_check_config_warns_on_world_readable_secret(tmp_path, capsys):
    f = tmp_path / "secret.toml"
    f.write_text('[mqtt]\npassword = "hunter2"\n')
    os.chmod(f, 0o644)
    assert main(["check-config", str(f)]) == 0
    assert "readable by every user" in capsys.readouterr().err
    os.chmod(f, stat.S_IRUSR | stat.S_IWUSR)
    assert main(["check-config", str(f)]) == 0
    assert "readable by every user" not in capsys.readouterr().err


def test_examples_validate(monkeypatch):
    monkeypatch.setenv("GRIDWATCH_MQTT_PASSWORD", "x")
    root = Path(__file__).resolve().parents[1]
    for f in sorted((root / "examples").glob("*.toml")):
        assert main(["check-config", str(f)]) == 0, f
