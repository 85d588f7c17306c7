"""Configuration of the video path: ``[[cameras]]`` and ``[video]`` (rules, models, evidence).

    [[video.models]]
    name = "objects"
    path = "models/objects.onnx"      # a user's model, relative to the config file
    layout = "yolov8"

    [[video.models]]
    name = "objects-det"              # no path: the model registry's entry of that name
    intra_op_threads = 1              # (shipped models/manifest.json, or video.model_manifest)

    [[video.rules]]
    name = "ebike-lift"
    kind = "ebike"                    # smoke | dumping | ebike
    model = "objects-det"             # a [[video.models]] name or a registry name; omitted: the
    severity = "critical"             # kind's default (ebike: objects-det, smoke: smoke-cls,
    params = { k = 3, n = 5 }         # dumping: none); "" = no model

    [[cameras]]
    name = "block7-lift"
    url = "rtsp://${CAM_USER}:${CAM_PASSWORD}@10.0.3.21:554/Streaming/Channels/102"
    region = "Jiangcheng/Riverside District/East Town/E-02"
    rules = ["ebike-lift"]
    masks = [[[0, 0], [260, 0], [260, 30], [0, 30]]]       # pixels of the camera's picture

    [[cameras.zones]]
    name = "lift car"
    kind = "elevator"
    polygon = [[64, 72], [576, 72], [576, 360], [64, 360]]  # pixels of the camera's picture
    rules = ["ebike-lift"]                                 # empty: every rule of the camera
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from gridwatch.ingest.video import CameraConfig

from .base import ZoneConfig
from .evidence import ClipConfig
from .zones import MaskPolygon


class _M(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ModelConfig(_M):
    name: str = Field(min_length=1, description="Name rules use to refer to this model.")
    path: str = Field("", description="ONNX file, relative to the config file unless absolute. Empty: the model "
                      "registry's entry named `registry` (default: `name`), hash-checked, with its layout, kind, "
                      "input size and classes from the manifest.")
    registry: str = Field("", description="Registry name of a shipped (models/manifest.json) or registered "
                          "(video.model_manifest) model; used when `path` is empty. Default: `name`.")
    kind: Literal["detector", "classifier"] = Field("detector", description="Object detector (boxes) or image classifier (smoke check). Registry models: from the manifest.")
    layout: Literal["yolov5", "yolov8", "end2end", "rtdetr"] = Field("yolov8", description="Detector output layout "
                                                                  "(yolov8 also covers YOLO11). Registry models: from the manifest.")
    input_size: tuple[int, int] | None = Field(None, description="(width, height) when the model's input size is dynamic.")
    names: list[str] = Field(default_factory=list, description="Class names by id; default: from the model's metadata (registry models: the manifest's classes).")
    conf: float = Field(0.25, ge=0, le=1, description="Detector score threshold before the rules' own.")
    iou: float = Field(0.45, gt=0, le=1, description="NMS IoU threshold.")
    softmax: bool = Field(False, description="Classifier outputs logits (apply softmax).")
    intra_op_threads: int = Field(0, ge=0, description="Threads inside one operator (0 = onnxruntime's default).")
    inter_op_threads: int = Field(1, ge=1, description="Threads across independent operators.")
    max_batch: int = Field(8, ge=1, description="Most frames (from all cameras) per run.")
    providers: list[str] = Field(default_factory=list, description="Execution providers in order; default TensorRT, CUDA, OpenVINO, CPU (those present).")

    @model_validator(mode="after")
    def _source(self) -> "ModelConfig":
        if self.path and self.registry:
            raise ValueError(f"model {self.name!r}: give either path (a file) or registry (a registered model), not both")
        return self

    @property
    def registry_name(self) -> str | None:
        """The registry entry this model comes from, or None for a file given by path."""
        return None if self.path else (self.registry or self.name)


class VideoRuleConfig(_M):
    name: str = Field(min_length=1, description="Rule name; part of every warning's id and MQTT topic. Unique among all rules.")
    kind: str = Field(description="Detector kind: smoke, dumping, ebike.")
    model: str | None = Field(None, description="A [[video.models]] name, or the registry name of a shipped/registered "
                              "model (e.g. objects-det, smoke-cls). Omitted: the kind's default shipped model "
                              "(ebike: objects-det, smoke: smoke-cls, dumping: none); \"\" = no model (not for ebike).")
    severity: Literal["info", "minor", "major", "critical"] = Field("major", description="Severity of its warnings.")
    cooldown_s: float = Field(300.0, ge=0, description="After a warning clears, the same camera/zone raises nothing for this long.")
    min_active_s: float = Field(0.0, ge=0, description="A warning that clears sooner stays active until then.")
    message: str = Field("", description="Text for operators; {source}, {zone}, {rule}, {value} are filled in.")
    params: dict[str, Any] = Field(default_factory=dict, description="The detector's parameters (see docs/video.md).")


class VideoCameraConfig(CameraConfig):
    region: str = Field("", description="Region path 'city/county/town/grid' of this camera's warnings (default: regions.default).")
    rules: list[str] = Field(default_factory=list, description="Names of [[video.rules]] run on this camera (empty = all).")
    zones: list[ZoneConfig] = Field(default_factory=list, description="Named polygons ([[cameras.zones]]: name, "
                                    "polygon, rules, kind) in pixels of the camera's picture: a rule that has zones "
                                    "raises only inside them, with the zone's name on its warnings.")
    masks: list[MaskPolygon] = Field(default_factory=list, description="Polygons [[[x, y], ...], ...] to ignore, in pixels "
                                 "of the camera's picture (`gridwatch camera snapshot` writes one and prints its size; "
                                 "corners all within 0..1 are fractions instead): on-screen clocks, trees, a flag, a "
                                 "road with traffic. Motion there does not wake the rules, and the smoke and dumping "
                                 "rules build no evidence there.")
    motion: dict[str, Any] = Field(default_factory=dict, description="Motion gate settings (MotionParams) for this camera.")
    recheck_s: float = Field(30.0, gt=0, description="On a still scene, run the camera's model at least this often.")
    still_recheck_s: float = Field(5.0, gt=0, le=5.0, description="On a still scene (no motion, nothing building up), "
                                   "the rules see a frame this often; the others only go through the motion gate.")


class VideoConfig(_M):
    rules: list[VideoRuleConfig] = Field(default_factory=list, description="Video event rules.")
    models: list[ModelConfig] = Field(default_factory=list, description="ONNX models, one shared session each.")
    evidence_dir: str = Field("evidence", description="Snapshots folder, relative to site.data_dir.")
    evidence_retention_days: float = Field(14.0, gt=0, description="Snapshots older than this are deleted.")
    evidence_max_mb: float = Field(2000.0, gt=0, description="Oldest snapshots are deleted beyond this size.")
    clips: ClipConfig = Field(default_factory=ClipConfig, description="Evidence clips around raised warnings.")
    gather_ms: float = Field(40.0, ge=0, description="After the first camera's frame arrives, wait this long for other "
                             "cameras' frames so their models run as one batch (adds at most this to latency).")
    capture_nice: int = Field(10, ge=0, le=19, description="Linux: camera capture threads (and their decoder "
                              "threads) run this much lower in priority than the rest, so an overloaded box decodes "
                              "more slowly instead of starving analysis (0 = same priority).")
    start_rate: float = Field(50.0, ge=0, description="Cameras started per second when video starts (0 = all at "
                              "once). Each camera's first frames go to the rules to set up their backgrounds, and "
                              "cameras started together re-check a still scene together: hundreds at once overload "
                              "analysis for seconds, long enough for the watchdog to call cameras stale and reconnect "
                              "them, which adds to the load. At 50 a second, 500 cameras take 10 s to start.")
    gil_switch_ms: float = Field(1.0, ge=0, le=100, description="Python's thread switch interval while cameras run "
                                 "(sys.setswitchinterval, process-wide; 0 = leave Python's 5 ms): the one analysis thread "
                                 "takes the GIL back about ten times a frame, each time from among hundreds of capture "
                                 "threads, and waits up to this long each time.")
    opencv_threads: int = Field(1, ge=0, le=256, description="OpenCV's worker threads while cameras run "
                                "(cv2.setNumThreads, process-wide; 0 = leave OpenCV's default of one per core). The "
                                "analysis thread's OpenCV calls are on small frames, where handing each to a pool of "
                                "workers costs more CPU than it saves; the decoders keep the cores busy anyway.")
    status_topic_prefix: str = Field("gridwatch/cameras", description="Camera status goes to <prefix>/<site>/<camera> (retained JSON).")
    model_manifest: str = Field("", description="Your own model manifest (same format as models/manifest.json, files "
                                "relative to it; relative to the config file), read besides the shipped one; its "
                                "entries override shipped ones of the same name. Default: $GRIDWATCH_MODEL_MANIFEST.")

    @field_validator("rules")
    @classmethod
    def _unique(cls, rules: list[VideoRuleConfig]) -> list[VideoRuleConfig]:
        names = [r.name for r in rules]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise ValueError(f"video rule names must be unique: {sorted(dup)}")
        return rules


def rule_model(rule: VideoRuleConfig) -> str | None:
    """The model a rule uses: its ``model``, else its kind's default shipped model; None for none."""
    from .registry import VideoDetector

    if rule.model is not None:
        return rule.model or None  # "" = explicitly no model
    cls = VideoDetector.registry.get(rule.kind)
    return getattr(cls, "default_model", None) if cls is not None else None


def model_configs(video: VideoConfig) -> dict[str, ModelConfig]:
    """Every model the rules use, by name: the [[video.models]] entries, plus an implicit registry
    entry for each rule model that names a registered model directly (default settings, one
    intra-op thread: the shipped models are small, and decoding needs the other cores; a
    [[video.models]] entry of the same name sets them instead)."""
    out = {m.name: m for m in video.models}
    for r in video.rules:
        name = rule_model(r)
        if name is not None and name not in out:
            out[name] = ModelConfig(name=name, intra_op_threads=1)
    return out


def manifest_path(video: VideoConfig, base_dir: str | Path) -> Path | None:
    """The user's model manifest (resolved against the config's folder), or None."""
    if not video.model_manifest:
        return None
    p = Path(video.model_manifest)
    return p if p.is_absolute() else Path(base_dir) / p


def registry_info(m: ModelConfig, manifest: Path | None):
    """The registry entry of a model configured without a path (no file access, no hash check)."""
    from gridwatch.models import registry

    return registry.info(m.registry_name, manifest)


def model_kind(m: ModelConfig, manifest: Path | None) -> str:
    if m.registry_name is None:
        return m.kind
    return "classifier" if registry_info(m, manifest).layout == "classifier" else "detector"


def check(cameras: list[VideoCameraConfig], video: VideoConfig, sensor_rules: list[str], base_dir: str | Path = ".") -> None:
    """Cross-references: detector kinds and params, model names, camera rule names. Raises ValueError."""
    from gridwatch.models.registry import RegistryError

    from .registry import VideoDetector

    if len({m.name for m in video.models}) != len(video.models):
        raise ValueError("video.models: model names must be unique")
    manifest = manifest_path(video, base_dir)
    models = model_configs(video)
    kinds: dict[str, str] = {}
    declared = [x.name for x in video.models]
    for name, m in models.items():
        try:
            kinds[name] = model_kind(m, manifest)
        except (RegistryError, OSError, ValueError) as e:  # unknown name, unreadable manifest
            if name in declared:
                where = f"video.models.{declared.index(name)}"
            else:
                where = f"video.rules.{[rule_model(r) for r in video.rules].index(name)}.model"
            raise ValueError(f"{where}: {e} (nor in [[video.models]])" if name not in declared else f"{where}: {e}") from None
    for i, r in enumerate(video.rules):
        cls = VideoDetector.registry.get(r.kind)
        if cls is None:
            raise ValueError(f"video.rules.{i}.kind: unknown kind {r.kind!r}; expected one of {sorted(VideoDetector.registry)}")
        if r.name in sensor_rules:
            raise ValueError(f"video.rules.{i}.name: {r.name!r} is also a sensor rule name")
        try:
            cls.Params.model_validate(r.params)
        except ValidationError as e:
            errs = "; ".join(f"{'.'.join(map(str, x['loc']))}: {x['msg']}" for x in e.errors())
            raise ValueError(f"video.rules.{i}.params ({r.name}): {errs}") from None
        name = rule_model(r)
        if name is not None:
            if kinds[name] != cls.model_kind:
                raise ValueError(f"video.rules.{i}.model: {r.kind} needs a {cls.model_kind} model, {name!r} is a {kinds[name]}")
        elif r.kind == "ebike":
            raise ValueError(f"video.rules.{i}: kind 'ebike' needs a model with an e-bike class")
    rule_names = {r.name for r in video.rules}
    names = [c.name for c in cameras]
    if len(set(names)) != len(names):
        raise ValueError("cameras: camera names must be unique")
    for i, c in enumerate(cameras):
        for rn in c.rules:
            if rn not in rule_names:
                raise ValueError(f"cameras.{i}.rules: no video rule named {rn!r}")
        runs = c.rules or [r.name for r in video.rules]
        for j, z in enumerate(c.zones):
            for rn in z.rules:
                if rn not in runs:
                    raise ValueError(f"cameras.{i}.zones.{j}.rules (camera {c.name!r}, zone {z.name!r}): "
                                     f"{rn!r} is not a video rule this camera runs; it runs {', '.join(runs) or 'none'}")
                r = next(x for x in video.rules if x.name == rn)
                kinds = VideoDetector.registry[r.kind].Params.model_validate(r.params).model_dump().get("zone_kinds")
                if kinds and z.kind not in kinds:
                    raise ValueError(f"cameras.{i}.zones.{j}.kind (camera {c.name!r}, zone {z.name!r}): rule {rn!r} "
                                     f"watches zones of kind {', '.join(kinds)} (its zone_kinds); this zone's kind "
                                     f"is {z.kind!r}")
