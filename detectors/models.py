"""Loading the video rules' ONNX models: a user's file by path, or a registered model by name.

    from gridwatch.detectors.models import shipped
    det = shipped("objects-det")            # OnnxDetector of the shipped detector (hash-checked)
    cls = shipped("smoke-cls")              # OnnxClassifier of the shipped smoke-block classifier

A model without a ``path`` comes from the model registry (:mod:`gridwatch.models.registry`): the
shipped ``models/manifest.json`` plus a user's manifest (``video.model_manifest`` or
``$GRIDWATCH_MODEL_MANIFEST``). The file's SHA-256 is checked against the manifest before the
session is made (:class:`~gridwatch.models.registry.ModelHashError` otherwise), and its layout,
kind, input size and class names come from the manifest.

**One session per model.** Sessions are cached per process, keyed by the file and every setting
that changes the session (threads, providers, batch, thresholds), so all cameras of a runtime —
and several runtimes in one process — share one onnxruntime session per model;
``InferenceSession.run`` is thread-safe.
"""
from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from .settings import ModelConfig

_cache: dict[tuple, Any] = {}
_lock = threading.Lock()


def _key(m: ModelConfig, path: Path, sha: str | None) -> tuple:
    return (str(path), sha, m.kind, m.layout, tuple(m.input_size or ()), tuple(m.names), m.conf, m.iou, m.softmax,
            m.intra_op_threads, m.inter_op_threads, m.max_batch, tuple(m.providers))


def load(m: ModelConfig, base_dir: str | Path = ".", manifest: str | Path | None = None, verify: bool = True):
    """The shared session (:class:`OnnxDetector` or :class:`OnnxClassifier`) of one configured model."""
    from gridwatch.models import registry

    if m.registry_name is not None:
        path, info = registry.load(m.registry_name, manifest, verify=verify)  # raises on a hash mismatch
        kind = "classifier" if info.layout == "classifier" else "detector"
        m = m.model_copy(update={"kind": kind, "layout": info.layout if kind == "detector" else m.layout,
                                 "input_size": m.input_size or tuple(info.input_size),
                                 "names": m.names or list(info.classes)})
        sha = info.sha256
    else:
        path = Path(m.path)
        path = path if path.is_absolute() else Path(base_dir) / path
        sha = None
    key = _key(m, path.resolve(), sha)
    with _lock:
        model = _cache.get(key)
        if model is None:
            model = _cache[key] = _make(m, path)
            # parameters the manifest recommends per rule kind (detectors.base.create applies them)
            model.rule_params = dict(info.extra.get("rule_params") or {}) if m.registry_name is not None else {}
    return model


def _make(m: ModelConfig, path: Path):
    from .onnx_session import OnnxDetector
    from .registry import OnnxClassifier

    kw: dict[str, Any] = dict(intra_op_threads=m.intra_op_threads, inter_op_threads=m.inter_op_threads,
                              max_batch=m.max_batch, providers=m.providers or None)
    if m.kind == "classifier":
        model = OnnxClassifier(path, m.input_size, m.softmax, **kw)
    else:
        model = OnnxDetector(path, m.layout, m.input_size, conf=m.conf, iou=m.iou, **kw)
    if m.names:
        model.names = dict(enumerate(m.names))
    return model


def shipped(name: str, manifest: str | Path | None = None, **settings) -> Any:
    """The shared session of a registered model by name; ``settings`` are :class:`ModelConfig` fields
    (e.g. ``intra_op_threads=1``, ``conf=0.2``)."""
    return load(ModelConfig(name=name, **settings), manifest=manifest)


def clear_cache() -> None:
    """Forget the cached sessions (they are freed when no runtime holds them any more)."""
    with _lock:
        _cache.clear()
