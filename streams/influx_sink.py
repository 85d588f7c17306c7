"""Time-series sink over the InfluxDB v2 write API (``POST /api/v2/write``, ms precision).

The line protocol is encoded here (not by ``influxdb_client.Point``, which costs ~20 µs a point);
``influxdb-client`` only carries the bytes (HTTP, auth header, gzip).

Schema
======

Readings — measurement ``readings``::

    readings,device=<device id>,metric=<metric> value=<float> <ts_ms>

* ``metric`` is a tag: a handful of names (temperature, pm25, voltage ...).
* ``device`` is a tag, deliberately. A point's identity in InfluxDB is (measurement, tag set,
  timestamp): with the device as a *field*, two devices reporting the same metric in the same
  millisecond would overwrite each other, so the device must be in the series key. It is also
  the predicate of nearly every query ("this device's last hour"). Its cardinality is bounded by
  the fleet, not by time: series = devices × metrics (e.g. 100k devices × 4 metrics = 400k
  series), comfortable for InfluxDB 2's TSI index and a non-issue for InfluxDB 3 / QuestDB
  (tags become SYMBOL columns). Nothing unbounded is ever a tag: values, timestamps, warning ids,
  messages are fields.
* NaN/±inf values cannot be represented in line protocol: such rows are skipped and counted
  (``stats.skipped_rows["non_finite"]``).

Warnings — measurement ``warnings``, one point per warning, timestamp = ``start_ts``::

    warnings,kind=<kind>,rule=<rule>,source=<source>[,zone=<zone>] id="w-...",severity="major",
        state="active",region="city/county/town/grid",value=3.5,last_ts=<ms>i[,cleared_ts=<ms>i],
        message="...",evidence="<json>" <start_ts>

* Keyed by id without making the id a tag: the id is a deterministic hash of (source, rule,
  zone, start_ts) (``gridwatch.records.warning_id``), and exactly those are the point's tags +
  timestamp. So every update of a warning (active → cleared, escalation, last_ts moving on) lands
  on the *same point* and InfluxDB's last-write-wins on (series, time) makes it an upsert by id,
  while series cardinality stays bounded by sources × rules × zones instead of growing by one
  series per warning forever. ``id`` is stored as a string field for lookups.
* Mutable attributes (severity, state, timestamps, value, message) are fields, never tags: a
  changed tag would create a second point instead of updating the first.
* QuestDB appends instead of upserting unless the table is deduplicated:
  ``ALTER TABLE warnings DEDUP ENABLE UPSERT KEYS(timestamp, source, rule, kind, zone)``.

Escaping (InfluxDB line-protocol spec)
======================================

* measurement: ``,`` and space; tag keys/values and field keys: ``,`` ``=`` and space (and
  ``"``, which InfluxDB unescapes too, so no quote can open a bogus string); string field
  values: ``"``; backslash is escaped everywhere (``\\\\`` reads back as one backslash),
  so a value ending in a backslash cannot swallow the next separator.
* Newline/CR: the spec has no representation for them in tags or fields. We write them as a
  backslash followed by the character, which QuestDB reads back exactly and which keeps the
  line intact for InfluxDB's parser (InfluxDB 1.x/2.x then keep the backslash in the value).
* Non-ASCII is written as UTF-8 unchanged; strings that cannot be encoded (lone surrogates) and
  empty identifiers reject the row (counted in ``stats.skipped_rows``).

Delivery
========

Lines are buffered and sent in batches of ``batch_lines`` (5000) with gzip. 5xx, 429 and
connection errors are retried with exponential backoff and full jitter (``Retry-After`` is
honoured); other 4xx answers are *not* retried: the batch is counted as rejected with the
server's reason (``stats.rejections``) and dropped — retrying a malformed batch never succeeds.
When retries are exhausted, :class:`InfluxWriteError` is raised and the batch stays at the head
of the buffer, so a later ``flush()`` retries it (at-least-once; the point identity makes
repeats idempotent). Calls are synchronous: run the sink in its own thread/executor.
"""
from __future__ import annotations

import json
import logging
import math
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np

log = logging.getLogger(__name__)

# ---------------------------------------------------------------------------------------------
# Line-protocol escaping

_MEAS = str.maketrans({"\\": "\\\\", ",": "\\,", " ": "\\ ", "\n": "\\\n", "\r": "\\\r"})
_KEY = str.maketrans({"\\": "\\\\", ",": "\\,", "=": "\\=", " ": "\\ ", '"': '\\"', "\n": "\\\n", "\r": "\\\r"})
_STR = str.maketrans({"\\": "\\\\", '"': '\\"', "\n": "\\\n", "\r": "\\\r"})


def escape_measurement(s: str) -> str:
    return s.translate(_MEAS)


def escape_key(s: str) -> str:
    """Tag key, tag value or field key."""
    return s.translate(_KEY)


def escape_string_field(s: str) -> str:
    """The *inside* of a double-quoted string field value."""
    return s.translate(_STR)


def format_float(v: float) -> str:
    """Shortest round-trip repr (``1.5``, ``1e+16``); caller guarantees finiteness."""
    return repr(float(v))


def format_int(v: int) -> str:
    return f"{int(v)}i"


def format_string(s: str) -> str:
    return '"' + s.translate(_STR) + '"'


def _valid_identifier(s: str) -> bool:
    return bool(s)


def encode_line(measurement: str, tags: Mapping[str, str], fields: Mapping[str, Any], ts: int) -> str:
    """One line of protocol. Tags with empty values are omitted (InfluxDB forbids them), tags
    are sorted by key (InfluxDB's recommendation); fields: float, int (``i``), bool, str;
    ``None`` and non-finite floats are omitted. Raises ValueError if no field remains."""
    parts = [escape_measurement(measurement)]
    for k in sorted(tags):
        v = tags[k]
        if v is None or v == "":
            continue
        parts.append(f",{escape_key(k)}={escape_key(str(v))}")
    fs = []
    for k, v in fields.items():
        if v is None:
            continue
        if isinstance(v, bool):
            enc = "true" if v else "false"
        elif isinstance(v, (int, np.integer)):
            enc = format_int(v)
        elif isinstance(v, (float, np.floating)):
            if not math.isfinite(v):
                continue
            enc = format_float(v)
        elif isinstance(v, str):
            enc = format_string(v)
        else:
            enc = format_string(json.dumps(v, separators=(",", ":"), sort_keys=True, default=str))
        fs.append(f"{escape_key(k)}={enc}")
    if not fs:
        raise ValueError("a point needs at least one field")
    return "".join(parts) + " " + ",".join(fs) + f" {int(ts)}"


# ---------------------------------------------------------------------------------------------


class InfluxWriteError(RuntimeError):
    """A batch could not be delivered after all retries (it stays buffered)."""


@dataclass
class SinkStats:
    lines_written: int = 0
    batches_written: int = 0
    bytes_sent: int = 0  # before gzip
    retries: int = 0
    rejected_batches: int = 0
    rejected_lines: int = 0
    rejections: Counter = field(default_factory=Counter)  # "<status>: <reason>" -> batches
    failed_flushes: int = 0  # retries exhausted
    skipped_rows: Counter = field(default_factory=Counter)  # reason -> rows never encoded


_RETRY_STATUS = {429, 500, 502, 503, 504}


class InfluxSink:
    """Batched, gzipped, retrying writer of readings and warnings.

    ``client``: an ``influxdb_client.InfluxDBClient`` to reuse (then url/token/org only name the
    target); ``sleep``/``rand`` are injectable for tests.
    """

    def __init__(self, url: str, token: str, org: str, bucket: str, *, batch_lines: int = 5000,
                 gzip: bool = True, timeout_ms: int = 10_000, max_retries: int = 6,
                 backoff_base_s: float = 0.1, backoff_max_s: float = 10.0,
                 readings_measurement: str = "readings", warnings_measurement: str = "warnings",
                 client: Any = None, sleep: Callable[[float], None] = time.sleep,
                 rand: Callable[[], float] = random.random):
        from influxdb_client import InfluxDBClient
        from influxdb_client.client.write_api import SYNCHRONOUS

        for m in (readings_measurement, warnings_measurement):
            if not m or m.startswith("#") or m.startswith("_"):
                raise ValueError(f"invalid measurement name {m!r}")
        self.bucket, self.org = bucket, org
        self.batch_lines = int(batch_lines)
        self.max_retries = max_retries
        self.backoff_base_s, self.backoff_max_s = backoff_base_s, backoff_max_s
        self._sleep, self._rand = sleep, rand
        self._own_client = client is None
        self.client = client or InfluxDBClient(url=url, token=token, org=org, timeout=timeout_ms,
                                               enable_gzip=gzip)
        self._write_api = self.client.write_api(write_options=SYNCHRONOUS)
        self._meas_r = escape_measurement(readings_measurement)
        self._meas_w = warnings_measurement
        self._prefix: dict[tuple[str, str], str | None] = {}
        self._buf: list[str] = []
        self.stats = SinkStats()
        self._closed = False

    # -- readings -------------------------------------------------------------------------
    def _reading_prefix(self, device: str, metric: str) -> str | None:
        key = (device, metric)
        p = self._prefix.get(key, False)
        if p is False:
            if not device or not metric:
                p = None
            else:
                p = f"{self._meas_r},device={escape_key(device)},metric={escape_key(metric)} value="
                if not _utf8_ok(p):
                    p = None
            if len(self._prefix) > 1_000_000:  # bounded memory with churning ids
                self._prefix.clear()
            self._prefix[key] = p
        return p

    def write_readings(self, device_ids: Sequence[str] | np.ndarray | str,
                       metrics: Sequence[str] | np.ndarray | str,
                       ts_ms: np.ndarray, values: np.ndarray) -> int:
        """Queue one line per row (device_ids/metrics: one per row, or one str for all rows);
        sends full batches. Returns the number of lines queued."""
        ts = np.asarray(ts_ms, dtype=np.int64).ravel()
        vals = np.asarray(values, dtype=np.float64).ravel()
        n = ts.shape[0]
        if vals.shape[0] != n:
            raise ValueError(f"ts_ms has {n} rows, values {vals.shape[0]}")
        devs = _rows(device_ids, n, "device_ids")
        mets = _rows(metrics, n, "metrics")
        finite = np.isfinite(vals)
        if not finite.all():
            keep = np.flatnonzero(finite)
            self.stats.skipped_rows["non_finite"] += n - keep.shape[0]
            devs = [devs[i] for i in keep.tolist()]
            mets = [mets[i] for i in keep.tolist()]
            ts, vals = ts[keep], vals[keep]
        get = self._prefix.get
        mk = self._reading_prefix
        prefixes = [get((d, m)) or mk(d, m) for d, m in zip(devs, mets)]
        if None in prefixes:
            lines = [f"{p}{v!r} {t}" for p, v, t in zip(prefixes, vals.tolist(), ts.tolist()) if p is not None]
            self.stats.skipped_rows["invalid_identifier"] += len(prefixes) - len(lines)
        else:
            lines = [f"{p}{v!r} {t}" for p, v, t in zip(prefixes, vals.tolist(), ts.tolist())]
        self._buf.extend(lines)
        self._send_full()
        return len(lines)

    # -- warnings -------------------------------------------------------------------------
    def warning_line(self, w: Mapping[str, Any] | Any) -> str:
        """Encode one warning (a dict as from ``Warning.to_dict()``, or a ``Warning``)."""
        d = w.to_dict() if hasattr(w, "to_dict") else w
        region = d.get("region")
        if isinstance(region, Mapping):
            region = region.get("path") or "/".join(
                str(region.get(k) or "") for k in ("city", "county", "town", "grid")).strip("/")
        evidence = d.get("evidence")
        tags = {"rule": d["rule"], "kind": d.get("kind"), "source": d.get("source"), "zone": d.get("zone")}
        fields = {
            "id": str(d["id"]),
            "severity": d.get("severity"),
            "state": d.get("state"),
            "region": region or None,
            "value": None if d.get("value") is None else float(d["value"]),
            "last_ts": None if d.get("last_ts") is None else int(d["last_ts"]),
            "cleared_ts": None if d.get("cleared_ts") is None else int(d["cleared_ts"]),
            "message": d.get("message"),
            "evidence": json.dumps(evidence, separators=(",", ":"), sort_keys=True, default=str) if evidence else None,
        }
        return encode_line(self._meas_w, {k: (None if v is None else str(v)) for k, v in tags.items()},
                           fields, int(d["start_ts"]))

    def write_warnings(self, warnings: Iterable[Mapping[str, Any] | Any]) -> int:
        n = 0
        for w in warnings:
            try:
                line = self.warning_line(w)
            except (KeyError, TypeError, ValueError) as e:
                self.stats.skipped_rows[f"bad_warning: {type(e).__name__}"] += 1
                log.warning("warning not written: %r (%s)", w, e)
                continue
            if not _utf8_ok(line):
                self.stats.skipped_rows["invalid_unicode"] += 1
                continue
            self._buf.append(line)
            n += 1
        self._send_full()
        return n

    # -- delivery -------------------------------------------------------------------------
    @property
    def pending_lines(self) -> int:
        return len(self._buf)

    def _send_full(self) -> None:
        while len(self._buf) >= self.batch_lines:
            self._send_head(self.batch_lines)

    def flush(self) -> None:
        """Send everything buffered; raises InfluxWriteError if the server stays unavailable."""
        while self._buf:
            self._send_head(self.batch_lines)

    def _send_head(self, n: int) -> None:
        chunk = self._buf[:n]
        body = "\n".join(chunk).encode("utf-8")
        status = self._post(body, len(chunk))
        del self._buf[:len(chunk)]
        if status == "ok":
            self.stats.lines_written += len(chunk)
            self.stats.batches_written += 1
            self.stats.bytes_sent += len(body)

    def _post(self, body: bytes, nlines: int) -> str:
        from influxdb_client.rest import ApiException
        import urllib3

        attempt = 0
        while True:
            retry_after = None
            try:
                self._write_api.write(bucket=self.bucket, org=self.org, record=body, write_precision="ms")
                return "ok"
            except ApiException as e:
                status = e.status or 0
                if status not in _RETRY_STATUS:
                    reason = _reason(e)
                    self.stats.rejected_batches += 1
                    self.stats.rejected_lines += nlines
                    self.stats.rejections[f"{status}: {reason}"[:300]] += 1
                    log.error("influx write rejected (%s, %d lines): %s", status, nlines, reason)
                    return "rejected"
                err: Exception = e
                ra = (e.headers or {}).get("Retry-After") if hasattr(e, "headers") else None
                if ra:
                    try:
                        retry_after = float(ra)
                    except ValueError:
                        pass
            except (urllib3.exceptions.HTTPError, OSError) as e:
                err = e
            if attempt >= self.max_retries:
                self.stats.failed_flushes += 1
                raise InfluxWriteError(f"write failed after {attempt + 1} attempts: {err}") from err
            delay = min(self.backoff_max_s, self.backoff_base_s * (2 ** attempt)) * self._rand()
            if retry_after is not None:
                delay = max(delay, min(retry_after, self.backoff_max_s))
            attempt += 1
            self.stats.retries += 1
            log.warning("influx write failed (%s); retry %d in %.2fs", err, attempt, delay)
            self._sleep(delay)

    def close(self) -> None:
        if self._closed:
            return
        try:
            self.flush()
        finally:
            self._closed = True
            self._write_api.close()
            if self._own_client:
                self.client.close()

    def __enter__(self) -> "InfluxSink":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _rows(x: Any, n: int, what: str) -> list[str]:
    if isinstance(x, str):
        return [x] * n
    if isinstance(x, np.ndarray):
        x = x.tolist()
    else:
        x = list(x)
    if len(x) != n:
        raise ValueError(f"{what} has {len(x)} rows, expected {n}")
    return [s if isinstance(s, str) else (s.decode() if isinstance(s, bytes) else str(s)) for s in x]


def _utf8_ok(s: str) -> bool:
    try:
        s.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


def _reason(e: Any) -> str:
    body = getattr(e, "body", None) or ""
    if isinstance(body, bytes):
        body = body.decode("utf-8", "replace")
    try:
        j = json.loads(body)
        return str(j.get("message") or j.get("error") or body).strip()
    except (ValueError, AttributeError):
        return (str(body) or str(getattr(e, "reason", "")) or str(e)).strip()


__all__ = ["InfluxSink", "InfluxWriteError", "SinkStats", "encode_line", "escape_measurement",
           "escape_key", "escape_string_field", "format_float"]
