"""How the console runs: beside ``gridwatch run`` (fed by the runtime's events) or on its own
(polling the store every ``console.poll_s``); uvicorn on uvloop in its own thread either way, so
the runtime's event loop and pipeline thread never wait on a web request."""
from __future__ import annotations

import asyncio
import json
import logging
import socket
import threading
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any

from gridwatch.config import ConsoleConfig, GridwatchConfig
from gridwatch.console.live import SOURCE, Broadcaster, row_event, warning_event
from gridwatch.observability import Counters
from gridwatch.streams.cases import CaseStore

log = logging.getLogger("gridwatch.console")
CASE_SCHEMA_ID = "gridwatch.case-event/1"


def case_topic(prefix: str, region: str, action: str) -> str:
    parts = (region.split("/") + ["", "", "", ""])[:4]
    parts = [p.replace("+", "_").replace("#", "_") or "-" for p in parts]
    return "/".join([prefix, *parts, action])


def case_payload(rec: dict[str, Any], case: dict[str, Any] | None) -> bytes:
    r = {k: rec.get(k) for k in ("seq", "action_id", "ts", "actor", "action", "from_state", "to_state", "desk", "note")}
    c = {"state": (case or {}).get("state", rec["to_state"]), "desk": (case or {}).get("desk"),
         "version": (case or {}).get("version"), "escalations": (case or {}).get("escalations", 0)}
    return json.dumps({"schema": CASE_SCHEMA_ID, "event": rec["action"], "warning_id": rec["case_id"],
                       "region": rec.get("region", ""), "record": r, "case": c}).encode()


class CaseEventPublisher:
    """Case events on MQTT: ``gridwatch/cases/<city>/<county>/<town>/<grid>/<action>``, QoS 1."""

    def __init__(self, cfg: GridwatchConfig, counters: Counters, prefix: str = "gridwatch/cases") -> None:
        from gridwatch.mqtt_client import connect_async, make_client

        self.prefix, self.counters = prefix, counters
        self.client = make_client(cfg.mqtt, f"{cfg.site.name}-console", persistent=False)
        self.client.max_queued_messages_set(10_000)  # bounded while the broker is away; the rest is counted
        connect_async(self.client, cfg.mqtt, persistent=False)
        self.client.loop_start()

    def publish(self, rec: dict[str, Any], case: dict[str, Any] | None) -> None:
        info = self.client.publish(case_topic(self.prefix, rec.get("region", ""), rec["action"]), case_payload(rec, case), qos=1)
        if info.rc != 0:
            self.counters.drop(SOURCE, f"case_mqtt_rc_{info.rc}")
        else:
            self.counters.add(SOURCE, "case_events_published")

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


class LoginLimiter:
    """Failed logins per key (user name, client address): at most ``max_failures`` per ``window_s``.
    At most ``max_keys`` keys are tracked; the oldest is forgotten first (counted)."""

    def __init__(self, counters: Counters, max_failures: int = 5, window_s: float = 300.0, max_keys: int = 10_000) -> None:
        self.counters, self.max_failures, self.window_s, self.max_keys = counters, max_failures, window_s, max_keys
        self._fails: OrderedDict[str, list[float]] = OrderedDict()
        self._lock = threading.Lock()

    def blocked(self, keys: list[str], now: float) -> float:
        """Seconds until a login may be tried again (0 = now)."""
        with self._lock:
            wait = 0.0
            for k in keys:
                ts = [t for t in self._fails.get(k, []) if now - t < self.window_s]
                if len(ts) >= self.max_failures:
                    wait = max(wait, self.window_s - (now - ts[0]))
            return wait

    def failed(self, keys: list[str], now: float) -> None:
        with self._lock:
            for k in keys:
                ts = [t for t in self._fails.pop(k, []) if now - t < self.window_s][-self.max_failures:]
                ts.append(now)
                self._fails[k] = ts
                while len(self._fails) > self.max_keys:
                    self._fails.popitem(last=False)
                    self.counters.drop(SOURCE, "login_limiter_evicted")

    def succeeded(self, keys: list[str]) -> None:
        with self._lock:
            for k in keys:
                self._fails.pop(k, None)


class Console:
    def __init__(self, cfg: GridwatchConfig, store_path: str | Path | None = None, counters: Counters | None = None,
                 poll: bool = True, mqtt: bool = True, evidence_root: str | Path | None = None) -> None:
        self.cfg = cfg
        self.ccfg: ConsoleConfig = cfg.console
        self.counters = counters or Counters()
        self.store_path = Path(store_path) if store_path else cfg.data_dir / cfg.store.path
        self.cases = CaseStore(self.store_path, self.ccfg.deadlines_h, self.ccfg.session_hours)
        self.broadcaster = Broadcaster(self.counters, self.ccfg.sse_queue_max, self.ccfg.sse_max_clients)
        # failed logins: 5 per user name, 50 per client address (many desks share a proxy's address), per 5 min
        self.limiter = LoginLimiter(self.counters)
        self.ip_limiter = LoginLimiter(self.counters, max_failures=50)
        self.poll = poll
        self.evidence_root = Path(evidence_root) if evidence_root else cfg.data_dir / cfg.video.evidence_dir
        # operators' photos: their own evidence folder, out of reach of the video snapshots' retention
        self.case_photo_root = self.evidence_root.parent / "case-evidence"
        # evidence clips of video warnings ([video.clips] dir), beside the snapshots' folder
        self.clip_root = (self.evidence_root.parent if evidence_root else cfg.data_dir) / cfg.video.clips.dir
        self.geojson = self._load_geojson()
        self.publisher: CaseEventPublisher | None = None
        if mqtt and cfg.mqtt is not None and self.ccfg.cases_mqtt:
            self.publisher = CaseEventPublisher(cfg, self.counters)
        from gridwatch.console.app import create_app

        self.app = create_app(self)
        self._server = None
        self._thread: threading.Thread | None = None
        self.port: int | None = None

    def _load_geojson(self) -> list[dict[str, Any]]:
        g = self.cfg.regions.geojson
        if not g:
            return []
        try:
            return json.loads(self.cfg.resolve(g).read_text(encoding="utf-8")).get("features", [])
        except (OSError, ValueError) as e:
            log.warning("console: grid cells not loaded from %s: %s", g, e)
            return []

    # --- event feeds -------------------------------------------------------------------------
    def on_events(self, events) -> None:
        """The runtime's ``on_events`` callback (pipeline thread): [(event, Warning)]."""
        self.cases.counts_changed()
        self.broadcaster.publish_threadsafe([warning_event(e, w) for e, w in events])

    def case_changed(self, rec: dict[str, Any]) -> None:
        self.cases.counts_changed()
        case = self.cases.case_row(rec["case_id"])
        self.broadcaster.publish_threadsafe([{"type": "case", "event": rec["action"], "id": rec["case_id"],
                                              "region": rec.get("region", ""), "state": rec["to_state"],
                                              "actor": rec["actor"], "sent": time.time()}])
        if self.publisher is not None:
            self.publisher.publish(rec, case)

    async def _poll_store(self) -> None:
        loop = asyncio.get_running_loop()
        rowid, last_ts = await loop.run_in_executor(None, self.cases.cursor)
        while True:
            await asyncio.sleep(self.ccfg.poll_s)
            try:
                rows, new_rowid, last_ts = await loop.run_in_executor(None, self.cases.changes_since, rowid, last_ts)
            except Exception as e:  # noqa: BLE001  (a locked or busy store: next round)
                self.counters.add(SOURCE, "poll_errors")
                log.debug("console poll failed: %s", e)
                continue
            evs = [row_event("raised" if r["rid"] > rowid else ("cleared" if r["state"] == "cleared" else "updated"), r)
                   for r in rows]
            rowid = new_rowid
            if evs:
                self.cases.counts_changed()
                self.broadcaster.publish(evs)

    async def _sweep_overdue(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                for rec in await loop.run_in_executor(None, self.cases.escalate_overdue):
                    self.counters.add(SOURCE, "escalated_overdue")
                    self.case_changed(rec)
            except Exception as e:  # noqa: BLE001
                self.counters.add(SOURCE, "sweep_errors")
                log.warning("console: overdue sweep failed: %s", e)
            await asyncio.sleep(30.0)

    async def startup(self) -> list[asyncio.Task]:
        self.broadcaster.bind(asyncio.get_running_loop())
        tasks = []
        if self.poll:
            tasks.append(asyncio.create_task(self._poll_store()))
        if self.ccfg.escalate_overdue:
            tasks.append(asyncio.create_task(self._sweep_overdue()))
        return tasks

    # --- serving -----------------------------------------------------------------------------
    def bind_socket(self, host: str | None = None, port: int | None = None) -> socket.socket:
        host = host or self.ccfg.bind
        port = self.ccfg.port if port is None else port
        s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((host, port))
        s.listen(512)
        s.setblocking(False)
        self.port = s.getsockname()[1]
        self.host = host
        return s

    def _uvicorn(self):
        import uvicorn

        config = uvicorn.Config(self.app, loop="uvloop", log_level="warning", access_log=False, lifespan="on",
                                timeout_graceful_shutdown=2, ws="none")
        return uvicorn.Server(config)

    def start_thread(self, host: str | None = None, port: int | None = None) -> int:
        """Serve in a background thread (beside the runtime); returns the port."""
        sock = self.bind_socket(host, port)
        self._server = self._uvicorn()
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [sock]}, name="gridwatch-console", daemon=True)
        self._thread.start()
        return self.port

    def serve_forever(self, sock: socket.socket | None = None) -> None:
        """Serve in this thread until Ctrl-C / SIGTERM (on ``sock`` from :meth:`bind_socket`, or a new one)."""
        sock = sock or self.bind_socket()
        self._server = self._uvicorn()
        try:
            self._server.run(sockets=[sock])
        finally:
            self.close()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/"

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(10)
        self.close()

    def close(self) -> None:
        if self.publisher is not None:
            self.publisher.stop()
            self.publisher = None
