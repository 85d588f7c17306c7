"""Which grid cell a source belongs to: city / county / town / grid.

Order: the static mapping in ``[regions.static]`` (or a device's own ``region``), then the
GeoJSON grid cells (point in polygon on the device's installed position, or on the position of
the fix that raised a moving-device warning), then ``[regions].default``.
GeoJSON cell properties name ``city``, ``county``, ``town`` and ``grid`` (or ``name``).
"""
from __future__ import annotations

import numpy as np

from gridwatch.records import RegionPath


def parse_path(path: str) -> RegionPath:
    parts = [p.strip() for p in path.strip("/").split("/")] if path else []
    if len(parts) > 4:
        raise ValueError(f"region path {path!r} has more than 4 parts (city/county/town/grid)")
    return RegionPath(*(parts + [""] * (4 - len(parts))))


class RegionMapper:
    def __init__(self, default: str = "", static: dict[str, str] | None = None, geojson=None) -> None:
        self.default = parse_path(default)
        self.static = {k: parse_path(v) for k, v in (static or {}).items()}
        self.cells = None
        self._cell_paths: list[RegionPath] = []
        if geojson is not None:
            from gridwatch.streams.zones import Polygons

            self.cells = Polygons.from_geojson(geojson)
            for props in self.cells.properties:
                self._cell_paths.append(RegionPath(str(props.get("city", self.default.city)), str(props.get("county", self.default.county)),
                                                   str(props.get("town", self.default.town)), str(props.get("grid", props.get("name", "")))))
        self._by_device: dict[str, RegionPath] = {}

    def for_point(self, lat: float, lon: float) -> RegionPath | None:
        if self.cells is None or lat != lat or lon != lon:
            return None
        i = int(self.cells.locate(np.array([lat], np.float64), np.array([lon], np.float64))[0])
        return self._cell_paths[i] if i >= 0 else None

    def for_device(self, device_id: str, region: str | None = None, lat: float | None = None,
                   lon: float | None = None) -> RegionPath:
        r = self._by_device.get(device_id)
        if r is None:
            r = self.static.get(device_id)
            if r is None and region:
                r = parse_path(region)
            if r is None and lat is not None and lon is not None:
                r = self.for_point(lat, lon)
            r = r or self.default
            self._by_device[device_id] = r
        return r
