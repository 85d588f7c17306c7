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
each record is ``<u32 length><u32 crc32><u64 seq>`` + payload. The read position lives in
``ack`` (the seq of the next record to send): two checksummed slots overwritten alternately in
place, so acknowledging needs no free space and a torn write loses at most the newest ack (the
records are then resent: at-least-once). On open, segments are scanned: a torn tail (a record cut short or with a bad
CRC by a crash mid-write) is truncated away and counted (``torn_tails``); everything before it is
replayed from the ack position, in order. Fully acknowledged segments are deleted.

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
_REC = struct.Struct("<IIQ")  # length, crc32(payload), seq
_ACK = struct.Struct("<QI")  # next seq to send, crc32 of it
_ACK_EMPTY = struct.pack("<Q", 0) + struct.pack("<I", zlib.crc32(struct.pack("<Q", 0)))


class SpoolFull(RuntimeError):
    """The spool cannot take the record now: back-pressure (do not acknowledge upstream)."""


class SpoolDiskFull(SpoolFull):
    """The file system is out of space (ENOSPC)."""


class Spool:
    def __init__(self, directory: str | os.PathLike, *, max_bytes: int = 512 * 2**20,
                 segment_bytes: int = 16 * 2**20, fsync: str = "always") -> None:
        if fsync not in ("always", "never"):
            raise ValueError(f"fsync must be 'always' or 'never', not {fsync!r}")
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.max_bytes = int(max_bytes)
        self.segment_bytes = int(segment_bytes)
        self.fsync = fsync == "always"
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
        for first, path in segs:
            data = path.read_bytes()
            pos, seq = 0, first
            while pos + _REC.size <= len(data):
                ln, crc, seq = _REC.unpack_from(data, pos)
                end = pos + _REC.size + ln
                if end > len(data) or zlib.crc32(data[pos + _REC.size:end]) != crc:
                    break
                if seq >= self.ack_seq:
                    self._index.append((seq, path, pos + _REC.size, ln))
                self._next_seq = max(self._next_seq, seq + 1)
                pos = end
            if pos != len(data):  # a torn tail from a crash mid-append: cut it off
                self.stats["torn_tails"] += 1
                log.warning("spool: truncating a torn record at %s:%d (%d bytes)", path.name, pos, len(data) - pos)
                with open(path, "r+b") as f:
                    f.truncate(pos)
                    os.fsync(f.fileno())
            self._segments.append((first, path))
            self._bytes += pos
        self._next_seq = max(self._next_seq, self.ack_seq)
        self._drop_acked_segments()
        self.stats["recovered_records"] = len(self._index)

    # -- writing ----------------------------------------------------------------------------
    @property
    def bytes_on_disk(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._index)

    def append(self, payload: bytes) -> int:
        """Append one record (durable per the fsync policy when this returns); its seq.
        Raises SpoolFull (size bound) or SpoolDiskFull (ENOSPC): back-pressure."""
        need = _REC.size + len(payload)
        with self._lock:
            if self._bytes + need > self.max_bytes:
                self.stats["full_rejections"] += 1
                raise SpoolFull(f"spool {self.dir} is full ({self._bytes:,} of {self.max_bytes:,} bytes): "
                                "stop acknowledging upstream until the sink catches up")
            if self._wfile is None or self._wsize + need > self.segment_bytes and self._wsize:
                self._roll()
            seq = self._next_seq
            rec = _REC.pack(len(payload), zlib.crc32(payload), seq) + payload
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
            self._index.append((seq, self._segments[-1][1], start + _REC.size, len(payload)))
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


class SpooledInfluxSink:
    """An :class:`~gridwatch.streams.influx_sink.InfluxSink` behind a :class:`Spool`.

    ``offer_readings`` appends a batch to the spool (durable on return) or returns False when the
    spool is full (back-pressure). ``drain`` sends records oldest first; a record is acknowledged
    only after the sink flushed it. When the server is down, the sink raises after its retries; the
    record stays (in the spool and, already encoded, in the sink's buffer) and the next ``drain``
    flushes it again — nothing is re-queued twice, nothing skipped.
    """

    def __init__(self, spool: Spool, sink: Any, *, records_per_drain: int = 64) -> None:
        self.spool = spool
        self.sink = sink
        self.records_per_drain = records_per_drain
        self._handed: int | None = None  # seq of the record queued in the sink but not yet flushed
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

    def drain(self, max_records: int | None = None) -> int:
        """Send spooled records in order until the spool is empty (or ``max_records``); returns
        the number acknowledged. Raises the sink's error when the server is unavailable."""
        from gridwatch.streams.influx_sink import InfluxWriteError  # noqa: F401  (documented raise)

        done = 0
        while max_records is None or done < max_records:
            if self._handed is not None:
                self.sink.flush()  # raises while the server is down: the record stays
                self.spool.ack(self._handed)
                self._handed = None
                done += 1
                continue
            recs = self.spool.peek(1)
            if not recs:
                break
            seq, payload = recs[0]
            r = orjson.loads(payload)
            self._handed = seq
            self.sink.write_readings(r["d"], r["m"], np.array(r["t"], np.int64), np.array(r["v"], np.float64))
            self.stats["sent_rows"] += len(r["t"])
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


__all__ = ["Spool", "SpoolFull", "SpoolDiskFull", "SpooledInfluxSink", "questdb_readings_table_sql"]
