"""The embedded time-series store: one SQLite file in WAL mode, no server needed.

Readings are stored as *chunks*: one row per committed batch holding its columns as raw
little-endian arrays (series int32, ts int64 ms, value float64), like the blocks of a TSDB. That
keeps a commit of 100,000 readings to a handful of row writes. Positions are chunked the same way.
Warnings, dead letters, devices and series are ordinary rows.

Durability: every :meth:`Store.commit` is one transaction. With ``fsync="normal"`` (WAL,
``synchronous=NORMAL``) a committed transaction survives a crash of the gridwatch process; with
``fsync="commit"`` (``synchronous=FULL``) it also survives power loss. The collector acknowledges
MQTT messages only after the commit that holds their readings returned.

The device and series tables persist the slots, so a restarted process gets the same slots back
(:meth:`Store.load_directory`), and each device's gateway (``devices.gateway``: the slot of the
device it speaks through, e.g. a DJI aircraft's dock; NULL for none).
"""
from __future__ import annotations

import errno
import json
import logging
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from gridwatch.hw.profiles import METRIC_ID, METRICS
from gridwatch.records import DeadLetter, PositionBatch, RegionPath, SensorBatch, Warning

log = logging.getLogger("gridwatch.streams.store")

SCHEMA = """
CREATE TABLE IF NOT EXISTS devices (slot INTEGER PRIMARY KEY, id TEXT NOT NULL, vendor TEXT NOT NULL,
    kind TEXT NOT NULL, lat REAL, lon REAL, region TEXT, gateway INTEGER, UNIQUE (vendor, id));
CREATE TABLE IF NOT EXISTS series (slot INTEGER PRIMARY KEY, device INTEGER NOT NULL, metric INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS reading_chunks (id INTEGER PRIMARY KEY, t_min INTEGER NOT NULL, t_max INTEGER NOT NULL,
    n INTEGER NOT NULL, series BLOB NOT NULL, ts BLOB NOT NULL, value BLOB NOT NULL);
CREATE INDEX IF NOT EXISTS reading_chunks_t ON reading_chunks (t_max);
CREATE TABLE IF NOT EXISTS position_chunks (id INTEGER PRIMARY KEY, t_min INTEGER NOT NULL, t_max INTEGER NOT NULL,
    n INTEGER NOT NULL, device BLOB NOT NULL, ts BLOB NOT NULL, lat BLOB NOT NULL, lon BLOB NOT NULL,
    speed BLOB NOT NULL, alt BLOB NOT NULL);
CREATE INDEX IF NOT EXISTS position_chunks_t ON position_chunks (t_max);
CREATE TABLE IF NOT EXISTS warnings (id TEXT PRIMARY KEY, rule TEXT NOT NULL, kind TEXT NOT NULL,
    severity TEXT NOT NULL, source TEXT NOT NULL, region TEXT NOT NULL, city TEXT, county TEXT, town TEXT, grid TEXT,
    state TEXT NOT NULL, start_ts INTEGER NOT NULL, last_ts INTEGER NOT NULL, cleared_ts INTEGER, value REAL,
    message TEXT, zone TEXT, evidence TEXT);
CREATE INDEX IF NOT EXISTS warnings_start ON warnings (start_ts);
CREATE TABLE IF NOT EXISTS dead_letters (id INTEGER PRIMARY KEY, received_ms INTEGER NOT NULL, source TEXT NOT NULL,
    reason TEXT NOT NULL, detail TEXT NOT NULL, payload BLOB, count INTEGER NOT NULL DEFAULT 1);
CREATE INDEX IF NOT EXISTS dead_letters_reason ON dead_letters (reason);
CREATE TABLE IF NOT EXISTS deliveries (id INTEGER PRIMARY KEY, source TEXT NOT NULL, n INTEGER NOT NULL, data BLOB NOT NULL);
"""


# rows and bytes (topic + explanation + payload) of dead letters, for their bounds
DEAD_LETTER_SIZE = "SELECT count(*), COALESCE(sum(length(source) + length(detail) + COALESCE(length(payload), 0)), 0)"


class StoreWriteError(sqlite3.DatabaseError):
    """A write to the store failed; ``kind`` and the message name the real cause (disk full,
    read-only, locked, I/O error, corrupt file) and what to do. Nothing of the transaction stayed."""

    def __init__(self, path: Path, cause: BaseException) -> None:
        self.kind, what = describe_write_error(path, cause)
        super().__init__(what)
        self.cause = cause


def describe_write_error(path: Path, e: BaseException) -> tuple[str, str]:
    """(kind, one line for the operator) for an error of a write to the store at ``path``."""
    name = getattr(e, "sqlite_errorname", "") or ""
    text = str(e)
    if name.startswith("SQLITE_FULL") or getattr(e, "errno", None) == errno.ENOSPC or "disk is full" in text:
        return "disk_full", f"disk full: the store {path} cannot grow ({name or text}); free space on {path.parent}"
    if name.startswith("SQLITE_READONLY") or getattr(e, "errno", None) in (errno.EROFS, errno.EACCES) or "readonly" in text:
        return "read_only", f"read-only: the store {path} cannot be written ({name or text}); check the file system and the file's permissions"
    if name.startswith(("SQLITE_BUSY", "SQLITE_LOCKED")) or "locked" in text:
        return "locked", f"locked: another process holds the store {path} ({name or text}); stop it"
    if name.startswith(("SQLITE_CORRUPT", "SQLITE_NOTADB")):
        return "corrupt", f"corrupt: the store {path} is damaged ({name or text}); move it aside and restart"
    if name.startswith(("SQLITE_IOERR", "SQLITE_CANTOPEN")) or isinstance(e, OSError):
        return "io_error", f"I/O error writing the store {path} ({name or text}); check the disk"
    return "error", f"store {path}: {type(e).__name__}: {text}"


class Store:
    """Opening a Store costs nothing until it writes: readers (the CLI, tests, benchmarks) use a
    short read-only connection per query; the first write opens the single writer connection and
    starts the WAL checkpoint thread.

    Dead letters are bounded twice: by rows (``dead_letter_keep``) and by bytes
    (``dead_letter_max_bytes``, topic + detail + payload); past either, the oldest are removed at
    the commit that crossed it and counted in ``dead_letters_pruned``."""

    def __init__(self, path: str | Path, fsync: str = "normal", retention_days: float = 30.0,
                 dead_letter_keep: int = 100_000, dead_letter_max_bytes: int = 64 * 2**20) -> None:
        self.path = Path(path)
        self.fsync = fsync
        self.retention_ms = int(retention_days * 86400e3)
        self.dead_letter_keep = dead_letter_keep
        self.dead_letter_max_bytes = dead_letter_max_bytes
        self.dead_letters_pruned = 0
        self._dl_rows = self._dl_bytes = 0
        self._lock = threading.Lock()
        self._db_rw: sqlite3.Connection | None = None
        self._checkpoint_stop = threading.Event()
        self._checkpointer: threading.Thread | None = None
        self._deliveries_since_prune = 0
        if not self.path.exists():
            self._db  # create the file and its schema now, so readers find the tables

    @property
    def _db(self) -> sqlite3.Connection:
        if self._db_rw is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            try:
                db.execute("PRAGMA journal_mode=WAL")
                db.execute(f"PRAGMA synchronous={'FULL' if self.fsync == 'commit' else 'NORMAL'}")
                db.execute("PRAGMA busy_timeout=10000")
                _migrate(db)
                db.executescript(SCHEMA)
                # WAL checkpoints (the only fsyncs with synchronous=NORMAL) run on their own thread and
                # connection, not inside a commit on the ingest path
                db.execute("PRAGMA wal_autocheckpoint=0")
                self._devices_saved = db.execute("SELECT COALESCE(MAX(slot) + 1, 0) FROM devices").fetchone()[0]
                self._series_saved = db.execute("SELECT COALESCE(MAX(slot) + 1, 0) FROM series").fetchone()[0]
                self._dl_rows, self._dl_bytes = db.execute(
                    DEAD_LETTER_SIZE + " FROM dead_letters").fetchone()
            except BaseException as e:
                db.close()
                if isinstance(e, (sqlite3.Error, OSError)):
                    raise StoreWriteError(self.path, e) from e
                raise
            self._db_rw = db
            self._checkpointer = threading.Thread(target=self._checkpoint_loop, name="gridwatch-wal-checkpoint", daemon=True)
            self._checkpointer.start()
        return self._db_rw

    def _checkpoint_loop(self, every_s: float = 1.0) -> None:
        con = sqlite3.connect(self.path, timeout=10)
        try:
            while not self._checkpoint_stop.wait(every_s):
                try:
                    con.execute("PRAGMA wal_checkpoint(PASSIVE)")
                except sqlite3.Error:
                    pass  # busy or locked: the next round catches up
        finally:
            con.close()

    def close(self) -> None:
        if self._db_rw is None:
            return
        self._checkpoint_stop.set()
        if self._checkpointer is not None:
            self._checkpointer.join(5)
        with self._lock:
            try:
                self._db_rw.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            except sqlite3.Error:
                pass
            self._db_rw.close()
            self._db_rw = None

    # --- writing ---------------------------------------------------------------------------
    def load_directory(self, directory) -> None:
        """Give a fresh DeviceDirectory the devices and series (and their slots) stored before.
        Call it before the config's devices are bound (``DeviceDirectory.bind``): stored slots come
        first, config devices new since then get the next slots, edited ones are updated."""
        if len(directory):
            raise RuntimeError("load_directory needs an empty directory: bind the config's devices after it")
        gateways = []
        for slot, did, vendor, kind, lat, lon, region, gateway in self._db.execute(
                "SELECT slot, id, vendor, kind, lat, lon, region, gateway FROM devices ORDER BY slot"):
            got = directory.add(did, vendor, kind, lat, lon, region)
            if got != slot:
                raise RuntimeError(f"store {self.path}: device {did!r} stored at slot {slot} but got {got}; "
                                   "the devices table has a gap (edited by hand?): restore it or move the store aside")
            if gateway is not None:
                gateways.append((slot, gateway))
        for slot, gateway in gateways:
            if 0 <= gateway < len(directory):
                directory.set_gateway(slot, gateway)
        directory.changed.difference_update(s for s, _ in gateways)  # as stored
        for slot, d, m in self._db.execute("SELECT slot, device, metric FROM series ORDER BY slot"):
            got = directory.series_slots(np.array([d], np.int32), np.array([m], np.int16))[0]
            if got != slot:
                raise RuntimeError(f"store {self.path}: series {slot} restored at slot {got}")
        self._devices_saved = len(directory)
        self._series_saved = len(directory.series)

    def commit(self, directory=None, sensor: SensorBatch | None = None, position: PositionBatch | None = None,
               warnings: Iterable[Warning] = (), dead: Iterable[DeadLetter] = (),
               deliveries: tuple[str, bytes] | None = None) -> None:
        """One durable transaction: new devices/series, a reading chunk, a position chunk,
        warning upserts, dead letters, and (source, blob) identifying the broker messages this
        commit holds (see ingest.mqtt: recognising redeliveries).

        All or nothing, in the store and in its bookkeeping: on any error the transaction is
        rolled back (a failed ROLLBACK is logged, never raised over the first error), which
        devices and series count as saved advances only after COMMIT returned, and the error is
        raised as :class:`StoreWriteError` naming its real cause. The same arguments can be
        committed again."""
        warnings, dead = list(warnings), list(dead)
        with self._lock:
            db = self._db
            dev_new = dev_upd = ser_new = ()
            n_dev, n_ser = self._devices_saved, self._series_saved
            if directory is not None:
                dev_new, dev_upd, ser_new, n_dev, n_ser = self._directory_rows(directory)
            drows = [(d.received_ms, d.source, d.reason, d.detail, d.payload, d.count) for d in dead]
            dbytes = sum(len(r[1]) + len(r[3]) + len(r[4] or b"") for r in drows)
            try:
                db.execute("BEGIN")
                if dev_new:
                    db.executemany("INSERT INTO devices (slot, id, vendor, kind, lat, lon, region, gateway) "
                                   "VALUES (?,?,?,?,?,?,?,?)", dev_new)
                if dev_upd:
                    db.executemany("UPDATE devices SET kind=?, lat=?, lon=?, region=?, gateway=? WHERE slot=?", dev_upd)
                if ser_new:
                    db.executemany("INSERT INTO series VALUES (?,?,?)", ser_new)
                if sensor is not None and len(sensor):
                    db.execute("INSERT INTO reading_chunks (t_min, t_max, n, series, ts, value) VALUES (?,?,?,?,?,?)",
                               (int(sensor.ts.min()), int(sensor.ts.max()), len(sensor),
                                sensor.series.astype("<i4").tobytes(), sensor.ts.astype("<i8").tobytes(),
                                sensor.value.astype("<f8").tobytes()))
                if position is not None and len(position):
                    db.execute("INSERT INTO position_chunks (t_min, t_max, n, device, ts, lat, lon, speed, alt) "
                               "VALUES (?,?,?,?,?,?,?,?,?)",
                               (int(position.ts.min()), int(position.ts.max()), len(position),
                                position.device.astype("<i4").tobytes(), position.ts.astype("<i8").tobytes(),
                                position.lat.astype("<f8").tobytes(), position.lon.astype("<f8").tobytes(),
                                position.speed_kmh.astype("<f8").tobytes(), position.alt_m.astype("<f8").tobytes()))
                rows = [_warning_row(w) for w in warnings]
                if rows:
                    db.executemany(
                        "INSERT INTO warnings VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?) ON CONFLICT(id) DO UPDATE SET "
                        "state=excluded.state, last_ts=excluded.last_ts, cleared_ts=excluded.cleared_ts, "
                        "value=excluded.value, evidence=excluded.evidence", rows)
                prune = False
                if deliveries is not None and deliveries[1]:
                    db.execute("INSERT INTO deliveries (source, n, data) VALUES (?, ?, ?)",
                               (deliveries[0], len(deliveries[1]) // 8, deliveries[1]))
                    prune = self._deliveries_since_prune + 1 >= 1000
                    if prune:
                        db.execute("DELETE FROM deliveries WHERE id < (SELECT min(id) FROM (SELECT id FROM deliveries "
                                   "WHERE source = ? ORDER BY id DESC LIMIT 5000)) AND source = ?", (deliveries[0],) * 2)
                dl_rows, dl_bytes, pruned = self._dl_rows, self._dl_bytes, 0
                if drows:
                    db.executemany("INSERT INTO dead_letters (received_ms, source, reason, detail, payload, count) VALUES (?,?,?,?,?,?)", drows)
                    dl_rows, dl_bytes = dl_rows + len(drows), dl_bytes + dbytes
                    dl_rows, dl_bytes, pruned = self._bound_dead_letters(db, dl_rows, dl_bytes)
                db.execute("COMMIT")
            except BaseException as e:
                if db.in_transaction:
                    try:
                        db.execute("ROLLBACK")
                    except sqlite3.Error as re:  # the first error is the one that matters
                        log.warning("store rollback failed after a failed commit",
                                    extra={"fields": {"error": str(re), "first_error": str(e)}})
                if isinstance(e, (sqlite3.Error, OSError)) and not isinstance(e, StoreWriteError):
                    raise StoreWriteError(self.path, e) from e
                raise
            # committed: only now does the bookkeeping move
            self._devices_saved, self._series_saved = n_dev, n_ser
            if directory is not None and dev_upd:
                directory.changed.difference_update(r[5] for r in dev_upd)
            if deliveries is not None and deliveries[1]:
                self._deliveries_since_prune = 0 if prune else self._deliveries_since_prune + 1
            self._dl_rows, self._dl_bytes = dl_rows, dl_bytes
            self.dead_letters_pruned += pruned

    def _bound_dead_letters(self, db, rows: int, nbytes: int) -> tuple[int, int, int]:
        """Remove the oldest dead letters past either bound: rows down to ``dead_letter_keep``
        once they pass it by a tenth, bytes down to 90 % of ``dead_letter_max_bytes`` once they
        pass it (so the cut runs once in a while, not at every commit). Returns the new
        (rows, bytes, removed)."""
        keep_rows, max_bytes = self.dead_letter_keep, self.dead_letter_max_bytes
        if rows <= keep_rows + keep_rows // 10 and (not max_bytes or nbytes <= max_bytes):
            return rows, nbytes, 0
        removed = 0
        while rows > keep_rows or (max_bytes and nbytes > int(max_bytes * 0.9)):
            n = max(rows - keep_rows, 1 + rows // 10)
            got, b = db.execute(DEAD_LETTER_SIZE + " FROM (SELECT source, detail, payload FROM dead_letters ORDER BY id LIMIT ?)", (n,)).fetchone()
            if not got:
                break
            db.execute("DELETE FROM dead_letters WHERE id IN (SELECT id FROM dead_letters ORDER BY id LIMIT ?)", (n,))
            rows, nbytes, removed = rows - got, nbytes - b, removed + got
        return rows, nbytes, removed

    def _directory_rows(self, directory):
        """Rows for the devices and series the store has not saved yet, and updates of devices
        whose attributes the config changed; the counts to advance to once they are committed."""
        n, m = len(directory), len(directory.series)
        gw = directory.gateway
        new = [(s, directory.ids[s], directory.vendor[s], directory.kind[s], directory.lat[s], directory.lon[s],
                directory.region[s], None if gw[s] < 0 else gw[s]) for s in range(self._devices_saved, n)]
        upd = [(directory.kind[s], directory.lat[s], directory.lon[s], directory.region[s], None if gw[s] < 0 else gw[s], s)
               for s in sorted(directory.changed) if s < self._devices_saved]
        ser = [(s, int(directory.series_device[s]), int(directory.series_metric[s])) for s in range(self._series_saved, m)]
        return new, upd, ser, n, m

    def recent_deliveries(self, source: str, max_messages: int = 65535) -> list[bytes]:
        """The newest delivery blobs of ``source`` covering at least ``max_messages``, oldest first."""
        out, n = [], 0
        for data, k in self._db.execute("SELECT data, n FROM deliveries WHERE source = ? ORDER BY id DESC", (source,)):
            out.append(data)
            n += k
            if n >= max_messages:
                break
        return out[::-1]

    def recent_keys(self, kind: str, window_ms: int, max_rows: int) -> tuple[np.ndarray, np.ndarray, int | None]:
        """(key, ts, newest) of the stored readings (``kind`` "readings": key = series slot) or
        position fixes ("positions": device slot) within ``window_ms`` of the newest stored one
        (``newest``; None when there are none), newest chunks first, at most about ``max_rows``
        (reading stops at the chunk that passes it): what the duplicate window is seeded with at
        startup. Chunks are found by their t_max index, so the cost is that of the rows read."""
        table, col = {"readings": ("reading_chunks", "series"), "positions": ("position_chunks", "device")}[kind]
        keys, tss, n = [], [], 0
        con = self._db_ro()
        try:
            newest = con.execute(f"SELECT max(t_max) FROM {table}").fetchone()[0]
            if newest is None:
                return np.empty(0, np.int32), np.empty(0, np.int64), None
            for k, t, m in con.execute(f"SELECT {col}, ts, n FROM {table} WHERE t_max >= ? ORDER BY id DESC",
                                       (newest - window_ms,)):
                if n >= max_rows:
                    break
                keys.append(np.frombuffer(k, "<i4"))
                tss.append(np.frombuffer(t, "<i8"))
                n += m
        finally:
            con.close()
        key = np.concatenate(keys).astype(np.int32) if keys else np.empty(0, np.int32)
        ts = np.concatenate(tss).astype(np.int64) if tss else np.empty(0, np.int64)
        return key, ts, int(newest)

    def enforce_retention(self, now_ms: int | None = None) -> dict[str, int]:
        now_ms = int(time.time() * 1000) if now_ms is None else now_ms
        cut = now_ms - self.retention_ms
        with self._lock:
            db = self._db
            out = {
                "reading_chunks": db.execute("DELETE FROM reading_chunks WHERE t_max < ?", (cut,)).rowcount,
                "position_chunks": db.execute("DELETE FROM position_chunks WHERE t_max < ?", (cut,)).rowcount,
                "warnings": db.execute("DELETE FROM warnings WHERE state = 'cleared' AND cleared_ts < ?", (cut,)).rowcount,
                "dead_letters": db.execute(
                    "DELETE FROM dead_letters WHERE id <= (SELECT max(id) FROM dead_letters) - ?", (self.dead_letter_keep,)).rowcount,
            }
            if out["dead_letters"]:
                self._dl_rows, self._dl_bytes = db.execute(
                    DEAD_LETTER_SIZE + " FROM dead_letters").fetchone()
        return out

    # --- reading ---------------------------------------------------------------------------
    def count_readings(self) -> int:
        return int(self._query("SELECT coalesce(sum(n), 0) FROM reading_chunks")[0][0])

    def count_positions(self) -> int:
        return int(self._query("SELECT coalesce(sum(n), 0) FROM position_chunks")[0][0])

    def readings(self, device: str | None = None, metric: str | None = None, since: int | None = None,
                 until: int | None = None) -> dict[str, np.ndarray]:
        """Readings as columns: device (str), metric (str), ts (int64 ms), value (float64), ordered by ts."""
        q, args = "SELECT series, ts, value FROM reading_chunks WHERE 1=1", []
        if since is not None:
            q += " AND t_max >= ?"; args.append(since)
        if until is not None:
            q += " AND t_min <= ?"; args.append(until)
        chunks = self._query(q, args)
        ser_dev, ser_met, names = self._series_map()
        s = np.concatenate([np.frombuffer(c[0], "<i4") for c in chunks]) if chunks else np.empty(0, np.int32)
        t = np.concatenate([np.frombuffer(c[1], "<i8") for c in chunks]) if chunks else np.empty(0, np.int64)
        v = np.concatenate([np.frombuffer(c[2], "<f8") for c in chunks]) if chunks else np.empty(0, np.float64)
        keep = np.ones(s.shape[0], np.bool_)
        if since is not None:
            keep &= t >= since
        if until is not None:
            keep &= t <= until
        if device is not None:
            keep &= np.isin(ser_dev[s], [names.index(device)] if device in names else [])
        if metric is not None:
            keep &= ser_met[s] == METRIC_ID.get(metric, -1)
        s, t, v = s[keep], t[keep], v[keep]
        order = np.argsort(t, kind="stable")
        s, t, v = s[order], t[order], v[order]
        return {"device": np.array(names, dtype=object)[ser_dev[s]] if len(s) else np.empty(0, object),
                "metric": np.array([m.name for m in METRICS], dtype=object)[ser_met[s]] if len(s) else np.empty(0, object),
                "ts": t, "value": v}

    def positions(self) -> dict[str, np.ndarray]:
        chunks = self._query("SELECT device, ts, lat, lon, speed, alt FROM position_chunks")
        cols = ["device", "ts", "lat", "lon", "speed", "alt"]
        dts = ["<i4", "<i8", "<f8", "<f8", "<f8", "<f8"]
        out = {c: (np.concatenate([np.frombuffer(ch[i], dts[i]) for ch in chunks]) if chunks else np.empty(0, dts[i]))
               for i, c in enumerate(cols)}
        names = [r[0] for r in self._query("SELECT id FROM devices ORDER BY slot")]
        out["device"] = np.array(names, dtype=object)[out["device"]] if len(out["ts"]) else np.empty(0, object)
        return out

    def _series_map(self):
        names = [r[0] for r in self._query("SELECT id FROM devices ORDER BY slot")]
        rows = self._query("SELECT device, metric FROM series ORDER BY slot")
        return (np.array([r[0] for r in rows], np.int32), np.array([r[1] for r in rows], np.int16), names)

    def warnings(self, state: str | None = None, rule: str | None = None, source: str | None = None,
                 region: str | None = None, severity: str | None = None, since: int | None = None,
                 limit: int = 1000) -> list[dict[str, Any]]:
        q, args = "SELECT * FROM warnings WHERE 1=1", []
        for col, val in (("state", state), ("rule", rule), ("source", source), ("severity", severity)):
            if val is not None:
                q += f" AND {col} = ?"; args.append(val)
        if region:
            q += " AND (region = ? OR region LIKE ?)"; args += [region, region.rstrip("/") + "/%"]
        if since is not None:
            q += " AND last_ts >= ?"; args.append(since)
        q += " ORDER BY start_ts DESC LIMIT ?"; args.append(limit)
        cur = self._db_ro().execute(q, args)
        cols = [c[0] for c in cur.description]
        out = []
        for row in cur.fetchall():
            d = dict(zip(cols, row))
            d["evidence"] = json.loads(d["evidence"]) if d["evidence"] else {}
            out.append(d)
        return out

    def devices(self, vendor: str | None = None, kind: str | None = None) -> list[dict[str, Any]]:
        """The device directory as stored: id, vendor, kind, region, and ``gateway`` (the id of the
        device it speaks through, e.g. a DJI aircraft's dock; None), in slot order."""
        con = self._db_ro()
        try:
            has_gw = "gateway" in [r[1] for r in con.execute("PRAGMA table_info(devices)")]  # a store not yet migrated
            q = ("SELECT d.id, d.vendor, d.kind, d.region, " + ("g.id" if has_gw else "NULL") + " FROM devices d "
                 + ("LEFT JOIN devices g ON g.slot = d.gateway " if has_gw else "") + "WHERE 1=1")
            args: list = []
            for col, val in (("d.vendor", vendor), ("d.kind", kind)):
                if val is not None:
                    q += f" AND {col} = ?"; args.append(val)
            rows = con.execute(q + " ORDER BY d.slot", args).fetchall()
        finally:
            con.close()
        return [dict(zip(("id", "vendor", "kind", "region", "gateway"), r)) for r in rows]

    def dead_letters(self, reason: str | None = None, limit: int = 1000) -> list[dict[str, Any]]:
        q, args = "SELECT received_ms, source, reason, detail, payload, count FROM dead_letters", []
        if reason:
            q += " WHERE reason = ?"; args.append(reason)
        q += " ORDER BY id DESC LIMIT ?"; args.append(limit)
        return [dict(zip(("received_ms", "source", "reason", "detail", "payload", "count"), r)) for r in self._query(q, args)]

    def dead_letter_counts(self) -> dict[str, int]:
        """Rejected readings (or messages) by reason."""
        return dict(self._query("SELECT reason, sum(count) FROM dead_letters GROUP BY reason"))

    def _db_ro(self) -> sqlite3.Connection:
        return sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=10)

    def _query(self, q: str, args: Iterable = ()) -> list[tuple]:
        con = self._db_ro()
        try:
            return con.execute(q, list(args)).fetchall()
        finally:
            con.close()


def _migrate(db: sqlite3.Connection) -> None:
    """Stores made before device ids were namespaced by vendor have ``devices.id`` UNIQUE on its
    own: rebuild that table with UNIQUE (vendor, id), keeping every slot. Stores made before
    gateways were kept get the ``devices.gateway`` column (NULL: none)."""
    row = db.execute("SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'devices'").fetchone()
    if row is None:
        return
    if "UNIQUE (vendor, id)" not in row[0]:
        _rebuild_devices(db)
    if "gateway" not in [r[1] for r in db.execute("PRAGMA table_info(devices)")]:
        db.execute("ALTER TABLE devices ADD COLUMN gateway INTEGER")


def _rebuild_devices(db: sqlite3.Connection) -> None:
    db.execute("BEGIN")
    try:
        db.execute("ALTER TABLE devices RENAME TO devices_old")
        db.execute("CREATE TABLE devices (slot INTEGER PRIMARY KEY, id TEXT NOT NULL, vendor TEXT NOT NULL, "
                   "kind TEXT NOT NULL, lat REAL, lon REAL, region TEXT, UNIQUE (vendor, id))")
        db.execute("INSERT INTO devices SELECT slot, id, vendor, kind, lat, lon, region FROM devices_old")
        db.execute("DROP TABLE devices_old")
        db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise


def _warning_row(w: Warning) -> tuple:
    r = w.region
    return (w.id, w.rule, w.kind, w.severity, w.source, r.as_path(), r.city, r.county, r.town, r.grid, w.state,
            w.start_ts, w.last_ts, w.cleared_ts, None if w.value != w.value else w.value, w.message, w.zone,
            json.dumps(w.evidence) if w.evidence else None)


def warning_from_row(d: dict[str, Any]) -> Warning:
    return Warning(d["id"], d["rule"], d["kind"], d["severity"], d["source"],
                   RegionPath(d["city"] or "", d["county"] or "", d["town"] or "", d["grid"] or ""),
                   d["state"], d["start_ts"], d["last_ts"], d["cleared_ts"],
                   float("nan") if d["value"] is None else d["value"], d["message"] or "", d["zone"], d["evidence"] or {})

