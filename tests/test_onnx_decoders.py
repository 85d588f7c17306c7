"""Detector pre/post-processing against hand-built tensors, and a tiny ONNX model end to end."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from hypothesis import given, settings, strategies as st
from onnx import TensorProto, helper, numpy_helper

from gridwatch.detectors.onnx_decoders import (
    Letterbox, decode_end2end, decode_paddle, decode_rtdetr, decode_yolov5, decode_yolov8, letterbox, nms, to_blob,
)
from gridwatch.detectors.onnx_session import OnnxDetector, OnnxSession, parse_names, select_providers

IDENTITY = Letterbox(1.0, 1.0, 0.0, 0.0, 640, 640)


# --- letterbox -----------------------------------------------------------------------------------
def test_letterbox_pads_evenly_and_maps_boxes_back():
    img = np.full((360, 1280, 3), 7, np.uint8)
    out, lb = letterbox(img, (640, 640))
    assert out.shape == (640, 640, 3) and lb.scale_x == lb.scale_y == 0.5
    assert lb.pad_x == 0 and lb.pad_y == 230
    assert (out[:230] == 114).all() and (out[230:410] == 7).all() and (out[410:] == 114).all()
    back = lb.unmap(np.array([[100, 230, 200, 410], [-5, 0, 700, 640]], np.float32))
    np.testing.assert_allclose(back, [[200, 0, 400, 360], [0, 0, 1280, 360]])


def test_stretch_scales_each_axis():
    out, lb = letterbox(np.zeros((360, 1280, 3), np.uint8), (640, 640), stretch=True)
    assert out.shape == (640, 640, 3) and (lb.scale_x, lb.scale_y, lb.pad_x, lb.pad_y) == (0.5, 640 / 360, 0, 0)


def test_blob_is_rgb_nchw_unit_range():
    img = np.zeros((2, 3, 3), np.uint8)
    img[..., 0] = 255  # blue in BGR
    blob = to_blob([img, img])
    assert blob.shape == (2, 3, 2, 3) and blob.dtype == np.float32
    assert blob[:, 2].max() == 1.0 and blob[:, 0].max() == 0.0


# --- NMS -----------------------------------------------------------------------------------------
def ref_nms(boxes, scores, cls, thr):
    order = sorted(range(len(scores)), key=lambda i: -scores[i])
    keep = []
    for i in order:
        ok = True
        for j in keep:
            if cls[i] != cls[j]:
                continue
            ix = max(0, min(boxes[i][2], boxes[j][2]) - max(boxes[i][0], boxes[j][0]))
            iy = max(0, min(boxes[i][3], boxes[j][3]) - max(boxes[i][1], boxes[j][1]))
            inter = ix * iy
            a = (boxes[i][2] - boxes[i][0]) * (boxes[i][3] - boxes[i][1])
            b = (boxes[j][2] - boxes[j][0]) * (boxes[j][3] - boxes[j][1])
            if inter / max(a + b - inter, 1e-9) > thr:
                ok = False
                break
        if ok:
            keep.append(i)
    return keep


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 40).flatmap(lambda n: st.tuples(
    st.lists(st.tuples(st.integers(0, 60), st.integers(0, 60), st.integers(1, 30), st.integers(1, 30)),
             min_size=n, max_size=n),
    st.lists(st.floats(0.01, 1), min_size=n, max_size=n, unique=True),
    st.lists(st.integers(0, 2), min_size=n, max_size=n))), st.floats(0.1, 0.9))
def test_nms_matches_greedy_reference(data, thr):
    raw, scores, cls = data
    boxes = np.array([(x, y, x + w, y + h) for x, y, w, h in raw], np.float32).reshape(-1, 4)
    s = np.array(scores, np.float32)
    c = np.array(cls, np.int32)
    got = nms(boxes, s, c, thr).tolist()
    assert got == ref_nms(boxes.tolist(), s.tolist(), c.tolist(), thr)


# --- decoders ------------------------------------------------------------------------------------
def test_yolov8_layout():
    # 3 candidates, 2 classes: two overlapping "class 1" boxes and one weak "class 0"
    cand = np.array([
        # cx, cy, w, h, s0, s1
        [100, 100, 40, 40, 0.05, 0.90],
        [102, 101, 40, 40, 0.10, 0.80],  # suppressed by the first
        [300, 200, 20, 60, 0.60, 0.10],
    ], np.float32)
    out = cand.T[None]  # [1, 4+C, N]
    (d,) = decode_yolov8(out, [IDENTITY], conf=0.25, iou=0.5)
    np.testing.assert_allclose(d.boxes, [[80, 80, 120, 120], [290, 170, 310, 230]])
    np.testing.assert_allclose(d.scores, [0.9, 0.6])
    assert d.class_ids.tolist() == [1, 0]


def test_yolov5_layout_multiplies_objectness_and_unmaps():
    rows = np.array([
        [320, 320, 64, 64, 0.9, 0.1, 0.9],  # score 0.81, class 1
        [320, 320, 64, 64, 0.2, 1.0, 0.0],  # objectness below conf
        [100, 330, 20, 20, 0.5, 0.6, 0.2],  # score 0.30, class 0
    ], np.float32)[None]
    lb = Letterbox(0.5, 0.5, 0.0, 140.0, 1280, 720)
    (d,) = decode_yolov5(rows, [lb], conf=0.25)
    np.testing.assert_allclose(d.scores, [0.81, 0.30], rtol=1e-6)
    assert d.class_ids.tolist() == [1, 0]
    np.testing.assert_allclose(d.boxes[0], [576, 296, 704, 424])


def test_end2end_layout_needs_no_nms():
    out = np.array([[[10, 20, 50, 60, 0.9, 3], [12, 22, 50, 60, 0.8, 3], [0, 0, 1, 1, 0.1, 0]]], np.float32)
    (d,) = decode_end2end(out, [IDENTITY])
    assert len(d) == 2 and d.class_ids.tolist() == [3, 3]


def test_rtdetr_layout_normalised_boxes_probabilities_and_logits():
    q = np.zeros((1, 300, 4 + 3), np.float32)
    q[0, :, 4:] = 0.01
    q[0, 7] = [0.5, 0.25, 0.1, 0.2, 0.05, 0.92, 0.01]
    lb = Letterbox(640 / 1280, 640 / 720, 0, 0, 1280, 720)  # stretched
    (d,) = decode_rtdetr(q, [lb], input_size=(640, 640))
    assert len(d) == 1 and d.class_ids.tolist() == [1]
    np.testing.assert_allclose(d.boxes[0], [0.45 * 1280, 0.15 * 720, 0.55 * 1280, 0.35 * 720], rtol=1e-5)
    logits = q.copy()
    logits[0, :, 4:] = -6.0
    logits[0, 7, 5] = 2.5  # sigmoid ≈ 0.924
    (d2,) = decode_rtdetr(logits, [lb], input_size=(640, 640), scores="logits")
    assert len(d2) == 1 and abs(float(d2.scores[0]) - 0.924) < 1e-3


def test_paddle_layout():
    out = np.array([[2, 0.8, 10, 10, 50, 50], [-1, 0.0, 0, 0, 0, 0], [0, 0.9, 1, 2, 3, 4]], np.float32)
    d = decode_paddle(out)
    assert d.class_ids.tolist() == [0, 2] and d.boxes[1].tolist() == [10, 10, 50, 50]


def test_wrong_layout_is_a_clear_error():
    with pytest.raises(ValueError, match="not the YOLOv5"):
        decode_yolov5(np.zeros((1, 84, 8400), np.float32)[:, :, :5], [IDENTITY])


# --- a tiny model end to end ---------------------------------------------------------------------
def yolov8_like_model(names: str | None, dynamic: bool = True) -> bytes:
    """[B,3,64,64] → [B, 4+2, 3]: fixed boxes; class-1 score = 0.1 + 0.8 * mean(image)."""
    boxes = np.array([[16, 16, 8, 8], [48, 40, 10, 12], [30, 30, 4, 4]], np.float32).T  # [4, 3]
    base = np.concatenate([boxes, np.full((2, 3), 0.1, np.float32)])[None]  # [1, 6, 3]
    gain = np.zeros((1, 6, 3), np.float32)
    gain[0, 5, :2] = 0.8  # only class 1 of the first two candidates reacts to the image
    nodes = [
        helper.make_node("ReduceMean", ["images"], ["mean"], axes=[1, 2, 3], keepdims=1),  # [B,1,1,1]
        helper.make_node("Reshape", ["mean", "shape_b11"], ["mean3"]),  # [B,1,1]
        helper.make_node("Mul", ["mean3", "gain"], ["delta"]),  # [B,6,3]
        helper.make_node("Add", ["delta", "base"], ["output0"]),
    ]
    batch = "batch" if dynamic else 1
    graph = helper.make_graph(
        nodes, "tiny_yolov8",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, [batch, 3, 64, 64])],
        [helper.make_tensor_value_info("output0", TensorProto.FLOAT, [batch, 6, 3])],
        initializer=[numpy_helper.from_array(base, "base"), numpy_helper.from_array(gain, "gain"),
                     numpy_helper.from_array(np.array([-1, 1, 1], np.int64), "shape_b11")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    if names is not None:
        helper.set_model_props(model, {"names": names})
    onnx.checker.check_model(model)
    return model.SerializeToString()


def test_provider_fallback_order():
    assert select_providers(["CPUExecutionProvider", "CUDAExecutionProvider"]) == [
        "CUDAExecutionProvider", "CPUExecutionProvider"]
    assert select_providers(["CPUExecutionProvider"], wanted=["TensorrtExecutionProvider", "CPUExecutionProvider"]) \
        == ["CPUExecutionProvider"]
    with pytest.raises(ValueError, match="offers"):
        select_providers(["CPUExecutionProvider"], wanted=["CUDAExecutionProvider"])


def test_names_metadata():
    assert parse_names({"names": "{0: 'person', 1: 'bicycle'}"}) == {0: "person", 1: "bicycle"}
    assert parse_names({"names": "['a', 'b']"}) == {0: "a", 1: "b"}
    assert parse_names({"names": "not python"}) == {} and parse_names({}) == {}


def test_tiny_model_end_to_end_with_dynamic_batch():
    det = OnnxDetector(yolov8_like_model("{0: 'smoke', 1: 'e-bike'}"), layout="yolov8", conf=0.5,
                       intra_op_threads=1, max_batch=2)
    assert det.dynamic_batch and det.size == (64, 64) and det.providers[-1] == "CPUExecutionProvider"
    white = np.full((128, 256, 3), 255, np.uint8)  # letterboxed: scale 0.25, pad_y 16
    black = np.zeros((64, 64, 3), np.uint8)
    results = det.detect([white, black, white])  # 3 images, batches of 2 + 1
    assert [len(r) for r in results] == [2, 0, 2]
    d = results[0]
    assert d.class_ids.tolist() == [1, 1] and det.class_name(1) == "e-bike"
    # padded area is grey (114/255), so the mean is a bit below 1: score = 0.1 + 0.8 * mean
    blob = to_blob([letterbox(white, (64, 64))[0]])
    np.testing.assert_allclose(d.scores, 0.1 + 0.8 * blob.mean(), rtol=1e-5)
    # candidate 0: cx,cy,w,h = 16,16,8,8 in the 64x64 input → (12..20, 12..20) → unpad/unscale
    np.testing.assert_allclose(d.boxes[0], [48, 0, 80, 16])


def test_fixed_batch_model_runs_image_by_image():
    sess = OnnxSession(yolov8_like_model(None, dynamic=False))
    assert not sess.dynamic_batch and sess.max_batch == 1 and sess.names == {}
    (out,) = sess.run(np.zeros((3, 3, 64, 64), np.float32))
    assert out.shape == (3, 6, 3)
    assert sess.class_name(4) == "class4"
