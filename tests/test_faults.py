"""Faults against real processes: a full disk under `gridwatch run`, config devices added to a
store that devices registered themselves in, hostile topics and device floods, one vendor naming
another's device, and two instances on one data directory (issue: nothing acknowledged is lost, no
source can hurt another)."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import orjson
import paho.mqtt.client as mqtt
import pytest

from gridwatch.benchmarks.mqtt_load import publish_qos1
from gridwatch.streams.store import Store
from tests.conftest import in_ci
from tests.helpers import RuntimeThread, encode_dumping_scene, mosquitto_pub, wait_until

pytestmark = [pytest.mark.broker, pytest.mark.timeout(180)]


def _rules():
    return [{"name": "high", "kind": "threshold", "metrics": ["water_level"], "params": {"above": 5.0, "clear_at": 4.0}}]


def _cfg(port, data_dir, **extra) -> dict:
    cfg = {"site": {"name": "faults", "data_dir": str(data_dir)},
           "mqtt": {"host": "127.0.0.1", "port": port, "client_id": "gw-faults"}, "rules": _rules()}
    for k, v in extra.items():
        cfg[k] = {**cfg.get(k, {}), **v} if isinstance(v, dict) else v
    return cfg


def _readings(t0: int, n: int, value: float = 1.0) -> list[bytes]:
    return [orjson.dumps({"ts": t0 + i, "water_level": value}) for i in range(n)]


# --- a full disk under `gridwatch run` ---------------------------------------------------------

@pytest.fixture
def small_tmpfs(tmp_path):
    """A real 8 MB tmpfs, mounted for the test and unmounted after it."""
    mnt = tmp_path / "tmpfs"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if r.returncode != 0:
        msg = f"cannot mount a tmpfs (needs root): {r.stderr.strip()}"
        if in_ci():
            pytest.fail(msg, pytrace=False)
        pytest.skip(msg)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def _fill(mnt: Path) -> Path:
    """Write a file until the tmpfs is full; returns it (delete it to free the space)."""
    filler = mnt / "filler"
    block = b"\0" * 65536
    with open(filler, "wb", buffering=0) as f:
        try:
            while True:
                f.write(block)
        except OSError:
            pass
        try:  # the last few bytes too
            while True:
                f.write(b"\0" * 512)
        except OSError:
            pass
    return filler


def _run(cfg_path: Path, log) -> subprocess.Popen:
    p = subprocess.Popen([sys.executable, "-m", "gridwatch.cli", "run", "-c", str(cfg_path), "--quiet"],
                         stdout=log, stderr=subprocess.STDOUT)
    wait_until(lambda: "mqtt connected" in Path(log.name).read_text() or p.poll() is not None, 60, what="gridwatch to connect")
    assert p.poll() is None, Path(log.name).read_text()[-2000:]
    return p


def test_disk_full_loses_nothing_and_files_every_reading_under_its_device(mosquitto_factory, small_tmpfs, tmp_path):
    """N QoS 1 readings published while the store's disk is full and then freed: afterwards exactly
    N are stored, each under its own device (one of them registered while the disk was full), none
    became a dead letter, the log named the real cause, and a restart reads them all back."""
    mq = mosquitto_factory(max_queued_messages=1_000_000, persistence=True)
    data = small_tmpfs
    cfg = tmp_path / "gw.toml"
    cfg.write_text(f"""
[site]
name = "full"
data_dir = "{data}"
[mqtt]
port = {mq.port}
client_id = "gw-full"
[ingest]
batch_max_messages = 50
[[rules]]
name = "high"
kind = "threshold"
metrics = ["water_level"]
params = {{ above = 5.0, clear_at = 4.0 }}
""")
    t0 = int(time.time() * 1000) - 120_000
    log_path = tmp_path / "run.log"
    with open(log_path, "w") as log:
        p = _run(cfg, log)
        try:
            publish_qos1(mq.port, "devices/generic/sewer_level/dev-a", _readings(t0, 100))
            store = Store(data / "gridwatch.db")
            wait_until(lambda: store.count_readings() == 100, 30, what="the first 100 readings")
            filler = _fill(data)
            # while full: more from dev-a, a device never seen before, and readings that raise a warning
            publish_qos1(mq.port, "devices/generic/sewer_level/dev-a", _readings(t0 + 1000, 400))
            publish_qos1(mq.port, "devices/generic/sewer_level/dev-b", _readings(t0 + 2000, 400, 7.0))
            publish_qos1(mq.port, "devices/generic/sewer_level/dev-c", _readings(t0 + 3000, 300))
            wait_until(lambda: "disk full" in log_path.read_text(), 30, what="a commit to fail with 'disk full'")
            time.sleep(2.0)  # a few retries while full
            held = store.count_readings()
            filler.unlink()
            wait_until(lambda: store.count_readings() == 1200, 60, what="all 1200 readings once space returned")
            time.sleep(1.0)
        finally:
            p.terminate()
            p.wait(30)
    text = log_path.read_text()
    assert held < 1200, "the disk must have been full for part of the burst for this test to mean anything"
    assert "cannot rollback" not in text and "disk full" in text, text[-3000:]
    with open(tmp_path / "run2.log", "w") as log:  # a restart reads the same directory back
        p = _run(cfg, log)
        p.terminate()
        p.wait(30)
    st = Store(data / "gridwatch.db")
    r = st.readings()
    assert Counter(r["device"].tolist()) == {"dev-a": 500, "dev-b": 400, "dev-c": 300}
    assert len(set(zip(r["device"].tolist(), r["ts"].tolist()))) == 1200
    assert st.dead_letter_counts() == {}, st.dead_letter_counts()
    w = st.warnings()
    assert [x["source"] for x in w] == ["dev-b"] and w[0]["state"] == "active"


# --- the config and the stored directory merge in any order ------------------------------------

@pytest.mark.timeout(120)
def test_a_full_disk_holds_video_warnings_and_analysis_goes_on(small_tmpfs, tmp_path):
    """Was: the store's refusal (disk full) was raised on the video analysis thread, which died:
    every camera's analysis stopped for good, and the warning was neither stored nor published.
    Now the events are held in order (``video/events_held``, ``store_commit_failures``), analysis
    goes on, nothing is published before it is stored, and once space is back the warning is
    stored and then published."""
    from gridwatch.config import parse
    from gridwatch.streams.video import VideoRuntime

    mp4 = encode_dumping_scene(tmp_path / "dump.mp4", "libx264", {"g": "15", "bf": "0", "crf": "18"})
    cfg = parse({"site": {"name": "vfull", "data_dir": str(tmp_path / "var")},
                 "regions": {"default": "Jiangcheng/Riverside District/East Town/E-02"},
                 "video": {"rules": [{"name": "dumping", "kind": "dumping", "params": {"duration_s": 2.0}}]},
                 "cameras": [{"name": "cam", "url": str(mp4), "loop": True, "analysis_fps": 5}]},
                base_dir=tmp_path)
    store = Store(small_tmpfs / "gw.db")
    filler = _fill(small_tmpfs)
    published: list = []
    rt = VideoRuntime(cfg, store=store, on_events=published.extend)
    with rt:
        snap = lambda: rt.counters.snapshot().get("video", {})  # noqa: E731
        wait_until(lambda: snap().get("events_held", 0) >= 1, 60, what="a video warning held by the full disk")
        assert published == [] and snap().get("store_commit_failures", 0) >= 1
        n = rt.frames_analysed + rt.frames_gated
        wait_until(lambda: rt.frames_analysed + rt.frames_gated > n + 5, 20, what="analysis going on")
        assert rt.error is None and rt._thread.is_alive()
        filler.unlink()  # space again
        wait_until(lambda: any(e == "raised" for e, _ in published), 20, what="the held warning published")
        wait_until(lambda: snap().get("events_held", 1) == 0, 10, what="nothing held")
    w = next(w for e, w in published if e == "raised")
    assert w.id in {d["id"] for d in store.warnings(rule="dumping")}
    assert rt.error is None


def test_devices_added_to_the_config_after_devices_registered_themselves(mosquitto, tmp_path):
    t0 = int(time.time() * 1000) - 60_000
    with RuntimeThread(_cfg(mosquitto.port, tmp_path), tmp_path):  # devices register themselves
        publish_qos1(mosquitto.port, "devices/generic/sewer_level/x-1", _readings(t0, 10))
        publish_qos1(mosquitto.port, "devices/generic/sewer_level/x-2", _readings(t0, 10))
        wait_until(lambda: Store(tmp_path / "gridwatch.db").count_readings() == 20, what="20 readings")
    # the operator adds a device to the config and edits one that registered itself
    devices = [{"id": "a-1", "vendor": "generic", "kind": "sewer_level", "region": "C/Co/T/G1"},
               {"id": "x-2", "vendor": "generic", "kind": "sewer_level", "region": "C/Co/T/G2"}]
    with RuntimeThread(_cfg(mosquitto.port, tmp_path, devices=devices), tmp_path):
        publish_qos1(mosquitto.port, "devices/generic/sewer_level/a-1", _readings(t0, 5, 9.0))
        publish_qos1(mosquitto.port, "devices/generic/sewer_level/x-2", _readings(t0 + 100, 5, 9.0))
        wait_until(lambda: Store(tmp_path / "gridwatch.db").count_readings() == 30, what="30 readings")
    devices.reverse()  # and in another order, with one more
    devices.append({"id": "b-1", "vendor": "generic", "kind": "gas"})
    with RuntimeThread(_cfg(mosquitto.port, tmp_path, devices=devices), tmp_path) as rt:
        publish_qos1(mosquitto.port, "devices/generic/gas/b-1", [orjson.dumps({"ts": t0, "h2s": 1.0})])
        wait_until(lambda: Store(tmp_path / "gridwatch.db").count_readings() == 31, what="31 readings")
        assert [rt.rt.pipeline.directory.device_id(s) for s in range(4)] == ["x-1", "x-2", "a-1", "b-1"]
    st = Store(tmp_path / "gridwatch.db")
    assert Counter(st.readings()["device"].tolist()) == {"x-1": 10, "x-2": 15, "a-1": 5, "b-1": 1}
    regions = {w["source"]: w["region"] for w in st.warnings()}
    assert regions == {"a-1": "C/Co/T/G1", "x-2": "C/Co/T/G2"}


# --- hostile topics, dead letters and device floods --------------------------------------------

def _flood(port: int, topics: list[str], payload: bytes) -> None:
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"flood-{time.time_ns()}", protocol=mqtt.MQTTv5)
    c.connect("127.0.0.1", port)
    c.loop_start()
    try:
        infos = [c.publish(t, payload, qos=1) for t in topics]
        for i in infos:
            i.wait_for_publish(60)
    finally:
        c.disconnect()
        c.loop_stop()


def test_huge_topics_cost_bounded_memory_and_disk(mosquitto, tmp_path):
    """1,000 messages with 60 KB topics (each distinct) beside an honest vendor: every one is a
    bad_topic dead letter of bounded size, none is remembered by the codec, the honest readings
    all arrive."""
    n = 1000
    t0 = int(time.time() * 1000) - 60_000
    cfg = _cfg(mosquitto.port, tmp_path, ingest={"unknown_devices": "reject"},
               devices=[{"id": "ok-1", "vendor": "generic", "kind": "sewer_level"}])
    with RuntimeThread(cfg, tmp_path) as rt:
        honest = threading.Thread(target=publish_qos1, args=(mosquitto.port, "devices/generic/sewer_level/ok-1", _readings(t0, 500)))
        honest.start()
        _flood(mosquitto.port, [f"devices/generic/k/{i:06d}" + "x" * 60_000 for i in range(n)], b'{"water_level": 1}')
        honest.join(60)
        st = Store(tmp_path / "gridwatch.db")
        wait_until(lambda: st.dead_letter_counts().get("bad_topic") == n and st.count_readings() == 500, 60,
                   what="1000 bad_topic dead letters and 500 readings")
        codec = rt.rt.pipeline.codec
        assert all(len(t) <= codec.max_topic for t in codec._topics), "a rejected topic was remembered"
    letters = st.dead_letters("bad_topic", n)
    assert max(len(d["source"]) for d in letters) <= 256 and max(len(d["detail"]) for d in letters) <= 512
    size = sum(f.stat().st_size for f in tmp_path.glob("gridwatch.db*"))
    assert size < 4 * 2**20, f"the store grew to {size / 2**20:.1f} MB for {n} rejected messages (was ~120 KB each)"


def test_dead_letters_are_bounded_by_bytes(tmp_path):
    from gridwatch.records import DeadLetter

    st = Store(tmp_path / "gw.db", dead_letter_keep=1_000_000, dead_letter_max_bytes=200_000)
    for i in range(50):
        st.commit(dead=[DeadLetter(f"t/{i}/{j}", "malformed_json", "x" * 100, b"p" * 900, 1) for j in range(20)])
    rows = st._query("SELECT count(*), sum(length(source) + length(detail) + length(payload)) FROM dead_letters")[0]
    assert rows[1] <= 200_000 and st.dead_letters_pruned == 1000 - rows[0] > 0
    assert st.dead_letters(limit=1)[0]["source"] == "t/49/19"  # the newest are kept


def test_one_vendor_cannot_register_unbounded_devices(mosquitto, tmp_path):
    t0 = int(time.time() * 1000) - 60_000
    cfg = _cfg(mosquitto.port, tmp_path, ingest={"max_devices_per_vendor": 5})
    with RuntimeThread(cfg, tmp_path) as rt:
        for i in range(20):
            mosquitto_pub(mosquitto.port, f"devices/generic/sewer_level/g-{i:02d}", _readings(t0, 1))
        mosquitto_pub(mosquitto.port, "devices/aqualine/sewer_level/aq-1", [orjson.dumps({"t": t0 / 1000, "lvl": 100})])
        st = Store(tmp_path / "gridwatch.db")
        wait_until(lambda: st.count_readings() == 6 and st.dead_letter_counts().get("device_limit") == 15, 30,
                   what="5 + 1 devices stored and 15 device_limit dead letters")
        assert rt.rt.pipeline.directory.per_vendor == {"generic": 5, "aqualine": 1}
        mosquitto_pub(mosquitto.port, "devices/generic/sewer_level/g-00", _readings(t0 + 1, 1))  # known: still accepted
        wait_until(lambda: st.count_readings() == 7, 30, what="a known device still accepted at the cap")
    assert "max_devices_per_vendor (5)" in st.dead_letters("device_limit", 1)[0]["detail"]


# --- one vendor naming another's device ---------------------------------------------------------

def test_a_vendor_cannot_claim_another_vendors_device_id(mosquitto_factory, tmp_path):
    """With the ACL template each vendor publishes only under its own subtree. gassense publishes
    first under an id aqualine also uses: each gets its own device, nothing of aqualine's is
    rejected, also after a restart, and aqualine's warning names its device unambiguously."""
    from gridwatch.servers.mosquitto import render_acl

    users = {"gridwatch": "svc-pw-1", "aqualine": "aq-pw-2", "gassense": "gs-pw-3"}
    mq = mosquitto_factory(users=users, acl=render_acl(["gridwatch"], []))
    t0 = int(time.time() * 1000) - 60_000
    cfg = _cfg(mq.port, tmp_path)
    cfg["mqtt"].update(username="gridwatch", password=users["gridwatch"])
    cfg["rules"] = [{"name": "high", "kind": "threshold", "metrics": ["water_level"], "params": {"above": 2.0, "clear_at": 1.0}}]
    with RuntimeThread(cfg, tmp_path):
        mosquitto_pub(mq.port, "devices/gassense/gas/dev-7", [orjson.dumps({"time": t0 / 1000, "H2S": 5})], "gassense", users["gassense"])
        st = Store(tmp_path / "gridwatch.db")
        wait_until(lambda: st.count_readings() == 1, what="gassense's reading")
    with RuntimeThread(cfg, tmp_path):  # the claim persisted in the store; aqualine comes later
        mosquitto_pub(mq.port, "devices/aqualine/sewer_level/dev-7",
                      [orjson.dumps({"t": t0 / 1000 + i, "lvl": 300}) for i in range(3)], "aqualine", users["aqualine"])
        wait_until(lambda: st.count_readings() == 4, what="aqualine's 3 readings stored")
    assert st.dead_letter_counts() == {}
    devs = st._query("SELECT id, vendor FROM devices ORDER BY slot")
    assert devs == [("dev-7", "gassense"), ("dev-7", "aqualine")]
    r = st.readings(metric="water_level")
    assert len(r["ts"]) == 3
    assert [w["source"] for w in st.warnings()] == ["aqualine/dev-7"]


# --- two instances on one data directory --------------------------------------------------------

def test_a_second_instance_on_the_same_data_dir_exits_at_once(mosquitto, tmp_path):
    cfg = tmp_path / "gw.toml"
    cfg.write_text(f'[site]\nname = "one"\ndata_dir = "{tmp_path}"\n[mqtt]\nport = {mosquitto.port}\nclient_id = "gw-one"\n')
    with open(tmp_path / "first.log", "w") as log:
        first = _run(cfg, log)
        try:
            t = time.monotonic()
            second = subprocess.run([sys.executable, "-m", "gridwatch.cli", "run", "-c", str(cfg)],
                                    capture_output=True, text=True, timeout=60)
            took = time.monotonic() - t
        finally:
            first.terminate()
            first.wait(30)
    assert second.returncode == 2, second.stderr
    lines = second.stderr.strip().splitlines()
    assert len(lines) == 1 and f"pid {first.pid}" in lines[0] and str(tmp_path) in lines[0], second.stderr
    assert "Traceback" not in second.stderr and took < 30
    # the lock went with the process: a new instance starts
    with open(tmp_path / "third.log", "w") as log:
        third = _run(cfg, log)
        third.terminate()
        third.wait(30)
