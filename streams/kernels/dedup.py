"""Duplicate (key, timestamp) detection over a batch, with a small ring of recent timestamps per key."""
from __future__ import annotations

import numpy as np
from numba import njit

EMPTY = np.iinfo(np.int64).min


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
