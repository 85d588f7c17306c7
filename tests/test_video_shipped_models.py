"""The video detectors with the models the repository ships (models/manifest.json), loaded by
registry name through the hash-checked registry, on generated scenes and on real footage.

What is asserted is what the shipped models actually do (docs/video.md, "Shipped models"):

* smoke-cls confirms the smoke detector's region on a generated plume; on the empty scene the
  candidate stage finds nothing for it to judge (and on that scene's bare background crop it scores
  lower than the plume, below classifier_min, but for one scene not by much: 0.46);
* objects-det finds the generated e-bikes, and the e-bike rule's zone and k-of-n logic work with
  it; with the thresholds documented for it (conf 0.35, min_score 0.6, chosen on generated
  validation scenes) it tells generated e-bikes from generated ordinary bicycles: a bicycle
  raises nothing, an e-bike raises (one test pins the figures so the docs cannot go stale);
* objects-det's person class gives the dumping rule its "someone brought it" evidence and vetoes
  a person standing still;
* on Debian's vtest.avi (real people walking) none of the three rules raises with the shipped
  models and the documented thresholds, although objects-det reports a waste_pile on the floor and
  an e-bike (scores up to 0.62) in every frame; with the e-bike rule's generic defaults
  (0.35 / 0.5, meant for real YOLO exports) it raises once.
"""
from __future__ import annotations

from pathlib import Path

import json
import numpy as np
import pytest

from gridwatch.config import parse
from gridwatch.detectors.base import FrameInput, Zone, ZoneConfig
from gridwatch.detectors.models import load, shipped
from gridwatch.detectors.motion import MotionDetector
from gridwatch.detectors.onnx_session import OnnxDetector
from gridwatch.detectors.registry import OnnxClassifier, create
from gridwatch.detectors import testscenes
from gridwatch.detectors.settings import ModelConfig
from gridwatch.ingest.video import CameraConfig
from gridwatch.models import registry, scenes
from gridwatch.streams.video import VideoRuntime
from tests.test_video_detectors import VTEST, analysed_frames

T0 = 1_700_000_000_000
# the e-bike rule's thresholds for the shipped detector (docs/video.md, models/README.md), chosen on
# generated validation scenes (models.scenes.ebike_video seeds 100-123, not the seeds tested here):
# min_score 0.55 and 0.6 both raised on 23 of 24 e-bikes and 0 of 24 bicycles there; 0.6 because
# 0.55 raises once on vtest.avi. The rule's defaults (0.35 / 0.5) suit real YOLO exports.
EBIKE_SHIPPED = {"k": 3, "n": 5, "conf": 0.35, "min_score": 0.6}
WHOLE_FRAME = [Zone(ZoneConfig(name="lift car", kind="elevator", polygon=[(0, 0), (1, 0), (1, 1), (0, 1)]), 0)]


@pytest.fixture(scope="module")
def objects_det() -> OnnxDetector:
    return shipped("objects-det", intra_op_threads=1)


@pytest.fixture(scope="module")
def smoke_cls() -> OnnxClassifier:
    return shipped("smoke-cls", intra_op_threads=1)


def run(detector, frames, model=None, fps=15, step=3):
    """Analyse every ``step``-th frame like the runtime (the model only when the rule asks for it);
    returns (hits without updates, update hits, model frames)."""
    md = MotionDetector()
    hits, updates, model_frames = [], [], 0
    for i, f in enumerate(frames):
        if i % step:
            continue
        ts = T0 + int(i * 1000 / fps)
        m = md.detect(f)
        dets = None
        if model is not None and detector.wants_model(ts, m):
            dets = model.detect([f])[0]
            model_frames += 1
        for h in detector.update(FrameInput("cam", f, ts, m, dets, model.names if model is not None else {})):
            (updates if h.kind == "update" else hits).append(h)
    return hits, updates, model_frames


# --- loading by registry name ---------------------------------------------------------------------
def test_shipped_models_load_by_name_hash_checked_and_shared(tmp_path):
    det = shipped("objects-det", intra_op_threads=1)
    assert isinstance(det, OnnxDetector) and det.layout == "yolov8" and det.size == (256, 256)
    assert list(det.names.values()) == ["person", "bicycle", "e-bike", "vehicle", "waste_pile"]
    assert shipped("objects-det", intra_op_threads=1) is det  # one session per model and settings
    cls = shipped("smoke-cls", intra_op_threads=1)
    assert isinstance(cls, OnnxClassifier) and cls.names == {0: "background", 1: "smoke"}
    # a rule naming a registered model needs no [[video.models]] entry; omitted, the kind's default
    cfg = parse({"site": {"data_dir": str(tmp_path)},
                 "video": {"rules": [{"name": "smoke", "kind": "smoke"}, {"name": "ebike", "kind": "ebike"},
                                     {"name": "dumping", "kind": "dumping", "model": "objects-det"},
                                     {"name": "dumping-plain", "kind": "dumping"},
                                     {"name": "smoke-plain", "kind": "smoke", "model": ""}]},
                 "cameras": [{"name": "a", "url": "rtsp://127.0.0.1:9/a"}, {"name": "b", "url": "rtsp://127.0.0.1:9/b"}]},
                base_dir=tmp_path)
    rt = VideoRuntime(cfg)
    assert sorted(rt.models) == ["objects-det", "smoke-cls"]
    by_rule = {(c.cfg.name, r.info.name): r.detector.model for c in rt.cameras for r in c.rules}
    assert by_rule[("a", "smoke")] is by_rule[("b", "smoke")] is rt.models["smoke-cls"]
    assert by_rule[("a", "ebike")] is by_rule[("b", "dumping")] is rt.models["objects-det"]
    assert by_rule[("a", "dumping-plain")] is None and by_rule[("a", "smoke-plain")] is None
    # a changed file is refused by name: a user manifest whose entry's hash does not match
    src, info = registry.load("smoke-cls")
    bad = tmp_path / "smoke-cls.onnx"
    bad.write_bytes(src.read_bytes() + b"\0")
    (tmp_path / "manifest.json").write_text(
        '{"models": [%s]}' % __import__("json").dumps({**info.to_dict(), "name": "smoke-local", "file": "smoke-cls.onnx"}))
    with pytest.raises(registry.ModelHashError, match="smoke-local"):
        load(ModelConfig(name="smoke-local"), manifest=tmp_path / "manifest.json")


# --- smoke: the classifier stage with smoke-cls -----------------------------------------------------
def test_smoke_classifier_stage_runs_with_smoke_cls(smoke_cls):
    """On the model zoo's own plumes (models.scenes.smoke_video seeds 0 and 2: tuning plumes, which
    chose its threshold; it was trained on single crops of smoke_sample seeds 0..3999 and on the rule's
    crops of smoke_video seeds 20000..20239, not on these videos)."""
    for seed, measured in ((0, 1.0), (2, 0.977)):
        det = create("smoke", "smoke", {"duration_s": 3.0}, model=smoke_cls)
        hits, updates, _ = run(det, (f for f, _ in scenes.smoke_video(150, seed=seed)))
        assert [h.kind for h in hits] == ["raise"], seed
        assert det.classifier_runs == 1  # the classifier saw the region once, when the rule was satisfied
        prob = hits[0].detail["classifier_prob"]
        assert prob == pytest.approx(measured, abs=0.02) and hits[0].score == pytest.approx(prob, abs=1e-3)
        assert updates and all(u.key == 0 for u in updates)  # the plume keeps changing: the warning's updates
        # the same background without the plume: no candidate region, so no warning and no classifier run
        det = create("smoke", "smoke", {"duration_s": 3.0}, model=smoke_cls)
        assert run(det, scenes.empty_video(90, seed=seed))[0] == [] and det.classifier_runs == 0
        # the classifier alone on the same crop of that background: it ranks the plume higher, but it
        # is no strong judge of these scenes (measured with version 2: 0.46 "smoke" for seed 0's empty
        # crop, 0.21 for seed 2's; version 1: 0.53 and 0.23): the candidate stage does most of the work
        x1, y1, x2, y2 = (int(v) for v in hits[0].boxes[0])
        empty = next(scenes.empty_video(1, seed=seed))
        p_empty = float(smoke_cls.classify([empty[y1:y2, x1:x2]])[0][1])
        assert p_empty < prob, (seed, p_empty, prob)


def test_smoke_rule_on_held_out_generated_plumes():
    """models/evaluate.py --smoke-rule on a small held-out set: what the rule does on plumes and on
    scenes that must not raise (docs/video.md has the 30-seed figures). Pinned as measured."""
    from gridwatch.models.evaluate import smoke_rule
    r = smoke_rule(4)
    assert (r["visible_plumes"], r["rule_raised_visible"], r["with_smoke_cls_raised_visible"]) == (3, 2, 2), r
    assert sum(r["false_warnings_rule_alone"].values()) == 0, r


def test_smoke_classifier_veto_resets_the_region(smoke_cls):
    """With ``reask_growth`` 0, a region the classifier calls background raises nothing: its evidence
    starts over, and the classifier is asked again once the region has built up again (the default
    keeps the evidence and asks again once the region has grown: tests/test_video_smoke_recall.py)."""
    det = create("smoke", "smoke", {"duration_s": 3.0, "classifier_min": 0.999, "reask_growth": 0}, model=smoke_cls)
    hits, _, _ = run(det, testscenes.smoke_scene(150, seed=1))
    assert hits == [] and det.classifier_runs >= 2
    assert all(p < 0.999 for p in det.classifier_probs)


# --- e-bike with objects-det ---------------------------------------------------------------------------
def test_ebike_rule_with_objects_det_end_to_end(objects_det):
    frames = [f for f, _ in scenes.ebike_video(75, appear_at=10, seed=0)]
    det = create("ebike", "ebike", EBIKE_SHIPPED, WHOLE_FRAME, objects_det)
    hits, updates, model_frames = run(det, frames, objects_det)
    assert [(h.kind, h.zone, h.label) for h in hits] == [("raise", "lift car", "e-bike")]
    h = hits[0]
    assert h.detail["frames"].startswith("3/") and h.detail["median_score"] >= EBIKE_SHIPPED["min_score"]
    # k of n: the raise comes on the 3rd analysed frame with the bike (frames 12, 15, 18 at 15 fps)
    assert h.ts_ms == T0 + int(18 * 1000 / 15)
    assert updates and model_frames >= 15
    # the same bike seen in only 2 analysed frames (it leaves again) is not enough
    brief = frames[:16] + [frames[0]] * 45
    det = create("ebike", "ebike", EBIKE_SHIPPED, WHOLE_FRAME, objects_det)
    assert run(det, brief, objects_det)[0] == []
    # outside the watched zone: nothing
    left = [Zone(ZoneConfig(name="stairs", kind="stairwell", polygon=[(0, 0), (0.15, 0), (0.15, 1), (0, 1)]), 0)]
    det = create("ebike", "ebike", EBIKE_SHIPPED, left, objects_det)
    assert run(det, frames, objects_det)[0] == []
    # with the rule's generic defaults (0.35 / 0.5) it raises too, on the same frame
    det = create("ebike", "ebike", {}, WHOLE_FRAME, objects_det)
    assert [(h.kind, h.ts_ms) for h in run(det, frames, objects_det)[0]] == [("raise", h.ts_ms)]


def test_objects_det_tells_generated_ebikes_from_bicycles(objects_det):
    """docs/video.md: on the generated test scenes the shipped detector's e-bike scores for e-bikes
    are above those for ordinary bicycles, and the e-bike rule with its documented thresholds raises
    on e-bikes and on no bicycle. These are generated sprites (an e-bike has a battery box, fat
    tyres, a hub motor, often a step-through frame): it says nothing about real e-bikes."""
    def best(bicycle: bool, seed: int) -> tuple[float, float]:
        f, _ = list(scenes.ebike_video(12, appear_at=10, seed=seed, bicycle=bicycle))[11]
        d = objects_det.detect([f])[0]
        e, b = d.scores[d.class_ids == 2], d.scores[d.class_ids == 1]
        return (float(e.max()) if len(e) else 0.0), (float(b.max()) if len(b) else 0.0)

    ebikes = [best(False, s) for s in range(6)]
    bicycles = [best(True, s) for s in range(6)]
    assert min(e for e, _ in ebikes) > 0.5, ebikes  # every e-bike is found as one (measured 0.56-0.78)
    assert all(b > 0.3 for _, b in bicycles), bicycles  # every bicycle is found as a bicycle (0.38-0.74)
    # its e-bike score on a bicycle (none >= 0.25 on 5 of 6; seed 5: 0.52) stays below every e-bike's (0.56)
    assert max(e for e, _ in bicycles) < min(e for e, _ in ebikes), (ebikes, bicycles)

    def raises(bicycle: bool, seed: int) -> list[str]:
        det = create("ebike", "ebike", EBIKE_SHIPPED, WHOLE_FRAME, objects_det)
        return [h.kind for h in run(det, (f for f, _ in scenes.ebike_video(60, seed=seed, bicycle=bicycle)), objects_det)[0]]

    assert all(raises(True, s) == [] for s in range(6))  # a bicycle raises nothing
    # an e-bike raises: 5 of these 6 (seed 4's median e-bike score, 0.56, is under min_score 0.6)
    assert sum(raises(False, s) == ["raise"] for s in range(6)) >= 5


def test_int8_detector_gets_the_same_rule_thresholds_and_outcomes():
    """objects-det-int8 carries the same rule_params in the manifest (checked on the validation
    scenes, docs/video.md): with them it raises on an e-bike and not on a bicycle."""
    int8 = shipped("objects-det-int8", intra_op_threads=1)
    det = create("ebike", "ebike", {"k": 3, "n": 5}, WHOLE_FRAME, int8)
    assert (det.p.conf, det.p.min_score) == (EBIKE_SHIPPED["conf"], EBIKE_SHIPPED["min_score"])
    assert [h.kind for h in run(det, (f for f, _ in scenes.ebike_video(60, seed=0)), int8)[0]] == ["raise"]
    det = create("ebike", "ebike", {"k": 3, "n": 5}, WHOLE_FRAME, int8)
    assert run(det, (f for f, _ in scenes.ebike_video(60, seed=0, bicycle=True)), int8)[0] == []


# --- dumping with objects-det --------------------------------------------------------------------------
def test_dumping_with_objects_det_presence_and_still_person_veto(objects_det):
    p = {"duration_s": 4.0}
    # someone carries a waste pile in, leaves it and walks off: one warning, on the pile
    frames = list(scenes.carried_dump_video(150, seed=1))
    det = create("dumping", "dumping", p, model=objects_det)
    hits, _, _ = run(det, (f for f, _, _ in frames), objects_det)
    assert [h.kind for h in hits] == ["raise"]
    pile = frames[-1][1]
    x1, y1, x2, y2 = hits[0].boxes[0]
    assert x1 < pile[2] and pile[0] < x2 and y1 < pile[3] and pile[1] < y2
    assert len(det.presence) > 0  # the person was seen by objects-det before the pile appeared
    # a person who walks in and stands still: a static blob the plain rule raises, the veto does not
    stays = [f for f, _, _ in scenes.carried_dump_video(150, seed=1, stays=True)]
    assert [h.kind for h in run(create("dumping", "plain", p), stays)[0]] == ["raise"]
    assert run(create("dumping", "dumping", p, model=objects_det), stays, objects_det)[0] == []
    # a pile that appears with nobody around: raised by the plain rule, not with the presence check
    nobody = [f for f, _ in scenes.dumping_video(120, appear_at=15, seed=1)]
    assert [h.kind for h in run(create("dumping", "plain", p), nobody)[0]] == ["raise"]
    assert run(create("dumping", "dumping", p, model=objects_det), nobody, objects_det)[0] == []


# --- real footage ----------------------------------------------------------------------------------------
@pytest.mark.skipif(not VTEST.exists(), reason="real footage (Debian package opencv-doc) not installed")
def test_real_footage_no_warning_with_the_shipped_models(objects_det, smoke_cls):
    """vtest.avi at the production analysis rate (5 fps, 640 px) with every rule on its shipped
    model, the model run on every analysed frame, the e-bike rule with the thresholds documented for
    objects-det: no warning. objects-det reports a waste_pile on the floor in every frame (its card);
    no rule raises on that class; its e-bike class appears in every frame too (scores up to 0.62),
    but a track's median stays below min_score 0.6; person/vehicle detections only feed the dumping
    rule's presence test and veto (which can only hold back). The e-bike rule is given no
    thresholds: the manifest's rule_params for objects-det (0.35 / 0.6) apply. With the rule's
    generic defaults (0.35 / 0.5) set explicitly it raises once (measured: one warning at 7 s,
    median score 0.52) — why the manifest recommends higher thresholds for this model."""
    cfg = CameraConfig(name="vtest", url=str(VTEST))
    rules = [create("smoke", "smoke", {"duration_s": 3.0}, model=smoke_cls),
             create("dumping", "dumping", {"duration_s": 4.0}, model=objects_det),
             create("ebike", "ebike-model-defaults", {"k": 3, "n": 5}, WHOLE_FRAME, objects_det)]
    assert (rules[2].p.conf, rules[2].p.min_score) == (EBIKE_SHIPPED["conf"], EBIKE_SHIPPED["min_score"])
    generic = create("ebike", "ebike-generic-defaults", {"k": 3, "n": 5, "conf": 0.35, "min_score": 0.5},
                     WHOLE_FRAME, objects_det)
    generic_hits = []
    md = MotionDetector()
    hits, frames = [], 0
    per_class = {n: 0 for n in objects_det.names.values()}
    for ts, img in analysed_frames(VTEST, cfg):
        frames += 1
        m = md.detect(img)
        dets = objects_det.detect([img])[0]
        for c in dets.class_ids:
            per_class[objects_det.names[int(c)]] += 1
        for r in rules:
            fi = FrameInput("vtest", img, ts, m, dets if r.model_kind == "detector" else None,
                            objects_det.names if r.model_kind == "detector" else {})
            hits += [(r.name, h.kind, ts) for h in r.update(fi)]
        generic_hits += [h.kind for h in generic.update(FrameInput("vtest", img, ts, m, dets, objects_det.names))
                         if h.kind == "raise"]
    assert frames >= 390  # the whole clip
    assert hits == [], (hits, per_class)
    assert len(generic_hits) <= 1, generic_hits  # the documented limit of the generic defaults
    assert per_class["waste_pile"] >= frames // 2, per_class  # the false detections were there to resist


def test_bench_ebike_tells_ebikes_from_bicycles_through_the_production_path(tmp_path):
    """`gridwatch bench ebike` on a short cut: the rule alone and the runtime on decoded keyframes
    (1 s GOP) raise on e-bike seeds 0-1 and on neither bicycle (the card's rates, docs/video.md)."""
    from gridwatch.benchmarks import ebike_rates

    out = tmp_path / "eb.json"
    assert ebike_rates.main(["--seeds", "0", "2", "--ways", "rule", "keyframes", "--json", str(out)]) == 0
    got = json.loads(out.read_text())
    for way in ("rule", "keyframes"):
        assert (got[way]["ebikes_raised"], got[way]["bicycles_raised"], got[way]["of"]) == (2, 0, 2), got[way]
    assert got["keyframes"]["ebike_delay_s_median"] > got["rule"]["ebike_delay_s_median"]  # keyframes see it later
