"""Train gridwatch's smoke-block classifier (the smoke detector's second stage) and export it.

    python -m gridwatch.models.train_smoke [--n 4000] [--plumes 300] [--synth 60] [--epochs 15] [--seed 0] [--threads 1]

Input ``images`` ``[B, 3, 64, 64]`` RGB 0..1 (a candidate region's crop resized with INTER_AREA, as
``OnnxClassifier`` does); output ``probs`` ``[B, 2]`` softmax probabilities for
``{0: 'background', 1: 'smoke'}``. Architecture: four stride-2 3×3 conv/BN/ReLU layers (16-32-48-64
channels), global average pooling, one linear layer.

Data (every part seeded):

* :func:`gridwatch.models.scenes.smoke_sample` with seeds ``0 .. n-1`` (labels balanced by the generator);
* the crops the smoke rule itself hands the classifier: its candidate stage run on ``--plumes``
  plume videos (``scenes.smoke_video`` seeds 20000+, neither the tuning plumes 0-29 / 100-159 nor
  the held-out 1000000+), labelled by the plume's opacity in the box;
* hard negatives: what the candidate stage proposes on the *tuning* clips of ``gridwatch bench
  false-alarms`` (never its ``HELD_OUT`` clips), as they are and under generated exposure ramps and
  a dimming top of the picture, at 5 fps and at the keyframe rate, plus random boxes of the rule's
  sizes — the first 2/3 of each clip (by time) only; and ``--synth`` generated scenes each of a sky
  dimming and a tree swaying (``scene_smoke``).

Horizontal-flip augmentation. Then the threshold (the smoke rule's ``classifier_min``) is
calibrated on data the model was not trained on: negatives from the last 1/3 of the tuning clips
and other generated dimming / tree scenes, and the crops the rule asks about on the tuning plumes
(seeds 0-29 and 100-159). Writes ``smoke-cls.onnx``, ``smoke-cls-int8.onnx`` (static int8 QDQ
calibrated on 256 generated crops with seeds 2_000_000+ and 64 real training crops) and
``smoke-cls/train_log.json`` (with the calibration). The real clips are read from Debian's
``opencv-doc`` package (nothing is downloaded); the rule's candidate stage needs numba and pydantic
(in ``models/requirements-train.txt``).
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from gridwatch.detectors.onnx_decoders import to_blob
from gridwatch.models import scene_smoke, scenes
from gridwatch.models._train_common import HERE, add_metadata, quantize, set_threads, write_log

NAME = "smoke-cls"
SIZE = 64


def cbr(i, o, s=2):
    return nn.Sequential(nn.Conv2d(i, o, 3, s, 1, bias=False), nn.BatchNorm2d(o), nn.ReLU(inplace=True))


class SmokeNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(cbr(3, 16), cbr(16, 32), cbr(32, 48), cbr(48, 64), cbr(64, 64, 1))
        self.fc = nn.Linear(64, 2)

    def logits(self, x):
        return self.fc(self.body(x).mean((2, 3)))

    def forward(self, x):
        return F.softmax(self.logits(x), dim=1)


def dataset(seeds):
    crops, labels = zip(*(scenes.smoke_sample(int(s), SIZE) for s in seeds))
    return torch.from_numpy(to_blob(list(crops))), torch.tensor(labels)


# ---------------------------------------------------------------- what the rule hands the classifier
# (runtime code: the smoke rule's candidate stage, numba + pydantic; see models/requirements-train.txt)

FPS = 5.0  # the runtime's analysis rate in full decode
TRAIN_PLUMES = 20_000  # smoke_video seeds of the rule-crop positives (not the tuning 0-29 / 100-159, not held out)
SYNTH_TRAIN, SYNTH_CALIB = 30_000, 40_000  # seeds of the generated light-change / tree scenes
SPLIT = 2 / 3  # a tuning clip's first 2/3 (by time) is for training, the rest for calibration


def _fit(crop: np.ndarray) -> np.ndarray:
    return cv2.resize(crop, (SIZE, SIZE), interpolation=cv2.INTER_AREA)


def proposals(frames, fps: float = FPS, min_tiles: int = 2, params: dict | None = None):
    """Run the smoke rule's candidate stage (no classifier) over ``frames``; yield (frame index,
    xyxy box in the frame's pixels, kind) for each connected patch of ``min_tiles`` or more
    candidate tiles that kept moving (``kind`` 'patch') and for the rule's region (``'region'``):
    the crops a classifier would be asked about, and the smaller ones it could be."""
    from gridwatch.detectors.base import FrameInput
    from gridwatch.detectors.motion import MotionDetector
    from gridwatch.detectors.registry import create

    det, md = create("smoke", "smoke", {"duration_s": 3.0, **(params or {})}), MotionDetector()
    last = {}
    orig = det.candidates

    def spy(*a, **kw):
        last["cand"] = c = orig(*a, **kw)
        return c

    det.candidates = spy
    step = 1000.0 / fps
    for i, f in enumerate(frames):
        last.clear()
        det.update(FrameInput("mine", f, int(i * step), md.detect(f)))
        if "cand" not in last:
            continue
        p = det.p
        wh, ww = det.bg.shape[:2]
        sx, sy = f.shape[1] / ww, f.shape[0] / wh
        masks = []
        cand = (last["cand"] & (det.flicker >= p.min_flicker)).astype(np.uint8)
        if cand.sum() >= min_tiles:
            n, lab, st, _ = cv2.connectedComponentsWithStats(cand, connectivity=8)
            masks += [("patch", st[j]) for j in range(1, n) if st[j, cv2.CC_STAT_AREA] >= min_tiles]
        if det.region is not None and det.region.any():
            ys, xs = np.nonzero(det.region)
            masks.append(("region", (xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1, len(xs))))
        for kind, (x, y, w, h, _) in masks:
            b = p.block
            yield i, (x * b * sx, y * b * sy, (x + w) * b * sx, (y + h) * b * sy), kind


def _grow(box, shape, rng, min_side: float):
    """The box grown to at least ``min_side`` px a side (the rule asks about regions of ≥ min_blocks
    tiles, so about 3 × 3 tiles at least), shifted a little at random, inside the picture."""
    H, W = shape[:2]
    x1, y1, x2, y2 = box
    w, h = max(x2 - x1, min_side * rng.uniform(1.0, 1.6)), max(y2 - y1, min_side * rng.uniform(1.0, 1.6))
    cx, cy = (x1 + x2) / 2 + rng.uniform(-0.15, 0.15) * w, (y1 + y2) / 2 + rng.uniform(-0.15, 0.15) * h
    x1, y1 = int(np.clip(cx - w / 2, 0, W - 8)), int(np.clip(cy - h / 2, 0, H - 8))
    return x1, y1, int(np.clip(x1 + w, x1 + 8, W)), int(np.clip(y1 + h, y1 + 8, H))


def random_boxes(shape, rng, k: int):
    """``k`` boxes of the sizes the rule hands the classifier: 8-40 % of the width, aspect 0.5-2."""
    h, w = shape[:2]
    for _ in range(k):
        bw = int(w * rng.uniform(0.08, 0.4))
        bh = int(min(h - 1, bw * rng.uniform(0.5, 2.0)))
        x, y = int(rng.integers(0, w - bw)), int(rng.integers(0, h - bh))
        yield x, y, x + bw, y + bh


def read_clip(path, fps: float = FPS, width: int = 640) -> list[np.ndarray]:
    """A real clip's frames at ``fps`` (stream clock), ``width`` px wide, as the runtime analyses them."""
    cap = cv2.VideoCapture(str(path))
    src_fps = cap.get(cv2.CAP_PROP_FPS) or 25.0
    out, i, next_t = [], 0, 0.0
    while True:
        ok, f = cap.read()
        if not ok:
            break
        t = i / src_fps
        i += 1
        if t + 1e-6 < next_t:
            continue
        next_t += 1.0 / fps
        h = round(f.shape[0] * width / f.shape[1])
        out.append(cv2.resize(f, (width, h), interpolation=cv2.INTER_AREA))
    cap.release()
    return out


def _perturbed(frames, rng, how: str, fps: float):
    """The clip under a light change: ``gain`` (exposure ramps), ``dim`` (the top of the picture
    darkening and brightening again: a cloud, a dimming sky) or ``plain``."""
    if how == "plain":
        return list(frames)
    n = len(frames)
    if how == "gain":
        g = scene_smoke.gain_ramp(n, rng, fps)
        return [np.clip(f.astype(np.float32) * g[i], 0, 255).astype(np.uint8) for i, f in enumerate(frames)]
    part, amount, secs = rng.uniform(0.3, 0.7), rng.uniform(0.1, 0.35), rng.uniform(2, 8)
    period = secs * 2 + rng.uniform(2, 6)
    out = []
    for i, f in enumerate(frames):
        ph = (i / fps) % period
        front = 1.2 * min(1.0, ph / secs) if ph < period / 2 else 1.2 * max(0.0, 1 - (ph - period / 2) / secs)
        out.append(scene_smoke.dim_top(f, part, amount, front))
    return out


def real_negatives(rng, per_clip_cap: int = 1500) -> dict:
    """Hard negatives from the tuning clips of ``gridwatch bench false-alarms`` (never its held-out
    ones): what the candidate stage proposes on them, as they are and under generated light changes,
    at 5 fps and at the keyframe rate, plus random boxes of the rule's sizes. Split by time:
    ``{'train': [...], 'calib': [...], 'clips': {stem: counts}}``."""
    from gridwatch.benchmarks.false_alarms import HELD_OUT, find_clips

    out = {"train": [], "calib": [], "clips": {}}
    for stem, path in find_clips().items():
        if stem in HELD_OUT:
            continue
        full = read_clip(path, FPS)
        if not full:
            continue
        got = {"train": [], "calib": []}
        for how, fps, sub in (("plain", FPS, 1), ("gain", FPS, 1), ("dim", FPS, 1), ("gain", FPS, 1),
                              ("plain", 0.5, 10), ("gain", 0.5, 10)):
            frames = _perturbed(full[::sub], rng, how, fps)
            cut = int(len(frames) * SPLIT)
            for i, box, kind in proposals(frames, fps):
                f = frames[i]
                side = f.shape[1] * 3 * 8 / 160  # 3 tiles of the 160-px working frame
                x1, y1, x2, y2 = _grow(box, f.shape, rng, side)
                got["train" if i < cut else "calib"].append(_fit(f[y1:y2, x1:x2]))
            for i in range(0, len(frames), max(1, int(fps))):  # one frame a second
                for x1, y1, x2, y2 in random_boxes(frames[i].shape, rng, 2):
                    got["train" if i < cut else "calib"].append(_fit(frames[i][y1:y2, x1:x2]))
        counts = {}
        for part, crops in got.items():
            if len(crops) > per_clip_cap * (1 if part == "train" else 0.5):
                keep = rng.choice(len(crops), int(per_clip_cap * (1 if part == "train" else 0.5)), replace=False)
                crops = [crops[j] for j in sorted(keep)]
            out[part] += crops
            counts[part] = len(crops)
        out["clips"][stem] = counts
    return out


def synthetic_negatives(seed_base: int, n: int, rng) -> list[np.ndarray]:
    """Hard negatives from generated scenes: a sky dimming, a tree swaying (``n`` of each), and
    what the candidate stage proposes on them, plus random boxes in their changing part."""
    crops = []
    for s in range(seed_base, seed_base + n):
        for make in (scene_smoke.sky_dimming_video, scene_smoke.tree_video):
            frames = make(50, seed=s)
            for i, box, _ in proposals(frames):
                if rng.random() < 0.3:
                    x1, y1, x2, y2 = _grow(box, frames[i].shape, rng, 24)
                    crops.append(_fit(frames[i][y1:y2, x1:x2]))
            for i in rng.choice(len(frames), 3, replace=False):
                for x1, y1, x2, y2 in random_boxes(frames[i].shape, rng, 1):
                    y2 = max(y1 + 8, min(y2, int(frames[i].shape[0] * 0.7)))  # the sky / crown part
                    crops.append(_fit(frames[int(i)][y1:y2, x1:x2]))
    return crops


def rule_crops(seed: int, rng, fps: float = FPS, max_crops: int = 6) -> tuple[list, list]:
    """Crops of the smoke rule's region (and patches) on the plume video ``smoke_video(seed)``:
    labelled smoke where the plume covers ≥ 0.08 mean opacity of the box, background where it
    covers < 0.01, dropped in between."""
    video = list(scenes.smoke_video(150, seed=seed))
    every = round(15 / fps)
    frames = [f for f, _ in video[::every]]
    alphas = [a for _, a in video[::every]]
    pos, neg = [], []
    for i, box, kind in proposals(frames, fps):
        x1, y1, x2, y2 = _grow(box, frames[i].shape, rng, 24) if kind == "patch" else (int(v) for v in box)
        a = float(alphas[i][y1:y2, x1:x2].mean()) if y2 > y1 and x2 > x1 else 0.0
        crop = frames[i][y1:y2, x1:x2]
        if crop.size == 0:
            continue
        if a >= 0.08 and (kind == "region" or rng.random() < 0.3):
            pos.append(_fit(crop))
        elif a < 0.01 and rng.random() < 0.3:
            neg.append(_fit(crop))
    def pick(c):
        return [c[j] for j in sorted(rng.choice(len(c), max_crops, replace=False))] if len(c) > max_crops else c
    return pick(pos), pick(neg)


TUNING_PLUMES = (range(0, 30), range(100, 160))  # the smoke rule's tuning plumes (docs/video.md)
# the threshold lets through at most this share of the calibration negatives (crops of every
# candidate patch and random boxes: far more than the rule, which asks only about a region that has
# persisted and grown, would ever hand it). 1 % would have cost a third of the tuning plumes.
MAX_FP = 0.05


class _Asked:
    """A stand-in classifier that says no to everything and keeps what it was asked about: the
    rule then asks again once the region has built up anew, exactly as it would have until a real
    classifier said yes — so a threshold t raises a plume iff any of its asked crops scores ≥ t."""
    names = {0: "background", 1: "smoke"}

    def __init__(self):
        self.crops = []

    def classify(self, images):
        self.crops += [_fit(im) for im in images]
        return np.tile(np.float32([1.0, 0.0]), (len(images), 1))


def asked_crops(seed: int) -> list[np.ndarray]:
    """What the smoke rule (defaults, duration_s 3, 5 fps) asks the classifier about on ``smoke_video(seed)``."""
    from gridwatch.detectors.base import FrameInput
    from gridwatch.detectors.motion import MotionDetector
    from gridwatch.detectors.registry import create

    asked = _Asked()
    det, md = create("smoke", "smoke", {"duration_s": 3.0}, model=asked), MotionDetector()
    for i, (f, _) in enumerate(scenes.smoke_video(150, seed=seed)):
        if i % 3 == 0:
            det.update(FrameInput("calib", f, i * 200 // 3, md.detect(f)))
    return asked.crops


def calibrate(onnx_path: Path, negatives: dict[str, list], plumes: dict[int, list], max_fp: float = MAX_FP) -> dict:
    """Probabilities of the exported model on the calibration negatives and on the crops the rule
    asks about on the visible tuning plumes; the threshold: on a 0.05 grid, the one that confirms
    the most tuning plumes while letting through at most ``max_fp`` of the negatives (ties: the higher)."""
    import onnxruntime as ort
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])

    def probs(crops):
        if not crops:
            return np.zeros(0, np.float32)
        x = to_blob(list(crops))
        return np.concatenate([sess.run(None, {"images": x[i:i + 64]})[0][:, 1] for i in range(0, len(x), 64)])

    neg = {k: probs(v) for k, v in negatives.items()}
    allneg = np.concatenate(list(neg.values()))
    best = {s: float(probs(c).max()) if c else None for s, c in plumes.items()}
    asked = [v for v in best.values() if v is not None]
    grid = [round(t, 2) for t in np.arange(0.05, 0.951, 0.05)]
    rows = []
    for t in grid:
        rows.append({"threshold": t, "negatives_fp": round(float((allneg >= t).mean()), 4),
                     "plumes_confirmed": int(sum(v >= t for v in asked))})
    ok = [r for r in rows if r["negatives_fp"] <= max_fp] or rows[-1:]
    top = max(r["plumes_confirmed"] for r in ok)
    chosen = max(r["threshold"] for r in ok if r["plumes_confirmed"] == top)
    return {"threshold": chosen, "max_fp": max_fp,
            "negatives": {k: {"crops": int(len(v)), "p99": round(float(np.quantile(v, 0.99)), 3) if len(v) else None,
                              "max": round(float(v.max()), 3) if len(v) else None,
                              "fp_at_threshold": round(float((v >= chosen).mean()), 4) if len(v) else None,
                              "fp_at_0.5": round(float((v >= 0.5).mean()), 4) if len(v) else None}
                          for k, v in neg.items()},
            "tuning_plumes": {"seeds": "0..29, 100..159", "visible": len(plumes), "asked": len(asked),
                              "best_prob": {str(s): (None if v is None else round(v, 3)) for s, v in best.items()}},
            "grid": rows}


def _calibration(args, real: dict, rng) -> dict:
    from gridwatch.models.evaluate import plume_visible
    plumes = {s: asked_crops(s) for r in TUNING_PLUMES for s in r if plume_visible(s)}
    negatives = {"tuning clips, last 1/3": real["calib"],
                 "generated sky dimming / tree": synthetic_negatives(SYNTH_CALIB, max(1, args.synth // 2), rng)}
    cal = {v: calibrate(args.out / f"{NAME}{sfx}.onnx", negatives, plumes, args.max_fp)
           for v, sfx in (("fp32", ""), ("int8", "-int8"))}
    print(json.dumps({v: {k: c[k] for k in ("threshold", "negatives", "grid")} for v, c in cal.items()}, indent=1))
    return cal


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=4000)
    ap.add_argument("--plumes", type=int, default=300, help="plume videos whose rule crops are training positives")
    ap.add_argument("--synth", type=int, default=60, help="generated sky-dimming and tree scenes (each) for training")
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=HERE)
    ap.add_argument("--max-fp", type=float, default=MAX_FP, help="share of the calibration negatives the "
                    "threshold may let through (default %(default)s)")
    ap.add_argument("--calibrate-only", action="store_true", help="keep the exported models in --out; build the "
                    "same calibration data again and redo only the threshold calibration (train_log.json's record)")
    args = ap.parse_args(argv)
    set_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng([args.seed, 40])
    if args.calibrate_only:
        real = real_negatives(rng)
        synthetic_negatives(SYNTH_TRAIN, args.synth, rng)  # the same draws as training, so the same calibration data
        rng.choice(len(real["train"]), 64, replace=False)
        t2 = time.time()
        cal = _calibration(args, real, rng)
        log = HERE / NAME / "train_log.json"
        rec = json.loads(log.read_text())
        rec.update(threshold_calibration=cal, calibrate_seconds=round(time.time() - t2, 1))
        log.write_text(json.dumps(rec, indent=2) + "\n")
        return
    t0 = time.time()
    start = args.seed * 10_000_000
    x, y = dataset(range(start, start + args.n))
    pos, neg = [], []
    for s in range(TRAIN_PLUMES, TRAIN_PLUMES + args.plumes):
        p, q = rule_crops(s, np.random.default_rng([s, 41]))
        pos += p
        neg += q
    real = real_negatives(rng)
    synth = synthetic_negatives(SYNTH_TRAIN, args.synth, rng)
    mined = pos + neg + real["train"] + synth
    x = torch.cat([x, torch.from_numpy(to_blob(mined))])
    y = torch.cat([y, torch.tensor([1] * len(pos) + [0] * (len(mined) - len(pos)))])
    n = len(y)
    counts = {"smoke_sample": args.n, "rule_positives": len(pos), "rule_negatives": len(neg),
              "real_negatives": len(real["train"]), "real_clips": real["clips"], "synthetic_negatives": len(synth)}
    gen_s = time.time() - t0
    print(f"generated {n} crops in {gen_s:.0f}s, {float(y.float().mean()):.2f} smoke: {counts}", flush=True)
    model = SmokeNet()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
    steps = args.epochs * (n // args.batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps)
    g = torch.Generator().manual_seed(args.seed)
    t1 = time.time()
    for ep in range(args.epochs):
        perm = torch.randperm(n, generator=g)
        model.train()
        tot = 0.0
        for i in range(n // args.batch):
            idx = perm[i * args.batch:(i + 1) * args.batch]
            xb = x[idx]
            flip = torch.rand(len(idx), generator=g) < 0.5
            xb = torch.where(flip[:, None, None, None], xb.flip(3), xb)
            loss = F.cross_entropy(model.logits(xb), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            tot += loss.item()
        print(f"epoch {ep}  loss {tot / (n // args.batch):.4f}  {time.time() - t1:.0f}s", flush=True)
    train_s = time.time() - t1
    model.eval()
    fp32, int8 = args.out / f"{NAME}.onnx", args.out / f"{NAME}-int8.onnx"
    torch.onnx.export(model, (torch.zeros(1, 3, SIZE, SIZE),), str(fp32), input_names=["images"],
                      output_names=["probs"], dynamic_axes={"images": {0: "batch"}, "probs": {0: "batch"}},
                      opset_version=17, dynamo=False)
    add_metadata(fp32, {"names": repr(dict(enumerate(scenes.SMOKE_CLASSES))), "imgsz": f"[{SIZE}, {SIZE}]",
                        "layout": "classifier", "task": "classify", "generator_version": scenes.GENERATOR_VERSION,
                        "description": "gridwatch smoke-cls: synthetic-data smoke block classifier (see CARD.md)",
                        "precision": "fp32"})
    calib_x, _ = dataset(range(2_000_000, 2_000_256))
    real_x = to_blob([real["train"][int(i)] for i in rng.choice(len(real["train"]), 64, replace=False)])
    calib_x = np.concatenate([calib_x.numpy(), real_x])
    quantize(fp32, int8, [calib_x[i:i + 32] for i in range(0, len(calib_x), 32)])
    t2 = time.time()
    cal = _calibration(args, real, rng)
    print(write_log(NAME, dict(seed=args.seed, n=args.n, plumes=args.plumes, synth=args.synth, epochs=args.epochs,
                               batch=args.batch, threads=args.threads,
                               train_seeds=f"{start}..{start + args.n - 1}",
                               rule_crop_plume_seeds=f"{TRAIN_PLUMES}..{TRAIN_PLUMES + args.plumes - 1}",
                               synthetic_negative_seeds=f"{SYNTH_TRAIN}..{SYNTH_TRAIN + args.synth - 1}",
                               calibration_seeds="2000000..2000255", crops=counts, train_crops=n,
                               generator_version=scenes.GENERATOR_VERSION, generate_seconds=round(gen_s, 1),
                               train_seconds=round(train_s, 1), calibrate_seconds=round(time.time() - t2, 1),
                               threshold_calibration=cal)).read_text()[:400])


if __name__ == "__main__":
    main()
