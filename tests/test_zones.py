"""Zones: GeoJSON packing, geometry validation, and locate() against the reference PIP."""
from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gridwatch.streams.kernels import reference as ref
from gridwatch.streams.zones import Polygons


def fc(*geoms):
    return {"type": "FeatureCollection",
            "features": [{"type": "Feature", "properties": {"id": i}, "geometry": g} for i, g in enumerate(geoms)]}


def poly(*rings):
    return {"type": "Polygon", "coordinates": [list(map(list, r)) for r in rings]}


OUTER = [(0, 0), (10, 0), (10, 10), (0, 10), (0, 0)]
HOLE = [(4, 4), (6, 4), (6, 6), (4, 6), (4, 4)]
CONCAVE = [(20, 0), (30, 0), (30, 10), (25, 3), (20, 10), (20, 0)]  # a "U"-ish notch from the top
MULTI = {"type": "MultiPolygon", "coordinates": [[[[40, 0], [42, 0], [42, 2], [40, 2], [40, 0]]],
                                                 [[[44, 0], [46, 0], [46, 2], [44, 2], [44, 0]],
                                                  [[44.5, 0.5], [45.5, 0.5], [45.5, 1.5], [44.5, 1.5], [44.5, 0.5]]]]}
ZONES = fc(poly(OUTER, HOLE), poly(CONCAVE), MULTI)


def test_polygon_with_hole():
    p = Polygons.from_geojson(fc(poly(OUTER, HOLE)))
    lat = np.array([1.0, 5.0, 7.0, 11.0, 5.0])
    lon = np.array([1.0, 5.0, 5.0, 5.0, 3.9])
    assert p.locate(lat, lon).tolist() == [0, -1, 0, -1, 0]


def test_packing_layout_and_properties():
    p = Polygons.from_geojson(ZONES)
    assert len(p) == 3
    assert p.zone_ring.tolist() == [0, 2, 3, 6]  # rings per zone: 2, 1, 3
    assert p.ring_start[-1] == p.xs.shape[0] == p.ys.shape[0]
    assert p.bbox[1].tolist() == [20, 0, 30, 10]
    assert [d["id"] for d in p.properties] == [0, 1, 2]


def test_concave_and_multipolygon_with_hole():
    p = Polygons.from_geojson(ZONES)
    lat = np.array([8.0, 1.0, 1.0, 1.0, 1.0, 1.0])
    lon = np.array([25.0, 25.0, 41.0, 43.0, 44.2, 45.0])
    assert p.locate(lat, lon).tolist() == [-1, 1, 2, -1, 2, -1]


def test_from_file(tmp_path):
    f = tmp_path / "zones.geojson"
    f.write_text(json.dumps(ZONES))
    assert len(Polygons.from_geojson(f)) == 3
    assert len(Polygons.from_geojson(str(f))) == 3
    with pytest.raises(ValueError, match="cannot read"):
        Polygons.from_geojson(tmp_path / "missing.geojson")


@pytest.mark.parametrize("doc, msg", [
    ({"type": "Feature"}, "FeatureCollection"),
    ({"type": "FeatureCollection"}, "features"),
    (fc({"type": "Point", "coordinates": [1, 2]}), "feature 0: geometry type 'Point'"),
    (fc(poly([(0, 0), (1, 0), (0, 0)])), "feature 0 polygon 0 ring 0: a linear ring needs at least 4"),
    (fc(poly(OUTER), poly([(0, 0), (1, 0), (1, 1), (0, 1)])), "feature 1 polygon 0 ring 0: ring is not closed"),
    (fc(poly([(0, 0), (1, 0), (1, 100), (0, 0)])), "out of range"),
    (fc(poly([(0, 0), ("a", 0), (1, 1), (0, 0)])), "not numeric"),
    (fc({"type": "Polygon", "coordinates": []}), "feature 0 polygon 0: no rings"),
    (fc({"type": "MultiPolygon", "coordinates": []}), "empty MultiPolygon"),
    ({"type": "FeatureCollection", "features": [{"type": "Feature", "geometry": None}]}, "missing geometry"),
])
def test_bad_geometry_is_a_clear_value_error(doc, msg):
    with pytest.raises(ValueError, match=msg):
        Polygons.from_geojson(doc)


def test_locate_rejects_mismatched_arrays():
    with pytest.raises(ValueError):
        Polygons.from_geojson(ZONES).locate(np.zeros(2), np.zeros(3))


REF_ZONES = [[OUTER, HOLE], [CONCAVE], [r for part in MULTI["coordinates"] for r in
                                       [[tuple(p) for p in ring] for ring in part]]]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(-4, 96).map(lambda i: i / 2), st.integers(-4, 24).map(lambda i: i / 2)),
                max_size=50))
def test_locate_matches_reference(points):
    """Half-unit grid points hit vertices and edges often, the cases where PIP implementations differ."""
    p = Polygons.from_geojson(ZONES)
    lon = np.array([x for x, _ in points], np.float64)
    lat = np.array([y for _, y in points], np.float64)
    assert p.locate(lat, lon).tolist() == [ref.locate(x, y, REF_ZONES) for x, y in points]
