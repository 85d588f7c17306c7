"""Zones (geofences, depots, grid cells) packed for the point-in-polygon kernels.

A :class:`Polygons` holds one *zone* per GeoJSON Feature (Polygon or MultiPolygon) as flat
float64/int64 arrays the Numba kernels index directly; ``properties`` keeps each feature's
properties, in zone order. Zone indices are what position events carry in ``aux`` and what
:meth:`Polygons.locate` returns.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from .kernels import position as k


class Polygons:
    """Packed zones; see :mod:`gridwatch.streams.kernels.position` for the array layout."""

    __slots__ = ("zone_ring", "ring_start", "xs", "ys", "bbox", "properties")

    def __init__(self, zones: list[list[list[tuple[float, float]]]], properties: list[dict[str, Any]]) -> None:
        """``zones[z]`` is a list of rings (exterior and hole rings of all parts alike), each a list
        of (lon, lat) vertices; prefer :meth:`from_geojson`."""
        if len(zones) != len(properties):
            raise ValueError("one properties dict per zone is required")
        rings = [ring for zone in zones for ring in zone]
        self.zone_ring = np.cumsum([0] + [len(zone) for zone in zones], dtype=np.int64)
        self.ring_start = np.cumsum([0] + [len(r) for r in rings], dtype=np.int64)
        pts = np.array([p for r in rings for p in r], dtype=np.float64).reshape(-1, 2)
        self.xs = np.ascontiguousarray(pts[:, 0])
        self.ys = np.ascontiguousarray(pts[:, 1])
        self.bbox = np.empty((len(zones), 4), np.float64)
        for z in range(len(zones)):
            a, b = self.ring_start[self.zone_ring[z]], self.ring_start[self.zone_ring[z + 1]]
            self.bbox[z] = self.xs[a:b].min(), self.ys[a:b].min(), self.xs[a:b].max(), self.ys[a:b].max()
        self.properties = list(properties)

    def __len__(self) -> int:
        return int(self.bbox.shape[0])

    @property
    def arrays(self) -> tuple[np.ndarray, ...]:
        """(zone_ring, ring_start, xs, ys, bbox): the kernel arguments, in order."""
        return self.zone_ring, self.ring_start, self.xs, self.ys, self.bbox

    @classmethod
    def empty(cls) -> "Polygons":
        return cls([], [])

    @classmethod
    def from_geojson(cls, src: dict[str, Any] | str | Path) -> "Polygons":
        """Build from a FeatureCollection given inline (dict) or as a file path.

        Raises ValueError naming the feature (and ring) for anything that is not a valid
        Polygon/MultiPolygon: wrong type, fewer than 4 positions, unclosed ring, non-finite
        or out-of-range coordinates.
        """
        if isinstance(src, (str, Path)):
            try:
                doc = json.loads(Path(src).read_text(encoding="utf-8"))
            except (OSError, json.JSONDecodeError) as e:
                raise ValueError(f"cannot read GeoJSON zones from {str(src)!r}: {e}") from None
        else:
            doc = src
        if not isinstance(doc, dict) or doc.get("type") != "FeatureCollection":
            raise ValueError("zones must be a GeoJSON FeatureCollection")
        features = doc.get("features")
        if not isinstance(features, list):
            raise ValueError("FeatureCollection has no 'features' list")
        zones, props = [], []
        for f, feat in enumerate(features):
            geom = feat.get("geometry") if isinstance(feat, dict) else None
            if not isinstance(geom, dict):
                raise ValueError(f"feature {f}: missing geometry")
            gtype, coords = geom.get("type"), geom.get("coordinates")
            if gtype == "Polygon":
                parts = [coords]
            elif gtype == "MultiPolygon":
                parts = coords
            else:
                raise ValueError(f"feature {f}: geometry type {gtype!r} is not Polygon or MultiPolygon")
            if not isinstance(parts, list) or not parts:
                raise ValueError(f"feature {f}: empty {gtype} coordinates")
            rings = []
            for p, part in enumerate(parts):
                if not isinstance(part, list) or not part:
                    raise ValueError(f"feature {f} polygon {p}: no rings")
                rings.extend(_ring(ring, f"feature {f} polygon {p} ring {r}") for r, ring in enumerate(part))
            zones.append(rings)
            props.append(dict(feat.get("properties") or {}))
        return cls(zones, props)

    def locate(self, lat: np.ndarray, lon: np.ndarray) -> np.ndarray:
        """int32 index of the first zone containing each point, -1 where none does."""
        lat = np.ascontiguousarray(lat, dtype=np.float64)
        lon = np.ascontiguousarray(lon, dtype=np.float64)
        if lat.shape != lon.shape or lat.ndim != 1:
            raise ValueError("lat and lon must be 1-D arrays of the same length")
        out = np.empty(lat.shape[0], np.int32)
        k.locate(lat, lon, *self.arrays, out)
        return out


def _ring(ring: Any, where: str) -> list[tuple[float, float]]:
    if not isinstance(ring, list) or len(ring) < 4:
        raise ValueError(f"{where}: a linear ring needs at least 4 positions")
    pts = []
    for pos in ring:
        if not isinstance(pos, (list, tuple)) or len(pos) < 2:
            raise ValueError(f"{where}: position {pos!r} is not [lon, lat]")
        try:
            lon, lat = float(pos[0]), float(pos[1])
        except (TypeError, ValueError):
            raise ValueError(f"{where}: position {pos!r} is not numeric") from None
        if not (math.isfinite(lon) and math.isfinite(lat)) or abs(lon) > 180 or abs(lat) > 90:
            raise ValueError(f"{where}: position {pos!r} is out of range (lon ±180, lat ±90)")
        pts.append((lon, lat))
    if pts[0] != pts[-1]:
        raise ValueError(f"{where}: ring is not closed (first position != last)")
    return pts
