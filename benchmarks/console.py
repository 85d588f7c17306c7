"""The operator console under load: the queue page over 1,000,000 warnings, and live events to
200 browsers while warnings are raised at 100/s.

* **queue**: a store of N warnings (default 1,000,000; 1 city, 4 counties, 20 towns, 80 grid
  cells, 30 days, some cases worked) is written through ``Store.commit``; the console serves it
  (uvicorn, in this process's thread) and the first page of the queue is requested for a county
  and for a town (HTML, 50 rows, open cases, newest first), sequentially over loopback. The
  latency measured at the client is an upper bound of the server time. Counts (``/api/counts``,
  fetched by the page after it loads) are timed apart. Target: queue page p99 <= 100 ms.
* **sse**: Mosquitto + ``gridwatch run`` with the console enabled (a separate process, as
  deployed); C live clients (default 200) hold ``/events`` open; a publisher raises R warnings a
  second (default 100: each reading crosses a threshold on a new device) for S seconds. Each
  client records when each warning's event arrived; latency = arrival - publish time (same
  clock). Target: p99 <= 1 s, every event at every client.

  Beside it, the runtime's ingest rate: in each run a backlog of ``--burst`` messages x 100
  readings is published (QoS 0, queued by the broker) and timed until stored, once without and
  once with the clients (``--repeat`` runs); target: with clients >= 0.9x without. The event
  latency is taken from phases without the burst (behind a burst, a warning waits in the broker
  behind the backlog: that latency is printed apart).

``gridwatch bench console [--warnings 1000000] [--clients 200] [--rate 100] [--seconds 10] [--repeat 3] [--skip queue|sse]``
"""
from __future__ import annotations

import argparse
import asyncio
import json
import random
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

COUNTIES = [f"County {c}" for c in "ABCD"]
CITY = "Bench City"


def _regions() -> list[str]:
    return [f"{CITY}/{c}/Town {c[-1]}{t}/G-{c[-1]}{t}{g}" for c in COUNTIES for t in range(5) for g in range(4)]


def build_store(path: Path, n: int, seed: int = 0) -> float:
    from gridwatch.records import Warning, warning_id
    from gridwatch.regions import parse_path
    from gridwatch.streams.store import Store

    rng = random.Random(seed)
    regions = [parse_path(r) for r in _regions()]
    rules = [("sewer_overflow", "threshold"), ("h2s_high", "threshold"), ("flow_anomaly", "zscore"),
             ("sensor_offline", "offline"), ("illegal_dumping", "dumping"), ("hazmat_dwell", "dwell")]
    sev = ["info", "minor", "major", "critical"]
    now = int(time.time() * 1000)
    t0 = time.perf_counter()
    st = Store(path, retention_days=3650)
    batch = 50_000
    for start in range(0, n, batch):
        ws = []
        for i in range(start, min(n, start + batch)):
            ts = now - rng.randrange(30 * 86400_000)
            rule, kind = rules[i % len(rules)]
            src = f"dev-{rng.randrange(20_000):05d}"
            cleared = rng.random() < 0.7
            ws.append(Warning(warning_id(src, rule, 0, ts), rule, kind, sev[rng.randrange(4)], src, regions[rng.randrange(len(regions))],
                              "cleared" if cleared else "active", ts, ts + 60_000, ts + 120_000 if cleared else None,
                              rng.random() * 5, f"{rule} at {src}", None, {"metric": "water_level"}))
        st.commit(warnings=ws)
        print(f"  stored {min(n, start + batch):,} / {n:,} warnings", end="\r", flush=True)
    st.close()
    print()
    return time.perf_counter() - t0


def _pct(xs: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(xs), q)) if xs else float("nan")


def bench_queue(n: int, requests: int, tmp: Path) -> dict:
    import httpx

    from gridwatch.config import parse
    from gridwatch.console.server import Console
    from gridwatch.streams.cases import CaseStore, QueueFilter, Scope, User

    db = tmp / "var" / "gridwatch.db"
    print(f"queue: writing {n:,} warnings through Store.commit ...")
    build_s = build_store(db, n)
    t0 = time.perf_counter()
    cs = CaseStore(db)  # creates the console's indexes on the warnings table
    index_s = time.perf_counter() - t0
    cs.add_user("bench", "bench-password", "admin", "")
    boss = User("bench", "admin", "")
    # some worked cases, so the join has rows to look at
    some = cs.queue(Scope(""), QueueFilter(per_page=200))["items"]
    for w in some[:200]:
        cs.act(boss, w["id"], "acknowledge")
    print(f"queue: store written in {build_s:.1f} s, indexes in {index_s:.1f} s; serving ...")
    cfg = parse({"site": {"data_dir": str(tmp / "var")}, "console": {"port": 0, "escalate_overdue": False}}, base_dir=tmp)
    con = Console(cfg, mqtt=False, poll=False)
    port = con.start_thread(port=0)
    base = f"http://127.0.0.1:{port}"
    out = {"warnings": n, "store_write_s": round(build_s, 1), "index_s": round(index_s, 1)}
    try:
        c = httpx.Client(base_url=base, timeout=30)
        for _ in range(100):
            try:
                c.get("/api/health")
                break
            except httpx.TransportError:
                time.sleep(0.05)
        r = c.post("/login", data={"name": "bench", "password": "bench-password"})
        assert r.status_code in (200, 303), r.status_code
        cases = {"county": f"/?region={CITY}/County B", "town": f"/?region={CITY}/County C/Town C3",
                 "all, critical": "/?severity=critical", "counts (county)": f"/api/counts?region={CITY}/County B"}
        for label, url in cases.items():
            counts = label.startswith("counts")
            reps = requests if not counts else 20
            times = []
            for i in range(reps + 5):
                t = time.perf_counter()
                r = c.get(url)
                dt = time.perf_counter() - t
                assert r.status_code == 200, (url, r.status_code, r.text[:300])
                if counts and i == 0:
                    out[label + " first (uncached)"] = {"ms": round(dt * 1000, 1)}
                    print(f"queue {label:16} first request (counted) {dt * 1000:9.1f} ms")
                if i >= 5:  # warm-up
                    times.append(dt * 1000)
            rows = r.text.count("<tr class=") if not counts else None
            label = label + " cached" if counts else label
            out[label] = {"p50_ms": round(_pct(times, 50), 2), "p99_ms": round(_pct(times, 99), 2), "n": len(times), "rows": rows}
            print(f"queue {label:16} p50 {out[label]['p50_ms']:7.2f} ms  p99 {out[label]['p99_ms']:7.2f} ms  ({len(times)} requests"
                  f"{'' if rows is None else f', {rows} rows'})" + ("   target p99 <= 100 ms" if not counts else ""))
    finally:
        con.stop()
    return out


_RAISED = re.compile(rb'"event": "raised", "id": "[^"]*", "region": "[^"]*", "severity": "[^"]*", "rule": "[^"]*", "source": "(bench-\d+)"')


async def _sse_client(host: str, port: int, cookie: str, seen: dict, ready: asyncio.Event, counter: list, stop: asyncio.Event) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(f"GET /events HTTP/1.1\r\nHost: {host}\r\nCookie: {cookie}\r\nAccept: text/event-stream\r\n\r\n".encode())
    await writer.drain()
    counter[0] += 1
    if counter[0] == counter[1]:
        ready.set()
    try:
        while not stop.is_set():
            chunk = await reader.read(65536)
            if not chunk:
                break
            t = time.time()
            for m in _RAISED.finditer(chunk):  # a byte search, so that 200 clients in one process keep up
                seen.setdefault(m.group(1).decode(), []).append(t)
    finally:
        writer.close()


def bench_sse(clients: int, rate: float, seconds: float, tmp: Path, burst_messages: int = 5000, repeat: int = 3) -> dict:
    import httpx
    import paho.mqtt.client as mqtt

    from gridwatch.cli import main as cli_main
    from gridwatch.servers._base import free_ports
    from gridwatch.servers.mosquitto import MosquittoServer

    mq = MosquittoServer(max_queued_messages=1_000_000)  # the ingest burst waits in the broker, none dropped
    mq.start()
    console_port = free_ports(1)[0]
    cfg = tmp / "sse.toml"
    cfg.write_text(f"""
[site]
name = "bench-console"
data_dir = "{(tmp / 'sse').as_posix()}"
[mqtt]
host = "127.0.0.1"
port = {mq.port}
client_id = "bench-console-ingest"
[alerts_mqtt]
enabled = false
[regions]
default = "{CITY}/County A/Town A0/G-A00"
[[rules]]
name = "bench_threshold"
kind = "threshold"
metrics = ["water_level"]
severity = "major"
params = {{ above = 10.0, clear_at = 5.0 }}
[console]
enabled = true
port = {console_port}
escalate_overdue = false
sse_max_clients = {clients + 10}
""")
    import os

    os.environ["GRIDWATCH_PASSWORD"] = "bench-password"
    cli_main(["console", "-c", str(cfg), "users", "add", "bench", "--role", "viewer", "--scope", CITY])
    log = open(tmp / "sse-run.log", "w+")
    proc = subprocess.Popen([sys.executable, "-m", "gridwatch.cli", "run", "-c", str(cfg), "--quiet"], stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{console_port}"
    out: dict = {"clients": clients, "rate_per_s": rate, "seconds": seconds}
    try:
        deadline = time.time() + 90
        while True:
            if proc.poll() is not None:
                raise RuntimeError("gridwatch run exited: " + (tmp / "sse-run.log").read_text()[-2000:])
            try:
                if httpx.get(base + "/api/health", timeout=1).status_code == 200 and "gridwatch running" in (tmp / "sse-run.log").read_text():
                    break
            except httpx.TransportError:
                pass
            if time.time() > deadline:
                raise RuntimeError("console did not start: " + (tmp / "sse-run.log").read_text()[-2000:])
            time.sleep(0.2)
        r = httpx.post(base + "/login", data={"name": "bench", "password": "bench-password"})
        cookie = "gw_session=" + r.cookies["gw_session"]
        pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="bench-console-pub", protocol=mqtt.MQTTv5)
        pub.connect("127.0.0.1", mq.port)
        pub.loop_start()
        from gridwatch.streams.store import Store

        db = tmp / "sse" / "gridwatch.db"
        loader = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="bench-console-load", protocol=mqtt.MQTTv5)
        loader.connect("127.0.0.1", mq.port)
        loader.loop_start()

        def ingest_burst(tag: str) -> float:
            """Readings/s the runtime stores while the phase runs: a backlog of burst_messages x 100
            readings (QoS 0, queued by the broker) from first publish until the store holds them."""
            st = Store(db)
            base_n = st.count_readings()
            want = base_n + burst_messages * 100
            t0_s = time.time() - 3600
            burst = [json.dumps([{"ts": t0_s + (i // 500) * 0.1 + k * 0.001, "water_level": 1.0} for k in range(100)])
                     for i in range(burst_messages)]  # fresh devices and times each phase: nothing is a duplicate
            t = time.perf_counter()
            for i, payload in enumerate(burst):
                loader.publish(f"devices/generic/sewer_level/load-{tag}-{i % 500:03d}", payload, qos=0)
            while st.count_readings() < want:
                if time.perf_counter() - t > 120:
                    raise RuntimeError("the ingest burst was not stored within 120 s")
                time.sleep(0.01)
            return burst_messages * 100 / (time.perf_counter() - t)

        def phase(n_clients: int, first_seq: int, burst_on: bool = True) -> dict:
            sent: dict[str, float] = {}
            seen: dict[str, list[float]] = {}
            res: dict = {}

            async def run() -> None:
                ready, stop = asyncio.Event(), asyncio.Event()
                counter = [0, n_clients]
                tasks = [asyncio.create_task(_sse_client("127.0.0.1", console_port, cookie, seen, ready, counter, stop))
                         for _ in range(n_clients)]
                if n_clients:
                    await asyncio.wait_for(ready.wait(), 30)
                    await asyncio.sleep(1.0)  # every stream is open on the server side
                n = int(rate * seconds)
                t_start = time.perf_counter()
                loop = asyncio.get_running_loop()
                load = loop.run_in_executor(None, ingest_burst, f"p{first_seq}") if burst_on else None
                for i in range(first_seq, first_seq + n):
                    due = t_start + (i - first_seq) / rate
                    delay = due - time.perf_counter()
                    if delay > 0:
                        await asyncio.sleep(delay)
                    dev = f"bench-{i:06d}"
                    sent[dev] = time.time()
                    await loop.run_in_executor(None, lambda d=dev: pub.publish(f"devices/generic/sewer_level/{d}",
                                                                               json.dumps({"water_level": 12.0}), qos=1))
                if load is not None:
                    res["ingest_readings_per_s"] = await load
                await asyncio.sleep(3.0)  # the tail
                stop.set()
                for t in tasks:
                    t.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)

            asyncio.run(run())
            lat = [(t - sent[d]) * 1000 for d, ts in seen.items() if d in sent for t in ts]
            res.update({"clients": n_clients, "published": len(sent), "deliveries": len(lat),
                        "expected_deliveries": len(sent) * n_clients, "p50_ms": round(_pct(lat, 50), 1),
                        "p99_ms": round(_pct(lat, 99), 1), "max_ms": round(max(lat), 1) if lat else None})
            return res

        # alternate runs without and with the clients; the ratio is the median of the pairs' ratios
        # each run: the live clients alone (event latency), then ingest bursts without / with the clients
        pairs, clean = [], []
        for r in range(repeat):
            lone = phase(clients, 3 * r * 100_000, burst_on=False)
            clean.append(lone)
            print(f"sse: run {r + 1}/{repeat}: {clients} clients, warnings at {rate:g}/s: events p50 {lone['p50_ms']} ms, "
                  f"p99 {lone['p99_ms']} ms, {lone['deliveries']:,} of {lone['expected_deliveries']:,} delivered")
            base_phase = phase(0, (3 * r + 1) * 100_000)
            res = phase(clients, (3 * r + 2) * 100_000)
            pairs.append((base_phase, res))
            print(f"sse: run {r + 1}/{repeat}: ingest burst {base_phase['ingest_readings_per_s']:,.0f} readings/s without clients, "
                  f"{res['ingest_readings_per_s']:,.0f} with {clients} (events behind the burst: p99 {res['p99_ms']} ms, "
                  f"{res['deliveries']:,} of {res['expected_deliveries']:,} delivered)")
        loader.loop_stop()
        loader.disconnect()
        pub.loop_stop()
        pub.disconnect()
        ratios = sorted(b["ingest_readings_per_s"] / a["ingest_readings_per_s"] for a, b in pairs)
        ratio = statistics.median(ratios)
        base_phase = {"ingest_readings_per_s": statistics.median(a["ingest_readings_per_s"] for a, _ in pairs)}
        res = {"clients": clients, "published": sum(b["published"] for b in clean),
               "deliveries": sum(b["deliveries"] for b in clean), "expected_deliveries": sum(b["expected_deliveries"] for b in clean),
               "p50_ms": statistics.median(b["p50_ms"] for b in clean), "p99_ms": max(b["p99_ms"] for b in clean),
               "max_ms": max(b["max_ms"] or 0 for b in clean),
               "p99_ms_behind_burst": max(b["p99_ms"] for _, b in pairs),
               "ingest_readings_per_s": statistics.median(b["ingest_readings_per_s"] for _, b in pairs),
               "ingest_ratios": [round(x, 3) for x in ratios]}
        out.update(res)
        out.update({"ingest_no_clients_readings_per_s": round(base_phase["ingest_readings_per_s"]),
                    "ingest_ratio_with_clients": round(ratio, 3)})
        lat_ok = res["deliveries"] == res["expected_deliveries"]
        print(f"sse: {clients} clients, {res['published']} warnings raised at {rate:g}/s in {repeat} runs: {res['deliveries']:,} of "
              f"{res['expected_deliveries']:,} events delivered{'' if lat_ok else ' (MISSING SOME)'}; publish -> event at the client "
              f"p50 {res['p50_ms']} ms (median run), p99 {res['p99_ms']} ms (worst run), max {res['max_ms']} ms   target p99 <= 1000 ms")
        print(f"sse: ingest during the runs (medians) {res['ingest_readings_per_s']:,.0f} readings/s with {clients} clients vs "
              f"{base_phase['ingest_readings_per_s']:,.0f} without = {ratio:.2f}x (pairs: {', '.join(f'{x:.2f}' for x in ratios)})   target >= 0.90x")
        health = httpx.get(base + "/api/health", cookies={"gw_session": cookie.split("=", 1)[1]}).json()
        out["console_counters"] = health.get("counters", {})
        print(f"sse: console counters {json.dumps(out['console_counters'])}")
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
        mq.stop()
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="gridwatch bench console", description=__doc__.split("\n\n")[0])
    p.add_argument("--warnings", type=int, default=1_000_000)
    p.add_argument("--requests", type=int, default=200, help="requests per queue case")
    p.add_argument("--clients", type=int, default=200)
    p.add_argument("--rate", type=float, default=100.0, help="warnings raised per second")
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--repeat", type=int, default=3, help="pairs of SSE runs without / with clients (default 3)")
    p.add_argument("--burst", type=int, default=5000, help="ingest load per phase: messages of 100 readings (default 5000)")
    p.add_argument("--skip", choices=["queue", "sse"], action="append", default=[])
    p.add_argument("--json", help="write the figures here")
    a = p.parse_args(argv)
    res = {}
    with tempfile.TemporaryDirectory(prefix="gridwatch-bench-console-") as d:
        tmp = Path(d)
        if "queue" not in a.skip:
            res["queue"] = bench_queue(a.warnings, a.requests, tmp)
        if "sse" not in a.skip:
            res["sse"] = bench_sse(a.clients, a.rate, a.seconds, tmp, a.burst, a.repeat)
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=1))
    ok = True
    if "queue" in res:
        ok &= all(v["p99_ms"] <= 100 for k, v in res["queue"].items() if isinstance(v, dict) and not k.startswith("counts"))
    if "sse" in res:
        ok &= res["sse"]["p99_ms"] <= 1000 and res["sse"]["deliveries"] == res["sse"]["expected_deliveries"]
        ok &= res["sse"]["ingest_ratio_with_clients"] >= 0.9
    print("targets met" if ok else "targets NOT met")
    return 0
