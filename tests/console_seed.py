"""Warnings written through the store's own commit, for the console tests."""
from __future__ import annotations

from gridwatch.records import Warning, warning_id
from gridwatch.regions import parse_path
from gridwatch.streams.store import Store

EAST = "Jiangcheng/Riverside District/East Town/E-02"
WEST = "Jiangcheng/Riverside District/West Town/W-01"
HILL = "Jiangcheng/Hill County/Pine Town/P-01"


def make_warning(source: str, region: str, start_ts: int, rule: str = "sewer_overflow", severity: str = "major",
                 message: str = "Sewer level high", value: float = 2.7, evidence: dict | None = None,
                 state: str = "active", kind: str = "threshold") -> Warning:
    return Warning(warning_id(source, rule, 0, start_ts), rule, kind, severity, source, parse_path(region), state,
                   start_ts, start_ts, start_ts + 60_000 if state == "cleared" else None, value, message, None,
                   evidence or {"metric": "water_level"})


def seed(path, warnings: list[Warning]) -> None:
    st = Store(path, retention_days=3650)
    st.commit(warnings=warnings)
    st.close()


def serve(cfg) -> tuple[object, str]:
    """A console for ``cfg`` on a free loopback port, answering: (console, base URL)."""
    import time

    import httpx

    from gridwatch.console.server import Console

    con = Console(cfg, mqtt=False)
    base = f"http://127.0.0.1:{con.start_thread(port=0)}"
    deadline = time.time() + 10
    while True:
        try:
            httpx.get(base + "/api/health", timeout=1)
            return con, base
        except httpx.TransportError:
            assert time.time() < deadline, "console did not start"
            time.sleep(0.05)
