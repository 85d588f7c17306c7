"""Smoke: a training-free candidate stage with temporal rules, and an optional ONNX classifier.

On a small working frame (``work_width`` px wide) split into ``block``-px tiles, a tile is a
*candidate* in a frame when, against a slowly learnt background (frozen where candidates are, and
learnt only over ``foreground_tau_s`` where something opaque covers a tile, so that passers-by do
not leave it out of date):

* it changed: mean |luma − background luma| ≥ ``min_diff`` (smoke moves in);
* it is grey: mean chroma ≤ ``max_chroma`` and not more colourful than the background was
  (smoke desaturates; a red jacket or an orange bag does not);
* its edges faded: gradient energy ≤ ``max_edge_ratio`` × the background's (+ ``edge_slack``)
  (smoke veils texture; a person or an object in front of a wall adds edges) — but not below
  ``min_edge_ratio`` × the background's: texture still shows through thin smoke, while dark
  clothing or a vehicle body hides it completely (dense, opaque smoke is then found by its
  translucent fringe);
* the change is soft: the gradient energy of the *difference* (frame − background) is at most
  ``max_sharpness`` × its mean magnitude (+ ``sharpness_slack``). A veil of smoke changes a tile
  smoothly (frame ≈ (1 − a)·background + a·grey with a slowly varying a), while a person, a bag
  or a car in front of the background brings its own outline and texture into the difference,
  even when its clothing is as grey and as dimly textured as the pavement. Sensor noise alone gives
  the difference some gradient energy; its floor (the median over the frame's unchanged tiles) is
  taken off first, or a faint veil would be called sharp because of the noise.

A tile over a colourful background passes the grey test also when smoke has taken its chroma down
to ``desaturation`` × the background's (thin smoke over a red wall is still pinkish), or when it lost
at least as large a share of its colour as of its texture (chroma ≤ (edge ratio + ``veil_chroma``)
× the background's): a veil of opacity a scales both by about 1 − a, so thin smoke over a strongly
coloured wall, which keeps most of its colour, still passes, while something opaque in front of
the wall brings colour and texture of its own, not the wall's in proportion.

Smoke keeps moving: a candidate also needs ``min_flicker`` of recent frame-to-frame change. That
memory is wiped in a tile whenever something opaque and sharp-edged covers it (a passer-by), so a
person walking through a tile whose background is out of date does not lend it the movement
that only smoke should supply. A tile already in the smoke region needs only ``keep_flicker`` ×
``min_flicker`` to stay in it (hysteresis: a plume's texture drifts slowly once it has thickened;
entering still takes the full movement, so a region cannot form or grow on less).

A tile whose change is soft (it passes the sharpness test) and at least ``hold_diff`` × ``min_diff``
is learnt into the background only over ``foreground_tau_s``, as one something opaque covers: a
slowly thickening plume would otherwise be learnt away before its change reached ``min_diff``.

Evidence per tile accumulates in seconds while it is a candidate and decays otherwise (at
``decay`` per second gained, or ``sparse_decay`` per observation when frames come more than
``max_step_s`` apart, as keyframes do); tiles with
``persist_s`` of evidence form the smoke region (someone walking through a tile never builds it
up). The region is followed from frame to frame: a largest patch farther than ``link_tiles`` tiles
from the previous one is a new region (scattered patches appearing in turn are not one growing
plume; a plume's texture leaves holes, so its largest patch hops between neighbouring pieces). A warning is
raised when the region has existed for ``duration_s`` (and ``min_frames`` observations) and is
still growing — area × ``growth`` or its top risen by a tile against ``growth_window_s`` ago, or
against its smallest size within ``growth_lookback_s`` — with at least ``min_blocks`` tiles.
With a classifier model (``model_kind = "classifier"``; by default the shipped ``smoke-cls``, a
64×64 background/smoke classifier), the crop of the region's candidate tiles (their bounding box)
must also score ``classifier_min`` for the class named ``classifier_class`` when the temporal rule
is satisfied. After a veto the region is asked about again only once it has new evidence to show:
grown to ``reask_growth`` × its size at the veto, or its top risen by a tile (with
``reask_growth`` 0, as before, a veto wipes the region's evidence and it has to build up again).
The classifier is a veto: it can only remove warnings, and it costs one small inference per
satisfied rule and per growth step after a veto.
The warning clears after ``clear_s`` without a region.
"""
from __future__ import annotations

from collections import deque

import cv2
import numpy as np
from pydantic import Field

from . import video_kernels as k
from .base import CLEAR, RAISE, UPDATE, DetectorParams, FrameInput, Hit, VideoDetector


class SmokeParams(DetectorParams):
    work_width: int = Field(160, ge=32, le=640, description="Width of the working frame (height keeps the aspect).")
    block: int = Field(8, ge=2, le=64, description="Tile size in working-frame pixels.")
    background_tau_s: float = Field(30.0, gt=0, description="Time constant of the background (seconds).")
    foreground_tau_s: float = Field(300.0, gt=0, description="…where something opaque covers a tile (a passer-by, a "
                                    "parked car): learnt this slowly.")
    min_diff: float = Field(8.0, gt=0, description="Mean luma change of a tile against the background (0-255).")
    max_chroma: float = Field(28.0, gt=0, description="Mean chroma (max-min of B,G,R) of a candidate tile.")
    desaturation: float = Field(0.85, ge=0, le=1, description="…or at most this fraction of the background's chroma "
                                "(smoke over a colourful background greys it; 0 turns this off).")
    chroma_slack: float = Field(4.0, ge=0, description="A candidate may be at most this much more colourful than the background.")
    max_edge_ratio: float = Field(0.9, gt=0, description="Gradient energy of a candidate tile / the background's.")
    min_edge_ratio: float = Field(0.35, ge=0, description="…but not below this: texture still shows through thin smoke, "
                                  "while a person or vehicle in front of it hides it completely.")
    edge_slack: float = Field(1.0, ge=0, description="Absolute allowance added to the edge test (flat backgrounds).")
    max_sharpness: float = Field(0.55, ge=0, description="Gradient energy of the difference frame - background, per unit of "
                                 "mean difference, in a candidate tile, after the frame's sensor-noise floor is taken off: smoke "
                                 "changes a tile smoothly; a person or an object brings its own outline and texture. Not a "
                                 "clean split on its own (generated plumes: tile medians 0.1-0.55, dense textured ones "
                                 "higher; generated people 0.2-0.45; the other tests and the persistence do the rest). "
                                 "Chosen on the tuning plumes (seeds 0-29, 100-159: 0.45 raised 38 of 59 visible ones with "
                                 "smoke-cls, 0.55 42, 0.6 43) and the tuning clip vtest (largest region, analysed at half "
                                 "rate: 0.45 2 tiles, 0.55 4 = half of min_blocks, 0.6 5, 0.8 10).")
    veil_chroma: float = Field(0.06, ge=-1, le=0.5, description="…or its chroma is at most (its edge ratio, frame / "
                               "background gradient energy, + this) × the background's: a veil takes colour and texture "
                               "away alike, so thin smoke over a strongly coloured background passes (negative = off). "
                               "Chosen on the tuning plumes (seeds 0-29, 100-159, with keep_flicker 0.8 and hold_diff 0.5; "
                               "rule alone: off 53 of 59 visible ones raised, 0 / 0.03 53, 0.06 54, 0.1 55; with smoke-cls "
                               "0.06 and 0.1 both 45, and 0.1 one fewer of the 40 s plumes in full decode, so the smaller "
                               "loosening was taken); the largest region on vtest stays as it was.")
    sharpness_slack: float = Field(0.5, ge=0, description="Absolute allowance added to the sharpness test (what is left "
                                   "of the sensor noise after its floor is taken off).")
    min_flicker: float = Field(1.0, ge=0, description="Smoke keeps moving: a candidate tile's mean frame-to-frame luma "
                               "change (averaged over about a second) must reach this. Stops ghosts of things that left.")
    keep_flicker: float = Field(0.8, ge=0, le=1, description="A tile already in the smoke region stays a candidate "
                                "with this fraction of min_flicker (hysteresis; 1 = off). Chosen on the tuning plumes "
                                "(seeds 0-29, 100-159, rule alone, with veil_chroma and hold_diff): 1 51 of 59 visible ones "
                                "raised, 0.9 53, 0.8 / 0.7 54; and the tuning clip vtest (largest region analysed at half "
                                "rate: 2 tiles with hold_diff; without it 0.8 gave 5, beyond half of min_blocks, 0.9 4).")
    hold_diff: float = Field(0.5, ge=0, le=1, description="A tile whose change is soft and at least this × min_diff is "
                             "learnt into the background only over foreground_tau_s (0 = off): a slow plume's thin start "
                             "is not learnt away before it thickens. Chosen on the 40 s tuning plumes (seeds 0-29, full "
                             "decode, rule alone, keep_flicker 0.9 when it was chosen): off 16 of 19 raised, 0.35 / 0.5 / "
                             "0.75 18 (with keep_flicker 0.8: 19; no change on 10 s plumes); on vtest it shrinks the "
                             "largest region (4 to 2 tiles).")
    persist_s: float = Field(1.0, gt=0, description="Seconds of evidence before a tile belongs to the smoke region.")
    decay: float = Field(2.0, ge=0, description="Evidence lost per second when a tile is not a candidate, per second gained.")
    sparse_decay: float = Field(1.0, description="…per observation, when observations are more than max_step_s "
                                "apart (keyframes; negative = decay as at full rate). Frames 2 s apart are nearly "
                                "independent looks at a drifting plume, whose tiles pass the tests in some of them, "
                                "not in runs as at 5 fps, where decay 2 then wipes them out. Chosen on the 40 s "
                                "tuning plumes with keyframes (seeds 0-29, 100-159, with smoke-cls: 2 (as at full "
                                "rate) 43 of 59 visible ones, 1.5 44, 1 46, 0.5 47, but with 0.5 the real clip vtest "
                                "formed a 7-tile region that reached the temporal rule; with 1 its largest is 5 "
                                "tiles and never reaches it).")
    duration_s: float = Field(3.0, gt=0, description="The region must exist this long (T) before a warning.")
    growth: float = Field(1.5, ge=1, description="…and still be growing: area × this factor, or its top risen by a tile, "
                          "within the last growth_window_s (a ghost of something that left stops changing).")
    growth_window_s: float = Field(2.0, gt=0, description="Window of the growth test (seconds).")
    growth_lookback_s: float = Field(10.0, ge=0, description="…or, when longer than growth_window_s, grown from its "
                                     "smallest size within this many seconds (at least growth_window_s and growth_frames "
                                     "back; 0 = only the window). With keyframes every 2 s the region needs min_frames "
                                     "(16 s) and a plume may have stopped spreading by then, though it grew from a few "
                                     "tiles in the last 10 s. Chosen on the 40 s tuning plumes with keyframes (seeds 0-29, "
                                     "100-159, with smoke-cls and min_blocks 6: off 41 of 59 visible ones, 10 s 43, 20 s "
                                     "43; full decode unchanged, 55 of 59).")
    min_blocks: int = Field(6, ge=1, description="Smallest region (tiles) that can raise a warning. Chosen on the tuning "
                            "plumes (seeds 0-29 and 100-159, with smoke-cls, reask_growth and growth_lookback_s; 40 s "
                            "clips, full decode: 8 raised 51 of 59 visible ones, 7 53, 6 55; keyframes 39 / 42 / 43; 10 s "
                            "clips: 48 / 49 / 50): three tuning plumes peaked at 7 tiles; the largest region on the real clips stays at most 5 "
                            "(vtest at 640 px) and never reaches the temporal rule.")
    link_tiles: int = Field(2, ge=1, le=4, description="A largest patch within this many tiles of the previous "
                            "frame's region is the same region grown (a plume's texture leaves holes in it, so its "
                            "largest patch hops between neighbouring pieces); farther away it is a new region.")
    persist_frames: int = Field(3, ge=1, description="…and the tile must have been a candidate in this many analysed "
                                "frames (observations), not only for persist_s: one frame every 2 s (keyframes) is one "
                                "observation, not 2 s of continuous evidence.")
    min_frames: int = Field(8, ge=1, description="The region must have been seen in this many analysed frames before a "
                            "warning, however far apart they are (at 5 fps duration_s gives more; with keyframes every "
                            "2 s this is what holds a warning back to ~16 s of growing smoke).")
    growth_frames: int = Field(3, ge=2, description="The growth test compares the region with how it was at least this "
                               "many observations back (and growth_window_s), so two keyframes cannot make a growth.")
    gain_window: int = Field(11, ge=0, le=15, description="Light changes are taken off before differencing: each "
                             "tile's brightness ratio to the background, median-filtered over this many tiles "
                             "(odd; 0 = off), is the scene's gain there. A cloud, the camera's exposure or headlights "
                             "change whole regions alike (the median keeps their edges); smoke changes a patch "
                             "smaller than half the window, which the median ignores.")
    gain_min: float = Field(0.03, ge=0, description="Gains within this of 1 are left alone (sensor noise).")
    max_step_s: float = Field(1.0, gt=0, description="Evidence one frame can add (seconds): frames further apart than "
                              "this add only this much.")
    clear_s: float = Field(10.0, gt=0, description="Clear the warning after this long without a region.")
    classifier_class: str = Field("smoke", description="Class name of the optional classifier that means smoke.")
    classifier_min: float = Field(0.55, ge=0, le=1, description="Classifier probability a region needs (calibrated: smoke-cls CARD.md).")
    reask_growth: float = Field(1.25, ge=0, description="After a veto the region keeps its evidence and the classifier "
                                "is asked again only about new evidence: once the region has grown to this × its size at "
                                "the last veto, or its top has risen by a tile (0 = off: a veto wipes the region's "
                                "evidence, and it has to build up again before the next ask). A plume's first crop is "
                                "often its thin start; a region that stops growing is not asked again. Chosen on the "
                                "tuning plumes (seeds 0-29, 100-159, with min_blocks 6 and growth_lookback_s; 10 s, full "
                                "decode: off 49 of 59 visible ones, 1.25 50, 1.5 50; 40 s: 54 / 55 / 53; 40 s with "
                                "keyframes: 42 / 43 / 43).")


class SmokeDetector(VideoDetector):
    kind = "smoke"
    Params = SmokeParams
    model_kind = "classifier"
    default_model = "smoke-cls"

    def __init__(self, *a, **kw) -> None:
        super().__init__(*a, **kw)
        self.bg: np.ndarray | None = None
        self.evidence: np.ndarray | None = None
        self.last_ts: int | None = None
        self.region_since: int | None = None
        self.start_area = 0
        self.start_top = 0
        self.last_region_ts: int | None = None
        self.active = False
        self.shape_history: deque[tuple[int, int, int]] = deque()  # (ts, tiles, top tile row) of the region
        self.region: np.ndarray | None = None  # the previous frame's region (bool tiles)
        self.sharp: np.ndarray | None = None  # tiles an opaque, sharp-edged thing covers in this frame
        self.classifier_runs = 0  # crops the classifier stage has seen
        self.classifier_probs: deque[float] = deque(maxlen=64)  # its latest verdicts (probability of smoke)
        self.region_frames = 0  # analysed frames the current region has been seen in
        self.resets = 0

    def reset(self, ts_ms: int) -> None:
        self.bg = None  # the next frame sets everything up afresh (background, evidence, flicker)
        self.evidence = None
        self.region = None
        self.region_since = None
        self.region_frames = 0
        self.shape_history.clear()
        self.resets += 1

    def busy(self) -> bool:
        return self.bg is None or self.active or bool(self.evidence.any())

    def _work(self, img: np.ndarray) -> np.ndarray:
        h, w = img.shape[:2]
        ww = min(self.p.work_width, w)
        wh = max(self.p.block, round(h * ww / w))
        return cv2.resize(img, (ww, wh), interpolation=cv2.INTER_AREA) if (ww, wh) != (w, h) else img

    def gain(self, luma: np.ndarray) -> np.ndarray | None:
        """float32[nby, nbx]: the scene's brightness gain against the background per tile (a
        regional light change), or None where there is none to take off."""
        p = self.p
        if p.gain_window < 3:
            return None
        b = p.block
        nby, nbx = self.evidence.shape
        bl = cv2.cvtColor(self.bg, cv2.COLOR_BGR2GRAY)
        lt = cv2.resize(luma[: nby * b, : nbx * b].astype(np.float32), (nbx, nby), interpolation=cv2.INTER_AREA)
        bt = cv2.resize(bl[: nby * b, : nbx * b], (nbx, nby), interpolation=cv2.INTER_AREA)
        ratio = np.clip((lt + 4.0) / (bt + 4.0) * 100.0, 0, 255).astype(np.uint8)
        win = p.gain_window | 1
        if min(nby, nbx) < win:
            g = np.full((nby, nbx), np.median(ratio), np.float32) / 100.0
        else:
            g = cv2.medianBlur(ratio, win).astype(np.float32) / 100.0  # uint8: any odd window
        g[np.abs(g - 1.0) < p.gain_min] = 1.0
        return None if (g == 1.0).all() else g

    def candidates(self, work: np.ndarray, luma: np.ndarray | None = None) -> np.ndarray:
        """bool[nby, nbx]: the tiles that look like smoke in this frame (against the background,
        with the scene's regional gain taken off it first)."""
        p = self.p
        s = self.stats
        bg = self.bg
        g = self.gain(luma) if luma is not None else None
        if g is not None:
            h, w = bg.shape[:2]
            full = np.ones((h, w), np.float32)
            nby, nbx = g.shape
            full[: nby * p.block, : nbx * p.block] = np.repeat(np.repeat(g, p.block, 0), p.block, 1)
            bg = np.ascontiguousarray(np.clip(bg * full[..., None], 0, 255), np.float32)
        self.gains = g
        k.block_stats(work, bg, p.block, s)
        changed = s[..., 4] >= p.min_diff
        # sensor noise alone gives the difference some gradient energy: measured in this frame's
        # unchanged tiles and taken off, so that a faint veil is not called sharp because of it
        quiet = s[..., 4] < p.min_diff / 2
        noise = float(np.median(s[..., 5][quiet])) if int(quiet.sum()) >= 8 else 0.0
        soft = s[..., 5] - noise <= p.max_sharpness * s[..., 4] + p.sharpness_slack
        self.sharp = changed & ~soft
        # a soft change, not yet a candidate, is not learnt away quickly (see hold_diff)
        self.soft_change = (s[..., 4] >= p.hold_diff * p.min_diff) & soft if p.hold_diff > 0 else None
        grey = (s[..., 0] <= p.max_chroma) | (s[..., 0] <= p.desaturation * s[..., 1])
        if p.veil_chroma >= 0:  # a veil takes colour and texture away alike
            grey |= s[..., 0] <= (s[..., 2] / np.maximum(s[..., 3], 1e-3) + p.veil_chroma) * s[..., 1]
        return (changed & soft & grey & (s[..., 0] <= s[..., 1] + p.chroma_slack)
                & (s[..., 2] <= p.max_edge_ratio * s[..., 3] + p.edge_slack)
                & (s[..., 2] >= p.min_edge_ratio * s[..., 3] - p.edge_slack))

    def update(self, f: FrameInput) -> list[Hit]:
        p = self.p
        work = np.ascontiguousarray(self._work(f.image))
        h, w = work.shape[:2]
        nby, nbx = h // p.block, w // p.block
        if self.bg is None or self.bg.shape[:2] != (h, w) or f.motion.global_change:
            self.bg = work.astype(np.float32)
            self.evidence = np.zeros((nby, nbx), np.float32)
            self.observed = np.zeros((nby, nbx), np.float32)  # candidate frames per tile (decays like evidence)
            self.region_since = None
            self.region_frames = 0
            self.shape_history.clear()
            self.stats = np.zeros((nby, nbx, 6), np.float32)
            self.region = None
            self.watched = self.watch_mask(nbx, nby) != 0  # inside its zones, outside the masks
            self.flicker = np.zeros((nby, nbx), np.float32)
            self.prev = cv2.cvtColor(work, cv2.COLOR_BGR2GRAY)
            self.last_ts = f.ts_ms
            return self._maybe_clear(f)
        dt = max(0.0, min((f.ts_ms - self.last_ts) / 1000.0, 5.0))
        step = min(dt, p.max_step_s)  # evidence per observation: a frame 2 s after the last is one frame
        self.last_ts = f.ts_ms
        luma = cv2.cvtColor(work, cv2.COLOR_BGR2GRAY)
        change = cv2.resize(cv2.absdiff(luma, self.prev)[: nby * p.block, : nbx * p.block].astype(np.float32),
                            (nbx, nby), interpolation=cv2.INTER_AREA)  # tile means
        self.prev = luma
        self.flicker += np.float32(1.0 - np.exp(-dt / 1.0)) * (change - self.flicker)
        cand = self.candidates(work, luma) & self.watched
        self.flicker[self.sharp] = 0.0  # a passer-by's movement is not smoke's
        need = p.min_flicker
        if self.region is not None and p.keep_flicker < 1:  # hysteresis: staying in the region takes less
            need = np.where(self.region, np.float32(p.min_flicker * p.keep_flicker), np.float32(p.min_flicker))
        cand &= self.flicker >= need
        ev = self.evidence
        ev[cand] = np.minimum(ev[cand] + step, p.duration_s + p.persist_s)
        decay = p.decay if dt <= p.max_step_s or p.sparse_decay < 0 else p.sparse_decay
        ev[~cand] = np.maximum(ev[~cand] - decay * step, 0.0)
        obs = self.observed
        obs[cand] = np.minimum(obs[cand] + 1.0, 4.0 * p.persist_frames)
        obs[~cand] = np.maximum(obs[~cand] - decay, 0.0)
        obs[ev <= 0] = 0.0
        region = self._largest((ev >= p.persist_s) & (obs >= p.persist_frames))
        alpha = np.float32(1.0 - np.exp(-dt / p.background_tau_s))
        # not learnt: tiles building up evidence; learnt only slowly: tiles something opaque covers
        # (passers-by would drag the background towards their clothes, and the empty scene's
        # lighting would then drift away from it; a car that parks is learnt in minutes)
        building = ev > 0
        opaque = self.sharp if self.soft_change is None else (self.sharp | self.soft_change)
        k.update_background_blocks(work, self.bg, (building | opaque).astype(np.uint8), p.block, alpha)
        slow = opaque & ~building
        if slow.any():
            a_fg = np.float32(1.0 - np.exp(-dt / p.foreground_tau_s))
            k.update_background_blocks(work, self.bg, (~slow).astype(np.uint8), p.block, a_fg)
        n = int(region.sum())
        previous, self.region = self.region, region
        if n == 0:
            self.region_since = None
            return self._maybe_clear(f)
        link = np.ones((2 * p.link_tiles + 1, 2 * p.link_tiles + 1), np.uint8)
        if previous is not None and not (cv2.dilate(previous.astype(np.uint8), link) & region).any():
            self.region_since = None  # a patch elsewhere: a new region, not the old one grown
        self.last_region_ts = f.ts_ms
        ys, xs = np.nonzero(region)
        top = int(ys.min())
        if self.region_since is None:
            self.region_since, self.start_area, self.start_top = f.ts_ms, n, top
            self.vetoed = None
            self.shape_history.clear()
            self.region_frames = 0
        self.region_frames += 1
        self.shape_history.append((f.ts_ms, n, top))
        keep_ms = max(p.growth_window_s, p.growth_lookback_s) * 1000
        while len(self.shape_history) > p.growth_frames and f.ts_ms - self.shape_history[1][0] >= keep_ms:
            self.shape_history.popleft()
        if self.active:  # still smoke: the warning's "updated" (region size; the classifier is not re-run)
            return [Hit(UPDATE, 0, f.ts_ms, float("nan") if self.model is not None else float(n), label="smoke")]
        t_then, n_then, top_then = self.shape_history[0]
        if p.growth_lookback_s > p.growth_window_s:  # grown from its smallest within the look-back
            hist = list(self.shape_history)[: len(self.shape_history) - (p.growth_frames - 1)]
            old = [e for e in hist if f.ts_ms - e[0] >= p.growth_window_s * 1000 * 0.9]
            grown = bool(old) and (n >= p.growth * min(e[1] for e in old) or top < max(e[2] for e in old))
            if old:
                t_then, n_then, top_then = min(old, key=lambda e: e[1])
        else:
            grown = (f.ts_ms - t_then >= p.growth_window_s * 1000 * 0.9 and len(self.shape_history) >= p.growth_frames
                     and (n >= p.growth * n_then or top < top_then))
        if (f.ts_ms - self.region_since < p.duration_s * 1000 or self.region_frames < p.min_frames or not grown
                or n < p.min_blocks):
            return []
        sx, sy = f.image.shape[1] / w, f.image.shape[0] / h
        box = (float(xs.min() * p.block * sx), float(ys.min() * p.block * sy),
               float((xs.max() + 1) * p.block * sx), float((ys.max() + 1) * p.block * sy))
        score = float(n)
        detail = {"blocks": n, "blocks_at_start": self.start_area, "blocks_before": n_then, "top_before": top_then, "top": top,
                  "frames": self.region_frames,
                  "seconds": round((f.ts_ms - self.region_since) / 1000, 2)}
        if self.model is not None:
            if self.vetoed is not None:  # asked before: only new evidence (the region grew) is asked about
                v_n, v_top = self.vetoed
                if n < p.reask_growth * v_n and top >= v_top:
                    return []
            prob = self._classify(f.image, box)
            if prob < p.classifier_min:
                if p.reask_growth > 0:
                    self.vetoed = (n, top)
                    return []
                ev[region] = 0.0  # the classifier says no: start over
                obs[region] = 0.0
                self.region_since = None
                return []
            score = prob
            detail["classifier_prob"] = round(prob, 3)
        self.active = True
        return [Hit(RAISE, 0, f.ts_ms, score, [box], "smoke", f.image, detail=detail)]

    vetoed: tuple[int, int] | None = None  # (tiles, top row) of the current region when the classifier last said no
    soft_change: np.ndarray | None = None  # tiles with a soft change learnt only slowly (hold_diff)
    gains: np.ndarray | None = None  # the last frame's regional gain per tile (None: none taken off)

    @staticmethod
    def _largest(region: np.ndarray) -> np.ndarray:
        """The largest 8-connected group of tiles (a plume is one connected patch; scattered tiles are not)."""
        if not region.any():
            return region
        n, labels, stats, _ = cv2.connectedComponentsWithStats(region.astype(np.uint8), connectivity=8)
        if n <= 2:
            return region
        return labels == 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))

    def _classify(self, image: np.ndarray, box: tuple[float, float, float, float]) -> float:
        x1, y1, x2, y2 = (int(v) for v in box)
        crop = image[max(0, y1):max(y1 + 1, y2), max(0, x1):max(x1 + 1, x2)]
        probs = self.model.classify([crop])[0]
        ids = [i for i, n in self.model.names.items() if n.lower() == self.p.classifier_class.lower()]
        prob = float(probs[ids[0]]) if ids else 0.0
        self.classifier_runs += 1
        self.classifier_probs.append(prob)
        return prob

    def _maybe_clear(self, f: FrameInput) -> list[Hit]:
        if self.active and (self.last_region_ts is None or f.ts_ms - self.last_region_ts >= self.p.clear_s * 1000):
            self.active = False
            return [Hit(CLEAR, 0, f.ts_ms, label="smoke")]
        return []

