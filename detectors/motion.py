"""The motion gate: which parts of a frame changed, so models only run where something moves.

Like Frigate's improved motion detector, the work happens on a small luminance frame (about 100
pixels high): each frame is converted to grey, downscaled with area averaging (which also averages
away sensor noise), lightly blurred, and compared with a running-average background. Pixels that
differ by more than ``threshold`` (and are not masked out) are dilated and grouped into
8-connected regions; regions smaller than ``min_area`` are noise. Boxes come back in the
coordinates of the frame that was passed in.

A change over most of the frame (lights switching, an IR-mode flip, a camera knocked) is not
motion: the background is reset to the current frame and no regions are reported, with
``global_change`` set so the caller can count it.

    gate = MotionDetector(MotionParams(threshold=20), mask=roi_mask)
    result = gate.detect(frame)          # MotionResult(boxes, areas, changed_fraction, global_change)
    if len(result.boxes): run_model(frame, result.boxes)

The per-pixel work is in :mod:`gridwatch.detectors.motion_kernels` (Numba, GIL released).
"""
from __future__ import annotations

from typing import NamedTuple

import cv2
import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from . import motion_kernels as k


class MotionParams(BaseModel):
    """Motion gate settings (all resolution-independent except where stated)."""

    model_config = ConfigDict(extra="forbid")

    frame_height: int = Field(100, ge=16, le=1080, description="Height in pixels of the luminance frame compared "
                              "with the background; width follows the aspect ratio.")
    threshold: float = Field(25.0, gt=0, lt=255, description="Minimum luminance difference (0-255) from the "
                             "background for a pixel to count as changed.")
    alpha: float = Field(0.05, gt=0, le=1, description="Background learning rate per analysed frame: higher "
                         "forgets a stopped object sooner.")
    min_area: int = Field(8, ge=1, description="Minimum changed pixels (at motion resolution) for a region.")
    dilate: int = Field(1, ge=0, le=5, description="3x3 dilation passes joining nearby changed pixels into one region.")
    blur: int = Field(3, ge=0, le=15, description="Gaussian blur kernel size before differencing (0 = none; odd).")
    max_changed_fraction: float = Field(0.7, gt=0, le=1, description="Changed fraction of the watched area above "
                                        "which the change is global (lighting): background reset, no regions.")
    max_regions: int = Field(64, ge=1, description="At most this many regions are reported (largest first).")


class MotionResult(NamedTuple):
    boxes: np.ndarray  # int32[K, 4] x1, y1, x2, y2 (exclusive) in input-frame pixels, largest first
    areas: np.ndarray  # int32[K] changed pixels of each region at motion resolution
    changed_fraction: float  # changed pixels / watched pixels, before region filtering
    global_change: bool  # True when the frame changed as a whole (background was reset)


class MotionDetector:
    """Stateful motion gate for one camera. ``mask``: any size, nonzero = watch this pixel."""

    def __init__(self, params: MotionParams | None = None, mask: np.ndarray | None = None) -> None:
        self.params = params or MotionParams()
        self._user_mask = None if mask is None else np.asarray(mask)
        self._shape: tuple[int, int] | None = None  # (h, w) of the input frames
        self.background: np.ndarray | None = None

    @property
    def motion_size(self) -> tuple[int, int] | None:
        """(width, height) of the motion frame, once the first frame fixed it."""
        return None if self.background is None else (self.background.shape[1], self.background.shape[0])

    def reset(self) -> None:
        """Forget the background; the next frame becomes it."""
        self.background = None

    def set_mask(self, mask: np.ndarray | None) -> None:
        """A new mask (any size, nonzero = watch; None = watch everything), rasterised at the motion
        resolution with the next frame, which also starts the background afresh."""
        self._user_mask = None if mask is None else np.asarray(mask)
        self._shape = None

    def _setup(self, h: int, w: int) -> None:
        mh, mw = _motion_shape(h, w, self.params.frame_height)
        self._shape = (h, w)
        if self._user_mask is None:
            self._mask = np.ones((mh, mw), np.uint8)
        else:
            m = (self._user_mask != 0).astype(np.uint8)
            self._mask = np.ascontiguousarray(cv2.resize(m, (mw, mh), interpolation=cv2.INTER_NEAREST))
        self._watched = max(1, int(self._mask.sum()))
        self._changed = np.zeros((mh, mw), np.uint8)
        self._dilated = (np.zeros((mh, mw), np.uint8), np.zeros((mh, mw), np.uint8))
        self._labels = np.zeros((mh, mw), np.int32)
        self._stack = np.zeros(mh * mw, np.int32)
        # room for every possible region, so none is lost before sorting by size
        self._boxes = np.zeros((mh * mw // self.params.min_area + 1, 5), np.int32)
        self.background = None

    def luminance(self, frame: np.ndarray, limited_range: bool = False) -> np.ndarray:
        """The small blurred grey frame the gate compares (uint8, C-contiguous); see :func:`reduce_to_gate`."""
        mh, mw = self._mask.shape
        return reduce_to_gate(frame, mh, mw, limited_range, self.params.blur)

    def prepare(self, luma: np.ndarray, size: tuple[int, int], limited_range: bool = False) -> np.ndarray:
        """:meth:`luminance` for a frame of ``size`` = (width, height), without touching this
        detector's state, so a capture thread can do it right after decoding (the plane still in
        its core's cache, and the work off the one analysis thread); pass it to :meth:`detect`."""
        mh, mw = _motion_shape(size[1], size[0], self.params.frame_height)
        return reduce_to_gate(luma, mh, mw, limited_range, self.params.blur)

    def detect(self, frame: np.ndarray, size: tuple[int, int] | None = None, limited_range: bool = False,
               small: np.ndarray | None = None) -> MotionResult:
        """Motion in ``frame`` (BGR or a luminance plane, see :meth:`luminance`); boxes in the
        pixels of an image of ``size`` = (width, height), by default the frame's own. ``small``:
        the frame's :meth:`prepare` result, if it was made already."""
        w, h = size if size is not None else (frame.shape[1], frame.shape[0])
        if self._shape != (h, w):
            self._setup(h, w)
        if small is None or small.shape != self._mask.shape:
            small = self.luminance(frame, limited_range)
        if self.background is None:
            self.background = small.astype(np.float32)
            return _no_motion(0.0, False)
        p = self.params
        n = k.diff_and_update(small, self.background, self._mask, np.float32(p.threshold),
                              np.float32(p.alpha), self._changed)
        frac = n / self._watched
        if frac > p.max_changed_fraction:
            self.background[...] = small
            return _no_motion(frac, True)
        if n == 0:
            return _no_motion(0.0, False)
        binary = self._changed
        for i in range(p.dilate):
            k.dilate3x3(binary, self._dilated[i % 2])
            binary = self._dilated[i % 2]
        count = k.component_boxes(binary, p.min_area, self._labels, self._stack, self._boxes)
        rows = self._boxes[:count]
        order = np.argsort(-rows[:, 4], kind="stable")[: p.max_regions]
        rows = rows[order]
        mh, mw = self._mask.shape
        sx, sy = w / mw, h / mh
        boxes = np.empty((len(rows), 4), np.int32)
        boxes[:, 0] = np.floor(rows[:, 0] * sx)
        boxes[:, 1] = np.floor(rows[:, 1] * sy)
        boxes[:, 2] = np.minimum(np.ceil(rows[:, 2] * sx), w)
        boxes[:, 3] = np.minimum(np.ceil(rows[:, 3] * sy), h)
        return MotionResult(boxes, rows[:, 4].copy(), frac, False)


def _motion_shape(h: int, w: int, frame_height: int) -> tuple[int, int]:
    """(height, width) of the motion frame for input frames of h x w."""
    mh = min(frame_height, h)
    return mh, max(1, round(w * mh / h))


def reduce_to_gate(frame: np.ndarray, mh: int, mw: int, limited_range: bool, blur: int) -> np.ndarray:
    """The small blurred grey frame (``mh`` x ``mw``, uint8, C-contiguous) the gate compares.

    ``frame``: BGR, or a luminance plane (any size; e.g. the decoder's own, which is then
    halved by 2x2 area averages, the cheap case, down to under twice the motion size, and
    resized bilinearly the rest of the way). ``limited_range``:
    the plane is in video range (16-235) and is stretched to 0-255 like a BGR frame's grey.
    """
    if frame.ndim == 2:
        # halve (2x2 area averages, OpenCV's vectorised case) while at least twice the motion
        # size; what is left is a reduction by less than 2, where bilinear weights of the 2x2
        # neighbours of already averaged pixels do what a general area resize does (at about a
        # tenth of its cost, which is most of the gate's cost on a still scene)
        gray = frame
        while gray.shape[0] >= 2 * mh and gray.shape[1] >= 2 * mw:
            h2, w2 = gray.shape[0] // 2, gray.shape[1] // 2
            gray = cv2.resize(gray[: 2 * h2, : 2 * w2], (w2, h2), interpolation=cv2.INTER_AREA)
        near = gray.shape[0] < 2 * mh and gray.shape[1] < 2 * mw
        small = cv2.resize(gray, (mw, mh), interpolation=cv2.INTER_LINEAR if near else cv2.INTER_AREA)
    else:
        gray = cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY)
        small = cv2.resize(gray, (mw, mh), interpolation=cv2.INTER_AREA)
    if limited_range:
        small = cv2.LUT(small, _VIDEO_TO_FULL)
    if blur > 1:
        small = cv2.GaussianBlur(small, (blur | 1, blur | 1), 0)
    return np.ascontiguousarray(small)


_VIDEO_TO_FULL = np.clip(np.round((np.arange(256) - 16) * 255.0 / 219.0), 0, 255).astype(np.uint8)


def _no_motion(frac: float, global_change: bool) -> MotionResult:
    return MotionResult(np.empty((0, 4), np.int32), np.empty(0, np.int32), frac, global_change)
