"""Objects drawn as sprites: ``draw(kind, rng, height_px) -> (BGR patch, alpha mask)``.

Side views facing right (callers flip for left), with random colours, proportions and pose. The
patch is tight around the object, so its placement is the object's ground-truth box.

Labelled kinds (what the detector learns): ``person``, ``bicycle``, ``e-bike``, ``vehicle``,
``waste_pile``. Look-alikes (drawn, never labelled): ``trolley`` and ``pram`` (wheels, frames and
baskets like a bike's), and ``box_stack`` (a neat stack of parcels, unlike a dumped pile).
"""
from __future__ import annotations

import cv2
import numpy as np

LABELLED = ("person", "bicycle", "e-bike", "vehicle", "waste_pile")
LOOKALIKES = ("trolley", "pram", "box_stack")

# height / width of each kind's sprite (range), used to size the canvas
_ASPECT = {"person": (2.2, 3.4), "bicycle": (0.55, 0.7), "e-bike": (0.55, 0.72), "vehicle": (0.35, 0.6),
           "waste_pile": (0.35, 0.8), "trolley": (0.8, 1.1), "pram": (0.85, 1.15), "box_stack": (0.9, 1.6)}


def _col(rng, lo=20, hi=235):
    return tuple(int(v) for v in rng.uniform(lo, hi, 3))


def _grey(rng, lo=15, hi=70):
    g = rng.uniform(lo, hi)
    return tuple(int(np.clip(g + d, 0, 255)) for d in rng.uniform(-6, 6, 3))


class _Canvas:
    def __init__(self, h: int, w: int) -> None:
        self.img = np.zeros((h, w, 3), np.uint8)
        self.mask = np.zeros((h, w), np.uint8)

    def line(self, p, q, col, t):
        t = max(1, int(round(t)))
        p, q = tuple(int(round(v)) for v in p), tuple(int(round(v)) for v in q)
        cv2.line(self.img, p, q, col, t, cv2.LINE_AA)
        cv2.line(self.mask, p, q, 255, t, cv2.LINE_AA)

    def circle(self, c, r, col, t=-1):
        c = tuple(int(round(v)) for v in c)
        r = max(1, int(round(r)))
        tt = -1 if t < 0 else max(1, int(round(t)))
        cv2.circle(self.img, c, r, col, tt, cv2.LINE_AA)
        cv2.circle(self.mask, c, r, 255, tt, cv2.LINE_AA)

    def ellipse(self, c, axes, angle, col):
        c = tuple(int(round(v)) for v in c)
        axes = tuple(max(1, int(round(v))) for v in axes)
        cv2.ellipse(self.img, c, axes, angle, 0, 360, col, -1, cv2.LINE_AA)
        cv2.ellipse(self.mask, c, axes, angle, 0, 360, 255, -1, cv2.LINE_AA)

    def poly(self, pts, col):
        pts = np.round(np.asarray(pts, np.float32)).astype(np.int32)
        cv2.fillPoly(self.img, [pts], col, cv2.LINE_AA)
        cv2.fillPoly(self.mask, [pts], 255, cv2.LINE_AA)

    def rect(self, x1, y1, x2, y2, col):
        self.poly([(x1, y1), (x2, y1), (x2, y2), (x1, y2)], col)


def _wheel(c: _Canvas, centre, r, tyre, col_tyre, spokes, rng):
    c.circle(centre, r - tyre / 2, col_tyre, tyre)
    if spokes:
        sc = _grey(rng, 120, 200)
        for a in np.linspace(0, np.pi, int(rng.integers(3, 7)), endpoint=False) + rng.uniform(0, 1):
            d = np.array([np.cos(a), np.sin(a)]) * (r - tyre)
            c.line(np.add(centre, d), np.subtract(centre, d), sc, max(1, r / 25))


def _bike(rng, h, electric: bool):
    w = int(h / rng.uniform(*_ASPECT["e-bike" if electric else "bicycle"]))
    c = _Canvas(h, w)
    r = min(h * 0.3, w * 0.22) * rng.uniform(0.9, 1.0)
    tyre = r * (rng.uniform(0.18, 0.3) if electric else rng.uniform(0.07, 0.12))
    rear, front = (r + 1, h - r - 1), (w - r - 1, h - r - 1)
    frame = _col(rng)
    t = max(1.5, r * (0.14 if electric else 0.09))
    bb = (rear[0] + (front[0] - rear[0]) * 0.42, rear[1] + r * 0.05)
    seat_top = (bb[0] - r * 0.25, h * 0.12 + r * 0.1)
    head_top = (front[0] - r * 0.35, h * 0.14)
    head_bot = (front[0] - r * 0.25, h * 0.3 + r * 0.2)
    for wc in (rear, front):
        _wheel(c, wc, r, tyre, _grey(rng, 10, 45), not electric or rng.random() < 0.4, rng)
    c.line(rear, bb, frame, t)
    c.line(rear, seat_top, frame, t)
    c.line(bb, seat_top, frame, t)
    c.line(head_top, front, frame, t)
    if electric and rng.random() < 0.75:  # step-through: one low, curved down tube
        mid = (bb[0] + (head_bot[0] - bb[0]) * 0.5, bb[1] - r * 0.05)
        c.line(bb, mid, frame, t * 1.3)
        c.line(mid, head_bot, frame, t * 1.3)
    else:
        c.line(bb, head_bot, frame, t)
        c.line(seat_top, head_top, frame, t)
    c.line(seat_top, (seat_top[0], seat_top[1] - h * 0.05), _grey(rng), t)
    c.ellipse((seat_top[0], seat_top[1] - h * 0.06), (r * 0.3, max(2, r * 0.08)), 0, _grey(rng, 10, 40))
    c.line(head_top, (head_top[0] - r * 0.3, head_top[1] - h * 0.04), _grey(rng), max(1, t * 0.8))
    if electric:
        bat = _grey(rng, 15, 75) if rng.random() < 0.8 else _col(rng)
        where = rng.random()
        if where < 0.45:  # battery on the down tube / in the frame
            bx, by = bb[0] + r * 0.1, bb[1] - r * 0.9
            c.poly([(bx - r * 0.2, by + r * 0.75), (bx + r * 0.75, by - r * 0.05),
                    (bx + r * 0.95, by + r * 0.2), (bx + 0.0, by + r * 0.95)], bat)
        elif where < 0.8:  # battery box on the rear rack
            c.line((rear[0], rear[1] - r * 1.05), (bb[0] - r * 0.2, rear[1] - r * 1.05), _grey(rng), max(1, t * 0.6))
            c.rect(rear[0] - r * 0.3, rear[1] - r * 1.55, bb[0] - r * 0.15, rear[1] - r * 1.02, bat)
        else:  # big battery box under the seat (delivery / step-through e-bikes)
            c.rect(bb[0] - r * 0.7, bb[1] - r * 1.1, bb[0] + r * 0.35, bb[1] - r * 0.25, bat)
        c.circle(rear, r * rng.uniform(0.22, 0.35), _grey(rng, 30, 90))  # hub motor
        if rng.random() < 0.4:  # front basket
            c.rect(front[0] - r * 0.6, head_top[1] - h * 0.02, front[0] + r * 0.25, head_top[1] + h * 0.15, _col(rng))
        if rng.random() < 0.6:  # mudguards
            c.line((rear[0] - r, rear[1] - r * 0.2), (rear[0], rear[1] - r * 1.15), _grey(rng), max(1, t * 0.6))
    return c


def _person(rng, h):
    w = int(h / rng.uniform(*_ASPECT["person"]))
    c = _Canvas(h, w)
    skin = tuple(int(v) for v in np.array([60, 90, 130]) * rng.uniform(0.6, 1.7))
    top, trousers = _col(rng, 15, 230), _col(rng, 10, 150)
    head_r = h * 0.065
    cx = w / 2
    hip_y = h * 0.52
    shoulder_y = h * 0.18
    stride = rng.uniform(-0.35, 0.35) * w
    leg_t = max(2, w * 0.17)
    c.line((cx, hip_y), (cx + stride, h - leg_t / 2 - 1), trousers, leg_t)
    c.line((cx, hip_y), (cx - stride, h - leg_t / 2 - 1), trousers, leg_t)
    c.poly([(cx - w * 0.28, shoulder_y), (cx + w * 0.28, shoulder_y), (cx + w * 0.22, hip_y + h * 0.03),
            (cx - w * 0.22, hip_y + h * 0.03)], top)
    arm = rng.uniform(-0.3, 0.3) * w
    arm_t = max(2, w * 0.12)
    for s in (-1, 1):
        c.line((cx + s * w * 0.22, shoulder_y + h * 0.02), (cx + s * w * 0.25 + arm * s, h * 0.47), top, arm_t)
    c.circle((cx, shoulder_y - head_r * 1.05), head_r, skin)
    c.ellipse((cx, shoulder_y - head_r * 1.5), (head_r * 1.02, head_r * 0.6), 0, _grey(rng, 10, 90))  # hair / hat
    if rng.random() < 0.3:  # backpack or bag
        c.rect(cx - w * 0.5, shoulder_y + h * 0.05, cx - w * 0.2, hip_y - h * 0.05, _col(rng))
    return c


def _vehicle(rng, h):
    w = int(h / rng.uniform(*_ASPECT["vehicle"]))
    c = _Canvas(h, w)
    body = _col(rng, 15, 240)
    r = h * rng.uniform(0.16, 0.22)
    van = rng.random() < 0.3
    roof = h * (0.02 if van else rng.uniform(0.02, 0.15))
    belt = h * rng.uniform(0.4, 0.55)
    c.rect(1, belt, w - 2, h - r * 0.8, body)
    cab_x1 = w * (0.05 if van else rng.uniform(0.15, 0.3))
    cab_x2 = w * (0.78 if van else rng.uniform(0.65, 0.8))
    c.poly([(cab_x1, belt), (cab_x1 + w * 0.08, roof), (cab_x2 - w * 0.05, roof), (cab_x2 + w * 0.08, belt)], body)
    glass = _grey(rng, 30, 110)
    c.poly([(cab_x1 + w * 0.04, belt - 2), (cab_x1 + w * 0.1, roof + h * 0.05),
            (cab_x2 - w * 0.07, roof + h * 0.05), (cab_x2 + w * 0.04, belt - 2)], glass)
    c.line(((cab_x1 + cab_x2) / 2, roof + h * 0.04), ((cab_x1 + cab_x2) / 2, belt), body, max(2, w * 0.015))
    for x in (w * 0.2, w * 0.8):
        c.circle((x, h - r - 1), r, _grey(rng, 10, 35))
        c.circle((x, h - r - 1), r * 0.5, _grey(rng, 100, 190))
    c.rect(w - w * 0.04, belt + h * 0.05, w - 2, belt + h * 0.12, (60, 200, 255))  # head light
    c.rect(1, belt + h * 0.05, w * 0.03, belt + h * 0.12, (40, 40, 200))  # tail light
    return c


def _bag(c: _Canvas, rng, cx, cy, rx, ry):
    col = _grey(rng, 5, 60) if rng.random() < 0.6 else (_grey(rng, 170, 240) if rng.random() < 0.5 else _col(rng))
    ang = rng.uniform(-30, 30)
    c.ellipse((cx, cy), (rx, ry), ang, col)
    hl = tuple(int(min(255, v * 1.6 + 25)) for v in col)
    c.ellipse((cx - rx * 0.3, cy - ry * 0.35), (rx * 0.25, ry * 0.15), ang, hl)
    c.poly([(cx - rx * 0.15, cy - ry * 0.9), (cx + rx * 0.15, cy - ry * 0.9), (cx, cy - ry * 1.25)], col)  # knot


def _waste_pile(rng, h):
    w = int(h / rng.uniform(*_ASPECT["waste_pile"]))
    c = _Canvas(h, w)
    n = int(rng.integers(1, 8))
    items = []
    for _ in range(n):
        rx = w * rng.uniform(0.15, 0.3)
        ry = min(h * rng.uniform(0.25, 0.45), rx * 1.4)
        cx = rng.uniform(rx, w - rx)
        cy = h - ry - rng.uniform(0, h - 2 * ry) * (0.6 if rng.random() < 0.5 else 0.1)
        items.append((cy, cx, rx, ry))
    for cy, cx, rx, ry in sorted(items, key=lambda t: t[0]):
        if rng.random() < 0.3:  # cardboard box or a broken appliance
            col = tuple(int(v) for v in np.array([60, 110, 160]) * rng.uniform(0.6, 1.3)) if rng.random() < 0.7 else _col(rng)
            c.poly([(cx - rx, cy - ry * 0.8), (cx + rx, cy - ry * 0.7), (cx + rx * 0.9, cy + ry), (cx - rx * 0.95, cy + ry)], col)
        else:
            _bag(c, rng, cx, cy, rx, ry)
    if rng.random() < 0.5:  # debris
        for _ in range(int(rng.integers(2, 6))):
            x, y = rng.uniform(0, w), rng.uniform(h * 0.7, h - 2)
            c.line((x, y), (x + rng.uniform(-w * 0.15, w * 0.15), y + rng.uniform(-3, 3)), _col(rng), max(1, h * 0.03))
    return c


def _trolley(rng, h):
    w = int(h / rng.uniform(*_ASPECT["trolley"]))
    c = _Canvas(h, w)
    metal = _grey(rng, 110, 210)
    wr = h * 0.07
    top, bot = h * 0.2, h * 0.62
    x1, x2 = w * 0.08, w * 0.85
    t = max(1, h * 0.015)
    for y in np.linspace(top, bot, 5):
        c.line((x1 + (y - top) * 0.15, y), (x2, y), metal, t)
    for x in np.linspace(x1, x2, 7):
        c.line((x, top), (x + (x2 - x) * 0.05, bot), metal, t)
    c.line((x2, top), (w - 2, top - h * 0.12), metal, t * 2)  # handle
    c.line((x1 + w * 0.05, bot), (x1 + w * 0.1, h - 2 * wr), metal, t * 1.5)
    c.line((x2, bot), (x2 - w * 0.05, h - 2 * wr), metal, t * 1.5)
    for x in (x1 + w * 0.1, x2 - w * 0.05):
        c.circle((x, h - wr - 1), wr, _grey(rng, 10, 40))
    return c


def _pram(rng, h):
    w = int(h / rng.uniform(*_ASPECT["pram"]))
    c = _Canvas(h, w)
    fabric = _col(rng, 10, 200)
    wr = h * rng.uniform(0.12, 0.2)
    body_y1, body_y2 = h * 0.3, h * 0.65
    c.ellipse((w * 0.42, (body_y1 + body_y2) / 2), (w * 0.34, (body_y2 - body_y1) / 2), 0, fabric)
    c.ellipse((w * 0.2, body_y1 + h * 0.02), (w * 0.18, h * 0.18), 0, tuple(int(v * 0.8) for v in fabric))  # hood
    metal = _grey(rng, 20, 200)
    t = max(1.5, h * 0.025)
    c.line((w * 0.65, body_y1 + h * 0.05), (w - 2, h * 0.05), metal, t)  # handle
    c.line((w * 0.3, body_y2), (w * 0.2, h - wr), metal, t)
    c.line((w * 0.55, body_y2), (w * 0.72, h - wr), metal, t)
    for x in (w * 0.2, w * 0.72):
        _wheel(c, (x, h - wr - 1), wr, wr * rng.uniform(0.15, 0.3), _grey(rng, 10, 40), rng.random() < 0.5, rng)
    return c


def _box_stack(rng, h):
    w = int(h / rng.uniform(*_ASPECT["box_stack"]))
    c = _Canvas(h, w)
    n = int(rng.integers(1, 4))
    bh = h / n
    for i in range(n):
        col = tuple(int(v) for v in np.array([70, 120, 170]) * rng.uniform(0.7, 1.2))
        inset = rng.uniform(0, 0.1) * w
        c.rect(inset, h - (i + 1) * bh + 1, w - 1 - inset, h - i * bh - 1, col)
        c.line((w / 2, h - (i + 1) * bh + 1), (w / 2, h - i * bh - 1), (200, 200, 200), max(1, w * 0.03))
    return c


_DRAW = {"person": _person, "bicycle": lambda rng, h: _bike(rng, h, False),
         "e-bike": lambda rng, h: _bike(rng, h, True), "vehicle": _vehicle, "waste_pile": _waste_pile,
         "trolley": _trolley, "pram": _pram, "box_stack": _box_stack}


def draw(kind: str, rng: np.random.Generator, height_px: int, facing_left: bool | None = None,
         lean_deg: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(BGR patch, uint8 alpha) of one ``kind`` object ``height_px`` tall, cropped to its pixels."""
    height_px = max(8, int(height_px))
    c = _DRAW[kind](rng, height_px)
    img, mask = c.img, c.mask
    if facing_left if facing_left is not None else rng.random() < 0.5:
        img, mask = img[:, ::-1], mask[:, ::-1]
    squash = rng.uniform(0.7, 1.0) if kind in ("bicycle", "e-bike", "vehicle", "pram", "trolley") else 1.0
    lean = rng.uniform(-6, 6) if lean_deg is None else lean_deg
    h, w = mask.shape
    if squash != 1.0 or lean:  # a rough change of viewpoint: foreshortened and slightly tilted
        nw = max(4, int(w * squash))
        img, mask = cv2.resize(img, (nw, h)), cv2.resize(mask, (nw, h))
        pad = int(0.1 * max(h, nw))
        img = cv2.copyMakeBorder(img, pad, pad, pad, pad, cv2.BORDER_CONSTANT, value=0)
        mask = cv2.copyMakeBorder(mask, pad, pad, pad, pad, cv2.BORDER_CONSTANT, value=0)
        m = cv2.getRotationMatrix2D((mask.shape[1] / 2, mask.shape[0] / 2), lean, 1.0)
        img = cv2.warpAffine(img, m, mask.shape[::-1], flags=cv2.INTER_LINEAR)
        mask = cv2.warpAffine(mask, m, mask.shape[::-1], flags=cv2.INTER_LINEAR)
    ys, xs = np.nonzero(mask > 40)
    if len(xs) == 0:
        return img[:1, :1], mask[:1, :1]
    return np.ascontiguousarray(img[ys.min():ys.max() + 1, xs.min():xs.max() + 1]), \
        np.ascontiguousarray(mask[ys.min():ys.max() + 1, xs.min():xs.max() + 1])


def paste(frame: np.ndarray, patch: np.ndarray, alpha: np.ndarray, x: int, y: int,
          shade: float = 1.0) -> tuple[int, int, int, int] | None:
    """Alpha-blend ``patch`` at top-left (x, y) (clipped to the frame); the visible box or None."""
    H, W = frame.shape[:2]
    h, w = alpha.shape
    x1, y1, x2, y2 = max(0, x), max(0, y), min(W, x + w), min(H, y + h)
    if x2 - x1 < 2 or y2 - y1 < 2:
        return None
    a = alpha[y1 - y:y2 - y, x1 - x:x2 - x].astype(np.float32)[..., None] / 255
    p = patch[y1 - y:y2 - y, x1 - x:x2 - x].astype(np.float32) * shade
    roi = frame[y1:y2, x1:x2]
    roi[...] = np.clip(roi * (1 - a) + p * a, 0, 255).astype(np.uint8)
    return x1, y1, x2, y2
