"""Live updates: one bounded queue per server-sent-events client.

Events come from the runtime's ``on_events`` callback (console served beside ``gridwatch run``),
from polling the store (console on its own) and from case actions. Each client sees only events
in its desk's scope. A client whose queue is full (it stopped reading) is dropped and counted; its
browser's EventSource reconnects by itself and reloads what it missed from the store.
"""
from __future__ import annotations

import asyncio
import json
import threading
import time
from dataclasses import dataclass
from typing import Any

from gridwatch.observability import Counters
from gridwatch.streams.cases import Scope

SOURCE = "console"


@dataclass(eq=False)
class Client:
    scope: Scope
    queue: asyncio.Queue
    dropped: bool = False


class Broadcaster:
    def __init__(self, counters: Counters, queue_max: int = 256, max_clients: int = 1000) -> None:
        self.counters = counters
        self.queue_max = queue_max
        self.max_clients = max_clients
        self.clients: set[Client] = set()
        self.loop: asyncio.AbstractEventLoop | None = None
        self._lock = threading.Lock()

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop

    def connect(self, scope: Scope) -> Client | None:
        if len(self.clients) >= self.max_clients:
            self.counters.drop(SOURCE, "sse_refused_full")
            return None
        c = Client(scope, asyncio.Queue(self.queue_max))
        self.clients.add(c)
        self.counters.set(SOURCE, "sse_clients", len(self.clients))
        return c

    def disconnect(self, c: Client) -> None:
        self.clients.discard(c)
        self.counters.set(SOURCE, "sse_clients", len(self.clients))

    def publish(self, events: list[dict[str, Any]]) -> None:
        """On the console's event loop."""
        for ev in events:
            self.counters.add(SOURCE, "events")
            data = None
            for c in list(self.clients):
                if c.dropped or not c.scope.holds(ev.get("region") or ""):
                    continue
                if data is None:  # encoded once for every client
                    data = f"data: {json.dumps(ev)}\n\n"
                try:
                    c.queue.put_nowait(data)
                except asyncio.QueueFull:
                    c.dropped = True  # a slow client: drop it (its EventSource reconnects and reloads)
                    self.clients.discard(c)
                    while not c.queue.empty():
                        c.queue.get_nowait()
                    c.queue.put_nowait(None)
                    self.counters.drop(SOURCE, "sse_slow_client")
                    self.counters.set(SOURCE, "sse_clients", len(self.clients))

    def publish_threadsafe(self, events: list[dict[str, Any]]) -> None:
        loop = self.loop
        if loop is None or loop.is_closed() or not events:
            return
        try:
            loop.call_soon_threadsafe(self.publish, events)
        except RuntimeError:  # the loop is closing
            pass


def warning_event(event: str, w) -> dict[str, Any]:
    """From a runtime event (event, Warning)."""
    return {"type": "warning", "event": event, "id": w.id, "region": w.region.as_path(), "severity": w.severity,
            "rule": w.rule, "source": w.source, "sent": time.time()}


def row_event(event: str, r: dict[str, Any]) -> dict[str, Any]:
    """From a store row seen by the poller."""
    return {"type": "warning", "event": event, "id": r["id"], "region": r["region"], "severity": r["severity"],
            "rule": r["rule"], "source": r["source"], "sent": time.time()}
