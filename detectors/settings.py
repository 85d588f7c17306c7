"""Configuration of the video path: ``[[cameras]]`` and ``[video]`` (rules, models, evidence).

    [[video.models]]
    name = "objects"
    path = "models/objects.onnx"      # relative to the config file
    layout = "yolov8"

    [[video.rules]]
    name = "ebike-lift"
    kind = "ebike"                    # smoke | dumping | ebike
    model = "objects"
    severity = "critical"
    params = { k = 3, n = 5 }

    [[cameras]]
    name = "block7-lift"
    url = "rtsp://${CAM_USER}:${CAM_PASSWORD}@10.0.3.21:554/Streaming/Channels/102"
    region = "Jiangcheng/Riverside District/East Town/E-02"
    rules = ["ebike-lift"]
    zones = [{ name = "lift car", kind = "elevator", polygon = [[0.1, 0.2], [0.9, 0.2], [0.9, 1.0], [0.1, 1.0]] }]
"""
from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from gridwatch.ingest.video import CameraConfig

from .base import ZoneConfig


class _M(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ModelConfig(_M):
    name: str = Field(min_length=1, description="Name rules use to refer to this model.")
    path: str = Field(min_length=1, description="ONNX file, relative to the config file unless absolute.")
    kind: Literal["detector", "classifier"] = Field("detector", description="Object detector (boxes) or image classifier (smoke check).")
    layout: Literal["yolov5", "yolov8", "end2end", "rtdetr"] = Field("yolov8", description="Detector output layout "
                                                                  "(yolov8 also covers YOLO11).")
    input_size: tuple[int, int] | None = Field(None, description="(width, height) when the model's input size is dynamic.")
    names: list[str] = Field(default_factory=list, description="Class names by id; default: from the model's metadata.")
    conf: float = Field(0.25, ge=0, le=1, description="Detector score threshold before the rules' own.")
    iou: float = Field(0.45, gt=0, le=1, description="NMS IoU threshold.")
    softmax: bool = Field(False, description="Classifier outputs logits (apply softmax).")
    intra_op_threads: int = Field(0, ge=0, description="Threads inside one operator (0 = onnxruntime's default).")
    inter_op_threads: int = Field(1, ge=1, description="Threads across independent operators.")
    max_batch: int = Field(8, ge=1, description="Most frames (from all cameras) per run.")
    providers: list[str] = Field(default_factory=list, description="Execution providers in order; default TensorRT, CUDA, OpenVINO, CPU (those present).")


class VideoRuleConfig(_M):
    name: str = Field(min_length=1, description="Rule name; part of every warning's id and MQTT topic. Unique among all rules.")
    kind: str = Field(description="Detector kind: smoke, dumping, ebike.")
    model: str | None = Field(None, description="Name of a [[video.models]] entry (required for ebike; optional for smoke and dumping).")
    severity: Literal["info", "minor", "major", "critical"] = Field("major", description="Severity of its warnings.")
    cooldown_s: float = Field(300.0, ge=0, description="After a warning clears, the same camera/zone raises nothing for this long.")
    min_active_s: float = Field(0.0, ge=0, description="A warning that clears sooner stays active until then.")
    message: str = Field("", description="Text for operators; {source}, {zone}, {rule}, {value} are filled in.")
    params: dict[str, Any] = Field(default_factory=dict, description="The detector's parameters (see docs/video.md).")


class VideoCameraConfig(CameraConfig):
    region: str = Field("", description="Region path 'city/county/town/grid' of this camera's warnings (default: regions.default).")
    rules: list[str] = Field(default_factory=list, description="Names of [[video.rules]] run on this camera (empty = all).")
    zones: list[ZoneConfig] = Field(default_factory=list, description="Named polygons (fractions of the image).")
    masks: list[list[tuple[float, float]]] = Field(default_factory=list, description="Polygons (fractions) to ignore: "
                                                   "timestamps, trees, roads outside the watched area.")
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
    gather_ms: float = Field(40.0, ge=0, description="After the first camera's frame arrives, wait this long for other "
                             "cameras' frames so their models run as one batch (adds at most this to latency).")
    status_topic_prefix: str = Field("gridwatch/cameras", description="Camera status goes to <prefix>/<site>/<camera> (retained JSON).")

    @field_validator("rules")
    @classmethod
    def _unique(cls, rules: list[VideoRuleConfig]) -> list[VideoRuleConfig]:
        names = [r.name for r in rules]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise ValueError(f"video rule names must be unique: {sorted(dup)}")
        return rules


def check(cameras: list[VideoCameraConfig], video: VideoConfig, sensor_rules: list[str]) -> None:
    """Cross-references: detector kinds and params, model names, camera rule names. Raises ValueError."""
    from .registry import VideoDetector

    models = {m.name: m for m in video.models}
    if len(models) != len(video.models):
        raise ValueError("video.models: model names must be unique")
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
        if r.model is not None:
            m = models.get(r.model)
            if m is None:
                raise ValueError(f"video.rules.{i}.model: no model named {r.model!r} in [[video.models]]")
            if m.kind != cls.model_kind:
                raise ValueError(f"video.rules.{i}.model: {r.kind} needs a {cls.model_kind} model, {r.model!r} is a {m.kind}")
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
