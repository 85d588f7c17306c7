"""Evaluate gridwatch's shipped models (numpy + onnxruntime + OpenCV only; the runtime install).

    python -m gridwatch.models.evaluate                       # full held-out sets, as on the cards
    python -m gridwatch.models.evaluate --ci                  # the small CI subset (seconds)
    python -m gridwatch.models.evaluate --video vtest.avi     # + false alarms on real footage
    python -m gridwatch.models.evaluate --speed --json out.json
    python -m gridwatch.models.evaluate --smoke-rule 30      # the smoke rule on held-out plume videos

Held-out data are generated scenes with seeds ``HELDOUT_SEED_BASE + i`` (never trained on; every
scene's background is generated from its own seed, so backgrounds are unseen too).

* detector: precision / recall / F1 per class at score ≥ ``conf`` (IoU ≥ 0.5, one match per ground
  truth, after the shared YOLOv8 decoder's NMS), and AP50 per class (all-point interpolation) and mAP50;
* smoke classifier: precision / recall / F1 per class at argmax, and accuracy;
* real footage with none of the events: alarms per hour — detections (detector) or flagged tiles
  (classifier) per hour of video — with person detections reported separately;
* speed: best-of-30 milliseconds per image on this CPU, 1 intra-op thread, batch 1 and 8.
"""
from __future__ import annotations

import argparse
import functools
import json
import time
from pathlib import Path

import cv2
import numpy as np
import onnxruntime as ort

from gridwatch.detectors.onnx_decoders import decode, letterbox, to_blob
from gridwatch.models import registry, scenes

FULL = {"detector": 500, "classifier": 2000}
CI = {"detector": 48, "classifier": 240}
CONF = 0.25
# Debian's opencv-doc package installs the sample video here; --video overrides it
DEBIAN_VTEST = Path("/usr/share/doc/opencv-doc/examples/data/vtest.avi")


def session(path: Path, threads: int = 1) -> ort.InferenceSession:
    o = ort.SessionOptions()
    o.intra_op_num_threads, o.inter_op_num_threads = threads, 1
    return ort.InferenceSession(str(path), o, providers=["CPUExecutionProvider"])


def _run(sess, blob: np.ndarray) -> np.ndarray:
    return sess.run(None, {sess.get_inputs()[0].name: blob})[0]


def detect(sess, info: registry.ModelInfo, frames: list[np.ndarray], conf: float, batch: int = 8):
    out = []
    for i in range(0, len(frames), batch):
        placed = [letterbox(f, info.input_size) for f in frames[i:i + batch]]
        raw = _run(sess, to_blob([p[0] for p in placed]))
        out += decode(info.layout, raw, [p[1] for p in placed], info.input_size, conf=conf, iou=0.45)
    return out


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(2)
    aa = (a[:, 2:] - a[:, :2]).prod(1)
    ab = (b[:, 2:] - b[:, :2]).prod(1)
    return inter / np.maximum(aa[:, None] + ab[None] - inter, 1e-9)


def _ap(tp: np.ndarray, scores: np.ndarray, n_gt: int) -> float:
    if n_gt == 0:
        return float("nan")
    if len(scores) == 0:
        return 0.0
    order = np.argsort(-scores, kind="stable")
    tp = tp[order]
    ctp, cfp = np.cumsum(tp), np.cumsum(1 - tp)
    rec = ctp / n_gt
    prec = ctp / np.maximum(ctp + cfp, 1e-9)
    mrec = np.concatenate([[0], rec, [1]])
    mpre = np.concatenate([[1], prec, [0]])
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]
    idx = np.nonzero(mrec[1:] != mrec[:-1])[0]
    return float(((mrec[idx + 1] - mrec[idx]) * mpre[idx + 1]).sum())


def _prf(tp: int, fp: int, fn: int) -> dict:
    p = tp / (tp + fp) if tp + fp else 0.0
    r = tp / (tp + fn) if tp + fn else 0.0
    return {"precision": round(p, 4), "recall": round(r, 4), "f1": round(2 * p * r / (p + r) if p + r else 0.0, 4),
            "support": tp + fn}


@functools.lru_cache(maxsize=4)
def _det_samples(n: int) -> list:
    return [scenes.detector_sample(scenes.HELDOUT_SEED_BASE + i) for i in range(n)]


@functools.lru_cache(maxsize=4)
def _smoke_samples(n: int, size: int) -> tuple:
    return tuple(zip(*(scenes.smoke_sample(scenes.HELDOUT_SEED_BASE + i, size) for i in range(n))))


def eval_detector(path: Path, info: registry.ModelInfo, n: int, conf: float = CONF) -> dict:
    sess = session(path)
    samples = _det_samples(n)
    dets = detect(sess, info, [s[0] for s in samples], conf=0.01)
    C = len(info.classes)
    rec = {c: ([], [], 0) for c in range(C)}  # tp flags, scores, n_gt
    counts = np.zeros((C, 3), np.int64)  # tp, fp, fn at conf
    for (frame, gt_boxes, gt_cls), d in zip(samples, dets):
        for c in range(C):
            g = gt_boxes[gt_cls == c]
            m = d.class_ids == c
            b, s = d.boxes[m], d.scores[m]
            order = np.argsort(-s, kind="stable")
            b, s = b[order], s[order]
            used = np.zeros(len(g), bool)
            tp = np.zeros(len(s))
            if len(g) and len(b):
                ious = _iou(b, g)
                for k in range(len(b)):
                    j = int(np.argmax(np.where(used, -1, ious[k])))
                    if not used[j] and ious[k, j] >= 0.5:
                        used[j], tp[k] = True, 1
            flags, scores_, ngt = rec[c]
            rec[c] = (flags + list(tp), scores_ + list(s), ngt + len(g))
            keep = s >= conf
            tpc = int(tp[keep].sum())
            counts[c] += (tpc, int(keep.sum()) - tpc, len(g) - tpc)
    per_class = {}
    for c in range(C):
        flags, sc, ngt = rec[c]
        row = _prf(*(int(v) for v in counts[c]))
        ap = _ap(np.asarray(flags, np.float64), np.asarray(sc, np.float64), ngt)
        row["ap50"] = None if np.isnan(ap) else round(ap, 4)
        per_class[info.classes[c]] = row
    aps = [r["ap50"] for r in per_class.values() if r["ap50"] is not None]
    return {"images": n, "conf": conf, "per_class": per_class, "map50": round(float(np.mean(aps)), 4)}


def eval_classifier(path: Path, info: registry.ModelInfo, n: int) -> dict:
    sess = session(path)
    crops, labels = _smoke_samples(n, info.input_size[0])
    probs = np.concatenate([_run(sess, to_blob(list(crops[i:i + 64]))) for i in range(0, n, 64)])
    pred, y = probs.argmax(1), np.asarray(labels)
    per_class = {}
    for c, name in enumerate(info.classes):
        tp = int(((pred == c) & (y == c)).sum())
        per_class[name] = _prf(tp, int(((pred == c) & (y != c)).sum()), int(((pred != c) & (y == c)).sum()))
    return {"crops": n, "per_class": per_class, "accuracy": round(float((pred == y).mean()), 4)}


@functools.lru_cache(maxsize=1)
def _frames(video: Path):
    cap = cv2.VideoCapture(str(video))
    fps = cap.get(cv2.CAP_PROP_FPS) or 25.0
    frames = []
    while True:
        ok, f = cap.read()
        if not ok:
            break
        frames.append(f)
    return frames, float(fps)


def real_footage(path: Path, info: registry.ModelInfo, video: Path, conf: float = CONF) -> dict:
    """Alarms per hour on footage that holds none of the events (people walking)."""
    frames, fps = _frames(video)
    hours = len(frames) / fps / 3600
    sess = session(path)
    out = {"video": video.name, "frames": len(frames), "fps": fps, "seconds": round(len(frames) / fps, 1)}
    if info.task == "detect":
        dets = detect(sess, info, frames, conf=conf)
        per = {}
        for c, name in enumerate(info.classes):
            n_det = sum(int((d.class_ids == c).sum()) for d in dets)
            n_frames = sum(int((d.class_ids == c).any()) for d in dets)
            per[name] = {"detections": n_det, "frames_with": n_frames, "detections_per_hour": round(n_det / hours, 1),
                         "frames_with_per_hour": round(n_frames / hours, 1)}
        person = per.get("person")
        non_person = {k: v for k, v in per.items() if k != "person"}
        out.update(conf=conf, per_class=non_person, person=person,
                   false_alarm_detections_per_hour=round(sum(v["detections"] for v in non_person.values()) / hours, 1),
                   false_alarm_frames_per_hour=round(sum(any((d.class_ids == info.classes.index(k)).any()
                                                             for k in non_person) for d in dets) / hours, 1))
    else:  # classifier: every frame cut into a 4 x 3 grid of tiles, each classified
        smoke = info.classes.index("smoke")
        flagged, tiles, frames_flagged = 0, 0, 0
        for f in frames:
            h, w = f.shape[:2]
            crops = [cv2.resize(f[r * h // 3:(r + 1) * h // 3, c * w // 4:(c + 1) * w // 4], info.input_size,
                                interpolation=cv2.INTER_AREA) for r in range(3) for c in range(4)]
            p = _run(sess, to_blob(crops))[:, smoke]
            k = int((p >= 0.5).sum())
            flagged, tiles, frames_flagged = flagged + k, tiles + len(crops), frames_flagged + (k > 0)
        out.update(tiles=tiles, tiles_flagged=flagged, tile_false_positive_rate=round(flagged / tiles, 4),
                   false_alarm_tiles_per_hour=round(flagged / hours, 1),
                   false_alarm_frames_per_hour=round(frames_flagged / hours, 1))
    return out


def plume_visible(seed: int, width: int = 320, height: int = 240, min_tiles: int = 12, min_diff: float = 8.0) -> bool:
    """Whether ``scenes.smoke_video``'s full-grown plume changes the picture enough to be seen: at
    least ``min_tiles`` 16-px tiles whose mean luma moves by ``min_diff`` (noise-free frames).
    Some generated plumes are nearly the background's brightness or tiny; no camera sees those."""
    bg = cv2.cvtColor(next(scenes.empty_video(1, width, height, seed, noise=0)), cv2.COLOR_BGR2GRAY).astype(np.float32)
    *_, (last, _) = scenes.smoke_video(150, width, height, seed, noise=0)
    d = np.abs(cv2.cvtColor(last, cv2.COLOR_BGR2GRAY).astype(np.float32) - bg)
    return int((cv2.resize(d, (width // 16, height // 16), interpolation=cv2.INTER_AREA) >= min_diff).sum()) >= min_tiles


def smoke_rule(n: int, seed_base: int = scenes.HELDOUT_SEED_BASE, params: dict | None = None) -> dict:
    """The smoke *rule* (candidate stage + temporal rules, alone and with the shipped ``smoke-cls``
    veto) on ``n`` generated plume videos (``scenes.smoke_video``: 150 frames, 15 fps, analysed at
    5 fps like the runtime, 320×240) and on ``n`` each of the scenes that must not raise (a person
    carrying a waste pile in, a person standing still, a pile appearing, an e-bike parked, a still
    background), seeds ``seed_base`` + i."""
    from gridwatch.detectors.base import FrameInput
    from gridwatch.detectors.models import shipped
    from gridwatch.detectors.motion import MotionDetector
    from gridwatch.detectors.registry import create

    cls = shipped("smoke-cls", intra_op_threads=1)
    p = {"duration_s": 3.0, **(params or {})}

    def raises(frames, model=None) -> bool:
        det, md = create("smoke", "smoke", p, model=model), MotionDetector()
        for i, f in enumerate(frames):
            if i % 3 == 0 and any(h.kind == "raise" for h in det.update(FrameInput("eval", f, i * 200 // 3, md.detect(f)))):
                return True
        return False

    seeds = range(seed_base, seed_base + n)
    vis = [plume_visible(s) for s in seeds]
    rule, with_cls = [], []
    for s in seeds:
        frames = [f for f, _ in scenes.smoke_video(150, seed=s)]
        rule.append(raises(frames))
        with_cls.append(raises(frames, cls))
    negatives = {
        "person carries a pile in": lambda s: (f for f, _, _ in scenes.carried_dump_video(150, seed=s)),
        "person stands still": lambda s: (f for f, _, _ in scenes.carried_dump_video(150, seed=s, stays=True)),
        "pile appears": lambda s: (f for f, _ in scenes.dumping_video(150, seed=s)),
        "e-bike parked": lambda s: (f for f, _ in scenes.ebike_video(150, seed=s)),
        "still background": lambda s: scenes.empty_video(150, seed=s),
    }
    false = {k: sum(raises(make(s)) for s in seeds) for k, make in negatives.items()}
    nv = sum(vis)
    return {"seeds": f"{seed_base}..{seed_base + n - 1}", "params": p, "plumes": n, "visible_plumes": nv,
            "rule_raised_visible": sum(r and v for r, v in zip(rule, vis)),
            "rule_raised_faint": sum(r and not v for r, v in zip(rule, vis)),
            "with_smoke_cls_raised_visible": sum(r and v for r, v in zip(with_cls, vis)),
            "with_smoke_cls_raised_faint": sum(r and not v for r, v in zip(with_cls, vis)),
            "rule_recall_visible": round(sum(r and v for r, v in zip(rule, vis)) / max(nv, 1), 3),
            "with_smoke_cls_recall_visible": round(sum(r and v for r, v in zip(with_cls, vis)) / max(nv, 1), 3),
            "negative_scenes": {k: n for k in negatives}, "false_warnings_rule_alone": false}


def speed(path: Path, info: registry.ModelInfo, reps: int = 30) -> dict:
    """Best-of-``reps`` milliseconds per image (the minimum filters out other jobs on a shared CPU)."""
    sess = session(path, threads=1)
    w, h = info.input_size
    out = {}
    for b in (1, 8):
        x = np.random.default_rng(0).random((b, 3, h, w), dtype=np.float32)
        _run(sess, x)
        times = []
        for _ in range(reps):
            t = time.perf_counter()
            _run(sess, x)
            times.append(time.perf_counter() - t)
        out[f"ms_per_image_batch{b}"] = round(min(times) / b * 1000, 2)
    return out


def evaluate(name: str, ci: bool = False, video: Path | None = None, with_speed: bool = False) -> dict:
    path, info = registry.load(name)
    kind = "detector" if info.task == "detect" else "classifier"
    n = (CI if ci else FULL)[kind]
    res = {"model": name, "sha256": info.sha256, "generator_version": scenes.GENERATOR_VERSION,
           "heldout_seeds": f"{scenes.HELDOUT_SEED_BASE}..{scenes.HELDOUT_SEED_BASE + n - 1}"}
    res["heldout"] = eval_detector(path, info, n) if kind == "detector" else eval_classifier(path, info, n)
    if video is not None:
        res["real_footage"] = real_footage(path, info, video)
    if with_speed:
        res["speed"] = speed(path, info)
    return res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", action="append", help="registry name (repeatable; default: every shipped model)")
    ap.add_argument("--ci", action="store_true", help="the small CI held-out subset")
    ap.add_argument("--video", type=Path, help="real footage with none of the events (default: Debian's vtest.avi if present)")
    ap.add_argument("--no-video", action="store_true")
    ap.add_argument("--speed", action="store_true")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--smoke-rule", type=int, metavar="N", help="instead: the smoke rule on N held-out plume videos "
                    "and N of each scene that must not raise")
    ap.add_argument("--seed-base", type=int, default=scenes.HELDOUT_SEED_BASE, help="first seed of --smoke-rule")
    ap.add_argument("--smoke-params", type=json.loads, default={}, help="JSON object of smoke rule params for --smoke-rule")
    args = ap.parse_args(argv)
    if args.smoke_rule:
        t = time.time()
        res = smoke_rule(args.smoke_rule, args.seed_base, args.smoke_params)
        res["eval_seconds"] = round(time.time() - t, 1)
        print(json.dumps(res, indent=1))
        if args.json:
            args.json.write_text(json.dumps(res, indent=1) + "\n")
        return 0
    video = None if args.no_video else (args.video or (DEBIAN_VTEST if DEBIAN_VTEST.exists() else None))
    results = {}
    for name in args.model or registry.names():
        t = time.time()
        results[name] = evaluate(name, args.ci, video, args.speed)
        results[name]["eval_seconds"] = round(time.time() - t, 1)
        print(json.dumps(results[name], indent=1), flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
