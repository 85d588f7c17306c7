"""Counters, the Prometheus endpoint and structured logs (with secrets scrubbed).

Counters are plain integers in dicts, bumped per batch (never per reading), and exported by a
custom Prometheus collector at scrape time, so the hot path pays nothing for metrics.
"""
from __future__ import annotations

import functools
import json
import logging
import re
import threading
import time
from collections import Counter, defaultdict

_SECRET_NAME = r"(?:password|passwd|pwd|passphrase|secret|token|api[_-]?key)"
_SECRET_PATTERNS = [
    (re.compile(r"(://[^:/@\s]+:)[^@\s]+@"), r"\1***@"),
    # key=value, key: value, "key": "value" (a JSON log line), sasl_password=..., token=...
    (re.compile(r"(?i)(" + _SECRET_NAME + r"[\"']?\s*[=:]\s*)(?:(\")(?:[^\"\\]|\\.)*\"|(')[^']*'|[^\s\"',}]+)"),
     lambda m: f"{m.group(1)}{m.group(2) or m.group(3) or ''}***{m.group(2) or m.group(3) or ''}"),
    (re.compile(r"(?i)(authorization:\s*(?:token|bearer|basic)\s+)\S+"), r"\1***"),
]
_SECRET_FIELD = re.compile(r"(?i)^(?:.*[_.-])?" + _SECRET_NAME + r"$")
# a known secret shorter than this is not searched for in free text: as a whole word it would
# mostly hit ordinary words ("a", "on") and the *** would show where the password stands; it is
# still redacted where it stands as a credential (URL user info, key=value, a secret field)
MIN_SECRET_TOKEN = 4


@functools.lru_cache(maxsize=16)
def _secret_tokens(secrets: tuple[str, ...]) -> re.Pattern | None:
    """One pattern matching the known secret values as whole tokens only: never inside a longer
    word (a short password used to turn 'inbox' into 'inbo***'), also in their JSON-escaped form."""
    forms = set()
    for s in secrets:
        if s and len(s) >= MIN_SECRET_TOKEN:
            forms.add(s)
            forms.add(json.dumps(s)[1:-1])
    if not forms:
        return None
    alt = "|".join(re.escape(f) for f in sorted(forms, key=len, reverse=True))
    return re.compile(r"(?<![\w])(?:" + alt + r")(?![\w])")


def scrub(text: str, secrets: tuple[str, ...] = ()) -> str:
    """Remove passwords and tokens from a log line or error message: credentials in URLs, values
    of secret-named keys, and the known secret values (``secrets``) where they stand as whole tokens."""
    pat = _secret_tokens(tuple(secrets))
    if pat is not None:
        text = pat.sub("***", text)
    for pat, rep in _SECRET_PATTERNS:
        text = pat.sub(rep, text)
    return text


def scrub_fields(fields: dict) -> dict:
    """A log record's structured fields with the values of secret-named fields replaced."""
    return {k: ("***" if isinstance(k, str) and _SECRET_FIELD.match(k) and v not in (None, "") else v)
            for k, v in fields.items()}


def config_secrets(cfg) -> tuple[str, ...]:
    """Every secret value in a parsed configuration (any model): the values of secret-named
    fields (mqtt.password, kafka.sasl_password, influx.token, ...) and passwords inside URLs
    (a camera's ``rtsp://user:password@host``), for :func:`setup_logging` to redact."""
    from pydantic import BaseModel

    out: list[str] = []

    def walk(node, name: str = "") -> None:
        if isinstance(node, BaseModel):
            for k in type(node).model_fields:
                walk(getattr(node, k), k)
        elif isinstance(node, dict):
            for k, v in node.items():
                walk(v, str(k))
        elif isinstance(node, (list, tuple)):
            for v in node:
                walk(v, name)
        elif isinstance(node, str) and node:
            if _SECRET_FIELD.match(name):
                out.append(node)
            for m in _URL_USERINFO.finditer(node):
                out.append(m.group(1))

    walk(cfg)
    return tuple(dict.fromkeys(out))


_URL_USERINFO = re.compile(r"://[^:/@\s]*:([^@/\s]+)@")


class Counters:
    """Per-source counters: received, stored, rejected by reason, dropped by reason, lag."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.values: dict[tuple[str, str], int] = Counter()  # (source, name) -> n
        self.rejected: dict[str, Counter] = defaultdict(Counter)  # source -> reason -> n
        self.dropped: dict[str, Counter] = defaultdict(Counter)
        self.lag_ms: dict[str, float] = {}
        self.gauges: dict[tuple[str, str], float] = {}
        self.infos: dict[tuple[str, str], dict[str, str]] = {}  # (source, name) -> text labels, e.g. a camera's state and reason

    def add(self, source: str, name: str, n: int = 1) -> None:
        with self._lock:
            self.values[(source, name)] += n

    def reject(self, source: str, reasons: Counter) -> None:
        with self._lock:
            self.rejected[source].update(reasons)

    def drop(self, source: str, reason: str, n: int = 1) -> None:
        with self._lock:
            self.dropped[source][reason] += n

    def set(self, source: str, name: str, value: float) -> None:
        with self._lock:
            self.gauges[(source, name)] = value

    def info(self, source: str, name: str, **labels: str) -> None:
        """Text that belongs to a source (a camera's state and why): exported as
        ``gridwatch_<name>_info{source=..., <labels>} 1``."""
        with self._lock:
            self.infos[(source, name)] = {k: str(v) for k, v in labels.items()}

    def get(self, source: str, name: str) -> int:
        return self.values.get((source, name), 0)

    def snapshot(self) -> dict:
        with self._lock:
            out: dict = defaultdict(dict)
            for (src, name), v in self.values.items():
                out[src][name] = v
            for src, c in self.rejected.items():
                out[src]["rejected"] = dict(c)
            for src, c in self.dropped.items():
                out[src]["dropped"] = dict(c)
            for (src, name), v in self.gauges.items():
                out[src][name] = v
            return dict(out)


def start_metrics_server(counters: Counters, port: int, bind: str = "127.0.0.1"):
    """Serve ``/metrics`` for Prometheus; returns the server (``.shutdown()`` to stop) and its port."""
    from prometheus_client import CollectorRegistry, start_http_server
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

    class _Collector:
        def collect(self):
            snap_v = dict(counters.values)
            snap_r = {k: dict(v) for k, v in counters.rejected.items()}
            snap_d = {k: dict(v) for k, v in counters.dropped.items()}
            snap_g = dict(counters.gauges)
            names = sorted({n for _, n in snap_v})
            for name in names:
                c = CounterMetricFamily(f"gridwatch_{name}", f"gridwatch {name.replace('_', ' ')}", labels=["source"])
                for (src, n), v in snap_v.items():
                    if n == name:
                        c.add_metric([src], v)
                yield c
            r = CounterMetricFamily("gridwatch_rejected", "inputs rejected, by reason", labels=["source", "reason"])
            for src, reasons in snap_r.items():
                for reason, v in reasons.items():
                    r.add_metric([src, reason], v)
            yield r
            d = CounterMetricFamily("gridwatch_dropped", "inputs dropped, by reason", labels=["source", "reason"])
            for src, reasons in snap_d.items():
                for reason, v in reasons.items():
                    d.add_metric([src, reason], v)
            yield d
            for gname in sorted({n for _, n in snap_g}):
                g = GaugeMetricFamily(f"gridwatch_{gname}", f"gridwatch {gname.replace('_', ' ')}", labels=["source"])
                for (src, n), v in snap_g.items():
                    if n == gname:
                        g.add_metric([src], v)
                yield g
            snap_i = dict(counters.infos)
            for iname in sorted({n for _, n in snap_i}):
                keys = sorted({k for (_, n), lab in snap_i.items() if n == iname for k in lab})
                g = GaugeMetricFamily(f"gridwatch_{iname}_info", f"gridwatch {iname.replace('_', ' ')}", labels=["source", *keys])
                for (src, n), lab in snap_i.items():
                    if n == iname:
                        g.add_metric([src, *(lab.get(k, "") for k in keys)], 1.0)
                yield g

    reg = CollectorRegistry()
    reg.register(_Collector())
    server, _thread = start_http_server(port, addr=bind, registry=reg)
    return server, server.server_address[1]


class _JsonFormatter(logging.Formatter):
    def __init__(self, secrets: tuple[str, ...]) -> None:
        super().__init__()
        self.secrets = secrets

    def format(self, record: logging.LogRecord) -> str:
        d = {"ts": round(record.created, 3), "level": record.levelname.lower(), "logger": record.name,
             "msg": record.getMessage()}
        for k, v in scrub_fields(getattr(record, "fields", {})).items():
            d[k] = v
        if record.exc_info:
            d["exc"] = self.formatException(record.exc_info)
        return scrub(json.dumps(d, default=str), self.secrets)


class _TextFormatter(logging.Formatter):
    def __init__(self, secrets: tuple[str, ...]) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")
        self.secrets = secrets

    def format(self, record: logging.LogRecord) -> str:
        s = super().format(record)
        f = getattr(record, "fields", None)
        if f:
            f = scrub_fields(f)
            s += " " + " ".join(f"{k}={v}" for k, v in f.items())
        return scrub(s, self.secrets)


def setup_logging(level: str = "info", fmt: str = "text", secrets: tuple[str, ...] = (), stream=None) -> None:
    """Configure the root logger; every line passes through :func:`scrub` with the known secrets."""
    h = logging.StreamHandler(stream)
    h.setFormatter(_JsonFormatter(secrets) if fmt == "json" else _TextFormatter(secrets))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(h)
    root.setLevel(level.upper())
    logging.getLogger("faust").setLevel(max(logging.WARNING, root.level))


def now_ms() -> int:
    return time.time_ns() // 1_000_000
