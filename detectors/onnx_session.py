"""One shared onnxruntime session per detector model, used by all cameras.

    model = OnnxDetector("yolo11n.onnx", layout="yolov8", intra_op_threads=2)
    per_image = model.detect([frame_cam1, frame_cam2, frame_cam3])   # list[Detections]
    model.names[int(per_image[0].class_ids[0])]                      # "person"

* **Providers** in fallback order TensorRT → CUDA → OpenVINO → CPU, limited to what
  ``onnxruntime.get_available_providers()`` offers on this box (or the explicit list given).
* **Threads**: ``intra_op_threads`` (parallelism inside one operator) and ``inter_op_threads``
  (between independent branches); on a small edge box leave cores for decoding.
* **Batching across cameras**: with a dynamic batch axis, frames from several cameras go through
  one ``run`` (chunks of ``max_batch``); a model with a fixed batch of 1 runs once per frame.
* **Class names** from the model's custom metadata ``names`` (ultralytics writes
  ``"{0: 'person', 1: 'bicycle', ...}"``), else ``class0, class1, ...``.

``InferenceSession.run`` is thread-safe, so one instance serves every analysis thread.
"""
from __future__ import annotations

import ast
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnxruntime as ort

from .onnx_decoders import Detections, Layout, decode, letterbox, to_blob

log = logging.getLogger(__name__)

PROVIDER_PREFERENCE = (
    "TensorrtExecutionProvider",
    "CUDAExecutionProvider",
    "OpenVINOExecutionProvider",
    "CPUExecutionProvider",
)


def select_providers(available: Sequence[str] | None = None, wanted: Sequence[str] | None = None) -> list[str]:
    """The providers to use, best first: ``wanted`` (or the default preference) ∩ available."""
    available = list(ort.get_available_providers() if available is None else available)
    chosen = [p for p in (wanted or PROVIDER_PREFERENCE) if p in available]
    if not chosen:
        raise ValueError(f"none of the providers {list(wanted or PROVIDER_PREFERENCE)} is available; "
                         f"this onnxruntime offers {available}")
    return chosen


def parse_names(meta: dict[str, str]) -> dict[int, str]:
    """Class names from ultralytics-style metadata (a dict or list literal under ``names``)."""
    raw = meta.get("names")
    if not raw:
        return {}
    try:
        value = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        log.warning("model metadata 'names' is not a dict or list literal; ignoring it")
        return {}
    if isinstance(value, dict):
        return {int(k): str(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return dict(enumerate(map(str, value)))
    return {}


class OnnxSession:
    """A shared onnxruntime session with provider fallback, thread settings and batched runs."""

    def __init__(self, model: str | Path | bytes, providers: Sequence[str] | None = None,
                 intra_op_threads: int = 0, inter_op_threads: int = 1, max_batch: int = 8) -> None:
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = intra_op_threads  # 0 = onnxruntime's default (all cores)
        opts.inter_op_num_threads = inter_op_threads
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        src = model if isinstance(model, bytes) else str(model)
        self.session = ort.InferenceSession(src, sess_options=opts, providers=select_providers(wanted=providers))
        self.providers = self.session.get_providers()
        inp = self.session.get_inputs()[0]
        self.input_name = inp.name
        self.input_shape = list(inp.shape)  # symbolic dims are strings or None
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.dynamic_batch = not isinstance(self.input_shape[0], int)
        self.max_batch = max_batch if self.dynamic_batch else 1
        self.metadata = dict(self.session.get_modelmeta().custom_metadata_map)
        self.names = parse_names(self.metadata)

    @property
    def input_size(self) -> tuple[int, int] | None:
        """(width, height) of an NCHW input with fixed spatial size, else None."""
        h, w = self.input_shape[2:4] if len(self.input_shape) == 4 else (None, None)
        return (w, h) if isinstance(w, int) and isinstance(h, int) else None

    def run(self, batch: np.ndarray) -> list[np.ndarray]:
        """Run a batch of any size; outputs are concatenated along the batch axis."""
        parts = [self.session.run(self.output_names, {self.input_name: batch[i:i + self.max_batch]})
                 for i in range(0, batch.shape[0], self.max_batch)]
        if len(parts) == 1:
            return parts[0]
        return [np.concatenate(outs) for outs in zip(*parts)]

    def class_name(self, class_id: int) -> str:
        return self.names.get(int(class_id), f"class{int(class_id)}")


class OnnxDetector(OnnxSession):
    """An object detector: letterbox → one batched run → decode to :class:`Detections` per image."""

    def __init__(self, model: str | Path | bytes, layout: Layout, input_size: tuple[int, int] | None = None,
                 conf: float = 0.25, iou: float = 0.45, max_det: int = 300, **session_kw) -> None:
        super().__init__(model, **session_kw)
        size = input_size or self.input_size
        if size is None:
            raise ValueError("the model has no fixed input size; pass input_size=(width, height)")
        self.size = size
        self.layout = layout
        self.conf, self.iou, self.max_det = conf, iou, max_det
        if layout == "paddle":
            raise ValueError("the paddle layout needs im_shape/scale_factor inputs; use decode_paddle directly")

    def detect(self, images: Sequence[np.ndarray]) -> list[Detections]:
        """Detections for each BGR image (any sizes), in each image's own pixel coordinates."""
        if not images:
            return []
        placed = [letterbox(img, self.size, stretch=self.layout == "rtdetr") for img in images]
        out = self.run(to_blob([p[0] for p in placed]))[0]
        return decode(self.layout, out, [p[1] for p in placed], self.size, self.conf, self.iou, self.max_det)
