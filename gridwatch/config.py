"""Configuration: one TOML file parsed into typed models.

* Every field has a description (``gridwatch check-config --explain`` prints them).
* ``${NAME}`` and ``${NAME:-default}`` in string values are replaced from the environment.
* Errors name the offending key, the value and what was expected (:class:`ConfigError`).
"""
from __future__ import annotations

import os
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


class IngestConfig(_Model):
    max_payload_bytes: int = Field(256 * 1024, ge=64, description="Messages larger than this are rejected (dead letter 'oversized').")
    max_future_skew_s: float = Field(300.0, ge=0, description="Readings stamped further than this in the future are rejected ('future_timestamp').")
    max_age_s: float = Field(7 * 86400.0, ge=0, description="Readings older than this are rejected ('stale_timestamp'); 0 disables the check.")
    unknown_devices: Literal["register", "reject"] = Field("register", description="A device not listed under [[devices]]: register it on first sight, or reject its readings.")
    batch_max_messages: int = Field(5000, ge=1, description="Largest number of messages decoded as one batch (a batch is whatever arrived while the previous one was processed).")
    profile_dirs: list[str] = Field(default_factory=list, description="Extra folders of vendor profile TOML files (see hw/profiles); they override bundled ones of the same vendor.")
    dead_letter_keep: int = Field(100_000, ge=0, description="Dead-letter records kept in the store (oldest removed first).")


class DeviceConfig(_Model):
    id: str = Field(description="Device id as it appears in the topic (or payload).")
    vendor: str = Field(description="Vendor; selects the payload profile in hw/profiles.")
    kind: str = Field(description="Device kind, e.g. sewer_level, gas, tracker, drone.")
    region: str | None = Field(None, description="Static region path 'city/county/town/grid'. Overrides the GeoJSON lookup.")
    lat: float | None = Field(None, ge=-90, le=90, description="Installed position (fixed sensors), used to find the grid cell.")
    lon: float | None = Field(None, ge=-180, le=180, description="Installed position (fixed sensors), used to find the grid cell.")


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
    log: LogConfig = Field(default_factory=LogConfig, description="Logging.")
    cameras: list[VideoCameraConfig] = Field(default_factory=list, description="Cameras of the video path (see docs/video.md).")
    video: VideoConfig = Field(default_factory=VideoConfig, description="Video rules, ONNX models and snapshot evidence.")
    kafka: KafkaConfig = Field(default_factory=KafkaConfig, description="Kafka (cluster mode).")
    worker: WorkerConfig = Field(default_factory=WorkerConfig, description="Cluster workers (`gridwatch worker`).")
    influx: InfluxConfig | None = Field(None, description="Time-series store over the InfluxDB v2 write API (cluster workers; `gridwatch run` with forward.influx). Omit to write none.")
    forward: ForwardConfig = Field(default_factory=ForwardConfig, description="Remote sinks `gridwatch run` forwards to through the spool.")
    spool: SpoolConfig = Field(default_factory=SpoolConfig, description="Store-and-forward spool between ingest and the remote sinks of `gridwatch run`.")

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
                raise ValueError(f"rules.{i}.params ({r.name}): {_describe(e)}") from None
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


def _describe(err: ValidationError) -> str:
    parts = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"])
        msg = e["msg"].removeprefix("Value error, ")
        if not loc:  # a whole-model check: its message already names the key
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
        raise ConfigError(_describe(e)) from None


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
