"""Helpers shared by the training recipes (training venv only: imports torch)."""
from __future__ import annotations

import hashlib
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

HERE = Path(__file__).resolve().parent


def set_threads(n: int) -> None:
    import torch
    torch.set_num_threads(n)
    torch.set_num_interop_threads(1)
    os.environ.setdefault("OMP_NUM_THREADS", str(n))


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def add_metadata(path: Path, meta: dict[str, str]) -> None:
    m = onnx.load(str(path))
    del m.metadata_props[:]
    for k, v in meta.items():
        p = m.metadata_props.add()
        p.key, p.value = k, str(v)
    onnx.save(m, str(path))


class _Reader(CalibrationDataReader):
    def __init__(self, name: str, batches: list[np.ndarray]) -> None:
        self.name, self.it = name, iter(batches)

    def get_next(self):
        b = next(self.it, None)
        return None if b is None else {self.name: b}


def quantize(fp32: Path, int8: Path, calib: list[np.ndarray]) -> None:
    """Static int8, QDQ format, per-channel weights, convolutions only, calibrated on ``calib`` batches (MinMax)."""
    pre = int8.with_suffix(".pre.onnx")
    from onnxruntime.quantization.shape_inference import quant_pre_process
    quant_pre_process(str(fp32), str(pre), skip_symbolic_shape=True)
    name = ort.InferenceSession(str(pre), providers=["CPUExecutionProvider"]).get_inputs()[0].name
    # only the convolutions: a detector's decode tail concatenates pixel coordinates (0..640) with
    # scores (0..1) in one tensor, and one int8 scale for both would wipe out the scores
    quantize_static(str(pre), str(int8), _Reader(name, calib), quant_format=QuantFormat.QDQ,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, per_channel=True,
                    op_types_to_quantize=["Conv"])
    pre.unlink()
    meta = {p.key: p.value for p in onnx.load(str(fp32)).metadata_props}
    meta["precision"] = "int8-qdq"
    add_metadata(int8, meta)


def write_log(name: str, record: dict) -> Path:
    """Append the run's record (seed, steps, seconds, versions) to ``<name>/train_log.json``."""
    import torch
    out = HERE / name / "train_log.json"
    out.parent.mkdir(exist_ok=True)
    record = dict(record, torch=torch.__version__, onnxruntime=ort.__version__, python=platform.python_version(),
                  finished=time.strftime("%Y-%m-%dT%H:%M:%S"))
    out.write_text(json.dumps(record, indent=2) + "\n")
    return out
