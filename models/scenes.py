"""Seeded, reproducible synthetic scenes: the training, evaluation and test data of gridwatch's models.

Everything here is a pure function of its arguments and a seed (numpy + OpenCV only, so it runs in
the runtime install). :data:`GENERATOR_VERSION` changes whenever the pictures a seed produces change;
model cards record it with the seeds they were trained and evaluated on.

* :mod:`.scene_backgrounds` — streets, building entrances, corridors, elevator cars, construction-site
  edges, plus camera effects (lighting, sensor noise, blur, JPEG artefacts);
* :mod:`.scene_sprites` — e-bikes (battery box, step-through frame, hub motor), bicycles, people,
  vehicles, waste piles and bags, and the look-alikes trolleys, prams and neat box stacks;
* :mod:`.scene_smoke` — smoke plumes: noise advected upward, alpha-blended as low-chroma grey;
* here — :func:`detector_sample` (a frame with boxes), :func:`smoke_sample` (a classifier crop with
  its label) and the video scenes :func:`smoke_video`, :func:`dumping_video`, :func:`carried_dump_video`,
  :func:`ebike_video`, :func:`empty_video` (frames plus ground truth) that the tests encode and
  stream over RTSP and ``python -m gridwatch.models.evaluate --smoke-rule`` runs the smoke rule on.

Seeds: training uses ``0 .. n-1``; held-out evaluation uses :data:`HELDOUT_SEED_BASE` + i. Every
background is generated from the sample's own seed, so held-out scenes also have unseen backgrounds.
"""
from __future__ import annotations

from collections.abc import Iterator

import cv2
import numpy as np

from . import scene_backgrounds as bgs
from . import scene_smoke as sm
from . import scene_sprites as sp

GENERATOR_VERSION = "1"
HELDOUT_SEED_BASE = 1_000_000
CLASSES = ("person", "bicycle", "e-bike", "vehicle", "waste_pile")  # detector class ids 0..4
SMOKE_CLASSES = ("background", "smoke")

# relative size of each kind against a person standing at the same distance
_REL_HEIGHT = {"person": (1.0, 1.0), "bicycle": (0.5, 0.62), "e-bike": (0.5, 0.66), "vehicle": (0.75, 1.1),
               "waste_pile": (0.15, 0.5), "trolley": (0.5, 0.6), "pram": (0.5, 0.62), "box_stack": (0.2, 0.5)}
_KIND_P = {"person": 0.22, "bicycle": 0.18, "e-bike": 0.22, "vehicle": 0.1, "waste_pile": 0.16,
           "trolley": 0.05, "pram": 0.05, "box_stack": 0.02}


def _place_objects(frame: np.ndarray, ground: int, rng: np.random.Generator, kinds: list[str],
                   person_h: tuple[float, float] = (0.12, 0.8)) -> tuple[np.ndarray, np.ndarray]:
    """Paste objects far-to-near; boxes of labelled objects at least 35 % visible."""
    H, W = frame.shape[:2]
    placed = []
    for kind in kinds:
        bottom = rng.uniform(ground + 0.02 * H, H * 1.02)
        depth = (bottom - ground) / max(H - ground, 1)  # 0 far .. 1 near
        ph = H * (person_h[0] + (person_h[1] - person_h[0]) * depth) * rng.uniform(0.85, 1.15)
        h = ph * rng.uniform(*_REL_HEIGHT[kind])
        placed.append((bottom, kind, h))
    placed.sort(key=lambda t: t[0])
    ids = np.zeros((H, W), np.int16)
    items = []
    for i, (bottom, kind, h) in enumerate(placed, start=1):
        patch, alpha = sp.draw(kind, rng, int(h))
        ph_, pw_ = alpha.shape
        lo = -0.2 * pw_
        x = int(rng.uniform(lo, max(lo + 1, W - 0.8 * pw_)))
        y = int(bottom - ph_)
        # soft contact shadow
        sx1, sx2 = max(0, x), min(W, x + pw_)
        sy1, sy2 = max(0, int(bottom) - ph_ // 12 - 1), min(H, int(bottom) + ph_ // 12 + 1)
        if sx2 > sx1 and sy2 > sy1:
            sh = np.zeros((sy2 - sy1, sx2 - sx1), np.float32)
            cv2.ellipse(sh, (x + pw_ // 2 - sx1, int(bottom) - sy1), (max(2, pw_ // 2), max(1, ph_ // 12)),
                        0, 0, 360, 0.35, -1)
            roi = frame[sy1:sy2, sx1:sx2]
            roi[...] = (roi * (1 - sh[..., None])).astype(np.uint8)
        box = sp.paste(frame, patch, alpha, x, y, shade=rng.uniform(0.75, 1.15))
        if box is None:
            continue
        x1, y1, x2, y2 = box
        sub = alpha[y1 - y:y2 - y, x1 - x:x2 - x] > 127
        ids[y1:y2, x1:x2][sub] = i
        items.append((i, kind, box, int(sub.sum())))
    boxes, classes = [], []
    for i, kind, box, area in items:
        if kind not in CLASSES or area == 0:
            continue
        x1, y1, x2, y2 = box
        visible = int((ids[y1:y2, x1:x2] == i).sum())
        if visible / area >= 0.35 and x2 - x1 >= 5 and y2 - y1 >= 5:
            boxes.append(box)
            classes.append(CLASSES.index(kind))
    return np.asarray(boxes, np.float32).reshape(-1, 4), np.asarray(classes, np.int64)


def detector_sample(seed: int, width: int | None = None, height: int | None = None
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(BGR frame, float32[N, 4] xyxy boxes, int64[N] class ids into :data:`CLASSES`)."""
    rng = np.random.default_rng([seed, 11])
    if width is None or height is None:
        width, height = [(320, 240), (384, 216), (320, 320), (288, 352), (400, 300)][int(rng.integers(5))]
    frame, ground, _ = bgs.background(width, height, seed)
    kinds = list(rng.choice(list(_KIND_P), size=int(rng.integers(0, 7)), p=np.array(list(_KIND_P.values()))))
    boxes, classes = _place_objects(frame, ground, rng, kinds)
    if rng.random() < 0.1:  # smoke as a distractor for the detector
        p = sm.random_plume(rng, width, height)
        frame = sm.blend(frame, sm.plume_alpha(p, width, height) * 0.6, p.colour)
    frame = bgs.camera(bgs.lighting(frame, rng), rng)
    return frame, boxes, classes


def smoke_sample(seed: int, size: int = 64) -> tuple[np.ndarray, int]:
    """(BGR crop resized to ``size``², label: 1 smoke, 0 background) — a candidate region's crop.

    Negatives are what the smoke detector's first stage lets through: changed, greyish regions —
    people and vehicles in grey, bags, lighting changes, blur — plus plain background.
    """
    rng = np.random.default_rng([seed, 13])
    W, H = int(rng.integers(160, 321)), int(rng.integers(120, 241))
    frame, ground, _ = bgs.background(W, H, seed)
    label = int(rng.random() < 0.5)
    if rng.random() < 0.6:
        kinds = list(rng.choice(list(_KIND_P), size=int(rng.integers(1, 4))))
        _place_objects(frame, ground, rng, kinds)
    if label:
        p = sm.random_plume(rng, W, H)
        alpha = sm.plume_alpha(p, W, H, t=rng.uniform(20, 400))
        frame = sm.blend(frame, alpha, p.colour)
        ys, xs = np.nonzero(alpha > 0.1)
        if len(xs) < 30:
            return smoke_sample(seed + 7_777_777, size)
        x1, x2, y1, y2 = np.percentile(xs, 5), np.percentile(xs, 95), np.percentile(ys, 5), np.percentile(ys, 95)
        jx, jy = (x2 - x1) * 0.2, (y2 - y1) * 0.2
        x1, x2 = x1 + rng.uniform(-jx, jx), x2 + rng.uniform(-jx, jx)
        y1, y2 = y1 + rng.uniform(-jy, jy), y2 + rng.uniform(-jy, jy)
    else:
        cw, ch = rng.uniform(0.1, 0.6) * W, rng.uniform(0.1, 0.6) * H
        x1, y1 = rng.uniform(0, W - cw), rng.uniform(0, H - ch)
        x2, y2 = x1 + cw, y1 + ch
    frame = bgs.camera(bgs.lighting(frame, rng), rng)
    x1, y1 = int(np.clip(x1, 0, W - 8)), int(np.clip(y1, 0, H - 8))
    x2, y2 = int(np.clip(x2, x1 + 8, W)), int(np.clip(y2, y1 + 8, H))
    if label and float(alpha[y1:y2, x1:x2].mean()) < 0.08:  # too thin to call: draw another sample
        return smoke_sample(seed + 7_777_777, size)
    crop = cv2.resize(frame[y1:y2, x1:x2], (size, size), interpolation=cv2.INTER_AREA)
    return crop, label


# ---------------------------------------------------------------- video scenes (RTSP tests, demos)

def _still(width, height, seed, kind=None):
    frame, ground, _ = bgs.background(width, height, seed, kind)
    return frame, ground


def _noisy(img: np.ndarray, rng: np.random.Generator, sigma: float) -> np.ndarray:
    if sigma <= 0:
        return img.copy()
    return np.clip(img + rng.standard_normal(img.shape, dtype=np.float32) * np.float32(sigma), 0, 255).astype(np.uint8)


def smoke_video(n: int, width: int = 320, height: int = 240, seed: int = 0, noise: float = 2.0,
                kind: str | None = None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(frame, float32 smoke opacity map) per frame: a plume growing from the bottom half."""
    bg, _ = _still(width, height, seed, kind)
    rng = np.random.default_rng([seed, 21])
    p = sm.random_plume(rng, width, height, source=(rng.uniform(0.3, 0.7) * width, rng.uniform(0.7, 0.95) * height))
    for t in range(n):
        a = sm.plume_alpha(p, width, height, t=t, grow_frames=max(10, n * 0.6))
        yield _noisy(sm.blend(bg, a, p.colour), rng, noise), a


def empty_video(n: int, width: int = 320, height: int = 240, seed: int = 0, noise: float = 2.0,
                kind: str | None = None) -> Iterator[np.ndarray]:
    """Frames of a still background with sensor noise only: nothing happens (no warning expected)."""
    bg, _ = _still(width, height, seed, kind)
    rng = np.random.default_rng([seed, 25])
    for _ in range(n):
        yield _noisy(bg, rng, noise)


def _appearing(n, appear_at, width, height, seed, noise, kind_obj, kind_bg, sub):
    bg, ground = _still(width, height, seed, kind_bg)
    rng = np.random.default_rng([seed, sub])
    obj = bg.copy()
    h = int(height * (0.18 if kind_obj == "waste_pile" else 0.35))
    patch, alpha = sp.draw(kind_obj, rng, h)
    x = int(width * rng.uniform(0.2, 0.6))
    y = int(min(height - 2, ground + (height - ground) * 0.6) - alpha.shape[0])
    box = np.asarray(sp.paste(obj, patch, alpha, x, y), np.float32)
    for i in range(n):
        yield _noisy(obj if i >= appear_at else bg, rng, noise), (box if i >= appear_at else None)


def dumping_video(n: int, appear_at: int = 10, width: int = 320, height: int = 240, seed: int = 0,
                  noise: float = 2.0) -> Iterator[tuple[np.ndarray, np.ndarray | None]]:
    """(frame, box or None): a waste pile appears at ``appear_at`` on a street/construction edge and stays."""
    kind = ("street", "construction", "entrance")[seed % 3]
    yield from _appearing(n, appear_at, width, height, seed, noise, "waste_pile", kind, 22)


def ebike_video(n: int, appear_at: int = 10, width: int = 320, height: int = 240, seed: int = 0,
                noise: float = 2.0, bicycle: bool = False) -> Iterator[tuple[np.ndarray, np.ndarray | None]]:
    """(frame, box or None): an e-bike (or, with ``bicycle``, an ordinary bicycle) parked in an
    elevator car or corridor from ``appear_at`` on."""
    kind = ("elevator", "corridor", "entrance")[seed % 3]
    yield from _appearing(n, appear_at, width, height, seed, noise, "bicycle" if bicycle else "e-bike", kind, 23)


def carried_dump_video(n: int, drop_at: int = 30, leave_at: int = 45, width: int = 320, height: int = 240,
                       seed: int = 0, noise: float = 2.0, stays: bool = False
                       ) -> Iterator[tuple[np.ndarray, np.ndarray | None, np.ndarray | None]]:
    """(frame, waste-pile box or None, person box or None): a person walks in from the left to a
    spot on a street/construction edge (frames ``0 .. drop_at``), leaves a waste pile there at
    ``drop_at``, stands beside it until ``leave_at`` and walks off to the right — the dumping rule's
    "someone brought it" case. With ``stays`` the person never leaves (and no pile appears): someone
    standing still, which a person detector should veto.

    The pictures of the other generators do not change (own random stream), so GENERATOR_VERSION
    stays."""
    kind = ("street", "construction", "entrance")[seed % 3]
    bg, ground = _still(width, height, seed, kind)
    rng = np.random.default_rng([seed, 24])
    pile, pile_a = sp.draw("waste_pile", rng, int(height * 0.18))
    person, person_a = sp.draw("person", rng, int(height * 0.6), facing_left=False)
    px = int(width * rng.uniform(0.35, 0.55))
    py = int(min(height - 2, ground + (height - ground) * 0.6) - pile_a.shape[0])
    with_pile = bg.copy()
    pile_box = np.asarray(sp.paste(with_pile, pile, pile_a, px, py), np.float32)
    feet = int(min(height - 2, ground + (height - ground) * 0.75))
    pw = person_a.shape[1]
    beside = px + pile_a.shape[1] if stays else px + pile_a.shape[1] // 2
    for i in range(n):
        dropped = i >= drop_at and not stays
        frame = (with_pile if dropped else bg).copy()
        if i < drop_at:
            x = int(-pw + (beside + pw) * i / drop_at)
        elif i < leave_at or stays:
            x = beside
        else:
            x = beside + (i - leave_at) * 8
        pbox = sp.paste(frame, person, person_a, x, feet - person_a.shape[0])
        yield (_noisy(frame, rng, noise), pile_box if dropped else None,
               None if pbox is None else np.asarray(pbox, np.float32))
