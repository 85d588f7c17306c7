"""Rebuild the registry manifest, evaluate every shipped model and write its eval.json and CARD.md.

    python -m gridwatch.models.cards            # after a training recipe has written new .onnx files

Runtime install only (numpy, onnxruntime, OpenCV). The figures on each card come from
:mod:`gridwatch.models.evaluate`; ``eval.json`` keeps them (full held-out set, CI subset, real
footage, speed) so ``tests/test_models.py`` can check the CI subset reproduces.
"""
from __future__ import annotations

import json
import os
import platform
from pathlib import Path

from gridwatch.models import evaluate, registry, scenes

HERE = Path(__file__).resolve().parent
FAMILIES = {
    "objects-det": {"variants": ["objects-det", "objects-det-int8"], "layout": "yolov8", "version": "2",
                    "recipe": "train_detector.py",
                    # e-bike rule thresholds chosen on generated validation scenes with the fp32 model
                    # (docs/video.md); the int8 variant gives the same outcomes with them there (23 of 24
                    # e-bikes, 0 of 24 bicycles) and raises nothing on vtest.avi either
                    "rule_params": {"objects-det": {"ebike": {"conf": 0.35, "min_score": 0.6}},
                                    "objects-det-int8": {"ebike": {"conf": 0.35, "min_score": 0.6}}}},
    "smoke-cls": {"variants": ["smoke-cls", "smoke-cls-int8"], "layout": "classifier", "version": "2",
                  "recipe": "train_smoke.py",
                  # classifier_min calibrated by the recipe (train_log.json "calibration"): the fp32
                  # default 0.55 is the smoke rule's own; the int8 variant needs 0.65 for the same bound
                  "rule_params": {"smoke-cls-int8": {"smoke": {"classifier_min": 0.65}}}},
}


def build_manifest() -> None:
    models = []
    for fam, spec in FAMILIES.items():
        for v in spec["variants"]:
            e = registry.entry_for(v, HERE / f"{v}.onnx", spec["layout"], version=spec["version"],
                                   card=f"{fam}/CARD.md", relative_to=HERE,
                                   precision="int8-qdq" if v.endswith("int8") else "fp32", family=fam,
                                   **({"rule_params": spec["rule_params"][v]} if v in spec.get("rule_params", {}) else {}))
            models.append(e)
    (HERE / "manifest.json").write_text(json.dumps({"format": 1, "models": models}, indent=2) + "\n")


def run_evals(video: Path | None) -> dict:
    out = {}
    for fam, spec in FAMILIES.items():
        res = {}
        for v in spec["variants"]:
            res[v] = {"full": evaluate.evaluate(v, ci=False, video=video, with_speed=True),
                      "ci": evaluate.evaluate(v, ci=True)}
        (HERE / fam / "eval.json").write_text(json.dumps(res, indent=1) + "\n")
        out[fam] = res
    return out


def _table_det(r: dict) -> str:
    rows = ["| class | precision | recall | F1 | AP50 | ground truths |", "|---|---|---|---|---|---|"]
    for c, m in r["heldout"]["per_class"].items():
        rows.append(f"| {c} | {m['precision']:.3f} | {m['recall']:.3f} | {m['f1']:.3f} | {m['ap50']:.3f} | {m['support']} |")
    rows.append(f"| **mAP50** | | | | **{r['heldout']['map50']:.3f}** | |")
    return "\n".join(rows)


def _table_cls(r: dict) -> str:
    rows = ["| class | precision | recall | F1 | crops |", "|---|---|---|---|---|"]
    for c, m in r["heldout"]["per_class"].items():
        rows.append(f"| {c} | {m['precision']:.3f} | {m['recall']:.3f} | {m['f1']:.3f} | {m['support']} |")
    rows.append(f"| **accuracy** | | | **{r['heldout']['accuracy']:.3f}** | |")
    return "\n".join(rows)


def _log(fam: str) -> dict:
    p = HERE / fam / "train_log.json"
    return json.loads(p.read_text()) if p.exists() else {}


COMMON_LIMITS = """\
## Limits — read this first

**This model has NOT been validated on real smoke, dumping or e-bike footage.** It was trained and
evaluated only on gridwatch's own procedurally generated scenes (flat-shaded sprites over procedural
backgrounds). The held-out figures below say how well it separates *those* pictures; they say nothing
about real cameras. The only real footage it has seen is a false-alarm check on a clip with none of
the events. Use it to exercise the pipeline end to end, for demos and tests, and as a fallback — and
replace it with a model trained on real data before relying on its alarms.

Public datasets to train a real model on: **D-Fire** (smoke and fire, ~21 000 images, YOLO labels)
for smoke; **MIVIA-IWDD** (illegal waste dumping videos) for dumping; the public **elevator e-bike
datasets** (e-bike vs bicycle / person in elevator cars, several on Roboflow Universe and in the
papers on elevator e-bike detection) for e-bikes; COCO for person / bicycle / vehicle.
"""

BYO = """\
## Replacing it with a model trained on real data

1. Train e.g. an ultralytics YOLOv8/YOLO11 (or RT-DETR) model on the datasets above.
2. Export to ONNX with a dynamic batch axis: `yolo export model=best.pt format=onnx dynamic=True imgsz=640`
   (the export writes the `names` metadata gridwatch reads).
3. Register it: `python -m gridwatch.models.registry add my-ebike best.onnx yolov8 --manifest my-models.json`
   and point `GRIDWATCH_MODEL_MANIFEST` at `my-models.json` (or pass `manifest=` to `registry.load`).
4. Map its class names to gridwatch events in the detector settings (see `models/README.md`).
"""


def write_cards(evals: dict, video: Path | None) -> None:
    cpu = platform.processor() or platform.machine()
    ncpu = os.cpu_count()
    for fam, res in evals.items():
        spec, log = FAMILIES[fam], _log(fam)
        fp, q = res[spec["variants"][0]], res[spec["variants"][1]]
        det = fam == "objects-det"
        info = registry.info(spec["variants"][0])
        table = _table_det if det else _table_cls
        lines = [f"# Model card: `{fam}` (version {spec['version']})", ""]
        if det:
            lines += ["A small single-stage object detector for **" + ", ".join(info.classes) + "**, trained only on "
                      "generated scenes. Look-alikes drawn but never labelled: trolleys, prams, neat box stacks, smoke.", ""]
        else:
            lines += ["The smoke detector's second stage: classifies a candidate region's crop as "
                      "**background** or **smoke**. Trained only on generated scenes.", ""]
        lines += [COMMON_LIMITS, "## Files", "",
                  "| registry name | file | precision | sha256 |", "|---|---|---|---|"]
        for v in spec["variants"]:
            i = registry.info(v)
            size = (HERE / i.file).stat().st_size / 1024
            lines.append(f"| `{v}` | `{i.file}` ({size:.0f} KiB) | {i.precision} | `{i.sha256[:16]}…` |")
        w, h = info.input_size
        lines += ["", "## Inputs and outputs", ""]
        if det:
            lines += [f"* input `images`: float32 `[B, 3, {h}, {w}]`, RGB 0..1, letterboxed (grey 114) — "
                      "`gridwatch.detectors.onnx_decoders.letterbox` + `to_blob`; dynamic batch axis.",
                      f"* output `output0`: float32 `[B, 4+{len(info.classes)}, N]` (N = {(w // 8) ** 2 + (w // 16) ** 2 + (w // 32) ** 2}), "
                      "the **YOLOv8 layout**: cx, cy, w, h in input pixels, then per-class sigmoid scores; "
                      "decode with layout `yolov8` (NMS in the decoder).",
                      "* classes (`names` metadata): " + ", ".join(f"{k}: `{c}`" for k, c in enumerate(info.classes)), "",
                      "## Architecture", "",
                      "Plain conv/BN/ReLU backbone (16-24-48-80-112 channels, strides 2..32, residual blocks), "
                      "top-down feature pyramid (48 channels) at strides 8/16/32, one shared head "
                      "(anchor-free: distances to the four box sides; FCOS-style centre sampling, objects assigned "
                      "to a level by size; quality-focal classification loss with targets 0.5 + 0.5 × IoU, GIoU box loss). "
                      "Box decoding is inside the graph. EMA weights. ~0.37 M parameters."]
        else:
            lines += [f"* input `images`: float32 `[B, 3, {h}, {w}]`, RGB 0..1: the region's crop resized with "
                      "`cv2.INTER_AREA` (as `OnnxClassifier` does); dynamic batch axis.",
                      "* output `probs`: float32 `[B, 2]` softmax probabilities, classes (`names` metadata) "
                      "0: `background`, 1: `smoke`.", "", "## Architecture", "",
                      "Four stride-2 3×3 conv/BN/ReLU layers (16-32-48-64 channels), one more 3×3 conv, global "
                      "average pooling, a linear layer and softmax. ~0.07 M parameters."]
        lines += ["", "## Data", "",
                  f"* generator: `gridwatch.models.scenes`, GENERATOR_VERSION `{log.get('generator_version', scenes.GENERATOR_VERSION)}`"
                  + (" (`detector_sample`)" if det else " (`smoke_sample`)") + ".",
                  f"* training seeds {log.get('train_seeds', '?')}; int8 calibration seeds {log.get('calibration_seeds', '?')}; "
                  f"held-out seeds {fp['full']['heldout_seeds']} (unseen scenes *and* backgrounds: every background is "
                  "generated from its sample's seed).",
                  ("* scenes: streets, building entrances, corridors, elevator cars, construction-site edges; lighting "
                   "(gain, gamma, gradient, colour cast), sensor noise, blur / motion blur, JPEG artefacts; objects at "
                   "perspective-consistent scales, far-to-near occlusion (a box is labelled when ≥ 35 % visible), "
                   "random facing, foreshortening and tilt; 10 % of frames carry a smoke plume as a distractor."
                   if det else
                   "* positives: a crop around a plume (noise advected upward, low-chroma white/grey/black, density "
                   "0.3–0.9) with ≥ 0.08 mean opacity; negatives: random crops of the same kind of scenes with people, "
                   "vehicles, bags, bikes (often grey), lighting changes, blur, noise and JPEG artefacts."), "",
                  "## Training", "",
                  f"`python -m gridwatch.models.{spec['recipe'][:-3]} "
                  + (f"--steps {log.get('steps')} --batch {log.get('batch')} --seed {log.get('seed')} --threads {log.get('threads')}`"
                     if det else f"--n {log.get('n')} --epochs {log.get('epochs')} --seed {log.get('seed')} --threads {log.get('threads')}`")
                  + f" in the training venv (`models/requirements-train.txt`, torch {log.get('torch', '?')}), then "
                  "`python -m gridwatch.models.cards` in the runtime venv.", "",
                  f"* seed {log.get('seed')}; training took **{log.get('train_seconds', '?')} s** of wall time"
                  + (f" (+ {log.get('generate_seconds')} s generating the crops)" if not det else " (data generated on the fly in one worker)")
                  + f" on a shared {ncpu}-core CPU with {log.get('threads')} torch thread(s), no GPU; int8 quantisation "
                  f"{log.get('quantize_seconds', 'a few')} s.",
                  "* CI never retrains; rerunning the recipe with the same seed reproduces the data exactly and the "
                  "weights up to floating-point non-determinism of the CPU kernels."]
        if det:
            lines += ["* version 2 is the same recipe, generator and seed as version 1, trained longer (version 1: "
                      "550 steps); version 1's card and files are in the git history.",
                      "* with the e-bike video rule, use the `conf` / `min_score` given in `models/README.md` "
                      "(chosen on generated validation scenes; what the rule then does on the test scenes is in "
                      "`docs/video.md`)."]
        lines += ["",
                  f"## Held-out generated scenes ({'images' if det else 'crops'}: "
                  f"{fp['full']['heldout'].get('images', fp['full']['heldout'].get('crops'))})", "",
                  "fp32 (`" + spec["variants"][0] + "`)" + (f", score ≥ {fp['full']['heldout']['conf']}, IoU ≥ 0.5:" if det else ", argmax:"), "",
                  table(fp["full"]), "", "int8 (`" + spec["variants"][1] + "`):", "", table(q["full"]), ""]
        if video is not None and "real_footage" in fp["full"]:
            rf, rq = fp["full"]["real_footage"], q["full"]["real_footage"]
            lines += [f"## False alarms on real footage without any event", "",
                      f"`{rf['video']}` from Debian's `opencv-doc` package: {rf['frames']} frames "
                      f"({rf['seconds']} s at {rf['fps']:.0f} fps) of people walking in a hall — no smoke, no "
                      "dumping, no bikes or vehicles. Every frame was analysed.", ""]
            if det:
                lines += ["| variant | false-alarm detections / h | frames with a false alarm / h | by class (detections) | person detections (frames with one) |",
                          "|---|---|---|---|---|"]
                for v, r in ((spec["variants"][0], rf), (spec["variants"][1], rq)):
                    by = ", ".join(f"{k}: {m['detections']}" for k, m in r["per_class"].items())
                    lines.append(f"| `{v}` | {r['false_alarm_detections_per_hour']} | {r['false_alarm_frames_per_hour']} | {by} | "
                                 f"{r['person']['detections']} ({r['person']['frames_with']} of {r['frames']}) |")
                lines += ["", "Person detections are reported separately: people *are* in the clip (usually 3–6 "
                          "per frame), so they are not counted as false alarms; they were not checked against where "
                          "the people are (the clip has no labels), so they say nothing about the person class's "
                          "accuracy on real footage.", ""]
            else:
                lines += ["Every frame cut into a 4 × 3 grid of tiles, each tile classified (probability ≥ 0.5 = smoke):", "",
                          "| variant | tiles flagged | tile false-positive rate | flagged tiles / h | frames with a flagged tile / h |",
                          "|---|---|---|---|---|"]
                for v, r in ((spec["variants"][0], rf), (spec["variants"][1], rq)):
                    lines.append(f"| `{v}` | {r['tiles_flagged']} of {r['tiles']} | {r['tile_false_positive_rate']:.4f} | "
                                 f"{r['false_alarm_tiles_per_hour']} | {r['false_alarm_frames_per_hour']} |")
                lines += ["", "In the pipeline the classifier only sees regions the candidate stage proposed "
                          "(grey, changed, texture-veiling, persistent, growing), so this is a harsher test than "
                          "its real use.", ""]
        sf, sq = fp["full"]["speed"], q["full"]["speed"]
        lines += ["## fp32 vs int8 on this CPU", "",
                  f"onnxruntime {evaluate.ort.__version__}, CPUExecutionProvider, 1 intra-op thread, {cpu}, "
                  f"{ncpu} cores shared with other jobs; best of 30 runs (indicative).", "",
                  "| variant | ms / image, batch 1 | ms / image, batch 8 | " + ("mAP50" if det else "accuracy") + " |",
                  "|---|---|---|---|"]
        for v, r in ((spec["variants"][0], fp), (spec["variants"][1], q)):
            s = r["full"]["speed"]
            acc = r["full"]["heldout"]["map50"] if det else r["full"]["heldout"]["accuracy"]
            lines.append(f"| `{v}` | {s['ms_per_image_batch1']} | {s['ms_per_image_batch8']} | {acc:.3f} |")
        del sf, sq
        lines += ["", "## Reproducing these numbers", "",
                  "`python -m gridwatch.models.evaluate --model " + spec["variants"][0] + " --speed` (full held-out set, "
                  "vtest.avi when installed). `tests/test_models.py` re-runs the CI subset "
                  f"(`--ci`: {evaluate.CI['detector' if det else 'classifier']} {'images' if det else 'crops'}, "
                  f"seeds from {scenes.HELDOUT_SEED_BASE}) and requires every figure within **±0.03** (absolute) of "
                  "`eval.json`'s `ci` section, which was produced together with this card.", "", BYO]
        (HERE / fam / "CARD.md").write_text("\n".join(lines))


def main() -> int:
    video = evaluate.DEBIAN_VTEST if evaluate.DEBIAN_VTEST.exists() else None
    build_manifest()
    evals = run_evals(video)
    write_cards(evals, video)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
