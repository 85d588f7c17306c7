"""A camera's operator-drawn polygons: motion masks and rule zones, in the camera's own pixels.

Corners are pixels of the camera's picture as the source delivers it (its native resolution:
``gridwatch camera snapshot`` writes one frame and prints its size, so the corners can be read
off in any image editor). A polygon whose corners all lie within 0..1 is read as fractions of the
width and height instead (the older way of writing them; no polygon drawn in pixels is that
small). Analysis works on smaller pictures (``analysis_width``, the motion gate's ~100 px frame,
the rules' working frames): the corners are turned into fractions of the picture once its size
is known (the camera's first frame, and again if a reconnect brings another size), and each
consumer rasterises them once at its own resolution. Nothing here runs per frame.

    polys = CameraPolygons("gate-3", masks=cam.masks, zones=zones)
    if polys.resolve(1920, 1080):          # the picture size changed: rasterise again
        gate.set_mask(polys.motion_mask())
"""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Annotated

import cv2
import numpy as np
from pydantic import AfterValidator, Field

if TYPE_CHECKING:
    from .base import Zone

log = logging.getLogger("gridwatch.detectors.zones")

# a corner coordinate: a number (not a string or a boolean), finite
Coord = Annotated[float, Field(strict=True, allow_inf_nan=False)]
Polygon = list[tuple[Coord, Coord]]


def check_polygon(v: list[tuple[float, float]], what: str = "polygon") -> list[tuple[float, float]]:
    """At least 3 corners, none negative (pixels count from the picture's top-left corner)."""
    if len(v) < 3:
        raise ValueError(f"a {what} needs at least 3 corners [x, y]")
    if any(x < -0.01 or y < -0.01 for x, y in v):
        raise ValueError(f"{what} corners are pixels of the camera's picture, counted from its top-left "
                         "corner (no negative values)")
    return v


# a mask: a polygon checked on its own (an error names its index)
MaskPolygon = Annotated[Polygon, AfterValidator(lambda v: check_polygon(v, "mask polygon"))]


def is_fraction(poly) -> bool:
    """Whether the corners are fractions of the picture (all within 0..1) rather than pixels."""
    return all(-0.01 <= x <= 1.01 and -0.01 <= y <= 1.01 for x, y in poly)


def to_fractions(poly, w: int, h: int) -> np.ndarray:
    """float64[N, 2]: the corners as fractions of a w x h picture (already fractions: unchanged)."""
    a = np.asarray(poly, np.float64)
    return a if is_fraction(poly) else a / [w, h]


def fraction_mask(polys, w: int, h: int, inside: int = 1, base: np.ndarray | None = None) -> np.ndarray:
    """uint8[h, w]: ``inside`` within any of the fractional polygons, ``1 - inside`` elsewhere (or
    drawn into ``base``)."""
    m = np.full((h, w), 1 - inside, np.uint8) if base is None else base
    pts = [np.round(np.asarray(p, np.float64) * [w, h]).astype(np.int32) for p in polys]
    if pts:
        cv2.fillPoly(m, pts, inside)
    return m


class CameraPolygons:
    """One camera's masks and zones, turned into fractions for the picture size it delivers."""

    def __init__(self, camera: str, masks: list, zones: list[Zone]) -> None:
        self.camera = camera
        self.raw_masks = [list(p) for p in masks]
        self.zones = zones
        self.size: tuple[int, int] | None = None  # (width, height) of the source they were resolved for
        self.masks: list[np.ndarray] = [to_fractions(p, 1, 1) for p in self.raw_masks if is_fraction(p)]
        self.pixels = any(not is_fraction(p) for p in self.raw_masks) or any(
            not is_fraction(z.points) for z in zones)

    def __bool__(self) -> bool:
        return bool(self.raw_masks or self.zones)

    def resolve(self, w: int, h: int) -> bool:
        """Turn the corners into fractions of a w x h source picture; True when that changed them."""
        if self.size == (w, h):
            return False
        first = self.size is None
        self.size = (w, h)
        if not self.pixels and not first:
            return False  # fractions fit any size
        self.masks = [to_fractions(p, w, h) for p in self.raw_masks]
        for z in self.zones:
            z.resolve(to_fractions(z.points, w, h))
        outside = [(f"masks.{i}", p) for i, p in enumerate(self.raw_masks) if _outside(p, w, h)]
        outside += [(f"zones.{z.index} ({z.name})", z.points) for z in self.zones if _outside(z.points, w, h)]
        for key, p in outside:
            log.warning("camera %s: %s has corners outside its %dx%d picture (corners are pixels of the picture "
                        "the camera sends; `gridwatch camera snapshot` prints its size)", self.camera, key, w, h)
        return True

    def motion_mask(self, w: int = 1000, h: int = 1000) -> np.ndarray | None:
        """uint8[h, w] for the motion gate (0 = ignore the pixel), or None without masks."""
        return fraction_mask(self.masks, w, h, inside=0) if self.masks else None


def _outside(poly, w: int, h: int) -> bool:
    return not is_fraction(poly) and any(x > w + 1 or y > h + 1 for x, y in poly)


def source_size(size: tuple[int, int], scale: float) -> tuple[int, int]:
    """(width, height) of the source picture a frame of ``size`` was downscaled from by ``scale``."""
    return round(size[0] / scale), round(size[1] / scale)


def zones_for(rule: str, zones: list[Zone]) -> list[Zone]:
    """The zones a rule works in: those that name it, and those that name no rule."""
    return [z for z in zones if not z.rules or rule in z.rules]


def zone_of(boxes, zones: list[Zone], w: int, h: int) -> Zone | None:
    """The zone that holds most of ``boxes`` (pixels of a w x h picture); None when none holds any."""
    best, best_ov = None, 0.0
    for z in zones:
        ov = sum(z.overlap(np.asarray(b, np.float64), w, h) * max(0.0, (b[2] - b[0]) * (b[3] - b[1])) for b in boxes)
        if ov > best_ov:
            best, best_ov = z, ov
    return best
