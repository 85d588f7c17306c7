"""``gridwatch demo``: replay the bundled recording through the real pipeline, no servers needed.

Messages go through the same codec, Numba processors, warning lifecycle and SQLite store as
``gridwatch run``; only the source differs (a recording instead of an MQTT broker). Time is the
recording's: batches are cut every 5 s of recorded time and timers (offline devices) tick on the
recorded clock, replayed ``speed`` times faster than real time.
"""
from __future__ import annotations

import json
import sys
import time
from collections import Counter
from pathlib import Path

from gridwatch.config import load
from gridwatch.ingest.codec import Message
from gridwatch.observability import Counters
from gridwatch.streams.pipeline import Pipeline
from gridwatch.streams.store import Store

HERE = Path(__file__).parent
RECORDING = HERE / "telemetry.jsonl"
CONFIG = HERE / "demo.toml"
T0_MS = 1795161600000  # 2026-11-20T08:00:00Z, start of the recording


def load_recording(path: Path = RECORDING) -> list[tuple[float, str, bytes]]:
    out = []
    with path.open(encoding="utf-8") as f:
        for line in f:
            r = json.loads(line)
            p = r["payload"]
            if isinstance(p, dict) and "__raw__" in p:
                raw = (p["__raw__"] + " " * p.get("__pad__", 0)).encode()
            else:
                raw = json.dumps(p).encode()
            out.append((r["at"], r["topic"], raw))
    return out


DEMO_USERS = (  # name, password, role, desk (region scope)
    ("city", "city-demo-pass", "supervisor", "Jiangcheng"),
    ("county", "county-demo-pass", "operator", "Jiangcheng/Riverside District"),
    ("town", "town-demo-pass", "operator", "Jiangcheng/Riverside District/East Town"),
)


def serve_console(db: Path, data_dir: Path, port: int = 8080, out=sys.stdout) -> int:
    """Serve the operator console over the demo's store until Ctrl-C, with a desk per tier."""
    from gridwatch.console.server import Console
    from gridwatch.streams.cases import CaseStore

    cfg = load(CONFIG)
    cases = CaseStore(db, cfg.console.deadlines_h)
    for name, pw, role, scope in DEMO_USERS:
        cases.add_user(name, pw, role, scope)
    cases.close()
    con = Console(cfg, store_path=db, evidence_root=data_dir / cfg.video.evidence_dir)
    try:
        sock = con.bind_socket("127.0.0.1", port)
    except OSError as e:
        print(f"console: port {port} is taken ({e.strerror}); pass --port N, or --no-console", file=sys.stderr)
        return 2
    print(f"\nOperator console: http://127.0.0.1:{con.port}/  (Ctrl-C stops it; --no-console skips it)", file=out)
    for name, pw, role, scope in DEMO_USERS:
        print(f"  log in as {name:7} password {pw:17} {role:10} desk {scope}", file=out)
    out.flush()
    con.serve_forever(sock)
    return 0


def run_demo(data_dir: Path, speed: float = 600.0, quiet: bool = False, out=sys.stdout) -> int:
    from gridwatch.cli import print_event

    cfg = load(CONFIG)
    data_dir.mkdir(parents=True, exist_ok=True)
    db = data_dir / "gridwatch.db"
    for suffix in ("", "-wal", "-shm"):
        Path(str(db) + suffix).unlink(missing_ok=True)
    store = Store(db, retention_days=3650)
    counters = Counters()
    pipe = Pipeline(cfg, store, counters, source="replay")
    rec = load_recording()
    print(f"gridwatch demo: replaying {len(rec)} recorded messages (2 h of telemetry from {len(set(r[1] for r in rec))} topics) "
          f"at {speed:g}x through codecs -> Numba processors -> warnings -> {db}", file=out, flush=True)
    events = Counter()
    wall0 = time.monotonic()
    step_ms = 5000
    i = 0
    t = T0_MS
    end = T0_MS + int(rec[-1][0] * 1000) + step_ms
    while t < end:
        t += step_ms
        batch = []
        while i < len(rec) and T0_MS + rec[i][0] * 1000 <= t:
            batch.append(Message(rec[i][1], rec[i][2], T0_MS + int(rec[i][0] * 1000)))
            i += 1
        evs = pipe.process(batch, t) if batch else []
        evs += pipe.tick(t)
        for e, w in evs:
            events[e] += 1
            if not quiet and e != "updated":
                print_event(e, w, out)
        if speed > 0:
            lag = (t - T0_MS) / 1000 / speed - (time.monotonic() - wall0)
            if lag > 0:
                time.sleep(lag)
    snap = counters.snapshot().get("replay", {})
    rejected = snap.get("rejected", {})
    print(f"\n{snap.get('messages', 0)} messages: {snap.get('readings_stored', 0)} readings and "
          f"{snap.get('positions_stored', 0)} positions stored; {sum(rejected.values())} inputs rejected "
          f"({', '.join(f'{k}={v}' for k, v in sorted(rejected.items()))}); "
          f"warnings: {events.get('raised', 0)} raised, {events.get('updated', 0)} updated, {events.get('cleared', 0)} cleared.",
          file=out)
    print(f"Stored in {db}. Try: gridwatch alerts --db {db}   |   gridwatch dead-letters --db {db}", file=out)
    store.close()
    return 0
