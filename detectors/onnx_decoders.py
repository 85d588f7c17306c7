"""Pre- and post-processing for ONNX object detectors: letterbox in, columnar detections out.

Output layouts understood (B = batch, C = classes, boxes in *model input* pixels unless noted):

=============  ================  ================================================================
layout         shape             rows
=============  ================  ================================================================
``yolov5``     ``[B, N, 5+C]``   cx, cy, w, h, objectness, C class scores (score = obj * cls)
``yolov8``     ``[B, 4+C, N]``   cx, cy, w, h, C class scores (YOLOv8 / YOLO11, no objectness)
``end2end``    ``[B, K, 6]``     x1, y1, x2, y2, score, class (NMS inside the model: YOLOv10,
                                 ultralytics ``nms=True`` exports); no NMS here
``rtdetr``     ``[B, Q, 4+C]``   cx, cy, w, h **normalised to 0..1**, C class scores; ultralytics
                                 RT-DETR exports already apply the sigmoid (``scores="prob"``);
                                 raw heads give logits (``scores="logits"``). One query = one
                                 object, so no NMS. Ultralytics feeds RT-DETR a *stretched* (not
                                 letterboxed) image: use ``letterbox(..., stretch=True)``.
``paddle``     ``[N, 6]``        class, score, x1, y1, x2, y2 in **original image** pixels
                                 (PaddleDetection exports, RT-DETR and PP-YOLOE with NMS; one
                                 image per run, the model takes ``im_shape``/``scale_factor``)
=============  ================  ================================================================

All decoders return one :class:`Detections` per image, boxes mapped back to the original image
with that image's :class:`Letterbox` and clipped to it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, NamedTuple

import cv2
import numpy as np

Layout = Literal["yolov5", "yolov8", "end2end", "rtdetr", "paddle"]


@dataclass(slots=True)
class Detections:
    """Detections of one image, columnar: row i is one object."""

    boxes: np.ndarray  # float32[N, 4] x1, y1, x2, y2 in original image pixels
    scores: np.ndarray  # float32[N]
    class_ids: np.ndarray  # int32[N]

    def __len__(self) -> int:
        return int(self.scores.shape[0])

    @classmethod
    def empty(cls) -> "Detections":
        return cls(np.empty((0, 4), np.float32), np.empty(0, np.float32), np.empty(0, np.int32))

    def take(self, idx: np.ndarray) -> "Detections":
        return Detections(self.boxes[idx], self.scores[idx], self.class_ids[idx])


class Letterbox(NamedTuple):
    """How an original image was placed into the model input: input = original * scale + pad."""

    scale_x: float
    scale_y: float
    pad_x: float
    pad_y: float
    orig_w: int
    orig_h: int

    def unmap(self, boxes: np.ndarray) -> np.ndarray:
        """Model-input xyxy boxes → original-image xyxy boxes, clipped to the image (float32)."""
        out = np.empty(boxes.shape, np.float32)
        xs, ys = out[:, 0::2], out[:, 1::2]  # views: x1, x2 and y1, y2
        xs[:] = (boxes[:, 0::2] - self.pad_x) / self.scale_x
        ys[:] = (boxes[:, 1::2] - self.pad_y) / self.scale_y
        np.clip(xs, 0, self.orig_w, out=xs)
        np.clip(ys, 0, self.orig_h, out=ys)
        return out


def letterbox(image: np.ndarray, size: tuple[int, int], stretch: bool = False,
              color: int = 114) -> tuple[np.ndarray, Letterbox]:
    """Fit ``image`` into ``size`` = (width, height): scaled to keep its aspect and padded evenly
    with ``color`` (YOLO convention), or ``stretch``-ed to fill (RT-DETR convention)."""
    h, w = image.shape[:2]
    tw, th = size
    if stretch:
        sx, sy = tw / w, th / h
        nw, nh = tw, th
    else:
        sx = sy = min(tw / w, th / h)
        nw, nh = max(1, round(w * sx)), max(1, round(h * sy))
    interp = cv2.INTER_AREA if sx < 1 and sy < 1 else cv2.INTER_LINEAR
    resized = image if (nw, nh) == (w, h) else cv2.resize(image, (nw, nh), interpolation=interp)
    px, py = (tw - nw) / 2, (th - nh) / 2
    left, top = int(round(px - 0.1)), int(round(py - 0.1))
    if (nw, nh) != (tw, th):
        resized = cv2.copyMakeBorder(resized, top, th - nh - top, left, tw - nw - left, cv2.BORDER_CONSTANT,
                                     value=(color,) * (1 if resized.ndim == 2 else resized.shape[2]))
    return resized, Letterbox(nw / w, nh / h, float(left), float(top), w, h)


def to_blob(images: list[np.ndarray], bgr: bool = True) -> np.ndarray:
    """Same-size uint8 HWC images → float32 NCHW RGB in 0..1 (the usual detector input)."""
    batch = np.stack(images)
    if bgr:
        batch = batch[..., ::-1]
    return np.ascontiguousarray(batch.transpose(0, 3, 1, 2), dtype=np.float32) * np.float32(1 / 255)


def cxcywh_to_xyxy(b: np.ndarray) -> np.ndarray:
    half = b[:, 2:4] / 2
    return np.concatenate([b[:, 0:2] - half, b[:, 0:2] + half], axis=1)


def nms(boxes: np.ndarray, scores: np.ndarray, class_ids: np.ndarray, iou_threshold: float,
        max_det: int = 300) -> np.ndarray:
    """Greedy per-class non-maximum suppression; indices of kept boxes, best score first.

    Classes are separated by shifting each class's boxes to its own region of the plane, so one
    pass suppresses only within a class. Each step is vectorised; the loop runs once per *kept*
    box, not per candidate.
    """
    if len(scores) == 0:
        return np.empty(0, np.int64)
    b = boxes.astype(np.float32, copy=False)
    offset = (class_ids.astype(np.float32) * (float(b.max()) + 1.0))[:, None]
    b = b + offset
    areas = (b[:, 2] - b[:, 0]).clip(0) * (b[:, 3] - b[:, 1]).clip(0)
    order = np.argsort(-scores, kind="stable")
    keep: list[int] = []
    while order.size and len(keep) < max_det:
        i = order[0]
        keep.append(int(i))
        rest = order[1:]
        ix = (np.minimum(b[i, 2], b[rest, 2]) - np.maximum(b[i, 0], b[rest, 0])).clip(0)
        iy = (np.minimum(b[i, 3], b[rest, 3]) - np.maximum(b[i, 1], b[rest, 1])).clip(0)
        inter = ix * iy
        iou = inter / np.maximum(areas[i] + areas[rest] - inter, 1e-9)
        order = rest[iou <= iou_threshold]
    return np.asarray(keep, np.int64)


def _finish(boxes_in: np.ndarray, scores: np.ndarray, cls: np.ndarray, lb: Letterbox, iou: float | None,
            max_det: int) -> Detections:
    if iou is not None:
        keep = nms(boxes_in, scores, cls, iou, max_det)
    else:
        keep = np.argsort(-scores, kind="stable")[:max_det]
    return Detections(lb.unmap(boxes_in[keep]), scores[keep].astype(np.float32), cls[keep].astype(np.int32))


def _check(output: np.ndarray, ndim: int, what: str, cond: bool) -> None:
    if output.ndim != ndim or not cond:
        raise ValueError(f"output of shape {tuple(output.shape)} is not the {what} layout")


def decode_yolov5(output: np.ndarray, letterboxes: list[Letterbox], conf: float = 0.25, iou: float = 0.45,
                  max_det: int = 300) -> list[Detections]:
    _check(output, 3, "YOLOv5 [B, N, 5+C]", output.shape[-1] >= 6)
    result = []
    for pred, lb in zip(output, letterboxes, strict=True):
        pred = pred[pred[:, 4] > conf]
        cls_scores = pred[:, 5:] * pred[:, 4:5]
        cls = cls_scores.argmax(1)
        scores = cls_scores[np.arange(len(cls)), cls]
        m = scores > conf
        result.append(_finish(cxcywh_to_xyxy(pred[m, :4]), scores[m], cls[m], lb, iou, max_det))
    return result


def decode_yolov8(output: np.ndarray, letterboxes: list[Letterbox], conf: float = 0.25, iou: float = 0.45,
                  max_det: int = 300) -> list[Detections]:
    _check(output, 3, "YOLOv8/11 [B, 4+C, N]", output.shape[1] >= 5)
    result = []
    for pred, lb in zip(output, letterboxes, strict=True):
        cls_scores = pred[4:]  # [C, N]
        cls = cls_scores.argmax(0)
        scores = cls_scores[cls, np.arange(cls.shape[0])]
        m = scores > conf
        result.append(_finish(cxcywh_to_xyxy(pred[:4, m].T), scores[m], cls[m], lb, iou, max_det))
    return result


def decode_end2end(output: np.ndarray, letterboxes: list[Letterbox], conf: float = 0.25,
                   max_det: int = 300) -> list[Detections]:
    _check(output, 3, "end-to-end [B, K, 6]", output.shape[-1] == 6)
    result = []
    for pred, lb in zip(output, letterboxes, strict=True):
        pred = pred[pred[:, 4] > conf]
        result.append(_finish(pred[:, :4], pred[:, 4], pred[:, 5].astype(np.int32), lb, None, max_det))
    return result


def decode_rtdetr(output: np.ndarray, letterboxes: list[Letterbox], input_size: tuple[int, int],
                  conf: float = 0.25, scores: Literal["prob", "logits"] = "prob",
                  max_det: int = 300) -> list[Detections]:
    """``input_size`` = (width, height) of the model input, to undo the 0..1 normalisation."""
    _check(output, 3, "RT-DETR [B, Q, 4+C]", output.shape[-1] >= 5)
    w, h = input_size
    result = []
    for pred, lb in zip(output, letterboxes, strict=True):
        s = pred[:, 4:]
        if scores == "logits":
            s = 1.0 / (1.0 + np.exp(-s))
        cls = s.argmax(1)
        best = s[np.arange(len(cls)), cls]
        m = best > conf
        b = cxcywh_to_xyxy(pred[m, :4]) * np.array([w, h, w, h], np.float32)
        result.append(_finish(b, best[m], cls[m], lb, None, max_det))
    return result


def decode_paddle(output: np.ndarray, conf: float = 0.25, max_det: int = 300) -> Detections:
    """PaddleDetection ``[N, 6]`` rows (class, score, x1, y1, x2, y2), already in image pixels."""
    _check(output, 2, "PaddleDetection [N, 6]", output.shape[-1] == 6)
    pred = output[(output[:, 1] > conf) & (output[:, 0] >= 0)]  # class -1 pads empty results
    order = np.argsort(-pred[:, 1], kind="stable")[:max_det]
    pred = pred[order]
    return Detections(pred[:, 2:6].astype(np.float32), pred[:, 1].astype(np.float32), pred[:, 0].astype(np.int32))


def decode(layout: Layout, output: np.ndarray, letterboxes: list[Letterbox], input_size: tuple[int, int],
           conf: float = 0.25, iou: float = 0.45, max_det: int = 300) -> list[Detections]:
    """Decode a batch output of any layout except ``paddle`` (which is one image per run)."""
    if layout == "yolov5":
        return decode_yolov5(output, letterboxes, conf, iou, max_det)
    if layout == "yolov8":
        return decode_yolov8(output, letterboxes, conf, iou, max_det)
    if layout == "end2end":
        return decode_end2end(output, letterboxes, conf, max_det)
    if layout == "rtdetr":
        return decode_rtdetr(output, letterboxes, input_size, conf, max_det=max_det)
    raise ValueError(f"unknown or single-image layout {layout!r}; batch layouts: yolov5, yolov8, end2end, rtdetr")
