"""Configuration: one TOML file parsed into typed models.

* Every field has a description (``gridwatch check-config --explain`` prints them).
* ``${NAME}`` and ``${NAME:-default}`` in string values are replaced from the environment.
* Errors name the offending key, the value and what was expected (:class:`ConfigError`).
"""
from __future__ import annotations

import difflib
import os
import sys
import re
import stat
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, ValidationError, field_validator, model_validator

from gridwatch.detectors.settings import VideoCameraConfig, VideoConfig

_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-(.*?))?\}")


class ConfigError(ValueError):
    """A configuration problem, phrased for the person who wrote the file."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)  # inf would pass ge=/gt= checks


class SiteConfig(_Model):
    name: str = Field("gridwatch", description="Name of this gridwatch instance (used in client ids and status topics).")
    data_dir: str = Field("var", description="Folder for the embedded store, spool and evidence, relative to the config file unless absolute.")


class TlsConfig(_Model):
    ca_file: str | None = Field(None, description="CA certificate (PEM) that signed the broker's certificate; system CAs when omitted.")
    cert_file: str | None = Field(None, description="Client certificate (PEM) for certificate authentication.")
    key_file: str | None = Field(None, description="Private key (PEM) of the client certificate.")
    verify: StrictBool = Field(True, description="Verify the broker's certificate and host name. Turning this off is for lab use only (a TOML true/false; a string such as \"no\" is an error, not a silent off).")


class MqttConfig(_Model):
    host: str = Field("127.0.0.1", description="Broker host name or address.")
    port: int = Field(1883, ge=1, le=65535, description="Broker port (8883 is customary for TLS).")
    username: str | None = Field(None, description="User name for password authentication.")
    password: str | None = Field(None, description="Password; write it as ${MQTT_PASSWORD} to keep it out of the file. Never logged.")
    tls: TlsConfig | None = Field(None, description="TLS settings; omit for plain TCP (loopback or lab only).")
    protocol: Literal["5", "3.1.1"] = Field("5", description="MQTT protocol version.")
    client_id: str | None = Field(None, description="Client id; a persistent session needs a stable one. Default: '<site.name>-ingest'.")
    topics: list[str] = Field(["devices/#"], description="Subscriptions for readings. The topic scheme is devices/<vendor>/<device_kind>/<device_id>.")
    shared_group: str | None = Field(None, description="MQTT 5 shared-subscription group: processes with the same group split the topics between them.")
    qos: Literal[0, 1] = Field(1, description="Subscription QoS. 1 = at least once: a message is acknowledged only after its readings are committed.")
    session_expiry_s: int = Field(86400, ge=0, description="MQTT 5 session expiry: how long the broker keeps queued messages while gridwatch is away.")
    clean_start: bool = Field(False, description="Start a fresh session (drops what the broker queued while gridwatch was away).")
    retained: Literal["skip", "ingest"] = Field("skip", description="Retained messages the broker sends because gridwatch subscribed (it subscribes on every start and reconnect). 'skip': not stored (MQTT 5: the subscription asks for Retain Handling 2, so the broker does not send them; MQTT 3.1.1: they arrive flagged RETAIN, are acknowledged and counted as mqtt.retained_skipped); what vendors publish while gridwatch is away waits in its persistent session and is stored once. 'ingest': store them too, as a device's last known value, again after every restart or reconnect. Retained messages published while gridwatch is connected are live data and are always stored.")
    receive_maximum: int = Field(2000, ge=1, le=65535, description="MQTT 5 flow control: most unacknowledged QoS 1 messages in flight to gridwatch. Larger batches more per commit.")
    inbox_max_messages: int = Field(20000, ge=10, le=10_000_000, description="When this many received messages wait in gridwatch's inbox (a slow commit or a full spool behind it), gridwatch stops reading the broker's connection until the pipeline catches up: TCP back-pressure keeps the backlog in the broker. Needed because not every broker honours Receive Maximum (Mosquitto 2.0.11 does not once acknowledgements flow).")
    keepalive_s: int = Field(30, ge=5, description="Keep-alive interval.")
    reconnect_min_s: float = Field(0.5, gt=0, description="First reconnect delay; doubles up to reconnect_max_s.")
    reconnect_max_s: float = Field(30.0, gt=0, description="Longest reconnect delay.")

    @field_validator("username", "password")
    @classmethod
    def _empty_is_none(cls, v: str | None) -> str | None:
        """``${GRIDWATCH_MQTT_PASSWORD:-}`` left unset means no credentials, not an empty one."""
        return v or None


class IngestConfig(_Model):
    max_payload_bytes: int = Field(256 * 1024, ge=64, description="Messages larger than this are rejected (dead letter 'oversized').")
    max_future_skew_s: float = Field(300.0, ge=0, description="Readings stamped further than this in the future are rejected ('future_timestamp').")
    max_age_s: float = Field(7 * 86400.0, ge=0, description="Readings older than this are rejected ('stale_timestamp'); 0 disables the check.")
    unknown_devices: Literal["register", "reject"] = Field("register", description="A device not listed under [[devices]]: register it on first sight, or reject its readings.")
    batch_max_messages: int = Field(5000, ge=1, description="Largest number of messages decoded as one batch (a batch is whatever arrived while the previous one was processed).")
    profile_dirs: list[str] = Field(default_factory=list, description="Extra folders of vendor profile TOML files (see hw/profiles); they override bundled ones of the same vendor.")
    dead_letter_keep: int = Field(100_000, ge=0, description="Dead-letter records kept in the store (oldest removed first).")
    dead_letter_max_mb: float = Field(64.0, gt=0, description="Most space dead letters take in the store (topic, explanation and payload together; oldest removed first).")
    max_topic_bytes: int = Field(256, ge=16, le=65535, description="Topics longer than this are rejected at once as 'bad_topic' (never parsed or remembered).")
    dedup_window_s: float = Field(86400.0, ge=0, le=20 * 86400, description="Duplicate readings and position fixes (same series or device, same timestamp) are recognised this far back, by the time they arrive, also across restarts (the window is seeded from the store at startup; cluster workers keep one per readings partition and read it back from the readings topic when a partition is restored) and rejected as 'duplicate'; older re-sends are stored again. 0 = only the last few timestamps per series, forgotten at restart.")
    dedup_max_mb: float = Field(64.0, gt=0, le=16384, description="Memory bound of the duplicate window (cluster workers: per readings partition held; 3/4 for readings, 1/4 for position fixes; about 12 bytes per remembered reading or fix). Past it the oldest entries are forgotten (counted: gridwatch_readings_evicted and gridwatch_positions_evicted, source dedup): their re-sends are stored again.")
    max_devices_per_vendor: int = Field(100_000, ge=0, description="Devices one vendor may register on first sight (ingest.unknown_devices = 'register'); its further new ids are rejected as 'device_limit' while its known devices go on. 0 = no limit.")


class DeviceConfig(_Model):
    id: str = Field(description="Device id as it appears in the topic (or payload).")
    vendor: str = Field(description="Vendor; selects the payload profile in hw/profiles.")
    kind: str = Field(description="Device kind, e.g. sewer_level, gas, tracker, drone.")
    region: str | None = Field(None, description="Static region path 'city/county/town/grid'. Overrides the GeoJSON lookup.")
    lat: float | None = Field(None, ge=-90, le=90, description="Installed position (fixed sensors), used to find the grid cell.")
    lon: float | None = Field(None, ge=-180, le=180, description="Installed position (fixed sensors), used to find the grid cell.")
    timezone: str | None = Field(None, description="Time zone of this device's clock (IANA name such as 'Asia/Shanghai', or '+08:00'): its zone-less timestamps are read in it. Overrides the profile's timezone.")

    @field_validator("timezone")
    @classmethod
    def _tz_ok(cls, v: str | None) -> str | None:
        from gridwatch.hw.profiles import parse_timezone

        if v is not None:
            parse_timezone(v)
        return v


class RegionsConfig(_Model):
    default: str = Field("", description="Region path for sources no other rule places, 'city/county/town/grid'.")
    geojson: str | None = Field(None, description="GeoJSON FeatureCollection of grid cells; each feature's properties name city, county, town and grid.")
    static: dict[str, str] = Field(default_factory=dict, description="Source id -> region path; checked before the GeoJSON cells.")


class RuleConfig(_Model):
    name: str = Field(description="Rule name; part of every warning's id and topic. Unique.")
    kind: str = Field(description="Processor kind: threshold, rate_of_change, zscore, flatline, offline, speeding, geofence, dwell.")
    metrics: list[str] = Field(default_factory=list, description="Canonical metrics the rule watches (sensor rules). Empty = every metric.")
    device_kinds: list[str] = Field(default_factory=list, description="Only devices of these kinds. Empty = all.")
    vendors: list[str] = Field(default_factory=list, description="Only devices of these vendors. Empty = all.")
    severity: Literal["info", "minor", "major", "critical"] = Field("major", description="Severity of the warnings this rule raises.")
    cooldown_s: float = Field(0.0, ge=0, description="After a warning clears, the same source and rule raise nothing for this long.")
    min_active_s: float = Field(0.0, ge=0, description="A warning that clears sooner than this after it was raised stays active until then.")
    message: str = Field("", description="Text for operators; {source}, {value}, {rule}, {zone} are filled in.")
    params: dict[str, Any] = Field(default_factory=dict, description="The processor's own parameters (see `gridwatch check-config --explain`).")


class StoreConfig(_Model):
    path: str = Field("gridwatch.db", description="SQLite file of the embedded time-series store, relative to site.data_dir.")
    retention_days: float = Field(30.0, gt=0, description="Readings and cleared warnings older than this are deleted.")
    fsync: Literal["commit", "normal"] = Field("normal", description="'normal': a commit survives a crash of gridwatch (WAL, synchronous=NORMAL). 'commit': also survives power loss (synchronous=FULL, slower).")


class AlertsMqttConfig(_Model):
    enabled: bool = Field(True, description="Publish warning events to MQTT.")
    topic_prefix: str = Field("gridwatch/warnings", description="Events go to <prefix>/<city>/<county>/<town>/<grid>/<rule>.")
    qos: Literal[0, 1] = Field(1, description="QoS of warning events.")
    update_interval_s: float = Field(600.0, gt=0, description="While a warning is active, an 'updated' event with its latest value at most this often.")


class ConsoleConfig(_Model):
    enabled: bool = Field(False, description="Serve the operator console beside `gridwatch run` in the same process (`gridwatch console -c FILE` serves it on its own).")
    bind: str = Field("127.0.0.1", description="Address the console listens on. Keep it on loopback unless a TLS-terminating proxy is in front.")
    port: int = Field(8080, ge=0, le=65535, description="Console HTTP port (0 = any free port, printed at start).")
    deadlines_h: dict[str, float] = Field({"critical": 2.0, "major": 24.0, "minor": 72.0, "info": 72.0}, description="Hours from a warning's raise to close its case, per severity; an open case past it is marked overdue and escalated one desk up.")
    escalate_overdue: bool = Field(True, description="Escalate overdue open cases one desk up automatically (once per case).")
    session_hours: float = Field(12.0, gt=0, description="Login sessions expire after this many hours.")
    sse_queue_max: int = Field(256, ge=8, description="Events queued per live-update client; a client that falls this far behind is dropped (counted) and reconnects.")
    sse_max_clients: int = Field(1000, ge=1, description="Most live-update clients at once; more are refused with 503 (counted).")
    poll_s: float = Field(0.5, gt=0, description="Standalone console: how often the store is polled for new and changed warnings.")
    upload_max_mb: float = Field(10.0, gt=0, description="Largest photo an operator may attach when handling a case.")
    cases_mqtt: bool = Field(True, description="Publish case events on MQTT (gridwatch/cases/...) when [mqtt] is configured.")


class MetricsConfig(_Model):
    port: int = Field(0, ge=0, le=65535, description="Prometheus endpoint port on 127.0.0.1 (bind address below); 0 = off.")
    bind: str = Field("127.0.0.1", description="Address of the Prometheus endpoint.")


class LogConfig(_Model):
    level: Literal["debug", "info", "warning", "error"] = Field("info", description="Log level.")
    format: Literal["json", "text"] = Field("text", description="Structured JSON lines or plain text.")


class KafkaConfig(_Model):
    bootstrap_servers: str = Field("127.0.0.1:9092", description="Kafka brokers, 'host:port[,host:port...]' (cluster mode).")
    readings_topic: str = Field("gridwatch.readings", description="Normalised readings and position fixes (columnar batches, placed by device id).")
    warning_events_topic: str = Field("gridwatch.warning-events", description="Warning events from workers and edge boxes, keyed by warning id; merged and de-duplicated by the workers.")
    warnings_topic: str = Field("gridwatch.warnings", description="De-duplicated warning events (JSON, keyed by warning id) for downstream consumers.")
    partitions: int = Field(12, ge=1, description="Partitions of the readings and warning-events topics; Faust's state topics get the same. Fixed once data flows (it decides which partition a device lives on).")
    replication_factor: int = Field(1, ge=1, description="Replication of the topics gridwatch creates (3 on a real cluster).")
    compression: Literal["none", "gzip", "snappy", "lz4", "zstd"] = Field("none", description="Producer compression (lz4/zstd/snappy need their Python packages).")
    linger_ms: int = Field(20, ge=0, description="Producer batching delay.")
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field("PLAINTEXT", description="Kafka security protocol; SASL_SSL for a managed cluster.")
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] = Field("PLAIN", description="SASL mechanism (with SASL_PLAINTEXT / SASL_SSL).")
    sasl_username: str | None = Field(None, description="SASL user name.")
    sasl_password: str | None = Field(None, description="SASL password; write it as ${KAFKA_PASSWORD}. Never logged.")
    ssl_ca_file: str | None = Field(None, description="CA certificate (PEM) of the brokers; system CAs when omitted (SSL / SASL_SSL).")
    ssl_cert_file: str | None = Field(None, description="Client certificate (PEM) for TLS client authentication.")
    ssl_key_file: str | None = Field(None, description="Private key (PEM) of the client certificate.")
    ssl_verify: StrictBool = Field(True, description="Verify the brokers' certificates and host names (lab use only when off).")


class WorkerConfig(_Model):
    app_id: str = Field("gridwatch", description="Faust application id = Kafka consumer group and prefix of its state topics.")
    batch_messages: int = Field(200, ge=1, description="Most Kafka messages (each a columnar batch) processed as one batch.")
    batch_within_s: float = Field(0.2, gt=0, description="Longest wait to fill a batch.")
    tick_interval_s: float = Field(10.0, gt=0, description="Event-time grid of timer work (offline devices, held-back clears): ticks run when a partition's stream time crosses a multiple of this.")
    session_timeout_s: float = Field(10.0, ge=6, description="Kafka group session timeout: how fast a dead worker's partitions move to the others.")
    heartbeat_s: float = Field(1.0, gt=0, description="Kafka group heartbeat interval.")
    commit_interval_s: float = Field(1.0, gt=0, description="How often consumed offsets are committed.")
    standby_replicas: int = Field(0, ge=0, description="Faust standby replicas of the state tables (warm copies on other workers: faster failover).")
    mqtt_alerts: bool = Field(False, description="Also publish de-duplicated warning events to the MQTT operator topics ([mqtt] + [alerts_mqtt]).")
    stats_file: str | None = Field(None, description="Write throughput counters (JSON) here every second; for benchmarks and health checks.")


class InfluxConfig(_Model):
    url: str = Field(description="Base URL of a server speaking the InfluxDB v2 write API (InfluxDB 2/3, QuestDB ...).")
    token: str = Field("", description="API token; write it as ${INFLUX_TOKEN}. Never logged.")
    org: str = Field("gridwatch", description="Organisation.")
    bucket: str = Field("gridwatch", description="Bucket (database).")
    batch_lines: int = Field(5000, ge=1, description="Lines per write request.")
    gzip: bool = Field(False, description="Gzip request bodies (level 1, ISA-L: ~0.2 us of client CPU per point, ~5x smaller). Worth it over a slow or metered link; on the same host the server's inflate costs more than the bytes saved (measured on one 2-core host against QuestDB, docs/cluster.md).")
    write_readings: bool = Field(False, description="Also write every reading (workers), not only warnings.")
    warnings_measurement: str = Field("warnings", description="Measurement (QuestDB: table) of warnings.")
    readings_measurement: str = Field("readings", description="Measurement (QuestDB: table) of readings.")
    questdb_dedup: bool = Field(False, description="The server is QuestDB: create the warnings (and, for `gridwatch run`, readings) tables with DEDUP UPSERT KEYS so a re-sent warning or a replayed reading replaces its row (InfluxDB upserts by itself).")


class SpoolConfig(_Model):
    dir: str = Field("spool", description="Folder of the store-and-forward spools, relative to site.data_dir; one subfolder per remote sink (influx/, kafka/).")
    max_mb: float = Field(512.0, gt=0, description="Most disk space of one sink's spool (MiB). When it is full: back-pressure - the MQTT messages of the next batch are not acknowledged (the broker keeps them, size its max_queued_messages) until the sink catches up; nothing is dropped.")
    segment_mb: float = Field(16.0, gt=0, description="Spool segment file size (MiB); a segment is deleted once every record in it was delivered.")
    fsync: Literal["always", "never"] = Field("always", description="'always': every spooled batch is fsync'ed before its MQTT messages are acknowledged (survives a power loss; one fsync per batch). 'never': page cache only (survives a crash of gridwatch, not of the machine).")
    retry_min_s: float = Field(0.5, gt=0, description="First retry delay while a sink is unreachable; doubles up to retry_max_s.")
    retry_max_s: float = Field(30.0, gt=0, description="Longest retry delay while a sink is unreachable.")


class ForwardConfig(_Model):
    influx: bool = Field(False, description="`gridwatch run` forwards readings and warnings to the [influx] server, through the spool (store-and-forward).")
    kafka: bool = Field(False, description="`gridwatch run` forwards readings, position fixes and warnings to the [kafka] topics (cluster mode), through the spool (store-and-forward).")


class Jt808Config(_Model):
    enabled: bool = Field(False, description="Listen for JT/T 808 vehicle terminals (2013 and 2019 editions) over TCP; their positions go through the same codec checks, rules and store as MQTT fixes.")
    bind: str = Field("127.0.0.1", description="Address the JT/T 808 server listens on (0.0.0.0 for terminals on other hosts).")
    port: int = Field(6808, ge=0, le=65535, description="TCP port of the JT/T 808 server; 0 picks a free one (tests).")
    timezone: str = Field("Asia/Shanghai", description="Time zone of the terminals' BCD clocks (YYMMDDhhmmss): an IANA zone name or a fixed offset such as '+08:00'. A [[devices]] entry's timezone overrides it for that terminal.")
    vendor: str = Field("jt808", description="Profile (hw/profiles) the positions are checked against; its vendor owns the terminals' device ids.")
    device_kind: str = Field("vehicle", description="Device kind of terminals not listed under [[devices]] (rules filter on it, e.g. hazmat_truck).")
    device_names: dict[str, str] = Field(default_factory=dict, description="Terminal phone number (digits, leading zeros dropped) -> device id, e.g. the vehicle's plate. Unlisted terminals are named by their phone number.")
    auth_secret: str = Field("", description="Secret the registration auth codes are derived from (HMAC of the phone number), so codes stay valid across restarts; write it as ${JT808_SECRET}. Empty: a random secret kept in <data_dir>/jt808.key.")
    require_auth: bool = Field(True, description="Answer messages other than registration/authentication/heartbeat with a failure until the terminal has authenticated (0x0102).")
    max_connections: int = Field(10_000, ge=1, description="Most concurrent terminal connections; further connections are closed at once (counted: jt808.refused_connections).")
    max_frame_bytes: int = Field(4096, ge=64, le=1 << 20, description="Longest frame (escaped, with its 0x7e delimiters). Unframed data longer than this means the stream cannot resynchronise: the connection is dropped.")
    max_bad_frames: int = Field(8, ge=1, description="Consecutive bad frames (checksum, layout) after which a connection is dropped.")
    max_pending_per_connection: int = Field(2000, ge=1, description="Location messages of one connection waiting for their commit; at this many, reading that connection pauses (TCP back-pressure) until acknowledgements go out.")
    inbox_max_messages: int = Field(20_000, ge=10, description="Decoded messages waiting for the pipeline; at this many, reading every connection pauses until the pipeline catches up.")
    max_write_buffer_bytes: int = Field(256 * 1024, ge=1024, description="A terminal that does not read the platform's answers is dropped once this much is queued for it.")
    max_subpackages: int = Field(256, ge=2, description="Most sub-packages of one long message; more is a bad frame.")
    max_reassembly_bytes: int = Field(256 * 1024, ge=1024, description="Most bytes of one message being reassembled from sub-packages.")
    max_reassemblies_per_connection: int = Field(4, ge=1, description="Long messages of one connection being reassembled at once; the oldest is dropped (dead-lettered) beyond this.")
    reassembly_timeout_s: float = Field(60.0, gt=0, description="A long message whose sub-packages do not all arrive within this is dropped (dead-lettered).")
    idle_timeout_s: float = Field(180.0, gt=0, description="A connection with no complete frame for this long is closed (terminals send heartbeats, 0x0002, every minute or so); catches half-open connections and slowloris senders.")
    frame_timeout_s: float = Field(30.0, gt=0, description="A frame begun but not finished within this is abandoned and the connection closed (slowloris).")

    @field_validator("device_names")
    @classmethod
    def _names_ok(cls, v: dict[str, str]) -> dict[str, str]:
        for phone, name in v.items():
            if not phone.isdigit():
                raise ValueError(f"terminal phone number {phone!r} must be digits")
            if not name or "/" in name or "\0" in name or "+" in name or "#" in name:
                raise ValueError(f"device id {name!r} for terminal {phone} must be non-empty without '/', '+', '#' or NUL")
        return {p.lstrip("0") or "0": n for p, n in v.items()}

    @field_validator("timezone")
    @classmethod
    def _tz_ok(cls, v: str) -> str:
        from gridwatch.hw.profiles import parse_timezone

        parse_timezone(v)
        return v


class GridwatchConfig(_Model):
    site: SiteConfig = Field(default_factory=SiteConfig, description="This instance.")
    mqtt: MqttConfig | None = Field(None, description="Broker to ingest readings from (and publish warnings to). Omit to run without MQTT.")
    ingest: IngestConfig = Field(default_factory=IngestConfig, description="Input validation and batching.")
    devices: list[DeviceConfig] = Field(default_factory=list, description="Known devices.")
    regions: RegionsConfig = Field(default_factory=RegionsConfig, description="How sources map to region paths.")
    rules: list[RuleConfig] = Field(default_factory=list, description="Warning rules.")
    store: StoreConfig = Field(default_factory=StoreConfig, description="Embedded store.")
    alerts_mqtt: AlertsMqttConfig = Field(default_factory=AlertsMqttConfig, description="Warning events on MQTT.")
    metrics: MetricsConfig = Field(default_factory=MetricsConfig, description="Prometheus endpoint.")
    console: ConsoleConfig = Field(default_factory=ConsoleConfig, description="The operator console (web pages, JSON API, live updates); see docs/console.md.")
    log: LogConfig = Field(default_factory=LogConfig, description="Logging.")
    cameras: list[VideoCameraConfig] = Field(default_factory=list, description="Cameras of the video path (see docs/video.md).")
    video: VideoConfig = Field(default_factory=VideoConfig, description="Video rules, ONNX models and snapshot evidence.")
    kafka: KafkaConfig = Field(default_factory=KafkaConfig, description="Kafka (cluster mode).")
    worker: WorkerConfig = Field(default_factory=WorkerConfig, description="Cluster workers (`gridwatch worker`).")
    influx: InfluxConfig | None = Field(None, description="Time-series store over the InfluxDB v2 write API (cluster workers; `gridwatch run` with forward.influx). Omit to write none.")
    forward: ForwardConfig = Field(default_factory=ForwardConfig, description="Remote sinks `gridwatch run` forwards to through the spool.")
    spool: SpoolConfig = Field(default_factory=SpoolConfig, description="Store-and-forward spool between ingest and the remote sinks of `gridwatch run`.")
    jt808: Jt808Config = Field(default_factory=Jt808Config, description="JT/T 808 vehicle terminals over TCP (`gridwatch run`).")

    base_dir: str = Field(".", description="Folder relative paths are resolved against (the config file's folder; set by the loader).")

    @field_validator("rules")
    @classmethod
    def _unique_rule_names(cls, rules: list[RuleConfig]) -> list[RuleConfig]:
        seen: set[str] = set()
        for r in rules:
            if r.name in seen:
                raise ValueError(f"rule name {r.name!r} is used twice; rule names must be unique")
            seen.add(r.name)
        return rules

    @model_validator(mode="after")
    def _rule_params_valid(self) -> "GridwatchConfig":
        from gridwatch.streams.processor import Processor
        from gridwatch.streams import processors  # noqa: F401  registers kinds

        for i, r in enumerate(self.rules):
            cls = Processor.registry.get(r.kind)
            if cls is None:
                raise ValueError(f"rules.{i}.kind: unknown kind {r.kind!r}; expected one of {sorted(Processor.registry)}")
            try:
                cls.Params.model_validate(_resolve_param_paths(r.params, self.base_dir))
            except ValidationError as e:
                raise ValueError(f"rules.{i}.params ({r.name}): {_describe(e, cls.Params)}") from None
            except OSError as e:  # a zones file that cannot be read
                raise ValueError(f"rules.{i}.params ({r.name}): cannot read {e.filename or 'a file'}: {e.strerror}") from None
        return self

    @model_validator(mode="after")
    def _tls_paths_relative_to_the_file(self) -> "GridwatchConfig":
        """TLS files given relative are relative to the config file (as GeoJSON and profile folders
        are), not to wherever gridwatch was started."""
        owners = [(self.kafka, ("ssl_ca_file", "ssl_cert_file", "ssl_key_file"))]
        if self.mqtt is not None and self.mqtt.tls is not None:
            owners.append((self.mqtt.tls, ("ca_file", "cert_file", "key_file")))
        for owner, keys in owners:
            for k in keys:
                v = getattr(owner, k)
                if v and not Path(v).is_absolute():
                    object.__setattr__(owner, k, str(self.resolve(v)))
        return self

    @model_validator(mode="after")
    def _forward_valid(self) -> "GridwatchConfig":
        if self.forward.influx and self.influx is None:
            raise ValueError("forward.influx = true needs an [influx] table (url, token, bucket)")
        return self

    @model_validator(mode="after")
    def _video_valid(self) -> "GridwatchConfig":
        if self.cameras or self.video.rules or self.video.models:
            from gridwatch.detectors.settings import check

            check(self.cameras, self.video, [r.name for r in self.rules], self.base_dir)
        return self

    def resolve(self, path: str) -> Path:
        p = Path(path)
        return p if p.is_absolute() else Path(self.base_dir) / p

    @property
    def data_dir(self) -> Path:
        return self.resolve(self.site.data_dir)

    def rule_params(self, rule: RuleConfig) -> dict[str, Any]:
        return _resolve_param_paths(rule.params, self.base_dir)


def _resolve_param_paths(params: dict[str, Any], base: str) -> dict[str, Any]:
    """String parameters naming a GeoJSON/JSON file are relative to the config file."""
    out = dict(params)
    for k, v in params.items():
        if isinstance(v, str) and v.lower().endswith((".geojson", ".json")) and not Path(v).is_absolute():
            out[k] = str(Path(base) / v)
    return out


def substitute_env(value: Any, env: dict[str, str] | None = None, where: str = "") -> Any:
    """Replace ``${NAME}`` / ``${NAME:-default}`` in every string of a parsed TOML tree."""
    env = os.environ if env is None else env
    if isinstance(value, str):
        def repl(m: re.Match[str]) -> str:
            name, default = m.group(1), m.group(2)
            if name in env:
                return env[name]
            if default is not None:
                return default
            raise ConfigError(f"{where or '<root>'}: environment variable ${{{name}}} is not set and has no default (write ${{{name}:-value}})")
        return _ENV.sub(repl, value)
    if isinstance(value, dict):
        return {k: substitute_env(v, env, f"{where}.{k}" if where else k) for k, v in value.items()}
    if isinstance(value, list):
        return [substitute_env(v, env, f"{where}.{i}") for i, v in enumerate(value)]
    return value


_SECRET_KEY = re.compile(r"(?i)pass|token|secret|key|cred|auth")


def _model_at(model: type[BaseModel] | None, loc: tuple) -> type[BaseModel] | None:
    """The model that holds the key at ``loc`` (list indexes skipped); None when not a model."""
    for part in loc:
        if model is None:
            return None
        if isinstance(part, int):
            continue
        f = model.model_fields.get(part)
        if f is None:
            return None
        model = _submodel(f.annotation)
    return model


def unknown_key_hint(key: str, valid: list[str]) -> str:
    """'did you mean ...?' plus the valid keys, for a key that is not one of them."""
    near = difflib.get_close_matches(key, valid, n=1, cutoff=0.6)
    hint = f"did you mean {near[0]!r}? " if near else ""
    return f"{hint}valid keys: {', '.join(valid)}"


def _camera_name(data: Any, loc: tuple) -> str | None:
    """The name of the camera at ``loc`` = ("cameras", index, ...) in the parsed file, if it has one."""
    if not isinstance(data, dict) or len(loc) < 3 or loc[0] != "cameras" or not isinstance(loc[1], int):
        return None
    cams = data.get("cameras")
    cam = cams[loc[1]] if isinstance(cams, list) and loc[1] < len(cams) else None
    name = cam.get("name") if isinstance(cam, dict) else None
    return name if isinstance(name, str) and name else None


def _describe(err: ValidationError, model: type[BaseModel] | None = None, prefix: str = "", data: Any = None) -> str:
    parts = []
    for e in err.errors():
        loc = prefix + ".".join(str(p) for p in e["loc"])
        cam = _camera_name(data, tuple(e["loc"]))
        if cam is not None:  # operators know their cameras by name, not by position in the file
            loc += f" (camera {cam!r})"
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden" and model is not None:
            holder = _model_at(model, tuple(e["loc"][:-1]))
            if holder is not None:
                valid = [k for k in holder.model_fields if k != "base_dir"]
                parts.append(f"{loc}: unknown key; {unknown_key_hint(str(e['loc'][-1]), valid)}")
                continue
        if not e["loc"]:  # a whole-model check: its message already names the key
            parts.append(msg)
            continue
        got = e.get("input")
        got_s = repr(got) if not isinstance(got, dict) else "a table"
        if e["type"] == "extra_forbidden" or _SECRET_KEY.search(str(e["loc"][-1])):
            got_s = "value not shown"  # a secret, or possibly one under a misspelled key
        if len(got_s) > 80:
            got_s = got_s[:77] + "..."
        parts.append(f"{loc}: {msg} (got {got_s})")
    return "; ".join(parts)


def parse(data: dict[str, Any], base_dir: str | Path = ".", env: dict[str, str] | None = None) -> GridwatchConfig:
    data = substitute_env(data, env)
    data = {**data, "base_dir": str(base_dir)}
    try:
        return GridwatchConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError(_describe(e, GridwatchConfig, data=data)) from None


def load(path: str | Path, env: dict[str, str] | None = None) -> GridwatchConfig:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"cannot read config file {path}: {e.strerror}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML: {e}") from None
    return parse(data, base_dir=path.resolve().parent, env=env)


# keys whose value is a credential (mqtt.password, kafka.sasl_password, influx.token, ...), however
# they are written in TOML (quoted keys, inline tables, either kind of string)
_SECRET_FIELD_NAME = re.compile(r"(?i)^(?:.*[_.-])?(?:password|passwd|pwd|passphrase|secret|token|api[_-]?key)$")
_URL_PASSWORD = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^/@\s:]*:[^/@\s]+@")  # scheme://user:password@


def secret_fields(data: Any, prefix: str = "") -> list[str]:
    """Dotted keys of a parsed TOML document that hold a secret written in the file itself: a
    non-empty value of a credential key, or a URL with a password in it. ``${NAME}`` references
    are not secrets in the file (their ``:-default`` text is)."""
    out: list[str] = []

    def literal(v: str) -> str:
        return _ENV.sub(lambda m: m.group(2) or "", v)

    items = data.items() if isinstance(data, dict) else enumerate(data) if isinstance(data, list) else ()
    for k, v in items:
        key = f"{prefix}{k}" if isinstance(k, str) else f"{prefix.rstrip('.')}[{k}]"
        if isinstance(v, (dict, list)):
            out += secret_fields(v, key + "." if isinstance(v, dict) else key)
        elif isinstance(v, str):
            text = literal(v).strip()
            named = isinstance(k, str) and _SECRET_FIELD_NAME.match(k) is not None
            if (named and text) or _URL_PASSWORD.search(text):
                out.append(key)
    return out


def secrets_world_readable(path: str | Path) -> bool:
    """True when a config file that holds a secret (:func:`secret_fields`) can be read by every user."""
    p = Path(path)
    if not p.stat().st_mode & stat.S_IROTH:
        return False
    text = p.read_text(encoding="utf-8")
    try:
        return bool(secret_fields(tomllib.loads(text)))
    except tomllib.TOMLDecodeError:  # not TOML (reported elsewhere): any credential-looking assignment counts
        return re.search(r"(?im)^\s*[\"']?[\w.-]*(password|passwd|secret|token|api[_-]?key)[\"']?\s*=", text) is not None


def explain(model: type[BaseModel] = GridwatchConfig, prefix: str = "") -> list[str]:
    """One line per field: key, type, default, description."""
    lines = []
    for name, f in model.model_fields.items():
        if name == "base_dir":
            continue
        key = f"{prefix}{name}"
        ann = f.annotation
        sub = _submodel(ann)
        if sub is not None:
            lines.append(f"[{key}]  {f.description or ''}")
            lines.extend(explain(sub, key + "."))
        else:
            default = "" if f.is_required() else f" = {f.get_default(call_default_factory=True)!r}"
            lines.append(f"  {key}{default}  — {f.description or ''}")
    return lines


def _submodel(ann: Any) -> type[BaseModel] | None:
    import typing

    for a in (ann, *typing.get_args(ann)):
        if isinstance(a, type) and issubclass(a, BaseModel):
            return a
        for b in typing.get_args(a):
            if isinstance(b, type) and issubclass(b, BaseModel):
                return b
    return None


# --- what `gridwatch run` needs beyond the file's own syntax ------------------------------------

def load_sections(path: str | Path, models: dict[str, type[BaseModel]], env: dict[str, str] | None = None) -> dict[str, BaseModel]:
    """Only the named tables of a config file (``${NAME}`` substituted in them alone): commands
    that need a few settings do not fail on, or need the secrets of, the others."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise ConfigError(f"cannot read config file {path}: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML: {e}") from None
    parts: dict[str, BaseModel] = {}
    for key, model in models.items():
        raw = substitute_env(data.get(key, {}), env, key)
        try:
            parts[key] = model.model_validate(raw)
        except ValidationError as e:
            raise ConfigError(_describe(e, model, prefix=f"{key}.")) from None
    return parts


def store_path(path: str | Path, env: dict[str, str] | None = None) -> Path:
    """The store file a config names, reading only ``[site]`` and ``[store]``: `gridwatch alerts`
    and `dead-letters` read the store and need no broker password or any other setting."""
    path = Path(path)
    parts = load_sections(path, {"site": SiteConfig, "store": StoreConfig}, env)
    site, store = parts["site"], parts["store"]
    base = path.resolve().parent
    data_dir = Path(site.data_dir) if Path(site.data_dir).is_absolute() else base / site.data_dir
    return data_dir / store.path


def _readable_file(where: str, value: str | None, cfg: "GridwatchConfig", problems: list[str]) -> Path | None:
    if not value:
        return None
    p = cfg.resolve(value)
    if not p.is_file():
        rel = "" if Path(value).is_absolute() else " (a relative path is relative to the config file's folder)"
        problems.append(f"{where}: file {str(p)!r} does not exist{rel}" if not p.exists() else f"{where}: {str(p)!r} is not a file")
        return None
    if not os.access(p, os.R_OK):
        problems.append(f"{where}: file {str(p)!r} is not readable by this user")
        return None
    return p


def _check_tls(prefix: str, ca: str | None, cert: str | None, key: str | None, cfg: "GridwatchConfig",
               problems: list[str]) -> None:
    import ssl

    n = len(problems)
    ca_p = _readable_file(f"{prefix}ca_file", ca, cfg, problems)
    cert_p = _readable_file(f"{prefix}cert_file", cert, cfg, problems)
    key_p = _readable_file(f"{prefix}key_file", key, cfg, problems)
    if len(problems) > n:
        return
    if key and not cert:
        problems.append(f"{prefix}key_file is set without {prefix}cert_file")
        return
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if ca_p is not None:
        try:
            ctx.load_verify_locations(cafile=str(ca_p))
        except (ssl.SSLError, OSError) as e:
            problems.append(f"{prefix}ca_file: {str(ca_p)!r} is not a PEM CA certificate ({e.args[-1] if e.args else e})")
    if cert_p is not None:
        try:
            ctx.load_cert_chain(str(cert_p), str(key_p) if key_p else None)
        except (ssl.SSLError, OSError) as e:
            problems.append(f"{prefix}cert_file/key_file: {str(cert_p)!r} and its key do not load "
                            f"({e.args[-1] if e.args else e}); both must be PEM and belong together")


def _writable_dir(where: str, p: Path, problems: list[str]) -> None:
    """``p`` is (or can be made) a folder this user may write, checked without creating anything."""
    if p.exists():
        if not p.is_dir():
            problems.append(f"{where}: {str(p)!r} exists and is not a folder")
        elif not os.access(p, os.W_OK | os.X_OK):
            problems.append(f"{where}: folder {str(p)!r} is not writable by this user (chown it, or choose another folder)")
        return
    parent = p.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        problems.append(f"{where}: folder {str(p)!r} does not exist and cannot be created: {str(parent)!r} is not writable "
                        "by this user (create it and chown it, or choose another folder)")


SQLITE_HEADER = b"SQLite format 3\x00"


def store_file_problem(path: Path) -> str | None:
    """Why an existing store file cannot be a gridwatch store (None when it is fine or absent)."""
    try:
        if not path.exists() or path.stat().st_size == 0:
            return None
        with open(path, "rb") as f:
            head = f.read(len(SQLITE_HEADER))
    except OSError as e:
        return f"store {str(path)!r} cannot be read: {e.strerror}"
    if head != SQLITE_HEADER:
        return (f"store {str(path)!r} is not an SQLite database (damaged, or another file): move it aside "
                "(gridwatch creates a new one) or restore it from a backup")
    return None


def preflight(cfg: "GridwatchConfig") -> list[str]:
    """Everything `gridwatch run` would trip over that the file's syntax does not show, one line per
    problem, found without creating or changing anything on disk: vendor profiles, GeoJSON files,
    TLS files, devices of unknown vendors, rules naming metrics no profile produces, the data folder
    and an existing store file. An empty list means `run` can start."""
    from gridwatch.hw.profiles import METRICS, ProfileError, load_profiles

    problems: list[str] = []
    # vendor profiles
    profiles = None
    dirs = []
    for i, d in enumerate(cfg.ingest.profile_dirs):
        p = cfg.resolve(d)
        if not p.is_dir():
            problems.append(f"ingest.profile_dirs.{i}: folder {str(p)!r} does not exist")
        else:
            dirs.append(p)
    try:
        profiles = load_profiles(dirs)
    except (ProfileError, OSError, tomllib.TOMLDecodeError) as e:
        problems.append(f"ingest.profile_dirs: a vendor profile does not load: {e}")
    metric_names = [m.name for m in METRICS]
    if profiles is not None:
        vendors = sorted(profiles)
        for i, d in enumerate(cfg.devices):
            if d.vendor not in profiles:
                problems.append(f"devices.{i}.vendor ({d.id}): no profile for vendor {d.vendor!r}; "
                                f"{unknown_key_hint(d.vendor, vendors).replace('valid keys', 'known vendors')} "
                                "(add a profile: hw/profiles or ingest.profile_dirs)")
        if cfg.jt808.enabled and cfg.jt808.vendor not in profiles:
            problems.append(f"jt808.vendor: no profile for vendor {cfg.jt808.vendor!r}, so every JT/T 808 fix would be "
                            f"rejected; {unknown_key_hint(cfg.jt808.vendor, vendors).replace('valid keys', 'known vendors')}")
        for i, r in enumerate(cfg.rules):
            for v in r.vendors:
                if v not in profiles:
                    problems.append(f"rules.{i}.vendors ({r.name}): no profile for vendor {v!r}; "
                                    f"{unknown_key_hint(v, vendors).replace('valid keys', 'known vendors')}")
            for m in r.metrics:
                if m not in metric_names:
                    problems.append(f"rules.{i}.metrics ({r.name}): unknown metric {m!r}; "
                                    f"{unknown_key_hint(m, metric_names).replace('valid keys', 'canonical metrics')}")
                    continue
                mid = metric_names.index(m)
                producers = [v for v in (r.vendors or vendors) if v in profiles
                             and any(f.metric_id == mid for f in profiles[v].fields.values())]
                if not producers:
                    problems.append(f"rules.{i}.metrics ({r.name}): no profile of vendors {r.vendors} produces "
                                    f"metric {m!r}, so the rule never sees a reading")
    # regions
    if cfg.regions.geojson:
        p = _readable_file("regions.geojson", cfg.regions.geojson, cfg, problems)
        if p is not None:
            from gridwatch.regions import RegionMapper
            import json

            try:
                RegionMapper(cfg.regions.default, cfg.regions.static, json.loads(p.read_text(encoding="utf-8")))
            except (ValueError, TypeError) as e:  # JSONDecodeError is a ValueError
                problems.append(f"regions.geojson: {str(p)!r}: {e}")
    # TLS
    if cfg.mqtt is not None and cfg.mqtt.tls is not None:
        t = cfg.mqtt.tls
        _check_tls("mqtt.tls.", t.ca_file, t.cert_file, t.key_file, cfg, problems)
    k = cfg.kafka
    if cfg.forward.kafka and k.security_protocol in ("SSL", "SASL_SSL"):
        _check_tls("kafka.ssl_", k.ssl_ca_file, k.ssl_cert_file, k.ssl_key_file, cfg, problems)
    # the data folder and an existing store
    _writable_dir("site.data_dir", cfg.data_dir, problems)
    store = cfg.data_dir / cfg.store.path
    why = store_file_problem(store)
    if why:
        problems.append(f"store.path: {why}")
    return problems


# --- `gridwatch check-config --explain` ---------------------------------------------------------

# Units of rule parameters that the field name does not show (sensor levels are in the metric's
# canonical unit, listed under "Canonical metrics").
_PARAM_UNITS = {"above": "metric's unit", "below": "metric's unit", "clear_at": "metric's unit",
                "epsilon": "metric's unit", "min_std": "metric's unit", "max_per_s": "metric's unit per s",
                "limit_kmh": "km/h", "z_raise": "standard deviations", "z_clear": "standard deviations",
                "alpha": "fraction", "clear_ratio": "fraction", "warmup": "readings", "zones": "GeoJSON",
                "allowed": "GeoJSON"}


def param_unit(name: str) -> str:
    if name in _PARAM_UNITS:
        return _PARAM_UNITS[name]
    for suffix, unit in (("_s", "s"), ("_ms", "ms"), ("_m", "m"), ("_kmh", "km/h"), ("_mb", "MiB")):
        if name.endswith(suffix):
            return unit
    return "-"


def _shown(key: str, value: Any) -> str:
    if value is not None and value != "" and _SECRET_KEY.search(key.rsplit(".", 1)[-1]) and not key.endswith(("_file", "sasl_mechanism")):
        return "'***' (set, not shown)"
    if isinstance(value, BaseModel):
        value = value.model_dump(exclude_defaults=True)
    from gridwatch.observability import scrub

    return scrub(repr(value))  # e.g. a camera URL's rtsp://user:password@


def explain_values(cfg: BaseModel, prefix: str = "") -> list[str]:
    """One line per setting of a parsed file: its value, marked ``(default)`` where the file does not
    set it; secrets are not shown."""
    lines: list[str] = []
    for name, f in type(cfg).model_fields.items():
        if name == "base_dir":
            continue
        key = f"{prefix}{name}"
        value = getattr(cfg, name)
        mark = "" if name in cfg.model_fields_set else "  (default)"
        if isinstance(value, BaseModel):
            lines.append(f"[{key}]{mark}")
            lines.extend(explain_values(value, key + "."))
        elif isinstance(value, list) and value and isinstance(value[0], BaseModel):
            for i, item in enumerate(value):
                if isinstance(item, RuleConfig):
                    lines.extend(_explain_rule(i, item, cfg))
                else:
                    lines.append(f"  {key}.{i} = {_shown(key, item)}")
        else:
            lines.append(f"  {key} = {_shown(key, value)}{mark}")
    return lines


def _explain_rule(i: int, r: RuleConfig, cfg: BaseModel) -> list[str]:
    from gridwatch.streams import processors  # noqa: F401  registers kinds
    from gridwatch.streams.processor import Processor

    lines = [f"[[rules]] {i}: {r.name} (kind {r.kind}, severity {r.severity})"]
    for k in ("metrics", "device_kinds", "vendors", "cooldown_s", "min_active_s", "message"):
        v = getattr(r, k)
        lines.append(f"  rules.{i}.{k} = {v!r}{'' if k in r.model_fields_set else '  (default)'}")
    cls = Processor.registry.get(r.kind)
    if cls is not None:
        for pname, pf in cls.Params.model_fields.items():
            given = pname in r.params
            v = r.params[pname] if given else (None if pf.is_required() else pf.get_default(call_default_factory=True))
            if isinstance(v, dict):
                v = "(inline GeoJSON)"
            lines.append(f"  rules.{i}.params.{pname} = {v!r}{'' if given else '  (default)'}  [{param_unit(pname)}]")
    return lines


def explain_rule_kinds() -> list[str]:
    """Every rule kind with each parameter's type, default, unit and description."""
    from gridwatch.streams import processors  # noqa: F401  registers kinds
    from gridwatch.streams.processor import Processor

    lines = ["Rule kinds ([[rules]] kind = ...; parameters go in its params = { ... }):"]
    for kind, cls in sorted(Processor.registry.items()):
        doc = (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""
        what = "sensor readings" if cls.input == "sensor" else "position fixes"
        lines.append(f"  {kind} ({what}): {doc}")
        for pname, pf in cls.Params.model_fields.items():
            default = "required" if pf.is_required() else f"default {pf.get_default(call_default_factory=True)!r}"
            lines.append(f"    {pname}  [{param_unit(pname)}; {default}]  {pf.description or ''}")
    return lines


def explain_detector_kinds() -> list[str]:
    """Every video detector kind with how far it can be trusted (measured) and each parameter."""
    from gridwatch.detectors.base import VideoDetector
    from gridwatch.detectors.registry import STATUS

    lines = ["Video detector kinds ([[video.rules]] kind = ...; parameters go in its params = { ... }):"]
    for kind, cls in sorted(VideoDetector.registry.items()):
        doc = next((d.strip().splitlines()[0] for d in (cls.__doc__, sys.modules[cls.__module__].__doc__)
                    if d and d.strip()), "")
        standing, measured = STATUS.get(kind, ("not measured", "no false-alarm figure on real footage"))
        lines.append(f"  {kind}: {doc}")
        lines.append(f"    status: {standing.upper() if standing == 'experimental' else standing} — {measured} (docs/video.md)")
        for pname, pf in cls.Params.model_fields.items():
            default = "required" if pf.is_required() else f"default {pf.get_default(call_default_factory=True)!r}"
            lines.append(f"    {pname}  [{default}]  {pf.description or ''}")
    return lines


def experimental_rules(cfg: "GridwatchConfig") -> list[str]:
    """One line per configured video rule whose kind is marked experimental."""
    from gridwatch.detectors.registry import STATUS

    rules = cfg.video.rules if getattr(cfg, "video", None) is not None else []
    return [f"video rule '{r.name}' (kind {r.kind}) is experimental: {STATUS[r.kind][1]} (docs/video.md)"
            for r in rules if STATUS.get(r.kind, ("",))[0] == "experimental"]


def explain_metrics() -> list[str]:
    """Canonical metrics: what rules' ``metrics`` name, with unit and accepted range."""
    from gridwatch.hw.profiles import METRICS

    lines = ["Canonical metrics (rules' metrics = [...]; readings outside the range are rejected as out_of_range):"]
    for m in METRICS:
        lines.append(f"  {m.name:15} {m.unit:6} {m.lo:g} .. {m.hi:g}  {m.description}")
    return lines
