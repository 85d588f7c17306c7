"""Dumping: something new that stays, found with a long-term and a short-term background.

On a small grey working frame, :func:`~gridwatch.detectors.video_kernels.dual_background`
keeps two running backgrounds: the short-term one absorbs a stopped object within seconds, the
long-term one only after many minutes. A pixel that differs from the long-term background but no
longer from the short-term one is *static-object evidence*, which accumulates (seconds) and decays
``decay`` times as fast when the pixel stops qualifying. Pixels with ``duration_s`` (T) of evidence
form static blobs; one above ``min_area`` (fraction of the frame) raises a warning, with a
*before* snapshot (the scene just before the blob first appeared) and an *after* snapshot.

With a person/vehicle detector configured (``model``, e.g. the shipped ``objects-det``, whose
``person`` and ``vehicle`` classes are in the default ``presence_classes``):

* ``require_presence``: a ``presence_classes`` detection must have been near the blob within
  ``presence_window_s`` before it appeared (someone brought it);
* veto: a ``veto_classes`` detection covering ``veto_overlap`` of the blob right now means a person
  standing still, not an object; the warning waits.

The warning clears when the blob has been gone ``clear_s``.
"""
from __future__ import annotations

from collections import deque

import cv2
import numpy as np
from pydantic import Field

from . import video_kernels as k
from .base import CLEAR, RAISE, UPDATE, BoxFilter, DetectorParams, FrameInput, Hit, VideoDetector, class_ids


class DumpingParams(DetectorParams):
    work_height: int = Field(100, ge=16, le=720, description="Height of the grey working frame.")
    threshold: float = Field(25.0, gt=0, lt=255, description="Luma difference (0-255) that counts as foreground.")
    long_tau_s: float = Field(600.0, gt=0, description="Time constant of the long-term background where it is background.")
    long_fg_tau_s: float = Field(3600.0, gt=0, description="…and where it is foreground (a permanent change is learnt this slowly).")
    short_tau_s: float = Field(1.0, gt=0, description="Time constant of the short-term background.")
    decay: float = Field(3.0, ge=0, description="Evidence lost per second when a pixel stops qualifying, per second gained.")
    duration_s: float = Field(60.0, gt=0, description="Seconds a blob must stay (T).")
    min_area: float = Field(0.004, gt=0, le=1, description="Smallest static blob, fraction of the frame area.")
    shape: BoxFilter = Field(default_factory=lambda: BoxFilter(min_area=0.0, max_area=0.3, min_aspect=0.2, max_aspect=5.0),
                             description="Area/aspect limits of the blob's box (a blob larger than max_area is a scene change).")
    clear_s: float = Field(10.0, gt=0, description="Clear the warning after the blob has been gone this long.")
    require_presence: bool = Field(True, description="With a model: a person or vehicle must have been near the blob shortly before.")
    presence_classes: list[str] = Field(["person", "vehicle", "car", "truck", "van", "bicycle", "motorcycle", "tricycle"],
                                        description="Model classes that can bring an object.")
    presence_window_s: float = Field(60.0, gt=0, description="How long before the blob appeared a presence counts.")
    presence_margin: float = Field(0.5, ge=0, description="'Near' = within the blob's box grown by this fraction of its size.")
    veto_classes: list[str] = Field(["person"], description="Model classes that veto a blob they cover (standing people).")
    veto_overlap: float = Field(0.5, gt=0, le=1, description="Fraction of the blob a veto detection must cover.")
    activity_tau_s: float = Field(1.0, gt=0, description="Time constant of the per-pixel activity (residual movement).")
    max_activity: float = Field(4.0, gt=0, description="Mean activity (0-255 luma) inside a blob above which it is "
                                "still moving (a person standing and swaying), not a dropped object.")
    ghost_ratio: float = Field(1.0, gt=0, description="A blob whose outline is sharper in the long-term background than in "
                               "the frame (edge ratio below this) is a ghost of something that left: it is learnt away.")
    max_drift: float = Field(1.0, gt=0, description="A dropped object looks the same from second to second: mean luma "
                             "change of the blob over drift_window_s must stay below this (smoke at its source does not).")
    drift_window_s: float = Field(2.0, gt=0, description="Window of the drift test (seconds).")
    min_edge_ratio: float = Field(3.0, gt=0, description="An object has a crisp outline: its outline must be this many "
                                  "times sharper in the frame than in the long-term background.")
    before_s: float = Field(3.0, ge=0, description="The before snapshot is the frame this long before the blob appeared.")
    min_frames: int = Field(10, ge=1, description="The blob must have been seen in this many analysed frames since it "
                            "appeared (observations), not only for duration_s: with keyframes every few seconds, or a "
                            "still scene's frame every still_recheck_s, a few frames are not a minute of watching.")


class DumpingDetector(VideoDetector):
    kind = "dumping"
    Params = DumpingParams
    model_kind = "detector"

    def __init__(self, *a, **kw) -> None:
        super().__init__(*a, **kw)
        self.bg_long: np.ndarray | None = None
        self.last_ts: int | None = None
        self.history: deque[tuple[int, np.ndarray]] = deque()  # (ts, JPEG bytes) about once a second, see _remember
        self.presence: deque[tuple[int, np.ndarray]] = deque()  # (ts, box in image px)
        self.active: dict[int, tuple[np.ndarray, int]] = {}  # key -> (box, last seen ts)
        self.first_seen: dict[int, int] = {}  # rough blob position key -> first candidate ts
        self._next_key = 0
        self._names_cached: dict | None = None
        self.resets = 0

    def reset(self, ts_ms: int) -> None:
        self.bg_long = None  # the next frame sets the backgrounds and the evidence up afresh
        self.presence.clear()
        self.first_seen.clear()
        self.history.clear()
        self.resets += 1

    def wants_model(self, ts_ms: int, motion) -> bool:
        # people arriving (motion) and a blob about to qualify (the veto) are what the model is for
        return self.model is not None and (len(motion.boxes) > 0 or self._near_threshold)

    _near_threshold = False

    def busy(self) -> bool:
        return self.bg_long is None or bool(self.active) or bool(self.evidence.any())

    def _setup(self, gray: np.ndarray) -> None:
        h, w = gray.shape
        self.bg_long = gray.astype(np.float32)
        self.bg_short = gray.astype(np.float32)
        self.evidence = np.zeros((h, w), np.float32)
        self.activity = np.zeros((h, w), np.float32)
        self.grays: deque[tuple[int, np.ndarray]] = deque()
        self.static = np.zeros((h, w), np.uint8)
        self.observed = np.zeros((h, w), np.uint16)  # frames in a row each pixel has had evidence
        self.mask = self.watch_mask(w, h)  # inside its zones, outside the masks

    def update(self, f: FrameInput) -> list[Hit]:
        p = self.p
        h0, w0 = f.image.shape[:2]
        wh = min(p.work_height, h0)
        ww = max(1, round(w0 * wh / h0))
        gray = cv2.cvtColor(f.image, cv2.COLOR_BGR2GRAY) if f.image.ndim == 3 else f.image
        gray = np.ascontiguousarray(cv2.resize(gray, (ww, wh), interpolation=cv2.INTER_AREA))
        if self.bg_long is None or self.bg_long.shape != gray.shape or f.motion.global_change:
            self._setup(gray)
            self.last_ts = f.ts_ms
            self._remember(f)
            return []
        dt = max(0.0, min((f.ts_ms - self.last_ts) / 1000.0, 5.0))
        self.last_ts = f.ts_ms
        self._remember(f)
        if f.detections is not None and len(f.detections):
            self._note_presence(f)
        a = lambda tau: np.float32(1.0 - np.exp(-dt / tau))  # noqa: E731
        n = k.dual_background(gray, self.bg_long, self.bg_short, self.evidence, self.activity, self.mask,
                              np.float32(p.threshold), a(p.long_tau_s), a(p.long_fg_tau_s), a(p.short_tau_s),
                              a(p.activity_tau_s), np.float32(dt),
                              np.float32(p.decay), np.float32(p.duration_s * 2), np.float32(p.duration_s), self.static)
        has = self.evidence > 0
        np.add(self.observed, 1, out=self.observed, where=has & (self.observed < 60000))
        self.observed[~has] = 0
        self._near_threshold = bool((self.evidence >= 0.7 * p.duration_s).any())
        sx, sy = w0 / ww, h0 / wh
        blobs = self._blobs(self.static, sx, sy, w0, h0) if n else []
        self._gray = gray
        if not self.grays or f.ts_ms - self.grays[-1][0] >= 250:
            self.grays.append((f.ts_ms, gray))
        while len(self.grays) > 1 and f.ts_ms - self.grays[1][0] >= p.drift_window_s * 1000:
            self.grays.popleft()
        out: list[Hit] = []
        seen_keys = set()
        for box, area in blobs:
            key = self._match(box)
            if key is not None:
                if key not in seen_keys:  # still there: the warning's "updated" (latest area)
                    out.append(Hit(UPDATE, key, f.ts_ms, float(area), [tuple(map(float, box))], "dumped object"))
                seen_keys.add(key)
                self.active[key] = (box, f.ts_ms)
                continue
            sl = self._slice(box, sx, sy)
            edge = self._edge_ratio(sl)
            if edge < p.ghost_ratio:  # something that was there at the start has left: learn it away
                self.bg_long[sl] = gray[sl]
                self.evidence[sl] = 0.0
                continue
            if edge < p.min_edge_ratio:  # soft outline: smoke, a shadow, a wet patch
                continue
            st = self.static[sl] != 0
            act = float(self.activity[sl][st].mean())
            if act > p.max_activity:
                continue
            drift = float(np.abs(gray[sl].astype(np.float32) - self.grays[0][1][sl])[st].mean())
            if drift > p.max_drift:
                continue
            appeared = self._appeared_at(box, sx, sy, f.ts_ms)
            if int(self.observed[sl].max()) < p.min_frames:
                continue  # too few observations of it, however long ago it appeared
            if not self._presence_ok(box, appeared) or self._vetoed(f, box):
                continue
            key = self._next_key
            self._next_key += 1
            self.active[key] = (box, f.ts_ms)
            seen_keys.add(key)
            before = self._frame_at(appeared - p.before_s * 1000)
            out.append(Hit(RAISE, key, f.ts_ms, float(area), [tuple(map(float, box))], "dumped object", f.image,
                           before=before, detail={"area_fraction": round(area, 5), "activity": round(act, 2), "drift": round(drift, 2),
                                                  "edge_ratio": round(edge, 2),
                                                  "static_since_ms": int(appeared)}))
        for key, (box, last) in list(self.active.items()):
            if key not in seen_keys and f.ts_ms - last >= p.clear_s * 1000:
                del self.active[key]
                out.append(Hit(CLEAR, key, f.ts_ms, label="dumped object"))
        return out

    # --- helpers -----------------------------------------------------------------------------
    def _blobs(self, static: np.ndarray, sx: float, sy: float, w0: int, h0: int) -> list[tuple[np.ndarray, float]]:
        n, _, stats, _ = cv2.connectedComponentsWithStats(static, connectivity=8)
        total = static.shape[0] * static.shape[1]
        out = []
        for i in range(1, n):
            x, y, w, h, area = stats[i]
            frac = area / total
            if frac < self.p.min_area:
                continue
            box = np.array([x * sx, y * sy, (x + w) * sx, (y + h) * sy], np.float32)
            if not self.p.shape.keep(box[None], w0, h0)[0]:
                continue
            out.append((box, float(frac)))
        return out

    def _match(self, box: np.ndarray) -> int | None:
        for key, (b, _) in self.active.items():  # overlap of the smaller box: a blob that split still matches
            inter = max(0.0, min(b[2], box[2]) - max(b[0], box[0])) * max(0.0, min(b[3], box[3]) - max(b[1], box[1]))
            small = min((b[2] - b[0]) * (b[3] - b[1]), (box[2] - box[0]) * (box[3] - box[1]))
            if inter > 0.3 * max(small, 1e-6):
                return key
        return None

    def _slice(self, box: np.ndarray, sx: float, sy: float) -> tuple[slice, slice]:
        x1, y1 = int(box[0] / sx), int(box[1] / sy)
        x2, y2 = max(x1 + 1, int(np.ceil(box[2] / sx))), max(y1 + 1, int(np.ceil(box[3] / sy)))
        return slice(y1, y2), slice(x1, x2)

    def _edge_ratio(self, sl: tuple[slice, slice]) -> float:
        """Gradient energy along the blob's outline: in the frame / in the long-term background."""
        ys, xs = sl
        ys = slice(max(0, ys.start - 2), ys.stop + 2)
        xs = slice(max(0, xs.start - 2), xs.stop + 2)
        st = self.static[ys, xs]
        outline = cv2.dilate(st, np.ones((3, 3), np.uint8)) - cv2.erode(st, np.ones((3, 3), np.uint8))
        if not outline.any():
            return float("inf")
        def energy(img: np.ndarray) -> float:
            g = img.astype(np.float32)
            gx = cv2.Sobel(g, cv2.CV_32F, 1, 0, ksize=3)
            gy = cv2.Sobel(g, cv2.CV_32F, 0, 1, ksize=3)
            return float((np.abs(gx) + np.abs(gy))[outline != 0].mean())
        return energy(self._gray[ys, xs]) / max(energy(self.bg_long[ys, xs]), 1e-3)

    def _appeared_at(self, box: np.ndarray, sx: float, sy: float, ts: int) -> float:
        """When the blob started collecting evidence: now minus the largest evidence inside it."""
        x1, y1 = int(box[0] / sx), int(box[1] / sy)
        x2, y2 = max(x1 + 1, int(np.ceil(box[2] / sx))), max(y1 + 1, int(np.ceil(box[3] / sy)))
        return ts - float(self.evidence[y1:y2, x1:x2].max()) * 1000.0

    def _remember(self, f: FrameInput) -> None:
        """Keep about one frame a second for the *before* snapshot, as JPEG (quality 90: ~1 ms to
        encode at 640x360, 20-60 kB instead of 691 kB; ``duration_s * 2 + before_s + 5`` s of them
        held 88 MB per busy camera), and only when the motion gate saw something since the last
        one: a still scene's frames all look like the one already kept."""
        m = f.motion
        self._moved = self._moved or len(m.boxes) > 0 or m.global_change
        if not self.history or (self._moved and f.ts_ms - self.history[-1][0] >= 1000):
            ok, jpeg = cv2.imencode(".jpg", f.image, [cv2.IMWRITE_JPEG_QUALITY, 90])
            if ok:
                self.history.append((f.ts_ms, jpeg))
                self._moved = False
        keep = (self.p.duration_s * 2 + self.p.before_s + 5) * 1000
        while len(self.history) > 1 and f.ts_ms - self.history[1][0] > keep:
            self.history.popleft()  # the newest frame older than that stays: the scene since

    _moved = False

    def _frame_at(self, ts: float) -> np.ndarray | None:
        best = None
        for t, jpeg in self.history:
            if t <= ts:
                best = jpeg
        if best is None:
            best = self.history[0][1] if self.history else None
        return None if best is None else cv2.imdecode(best, cv2.IMREAD_COLOR)

    def _ids(self, f: FrameInput, classes: list[str]) -> np.ndarray:
        return class_ids(f.names, classes)

    def _note_presence(self, f: FrameInput) -> None:
        d = f.detections
        sel = np.isin(d.class_ids, self._ids(f, self.p.presence_classes))
        for b in d.boxes[sel]:
            self.presence.append((f.ts_ms, b.copy()))
        while self.presence and f.ts_ms - self.presence[0][0] > (self.p.presence_window_s + self.p.duration_s * 3) * 1000:
            self.presence.popleft()

    def _presence_ok(self, box: np.ndarray, appeared: float) -> bool:
        if self.model is None or not self.p.require_presence:
            return True
        m = self.p.presence_margin
        bw, bh = box[2] - box[0], box[3] - box[1]
        gx1, gy1, gx2, gy2 = box[0] - m * bw, box[1] - m * bh, box[2] + m * bw, box[3] + m * bh
        lo = appeared - self.p.presence_window_s * 1000
        for ts, b in self.presence:
            if lo <= ts <= appeared + 2000 and b[0] < gx2 and b[2] > gx1 and b[1] < gy2 and b[3] > gy1:
                return True
        return False

    def _vetoed(self, f: FrameInput, box: np.ndarray) -> bool:
        d = f.detections
        if self.model is None or d is None or not len(d):
            return False
        sel = np.isin(d.class_ids, self._ids(f, self.p.veto_classes))
        area = max((box[2] - box[0]) * (box[3] - box[1]), 1e-6)
        for b in d.boxes[sel]:
            inter = max(0.0, min(b[2], box[2]) - max(b[0], box[0])) * max(0.0, min(b[3], box[3]) - max(b[1], box[1]))
            if inter / area >= self.p.veto_overlap:
                return True
        return False
