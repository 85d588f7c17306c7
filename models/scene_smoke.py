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


# ---------------------------------------------------------------- hard negatives for smoke-cls
# Changes the smoke rule's candidate stage can mistake for smoke: light changing over a whole
# region (exposure / gain ramps, a sky dimming under a cloud) and foliage moving in the wind.
# Used only as training and calibration negatives of ``smoke-cls``; no other generator changes.

def gain_ramp(n: int, rng: np.random.Generator, fps: float = 5.0) -> np.ndarray:
    """float32 [n] brightness gain per frame: the camera's exposure or gain hunting — ramps of
    1-4 s to a level 0.55-1.5 and back, or a step and a slow recovery."""
    g = np.ones(n, np.float32)
    t = 0
    while t < n:
        t += int(rng.uniform(1, 6) * fps)
        level = float(rng.choice([rng.uniform(0.55, 0.85), rng.uniform(1.15, 1.5)]))
        ramp = max(1, int(rng.uniform(0.2, 4.0) * fps))
        hold = int(rng.uniform(0.5, 5.0) * fps)
        back = max(1, int(rng.uniform(0.5, 4.0) * fps))
        seg = np.concatenate([np.linspace(1, level, ramp), np.full(hold, level), np.linspace(level, 1, back)])
        g[t:t + len(seg)] = seg[:max(0, n - t)]
        t += len(seg)
    return g


def dim_top(frame: np.ndarray, part: float, amount: float, front: float, soft: float = 0.15) -> np.ndarray:
    """The top ``part`` of the picture darkened by ``amount`` (0..1) down to ``front`` (0..1 of
    that part), with a soft edge: a cloud's shadow or a dimming sky coming down from the top."""
    h = frame.shape[0]
    rows = np.arange(h, dtype=np.float32) / max(1.0, h * part)
    g = 1.0 - amount * np.clip((front - rows) / soft + 1.0, 0.0, 1.0)
    g[rows > 1.0] = 1.0
    return np.clip(frame.astype(np.float32) * g[:, None, None], 0, 255).astype(np.uint8)


def sky_dimming_video(n: int, width: int = 320, height: int = 240, seed: int = 0, fps: float = 5.0,
                      noise: float = 2.0) -> list[np.ndarray]:
    """A street under a bright (often nearly saturated) sky that dims by 10-35 % from the top
    down over 2-8 s, sometimes with the whole picture's exposure following: no smoke."""
    from . import scene_backgrounds as bgs
    rng = np.random.default_rng([seed, 31])
    img, horizon, _ = bgs.background(width, height, seed, "street")
    img = img.astype(np.float32)
    if rng.random() < 0.6:  # a bright, washed-out sky
        img[:horizon] = rng.uniform(215, 252) + rng.normal(0, 1.5, (horizon, width, 1))
    amount, secs, start = rng.uniform(0.1, 0.35), rng.uniform(2.0, 8.0), rng.uniform(0.5, 3.0)
    global_gain = rng.random() < 0.3
    part = horizon / height * rng.uniform(0.8, 1.1)
    out = []
    for i in range(n):
        t = i / fps
        front = float(np.clip((t - start) / secs, 0, 1)) * 1.2
        f = dim_top(np.clip(img, 0, 255).astype(np.uint8), part, amount, front)
        if global_gain:
            f = np.clip(f * (1 - 0.5 * amount * min(1.0, max(0.0, (t - start) / secs))), 0, 255).astype(np.uint8)
        out.append(np.clip(f + rng.normal(0, noise, f.shape), 0, 255).astype(np.uint8))
    return out


def tree_video(n: int, width: int = 320, height: int = 240, seed: int = 0, fps: float = 5.0,
               noise: float = 2.0) -> list[np.ndarray]:
    """A tree (trunk and a leafy crown: thresholded noise, green, olive or grey-green) swaying in
    the wind in front of a street, its leaves flickering; sometimes the light changes too."""
    from . import scene_backgrounds as bgs
    rng = np.random.default_rng([seed, 32])
    bg, horizon, _ = bgs.background(width, height, seed, "street")
    bg = bg.astype(np.float32)
    cw, ch = int(width * rng.uniform(0.25, 0.6)), int(height * rng.uniform(0.3, 0.6))
    cx, cy = rng.uniform(0.2, 0.8) * width, rng.uniform(0.2, 0.45) * height
    r = rng.random()
    if r < 0.5:
        leaf = np.array([rng.uniform(30, 80), rng.uniform(80, 150), rng.uniform(30, 90)], np.float32)  # BGR green
    elif r < 0.8:
        leaf = np.array([rng.uniform(40, 70), rng.uniform(90, 130), rng.uniform(80, 120)], np.float32)  # olive
    else:
        g = rng.uniform(50, 140)
        leaf = np.array([g - 5, g + 8, g - 3], np.float32)  # grey-green (dim light)
    tex = _fbm(rng, 2 * ch, 2 * cw)
    ys, xs = np.mgrid[0:ch, 0:cw].astype(np.float32)
    env = ((xs - cw / 2) / (cw / 2)) ** 2 + ((ys - ch / 2) / (ch / 2)) ** 2
    amp, period = rng.uniform(1.0, 6.0), rng.uniform(0.8, 3.0)
    trunk_w = max(2, int(cw * 0.08))
    tx = int(cx - trunk_w / 2)
    base = bg.copy()
    base[int(cy):, max(0, tx):tx + trunk_w] = rng.uniform(30, 80)
    gains = gain_ramp(n, rng, fps) if rng.random() < 0.3 else np.ones(n, np.float32)
    out = []
    for i in range(n):
        t = i / fps
        sway = amp * np.sin(2 * np.pi * t / period + rng.uniform(-0.2, 0.2)) * (1 - ys / ch)
        mx = (xs + sway + cw / 2).astype(np.float32)
        my = (ys + ch / 2 + 0.5 * np.sin(t * 3.1)).astype(np.float32)
        leaves = cv2.remap(tex, mx, my, cv2.INTER_LINEAR)
        a = np.clip((leaves - 0.45) * 6, 0, 1) * np.clip(1.2 - env, 0, 1)
        shade = (0.6 + 0.8 * leaves)[..., None]
        f = base.copy()
        x0, y0 = int(cx - cw / 2), int(cy - ch / 2)
        xa, ya, xb, yb = max(0, x0), max(0, y0), min(width, x0 + cw), min(height, y0 + ch)
        sub_a = a[ya - y0:yb - y0, xa - x0:xb - x0, None]
        sub_c = (leaf * shade)[ya - y0:yb - y0, xa - x0:xb - x0]
        f[ya:yb, xa:xb] = f[ya:yb, xa:xb] * (1 - sub_a) + sub_c * sub_a
        f = f * gains[i] + rng.normal(0, noise, f.shape)
        out.append(np.clip(f, 0, 255).astype(np.uint8))
    return out
