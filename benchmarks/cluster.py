"""Cluster mode throughput: Kafka -> faust worker(s) -> processors -> sinks, in one run.

* **columnar worker**: ``gridwatch worker`` processes (the real CLI, uvloop) on a topic with
  ``--partitions`` partitions; the standard sensor rule set of ``benchmarks/processors.py``
  (threshold, rate_of_change, zscore, flatline, offline) over ``--devices`` water-level sensors,
  warnings through the merge agent to the warnings topic and QuestDB. Readings are the
  realistic edge-sized messages of the forwarder (``--rows-per-message``), produced once into a
  readings topic *before* any worker starts (the producer does not compete for the CPU); each
  run is a fresh consumer group reading it from the start. Rate = readings / time over the
  window in which every worker owns its partitions and has processed a batch, to the last batch
  (a lone first member holding all partitions before the group settles is left out). 1-worker
  and 2-worker runs alternate (``--worker-repeats`` each); medians. Also printed: CPU seconds per
  million readings of the workers and of the broker's JVM, and how long the workers' threads sat
  runnable without a CPU (other processes had it).
* **naive baseline**: the same worker started with ``--naive``: the textbook Faust agent, one
  JSON reading per Kafka message, a threshold rule (only one of the five) in Python, per-series
  state in a Faust table; its messages are produced while it runs. Same broker, same run.
* **time-series sink**: ``InfluxSink.write_readings`` (encode + batch 5000 lines + POST, with
  the sink's default of up to 2 sent batches awaiting answers while it encodes the next) vs raw
  keep-alive POSTs, one at a time, of the same lines pre-built into 5000-line bodies, to the
  same QuestDB, like for like: sink with gzip (level 1) vs raw bodies pre-compressed at level 1,
  and both without gzip; medians of interleaved rounds; client and server CPU per point.
  ``--only sink`` runs just this part (no Kafka).
* **duplicate window** (``--only dedup``): 1-worker runs over the pre-loaded topic with
  ``ingest.dedup_window_s`` = 24 h (the default) and 0, interleaved, medians; and the time a
  restored partition takes to read its window back from Kafka (``WorkerCore.seed_window``) for a
  partition of ``--seed-readings`` readings of ``--seed-devices`` sensors (one a minute each),
  beside a plain fetch + decode of all its messages and the size/time of a per-batch snapshot
  with the window inside it (the alternative not taken).

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


def _cfg_text(bootstrap: str, qdb_url: str | None, tag: str, partitions: int, naive: bool,
              readings_topic: str | None = None, dedup_window_s: float | None = None) -> str:
    rules = ""
    for kind, params in STANDARD.items():
        rules += f'\n[[rules]]\nname = "{kind}"\nkind = "{kind}"\n'
        if kind != "offline":
            rules += 'metrics = ["water_level"]\n'
        rules += "[rules.params]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in params.items())
    influx = (f'\n[influx]\nurl = "{qdb_url}"\ntoken = "t"\nwarnings_measurement = "bench_warnings_{tag}"\n'
              f'questdb_dedup = true\n') if qdb_url else ""
    ingest = "" if dedup_window_s is None else f"\n[ingest]\ndedup_window_s = {dedup_window_s}\n"
    return f"""{ingest}
[kafka]
bootstrap_servers = "{bootstrap}"
readings_topic = "{readings_topic or f'bench-r-{tag}'}"
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


def read_stats(p: Path) -> dict[str, Any]:
    """A worker's stats file (``--stats-file``, rewritten every second); {} until it exists."""
    try:
        return json.loads(p.read_text())
    except (OSError, ValueError):
        return {}


def start_worker(cfg_path: Path, stats: Path, log: Path, *args: str) -> subprocess.Popen:
    """One ``gridwatch worker`` process in its own process group, writing ``stats`` and logging to ``log``."""
    return subprocess.Popen([sys.executable, "-m", "gridwatch.cli", "worker", "-c", str(cfg_path), *args,
                             "--stats-file", str(stats)], stdout=open(log, "wb"), stderr=subprocess.STDOUT,
                            start_new_session=True)


def stop_workers(procs: list[subprocess.Popen], wait_s: float = 15.0) -> None:
    """SIGTERM each worker's process group, then SIGKILL what has not exited ``wait_s`` later."""
    for pr in procs:
        if pr.poll() is None:
            os.killpg(pr.pid, signal.SIGTERM)
    for pr in procs:
        try:
            pr.wait(wait_s)
        except subprocess.TimeoutExpired:
            os.killpg(pr.pid, signal.SIGKILL)


def _group_pids(pgid: int):
    """(pid, fields after the process name in /proc/<pid>/stat) of the live processes in group ``pgid``."""
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                st = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(st[2]) == pgid:  # fields after the name: state ppid pgrp ... utime(12) stime(13)
            yield d, st


def _group_cpu_s(pgid: int) -> float:
    """CPU seconds (user + system) of the live processes in process group ``pgid``."""
    return sum(int(st[11]) + int(st[12]) for _, st in _group_pids(pgid)) / os.sysconf("SC_CLK_TCK")


def _group_wait_s(pgid: int) -> float:
    """Seconds the threads of process group ``pgid`` spent runnable but waiting for a CPU (run
    queue, ``/proc/<pid>/task/<tid>/schedstat``; live threads only)."""
    total = 0
    for d, _ in _group_pids(pgid):
        try:
            for t in os.listdir(f"/proc/{d}/task"):
                with open(f"/proc/{d}/task/{t}/schedstat") as f:
                    total += int(f.read().split()[1])
        except (OSError, ValueError, IndexError):
            continue
    return total / 1e9


def preload(bootstrap: str, partitions: int, messages) -> tuple[str, float]:
    """Create a readings topic and produce ``messages`` into it before any worker starts (so
    the producer does not compete with the workers for the CPU); returns (topic, seconds)."""
    from gridwatch.config import parse
    from gridwatch.streams.cluster import ensure_topics

    topic = f"bench-r-{uuid.uuid4().hex[:8]}"
    cfg = parse({"kafka": {"bootstrap_servers": bootstrap, "readings_topic": topic, "partitions": partitions}})
    asyncio.run(ensure_topics(cfg))
    t0 = time.time()
    asyncio.run(_produce(bootstrap, topic, messages))
    return topic, time.time() - t0


def run_workers(bootstrap: str, qdb_url: str | None, workers: int, partitions: int, messages, total: int,
                naive: bool, workdir: Path, timeout: float, readings_topic: str | None = None,
                broker_pgid: int | None = None, dedup_window_s: float | None = None) -> dict[str, Any]:
    """``workers`` worker processes (a fresh consumer group and fresh warning topics).

    With ``readings_topic`` (pre-loaded by :func:`preload`) they read it from the start; the rate
    is taken over the window in which every worker owns its partitions and has processed a
    batch (from the workers' stats files, written every second), to the last batch: so the time
    of a lone first member holding all partitions before the group settles is left out. Without
    it, the workers take their partitions first, then ``messages`` are produced (the producer runs
    during the measurement) and the rate is readings / (first batch .. last batch)."""
    from gridwatch.config import load
    from gridwatch.streams.cluster import ensure_topics

    tag = uuid.uuid4().hex[:8]
    cfg_path = workdir / f"bench-{tag}.toml"
    cfg_path.write_text(_cfg_text(bootstrap, qdb_url, tag, partitions, naive, readings_topic, dedup_window_s))
    cfg = load(cfg_path)
    asyncio.run(ensure_topics(cfg))
    stats = [workdir / f"stats-{tag}-{i}.json" for i in range(workers)]
    procs = [start_worker(cfg_path, s, workdir / f"log-{tag}-{i}.txt", *(["--naive"] if naive else []))
             for i, s in enumerate(stats)]

    def settled(ss) -> bool:
        owned = [set(s.get("assigned") or []) for s in ss]
        return all(owned) and set().union(*owned) == set(range(partitions)) and sum(map(len, owned)) == partitions

    try:
        deadline = time.monotonic() + 90
        prod_s = 0.0
        window = None  # (t, readings, worker cpu s, broker cpu s) when all workers run
        if readings_topic is None:
            while not settled([read_stats(s) for s in stats]):
                if any(p.poll() is not None for p in procs):
                    raise RuntimeError(f"a worker exited; see {workdir}")
                if time.monotonic() > deadline:
                    raise TimeoutError(f"workers did not take their partitions: {[read_stats(s).get('assigned') for s in stats]}")
                time.sleep(0.2)
            t_prod = time.time()
            asyncio.run(_produce(bootstrap, cfg.kafka.readings_topic, messages))
            prod_s = time.time() - t_prod
        deadline = time.monotonic() + timeout
        while True:
            ss = [read_stats(s) for s in stats]
            done = sum(s.get("readings", 0) for s in ss)
            if window is None and readings_topic is not None and settled(ss) and all(s.get("readings") for s in ss):
                window = (max(s["t"] for s in ss), done, sum(_group_cpu_s(p.pid) for p in procs),
                          _group_cpu_s(broker_pgid) if broker_pgid else 0.0, sum(_group_wait_s(p.pid) for p in procs))
            if done >= total:
                break
            if any(p.poll() is not None for p in procs):
                raise RuntimeError(f"a worker exited; see {workdir}")
            if time.monotonic() > deadline:
                seen = [{k: s.get(k) for k in ("assigned", "applied_messages", "gap_messages", "batch_failures")} for s in ss]
                raise TimeoutError(f"only {done} of {total} readings in {timeout}s; workers: {seen}")
            time.sleep(0.2)
        cpu_end = [_group_cpu_s(p.pid) for p in procs]
        wait_end = sum(_group_wait_s(p.pid) for p in procs)
        broker_end = _group_cpu_s(broker_pgid) if broker_pgid else 0.0
        time.sleep(1.2)  # final stats
        ss = [read_stats(s) for s in stats]
        first = min(s["first_batch_t"] for s in ss if "first_batch_t" in s)
        last = max(s["last_batch_t"] for s in ss if "last_batch_t" in s)
        n = sum(s.get("readings", 0) for s in ss)
        out = {"workers": workers, "readings": n, "seconds": last - first, "rate": n / (last - first),
               "per_worker": [s.get("readings", 0) for s in ss], "produce_s": prod_s,
               "warning_events": sum(s.get("warning_events_sent", 0) for s in ss),
               "snapshot_bytes": max((s.get("snapshot_bytes", 0) for s in ss), default=0),
               "worker_cpu_s": sum(cpu_end), "window": None,
               "duplicate_readings": sum(s.get("duplicate_readings", 0) for s in ss),
               "dedup_entries": sum(s.get("dedup_series_window_entries", 0) for s in ss)}
        if window is not None and last - window[0] > 1.0 and n - window[1] > 0:
            t0, r0, c0, b0, w0 = window
            out["window"] = {"seconds": last - t0, "readings": n - r0}
            out["rate"] = (n - r0) / (last - t0)
            out["seconds"] = last - t0
            # CPU per million readings in the window: all workers together, and the broker's JVM
            out["worker_cpu_s_per_m"] = (sum(cpu_end) - c0) / (n - r0) * 1e6
            out["broker_cpu_s_per_m"] = (broker_end - b0) / (n - r0) * 1e6 if broker_pgid else None
            out["cpu_busy"] = ((sum(cpu_end) - c0) + (broker_end - b0)) / (last - t0)
            # time the workers' threads were ready to run but had no CPU (other processes had it)
            out["worker_runqueue_wait"] = (wait_end - w0) / (last - t0)
        return out
    finally:
        stop_workers(procs, 20.0)


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
                settle_s: float = 1.0, server_pgid: int | None = None) -> dict[str, Any]:
    """Points/s of ``InfluxSink.write_readings`` (50k-row calls, then flush) vs raw keep-alive POSTs
    of the same lines pre-built into 5000-line bodies, each with and without gzip (raw bodies
    pre-compressed at the sink's level, so both sides make the server inflate the same way; the
    raw side does not pay encoding or compression, the sink pays both). Rounds interleave the
    four runs (alternating which side goes first, with a pause before each run so the server's
    background WAL apply of one run does not land on the next); medians over ``repeats``
    rounds; every run writes a fresh table."""
    import statistics

    from gridwatch.streams.influx_sink import InfluxSink, gzip_compress

    data = generate(devices, rows)
    ids = np.array([f"lvl-{i:06d}" for i in range(devices)], object)[data.device]
    ts = data.ts + 1_750_000_000_000
    host, port = url.split("//", 1)[1].rsplit(":", 1)

    cpu: dict[str, list[float]] = {}
    server: dict[str, list[float]] = {}  # the server's CPU during the run (its background WAL apply may spill over)

    def server_cpu() -> float:
        return _group_cpu_s(server_pgid) if server_pgid else 0.0

    def sink_run(gz: bool) -> float:
        tag = uuid.uuid4().hex[:6]
        with InfluxSink(url, "t", "gridwatch", "gridwatch", readings_measurement=f"bench_sink_{tag}",
                        gzip=gz, gzip_level=gzip_level) as sink:
            t0, c0, s0 = time.perf_counter(), time.process_time(), server_cpu()
            for s in range(0, len(data), 50_000):
                sink.write_readings(ids[s:s + 50_000], "water_level", ts[s:s + 50_000], data.value[s:s + 50_000])
            sink.flush()
            dt, dc, ds = time.perf_counter() - t0, time.process_time() - c0, server_cpu() - s0
        if sink.stats.lines_written != len(data):
            raise RuntimeError(f"sink wrote {sink.stats.lines_written} of {len(data)} lines")
        cpu.setdefault(f"sink_gzip_{gz}", []).append(dc / len(data) * 1e6)
        server.setdefault(f"sink_gzip_{gz}", []).append(ds / len(data) * 1e6)
        return len(data) / dt

    def raw_run(gz: bool) -> float:
        tag = uuid.uuid4().hex[:6]
        lines = [f"bench_raw_{tag},device={d},metric=water_level value={v!r} {t}"
                 for d, v, t in zip(ids.tolist(), data.value.tolist(), ts.tolist())]
        bodies = ["\n".join(lines[i:i + 5000]).encode() for i in range(0, len(lines), 5000)]
        headers = {"Authorization": "Token t", "Content-Type": "text/plain; charset=utf-8"}
        if gz:
            bodies = [gzip_compress(b, gzip_level) for b in bodies]  # the sink's compressor, not timed
            headers["Content-Encoding"] = "gzip"
        conn = http.client.HTTPConnection(host, int(port), timeout=30)
        t0, c0, s0 = time.perf_counter(), time.process_time(), server_cpu()
        for b in bodies:
            conn.request("POST", "/api/v2/write?org=gridwatch&bucket=gridwatch&precision=ms", body=b, headers=headers)
            r = conn.getresponse()
            r.read()
            if r.status >= 300:
                raise RuntimeError(f"raw POST answered {r.status}")
        dt, dc, ds = time.perf_counter() - t0, time.process_time() - c0, server_cpu() - s0
        conn.close()
        cpu.setdefault(f"raw_gzip_{gz}", []).append(dc / len(data) * 1e6)
        server.setdefault(f"raw_gzip_{gz}", []).append(ds / len(data) * 1e6)
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
    out["server_cpu_us_per_point"] = {k: statistics.median(v) for k, v in server.items()} if server_pgid else None
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
        *([f"    server CPU     : during sink runs {sv['sink_gzip_True']:.2f} / {sv['sink_gzip_False']:.2f} us/point, "
           f"during raw runs {sv['raw_gzip_True']:.2f} / {sv['raw_gzip_False']:.2f} us/point (gzip / plain)"]
          if (sv := sink.get("server_cpu_us_per_point")) else []),
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


def window_on_off(bootstrap: str, qdb: str, partitions: int, topic: str, n: int, repeats: int, work: Path,
                  broker_pgid: int | None) -> dict[str, Any]:
    """1-worker runs over the pre-loaded topic with the duplicate window on (the default 24 h)
    and off (``dedup_window_s = 0``), interleaved, alternating which goes first; medians."""
    runs: dict[str, list[dict[str, Any]]] = {"on": [], "off": []}
    for i in range(repeats):
        for mode in (("on", "off") if i % 2 == 0 else ("off", "on")):
            runs[mode].append(run_workers(bootstrap, qdb, 1, partitions, None, n, False, work, 300, readings_topic=topic,
                                          broker_pgid=broker_pgid, dedup_window_s=86400.0 if mode == "on" else 0.0))
    on, off = _median_run(runs["on"]), _median_run(runs["off"])
    return {"on": on, "off": off, "ratio": on["rate"] / off["rate"]}


def seed_time(bootstrap: str, readings: int, devices: int, rows_per_message: int, repeats: int,
              window_s: float = 86400.0, max_mb: float = 64.0) -> dict[str, Any]:
    """Time to read a partition's duplicate window back on assignment (``WorkerCore.seed_window``):
    one partition holding ``readings`` readings of ``devices`` sensors (one a minute each, in
    ``rows_per_message``-row edge messages); its state is built by applying them all, then a
    restored copy (what a new owner loads from the changelog) is seeded ``repeats`` times;
    medians. Also: the same messages only fetched and decoded (the floor of reading them)."""
    import statistics

    from gridwatch.config import parse
    from gridwatch.streams.cluster import PartitionState, WorkerCore

    msgs, n = columnar_messages(readings, devices, 1, rows_per_message)
    topic, preload_s = preload(bootstrap, 1, msgs)
    cfg = parse({"kafka": {"bootstrap_servers": bootstrap, "readings_topic": topic, "partitions": 1},
                 "ingest": {"dedup_window_s": window_s, "dedup_max_mb": max_mb},
                 "rules": [{"name": k, "kind": k, **({} if k == "offline" else {"metrics": ["water_level"]}),
                            "params": v} for k, v in STANDARD.items()]})
    st = PartitionState(cfg, 0)
    st.apply([(o, v) for o, (_, _, v) in enumerate(msgs)])
    blob = st.dump()
    del msgs

    class _Tbl:
        data: dict = {}

    async def once() -> tuple[float, dict[str, Any], Any]:
        core = WorkerCore(cfg, None, _Tbl(), _Tbl(), None, None)
        s2 = PartitionState.load(cfg, 0, blob)
        try:
            t0 = time.perf_counter()
            await core.seed_window(0, s2)
            return time.perf_counter() - t0, dict(core.stats), s2.series_window
        finally:
            await core.filler.close()

    async def fetch_only() -> float:
        from gridwatch.ingest import wire
        from gridwatch.streams.cluster import OffsetGapFiller

        f = OffsetGapFiller(cfg)
        try:
            t0 = time.perf_counter()
            nxt = 0
            while nxt < st.offset + 1:
                got, _ = await f.fetch(topic, 0, nxt, st.offset + 1)
                for _, v in got:
                    wire.decode(v)
                nxt = got[-1][0] + 1
            return time.perf_counter() - t0
        finally:
            await f.close()

    secs, fetch, snap, snap_win = [], [], [], []
    for _ in range(repeats):
        dt, stats, win = asyncio.run(once())
        secs.append(dt)
        fetch.append(asyncio.run(fetch_only()))
        # option (b), the window inside the per-batch snapshot: what one snapshot would cost
        import pickle

        t0 = time.perf_counter()
        b0 = st.dump()
        snap.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        b1 = pickle.dumps((b0, win.table, win.base, win.count), protocol=5)
        snap_win.append(time.perf_counter() - t0)
    return {"readings": n, "devices": devices, "messages": st.offset + 1, "preload_s": preload_s,
            "seed_s": statistics.median(secs), "runs": secs, "seed_messages": stats["dedup_seed_messages"],
            "seed_bytes": stats["dedup_seed_bytes"], "entries": win.count, "window_bytes": win.nbytes,
            "max_entries": win.max_entries, "fetch_all_s": statistics.median(fetch), "fetch_runs": fetch,
            "snapshot_bytes": len(b0), "snapshot_s": statistics.median(snap),
            "snapshot_with_window_bytes": len(b1), "snapshot_with_window_s": statistics.median(snap_win)}


def _median_run(rs: list[dict[str, Any]]) -> dict[str, Any]:
    """The run with the median rate (of an odd count; the lower middle otherwise), with every rate."""
    import statistics

    srt = sorted(rs, key=lambda r: r["rate"])
    m = dict(srt[(len(srt) - 1) // 2])
    m["rates"] = [r["rate"] for r in rs]
    m["rate"] = statistics.median(m["rates"])
    for k in ("worker_cpu_s_per_m", "broker_cpu_s_per_m", "cpu_busy", "worker_runqueue_wait"):
        vals = [r[k] for r in rs if r.get(k) is not None]
        m[k] = statistics.median(vals) if vals else None
    return m


def _print_dedup(onoff: dict[str, Any], seed: dict[str, Any], a, wall_s: float) -> int:
    r = {"window_on_off": onoff, "seed": seed, "wall_s": wall_s}
    if a.json:
        print(json.dumps(r, indent=1, default=str))
        return 0
    on, off = onoff["on"], onoff["off"]
    rates = lambda x: ", ".join(f"{v:,.0f}" for v in x["rates"])  # noqa: E731
    print(f"duplicate window, 1 worker, {a.partitions} partitions, {a.devices:,} devices, standard rule set, "
          f"{a.readings:,} readings; medians of {a.worker_repeats} interleaved runs each")
    print(f"  window on (24 h) : {on['rate']:>12,.0f} readings/s  (runs {rates(on)}; workers "
          f"{on.get('worker_cpu_s_per_m') or 0:.1f} CPU s/M readings; {on['dedup_entries']:,} window entries)")
    print(f"  window off       : {off['rate']:>12,.0f} readings/s  (runs {rates(off)}; workers "
          f"{off.get('worker_cpu_s_per_m') or 0:.1f} CPU s/M readings)")
    print(f"  ratio on / off   : {onoff['ratio']:8.2f}x")
    print(f"  read back on assignment: one partition of {seed['readings']:,} readings ({seed['devices']:,} devices, one a "
          f"minute, {seed['messages']:,} messages): {seed['seed_s']:.2f} s median (runs "
          f"{', '.join(f'{v:.2f}' for v in seed['runs'])}); read {seed['seed_messages']:,} messages "
          f"({seed['seed_bytes'] / 2**20:.0f} MiB), window {seed['entries']:,} entries of at most {seed['max_entries']:,} "
          f"({seed['window_bytes'] / 2**20:.0f} MiB)")
    print(f"  fetch + decode of all {seed['messages']:,} messages (no window): {seed['fetch_all_s']:.2f} s median")
    print(f"  per-batch snapshot of that partition: {seed['snapshot_bytes'] / 2**20:.2f} MiB in "
          f"{seed['snapshot_s'] * 1e3:.1f} ms; with the window in it (option b): "
          f"{seed['snapshot_with_window_bytes'] / 2**20:.1f} MiB in {seed['snapshot_with_window_s'] * 1e3:.1f} ms "
          f"(pickling only, before the changelog write)")
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
    ap.add_argument("--worker-repeats", type=int, default=3, help="interleaved 1-worker / 2-worker runs (medians)")
    ap.add_argument("--bootstrap", help="use this Kafka instead of starting one")
    ap.add_argument("--questdb-url", help="use this QuestDB instead of starting one")
    ap.add_argument("--only", choices=["sink", "dedup"],
                    help="run only this part: sink (no Kafka is started), or dedup (duplicate window on vs off, "
                         "and the time to read a partition's window back)")
    ap.add_argument("--seed-readings", type=int, default=6_000_000, help="dedup: readings in the partition read back")
    ap.add_argument("--seed-devices", type=int, default=8_000, help="dedup: devices of that partition")
    ap.add_argument("--seed-repeats", type=int, default=3)
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
        qdb_pgid = None
        if a.questdb_url:
            qdb = a.questdb_url
        else:
            from gridwatch.servers.questdb import QuestDBServer

            q = QuestDBServer()
            q.start()
            started.append(q)
            qdb, qdb_pgid = q.url, q.proc.pid
        if a.only == "sink":
            sink = sink_vs_raw(qdb, a.sink_rows, a.devices, a.sink_repeats, server_pgid=qdb_pgid)
            return _print_sink(sink, a.json, time.monotonic() - t_start)
        work = Path(tempfile.mkdtemp(prefix="gw-bench-cluster-"))
        if a.only == "dedup":
            seed = seed_time(bootstrap, a.seed_readings, a.seed_devices, a.rows_per_message, a.seed_repeats)
            msgs, n = columnar_messages(a.readings, a.devices, a.partitions, a.rows_per_message)
            broker_pgid = started[0].proc.pid if started and not a.bootstrap else None
            topic, _ = preload(bootstrap, a.partitions, msgs)
            del msgs
            onoff = window_on_off(bootstrap, qdb, a.partitions, topic, n, a.worker_repeats, work, broker_pgid)
            return _print_dedup(onoff, seed, a, time.monotonic() - t_start)
        msgs, n = columnar_messages(a.readings, a.devices, a.partitions, a.rows_per_message)
        broker_pgid = started[0].proc.pid if started and not a.bootstrap else None
        topic, preload_s = preload(bootstrap, a.partitions, msgs)
        broker_idle = None
        if broker_pgid:  # the broker's own background CPU (controller, cleaner, GC), no clients
            time.sleep(2.0)
            c0, t0 = _group_cpu_s(broker_pgid), time.monotonic()
            time.sleep(5.0)
            broker_idle = (_group_cpu_s(broker_pgid) - c0) / (time.monotonic() - t0)
        del msgs
        runs: dict[int, list[dict[str, Any]]] = {1: [], 2: []}
        for i in range(a.worker_repeats):  # interleaved, alternating which goes first
            for w in ((1, 2) if i % 2 == 0 else (2, 1)):
                runs[w].append(run_workers(bootstrap, qdb, w, a.partitions, None, n, False, work, 300,
                                           readings_topic=topic, broker_pgid=broker_pgid))
        one, two = (_median_run(runs[w]) for w in (1, 2))
        nmsgs, nn = naive_messages(a.naive_readings, a.devices)
        naive = run_workers(bootstrap, None, 1, a.partitions, nmsgs, nn, True, work, 120)
        sink = sink_vs_raw(qdb, a.sink_rows, a.devices, a.sink_repeats, server_pgid=qdb_pgid)
    finally:
        for s in reversed(started):
            s.stop()
    r = {"cpus": os.cpu_count(), "partitions": a.partitions, "devices": a.devices, "preload_s": preload_s,
         "broker_idle_cores": broker_idle,
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
    print(f"  readings topic pre-loaded ({n:,} readings, {preload_s:.1f} s) before the workers start; rates over "
          f"the window all workers run; medians of {a.worker_repeats} interleaved runs each; idle broker "
          f"{broker_idle or 0:.2f} cores")
    cpu = lambda x: (f"workers {x['worker_cpu_s_per_m']:.1f} CPU s/M readings, broker {x['broker_cpu_s_per_m']:.1f}, "  # noqa: E731
                     f"{x['cpu_busy']:.2f} cores busy, workers waited for a CPU {x['worker_runqueue_wait']:.2f} s/s"
                     if x.get("worker_cpu_s_per_m") is not None
                     and x.get("broker_cpu_s_per_m") is not None else "no CPU figures")
    print(f"  1 worker   : {one['rate']:>12,.0f} readings/s  (runs {', '.join(f'{v:,.0f}' for v in one['rates'])}; "
          f"{one['warning_events']} warning events, snapshot {one['snapshot_bytes']:,} B; {cpu(one)})")
    print(f"  2 workers  : {two['rate']:>12,.0f} readings/s  (runs {', '.join(f'{v:,.0f}' for v in two['rates'])}; "
          f"split {two['per_worker']}; {cpu(two)})")
    print(f"  naive agent: {naive['rate']:>12,.0f} readings/s  ({naive['readings']:,} JSON events, 1 rule)")
    print(f"  ratio per worker vs naive : {q['vs_naive']:8.1f}x  (target >= {TARGETS['vs_naive']:g}x) {ok(q['vs_naive'], TARGETS['vs_naive'])}")
    print(f"  ratio 2 workers vs 1      : {q['two_vs_one']:8.2f}x  (target >= {TARGETS['two_vs_one']:g}x) {ok(q['two_vs_one'], TARGETS['two_vs_one'])}")
    print("\n".join(_sink_lines(sink, q)))
    print(f"  wall {r['wall_s']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
