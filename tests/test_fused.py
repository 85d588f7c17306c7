"""One-pass series rules (streams/fused.py) against the same rules run one by one.

Random rule sets (several instances of a kind included), random enabled masks, batches with
slots outside the arrays, repeated and out-of-order timestamps, NaN and stuck values; between
batches the slot range grows and one member is snapshotted and restored. Every member's events
and final state must equal those of an independent copy run through its own kernel."""
from __future__ import annotations

import numpy as np
import pytest

from gridwatch.records import SensorBatch
from gridwatch.streams import fused as fz
from gridwatch.streams.fused import FusedRules, fusable
from gridwatch.streams.processor import create

KINDS = {
    "threshold": lambda r: {"above": float(r.uniform(2, 4)), "clear_at": 1.5, "min_duration_s": int(r.integers(0, 5))}
    if r.random() < 0.7 else {"below": 1.0, "above": 3.5},
    "rate_of_change": lambda r: {"max_per_s": float(r.uniform(0.05, 1)), "clear_ratio": 0.5,
                                 "direction": str(r.choice(["up", "down", "both"]))},
    "zscore": lambda r: {"alpha": 0.2, "warmup": int(r.integers(1, 6)), "z_raise": 2.5, "z_clear": 1.0,
                         "freeze_baseline": bool(r.random() < 0.5)},
    "flatline": lambda r: {"epsilon": float(r.choice([0.0, 0.05])), "duration_s": int(r.integers(1, 20))},
}


def rule_set(rng):
    kinds = rng.choice(list(KINDS), int(rng.integers(2, 7)))
    return [(str(k), f"r{j}-{k}", KINDS[str(k)](rng)) for j, k in enumerate(kinds)]


def batch(rng, t0, n, slots):
    ts = t0 + np.sort(rng.integers(0, 20_000, n))
    ts[rng.random(n) < 0.1] -= 30_000  # late readings
    s = rng.integers(-2, slots + 3, n).astype(np.int32)  # some outside the arrays
    v = np.where(rng.random(n) < 0.3, 2.0, rng.normal(2.0, 1.5, n).round(1))
    v[rng.random(n) < 0.02] = np.nan
    return SensorBatch(s, s, ts.astype(np.int64), v)


def same_events(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize("seed", range(12))
def test_fused_rules_equal_the_rules_run_one_by_one(seed):
    rng = np.random.default_rng(seed)
    spec = rule_set(rng)
    slots = 30
    alone = [create(k, name, params, capacity=slots) for k, name, params in spec]
    together = [create(k, name, params, capacity=slots) for k, name, params in spec]
    for a, b in zip(alone, together):
        mask = rng.random(slots) < 0.8
        a.enabled[:slots] = mask
        b.enabled[:slots] = mask
    group = FusedRules(together)
    t = 0
    for step in range(8):
        b = batch(rng, t, int(rng.integers(1, 400)), slots)
        t = int(b.ts.max())
        got = group.process(b)
        for a, f in zip(alone, together):
            same_events(a.process(b), got[f])
        if step == 3:  # new slots appear: the group grows, old state kept
            slots += 500
            for a, f in zip(alone, together):
                a.enable(slots - 1)
                f.enable(slots - 1)
            assert group.capacity >= slots and all(f.capacity == group.capacity for f in together)
        if step == 5:  # a member restored from its own snapshot (a partition moving in cluster mode)
            j = int(rng.integers(len(together)))
            together[j].restore(alone[j].snapshot())
    for a, f in zip(alone, together):
        sa, sf = a.snapshot(), f.snapshot()
        for k in sa:
            n = min(sa[k].shape[0], sf[k].shape[0])
            np.testing.assert_array_equal(sa[k][:n], sf[k][:n], err_msg=f"{f.name}.{k}")


def test_members_keep_working_alone_on_the_shared_records():
    a = create("threshold", "t", {"above": 3.0}, capacity=4)
    b = create("flatline", "f", {"duration_s": 1}, capacity=4)
    a.enable(1)
    b.enable(1)
    group = FusedRules([a, b])
    one = SensorBatch(np.array([1], np.int32), np.array([1], np.int32), np.array([1000], np.int64), np.array([5.0]))
    ev = a.process(one)  # a member's own kernel on strided views of the records
    assert list(ev.kind) == [1] and group.rec["m0_active"][1] == 1
    assert group.process(one)[a].kind.size == 0  # already raised, seen through the shared state


def test_a_processor_that_cannot_run_fused_is_refused():
    off = create("offline", "o", {"timeout_s": 5})
    assert not fusable(off)
    with pytest.raises(ValueError, match="cannot run fused"):
        FusedRules([off, create("threshold", "t", {"above": 1.0})])


def test_generated_kernel_is_cached_on_disk_and_keyed_by_the_steps_source(tmp_path, monkeypatch):
    monkeypatch.setenv("GRIDWATCH_KERNEL_CACHE", str(tmp_path))
    monkeypatch.setattr(fz, "_compiled", {})
    rules = [create("zscore", "z", {}), create("rate_of_change", "r", {"max_per_s": 1.0})]
    src = fz._source(rules)
    assert "zscore_step as step0" in src and "step source" in src
    FusedRules(rules)
    written = list(tmp_path.glob("gridwatch_fused_*.py"))
    assert len(written) == 1 and written[0].read_text(encoding="utf-8") == src
