"""`gridwatch run -c CONFIG` with cameras, end to end: a real GStreamer RTSP server streams generated
scenes, the CLI (a separate process, as an operator starts it) analyses them with the shipped models
named by registry name, and the warnings — raised, then updated while the cause is still seen — reach
a real Mosquitto subscriber with a snapshot file that exists on disk.

Without GStreamer or Mosquitto these tests skip locally; in CI (``CI=true``) they fail instead.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import cv2

from gridwatch.models import scenes
from gridwatch.servers.rtsp import FileStream, RtspServer, encode_h264
from tests.helpers import Subscriber

REGION = "Jiangcheng/Riverside District/East Town/E-02"


CONFIG = """
[site]
name = "cli-video"
data_dir = "data"

[mqtt]
host = "127.0.0.1"
port = {port}
client_id = "cli-video-ingest"

[regions]
default = "{region}"

[alerts_mqtt]
update_interval_s = 1

[[video.rules]]
name = "smoke"
kind = "smoke"                      # no model named: the shipped smoke-cls checks the region
severity = "critical"
params = {{ duration_s = 3.0 }}

[[video.rules]]
name = "ebike-lift"
kind = "ebike"
model = "objects-det"               # the shipped detector, by registry name (hash-checked)
severity = "critical"
params = {{ k = 3, n = 5, conf = 0.35, min_score = 0.6 }}   # the thresholds documented for objects-det

[[cameras]]
name = "yard"
url = "{smoke_url}"
rules = ["smoke"]
analysis_fps = 5
open_timeout_s = 6
read_timeout_s = 6

[[cameras]]
name = "block7-lift"
url = "{ebike_url}"
rules = ["ebike-lift"]
analysis_fps = 5
open_timeout_s = 6
read_timeout_s = 6
zones = [{{ name = "lift car", kind = "elevator", polygon = [[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 1.0]] }}]
"""


def test_gridwatch_run_with_cameras_warns_on_mqtt_with_snapshots(gstreamer, mosquitto, tmp_path):
    smoke = encode_h264((f for f, _ in scenes.smoke_video(225, seed=0)), tmp_path / "smoke.mp4", fps=15)
    ebike = encode_h264((f for f, _ in scenes.ebike_video(225, appear_at=10, seed=0)), tmp_path / "ebike.mp4", fps=15)
    cfg = tmp_path / "edge.toml"
    sub = Subscriber("127.0.0.1", mosquitto.port, "gridwatch/warnings/#", client_id="desk")
    with RtspServer([FileStream("smoke", smoke, loop=False), FileStream("ebike", ebike, loop=False)]) as srv:
        cfg.write_text(CONFIG.format(port=mosquitto.port, region=REGION, smoke_url=srv.url("smoke"), ebike_url=srv.url("ebike")))
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        proc = subprocess.Popen([sys.executable, "-m", "gridwatch.cli", "run", "-c", str(cfg), "--duration", "60"],
                                cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        got: dict[tuple[str, str], list[dict]] = {}
        try:
            deadline = time.time() + 50
            want = {("yard", "smoke"), ("block7-lift", "ebike-lift")}
            while time.time() < deadline:
                if proc.poll() is not None:
                    break
                try:
                    topic, msg = sub.get(1.0)
                except Exception:
                    continue
                w = msg["warning"]
                assert topic == f"gridwatch/warnings/{REGION}/{w['rule']}"
                got.setdefault((w["source"], w["rule"]), []).append(msg)
                if all(any(m["event"] == "updated" for m in got.get(k, [])) for k in want):
                    break
        finally:
            proc.send_signal(signal.SIGINT)
            try:
                out, _ = proc.communicate(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                out, _ = proc.communicate()
            sub.close()
    assert set(got) == {("yard", "smoke"), ("block7-lift", "ebike-lift")}, (sorted(got), out[-3000:])
    evidence = tmp_path / "data" / "evidence"
    for key, msgs in got.items():
        events = [m["event"] for m in msgs]
        assert events[0] == "raised" and "updated" in events, (key, events)
        raised = msgs[0]["warning"]
        assert raised["state"] == "active" and raised["severity"] == "critical"
        assert raised["region"]["path"] == REGION
        snap = evidence / raised["evidence"]["snapshot"]
        assert snap.is_file(), snap
        img = cv2.imread(str(snap))
        assert img is not None and img.shape[:2] == (240, 320)
        upd = next(m["warning"] for m in msgs if m["event"] == "updated")
        assert upd["id"] == raised["id"] and upd["last_ts"] > raised["last_ts"]
        assert upd["evidence"]["snapshot"] == raised["evidence"]["snapshot"]  # the update still points at it
    ebike = got[("block7-lift", "ebike-lift")][0]["warning"]
    assert ebike["zone"] == "lift car" and ebike["evidence"]["median_score"] >= 0.6
    smoke_w = got[("yard", "smoke")][0]["warning"]
    assert smoke_w["evidence"]["classifier_prob"] >= 0.5  # the shipped classifier ran on the region
    assert "RAISED" in out and "UPDATED" in out  # the CLI printed the events too
