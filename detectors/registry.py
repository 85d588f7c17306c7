"""All video detector kinds, registered by importing their modules; plus the classifier model wrapper.

    from gridwatch.detectors.registry import create, kinds
    det = create("ebike", "ebike-lift", {"k": 3, "n": 5}, zones, model=shared_detector)
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from . import dumping, ebike, smoke  # noqa: F401  (registers the kinds)
from .base import VideoDetector, create  # noqa: F401
from .onnx_decoders import to_blob
from .onnx_session import OnnxSession


def kinds() -> list[str]:
    return sorted(VideoDetector.registry)


# How far each kind's defaults can be trusted, from measurements (docs/video.md): "experimental" where a
# target is not met. `gridwatch check-config --explain` prints it; `check-config FILE` notes it per rule.
STATUS: dict[str, tuple[str, str]] = {
    "smoke": ("experimental",
              "0 false alarms in 10 camera-hours per decode mode on 4 real clips with these settings (95 % upper "
              "bound 7.2 per camera-day; 24 with earlier ones, 3.0); detects 17 of 20 held-out generated 40 s plumes "
              "with full decode (target 80 %), but only 13 of 20 10 s plumes and 10 of 20 40 s plumes with keyframes, "
              "and smoke-cls calls 5 % of held-out real background crops smoke; never validated on real smoke"),
    "dumping": ("generated scenes only",
                "0 false alarms in 24 camera-hours per decode mode on 4 real clips (95 % upper bound 3.0 per "
                "camera-day); detection measured on generated scenes only, never on real dumping"),
    "ebike": ("generated scenes only",
              "0 false alarms in 24 camera-hours per decode mode on 4 real clips (95 % upper bound 3.0 per "
              "camera-day); 11 of 12 generated e-bikes and 0 of 12 bicycles (gridwatch bench ebike); never "
              "validated on real e-bikes"),
}


class OnnxClassifier(OnnxSession):
    """An image classifier ``[B, 3, H, W] -> [B, C]`` (probabilities, or logits with ``softmax=True``)."""

    def __init__(self, model: str | Path | bytes, input_size: tuple[int, int] | None = None, softmax: bool = False,
                 **session_kw) -> None:
        super().__init__(model, **session_kw)
        size = input_size or self.input_size
        if size is None:
            raise ValueError("the classifier has no fixed input size; pass input_size=(width, height)")
        self.size, self.softmax = size, softmax

    def classify(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """float32[len(images), C] class probabilities."""
        blob = to_blob([cv2.resize(img, self.size, interpolation=cv2.INTER_AREA) for img in images])
        out = self.run(blob)[0].astype(np.float32)
        if self.softmax:
            e = np.exp(out - out.max(axis=1, keepdims=True))
            out = e / e.sum(axis=1, keepdims=True)
        return out
