"""Sustained load: a steady QoS 1 stream into one ``gridwatch run`` for minutes, nothing lost.

    gridwatch bench sustained [--seconds 600] [--rate 4000] [--per-msg 100] [--attack]

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


def abuse(port: int, seconds: float, rate: float) -> dict:
    """The abusive vendor (its own process, vendor ``aqualine``): for ``seconds`` at ``rate``
    messages/s, QoS 1, a rotation of 60 KB topics (each distinct), a new device id per message,
    300 KB payloads, malformed JSON and the honest vendor's own device ids. Returns what it sent."""
    import paho.mqtt.client as mqtt

    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"gw-abuser-{os.getpid()}", protocol=mqtt.MQTTv5)
    c.max_inflight_messages_set(1000)
    c.max_queued_messages_set(2000)
    c.connect("127.0.0.1", port)
    c.loop_start()
    big = b"[" + b"1," * 150_000 + b"1]"
    kinds = ("huge_topic", "new_device", "oversized", "malformed", "claim")
    sent = dict.fromkeys(kinds, 0)
    t0 = time.time()
    i = 0
    now_s = int(t0)
    while time.time() - t0 < seconds:
        due = int((time.time() - t0) * rate)
        while i < due:
            k = kinds[i % len(kinds)]
            if k == "huge_topic":
                topic, payload = f"devices/aqualine/sewer_level/{i:08d}" + "x" * 60_000, b'{"lvl": 1}'
            elif k == "new_device":
                topic, payload = f"devices/aqualine/sewer_level/flood-{i}", orjson_dumps({"t": now_s, "p": 100})
            elif k == "oversized":
                topic, payload = "devices/aqualine/sewer_level/big", big
            elif k == "malformed":
                topic, payload = "devices/aqualine/sewer_level/bad", b'{"lvl": '
            else:  # names a device of the honest vendor
                topic, payload = f"devices/aqualine/sewer_level/sus-{i % 100}", orjson_dumps({"t": now_s + i // 100, "p": 100})
            c.publish(topic, payload, qos=1)
            sent[k] += 1
            i += 1
        time.sleep(0.01)
    c.disconnect()
    c.loop_stop()
    return {"messages": i, "by_kind": sent, "seconds": time.time() - t0}


def orjson_dumps(o) -> bytes:
    import orjson

    return orjson.dumps(o)


class _hostile_camera:
    """With ``attack``: a hostile RTSP camera (endless FU-A fragments of one IDR frame, see
    :mod:`gridwatch.servers.hostile_rtsp`) on a free loopback port, and the TOML that gives it
    to gridwatch as a keyframe camera (its own RTSP client) plus a metrics port to read its
    status from. Without: nothing."""

    def __init__(self, attack: bool) -> None:
        self.attack, self.proc = attack, None

    def __enter__(self) -> str:
        if not self.attack:
            return ""
        from gridwatch.servers._base import free_ports

        self.proc = subprocess.Popen([PY, "-m", "gridwatch.servers.hostile_rtsp", "--mode", "fu_a"],
                                     stdout=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline()
        if not line.startswith("READY "):
            self.__exit__()
            raise RuntimeError(f"hostile RTSP server did not start: {line!r}")
        self.metrics_port = free_ports(1)[0]
        return (f'\n[[cameras]]\nname = "hostile"\nurl = "rtsp://127.0.0.1:{line.split()[1]}/cam"\n'
                f'decode = "keyframes"\n\n[metrics]\nport = {self.metrics_port}\n')

    def __exit__(self, *exc) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(5)


def _camera_status(gw, port: int) -> dict:
    """The hostile camera as gridwatch exports it: state and reason, errors by kind."""
    import urllib.request

    out: dict = {"errors": {}}
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    for line in text.splitlines():
        if 'source="camera/hostile"' not in line or line.startswith("#"):
            continue
        name = line.split("{", 1)[0]
        if name.startswith("gridwatch_camera_errors_"):
            out["errors"][name[len("gridwatch_camera_errors_"):].removesuffix("_total")] = float(line.rsplit(" ", 1)[1])
        elif name == "gridwatch_camera_state_info":
            out["state"] = line.split("{", 1)[1].rsplit("}", 1)[0]
    return out


def _rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def _cpu_s(pid: int) -> float:
    f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")


def run(seconds: float, rate: float, per_msg: int, attack: bool = False, abuse_rate: float = 200.0) -> dict:
    """One run; with ``attack`` an abusive vendor (see :func:`abuse`) and a hostile RTSP camera
    (see :mod:`gridwatch.servers.hostile_rtsp`) run beside the honest publisher the whole time."""
    from gridwatch.benchmarks.mqtt import GridwatchProc
    from gridwatch.servers.mosquitto import MosquittoServer
    from gridwatch.streams.store import Store

    devices = max(2000, int(rate * per_msg / 250))  # timestamps advance <= 250 ms per second per device
    with tempfile.TemporaryDirectory(prefix="gw-bench-sustained-") as tmp, \
            MosquittoServer(max_queued_messages=10_000_000, max_inflight_messages=1000) as mq, \
            _hostile_camera(attack) as camera_toml:
        cam_port = int(camera_toml.rsplit("port = ", 1)[1]) if attack else None
        gw = GridwatchProc(mq.port, Path(tmp) / "gw", "bench-sustained", rules=RULES + camera_toml).start()
        pid = gw.p.pid
        abuser = None
        try:
            pub = subprocess.Popen([PY, "-m", "gridwatch.benchmarks.sustained", "--publish", str(mq.port), str(rate),
                                    str(seconds), str(per_msg), str(devices)], stdout=subprocess.PIPE, text=True)
            if attack:
                abuser = subprocess.Popen([PY, "-m", "gridwatch.benchmarks.sustained", "--abuse", str(mq.port),
                                           str(seconds), str(abuse_rate)], stdout=subprocess.PIPE, text=True)
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
            ab = json.loads(abuser.communicate(timeout=120)[0].strip().splitlines()[-1]) if abuser is not None else None
            n = p["readings"]
            st = Store(gw.db)
            honest = (lambda: len(st.readings(metric="water_level")["ts"])) if attack else gw.count
            deadline = time.time() + 300
            while honest() < n and time.time() < deadline:
                time.sleep(0.5)
            drained_after = time.time() - t0 - p["seconds"]
            time.sleep(1.0)
            stored = honest()
            camera = _camera_status(gw, cam_port) if attack else None
        finally:
            if abuser is not None and abuser.poll() is None:
                abuser.kill()
            gw.stop()
        dead = st.dead_letter_counts()
        warnings = len(st.warnings(limit=10**9))
        if attack:  # the abuser's rejections are expected; the honest vendor must have none
            honest_dead = [d for d in st.dead_letters(limit=10**6) if "/generic/" in d["source"]]
            dead = {"honest": len(honest_dead), "abuser": dead}
    backlogs = [s["backlog"] for s in samples]
    half = len(backlogs) // 2
    return {
        "attack": attack, "abuser": ab, "camera": camera, "honest_readings_per_s": round(n / (p["seconds"] + max(0.0, drained_after)), 1),
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
    print("\n== gridwatch bench sustained" + (" with attackers ==" if r["attack"] else " =="))
    if r["attack"]:
        print(f"  abusive vendor: {r['abuser']['messages']:,} messages {r['abuser']['by_kind']}; "
              f"hostile camera: {r['camera']}")
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
    if argv and argv[0] == "--abuse":
        print(json.dumps(abuse(int(argv[1]), float(argv[2]), float(argv[3]))), flush=True)
        return 0
    if argv and argv[0] == "--publish":
        port, rate, secs, per, dev = int(argv[1]), float(argv[2]), float(argv[3]), int(argv[4]), int(argv[5])
        print(json.dumps(publish_paced(port, rate, secs, per, dev)), flush=True)
        return 0
    ap = argparse.ArgumentParser(prog="gridwatch bench sustained", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=600.0)
    ap.add_argument("--rate", type=float, default=4000.0, help="messages per second")
    ap.add_argument("--per-msg", type=int, default=100, help="readings per message")
    ap.add_argument("--attack", action="store_true",
                    help="soak: first a run without attackers, then the same run with an abusive vendor and a hostile "
                         "RTSP camera beside it; prints the honest vendor's throughput as a ratio of the two")
    ap.add_argument("--abuse-rate", type=float, default=200.0, help="the abusive vendor's messages per second")
    ap.add_argument("--json", help="write the figures to this file")
    a = ap.parse_args(argv)
    runs = [run(a.seconds, a.rate, a.per_msg)]
    report(runs[0])
    if a.attack:
        runs.append(run(a.seconds, a.rate, a.per_msg, attack=True, abuse_rate=a.abuse_rate))
        report(runs[1])
        base, att = runs[0]["honest_readings_per_s"], runs[1]["honest_readings_per_s"]
        print(f"\nhonest vendor under attack: {att:,.0f} vs {base:,.0f} readings/s without = {att / base:.2f}x "
              f"(target >= 0.9x); lost {runs[1]['lost']}; max RSS {runs[1]['rss_mb_max']} vs {runs[0]['rss_mb_max']} MB")
    if a.json:
        Path(a.json).write_text(json.dumps(runs, indent=2, default=str))
    return 0 if all(r["lost"] == 0 and r["stored_twice"] == 0 for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
