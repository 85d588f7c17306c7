"""Cases: what operators do about a warning, kept apart from the warning's sensor lifecycle.

A warning (``streams/store.py``) is raised, updated and cleared by data. Its **case** is worked by
people: ``new -> acknowledged -> dispatched -> in_progress -> handled -> closed``, or ``rejected``
as a false alarm (with a reason) from any open state. A sensor clearing does not close a case.

* The case is keyed by the warning's deterministic id, so a replay never forks it.
* Every action is one append-only row of ``case_audit`` (who, when, action, from -> to, desk, note).
  The current state is a fold of those rows (:func:`fold`); ``case_state`` is that fold kept up to
  date in the same transaction so the queue can join it (tests check the two agree).
* Actions are idempotent: a client-supplied ``action_id`` that was already applied returns the
  record it made and changes nothing; an ``expect``\\ ed state that is not the current one is a
  :class:`Conflict`. Writers take SQLite's write lock (``BEGIN IMMEDIATE``), so two users acting on
  one case at once are serialised and the second one sees the first one's result.
* Scope is enforced here and only here: every read and write goes through a :class:`Scope` (a
  region path prefix); a warning outside it is :class:`NotFound`, exactly like an unknown id.

The tables live in the store's SQLite file (WAL) but this module opens its own connections; it
reads the store's ``warnings`` and ``devices`` tables and never writes them (it only adds indexes
the queue needs). Users, API tokens and login sessions of the console are here too, so that all of
the console's SQL is in one module.
"""
from __future__ import annotations

import hashlib
import json
import secrets
import sqlite3
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from gridwatch.records import SEVERITIES
from gridwatch.regions import parse_path

STATES = ("new", "acknowledged", "dispatched", "in_progress", "handled", "closed", "rejected")
OPEN_STATES = ("new", "acknowledged", "dispatched", "in_progress")
ROLES = ("viewer", "operator", "supervisor", "admin")
SENSOR_STATES = ("active", "cleared")

# action -> (states it may start from, state it leads to (None = unchanged), least role)
ACTIONS: dict[str, tuple[tuple[str, ...], str | None, str]] = {
    "acknowledge": (("new",), "acknowledged", "operator"),
    "dispatch": (("new", "acknowledged", "dispatched", "in_progress"), "dispatched", "operator"),
    "start": (("dispatched",), "in_progress", "operator"),
    "handle": (("dispatched", "in_progress"), "handled", "operator"),
    "close": (("handled",), "closed", "supervisor"),
    "reject": (OPEN_STATES, "rejected", "operator"),
    "reopen": (("handled", "rejected"), "acknowledged", "supervisor"),
    "comment": (STATES, None, "operator"),
    "escalate": (OPEN_STATES, None, "supervisor"),  # also done by the overdue sweep as "system"
}
NEEDS_NOTE = {"reject": "a reason", "comment": "a comment", "handle": "a note on what was done"}
# which tier owns a warning by default ("city handles big matters, county hard ones, town small ones")
OWNING_TIER = {"critical": 1, "major": 2, "minor": 3, "info": 3}
SORTS = {"start_ts": "w.start_ts", "last_ts": "w.last_ts", "severity": "w.severity", "rule": "w.rule",
         "source": "w.source", "state": "w.state"}
PAGE_MAX = 200
NOTE_MAX = 4000
RECORDS_PER_CASE_MAX = 1000  # comments included: a case's audit trail is bounded

SCHEMA = """
CREATE TABLE IF NOT EXISTS case_audit (seq INTEGER PRIMARY KEY, case_id TEXT NOT NULL, action_id TEXT NOT NULL UNIQUE,
    ts INTEGER NOT NULL, actor TEXT NOT NULL, action TEXT NOT NULL, from_state TEXT NOT NULL, to_state TEXT NOT NULL,
    desk TEXT, note TEXT, photo TEXT);
CREATE INDEX IF NOT EXISTS case_audit_case ON case_audit (case_id, seq);
CREATE TABLE IF NOT EXISTS case_state (id TEXT PRIMARY KEY, state TEXT NOT NULL, desk TEXT NOT NULL,
    version INTEGER NOT NULL, created_ts INTEGER NOT NULL, updated_ts INTEGER NOT NULL, ack_ts INTEGER,
    dispatched_ts INTEGER, handled_ts INTEGER, closed_ts INTEGER, escalations INTEGER NOT NULL DEFAULT 0);
CREATE INDEX IF NOT EXISTS case_state_state ON case_state (state);
CREATE TABLE IF NOT EXISTS console_users (name TEXT PRIMARY KEY, pw_hash TEXT NOT NULL, role TEXT NOT NULL,
    scope TEXT NOT NULL, created_ts INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS console_tokens (hash TEXT PRIMARY KEY, user TEXT NOT NULL, label TEXT NOT NULL,
    created_ts INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS console_sessions (hash TEXT PRIMARY KEY, user TEXT NOT NULL, csrf TEXT NOT NULL,
    created_ts INTEGER NOT NULL, expires_ts INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS console_sessions_user ON console_sessions (user, created_ts);
"""
# indexes on the store's warnings table for the queue: the newest first within a county / town /
# grid (a region filter is equality on the deepest named level), and the poller's cursor
WARNING_INDEXES = """
CREATE INDEX IF NOT EXISTS console_w_county ON warnings (county, start_ts);
CREATE INDEX IF NOT EXISTS console_w_town ON warnings (town, start_ts);
CREATE INDEX IF NOT EXISTS console_w_grid ON warnings (grid, start_ts);
CREATE INDEX IF NOT EXISTS console_w_last ON warnings (last_ts);
"""


class CaseError(ValueError):
    """A request the case store refuses; ``str()`` is one line for the user."""

    status = 400


class NotFound(CaseError):
    status = 404


class Conflict(CaseError):
    status = 409


class Forbidden(CaseError):
    status = 403


def now_ms() -> int:
    return int(time.time() * 1000)


def role_at_least(role: str, least: str) -> bool:
    return ROLES.index(role) >= ROLES.index(least)


def path_levels(path: str) -> list[str]:
    r = parse_path(path)
    return [p for p in (r.city, r.county, r.town, r.grid) if p]


def within(path: str, prefix: str) -> bool:
    """``path`` lies in the region ``prefix`` (a whole-level prefix: 'A/B' holds 'A/B/C', not 'A/BC')."""
    p, q = path_levels(path), path_levels(prefix)
    return p[:len(q)] == q


def works_desk(scope: str, desk: str) -> bool:
    """Whether a user whose scope is ``scope`` works cases at ``desk``: the desk itself or one
    above it (a county user works the county's cases and its towns'; a town user not the
    county's). Every other action than a comment needs this."""
    return within(desk, scope)


def default_desk(region: str, severity: str) -> str:
    levels = path_levels(region)
    return "/".join(levels[:OWNING_TIER.get(severity, 3)])


@dataclass(frozen=True, slots=True)
class Scope:
    """A desk's view: a region path prefix ("" = everything). All SQL filters go through here."""

    prefix: str = ""

    def sql(self, alias: str = "w") -> tuple[str, list[str]]:
        return region_sql(self.prefix, alias)

    def holds(self, region: str) -> bool:
        return within(region, self.prefix)


def region_sql(prefix: str, alias: str = "w") -> tuple[str, list[str]]:
    levels = path_levels(prefix)
    cols = ("city", "county", "town", "grid")
    if not levels:
        return "1=1", []
    return " AND ".join(f"{alias}.{c} = ?" for c in cols[:len(levels)]), levels


@dataclass(slots=True)
class CaseView:
    """The folded state of one case."""

    id: str
    state: str = "new"
    desk: str = ""
    version: int = 0
    created_ts: int | None = None
    updated_ts: int | None = None
    ack_ts: int | None = None
    dispatched_ts: int | None = None
    handled_ts: int | None = None
    closed_ts: int | None = None
    escalations: int = 0

    def as_row(self) -> tuple:
        return (self.id, self.state, self.desk, self.version, self.created_ts, self.updated_ts, self.ack_ts,
                self.dispatched_ts, self.handled_ts, self.closed_ts, self.escalations)


def fold(case_id: str, initial_desk: str, records: Iterable[dict[str, Any]]) -> CaseView:
    """The case's state from its audit records alone (oldest first)."""
    c = CaseView(case_id, desk=initial_desk)
    for r in records:
        if r["from_state"] != c.state:
            raise ValueError(f"case {case_id}: record {r['seq']} starts from {r['from_state']}, the fold is at {c.state}")
        c.version += 1
        c.created_ts = r["ts"] if c.created_ts is None else c.created_ts
        c.updated_ts = r["ts"]
        if r["desk"]:
            c.desk = r["desk"]
        c.state = r["to_state"]
        a = r["action"]
        if c.ack_ts is None and c.state != "new":
            c.ack_ts = r["ts"]
        if a == "dispatch" and c.dispatched_ts is None:
            c.dispatched_ts = r["ts"]
        if a == "handle":
            c.handled_ts = r["ts"]
        if c.state in ("closed", "rejected"):
            c.closed_ts = r["ts"]
        elif a == "reopen":
            c.closed_ts = None
        if a == "escalate":
            c.escalations += 1
    return c


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(slots=True)
class User:
    name: str
    role: str
    scope: str

    @property
    def scope_obj(self) -> Scope:
        return Scope(self.scope)


@dataclass(slots=True)
class QueueFilter:
    region: str = ""
    rule: str = ""
    kind: str = ""
    severity: str = ""
    sensor_state: str = ""
    case_state: str = ""  # one of STATES, or "open"
    desk: str = ""
    since: int | None = None
    until: int | None = None
    sort: str = "start_ts"
    order: str = "desc"
    page: int = 1
    per_page: int = 50

    def check(self) -> "QueueFilter":
        if self.severity and self.severity not in SEVERITIES:
            raise CaseError(f"severity {self.severity!r}: expected one of {', '.join(SEVERITIES)}")
        if self.sensor_state and self.sensor_state not in SENSOR_STATES:
            raise CaseError(f"sensor state {self.sensor_state!r}: expected active or cleared")
        if self.case_state and self.case_state not in STATES + ("open",):
            raise CaseError(f"case state {self.case_state!r}: expected open or one of {', '.join(STATES)}")
        if self.sort not in SORTS:
            raise CaseError(f"sort {self.sort!r}: expected one of {', '.join(SORTS)}")
        if self.order not in ("asc", "desc"):
            raise CaseError(f"order {self.order!r}: expected asc or desc")
        try:
            parse_path(self.region)
        except ValueError as e:
            raise CaseError(str(e)) from None
        self.page = max(1, int(self.page))
        self.per_page = min(max(1, int(self.per_page)), PAGE_MAX)
        return self


class CaseStore:
    """Cases, audit, users, tokens and sessions in the store's SQLite file."""

    def __init__(self, path: str | Path, deadlines_h: dict[str, float] | None = None,
                 session_hours: float = 12.0, sessions_per_user: int = 20) -> None:
        self.path = Path(path)
        self.deadlines_ms = {k: int(v * 3600e3) for k, v in (deadlines_h or {"critical": 2, "major": 24, "minor": 72, "info": 72}).items()}
        self.session_ms = int(session_hours * 3600e3)
        self.sessions_per_user = sessions_per_user
        self._lock = threading.Lock()
        self._local = threading.local()
        self.counts_ttl_s = 2.0
        self.counts_cache_max = 256
        self.counts_evicted = 0
        self._counts_cache: dict[tuple, tuple[float, dict, float]] = {}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        db = self._connect()
        db.execute("PRAGMA journal_mode=WAL")
        db.executescript(SCHEMA)
        has_warnings = db.execute("SELECT 1 FROM sqlite_master WHERE name='warnings'").fetchone()
        if not has_warnings:  # the console started before anything was stored: create the store's tables
            from gridwatch.streams.store import SCHEMA as STORE_SCHEMA

            db.executescript(STORE_SCHEMA)
        db.executescript(WARNING_INDEXES)
        self._db = db

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=10)
        db.execute("PRAGMA busy_timeout=10000")
        db.execute("PRAGMA synchronous=NORMAL")
        return db

    def _ro(self) -> sqlite3.Connection:
        """One read connection per thread (queries from the web server's worker threads)."""
        con = getattr(self._local, "con", None)
        if con is None:
            con = sqlite3.connect(self.path, check_same_thread=False, timeout=10)
            con.execute("PRAGMA busy_timeout=10000")
            con.execute("PRAGMA query_only=1")
            self._local.con = con
        return con

    def _rows(self, q: str, args: Iterable = ()) -> list[dict[str, Any]]:
        cur = self._ro().execute(q, list(args))
        cols = [c[0] for c in cur.description]
        return [dict(zip(cols, r)) for r in cur.fetchall()]

    def close(self) -> None:
        self._db.close()

    # --- warnings, through a scope ---------------------------------------------------------
    def warning(self, scope: Scope, warning_id: str) -> dict[str, Any]:
        """One warning with its case; NotFound when unknown or outside ``scope``."""
        where, args = scope.sql()
        rows = self._rows(f"SELECT w.*, c.state AS case_state, c.desk, c.version, c.ack_ts, c.closed_ts, c.escalations "
                          f"FROM warnings w LEFT JOIN case_state c ON c.id = w.id WHERE w.id = ? AND {where}",
                          [warning_id, *args])
        if not rows:
            raise NotFound(f"no warning {warning_id!r}")
        return self._decorate(rows[0])

    def _decorate(self, d: dict[str, Any]) -> dict[str, Any]:
        if isinstance(d.get("evidence"), str):
            d["evidence"] = json.loads(d["evidence"]) if d["evidence"] else {}
        elif "evidence" in d and d["evidence"] is None:
            d["evidence"] = {}
        d["case_state"] = d.get("case_state") or "new"
        d["desk"] = d.get("desk") or default_desk(d["region"], d["severity"])
        d["version"] = d.get("version") or 0
        d["deadline_ts"] = d["start_ts"] + self.deadlines_ms.get(d["severity"], self.deadlines_ms.get("info", 72 * 3600_000))
        d["overdue"] = d["case_state"] in OPEN_STATES and now_ms() > d["deadline_ts"]
        return d

    def _filter_sql(self, scope: Scope, f: QueueFilter) -> tuple[str, list[Any]]:
        where, args = scope.sql()
        parts, args = [where], list(args)
        if f.region:
            w2, a2 = region_sql(f.region)
            parts.append(w2); args += a2
        for col, val in (("rule", f.rule), ("kind", f.kind), ("severity", f.severity), ("state", f.sensor_state)):
            if val:
                parts.append(f"w.{col} = ?"); args.append(val)
        if f.case_state == "open":
            parts.append("(c.state IS NULL OR c.state IN ('new','acknowledged','dispatched','in_progress'))")
        elif f.case_state == "new":
            parts.append("(c.state IS NULL OR c.state = 'new')")
        elif f.case_state:
            parts.append("c.state = ?"); args.append(f.case_state)
        if f.desk:
            parts.append("c.desk = ?"); args.append(f.desk)
        if f.since is not None:
            parts.append("w.start_ts >= ?"); args.append(f.since)
        if f.until is not None:
            parts.append("w.start_ts <= ?"); args.append(f.until)
        return " AND ".join(parts), args

    def queue(self, scope: Scope, f: QueueFilter) -> dict[str, Any]:
        """A page of warnings with their cases, newest first by default (server-side paging)."""
        f.check()
        where, args = self._filter_sql(scope, f)
        order = f"{SORTS[f.sort]} {f.order.upper()}, w.id {f.order.upper()}"
        rows = self._rows(
            "SELECT w.id, w.rule, w.kind, w.severity, w.source, w.region, w.state, w.start_ts, w.last_ts, w.cleared_ts, "
            "w.value, w.message, c.state AS case_state, c.desk, c.version, c.escalations "
            f"FROM warnings w LEFT JOIN case_state c ON c.id = w.id WHERE {where} ORDER BY {order} LIMIT ? OFFSET ?",
            [*args, f.per_page + 1, (f.page - 1) * f.per_page])
        more = len(rows) > f.per_page
        return {"items": [self._decorate(r) for r in rows[:f.per_page]], "page": f.page, "per_page": f.per_page,
                "has_more": more}

    def counts(self, scope: Scope, f: QueueFilter) -> dict[str, dict[str, int]]:
        """Counts under the current filters, per severity, sensor state, case state, rule and kind.

        One grouped scan of the matching warnings (joined to their cases only when a case filter is
        set); the case states are counted from the (smaller) case table. Cached for ``counts_ttl_s``
        per (scope, filters) - or ten times as long as the count took, so a slow count (hundreds of
        thousands of matches) is not redone on every live refresh; at most ``counts_cache_max``
        entries (oldest evicted first). ``as_of`` says when it was counted."""
        f.check()
        key = (scope.prefix, f.region, f.rule, f.kind, f.severity, f.sensor_state, f.case_state, f.desk, f.since, f.until)
        now = time.monotonic()
        with self._lock:
            hit = self._counts_cache.get(key)
            if hit is not None and now - hit[0] < max(self.counts_ttl_s, 10 * hit[2]):
                return hit[1]
        where, args = self._filter_sql(scope, f)
        join = "LEFT JOIN case_state c ON c.id = w.id" if (f.case_state or f.desk) else ""
        out: dict[str, dict[str, int]] = {k: {} for k in ("severity", "sensor_state", "case_state", "rule", "kind")}
        total = 0
        for sev, st, rule, kind, n in self._ro().execute(
                f"SELECT w.severity, w.state, w.rule, w.kind, count(*) FROM warnings w {join} WHERE {where} GROUP BY 1, 2, 3, 4", args):
            total += n
            for name, k in (("severity", sev), ("sensor_state", st), ("rule", rule), ("kind", kind)):
                out[name][k] = out[name].get(k, 0) + n
        worked = dict(self._ro().execute(
            f"SELECT c.state, count(*) FROM case_state c JOIN warnings w ON w.id = c.id WHERE {where} GROUP BY 1", args))
        new = total - sum(worked.values())
        out["case_state"] = {k: v for k, v in ({"new": new, **worked} if new else worked).items() if v}
        for name in out:
            out[name] = dict(sorted(out[name].items(), key=lambda kv: -kv[1])[:100])
        out["total"] = {"all": total}
        out["as_of"] = {"ms": now_ms()}
        with self._lock:
            self._counts_cache[key] = (now, out, time.monotonic() - now)
            while len(self._counts_cache) > self.counts_cache_max:
                self._counts_cache.pop(next(iter(self._counts_cache)))
                self.counts_evicted += 1
        return out

    def counts_changed(self, cheap_s: float = 0.05) -> None:
        """Warnings or cases changed: forget the cached counts that are cheap to redo (the costly
        ones - big stores - live out their time, so live updates do not recount them every time)."""
        with self._lock:
            for k in [k for k, v in self._counts_cache.items() if v[2] < cheap_s]:
                del self._counts_cache[k]

    def rules(self, scope: Scope) -> list[str]:
        where, args = scope.sql()
        return [r[0] for r in self._ro().execute(f"SELECT DISTINCT rule FROM warnings w WHERE {where} LIMIT 200", args)]

    def audit(self, scope: Scope, case_id: str) -> list[dict[str, Any]]:
        self.warning(scope, case_id)  # NotFound outside scope
        return self._rows("SELECT * FROM case_audit WHERE case_id = ? ORDER BY seq", [case_id])

    def device(self, device_id: str) -> dict[str, Any] | None:
        """The device's directory entry (vendor, kind, position). Callers reach it only from a warning in scope."""
        rows = self._rows("SELECT id, vendor, kind, lat, lon, region FROM devices WHERE id = ?", [device_id])
        return rows[0] if rows else None

    def changes_since(self, rowid: int, last_ts: int, limit: int = 1000) -> tuple[list[dict[str, Any]], int, int]:
        """For the console's poller when it runs apart from the runtime: warnings new since ``rowid``
        or changed since ``last_ts``; returns (rows, new rowid cursor, new last_ts cursor)."""
        rows = self._rows("SELECT rowid AS rid, id, rule, severity, source, region, state, start_ts, last_ts, cleared_ts "
                          "FROM warnings WHERE rowid > ? ORDER BY rowid LIMIT ?", [rowid, limit])
        rows += self._rows("SELECT rowid AS rid, id, rule, severity, source, region, state, start_ts, last_ts, cleared_ts "
                           "FROM warnings WHERE last_ts > ? AND rowid <= ? ORDER BY last_ts LIMIT ?", [last_ts, rowid, limit])
        for r in rows:
            rowid = max(rowid, r["rid"])
            last_ts = max(last_ts, r["last_ts"])
        return rows, rowid, last_ts

    def cursor(self) -> tuple[int, int]:
        r = self._ro().execute("SELECT coalesce(max(rowid), 0), coalesce(max(last_ts), 0) FROM warnings").fetchone()
        return int(r[0]), int(r[1])

    # --- acting on a case --------------------------------------------------------------------
    def act(self, user: User, case_id: str, action: str, *, action_id: str | None = None, expect: str | None = None,
            desk: str | None = None, note: str = "", photo: str | None = None, ts: int | None = None,
            scope: Scope | None = None) -> tuple[dict[str, Any], bool]:
        """Apply ``action`` by ``user`` to the case of warning ``case_id``.

        Returns (the audit record, whether it is new). The same ``action_id`` again returns the
        first record and changes nothing; ``expect`` other than the current state is a Conflict."""
        if action not in ACTIONS:
            raise CaseError(f"unknown action {action!r}; expected one of {', '.join(ACTIONS)}")
        starts, to_state, least = ACTIONS[action]
        if user.name != "system" and not role_at_least(user.role, least):
            raise Forbidden(f"{action} needs the role {least} or above; {user.name} is {user.role}")
        note = (note or "").strip()
        if len(note) > NOTE_MAX:
            raise CaseError(f"the note is {len(note)} characters; at most {NOTE_MAX}")
        if action in NEEDS_NOTE and not note:
            raise CaseError(f"{action} needs {NEEDS_NOTE[action]}")
        action_id = (action_id or "").strip() or uuid.uuid4().hex
        if len(action_id) > 100:
            raise CaseError("action id longer than 100 characters")
        scope = scope if scope is not None else user.scope_obj
        w = self.warning(scope, case_id)  # NotFound outside the user's scope
        ts = now_ms() if ts is None else ts
        with self._lock:
            db = self._db
            db.execute("BEGIN IMMEDIATE")
            try:
                prev = db.execute("SELECT * FROM case_audit WHERE action_id = ?", (action_id,)).fetchone()
                if prev is not None:
                    db.execute("COMMIT")
                    rec = self._record(prev)
                    if rec["case_id"] != case_id or rec["action"] != action:
                        raise Conflict(f"action id {action_id!r} was already used for another action")
                    return rec, False
                row = db.execute("SELECT state, desk, escalations FROM case_state WHERE id = ?", (case_id,)).fetchone()
                state, cur_desk, escalations = row if row else ("new", default_desk(w["region"], w["severity"]), 0)
                if action != "comment" and user.name != "system" and not works_desk(user.scope, cur_desk):
                    raise Forbidden(f"the case is at the desk {cur_desk!r}; {user.name} works {user.scope!r} and may only "
                                    f"comment on it (the desk itself or one above it may {action} it)")
                if expect and expect != state:
                    raise Conflict(f"the case is {state} now, not {expect} (someone acted on it first); reload to see it")
                if state not in starts:
                    raise Conflict(f"cannot {action} a case that is {state}")
                new_desk = None
                if action == "dispatch":
                    new_desk = (desk or "").strip().strip("/") or default_desk(w["region"], w["severity"])
                    try:
                        parse_path(new_desk)
                    except ValueError as e:
                        raise CaseError(str(e)) from None
                    if not within(w["region"], new_desk):
                        raise CaseError(f"desk {new_desk!r} does not cover the warning's region {w['region']!r}; "
                                        "dispatch up or down its own region path")
                elif action == "escalate":
                    levels = path_levels(cur_desk)
                    if len(levels) <= 1:
                        raise Conflict("the case is already at the top desk")
                    new_desk = "/".join(levels[:-1])
                n_records = db.execute("SELECT count(*) FROM case_audit WHERE case_id = ?", (case_id,)).fetchone()[0]
                if n_records >= RECORDS_PER_CASE_MAX:
                    raise Conflict(f"the case already has {n_records} records, the most one case may hold")
                db.execute("INSERT INTO case_audit (case_id, action_id, ts, actor, action, from_state, to_state, desk, note, photo) "
                           "VALUES (?,?,?,?,?,?,?,?,?,?)",
                           (case_id, action_id, ts, user.name, action, state, to_state or state, new_desk, note or None, photo))
                recs = [self._record(r) for r in db.execute("SELECT * FROM case_audit WHERE case_id = ? ORDER BY seq", (case_id,))]
                view = fold(case_id, default_desk(w["region"], w["severity"]), recs)
                db.execute("INSERT OR REPLACE INTO case_state VALUES (?,?,?,?,?,?,?,?,?,?,?)", view.as_row())
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise
        rec = recs[-1]
        rec["region"] = w["region"]
        return rec, True

    @staticmethod
    def _record(row: tuple) -> dict[str, Any]:
        keys = ("seq", "case_id", "action_id", "ts", "actor", "action", "from_state", "to_state", "desk", "note", "photo")
        return dict(zip(keys, row))

    def case_row(self, case_id: str) -> dict[str, Any] | None:
        rows = self._rows("SELECT * FROM case_state WHERE id = ?", [case_id])
        return rows[0] if rows else None

    def overdue(self, limit: int = 200, now: int | None = None) -> list[dict[str, Any]]:
        """Open cases past their deadline that have not been escalated since they became overdue."""
        now = now_ms() if now is None else now
        out: list[dict[str, Any]] = []
        for sev, dl in self.deadlines_ms.items():
            out += self._rows(
                "SELECT w.id, w.region, w.severity, c.desk, coalesce(c.escalations, 0) AS escalations "
                "FROM warnings w LEFT JOIN case_state c ON c.id = w.id WHERE w.severity = ? AND w.start_ts < ? "
                "AND (c.state IS NULL OR c.state IN ('new','acknowledged','dispatched','in_progress')) "
                "AND coalesce(c.escalations, 0) = 0 ORDER BY w.start_ts DESC LIMIT ?", [sev, now - dl, limit])
        return out

    def escalate_overdue(self, limit: int = 200) -> list[dict[str, Any]]:
        """Escalate each overdue open case once, one desk up; returns the new audit records."""
        system = User("system", "admin", "")
        out = []
        for r in self.overdue(limit):
            desk = r["desk"] or default_desk(r["region"], r["severity"])
            if len(path_levels(desk)) <= 1:
                continue
            try:
                rec, new = self.act(system, r["id"], "escalate", action_id=f"overdue-{r['id']}",
                                    note="deadline passed: escalated automatically", scope=Scope(""))
            except CaseError:
                continue
            if new:
                out.append(rec)
        return out

    # --- statistics ---------------------------------------------------------------------------
    def stats(self, scope: Scope, region: str = "", since: int | None = None, until: int | None = None) -> dict[str, Any]:
        f = QueueFilter(region=region, since=since, until=until).check()
        where, args = self._filter_sql(scope, f)
        base = f"FROM warnings w LEFT JOIN case_state c ON c.id = w.id WHERE {where}"
        r = self._ro().execute(
            "SELECT count(*), count(c.ack_ts), count(c.dispatched_ts), count(c.handled_ts), "
            f"sum(c.state = 'closed'), sum(c.state = 'rejected') {base}", args).fetchone()
        funnel = {"raised": r[0], "acknowledged": r[1], "dispatched": r[2], "handled": r[3],
                  "closed": r[4] or 0, "false_alarm": r[5] or 0}
        ack = [x[0] for x in self._ro().execute(f"SELECT c.ack_ts - w.start_ts {base} AND c.ack_ts IS NOT NULL", args)]
        close = [x[0] for x in self._ro().execute(f"SELECT c.closed_ts - w.start_ts {base} AND c.closed_ts IS NOT NULL", args)]
        now = now_ms()
        overdue = 0
        for sev, dl in self.deadlines_ms.items():
            overdue += self._ro().execute(
                f"SELECT count(*) {base} AND w.severity = ? AND w.start_ts < ? AND "
                "(c.state IS NULL OR c.state IN ('new','acknowledged','dispatched','in_progress'))", [*args, sev, now - dl]).fetchone()[0]
        per_rule = [{"rule": a, "warnings": n, "false_alarms": fa or 0, "share": (fa or 0) / n if n else 0.0}
                    for a, n, fa in self._ro().execute(f"SELECT w.rule, count(*), sum(c.state = 'rejected') {base} GROUP BY 1 ORDER BY 2 DESC LIMIT 50", args)]
        per_device = [{"source": a, "warnings": n, "false_alarms": fa or 0, "share": (fa or 0) / n if n else 0.0}
                      for a, n, fa in self._ro().execute(
                          f"SELECT w.source, count(*), sum(c.state = 'rejected') {base} GROUP BY 1 "
                          "ORDER BY 3 * 1.0 / count(*) DESC, 2 DESC LIMIT 20", args)]
        return {"funnel": funnel, "time_to_ack_s": _quantiles(ack), "time_to_close_s": _quantiles(close),
                "overdue": overdue, "false_alarms_per_rule": per_rule, "false_alarms_per_device": per_device}

    # --- users, tokens, sessions ---------------------------------------------------------------
    def add_user(self, name: str, password: str, role: str, scope: str) -> None:
        from argon2 import PasswordHasher

        if not name or len(name) > 64 or not all(ch.isalnum() or ch in "-_." for ch in name):
            raise CaseError(f"user name {name!r}: use 1-64 letters, digits, '-', '_' or '.'")
        if role not in ROLES:
            raise CaseError(f"role {role!r}: expected one of {', '.join(ROLES)}")
        if len(password) < 8:
            raise CaseError("the password needs at least 8 characters")
        try:
            parse_path(scope)
        except ValueError as e:
            raise CaseError(str(e)) from None
        h = PasswordHasher().hash(password)
        with self._lock:
            self._db.execute("INSERT INTO console_users VALUES (?,?,?,?,?) ON CONFLICT(name) DO UPDATE SET "
                             "pw_hash=excluded.pw_hash, role=excluded.role, scope=excluded.scope",
                             (name, h, role, "/".join(path_levels(scope)), now_ms()))

    def remove_user(self, name: str) -> bool:
        with self._lock:
            n = self._db.execute("DELETE FROM console_users WHERE name = ?", (name,)).rowcount
            self._db.execute("DELETE FROM console_sessions WHERE user = ?", (name,))
            self._db.execute("DELETE FROM console_tokens WHERE user = ?", (name,))
        return n > 0

    def users(self) -> list[User]:
        return [User(r["name"], r["role"], r["scope"]) for r in self._rows("SELECT name, role, scope FROM console_users ORDER BY name")]

    def user(self, name: str) -> User | None:
        rows = self._rows("SELECT name, role, scope FROM console_users WHERE name = ?", [name])
        return User(**rows[0]) if rows else None

    def check_password(self, name: str, password: str) -> User | None:
        from argon2 import PasswordHasher
        from argon2.exceptions import InvalidHashError, VerificationError

        rows = self._rows("SELECT name, role, scope, pw_hash FROM console_users WHERE name = ?", [name])
        ph = PasswordHasher()
        if not rows:
            try:  # the same work for an unknown name, so timing does not tell which names exist
                ph.verify(_DUMMY_HASH[0] or _dummy(ph), password)
            except (VerificationError, InvalidHashError):
                pass
            return None
        try:
            ph.verify(rows[0]["pw_hash"], password)
        except (VerificationError, InvalidHashError):
            return None
        return User(rows[0]["name"], rows[0]["role"], rows[0]["scope"])

    def add_token(self, user: str, label: str = "") -> str:
        if self.user(user) is None:
            raise CaseError(f"no user {user!r}")
        token = "gw_" + secrets.token_urlsafe(32)
        with self._lock:
            self._db.execute("INSERT INTO console_tokens VALUES (?,?,?,?)", (_hash(token), user, label, now_ms()))
        return token

    def token_user(self, token: str) -> User | None:
        rows = self._rows("SELECT u.name, u.role, u.scope FROM console_tokens t JOIN console_users u ON u.name = t.user "
                          "WHERE t.hash = ?", [_hash(token)])
        return User(**rows[0]) if rows else None

    def new_session(self, user: str) -> tuple[str, str, int]:
        """(session token, CSRF token, sessions evicted). At most ``sessions_per_user`` per user: the oldest go."""
        token, csrf = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
        now = now_ms()
        with self._lock:
            db = self._db
            db.execute("DELETE FROM console_sessions WHERE expires_ts < ?", (now,))
            db.execute("INSERT INTO console_sessions VALUES (?,?,?,?,?)", (_hash(token), user, csrf, now, now + self.session_ms))
            evicted = db.execute("DELETE FROM console_sessions WHERE user = ? AND hash NOT IN (SELECT hash FROM console_sessions "
                                 "WHERE user = ? ORDER BY created_ts DESC LIMIT ?)", (user, user, self.sessions_per_user)).rowcount
        return token, csrf, evicted

    def session(self, token: str) -> tuple[User, str] | None:
        rows = self._rows("SELECT u.name, u.role, u.scope, s.csrf FROM console_sessions s JOIN console_users u ON u.name = s.user "
                          "WHERE s.hash = ? AND s.expires_ts > ?", [_hash(token), now_ms()])
        if not rows:
            return None
        r = rows[0]
        return User(r["name"], r["role"], r["scope"]), r["csrf"]

    def end_session(self, token: str) -> None:
        with self._lock:
            self._db.execute("DELETE FROM console_sessions WHERE hash = ?", (_hash(token),))


_DUMMY_HASH: list[str | None] = [None]


def _dummy(ph) -> str:
    _DUMMY_HASH[0] = ph.hash(secrets.token_hex(8))
    return _DUMMY_HASH[0]


def _quantiles(values_ms: list[int]) -> dict[str, float | None]:
    if not values_ms:
        return {"n": 0, "median": None, "p90": None}
    import numpy as np

    a = np.asarray(values_ms, np.float64) / 1000.0
    return {"n": int(a.size), "median": float(np.median(a)), "p90": float(np.percentile(a, 90))}
