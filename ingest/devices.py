"""The device directory: (vendor, device id) -> slot, with vendor, kind and installed position.

Device ids are namespaced by vendor: a device is the pair (vendor, id), so a vendor that publishes
an id another vendor also uses gets a device of its own and never writes into, blocks or takes
over the other's. Devices listed in the config are *bound* to their vendor: readings naming a bound
id on another vendor's topic or payload are rejected (``vendor_mismatch``). Others are registered
on first sight or rejected (``ingest.unknown_devices``); each vendor may register at most
``max_per_vendor`` devices on first sight (beyond that its new ids are rejected as
``device_limit``, counted and dead-lettered, while its known devices go on), so one vendor cannot
grow state for everyone.

Operators see a device by its id. Where two vendors use the same id, the device bound by the config
(else the one registered first) is shown as the plain id and the other as ``vendor/id``, so a name
on a warning always points at one device.

Series (device, metric) get their own slots, because sensor rules keep state per series.

**Gateways.** A device may speak through another one, its *gateway*: a DJI aircraft through the
dock that hosts it (:meth:`DeviceDirectory.set_gateway`, from the dock's topology, its osd and the
aircraft's own messages). Each device has at most one gateway (the slot of the gateway device, -1
for none), saved with the device by the store. Bound: at most ``max_gateway_bindings`` devices
have a gateway; past that, binding a device that has none is refused and counted
(``gateway_refused``), while bound devices can still move to another gateway or be released.
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Callable

import numpy as np

from gridwatch.streams.slots import SlotRegistry

SEP = "\x1f"  # between vendor and id in a slot key (a control character no topic or id uses)


def device_key(vendor: str, device_id: str) -> str:
    return f"{vendor}{SEP}{device_id}"


class DeviceDirectory:
    def __init__(self, unknown: str = "register", max_per_vendor: int = 0, max_gateway_bindings: int = 100_000) -> None:
        self.unknown = unknown
        self.max_per_vendor = max_per_vendor  # devices a vendor may register on first sight; 0 = no limit
        self.slots = SlotRegistry()  # key: device_key(vendor, id)
        self.ids: list[str] = []
        self.vendor: list[str] = []
        self.kind: list[str] = []
        self.lat: list[float | None] = []
        self.lon: list[float | None] = []
        self.region: list[str | None] = []  # static region path, if configured
        self.gateway: list[int] = []  # slot of the device's gateway (a DJI aircraft's dock), -1 = none
        self.hosted: dict[int, set[int]] = {}  # gateway slot -> slots of the devices bound to it
        self.max_gateway_bindings = max_gateway_bindings
        self.gateway_bound = 0  # devices with a gateway
        self.gateway_refused = 0  # bindings refused at max_gateway_bindings
        self.bound: dict[str, int] = {}  # id -> slot of the device the config binds it to
        self.first: dict[str, int] = {}  # id -> lowest slot with that id
        self.per_vendor: Counter = Counter()
        self.changed: set[int] = set()  # slots whose attributes changed since the store saved them
        self.series = SlotRegistry()  # key: device_slot * 256 + metric_id
        self.series_device = np.zeros(0, np.int32)
        self.series_metric = np.zeros(0, np.int16)
        self.on_new_device: list[Callable[[int], None]] = []
        self.on_new_series: list[Callable[[int], None]] = []

    def __len__(self) -> int:
        return len(self.slots)

    def add(self, device_id: str, vendor: str, kind: str, lat: float | None = None, lon: float | None = None,
            region: str | None = None) -> int:
        slot, created = self.slots.add(device_key(vendor, device_id))
        if created:
            self.ids.append(device_id)
            self.vendor.append(vendor)
            self.kind.append(kind)
            self.lat.append(lat)
            self.lon.append(lon)
            self.region.append(region)
            self.gateway.append(-1)
            self.first.setdefault(device_id, slot)
            self.per_vendor[vendor] += 1
            for cb in self.on_new_device:
                cb(slot)
        return slot

    def bind(self, device_id: str, vendor: str, kind: str, lat: float | None = None, lon: float | None = None,
             region: str | None = None) -> int:
        """A device from the config: added if new, its attributes updated if they changed (the
        store saves the update), and its id bound to its vendor."""
        slot = self.slots.get(device_key(vendor, device_id))
        if slot < 0:
            slot = self.add(device_id, vendor, kind, lat, lon, region)
        elif (self.kind[slot], self.lat[slot], self.lon[slot], self.region[slot]) != (kind, lat, lon, region):
            self.kind[slot], self.lat[slot], self.lon[slot], self.region[slot] = kind, lat, lon, region
            self.changed.add(slot)
            for cb in self.on_new_device:  # rules that match the new kind bind to it
                cb(slot)
        self.bound[device_id] = slot
        return slot

    def restore(self, keys: list[str], vendor: list[str], kind: list[str], lat: list, lon: list, region: list) -> None:
        """Replace the devices with a snapshot's (slot order kept, no callbacks: the rules restore
        their own state). Bindings of ids the snapshot holds are kept; gateways are not part of it."""
        bound = {did: (self.vendor[s], self.kind[s], self.lat[s], self.lon[s], self.region[s]) for did, s in self.bound.items()}
        self.slots, self.ids, self.first, self.bound, self.per_vendor = SlotRegistry(), [], {}, {}, Counter()
        self.vendor, self.kind, self.lat, self.lon, self.region = list(vendor), list(kind), list(lat), list(lon), list(region)
        self.gateway, self.hosted, self.gateway_bound = [-1] * len(keys), {}, 0
        for s, k in enumerate(keys):
            self.slots.add(k)
            did = k.split(SEP, 1)[1]
            self.ids.append(did)
            self.first.setdefault(did, s)
            self.per_vendor[self.vendor[s]] += 1
        for did, (v, kd, la, lo, rg) in bound.items():
            self.bind(did, v, kd, la, lo, rg)

    def set_gateway(self, slot: int, gateway: int) -> bool:
        """Bind device ``slot`` to ``gateway`` (a slot; -1 releases it). Returns whether the
        device's gateway is now ``gateway`` (False: refused at ``max_gateway_bindings``).
        A change is saved by the store's next commit."""
        old = self.gateway[slot]
        if old == gateway or gateway == slot:
            return old == gateway
        if old < 0 and self.gateway_bound >= self.max_gateway_bindings:
            self.gateway_refused += 1
            return False
        if old >= 0:
            peers = self.hosted.get(old)
            if peers is not None:
                peers.discard(slot)
                if not peers:
                    del self.hosted[old]
        if gateway >= 0:
            self.hosted.setdefault(gateway, set()).add(slot)
        self.gateway_bound += (gateway >= 0) - (old >= 0)
        self.gateway[slot] = gateway
        self.changed.add(slot)
        return True

    def set_hosted(self, gateway: int, slots: list[int]) -> int:
        """A gateway's full topology: ``slots`` are bound to it, devices bound to it before and
        not listed are released. Returns how many bindings were refused (bound)."""
        refused = 0
        for s in sorted(self.hosted.get(gateway, set()) - set(slots)):
            self.set_gateway(s, -1)
        for s in slots:
            if not self.set_gateway(s, gateway):
                refused += 1
        return refused

    def gateway_id(self, slot: int) -> str | None:
        """The display id of the device's gateway, or None."""
        g = self.gateway[slot] if 0 <= slot < len(self.gateway) else -1
        return None if g < 0 else self.display_id(g)

    def get(self, device_id: str, vendor: str) -> int:
        return self.slots.get(device_key(vendor, device_id))

    def resolve(self, device_id: str, vendor: str, kind: str) -> tuple[int, str | None]:
        """(slot, None) or (-1, rejection reason)."""
        slot = self.slots.get(device_key(vendor, device_id))
        b = self.bound.get(device_id)
        if b is not None and b != slot:
            return -1, "vendor_mismatch"
        if slot >= 0:
            return slot, None
        if self.unknown == "reject":
            return -1, "unknown_device"
        if self.max_per_vendor and self.per_vendor[vendor] >= self.max_per_vendor:
            return -1, "device_limit"
        return self.add(device_id, vendor, kind), None

    def owner(self, device_id: str) -> str | None:
        """The vendor the config binds ``device_id`` to, if any."""
        b = self.bound.get(device_id)
        return None if b is None else self.vendor[b]

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
        """The device's id as the vendor sends it (without the vendor)."""
        return self.ids[slot]

    def display_id(self, slot: int) -> str:
        """The name operators see: the plain id, or ``vendor/id`` where another vendor's device
        with the same id holds the plain name (the one the config binds it to, else the first)."""
        did = self.ids[slot]
        holder = self.bound.get(did, self.first.get(did, slot))
        return did if holder == slot else f"{self.vendor[slot]}/{did}"
