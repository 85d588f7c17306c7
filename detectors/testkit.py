"""Stand-in ONNX models and the scenes they understand, for tests and benchmarks. NOT real detectors.

Until the model-zoo issue ships trained models (with their cards), the ONNX path is exercised with
models built here with ``onnx.helper``:

* :func:`colour_blob_yolov8` — a *colour-blob* "detector" with the YOLOv8 output layout
  ``[B, 4+C, C]``: for each class it finds the pixels within that class's RGB range and emits
  their bounding box, scored by how many there are. Deterministic, derived only from the frame. It
  stands in for a detector that tells an e-bike (green in :func:`vehicle_scene`) from an ordinary
  bicycle (blue) and sees people (red); it has learnt nothing.
* :func:`conv_yolov8` — random-weight convolutions ending in a YOLOv8-layout head, with roughly
  the compute of a small real detector; only for timing (its detections are meaningless).
* :func:`vehicle_scene` — a bike-shaped blob that rides into an elevator zone and stays.

``onnx`` is a test/benchmark dependency; it is imported only when a model is built.
"""
from __future__ import annotations

from collections.abc import Iterator

import cv2
import numpy as np

from .testscenes import background

# class name -> (RGB lower bound, RGB upper bound) in 0..1, and the BGR colour scenes draw it in
BLOB_CLASSES: dict[str, tuple[tuple[float, float, float], tuple[float, float, float], tuple[int, int, int]]] = {
    "person": ((0.6, 0.0, 0.0), (1.0, 0.3, 0.3), (40, 40, 210)),
    "bicycle": ((0.0, 0.0, 0.6), (0.3, 0.3, 1.0), (210, 40, 40)),
    "e-bike": ((0.0, 0.6, 0.0), (0.3, 1.0, 0.3), (40, 210, 40)),
}
ELEVATOR = [(0.6, 0.25), (0.95, 0.25), (0.95, 0.95), (0.6, 0.95)]  # zone polygon used by vehicle_scene


def colour_blob_yolov8(size: int = 160, min_pixels: float = 150.0, classes=BLOB_CLASSES, opset: int = 17) -> bytes:
    """Serialized ONNX model: images float32[B, 3, size, size] (RGB 0..1) -> output0 float32[B, 4+C, C]."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    names = list(classes)
    c = len(names)
    nodes, inits = [], []

    def const(name: str, arr: np.ndarray) -> str:
        inits.append(numpy_helper.from_array(np.asarray(arr, np.float32), name))
        return name

    def node(op: str, ins: list[str], out: str, **attrs) -> str:
        nodes.append(helper.make_node(op, ins, [out], **attrs))
        return out

    xs = const("xs", (np.arange(size, dtype=np.float32) + 0.5).reshape(1, 1, size))
    ys = const("ys", (np.arange(size, dtype=np.float32) + 0.5).reshape(1, size, 1))
    big = const("big", np.array(1e6, np.float32))
    one = const("one", np.array(1.0, np.float32))
    half = const("half", np.array(0.5, np.float32))
    two = const("two", np.array(2.0, np.float32))
    minpx = const("minpx", np.array(min_pixels, np.float32))
    inits.append(numpy_helper.from_array(np.array([1, 2], np.int64), "axes12"))
    inits.append(numpy_helper.from_array(np.array([1], np.int64), "ax1"))
    inits.append(numpy_helper.from_array(np.array([2], np.int64), "ax2"))
    rows = []
    for j, n in enumerate(names):
        lo, hi, _ = classes[n]
        lo_c = const(f"lo{j}", np.array(lo, np.float32).reshape(1, 3, 1, 1))
        hi_c = const(f"hi{j}", np.array(hi, np.float32).reshape(1, 3, 1, 1))
        ge = node("GreaterOrEqual", ["images", lo_c], f"ge{j}")
        le = node("LessOrEqual", ["images", hi_c], f"le{j}")
        inr = node("Cast", [node("And", [ge, le], f"and{j}")], f"inr{j}", to=TensorProto.FLOAT)
        m = node("ReduceMin", [inr], f"m{j}", axes=[1], keepdims=0)  # [B, H, W]: 1 where all 3 channels fit
        notm = node("Sub", [one, m], f"notm{j}")
        pen = node("Mul", [notm, big], f"pen{j}")
        x1 = node("ReduceMin", [node("Add", [xs, pen], f"xp{j}")], f"x1{j}", axes=[1, 2], keepdims=0)
        y1 = node("ReduceMin", [node("Add", [ys, pen], f"yp{j}")], f"y1{j}", axes=[1, 2], keepdims=0)
        x2 = node("ReduceMax", [node("Mul", [xs, m], f"xm{j}")], f"x2{j}", axes=[1, 2], keepdims=0)
        y2 = node("ReduceMax", [node("Mul", [ys, m], f"ym{j}")], f"y2{j}", axes=[1, 2], keepdims=0)
        x1 = node("Sub", [x1, half], f"x1h{j}"); y1 = node("Sub", [y1, half], f"y1h{j}")
        x2 = node("Add", [x2, half], f"x2h{j}"); y2 = node("Add", [y2, half], f"y2h{j}")
        cnt = node("ReduceSum", [m, "axes12"], f"cnt{j}", keepdims=0)
        score = node("Clip", [node("Div", [cnt, minpx], f"sr{j}"), "zero_", one], f"sc{j}")
        cx = node("Div", [node("Add", [x1, x2], f"sx{j}"), two], f"cx{j}")
        cy = node("Div", [node("Add", [y1, y2], f"sy{j}"), two], f"cy{j}")
        w = node("Sub", [x2, x1], f"w{j}")
        h = node("Sub", [y2, y1], f"h{j}")
        onehot = const(f"oh{j}", np.eye(c, dtype=np.float32)[j].reshape(1, c))
        scores = node("Mul", [node("Unsqueeze", [score, "ax1"], f"su{j}"), onehot], f"scs{j}")  # [B, C]
        cols = [node("Unsqueeze", [v, "ax1"], f"u{v}") for v in (cx, cy, w, h)]
        row = node("Concat", [*cols, scores], f"row{j}", axis=1)  # [B, 4+C]
        rows.append(node("Unsqueeze", [row, "ax2"], f"rowu{j}"))
    const("zero_", np.array(0.0, np.float32))
    node("Concat", rows, "output0", axis=2)
    graph = helper.make_graph(
        nodes, "colour_blob_yolov8",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["batch", 3, size, size])],
        [helper.make_tensor_value_info("output0", TensorProto.FLOAT, ["batch", 4 + c, c])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="gridwatch-testkit")
    model.ir_version = 8
    helper.set_model_props(model, {"names": repr(dict(enumerate(names))),
                                   "description": "colour-blob stand-in for tests; not a trained detector"})
    onnx.checker.check_model(model)
    return model.SerializeToString()


def conv_yolov8(size: int = 320, classes: int = 80, width: int = 32, seed: int = 0, opset: int = 17) -> bytes:
    """A random-weight CNN with a YOLOv8-layout head ``[B, 4+classes, (size/16)^2]``, for timing only.

    Four stride-2 3×3 convolutions (ReLU) then a 1×1 head; about 1.2 GFLOP per 320×320 image at
    ``width=32`` — in the range of the small detectors edge boxes run. Scores are pushed low so
    decoding sees few boxes.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    nodes, inits = [], []
    prev, cin = "images", 3
    for i, cout in enumerate([width, width * 2, width * 4, width * 8]):
        wname, bname = f"w{i}", f"b{i}"
        inits.append(numpy_helper.from_array((rng.standard_normal((cout, cin, 3, 3)) * np.sqrt(2 / (cin * 9))).astype(np.float32), wname))
        inits.append(numpy_helper.from_array(np.zeros(cout, np.float32), bname))
        nodes.append(helper.make_node("Conv", [prev, wname, bname], [f"c{i}"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]))
        nodes.append(helper.make_node("Relu", [f"c{i}"], [f"r{i}"]))
        # a second, stride-1 conv per stage for realistic compute
        inits.append(numpy_helper.from_array((rng.standard_normal((cout, cout, 3, 3)) * np.sqrt(2 / (cout * 9))).astype(np.float32), f"v{i}"))
        nodes.append(helper.make_node("Conv", [f"r{i}", f"v{i}"], [f"d{i}"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]))
        nodes.append(helper.make_node("Relu", [f"d{i}"], [f"s{i}"]))
        prev, cin = f"s{i}", cout
    k = 4 + classes
    inits.append(numpy_helper.from_array((rng.standard_normal((k, cin, 1, 1)) * 0.01).astype(np.float32), "hw"))
    hb = np.zeros(k, np.float32)
    hb[:4] = size / 4
    hb[4:] = -12.0
    inits.append(numpy_helper.from_array(hb, "hb"))
    nodes.append(helper.make_node("Conv", [prev, "hw", "hb"], ["head"], kernel_shape=[1, 1]))
    inits.append(numpy_helper.from_array(np.array([0, k, -1], np.int64), "shape"))
    nodes.append(helper.make_node("Reshape", ["head", "shape"], ["flat"]))
    inits.append(numpy_helper.from_array(np.array([4], np.int64), "sl_4"))
    inits.append(numpy_helper.from_array(np.array([k], np.int64), "sl_k"))
    inits.append(numpy_helper.from_array(np.array([0], np.int64), "sl_0"))
    inits.append(numpy_helper.from_array(np.array([1], np.int64), "sl_ax"))
    nodes.append(helper.make_node("Slice", ["flat", "sl_0", "sl_4", "sl_ax"], ["boxes"]))
    nodes.append(helper.make_node("Slice", ["flat", "sl_4", "sl_k", "sl_ax"], ["logits"]))
    nodes.append(helper.make_node("Sigmoid", ["logits"], ["probs"]))
    nodes.append(helper.make_node("Concat", ["boxes", "probs"], ["output0"], axis=1))
    graph = helper.make_graph(nodes, "conv_yolov8",
                              [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["batch", 3, size, size])],
                              [helper.make_tensor_value_info("output0", TensorProto.FLOAT, ["batch", k, None])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="gridwatch-testkit")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def vehicle_scene(n: int, kind: str = "e-bike", width: int = 320, height: int = 240, seed: int = 0,
                  noise: float = 2.0, ride_frames: int = 30) -> Iterator[np.ndarray]:
    """A bike-shaped blob in ``kind``'s colour rides in from the left over ``ride_frames`` frames and
    parks inside the :data:`ELEVATOR` zone (right side), where it stays."""
    bg = background(width, height, seed)
    rng = np.random.default_rng(seed + 5)
    colour = BLOB_CLASSES[kind][2]
    bw, bh = int(0.17 * width), int(0.14 * height)
    y = int(0.72 * height)
    x_end = int(0.78 * width) - bw // 2
    for i in range(n):
        x = int(5 + (x_end - 5) * min(1.0, i / ride_frames))
        frame = bg.copy()
        cv2.rectangle(frame, (x, y - bh), (x + bw, y), colour, -1)  # frame and battery
        for cx in (x + bh // 3, x + bw - bh // 3):  # wheels
            cv2.circle(frame, (cx, y + 2), bh // 3, (25, 25, 25), 3)
        frame = np.clip(frame.astype(np.int16) + rng.normal(0, noise, frame.shape).astype(np.int16), 0, 255)
        yield frame.astype(np.uint8)
