"""Numba kernels for position rules (PositionBatch rows, state indexed by device slot).

Same contract as :mod:`.sensor`: pure functions of (batch arrays, state arrays, enabled mask,
scalar parameters, output arrays) that walk rows in arrival order and return the number of
transitions written. Rows of slots outside the state arrays or not enabled are skipped.

Every position kernel keeps the ts of the device's latest fix (``last_ts``) and ignores a
*stale* fix (ts older than that) entirely, so a late GPS replay cannot flap a fence.

Polygons arrive packed (see :class:`~gridwatch.streams.zones.Polygons`):
``zone_ring`` (int64, zones+1): zone z owns rings ``zone_ring[z]:zone_ring[z+1]``;
``ring_start`` (int64, rings+1): ring r owns vertices ``ring_start[r]:ring_start[r+1]``;
``xs``/``ys`` (float64): vertex lon/lat; ``bbox`` (float64, zones x 4): min lon, min lat,
max lon, max lat. A point is inside a zone by the even-odd rule over *all* the zone's rings,
which handles holes and multipolygons (non-overlapping parts) alike.
"""
from __future__ import annotations

import math

import numpy as np
from numba import njit

from .sensor import CLEAR, NO_TS, RAISE, _emit

# No reference counting: these kernels only borrow arrays, and the increments and decrements
# Numba would put around every in_zone call (five arrays, per point and zone) cost ~40x the
# point-in-polygon test itself (locate: 1 M points x 50 zones, 6.07 s with, 0.14 s without).
_JIT = dict(cache=True, nogil=True, _nrt=False)

EARTH_RADIUS_M = 6371008.8


@njit(**_JIT)
def haversine_m(lat1, lon1, lat2, lon2):
    """Great-circle distance in metres between two WGS84 points given in degrees."""
    p1 = math.radians(lat1)
    p2 = math.radians(lat2)
    dp = p2 - p1
    dl = math.radians(lon2 - lon1)
    a = math.sin(dp * 0.5) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl * 0.5) ** 2
    return 2.0 * EARTH_RADIUS_M * math.asin(math.sqrt(min(a, 1.0)))


@njit(**_JIT)
def in_zone(z, x, y, zone_ring, ring_start, xs, ys, bbox):
    """Whether point (x=lon, y=lat) lies in zone ``z`` (bbox prefilter, then even-odd crossings)."""
    if x < bbox[z, 0] or y < bbox[z, 1] or x > bbox[z, 2] or y > bbox[z, 3]:
        return False
    inside = False
    for r in range(zone_ring[z], zone_ring[z + 1]):
        a = ring_start[r]
        b = ring_start[r + 1]
        j = b - 1
        for k in range(a, b):
            yk = ys[k]
            yj = ys[j]
            if (yk > y) != (yj > y):
                if x < (xs[j] - xs[k]) * (y - yk) / (yj - yk) + xs[k]:
                    inside = not inside
            j = k
    return inside


@njit(**_JIT)
def first_zone(x, y, zone_ring, ring_start, xs, ys, bbox):
    """Index of the first zone containing the point, or -1."""
    for z in range(bbox.shape[0]):
        if in_zone(z, x, y, zone_ring, ring_start, xs, ys, bbox):
            return z
    return -1


@njit(**_JIT)
def locate(lat, lon, zone_ring, ring_start, xs, ys, bbox, out):
    """``out[i]`` = first zone containing (lat[i], lon[i]), or -1."""
    for i in range(lat.shape[0]):
        out[i] = first_zone(lon[i], lat[i], zone_ring, ring_start, xs, ys, bbox)


@njit(**_JIT)
def speeding(device, ts, lat, lon, speed_kmh, enabled,
             last_ts, last_lat, last_lon, since, active,
             limit_kmh, clear_kmh, min_dur_ms,
             out_row, out_slot, out_kind, out_ts, out_value, out_aux):
    """Speed above ``limit_kmh`` for ``min_dur_ms`` raises; speed <= ``clear_kmh`` clears.

    Speed is the reported ``speed_kmh``, or when that is NaN the haversine distance from the
    device's previous fix over the time between them (unknown for the first fix or Δt = 0:
    such a fix only updates the previous-fix state). State: previous fix (``last_*``),
    ``since`` (start of the current over-limit run, NO_TS when not over), ``active``.
    Event value: the speed in km/h.
    """
    n = 0
    cap = enabled.shape[0]
    for i in range(device.shape[0]):
        s = device[i]
        if s < 0 or s >= cap or not enabled[s]:
            continue
        t = ts[i]
        if t < last_ts[s]:
            continue
        v = speed_kmh[i]
        if math.isnan(v) and last_ts[s] != NO_TS and t > last_ts[s]:
            v = haversine_m(last_lat[s], last_lon[s], lat[i], lon[i]) * 3600.0 / (t - last_ts[s])
        last_ts[s] = t
        last_lat[s] = lat[i]
        last_lon[s] = lon[i]
        if math.isnan(v):
            continue
        if active[s]:
            if v <= clear_kmh:
                active[s] = 0
                since[s] = NO_TS
                n = _emit(n, i, s, CLEAR, t, v, out_row, out_slot, out_kind, out_ts, out_value)
        elif v > limit_kmh:
            if since[s] == NO_TS:
                since[s] = t
            if t - since[s] >= min_dur_ms:
                active[s] = 1
                n = _emit(n, i, s, RAISE, t, v, out_row, out_slot, out_kind, out_ts, out_value)
        else:
            since[s] = NO_TS
    return n


@njit(**_JIT)
def geofence_forbidden(start, device, ts, lat, lon, enabled,
                       last_ts, inside,
                       zone_ring, ring_start, xs, ys, bbox,
                       out_row, out_slot, out_kind, out_ts, out_value, out_aux):
    """Forbidden zones: entering zone z raises (aux=z), leaving it clears (aux=z).

    ``inside`` is int8 (slots x zones). One fix can cause one transition per zone, so the
    kernel starts at row ``start`` and stops before a row that might not fit in the output;
    it returns ``(events written, next row)`` and the caller resumes with fresh buffers.
    Event value: NaN.
    """
    n = 0
    cap = enabled.shape[0]
    nz = bbox.shape[0]
    room = out_row.shape[0]
    i = start
    while i < device.shape[0]:
        if n + nz > room:
            break
        s = device[i]
        t = ts[i]
        if s >= 0 and s < cap and enabled[s] and t >= last_ts[s]:
            last_ts[s] = t
            for z in range(nz):
                now_in = in_zone(z, lon[i], lat[i], zone_ring, ring_start, xs, ys, bbox)
                if now_in != (inside[s, z] != 0):
                    inside[s, z] = 1 if now_in else 0
                    out_aux[n] = z
                    n = _emit(n, i, s, RAISE if now_in else CLEAR, t, np.nan,
                              out_row, out_slot, out_kind, out_ts, out_value)
        i += 1
    return n, i


@njit(**_JIT)
def geofence_allowed(device, ts, lat, lon, enabled,
                     last_ts, outside, last_zone,
                     zone_ring, ring_start, xs, ys, bbox,
                     out_row, out_slot, out_kind, out_ts, out_value, out_aux):
    """Allowed zones (a corridor): a fix outside every zone raises, re-entering any zone clears.

    State: ``outside`` (int8) and ``last_zone`` (int32, the zone of the latest fix that was
    inside one, -1 before any). Event aux: on raise the zone the device left (``last_zone``,
    -1 if it was never inside), on clear the zone it entered. Event value: NaN.
    """
    n = 0
    cap = enabled.shape[0]
    for i in range(device.shape[0]):
        s = device[i]
        if s < 0 or s >= cap or not enabled[s]:
            continue
        t = ts[i]
        if t < last_ts[s]:
            continue
        last_ts[s] = t
        z = first_zone(lon[i], lat[i], zone_ring, ring_start, xs, ys, bbox)
        if z < 0:
            if not outside[s]:
                outside[s] = 1
                out_aux[n] = last_zone[s]
                n = _emit(n, i, s, RAISE, t, np.nan, out_row, out_slot, out_kind, out_ts, out_value)
        else:
            last_zone[s] = z
            if outside[s]:
                outside[s] = 0
                out_aux[n] = z
                n = _emit(n, i, s, CLEAR, t, np.nan, out_row, out_slot, out_kind, out_ts, out_value)
    return n


@njit(**_JIT)
def dwell(device, ts, lat, lon, enabled,
          last_ts, anchor_lat, anchor_lon, anchor_ts, anchor_allowed, active,
          radius_m, dur_ms,
          zone_ring, ring_start, xs, ys, bbox,
          out_row, out_slot, out_kind, out_ts, out_value, out_aux):
    """Dwell: a device staying within ``radius_m`` of an anchor for more than ``dur_ms``.

    The first fix sets the anchor (position + ts); a fix farther than ``radius_m`` from the
    anchor moves the anchor there (clearing a raised device). A fix within the radius raises
    once ``ts - anchor_ts > dur_ms``, unless the anchor lies in one of the allowed zones
    (whether it does is decided once, when the anchor is set: ``anchor_allowed``).
    Event value: the dwell time in seconds (ts minus anchor ts).
    """
    n = 0
    cap = enabled.shape[0]
    for i in range(device.shape[0]):
        s = device[i]
        if s < 0 or s >= cap or not enabled[s]:
            continue
        t = ts[i]
        if t < last_ts[s]:
            continue
        last_ts[s] = t
        if anchor_ts[s] != NO_TS and haversine_m(anchor_lat[s], anchor_lon[s], lat[i], lon[i]) <= radius_m:
            if not active[s] and not anchor_allowed[s] and t - anchor_ts[s] > dur_ms:
                active[s] = 1
                n = _emit(n, i, s, RAISE, t, (t - anchor_ts[s]) / 1000.0,
                          out_row, out_slot, out_kind, out_ts, out_value)
            continue
        if active[s]:
            active[s] = 0
            n = _emit(n, i, s, CLEAR, t, (t - anchor_ts[s]) / 1000.0,
                      out_row, out_slot, out_kind, out_ts, out_value)
        anchor_lat[s] = lat[i]
        anchor_lon[s] = lon[i]
        anchor_ts[s] = t
        anchor_allowed[s] = first_zone(lon[i], lat[i], zone_ring, ring_start, xs, ys, bbox) >= 0
    return n
