"""Throughput and memory of the standard sensor rule set.

One run, one generated data set (N sensor series, one per device, each reporting about once a
minute, with spikes, stuck stretches and devices that fall silent), four measurements:

* **numba**: the standard set (threshold, rate_of_change, zscore, flatline, offline) as the
  pipeline runs it: the four series rules in one pass (``FusedRules``), offline on its own,
  batch by batch (offline ticks after each batch), after a warm-up so JIT compilation is
  excluded; readings/s is the median over repeats. Beside it, run for run, the same rules each
  through its own kernel (same events required). Kernels are single-threaded and the process
  is pinned to one CPU.
* **reference**: the plain-Python reference of the same five rules on the first rows of the
  same data; its readings/s sets the speed-up ratio (target >= 100x).
* **pandas**: the vectorised equivalent a data engineer would write (groupby + diff, ewm,
  run-length via cumsum, hysteresis via forward fill) over the same data in one go; target
  >= 10x. It is a lower bound on pandas' cost: no batching, no freeze of the z-score baseline.
* **dedup**: the duplicate filter's cost: filter + standard set with the per-series ring only,
  and with the ring plus the 24 h window (``--dedup-window-s``, ``--dedup-max-mb``), run for run;
  readings/s both ways and their time ratio.
* **memory**: a SlotRegistry of 1,000,000 realistic device ids plus the standard set's state
  arrays for as many slots, measured with tracemalloc (numpy buffers included); target <= 300 MB.

``python -m gridwatch.benchmarks.processors --devices 100000 --readings 2000000 --repeat 5``
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import time
import tracemalloc
from typing import Any

import numpy as np
import pandas as pd

from gridwatch.records import PositionBatch, SensorBatch
from gridwatch.streams.fused import FusedRules, fusable
from gridwatch.streams.kernels.dedup import DuplicateFilter, WindowFilter
from gridwatch.streams.kernels import reference as ref
from gridwatch.streams.processor import Processor, create
from gridwatch.streams.slots import SlotRegistry

STANDARD: dict[str, dict[str, Any]] = {
    "threshold": {"above": 8.0, "clear_at": 7.0, "min_duration_s": 60},
    "rate_of_change": {"max_per_s": 0.05, "clear_ratio": 0.5},
    "zscore": {"alpha": 0.1, "warmup": 5, "z_raise": 5.0, "z_clear": 2.0, "min_std": 0.01},
    "flatline": {"epsilon": 1e-9, "duration_s": 600},
    "offline": {"timeout_s": 300},
}
TARGETS = {"readings_per_s": 20e6, "vs_reference": 100.0, "vs_pandas": 10.0, "memory_mb": 300.0}
PERIOD_MS = 60_000


def generate(devices: int, readings: int, seed: int = 1) -> SensorBatch:
    """Readings in event-time order: series i (= device i) reports every ~60 s with jitter.

    Values are a per-series level (1-5, e.g. metres of water) with noise; 1% of series get a
    10-reading excursion of +6, 1% freeze (stuck sensor) for their second half, and 1% of
    devices stop reporting halfway (offline)."""
    rng = np.random.default_rng(seed)
    k = -(-readings // devices) + 1  # one spare period: silent devices leave gaps
    ts = rng.integers(0, PERIOD_MS, devices)[:, None] + np.arange(k)[None, :] * PERIOD_MS
    ts = ts + rng.integers(-5_000, 5_000, (devices, k))
    level = rng.uniform(1.0, 5.0, devices)[:, None]
    value = level + rng.normal(0.0, 0.05, (devices, k)).cumsum(axis=1) * 0.2 + rng.normal(0, 0.05, (devices, k))
    spiky = rng.random(devices) < 0.01
    start = rng.integers(0, max(k - 10, 1), devices)
    cols = np.arange(k)[None, :]
    value += np.where(spiky[:, None] & (cols >= start[:, None]) & (cols < start[:, None] + 10), 6.0, 0.0)
    stuck = rng.random(devices) < 0.01
    value[stuck, k // 2:] = value[stuck, k // 2][:, None]
    alive = np.ones((devices, k), bool)
    alive[rng.random(devices) < 0.01, k // 2:] = False
    series = np.broadcast_to(np.arange(devices, dtype=np.int32)[:, None], (devices, k))
    sel = alive.ravel()
    s, t, v = series.ravel()[sel], ts.ravel()[sel], value.ravel()[sel]
    order = np.argsort(t, kind="stable")[:readings]
    return SensorBatch(s[order], s[order], t[order].astype(np.int64), v[order])


def _batches(data: SensorBatch, size: int) -> list[SensorBatch]:
    return [data.take(slice(i, i + size)) for i in range(0, len(data), size)]


def _standard_set(n: int) -> dict[str, Processor]:
    procs = {kind: create(kind, kind, params, capacity=n) for kind, params in STANDARD.items()}
    for p in procs.values():
        p.enabled[:n] = True
    return procs


def _run_standard(batches: list[SensorBatch], devices: int, fused: bool) -> tuple[dict[str, float], int]:
    """Seconds per part for the whole data set with fresh state, and the events found. ``fused``:
    the series rules in one pass (:class:`FusedRules`, as the pipeline runs them) plus offline;
    otherwise each rule through its own kernel."""
    procs = _standard_set(devices)
    group = FusedRules([p for p in procs.values() if fusable(p)]) if fused else None
    alone = {k: p for k, p in procs.items() if group is None or p.home is None}
    per = dict.fromkeys((["series rules, one pass"] if group else []) + list(alone), 0.0)
    events = 0
    for b in batches:
        now = int(b.ts[-1])
        if group is not None:
            t0 = time.perf_counter()
            events += sum(len(e) for e in group.process(b).values())
            per["series rules, one pass"] += time.perf_counter() - t0
        for kind, p in alone.items():
            t0 = time.perf_counter()
            events += len(p.process(b)) + len(p.tick(now))
            per[kind] += time.perf_counter() - t0
    return per, events


def time_numba(data: SensorBatch, devices: int, batch: int, repeat: int) -> dict[str, Any]:
    """Median seconds for the whole data set, total and per part, fused (as the pipeline runs the
    rules) and with one kernel per rule, interleaved run by run; and the events found."""
    batches = _batches(data, batch)
    for fused in (True, False):  # compile / load the kernels
        _run_standard(batches[:1], devices, fused)
    runs: dict[bool, list[dict[str, float]]] = {True: [], False: []}
    events = {}
    for _ in range(repeat):
        for fused in (True, False):
            per, events[fused] = _run_standard(batches, devices, fused)
            runs[fused].append(per)
    if events[True] != events[False]:
        raise AssertionError(f"fused and separate kernels disagree: {events[True]} vs {events[False]} events")
    out = {}
    for fused, rs in runs.items():
        out["fused" if fused else "separate"] = {
            "seconds": statistics.median(sum(r.values()) for r in rs),
            "per_part_s": {k: statistics.median(r[k] for r in rs) for k in rs[0]}}
    ratio = statistics.median(sum(b.values()) / sum(a.values()) for a, b in zip(runs[True], runs[False]))
    return {**out["fused"], "separate": out["separate"], "fused_vs_separate": ratio, "events": events[True]}


def time_dedup(data: SensorBatch, devices: int, batch: int, repeat: int, window_s: float, max_mb: float) -> dict[str, Any]:
    """The duplicate filter's cost (streams/kernels/dedup.py) as the codec runs it, beside the
    standard set: per run, fresh state, the stream once with the per-series ring only and once
    with the ring plus the window (``window_s``, 3/4 of ``max_mb`` as the codec gives readings),
    interleaved; readings/s of filter + rules both ways, medians, and the median of run ratios."""
    batches = _batches(data, batch)

    def run(window: bool) -> tuple[float, float, int]:
        procs = _standard_set(devices)
        group = FusedRules([p for p in procs.values() if fusable(p)])
        alone = [p for p in procs.values() if p.home is None]
        ring = DuplicateFilter()
        win = WindowFilter(int(window_s * 1e3), int(max_mb * 2**20) * 3 // 4) if window else None
        filt = rules = 0.0
        marked = 0
        for b in batches:
            now = int(b.ts[-1])
            t0 = time.perf_counter()
            keep = np.ones(len(b), np.bool_)
            marked += ring.apply(b.series, b.ts, keep)
            if win is not None:
                marked += win.apply(b.series, b.ts, keep, now)
            t1 = time.perf_counter()
            group.process(b)
            for p in alone:
                p.process(b)
                p.tick(now)
            rules += time.perf_counter() - t1
            filt += t1 - t0
        return filt, rules, marked

    run(False), run(True)  # compile / load the kernels
    res: dict[bool, list[tuple[float, float, int]]] = {False: [], True: []}
    for _ in range(repeat):
        for window in (False, True):
            res[window].append(run(window))
    n = len(data)
    out = {}
    for window, rs in res.items():
        out["window" if window else "ring_only"] = {
            "filter_s": statistics.median(r[0] for r in rs), "seconds": statistics.median(r[0] + r[1] for r in rs),
            "readings_per_s": n / statistics.median(r[0] + r[1] for r in rs),
            "filter_readings_per_s": n / statistics.median(r[0] for r in rs), "marked": rs[0][2]}
    out["cost_ratio"] = statistics.median((b[0] + b[1]) / (a[0] + a[1]) for a, b in zip(res[False], res[True]))
    out.update(window_s=window_s, max_mb=max_mb)
    return out


def time_reference(data: SensorBatch, rows: int) -> float:
    """Seconds for the plain-Python standard set on the first ``rows`` readings."""
    sub = data.take(slice(0, rows))
    slots, dev, ts, val = sub.series.tolist(), sub.device.tolist(), sub.ts.tolist(), sub.value.tolist()
    everyone = set(slots) | set(dev)
    p = STANDARD
    models = [
        ref.Threshold(everyone, above=p["threshold"]["above"], clear_above=p["threshold"]["clear_at"],
                      min_dur_ms=p["threshold"]["min_duration_s"] * 1000),
        ref.RateOfChange(everyone, p["rate_of_change"]["max_per_s"],
                         p["rate_of_change"]["max_per_s"] * p["rate_of_change"]["clear_ratio"]),
        ref.ZScore(everyone, p["zscore"]["alpha"], p["zscore"]["warmup"], p["zscore"]["z_raise"],
                   p["zscore"]["z_clear"], p["zscore"]["min_std"]),
        ref.Flatline(everyone, p["flatline"]["epsilon"], p["flatline"]["duration_s"] * 1000),
    ]
    offline = ref.Offline(everyone, p["offline"]["timeout_s"] * 1000)
    t0 = time.perf_counter()
    for m in models:
        m.process(slots, ts, val)
    offline.process(dev, ts)
    offline.tick(ts[-1])
    return time.perf_counter() - t0


def time_pandas(data: SensorBatch) -> float:
    """Seconds for the pandas formulation of the standard set over all readings at once."""
    p = STANDARD
    t0 = time.perf_counter()
    df = pd.DataFrame({"series": data.series, "device": data.device, "ts": data.ts, "value": data.value})
    df = df.sort_values(["series", "ts"], kind="stable", ignore_index=True)
    g = df.groupby("series", sort=False)
    first = g.cumcount() == 0

    def hysteresis(raise_, clear_):
        state = pd.Series(np.where(raise_, 1.0, np.where(clear_, 0.0, np.nan)))
        state = state.groupby(df["series"], sort=False).ffill().fillna(0.0)
        return (state.groupby(df["series"], sort=False).diff().fillna(state) != 0).sum()

    def held_for(cond, min_ms):
        run = (cond != cond.groupby(df["series"], sort=False).shift()).cumsum()
        start = df["ts"].groupby(run, sort=False).transform("first")
        return cond & (df["ts"] - start >= min_ms)

    th = p["threshold"]
    events = hysteresis(held_for(df["value"] >= th["above"], th["min_duration_s"] * 1000),
                        df["value"] < th["clear_at"])
    ro = p["rate_of_change"]
    rate = (g["value"].diff() * 1000.0 / g["ts"].diff()).abs()
    events += hysteresis(rate > ro["max_per_s"], rate < ro["max_per_s"] * ro["clear_ratio"])
    zs = p["zscore"]
    ew = g["value"].ewm(alpha=zs["alpha"])
    mean = ew.mean().reset_index(level=0, drop=True).sort_index()
    std = ew.std(bias=True).reset_index(level=0, drop=True).sort_index()
    z = ((df["value"] - mean.groupby(df["series"]).shift()) / std.groupby(df["series"]).shift().clip(zs["min_std"])).abs()
    scored = g.cumcount() >= zs["warmup"]
    events += hysteresis(scored & (z >= zs["z_raise"]), z < zs["z_clear"])
    fl = p["flatline"]
    changed = (g["value"].diff().abs() > fl["epsilon"]) | first
    start = df["ts"].groupby(changed.cumsum(), sort=False).transform("first")
    events += hysteresis(df["ts"] - start >= fl["duration_s"] * 1000, changed)
    gap = df.groupby("device", sort=False)["ts"].diff()
    events += int((gap > p["offline"]["timeout_s"] * 1000).sum() * 2)
    df.groupby("device", sort=False)["ts"].max()
    return time.perf_counter() - t0


POSITION_RULES = {  # kind label -> (processor kind, params without zones)
    "geofence forbidden": ("geofence", {"mode": "forbidden"}),
    "geofence allowed": ("geofence", {"mode": "allowed"}),
    "dwell": ("dwell", {"radius_m": 200.0, "duration_s": 600}),
}


def position_data(devices: int, fixes: int, zones: int, seed: int = 2):
    """Vehicles fixing every ~30 s near a home point (50 m jitter, so some dwell) in a 1 x 1 degree
    area with ``zones`` square zones of 0.02 degrees: (PositionBatch in time order, GeoJSON, the
    reference's rings)."""
    rng = np.random.default_rng(seed)
    corners = np.column_stack([rng.uniform(114, 115, zones), rng.uniform(30, 31, zones)])
    rings = [[[(x, y), (x + 0.02, y), (x + 0.02, y + 0.02), (x, y + 0.02), (x, y)]] for x, y in corners]
    fc = {"type": "FeatureCollection", "features": [
        {"type": "Feature", "properties": {"name": f"zone {i}"}, "geometry": {"type": "Polygon", "coordinates": r}}
        for i, r in enumerate([[[list(p) for p in ring[0]]] for ring in rings])]}
    k = -(-fixes // devices)
    home = np.column_stack([rng.uniform(30, 31, devices), rng.uniform(114, 115, devices)])
    ts = rng.integers(0, 30_000, devices)[:, None] + np.arange(k)[None, :] * 30_000
    order = np.argsort(ts.ravel(), kind="stable")[:fixes]
    dev = np.repeat(np.arange(devices, dtype=np.int32), k)[order]
    lat = home[dev, 0] + rng.normal(0, 0.0005, fixes)
    lon = home[dev, 1] + rng.normal(0, 0.0005, fixes)
    return (PositionBatch(dev, ts.ravel()[order].astype(np.int64), lat, lon, np.full(fixes, 30.0), np.full(fixes, np.nan)),
            fc, rings)


def time_position(devices: int, fixes: int, zones: int, ref_fixes: int, repeat: int) -> dict[str, Any]:
    """Fixes/s of the geofence and dwell rules (Numba, median of ``repeat`` fresh runs over all
    fixes) vs their plain-Python references on the first ``ref_fixes``, whose events must agree."""
    data, fc, rings = position_data(devices, fixes, zones)
    sub = data.take(slice(0, ref_fixes))
    cols = (sub.device.tolist(), sub.ts.tolist(), sub.lat.tolist(), sub.lon.tolist())
    out = {}
    for label, (kind, params) in POSITION_RULES.items():
        params = {**params, ("allowed" if kind == "dwell" else "zones"): fc}

        def fresh() -> Processor:
            p = create(kind, label, params, capacity=devices)
            p.enabled[:devices] = True
            return p

        got = ref.as_tuples(fresh().process(sub))
        model = (ref.Geofence(set(range(devices)), rings, params["mode"]) if kind == "geofence" else
                 ref.Dwell(set(range(devices)), params["radius_m"], params["duration_s"] * 1000, rings))
        t0 = time.perf_counter()
        want = model.process(*cols)
        ref_s = time.perf_counter() - t0
        if not ref.same_events(got, want):
            raise AssertionError(f"{label}: Numba and the reference disagree on the first {ref_fixes} fixes")
        runs = []
        for _ in range(repeat):
            p = fresh()
            t0 = time.perf_counter()
            events = len(p.process(data))
            runs.append(time.perf_counter() - t0)
        rate = len(data) / statistics.median(runs)
        out[label] = {"fixes_per_s": rate, "events": events, "reference_fixes_per_s": ref_fixes / ref_s,
                      "ratio": rate / (ref_fixes / ref_s)}
    return {"devices": devices, "fixes": len(data), "zones": zones, "ref_fixes": ref_fixes, "rules": out}


def device_ids(n: int) -> list[str]:
    vendors, kinds = "ABCDEFGH", ("sewer", "bridge", "airq", "manhole", "streetlight", "flood")
    return [f"vendor{vendors[i % 8]}-{kinds[i // 8 % 6]}-{i:06d}" for i in range(n)]


def memory_mb(devices: int) -> dict[str, float]:
    """Traced MB for a SlotRegistry of ``devices`` ids and the standard set's state for as many slots
    (the series rules' state in one record per slot, as the pipeline holds it; the peak while the
    records are built from the rules' own arrays is reported too)."""
    gc.collect()
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    reg = SlotRegistry()
    for key in device_ids(devices):
        reg.add(key)
    mid = tracemalloc.get_traced_memory()[0]
    procs = _standard_set(devices)
    group = FusedRules([p for p in procs.values() if fusable(p)])
    end, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    state = group.nbytes + sum(p.nbytes for p in procs.values() if p.home is None)
    del reg, procs, group
    return {"registry_mb": (mid - base) / 1e6, "state_mb": (end - mid) / 1e6, "state_arrays_mb": state / 1e6,
            "total_mb": (end - base) / 1e6, "peak_mb": (peak - base) / 1e6, "bytes_per_slot": state / devices}


def measure(devices: int = 100_000, readings: int = 2_000_000, batch: int = 100_000, repeat: int = 5,
            ref_readings: int = 100_000, memory_devices: int = 1_000_000, seed: int = 1,
            position_fixes: int = 200_000, position_zones: int = 50, position_ref_fixes: int = 2_000,
            dedup_window_s: float = 86400.0, dedup_max_mb: float = 64.0) -> dict[str, Any]:
    """All figures of one benchmark run, as a JSON-ready dict (pinning to one CPU is main's job)."""
    data = generate(devices, readings, seed)
    nb = time_numba(data, devices, batch, repeat)
    n = len(data)
    ref_rows = min(ref_readings, n)
    ref_s = time_reference(data, ref_rows)
    pd_s = statistics.median(time_pandas(data) for _ in range(max(1, min(repeat, 2))))
    numba_rate = n / nb["seconds"]
    return {
        "devices": devices, "readings": n, "batch": batch, "repeat": repeat, "rules": list(STANDARD),
        "numba": {"seconds": nb["seconds"], "readings_per_s": numba_rate, "events": nb["events"],
                  "per_part_ms": {k: v * 1e3 for k, v in nb["per_part_s"].items()},
                  "separate": {"seconds": nb["separate"]["seconds"], "readings_per_s": n / nb["separate"]["seconds"],
                               "per_part_ms": {k: v * 1e3 for k, v in nb["separate"]["per_part_s"].items()}},
                  "fused_vs_separate": nb["fused_vs_separate"]},
        "reference": {"readings": ref_rows, "seconds": ref_s, "readings_per_s": ref_rows / ref_s,
                      "ratio": numba_rate / (ref_rows / ref_s)},
        "pandas": {"seconds": pd_s, "readings_per_s": n / pd_s, "ratio": numba_rate / (n / pd_s)},
        "memory": {"devices": memory_devices, **memory_mb(memory_devices)},
        "position": (time_position(max(1, position_fixes // 200), position_fixes, position_zones,
                                   min(position_ref_fixes, position_fixes), max(1, min(repeat, 3)))
                     if position_fixes else None),
        "dedup": time_dedup(data, devices, batch, repeat, dedup_window_s, dedup_max_mb) if dedup_window_s > 0 else None,
        "targets": TARGETS,
    }


def table(r: dict[str, Any]) -> str:
    def ok(good: bool) -> str:
        return "ok" if good else "MISSED"

    nb, rf, pdx, mem, tg = r["numba"], r["reference"], r["pandas"], r["memory"], r["targets"]
    lines = [
        f"standard sensor set ({', '.join(r['rules'])}): {r['devices']:,} series, {r['readings']:,} readings, "
        f"batches of {r['batch']:,}, median of {r['repeat']}, one core",
        f"{'measure':<28}{'result':>22}{'target':>14}  status",
        f"{'numba readings/s':<28}{nb['readings_per_s']:>22,.0f}{'>= ' + format(tg['readings_per_s'] / 1e6, '.0f') + ' M':>14}"
        f"  {ok(nb['readings_per_s'] >= tg['readings_per_s'])}",
        f"{'  (seconds, events)':<28}{nb['seconds']:>15.3f} s {nb['events']:>5,}",
        *(f"{'  ' + k + ' ms':<28}{v:>22.1f}" for k, v in nb["per_part_ms"].items()),
        f"{'one kernel per rule r/s':<28}{nb['separate']['readings_per_s']:>22,.0f}",
        *(f"{'  ' + k + ' ms':<28}{v:>22.1f}" for k, v in nb["separate"]["per_part_ms"].items()),
        f"{'one pass vs one per rule':<28}{nb['fused_vs_separate']:>21.2f}x{'':>14}  (median of run pairs)",
        f"{'reference readings/s':<28}{rf['readings_per_s']:>22,.0f}{'':>14}  ({rf['readings']:,} readings)",
        f"{'speed-up vs reference':<28}{rf['ratio']:>21.0f}x{'>= ' + format(tg['vs_reference'], '.0f') + 'x':>14}"
        f"  {ok(rf['ratio'] >= tg['vs_reference'])}",
        f"{'pandas readings/s':<28}{pdx['readings_per_s']:>22,.0f}",
        f"{'speed-up vs pandas':<28}{pdx['ratio']:>21.1f}x{'>= ' + format(tg['vs_pandas'], '.0f') + 'x':>14}"
        f"  {ok(pdx['ratio'] >= tg['vs_pandas'])}",
        f"{'memory, ' + format(mem['devices'], ',') + ' devices':<28}{mem['total_mb']:>19.1f} MB"
        f"{'<= ' + format(tg['memory_mb'], '.0f') + ' MB':>14}  {ok(mem['total_mb'] <= tg['memory_mb'])}",
        f"{'  slot registry':<28}{mem['registry_mb']:>19.1f} MB",
        f"{'  rule state':<28}{mem['state_mb']:>19.1f} MB  ({mem['bytes_per_slot']:.0f} B/slot)",
        f"{'  peak while building':<28}{mem['peak_mb']:>19.1f} MB",
    ]
    dd = r.get("dedup")
    if dd:
        a, b = dd["ring_only"], dd["window"]
        lines += [
            f"duplicate filter + standard set (window {dd['window_s']:g} s, {dd['max_mb']:g} MB), median of run pairs",
            f"{'  ring only readings/s':<28}{a['readings_per_s']:>22,.0f}  (filter alone {a['filter_readings_per_s']:,.0f}/s)",
            f"{'  ring + window readings/s':<28}{b['readings_per_s']:>22,.0f}  (filter alone {b['filter_readings_per_s']:,.0f}/s)",
            f"{'  cost with window':<28}{dd['cost_ratio']:>21.2f}x  (time, ring + window / ring only)",
        ]
    pos = r.get("position")
    if pos:
        lines.append(f"position rules: {pos['fixes']:,} fixes of {pos['devices']:,} vehicles, {pos['zones']} zones "
                     f"(reference on the first {pos['ref_fixes']:,}, same events)")
        for label, x in pos["rules"].items():
            lines.append(f"{'  ' + label:<28}{x['fixes_per_s']:>18,.0f} /s  vs reference {x['reference_fixes_per_s']:,.0f} /s"
                         f" = {x['ratio']:,.0f}x")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="gridwatch.benchmarks.processors", description=__doc__.split("\n\n")[0])
    ap.add_argument("--devices", type=int, default=100_000, help="sensor series (one per device)")
    ap.add_argument("--readings", type=int, default=2_000_000, help="readings in the generated stream")
    ap.add_argument("--batch", type=int, default=100_000, help="rows per batch")
    ap.add_argument("--repeat", type=int, default=5, help="timed repeats (median reported)")
    ap.add_argument("--ref-readings", type=int, default=100_000, help="readings the pure-Python reference runs on")
    ap.add_argument("--memory-devices", type=int, default=1_000_000, help="devices for the memory measurement")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--position-fixes", type=int, default=200_000, help="GPS fixes for the geofence/dwell part (0: skip)")
    ap.add_argument("--position-zones", type=int, default=50, help="zones of the geofence/dwell part")
    ap.add_argument("--position-ref-fixes", type=int, default=2_000, help="fixes the plain-Python references run on")
    ap.add_argument("--dedup-window-s", type=float, default=86400.0, help="duplicate window of the filter-cost part (0: skip)")
    ap.add_argument("--dedup-max-mb", type=float, default=64.0, help="memory bound of that window")
    ap.add_argument("--json", metavar="PATH", help="also write the figures as JSON")
    a = ap.parse_args(argv)
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    r = measure(a.devices, a.readings, a.batch, a.repeat, a.ref_readings, a.memory_devices, a.seed,
                a.position_fixes, a.position_zones, a.position_ref_fixes, a.dedup_window_s, a.dedup_max_mb)
    print(table(r))
    if a.json:
        with open(a.json, "w", encoding="utf-8") as f:
            json.dump(r, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
