"""Time-series sink over the InfluxDB v2 write API (``POST /api/v2/write``, ms precision).

The line protocol is encoded here (not by ``influxdb_client.Point``, which costs ~20 µs a point);
``influxdb-client`` only carries the bytes: its ``WriteService`` (the generated ``/api/v2/write``
binding) over its ``ApiClient`` / urllib3 pool (HTTP, keep-alive, auth header, error mapping to
``ApiException``). Its higher-level ``WriteApi`` is bypassed on purpose: it offers no way to send
an already-compressed body, and its own gzip (``enable_gzip``) runs ``gzip.compress`` at level 9,
which costs ~9x level 1 for ~14 % smaller bodies and made compression the sink's main cost. The
sink therefore builds the client with ``enable_gzip=False``, compresses each batch itself
(``gzip_level``, default 1) and sends it with ``Content-Encoding: gzip``. A caller-supplied
client that has ``enable_gzip`` on keeps compressing itself, and then the sink does not compress.
Levels 1-3 deflate with ISA-L (the ``isal`` package): on a 5000-line batch of readings its level 1
took ~1.3 ms against zlib level 1's ~5.3 ms, and made a smaller body (4.98x against 4.55x);
level 0 (stored) and 4-9 use zlib. Either way the body is a standard gzip member.

Readings are encoded column-wise: the escaped ``<measurement>,device=..,metric=.. value=``
prefix is cached per (device, metric); values and timestamps are formatted for a whole batch at
once by ``orjson`` (shortest round-trip digits, the same text as ``repr`` for 0 and
1e-4 <= |v| < 1e16; other magnitudes, where ``repr`` switches to exponent notation, are written
with ``repr`` itself), and the lines are assembled with one ``bytes.join``. The output is
byte-for-byte what ``f"{prefix}{value!r} {ts}"`` gives, one ``\\n``-terminated line per row.

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

Lines are buffered and sent in batches of ``batch_lines`` (5000), gzip-compressed at
``gzip_level`` (1: ~4-6x smaller) unless ``gzip=False``. Compression is a trade of CPU on both
ends (the sink deflates, the server inflates) for bytes on the wire: on loopback it only costs
(measured against QuestDB on one host: even pre-compressed raw POSTs run at ~0.6-0.8x of plain
ones, and the sink's deflate costs more CPU than its encoding); on a 1 GbE LAN it roughly breaks
even (by arithmetic, not measured: a 5000-line batch is ~420 kB, ~3.4 ms on the wire, and takes
~2.5 ms to deflate); on WAN/cloud links it wins. Turn it off where the database is local. 5xx, 429 and
connection errors are retried with exponential backoff and full jitter (``Retry-After`` is
honoured); other 4xx answers are *not* retried: the batch is counted as rejected with the
server's reason (``stats.rejections``) and dropped — retrying a malformed batch never succeeds.
When retries are exhausted, :class:`InfluxWriteError` is raised and the batch stays at the head
of the buffer, so a later ``flush()`` retries it (at-least-once; the point identity makes
repeats idempotent). Calls block (while ``in_flight`` batches await answers, and in ``flush``):
run the sink in its own thread/executor, and one caller at a time.

Requests go out on one sender thread, one at a time and in order, while the calling thread
encodes (and compresses) the next batch: ``write_readings`` hands each full batch over as soon
as it is encoded, and blocks only when ``in_flight`` (2) batches already wait for the server's
answer, so encoding overlaps the server's work instead of adding to it. ``flush()`` returns once
every batch was answered. A batch whose retries are exhausted comes back to the head of the
buffer together with every batch queued behind it (the sender skips those rather than send them
out of order: a later version of a warning must not land before an earlier one), and the call
that collects the failure (a write or ``flush``) raises :class:`InfluxWriteError`.
``in_flight=0`` sends on the calling thread.

New device ids are turned into line prefixes in bulk (one join, one search for characters that
need escaping, one encode and one split for all new ids of a call); ids that need escaping take
the per-id path.
"""
from __future__ import annotations

import json
import logging
import math
import random
import re
import time
import zlib
from collections import Counter, deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from operator import itemgetter
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np
import orjson
from numba import njit
from numba.core import cgutils, types
from numba.extending import intrinsic

try:
    from isal import isal_zlib as _isal_zlib
except ImportError:  # a platform without an isal wheel: zlib does the same job, slower
    _isal_zlib = None

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
_NEEDS_ESCAPE = re.compile('[\\\\,= "\n\r]')  # the characters escape_key changes
_NP = orjson.OPT_SERIALIZE_NUMPY


class _Lines:
    """Encoded lines: ``data`` holds ``n`` complete lines, each ending in a newline."""

    __slots__ = ("data", "n")

    def __init__(self, data: bytes, n: int):
        self.data, self.n = data, n


class _Batch:
    """A write request handed to the sender: the buffer items it was built from (they return to
    the buffer if it fails), its body and line count, and the sender's future."""

    __slots__ = ("items", "body", "nbytes", "nlines", "fut")

    def __init__(self, items: list, body: bytes, nbytes: int, nlines: int):
        self.items, self.body, self.nbytes, self.nlines = items, body, nbytes, nlines
        self.fut: Future | None = None


class _Gzipped(bytes):
    """A request body that is already gzip-compressed."""


def gzip_compress(data: bytes, level: int = 1) -> bytes:
    """``data`` as one gzip member: ISA-L at levels 1-3 (~4x faster than zlib's level 1 on line
    protocol, and denser), zlib at 0 (stored) and 4-9, or wherever ``isal`` is not installed."""
    if _isal_zlib is not None and 1 <= level <= 3:
        return _isal_zlib.compress(data, level, wbits=31)
    return zlib.compress(data, level, wbits=31)


class _WriteService:
    """``write(bucket, org, record, write_precision)`` over the client's ``WriteService``: gzips
    ``record`` (uncompressed line protocol) at ``gzip_level`` unless the client does it itself."""

    def __init__(self, client: Any, gzip_level: int | None):
        from influxdb_client.service.write_service import WriteService

        self._svc = WriteService(client.api_client)
        client_gzips = bool(getattr(client.api_client.configuration, "enable_gzip", False))
        self.gzip_level = None if client_gzips else gzip_level

    def prepare(self, record: bytes) -> bytes:
        """The request body for ``record``: gzipped here (marked, so ``write`` sends it as it
        is) when the sink compresses. The sink calls this on its encoding thread, so the deflate
        of one batch overlaps the request of the previous one on the sender thread."""
        if self.gzip_level is None:
            return record
        return _Gzipped(gzip_compress(record, self.gzip_level))

    def write(self, bucket: str, org: str, record: bytes, write_precision: str) -> None:
        kw = {}
        if isinstance(record, _Gzipped):
            kw["content_encoding"] = "gzip"
        elif self.gzip_level is not None:
            record = gzip_compress(record, self.gzip_level)
            kw["content_encoding"] = "gzip"
        self._svc.post_write(org=org, bucket=bucket, body=record, precision=write_precision,
                             content_type="text/plain; charset=utf-8", **kw)

    def close(self) -> None:
        pass


class InfluxSink:
    """Batched, gzipped, retrying writer of readings and warnings.

    ``client``: an ``influxdb_client.InfluxDBClient`` to reuse (then url/token/org only name the
    target; build it with ``enable_gzip=False`` and let the sink compress); ``gzip_level``: 1
    (fastest) .. 9; ``in_flight``: sent batches that may await the server's answer while the
    caller encodes the next (0: send on the calling thread); ``sleep``/``rand`` are injectable
    for tests.
    """

    def __init__(self, url: str, token: str, org: str, bucket: str, *, batch_lines: int = 5000,
                 gzip: bool = True, gzip_level: int = 1, timeout_ms: int = 10_000, max_retries: int = 6,
                 backoff_base_s: float = 0.1, backoff_max_s: float = 10.0,
                 readings_measurement: str = "readings", warnings_measurement: str = "warnings",
                 client: Any = None, sleep: Callable[[float], None] = time.sleep,
                 rand: Callable[[], float] = random.random, in_flight: int = 2):
        from influxdb_client import InfluxDBClient

        for m in (readings_measurement, warnings_measurement):
            if not m or m.startswith("#") or m.startswith("_"):
                raise ValueError(f"invalid measurement name {m!r}")
        if not 0 <= gzip_level <= 9:
            raise ValueError(f"gzip_level must be 0..9, not {gzip_level}")
        if in_flight < 0:
            raise ValueError(f"in_flight must be >= 0, not {in_flight}")
        self.bucket, self.org = bucket, org
        self.batch_lines = int(batch_lines)
        self.max_retries = max_retries
        self.backoff_base_s, self.backoff_max_s = backoff_base_s, backoff_max_s
        self._sleep, self._rand = sleep, rand
        self._own_client = client is None
        self.client = client or InfluxDBClient(url=url, token=token, org=org, timeout=timeout_ms,
                                               enable_gzip=False)
        self._write_api = _WriteService(self.client, gzip_level if gzip else None)
        self._meas_r = escape_measurement(readings_measurement)
        self._meas_w = warnings_measurement
        # prefix cache: metric -> {device -> b"<meas>,device=..,metric=.. value=" or None (invalid)}
        self._prefix: dict[str, dict[Any, bytes | None]] = {}
        self._cached = 0
        self._invalid_cached = False
        self._buf: list[str | _Lines] = []  # str: one line without "\n"
        self.in_flight = int(in_flight)
        self._sent: deque[_Batch] = deque()  # handed to the sender thread, answer not yet collected
        self._pool: ThreadPoolExecutor | None = None
        self._halted = False  # a send failed: the sender skips the batches queued behind it
        self.stats = SinkStats()
        self._closed = False

    # -- readings -------------------------------------------------------------------------
    def _reading_prefix(self, device: Any, metric: str) -> bytes | None:
        """The encoded line start for (device, metric), cached; None if it cannot be written."""
        per = self._prefix.get(metric)
        if per is None:
            per = self._prefix[metric] = {}
        try:
            p = per.get(device, False)
        except TypeError:  # unhashable id: built, not cached
            p = False
        if p is False:
            d = _as_str(device)
            if not d or not metric:
                p = None
            else:
                try:
                    p = f"{self._meas_r},device={escape_key(d)},metric={escape_key(metric)} value=".encode()
                except UnicodeEncodeError:
                    p = None
            if self._cached >= 1_000_000:  # bounded memory with churning ids
                self._prefix.clear()
                self._cached, self._invalid_cached = 0, False
                per = self._prefix[metric] = {}
            self._invalid_cached |= p is None
            self._cached += 1
            try:
                per[device] = p
            except TypeError:  # unhashable id: not cached
                pass
        return p

    def _bulk_prefixes(self, devs: list, metric: str) -> bool:
        """Build and cache the prefixes of the new ids in ``devs`` in a few C-level passes (one
        join, one search for characters that need escaping, one encode, one split) instead of a
        format per id. Only for plain ``str`` ids that need no escaping; returns False (nothing
        cached) when any new id needs the general path of ``_reading_prefix``."""
        per = self._prefix.get(metric)
        try:
            new = [d for d in dict.fromkeys(devs) if per is None or d not in per]
        except TypeError:  # unhashable ids
            return False
        if not new:
            return True
        if (not metric or self._cached + len(new) >= 1_000_000 or not all(new)
                or set(map(type, new)) != {str}):
            return False
        joined = "\x00".join(new)  # NUL: the joiner, so it must not occur in an id
        if joined.count("\x00") != len(new) - 1 or _NEEDS_ESCAPE.search(joined) is not None:
            return False
        try:
            jb = joined.encode()
        except UnicodeEncodeError:
            return False
        head = f"{self._meas_r},device=".encode()
        tail = f",metric={escape_key(metric)} value=".encode()
        built = (head + jb.replace(b"\x00", tail + b"\x00" + head) + tail).split(b"\x00")
        if per is None:
            per = self._prefix[metric] = {}
        per.update(zip(new, built))
        self._cached += len(new)
        return True

    def _prefixes(self, devs: list, metric: str) -> Sequence[bytes | None]:
        mk = self._reading_prefix
        try:
            for _ in range(2):
                per = self._prefix.get(metric)
                if per is not None:
                    try:
                        if len(devs) > 1:
                            return itemgetter(*devs)(per)  # a tuple, built in one C-level loop
                        return [per[d] for d in devs]
                    except KeyError:  # new ids
                        pass
                if not self._bulk_prefixes(devs, metric):
                    break
            per = self._prefix.get(metric) or {}
            return [per[d] if d in per else mk(d, metric) for d in devs]
        except TypeError:  # unhashable ids
            return [mk(d, metric) for d in devs]

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
        devs = _ids(device_ids, n, "device_ids")
        mets = None
        if not isinstance(metrics, str):
            ml = _ids(metrics, n, "metrics")
            try:
                one = set(ml)
            except TypeError:
                one = ()
            if len(one) == 1:  # one metric for all rows (the usual columnar batch): the str path
                metrics = _as_str(one.pop())
            else:
                mets = [_as_str(m) for m in ml]
        finite = np.isfinite(vals)
        if not finite.all():
            keep = np.flatnonzero(finite)
            self.stats.skipped_rows["non_finite"] += n - keep.shape[0]
            kl = keep.tolist()
            devs = [devs[i] for i in kl]
            if mets is not None:
                mets = [mets[i] for i in kl]
            ts, vals = ts[keep], vals[keep]
        m = len(devs)
        # pieces aligned to batch boundaries: a full batch is one piece and goes out without a re-join
        step = self.batch_lines
        first = step - self._buf_lines() % step
        bounds = [0, *range(first, m, step), m] if first < m else [0, m]
        queued = 0
        err: InfluxWriteError | None = None
        for lo, hi in zip(bounds, bounds[1:]):
            queued += self._queue_readings(devs[lo:hi], metrics if mets is None else mets[lo:hi],
                                           vals[lo:hi], ts[lo:hi])
            if err is None:
                try:  # a full batch goes out now, so the next piece is encoded while it is on the wire
                    self._send_full()
                except InfluxWriteError as e:  # queue every row of the call first, then raise
                    err = e
        if err is not None:
            raise err
        return queued

    def _queue_readings(self, devs: list, metrics: str | list[str], vals: np.ndarray, ts: np.ndarray) -> int:
        if isinstance(metrics, str):
            prefixes = self._prefixes(devs, metrics)
        else:
            try:
                cache = self._prefix
                prefixes = [cache[mt][d] for d, mt in zip(devs, metrics)]
            except (KeyError, TypeError):
                mk = self._reading_prefix
                prefixes = [mk(d, mt) for d, mt in zip(devs, metrics)]
        if self._invalid_cached and None in prefixes:
            idx = [i for i, p in enumerate(prefixes) if p is not None]
            self.stats.skipped_rows["invalid_identifier"] += len(prefixes) - len(idx)
            prefixes = [prefixes[i] for i in idx]
            vals, ts = vals[idx], ts[idx]
        if prefixes:
            self._buf.append(_Lines(_encode_readings(prefixes, vals, ts), len(prefixes)))
        return len(prefixes)

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
        """Lines not yet accepted by the server: buffered, or sent and not yet answered."""
        return self._buf_lines() + sum(b.nlines for b in self._sent)

    def _buf_lines(self) -> int:
        return sum(1 if type(x) is str else x.n for x in self._buf)

    def _send_full(self) -> None:
        while self._buf_lines() >= self.batch_lines:
            self._send_head(self.batch_lines)

    def flush(self) -> None:
        """Send everything buffered and wait for the server's answers; raises InfluxWriteError
        if the server stays unavailable (the unsent lines stay buffered, in order)."""
        while self._buf:
            self._send_head(self.batch_lines)
        self._collect(wait_all=True)

    def _send_head(self, n: int) -> None:
        """Hand the head of the buffer to the sender: whole items up to ``n`` lines (readings are
        queued in pieces aligned to batch boundaries). With ``in_flight`` > 0 the request goes out
        on the sender thread while the caller encodes the next batch; at most ``in_flight``
        batches wait for an answer (then this call blocks for the oldest)."""
        k = nlines = 0
        for item in self._buf:
            c = 1 if type(item) is str else item.n
            if k and nlines + c > n:
                break
            k += 1
            nlines += c
            if nlines >= n:
                break
        head = self._buf[:k]
        if k == 1 and type(head[0]) is _Lines:
            body = head[0].data  # no copy
        else:
            body = b"".join(x.data if type(x) is _Lines else (x + "\n").encode("utf-8") for x in head)
        prepare = getattr(self._write_api, "prepare", None)  # gzip, here on the caller's thread
        b = _Batch(head, body if prepare is None else prepare(body), len(body), nlines)
        body = b.body
        del self._buf[:k]
        self._sent.append(b)
        if self.in_flight <= 0:
            b.fut = Future()
            try:
                b.fut.set_result(self._attempt(body, nlines))
            except InfluxWriteError as e:
                b.fut.set_exception(e)
            self._collect(wait_all=True)
            return
        if self._pool is None:
            self._pool = ThreadPoolExecutor(1, thread_name_prefix="influx-sink")
        b.fut = self._pool.submit(self._attempt, body, nlines)
        self._collect(wait_all=False)

    def _attempt(self, body: bytes, nlines: int) -> str:
        """One batch, with retries (on the sender thread). Batches are sent one at a time, in
        order; once one has failed, the ones queued behind it are skipped (not sent out of
        order) and go back to the buffer with it."""
        if self._halted:
            return "skipped"
        try:
            return self._post(body, nlines)
        except InfluxWriteError:
            self._halted = True
            raise

    def _collect(self, wait_all: bool) -> None:
        """Take the answers of sent batches, oldest first: all of them (``wait_all``), else the
        finished ones and as many more as keep at most ``in_flight`` waiting. If one failed,
        it and every batch after it return to the head of the buffer and the error is raised."""
        err: InfluxWriteError | None = None
        failed: list[_Batch] = []
        while self._sent:
            b = self._sent[0]
            if not (wait_all or err is not None or b.fut.done() or len(self._sent) > self.in_flight):
                break
            self._sent.popleft()
            try:
                status = b.fut.result()
            except InfluxWriteError as e:
                err = err or e
                failed.append(b)
                continue
            if status == "skipped":
                failed.append(b)
            elif status == "ok":
                self.stats.lines_written += b.nlines
                self.stats.batches_written += 1
                self.stats.bytes_sent += b.nbytes
        if err is not None or failed:
            self._buf[:0] = [x for b in failed for x in b.items]
            self._halted = False
            if err is None:  # cannot happen: a skip follows a failure collected in this call
                err = InfluxWriteError("a batch was skipped after an earlier failure")
            raise err

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
            if self._pool is not None:
                self._pool.shutdown(wait=True)
            self._write_api.close()
            if self._own_client:
                self.client.close()

    def __enter__(self) -> "InfluxSink":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _ids(x: Any, n: int, what: str) -> list:
    """One id per row, as given (normalised lazily by ``_as_str`` when a prefix is built)."""
    if isinstance(x, str):
        return [x] * n
    x = x.tolist() if isinstance(x, np.ndarray) else list(x)
    if len(x) != n:
        raise ValueError(f"{what} has {len(x)} rows, expected {n}")
    return x


def _as_str(s: Any) -> str:
    return s if isinstance(s, str) else (s.decode() if isinstance(s, bytes) else str(s))


def _encode_readings(prefixes: Sequence[bytes], vals: np.ndarray, ts: np.ndarray) -> bytes:
    """``b"".join(p + repr(v).encode() + b" %d\\n" % t)`` over the rows, without a Python-level
    format per row: orjson formats the value column in bulk (its shortest round-trip text is
    ``repr``'s for 0 and 1e-4 <= |v| < 1e16; other rows get ``repr``'s text), and one Numba pass
    interleaves prefixes, values and formatted timestamps into the body."""
    n = len(prefixes)
    vals = np.ascontiguousarray(vals, dtype=np.float64).ravel()
    ts = np.ascontiguousarray(ts, dtype=np.int64).ravel()
    if vals.shape[0] != n or ts.shape[0] != n:  # the kernel trusts the lengths
        raise ValueError(f"{n} prefixes, {vals.shape[0]} values, {ts.shape[0]} timestamps")
    vtext = np.frombuffer(orjson.dumps(vals, option=_NP), np.uint8)  # b"[v0,v1,...]"
    a = np.abs(vals)
    odd = np.flatnonzero(((a < 1e-4) & (a != 0.0)) | (a >= 1e16))
    if odd.shape[0]:
        texts = [repr(float(vals[i])).encode() for i in odd.tolist()]
        odd_text = np.frombuffer(b"".join(texts), np.uint8)
        odd_end = np.cumsum(np.fromiter(map(len, texts), np.int64, len(texts)))
    else:
        odd_text, odd_end = _EMPTY_U8, _EMPTY_I64
    pre = np.frombuffer(b"".join(prefixes), np.uint8)
    plen = np.fromiter(map(len, prefixes), np.int64, n)
    out = np.empty(pre.shape[0] + vtext.shape[0] + odd_text.shape[0] + 22 * n, np.uint8)
    k = _assemble_lines(pre, plen, vtext, odd.astype(np.int64), odd_text, odd_end, ts, out, _PAIRS)
    return out[:k].tobytes()


_EMPTY_U8 = np.zeros(0, np.uint8)
_EMPTY_I64 = np.zeros(0, np.int64)


@intrinsic
def _copy_bytes(typingctx, dst, dst_at, src, src_at, n):
    """``dst[dst_at:dst_at + n] = src[src_at:src_at + n]`` as one memcpy (1-d contiguous uint8
    arrays, ranges checked by the caller): Numba's byte loop costs ~2 ns a byte, this ~0.1."""
    sig = types.void(dst, types.intp, src, types.intp, types.intp)

    def codegen(context, builder, signature, args):
        d, d_at, sr, s_at, nn = args
        darr = context.make_array(signature.args[0])(context, builder, d)
        sarr = context.make_array(signature.args[2])(context, builder, sr)
        cgutils.raw_memcpy(builder, builder.gep(darr.data, [d_at]), builder.gep(sarr.data, [s_at]), nn, 1)
    return sig, codegen


_PAIRS = np.frombuffer("".join(f"{i:02d}" for i in range(100)).encode(), np.uint8).copy()  # "000102..99"


@njit(cache=True, nogil=True, boundscheck=False)
def _assemble_lines(pre, plen, vtext, odd, odd_text, odd_end, ts, out, pairs):  # pragma: no cover - compiled
    """Row i: its prefix (the next ``plen[i]`` bytes of ``pre``), its value (the i-th comma-separated
    item of orjson's ``vtext``, or the next ``odd_text`` item where ``odd`` lists i), a space, the
    timestamp in decimal (two digits per division, from ``pairs``), a newline. Returns the bytes
    written to ``out``, which must hold them all."""
    k = 0
    p = 0
    v = 1  # past "["
    j = 0  # next odd row
    o = 0
    ten = np.uint64(10)
    hundred = np.uint64(100)
    for i in range(plen.shape[0]):
        n = plen[i]
        _copy_bytes(out, k, pre, p, n)
        k += n
        p += n
        start = v
        while vtext[v] != 44 and vtext[v] != 93:  # "," or "]"
            v += 1
        if j < odd.shape[0] and odd[j] == i:
            n = odd_end[j] - o
            _copy_bytes(out, k, odd_text, o, n)
            k += n
            o = odd_end[j]
            j += 1
        else:
            _copy_bytes(out, k, vtext, start, v - start)
            k += v - start
        v += 1
        out[k] = 32  # " "
        k += 1
        t = ts[i]
        if t < 0:
            out[k] = 45  # "-"
            k += 1
            u = np.uint64(-t)  # int64 min negates to itself, and its uint64 value is its magnitude
        else:
            u = np.uint64(t)
        m = 1
        x = u
        while x >= ten:
            x //= ten
            m += 1
        e = k + m
        while u >= hundred:
            r = np.int64(u % hundred)
            u //= hundred
            e -= 2
            out[e] = pairs[2 * r]
            out[e + 1] = pairs[2 * r + 1]
        if u >= ten:
            r = np.int64(u)
            out[e - 2] = pairs[2 * r]
            out[e - 1] = pairs[2 * r + 1]
        else:
            out[e - 1] = 48 + np.int64(u)
        k += m
        out[k] = 10  # "\n"
        k += 1
    return k


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
