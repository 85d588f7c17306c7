"""Dense integer slots for devices and series, grown on demand.

Processors keep per-slot state in arrays; this registry maps an external key (a device id, or a
(device id, metric) pair) to its slot. One dict entry and one list entry per key, nothing else.
"""
from __future__ import annotations

from collections.abc import Hashable, Iterable

import numpy as np


class SlotRegistry:
    __slots__ = ("_slot", "keys")

    def __init__(self) -> None:
        self._slot: dict[Hashable, int] = {}
        self.keys: list[Hashable] = []  # slot -> key

    def __len__(self) -> int:
        return len(self.keys)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._slot

    def get(self, key: Hashable) -> int:
        """Slot of ``key`` or -1."""
        return self._slot.get(key, -1)

    def add(self, key: Hashable) -> tuple[int, bool]:
        """(slot, created)."""
        s = self._slot.get(key)
        if s is not None:
            return s, False
        s = len(self.keys)
        self._slot[key] = s
        self.keys.append(key)
        return s, True

    def lookup(self, keys: Iterable[Hashable]) -> np.ndarray:
        """Vector of slots (-1 for unknown keys)."""
        g = self._slot.get
        return np.fromiter((g(k, -1) for k in keys), dtype=np.int32)

    def key(self, slot: int) -> Hashable:
        return self.keys[slot]
