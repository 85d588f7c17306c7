"""Cluster mode throughput: Kafka -> faust worker(s) -> processors -> sinks, in one run.

* **columnar worker**: ``gridwatch worker`` processes (the real CLI, uvloop) on a topic with
  ``--partitions`` partitions; the standard sensor rule set of ``benchmarks/processors.py``
  (threshold, rate_of_change, zscore, flatline, offline) over ``--devices`` water-level sensors,
  warnings through the merge agent to the warnings topic and QuestDB. Readings are the
  realistic edge-sized messages of the forwarder (``--rows-per-message``). Rate = readings /
  (last batch - first batch), over all workers; the workers are up and own their partitions
  before the data is produced (the producer runs during the measurement, as in production).
* **naive baseline**: the same worker started with ``--naive``: the textbook Faust agent, one
  JSON reading per Kafka message, a threshold rule (only one of the five) in Python, per-series
  state in a Faust table. Same broker, same run.
* **2 workers vs 1** on the same data and partitions.
* **time-series sink**: ``InfluxSink.write_readings`` (encode + batch 5000 lines + POST) vs raw
  keep-alive POSTs of the same lines pre-built into 5000-line bodies, to the same QuestDB, like
  for like: sink with gzip (level 1) vs raw bodies pre-compressed at level 1, and both without
  gzip; medians of interleaved rounds. ``--only sink`` runs just this part (no Kafka).

Everything runs on this machine: Kafka's and QuestDB's JVMs share its cores with the workers and
the producer, so the 2-vs-1 ratio is bounded by the cores left over (see the printed ``cpus``).

``python -m gridwatch.benchmarks.cluster --readings 2000000 --devices 20000 --partitions 2``
"""
from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from gridwatch.benchmarks.processors import STANDARD, generate

TARGETS = {"vs_naive": 10.0, "two_vs_one": 1.5, "sink_vs_raw": 0.8}


def _cfg_text(bootstrap: str, qdb_url: str | None, tag: str, partitions: int, naive: bool) -> str:
    rules = ""
    for kind, params in STANDARD.items():
        rules += f'\n[[rules]]\nname = "{kind}"\nkind = "{kind}"\n'
        if kind != "offline":
            rules += 'metrics = ["water_level"]\n'
        rules += "[rules.params]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in params.items())
    influx = (f'\n[influx]\nurl = "{qdb_url}"\ntoken = "t"\nwarnings_measurement = "bench_warnings_{tag}"\n'
              f'questdb_dedup = true\n') if qdb_url else ""
    return f"""
[kafka]
bootstrap_servers = "{bootstrap}"
readings_topic = "bench-r-{tag}"
warning_events_topic = "bench-we-{tag}"
warnings_topic = "bench-w-{tag}"
partitions = {partitions}
linger_ms = 5

[worker]
app_id = "bench-{tag}"
batch_messages = 200
batch_within_s = 0.05
tick_interval_s = 60.0
session_timeout_s = 6.0
heartbeat_s = 0.5
{influx}
[log]
level = "warning"
{rules}"""


def _stats(p: Path) -> dict[str, Any]:
    try:
        return json.loads(p.read_text())
    except (OSError, ValueError):
        return {}


def run_workers(bootstrap: str, qdb_url: str | None, workers: int, partitions: int, messages, total: int,
                naive: bool, workdir: Path, timeout: float) -> dict[str, Any]:
    """Start ``workers`` worker processes on fresh topics, wait until they own all partitions,
    produce ``messages`` [(partition or None, key, value)], wait until ``total`` readings are done."""
    from gridwatch.config import load
    from gridwatch.streams.cluster import ensure_topics

    tag = uuid.uuid4().hex[:8]
    cfg_path = workdir / f"bench-{tag}.toml"
    cfg_path.write_text(_cfg_text(bootstrap, qdb_url, tag, partitions, naive))
    cfg = load(cfg_path)
    asyncio.run(ensure_topics(cfg))
    stats = [workdir / f"stats-{tag}-{i}.json" for i in range(workers)]
    cmd = [sys.executable, "-m", "gridwatch.cli", "worker", "-c", str(cfg_path)] + (["--naive"] if naive else [])
    procs = [subprocess.Popen(cmd + ["--stats-file", str(s)], stdout=open(workdir / f"log-{tag}-{i}.txt", "wb"),
                              stderr=subprocess.STDOUT, start_new_session=True) for i, s in enumerate(stats)]
    try:
        deadline = time.monotonic() + 90
        while True:
            ss = [_stats(s) for s in stats]
            owned = [set(s.get("assigned") or []) for s in ss]
            if all(owned) and set().union(*owned) == set(range(partitions)) and sum(map(len, owned)) == partitions:
                break
            if any(p.poll() is not None for p in procs):
                raise RuntimeError(f"a worker exited; see {workdir}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"workers did not take their partitions: {owned}")
            time.sleep(0.2)
        t_prod = time.time()
        asyncio.run(_produce(bootstrap, cfg.kafka.readings_topic, messages))
        prod_s = time.time() - t_prod
        deadline = time.monotonic() + timeout
        while sum(_stats(s).get("readings", 0) for s in stats) < total:
            if time.monotonic() > deadline:
                raise TimeoutError(f"only {sum(_stats(s).get('readings', 0) for s in stats)} of {total} readings in {timeout}s")
            time.sleep(0.2)
        time.sleep(1.2)  # final stats
        ss = [_stats(s) for s in stats]
        first = min(s["first_batch_t"] for s in ss if "first_batch_t" in s)
        last = max(s["last_batch_t"] for s in ss if "last_batch_t" in s)
        n = sum(s.get("readings", 0) for s in ss)
        return {"workers": workers, "readings": n, "seconds": last - first, "rate": n / (last - first),
                "per_worker": [s.get("readings", 0) for s in ss], "produce_s": prod_s,
                "warning_events": sum(s.get("warning_events_sent", 0) for s in ss),
                "snapshot_bytes": max((s.get("snapshot_bytes", 0) for s in ss), default=0)}
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
        for p in procs:
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)


async def _produce(bootstrap: str, topic: str, messages) -> None:
    from aiokafka import AIOKafkaProducer

    prod = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True, linger_ms=5,
                            max_batch_size=1024 * 1024, max_request_size=8 * 1024 * 1024)
    await prod.start()
    try:
        futs = [await prod.send(topic, value=v, key=k, partition=p) for p, k, v in messages]
        await asyncio.gather(*futs)
    finally:
        await prod.stop()


def columnar_messages(readings: int, devices: int, partitions: int, rows_per_message: int):
    from gridwatch.ingest.kafka_forward import KafkaForwarder
    from gridwatch.ingest.wire import DeviceInfo

    data = generate(devices, readings)
    enc = KafkaForwarder.__new__(KafkaForwarder)
    enc.partitions, enc._part, enc.per_device, enc.max_rows = partitions, {}, False, rows_per_message
    devs = [DeviceInfo(f"lvl-{i:06d}", "acme", "sewer_level") for i in range(devices)]
    ts = data.ts + 1_750_000_000_000
    msgs = []
    # the edge flushes whatever arrived: chunks of rows_per_message * partitions readings
    step = rows_per_message * partitions
    for s in range(0, len(data), step):
        sl = slice(s, s + step)
        msgs += enc.encode_readings(devs, ["water_level"], data.device[sl], np.zeros(len(data.ts[sl]), np.int64),
                                    ts[sl], data.value[sl])
    return msgs, len(data)


def naive_messages(readings: int, devices: int):
    data = generate(devices, readings)
    out = []
    for d, t, v in zip(data.device.tolist(), (data.ts + 1_750_000_000_000).tolist(), data.value.tolist()):
        did = f"lvl-{d:06d}"
        out.append((None, did.encode(), json.dumps({"d": did, "m": "water_level", "t": t, "v": v}).encode()))
    return out, len(data)


def sink_vs_raw(url: str, rows: int, devices: int, repeats: int = 3, gzip_level: int = 1,
                settle_s: float = 1.0) -> dict[str, Any]:
    """Points/s of ``InfluxSink.write_readings`` (50k-row calls, then flush) vs raw keep-alive POSTs
    of the same lines pre-built into 5000-line bodies, each with and without gzip (raw bodies
    pre-compressed at the sink's level, so both sides make the server inflate the same way; the
    raw side does not pay encoding or compression, the sink pays both). Rounds interleave the
    four runs (alternating which side goes first, with a pause before each run so the server's
    background WAL apply of one run does not land on the next); medians over ``repeats``
    rounds; every run writes a fresh table."""
    import statistics
    import zlib

    from gridwatch.streams.influx_sink import InfluxSink

    data = generate(devices, rows)
    ids = np.array([f"lvl-{i:06d}" for i in range(devices)], object)[data.device]
    ts = data.ts + 1_750_000_000_000
    host, port = url.split("//", 1)[1].rsplit(":", 1)

    cpu: dict[str, list[float]] = {}

    def sink_run(gz: bool) -> float:
        tag = uuid.uuid4().hex[:6]
        with InfluxSink(url, "t", "gridwatch", "gridwatch", readings_measurement=f"bench_sink_{tag}",
                        gzip=gz, gzip_level=gzip_level) as sink:
            t0, c0 = time.perf_counter(), time.process_time()
            for s in range(0, len(data), 50_000):
                sink.write_readings(ids[s:s + 50_000], "water_level", ts[s:s + 50_000], data.value[s:s + 50_000])
            sink.flush()
            dt, dc = time.perf_counter() - t0, time.process_time() - c0
        if sink.stats.lines_written != len(data):
            raise RuntimeError(f"sink wrote {sink.stats.lines_written} of {len(data)} lines")
        cpu.setdefault(f"sink_gzip_{gz}", []).append(dc / len(data) * 1e6)
        return len(data) / dt

    def raw_run(gz: bool) -> float:
        tag = uuid.uuid4().hex[:6]
        lines = [f"bench_raw_{tag},device={d},metric=water_level value={v!r} {t}"
                 for d, v, t in zip(ids.tolist(), data.value.tolist(), ts.tolist())]
        bodies = ["\n".join(lines[i:i + 5000]).encode() for i in range(0, len(lines), 5000)]
        headers = {"Authorization": "Token t", "Content-Type": "text/plain; charset=utf-8"}
        if gz:
            bodies = [zlib.compress(b, gzip_level, wbits=31) for b in bodies]
            headers["Content-Encoding"] = "gzip"
        conn = http.client.HTTPConnection(host, int(port), timeout=30)
        t0, c0 = time.perf_counter(), time.process_time()
        for b in bodies:
            conn.request("POST", "/api/v2/write?org=gridwatch&bucket=gridwatch&precision=ms", body=b, headers=headers)
            r = conn.getresponse()
            r.read()
            if r.status >= 300:
                raise RuntimeError(f"raw POST answered {r.status}")
        dt, dc = time.perf_counter() - t0, time.process_time() - c0
        conn.close()
        cpu.setdefault(f"raw_gzip_{gz}", []).append(dc / len(data) * 1e6)
        return len(data) / dt

    runs: dict[str, list[float]] = {"sink_gzip_True": [], "sink_gzip_False": [], "raw_gzip_True": [], "raw_gzip_False": []}
    for i in range(repeats):
        for gz in (True, False):
            for side in (("sink", "raw") if i % 2 == 0 else ("raw", "sink")):  # alternate who goes first
                time.sleep(settle_s)  # the server applies the previous run's WAL in the background
                runs[f"{side}_gzip_{gz}"].append(sink_run(gz) if side == "sink" else raw_run(gz))
    out: dict[str, Any] = {"rows": len(data), "repeats": repeats, "gzip_level": gzip_level, "runs": runs}
    out.update({k: statistics.median(v) for k, v in runs.items()})
    out["client_cpu_us_per_point"] = {k: statistics.median(v) for k, v in cpu.items()}
    out["raw_post"] = out["raw_gzip_False"]
    return out


def _sink_ratios(sink: dict[str, Any]) -> dict[str, float]:
    return {"sink_vs_raw": sink["sink_gzip_True"] / sink["raw_gzip_True"],
            "sink_nogzip_vs_raw": sink["sink_gzip_False"] / sink["raw_gzip_False"],
            "sink_gzip_vs_raw_plain": sink["sink_gzip_True"] / sink["raw_gzip_False"]}


def _sink_lines(sink: dict[str, Any], q: dict[str, float]) -> list[str]:
    ok = lambda v, t: "ok" if v >= t else "BELOW TARGET"  # noqa: E731
    t = TARGETS["sink_vs_raw"]
    c = sink["client_cpu_us_per_point"]
    return [
        f"  sink       : medians of {sink['repeats']} interleaved rounds, {sink['rows']:,} points each; raw = "
        f"pre-built 5000-line bodies (no encoding cost), same server",
        f"    gzip (level {sink['gzip_level']}) : sink {sink['sink_gzip_True']:>10,.0f} points/s, "
        f"raw {sink['raw_gzip_True']:>10,.0f} points/s (raw bodies pre-compressed)",
        f"    no gzip        : sink {sink['sink_gzip_False']:>10,.0f} points/s, raw {sink['raw_gzip_False']:>10,.0f} points/s",
        f"    client CPU     : sink {c['sink_gzip_True']:.2f} / {c['sink_gzip_False']:.2f} us/point (gzip / plain: encode,"
        f" compress, HTTP), raw {c['raw_gzip_True']:.2f} / {c['raw_gzip_False']:.2f} us/point (HTTP only)",
        f"  ratio sink vs raw POST    : {q['sink_vs_raw']:8.2f}x gzip vs gzip  (target >= {t:g}x) {ok(q['sink_vs_raw'], t)}",
        f"                              {q['sink_nogzip_vs_raw']:8.2f}x plain vs plain (target >= {t:g}x) "
        f"{ok(q['sink_nogzip_vs_raw'], t)}",
        f"                              {q['sink_gzip_vs_raw_plain']:8.2f}x sink gzip vs raw plain (not like for like: "
        f"the sink also compresses, the server also inflates)",
    ]


def _print_sink(sink: dict[str, Any], as_json: bool, wall_s: float) -> int:
    r = {"sink": sink, "ratios": _sink_ratios(sink), "wall_s": wall_s}
    if as_json:
        print(json.dumps(r, indent=1))
        return 0
    print("\n".join(_sink_lines(sink, r["ratios"])))
    print(f"  wall {wall_s:.0f} s")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="gridwatch bench cluster", description=__doc__.split("\n\n")[0])
    ap.add_argument("--readings", type=int, default=2_000_000)
    ap.add_argument("--naive-readings", type=int, default=60_000)
    ap.add_argument("--devices", type=int, default=20_000)
    ap.add_argument("--partitions", type=int, default=2)
    ap.add_argument("--rows-per-message", type=int, default=5_000)
    ap.add_argument("--sink-rows", type=int, default=500_000)
    ap.add_argument("--sink-repeats", type=int, default=3, help="interleaved sink/raw rounds (medians)")
    ap.add_argument("--bootstrap", help="use this Kafka instead of starting one")
    ap.add_argument("--questdb-url", help="use this QuestDB instead of starting one")
    ap.add_argument("--only", choices=["sink"], help="run only this part (no Kafka is started)")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)
    started = []
    t_start = time.monotonic()
    try:
        if a.only == "sink":
            bootstrap = None
        elif a.bootstrap:
            bootstrap = a.bootstrap
        else:
            from gridwatch.servers.kafka import KafkaServer

            k = KafkaServer()
            k.start()
            started.append(k)
            bootstrap = k.bootstrap_servers
        if a.questdb_url:
            qdb = a.questdb_url
        else:
            from gridwatch.servers.questdb import QuestDBServer

            q = QuestDBServer()
            q.start()
            started.append(q)
            qdb = q.url
        if a.only == "sink":
            sink = sink_vs_raw(qdb, a.sink_rows, a.devices, a.sink_repeats)
            return _print_sink(sink, a.json, time.monotonic() - t_start)
        work = Path(tempfile.mkdtemp(prefix="gw-bench-cluster-"))
        msgs, n = columnar_messages(a.readings, a.devices, a.partitions, a.rows_per_message)
        one = run_workers(bootstrap, qdb, 1, a.partitions, msgs, n, False, work, 120)
        two = run_workers(bootstrap, qdb, 2, a.partitions, msgs, n, False, work, 120)
        nmsgs, nn = naive_messages(a.naive_readings, a.devices)
        naive = run_workers(bootstrap, None, 1, a.partitions, nmsgs, nn, True, work, 120)
        sink = sink_vs_raw(qdb, a.sink_rows, a.devices, a.sink_repeats)
    finally:
        for s in reversed(started):
            s.stop()
    r = {"cpus": os.cpu_count(), "partitions": a.partitions, "devices": a.devices,
         "rows_per_message": a.rows_per_message, "one_worker": one, "two_workers": two, "naive": naive,
         "sink": sink, "ratios": {"vs_naive": one["rate"] / naive["rate"], "two_vs_one": two["rate"] / one["rate"],
                                  **_sink_ratios(sink)},
         "wall_s": time.monotonic() - t_start}
    if a.json:
        print(json.dumps(r, indent=1))
        return 0
    ok = lambda v, t: "ok" if v >= t else "BELOW TARGET"  # noqa: E731
    q = r["ratios"]
    print(f"cluster bench: {r['cpus']} cpus (shared with Kafka + QuestDB), {a.partitions} partitions, "
          f"{a.devices:,} devices, standard rule set (5 rules), {a.rows_per_message:,} rows/message")
    print(f"  1 worker   : {one['rate']:>12,.0f} readings/s  ({one['readings']:,} in {one['seconds']:.2f} s, "
          f"{one['warning_events']} warning events, snapshot {one['snapshot_bytes']:,} B)")
    print(f"  2 workers  : {two['rate']:>12,.0f} readings/s  (split {two['per_worker']}, {two['seconds']:.2f} s)")
    print(f"  naive agent: {naive['rate']:>12,.0f} readings/s  ({naive['readings']:,} JSON events, 1 rule)")
    print(f"  ratio per worker vs naive : {q['vs_naive']:8.1f}x  (target >= {TARGETS['vs_naive']:g}x) {ok(q['vs_naive'], TARGETS['vs_naive'])}")
    print(f"  ratio 2 workers vs 1      : {q['two_vs_one']:8.2f}x  (target >= {TARGETS['two_vs_one']:g}x) {ok(q['two_vs_one'], TARGETS['two_vs_one'])}")
    print("\n".join(_sink_lines(sink, q)))
    print(f"  wall {r['wall_s']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
