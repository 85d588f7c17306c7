"""Numba code for scalar sensor rules (SensorBatch rows, state indexed by slot): the per-reading
steps of the series rules (threshold, rate of change, z-score, flatline; see "per-reading steps"
below, run over batches by the kernels :mod:`gridwatch.streams.fused` generates) and the kernels
of the device-keyed offline rule.

Every kernel is a pure function of (batch arrays, state arrays, enabled mask, scalar
parameters, output arrays): it walks the rows in arrival order, updates the state arrays in
place and writes one output row per state transition, returning how many it wrote. A row whose
slot is outside the state arrays or not enabled is skipped without touching any state. Each
row causes at most one transition, so output arrays as long as the batch always suffice.

Shorter output arrays are allowed: a kernel stops right after the row (or, for a timer scan,
the slot) whose transition filled them, with that row's state fully updated, and returns
``n == len(out_row)``. The caller then continues with the rows after ``out_row[n - 1]`` (a
timer scan: the slots after ``out_slot[n - 1]``) into fresh output arrays. So callers can start
with small buffers, since transitions are rare, and grow only when a batch is eventful.

State arrays may be strided views (e.g. the fields of one structured per-slot record array,
which keeps all of a slot's state in one cache line); the same code is compiled for both.

Output arrays are, in order, the columns of :class:`~gridwatch.streams.processor.Events`:
``out_row, out_slot, out_kind, out_ts, out_value, out_aux``; kernels leave ``out_aux`` as
allocated (-1) unless said otherwise.

Time is int64 epoch milliseconds; durations arrive already converted to milliseconds.
``NO_TS`` marks "no timestamp yet" in state arrays. Divisions follow IEEE rules (no Python
ZeroDivisionError): the processors' parameter checks keep divisors positive.
"""
from __future__ import annotations

import math

import numpy as np
from numba import njit

NO_TS = np.iinfo(np.int64).min
RAISE = 1
CLEAR = -1

_JIT = dict(cache=True, nogil=True, error_model="numpy", boundscheck=False)
# Steps take state arrays and are called once per reading; no reference counting in them or in
# the loops that call them (arrays are only borrowed there, never created or kept), where the
# increments and decrements Numba would insert per call cost more than the rule itself.
_STEP_JIT = dict(_JIT, _nrt=False)


@njit(**_STEP_JIT)
def _emit(n, row, slot, kind, ts, value, out_row, out_slot, out_kind, out_ts, out_value):
    out_row[n] = row
    out_slot[n] = slot
    out_kind[n] = kind
    out_ts[n] = ts
    out_value[n] = value
    return n + 1


# --- per-reading steps --------------------------------------------------------------------
# Each series rule is one *step*: (slot, reading ts, reading value, the rule's state arrays,
# parameters) -> (event kind 0/RAISE/CLEAR, event value), updating the slot's state in place
# (and only what changes). The kernels :mod:`gridwatch.streams.fused` generates call them per
# reading (with strided views of their per-slot records), for one rule or several in one pass.

@njit(**_STEP_JIT)
def threshold_step(s, t, v, active, since,
                   has_above, above, clear_above, has_below, below, clear_below, min_dur_ms):
    """Level threshold with hysteresis and a minimum duration.

    Raise when ``value >= above`` (or ``value <= below``) has held continuously for
    ``min_dur_ms`` of event time; while raised, clear once ``value < clear_above`` (and
    ``value > clear_below`` when a lower bound is set). State: ``active`` (int8) and ``since``
    (int64, start of the current run of the raise condition, NO_TS when it is not holding).
    Event value: the reading.
    """
    if active[s]:
        if (not has_above or v < clear_above) and (not has_below or v > clear_below):
            active[s] = 0
            since[s] = NO_TS
            return CLEAR, v
    elif (has_above and v >= above) or (has_below and v <= below):
        if since[s] == NO_TS:
            since[s] = t
        if t - since[s] >= min_dur_ms:
            active[s] = 1
            return RAISE, v
    elif since[s] != NO_TS:
        since[s] = NO_TS
    return 0, v


@njit(**_STEP_JIT)
def rate_of_change_step(s, t, v, last_ts, last_value, active,
                        max_per_s, clear_per_s, direction):
    """Rate of change between successive readings of a series, in units per second.

    ``direction``: 1 = rising only, -1 = falling only, 0 = both (absolute rate). Raise when
    the (signed for one direction) rate exceeds ``max_per_s``; clear when it drops below
    ``clear_per_s``. A reading not later than the previous one (Δt <= 0) is ignored entirely.
    State: ``last_ts`` (NO_TS before the first reading), ``last_value``, ``active``.
    Event value: the rate (units per second, signed).
    """
    prev_t = last_ts[s]
    if prev_t == NO_TS:
        last_ts[s] = t
        last_value[s] = v
        return 0, 0.0
    dt = t - prev_t
    if dt <= 0:
        return 0, 0.0
    rate = (v - last_value[s]) * 1000.0 / dt
    last_ts[s] = t
    last_value[s] = v
    if direction > 0:
        r = rate
    elif direction < 0:
        r = -rate
    else:
        r = abs(rate)
    if active[s]:
        if r < clear_per_s:
            active[s] = 0
            return CLEAR, rate
    elif r > max_per_s:
        active[s] = 1
        return RAISE, rate
    return 0, rate


@njit(**_STEP_JIT)
def zscore_step(s, t, v, mean, var, count, active,
                alpha, warmup, z_raise, z_clear, min_std, freeze):
    """EWMA z-score.

    The baseline is an exponentially weighted mean and variance (``mean += alpha*d``,
    ``var = (1-alpha)*(var + alpha*d*d)`` with ``d = value - mean``), seeded by the first
    reading. The first ``warmup`` readings only build the baseline; afterwards
    ``z = (value - mean) / max(sqrt(var), min_std)`` is scored *before* the reading updates
    the baseline. Raise when ``|z| >= z_raise``, clear when ``|z| < z_clear``.

    Anomalous readings: with ``freeze`` set, a reading with ``|z| >= z_raise`` does *not*
    update the baseline, so a sustained excursion stays visible instead of being absorbed
    into the mean (the price: a permanent level shift stays raised until the level returns).
    Without ``freeze`` every reading updates the baseline and a shift clears by itself.
    State: ``mean``, ``var``, ``count`` (int32, capped at warmup), ``active``.
    Event value: z.
    """
    c = count[s]
    if c == 0:
        mean[s] = v
        var[s] = 0.0
        count[s] = 1
        return 0, 0.0
    m = mean[s]
    q = var[s]
    kind = 0
    update = True
    if c >= warmup:
        z = (v - m) / max(math.sqrt(q), min_std)
        az = abs(z)
        if active[s]:
            if az < z_clear:
                active[s] = 0
                kind = CLEAR
        elif az >= z_raise:
            active[s] = 1
            kind = RAISE
        update = not (freeze and az >= z_raise)
    else:
        z = 0.0
        count[s] = c + 1
    if update:
        d = v - m
        mean[s] = m + alpha * d
        var[s] = (1.0 - alpha) * (q + alpha * d * d)
    return kind, z


@njit(**_STEP_JIT)
def flatline_step(s, t, v, run_value, run_ts, active,
                  epsilon, dur_ms):
    """Stuck sensor: the value stays within ``epsilon`` of the run's first value.

    A run starts at a reading (``run_value``, ``run_ts``); each following reading within
    ``epsilon`` of ``run_value`` extends it, and once ``ts - run_ts >= dur_ms`` it raises.
    The first reading outside ``epsilon`` starts a new run and clears a raised series.
    Event value: the reading (the stuck value on raise, the new value on clear).
    """
    r0 = run_ts[s]
    if r0 == NO_TS:
        run_ts[s] = t
        run_value[s] = v
    elif abs(v - run_value[s]) <= epsilon:
        if not active[s] and t - r0 >= dur_ms:
            active[s] = 1
            return RAISE, v
    else:
        run_ts[s] = t
        run_value[s] = v
        if active[s]:
            active[s] = 0
            return CLEAR, v
    return 0, v


@njit(**_JIT)
def offline_seen(device, ts, enabled,
                 last_seen, offline,
                 out_row, out_slot, out_kind, out_ts, out_value, out_aux):
    """Readings per *device* slot: record the latest ts; a reading from an offline device clears it.

    Event value (clear): how long the device had been silent, in seconds (reading ts minus
    last seen; negative for a reading older than the last one seen).
    """
    n = 0
    full = out_row.shape[0]
    cap = enabled.shape[0]
    for i in range(device.shape[0]):
        s = device[i]
        if s < 0 or s >= cap or not enabled[s]:
            continue
        t = ts[i]
        seen = last_seen[s]
        if t > seen:
            last_seen[s] = t
        if offline[s]:
            offline[s] = 0
            n = _emit(n, i, s, CLEAR, t, (t - seen) / 1000.0, out_row, out_slot, out_kind, out_ts, out_value)
            if n == full:
                break
    return n


@njit(**_JIT)
def offline_tick(now_ms, timeout_ms, enabled,
                 last_seen, offline,
                 out_row, out_slot, out_kind, out_ts, out_value, out_aux):
    """Timer scan: raise for every enabled, seen, online device silent for more than ``timeout_ms``.

    Devices never seen (``last_seen == NO_TS``) are not offline. Event row -1, ts ``now_ms``,
    value: seconds since last seen. At most one event per slot.
    """
    return offline_scan(now_ms, timeout_ms, enabled, last_seen, offline, np.empty(1, np.int64),
                        out_row, out_slot, out_kind, out_ts, out_value, out_aux)


@njit(**_JIT)
def offline_scan(now_ms, timeout_ms, enabled,
                 last_seen, offline, oldest,
                 out_row, out_slot, out_kind, out_ts, out_value, out_aux):
    """:func:`offline_tick` that also sets ``oldest[0]`` to the earliest ``last_seen`` among the
    scanned slots still seen and online afterwards, enabled or not (int64 max when there are
    none): until ``now - oldest[0] > timeout_ms`` no later tick can raise any of them."""
    n = 0
    full = out_row.shape[0]
    lo = np.iinfo(np.int64).max
    for s in range(enabled.shape[0]):
        seen = last_seen[s]
        if offline[s] or seen == NO_TS:
            continue
        if enabled[s] and now_ms - seen > timeout_ms:
            offline[s] = 1
            n = _emit(n, -1, s, RAISE, now_ms, (now_ms - seen) / 1000.0,
                      out_row, out_slot, out_kind, out_ts, out_value)
            if n == full:
                break
        elif seen < lo:
            lo = seen
    oldest[0] = lo
    return n
