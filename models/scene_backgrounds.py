"""Procedural camera backgrounds and camera effects. All functions are seeded and return BGR uint8."""
from __future__ import annotations

import cv2
import numpy as np

KINDS = ("street", "entrance", "corridor", "elevator", "construction")


def _texture(rng: np.random.Generator, h: int, w: int, sigma: float, amp: float) -> np.ndarray:
    """Blurred noise (std ``amp``), drawn at a resolution that suits its blur (cheap)."""
    f = max(1.0, sigma / 1.5)
    sh, sw = max(2, int(h / f)), max(2, int(w / f))
    t = cv2.GaussianBlur(rng.standard_normal((sh, sw), dtype=np.float32), (0, 0), max(0.6, sigma / f))
    if (sh, sw) != (h, w):
        t = cv2.resize(t, (w, h), interpolation=cv2.INTER_LINEAR)
    t /= max(float(t.std()), 1e-6)
    return t * amp


def _colour(rng: np.random.Generator, lo: float = 40, hi: float = 200, chroma: float = 30) -> np.ndarray:
    base = rng.uniform(lo, hi)
    return np.clip(base + rng.uniform(-chroma, chroma, 3), 0, 255).astype(np.float32)


def _street(rng, h, w):
    img = np.empty((h, w, 3), np.float32)
    y = np.linspace(0, 1, h, dtype=np.float32)[:, None, None]
    sky = _colour(rng, 140, 230, 25)
    img[...] = sky * (1.05 - 0.3 * y)
    horizon = int(h * rng.uniform(0.35, 0.6))
    for _ in range(int(rng.integers(3, 9))):
        bw = int(rng.integers(w // 10, w // 3))
        x0 = int(rng.integers(-bw // 2, w))
        top = int(rng.integers(0, max(1, horizon - 10)))
        col = _colour(rng, 50, 180, 35)
        img[top:horizon, max(0, x0):x0 + bw] = col
        for wy in range(top + 6, horizon - 8, int(rng.integers(12, 24))):  # windows
            for wx in range(max(0, x0) + 4, min(w, x0 + bw) - 6, int(rng.integers(10, 22))):
                img[wy:wy + 6, wx:wx + 5] = col * rng.uniform(0.4, 1.4)
    road = _colour(rng, 50, 110, 8)
    img[horizon:] = road
    side = int(horizon + (h - horizon) * rng.uniform(0.1, 0.35))
    img[horizon:side] = _colour(rng, 90, 170, 10)  # pavement
    if rng.random() < 0.7:
        yy = int((side + h) / 2)
        for x in range(int(rng.integers(0, 40)), w, 60):
            img[yy:yy + 3, x:x + 30] = 220
    return img, horizon


def _entrance(rng, h, w):
    wall = _colour(rng, 80, 210, 30)
    img = np.empty((h, w, 3), np.float32)
    img[...] = wall
    floor_y = int(h * rng.uniform(0.6, 0.8))
    img[floor_y:] = _colour(rng, 60, 160, 15)
    tile = int(rng.integers(12, 40))
    img[floor_y::tile, :] *= 0.8
    img[floor_y:, ::tile] *= 0.8
    for _ in range(int(rng.integers(1, 3))):  # doors
        dw = int(w * rng.uniform(0.12, 0.25))
        dx = int(rng.integers(0, w - dw))
        dt = int(floor_y - h * rng.uniform(0.35, 0.55))
        img[max(0, dt):floor_y, dx:dx + dw] = _colour(rng, 20, 120, 30)
        img[max(0, dt):floor_y, dx + dw // 2 - 1:dx + dw // 2 + 1] *= 0.6
    if rng.random() < 0.5:  # steps
        for i in range(3):
            y0 = floor_y + i * 6
            img[y0:y0 + 2] *= 0.7
    return img, floor_y


def _corridor(rng, h, w):
    img = np.empty((h, w, 3), np.float32)
    wall, floor, ceil = _colour(rng, 100, 220, 20), _colour(rng, 60, 170, 20), _colour(rng, 160, 240, 10)
    vx, vy = w * rng.uniform(0.35, 0.65), h * rng.uniform(0.35, 0.5)
    ww, wh = w * rng.uniform(0.15, 0.3), h * rng.uniform(0.15, 0.3)
    img[...] = wall
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    far_top, far_bot = vy - wh / 2, vy + wh / 2
    # floor: below the line from bottom corners to the far wall's bottom corners
    t_floor = (ys - far_bot) / max(h - far_bot, 1)
    half_floor = ww / 2 + t_floor * (w / 2 + w * 0.1 - ww / 2)
    img[(ys > far_bot) & (np.abs(xs - vx) < half_floor)] = floor
    t_ceil = (far_top - ys) / max(far_top, 1)
    half_ceil = ww / 2 + t_ceil * (w / 2 + w * 0.1 - ww / 2)
    img[(ys < far_top) & (np.abs(xs - vx) < half_ceil)] = ceil
    img[int(far_top):int(far_bot), int(vx - ww / 2):int(vx + ww / 2)] = wall * 0.8
    for i in range(int(rng.integers(2, 5))):  # ceiling lights
        t = (i + 1) / 6
        cy = int(far_top - t * far_top * 0.9)
        cx = int(vx)
        half = int(ww / 4 + t * w / 6)
        img[max(0, cy - 2):cy + 2, max(0, cx - half):cx + half] = 250
    return img, int(far_bot)


def _elevator(rng, h, w):
    metal = _colour(rng, 110, 200, 8)
    img = np.empty((h, w, 3), np.float32)
    img[...] = metal
    streaks = cv2.GaussianBlur(rng.normal(0, 1, (1, w)).astype(np.float32), (0, 0), 0.8)
    img += (streaks * 8)[..., None]
    for x in range(0, w, int(w * rng.uniform(0.2, 0.35))):  # panel seams
        img[:, x:x + 2] *= 0.6
    floor_y = int(h * rng.uniform(0.7, 0.85))
    img[floor_y:] = _colour(rng, 40, 120, 15)
    px = int(w * rng.uniform(0.05, 0.85))
    img[int(h * 0.35):int(h * 0.55), px:px + max(6, w // 20)] = 40  # control panel
    for by in range(int(h * 0.37), int(h * 0.53), 8):
        img[by:by + 3, px + 2:px + 5] = 200
    if rng.random() < 0.5:  # handrail
        img[int(h * 0.5):int(h * 0.5) + 3] = 220
    return img, floor_y


def _construction(rng, h, w):
    img, horizon = _street(rng, h, w)
    fence_top = int(horizon - h * rng.uniform(0.1, 0.3))
    fence_bot = int(horizon + (h - horizon) * 0.2)
    col = _colour(rng, 60, 200, 60)
    img[max(0, fence_top):fence_bot] = col
    for x in range(0, w, int(rng.integers(20, 50))):
        img[max(0, fence_top):fence_bot, x:x + 2] *= 0.5
    ground = _colour(rng, 80, 150, 20)
    img[fence_bot:] = ground
    img[fence_bot:] += _texture(rng, h - fence_bot, w, 0.7, 14)[..., None]  # gravel
    for _ in range(int(rng.integers(0, 3))):  # striped barriers
        bx, by = int(rng.integers(0, w - 30)), int(rng.integers(fence_bot, h - 8))
        for i in range(0, 40, 10):
            img[by:by + 8, bx + i:bx + i + 5] = (30, 30, 220)
            img[by:by + 8, bx + i + 5:bx + i + 10] = 240
    return img, fence_bot


_BUILDERS = {"street": _street, "entrance": _entrance, "corridor": _corridor, "elevator": _elevator,
             "construction": _construction}


def background(width: int, height: int, seed: int, kind: str | None = None) -> tuple[np.ndarray, int, str]:
    """(BGR uint8 image, ground line y, kind). ``kind`` None picks one of :data:`KINDS` from the seed."""
    rng = np.random.default_rng([seed, 101])
    kind = kind or KINDS[int(rng.integers(len(KINDS)))]
    img, ground = _BUILDERS[kind](rng, height, width)
    img += _texture(rng, height, width, rng.uniform(0.8, 3.0), rng.uniform(2, 9))[..., None]
    return np.clip(img, 0, 255).astype(np.uint8), int(np.clip(ground, height * 0.3, height * 0.9)), kind


def lighting(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Global gain and gamma (one lookup table), a soft illumination gradient and a colour cast."""
    h, w = img.shape[:2]
    gamma, gain = rng.uniform(0.7, 1.4), rng.uniform(0.6, 1.25)
    lut = np.clip(((np.arange(256) / 255.0) ** gamma) * gain * 255, 0, 255).astype(np.uint8)
    gx = np.linspace(-1, 1, w, dtype=np.float32)[None, :] * np.float32(rng.uniform(-0.25, 0.25))
    gy = np.linspace(-1, 1, h, dtype=np.float32)[:, None] * np.float32(rng.uniform(-0.25, 0.25))
    cast = (1 + rng.uniform(-0.08, 0.08, 3)).astype(np.float32)
    out = cv2.LUT(img, lut).astype(np.float32) * (1 + gx + gy)[..., None] * cast
    return np.clip(out, 0, 255).astype(np.uint8)


def camera(img: np.ndarray, rng: np.random.Generator, noise: tuple[float, float] = (0.5, 7.0),
           jpeg: tuple[int, int] = (25, 95)) -> np.ndarray:
    """Sensor noise, optional (motion) blur and JPEG artefacts, as a cheap IP camera produces."""
    out = img
    r = rng.random()
    if r < 0.25:
        out = cv2.GaussianBlur(out, (0, 0), rng.uniform(0.5, 1.6))
    elif r < 0.35:
        k = int(rng.integers(3, 8))
        ker = np.zeros((k, k), np.float32)
        ker[k // 2] = 1.0 / k
        m = cv2.getRotationMatrix2D((k / 2 - 0.5, k / 2 - 0.5), rng.uniform(0, 180), 1.0)
        ker = cv2.warpAffine(ker, m, (k, k))
        out = cv2.filter2D(out, -1, ker / max(float(ker.sum()), 1e-6))
    sigma = rng.uniform(*noise)
    out = np.clip(out + rng.standard_normal(out.shape, dtype=np.float32) * np.float32(sigma), 0, 255).astype(np.uint8)
    if rng.random() < 0.7:
        ok, buf = cv2.imencode(".jpg", out, [cv2.IMWRITE_JPEG_QUALITY, int(rng.integers(*jpeg))])
        out = cv2.imdecode(buf, cv2.IMREAD_COLOR)
    return out
