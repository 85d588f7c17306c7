"""Numba kernels of the motion gate: pure functions of (arrays, state arrays, parameters).

The API layer (:mod:`gridwatch.detectors.motion`) owns the state and the OpenCV pre-processing;
the tests compare each kernel with a plain numpy/OpenCV reference.
"""
from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True, nogil=True)
def diff_and_update(gray, background, mask, threshold, alpha, changed):
    """Mark pixels that differ from the running-average background, then update the background.

    gray: uint8[H, W] current luminance; background: float32[H, W] running average (updated in
    place: ``bg += alpha * (gray - bg)``); mask: uint8[H, W], 0 = ignore the pixel;
    changed: uint8[H, W] output, 1 where ``mask and |gray - bg| > threshold``.
    Returns the number of changed pixels.
    """
    h, w = gray.shape
    n = 0
    for y in range(h):
        for x in range(w):
            g = np.float32(gray[y, x])
            b = background[y, x]
            d = g - b
            if mask[y, x] != 0 and abs(d) > threshold:
                changed[y, x] = 1
                n += 1
            else:
                changed[y, x] = 0
            background[y, x] = b + alpha * d
    return n


@njit(cache=True, nogil=True)
def dilate3x3(src, dst):
    """dst = 3x3 binary dilation of src (uint8 0/1), border pixels see only in-frame neighbours."""
    h, w = src.shape
    for y in range(h):
        y0 = max(y - 1, 0)
        y1 = min(y + 2, h)
        for x in range(w):
            x0 = max(x - 1, 0)
            x1 = min(x + 2, w)
            v = 0
            for yy in range(y0, y1):
                for xx in range(x0, x1):
                    if src[yy, xx] != 0:
                        v = 1
                        break
                if v:
                    break
            dst[y, x] = v


@njit(cache=True, nogil=True)
def component_boxes(binary, min_area, labels, stack, boxes):
    """8-connected components of a 0/1 image with at least ``min_area`` pixels.

    Scratch: labels int32[H, W], stack int32[H*W]. Output: boxes int32[K, 5] rows of
    (x1, y1, x2, y2, area) with exclusive x2/y2, in raster order of each component's first pixel.
    Returns the number of rows written (at most ``boxes.shape[0]``; further components are dropped).
    """
    h, w = binary.shape
    labels[:, :] = 0
    n = 0
    label = 0
    for sy in range(h):
        for sx in range(w):
            if binary[sy, sx] == 0 or labels[sy, sx] != 0:
                continue
            label += 1
            labels[sy, sx] = label
            top = 0
            stack[top] = sy * w + sx
            top += 1
            x1, y1, x2, y2, area = sx, sy, sx, sy, 0
            while top > 0:
                top -= 1
                p = stack[top]
                y = p // w
                x = p - y * w
                area += 1
                x1 = min(x1, x)
                x2 = max(x2, x)
                y1 = min(y1, y)
                y2 = max(y2, y)
                for yy in range(max(y - 1, 0), min(y + 2, h)):
                    for xx in range(max(x - 1, 0), min(x + 2, w)):
                        if binary[yy, xx] != 0 and labels[yy, xx] == 0:
                            labels[yy, xx] = label
                            stack[top] = yy * w + xx
                            top += 1
            if area >= min_area and n < boxes.shape[0]:
                boxes[n, 0] = x1
                boxes[n, 1] = y1
                boxes[n, 2] = x2 + 1
                boxes[n, 3] = y2 + 1
                boxes[n, 4] = area
                n += 1
    return n
