"""Shared fixtures: real servers (Mosquitto, Kafka, QuestDB) started on free loopback ports.

A server that cannot start FAILS the test when ``CI`` is set (``CI=true``/``1``/``yes``), and
skips it with the reason otherwise (e.g. no Java or no network for the first Maven fetch on a
laptop). Kafka and QuestDB are session-scoped (seconds to start); Mosquitto starts per test
(~0.1 s) through ``mosquitto_factory`` so each test picks its own auth/ACL/TLS.
"""
from __future__ import annotations

import os

import pytest

from gridwatch.servers._base import ServerStartError


def pytest_configure(config):
    config.addinivalue_line("markers", "kafka: needs a real Kafka broker (started by the fixtures)")
    config.addinivalue_line("markers", "questdb: needs a real QuestDB (InfluxDB v2 write API) server")


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def start_or_skip(server, what: str):
    """Start ``server``; in CI a failure fails the test, locally it skips with the reason."""
    try:
        server.start()
    except (ServerStartError, OSError) as e:
        server.stop()
        msg = f"{what} could not start: {e}"
        if in_ci():
            pytest.fail(msg, pytrace=False)
        pytest.skip(msg)
    return server


def _construct_or_skip(factory, what: str, **kw):
    try:
        return factory(**kw)
    except (ServerStartError, OSError) as e:  # e.g. a missing binary
        msg = f"{what} unavailable: {e}"
        if in_ci():
            pytest.fail(msg, pytrace=False)
        pytest.skip(msg)


@pytest.fixture
def mosquitto_factory():
    """``mosquitto_factory(users=..., acl=..., tls=...)`` -> a started MosquittoServer,
    stopped at teardown (also when the test fails)."""
    from gridwatch.servers.mosquitto import MosquittoServer

    started = []

    def make(**kw):
        srv = _construct_or_skip(MosquittoServer, "mosquitto", **kw)
        started.append(srv)
        return start_or_skip(srv, "mosquitto")

    yield make
    for srv in started:
        srv.stop()


@pytest.fixture
def mosquitto(mosquitto_factory):
    """An anonymous Mosquitto on a free port."""
    return mosquitto_factory()


@pytest.fixture(scope="session")
def kafka_server():
    from gridwatch.servers.kafka import KafkaServer

    srv = _construct_or_skip(KafkaServer, "kafka")
    start_or_skip(srv, "kafka")
    yield srv
    srv.stop()


@pytest.fixture(scope="session")
def questdb_server():
    from gridwatch.servers.questdb import QuestDBServer

    srv = _construct_or_skip(QuestDBServer, "questdb")
    start_or_skip(srv, "questdb")
    yield srv
    srv.stop()


@pytest.fixture(scope="session")
def gstreamer():
    """The GStreamer RTSP server can run here (in CI: it must; locally the test skips with why)."""
    from gridwatch.servers.rtsp import gstreamer_missing

    why = gstreamer_missing()
    if why:
        if in_ci():
            pytest.fail(f"RTSP server cannot start in CI: {why}")
        pytest.skip(why)


@pytest.fixture(scope="module")
def browser():
    """Debian's chromium driven by Playwright (its own browser download cannot work here).
    Module-scoped: Playwright's sync API keeps an event loop running in the main thread while it
    is started, so tests after the browser's module that call asyncio.run() need it stopped."""
    import shutil

    exe = os.environ.get("GRIDWATCH_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
    try:
        from playwright.sync_api import Error as PlaywrightError, sync_playwright
    except ImportError as e:
        pytest.fail(f"playwright is not installed: {e}", pytrace=False) if in_ci() else pytest.skip(f"playwright: {e}")
    pw = sync_playwright().start()
    try:
        b = pw.chromium.launch(executable_path=exe, headless=True, args=["--no-sandbox", "--disable-background-networking"])
    except PlaywrightError as e:
        pw.stop()
        msg = f"chromium ({exe}) could not start: {str(e).splitlines()[0]}"
        pytest.fail(msg, pytrace=False) if in_ci() else pytest.skip(msg)
    yield b
    b.close()
    pw.stop()
