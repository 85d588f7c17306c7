"""`gridwatch console ...` and the demo's console, through the real command line."""
from __future__ import annotations

import io
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx

from gridwatch.cli import main
from gridwatch.servers._base import free_ports

ROOT = Path(__file__).resolve().parents[1]


def test_users_and_tokens_commands(tmp_path, monkeypatch, capsys):
    db = str(tmp_path / "gridwatch.db")
    monkeypatch.setenv("GRIDWATCH_PASSWORD", "a-long-password")
    assert main(["console", "--db", db, "users", "add", "ana", "--role", "operator", "--scope", "Jiangcheng/Riverside District"]) == 0
    monkeypatch.setattr(sys, "stdin", io.StringIO("another-password\n"))
    assert main(["console", "users", "add", "bo", "--role", "viewer", "--password-stdin", "--db", db]) == 0
    assert main(["console", "--db", db, "users", "list"]) == 0
    out = capsys.readouterr().out
    assert "ana" in out and "Jiangcheng/Riverside District" in out and "bo" in out and "(all regions)" in out
    assert main(["console", "--db", db, "tokens", "add", "ana", "--label", "hotline"]) == 0
    assert capsys.readouterr().out.strip().startswith("gw_")
    # mistakes: one line, no traceback
    monkeypatch.setenv("GRIDWATCH_PASSWORD", "short")
    assert main(["console", "--db", db, "users", "add", "cy", "--role", "operator"]) == 2
    assert main(["console", "--db", db, "tokens", "add", "nobody"]) == 2
    assert main(["console", "--db", db, "users", "remove", "nobody"]) == 1
    err = capsys.readouterr().err
    assert "at least 8 characters" in err and "no user 'nobody'" in err and "Traceback" not in err
    assert main(["console", "-c", str(tmp_path / "missing.toml")]) == 2
    assert "config error" in capsys.readouterr().err
    assert main(["console", "--db", db, "users", "remove", "bo"]) == 0


def test_a_taken_port_is_one_line(tmp_path):
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(1)
    try:
        r = subprocess.run([sys.executable, "-m", "gridwatch.cli", "console", "--db", str(tmp_path / "g.db"), "--port",
                            str(s.getsockname()[1])], capture_output=True, text=True, timeout=60, cwd=ROOT)
    finally:
        s.close()
    assert r.returncode == 2 and "cannot listen" in r.stderr and "Traceback" not in r.stderr


def test_the_demo_ends_in_the_console_with_desk_logins(tmp_path):
    port = free_ports(1)[0]
    proc = subprocess.Popen([sys.executable, "-m", "gridwatch.cli", "demo", "--data-dir", str(tmp_path), "--speed", "0", "--quiet",
                             "--port", str(port)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        lines = []
        deadline = time.time() + 120
        while not any("log in as town" in ln for ln in lines):
            ln = proc.stdout.readline()
            assert ln or proc.poll() is None, "demo exited: " + "".join(lines)
            lines.append(ln)
            assert time.time() < deadline
        text = "".join(lines)
        assert f"http://127.0.0.1:{port}/" in text and "log in as county" in text
        pw = {ln.split()[3]: ln.split()[5] for ln in lines if ln.strip().startswith("log in as")}
        c = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10)
        for _ in range(100):
            try:
                c.get("/api/health")
                break
            except httpx.TransportError:
                time.sleep(0.1)
        assert c.post("/login", data={"name": "county", "password": pw["county"]}).status_code in (200, 303)
        items = c.get("/api/warnings?case_state=all&per_page=200").json()["items"]
        assert len(items) >= 10 and all(w["region"].startswith("Jiangcheng/Riverside District") for w in items)
    finally:
        proc.terminate()
        proc.wait(20)
        proc.stdout.close()
