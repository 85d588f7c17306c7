"""Warning lifecycle: raise/clear, deterministic ids, cooldown, minimum active time, updates."""
from __future__ import annotations

import numpy as np

from gridwatch.records import RegionPath
from gridwatch.streams.lifecycle import CLEARED, RAISED, UPDATED, Lifecycle, RuleInfo
from gridwatch.streams.processor import CLEAR, RAISE, Events


def rule(name="flood", cooldown_ms=0, min_active_ms=0, zone=None) -> RuleInfo:
    return RuleInfo(name, "threshold", "major", cooldown_ms, min_active_ms, "{source} at {value}", "series",
                    zone or (lambda aux: None))


def lifecycle(update_s=60.0) -> Lifecycle:
    return Lifecycle(lambda inp, slot: (f"dev-{slot}", "water_level"), lambda inp, slot, la, lo: RegionPath("c", "a", "t", "g"),
                     update_interval_s=update_s)


def ev(*rows) -> Events:
    """rows: (slot, kind, ts, value[, aux])"""
    e = Events.alloc(len(rows))
    for i, r in enumerate(rows):
        slot, kind, ts, val = r[:4]
        e.row[i], e.slot[i], e.kind[i], e.ts[i], e.value[i] = i, slot, kind, ts, val
        e.aux[i] = r[4] if len(r) > 4 else -1
    return e


def test_raise_then_clear():
    lc, r = lifecycle(), rule()
    out = lc.on_events(r, ev((3, RAISE, 1000, 5.0)))
    assert [(k, w.state, w.source, w.value, w.start_ts) for k, w in out] == [(RAISED, "active", "dev-3", 5.0, 1000)]
    assert out[0][1].message == "dev-3 at 5.0" and out[0][1].evidence == {"metric": "water_level"}
    assert lc.on_events(r, ev((3, RAISE, 1500, 6.0))) == []  # already active
    out = lc.on_events(r, ev((3, CLEAR, 2000, 1.0)))
    [(kind, w)] = out
    assert kind == CLEARED and w.state == "cleared" and w.cleared_ts == 2000 and w.value == 1.0
    assert lc.on_events(r, ev((3, CLEAR, 2500, 1.0))) == []  # nothing active


def test_ids_are_deterministic_across_runs():
    def run():
        lc, r = lifecycle(), rule()
        out = lc.on_events(r, ev((1, RAISE, 1000, 5.0), (2, RAISE, 1000, 5.0), (1, CLEAR, 3000, 0.0), (1, RAISE, 4000, 6.0)))
        return [(k, w.id) for k, w in out]

    a, b = run(), run()
    assert a == b
    ids = [i for _, i in a]
    assert ids[0] == ids[2] and len({ids[0], ids[1], ids[3]}) == 3  # the clear keeps its raise's id


def test_cooldown_suppresses_a_raise_and_its_clear():
    lc, r = lifecycle(), rule(cooldown_ms=10_000)
    lc.on_events(r, ev((0, RAISE, 0, 5.0)))
    assert lc.on_events(r, ev((0, CLEAR, 1000, 0.0)))[0][0] == CLEARED
    assert lc.on_events(r, ev((0, RAISE, 5000, 5.0))) == []  # within the cooldown
    assert lc.on_events(r, ev((0, CLEAR, 6000, 0.0))) == []  # its clear is suppressed too
    lc.observe("series", np.array([0], np.int32), np.array([6000]), np.array([1.0]))
    assert lc.tick(100_000, {"flood": r}) == []
    out = lc.on_events(r, ev((0, RAISE, 17_000, 5.0)))  # 11 s after the last clear
    assert [k for k, _ in out] == [RAISED]
    # another slot is not affected by slot 0's cooldown
    assert [k for k, _ in lc.on_events(r, ev((1, RAISE, 6500, 5.0)))] == [RAISED]


def test_min_active_holds_a_clear_until_tick():
    lc, r = lifecycle(), rule(min_active_ms=60_000)
    rules = {"flood": r}
    lc.on_events(r, ev((0, RAISE, 0, 5.0)))
    assert lc.on_events(r, ev((0, CLEAR, 10_000, 0.0))) == []
    assert lc.tick(30_000, rules) == []
    [(kind, w)] = lc.tick(61_000, rules)
    assert kind == CLEARED and w.cleared_ts == 60_000  # released at raise + min_active
    assert lc.active == {}
    lc.on_events(r, ev((0, RAISE, 100_000, 5.0)))
    [(kind, w)] = lc.on_events(r, ev((0, CLEAR, 170_000, 0.0)))  # long enough: immediate
    assert kind == CLEARED and w.cleared_ts == 170_000


def test_updates_at_most_every_interval_and_only_when_something_new():
    lc, r = lifecycle(update_s=60), rule()
    rules = {"flood": r}
    lc.on_events(r, ev((0, RAISE, 0, 5.0)))
    assert lc.tick(120_000, rules) == []  # nothing new
    lc.observe("series", np.array([0, 0, 1], np.int32), np.array([10_000, 20_000, 30_000]), np.array([6.0, 7.0, 9.0]))
    assert lc.tick(30_000, rules) == []  # too soon after the raise
    [(kind, w)] = lc.tick(60_000, rules)
    assert kind == UPDATED and w.value == 7.0 and w.last_ts == 20_000 and w.state == "active"
    lc.observe("series", np.array([0], np.int32), np.array([70_000]), np.array([8.0]))
    assert lc.tick(90_000, rules) == []  # within the interval of the last update
    assert [w.value for _, w in lc.tick(120_000, rules)] == [8.0]
    assert lc.tick(500_000, rules) == []


def test_observe_touches_only_active_slots():
    lc, r = lifecycle(), rule()
    lc.on_events(r, ev((2, RAISE, 0, 5.0)))
    lc.observe("device", np.array([2], np.int32), np.array([5000]), np.array([1.0]))  # other input
    lc.observe("series", np.array([1, 3], np.int32), np.array([5000, 5000]), np.array([1.0, 1.0]))
    [a] = lc.active.values()
    assert a.warning.last_ts == 0 and not a.dirty
    lc.observe("series", np.array([1, 2], np.int32), np.array([5000, 4000]), np.array([1.0, 2.0]))
    assert a.warning.last_ts == 4000 and a.warning.value == 2.0 and a.dirty
    lc.observe("series", np.array([2], np.int32), np.array([3000]), np.array([9.0]))  # older: ignored
    assert a.warning.value == 2.0
    lc.on_events(r, ev((2, CLEAR, 6000, 0.0)))
    assert lc._active_slots["series"] == {}


def test_zones_key_separate_warnings():
    lc, r = lifecycle(), rule(zone=lambda aux: f"zone-{aux}")
    out = lc.on_events(r, ev((0, RAISE, 0, 1.0, 0), (0, RAISE, 0, 1.0, 1)))
    assert [w.zone for _, w in out] == ["zone-0", "zone-1"] and out[0][1].id != out[1][1].id
    out = lc.on_events(r, ev((0, CLEAR, 10, 1.0, 1)))
    assert [w.zone for _, w in out] == ["zone-1"] and len(lc.active) == 1
