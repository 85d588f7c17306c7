"""kill -9 of gridwatch during a QoS 1 burst, then a restart: every reading the broker delivered is
in the store exactly once (acknowledge-after-commit + recognising redelivered, already-stored
messages)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import orjson
import pytest

from gridwatch.benchmarks.mqtt_load import publish_qos1
from gridwatch.streams.store import Store
from tests.helpers import wait_until

pytestmark = pytest.mark.broker


def _start(cfg_path, log):
    p = subprocess.Popen([sys.executable, "-m", "gridwatch.cli", "run", "-c", str(cfg_path), "--quiet"],
                         stdout=log, stderr=subprocess.STDOUT)
    wait_until(lambda: "mqtt connected" in open(log.name).read() or p.poll() is not None, 60, what="gridwatch to connect")
    assert p.poll() is None, open(log.name).read()[-2000:]
    return p


def test_kill9_mid_burst_loses_and_duplicates_nothing(mosquitto_factory, tmp_path):
    mq = mosquitto_factory(max_queued_messages=1_000_000, persistence=True)
    cfg = tmp_path / "gw.toml"
    cfg.write_text(f"""
[site]
name = "crash"
data_dir = "{tmp_path}"
[mqtt]
port = {mq.port}
client_id = "gw-crash"
receive_maximum = 500
[ingest]
batch_max_messages = 200
""")
    n = 20_000
    t0 = int(time.time() * 1000) - 100_000
    payloads = [orjson.dumps({"ts": t0 + i, "water_level": 1.0 + i % 50 * 0.01}) for i in range(n)]
    store_path = tmp_path / "gridwatch.db"
    with open(tmp_path / "run1.log", "w") as log1:
        p = _start(cfg, log1)
        pub = threading.Thread(target=publish_qos1, args=(mq.port, "devices/generic/sewer_level/s-1", payloads))
        pub.start()
        wait_until(lambda: store_path.exists() and Store(store_path).count_readings() > 3000, 60, 0.005, "some readings stored")
        os.kill(p.pid, signal.SIGKILL)
        p.wait(10)
        pub.join(60)
    before = Store(store_path).count_readings()
    assert 3000 < before < n, "the kill must land mid-burst for this test to mean anything"
    with open(tmp_path / "run2.log", "w") as log2:
        p = _start(cfg, log2)
        try:
            wait_until(lambda: Store(store_path).count_readings() >= n, 60, what="all readings after restart")
            time.sleep(1.0)
        finally:
            p.terminate()
            p.wait(20)
    r = Store(store_path).readings()
    assert len(r["ts"]) == n, f"stored {len(r['ts'])} readings for {n} published"
    assert len(set(r["ts"].tolist())) == n
    dead = Store(store_path).dead_letter_counts()
    assert dead.get("duplicate", 0) == 0, f"redelivered messages were processed again: {dead}"
