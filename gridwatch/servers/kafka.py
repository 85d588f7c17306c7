"""A real single-node Apache Kafka 3.9.1 (KRaft: broker + controller in one JVM) on free
loopback ports, from Maven Central jars (Debian packages `openjdk-17-jre-headless` and `maven`).

    with KafkaServer() as kafka:
        kafka.create_topic("readings", partitions=2)
        AIOKafkaProducer(bootstrap_servers=kafka.bootstrap_servers)

The jars are fetched once by ``mvn dependency:copy-dependencies`` of ``kafka-pom.xml`` into
``<cache>/kafka-3.9.1/lib`` (cache = ``$GRIDWATCH_CACHE`` or ``~/.cache/gridwatch``); later
starts reuse them. ``fetch_kafka_jars()`` does just the fetch (CI warm-up step).

The broker is tuned for a small test box: ``-Xmx512m``, 2 network / 2 I/O threads, replication
factors 1, no initial rebalance delay, and ``offsets_partitions`` (default 4, Kafka's is 50)
partitions for ``__consumer_offsets`` so the first consumer group comes up quickly.
"""
from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path
from typing import Mapping

from ._base import (ManagedServer, ServerStartError, cache_root, free_ports, maven_fetch,
                    port_open, require_binary, run_checked)

KAFKA_VERSION = "3.9.1"
POM = Path(__file__).with_name("kafka-pom.xml")
_JAVA_HINT = "the Debian package `openjdk-17-jre-headless`"

_LOG4J = """\
log4j.rootLogger=INFO, stdout
log4j.appender.stdout=org.apache.log4j.ConsoleAppender
log4j.appender.stdout.layout=org.apache.log4j.PatternLayout
log4j.appender.stdout.layout.ConversionPattern=[%d{HH:mm:ss,SSS}] %p %m (%c)%n
log4j.logger.kafka=INFO
log4j.logger.org.apache.kafka=WARN
log4j.logger.kafka.server.KafkaConfig=WARN
log4j.logger.kafka.log=WARN
log4j.logger.state.change.logger=WARN
log4j.logger.kafka.coordinator=WARN
log4j.logger.org.apache.kafka.storage=WARN
log4j.logger.kafka.server.BrokerServer=INFO
"""


def kafka_lib_dir() -> Path:
    return cache_root() / f"kafka-{KAFKA_VERSION}" / "lib"


def fetch_kafka_jars() -> Path:
    """Fetch the broker's jars once (Maven Central); returns the lib/ directory."""
    return maven_fetch(POM, kafka_lib_dir())


class KafkaServer(ManagedServer):
    name = "kafka"
    binary_hint = _JAVA_HINT

    def __init__(self, *, heap: str = "512m", num_partitions: int = 1, offsets_partitions: int = 4,
                 auto_create_topics: bool = True, properties: Mapping[str, str] | None = None,
                 startup_timeout: float = 60.0, **kw):
        super().__init__(startup_timeout=startup_timeout, **kw)
        self.java = require_binary("java", _JAVA_HINT)
        self.heap = heap
        self.num_partitions = num_partitions
        self.offsets_partitions = offsets_partitions
        self.auto_create_topics = auto_create_topics
        self.extra_properties = dict(properties or {})
        self.port: int | None = None
        self.controller_port: int | None = None
        self.lib: Path | None = None
        self.props_path = self.workdir / "server.properties"
        self.data_dir = self.workdir / "data"
        self.cluster_id: str | None = None
        self.fetch_s: float | None = None  # seconds spent in the Maven fetch (0 when cached)

    @property
    def bootstrap_servers(self) -> str:
        return f"{self.host}:{self.port}"

    def _classpath(self) -> str:
        return f"{self.lib}/*"

    def _prepare(self, new_ports: bool) -> None:
        if self.lib is None:
            t0 = time.monotonic()
            self.lib = fetch_kafka_jars()
            self.fetch_s = time.monotonic() - t0
        if new_ports:
            self.port, self.controller_port = free_ports(2)
        props = {
            "process.roles": "broker,controller",
            "node.id": "1",
            "controller.quorum.voters": f"1@{self.host}:{self.controller_port}",
            "listeners": f"PLAINTEXT://{self.host}:{self.port},CONTROLLER://{self.host}:{self.controller_port}",
            "advertised.listeners": f"PLAINTEXT://{self.host}:{self.port}",
            "inter.broker.listener.name": "PLAINTEXT",
            "controller.listener.names": "CONTROLLER",
            "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
            "log.dirs": str(self.data_dir),
            "num.partitions": str(self.num_partitions),
            "num.network.threads": "2",
            "num.io.threads": "2",
            "background.threads": "2",
            "num.recovery.threads.per.data.dir": "1",
            "offsets.topic.replication.factor": "1",
            "offsets.topic.num.partitions": str(self.offsets_partitions),
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "transaction.state.log.num.partitions": "4",
            "default.replication.factor": "1",
            "min.insync.replicas": "1",
            "group.initial.rebalance.delay.ms": "0",
            "auto.create.topics.enable": str(self.auto_create_topics).lower(),
            "log.retention.hours": "24",
            "log.segment.bytes": str(64 * 1024 * 1024),
        }
        props.update(self.extra_properties)
        self.props_path.write_text("".join(f"{k}={v}\n" for k, v in props.items()))
        (self.workdir / "log4j.properties").write_text(_LOG4J)
        if not (self.data_dir / "meta.properties").exists():
            self._format()

    def _java(self, main: str, *args: str) -> list[str]:
        return [self.java, f"-Xmx{self.heap}", "-Xms128m", "-XX:+UseG1GC", "-XX:MaxGCPauseMillis=20",
                "-Djava.awt.headless=true", "-Djava.net.preferIPv4Stack=true",
                f"-Dlog4j.configuration=file:{self.workdir / 'log4j.properties'}",
                f"-Dkafka.logs.dir={self.workdir / 'logs'}",
                "-cp", self._classpath(), main, *args]

    def _format(self) -> None:
        self.cluster_id = self.cluster_id or _random_cluster_id()
        cmd = [self.java, "-Xmx128m", "-XX:TieredStopAtLevel=1", "-Xshare:auto",
               f"-Dlog4j.configuration=file:{self.workdir / 'log4j.properties'}",
               "-cp", self._classpath(), "kafka.tools.StorageTool", "format",
               "-t", self.cluster_id, "-c", str(self.props_path), "--ignore-formatted"]
        p = run_checked(cmd, what="kafka StorageTool format", timeout=120)
        with open(self.log_path, "ab") as log:
            log.write(b"=== storage format\n" + p.stdout + p.stderr)

    def _command(self):
        return self._java("kafka.Kafka", str(self.props_path))

    def _ready(self) -> bool:
        if not port_open(self.port):
            return False
        return "Kafka Server started" in self.log_tail(200_000)

    # -- helpers --------------------------------------------------------------------------
    def create_topic(self, name: str, partitions: int = 1, *, timeout: float = 30.0) -> None:
        """Create a topic through the admin API (aiokafka) and wait until it has leaders."""
        asyncio.run(self._create_topic(name, partitions, timeout))

    async def _create_topic(self, name: str, partitions: int, timeout: float) -> None:
        from aiokafka.admin import AIOKafkaAdminClient, NewTopic

        admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap_servers, request_timeout_ms=int(timeout * 1000))
        await admin.start()
        try:
            await admin.create_topics([NewTopic(name, partitions, 1)], timeout_ms=int(timeout * 1000))
            loop = asyncio.get_running_loop()
            deadline = loop.time() + timeout
            while True:
                desc = await admin.describe_topics([name])
                parts = desc[0].get("partitions", []) if desc else []
                if len(parts) == partitions and all(p.get("leader", -1) >= 0 for p in parts):
                    return
                if loop.time() > deadline:
                    raise TimeoutError(f"topic {name} has no leaders after {timeout}s: {desc}")
                await asyncio.sleep(0.1)
        finally:
            await admin.close()


def _random_cluster_id() -> str:
    """A KRaft cluster id: 16 random bytes, URL-safe base64 without padding (what
    ``StorageTool random-uuid`` prints) - made here to save a JVM start. Like Kafka's own
    ``Uuid.randomUuid``, never one that starts with "-" (1 in 64 would): the storage tool's
    argument parser takes ``-t -xyz…`` for a missing value and the broker never starts."""
    import base64
    while True:
        cid = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cid.startswith("-"):
            return cid


__all__ = ["KafkaServer", "fetch_kafka_jars", "kafka_lib_dir", "KAFKA_VERSION", "ServerStartError"]
