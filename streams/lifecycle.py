"""The warning lifecycle: one active warning per (source, rule, zone); raised -> updated -> cleared.

Processors report state transitions (:class:`~gridwatch.streams.processor.Events`); this layer
turns them into :class:`~gridwatch.records.Warning` records, rarely enough that plain Python is fine:

* **ids** are deterministic (source, rule, zone, start time), so a replay produces the same ids;
* **cooldown**: after a warning clears, the same key raises nothing for ``cooldown_s`` (a suppressed
  raise also suppresses its clear);
* **minimum active time**: a clear that comes sooner than ``min_active_s`` after the raise is held
  back until then (released by :meth:`Lifecycle.tick`), so flapping does not flood operators;
* **updates**: while active, the latest value and time are tracked; :meth:`tick` emits ``updated``
  at most every ``update_interval_s`` when something new arrived;
* **severity** and the operator message come from the rule; the region path from the mapper.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable

import numpy as np

from gridwatch.records import RegionPath, Warning, warning_id
from gridwatch.streams.processor import RAISE, Events

RAISED, UPDATED, CLEARED = "raised", "updated", "cleared"


@dataclass(slots=True)
class RuleInfo:
    name: str
    kind: str
    severity: str
    cooldown_ms: int
    min_active_ms: int
    message: str
    input: str  # what the slot numbers: "series" (sensor rules) or "device"
    zone_name: Callable[[int], str | None]
    value_is_reading: bool = True  # updates carry the latest reading as the warning's value


@dataclass(slots=True)
class _Active:
    warning: Warning
    slot: int
    input: str
    value_is_reading: bool
    suppressed: bool = False
    pending_clear_ts: int | None = None
    dirty: bool = False
    last_update_ms: int = 0


class Lifecycle:
    def __init__(self, describe_source: Callable[[str, int], tuple[str, str | None]],
                 region_of: Callable[[str, int, float, float], RegionPath], update_interval_s: float = 60.0,
                 tags_of: Callable[[str, int], dict] | None = None) -> None:
        """``describe_source(input, slot) -> (source id, metric or None)``;
        ``region_of(input, slot, lat, lon) -> RegionPath``; ``tags_of(input, slot)``: more facts
        about the source for the warning's evidence (e.g. ``gateway``: the dock of an aircraft)."""
        self.describe_source = describe_source
        self.tags_of = tags_of
        self.region_of = region_of
        self.update_interval_ms = int(update_interval_s * 1000)
        self.active: dict[tuple[str, int, int], _Active] = {}
        self._cleared_at: dict[tuple[str, int, int], int] = {}
        self._active_slots: dict[str, dict[int, int]] = {"series": {}, "device": {}}  # input -> slot -> count

    def on_events(self, rule: RuleInfo, ev: Events, lat: np.ndarray | None = None,
                  lon: np.ndarray | None = None) -> list[tuple[str, Warning]]:
        out: list[tuple[str, Warning]] = []
        for i in range(len(ev)):
            slot, aux, ts, val = int(ev.slot[i]), int(ev.aux[i]), int(ev.ts[i]), float(ev.value[i])
            key = (rule.name, slot, aux)
            if ev.kind[i] == RAISE:
                if key in self.active:
                    continue
                last_clear = self._cleared_at.get(key)
                suppressed = last_clear is not None and ts - last_clear < rule.cooldown_ms
                row = int(ev.row[i])
                la = float(lat[row]) if lat is not None and row >= 0 else float("nan")
                lo = float(lon[row]) if lon is not None and row >= 0 else float("nan")
                source, metric = self.describe_source(rule.input, slot)
                zone = rule.zone_name(aux) if aux >= 0 else None
                evidence = {k: v for k, v in (("metric", metric), ("lat", la), ("lon", lo)) if v == v and v is not None}
                if self.tags_of is not None:
                    evidence.update(self.tags_of(rule.input, slot))
                w = Warning(
                    id=warning_id(source, rule.name, aux, ts), rule=rule.name, kind=rule.kind, severity=rule.severity,
                    source=source, region=self.region_of(rule.input, slot, la, lo), state="active",
                    start_ts=ts, last_ts=ts, cleared_ts=None, value=val,
                    message=_fmt(rule.message, source=source, value=val, rule=rule.name, zone=zone or "", metric=metric or "",
                                 gateway=evidence.get("gateway", "")),
                    zone=zone, evidence=evidence)
                self.active[key] = _Active(w, slot, rule.input, rule.value_is_reading, suppressed, last_update_ms=ts)
                self._count(rule.input, slot, +1)
                if not suppressed:
                    out.append((RAISED, replace(w)))
            else:
                a = self.active.get(key)
                if a is None:
                    continue
                if not a.suppressed and ts - a.warning.start_ts < rule.min_active_ms:
                    a.pending_clear_ts = ts
                    continue
                out.extend(self._clear(key, a, ts, val))
        return out

    def _clear(self, key, a: _Active, ts: int, val: float | None) -> list[tuple[str, Warning]]:
        del self.active[key]
        self._count(a.input, a.slot, -1)
        self._cleared_at[key] = ts
        if a.suppressed:
            return []
        w = a.warning
        w.state, w.cleared_ts, w.last_ts = "cleared", ts, max(w.last_ts, ts)
        if val is not None and val == val:
            w.value = val
        return [(CLEARED, replace(w))]

    def _count(self, inp: str, slot: int, d: int) -> None:
        m = self._active_slots[inp]
        c = m.get(slot, 0) + d
        if c > 0:
            m[slot] = c
        else:
            m.pop(slot, None)

    def observe(self, inp: str, slots: np.ndarray, ts: np.ndarray, values: np.ndarray) -> None:
        """Track the latest reading of sources with an active warning (cheap when none are active)."""
        watch = self._active_slots[inp]
        if not watch or slots.shape[0] == 0:
            return
        hit = np.flatnonzero(np.isin(slots, np.fromiter(watch, np.int32, len(watch))))
        if hit.shape[0] == 0:
            return
        latest: dict[int, int] = {}
        for i in hit.tolist():
            latest[int(slots[i])] = i
        for key, a in self.active.items():
            if a.input != inp:
                continue
            i = latest.get(a.slot)
            if i is not None and ts[i] > a.warning.last_ts:
                a.warning.last_ts = int(ts[i])
                if a.value_is_reading:
                    a.warning.value = float(values[i])
                a.dirty = True

    def touch(self, rule: str, slot: int, aux: int, ts: int, value: float = float("nan")) -> bool:
        """The cause of an active warning was seen again at ``ts`` (e.g. a video detector still sees
        the smoke): newer ``last_ts`` and, when finite, ``value``; :meth:`tick` then emits ``updated``.
        Returns whether such a warning is active."""
        a = self.active.get((rule, slot, aux))
        if a is None:
            return False
        if ts > a.warning.last_ts:
            a.warning.last_ts = ts
            if value == value:
                a.warning.value = float(value)
            a.dirty = True
        return True

    def tick(self, now_ms: int, rules: dict[str, RuleInfo]) -> list[tuple[str, Warning]]:
        out: list[tuple[str, Warning]] = []
        for key, a in list(self.active.items()):
            rule = rules[key[0]]
            if a.pending_clear_ts is not None and now_ms - a.warning.start_ts >= rule.min_active_ms:
                out.extend(self._clear(key, a, max(a.pending_clear_ts, a.warning.start_ts + rule.min_active_ms), None))
            elif a.dirty and not a.suppressed and now_ms - a.last_update_ms >= self.update_interval_ms:
                a.dirty = False
                a.last_update_ms = now_ms
                out.append((UPDATED, replace(a.warning)))
        return out


def _fmt(template: str, **kw) -> str:
    if not template:
        return ""
    try:
        return template.format(**kw)
    except (KeyError, IndexError, ValueError):
        return template
