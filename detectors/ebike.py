"""E-bike charging / parking indoors: an ONNX detector's e-bike class inside configured zones.

Needs a model whose class names include an e-bike class (``classes``, matched ignoring case,
'-', '_' and spaces). Per analysed frame that went through the model:

* keep detections of those classes with score ≥ ``conf`` that pass the area/aspect filter and lie
  ``min_overlap`` inside a zone of one of ``zone_kinds`` (elevator, corridor, stairwell,
  lobby_door by default; every zone when the list is empty);
* associate them to tracks (greedy IoU); a track raises when it was seen in ``k`` of its last
  ``n`` model frames and the median of its recent scores is ≥ ``min_score``;
* each track raises at most once (cooldown per track), and a new track where an alerted one
  stood within ``cooldown_s`` raises nothing; the zone's warning clears when no e-bike track has
  been in it for ``clear_s``.

An ordinary bicycle raises nothing as long as the model tells the two apart (its class is not in
``classes``). Warnings are keyed by zone: one active warning per zone and camera.
"""
from __future__ import annotations

import numpy as np
from pydantic import Field

from .base import CLEAR, RAISE, UPDATE, BoxFilter, DetectorParams, FrameInput, Hit, IouTracker, VideoDetector, class_ids


class EbikeParams(DetectorParams):
    classes: list[str] = Field(["e-bike", "ebike", "electric_bicycle", "electric_scooter"],
                               description="Model class names that count as an e-bike.")
    zone_kinds: list[str] = Field(["elevator", "corridor", "stairwell", "lobby_door"],
                                  description="Zone kinds watched (empty = every zone of the camera; no zones = whole image).")
    conf: float = Field(0.35, ge=0, le=1, description="Per-frame score threshold.")
    min_score: float = Field(0.5, ge=0, le=1, description="Median score over the track's last n frames needed to raise.")
    k: int = Field(3, ge=1, description="Frames with a detection needed…")
    n: int = Field(5, ge=1, description="…out of the track's last n model frames.")
    min_overlap: float = Field(0.5, gt=0, le=1, description="Fraction of the box inside the zone.")
    shape: BoxFilter = Field(default_factory=lambda: BoxFilter(min_area=0.002, max_area=0.6, min_aspect=0.3, max_aspect=4.0),
                             description="Area/aspect limits of e-bike boxes.")
    lost_s: float = Field(3.0, gt=0, description="A track unseen this long ends.")
    cooldown_s: float = Field(600.0, ge=0, description="No new warning for a track where an alerted one stood within this time.")
    clear_s: float = Field(10.0, gt=0, description="Clear a zone's warning after this long without an e-bike in it.")
    idle_check_s: float = Field(5.0, gt=0, description="With no motion and no track, still run the model this often (parked bikes).")


class EbikeDetector(VideoDetector):
    kind = "ebike"
    Params = EbikeParams
    model_kind = "detector"
    default_model = "objects-det"

    def __init__(self, *a, **kw) -> None:
        super().__init__(*a, **kw)
        if self.model is None:
            raise ValueError(f"detector {self.name!r} (ebike) needs a model with an e-bike class")
        p = self.p
        if p.k > p.n:
            raise ValueError(f"detector {self.name!r}: k={p.k} is more than n={p.n}")
        self.tracker = IouTracker(p.n, 0.3, int(p.lost_s * 1000))
        self.watched = [z for z in self.zones if not p.zone_kinds or z.kind in p.zone_kinds]
        self.zone_last: dict[int, int] = {}  # zone index -> last ts an e-bike track was in it
        self.zone_active: set[int] = set()
        self.alerted: list[tuple[int, np.ndarray]] = []  # (ts, box) of raised tracks, for the cooldown
        self._last_model_ts = -10**15

    def reset(self, ts_ms: int) -> None:
        self.tracker.tracks.clear()  # k of n never joins frames from both sides of a discontinuity

    def wants_model(self, ts_ms: int, motion) -> bool:
        if len(motion.boxes) or self.tracker.tracks or self.zone_active:
            return True
        return ts_ms - self._last_model_ts >= self.p.idle_check_s * 1000

    def busy(self) -> bool:
        return bool(self.tracker.tracks or self.zone_active)

    def _zone_of(self, box: np.ndarray, w: int, h: int) -> int:
        if not self.zones:
            return -1  # the whole image
        best, best_ov = None, self.p.min_overlap
        for z in self.watched:
            ov = z.overlap(box, w, h)
            if ov >= best_ov:
                best, best_ov = z.index, ov
        return -2 if best is None else best

    def update(self, f: FrameInput) -> list[Hit]:
        out: list[Hit] = []
        if f.detections is not None:
            self._last_model_ts = f.ts_ms
            out += self._step(f)
        for zi in list(self.zone_active):
            if f.ts_ms - self.zone_last.get(zi, 0) >= self.p.clear_s * 1000:
                self.zone_active.discard(zi)
                out.append(Hit(CLEAR, max(zi, 0), f.ts_ms, label="e-bike", zone=self._zone_name(zi)))
        return out

    def _zone_name(self, zi: int) -> str | None:
        for z in self.zones:
            if z.index == zi:
                return z.name
        return None

    def _step(self, f: FrameInput) -> list[Hit]:
        p, d = self.p, f.detections
        h, w = f.image.shape[:2]
        keep = np.isin(d.class_ids, class_ids(f.names, p.classes)) & (d.scores >= p.conf)
        if keep.any():
            keep &= p.shape.keep(d.boxes, w, h)
        boxes, scores = d.boxes[keep], d.scores[keep]
        zones = np.array([self._zone_of(b, w, h) for b in boxes], np.int32)
        inside = zones != -2
        seen, _ = self.tracker.step(boxes[inside], scores[inside], f.ts_ms)
        zone_of_box = zones[inside]
        self.alerted = [(t, b) for t, b in self.alerted if f.ts_ms - t < p.cooldown_s * 1000]
        out: list[Hit] = []
        updated: set[int] = set()
        for i, t in enumerate(seen):
            t.zone = int(zone_of_box[i])
            self.zone_last[t.zone] = f.ts_ms
            if t.zone in self.zone_active and t.raised and t.zone not in updated:
                updated.add(t.zone)  # the alerted e-bike is still there: the warning's "updated"
                out.append(Hit(UPDATE, max(t.zone, 0), f.ts_ms, t.scores.median, [tuple(map(float, t.box))], "e-bike",
                               zone=self._zone_name(t.zone)))
            if t.raised or sum(t.hits) < p.k or t.scores.median < p.min_score:
                continue
            t.raised = True  # once per track, whatever happens next
            if any(_overlap(t.box, b) > 0.5 for _, b in self.alerted):
                continue
            self.alerted.append((f.ts_ms, t.box.copy()))
            if t.zone in self.zone_active:
                continue
            self.zone_active.add(t.zone)
            out.append(Hit(RAISE, max(t.zone, 0), f.ts_ms, t.scores.median, [tuple(map(float, t.box))], "e-bike",
                           f.image, zone=self._zone_name(t.zone),
                           detail={"track": t.id, "frames": f"{sum(t.hits)}/{len(t.hits)}",
                                   "median_score": round(t.scores.median, 3)}))
        return out


def _overlap(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over the smaller box."""
    inter = max(0.0, min(a[2], b[2]) - max(a[0], b[0])) * max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    small = min((a[2] - a[0]) * (a[3] - a[1]), (b[2] - b[0]) * (b[3] - b[1]))
    return inter / max(small, 1e-6)
