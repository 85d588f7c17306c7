"""Sustained load: a steady QoS 1 stream into one ``gridwatch run`` for minutes, nothing lost.

    gridwatch bench sustained [--seconds 600] [--rate 4000] [--per-msg 100]

A publisher process sends JSON arrays of ``--per-msg`` readings at ``--rate`` messages/s over one
MQTT connection (QoS 1, a window of 1,000 unacknowledged messages, every PUBACK confirmed), each
message for one of many devices, timestamps unique per device and behind the wall clock; one
message in 499 carries a level above the threshold rule, so warnings are raised and cleared
throughout. Every 10 s the harness samples what is stored, the backlog (published - stored),
gridwatch's resident memory and CPU. At the end it waits for the backlog to drain and checks, from
the store: readings stored == readings published (lost = 0), no reading stored twice (the store
holds exactly the published count and no ``duplicate`` dead letters), nothing rejected.

"Held" means: the publisher kept its rate (messages acknowledged by the broker on schedule) and
the backlog stayed bounded (it does not grow over the run).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PY = sys.executable
RULES = """
[[rules]]
name = "overflow"
kind = "threshold"
metrics = ["water_level"]
severity = "major"
params = { above = 5.0, clear_at = 4.0 }
"""


def publish_paced(port: int, rate: float, seconds: float, per_msg: int, devices: int, inflight: int = 1000) -> dict:
    """The publisher (its own process): one connection, paced, every PUBACK confirmed."""
    from gridwatch.benchmarks.mqtt_load import _utf8, connect, exchange, publish_packet

    import orjson

    sock = connect(port, f"gw-sustained-{os.getpid()}")
    t_start = time.time()
    base_ms = int(t_start * 1000) - 120_000
    sent = acked = 0
    out = bytearray()
    buf = b""
    lag_max = 0.0
    last_ping = t_start
    topics = [_utf8(f"devices/generic/sewer_level/sus-{d}") for d in range(devices)]
    while True:
        now = time.time()
        el = now - t_start
        due = min(int(el * rate) + 1, int(seconds * rate)) if el < seconds else int(seconds * rate)
        if sent >= int(seconds * rate) and acked >= sent:
            break
        if el > seconds + 120:
            raise TimeoutError(f"{acked} of {sent} acknowledged 120 s after the end")
        behind = (due - sent) / rate
        lag_max = max(lag_max, behind)
        while sent < due and sent - acked < inflight:
            d = sent % devices
            k = sent // devices  # this device's k-th message: readings k*per_msg .. +per_msg-1 ms
            t0 = base_ms + k * per_msg
            hot = sent % 499 == 0  # 499 is prime to the device count: hot messages reach every device
            p = orjson.dumps([{"ts": t0 + i, "water_level": (9.0 if hot else 1.0) + (i % 7) * 0.01} for i in range(per_msg)])
            out += publish_packet(topics[d], sent % 65535 + 1, p)
            sent += 1
        if now - last_ping > 20:
            out += b"\xc0\x00"
            last_ping = now
        data = exchange(sock, out, 0.005)
        if data:
            buf += data
            while len(buf) >= 2:
                n = buf[1] + 2
                if len(buf) < n:
                    break
                if buf[0] == 0x40:
                    acked += 1
                elif buf[0] != 0xD0:  # PINGRESP
                    raise ConnectionError(f"unexpected packet 0x{buf[0]:02x}")
                buf = buf[n:]
    sock.setblocking(True)
    sock.sendall(b"\xe0\x00")
    sock.close()
    return {"messages": sent, "acked": acked, "readings": sent * per_msg, "seconds": time.time() - t_start,
            "publisher_max_behind_s": lag_max}


def _rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def _cpu_s(pid: int) -> float:
    f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")


def run(seconds: float, rate: float, per_msg: int) -> dict:
    from gridwatch.benchmarks.mqtt import GridwatchProc
    from gridwatch.servers.mosquitto import MosquittoServer
    from gridwatch.streams.store import Store

    devices = max(2000, int(rate * per_msg / 250))  # timestamps advance <= 250 ms per second per device
    with tempfile.TemporaryDirectory(prefix="gw-bench-sustained-") as tmp, \
            MosquittoServer(max_queued_messages=10_000_000, max_inflight_messages=1000) as mq:
        gw = GridwatchProc(mq.port, Path(tmp) / "gw", "bench-sustained", rules=RULES).start()
        pid = gw.p.pid
        try:
            pub = subprocess.Popen([PY, "-m", "gridwatch.benchmarks.sustained", "--publish", str(mq.port), str(rate),
                                    str(seconds), str(per_msg), str(devices)], stdout=subprocess.PIPE, text=True)
            t0 = time.time()
            cpu0 = _cpu_s(pid)
            samples = []
            next_sample = t0 + 10.0
            while pub.poll() is None:
                time.sleep(0.2)
                if time.time() < next_sample:
                    continue
                next_sample += 10.0
                el = time.time() - t0
                stored = gw.count()
                published = min(el, seconds) * rate * per_msg
                samples.append({"t": round(el, 1), "stored": stored, "backlog": max(0, int(published - stored)),
                                "rss_mb": round(_rss_mb(pid), 1), "cpu": round((_cpu_s(pid) - cpu0) / el, 2)})
                print(f"  t={el:6.0f}s stored={stored:>13,} backlog={samples[-1]['backlog']:>10,} "
                      f"rss={samples[-1]['rss_mb']:.0f} MB cpu={samples[-1]['cpu']:.2f} cores", flush=True)
            p = json.loads(pub.stdout.read().strip().splitlines()[-1])
            if pub.returncode != 0:
                raise RuntimeError(f"publisher failed: {p}")
            n = p["readings"]
            deadline = time.time() + 300
            while gw.count() < n and time.time() < deadline:
                time.sleep(0.5)
            drained_after = time.time() - t0 - p["seconds"]
            time.sleep(1.0)
            stored = gw.count()
        finally:
            gw.stop()
        st = Store(gw.db)
        dead = st.dead_letter_counts()
        warnings = len(st.warnings(limit=10**9))
    backlogs = [s["backlog"] for s in samples]
    half = len(backlogs) // 2
    return {
        "seconds": seconds, "rate_msgs": rate, "per_msg": per_msg, "devices": devices, "publisher": p,
        "readings_published": n, "readings_stored": stored, "lost": n - stored if stored <= n else 0,
        "stored_twice": stored - n if stored > n else 0, "dead_letters": dead, "warnings": warnings,
        "drained_s_after_publisher": round(drained_after, 1),
        "backlog_median_first_half": statistics.median(backlogs[:half]) if half else None,
        "backlog_median_second_half": statistics.median(backlogs[half:]) if backlogs else None,
        "backlog_max": max(backlogs) if backlogs else None,
        "rss_mb_max": max(s["rss_mb"] for s in samples) if samples else None,
        "cpu_cores_mean": samples[-1]["cpu"] if samples else None, "samples": samples,
    }


def report(r: dict) -> None:
    p = r["publisher"]
    print("\n== gridwatch bench sustained ==")
    print(f"{r['seconds']:.0f} s at {r['rate_msgs']:,.0f} messages/s x {r['per_msg']} readings "
          f"= {r['rate_msgs'] * r['per_msg']:,.0f} readings/s, {r['devices']:,} devices, QoS 1")
    print(f"  published {p['messages']:,} messages ({r['readings_published']:,} readings), all acknowledged by the broker: "
          f"{p['acked'] == p['messages']}; publisher at most {p['publisher_max_behind_s']:.2f} s behind schedule")
    print(f"  stored {r['readings_stored']:,} readings: lost {r['lost']:,}, stored twice {r['stored_twice']:,}, "
          f"dead letters {r['dead_letters'] or 'none'}; warnings {r['warnings']}")
    n = lambda v: "n/a" if v is None else f"{v:,.0f}"  # noqa: E731 - a run shorter than two samples
    print(f"  backlog (published - stored) median {n(r['backlog_median_first_half'])} in the first half, "
          f"{n(r['backlog_median_second_half'])} in the second, max {n(r['backlog_max'])}; drained "
          f"{r['drained_s_after_publisher']} s after the publisher finished")
    if r["samples"]:
        print(f"  gridwatch: max RSS {r['rss_mb_max']:.0f} MB, mean CPU {r['cpu_cores_mean']:.2f} cores")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--publish":
        port, rate, secs, per, dev = int(argv[1]), float(argv[2]), float(argv[3]), int(argv[4]), int(argv[5])
        print(json.dumps(publish_paced(port, rate, secs, per, dev)), flush=True)
        return 0
    ap = argparse.ArgumentParser(prog="gridwatch bench sustained", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=600.0)
    ap.add_argument("--rate", type=float, default=4000.0, help="messages per second")
    ap.add_argument("--per-msg", type=int, default=100, help="readings per message")
    ap.add_argument("--json", help="write the figures to this file")
    a = ap.parse_args(argv)
    r = run(a.seconds, a.rate, a.per_msg)
    report(r)
    if a.json:
        Path(a.json).write_text(json.dumps(r, indent=2, default=str))
    return 0 if r["lost"] == 0 and r["stored_twice"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
