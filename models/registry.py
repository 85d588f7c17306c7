"""The model registry: one manifest, hash-checked files.

    from gridwatch.models import registry
    path, info = registry.load("objects-det")          # Path to the .onnx, ModelInfo
    info.layout, info.classes, info.input_size          # "yolov8", ("person", ...), (256, 256)
    registry.names()                                    # every registered model name

:func:`load` refuses a file whose SHA-256 differs from the manifest's (:class:`ModelHashError`) and
names a missing model clearly (:class:`UnknownModelError`, listing the known names). Besides the
shipped ``manifest.json``, a user's own manifest (same format, files relative to it) is read when
passed as ``manifest=`` or named by the ``GRIDWATCH_MODEL_MANIFEST`` environment variable; its
entries override shipped ones of the same name. :func:`entry_for` builds such an entry for a file.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
MANIFEST = HERE / "manifest.json"
ENV_MANIFEST = "GRIDWATCH_MODEL_MANIFEST"
LAYOUTS = ("yolov5", "yolov8", "end2end", "rtdetr", "paddle", "classifier")
MAX_SHIPPED_BYTES = 10 * 1024 * 1024


class RegistryError(Exception):
    """Base of the registry's errors."""


class UnknownModelError(RegistryError, KeyError):
    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class ModelHashError(RegistryError):
    """The file on disk is not the file the manifest describes."""


@dataclass(frozen=True)
class ModelInfo:
    name: str
    file: str  # relative to the manifest's folder
    sha256: str
    input_size: tuple[int, int]  # (width, height)
    layout: str  # one of LAYOUTS; the detectors' decoder name, or "classifier"
    classes: tuple[str, ...]  # class id -> name
    version: str
    card: str | None = None  # relative path of the model card
    precision: str = "fp32"
    task: str = "detect"  # "detect" or "classify"
    extra: dict = field(default_factory=dict, compare=False)

    @classmethod
    def from_dict(cls, d: dict) -> "ModelInfo":
        known = {"name", "file", "sha256", "input_size", "layout", "classes", "version", "card", "precision", "task"}
        if d.get("layout") not in LAYOUTS:
            raise RegistryError(f"model {d.get('name')!r}: layout {d.get('layout')!r} is not one of {LAYOUTS}")
        return cls(name=d["name"], file=d["file"], sha256=d["sha256"].lower(), input_size=tuple(d["input_size"]),
                   layout=d["layout"], classes=tuple(d["classes"]), version=str(d["version"]), card=d.get("card"),
                   precision=d.get("precision", "fp32"), task=d.get("task", "detect"),
                   extra={k: v for k, v in d.items() if k not in known})

    def to_dict(self) -> dict:
        d = {"name": self.name, "file": self.file, "sha256": self.sha256, "input_size": list(self.input_size),
             "layout": self.layout, "classes": list(self.classes), "version": self.version, "card": self.card,
             "precision": self.precision, "task": self.task}
        d.update(self.extra)
        return d


def sha256_of(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _read(manifest: Path) -> dict[str, tuple[ModelInfo, Path]]:
    data = json.loads(Path(manifest).read_text())
    out = {}
    for d in data["models"]:
        info = ModelInfo.from_dict(d)
        out[info.name] = (info, Path(manifest).resolve().parent)
    return out


def _all(manifest: str | Path | None = None) -> dict[str, tuple[ModelInfo, Path]]:
    models = _read(MANIFEST) if MANIFEST.exists() else {}
    user = manifest or os.environ.get(ENV_MANIFEST)
    if user:
        models.update(_read(Path(user)))
    return models


def names(manifest: str | Path | None = None) -> list[str]:
    """Every registered model name (shipped and the user's)."""
    return sorted(_all(manifest))


def info(name: str, manifest: str | Path | None = None) -> ModelInfo:
    """The manifest entry of ``name`` (no file access)."""
    models = _all(manifest)
    if name not in models:
        raise UnknownModelError(f"no model named {name!r} in the registry; known: {', '.join(sorted(models)) or 'none'}")
    return models[name][0]


def load(name: str, manifest: str | Path | None = None, verify: bool = True) -> tuple[Path, ModelInfo]:
    """(path of the model file, its :class:`ModelInfo`), after checking the file's SHA-256."""
    models = _all(manifest)
    if name not in models:
        raise UnknownModelError(f"no model named {name!r} in the registry; known: {', '.join(sorted(models)) or 'none'}")
    mi, root = models[name]
    path = (root / mi.file).resolve()
    if not path.is_file():
        raise RegistryError(f"model {name!r}: file {mi.file} is missing (expected next to its manifest)")
    if verify:
        got = sha256_of(path)
        if got != mi.sha256:
            raise ModelHashError(f"model {name!r}: {mi.file} has sha256 {got}, the manifest says {mi.sha256}; "
                                 "the file was changed or corrupted — refusing to load it (re-export it and update "
                                 "the manifest entry if the change is intended)")
    return path, mi


def entry_for(name: str, file: str | Path, layout: str, input_size: tuple[int, int] | None = None,
              classes: list[str] | None = None, version: str = "1", card: str | None = None,
              relative_to: str | Path | None = None, **extra) -> dict:
    """A manifest entry for an ONNX file: hash computed, classes and input size read from the model
    (ultralytics ``names`` metadata, fixed NCHW input) unless given."""
    import onnxruntime as ort

    from gridwatch.detectors.onnx_session import parse_names

    file = Path(file)
    if classes is None or input_size is None:
        sess = ort.InferenceSession(str(file), providers=["CPUExecutionProvider"])
        if classes is None:
            nm = parse_names(dict(sess.get_modelmeta().custom_metadata_map))
            classes = [nm[i] for i in sorted(nm)]
        if input_size is None:
            shape = sess.get_inputs()[0].shape
            if not (isinstance(shape[2], int) and isinstance(shape[3], int)):
                raise RegistryError(f"{file}: dynamic spatial input; pass input_size=(width, height)")
            input_size = (shape[3], shape[2])
    rel = os.path.relpath(file, relative_to) if relative_to else file.name
    d = {"name": name, "file": rel, "sha256": sha256_of(file), "input_size": list(input_size), "layout": layout,
         "classes": list(classes), "version": version, "card": card, "task": "classify" if layout == "classifier" else "detect"}
    d.update(extra)
    ModelInfo.from_dict(d)
    return d


def main(argv: list[str] | None = None) -> int:
    """``python -m gridwatch.models.registry add NAME FILE LAYOUT [--manifest M]`` / ``list`` / ``verify``."""
    import argparse
    ap = argparse.ArgumentParser(prog="python -m gridwatch.models.registry")
    sub = ap.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("add", help="add or replace an entry in a (user) manifest")
    a.add_argument("name")
    a.add_argument("file", type=Path)
    a.add_argument("layout", choices=LAYOUTS)
    a.add_argument("--manifest", type=Path, required=True)
    a.add_argument("--input-size", type=int, nargs=2, metavar=("W", "H"))
    a.add_argument("--classes", help="comma-separated class names (default: the model's names metadata)")
    a.add_argument("--version", default="1")
    a.add_argument("--card")
    sub.add_parser("list")
    v = sub.add_parser("verify")
    v.add_argument("--manifest", type=Path)
    args = ap.parse_args(argv)
    if args.cmd == "add":
        m = args.manifest
        data = json.loads(m.read_text()) if m.exists() else {"models": []}
        e = entry_for(args.name, args.file, args.layout, tuple(args.input_size) if args.input_size else None,
                      args.classes.split(",") if args.classes else None, args.version, args.card,
                      relative_to=m.resolve().parent)
        data["models"] = [d for d in data["models"] if d["name"] != args.name] + [e]
        m.write_text(json.dumps(data, indent=2) + "\n")
        print(json.dumps(e, indent=2))
    elif args.cmd == "list":
        for n in names():
            i = info(n)
            print(f"{n:24s} {i.layout:10s} {i.input_size[0]}x{i.input_size[1]}  {i.precision:9s} {', '.join(i.classes)}")
    else:
        bad = 0
        for n in names(args.manifest):
            try:
                load(n, args.manifest)
                print(f"ok   {n}")
            except RegistryError as e:
                bad += 1
                print(f"FAIL {e}")
        return 1 if bad else 0
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
