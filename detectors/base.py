"""The one small interface every video detector shares, and the pieces they have in common.

A video detector is one *event rule* on one camera (e.g. "smoke on gate-3"), with temporal logic:
it sees every analysed frame of its camera, keeps its own state, and reports :class:`Hit` s —
``raise`` when its rule is satisfied, ``update`` while a raised event is still seen (the warning's
``updated`` events, at most every ``alerts_mqtt.update_interval_s``), ``clear`` when the cause has gone. The runtime turns hits
into warnings through the same lifecycle, store and MQTT publisher as the sensor rules.

    class Smoke(VideoDetector):
        kind = "smoke"
        Params = SmokeParams
        def update(self, f: FrameInput) -> list[Hit]: ...

Adding a detector = one module with one subclass (registered by ``kind``, like Frigate's
detector plugins) plus an import in :mod:`gridwatch.detectors.registry`.

Shared helpers: :class:`Zone` (a named polygon, drawn in the camera's pixels and used as fractions
of the picture, see :mod:`gridwatch.detectors.zones`), :class:`BoxFilter` (area and aspect
limits), :class:`ScoreHistory` (median score over a short history) and :class:`IouTracker`
(greedy IoU association, enough for k-of-n rules).
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import cv2
import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

from .zones import Polygon, check_polygon, fraction_mask, is_fraction

if TYPE_CHECKING:  # kept out of the import path of the config loader
    from .motion import MotionResult
    from .onnx_decoders import Detections

RAISE, CLEAR, UPDATE = "raise", "clear", "update"


class DetectorParams(BaseModel):
    """Base of each detector's parameters (every field has a description)."""

    model_config = ConfigDict(extra="forbid")


class ZoneConfig(BaseModel):
    """A named polygon on a camera's picture, in its pixels (see :mod:`gridwatch.detectors.zones`)."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, description="Zone name, e.g. 'elevator-1'; appears in warnings.")
    kind: str = Field("area", description="What the zone is: elevator, corridor, stairwell, lobby_door, street, ...")
    polygon: Polygon = Field(description="Corners [[x, y], ...] in pixels of the camera's picture as it sends it "
                             "(`gridwatch camera snapshot` writes one and prints its size); corners all within 0..1 "
                             "are fractions of the width and height instead.")
    rules: list[str] = Field(default_factory=list, description="Names of this camera's [[video.rules]] that work in "
                             "this zone: a rule that has zones raises only inside them, and its warnings carry the "
                             "zone's name; a rule without zones watches the whole picture. Empty = every rule of "
                             "the camera.")

    @field_validator("polygon")
    @classmethod
    def _check(cls, v: list[tuple[float, float]]) -> list[tuple[float, float]]:
        return check_polygon(v, "zone polygon")


class Zone:
    """A polygon zone; rasterised once per image size."""

    def __init__(self, cfg: ZoneConfig, index: int = 0) -> None:
        self.name, self.kind, self.index = cfg.name, cfg.kind, index
        self.rules = list(cfg.rules)
        self.points = list(cfg.polygon)  # as configured: pixels of the source, or fractions
        self._masks: dict[tuple[int, int], np.ndarray] = {}
        # fractions of the picture; corners in pixels are known as fractions once the source's size is
        self.poly = np.asarray(self.points, np.float64) if is_fraction(self.points) else None

    def resolve(self, poly: np.ndarray) -> None:
        """The corners as fractions of the picture (see :class:`~gridwatch.detectors.zones.CameraPolygons`)."""
        self.poly = np.asarray(poly, np.float64)
        self._masks = {}

    def pixels(self, w: int, h: int) -> np.ndarray:
        if self.poly is None:
            raise RuntimeError(f"zone {self.name!r} is in pixels and the camera's picture size is not known yet")
        return np.round(self.poly * [w, h]).astype(np.int32)

    def mask(self, w: int, h: int) -> np.ndarray:
        """uint8[h, w], 1 inside the zone."""
        m = self._masks.get((w, h))
        if m is None:
            m = np.zeros((h, w), np.uint8)
            cv2.fillPoly(m, [self.pixels(w, h)], 1)
            self._masks[(w, h)] = m
        return m

    def overlap(self, box: np.ndarray, w: int, h: int) -> float:
        """Fraction of ``box`` (x1, y1, x2, y2 in pixels of a w×h image) that lies in the zone."""
        m = self.mask(w, h)
        x1, y1 = max(0, int(box[0])), max(0, int(box[1]))
        x2, y2 = min(w, int(np.ceil(box[2]))), min(h, int(np.ceil(box[3])))
        if x2 <= x1 or y2 <= y1:
            return 0.0
        return float(m[y1:y2, x1:x2].mean())


def polygons_mask(polys: list[list[tuple[float, float]]], w: int, h: int, inside: int = 1) -> np.ndarray:
    """uint8[h, w] mask: ``inside`` within any of the fractional polygons, ``1 - inside`` elsewhere."""
    m = np.full((h, w), 1 - inside, np.uint8)
    for p in polys:
        cv2.fillPoly(m, [np.round(np.asarray(p, np.float64) * [w, h]).astype(np.int32)], inside)
    return m


class BoxFilter(BaseModel):
    """Area and aspect limits for boxes (area as a fraction of the image, aspect = width / height)."""

    model_config = ConfigDict(extra="forbid")

    min_area: float = Field(0.0005, ge=0, le=1, description="Smallest box area, fraction of the image area.")
    max_area: float = Field(0.6, gt=0, le=1, description="Largest box area, fraction of the image area.")
    min_aspect: float = Field(0.2, gt=0, description="Smallest width/height ratio.")
    max_aspect: float = Field(5.0, gt=0, description="Largest width/height ratio.")

    def keep(self, boxes: np.ndarray, w: int, h: int) -> np.ndarray:
        """Boolean mask of the boxes (float[N, 4] xyxy pixels) within the limits."""
        bw = np.maximum(boxes[:, 2] - boxes[:, 0], 1e-6)
        bh = np.maximum(boxes[:, 3] - boxes[:, 1], 1e-6)
        area = bw * bh / float(w * h)
        aspect = bw / bh
        return (area >= self.min_area) & (area <= self.max_area) & (aspect >= self.min_aspect) & (aspect <= self.max_aspect)


class ScoreHistory:
    """The median of the last ``n`` scores (robust to one lucky or unlucky frame)."""

    def __init__(self, n: int) -> None:
        self.scores: deque[float] = deque(maxlen=n)

    def add(self, s: float) -> None:
        self.scores.append(float(s))

    @property
    def median(self) -> float:
        return float(np.median(self.scores)) if self.scores else 0.0


def iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of box ``a`` (4,) with each row of ``b`` (N, 4)."""
    x1 = np.maximum(a[0], b[:, 0]); y1 = np.maximum(a[1], b[:, 1])
    x2 = np.minimum(a[2], b[:, 2]); y2 = np.minimum(a[3], b[:, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    ua = (a[2] - a[0]) * (a[3] - a[1]) + (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1]) - inter
    return inter / np.maximum(ua, 1e-9)


@dataclass(slots=True)
class Track:
    id: int
    box: np.ndarray
    first_ts: int
    last_ts: int
    hits: deque  # 1/0 per frame the detector ran since the track started (last n)
    scores: ScoreHistory
    raised: bool = False
    zone: int = -1
    extra: dict = field(default_factory=dict)


class IouTracker:
    """Greedy IoU association of per-frame boxes to tracks; a track unseen for ``lost_ms`` ends."""

    def __init__(self, n: int, iou_min: float = 0.3, lost_ms: int = 2000) -> None:
        self.n, self.iou_min, self.lost_ms = n, iou_min, lost_ms
        self.tracks: dict[int, Track] = {}
        self._next = 1

    def step(self, boxes: np.ndarray, scores: np.ndarray, ts_ms: int) -> tuple[list[Track], list[Track]]:
        """Associate this frame's boxes; returns (tracks seen this frame, tracks that ended)."""
        seen: list[Track] = []
        free = list(self.tracks.values())
        order = np.argsort(-scores, kind="stable") if len(scores) else []
        for i in order:
            best, best_iou = None, self.iou_min
            if free:
                ious = iou(boxes[i], np.stack([t.box for t in free]))
                j = int(np.argmax(ious))
                if ious[j] >= best_iou:
                    best = free.pop(j)
            if best is None:
                best = Track(self._next, boxes[i].copy(), ts_ms, ts_ms, deque(maxlen=self.n), ScoreHistory(self.n))
                self._next += 1
                self.tracks[best.id] = best
            best.box = boxes[i].copy()
            best.last_ts = ts_ms
            best.hits.append(1)
            best.scores.add(float(scores[i]))
            seen.append(best)
        ended = []
        for t in free:
            t.hits.append(0)
            if ts_ms - t.last_ts > self.lost_ms:
                ended.append(self.tracks.pop(t.id))
        return seen, ended


@dataclass(slots=True)
class FrameInput:
    """What a detector sees of one analysed frame."""

    camera: str
    image: np.ndarray  # BGR uint8 (analysis size)
    ts_ms: int  # capture time, epoch ms
    motion: MotionResult
    detections: Detections | None = None  # the camera's model output for this frame, when it ran
    names: dict[int, str] = field(default_factory=dict)  # class id -> name of that model


@dataclass(slots=True)
class Hit:
    """A detector's verdict: ``raise`` (rule satisfied), ``update`` (a raised event still seen; ``score``
    is its latest value, NaN to keep the old one) or ``clear`` (cause gone), keyed by ``key``."""

    kind: str  # RAISE, UPDATE or CLEAR
    key: int  # distinguishes concurrent events of one detector (zone index, region); >= 0
    ts_ms: int  # capture time of the frame that satisfied (or ended) the rule
    score: float = float("nan")
    boxes: list[tuple[float, float, float, float]] = field(default_factory=list)  # in the image's pixels
    label: str = ""
    image: np.ndarray | None = None  # the frame that satisfied the rule (for the snapshot)
    before: np.ndarray | None = None  # e.g. the scene before an object was dumped
    zone: str | None = None
    detail: dict[str, Any] = field(default_factory=dict)


class VideoDetector(ABC):
    """One event rule on one camera. Subclasses set ``kind`` and ``Params`` and implement ``update``."""

    kind: ClassVar[str]
    Params: ClassVar[type[DetectorParams]] = DetectorParams
    registry: ClassVar[dict[str, type["VideoDetector"]]] = {}
    model_kind: ClassVar[str | None] = None  # "detector" / "classifier" when the rule can use a model
    default_model: ClassVar[str | None] = None  # registry name of the shipped model used when a rule names none

    def __init_subclass__(cls, **kw: Any) -> None:
        super().__init_subclass__(**kw)
        if getattr(cls, "kind", None):
            VideoDetector.registry[cls.kind] = cls

    def __init__(self, name: str, params: dict | DetectorParams | None = None, zones: list[Zone] | None = None,
                 model: Any = None) -> None:
        self.name = name
        self.p = params if isinstance(params, DetectorParams) else self.Params.model_validate(params or {})
        self.zones = zones or []
        self.model = model  # a shared OnnxDetector / OnnxClassifier, or None
        self.masks: list = []  # polygons (fractions of the picture) this rule ignores

    def watch_mask(self, w: int, h: int) -> np.ndarray:
        """uint8[h, w], 1 where this rule looks: inside its zones (everywhere when it has none),
        never inside a mask. Rules that keep per-pixel or per-tile evidence build none elsewhere."""
        if self.zones:
            m = fraction_mask([z.poly for z in self.zones], w, h)
        else:
            m = np.ones((h, w), np.uint8)
        return fraction_mask(self.masks, w, h, inside=0, base=m) if len(self.masks) else m

    def wants_model(self, ts_ms: int, motion: MotionResult) -> bool:
        """Whether this frame should go through the camera's detector model (batched across cameras)."""
        return False

    def busy(self) -> bool:
        """Whether the rule needs every analysed frame even when nothing moves (evidence building
        up, a warning to clear). When no rule of a camera is busy, a still frame skips the rules.
        Asked on the analysis thread right after :meth:`update` and :meth:`reset` only (the gate
        uses that answer until the next), so it must depend on nothing else."""
        return True

    def reset(self, ts_ms: int) -> None:
        """A discontinuity (reconnect, loop restart, gap, the whole picture changed): drop every
        piece of temporal evidence, so that nothing seen before ``ts_ms`` counts towards a warning
        after it. A warning already raised stays active and clears as usual. Every rule with
        temporal state overrides this."""

    @abstractmethod
    def update(self, f: FrameInput) -> list[Hit]:
        """Advance the rule by one analysed frame."""


def create(kind: str, name: str, params: dict | None = None, zones: list[Zone] | None = None, model: Any = None) -> VideoDetector:
    """A rule's detector. A registered model may recommend parameters for a rule kind (manifest
    ``rule_params``, e.g. the thresholds its card was validated with): they apply where the rule's
    own ``params`` leave a key out."""
    cls = VideoDetector.registry.get(kind)
    if cls is None:
        raise ValueError(f"unknown video detector kind {kind!r}; expected one of {sorted(VideoDetector.registry)}")
    recommended = (getattr(model, "rule_params", None) or {}).get(kind)
    if recommended and not isinstance(params, DetectorParams):
        params = {**recommended, **(params or {})}
    return cls(name, params, zones, model)


def class_ids(names: dict[int, str], wanted: list[str]) -> np.ndarray:
    """Ids of the classes whose name matches one of ``wanted`` (case, '-', '_' and ' ' ignored)."""
    norm = lambda s: s.lower().replace("-", "").replace("_", "").replace(" ", "")  # noqa: E731
    want = {norm(w) for w in wanted}
    return np.array(sorted(i for i, n in names.items() if norm(n) in want), np.int32)
