"""The ``gridwatch`` command line: demo, run, check-config, status, alerts, dead-letters, devices, bench.

A user's mistake (a missing or broken file, a config error, a damaged store) ends in one line on
stderr saying what is wrong, where, and what to do, with exit status 2 - never a traceback.
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import sqlite3
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from gridwatch.config import (ConfigError, MetricsConfig, SiteConfig, experimental_rules, explain, explain_detector_kinds,
                              explain_metrics, explain_rule_kinds,
                              explain_values, load, load_sections, preflight, secrets_world_readable, store_file_problem,
                              store_path)

DEFAULT_DB = Path("var") / "gridwatch.db"
BENCH_SUITES = {"processors": "gridwatch.benchmarks.processors", "mqtt": "gridwatch.benchmarks.mqtt",
                "console": "gridwatch.benchmarks.console",
                "sustained": "gridwatch.benchmarks.sustained", "cluster": "gridwatch.benchmarks.cluster", "video": "gridwatch.benchmarks.video",
                "fuzz": "gridwatch.benchmarks.fuzz", "jt808": "gridwatch.benchmarks.jt808",
                "false-alarms": "gridwatch.benchmarks.false_alarms", "ebike": "gridwatch.benchmarks.ebike_rates"}


class UserError(Exception):
    """A mistake the user can fix: printed as one line (what, where, what to do), exit status 2."""


def _fmt_ts(ms: int | None) -> str:
    if ms is None:
        return "-"
    return datetime.fromtimestamp(ms / 1000, timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


def print_event(event: str, w, out=sys.stdout) -> None:
    sev = w.severity.upper()
    val = "-" if w.value != w.value else f"{w.value:.4g}"
    zone = f" zone={w.zone}" if w.zone else ""
    text = w.message
    if event == "cleared":  # the stored message is the raise text: say that it is over, and how long it lasted
        ended = w.cleared_ts if w.cleared_ts is not None else w.last_ts
        text = f"cleared after {_fmt_duration(ended - w.start_ts)} (it was raised for: {w.message})"
    try:
        print(f"{_fmt_ts(w.last_ts if event != 'raised' else w.start_ts)}  {event.upper():8} {sev:8} {w.rule:24} "
              f"{w.source:22} value={val}{zone}  region={w.region.as_path() or '-'}  {text}", file=out, flush=True)
    except BrokenPipeError:
        if out is not sys.stdout:
            raise
        # stdout's reader went away (`gridwatch run ... | head`): stop printing; the runtime goes on
        # storing and publishing warnings
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def _fmt_duration(ms: int) -> str:
    s = max(0, int(round(ms / 1000)))
    if s < 120:
        return f"{s} s"
    if s < 7200:
        return f"{s // 60} min {s % 60} s"
    return f"{s // 3600} h {s % 3600 // 60} min"


def kernels_cold() -> bool:
    """True when Numba's on-disk cache holds no compiled rule kernels yet (a first run compiles them)."""
    import numba

    from gridwatch.streams import kernels

    here = Path(kernels.__file__).parent
    roots = [Path(numba.config.CACHE_DIR)] if numba.config.CACHE_DIR else [here / "__pycache__"]
    for mod in ("sensor", "position"):
        if not any(any(r.rglob(f"{mod}.*.nbi")) for r in roots if r.is_dir()):
            return True
    return False


def _say_compiling() -> bool:
    if not kernels_cold():
        return False
    print("gridwatch: compiling the rule kernels with Numba - first run only, up to a minute or two; "
          "later runs load them from the cache ...", file=sys.stderr, flush=True)
    return True


def _load(path: str, loader=load, *args):
    """load() (or another reader of the file) with the file named in every error."""
    try:
        return loader(path, *args)
    except ConfigError as e:
        if str(path) in str(e):
            raise
        raise ConfigError(f"{path}: {e}") from None


def _config(path: str):
    """The parsed config and everything `run` needs checked; a problem is one line, exit 2."""
    cfg = _load(path)
    problems = preflight(cfg)
    if problems:
        raise ConfigError("\n".join(f"{path}: {p}" for p in problems))
    return cfg


def cmd_check_config(a) -> int:
    if a.explain:
        if a.file:
            cfg = _load(a.file)
            print(f"# {a.file}: every setting as gridwatch reads it ((default) = not set in the file; secrets not shown)")
            print("\n".join(explain_values(cfg)))
        else:
            print("# every setting: key = default - description")
            print("\n".join(explain()))
        print()
        print("\n".join(explain_rule_kinds()))
        print()
        print("\n".join(explain_detector_kinds()))
        print()
        print("\n".join(explain_metrics()))
        if not a.file:
            return 0
    cfg = _config(a.file)
    if secrets_world_readable(a.file):
        print(f"warning: {a.file} holds a secret and is readable by every user (chmod 600 it, or use ${{ENV}} substitution)",
              file=sys.stderr)
    for line in experimental_rules(cfg):
        print(f"note: {line}", file=sys.stderr)
    print(f"{a.file}: ok — {len(cfg.rules)} rules, {len(cfg.devices)} devices, "
          f"mqtt={'%s:%d' % (cfg.mqtt.host, cfg.mqtt.port) if cfg.mqtt else 'off'}, store={os.path.normpath(cfg.data_dir / cfg.store.path)}")
    return 0


def _listen_problem(bind: str, port: int) -> str | None:
    """Why the metrics endpoint could not listen on bind:port (None: it can), found by binding and
    closing a socket there."""
    import errno
    import socket

    try:
        with socket.socket(socket.AF_INET6 if ":" in bind else socket.AF_INET, socket.SOCK_STREAM) as sk:
            sk.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sk.bind((bind, port))
    except OSError as e:
        if e.errno == errno.EADDRINUSE:
            return f"{bind}:{port} is in use (another gridwatch? `gridwatch status -c FILE` tells); choose another port, or 0 for none"
        return f"cannot listen on {bind}:{port} ({e.strerror or e}); check metrics.bind and metrics.port"
    return None


def _before_start(rt) -> None:
    if rt.cfg.mqtt is not None:  # series from the start at 0, so rate() and dashboards see them before the first event
        for src, name in (("mqtt", "messages"), ("mqtt", "readings_stored"), ("mqtt", "positions_stored"), ("mqtt", "connects"),
                          ("mqtt", "disconnects"), ("mqtt", "connect_failures"), ("warnings", "events"), ("alerts_mqtt", "published")):
            rt.counters.add(src, name, 0)
    if _say_compiling():  # the runtime's own warm-up then finds them compiled
        t0 = time.monotonic()
        rt.pipeline.warm_up()
        print(f"gridwatch: rule kernels compiled in {time.monotonic() - t0:.0f} s", file=sys.stderr, flush=True)


def cmd_run(a) -> int:
    from gridwatch.observability import setup_logging

    cfg = _config(a.config)  # nothing is created on disk before the whole config is known to be good
    why = _listen_problem(cfg.metrics.bind, cfg.metrics.port) if cfg.metrics.port else None
    if why:
        raise UserError(f"{a.config}: metrics: {why}")
    from gridwatch.streams.runtime import EdgeRuntime, run_blocking

    secrets = tuple(s for s in ((cfg.mqtt.password if cfg.mqtt else None),) if s)
    from gridwatch.observability import config_secrets  # every secret of the config: passwords, tokens, URL passwords

    setup_logging(cfg.log.level, cfg.log.format, secrets + config_secrets(cfg))
    if secrets_world_readable(a.config):
        import logging

        logging.getLogger("gridwatch").warning(f"{a.config} holds a secret and is readable by every user")
    on_events = (lambda evs: [print_event(e, w) for e, w in evs]) if not a.quiet else None
    from gridwatch.streams.datadir import DataDirBusy

    try:
        rt = EdgeRuntime(cfg, on_events=on_events)
    except DataDirBusy as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    video = None
    console = None
    if cfg.console.enabled:  # the console beside the runtime, fed by its warning events
        from gridwatch.console.server import Console

        console = Console(cfg, counters=rt.counters, poll=False)
        print_events, on_events = on_events, (lambda evs: (console.on_events(evs), print_events and print_events(evs)))
        rt.on_events = on_events
        print(f"gridwatch console on http://{cfg.console.bind}:{console.start_thread()}/", flush=True)
    if cfg.cameras:  # the video path shares the runtime's store, MQTT publisher and counters
        from gridwatch.streams.video import VideoRuntime

        def on_status(ch, counters=rt.counters) -> None:  # `gridwatch status` shows each camera's state and why
            counters.info(f"camera/{ch.camera}", "camera_state", state=ch.new.value, reason=ch.reason or "")

        video = VideoRuntime(cfg, store=rt.store, publisher=rt.publisher, counters=rt.counters, on_events=on_events,
                             on_status=on_status)
        video.start()
    _before_start(rt)
    try:
        run_blocking(rt.run(duration_s=a.duration))
    finally:
        if video is not None:
            video.stop()
        if console is not None:
            console.stop()
    return 0


def cmd_worker(a) -> int:
    from gridwatch.observability import setup_logging
    from gridwatch.streams.cluster import run_worker

    try:
        cfg = load(a.config)
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2
    if a.bootstrap:
        cfg.kafka.bootstrap_servers = a.bootstrap
    if a.stats_file:
        cfg.worker.stats_file = a.stats_file
    from gridwatch.observability import config_secrets  # every secret of the config (sasl_password too), not only influx.token

    setup_logging(cfg.log.level, cfg.log.format, config_secrets(cfg))
    return run_worker(cfg, naive=a.naive, loglevel=cfg.log.level)


def cmd_camera_snapshot(a) -> int:
    """One frame of a configured camera, written at the size the camera sends it: an operator
    reads the corners of masks and zones off it in any image editor."""
    import cv2

    from gridwatch.hw.cameras import draw_polygons, snapshot
    from gridwatch.ingest.video import SourceError, redact_url

    cfg = _load(a.config)
    cams = {c.name: c for c in cfg.cameras}
    cam = cams.get(a.name)
    if cam is None:
        raise UserError(f"{a.config}: no camera named {a.name!r} (cameras: {', '.join(cams) or 'none'})")
    out = Path(a.output or f"{a.name}.jpg")
    try:
        img = snapshot(cam)
    except SourceError as e:
        raise UserError(f"camera {a.name!r} ({redact_url(cam.url)}): {e}") from None
    h, w = img.shape[:2]
    if a.draw:
        img = draw_polygons(img, cam)
    jpeg = out.suffix.lower() in ("", ".jpg", ".jpeg")
    try:
        ok, buf = cv2.imencode(out.suffix if not jpeg else ".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 95] if jpeg else [])
    except cv2.error:
        ok = False
    if not ok:
        raise UserError(f"-o {out}: cannot write that image type (use .jpg or .png)")
    out.write_bytes(buf.tobytes())
    print(f"{out}: {w}x{h} pixels from camera {a.name!r}; masks and zone corners are [x, y] pixels of this picture "
          f"(x from 0 to {w - 1} left to right, y from 0 to {h - 1} top to bottom)")
    return 0


def cmd_hw(a) -> int:
    from gridwatch.hw.cameras import report

    print(report())
    return 0


def cmd_demo(a) -> int:
    from gridwatch.demo.replay import run_demo

    _say_compiling()
    return run_demo(Path(a.data_dir), speed=a.speed, quiet=a.quiet)


def _open_store_ro(a):
    from gridwatch.streams.store import Store

    path = _load(a.config, store_path) if a.config else Path(a.db)
    if not path.exists():
        raise UserError(f"no store at {path} (run `gridwatch demo` or `gridwatch run -c FILE` first, or pass --db/-c)")
    why = store_file_problem(path)
    if why:
        raise UserError(why)
    return Store(path)


def _reading_store(fn):
    """A damaged store (sqlite3.DatabaseError) is one line naming the file and what to do."""
    def run(a) -> int:
        try:
            return fn(a)
        except sqlite3.DatabaseError as e:
            path = store_path(a.config) if a.config else Path(a.db)
            raise UserError(f"store {path} cannot be read ({e}): it is damaged or not a gridwatch store; move it aside "
                            "(gridwatch run creates a new one) or restore it from a backup") from None
    return run


def _since(s: str | None) -> int | None:
    if not s:
        return None
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    if s[-1] in units and s[:-1].replace(".", "", 1).isdigit():
        return int((time.time() - float(s[:-1]) * units[s[-1]]) * 1000)
    try:
        return int(datetime.fromisoformat(s).replace(tzinfo=timezone.utc).timestamp() * 1000)
    except ValueError:
        raise UserError(f"--since {s!r}: expected e.g. 30m, 2h, 1d or an ISO time such as 2026-11-20T08:00") from None


@_reading_store
def cmd_alerts(a) -> int:
    st = _open_store_ro(a)
    rows = st.warnings(state=a.state, rule=a.rule, source=a.source, region=a.region, severity=a.severity,
                       since=_since(a.since), limit=a.limit)
    if a.json:
        for r in rows:
            print(json.dumps(r, default=str))
        return 0
    print(f"{'start (UTC)':19}  {'state':7} {'severity':8} {'rule':24} {'source':22} {'value':>10}  region")
    for r in rows:
        v = "-" if r["value"] is None else f"{r['value']:.4g}"
        print(f"{_fmt_ts(r['start_ts'])}  {r['state']:7} {r['severity']:8} {r['rule']:24} {r['source']:22} {v:>10}  "
              f"{r['region'] or '-'}{'  zone=' + r['zone'] if r['zone'] else ''}")
    print(f"{len(rows)} warning(s)")
    return 0


@_reading_store
def cmd_dead_letters(a) -> int:
    st = _open_store_ro(a)
    counts = st.dead_letter_counts()
    print("rejections by reason: " + (", ".join(f"{k}={v}" for k, v in sorted(counts.items())) or "none"))
    for d in st.dead_letters(a.reason, a.limit):
        more = f" (and {d['count'] - 1} more readings of this message)" if d["count"] > 1 else ""
        print(f"{_fmt_ts(d['received_ms'])}  {d['reason']:18} {d['source']:40} {d['detail']}{more}")
        print(f"{'':21}payload: {bytes(d['payload'] or b'')[:120]!r}")
    return 0


@_reading_store
def cmd_devices(a) -> int:
    st = _open_store_ro(a)
    rows = st.devices(vendor=a.vendor, kind=a.kind)
    print(f"{'device':24} {'vendor':10} {'kind':18} {'gateway':24} region")
    for r in rows[:a.limit]:
        print(f"{r['id']:24} {r['vendor']:10} {r['kind']:18} {r['gateway'] or '-':24} {r['region'] or '-'}")
    print(f"{len(rows)} device(s)" + (f", {a.limit} shown" if len(rows) > a.limit else ""))
    return 0


def scrape(url: str, timeout: float = 3.0) -> dict[str, list[tuple[dict[str, str], float]]]:
    """Prometheus text from ``url`` -> metric name -> [(labels, value)]."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(url, timeout=timeout) as r:
        text = r.read().decode("utf-8")
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for fam in text_string_to_metric_families(text):
        for smp in fam.samples:
            if smp.name.endswith("_created"):
                continue
            out.setdefault(smp.name.removesuffix("_total"), []).append((dict(smp.labels), smp.value))
    return out


def status_lines(before: dict, after: dict, interval_s: float) -> list[str]:
    """Per source: what flows (per second over the interval), lag, rejections and drops by reason;
    per camera: its state and last error."""
    def by_source(m: dict, name: str) -> dict[str, float]:
        return {lab.get("source", ""): v for lab, v in m.get(name, [])}

    def reasons(m: dict, name: str, src: str) -> dict[str, float]:
        return {lab["reason"]: v for lab, v in m.get(name, []) if lab.get("source") == src}

    sources = sorted({lab.get("source", "") for samples in after.values() for lab, _ in samples} - {""})
    lines = []
    for src in sources:
        if src.startswith("camera/"):
            continue
        parts = []
        msgs = by_source(after, "gridwatch_messages").get(src)
        if msgs is not None:
            rate = (msgs - by_source(before, "gridwatch_messages").get(src, 0.0)) / interval_s
            parts.append(f"{'flowing' if rate > 0 else 'idle'} {rate:.1f} msg/s ({msgs:.0f} messages")
            stored = by_source(after, "gridwatch_readings_stored").get(src, 0.0)
            pos = by_source(after, "gridwatch_positions_stored").get(src, 0.0)
            parts[-1] += f", {stored:.0f} readings and {pos:.0f} positions stored)"
        lag = by_source(after, "gridwatch_lag_ms").get(src)
        if lag is not None:
            parts.append(f"lag {lag / 1000:.1f} s{' (LAGGING)' if lag > 60_000 else ''}")
        inbox = by_source(after, "gridwatch_inbox").get(src)
        if inbox is not None:
            parts.append(f"inbox {inbox:.0f}")
        conn = by_source(after, "gridwatch_connects").get(src)
        if conn is not None:
            disc = by_source(after, "gridwatch_disconnects").get(src, 0.0)
            fail = by_source(after, "gridwatch_connect_failures").get(src, 0.0)
            parts.append(f"{'connected' if conn > disc else 'NOT CONNECTED'} ({conn:.0f} connects, {disc:.0f} disconnects, "
                         f"{fail:.0f} failed)")
        rej = reasons(after, "gridwatch_rejected", src)
        if msgs is not None or rej:
            parts.append("rejected " + (f"{sum(rej.values()):.0f} (" + ", ".join(f"{k}={v:.0f}" for k, v in sorted(rej.items())) + ")"
                                        if rej else "0"))
        drop = reasons(after, "gridwatch_dropped", src)
        if drop:
            parts.append(f"dropped {sum(drop.values()):.0f} (" + ", ".join(f"{k}={v:.0f}" for k, v in sorted(drop.items())) + ")")
        known = {"gridwatch_messages", "gridwatch_readings_stored", "gridwatch_positions_stored", "gridwatch_lag_ms",
                 "gridwatch_inbox", "gridwatch_connects", "gridwatch_disconnects", "gridwatch_connect_failures"}
        rest = [f"{n.removeprefix('gridwatch_')}={v:g}" for n in sorted(after) if n not in known
                and n not in ("gridwatch_rejected", "gridwatch_dropped") for lab, v in after[n] if lab.get("source") == src]
        if rest:
            parts.append(" ".join(rest))
        lines.append(f"{src:10} " + "; ".join(parts))
    states = {lab["source"]: lab for lab, _ in after.get("gridwatch_camera_state_info", [])}
    for src in sources:
        if not src.startswith("camera/"):
            continue
        lab = states.get(src, {})
        state = lab.get("state") or ("online" if by_source(after, "gridwatch_online").get(src) else "unknown")
        dec = by_source(after, "gridwatch_decoded").get(src)
        rate = "" if dec is None else f"; decoding {(dec - by_source(before, 'gridwatch_decoded').get(src, 0.0)) / interval_s:.1f} frames/s"
        err = f"; last error: {lab['reason']}" if lab.get("reason") and state != "online" else ""
        lines.append(f"{src:10} {state}{rate}{err}")
    return lines


def cmd_status(a) -> int:
    import urllib.error

    if a.url:
        url, site = a.url, ""
    else:
        parts = _load(a.config, load_sections, {"site": SiteConfig, "metrics": MetricsConfig})
        m = parts["metrics"]
        if not m.port:
            raise UserError(f"{a.config}: metrics.port is 0, so a running gridwatch exports nothing to read; set e.g. "
                            "[metrics] port = 9464 and restart it")
        url, site = f"http://{m.bind}:{m.port}/metrics", parts["site"].name
    try:
        before = scrape(url)
        time.sleep(a.interval)
        after = scrape(url)
    except (urllib.error.URLError, OSError) as e:
        why = getattr(e, "reason", e)
        raise UserError(f"no gridwatch answers at {url} ({why}); is `gridwatch run -c {a.config or 'FILE'}` running?") from None
    print(f"{site or 'gridwatch'} at {url} (rates over {a.interval:g} s):")
    for line in status_lines(before, after, a.interval):
        print("  " + line)
    return 0


def cmd_bench(a) -> int:
    mod = BENCH_SUITES.get(a.suite)
    if mod is None:
        print(f"unknown suite {a.suite!r}; suites: {', '.join(BENCH_SUITES)}", file=sys.stderr)
        return 2
    return importlib.import_module(mod).main(a.args)


def cmd_demo_then_console(a) -> int:
    """The demo, then the operator console over its store (unless --no-console)."""
    rc = cmd_demo(a)
    if rc or a.no_console:
        return rc
    from gridwatch.demo.replay import serve_console

    return serve_console(Path(a.data_dir) / "gridwatch.db", Path(a.data_dir), port=a.port)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="gridwatch", description="Streaming IoT and video-sensor ingestion for grid-governance command centres.")
    sub = p.add_subparsers(dest="cmd", required=True)

    d = sub.add_parser("demo", help="replay bundled telemetry through the real pipeline; no servers needed")
    d.add_argument("--data-dir", default="var", help="where the demo store goes (default: ./var)")
    d.add_argument("--speed", type=float, default=600.0, help="replay speed-up over recorded time (default 600x)")
    d.add_argument("--quiet", action="store_true", help="print only the summary")
    d.set_defaults(fn=cmd_demo)
    d.add_argument("--no-console", action="store_true", help="do not serve the operator console over the demo's store afterwards")
    d.add_argument("--port", type=int, default=8080, help="console port (default 8080)")
    d.set_defaults(fn=cmd_demo_then_console)

    r = sub.add_parser("run", help="run the edge runtime from a config file")
    r.add_argument("-c", "--config", required=True)
    r.add_argument("--duration", type=float, default=None, help="stop after this many seconds")
    r.add_argument("--quiet", action="store_true", help="do not print warning events")
    r.set_defaults(fn=cmd_run)

    w = sub.add_parser("worker", help="run a cluster worker (Kafka + faust-streaming) from a config file")
    w.add_argument("-c", "--config", required=True)
    w.add_argument("--bootstrap", help="override kafka.bootstrap_servers")
    w.add_argument("--stats-file", help="override worker.stats_file")
    w.add_argument("--naive", action="store_true", help="run the one-event-at-a-time baseline agent (benchmarks)")
    w.set_defaults(fn=cmd_worker)

    c = sub.add_parser("check-config", help="validate a config file (--explain lists every setting)")
    c.add_argument("file", nargs="?")
    c.add_argument("--explain", action="store_true")
    c.set_defaults(fn=cmd_check_config)

    for name, fn, helptext in (("alerts", cmd_alerts, "list stored warnings"),
                               ("dead-letters", cmd_dead_letters, "list rejected inputs and why"),
                               ("devices", cmd_devices, "list known devices: kind and gateway (a DJI aircraft's dock)")):
        s = sub.add_parser(name, help=helptext)
        s.add_argument("-c", "--config", help="config file (its store is read)")
        s.add_argument("--db", default=str(DEFAULT_DB), help=f"store file (default {DEFAULT_DB})")
        s.add_argument("--limit", type=int, default=100)
        if name == "alerts":
            s.add_argument("--state", choices=["active", "cleared"])
            s.add_argument("--rule")
            s.add_argument("--source")
            s.add_argument("--region", help="region path prefix, e.g. 'Lincang/Linxiang'")
            s.add_argument("--severity", choices=["info", "minor", "major", "critical"])
            s.add_argument("--since", help="e.g. 2h, 30m, 1d or an ISO time")
            s.add_argument("--json", action="store_true", help="one JSON object per line")
        elif name == "devices":
            s.add_argument("--vendor")
            s.add_argument("--kind")
        else:
            s.add_argument("--reason")
        s.set_defaults(fn=fn)

    st = sub.add_parser("status", help="what a running `gridwatch run` sees: per source flow, lag, rejections; per camera its state")
    st.add_argument("-c", "--config", help="the config `gridwatch run` was started with (its [metrics] endpoint is read)")
    st.add_argument("--url", help="metrics endpoint to read instead, e.g. http://127.0.0.1:9464/metrics")
    st.add_argument("--interval", type=float, default=1.0, help="seconds between the two reads rates come from (default 1)")
    st.set_defaults(fn=cmd_status)

    cam = sub.add_parser("camera", help="camera tools: snapshot (one frame, to draw masks and zones on)")
    cam_sub = cam.add_subparsers(dest="camera_cmd", required=True)
    snap = cam_sub.add_parser("snapshot", help="write one frame of a configured camera at its own size and print that size")
    snap.add_argument("name", help="the camera's name in the config")
    snap.add_argument("-c", "--config", required=True)
    snap.add_argument("-o", "--output", help="image file to write, .jpg or .png (default: NAME.jpg)")
    snap.add_argument("--draw", action="store_true", help="draw the configured masks (red) and zones (yellow) on it")
    snap.set_defaults(fn=cmd_camera_snapshot)

    h = sub.add_parser("hw", help="what this box has for video: ONNX providers, hardware decoders, camera URL templates")
    h.set_defaults(fn=cmd_hw)

    b = sub.add_parser("bench", help=f"run a benchmark suite ({', '.join(BENCH_SUITES)})")
    b.add_argument("suite")
    b.add_argument("args", nargs=argparse.REMAINDER)
    b.set_defaults(fn=cmd_bench)

    from gridwatch.console.cli import add_parser as add_console_parser

    add_console_parser(sub)

    a = p.parse_args(argv)
    if a.cmd == "check-config" and not a.file and not a.explain:
        p.error("check-config needs FILE (or --explain)")
    if a.cmd == "status" and not a.config and not a.url:
        p.error("status needs -c FILE (or --url)")
    try:
        rc = a.fn(a)
        sys.stdout.flush()  # inside the try: a reader that went away (`| head`) is not an error
        return rc
    except (ConfigError, UserError) as e:
        msg = str(e)
        print(msg if isinstance(e, UserError) or msg.startswith("config error") else
              "\n".join(f"config error: {line}" for line in msg.splitlines()), file=sys.stderr)
        return 2
    except FileNotFoundError as e:
        print(f"gridwatch: file not found: {e.filename}" if e.filename else f"gridwatch: a file was not found ({e})", file=sys.stderr)
        return 2
    except sqlite3.DatabaseError as e:  # `run` opening a store that is damaged past its header
        where = _load(a.config, store_path) if getattr(a, "config", None) else getattr(a, "db", "the store")
        print(f"gridwatch: store {where} cannot be used ({e}); move it aside (gridwatch creates a new one) or restore "
              "it from a backup", file=sys.stderr)
        return 2
    except PermissionError as e:
        print(f"gridwatch: permission denied: {e.filename or e} (run as a user that may read/write it, or chown it)", file=sys.stderr)
        return 2
    except BrokenPipeError:
        # stdout's reader closed early (e.g. `gridwatch alerts --json | head -1`): stop quietly; point
        # stdout at /dev/null so the interpreter's final flush does not complain either
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
