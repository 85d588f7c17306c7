"""The device directory: device id -> slot, with vendor, kind and installed position.

Devices listed in the config are known up front; others are registered on first sight or
rejected (``ingest.unknown_devices``). A device belongs to one vendor: readings for it on another
vendor's topic are rejected (``vendor_mismatch``), so one vendor cannot write into another's devices.
Series (device, metric) get their own slots, because sensor rules keep state per series.
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np

from gridwatch.streams.slots import SlotRegistry


class DeviceDirectory:
    def __init__(self, unknown: str = "register") -> None:
        self.unknown = unknown
        self.slots = SlotRegistry()
        self.vendor: list[str] = []
        self.kind: list[str] = []
        self.lat: list[float | None] = []
        self.lon: list[float | None] = []
        self.region: list[str | None] = []  # static region path, if configured
        self.series = SlotRegistry()  # key: device_slot * 256 + metric_id
        self.series_device = np.zeros(0, np.int32)
        self.series_metric = np.zeros(0, np.int16)
        self.on_new_device: list[Callable[[int], None]] = []
        self.on_new_series: list[Callable[[int], None]] = []

    def __len__(self) -> int:
        return len(self.slots)

    def add(self, device_id: str, vendor: str, kind: str, lat: float | None = None, lon: float | None = None,
            region: str | None = None) -> int:
        slot, created = self.slots.add(device_id)
        if created:
            self.vendor.append(vendor)
            self.kind.append(kind)
            self.lat.append(lat)
            self.lon.append(lon)
            self.region.append(region)
            for cb in self.on_new_device:
                cb(slot)
        return slot

    def resolve(self, device_id: str, vendor: str, kind: str) -> tuple[int, str | None]:
        """(slot, None) or (-1, rejection reason)."""
        slot = self.slots.get(device_id)
        if slot >= 0:
            if self.vendor[slot] != vendor:
                return -1, "vendor_mismatch"
            return slot, None
        if self.unknown == "reject":
            return -1, "unknown_device"
        return self.add(device_id, vendor, kind), None

    def series_slots(self, device: np.ndarray, metric: np.ndarray) -> np.ndarray:
        """Series slot per row, creating series on first sight (work is per distinct pair)."""
        if device.shape[0] == 0:
            return np.empty(0, np.int32)
        keys = device.astype(np.int64) * 256 + metric
        uniq, inv = np.unique(keys, return_inverse=True)
        out = np.empty(uniq.shape[0], np.int32)
        new = []
        for i, k in enumerate(uniq.tolist()):
            s, created = self.series.add(k)
            out[i] = s
            if created:
                new.append(s)
        if new:
            n = len(self.series)
            if n > self.series_device.shape[0]:
                cap = max(n, int(self.series_device.shape[0] * 1.5) + 64)
                self.series_device = np.resize(self.series_device, cap)
                self.series_metric = np.resize(self.series_metric, cap)
            for s in new:
                k = self.series.key(s)
                self.series_device[s] = k // 256
                self.series_metric[s] = k % 256
            for s in new:
                for cb in self.on_new_series:
                    cb(s)
        return out[inv]

    def device_id(self, slot: int) -> str:
        return self.slots.key(slot)
