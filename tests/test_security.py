"""Locked-down MQTT against a real Mosquitto, and secrets kept out of every output.

* TLS with a client certificate (``mqtt.tls.cert_file``/``key_file``, verification on): gridwatch
  connects and ingests; without the CA it does not connect and says why, clearly.
* The ACL template (``gridwatch/servers/mosquitto-acl.template``): a vendor publishes only under
  ``devices/<vendor>/#``; an operator only reads ``gridwatch/warnings/#`` (MQTT 5 reason codes).
* A device belongs to one vendor: readings for it from another vendor's topic or payload are
  rejected (``vendor_mismatch``) even where the ACL lets that vendor publish.
* ``gridwatch run`` as a subprocess with a password, a wrong password, broken TLS and bad configs:
  the secret appears in none of its output, error messages or files.
"""
from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import orjson
import paho.mqtt.client as mqtt
import pytest

from gridwatch.servers.mosquitto import render_acl
from gridwatch.streams.store import Store
from tests.helpers import RuntimeThread, mosquitto_pub, wait_until

pytestmark = [pytest.mark.broker, pytest.mark.timeout(120)]

SVC_PW = "svc-S3cret-4f9a"
USERS = {"gridwatch": SVC_PW, "aqualine": "aq-pw-71", "gassense": "gs-pw-72", "fleetco": "fl-pw-73",
         "op-north": "op-pw-74"}
ACL = render_acl(["gridwatch"], ["op-north"])
OK = (0, 16)  # MQTT 5 PUBACK: success / no matching subscribers
REGION = "Jiangcheng/Riverside District/East Town/E-02"


def _base_cfg(tmp_path, mqtt_cfg: dict, **extra) -> dict:
    return {"site": {"name": "sec", "data_dir": str(tmp_path)}, "mqtt": {"client_id": "gw-sec", **mqtt_cfg},
            "regions": {"default": REGION}, **extra}


# --- paho helpers: MQTT 5 reason codes for publish / subscribe -------------------------------

class Client:
    def __init__(self, mq, user: str, *, tls_pair=None, port=None, client_id=None):
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id or f"t-{user}-{time.time_ns()}",
                             protocol=mqtt.MQTTv5)
        if tls_pair is None:
            self.c.username_pw_set(user, USERS[user])
        if tls_pair is not None or (port is not None and port == mq.tls_port):
            self.c.tls_set(ca_certs=str(mq.ca_file), certfile=str(tls_pair.cert) if tls_pair else None,
                           keyfile=str(tls_pair.key) if tls_pair else None)
        self.acks: dict[int, int] = {}
        self.subacks: list[list[int]] = []
        self.messages: list[tuple[str, bytes]] = []
        self.ev = threading.Event()
        self.connected = threading.Event()
        self.c.on_connect = lambda *a: self.connected.set()
        self.c.on_publish = lambda cl, u, mid, rc, props: (self.acks.__setitem__(mid, rc.value), self.ev.set())
        self.c.on_subscribe = lambda cl, u, mid, rcs, props: (self.subacks.append([r.value for r in rcs]), self.ev.set())
        self.c.on_message = lambda cl, u, m: self.messages.append((m.topic, m.payload))
        self.c.connect("127.0.0.1", port or mq.port)
        self.c.loop_start()
        assert self.connected.wait(10), f"{user} did not connect"

    def publish(self, topic: str, payload: bytes) -> int:
        """QoS 1 publish; returns the PUBACK reason code (0 = accepted, 16 = accepted but nobody
        subscribes, 135 = not authorized)."""
        info = self.c.publish(topic, payload, qos=1)
        wait_until(lambda: info.mid in self.acks, 10, what="PUBACK")
        return self.acks[info.mid]

    def subscribe(self, topic: str) -> int:
        n = len(self.subacks)
        self.c.subscribe(topic, qos=1)
        wait_until(lambda: len(self.subacks) > n, 10, what="SUBACK")
        return self.subacks[-1][0]

    def close(self):
        self.c.disconnect()
        self.c.loop_stop()


def reading(level_cm: float, dt: float = 0.0) -> bytes:
    return orjson.dumps({"t": time.time() - 5 + dt, "lvl": level_cm})


# --- TLS with client certificates -----------------------------------------------------------

def test_client_certificate_tls_connects_and_ingests(mosquitto_factory, tmp_path):
    mq = mosquitto_factory(require_client_cert=True, acl=ACL)
    gw = mq.issue_client_cert("gridwatch")  # CN = username, so the service ACL applies
    cfg = _base_cfg(tmp_path, {"host": "127.0.0.1", "port": mq.tls_port,
                               "tls": {"ca_file": str(mq.ca_file), "cert_file": str(gw.cert), "key_file": str(gw.key)}})
    assert "verify" not in cfg["mqtt"]["tls"]  # verification is on by default
    with RuntimeThread(cfg, tmp_path) as rt:
        assert rt.rt.collector.connected.is_set()
        vendor = Client(mq, "aqualine", tls_pair=mq.issue_client_cert("aqualine"), port=mq.tls_port)
        try:
            assert vendor.publish("devices/aqualine/sewer_level/aq-1", reading(120)) in OK
            assert vendor.publish("devices/gassense/gas/g-1", orjson.dumps({"time": time.time(), "H2S": 1})) == 135
        finally:
            vendor.close()
        store = Store(tmp_path / "gridwatch.db")
        wait_until(lambda: store.count_readings() == 1, what="the reading over mutual TLS")
    assert set(store.readings()["device"]) == {"aq-1"}


def test_without_the_ca_tls_fails_with_a_clear_error(mosquitto_factory, tmp_path, caplog):
    mq = mosquitto_factory(require_client_cert=True, acl=ACL)
    gw = mq.issue_client_cert("gridwatch")
    cfg = _base_cfg(tmp_path, {"host": "127.0.0.1", "port": mq.tls_port, "reconnect_min_s": 0.5, "reconnect_max_s": 1,
                               "tls": {"cert_file": str(gw.cert), "key_file": str(gw.key)}})  # no ca_file: system CAs
    caplog.set_level("INFO")
    rt = RuntimeThread(cfg, tmp_path)
    rt.thread.start()
    try:
        wait_until(lambda: rt.rt.collector.last_error, 10, what="a connection error")
        assert not rt.rt.collector.connected.is_set()
    finally:
        rt.stop()
    err = rt.rt.collector.last_error
    assert "CERTIFICATE_VERIFY_FAILED" in err and "mqtt.tls.ca_file" in err, err
    assert "mqtt connection failed" in caplog.text and "mqtt.tls.ca_file" in caplog.text
    assert rt.rt.counters.get("mqtt", "connect_failures") >= 1


def test_client_certificate_required_refuses_a_client_without_one(mosquitto_factory, tmp_path):
    mq = mosquitto_factory(require_client_cert=True, acl=ACL)
    cfg = _base_cfg(tmp_path, {"host": "127.0.0.1", "port": mq.tls_port, "username": "gridwatch", "password": SVC_PW,
                               "reconnect_min_s": 0.5, "reconnect_max_s": 1, "tls": {"ca_file": str(mq.ca_file)}})
    rt = RuntimeThread(cfg, tmp_path)
    rt.thread.start()
    try:
        time.sleep(2.0)
        assert not rt.rt.collector.connected.is_set()
    finally:
        rt.stop()


# --- the ACL template -------------------------------------------------------------------------

def test_acl_vendor_subtree_and_read_only_operator(mosquitto_factory):
    mq = mosquitto_factory(users=USERS, acl=ACL)
    aq, gs, op, svc = (Client(mq, u) for u in ("aqualine", "gassense", "op-north", "gridwatch"))
    try:
        # subscriptions are granted (Mosquitto 2.0), but the read ACL filters what is delivered
        aq.subscribe("#")
        aq.subscribe("gridwatch/warnings/#")
        op.subscribe("devices/#")
        assert op.subscribe("gridwatch/warnings/#") == 1  # granted QoS 1
        # a vendor publishes under its own subtree only
        assert aq.publish("devices/aqualine/sewer_level/aq-1", reading(100)) in OK
        assert aq.publish("devices/gassense/gas/g-1", b"{}") == 135
        assert aq.publish("gridwatch/warnings/x/y", b"{}") == 135
        assert gs.publish("devices/gassense/gas/g-1", b"{}") in OK
        # an operator publishes nothing: neither readings nor warnings
        assert op.publish("devices/aqualine/sewer_level/aq-1", reading(100)) == 135
        assert op.publish("gridwatch/warnings/fake", b"{}") == 135
        # the service user publishes warnings; the operator receives them, the vendor does not
        assert svc.publish("gridwatch/warnings/Jiangcheng/r", b'{"event":"raised"}') in OK
        wait_until(lambda: op.messages, 5, what="the operator's warning")
        time.sleep(0.5)
        assert op.messages == [("gridwatch/warnings/Jiangcheng/r", b'{"event":"raised"}')]  # no readings
        assert aq.messages == []  # a vendor reads nothing, not even its own readings
    finally:
        for c in (aq, gs, op, svc):
            c.close()


def test_acl_template_documents_the_rules():
    text = Path(__import__("gridwatch.servers.mosquitto", fromlist=["x"]).ACL_TEMPLATE).read_text()
    assert "pattern write devices/%u/#" in text and "topic read gridwatch/warnings/#" in ACL
    with pytest.raises(ValueError):
        render_acl(["gridwatch"], ["op/#"])


# --- vendor_mismatch end to end -----------------------------------------------------------------

def test_device_of_another_vendor_is_rejected(mosquitto_factory, tmp_path):
    mq = mosquitto_factory(users=USERS, acl=ACL)
    prof = tmp_path / "profiles"
    prof.mkdir()
    (prof / "fleetco.toml").write_text('vendor = "fleetco"\ntimestamp = "ts"\ndevice_id = "dev"\n'
                                       '[fields]\nlvl = { metric = "water_level", unit = "cm" }\n')
    cfg = _base_cfg(tmp_path, {"host": "127.0.0.1", "port": mq.port, "username": "gridwatch", "password": SVC_PW},
                    devices=[{"id": "aq-7", "vendor": "aqualine", "kind": "sewer_level"}],
                    ingest={"profile_dirs": [str(prof)]})
    now = time.time()
    with RuntimeThread(cfg, tmp_path) as rt:
        # the owner: accepted
        mosquitto_pub(mq.port, "devices/aqualine/sewer_level/aq-7", [reading(100)], "aqualine", USERS["aqualine"])
        # another vendor, inside its own (ACL-permitted) subtree, naming aq-7 in the topic ...
        mosquitto_pub(mq.port, "devices/gassense/gas/aq-7", [orjson.dumps({"time": now, "H2S": 5})], "gassense", USERS["gassense"])
        # ... or in the payload
        mosquitto_pub(mq.port, "devices/fleetco/tracker/any", [orjson.dumps({"ts": now, "dev": "aq-7", "lvl": 300}),
                                                              orjson.dumps({"ts": now, "dev": "fl-1", "lvl": 50})],
                      "fleetco", USERS["fleetco"])
        store = Store(tmp_path / "gridwatch.db")
        wait_until(lambda: store.count_readings() == 2 and store.dead_letter_counts().get("vendor_mismatch") == 2,
                   what="2 readings stored, 2 vendor_mismatch dead letters")
    r = store.readings()
    assert sorted(r["device"]) == ["aq-7", "fl-1"] and sorted(r["value"].tolist()) == [0.5, 1.0]
    details = [d["detail"] for d in store.dead_letters("vendor_mismatch", 10)]
    assert any("aqualine" in d for d in details)
    assert rt.rt.counters.snapshot()["mqtt"]["rejected"] == {"vendor_mismatch": 2}


# --- secrets: grep everything `gridwatch run` says and writes -----------------------------------

def _toml(d: dict, prefix: str = "") -> str:
    import json

    out, tables = [], []
    for k, v in d.items():
        if isinstance(v, dict):
            tables.append((k, v))
        elif isinstance(v, list) and v and isinstance(v[0], dict):
            for item in v:
                tables.append(("[" + k + "]", item))
        else:
            out.append(f"{k} = {json.dumps(v)}")
    for k, v in tables:
        name = f"[{prefix}{k}]" if not k.startswith("[") else f"[[{prefix}{k[1:-1]}]]"
        out.append(f"\n{name}")
        out.append(_toml(v, f"{prefix}{k.strip('[]')}."))
    return "\n".join(out)


def _run_gridwatch(tmp_path: Path, name: str, cfg_text: str, duration: float = 2.0) -> tuple[int, str]:
    d = tmp_path / name
    d.mkdir()
    f = d / "gridwatch.toml"
    f.write_text(cfg_text)
    os.chmod(f, 0o644)  # world-readable on purpose: the warning must name the file, not the secret
    env = {k: v for k, v in os.environ.items() if not k.startswith("GW_")}
    p = subprocess.run([sys.executable, "-m", "gridwatch.cli", "run", "-c", str(f), "--duration", str(duration)],
                       capture_output=True, timeout=60, env=env, cwd=d)
    text = p.stdout.decode(errors="replace") + p.stderr.decode(errors="replace")
    # and whatever it wrote: store, WAL, spool, evidence
    for path in d.rglob("*"):
        if path.is_file() and path != f:
            text += path.read_bytes().decode("latin-1")
    return p.returncode, text


def test_secrets_never_appear_in_output_errors_or_files(mosquitto_factory, tmp_path):
    mq = mosquitto_factory(users=USERS, acl=ACL, tls=True)
    wrong = "wr0ng-Pa55-9d1e"
    common = {"site": {"name": "sec"}, "log": {"level": "debug"}, "regions": {"default": REGION}}

    def cfg(log_format="text", **mqtt_kw):
        c = {**common, "log": {"level": "debug", "format": log_format},
             "mqtt": {"host": "127.0.0.1", "port": mq.port, "username": "gridwatch", "client_id": "gw-sec",
                      "reconnect_min_s": 0.5, "reconnect_max_s": 1, **mqtt_kw}}
        return _toml(c)

    runs = {
        "right_password": cfg(password=SVC_PW),
        "right_password_json_logs": cfg("json", password=SVC_PW),
        "wrong_password": cfg(password=wrong),
        "tls_without_ca": cfg(password=SVC_PW, port=mq.tls_port, tls={"verify": True}),
        "tls_on_plain_port": cfg(password=SVC_PW, tls={"ca_file": str(mq.ca_file)}),
        "bad_config_misspelled_key": cfg(passwd=SVC_PW),
        "bad_config_wrong_type": cfg(password=SVC_PW, port="not-a-port"),
        "bad_config_password_wrong_type": _toml({**common, "mqtt": {"password": [SVC_PW]}}),
        "bad_config_unknown_rule": cfg(password=SVC_PW) + '\n[[rules]]\nname = "r"\nkind = "nope"\n',
        "bad_toml": cfg(password=SVC_PW) + "\n[[broken\n",
    }
    outputs = {}
    for name, text in runs.items():
        assert SVC_PW in text or wrong in text, name
        outputs[name] = _run_gridwatch(tmp_path, name, text)
    # something to grep: each run said something, and what matters was said
    for name, (rc, out) in outputs.items():
        assert out.strip(), name
        assert SVC_PW not in out and wrong not in out, f"secret leaked in {name}:\n{out[-2000:]}"
    assert outputs["right_password"][0] == 0 and "mqtt connected" in outputs["right_password"][1]
    assert "readable by every user" in outputs["right_password"][1]
    assert "Not authorized" in outputs["wrong_password"][1] or "refused" in outputs["wrong_password"][1]
    assert "CERTIFICATE_VERIFY_FAILED" in outputs["tls_without_ca"][1]
    assert "mqtt connection failed" in outputs["tls_on_plain_port"][1]
    for name in ("bad_config_misspelled_key", "bad_config_wrong_type", "bad_config_password_wrong_type",
                 "bad_config_unknown_rule", "bad_toml"):
        rc, out = outputs[name]
        assert rc == 2 and "config error" in out, (name, out)


# -- the secret-file permission warning: secret fields of the parsed TOML, not a regex -----------

@pytest.mark.skipif(os.name != "posix", reason="file modes")
@pytest.mark.parametrize("text,field", [
    ("[mqtt]\npassword = 'single-quoted'\n", "mqtt.password"),  # was missed: only "..." was seen
    ('mqtt = { host = "h", password = "inline-table" }\n', "mqtt.password"),  # was missed
    ('[mqtt]\n"password" = "quoted-key"\n', "mqtt.password"),  # was missed
    ('[kafka]\nsasl_password = "kafka-sasl"\n', "kafka.sasl_password"),  # was missed
    ("[influx]\nurl = 'http://h'\ntoken = '''multi-line-literal'''\n", "influx.token"),  # was missed
    ('[mqtt]\npassword = "${MQTT_PASSWORD:-a-default-in-the-file}"\n', "mqtt.password"),  # was missed
    ('[[cameras]]\nname = "c1"\nurl = "rtsp://admin:cam-pw@10.0.0.9/stream"\n', "cameras[0].url"),  # was missed
    ('[mqtt]\npassword = "double-quoted"\n', "mqtt.password"),
])
def test_world_readable_warning_sees_every_secret_field(tmp_path, capsys, text, field):
    from gridwatch.cli import main
    from gridwatch.config import secret_fields, secrets_world_readable
    import tomllib

    f = tmp_path / "gw.toml"
    f.write_text(text)
    assert secret_fields(tomllib.loads(text)) == [field]
    f.chmod(0o644)
    assert secrets_world_readable(f), text
    main(["check-config", str(f)])
    assert "readable by every user" in capsys.readouterr().err
    f.chmod(0o600)
    assert not secrets_world_readable(f)


@pytest.mark.skipif(os.name != "posix", reason="file modes")
@pytest.mark.parametrize("text", [
    '[mqtt]\npassword = "${MQTT_PASSWORD}"\n',
    "[mqtt]\npassword = '${MQTT_PASSWORD}'\n",
    '[kafka]\nsasl_password = "${KAFKA_PASSWORD:-}"\n',
    '[[cameras]]\nname = "c1"\nurl = "rtsp://admin:${CAM_PW}@10.0.0.9/stream"\n',
    '[mqtt]\nhost = "h"\nusername = "password"\n# password = "only a comment"\n',
    '[mqtt.tls]\nkey_file = "client.key"\n',  # a path to a key: the key's own file mode is what matters
])
def test_world_readable_warning_stays_quiet_without_a_secret_in_the_file(tmp_path, text):
    from gridwatch.config import secrets_world_readable

    f = tmp_path / "gw.toml"
    f.write_text(text)
    f.chmod(0o644)
    assert not secrets_world_readable(f), text
