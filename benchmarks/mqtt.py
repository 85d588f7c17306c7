"""MQTT ingest benchmark: gridwatch against the client library's ceiling and the broker's, in one run.

    gridwatch bench mqtt [--messages 200000] [--batched 200000] [--latency-s 10]

1. **QoS 1 burst of single-reading JSON messages**, sent by ``mqtt_load.publish_qos1`` (confirms
   every PUBACK; ``mosquitto_pub -l`` drops queued messages at end of input).
   Consumers, each in its own process, one after the other on the same broker:
   ``mosquitto_sub`` (the broker's limit), a bare paho subscriber that only counts (the client
   library's ceiling), and ``gridwatch run`` (decode, processors, SQLite commit, ack after commit).
   Two modes: *live* (consumer connected while the burst is published) and *drain* (the burst is
   queued for the consumer's persistent session first; the consumer's own speed alone).
   gridwatch must store all messages: lost and duplicated readings are counted from the store.
2. **Batched messages** (JSON arrays of 100 readings): readings/s stored by one ``gridwatch run``,
   and by two processes splitting an MQTT 5 shared subscription. Each run is 20 M readings by
   default: the two processes connect up to a few hundred ms apart and the stores are polled every
   20 ms, so with 4 M readings (about 1.5 s for one process to drain) the two/one ratio of the
   same code swung from 1.02x to 1.63x between runs.
3. **Duplicate window** (``ingest.dedup_window_s``): the batched drain by one process with the
   window on (the default) and off, run for run; its on/off rate ratio.
4. **Latency**: publish -> warning received by a subscriber, at about half the batched maximum.

The broker is a real Mosquitto on loopback with ``max_queued_messages`` raised (the documented
setting for gridwatch deployments: the default 1000 drops bursts for any slow consumer).
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import orjson

from gridwatch.benchmarks.mqtt_load import publish_qos1
from gridwatch.servers.mosquitto import MosquittoServer
from gridwatch.streams.store import Store

PY = sys.executable
GW = [PY, "-m", "gridwatch.cli"]

PAHO_COUNTER = r"""
import sys, time, threading
import paho.mqtt.client as mqtt
port, n, qos, cid, mode = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5]
state = {"n": 0, "first": None, "last": None}
done = threading.Event()
def on_message(c, u, m):
    if state["first"] is None:
        state["first"] = time.time()
    state["n"] += 1
    if state["n"] >= n:
        state["last"] = time.time(); done.set()
ready = threading.Event()
c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=cid, protocol=mqtt.MQTTv5)
c.max_inflight_messages_set(1000)
c.on_message = on_message
from paho.mqtt.properties import Properties
from paho.mqtt.packettypes import PacketTypes
p = Properties(PacketTypes.CONNECT); p.SessionExpiryInterval = 3600; p.ReceiveMaximum = 2000
c.on_connect = lambda c, u, f, rc, pr: c.subscribe("devices/#", qos)
c.on_subscribe = lambda *a: ready.set()
c.connect("127.0.0.1", port, clean_start=False, properties=p)
c.loop_start()
ready.wait(10)
print("READY", flush=True)
if mode == "subscribe-only":
    c.disconnect(); c.loop_stop(); sys.exit(0)
done.wait(600)
print(f"{state['n']} {state['first']} {state['last']}", flush=True)
c.disconnect(); c.loop_stop()
"""


def _gw_config(port: int, data_dir: Path, client_id: str, shared: str | None = None, rules: str = "",
               ingest: str = "") -> Path:
    p = data_dir / "gridwatch.toml"
    shared_line = f'shared_group = "{shared}"' if shared else ""
    p.write_text(f"""
[site]
name = "{client_id}"
data_dir = "{data_dir}"
[mqtt]
host = "127.0.0.1"
port = {port}
client_id = "{client_id}"
topics = ["devices/#"]
receive_maximum = 5000
{shared_line}
[ingest]
batch_max_messages = 5000
max_age_s = 0
{ingest}
[alerts_mqtt]
enabled = true
{rules}
""")
    return p


def _store_path(data_dir: Path) -> Path:
    return data_dir / "gridwatch.db"


def _publish(port: int, topic_fmt: str, lines: list[bytes], procs: int = 1) -> float:
    """Publish at QoS 1, confirming every PUBACK (see mqtt_load); returns seconds taken."""
    t0 = time.time()
    chunks = [lines[i::procs] for i in range(procs)]
    errors: list[BaseException] = []

    def one(i: int, chunk: list[bytes]) -> None:
        try:
            publish_qos1(port, topic_fmt.format(i=i), chunk, client_id=f"bench-pub-{i}-{time.time_ns()}")
        except BaseException as e:  # re-raised below
            errors.append(e)

    ts = [threading.Thread(target=one, args=(i, ch)) for i, ch in enumerate(chunks)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    if errors:
        raise errors[0]
    return time.time() - t0


def single_reading_lines(n: int, devices: int = 1000) -> list[bytes]:
    t0 = int(time.time() * 1000) - n - 60_000
    return [orjson.dumps({"ts": t0 + i, "water_level": 1.0 + (i % 97) * 0.01}) for i in range(n)]


# ---- consumers ---------------------------------------------------------------------------------
def forget_session(port: int, client_id: str) -> None:
    """End a finished consumer's persistent session in the broker. A stopped consumer's session
    keeps its subscriptions, and the broker would queue a copy of every later message of the run
    for it: work that would slow whichever consumer is measured next."""
    import paho.mqtt.client as mqtt

    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
    c.connect("127.0.0.1", port, clean_start=True)  # no session expiry: gone on disconnect
    c.loop_start()
    time.sleep(0.2)
    c.disconnect()
    c.loop_stop()


def run_mosquitto_sub(port: int, lines: list[bytes], mode: str) -> dict:
    n = len(lines)
    cid = f"bench-msub-{mode}-{time.time_ns()}"
    base = ["mosquitto_sub", "-h", "127.0.0.1", "-p", str(port), "-t", "devices/#", "-q", "1", "-V", "mqttv5", "-i", cid,
            "-c", "-x", "3600"]
    if mode == "drain":
        subprocess.run(base + ["-E"], check=True, timeout=30, capture_output=True)
        _publish(port, "devices/generic/sewer_level/bench-{i}", lines)
        t0 = time.time()
        p = subprocess.run(base + ["-C", str(n)], stdout=subprocess.DEVNULL, timeout=600)
        res = {"received": n if p.returncode == 0 else 0, "seconds": time.time() - t0}
        forget_session(port, cid)
        return res
    p = subprocess.Popen(base + ["-C", str(n)], stdout=subprocess.DEVNULL)
    time.sleep(0.5)
    t0 = time.time()
    _publish(port, "devices/generic/sewer_level/bench-{i}", lines)
    rc = p.wait(600)
    res = {"received": n if rc == 0 else 0, "seconds": time.time() - t0}
    forget_session(port, cid)
    return res


def run_paho(port: int, lines: list[bytes], mode: str) -> dict:
    n = len(lines)
    cid = f"bench-paho-{mode}-{time.time_ns()}"
    if mode == "drain":
        subprocess.run([PY, "-c", PAHO_COUNTER, str(port), str(n), "1", cid, "subscribe-only"], check=True, timeout=30, capture_output=True)
        _publish(port, "devices/generic/sewer_level/bench-{i}", lines)
    p = subprocess.Popen([PY, "-c", PAHO_COUNTER, str(port), str(n), "1", cid, "count"], stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "READY"
    t0 = time.time()
    if mode == "live":
        _publish(port, "devices/generic/sewer_level/bench-{i}", lines)
    out = p.stdout.readline().split()
    p.wait(60)
    forget_session(port, cid)
    got, first, last = int(out[0]), float(out[1]), float(out[2])
    return {"received": got, "seconds": last - (t0 if mode == "live" else first)}


class GridwatchProc:
    def __init__(self, port: int, work: Path, name: str, shared: str | None = None, rules: str = "",
                 ingest: str = "") -> None:
        work.mkdir(parents=True, exist_ok=True)
        self.cfg = _gw_config(port, work, name, shared, rules, ingest)
        self.db = _store_path(work)
        self.log = open(work / "gridwatch.log", "w")
        self.p: subprocess.Popen | None = None
        self.port, self.name = port, name

    def forget_session(self) -> None:
        forget_session(self.port, self.name)

    def start(self) -> "GridwatchProc":
        self.spawn()
        self._wait_ready()
        return self

    def spawn(self) -> None:
        if self.log.closed:
            self.log = open(self.log.name, "a")
        self.p = subprocess.Popen(GW + ["run", "-c", str(self.cfg), "--quiet"], stdout=self.log, stderr=subprocess.STDOUT)

    def _wait_ready(self) -> None:
        """Until the log says connected. ``connected_after`` is the last time it did not yet: a
        queued backlog starts flowing no earlier, so rates measured from it are not overstated."""
        log_path = Path(self.log.name)
        deadline = time.time() + 60
        while time.time() < deadline:
            before = time.time()
            if "mqtt connected" in log_path.read_text():
                self.connected_after = self.__dict__.get("_not_yet", before)
                self.__dict__.pop("_not_yet", None)
                time.sleep(0.3)
                return
            self._not_yet = before
            if self.p.poll() is not None:
                raise RuntimeError(f"gridwatch exited: {log_path.read_text()[-2000:]}")
            time.sleep(0.01)
        raise RuntimeError("gridwatch did not connect within 60 s")

    def count(self) -> int:
        """Readings stored so far, through one read-only connection kept open (this poll runs
        every 20 ms beside the measured processes; reopening the file each time cost CPU)."""
        if not self.db.exists():
            return 0
        try:
            if getattr(self, "_ro", None) is None:
                import sqlite3

                self._ro = sqlite3.connect(f"file:{self.db}?mode=ro", uri=True, check_same_thread=False)
            return int(self._ro.execute("SELECT coalesce(sum(n), 0) FROM reading_chunks").fetchone()[0])
        except Exception:  # not created yet, or busy
            return 0

    def stop(self) -> None:
        if getattr(self, "_ro", None) is not None:
            self._ro.close()
            self._ro = None
        if self.p and self.p.poll() is None:
            self.p.terminate()
            try:
                self.p.wait(30)
            except subprocess.TimeoutExpired:
                self.p.kill()
        self.log.close()


def _wait_count(procs: list[GridwatchProc], n: int, timeout: float = 600) -> tuple[float, float]:
    """(time first reading seen, time all n stored)."""
    first = None
    deadline = time.time() + timeout
    while time.time() < deadline:
        c = sum(p.count() for p in procs)
        if c and first is None:
            first = time.time()
        if c >= n:
            return first or time.time(), time.time()
        time.sleep(0.02)
    raise RuntimeError(f"only {sum(p.count() for p in procs)} of {n} readings stored after {timeout} s")


def run_gridwatch(port: int, lines: list[bytes], mode: str, work: Path) -> dict:
    n = len(lines)
    gw = GridwatchProc(port, work / f"gw-{mode}", f"bench-gw-{mode}")
    try:
        if mode == "drain":
            gw.start(); gw.stop()
            gw = GridwatchProc(port, work / f"gw-{mode}", f"bench-gw-{mode}")
            _publish(port, "devices/generic/sewer_level/bench-{i}", lines)
            gw.start()
            _, last = _wait_count([gw], n)
            seconds = last - gw.connected_after
        else:
            gw.start()
            t0 = time.time()
            _publish(port, "devices/generic/sewer_level/bench-{i}", lines)
            _, last = _wait_count([gw], n)
            seconds = last - t0
        time.sleep(0.5)
        r = Store(gw.db).readings()
    finally:
        gw.stop()
        gw.forget_session()
    stored = len(r["ts"])
    unique = len(set(r["ts"].tolist()))
    return {"received": stored, "seconds": seconds, "lost": n - unique, "duplicated": stored - unique}


# ---- batched ---------------------------------------------------------------------------------
def batched_lines(n_msgs: int, per_msg: int = 100, devices: int = 2000) -> list[bytes]:
    """Message j holds readings at ms t0 + j*per_msg .. +per_msg-1: distinct across all messages, as
    messages of several ``devices`` share one topic (device) in run_batched. (Timestamps repeated
    per device id used to make most of them duplicates of one another, which the 4-deep ring let
    through and the duplicate window rejects.)"""
    t0 = int(time.time() * 1000) - n_msgs * per_msg - 60_000
    out = []
    for j in range(n_msgs):
        base = t0 + j * per_msg
        out.append(orjson.dumps([{"ts": base + i, "water_level": 1.0 + ((i + j) % 89) * 0.01} for i in range(per_msg)]))
    return out


def run_batched(port: int, lines: list[bytes], work: Path, processes: int, tag: str, mode: str = "live",
                devices: int = 2000, ingest: str = "") -> dict:
    """``live``: the publishers (4 threads of this process) send while gridwatch consumes, so on a
    small box they share its cores. ``drain``: the messages are queued in the consumers'
    persistent sessions first, then the consumers start together: their own speed alone."""
    per = 100
    n = len(lines) * per
    mk = lambda: [GridwatchProc(port, work / f"batch-{tag}-{mode}-{i}", f"bench-batch-{tag}-{mode}-{i}",  # noqa: E731
                                shared=f"gw-{mode}" if processes > 1 else None, ingest=ingest) for i in range(processes)]
    procs = mk()
    # topic per device, so each message's readings belong to one device
    by_dev: dict[int, list[bytes]] = {}
    for j, line in enumerate(lines):
        by_dev.setdefault(j % devices, []).append(line)
    groups = 4
    pubs = []
    pub_end: list[float] = []  # when each publisher had all its messages acknowledged by the broker

    def publish(topic: str, chunk: list[bytes]) -> None:
        _publish(port, topic, chunk)
        pub_end.append(time.time())

    for g in range(groups):
        chunk = [ln for d in range(g, devices, groups) for ln in by_dev.get(d, [])]
        pubs.append(threading.Thread(target=publish, args=(f"devices/generic/sewer_level/dev-{tag}-g{g}", chunk)))
    try:
        if mode == "drain":
            _start_together(procs)  # sessions and subscriptions exist, then go away
            for p in procs:
                p.stop()
            procs = mk()
            for t in pubs:
                t.start()
            for t in pubs:
                t.join()
            _start_together(procs)
            _, last = _wait_count(procs, n)
            t0 = min(p.connected_after for p in procs)
            return {"readings": n, "seconds": last - t0, "readings_per_s": n / (last - t0), "mode": mode}
        _start_together(procs)
        t0 = time.time()
        for t in pubs:
            t.start()
        _, last = _wait_count(procs, n)
        for t in pubs:
            t.join()
        published = max(pub_end) - t0  # the consumers cannot finish before this
        return {"readings": n, "seconds": last - t0, "readings_per_s": n / (last - t0), "mode": mode,
                "published_s": published, "publish_readings_per_s": n / published}
    finally:
        for p in procs:
            p.stop()
            p.forget_session()


def _start_together(procs: list["GridwatchProc"]) -> None:
    for p in procs:
        p.spawn()
    for p in procs:
        p._wait_ready()


# ---- latency -----------------------------------------------------------------------------------
def run_latency(port: int, work: Path, load_rps: float, seconds: float) -> dict:
    rules = """
[[rules]]
name = "probe_high"
kind = "threshold"
metrics = ["water_level"]
device_kinds = ["probe"]
severity = "info"
params = { above = 5.0, clear_at = 4.0 }
"""
    gw = GridwatchProc(port, work / "latency", "bench-latency", rules=rules)
    import paho.mqtt.client as mqtt

    lat: list[float] = []
    sub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="bench-lat-sub", protocol=mqtt.MQTTv5)
    ready = threading.Event()

    def on_msg(c, u, m):
        d = orjson.loads(m.payload)
        if d["event"] == "raised":
            lat.append(time.time() * 1000 - d["warning"]["start_ts"])

    sub.on_message = on_msg
    sub.on_connect = lambda c, u, f, rc, p: c.subscribe("gridwatch/warnings/#", 1)
    sub.on_subscribe = lambda *a: ready.set()
    sub.connect("127.0.0.1", port)
    sub.loop_start()
    ready.wait(10)
    pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="bench-lat-pub", protocol=mqtt.MQTTv5)
    pub.connect("127.0.0.1", port)
    pub.loop_start()
    try:
        gw.start()
        # background load from its own process (a publisher sharing this process's GIL would
        # delay the subscriber and inflate the measured latency)
        lt = subprocess.Popen([PY, "-m", "gridwatch.benchmarks.mqtt_load", str(port), str(load_rps), str(seconds + 1)],
                              stdout=subprocess.PIPE, text=True)
        time.sleep(0.5)
        t_end = time.time() + seconds
        i = 0
        while time.time() < t_end:
            now = int(time.time() * 1000)
            pub.publish("devices/generic/probe/probe-1", orjson.dumps({"ts": now, "water_level": 9.0 if i % 2 == 0 else 1.0}), qos=1)
            i += 1
            time.sleep(0.05)
        lt.wait(60)
        time.sleep(1.0)
    finally:
        gw.stop()
        sub.disconnect(); sub.loop_stop(); pub.disconnect(); pub.loop_stop()
    lat.sort()
    q = lambda p: lat[min(len(lat) - 1, int(p * len(lat)))] if lat else float("nan")  # noqa: E731
    return {"warnings": len(lat), "probes_raised": (i + 1) // 2, "p50_ms": q(0.5), "p99_ms": q(0.99), "max_ms": lat[-1] if lat else float("nan"),
            "load_readings_per_s": load_rps}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="gridwatch bench mqtt", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--messages", type=int, default=200_000, help="single-reading QoS 1 burst size")
    ap.add_argument("--batched", type=int, default=200_000, help="batched messages (100 readings each) per run; "
                    "runs of a few seconds keep the processes' start skew and the 20 ms polling out of the ratio")
    ap.add_argument("--repeat", type=int, default=3, help="batched runs per mode (medians are reported)")
    ap.add_argument("--latency-s", type=float, default=10.0)
    ap.add_argument("--latency-load", type=float, default=None,
                    help="background readings/s during the latency probe (default: half the measured batched maximum)")
    ap.add_argument("--modes", default="live,drain")
    ap.add_argument("--skip", default="", help="comma list of parts to skip: burst,batched,dedup,latency")
    ap.add_argument("--dedup-batched", type=int, default=30_000,
                    help="batched messages per run of the duplicate-window part (window on vs off, drain, one process)")
    ap.add_argument("--json", help="write the figures to this file")
    a = ap.parse_args(argv)
    skip = set(filter(None, a.skip.split(",")))
    res: dict = {"messages": a.messages}
    with tempfile.TemporaryDirectory(prefix="gw-bench-mqtt-") as tmp, \
            MosquittoServer(max_queued_messages=3_000_000, max_inflight_messages=1000) as mq:
        work = Path(tmp)
        port = mq.port
        if "burst" not in skip:
            lines = single_reading_lines(a.messages)
            for mode in a.modes.split(","):
                print(f"[burst/{mode}] mosquitto_sub ...", flush=True)
                ms = run_mosquitto_sub(port, lines, mode)
                print(f"[burst/{mode}] bare paho counter ...", flush=True)
                pa = run_paho(port, lines, mode)
                print(f"[burst/{mode}] gridwatch ...", flush=True)
                gw = run_gridwatch(port, lines, mode, work)
                res[f"burst_{mode}"] = {"mosquitto_sub": ms, "paho": pa, "gridwatch": gw}
                for k, v in res[f"burst_{mode}"].items():
                    v["msgs_per_s"] = a.messages / v["seconds"]
        if "batched" not in skip:
            lines = batched_lines(a.batched)
            for mode in a.modes.split(","):
                runs = []
                for r in range(a.repeat):  # one and two processes alternate, so drift hits both
                    print(f"[batched/{mode}] run {r + 1}/{a.repeat}: one process ...", flush=True)
                    one = run_batched(port, lines, work, 1, f"one{r}", mode)
                    print(f"[batched/{mode}] run {r + 1}/{a.repeat}: two processes, shared subscription ...", flush=True)
                    two = run_batched(port, lines, work, 2, f"two{r}", mode)
                    runs.append({"one": one["readings_per_s"], "two": two["readings_per_s"],
                                 "ratio": two["readings_per_s"] / one["readings_per_s"],
                                 **({"pub_one": one["publish_readings_per_s"], "pub_two": two["publish_readings_per_s"]}
                                    if "publish_readings_per_s" in one else {})})
                med = {k: statistics.median(r_[k] for r_ in runs) for k in ("one", "two", "ratio")}
                res[f"batched_{mode}"] = {"runs": runs, "median": med, "one": {"readings_per_s": med["one"]}}
        if "dedup" not in skip:  # the duplicate window's cost: one process with it (the default) and without
            lines = batched_lines(a.dedup_batched)
            runs = []
            for r in range(a.repeat):
                print(f"[dedup/drain] run {r + 1}/{a.repeat}: window on (default) ...", flush=True)
                on = run_batched(port, lines, work, 1, f"dw{r}", "drain")
                print(f"[dedup/drain] run {r + 1}/{a.repeat}: window off (ingest.dedup_window_s = 0) ...", flush=True)
                off = run_batched(port, lines, work, 1, f"dn{r}", "drain", ingest="dedup_window_s = 0")
                runs.append({"on": on["readings_per_s"], "off": off["readings_per_s"],
                             "ratio": on["readings_per_s"] / off["readings_per_s"]})
            res["dedup_drain"] = {"runs": runs, "median": {k: statistics.median(r_[k] for r_ in runs) for k in ("on", "off", "ratio")}}
        if "latency" not in skip:
            load = a.latency_load or 0.5 * res.get("batched_live", {}).get("one", {}).get("readings_per_s", 400_000)
            print(f"[latency] probes at 20/s under {load:,.0f} readings/s of background load ...", flush=True)
            res["latency"] = run_latency(port, work, load, a.latency_s)
    report(res)
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=2, default=str))
    return 0


def report(res: dict) -> None:
    print("\n== gridwatch bench mqtt ==")
    for mode in ("live", "drain"):
        b = res.get(f"burst_{mode}")
        if not b:
            continue
        print(f"QoS 1 burst of {res['messages']:,} single-reading messages ({mode}):")
        for k in ("mosquitto_sub", "paho", "gridwatch"):
            v = b[k]
            extra = f"  lost={v['lost']} duplicated={v['duplicated']}" if k == "gridwatch" else f"  received={v['received']:,}"
            print(f"  {k:14} {v['msgs_per_s']:>10,.0f} msg/s  ({v['seconds']:.2f} s){extra}")
        ratio = b["gridwatch"]["msgs_per_s"] / b["paho"]["msgs_per_s"]
        print(f"  gridwatch / bare paho = {ratio:.2f}x  (target >= 0.70x)   gridwatch / mosquitto_sub = "
              f"{b['gridwatch']['msgs_per_s'] / b['mosquitto_sub']['msgs_per_s']:.2f}x")
    for mode in ("live", "drain"):
        if f"batched_{mode}" not in res:
            continue
        b = res[f"batched_{mode}"]
        m = b["median"]
        print(f"Batched (100 readings/message, {mode}, median of {len(b['runs'])}): one process {m['one']:,.0f} readings/s "
              f"(target >= 1,000,000); two processes (shared subscription) {m['two']:,.0f} readings/s; "
              f"two/one {m['ratio']:.2f}x (target >= 1.4x)")
        print("  runs (one, two, ratio): " + "; ".join(f"{r['one']:,.0f}, {r['two']:,.0f}, {r['ratio']:.2f}x" for r in b["runs"]))
        if "pub_two" in b["runs"][0]:  # live: the publishers' own rate bounds what the consumers can show
            print("  publishers' rate in the same runs (one, two): " + "; ".join(
                f"{r['pub_one']:,.0f}, {r['pub_two']:,.0f}" for r in b["runs"]) +
                "  (a consumer rate close to it is bounded by the publishers on this box, not by gridwatch)")
    if "dedup_drain" in res:
        d = res["dedup_drain"]
        m = d["median"]
        print(f"Duplicate window (24 h, default) on vs off, batched drain, one process, median of {len(d['runs'])}: "
              f"on {m['on']:,.0f} readings/s, off {m['off']:,.0f} readings/s, on/off {m['ratio']:.2f}x")
        print("  runs (on, off, ratio): " + "; ".join(f"{r['on']:,.0f}, {r['off']:,.0f}, {r['ratio']:.2f}x" for r in d["runs"]))
    if "latency" in res:
        l_ = res["latency"]
        print(f"Latency publish -> warning on a subscriber at {l_['load_readings_per_s']:,.0f} readings/s: p50 {l_['p50_ms']:.1f} ms, "
              f"p99 {l_['p99_ms']:.1f} ms (target <= 50 ms), max {l_['max_ms']:.1f} ms over {l_['warnings']} warnings "
              f"({l_['probes_raised']} probes sent)")


if __name__ == "__main__":
    sys.exit(main())
