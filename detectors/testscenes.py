"""Simple seeded shapes for unit tests of the motion gate and the rules' logic, and for benchmarks.

The event scenes the tests stream over RTSP (smoke plumes, waste piles, e-bikes, bicycles, people,
still backgrounds) come from :mod:`gridwatch.models.scenes`, the generators the shipped models were
trained on. These are plainer: exact, easily stated ground truth (a disc on a line, a box that
appears) and a plume that keeps rising for as long as it is asked to.

Each scene is a generator of BGR uint8 frames, fully determined by its arguments and ``seed``:

* :func:`empty_scene` — a static textured background with mild sensor noise;
* :func:`smoke_scene` — a slowly rising, widening, semi-transparent grey plume over that background;
* :func:`appearing_object_scene` — an object that appears at a given frame and then stays put
  (a dumped bag, a parked e-bike);
* :func:`moving_blob_scene` — a blob crossing the scene on a straight line.

Every generator also exposes the ground truth where it matters (``object_box``, ``blob_box``).
To serve a scene as a camera, encode it with :func:`gridwatch.servers.rtsp.encode_h264` and
mount the file with :class:`gridwatch.servers.rtsp.FileStream`.
"""
from __future__ import annotations

from collections.abc import Iterator

import cv2
import numpy as np


def background(width: int, height: int, seed: int = 0) -> np.ndarray:
    """A static street-like background: sky/ground gradient, a few buildings, some texture."""
    rng = np.random.default_rng(seed)
    y = np.linspace(0.0, 1.0, height, dtype=np.float32)[:, None]
    base = np.empty((height, width, 3), np.float32)
    base[...] = (150 - 60 * y)[..., None] * np.array([1.0, 0.95, 0.9], np.float32)
    horizon = int(height * 0.55)
    base[horizon:] = np.array([70, 72, 75], np.float32)
    for _ in range(6):
        x0 = int(rng.integers(0, width - width // 8))
        bw = int(rng.integers(width // 12, width // 6))
        top = int(rng.integers(height // 6, horizon - 10))
        base[top:horizon, x0:x0 + bw] = rng.uniform(60, 130, 3).astype(np.float32)
    texture = cv2.GaussianBlur(rng.normal(0, 6, (height, width)).astype(np.float32), (0, 0), 1.5)
    return np.clip(base + texture[..., None], 0, 255).astype(np.uint8)


def _noisy(img: np.ndarray, rng: np.random.Generator, sigma: float) -> np.ndarray:
    if sigma <= 0:
        return img.copy()
    return np.clip(img.astype(np.int16) + rng.normal(0, sigma, img.shape).astype(np.int16), 0, 255).astype(np.uint8)


def empty_scene(n: int, width: int = 320, height: int = 240, seed: int = 0, noise: float = 2.0) -> Iterator[np.ndarray]:
    """``n`` frames of a still scene with Gaussian sensor noise of std ``noise``."""
    bg = background(width, height, seed)
    rng = np.random.default_rng(seed + 1)
    for _ in range(n):
        yield _noisy(bg, rng, noise)


def smoke_scene(n: int, width: int = 320, height: int = 240, seed: int = 0, noise: float = 2.0,
                source: tuple[float, float] = (0.5, 0.85), rise_px_per_frame: float = 1.0,
                opacity: float = 0.6) -> Iterator[np.ndarray]:
    """A grey plume rising from ``source`` (fractions of width/height), growing and drifting.

    The plume is a sum of soft puffs emitted every frame that rise, widen and fade; it blends
    toward light grey (smoke) rather than adding a solid shape.
    """
    bg = background(width, height, seed).astype(np.float32)
    rng = np.random.default_rng(seed + 2)
    sx, sy = source[0] * width, source[1] * height
    puffs: list[list[float]] = []  # [x, y, radius, strength]
    grey = np.float32(190.0)
    for _ in range(n):
        puffs.append([sx + rng.normal(0, 1.5), sy, 4.0 + rng.uniform(0, 2), 1.0])
        density = np.zeros((height, width), np.float32)
        for p in puffs:
            p[0] += rng.normal(0.15, 0.4)
            p[1] -= rise_px_per_frame * rng.uniform(0.7, 1.3)
            p[2] += 0.25
            p[3] *= 0.985
            r = 3 * p[2]  # the puff's footprint: beyond 3 sigma it adds nothing visible
            x0, x1 = max(0, int(p[0] - r)), min(width, int(p[0] + r) + 1)
            y0, y1 = max(0, int(p[1] - r)), min(height, int(p[1] + r) + 1)
            if x0 >= x1 or y0 >= y1:
                continue
            gx = np.exp(-((np.arange(x0, x1, dtype=np.float32) - p[0]) ** 2) / (2 * p[2] ** 2))
            gy = np.exp(-((np.arange(y0, y1, dtype=np.float32) - p[1]) ** 2) / (2 * p[2] ** 2))
            density[y0:y1, x0:x1] += p[3] * gy[:, None] * gx[None, :]
        puffs = [p for p in puffs if p[1] + 3 * p[2] > 0 and p[3] > 0.05]
        alpha = opacity * (1 - np.exp(-density))[..., None]
        frame = bg * (1 - alpha) + grey * alpha
        yield _noisy(np.clip(frame, 0, 255).astype(np.uint8), rng, noise)


def object_box(width: int = 320, height: int = 240, size: float = 0.15,
               at: tuple[float, float] = (0.3, 0.75)) -> tuple[int, int, int, int]:
    """Ground-truth box (x1, y1, x2, y2) of :func:`appearing_object_scene`'s object."""
    w, h = int(size * width), int(size * height)
    x1, y1 = int(at[0] * width - w / 2), int(at[1] * height - h / 2)
    return x1, y1, x1 + w, y1 + h


def appearing_object_scene(n: int, appear_at: int = 10, width: int = 320, height: int = 240, seed: int = 0,
                           noise: float = 2.0, size: float = 0.15,
                           at: tuple[float, float] = (0.3, 0.75)) -> Iterator[np.ndarray]:
    """A still scene in which an orange box-like object appears at frame ``appear_at`` and stays."""
    bg = background(width, height, seed)
    obj = bg.copy()
    x1, y1, x2, y2 = object_box(width, height, size, at)
    cv2.rectangle(obj, (x1, y1), (x2 - 1, y2 - 1), (40, 140, 230), -1)  # orange: stands out in grey too
    cv2.rectangle(obj, (x1, y1), (x2 - 1, y2 - 1), (20, 20, 20), 2)
    rng = np.random.default_rng(seed + 3)
    for i in range(n):
        yield _noisy(obj if i >= appear_at else bg, rng, noise)


def blob_box(i: int, width: int = 320, height: int = 240, radius: int = 12,
             speed_px: float = 4.0) -> tuple[int, int, int, int]:
    """Ground-truth box (x1, y1, x2, y2) of :func:`moving_blob_scene`'s blob in frame ``i``."""
    cx = int(radius + (i * speed_px) % (width - 2 * radius))
    cy = height // 2
    return cx - radius, cy - radius, cx + radius + 1, cy + radius + 1


def moving_blob_scene(n: int, width: int = 320, height: int = 240, seed: int = 0, noise: float = 2.0,
                      radius: int = 12, speed_px: float = 4.0) -> Iterator[np.ndarray]:
    """A bright disc moving left to right across the middle of a still scene (wrapping around)."""
    bg = background(width, height, seed)
    rng = np.random.default_rng(seed + 4)
    for i in range(n):
        frame = bg.copy()
        x1, y1, _, _ = blob_box(i, width, height, radius, speed_px)
        cv2.circle(frame, (x1 + radius, y1 + radius), radius, (235, 235, 235), -1)
        yield _noisy(frame, rng, noise)
