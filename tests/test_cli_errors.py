"""A user's mistake in any command is one line (what, where, what to do) with exit status 2, never a
traceback; check-config finds everything `run` would trip over, and nothing is created before."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from gridwatch.cli import main, print_event
from gridwatch.observability import Counters, start_metrics_server
from gridwatch.records import RegionPath, Warning
from gridwatch.servers.certs import TestCA
from gridwatch.streams.store import Store

ROOT = Path(__file__).resolve().parents[1]
GRIDWATCH = [sys.executable, "-m", "gridwatch.cli"]
RULE = '[[rules]]\nname = "flood"\nkind = "threshold"\nmetrics = ["water_level"]\nparams = { above = 2.0 }\n'


def cli(*args: str, env: dict | None = None, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([*GRIDWATCH, *args], capture_output=True, text=True, timeout=60, cwd=kw.pop("cwd", None),
                          env={**os.environ, **(env or {})}, **kw)


def one_line_error(r: subprocess.CompletedProcess, *needles: str) -> str:
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    assert "Traceback" not in r.stderr, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    for n in needles:
        assert n in lines[0], (n, lines[0])
    return lines[0]


def write(tmp_path: Path, text: str, name: str = "gw.toml") -> Path:
    f = tmp_path / name
    f.write_text(f'[site]\ndata_dir = "data"\n{text}')
    return f


# --- check-config checks what run needs ----------------------------------------------------------

@pytest.mark.parametrize("text, needles", [
    ('[[devices]]\nid = "d1"\nvendor = "acme"\nkind = "gas"\n', ["devices.0.vendor (d1)", "'acme'", "known vendors: aqualine"]),
    ('[[rules]]\nname = "x"\nkind = "threshold"\nmetrics = ["water_levle"]\nparams = { above = 1 }\n',
     ["rules.0.metrics (x)", "'water_levle'", "did you mean 'water_level'"]),
    ('[[rules]]\nname = "x"\nkind = "threshold"\nmetrics = ["height"]\nvendors = ["aqualine"]\nparams = { above = 1 }\n',
     ["rules.0.metrics (x)", "no profile of vendors ['aqualine'] produces metric 'height'"]),
    ('[regions]\ngeojson = "cells.geojson"\n', ["regions.geojson", "cells.geojson", "does not exist", "relative to the config file"]),
    ('[mqtt]\n[mqtt.tls]\nca_file = "ca.pem"\n', ["mqtt.tls.ca_file", "ca.pem", "does not exist"]),
    ('[ingest]\nprofile_dirs = ["vendors"]\n', ["ingest.profile_dirs.0", "vendors", "does not exist"]),
    ('[[rules]]\nname = "z"\nkind = "dwell"\nparams = { radius_m = 1, duration_s = 1, allowed = "depots.geojson" }\n',
     ["rules.0.params (z)", "depots.geojson"]),
])
def test_check_config_and_run_find_what_run_needs(tmp_path, capsys, text, needles):
    f = write(tmp_path, text)
    for cmd in (["check-config", str(f)], ["run", "-c", str(f), "--duration", "0"]):
        assert main(cmd) == 2, cmd
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and str(f) in err, err
        for n in needles:
            assert n in err, (n, err)
    assert not (tmp_path / "data").exists(), "something was created before the config was known to be good"


def test_tls_files_that_are_not_pem_are_found(tmp_path, capsys):
    (tmp_path / "ca.pem").write_text("not a certificate\n")
    f = write(tmp_path, '[mqtt]\n[mqtt.tls]\nca_file = "ca.pem"\n')
    assert main(["check-config", str(f)]) == 2
    assert "is not a PEM CA certificate" in capsys.readouterr().err
    ca = TestCA(tmp_path / "tls")
    pair = ca.client_cert("edge")
    f = write(tmp_path, f'[mqtt]\n[mqtt.tls]\nca_file = "{ca.ca_file}"\ncert_file = "{pair.cert}"\nkey_file = "{ca.ca_file}"\n')
    assert main(["check-config", str(f)]) == 2
    assert "cert_file/key_file" in capsys.readouterr().err
    f = write(tmp_path, f'[mqtt]\n[mqtt.tls]\nca_file = "{ca.ca_file}"\ncert_file = "{pair.cert}"\nkey_file = "{pair.key}"\n')
    assert main(["check-config", str(f)]) == 0, capsys.readouterr().err


def test_run_creates_nothing_for_a_bad_config_and_names_the_missing_file(tmp_path):
    """The issue's case: a CA file nobody has; run used to create data_dir/gridwatch.db, then crash."""
    f = write(tmp_path, '[mqtt]\nport = 8883\n[mqtt.tls]\nca_file = "/etc/gridwatch-missing/ca.pem"\n' + RULE)
    r = cli("run", "-c", str(f))
    one_line_error(r, str(f), "mqtt.tls.ca_file", "/etc/gridwatch-missing/ca.pem")
    assert not (tmp_path / "data").exists()


def test_run_refuses_a_damaged_store_before_touching_it(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "gridwatch.db").write_bytes(b"this is not a database" * 100)
    f = write(tmp_path, RULE)
    r = cli("run", "-c", str(f), "--duration", "0")
    one_line_error(r, "gridwatch.db", "not an SQLite database", "move it aside")
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == ["gridwatch.db"]


# --- the store readers ----------------------------------------------------------------------------

def _store_with_warnings(path: Path, n: int) -> None:
    st = Store(path)
    st.commit(warnings=[Warning(f"w-{i}", "flood", "threshold", "major", f"dev-{i}", RegionPath("C", "K", "T", "G"),
                                "active", 1_700_000_000_000 + i, 1_700_000_000_000 + i, None, 2.5, "x" * 200)
                        for i in range(n)])
    st.close()


def test_alerts_with_a_config_needs_no_broker_password(tmp_path):
    f = write(tmp_path, '[mqtt]\nusername = "gw"\npassword = "${GW_TEST_UNSET_PASSWORD}"\n' + RULE)
    (tmp_path / "data").mkdir()
    _store_with_warnings(tmp_path / "data" / "gridwatch.db", 2)
    env = {k: v for k, v in os.environ.items() if k != "GW_TEST_UNSET_PASSWORD"}
    r = subprocess.run([*GRIDWATCH, "alerts", "-c", str(f)], capture_output=True, text=True, timeout=60, env=env)
    assert r.returncode == 0, r.stderr
    assert "2 warning(s)" in r.stdout
    r = subprocess.run([*GRIDWATCH, "dead-letters", "-c", str(f)], capture_output=True, text=True, timeout=60, env=env)
    assert r.returncode == 0 and "rejections by reason: none" in r.stdout, r.stderr


def test_alerts_config_error_is_one_line_naming_the_file(tmp_path):
    f = write(tmp_path, '[store]\npaht = "x.db"\n')
    one_line_error(cli("alerts", "-c", str(f)), str(f), "store.paht", "did you mean 'path'")


@pytest.mark.parametrize("content", [b"garbage, not a database\n" * 50,
                                     b"SQLite format 3\x00" + b"\xff" * 4000])
def test_damaged_store_is_one_line_naming_the_file(tmp_path, content):
    db = tmp_path / "broken.db"
    db.write_bytes(content)
    for cmd in ("alerts", "dead-letters"):
        one_line_error(cli(cmd, "--db", str(db)), str(db), "move it aside")


@pytest.mark.parametrize("args, needles", [
    (["check-config", "missing.toml"], ["missing.toml", "cannot read"]),
    (["run", "-c", "missing.toml"], ["missing.toml", "cannot read"]),
    (["alerts", "-c", "missing.toml"], ["missing.toml", "cannot read"]),
    (["alerts", "--db", "missing.db"], ["missing.db", "gridwatch demo"]),
    (["dead-letters", "--db", "missing.db"], ["missing.db"]),
    (["status", "-c", "missing.toml"], ["missing.toml"]),
    (["status", "--url", "http://127.0.0.1:1/metrics"], ["no gridwatch answers", "127.0.0.1:1"]),
])
def test_missing_things_are_one_line(tmp_path, args, needles):
    one_line_error(cli(*args, cwd=tmp_path), *needles)


def test_bad_since_is_one_line(tmp_path):
    _store_with_warnings(tmp_path / "s.db", 1)
    one_line_error(cli("alerts", "--db", str(tmp_path / "s.db"), "--since", "yesterday"), "--since", "'yesterday'")


def test_a_closed_pipe_is_not_an_error(tmp_path):
    """`gridwatch alerts --json | head -1` used to end in BrokenPipeError now and then; a reader that
    is gone before the first write makes it happen every time."""
    db = tmp_path / "many.db"
    _store_with_warnings(db, 300)
    for args in (["alerts", "--db", str(db), "--json"], ["alerts", "--db", str(db)], ["check-config", "--explain"]):
        r_fd, w_fd = os.pipe()
        os.close(r_fd)
        try:
            r = subprocess.run([*GRIDWATCH, *args], stdout=w_fd, stderr=subprocess.PIPE, text=True, timeout=60)
        finally:
            os.close(w_fd)
        assert r.returncode == 0 and r.stderr == "", (args, r.stderr)
    r = subprocess.run(f"{' '.join(GRIDWATCH)} alerts --db {db} --json | head -1", shell=True, capture_output=True,
                       text=True, timeout=60)
    assert r.stdout.count("\n") == 1 and r.stderr == "", r.stderr


# --- --explain, cleared events, status, first-run notice ---------------------------------------

def test_explain_file_shows_the_files_values_and_every_rule_kinds_parameters(tmp_path, capsys):
    f = write(tmp_path, '[mqtt]\nport = 1999\npassword = "hunter2"\n' + RULE
              + '[[cameras]]\nname = "gate"\nurl = "rtsp://admin:camsecret@127.0.0.1:8554/gate"\n')
    assert main(["check-config", "--explain", str(f)]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^  mqtt\.port = 1999$", out, re.M), out  # the file's value, not marked default
    assert re.search(r"^  mqtt\.host = '127\.0\.0\.1'  \(default\)$", out, re.M)
    assert "hunter2" not in out and "mqtt.password = '***'" in out
    assert "camsecret" not in out and "cameras.0 = " in out and "rtsp://admin:***@127.0.0.1:8554/gate" in out
    assert re.search(r"rules\.0\.params\.above = 2\.0  \[metric's unit\]", out)
    assert re.search(r"rules\.0\.params\.min_duration_s = 0\.0  \(default\)  \[s\]", out)
    for kind in ("threshold", "rate_of_change", "zscore", "flatline", "offline", "speeding", "geofence", "dwell"):
        assert re.search(rf"^  {kind} \((sensor readings|position fixes)\): ", out, re.M), kind
    assert re.search(r"^    limit_kmh  \[km/h; required\]  Raise when", out, re.M)
    assert re.search(r"^    min_duration_s  \[s; default 0\.0\]  ", out, re.M)
    assert re.search(r"^  water_level +m +-50 \.\. 500 ", out, re.M)


def test_explain_marks_the_smoke_rule_experimental_with_its_measured_rates(tmp_path, capsys):
    assert main(["check-config", "--explain"]) == 0
    out = capsys.readouterr().out
    for kind in ("dumping", "ebike", "smoke"):
        assert re.search(rf"^  {kind}: \S", out, re.M), kind  # every video detector kind, with what it does
    assert re.search(r"^  smoke: .*\n    status: EXPERIMENTAL — .*false alarms in .* camera-hours.*plumes", out, re.M)
    assert re.search(r"^    classifier_min  \[default ", out, re.M)  # and its parameters
    f = write(tmp_path, '[[video.rules]]\nname = "roof-smoke"\nkind = "smoke"\n'
              '[[video.rules]]\nname = "lift"\nkind = "ebike"\n')
    assert main(["check-config", str(f)]) == 0
    err = capsys.readouterr().err
    assert "note: video rule 'roof-smoke' (kind smoke) is experimental: " in err and "lift" not in err


def test_unknown_key_lists_the_valid_ones_and_suggests_the_nearest(tmp_path, capsys):
    f = write(tmp_path, '[mqtt]\nhots = "broker"\n')
    assert main(["check-config", str(f)]) == 2
    err = capsys.readouterr().err
    assert "mqtt.hots: unknown key; did you mean 'host'? valid keys: host, port," in err


def test_cleared_event_says_it_cleared():
    import io

    w = Warning("w-1", "sewer_overflow", "threshold", "critical", "aq-sewer-002", RegionPath("C", "K", "T", "G"),
                "cleared", 1_700_000_000_000, 1_700_000_095_000, 1_700_000_095_000, 2.0, "Sewer level 2.62 m: overflow imminent")
    out = io.StringIO()
    print_event("cleared", w, out)
    line = out.getvalue()
    assert "CLEARED" in line and "cleared after 95 s" in line
    assert not line.rstrip().endswith("Sewer level 2.62 m: overflow imminent")  # not the raise text as if it were news


def test_status_shows_flow_lag_rejections_and_camera_state(capsys):
    c = Counters()
    c.add("mqtt", "messages", 10)
    c.add("mqtt", "readings_stored", 25)
    c.add("mqtt", "connects", 1)
    c.set("mqtt", "lag_ms", 120_000.0)
    c.reject("mqtt", {"malformed_json": 2, "out_of_range": 1})
    c.drop("mqtt", "inbox_full", 4)
    c.set("camera/gate", "online", 0.0)
    c.info("camera/gate", "camera_state", state="offline", reason="cannot open rtsp://10.0.0.9/stream: timeout")
    server, port = start_metrics_server(c, 0)
    try:
        import threading

        threading.Timer(0.2, lambda: c.add("mqtt", "messages", 5)).start()
        assert main(["status", "--url", f"http://127.0.0.1:{port}/metrics", "--interval", "0.5"]) == 0
    finally:
        server.shutdown()
    out = capsys.readouterr().out
    mqtt = next(x for x in out.splitlines() if x.strip().startswith("mqtt"))
    assert "flowing 10.0 msg/s (15 messages, 25 readings" in mqtt, mqtt
    assert "lag 120.0 s (LAGGING)" in mqtt and "connected" in mqtt
    assert "rejected 3 (malformed_json=2, out_of_range=1)" in mqtt and "dropped 4 (inbox_full=4)" in mqtt
    cam = next(x for x in out.splitlines() if "camera/gate" in x)
    assert "offline" in cam and "last error: cannot open rtsp://10.0.0.9/stream: timeout" in cam


def test_cold_numba_cache_is_detected(tmp_path):
    code = "from gridwatch.cli import kernels_cold; print(kernels_cold())"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                       env={**os.environ, "NUMBA_CACHE_DIR": str(tmp_path / "empty")})
    assert r.stdout.strip() == "True", r.stderr


def test_run_with_a_busy_or_impossible_metrics_address_is_one_line(tmp_path):
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        f = write(tmp_path, f"[metrics]\nport = {port}\n" + RULE)
        one_line_error(cli("run", "-c", str(f), "--duration", "0"), str(f), f"127.0.0.1:{port} is in use")
    f = write(tmp_path, '[metrics]\nport = 9464\nbind = "192.0.2.1"\n' + RULE)
    one_line_error(cli("run", "-c", str(f), "--duration", "0"), "cannot listen on 192.0.2.1:9464", "metrics.bind")
    assert not (tmp_path / "data").exists()


def test_run_with_a_store_damaged_past_its_header_is_one_line(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "gridwatch.db").write_bytes(b"SQLite format 3\x00" + b"\xff" * 8000)
    f = write(tmp_path, RULE)
    one_line_error(cli("run", "-c", str(f), "--duration", "0"), "gridwatch.db", "move it aside")


@pytest.mark.broker
def test_run_with_a_closed_stdout_goes_on_storing(tmp_path, mosquitto):
    """`gridwatch run -c FILE | head -1`: once the reader is gone, printing stops and the runtime
    goes on; before, the first warning's print raised BrokenPipeError in the pipeline thread."""
    import signal
    import time

    f = write(tmp_path, f'[mqtt]\nport = {mosquitto.port}\nclient_id = "closed-stdout"\n' + RULE)
    r_fd, w_fd = os.pipe()
    os.close(r_fd)
    err = tmp_path / "run.err"
    with open(err, "wb") as ef:
        run = subprocess.Popen([*GRIDWATCH, "run", "-c", str(f)], stdout=w_fd, stderr=ef, start_new_session=True)
    os.close(w_fd)
    try:
        end = time.monotonic() + 120
        while "mqtt connected" not in err.read_text():
            assert time.monotonic() < end and run.poll() is None, err.read_text()
            time.sleep(0.1)
        for level, dev in ((3.0, "d1"), (3.5, "d2")):
            subprocess.run(["mosquitto_pub", "-p", str(mosquitto.port), "-q", "1", "-t", f"devices/generic/sewer_level/{dev}",
                            "-m", f'{{"water_level": {level}}}'], check=True, timeout=30)
        db = tmp_path / "data" / "gridwatch.db"
        end = time.monotonic() + 20
        while True:
            rows = Store(db).warnings() if db.exists() else []
            if len(rows) == 2:
                break
            assert time.monotonic() < end and run.poll() is None, err.read_text()
            time.sleep(0.2)
    finally:
        if run.poll() is None:
            os.killpg(run.pid, signal.SIGINT)
        rc = run.wait(30)
    log = err.read_text()
    assert rc == 0 and "Traceback" not in log and "Broken pipe" not in log and " ERROR " not in log, log


@pytest.mark.broker
def test_ok_from_check_config_means_run_connects_over_tls(tmp_path, mosquitto_factory):
    """A TLS config whose CA file is given relative to the config file: check-config says ok, and run,
    started from another folder, connects with it."""
    import shutil
    import signal
    import time

    mq = mosquitto_factory(tls=True)
    (tmp_path / "certs").mkdir()
    shutil.copy(mq.ca_file, tmp_path / "certs" / "ca.pem")
    f = write(tmp_path, f'[mqtt]\nport = {mq.tls_port}\nclient_id = "tls-front-door"\n[mqtt.tls]\nca_file = "certs/ca.pem"\n' + RULE)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    r = cli("check-config", str(f), cwd=elsewhere)
    assert r.returncode == 0 and ": ok" in r.stdout, r.stderr
    err = tmp_path / "run.err"
    with open(err, "wb") as ef:
        run = subprocess.Popen([*GRIDWATCH, "run", "-c", str(f)], cwd=elsewhere, stdout=subprocess.DEVNULL, stderr=ef,
                               start_new_session=True)
    try:
        end = time.monotonic() + 120
        while "mqtt connected" not in err.read_text():
            assert time.monotonic() < end and run.poll() is None, err.read_text()
            time.sleep(0.1)
    finally:
        if run.poll() is None:
            os.killpg(run.pid, signal.SIGINT)
        run.wait(30)
    assert f"port={mq.tls_port}" in err.read_text()
