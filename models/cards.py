"""Rebuild the registry manifest, evaluate every shipped model and write its eval.json and CARD.md.

    python -m gridwatch.models.cards               # after a training recipe has written new .onnx files
    python -m gridwatch.models.cards --cards-only  # manifest and cards from the stored eval.json, no evaluation

Runtime install only (numpy, onnxruntime, OpenCV). The figures on each card come from
:mod:`gridwatch.models.evaluate`; ``eval.json`` keeps them (full held-out set, CI subset, real
footage, speed and the machine it was measured on) so ``tests/test_models.py`` can check the CI
subset reproduces. What the training run did (data, seeds, timings, a smoke-cls threshold
calibration) comes from the recipe's ``train_log.json``; what neither file records is in FAMILIES.
The whole card is written here: ``tests/test_models.py`` rebuilds every card and the manifest and
requires them to equal the shipped files, so edit this module, not a CARD.md.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
from pathlib import Path

from gridwatch.models import evaluate, registry, scenes

HERE = Path(__file__).resolve().parent
FAMILIES = {
    "objects-det": {"variants": ["objects-det", "objects-det-int8"], "layout": "yolov8", "version": "2",
                    "recipe": "train_detector.py", "train_cpus": 2,
                    # e-bike rule thresholds chosen on generated validation scenes with the fp32 model
                    # (docs/video.md); the int8 variant gives the same outcomes with them there (23 of 24
                    # e-bikes, 0 of 24 bicycles) and raises nothing on vtest.avi either
                    "rule_params": {"objects-det": {"ebike": {"conf": 0.35, "min_score": 0.6}},
                                    "objects-det-int8": {"ebike": {"conf": 0.35, "min_score": 0.6}}}},
    "smoke-cls": {"variants": ["smoke-cls", "smoke-cls-int8"], "layout": "classifier", "version": "2",
                  "recipe": "train_smoke.py", "train_cpus": 2,
                  # classifier_min calibrated by the recipe (train_log.json "calibration"): the fp32
                  # default 0.55 is the smoke rule's own; the int8 variant needs 0.65 for the same bound
                  "rule_params": {"smoke-cls-int8": {"smoke": {"classifier_min": 0.65}}},
                  # (train_cpus, both families: the cores of the machine that trained it; no log records them)
                  # the calibration table's rows (of the recipe's 0.05 grid) and the stricter bound
                  # the card says what it would have cost
                  "calibration_rows": [0.3, 0.4, 0.5, 0.55, 0.6, 0.65, 0.7, 0.8, 0.9, 0.95],
                  "calibration_alt_max_fp": 0.01,
                  # facts of how the recipe (train_smoke.py) made its data that train_log.json does not
                  # record; a retrained model's log may carry them under the same keys (the log wins)
                  "recipe_facts": {"clip_split": "2/3", "calib_split": "1/3", "fps": 5,
                                   "held_out_clips": ["tree.avi", "Megamind_bugy.avi"],
                                   "held_out_remark": "so no real trees: the tree negatives are generated"},
                  # what was measured once, beside the recipe, about the model file with this sha256 (a
                  # retrained model does not inherit it): the calibration's time in the training run before
                  # --calibrate-only redid it, version 1 scored on the same calibration crops and on vtest.avi
                  "card_notes": {"sha256": "2fcc7ade7b59f30e",
                                 "calibrate_seconds_training_run": 132,
                                 "previous_version_calibration":
                                     "Version 1 on the same calibration crops (the real ones, and a generated set drawn the "
                                     "same way), scored alongside: at its 0.5 it let through **36 %** of the real crops and "
                                     "61 % of the generated ones and confirmed 42 of the 51 asked tuning plumes; version 2 at "
                                     "0.55: **2.7 %**, 6.5 %, 44 of 51.",
                                 "previous_version_real_footage": "version 1, trained on generated scenes only: 840 of 9540 "
                                                                  "tiles, 0.088"}},
}


def manifest_text() -> str:
    """The registry manifest of the shipped models, as ``manifest.json`` holds it."""
    models = []
    for fam, spec in FAMILIES.items():
        for v in spec["variants"]:
            e = registry.entry_for(v, HERE / f"{v}.onnx", spec["layout"], version=spec["version"],
                                   card=f"{fam}/CARD.md", relative_to=HERE,
                                   precision="int8-qdq" if v.endswith("int8") else "fp32", family=fam,
                                   **({"rule_params": spec["rule_params"][v]} if v in spec.get("rule_params", {}) else {}))
            models.append(e)
    return json.dumps({"format": 1, "models": models}, indent=2) + "\n"


def build_manifest(out: Path = HERE) -> None:
    (out / "manifest.json").write_text(manifest_text())


def _machine() -> dict:
    """Where speed figures are measured: written with them into eval.json, so a card rebuilt elsewhere
    still names the machine its figures came from."""
    return {"onnxruntime": evaluate.ort.__version__, "cpu": platform.processor() or platform.machine(),
            "cores": os.cpu_count()}


def run_evals(video: Path | None) -> dict:
    out = {}
    for fam, spec in FAMILIES.items():
        res = {}
        for v in spec["variants"]:
            res[v] = {"full": evaluate.evaluate(v, ci=False, video=video, with_speed=True),
                      "ci": evaluate.evaluate(v, ci=True)}
            res[v]["full"]["speed"].update(_machine())
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


def stored_evals() -> dict:
    """Every family's ``eval.json`` as the last evaluation wrote it."""
    return {fam: json.loads((HERE / fam / "eval.json").read_text()) for fam in FAMILIES}


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


_NUMBERS = {1: "one", 2: "two", 3: "three", 4: "four", 5: "five"}


def _count(n: int) -> str:
    return _NUMBERS.get(n, str(n))


def _and(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _real_clips(log: dict) -> list[str]:
    """The real clips (stems) the training run cut background crops from (``crops.real_clips``)."""
    return list(log.get("crops", {}).get("real_clips", {}))


def _limits(clips: list[str]) -> str:
    """COMMON_LIMITS, its first paragraph saying which real clips (if any) the model was trained on."""
    if not clips:
        return COMMON_LIMITS
    n, names = _count(len(clips)), ", ".join(f"`{c}`" for c in clips)
    generic = COMMON_LIMITS[COMMON_LIMITS.index("**This model"):COMMON_LIMITS.index("\n\nPublic datasets")]
    return COMMON_LIMITS.replace(generic, (
        "**This model has NOT been validated on real smoke, dumping or e-bike footage.** It was trained on\n"
        "gridwatch's own procedurally generated scenes (flat-shaded sprites over procedural backgrounds) plus\n"
        f"background crops of {n} real clips without smoke, and evaluated for smoke only on generated scenes. "
        "The held-out figures below say how well it separates *those* pictures; they say nothing\n"
        f"about real cameras. The only real footage it has seen is {n} short clips with none of the events ({names},\n"
        f"below), used as background examples and for calibration — a few minutes of {n} scenes. Use it to exercise "
        "the pipeline end to end, for demos and tests, and as a fallback — and\n"
        "replace it with a model trained on real data before relying on its alarms."))


def _notes(spec: dict, sha256: str) -> dict:
    """FAMILIES' ``card_notes`` when they are about this model file (a retrained one gets none)."""
    notes = spec.get("card_notes", {})
    return notes if notes and sha256.startswith(notes["sha256"]) else {}


def _facts(spec: dict, log: dict) -> dict:
    """The recipe's facts a card states: the training log's where it records them, else FAMILIES'."""
    return {**spec.get("recipe_facts", {}), **{k: log[k] for k in spec.get("recipe_facts", {}) if k in log}}


def _smoke_data_added(spec: dict, log: dict) -> list[str]:
    """The data bullets of a smoke-cls trained also on the rule's crops and real hard negatives
    (``train_smoke.py``), from its training log."""
    c, f = log["crops"], _facts(spec, log)
    clips = _real_clips(log)
    tuning = log["threshold_calibration"]["fp32"]["tuning_plumes"]["seeds"].replace("..", "–")
    held = scenes.HELDOUT_SEED_BASE
    rule_neg = (f" (and {c['rule_negatives']} of background, where it is < 0.01)" if c.get("rule_negatives") else "")
    return [
        f"* **version {spec['version']} adds** (`{spec['recipe']}`): the crops the smoke rule itself hands the classifier —\n"
        f"  its candidate stage run on `scenes.smoke_video` seeds {log['rule_crop_plume_seeds']} (not the rule's tuning "
        f"plumes {tuning.replace(', ', ' / ')},\n"
        f"  not the held-out {held}+), the region's box labelled smoke where the plume's mean opacity in it is ≥ 0.08:\n"
        f"  {c['rule_positives']} crops{rule_neg}; **hard negatives** from real footage: what the candidate stage\n"
        "  proposes (every connected patch of ≥ 2 candidate tiles that kept moving, and the rule's region, grown to\n"
        "  ≥ 3 × 3 tiles) and random boxes of the sizes the rule hands over, on the **tuning clips** of\n"
        "  `gridwatch bench false-alarms` — " + _and([f"`{s}.avi`" for s in clips]) + "\n"
        "  from Debian's `opencv-doc` (read from disk, nothing downloaded) — as they are and under generated exposure / gain\n"
        f"  ramps and a dimming top of the picture (a cloud, a dimming sky), at {f['fps']} fps and at the keyframe rate, "
        f"**first {f['clip_split']} of each\n"
        f"  clip (by time) only**: {c['real_negatives']} crops ("
        + ", ".join(f"{s} {n['train']}" for s, n in c["real_clips"].items()) + ");\n"
        "  and generated hard negatives (`scene_smoke.sky_dimming_video`, `tree_video`: a bright sky dimming from the\n"
        "  top, a tree swaying, seeds "
        f"{log['synthetic_negative_seeds']}): {c['synthetic_negatives']} crops.\n"
        f"  {log['train_crops']} training crops in all.",
        "* **never used for training or calibration**: the clips `gridwatch bench false-alarms` holds out ("
        + ",\n  ".join(f"`{x}`" for x in f["held_out_clips"]) + ")"
        + (f" — {f['held_out_remark']} —," if f.get("held_out_remark") else ",")
        + f" the held-out plume seeds\n  {held}+, and the last {f['calib_split']} of "
        + " / ".join(f"`{s}`" for s in clips) + " (calibration only)."]


def _pick(grid: list[dict], max_fp: float) -> dict:
    """The recipe's choice on its grid (``train_smoke.calibrate``): the most tuning plumes confirmed
    while letting through at most ``max_fp`` of the negatives; ties: the higher threshold."""
    ok = [r for r in grid if r["negatives_fp"] <= max_fp] or grid[-1:]
    top = max(r["plumes_confirmed"] for r in ok)
    return max((r for r in ok if r["plumes_confirmed"] == top), key=lambda r: r["threshold"])


def _row(grid: list[dict], t: float) -> dict:
    return next(r for r in grid if abs(r["threshold"] - t) < 1e-9)


def _smoke_threshold(spec: dict, log: dict, notes: dict) -> list[str]:
    """The section on the smoke rule's ``classifier_min``, from the recipe's threshold calibration."""
    cal, f = log["threshold_calibration"], _facts(spec, log)
    fp, q = cal["fp32"], cal["int8"]
    t, grid, plumes = fp["threshold"], fp["grid"], fp["tuning_plumes"]
    real, gen = fp["negatives"]["tuning clips, last 1/3"], fp["negatives"]["generated sky dimming / tree"]
    clips = _real_clips(log)
    fp32, int8 = spec["variants"]
    lines = [f"## Threshold: the smoke rule's `classifier_min` = **{t}**", "",
             "Calibrated by the recipe on data it was not trained on, not left at 0.5: **negatives** — the last "
             f"{f['calib_split']} of " + _and([f"`{s}`" for s in clips]).replace(" and ", " and\n", 1)
             + f" cut as above ({real['crops']} crops) and other generated sky-dimming / tree scenes\n"
             f"({gen['crops']}); **positives** — the crops the smoke rule (defaults, {f['fps']} fps) asks about\n"
             f"on the visible tuning plumes (`smoke_video` seeds {plumes['seeds'].replace('..', '–')}: "
             f"{plumes['visible']} visible, the rule asked\n"
             f"about {plumes['asked']}; a plume counts as confirmed when any of its asks scores ≥ the threshold, as in the rule,\n"
             "which asks again after a veto). The threshold is the one on a 0.05 grid that confirms the most tuning "
             "plumes while letting\n"
             f"through at most **{fp['max_fp'] * 100:g} %** of the negatives (ties: the higher). The negatives are "
             "every candidate patch\n"
             "and random boxes, far more than the rule hands over (only a region that persisted and grew), so the "
             "share is a harsh\nmeasure."]
    alt = spec.get("calibration_alt_max_fp")
    if alt is not None and alt != fp["max_fp"]:
        a = _pick(grid, alt)
        lines[-1] += (f" {alt * 100:g} % would have meant {a['threshold']:g} and {a['plumes_confirmed']} of "
                      f"{plumes['asked']} asked plumes confirmed.")
    lines += ["", f"| threshold | `{fp32}` negatives let through | tuning plumes confirmed (of {plumes['asked']} asked) |",
              "|---|---|---|"]
    for th in spec.get("calibration_rows") or [r["threshold"] for r in grid]:
        r = _row(grid, th)
        lines.append(f"| {th:.2f} | {r['negatives_fp']:.3f} | {r['plumes_confirmed']} |")
    rq = _row(q["grid"], t)
    int8_min = spec.get("rule_params", {}).get(int8, {}).get("smoke", {}).get("classifier_min")
    lines += ["", f"At 0.5 it let through {real['fp_at_0.5'] * 100:.1f} % of the real calibration crops\n"
                  f"(p99 {real['p99']}, max {real['max']}) and {gen['fp_at_0.5'] * 100:.1f} %\n"
                  f"of the generated ones. `{int8}` scores differently (the same rule would choose {q['threshold']} "
                  f"for it; at {t} it lets\n"
                  f"through {rq['negatives_fp']:.3f} and confirms {rq['plumes_confirmed']})"
                  + (f": the manifest's `rule_params` give the int8 variant `classifier_min = {int8_min}` (a rule's own "
                     "`classifier_min` overrides it)." if int8_min is not None else ".")]
    if notes.get("previous_version_calibration"):
        lines[-1] += "\n" + notes["previous_version_calibration"]
    lines[-1] += ("\nFull record: `train_log.json` (`threshold_calibration`). What the rule then does on plumes and "
                  "real footage:\n`docs/video.md` (\"`smoke-cls` on real negatives\").")
    return lines + [""]


def card_text(fam: str, res: dict, log: dict) -> str:
    """The model card of family ``fam`` from its evaluation (``eval.json``'s content) and its training
    log (``train_log.json``'s), and FAMILIES for what neither records."""
    spec = FAMILIES[fam]
    fp, q = res[spec["variants"][0]], res[spec["variants"][1]]
    det = fam == "objects-det"
    info = registry.info(spec["variants"][0])
    table = _table_det if det else _table_cls
    clips = _real_clips(log)
    notes = _notes(spec, info.sha256)
    machine = {**_machine(), **{k: v for k, v in fp["full"]["speed"].items() if not k.startswith("ms_")}}
    lines = [f"# Model card: `{fam}` (version {spec['version']})", ""]
    if det:
        lines += ["A small single-stage object detector for **" + ", ".join(info.classes) + "**, trained only on "
                  "generated scenes. Look-alikes drawn but never labelled: trolleys, prams, neat box stacks, smoke.", ""]
    elif clips:
        lines += ["The smoke detector's second stage: classifies a candidate region's crop as **background** or "
                  f"**smoke**. Trained on generated scenes and on background crops of {_count(len(clips))} real clips "
                  "without smoke (below); that is no evidence of accuracy on real footage.", ""]
    else:
        lines += ["The smoke detector's second stage: classifies a candidate region's crop as "
                  "**background** or **smoke**. Trained only on generated scenes.", ""]
    lines += [_limits(clips), "## Files", "",
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
               "vehicles, bags, bikes (often grey), lighting changes, blur, noise and JPEG artefacts.")]
    if not det and "rule_positives" in log.get("crops", {}):
        lines += _smoke_data_added(spec, log)
    calib = log.get("calibrate_seconds")
    if calib is not None and notes.get("calibrate_seconds_training_run") is not None:
        calib = (f"; the threshold calibration {notes['calibrate_seconds_training_run']} s in the training run, "
                 f"{calib:.0f} s when redone with `--calibrate-only` (on the exported models, same data, same result)")
    elif calib is not None:
        calib = f"; the threshold calibration {calib:.0f} s"
    lines += ["", "## Training", "",
              f"`python -m gridwatch.models.{spec['recipe'][:-3]} "
              + (f"--steps {log.get('steps')} --batch {log.get('batch')} --seed {log.get('seed')} --threads {log.get('threads')}`"
                 if det else f"--n {log.get('n')} "
                 + "".join(f"--{k} {log[k]} " for k in ("plumes", "synth") if k in log)
                 + f"--epochs {log.get('epochs')} --seed {log.get('seed')} --threads {log.get('threads')}`")
              + f" in the training venv (`models/requirements-train.txt`, torch {log.get('torch', '?')}), then "
              "`python -m gridwatch.models.cards` in the runtime venv.", "",
              f"* seed {log.get('seed')}; training took **{log.get('train_seconds', '?')} s** of wall time"
              + (f" (+ {log.get('generate_seconds')} s generating the crops)" if not det else " (data generated on the fly in one worker)")
              + f" on a shared {log.get('cpus', spec.get('train_cpus', '?'))}-core CPU with {log.get('threads')} torch "
              f"thread(s), no GPU; int8 quantisation {log.get('quantize_seconds', 'a few')} s{calib or ''}.",
              "* CI never retrains; rerunning the recipe with the same seed reproduces the data exactly and the "
              "weights up to floating-point non-determinism of the CPU kernels."]
    if det:
        lines += ["* version 2 is the same recipe, generator and seed as version 1, trained longer (version 1: "
                  "550 steps); version 1's card and files are in the git history.",
                  "* with the e-bike video rule, use the `conf` / `min_score` given in `models/README.md` "
                  "(chosen on generated validation scenes; what the rule then does on the test scenes is in "
                  "`docs/video.md`)."]
    lines += [""]
    if not det and "threshold_calibration" in log:
        lines += _smoke_threshold(spec, log, notes)
    lines += [
              f"## Held-out generated scenes ({'images' if det else 'crops'}: "
              f"{fp['full']['heldout'].get('images', fp['full']['heldout'].get('crops'))})", "",
              "fp32 (`" + spec["variants"][0] + "`)" + (f", score ≥ {fp['full']['heldout']['conf']}, IoU ≥ 0.5:" if det else ", argmax:"), "",
              table(fp["full"]), "", "int8 (`" + spec["variants"][1] + "`):", "", table(q["full"]), ""]
    if "real_footage" in fp["full"]:
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
            seen = Path(rf["video"]).stem in clips
            lines += ["", (f"`{rf['video']}`'s first {_facts(spec, log)['clip_split']} are training data of this "
                           f"version (its last {_facts(spec, log)['calib_split']} calibration data), so this section "
                           "is no held-out check any more"
                           + (f" ({notes['previous_version_real_footage']})" if notes.get("previous_version_real_footage") else "")
                           + ". " if seen else "") + "In the pipeline the classifier only sees regions the candidate stage proposed "
                      "(grey, changed, texture-veiling, persistent, growing), so this is a harsher test than "
                      "its real use.", ""]
    lines += ["## fp32 vs int8 on this CPU", "",
              f"onnxruntime {machine['onnxruntime']}, CPUExecutionProvider, 1 intra-op thread, {machine['cpu']}, "
              f"{machine['cores']} cores shared with other jobs; best of 30 runs (indicative).", "",
              "| variant | ms / image, batch 1 | ms / image, batch 8 | " + ("mAP50" if det else "accuracy") + " |",
              "|---|---|---|---|"]
    for v, r in ((spec["variants"][0], fp), (spec["variants"][1], q)):
        s = r["full"]["speed"]
        acc = r["full"]["heldout"]["map50"] if det else r["full"]["heldout"]["accuracy"]
        lines.append(f"| `{v}` | {s['ms_per_image_batch1']} | {s['ms_per_image_batch8']} | {acc:.3f} |")
    lines += ["", "## Reproducing these numbers", "",
              "`python -m gridwatch.models.evaluate --model " + spec["variants"][0] + " --speed` (full held-out set, "
              "vtest.avi when installed). `tests/test_models.py` re-runs the CI subset "
              f"(`--ci`: {evaluate.CI['detector' if det else 'classifier']} {'images' if det else 'crops'}, "
              f"seeds from {scenes.HELDOUT_SEED_BASE}) and requires every figure within **±0.03** (absolute) of "
              "`eval.json`'s `ci` section, which was produced together with this card.", "", BYO]
    return "\n".join(lines)


def write_cards(evals: dict, out: Path = HERE) -> None:
    for fam, res in evals.items():
        (out / fam).mkdir(parents=True, exist_ok=True)
        (out / fam / "CARD.md").write_text(card_text(fam, res, _log(fam)))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cards-only", action="store_true", help="rebuild manifest.json and every CARD.md from the "
                    "stored eval.json and train_log.json, evaluating nothing")
    args = ap.parse_args(argv)
    build_manifest()
    if args.cards_only:
        evals = stored_evals()
    else:
        evals = run_evals(evaluate.DEBIAN_VTEST if evaluate.DEBIAN_VTEST.exists() else None)
    write_cards(evals)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
