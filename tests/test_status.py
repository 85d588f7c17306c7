"""`gridwatch status` against a real `gridwatch run`: a camera's state and last error come through
the runtime's metrics endpoint."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from gridwatch.servers._base import free_ports


def test_status_shows_a_dead_cameras_state_and_last_error(tmp_path):
    metrics_port, dead_port = free_ports(2)  # nothing listens on dead_port: the camera is refused
    cfg = tmp_path / "cam.toml"
    cfg.write_text(f'[site]\nname = "gate-box"\ndata_dir = "data"\n[metrics]\nport = {metrics_port}\n'
                   f'[[cameras]]\nname = "gate"\nurl = "rtsp://127.0.0.1:{dead_port}/stream"\noffline_after_failures = 1\n')
    run = subprocess.Popen([sys.executable, "-m", "gridwatch.cli", "run", "-c", str(cfg), "--duration", "120"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        out = ""
        end = time.monotonic() + 90
        while time.monotonic() < end:
            r = subprocess.run([sys.executable, "-m", "gridwatch.cli", "status", "-c", str(cfg), "--interval", "0.2"],
                               capture_output=True, text=True, timeout=60)
            out = r.stdout + r.stderr
            if "last error" in out:
                break
            assert run.poll() is None, f"gridwatch run exited early ({run.returncode})"
            time.sleep(0.5)
        assert out.startswith(f"gate-box at http://127.0.0.1:{metrics_port}/metrics"), out
        cam = next(x for x in out.splitlines() if "camera/gate" in x)
        assert "offline" in cam and f"last error: connection refused by 127.0.0.1:{dead_port}" in cam, out
        _camera_panels_query_exported_metrics(metrics_port)
    finally:
        if run.poll() is None:
            os.killpg(run.pid, signal.SIGINT)
        run.wait(30)


def _camera_panels_query_exported_metrics(port: int) -> None:
    import json
    import re
    import urllib.request
    from pathlib import Path

    import time

    dash = json.loads((Path(__file__).resolve().parents[1] / "docs" / "grafana-dashboard.json").read_text())
    exprs = [t["expr"] for p in dash["panels"] if p["title"].startswith("Cameras") for t in p["targets"]]
    queried = {m for e in exprs for m in re.findall(r"\bgridwatch_[a-z0-9_]+", e)}
    assert queried, "the dashboard has no camera panel"
    deadline = time.time() + 15  # the per-camera gauges are set by the video runtime's once-a-second tick
    while True:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            text = r.read().decode()
        exported = {line.split()[2] for line in text.splitlines() if line.startswith("# TYPE ")}
        if queried <= exported or time.time() > deadline:
            break
        time.sleep(0.5)
    assert queried <= exported, f"camera panels query metrics the runtime does not export: {sorted(queried - exported)}"
