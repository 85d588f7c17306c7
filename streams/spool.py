"""Store-and-forward: a disk-backed, crash-safe, size-bounded FIFO between the pipeline and a
remote sink (the time-series server), replayed in order after an outage or a crash.

    spool = Spool(data_dir / "spool" / "influx", max_bytes=512 * 2**20)
    fwd = SpooledInfluxSink(spool, InfluxSink(...))
    if not fwd.offer_readings(devices, metrics, ts, values):   # False: spool full
        ...  # do NOT acknowledge the MQTT messages: the broker keeps them; offer again later
    fwd.drain()   # in the sink's own thread: sends the oldest records, in order, until empty or the server fails

Layout and crash safety
-----------------------
Records are appended to segment files ``seg-<first seq>.log`` (rolled at ``segment_bytes``);
each record is a 24-byte header ``<4s sync "\xa5GWs"><u32 length><u64 seq><u32 crc32(payload)>
<u32 crc32(the header's first 20 bytes)>`` + payload. The read position lives in
``ack`` (the seq of the next record to send): two checksummed slots overwritten alternately in
place, so acknowledging needs no free space and a torn write loses at most the newest ack (the
records are then resent: at-least-once). On open, segments are scanned and every record's two
CRCs checked:

* a **torn tail** (the newest segment ends in a record cut short, or in bytes without a sound
  header, with no valid record after them: a crash mid-append) is truncated away and counted
  (``torn_tails``). With ``fsync="always"`` such a record was never reported as appended. A
  complete final record with a sound header but a bad payload CRC is corrupt, not torn: it is
  quarantined (below), then cut.
* a **corrupt record** anywhere else (a flipped bit, a bad sector: a CRC mismatch followed by
  valid records) does not end the scan: the scanner resynchronises on the next sync marker whose
  header and payload CRCs check out (the header CRC makes a corrupt length harmless), the bad
  bytes are copied to ``quarantine/<segment>@<offset>.bad`` (bounded by ``quarantine_max_bytes``;
  beyond it they are counted in ``quarantine_dropped_bytes`` and not kept) and counted
  (``corrupt_regions``, ``corrupt_records`` from the gap in seqs, ``quarantined_bytes``), with one
  warning each. Every valid record after it is kept and replayed. Corrupt bytes that hold only
  already-acknowledged records are counted in ``corrupt_acked_regions`` and not quarantined.

Everything valid is replayed from the ack position, in order. Fully acknowledged segments are
deleted. Segments written by the first format (``<u32 length><u32 crc32><u64 seq>`` records, no
sync marker) are still read; an invalid record in one ends that segment's scan, the rest of it is
quarantined (not deleted); new records are always written in the current format, to new segments.

fsync policy (``fsync``):

* ``"always"`` (default): every append is fsync'ed before ``append`` returns, so a record the caller
  was told about (and the MQTT messages it acknowledged after that) survives a power loss;
  the ack file is fsync'ed too. Appends are per pipeline batch (thousands of readings), so this
  costs one fsync per batch.
* ``"never"``: written to the OS page cache only: survives a crash (``kill -9``) of gridwatch but
  not a power loss or kernel crash. For throughput tests.

Delivery is at-least-once: a record is acknowledged after the sink reported it written, so a
crash between the write and the ack resends it. The sink must be idempotent on (device, metric,
timestamp): InfluxDB upserts such a point by itself; QuestDB needs the table deduplicated
(:func:`questdb_readings_table_sql`), and then every reading is stored exactly once.

When full
---------
``max_bytes`` bounds the files on disk. An append that would pass it raises :class:`SpoolFull`
(``offer_*`` return False): **back-pressure**, never a drop — the caller stops acknowledging MQTT so
the broker keeps the data (size the broker's queue for the outage: ``max_queued_messages``). A
write that fails with ENOSPC (the disk itself is full) is rolled back (the partial record is
truncated), counted (``disk_full``), logged once with a clear message, and raised as
:class:`SpoolDiskFull` (also a :class:`SpoolFull`): the same back-pressure, and the spool works
again as soon as space returns.
"""
from __future__ import annotations

import errno
import logging
import os
import struct
import threading
import time
import zlib
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import orjson

log = logging.getLogger("gridwatch.streams.spool")
_REC_V1 = struct.Struct("<IIQ")  # first format: length, crc32(payload), seq (still read)
SYNC = b"\xa5GWs"  # starts every record: the scanner resynchronises on it after a corrupt one
_HDR = struct.Struct("<4sIQII")  # sync, length, seq, crc32(payload), crc32(first 20 header bytes)
_HDR_BODY = struct.Struct("<4sIQI")
_ACK = struct.Struct("<QI")  # next seq to send, crc32 of it
_ACK_EMPTY = struct.pack("<Q", 0) + struct.pack("<I", zlib.crc32(struct.pack("<Q", 0)))


class SpoolFull(RuntimeError):
    """The spool cannot take the record now: back-pressure (do not acknowledge upstream)."""


class SpoolDiskFull(SpoolFull):
    """The file system is out of space (ENOSPC)."""


class Spool:
    def __init__(self, directory: str | os.PathLike, *, max_bytes: int = 512 * 2**20,
                 segment_bytes: int = 16 * 2**20, fsync: str = "always",
                 quarantine_max_bytes: int = 64 * 2**20) -> None:
        if fsync not in ("always", "never"):
            raise ValueError(f"fsync must be 'always' or 'never', not {fsync!r}")
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.max_bytes = int(max_bytes)
        self.segment_bytes = int(segment_bytes)
        self.fsync = fsync == "always"
        self.quarantine_max_bytes = int(quarantine_max_bytes)
        self.stats: Counter = Counter()
        self._lock = threading.Lock()
        self._segments: list[tuple[int, Path]] = []  # (first seq, path), oldest first
        self._index: list[tuple[int, Path, int, int]] = []  # unacked records: (seq, path, offset, length)
        self._next_seq = 0
        self._bytes = 0
        self._wfile = None
        self._wsize = 0
        self._disk_full_logged = False
        self.ack_seq = self._read_ack()
        self._recover()

    # -- open / recovery ---------------------------------------------------------------------
    def _read_ack(self) -> int:
        """The ack file holds two fixed slots ``<u64 seq><u32 crc>``, written alternately in place:
        no new blocks are needed (an ack still works on a full disk, and frees space), and a torn
        write spoils one slot only; the valid slot with the higher seq wins."""
        path = self.dir / "ack"
        if not path.exists():
            with open(path, "wb") as f:
                f.write(_ACK_EMPTY * 2)
                f.flush()
                os.fsync(f.fileno())
        data = path.read_bytes()
        best, self._ack_slot = 0, 0
        for i in range(2):
            chunk = data[i * _ACK.size:(i + 1) * _ACK.size]
            if len(chunk) == _ACK.size:
                seq, crc = _ACK.unpack(chunk)
                if crc == zlib.crc32(chunk[:8]) and seq >= best:
                    best, self._ack_slot = seq, i
        self._ack_fd = os.open(path, os.O_RDWR)
        return best

    def _recover(self) -> None:
        segs = sorted((int(p.stem[4:]), p) for p in self.dir.glob("seg-*.log"))
        for i, (first, path) in enumerate(segs):
            data = path.read_bytes()
            last = i == len(segs) - 1
            nxt_first = segs[i + 1][0] if not last else None
            if _first_format(data):
                keep = self._scan_v1(path, data, first, last)
            else:
                keep = self._scan_v2(path, data, first, last, nxt_first)
            if keep != len(data):  # only the newest segment's tail is ever cut
                with open(path, "r+b") as f:
                    f.truncate(keep)
                    os.fsync(f.fileno())
            self._segments.append((first, path))
            self._bytes += keep
        self._next_seq = max(self._next_seq, self.ack_seq)
        self._drop_acked_segments()
        self.stats["recovered_records"] = len(self._index)

    def _valid_at(self, data: bytes, pos: int) -> int:
        """The end of the valid current-format record at ``pos``, or -1."""
        if pos + _HDR.size > len(data) or data[pos:pos + 4] != SYNC:
            return -1
        sync, ln, seq, pcrc, hcrc = _HDR.unpack_from(data, pos)
        if zlib.crc32(data[pos:pos + _HDR_BODY.size]) != hcrc:
            return -1
        end = pos + _HDR.size + ln
        if end > len(data) or zlib.crc32(data[pos + _HDR.size:end]) != pcrc:
            return -1
        return end

    def _scan_v2(self, path: Path, data: bytes, first: int, last: bool, nxt_first: int | None) -> int:
        """Index the valid records of one segment, skipping (quarantining) corrupt ones; returns
        the length to keep (shorter than the file only for a torn tail of the newest segment)."""
        pos, prev_seq, n = 0, first - 1, len(data)
        while pos < n:
            end = self._valid_at(data, pos)
            if end >= 0:
                seq = _HDR.unpack_from(data, pos)[2]
                if seq >= self.ack_seq:
                    self._index.append((seq, path, pos + _HDR.size, end - pos - _HDR.size))
                self._next_seq = max(self._next_seq, seq + 1)
                prev_seq, pos = seq, end
                continue
            # not a valid record here: find the next one (first where this header says it ends,
            # when the header itself checks out; else the next sync marker that starts a valid record)
            bad, resume = pos, -1
            whole = False  # a complete record whose header is sound but whose payload is not
            if pos + _HDR.size <= n and data[pos:pos + 4] == SYNC:
                _, ln, _, _, hcrc = _HDR.unpack_from(data, pos)
                if zlib.crc32(data[pos:pos + _HDR_BODY.size]) == hcrc and pos + _HDR.size + ln <= n:
                    whole = True
                    cand = pos + _HDR.size + ln
                    if cand == n or self._valid_at(data, cand) >= 0:
                        resume = cand
            if resume < 0:
                q = data.find(SYNC, pos + 1)
                while q >= 0 and self._valid_at(data, q) < 0:
                    q = data.find(SYNC, q + 1)
                resume = q
            if resume < 0 and last and not whole:
                # nothing valid follows in the newest segment: a crash cut the last append short
                self.stats["torn_tails"] += 1
                log.warning("spool: truncating a torn record at %s:%d (%d bytes)", path.name, pos, n - pos)
                return pos
            stop = n if resume < 0 else resume
            next_seq = (_HDR.unpack_from(data, stop)[2] if stop < n
                        else nxt_first if nxt_first is not None else None)
            self._corrupt(path, data, bad, stop, prev_seq, next_seq)
            if resume < 0:
                return bad if last else n  # a corrupt final record of the newest segment: cut (after quarantine)
            pos = resume
        return n

    def _scan_v1(self, path: Path, data: bytes, first: int, last: bool) -> int:
        """A segment of the first record format: no sync marker to resynchronise on, so an
        invalid record ends the scan; a short tail of the newest segment is a torn record, any
        other remainder is quarantined and counted as corrupt."""
        pos, prev_seq, n = 0, first - 1, len(data)
        while pos + _REC_V1.size <= n:
            ln, crc, seq = _REC_V1.unpack_from(data, pos)
            end = pos + _REC_V1.size + ln
            if end > n or zlib.crc32(data[pos + _REC_V1.size:end]) != crc:
                break
            if seq >= self.ack_seq:
                self._index.append((seq, path, pos + _REC_V1.size, ln))
            self._next_seq = max(self._next_seq, seq + 1)
            prev_seq, pos = seq, end
        if pos == n:
            return n
        torn = pos + _REC_V1.size > n or pos + _REC_V1.size + _REC_V1.unpack_from(data, pos)[0] > n
        if last and torn:
            self.stats["torn_tails"] += 1
            log.warning("spool: truncating a torn record at %s:%d (%d bytes)", path.name, pos, n - pos)
        else:
            self._corrupt(path, data, pos, n, prev_seq, None)
        return pos if last else n

    def _corrupt(self, path: Path, data: bytes, start: int, stop: int, prev_seq: int, next_seq: int | None) -> None:
        """Bytes ``data[start:stop]`` of ``path`` hold no valid record: count them and keep a copy
        in ``quarantine/`` (unless every record they held was acknowledged already)."""
        if next_seq is not None and next_seq <= self.ack_seq:
            self.stats["corrupt_acked_regions"] += 1
            log.info("spool: %s:%d: %d corrupt bytes of already delivered records, ignored",
                     path.name, start, stop - start)
            return
        lost = max(1, next_seq - prev_seq - 1) if next_seq is not None else 1
        self.stats["corrupt_regions"] += 1
        self.stats["corrupt_records"] += lost
        qdir = self.dir / "quarantine"
        qpath = qdir / f"{path.name}@{start}.bad"
        nbytes = stop - start
        if qpath.exists():
            where = f"kept earlier in {qpath.relative_to(self.dir)}"
        elif self._quarantine_bytes() + nbytes > self.quarantine_max_bytes:
            self.stats["quarantine_dropped_bytes"] += nbytes
            where = f"NOT kept: quarantine full ({self.quarantine_max_bytes:,} bytes)"
        else:
            qdir.mkdir(exist_ok=True)
            tmp = qpath.with_suffix(".tmp")
            with open(tmp, "wb") as f:
                f.write(data[start:stop])
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, qpath)
            self.stats["quarantined_bytes"] += nbytes
            where = f"copied to {qpath.relative_to(self.dir)}"
        seqs = (f"seq {prev_seq + 1}..{next_seq - 1}" if next_seq is not None and next_seq - prev_seq > 1
                else f"after seq {prev_seq}")
        log.warning("spool: corrupt record(s) in %s at byte %d (%d bytes, %s, ~%d record(s) lost): %s; "
                    "the valid records after it are kept and replayed", path.name, start, nbytes, seqs, lost, where)

    def _quarantine_bytes(self) -> int:
        qdir = self.dir / "quarantine"
        if not qdir.is_dir():
            return 0
        return sum(p.stat().st_size for p in qdir.glob("*.bad"))

    # -- writing ----------------------------------------------------------------------------
    @property
    def bytes_on_disk(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._index)

    def append(self, payload: bytes) -> int:
        """Append one record (durable per the fsync policy when this returns); its seq.
        Raises SpoolFull (size bound) or SpoolDiskFull (ENOSPC): back-pressure."""
        need = _HDR.size + len(payload)
        with self._lock:
            if self._bytes + need > self.max_bytes:
                self.stats["full_rejections"] += 1
                raise SpoolFull(f"spool {self.dir} is full ({self._bytes:,} of {self.max_bytes:,} bytes): "
                                "stop acknowledging upstream until the sink catches up")
            if self._wfile is None or self._wsize + need > self.segment_bytes and self._wsize:
                self._roll()
            seq = self._next_seq
            head = _HDR_BODY.pack(SYNC, len(payload), seq, zlib.crc32(payload))
            rec = head + struct.pack("<I", zlib.crc32(head)) + payload
            f, start = self._wfile, self._wsize
            try:
                f.write(rec)
                f.flush()
                if self.fsync:
                    os.fsync(f.fileno())
            except OSError as e:
                self._rollback(f, start)
                if e.errno in (errno.ENOSPC, errno.EDQUOT):
                    self.stats["disk_full"] += 1
                    if not self._disk_full_logged:
                        log.error("spool: the disk holding %s is full; applying back-pressure (MQTT is not "
                                  "acknowledged, the broker keeps the data) until space returns", self.dir)
                        self._disk_full_logged = True
                    raise SpoolDiskFull(f"no space left on the device holding {self.dir}: {e.strerror}") from None
                raise
            self._disk_full_logged = False
            self._index.append((seq, self._segments[-1][1], start + _HDR.size, len(payload)))
            self._next_seq += 1
            self._wsize += len(rec)
            self._bytes += len(rec)
            self.stats["appended"] += 1
            return seq

    def _rollback(self, f, start: int) -> None:
        try:
            f.seek(start)
            f.truncate(start)
        except (OSError, ValueError):
            # the buffered writer may still hold the bytes: reopen and truncate on disk
            path = self._segments[-1][1]
            try:
                f.close()
            except OSError:
                pass
            with open(path, "r+b") as g:
                g.truncate(start)
            self._wfile = open(path, "ab")

    def _roll(self) -> None:
        if self._wfile is not None:
            self._wfile.close()
        path = self.dir / f"seg-{self._next_seq:016d}.log"
        self._wfile = open(path, "ab")
        self._wsize = path.stat().st_size
        if not self._segments or self._segments[-1][1] != path:
            self._segments.append((self._next_seq, path))
        if self.fsync:
            _fsync_dir(self.dir)

    # -- reading ----------------------------------------------------------------------------
    def peek(self, max_records: int = 1) -> list[tuple[int, bytes]]:
        """The oldest unacknowledged records (seq, payload), in order; they stay until ack()."""
        with self._lock:
            head = self._index[:max_records]
        out = []
        for seq, path, off, ln in head:
            with open(path, "rb") as f:
                f.seek(off)
                out.append((seq, f.read(ln)))
        return out

    def ack(self, seq: int) -> None:
        """Everything up to and including ``seq`` was delivered."""
        with self._lock:
            k = 0
            while k < len(self._index) and self._index[k][0] <= seq:
                k += 1
            del self._index[:k]
            self.ack_seq = seq + 1
            self._ack_slot ^= 1
            head = struct.pack("<Q", self.ack_seq)
            os.pwrite(self._ack_fd, head + struct.pack("<I", zlib.crc32(head)), self._ack_slot * _ACK.size)
            if self.fsync:
                os.fsync(self._ack_fd)
            self.stats["acked"] += k
            self._drop_acked_segments()

    def _drop_acked_segments(self) -> None:
        # a segment is done when the next segment starts at or before the ack position
        while len(self._segments) > 1 and self._segments[1][0] <= self.ack_seq:
            first, path = self._segments.pop(0)
            try:
                size = path.stat().st_size
                path.unlink()
                self._bytes -= size
            except OSError:
                pass
        if len(self._segments) == 1 and not self._index:
            # everything sent: start a fresh segment so the old one can go
            first, path = self._segments[0]
            if self._wfile is not None:
                self._wfile.close()
                self._wfile = None
            path.unlink(missing_ok=True)
            self._bytes = 0
            self._segments.clear()

    def close(self) -> None:
        with self._lock:
            if self._wfile is not None:
                self._wfile.close()
                self._wfile = None
            if self._ack_fd is not None:
                os.close(self._ack_fd)
                self._ack_fd = None


def _first_format(data: bytes) -> bool:
    """A segment written by the first record format: it opens with a valid old-style record, or
    holds no sync marker at all (then an invalid start is read the old way: torn or quarantined)."""
    if data[:4] == SYNC or not data:
        return False
    if len(data) >= _REC_V1.size:
        ln, crc, _ = _REC_V1.unpack_from(data, 0)
        if _REC_V1.size + ln <= len(data) and zlib.crc32(data[_REC_V1.size:_REC_V1.size + ln]) == crc:
            return True
    return SYNC not in data


def _fsync_dir(d: Path) -> None:
    fd = os.open(d, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# ------------------------------------------------------------------------------------------------

def questdb_readings_table_sql(table: str = "readings") -> str:
    """QuestDB: the readings table deduplicated on (timestamp, device, metric), so a replayed
    batch replaces its rows instead of duplicating them. Create it before the first write."""
    return (f"CREATE TABLE IF NOT EXISTS {table} (device SYMBOL, metric SYMBOL, value DOUBLE, timestamp TIMESTAMP) "
            f"TIMESTAMP(timestamp) PARTITION BY DAY WAL DEDUP UPSERT KEYS(timestamp, device, metric)")


# ------------------------------------------------------------------------------------------------
# Batch records: what the edge runtime spools per pipeline batch (one record = one append = one fsync)

BATCH_MAGIC = b"GWB1"
READINGS, POSITIONS, WARNINGS = b"R", b"P", b"W"  # wire readings / wire positions / JSON warning events
_PART = struct.Struct("<cI")


def pack_batch(parts: Sequence[tuple[bytes, bytes]]) -> bytes:
    """``[(kind, blob), ...]`` -> one spool record (``GWB1`` + ``<kind u8><len u32><blob>`` ...)."""
    return BATCH_MAGIC + b"".join(_PART.pack(k, len(b)) + b for k, b in parts)


def unpack_batch(payload: bytes) -> list[tuple[bytes, bytes]]:
    if not payload.startswith(BATCH_MAGIC):
        raise ValueError("not a gridwatch spool batch record")
    out, pos = [], len(BATCH_MAGIC)
    while pos < len(payload):
        k, n = _PART.unpack_from(payload, pos)
        pos += _PART.size
        out.append((k, payload[pos:pos + n]))
        pos += n
    return out


def batch_parts(directory, sensor=None, position=None, events=(), *, positions: bool = True,
                warnings: bool = True) -> list[tuple[bytes, bytes]]:
    """A pipeline batch as record parts: readings and fixes in the Kafka wire format
    (:mod:`gridwatch.ingest.wire`, 22 bytes a reading, device ids and classes included, so a
    record is self-contained after a restart), warning events as JSON."""
    from gridwatch.hw.profiles import METRICS
    from gridwatch.ingest import wire
    from gridwatch.ingest.wire import DeviceInfo

    def devices(slots):
        uniq, idx = np.unique(slots, return_inverse=True)
        return [DeviceInfo(directory.device_id(int(u)), directory.vendor[int(u)], directory.kind[int(u)])
                for u in uniq.tolist()], idx

    parts = []
    if sensor is not None and len(sensor):
        devs, di = devices(sensor.device)
        um, mi = np.unique(directory.series_metric[sensor.series], return_inverse=True)
        parts.append((READINGS, wire.encode_readings(devs, [METRICS[int(m)].name for m in um], di, mi,
                                                     sensor.ts, sensor.value)))
    if positions and position is not None and len(position):
        devs, di = devices(position.device)
        parts.append((POSITIONS, wire.encode_positions(devs, di, position.ts, position.lat, position.lon,
                                                       position.speed_kmh, position.alt_m)))
    if warnings and events:
        parts.append((WARNINGS, orjson.dumps([[ev, w.to_dict() if hasattr(w, "to_dict") else w] for ev, w in events])))
    return parts


class SpooledInfluxSink:
    """An :class:`~gridwatch.streams.influx_sink.InfluxSink` behind a :class:`Spool`.

    ``offer_readings`` appends a batch to the spool (durable on return) or returns False when the
    spool is full (back-pressure); the edge runtime appends :func:`pack_batch` records itself.
    ``drain`` sends records oldest first, up to ``records_per_flush`` per write request round; the
    records are acknowledged only after the sink flushed them. When the server is down, the sink
    raises after its retries; the records stay (in the spool and, already encoded, in the sink's
    buffer) and the next ``drain`` flushes them again — nothing is re-queued twice, nothing skipped.
    ``prepare`` (e.g. creating deduplicated tables) runs before the first send and is retried
    like a send until it succeeds.
    """

    def __init__(self, spool: Spool, sink: Any, *, records_per_drain: int = 64, records_per_flush: int = 64,
                 prepare: Callable[[], None] | None = None) -> None:
        self.spool = spool
        self.sink = sink
        self.records_per_drain = records_per_drain
        self.records_per_flush = records_per_flush
        self.prepare = prepare
        self._handed: int | None = None  # seq of the newest record queued in the sink but not yet flushed
        self._handed_n = 0
        self.stats: Counter = Counter()

    def offer_readings(self, device_ids: Sequence[str], metrics: Sequence[str] | str, ts_ms, values) -> bool:
        ts = np.asarray(ts_ms, np.int64)
        payload = orjson.dumps({"d": list(device_ids), "m": metrics if isinstance(metrics, str) else list(metrics),
                                "t": ts.tolist(), "v": np.asarray(values, np.float64).tolist()})
        try:
            self.spool.append(payload)
        except SpoolFull:
            self.stats["backpressure"] += 1
            return False
        self.stats["offered_rows"] += int(ts.shape[0])
        return True

    def _write(self, payload: bytes) -> None:
        if payload[:1] == b"{":  # offer_readings' JSON record
            r = orjson.loads(payload)
            self.sink.write_readings(r["d"], r["m"], np.array(r["t"], np.int64), np.array(r["v"], np.float64))
            self.stats["sent_rows"] += len(r["t"])
            return
        from gridwatch.ingest import wire

        for kind, blob in unpack_batch(payload):
            if kind == READINGS:
                wb = wire.decode(blob)
                c = wb.cols
                ids = np.array(wb.ids, object)[c["device"]] if len(wb) else []
                mets = np.array(wb.metrics, object)[c["metric"]] if len(wb) else []
                self.sink.write_readings(ids, mets, c["ts"], c["value"])
                self.stats["sent_rows"] += len(wb)
            elif kind == WARNINGS:
                ws = [w for _, w in orjson.loads(blob)]
                # one line per id: the latest version (QuestDB's dedup is not last-wins inside one request)
                self.sink.write_warnings(list({w["id"]: w for w in ws}.values()))
                self.stats["sent_warnings"] += len(ws)

    def drain(self, max_records: int | None = None) -> int:
        """Send spooled records in order until the spool is empty (or ``max_records``); returns
        the number acknowledged. Raises the sink's error when the server is unavailable."""
        from gridwatch.streams.influx_sink import InfluxWriteError  # noqa: F401  (documented raise)

        if self.prepare is not None:
            self.prepare()
            self.prepare = None
        done = 0
        while max_records is None or done < max_records:
            if self._handed is None:
                n = self.records_per_flush if max_records is None else min(self.records_per_flush, max_records - done)
                recs = self.spool.peek(n)
                if not recs:
                    break
                for seq, payload in recs:
                    self._handed = seq  # set first: a write that raises has queued its lines already
                    self._handed_n += 1
                    self._write(payload)
            self.sink.flush()  # raises while the server is down: the records stay
            self.spool.ack(self._handed)
            done += self._handed_n
            self._handed, self._handed_n = None, 0
        return done

    def run_forever(self, stop: threading.Event, *, backoff_s: float = 0.5, max_backoff_s: float = 10.0,
                    on_error: Callable[[Exception], None] | None = None) -> None:
        """Drain in a loop (the sink's thread) until ``stop`` is set; back off while the server is down."""
        delay = backoff_s
        while not stop.is_set():
            try:
                n = self.drain(self.records_per_drain)
                delay = backoff_s
                if n == 0:
                    stop.wait(0.05)
            except Exception as e:  # noqa: BLE001 - the server is down: keep the data, retry later
                self.stats["drain_failures"] += 1
                if on_error is not None:
                    on_error(e)
                stop.wait(delay)
                delay = min(max_backoff_s, delay * 2)


class SpooledKafkaForwarder:
    """A :class:`~gridwatch.ingest.kafka_forward.KafkaForwarder` behind a :class:`Spool`: drains
    :func:`pack_batch` records to the readings and warning-events topics, in order; a record is
    acknowledged after the broker acknowledged every message made from it (acks=all). While the
    broker is unreachable the records wait on disk; after an error the producer is closed and a
    new one started (a record whose send failed is sent again: at-least-once into Kafka; the
    store downstream upserts by point key and warnings carry deterministic ids).
    ``make_forwarder`` builds an unstarted forwarder (``kafka_security.forwarder(cfg)``)."""

    def __init__(self, spool: Spool, make_forwarder: Callable[[], Any], *, records_per_send: int = 64,
                 start_timeout_s: float = 30.0) -> None:
        self.spool = spool
        self.make_forwarder = make_forwarder
        self.records_per_send = records_per_send
        self.start_timeout_s = start_timeout_s
        self.stats: Counter = Counter()

    async def drain_once(self, fw) -> int:
        """Send up to ``records_per_send`` records and wait for the broker; returns the number acked."""
        import asyncio

        from gridwatch.ingest import wire
        from gridwatch.ingest.kafka_forward import warning_event_payload

        recs = self.spool.peek(self.records_per_send)
        if not recs:
            return 0
        futs = []
        for _seq, payload in recs:
            for kind, blob in unpack_batch(payload):
                if kind in (READINGS, POSITIONS):
                    wb = wire.decode(blob)
                    if not len(wb):
                        continue
                    c, devs = wb.cols, wb.devices
                    if kind == READINGS:
                        msgs = fw.encode_readings(devs, wb.metrics, c["device"], c["metric"], c["ts"], c["value"])
                        self.stats["sent_rows"] += len(wb)
                    else:
                        msgs = fw.encode_positions(devs, c["device"], c["ts"], c["lat"], c["lon"], c["speed_kmh"], c["alt_m"])
                        self.stats["sent_positions"] += len(wb)
                    for p, k, v in msgs:
                        futs.append(await fw.producer.send(fw.readings_topic, value=v, key=k, partition=p))
                elif kind == WARNINGS:
                    for ev, w in orjson.loads(blob):
                        futs.append(await fw.producer.send(fw.warning_events_topic, key=str(w["id"]).encode(),
                                                           value=warning_event_payload(ev, w, fw.origin)))
                        self.stats["sent_warnings"] += 1
        if futs:
            await asyncio.gather(*futs)
        self.spool.ack(recs[-1][0])
        self.stats["sent_records"] += len(recs)
        return len(recs)

    async def run(self, stop: threading.Event, *, backoff_s: float = 0.5, max_backoff_s: float = 10.0,
                  on_error: Callable[[Exception], None] | None = None) -> None:
        import asyncio

        fw, delay = None, backoff_s
        try:
            while not stop.is_set():
                try:
                    if fw is None:
                        fw = self.make_forwarder()
                        await asyncio.wait_for(fw.start(), self.start_timeout_s)
                    n = await self.drain_once(fw)
                    delay = backoff_s
                    if n == 0:
                        await asyncio.sleep(0.05)
                except Exception as e:  # noqa: BLE001 - the broker is down: keep the data, retry later
                    self.stats["drain_failures"] += 1
                    if on_error is not None:
                        on_error(e)
                    if fw is not None:
                        try:
                            await asyncio.wait_for(fw.stop(), 10)
                        except Exception:  # noqa: BLE001
                            pass
                        fw = None
                    t_end = time.monotonic() + delay
                    while not stop.is_set() and time.monotonic() < t_end:
                        await asyncio.sleep(0.05)
                    delay = min(max_backoff_s, delay * 2)
        finally:
            if fw is not None:
                try:
                    await asyncio.wait_for(fw.stop(), 10)
                except Exception:  # noqa: BLE001
                    pass

    def run_forever(self, stop: threading.Event, **kw) -> None:
        """Blocking (the forwarder's own thread and event loop) until ``stop`` is set."""
        import asyncio

        asyncio.run(self.run(stop, **kw))


__all__ = ["Spool", "SpoolFull", "SpoolDiskFull", "SpooledInfluxSink", "SpooledKafkaForwarder", "batch_parts",
           "pack_batch", "unpack_batch", "questdb_readings_table_sql"]
