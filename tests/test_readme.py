"""The README's "Then" walk-through, run as written: its own code blocks, against a real Mosquitto.

The blocks are taken from README.md (each follows a ``<!-- step: NAME -->`` marker) and run with
bash in the repository's folder, with this test run's virtual environment first on PATH (the
project's .venv under ./dev.sh test: a fresh venv per run would cost minutes). Only the ports
differ from what a newcomer types: the broker's port (1883 in the README) is replaced by a free
one, and examples/edge.toml reads it, the metrics port and the data folder from
GRIDWATCH_MQTT_PORT, GRIDWATCH_METRICS_PORT and GRIDWATCH_DATA_DIR.

The same run checks docs/grafana-dashboard.json against what the runtime really exports.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gridwatch.servers._base import free_ports, port_open

ROOT = Path(__file__).resolve().parents[1]
STEPS = ["broker", "check", "run", "subscribe", "publish", "see", "clear"]
BACKGROUND = {"broker", "run", "subscribe"}


def readme_steps() -> dict[str, str]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    m = re.search(r"^## Then\b.*?(?=^## )", text, re.S | re.M)
    assert m, "README.md has no '## Then' section"
    steps = dict(re.findall(r"<!-- step: (\w+) -->\s*```bash\n(.*?)```", m.group(0), re.S))
    return steps


def test_readme_then_section_has_every_step():
    assert list(readme_steps()) == STEPS


class _Proc:
    def __init__(self, name: str, script: str, env: dict, out: Path) -> None:
        self.name, self.out = name, out
        self.f = open(out, "wb")
        self.p = subprocess.Popen(["bash", "-c", script], cwd=ROOT, env=env, stdout=self.f, stderr=subprocess.STDOUT,
                                  start_new_session=True)

    def text(self) -> str:
        return self.out.read_text(errors="replace")

    def wait_for(self, what: str, timeout: float) -> str:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            t = self.text()
            if what in t:
                return t
            if self.p.poll() is not None:
                break
            time.sleep(0.1)
        raise AssertionError(f"{self.name}: {what!r} did not appear within {timeout:g} s; output:\n{self.text()[-3000:]}")

    def stop(self, sig=signal.SIGTERM, timeout: float = 30) -> int | None:
        if self.p.poll() is None:
            try:
                os.killpg(self.p.pid, sig)
            except ProcessLookupError:
                pass
            try:
                self.p.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.p.pid, signal.SIGKILL)
                self.p.wait(5)
        self.f.close()
        return self.p.returncode


def in_ci() -> bool:  # as in conftest.py: under CI a missing server fails the test
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def _need(binary: str) -> None:
    path = os.environ.get("PATH", "") + ":/usr/sbin:/sbin"
    if shutil.which(binary, path=path) is None:
        msg = f"`{binary}` is not installed (Debian packages mosquitto, mosquitto-clients; ./dev.sh setup installs them)"
        if in_ci():
            pytest.fail(msg, pytrace=False)
        pytest.skip(msg)


def _run(script: str, env: dict, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "-c", script], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.mark.timeout(600)  # a cold Numba cache compiles the kernels in `run` first
def test_readme_walkthrough_runs_as_written(tmp_path):
    for b in ("mosquitto", "mosquitto_sub", "mosquitto_pub"):
        _need(b)
    steps = readme_steps()
    broker_port, metrics_port = free_ports(2)
    env = {**os.environ,
           "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}:/usr/sbin:/sbin",
           "GRIDWATCH_MQTT_PORT": str(broker_port), "GRIDWATCH_METRICS_PORT": str(metrics_port),
           "GRIDWATCH_DATA_DIR": str(tmp_path / "data")}
    for k in ("GRIDWATCH_MQTT_HOST", "GRIDWATCH_MQTT_USERNAME", "GRIDWATCH_MQTT_PASSWORD"):
        env.pop(k, None)
    block = {k: v.replace("1883", str(broker_port)) for k, v in steps.items()}
    procs: dict[str, _Proc] = {}
    try:
        procs["broker"] = _Proc("broker", block["broker"], env, tmp_path / "broker.out")
        end = time.monotonic() + 10
        while not port_open(broker_port):
            assert time.monotonic() < end and procs["broker"].p.poll() is None, \
                f"mosquitto did not start: {procs['broker'].text()[-2000:]}"
            time.sleep(0.05)

        r = _run(block["check"], env)
        assert r.returncode == 0 and ": ok" in r.stdout, r.stdout + r.stderr
        assert not (tmp_path / "data").exists(), "check-config created the data folder"

        procs["run"] = _Proc("run", block["run"], env, tmp_path / "run.out")
        procs["run"].wait_for("mqtt connected", 300)  # a cold Numba cache compiles the kernels first
        procs["run"].wait_for("gridwatch running", 30)
        procs["subscribe"] = _Proc("subscribe", block["subscribe"], env, tmp_path / "sub.out")
        # mosquitto_sub says nothing once subscribed: probe until it receives something
        end = time.monotonic() + 20
        while "readme-probe" not in procs["subscribe"].text():
            assert time.monotonic() < end, f"mosquitto_sub never subscribed: {procs['subscribe'].text()}"
            _run(f"mosquitto_pub -p {broker_port} -t gridwatch/warnings/readme-probe -m probe", env)
            time.sleep(0.2)

        r = _run(block["publish"], env)
        assert r.returncode == 0, r.stderr
        sub = procs["subscribe"].wait_for("sewer_overflow", 20)
        first = next(x for x in sub.splitlines() if "sewer_overflow" in x)
        topic, payload = first[:first.index(" {")], first[first.index(" {") + 1:]  # the topic has spaces
        assert topic == "gridwatch/warnings/Jiangcheng/Riverside District/East Town/E-02/sewer_overflow"
        event = json.loads(payload)
        assert event["event"] == "raised" and event["warning"]["source"] == "aq-sewer-002"
        assert event["warning"]["value"] == pytest.approx(2.62)
        out = procs["run"].wait_for("RAISED", 10)
        assert re.search(r"RAISED +CRITICAL +sewer_overflow +aq-sewer-002 +value=2\.62 .*overflow imminent", out), out

        r = _run(block["see"], env)
        assert r.returncode == 0, r.stdout + r.stderr
        assert re.search(r"active +critical +sewer_overflow +aq-sewer-002", r.stdout), r.stdout
        assert "1 warning(s)" in r.stdout
        mqtt_line = next(line for line in r.stdout.splitlines() if line.strip().startswith("mqtt"))
        assert "1 messages" in mqtt_line and "connected" in mqtt_line and "rejected 0" in mqtt_line, r.stdout

        _dashboard_queries_only_exported_metrics(metrics_port)

        r = _run(block["clear"], env)
        assert r.returncode == 0, r.stderr
        out = procs["run"].wait_for("CLEARED", 20)
        line = next(x for x in out.splitlines() if "CLEARED" in x)
        assert "cleared after" in line, line
        procs["subscribe"].wait_for('"event":"cleared"', 10)

        # Ctrl-C: a clean stop, not logged as a warning
        assert procs["run"].stop(signal.SIGINT) == 0, procs["run"].text()[-3000:]
        tail = procs["run"].text().split("CLEARED", 1)[1]
        assert "gridwatch stopped" in tail and " WARNING " not in tail and "Traceback" not in tail, tail
    finally:
        for p in reversed(list(procs.values())):
            p.stop()


def _dashboard_queries_only_exported_metrics(metrics_port: int) -> None:
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as r:
        text = r.read().decode()
    exported = set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            exported.add(line.split()[2])
        elif line and not line.startswith("#"):
            exported.add(re.split(r"[{ ]", line, 1)[0])
    dash = json.loads((ROOT / "docs" / "grafana-dashboard.json").read_text())
    # camera panels: checked against a run with a camera (tests/test_status.py)
    exprs = [t["expr"] for p in dash["panels"] if not p["title"].startswith("Cameras") for t in p["targets"]]
    exprs += [v["query"] for v in dash["templating"]["list"] if v.get("type") == "query"]
    queried = {m for e in exprs for m in re.findall(r"\bgridwatch_[a-z0-9_]+", e)}
    assert queried, "the dashboard queries no gridwatch metric"
    assert queried <= exported, f"dashboard queries metrics the runtime does not export: {sorted(queried - exported)}"
