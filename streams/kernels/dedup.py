"""Duplicate (key, timestamp) detection, in two stages.

1. :class:`DuplicateFilter`: a small ring of the last few timestamps per key. Cheap, catches a
   reading sent twice in a row or within one batch, and remembers nothing after a restart.
2. :class:`WindowFilter`: every (key, timestamp) of the last ``window_ms`` (by the batch's "now"),
   in one open-addressing hash table with a memory bound. It catches a vendor re-publishing a whole
   batch minutes or hours later, and it is seeded from the store at startup (see
   ``Store.recent_keys``), so a restart does not forget. Timestamps older than the window are not
   looked up (nor remembered): such a reading is accepted unless stage 1 or another check rejects it.
   Windows up to 20 days; readings stamped more than about 24 days ahead of "now" are not checked
   either (``ingest.max_future_skew_s`` rejects them long before).
   When the table reaches its memory bound it first drops entries that fell out of the window, then
   (if that is not enough) the entries with the oldest timestamps, counted in ``evicted``; a re-send
   of an evicted reading is stored again. ``forgotten_ms`` is the newest timestamp so dropped.

Keys are series slots for readings and device slots for position fixes.
"""
from __future__ import annotations

import numpy as np
from numba import njit

EMPTY = np.iinfo(np.int64).min
ENTRY_BYTES = 8  # one int64 per table slot: key and time since the table's base
LOAD = 0.7  # most entries per table slot (linear probing)
MIN_SLOTS = 4096


@njit(cache=True, nogil=True)
def mark_duplicates(key, ts, keep, ring, ring_pos):
    """Clear ``keep[i]`` for rows whose (key, ts) was seen among the key's last ``ring.shape[1]``
    timestamps (in this batch or earlier ones); remember the others. Returns the number marked."""
    n = key.shape[0]
    k_len = ring.shape[1]
    marked = 0
    for i in range(n):
        if not keep[i]:
            continue
        k = key[i]
        t = ts[i]
        dup = False
        for j in range(k_len):
            if ring[k, j] == t:
                dup = True
                break
        if dup:
            keep[i] = False
            marked += 1
            continue
        p = ring_pos[k]
        ring[k, p] = t
        ring_pos[k] = (p + 1) % k_len
    return marked


class DuplicateFilter:
    """Per-key state for :func:`mark_duplicates`, grown on demand (``depth`` timestamps per key)."""

    def __init__(self, depth: int = 4) -> None:
        self.ring = np.full((0, depth), EMPTY, np.int64)
        self.pos = np.zeros(0, np.int8)

    def apply(self, key: np.ndarray, ts: np.ndarray, keep: np.ndarray) -> int:
        if key.shape[0] == 0:
            return 0
        need = int(key.max()) + 1
        if need > self.ring.shape[0]:
            cap = max(need, int(self.ring.shape[0] * 1.5) + 64)
            ring = np.full((cap, self.ring.shape[1]), EMPTY, np.int64)
            ring[: self.ring.shape[0]] = self.ring
            pos = np.zeros(cap, np.int8)
            pos[: self.pos.shape[0]] = self.pos
            self.ring, self.pos = ring, pos
        return int(mark_duplicates(key, ts, keep, self.ring, self.pos))

    @property
    def nbytes(self) -> int:
        return int(self.ring.nbytes + self.pos.nbytes)


# --- stage 2: the window table ---------------------------------------------------------------
# One int64 per table slot: key << 32 | (ts - base), ``base`` a time at or before the window's
# start, so a probe touches one array (one cache miss) and an entry costs 8 bytes. Timestamps
# from ``base`` to ``base + SPAN`` fit; ``base`` moves up (a rehash) once "now" is REBASE_AFTER
# past it, so windows up to MAX_WINDOW_MS leave room for clock skew ahead of now.
VACANT = -1
SPAN = 1 << 32
REBASE_AFTER = 1 << 31
MAX_WINDOW_MS = 20 * 86_400_000


@njit(cache=True, nogil=True)
def _home(v, n_slots):
    """Table slot where entry ``v`` starts probing: splitmix64's finaliser, reduced to
    [0, n_slots) by a multiply-shift (no division, any table size below 2**31)."""
    z = np.uint64(v) + np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    z = z ^ (z >> np.uint64(31))
    return np.int64(((z >> np.uint64(32)) * np.uint64(n_slots)) >> np.uint64(32))


@njit(cache=True, nogil=True)
def window_mark(key, ts, keep, start, lo, base, table, count, limit):
    """From row ``start`` on, for each kept row with ``lo <= ts < base + SPAN``: clear ``keep`` if
    (key, ts) is in the table, else insert it. Stops before a row that would take the table past
    ``limit`` entries. Returns (rows done, entries now, rows marked)."""
    n = key.shape[0]
    n_slots = table.shape[0]
    hi = base + SPAN
    marked = 0
    for i in range(start, n):
        if not keep[i]:
            continue
        t = ts[i]
        if t < lo or t >= hi:
            continue
        v = (np.int64(key[i]) << 32) | (t - base)
        j = _home(v, n_slots)
        while True:
            e = table[j]
            if e == v:
                keep[i] = False
                marked += 1
                break
            if e == VACANT:
                if count >= limit:
                    return i, count, marked
                table[j] = v
                count += 1
                break
            j += 1
            if j == n_slots:
                j = 0
    return n, count, marked


@njit(cache=True, nogil=True)
def _rehash(entries, table):
    n_slots = table.shape[0]
    for i in range(entries.shape[0]):
        j = _home(entries[i], n_slots)
        while table[j] != VACANT:
            j += 1
            if j == n_slots:
                j = 0
        table[j] = entries[i]


def room_plan(live_ts: np.ndarray, cutoff: int, need: int, max_entries: int) -> tuple[np.ndarray, int]:
    """Which live entries stay when ``need`` more must fit under ``max_entries``: those inside the
    window, less (if still too many) every entry with a timestamp up to the one that brings the
    count down to three quarters of what is left for them (ties go together). Returns (the mask
    of entries kept, the newest timestamp dropped by the bound or EMPTY). Shared by the table
    and its reference."""
    kept = live_ts >= cutoff
    room = max_entries - need
    n_in = int(kept.sum())
    if n_in <= room:
        return kept, EMPTY
    target = max(room * 3 // 4, 0)
    inside = np.sort(live_ts[kept])
    thr = int(inside[n_in - target - 1])  # drop every entry with ts <= thr
    return kept & (live_ts > thr), thr


class WindowFilter:
    """Stage 2 (see the module doc): (key, ts) pairs of the last ``window_ms``, at most
    ``max_bytes`` of table. ``evicted``: entries dropped by the memory bound (their re-sends are
    no longer recognised); ``forgotten_ms``: the newest timestamp so dropped (EMPTY if none)."""

    def __init__(self, window_ms: int, max_bytes: int) -> None:
        if not 0 < window_ms <= MAX_WINDOW_MS:
            raise ValueError(f"duplicate window {window_ms} ms: expected 1 ms .. {MAX_WINDOW_MS // 86_400_000} days")
        self.window_ms = int(window_ms)
        self.max_slots = max(int(max_bytes) // ENTRY_BYTES, 16)
        self.max_entries = int(self.max_slots * LOAD)
        self.table = np.full(min(MIN_SLOTS, self.max_slots), VACANT, np.int64)
        self.base: int | None = None
        self.count = 0
        self.evicted = 0
        self.forgotten_ms = EMPTY

    @property
    def limit(self) -> int:
        return int(self.table.shape[0] * LOAD)

    def apply(self, key: np.ndarray, ts: np.ndarray, keep: np.ndarray, now_ms: int) -> int:
        """Clear ``keep`` of rows already seen within the window; remember the others."""
        if key.shape[0] == 0:
            return 0
        cutoff = int(now_ms) - self.window_ms
        if self.base is None:
            self.base = cutoff
        elif int(now_ms) - self.base > REBASE_AFTER:
            self._make_room(0, cutoff, rebase=True)
        key = np.ascontiguousarray(key, np.int32)
        ts = np.ascontiguousarray(ts, np.int64)
        start, marked = 0, 0
        lo = max(cutoff, self.base)
        while True:
            start, self.count, m = window_mark(key, ts, keep, start, lo, self.base, self.table, self.count, self.limit)
            marked += m
            if start >= key.shape[0]:
                return int(marked)
            # full: make room for the rest of the batch (at most half the bound)
            self._make_room(min(key.shape[0] - start, self.max_entries // 2), cutoff)

    def _make_room(self, need: int, cutoff: int, rebase: bool = False) -> None:
        e = self.table[self.table != VACANT]
        k, t = e >> 32, (e & 0xFFFFFFFF) + self.base
        keep, thr = room_plan(t, cutoff, need, self.max_entries)
        if thr != EMPTY:
            self.evicted += int((t >= cutoff).sum() - keep.sum())
            self.forgotten_ms = max(self.forgotten_ms, thr)
        if rebase:
            self.base = cutoff
        k, t = k[keep], t[keep]
        want = int((t.shape[0] + need) / LOAD) + 1
        n = self.table.shape[0]
        while n < want and n < self.max_slots:
            n = min(n * 4, self.max_slots)
        self.table = np.full(n, VACANT, np.int64)
        _rehash((k << 32) | (t - self.base), self.table)
        self.count = int(t.shape[0])

    def seed(self, key: np.ndarray, ts: np.ndarray, now_ms: int) -> None:
        """Remember pairs already stored (at startup), without marking anything."""
        self.apply(key, ts, np.ones(key.shape[0], np.bool_), now_ms)

    @property
    def nbytes(self) -> int:
        return int(self.table.nbytes)


class WindowReference:
    """Plain-Python reference of :class:`WindowFilter` (tests only): a set, with the same
    capacity steps, time base and eviction rule (:func:`room_plan`)."""

    def __init__(self, window_ms: int, max_bytes: int) -> None:
        self.window_ms = int(window_ms)
        self.max_slots = max(int(max_bytes) // ENTRY_BYTES, 16)
        self.max_entries = int(self.max_slots * LOAD)
        self.slots = min(MIN_SLOTS, self.max_slots)
        self.base = None
        self.seen: set[tuple[int, int]] = set()
        self.evicted = 0
        self.forgotten_ms = EMPTY

    def apply(self, key, ts, keep, now_ms: int) -> int:
        if len(key) == 0:
            return 0
        cutoff = int(now_ms) - self.window_ms
        if self.base is None:
            self.base = cutoff
        elif int(now_ms) - self.base > REBASE_AFTER:
            self._make_room(0, cutoff)
            self.base = cutoff
        lo, hi = max(cutoff, self.base), self.base + SPAN
        marked = 0
        n = len(key)
        for i in range(n):
            if not keep[i] or not lo <= int(ts[i]) < hi:
                continue
            p = (int(key[i]), int(ts[i]))
            if p in self.seen:
                keep[i] = False
                marked += 1
                continue
            if len(self.seen) >= int(self.slots * LOAD):
                self._make_room(min(n - i, self.max_entries // 2), cutoff)
            self.seen.add(p)
        return marked

    def _make_room(self, need: int, cutoff: int) -> None:
        pairs = list(self.seen)
        t = np.array([p[1] for p in pairs], np.int64)
        keep, thr = room_plan(t, cutoff, need, self.max_entries)
        if thr != EMPTY:
            self.evicted += int((t >= cutoff).sum() - keep.sum())
            self.forgotten_ms = max(self.forgotten_ms, thr)
        self.seen = {p for p, k in zip(pairs, keep) if k}
        want = int((len(self.seen) + need) / LOAD) + 1
        while self.slots < want and self.slots < self.max_slots:
            self.slots = min(self.slots * 4, self.max_slots)
