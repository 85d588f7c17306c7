"""JT/T 808 benchmark: location reports/s stored by gridwatch against a bare asyncio server, in one run.

    gridwatch bench jt808 [--terminals 200] [--reports 100000] [--window 32] [--repeat 3]
                          [--max-terminals 1000,5000,10000,15000]

1. **Throughput.** A load generator in its own process (uvloop) connects ``--terminals`` simulated
   trucks; each registers (0x0100), authenticates (0x0102), then streams location reports (0x0200)
   keeping ``--window`` unanswered at most (a terminal re-sends what is not answered, so the window
   is its buffer). Two servers take turns, each in this process on its own uvloop thread:

   * *bare*: a plain asyncio server that only parses each frame, one by one (the framing,
     unescaping, checksum, header and location decoding gridwatch uses for other messages), and
     answers 0x8001 at once;
   * *bare_bulk*: the same, parsing each read's location reports in bulk with gridwatch's own
     numpy decoder (``jt808.decode_chunks``) and answering them as one array. A read carries only
     a few reports at this load, so numpy's fixed cost per call makes it slower than *bare*;
     gridwatch spreads that cost over a pipeline batch (many reads). *bare* is the baseline to beat;
   * *gridwatch*: the edge runtime with ``[jt808]`` enabled: reports become messages, go through
     the codec checks, the dwell / speeding / geofence rules and the SQLite store, and are answered
     only after the commit. Every report must be in the store at the end.

   Runs alternate (bare, bare_bulk, gridwatch, bare, ...); medians and the ratios gridwatch/bare
   are printed (target >= 0.7x).
2. **Concurrent terminals held** (``--max-terminals``): at each level, that many terminals connect,
   log in and send one report each; the level is held when every report is answered (stored). The
   server process' resident memory is printed per level.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import resource
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from datetime import timedelta, timezone
from pathlib import Path

from gridwatch.ingest import jt808 as J

PY = sys.executable
BEIJING = timezone(timedelta(hours=8))


def _raise_fd_limit() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        return hard
    except (ValueError, OSError):
        return soft


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


# --- load generator (its own process) -------------------------------------------------------
def _phone(i: int) -> str:
    return f"1{i:010d}"


def _reports(i: int, n: int, base_s: int) -> list[bytes]:
    phone_raw = J.bcd(_phone(i), 6)
    lat, lon = 30.5 + (i % 500) * 1e-3, 114.2 + (i // 500) * 1e-3
    out = []
    for j in range(n):
        t = J.bcd(time.strftime("%y%m%d%H%M%S", time.gmtime(base_s + j + 8 * 3600)), 6)
        body = struct.pack(">IIIIHHH", 0, 0x3, round((lat + j * 1e-5) * 1e6), round(lon * 1e6), 20, 400 + j % 300, 90) + t
        out.append(J.build_frame(J.T_LOCATION, body, phone_raw, j + 10))
    return out


class _Term(asyncio.Protocol):
    def __init__(self, i: int, reports: list[bytes], window: int, on_login, on_done) -> None:
        self.i, self.reports, self.window = i, reports, window
        self.on_login, self.on_done = on_login, on_done
        self.phone_raw = J.bcd(_phone(i), 6)
        self.state = "register"
        self.buf = b""
        self.flags = 0
        self.sent = 0
        self.acked = 0
        self.sent_at: list[float] = []  # per report: when it was written (answers come in order)
        self.latency: list[float] = []
        self.transport = None
        self.go = False

    def connection_made(self, transport) -> None:
        self.transport = transport
        reg = struct.pack(">HH", 44, 100) + b"BENCH" + b"M".ljust(20, b"\0") + b"T000001" + b"\x02" + "粤B".encode("gbk") + str(self.i).encode()
        transport.write(J.build_frame(J.T_REGISTER, reg, self.phone_raw, 1))

    def start(self) -> None:
        self.go = True
        k = min(self.window, len(self.reports))
        self.sent = k
        self.sent_at.extend([time.perf_counter()] * k)
        self.transport.write(b"".join(self.reports[:k]))
        if not self.reports:
            self.on_done()

    def data_received(self, data: bytes) -> None:
        if self.state == "stream":
            self.flags += data.count(0x7E)
            acked = self.flags >> 1
            new = acked - self.acked
            if new <= 0:
                return
            now = time.perf_counter()
            self.latency.extend(now - t for t in self.sent_at[self.acked:acked])
            self.acked = acked
            if self.sent < len(self.reports):
                k = min(new, len(self.reports) - self.sent)
                self.sent_at.extend([now] * k)
                self.transport.write(b"".join(self.reports[self.sent:self.sent + k]))
                self.sent += k
            if self.acked >= len(self.reports):
                self.on_done()
            return
        self.buf += data
        while True:
            s = self.buf.find(b"\x7e")
            e = self.buf.find(b"\x7e", s + 1)
            if s < 0 or e < 0:
                return
            raw, self.buf = self.buf[s + 1:e], self.buf[e + 1:]
            msg_id, _, _, _, _, _, body = J.parse_frame(raw)
            if msg_id == J.P_REGISTER_RESPONSE and self.state == "register":
                self.state = "auth"
                self.transport.write(J.build_frame(J.T_AUTH, body[3:], self.phone_raw, 2))
            elif msg_id == J.P_GENERAL_RESPONSE and self.state == "auth":
                assert body[4] == 0, "authentication refused"
                self.state = "stream"
                self.on_login()


async def _client(port: int, terminals: int, per: int, window: int, base_s: int, offset: int) -> dict:
    loop = asyncio.get_running_loop()
    logged = 0
    done = 0
    all_in = loop.create_future()
    all_done = loop.create_future()

    def on_login():
        nonlocal logged
        logged += 1
        if logged == terminals and not all_in.done():
            all_in.set_result(None)

    def on_done():
        nonlocal done
        done += 1
        if done == terminals and not all_done.done():
            all_done.set_result(None)

    reports = {i: _reports(offset + i, per, base_s) for i in range(terminals)}
    protos = []
    t_conn = time.perf_counter()
    sem = asyncio.Semaphore(200)  # connect in waves (the listen backlog)

    async def conn(i):
        async with sem:
            _, p = await loop.create_connection(lambda: _Term(offset + i, reports[i], window, on_login, on_done), "127.0.0.1", port)
            protos.append(p)

    await asyncio.gather(*[conn(i) for i in range(terminals)])
    await asyncio.wait_for(all_in, 300)
    login_s = time.perf_counter() - t_conn
    t0 = time.perf_counter()
    for p in protos:
        p.start()
    await asyncio.wait_for(all_done, 600)
    secs = time.perf_counter() - t0
    acked = sum(p.acked for p in protos)
    for p in protos:
        p.transport.close()
    lat = sorted(x for p in protos for x in p.latency)
    q = (lambda f: round(lat[min(len(lat) - 1, int(f * len(lat)))] * 1e3, 2)) if lat else (lambda f: float("nan"))
    return {"seconds": secs, "acked": acked, "login_s": login_s, "latency_ms_p50": q(0.5), "latency_ms_p99": q(0.99)}


def client_main(argv: list[str]) -> None:
    port, terminals, per, window, base_s, offset = map(int, argv)
    _raise_fd_limit()
    import uvloop

    print(json.dumps(uvloop.run(_client(port, terminals, per, window, base_s, offset))), flush=True)


def run_client(port: int, terminals: int, per: int, window: int, base_s: int, offset: int = 0) -> dict:
    out = subprocess.run([PY, "-m", "gridwatch.benchmarks.jt808", "--client", str(port), str(terminals), str(per),
                          str(window), str(base_s), str(offset)], capture_output=True, text=True, timeout=900)
    if out.returncode != 0:
        raise RuntimeError(f"load generator failed: {out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


# --- the bare server ------------------------------------------------------------------------
class _Bare(asyncio.Protocol):
    """Parses and answers at once: the floor of any JT/T 808 server in Python on this loop."""

    def __init__(self, counts: list) -> None:
        self.buf = b""
        self.serial = 0
        self.counts = counts

    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        buf = self.buf + data
        out = []
        frames, pos = _split(buf)
        for raw in frames:
            msg_id, version, phone_raw, serial, _, _, body = J.parse_frame(raw)
            J.phone_of(phone_raw)
            self.serial += 1
            if msg_id == J.T_LOCATION:
                J.location(body, BEIJING)
                self.counts[0] += 1
                out.append(J.build_frame(J.P_GENERAL_RESPONSE, J.general_response(serial, msg_id, 0), phone_raw, self.serial, version))
            elif msg_id == J.T_REGISTER:
                out.append(J.build_frame(J.P_REGISTER_RESPONSE, struct.pack(">HB", serial, 0) + b"0123456789abcdef", phone_raw, self.serial, version))
            else:
                out.append(J.build_frame(J.P_GENERAL_RESPONSE, J.general_response(serial, msg_id, 0), phone_raw, self.serial, version))
        self.buf = buf[pos:]
        if out:
            self.transport.write(b"".join(out))


def _split(buf: bytes) -> tuple[list[bytes], int]:
    """The complete 0x7e-delimited frames in ``buf`` (still escaped) and where the rest begins."""
    frames, pos = [], 0
    while True:
        s = buf.find(b"\x7e", pos)
        if s < 0:
            return frames, len(buf)
        e = buf.find(b"\x7e", s + 1)
        if e < 0:
            return frames, s
        if e > s + 1:
            frames.append(buf[s + 1:e])
            pos = e + 1
        else:
            pos = e


class _BareBulk(_Bare):
    """Parses each read's location reports in bulk with the same numpy decoder gridwatch uses
    (``jt808.decode_chunks``) and answers them at once: gridwatch's own parser, no pipeline behind it."""

    def __init__(self, counts: list, collector) -> None:
        super().__init__(counts)
        self.conn = J._Conn(collector)

    def data_received(self, data: bytes) -> None:
        buf = self.buf + data
        out, fast = [], []
        frames, pos = _split(buf)
        for raw in frames:
            if raw[0] == 0x02 and raw[1] == 0x00 and not raw[2] & 0x3C:
                fast.append(J.unescape(raw) if 0x7D in raw else raw)
                continue
            msg_id, version, phone_raw, serial, _, _, body = J.parse_frame(raw)
            self.serial += 1
            if msg_id == J.T_REGISTER:
                out.append(J.build_frame(J.P_REGISTER_RESPONSE, struct.pack(">HB", serial, 0) + b"0123456789abcdef", phone_raw, self.serial, version))
            else:
                out.append(J.build_frame(J.P_GENERAL_RESPONSE, J.general_response(serial, msg_id, 0), phone_raw, self.serial, version))
        self.buf = buf[pos:]
        if fast:
            chunk = J._Chunk(self.conn, fast)
            n = len(J.decode_chunks([J.Message("", b"".join(fast), 0, chunk)])[0][3])
            self.counts[0] += n
            out.append(chunk.answers(self.conn))
        if out:
            self.transport.write(b"".join(out))


class BareServer:
    def __init__(self, bulk: bool = False) -> None:
        self.bulk = bulk
        self.counts = [0]
        self.port = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        import uvloop

        self.loop = uvloop.new_event_loop()
        asyncio.set_event_loop(self.loop)

        async def serve():
            if self.bulk:
                from gridwatch.config import Jt808Config
                from gridwatch.observability import Counters

                col = J.Jt808Collector(Jt808Config(require_auth=False, auth_secret="bench"), Counters())
                factory = lambda: _BareBulk(self.counts, col)  # noqa: E731
            else:
                factory = lambda: _Bare(self.counts)  # noqa: E731
            srv = await self.loop.create_server(factory, "127.0.0.1", 0, backlog=1024)
            self.port = srv.sockets[0].getsockname()[1]
            self._stop = self.loop.create_future()
            self._ready.set()
            await self._stop
            srv.close()

        self.loop.run_until_complete(serve())

    def __enter__(self):
        self._thread.start()
        self._ready.wait(10)
        return self

    def __exit__(self, *exc) -> None:
        self.loop.call_soon_threadsafe(self._stop.set_result, None)
        self._thread.join(10)


# --- gridwatch --------------------------------------------------------------------------------
RULES = [
    {"name": "hazmat_dwell", "kind": "dwell", "severity": "critical", "params": {"radius_m": 150, "duration_s": 1200}},
    {"name": "speeding", "kind": "speeding", "severity": "major", "params": {"limit_kmh": 80, "min_duration_s": 30}},
    {"name": "forbidden", "kind": "geofence", "severity": "major", "params": {"mode": "forbidden", "zones": {
        "type": "FeatureCollection", "features": [{"type": "Feature", "properties": {"name": "school"}, "geometry": {
            "type": "Polygon", "coordinates": [[[114.0, 30.0], [114.01, 30.0], [114.01, 30.01], [114.0, 30.01], [114.0, 30.0]]]}}]}}},
]


class GridwatchServer:
    def __init__(self, work: Path, max_connections: int = 20_000) -> None:
        from gridwatch.config import parse
        from gridwatch.streams.runtime import EdgeRuntime

        self.cfg = parse({"site": {"name": "bench", "data_dir": str(work)}, "alerts_mqtt": {"enabled": False},
                          "jt808": {"enabled": True, "port": 0, "auth_secret": "bench", "max_connections": max_connections,
                                    "idle_timeout_s": 600},
                          "rules": RULES}, base_dir=work)
        self.rt = EdgeRuntime(self.cfg)
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        import uvloop

        uvloop.run(self.rt.run(install_signals=False))

    def __enter__(self):
        self._thread.start()
        deadline = time.time() + 120
        while self.rt.jt808.port is None and time.time() < deadline:
            time.sleep(0.05)
        if self.rt.jt808.port is None:
            raise RuntimeError("gridwatch's JT/T 808 server did not start")
        self.port = self.rt.jt808.port
        return self

    def stored(self) -> int:
        return self.rt.store.count_positions()

    def __exit__(self, *exc) -> None:
        while self.rt._loop is None:
            time.sleep(0.01)
        self.rt.request_stop()
        self._thread.join(60)


def throughput(a, work: Path) -> dict:
    per = a.reports // a.terminals
    n = per * a.terminals
    runs: dict[str, list[float]] = {"bare": [], "bare_bulk": [], "gridwatch": []}
    lat: dict[str, list[tuple]] = {k: [] for k in runs}
    for r in range(a.repeat):
        base_s = int(time.time()) - per - 120
        for name, bulk in (("bare", False), ("bare_bulk", True)):
            with BareServer(bulk) as bare:
                res = run_client(bare.port, a.terminals, per, a.window, base_s)
                assert res["acked"] == n == bare.counts[0], (res, n, bare.counts)
            runs[name].append(n / res["seconds"])
            lat[name].append((res["latency_ms_p50"], res["latency_ms_p99"]))
            print(f"  run {r + 1}: {name:<10}{n / res['seconds']:>9,.0f} reports/s ({res['seconds']:.2f} s), answer "
                  f"p50 {res['latency_ms_p50']} ms p99 {res['latency_ms_p99']} ms", flush=True)
        d = work / f"run{r}"
        with GridwatchServer(d) as gw:
            res = run_client(gw.port, a.terminals, per, a.window, base_s)
            assert res["acked"] == n, (res, n)
            stored = gw.stored()  # answered only after the commit: all must be there already
        assert stored == n, f"gridwatch answered {n} reports but stored {stored}"
        runs["gridwatch"].append(n / res["seconds"])
        lat["gridwatch"].append((res["latency_ms_p50"], res["latency_ms_p99"]))
        print(f"  run {r + 1}: gridwatch {n / res['seconds']:>10,.0f} reports/s ({res['seconds']:.2f} s), answer "
              f"p50 {res['latency_ms_p50']} ms p99 {res['latency_ms_p99']} ms, {stored:,} stored", flush=True)
    ratios = [g / b for g, b in zip(runs["gridwatch"], runs["bare"])]
    ratios_bulk = [g / b for g, b in zip(runs["gridwatch"], runs["bare_bulk"])]
    out = {"terminals": a.terminals, "reports": n, "window": a.window,
           "bare_median": statistics.median(runs["bare"]), "bare_bulk_median": statistics.median(runs["bare_bulk"]),
           "gridwatch_median": statistics.median(runs["gridwatch"]),
           "ratio_median": statistics.median(ratios), "ratios": ratios,
           "ratio_bulk_median": statistics.median(ratios_bulk), "ratios_bulk": ratios_bulk, "runs": runs,
           "latency_ms": {k: {"p50_median": statistics.median(a for a, _ in v), "p99_median": statistics.median(b for _, b in v)}
                          for k, v in lat.items()}}
    print(f"location reports/s stored: gridwatch {out['gridwatch_median']:,.0f}")
    print(f"  vs bare server parsing frame by frame {out['bare_median']:,.0f}: {out['ratio_median']:.2f}x "
          f"(runs {', '.join(f'{x:.2f}' for x in ratios)}; target >= 0.7x)")
    print(f"  vs bare server with gridwatch's bulk parser {out['bare_bulk_median']:,.0f}: {out['ratio_bulk_median']:.2f}x "
          f"(runs {', '.join(f'{x:.2f}' for x in ratios_bulk)}; target >= 0.7x)")
    for k, v in out["latency_ms"].items():  # saturated: every terminal keeps --window reports unanswered
        print(f"  send-to-answer latency at this (saturating) load, {k}: p50 {v['p50_median']} ms, p99 {v['p99_median']} ms")
    return out


def max_terminals(a, work: Path, limit: int) -> dict:
    held = {}
    for k in [int(x) for x in a.max_terminals.split(",") if x]:
        if 2 * k + 64 > limit * 2 or k + 64 > limit:
            print(f"  {k:,} terminals: skipped (open-file limit {limit})")
            continue
        with GridwatchServer(work / f"held{k}", max_connections=k + 10) as gw:
            t0 = time.perf_counter()
            try:
                res = run_client(gw.port, k, 1, 1, int(time.time()) - 300)
                ok = res["acked"] == k and gw.stored() == k
            except (RuntimeError, subprocess.TimeoutExpired, AssertionError) as e:
                ok, res = False, {"error": str(e)[-300:]}
            conns = gw.rt.counters.snapshot().get("jt808", {}).get("connects", 0)
            rss = _rss_mb()
        held[k] = {"held": ok, "connects": conns, "rss_mb": rss, "seconds": time.perf_counter() - t0, **res}
        print(f"  {k:,} terminals: {'held' if ok else 'NOT held'} — {conns:,} connected, all logged in in "
              f"{res.get('login_s', float('nan')):.1f} s, a report each answered after its commit; bench process RSS {rss:.0f} MB", flush=True)
        if not ok:
            break
    best = max([k for k, v in held.items() if v["held"]], default=0)
    print(f"concurrent terminals held: {best:,} (largest level tried that held)")
    return {"levels": held, "max_held": best}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--client"]:
        client_main(argv[1:])
        return 0
    ap = argparse.ArgumentParser(prog="gridwatch bench jt808", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--terminals", type=int, default=200)
    ap.add_argument("--reports", type=int, default=100_000, help="location reports per run (split over the terminals)")
    ap.add_argument("--window", type=int, default=32, help="unanswered reports each terminal keeps in flight")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--max-terminals", default="1000,5000,10000,15000", help="levels of concurrent terminals to try ('' to skip)")
    ap.add_argument("--json", help="write the figures to this file")
    a = ap.parse_args(argv)
    limit = _raise_fd_limit()
    res = {}
    with tempfile.TemporaryDirectory(prefix="gw-bench-jt808-") as tmp:
        work = Path(tmp)
        if a.repeat > 0:
            print(f"[throughput] {a.terminals} terminals, {a.reports:,} reports per run, window {a.window}", flush=True)
            res["throughput"] = throughput(a, work)
        if a.max_terminals:
            print("[concurrent terminals]", flush=True)
            res["terminals"] = max_terminals(a, work, limit)
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
