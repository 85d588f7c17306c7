"""The video runtime: cameras → collector → motion gate → detectors (batched ONNX) → warnings.

    rt = VideoRuntime(cfg, store=edge.store, publisher=edge.publisher, counters=edge.counters)
    with rt:                      # capture threads + one analysis thread
        ...

Per analysis cycle the thread takes the newest frame of every camera that has one
(:class:`~gridwatch.ingest.video.VideoCollector`), runs the camera's motion gate (on the decoder's
luminance plane when the frame has one), asks each of the camera's detectors whether the frame
should go through its model, runs every model **once** over
the frames of all cameras that need it (one batched onnxruntime call per model and cycle), then
hands each detector its frame, motion result and detections. On a still scene — no motion, no
model due, no detector building up evidence (``VideoDetector.busy``) — the detectors skip the
frame, except one every ``still_recheck_s``: such frames cost the gate only, never a colour
conversion.

Detector hits become warnings through the same :class:`~gridwatch.streams.lifecycle.Lifecycle`
rules as the sensors (deterministic ids, cooldown, minimum active time), with ``source`` = camera
name and the camera's configured region; every raised warning gets a JPEG snapshot (boxes and
zones drawn, plus a *before* snapshot for dumping) under ``<data_dir>/<video.evidence_dir>``,
referenced from ``warning.evidence["snapshot"]``, and, with ``[video.clips]`` on, a clip of a few
seconds around it remuxed from the camera's own packets (:mod:`gridwatch.streams.clips`),
referenced from ``warning.evidence["clip"]``. While a detector still sees the cause of its
active warning it reports ``update`` hits; like a sensor's newer readings they make the lifecycle's
once-a-second tick emit ``updated`` (latest time and value) at most every
``alerts_mqtt.update_interval_s``. Warnings are committed to the store and then
published with the same MQTT publisher as sensor warnings. Camera status changes
(connecting / online / reconnecting / offline, with the reason) go to
``<video.status_topic_prefix>/<site>/<camera>`` (retained JSON) and to the counters.

Attach it to a running :class:`~gridwatch.streams.runtime.EdgeRuntime` by passing that runtime's
store, publisher and counters (``gridwatch run`` does this when the config has cameras).
"""
from __future__ import annotations

import logging
import sys
import threading
import time
from collections import Counter, defaultdict, deque
from dataclasses import dataclass, field
from typing import Any, Callable

import cv2
import numpy as np
import orjson

from gridwatch.config import GridwatchConfig
from gridwatch.detectors.base import UPDATE, FrameInput, Hit, RAISE, VideoDetector, Zone
from gridwatch.detectors.zones import CameraPolygons, source_size, zone_of, zones_for
from gridwatch.detectors.evidence import EvidenceStore
from gridwatch.detectors.motion import MotionDetector, MotionParams, MotionResult
from gridwatch.detectors.registry import create
from gridwatch.detectors.settings import ModelConfig, VideoCameraConfig, manifest_path, model_configs, rule_model
from gridwatch.ingest.video import CameraState, Frame, StatusChange, VideoCollector
from gridwatch.observability import Counters
from gridwatch.records import RegionPath, Warning
from gridwatch.regions import parse_path
from gridwatch.streams.clips import ClipWriter
from gridwatch.streams.lifecycle import RAISED, Lifecycle, RuleInfo
from gridwatch.streams.processor import CLEAR as EV_CLEAR, RAISE as EV_RAISE, Events
from gridwatch.streams.store import StoreWriteError

log = logging.getLogger("gridwatch.streams.video")
EventSink = Callable[[list[tuple[str, Warning]]], None]

DEFAULT_MESSAGES = {
    "smoke": "Possible smoke on camera {source}",
    "dumping": "Object left on camera {source}",
    "ebike": "E-bike in {zone} on camera {source}",
}


def load_model(m: ModelConfig, cfg: GridwatchConfig):
    """The shared session of one configured model (detector or classifier): a file by path, or a
    registered model by name (hash-checked); one session per model and process."""
    from gridwatch.detectors.models import load

    return load(m, cfg.base_dir, manifest_path(cfg.video, cfg.base_dir))


@dataclass
class _Rule:
    info: RuleInfo
    detector: VideoDetector
    model: str | None  # detector model name (classifiers are called by the detector itself)


_NEVER = -10**15


def recheck_phase(slot: int, still_recheck_s: float) -> int:
    """A phase in [0, still_recheck_s) ms for the camera in ``slot``, spread evenly whatever the
    number of cameras (golden-ratio steps)."""
    return int(((slot * 0.6180339887498949) % 1.0) * still_recheck_s * 1000)


@dataclass
class CameraPipeline:
    """One camera's analysis state: motion gate, zones, its rules."""

    slot: int
    cfg: VideoCameraConfig
    region: RegionPath
    zones: list[Zone]
    motion: MotionDetector
    rules: list[_Rule]
    models: list[str]  # detector models this camera's rules use
    last_model_ts: dict[str, int] = field(default_factory=dict)
    last_frame: Frame | None = None
    last_rules_ts: int = _NEVER  # capture time of the last frame the rules saw
    # capture time of the newest frame the capture thread's gate handed to analysis: a re-check
    # (or a model) due is then asked for once, not with every frame until analysis has run it
    handed_ts: int = _NEVER
    # the first still re-check comes this much sooner after the rules' first frame (a per-camera
    # phase in [0, still_recheck_s)): cameras started together would otherwise re-check together
    # for as long as their scenes stay still, one burst per still_recheck_s for analysis
    recheck_phase_ms: int = 0
    # the gate's background is updated by one thread at a time: the capture thread's gate, or
    # analysis for frames that came without a luma plane (and an abandoned capture thread that
    # comes back late must not race its replacement)
    gate_lock: threading.Lock = field(default_factory=threading.Lock)
    gate_epoch: int = -1  # scene epoch of the frames the gate's background comes from
    epoch: int = -1  # scene epoch of the frames the rules' evidence comes from
    last_seen_ts: int = _NEVER  # capture time of the last frame analysis got from this camera
    resets: int = 0  # times the rules dropped their evidence at a discontinuity
    # the operator's masks and zones (None: the camera has none, and nothing is checked per frame)
    polygons: CameraPolygons | None = None
    reshaped: bool = False  # the source's picture size changed the polygons: the rules start afresh
    # whether a rule is busy (VideoDetector.busy) as of the rules' last frame or reset: a rule's
    # state changes only then, so the gate reads this instead of asking every rule on every still
    # frame (each asks its evidence arrays, out of cache by then: ~60 us a frame on the capture
    # thread); True until the rules have seen a frame
    rules_busy: bool = True

    def discontinuity(self, fr: Frame, m: MotionResult | None, gap_s: float) -> str | None:
        """Why ``fr`` cannot be joined to the frames before it (None when it can): a new scene
        epoch (reconnect, loop restart, a jump or gap in the stream), a gap in what analysis got
        from this camera, or a change of the whole picture."""
        why = None
        if fr.epoch != self.epoch:
            why = "epoch" if self.epoch >= 0 else None
            self.epoch = fr.epoch
        elif self.last_seen_ts != _NEVER and fr.ts_ms - self.last_seen_ts > gap_s * 1000:
            why = "gap"
        elif m is not None and m.global_change:
            why = "global_change"
        self.last_seen_ts = fr.ts_ms
        return why

    def reset_rules(self, ts_ms: int) -> None:
        """Every rule of this camera drops its temporal evidence (its active warnings still clear)."""
        self.resets += 1
        for r in self.rules:
            r.detector.reset(ts_ms)
        self.refresh_busy()

    def refresh_busy(self) -> None:
        """:attr:`rules_busy` after the rules saw a frame or were reset (on the analysis thread)."""
        self.rules_busy = any(r.detector.busy() for r in self.rules)

    def gate(self, fr: Frame) -> MotionResult:
        """The motion gate on ``fr`` (its luma plane and prepared small frame when it has them).
        A frame of a new scene epoch starts the gate's background afresh."""
        with self.gate_lock:
            if fr.epoch != self.gate_epoch:
                self.gate_epoch = fr.epoch
                self.motion.reset()
            if self.polygons is not None:  # the decoder's plane has the source's size; else the scale says it
                self._place_polygons((fr.luma.shape[1], fr.luma.shape[0]) if fr.luma is not None
                                     else source_size(fr.size, fr.scale))
            if fr.luma is not None:  # the decoder's luminance: no colour conversion for the gate
                return self.motion.detect(fr.luma, fr.size, fr.limited_range, small=fr.gate)
            return self.motion.detect(fr.image)

    def _place_polygons(self, size: tuple[int, int]) -> None:
        """Masks and zones as fractions of the source's picture, once its size is known (the first
        frame; again when a reconnect brings another size): the gate's mask and the rules' masks."""
        first = self.polygons.size is None
        if self.polygons.resolve(*size):
            self.motion.set_mask(self.polygons.motion_mask())
            for r in self.rules:
                r.detector.masks = self.polygons.masks
            self.reshaped = not first  # analysis resets the rules (their masks are made at set-up)

    def advanced(self, prev: int, ts_ms: int) -> int:
        """``last_rules_ts`` / ``handed_ts`` after a frame at ``ts_ms`` went to the rules: the
        first one counts ``recheck_phase_ms`` earlier, so that the re-checks keep the phase."""
        return max(prev, ts_ms - (self.recheck_phase_ms if prev == _NEVER else 0))

    def models_due(self, ts_ms: int, m: MotionResult, since: int = _NEVER) -> list[str]:
        """The detector models this frame should go through: a periodic re-check, or a rule asks.
        ``since``: a frame handed over at that time counts as the re-check's (see :attr:`handed_ts`)."""
        out = []
        for model in self.models:
            due = ts_ms - max(self.last_model_ts.get(model, _NEVER), since) >= self.cfg.recheck_s * 1000
            if due or any(r.model == model and r.detector.wants_model(ts_ms, m) for r in self.rules):
                out.append(model)
        return out

    def still(self, ts_ms: int, m: MotionResult, models: list[str], since: int = _NEVER) -> bool:
        """Still scene, nothing building up, no model due: the rules skip this frame (its BGR
        picture is never made); they still see one every ``still_recheck_s`` (``since``: as for
        :meth:`models_due`)."""
        return (not models and not len(m.boxes) and not m.global_change
                and ts_ms - max(self.last_rules_ts, since) < self.cfg.still_recheck_s * 1000
                and not self.rules_busy)


def _capture_gate(cam: CameraPipeline) -> Callable[[Frame], bool]:
    """The motion gate of ``cam``, run by its capture thread on each kept frame that has a luma
    plane, right after decoding: True when the frame stops there (a still frame with nothing due,
    see :meth:`CameraPipeline.still`; counted as ``gated``), so on a still scene the analysis
    thread is woken only for the periodic re-check. Analysis reuses the result of frames it gets.

    The decision reads state the analysis thread writes (when the rules last ran, whether a rule
    is busy or wants its model): a frame judged on a value a moment old is at worst handed over
    when it need not be (analysis then gates it), or gated when the rules became busy during the
    last 1/analysis_fps, and the next frame goes.

    A periodic re-check (``still_recheck_s``, a model's ``recheck_s``) is asked for once: the
    frame handed over for it counts as done on this side (``handed_ts``). Otherwise, while
    analysis is behind, every camera whose re-check is due would hand over every frame until
    analysis had run the rules on one, and the extra work would put analysis further behind."""
    def prepare(fr: Frame) -> bool:
        if fr.luma is None or fr.size is None:
            return False
        fr.gate = cam.motion.prepare(fr.luma, fr.size, fr.limited_range)
        m = fr.motion = cam.gate(fr)
        since = cam.handed_ts
        if cam.still(fr.ts_ms, m, cam.models_due(fr.ts_ms, m, since), since):
            return True
        cam.handed_ts = cam.advanced(cam.handed_ts, fr.ts_ms)
        return False
    return prepare


class VideoRuntime:
    def __init__(self, cfg: GridwatchConfig, store=None, publisher=None, counters: Counters | None = None,
                 on_events: EventSink | None = None, on_status: Callable[[StatusChange], None] | None = None,
                 models: dict[str, Any] | None = None, collector: VideoCollector | None = None) -> None:
        self.cfg = cfg
        self._switch_before: float | None = None  # Python's switch interval before start()
        self._cv_threads_before: int | None = None  # OpenCV's thread count before start()
        self.store = store
        self.publisher = publisher
        self.counters = counters or Counters()
        self.on_events = on_events
        self.on_status_cb = on_status
        self.evidence = EvidenceStore(cfg.data_dir / cfg.video.evidence_dir, cfg.video.evidence_retention_days,
                                      cfg.video.evidence_max_mb)
        self.models: dict[str, Any] = dict(models or {})
        for name, m in model_configs(cfg.video).items():  # configured ones and registry names used by rules
            if name not in self.models:
                self.models[name] = load_model(m, cfg)
        rule_cfgs = {r.name: r for r in cfg.video.rules}
        self.cameras: list[CameraPipeline] = []
        self.rule_info: dict[str, RuleInfo] = {}
        for slot, cam in enumerate(cfg.cameras):
            zones = [Zone(z, i) for i, z in enumerate(cam.zones)]
            polys = CameraPolygons(cam.name, cam.masks, zones) if cam.masks or cam.zones else None
            rules = []
            for rn in cam.rules or list(rule_cfgs):
                r = rule_cfgs[rn]
                model_name = rule_model(r)
                det = create(r.kind, r.name, r.params, zones_for(r.name, zones),
                             self.models[model_name] if model_name else None)
                det.masks = polys.masks if polys is not None else []
                info = RuleInfo(r.name, r.kind, r.severity, int(r.cooldown_s * 1000), int(r.min_active_s * 1000),
                                r.message or DEFAULT_MESSAGES.get(r.kind, "{rule} on camera {source}"), "device",
                                lambda aux: None, value_is_reading=False)
                self.rule_info[r.name] = info
                is_det = model_name is not None and det.model_kind == "detector"
                rules.append(_Rule(info, det, model_name if is_det else None))
            models = sorted({r.model for r in rules if r.model})
            region = parse_path(cam.region or cfg.regions.default)
            self.cameras.append(CameraPipeline(slot, cam, region, zones,
                                               MotionDetector(MotionParams.model_validate(cam.motion),
                                                              polys.motion_mask() if polys is not None else None),
                                               rules, models,
                                               recheck_phase_ms=recheck_phase(slot, cam.still_recheck_s),
                                               polygons=polys))
        self.by_name = {c.cfg.name: c for c in self.cameras}
        self.lifecycle = Lifecycle(self._describe, self._region_of, cfg.alerts_mqtt.update_interval_s)
        self.collector = collector or VideoCollector(cfg.cameras, on_status=self._on_status,
                                                     capture_nice=cfg.video.capture_nice,
                                                     start_rate=cfg.video.start_rate)
        clips = cfg.video.clips
        self.clips = ClipWriter(cfg.data_dir / clips.dir, clips, self.counters) if clips.enabled else None
        for c in self.cameras:  # the motion gate on each kept frame, on its capture thread
            src = getattr(self.collector, "cameras", {}).get(c.cfg.name)
            if src is not None:
                src.prepare = _capture_gate(c)
                if self.clips is not None:  # and its packets kept for clips
                    src.packets = self.clips.ring(c.cfg.name)
        self.stage_s: Counter = Counter()  # seconds spent per stage: gate, detectors, model, evidence
        self.frames_analysed = 0  # frames the rules saw
        self._gated_here = 0  # frames handed to analysis that only the gate saw
        self.model_frames: Counter = Counter()  # model name -> frames run
        self.model_runs: Counter = Counter()  # model name -> batched calls
        self.status: dict[str, tuple[str, str]] = {c.cfg.name: ("connecting", "starting") for c in self.cameras}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()  # emit path (analysis thread vs. tick from elsewhere)
        self.error: BaseException | None = None
        # warning events the store has not taken yet (a full disk, a locked file): kept in order
        # and committed, then published, once it takes them again (see _emit)
        self._held: deque[list[tuple[str, Warning]]] = deque()
        self._held_events = 0
        self._emit_lock = threading.Lock()
        self._store_failing = False

    # --- lifecycle plumbing ----------------------------------------------------------------
    def _describe(self, inp: str, slot: int) -> tuple[str, str | None]:
        return self.cameras[slot].cfg.name, None

    def _region_of(self, inp: str, slot: int, lat: float, lon: float) -> RegionPath:
        return self.cameras[slot].region

    # --- camera status -----------------------------------------------------------------------
    def _on_status(self, ch: StatusChange) -> None:
        self.status[ch.camera] = (ch.new.value, ch.reason)
        self.counters.add(f"camera/{ch.camera}", f"status_{ch.new.value}")
        self.counters.set(f"camera/{ch.camera}", "online", 1.0 if ch.new is CameraState.ONLINE else 0.0)
        if self.publisher is not None:
            topic = f"{self.cfg.video.status_topic_prefix}/{self.cfg.site.name}/{ch.camera}"
            payload = orjson.dumps({"camera": ch.camera, "state": ch.new.value, "previous": ch.old.value,
                                    "reason": ch.reason, "ts": ch.ts_ms})
            try:
                self.publisher.client.publish(topic, payload, qos=1, retain=True)
            except Exception:  # never let MQTT trouble reach a capture thread
                log.exception("camera status publish failed")
        if self.on_status_cb is not None:
            self.on_status_cb(ch)

    # --- running -----------------------------------------------------------------------------
    def start(self) -> "VideoRuntime":
        self.evidence.enforce_retention()
        if self.cfg.video.gil_switch_ms > 0 and self.cfg.cameras and self._switch_before is None:
            self._switch_before = sys.getswitchinterval()
            sys.setswitchinterval(self.cfg.video.gil_switch_ms / 1000.0)
        if self.cfg.video.opencv_threads > 0 and self.cfg.cameras and self._cv_threads_before is None:
            self._cv_threads_before = cv2.getNumThreads()
            cv2.setNumThreads(self.cfg.video.opencv_threads)
        self._stop.clear()
        if self.clips is not None:
            self.clips.start()
        self.collector.start()
        self._thread = threading.Thread(target=self._loop, name="video-analysis", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self.collector.wake()  # the analysis loop may be waiting for frames until its next tick
        if self._thread is not None:
            self._thread.join(10)
        self.collector.stop()
        if self.clips is not None:  # after the cameras: their clips being collected end and are written
            self.clips.stop()
        if self._switch_before is not None:
            sys.setswitchinterval(self._switch_before)
            self._switch_before = None
        if self._cv_threads_before is not None:
            cv2.setNumThreads(self._cv_threads_before)
            self._cv_threads_before = None

    def __enter__(self) -> "VideoRuntime":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def _loop(self) -> None:
        next_tick = time.monotonic() + 1.0
        next_retention = time.monotonic() + 3600.0
        gather = self.cfg.video.gather_ms / 1000.0 if any(c.models for c in self.cameras) else 0.0
        try:
            while not self._stop.is_set():
                # idle, it wakes for the next tick only (stop() wakes it too): every wake-up of
                # the thread costs CPU that a still camera would otherwise not spend
                frames = self.collector.collect(timeout=max(0.0, next_tick - time.monotonic()) + 0.001)
                if frames and gather > 0 and len(frames) < len(self.cameras):
                    time.sleep(gather)  # let the other cameras' frames arrive: one batched model run
                    frames += self.collector.collect(timeout=0)
                if frames:
                    self.analyse(frames)
                t = time.monotonic()
                if t >= next_tick:
                    next_tick = t + 1.0
                    self.tick(int(time.time() * 1000))
                if t >= next_retention:
                    next_retention = t + 3600.0
                    self.evidence.enforce_retention()
        except BaseException as e:  # surfaced to whoever stops the runtime
            self.error = e
            log.exception("video analysis thread failed")

    @property
    def frames_gated(self) -> int:
        """Frames only the motion gate saw (still scene): on the capture threads, and in analysis."""
        cams = getattr(self.collector, "cameras", {})
        return self._gated_here + sum(c.counters.gated for c in cams.values())

    def tick(self, now_ms: int) -> list[tuple[str, Warning]]:
        with self._lock:
            events = self.lifecycle.tick(now_ms, self.rule_info)
        self._emit(events)
        for name, c in self.collector.counters().items():
            src = f"camera/{name}"
            for k in ("decoded", "skipped", "gated", "analysed", "dropped", "reconnects", "discontinuities"):
                self.counters.set(src, k, float(c[k]))
            for code, n in c["errors"].items():  # camera errors by kind: frame_too_large, no_keyframe, ...
                self.counters.set(src, f"camera_errors_{code}", float(n))
        self.counters.set("video", "frames_gated", float(self.frames_gated))
        if self.clips is not None:
            self.clips.export()
        return events

    def analyse(self, frames: list[Frame]) -> list[tuple[str, Warning]]:
        """One analysis cycle over the newest frame of each camera; returns the warning events."""
        t0 = time.perf_counter()
        work: list[tuple[CameraPipeline, Frame, Any]] = []
        wants: dict[str, list[int]] = defaultdict(list)  # model -> indices into work
        for fr in frames:
            cam = self.by_name.get(fr.camera)
            if cam is None:
                continue
            cam.last_frame = fr
            m = fr.motion if fr.motion is not None else cam.gate(fr)  # the capture thread's, if it ran it
            why = cam.discontinuity(fr, m, cam.cfg.discontinuity_gap_s)
            if cam.reshaped:  # the picture changed size: masks and zones were placed anew
                cam.reshaped = False
                why = why or "resized"
            if why is not None:  # nothing seen before this frame counts towards a warning after it
                cam.reset_rules(fr.ts_ms)
                self.counters.add(f"camera/{cam.cfg.name}", f"evidence_resets_{why}")
            models = cam.models_due(fr.ts_ms, m)
            if cam.still(fr.ts_ms, m, models):
                self._gated_here += 1
                continue
            cam.last_rules_ts = cam.advanced(cam.last_rules_ts, fr.ts_ms)
            idx = len(work)
            work.append((cam, fr, m))
            for model in models:
                wants[model].append(idx)
        t1 = time.perf_counter()
        dets: dict[tuple[int, str], Any] = {}
        for model, idxs in wants.items():
            mdl = self.models[model]
            out = mdl.detect([work[i][1].image for i in idxs])
            self.model_runs[model] += 1
            self.model_frames[model] += len(idxs)
            for i, d in zip(idxs, out):
                dets[(i, model)] = d
                work[i][0].last_model_ts[model] = work[i][1].ts_ms
        t2 = time.perf_counter()
        hits: list[tuple[CameraPipeline, _Rule, Hit]] = []
        for i, (cam, fr, m) in enumerate(work):
            for r in cam.rules:
                d = dets.get((i, r.model)) if r.model else None
                names = self.models[r.model].names if r.model else {}
                fi = FrameInput(cam.cfg.name, fr.image, fr.ts_ms, m, d, names)
                for h in r.detector.update(fi):
                    if h.kind == RAISE and h.zone is None and r.detector.zones and not self._place(h, r, fr):
                        self.counters.add(f"camera/{cam.cfg.name}", "outside_zones")
                        continue
                    hits.append((cam, r, h))
            cam.refresh_busy()
        t3 = time.perf_counter()
        events = self._hits_to_events(hits) if hits else []
        t4 = time.perf_counter()
        self.frames_analysed += len(work)
        st = self.stage_s
        st["gate"] += t1 - t0
        st["model"] += t2 - t1
        st["detectors"] += t3 - t2
        st["evidence"] += t4 - t3
        self.counters.add("video", "frames_analysed", len(work))
        self._emit(events)
        return events

    @staticmethod
    def _place(h: Hit, r: _Rule, fr: Frame) -> bool:
        """Name the zone of a raise from a rule that has zones; False when its evidence lies
        outside all of them (the raise is then dropped)."""
        size = fr.size or (fr.image.shape[1], fr.image.shape[0])
        z = zone_of(h.boxes, r.detector.zones, *size)
        if z is None:
            return False
        h.zone = z.name
        return True

    def _hits_to_events(self, hits: list[tuple[CameraPipeline, _Rule, Hit]]) -> list[tuple[str, Warning]]:
        out: list[tuple[str, Warning]] = []
        with self._lock:
            for cam, r, h in hits:
                if h.kind == UPDATE:  # still seen: the lifecycle's tick emits "updated" (rate-limited)
                    self.lifecycle.touch(r.info.name, cam.slot, h.key, h.ts_ms, h.score)
                    continue
                ev = Events(np.array([-1], np.int64), np.array([cam.slot], np.int32),
                            np.array([EV_RAISE if h.kind == RAISE else EV_CLEAR], np.int8),
                            np.array([h.ts_ms], np.int64), np.array([h.score], np.float64),
                            np.array([h.key], np.int32))
                for event, w in self.lifecycle.on_events(r.info, ev):
                    if event == RAISED:
                        self._decorate(cam, r, h, w)
                    out.append((event, w))
        return out

    def _decorate(self, cam: CameraPipeline, r: _Rule, h: Hit, w: Warning) -> None:
        """Zone, message and evidence (snapshots) of a newly raised warning, also on the active copy."""
        rule = r.info.name
        evidence: dict[str, Any] = {"camera": cam.cfg.name, "frame_ts": h.ts_ms, "label": h.label,
                                    "boxes": [[round(v, 1) for v in b] for b in h.boxes], **h.detail}
        if h.image is not None:
            try:
                label = f"{h.label} {h.score:.2f}" if h.score == h.score and h.score <= 1 else h.label
                evidence["snapshot"] = self.evidence.save(cam.cfg.name, rule, h.ts_ms, h.image, h.boxes, cam.zones, label)
                if h.before is not None:
                    evidence["before_snapshot"] = self.evidence.save(cam.cfg.name, rule, h.ts_ms, h.before, h.boxes,
                                                                     cam.zones, "before", suffix="before")
                evidence["evidence_dir"] = str(self.evidence.root)
            except OSError as e:  # a full disk must not stop warnings
                evidence["snapshot_error"] = str(e)
                self.counters.add("video", "snapshot_errors")
        if self.clips is not None:  # written off this thread once its last seconds have arrived
            evidence.update(self.clips.request(cam.cfg.name, rule, h.ts_ms))
        w.zone = h.zone
        w.evidence = evidence
        w.message = r.info.message.format_map(_Fmt(source=cam.cfg.name, zone=h.zone or "-", rule=rule, value=w.value))
        active = self.lifecycle.active.get((rule, cam.slot, h.key))
        if active is not None:
            active.warning.zone, active.warning.evidence, active.warning.message = w.zone, evidence, w.message

    MAX_HELD_EVENTS = 10_000

    def _emit(self, events: list[tuple[str, Warning]]) -> None:
        """Commit ``events`` to the store, then publish them. A store that refuses a write (disk
        full, read-only, locked) does not stop video analysis: the events are held, in order,
        and tried again with the next events and at every tick (once a second); nothing is
        published before it is stored. At most :attr:`MAX_HELD_EVENTS` are held; past that the
        oldest held batch is published without being stored (counted as
        ``video/events_not_stored``, logged) rather than lost."""
        with self._emit_lock:
            if events:
                self._held.append(events)
                self._held_events += len(events)
            while self._held:
                batch = self._held[0]
                if self.store is not None:
                    try:
                        self.store.commit(warnings=[w for _, w in batch])
                    except StoreWriteError as e:
                        self.counters.add("video", "store_commit_failures")
                        if not self._store_failing:
                            self._store_failing = True
                            log.error("video warnings held, not stored: %s; they are stored and published when the "
                                      "store takes writes again (at most %d held)", e, self.MAX_HELD_EVENTS)
                        if self._held_events <= self.MAX_HELD_EVENTS:
                            break
                        self.counters.add("video", "events_not_stored", len(batch))
                        log.error("%d video warning events published without being stored: more than %d held",
                                  len(batch), self.MAX_HELD_EVENTS)
                    else:
                        if self._store_failing:
                            self._store_failing = False
                            log.warning("the store takes writes again: held video warnings stored")
                self._held.popleft()
                self._held_events -= len(batch)
                if self.publisher is not None:
                    self.publisher.publish(batch)
                self.counters.add("warnings", "video_events", len(batch))
                if self.on_events is not None:
                    self.on_events(batch)
            self.counters.set("video", "events_held", float(self._held_events))


class _Fmt(dict):
    def __missing__(self, key: str) -> str:
        return "{" + key + "}"
