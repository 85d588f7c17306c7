"""Numba kernels of the smoke and dumping detectors, each with a plain numpy reference.

The kernels are pure functions of (arrays, state arrays, parameters), run on small working frames
(about 160 px wide) and release the GIL. Every ``name`` has a ``name_ref`` written with whole-array
numpy operations; the tests check they agree exactly (or to float rounding where stated).
"""
from __future__ import annotations

import numpy as np
from numba import njit

# BT.601 luma, as OpenCV's BGR2GRAY
_WB, _WG, _WR = np.float32(0.114), np.float32(0.587), np.float32(0.299)


# --- smoke: per-block statistics ------------------------------------------------------------------
@njit(cache=True, nogil=True)
def block_stats(img, bg, block, out):
    """Per ``block``×``block`` tile of a BGR frame and its BGR float background:

    out[by, bx, 0] mean chroma of the frame  (max(B,G,R) - min(B,G,R))
    out[by, bx, 1] mean chroma of the background
    out[by, bx, 2] mean gradient energy of the frame's luma (|dx| + |dy|, forward differences)
    out[by, bx, 3] mean gradient energy of the background's luma
    out[by, bx, 4] mean |luma - background luma|
    out[by, bx, 5] mean gradient energy of the difference ``luma - background luma`` (how sharp the
                   change is: a translucent veil changes a tile smoothly, an opaque thing in front
                   of it brings its own outline and texture)

    img: uint8[H, W, 3]; bg: float32[H, W, 3]; out: float32[H // block, W // block, 6].
    Pixels beyond the last full tile are ignored; differences at a tile's right/bottom edge use
    the next pixel when it exists in the frame.
    """
    h, w = img.shape[0], img.shape[1]
    nby, nbx = h // block, w // block
    for by in range(nby):
        for bx in range(nbx):
            s0 = np.float32(0.0); s1 = np.float32(0.0); s2 = np.float32(0.0); s3 = np.float32(0.0); s4 = np.float32(0.0)
            s5 = np.float32(0.0)
            for y in range(by * block, by * block + block):
                for x in range(bx * block, bx * block + block):
                    b = np.float32(img[y, x, 0]); g = np.float32(img[y, x, 1]); r = np.float32(img[y, x, 2])
                    s0 += max(b, g, r) - min(b, g, r)
                    bb = bg[y, x, 0]; bgg = bg[y, x, 1]; br = bg[y, x, 2]
                    s1 += max(bb, bgg, br) - min(bb, bgg, br)
                    l = _WB * b + _WG * g + _WR * r
                    lb = _WB * bb + _WG * bgg + _WR * br
                    s4 += abs(l - lb)
                    if x + 1 < w:
                        l1 = _WB * np.float32(img[y, x + 1, 0]) + _WG * np.float32(img[y, x + 1, 1]) + _WR * np.float32(img[y, x + 1, 2])
                        lb1 = _WB * bg[y, x + 1, 0] + _WG * bg[y, x + 1, 1] + _WR * bg[y, x + 1, 2]
                        s2 += abs(l1 - l)
                        s3 += abs(lb1 - lb)
                        s5 += abs((l1 - lb1) - (l - lb))
                    if y + 1 < h:
                        l1 = _WB * np.float32(img[y + 1, x, 0]) + _WG * np.float32(img[y + 1, x, 1]) + _WR * np.float32(img[y + 1, x, 2])
                        lb1 = _WB * bg[y + 1, x, 0] + _WG * bg[y + 1, x, 1] + _WR * bg[y + 1, x, 2]
                        s2 += abs(l1 - l)
                        s3 += abs(lb1 - lb)
                        s5 += abs((l1 - lb1) - (l - lb))
            n = np.float32(block * block)
            out[by, bx, 0] = s0 / n
            out[by, bx, 1] = s1 / n
            out[by, bx, 2] = s2 / n
            out[by, bx, 3] = s3 / n
            out[by, bx, 4] = s4 / n
            out[by, bx, 5] = s5 / n


def block_stats_ref(img: np.ndarray, bg: np.ndarray, block: int) -> np.ndarray:
    h, w = img.shape[:2]
    nby, nbx = h // block, w // block
    f = img.astype(np.float32)
    bgf = bg.astype(np.float32)
    w3 = np.array([_WB, _WG, _WR], np.float32)
    luma, lumab = f @ w3, bgf @ w3
    chroma, chromab = f.max(2) - f.min(2), bgf.max(2) - bgf.min(2)

    def grad(l: np.ndarray) -> np.ndarray:
        g = np.zeros_like(l)
        g[:, :-1] += np.abs(l[:, 1:] - l[:, :-1])
        g[:-1, :] += np.abs(l[1:, :] - l[:-1, :])
        return g

    def tiles(a: np.ndarray) -> np.ndarray:
        return a[: nby * block, : nbx * block].reshape(nby, block, nbx, block).mean(axis=(1, 3))

    return np.stack([tiles(chroma), tiles(chromab), tiles(grad(luma)), tiles(grad(lumab)),
                     tiles(np.abs(luma - lumab)), tiles(grad(luma - lumab))], axis=2).astype(np.float32)


@njit(cache=True, nogil=True)
def update_background_blocks(img, bg, frozen, block, alpha):
    """Running average ``bg += alpha * (img - bg)`` except in tiles where ``frozen[by, bx]`` != 0
    (a candidate must not be learnt into the background). Pixels beyond the tiles always update."""
    h, w = img.shape[0], img.shape[1]
    nby, nbx = frozen.shape
    for y in range(h):
        by = y // block
        for x in range(w):
            bx = x // block
            if by < nby and bx < nbx and frozen[by, bx] != 0:
                continue
            for c in range(3):
                bg[y, x, c] += alpha * (np.float32(img[y, x, c]) - bg[y, x, c])


def update_background_blocks_ref(img: np.ndarray, bg: np.ndarray, frozen: np.ndarray, block: int, alpha: float) -> None:
    h, w = img.shape[:2]
    keep = np.zeros((h, w), bool)
    nby, nbx = frozen.shape
    keep[: nby * block, : nbx * block] = np.repeat(np.repeat(frozen != 0, block, 0), block, 1)
    upd = bg + np.float32(alpha) * (img.astype(np.float32) - bg)
    bg[~keep] = upd[~keep]


# --- dumping: long-term vs short-term background ----------------------------------------------------
@njit(cache=True, nogil=True)
def dual_background(gray, bg_long, bg_short, evidence, activity, mask, threshold, a_long, a_long_fg, a_short,
                    a_activity, dt, decay, cap, t_static, static):
    """One step of the dual-background static-object test (Porikli et al.), per pixel:

    * long-term foreground ``fl = |g - bg_long| > threshold``; short-term ``fs = |g - bg_short| > threshold``
    * candidate = ``mask and fl and not fs``: changed against the long-term background but already
      absorbed by the short-term one, i.e. something new that stopped moving
    * ``evidence`` (seconds) grows by ``dt`` on a candidate (up to ``cap``) and shrinks by
      ``decay * dt`` otherwise (not below 0)
    * ``bg_short`` learns at ``a_short``; ``bg_long`` at ``a_long`` where it is background and at
      the much slower ``a_long_fg`` where it is foreground (a permanent change is learnt eventually)
    * ``activity`` follows ``|g - bg_short|`` at rate ``a_activity`` (how much the pixel still moves:
      a standing person sways, a dumped bag does not)
    * ``static = evidence >= t_static``

    gray uint8[H, W]; bg_long, bg_short, evidence, activity float32[H, W] (updated); mask, static uint8[H, W].
    Returns the number of static pixels.
    """
    h, w = gray.shape
    n = 0
    for y in range(h):
        for x in range(w):
            g = np.float32(gray[y, x])
            dl = g - bg_long[y, x]
            ds = g - bg_short[y, x]
            fl = abs(dl) > threshold
            fs = abs(ds) > threshold
            e = evidence[y, x]
            if mask[y, x] != 0 and fl and not fs:
                e = min(e + dt, cap)
            else:
                e = max(e - decay * dt, np.float32(0.0))
            evidence[y, x] = e
            activity[y, x] += a_activity * (abs(ds) - activity[y, x])
            bg_short[y, x] += a_short * ds
            bg_long[y, x] += (a_long_fg if fl else a_long) * dl
            if e >= t_static:
                static[y, x] = 1
                n += 1
            else:
                static[y, x] = 0
    return n


def dual_background_ref(gray, bg_long, bg_short, evidence, activity, mask, threshold, a_long, a_long_fg, a_short,
                        a_activity, dt, decay, cap, t_static, static) -> int:
    f32 = np.float32
    g = gray.astype(np.float32)
    dl, ds = g - bg_long, g - bg_short
    fl, fs = np.abs(dl) > f32(threshold), np.abs(ds) > f32(threshold)
    cand = (mask != 0) & fl & ~fs
    evidence[...] = np.where(cand, np.minimum(evidence + f32(dt), f32(cap)),
                             np.maximum(evidence - f32(decay) * f32(dt), f32(0)))
    activity += f32(a_activity) * (np.abs(ds) - activity)
    bg_short += f32(a_short) * ds
    bg_long += np.where(fl, f32(a_long_fg), f32(a_long)) * dl
    static[...] = evidence >= f32(t_static)
    return int(static.sum())
