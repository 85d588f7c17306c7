"""A real QuestDB 9.2 on a free loopback port: the stand-in for InfluxDB here, since its HTTP
server accepts the InfluxDB v2 write API (``/api/v2/write``, any token, any org/bucket) and
answers SQL at ``/exec`` (Debian packages `openjdk-17-jre-headless` and `maven`).

    with QuestDBServer() as qdb:
        InfluxSink(qdb.url, token="x", org="gridwatch", bucket="gridwatch")
        qdb.wait_rows("select count() from readings", lambda r: r[0][0] == 10)

The server jar (it carries its Linux native libraries) is fetched once by
``mvn dependency:copy-dependencies`` of ``questdb-pom.xml`` into ``<cache>/questdb-<v>/lib``.
9.2.x is the last line that runs on Java 17.

Only HTTP is enabled (PostgreSQL wire, ILP over TCP/UDP and the "min" health server are off),
telemetry is off. Each InfluxDB measurement becomes a table (tags → SYMBOL columns, strings →
VARCHAR, floats → DOUBLE, ``i`` integers → LONG, the point timestamp → ``timestamp``). Tables
created by line protocol are WAL tables: rows become visible asynchronously (poll).
"""
from __future__ import annotations

import json
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any, Callable

from ._base import ManagedServer, ServerStartError, cache_root, free_ports, maven_fetch, require_binary

QUESTDB_VERSION = "9.2.3"
POM = Path(__file__).with_name("questdb-pom.xml")
_JAVA_HINT = "the Debian package `openjdk-17-jre-headless`"


def questdb_lib_dir() -> Path:
    return cache_root() / f"questdb-{QUESTDB_VERSION}" / "lib"


def fetch_questdb_jar() -> Path:
    """Fetch the server jar once (Maven Central); returns its path."""
    lib = maven_fetch(POM, questdb_lib_dir())
    jar = lib / f"questdb-{QUESTDB_VERSION}.jar"
    if not jar.exists():
        raise ServerStartError(f"{jar} missing after the Maven fetch (pom and QUESTDB_VERSION disagree?)")
    return jar


class QuestDBError(RuntimeError):
    """A SQL statement failed; ``.status`` and ``.body`` carry QuestDB's answer."""

    def __init__(self, msg: str, status: int | None = None, body: str = ""):
        super().__init__(msg)
        self.status, self.body = status, body


class QuestDBServer(ManagedServer):
    name = "questdb"
    binary_hint = _JAVA_HINT

    def __init__(self, *, heap: str = "512m", workers: int = 2, config: dict[str, str] | None = None,
                 startup_timeout: float = 60.0, **kw):
        super().__init__(startup_timeout=startup_timeout, **kw)
        self.java = require_binary("java", _JAVA_HINT)
        self.heap = heap
        self.workers = workers
        self.extra_config = dict(config or {})
        self.http_port: int | None = None
        self.jar: Path | None = None
        self.root = self.workdir / "root"
        self.fetch_s: float | None = None

    @property
    def port(self) -> int | None:
        return self.http_port

    @property
    def url(self) -> str:
        """Base URL for the InfluxDB v2 client (``/api/v2/write`` lives under it)."""
        return f"http://{self.host}:{self.http_port}"

    def _prepare(self, new_ports: bool) -> None:
        if self.jar is None:
            t0 = time.monotonic()
            self.jar = fetch_questdb_jar()
            self.fetch_s = time.monotonic() - t0
        if new_ports:
            (self.http_port,) = free_ports(1)
        conf = {
            "http.bind.to": f"{self.host}:{self.http_port}",
            "http.min.enabled": "false",
            "pg.enabled": "false",
            "line.tcp.enabled": "false",
            "line.udp.enabled": "false",
            "line.http.enabled": "true",
            "telemetry.enabled": "false",
            "telemetry.hide.tables": "true",
            "metrics.enabled": "false",
            "http.version.check.enabled": "false",
            "shared.worker.count": str(self.workers),
            "http.worker.count": "1",
            "wal.apply.worker.count": "1",
            "cairo.wal.apply.look.ahead.txn.count": "20",
            "log.level.verbose": "false",
        }
        conf.update(self.extra_config)
        (self.root / "conf").mkdir(parents=True, exist_ok=True)
        (self.root / "conf" / "server.conf").write_text("".join(f"{k}={v}\n" for k, v in conf.items()))

    def _command(self):
        return [self.java, f"-Xmx{self.heap}", "-Xms128m", "-XX:+UseParallelGC",
                "-Djava.awt.headless=true", "-Dout=" + str(self.root / "log-stdout.txt"),
                "--add-exports", "java.base/jdk.internal.math=io.questdb",
                "-p", str(self.jar), "-m", "io.questdb/io.questdb.ServerMain",
                "-d", str(self.root), "-n"]

    def _ready(self) -> bool:
        return bool(self.query("select 1", timeout=1.0))

    # -- SQL ------------------------------------------------------------------------------
    def exec(self, sql: str, *, timeout: float = 10.0) -> dict[str, Any]:
        """Run ``sql`` via ``/exec``; the decoded JSON answer (``columns``, ``dataset`` ...)."""
        url = f"{self.url}/exec?" + urllib.parse.urlencode({"query": sql})
        try:
            with urllib.request.urlopen(url, timeout=timeout) as r:
                body = r.read().decode()
        except urllib.error.HTTPError as e:
            body = e.read().decode(errors="replace")
            raise QuestDBError(f"QuestDB {e.code} for {sql!r}: {body[:500]}", e.code, body) from None
        ans = json.loads(body)
        if "error" in ans:
            raise QuestDBError(f"QuestDB error for {sql!r}: {ans['error']}", 200, body)
        return ans

    def query(self, sql: str, *, timeout: float = 10.0) -> list[list[Any]]:
        """Rows of ``sql`` as lists (timestamps come back as ISO-8601 strings, microseconds, Z)."""
        return self.exec(sql, timeout=timeout).get("dataset", [])

    def columns(self, sql: str) -> list[str]:
        return [c["name"] for c in self.exec(sql).get("columns", [])]

    def wait_rows(self, sql: str, until: Callable[[list[list[Any]]], bool] | int, *,
                  timeout: float = 20.0, interval: float = 0.1) -> list[list[Any]]:
        """Poll ``sql`` until ``until(rows)`` holds (an int = that many rows); rows written
        over line protocol become visible asynchronously, and the table itself only appears
        after the first commit (a "table does not exist" error is retried)."""
        check = (lambda rows: len(rows) >= until) if isinstance(until, int) else until
        deadline = time.monotonic() + timeout
        last: Any = None
        while True:
            try:
                rows = self.query(sql)
                if check(rows):
                    return rows
                last = rows
            except QuestDBError as e:
                last = e
            if time.monotonic() > deadline:
                raise TimeoutError(f"{sql!r} not satisfied after {timeout}s; last: {str(last)[:500]}")
            time.sleep(interval)

    def wait_wal_applied(self, table: str, timeout: float = 20.0) -> None:
        """Wait until all WAL transactions of ``table`` are applied (visible to SQL)."""
        self.wait_rows(f"select writerTxn, sequencerTxn, suspended from wal_tables() where name = '{table}'",
                       lambda rows: bool(rows) and rows[0][0] == rows[0][1], timeout=timeout)


__all__ = ["QuestDBServer", "QuestDBError", "fetch_questdb_jar", "questdb_lib_dir", "QUESTDB_VERSION"]
