"""The ``gridwatch`` command line: demo, run, check-config, alerts, dead-letters, bench."""
from __future__ import annotations

import argparse
import importlib
import json
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from gridwatch.config import ConfigError, explain, load, secrets_world_readable

DEFAULT_DB = Path("var") / "gridwatch.db"
BENCH_SUITES = {"processors": "gridwatch.benchmarks.processors", "mqtt": "gridwatch.benchmarks.mqtt",
                "sustained": "gridwatch.benchmarks.sustained", "cluster": "gridwatch.benchmarks.cluster", "video": "gridwatch.benchmarks.video",
                "fuzz": "gridwatch.benchmarks.fuzz"}


def _fmt_ts(ms: int | None) -> str:
    if ms is None:
        return "-"
    return datetime.fromtimestamp(ms / 1000, timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


def print_event(event: str, w, out=sys.stdout) -> None:
    sev = w.severity.upper()
    val = "-" if w.value != w.value else f"{w.value:.4g}"
    zone = f" zone={w.zone}" if w.zone else ""
    print(f"{_fmt_ts(w.last_ts if event != 'raised' else w.start_ts)}  {event.upper():8} {sev:8} {w.rule:24} "
          f"{w.source:22} value={val}{zone}  region={w.region.as_path() or '-'}  {w.message}", file=out, flush=True)


def cmd_check_config(a) -> int:
    if a.explain:
        print("\n".join(explain()))
        if not a.file:
            return 0
    try:
        cfg = load(a.file)
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2
    if secrets_world_readable(a.file):
        print(f"warning: {a.file} holds a secret and is readable by every user (chmod 600 it, or use ${{ENV}} substitution)",
              file=sys.stderr)
    print(f"{a.file}: ok — {len(cfg.rules)} rules, {len(cfg.devices)} devices, "
          f"mqtt={'%s:%d' % (cfg.mqtt.host, cfg.mqtt.port) if cfg.mqtt else 'off'}, store={cfg.data_dir / cfg.store.path}")
    return 0


def cmd_run(a) -> int:
    from gridwatch.observability import setup_logging
    from gridwatch.streams.runtime import EdgeRuntime, run_blocking

    try:
        cfg = load(a.config)
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2
    secrets = tuple(s for s in ((cfg.mqtt.password if cfg.mqtt else None),) if s)
    from gridwatch.observability import config_secrets  # every secret of the config: passwords, tokens, URL passwords

    setup_logging(cfg.log.level, cfg.log.format, secrets + config_secrets(cfg))
    if secrets_world_readable(a.config):
        import logging

        logging.getLogger("gridwatch").warning(f"{a.config} holds a secret and is readable by every user")
    on_events = (lambda evs: [print_event(e, w) for e, w in evs]) if not a.quiet else None
    rt = EdgeRuntime(cfg, on_events=on_events)
    video = None
    if cfg.cameras:  # the video path shares the runtime's store, MQTT publisher and counters
        from gridwatch.streams.video import VideoRuntime

        video = VideoRuntime(cfg, store=rt.store, publisher=rt.publisher, counters=rt.counters, on_events=on_events)
        video.start()
    try:
        run_blocking(rt.run(duration_s=a.duration))
    finally:
        if video is not None:
            video.stop()
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


def cmd_hw(a) -> int:
    from gridwatch.hw.cameras import report

    print(report())
    return 0


def cmd_demo(a) -> int:
    from gridwatch.demo.replay import run_demo

    return run_demo(Path(a.data_dir), speed=a.speed, quiet=a.quiet)


def _open_store_ro(a):
    from gridwatch.streams.store import Store

    if a.config:
        cfg = load(a.config)
        path = cfg.data_dir / cfg.store.path
    else:
        path = Path(a.db)
    if not path.exists():
        print(f"no store at {path} (run `gridwatch demo` or `gridwatch run -c FILE` first, or pass --db/-c)", file=sys.stderr)
        return None
    return Store(path)


def _since(s: str | None) -> int | None:
    if not s:
        return None
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    if s[-1] in units and s[:-1].replace(".", "", 1).isdigit():
        return int((time.time() - float(s[:-1]) * units[s[-1]]) * 1000)
    return int(datetime.fromisoformat(s).replace(tzinfo=timezone.utc).timestamp() * 1000)


def cmd_alerts(a) -> int:
    st = _open_store_ro(a)
    if st is None:
        return 1
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


def cmd_dead_letters(a) -> int:
    st = _open_store_ro(a)
    if st is None:
        return 1
    counts = st.dead_letter_counts()
    print("rejections by reason: " + (", ".join(f"{k}={v}" for k, v in sorted(counts.items())) or "none"))
    for d in st.dead_letters(a.reason, a.limit):
        more = f" (and {d['count'] - 1} more readings of this message)" if d["count"] > 1 else ""
        print(f"{_fmt_ts(d['received_ms'])}  {d['reason']:18} {d['source']:40} {d['detail']}{more}")
        print(f"{'':21}payload: {bytes(d['payload'] or b'')[:120]!r}")
    return 0


def cmd_bench(a) -> int:
    mod = BENCH_SUITES.get(a.suite)
    if mod is None:
        print(f"unknown suite {a.suite!r}; suites: {', '.join(BENCH_SUITES)}", file=sys.stderr)
        return 2
    return importlib.import_module(mod).main(a.args)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="gridwatch", description="Streaming IoT and video-sensor ingestion for grid-governance command centres.")
    sub = p.add_subparsers(dest="cmd", required=True)

    d = sub.add_parser("demo", help="replay bundled telemetry through the real pipeline; no servers needed")
    d.add_argument("--data-dir", default="var", help="where the demo store goes (default: ./var)")
    d.add_argument("--speed", type=float, default=600.0, help="replay speed-up over recorded time (default 600x)")
    d.add_argument("--quiet", action="store_true", help="print only the summary")
    d.set_defaults(fn=cmd_demo)

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
                               ("dead-letters", cmd_dead_letters, "list rejected inputs and why")):
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
        else:
            s.add_argument("--reason")
        s.set_defaults(fn=fn)

    h = sub.add_parser("hw", help="what this box has for video: ONNX providers, hardware decoders, camera URL templates")
    h.set_defaults(fn=cmd_hw)

    b = sub.add_parser("bench", help=f"run a benchmark suite ({', '.join(BENCH_SUITES)})")
    b.add_argument("suite")
    b.add_argument("args", nargs=argparse.REMAINDER)
    b.set_defaults(fn=cmd_bench)

    a = p.parse_args(argv)
    if a.cmd == "check-config" and not a.file and not a.explain:
        p.error("check-config needs FILE (or --explain)")
    return a.fn(a)


if __name__ == "__main__":
    sys.exit(main())
