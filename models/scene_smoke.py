"""Smoke plumes: a multi-octave noise field advected upward, shaped by a widening, wind-bent
envelope, alpha-blended over the scene as low-chroma grey (white, grey or black smoke)."""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np


@dataclass
class Plume:
    sx: float  # source, pixels
    sy: float
    height: float  # full-grown plume height, pixels
    width0: float  # half-width at the source
    spread: float  # half-width growth per pixel of rise
    wind: float  # horizontal drift per pixel of rise
    density: float  # peak opacity 0..1
    rise: float  # pixels per frame the texture moves up
    colour: tuple[float, float, float]
    noise: np.ndarray  # float32 [3h, w] texture, 0..1


def _fbm(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Smooth noise in 0..1: octaves drawn at low resolution and resized up (cheap)."""
    out = np.zeros((h, w), np.float32)
    for cells, amp in ((6, 1.0), (15, 0.5), (40, 0.25)):
        gh, gw = max(2, int(cells * h / max(h, w))), max(2, int(cells * w / max(h, w)))
        n = rng.standard_normal((gh, gw), dtype=np.float32)
        out += amp * cv2.resize(n, (w, h), interpolation=cv2.INTER_CUBIC)
    return 1 / (1 + np.exp(-1.2 * out))


def random_plume(rng: np.random.Generator, w: int, h: int, source: tuple[float, float] | None = None,
                 height: float | None = None) -> Plume:
    sx, sy = source if source is not None else (rng.uniform(0.15, 0.85) * w, rng.uniform(0.55, 1.0) * h)
    height = height if height is not None else rng.uniform(0.3, 0.9) * sy
    r = rng.random()
    if r < 0.55:
        g = rng.uniform(150, 235)  # white/light grey
    elif r < 0.85:
        g = rng.uniform(90, 150)
    else:
        g = rng.uniform(30, 90)  # black smoke
    tint = rng.uniform(-6, 6, 3)
    return Plume(sx, sy, height, rng.uniform(0.01, 0.05) * w, rng.uniform(0.15, 0.6), rng.uniform(-0.5, 0.5),
                 rng.uniform(0.3, 0.9), rng.uniform(0.5, 2.5), tuple(float(g + d) for d in tint),
                 _fbm(rng, 3 * h, w))


def plume_alpha(p: Plume, w: int, h: int, t: float = 1e9, grow_frames: float = 60.0) -> np.ndarray:
    """float32 [h, w] opacity of plume ``p`` at frame ``t`` (fully grown for large ``t``)."""
    ys = np.arange(h, dtype=np.float32)[:, None]
    xs = np.arange(w, dtype=np.float32)[None, :]
    top = p.height * min(1.0, (t + 1) / grow_frames)
    d = p.sy - ys  # rise above the source
    cx = p.sx + p.wind * d
    half = p.width0 + p.spread * np.maximum(d, 0)
    env = np.exp(-((xs - cx) / np.maximum(half, 1)) ** 2)
    env = env * np.clip(d / 3 + 1, 0, 1) * np.clip((top - d) / (0.35 * top + 1) + 0.3, 0, 1)
    start = int(p.rise * t) % (2 * h) if t < 1e8 else 0  # the texture moves up as time passes
    tex = p.noise[start:start + h]
    a = p.density * env * np.clip(tex * 1.6 - 0.2, 0, 1)
    return np.clip(a, 0, 1).astype(np.float32)


def blend(frame: np.ndarray, alpha: np.ndarray, colour: tuple[float, float, float]) -> np.ndarray:
    """Blend toward ``colour`` with ``alpha``; smoke also veils (blurs) what is behind it."""
    f = frame.astype(np.float32)
    veiled = cv2.blur(f, (3, 3))
    a = alpha[..., None]
    behind = f * (1 - np.minimum(a * 2, 1)) + veiled * np.minimum(a * 2, 1)
    return np.clip(behind * (1 - a) + np.asarray(colour, np.float32) * a, 0, 255).astype(np.uint8)
