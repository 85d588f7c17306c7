"""The shipped model zoo: registry integrity, every model runs on a batch, and the evaluation
script reproduces the numbers recorded on the model cards (CI subset) within TOLERANCE."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from gridwatch.detectors.onnx_session import OnnxDetector, parse_names
from gridwatch.models import evaluate, registry, scenes

MODELS = Path(registry.__file__).resolve().parent
SHIPPED = [m["name"] for m in json.loads((MODELS / "manifest.json").read_text())["models"]]
# evaluation on the same generator and onnxruntime is deterministic up to floating-point differences
# between CPUs/builds; absolute tolerance on every precision / recall / F1 / AP50 / accuracy figure
TOLERANCE = 0.03


def test_manifest_lists_the_zoo():
    assert {"objects-det", "objects-det-int8", "smoke-cls", "smoke-cls-int8"} <= set(SHIPPED)
    assert registry.names() == sorted(SHIPPED)


@pytest.mark.parametrize("name", SHIPPED)
def test_registry_entry_matches_file(name):
    path, info = registry.load(name)  # checks the sha256
    assert path.stat().st_size <= registry.MAX_SHIPPED_BYTES
    assert registry.sha256_of(path) == info.sha256
    assert info.card and (MODELS / info.card).is_file()
    m = onnx.load(str(path))
    meta = {p.key: p.value for p in m.metadata_props}
    names = parse_names(meta)
    assert [names[i] for i in sorted(names)] == list(info.classes)
    shape = [d.dim_param or d.dim_value for d in m.graph.input[0].type.tensor_type.shape.dim]
    assert isinstance(shape[0], str), "batch axis must be dynamic"
    assert shape[1:] == [3, info.input_size[1], info.input_size[0]]
    assert info.layout in ("yolov8", "classifier")


@pytest.mark.parametrize("name", SHIPPED)
def test_model_runs_on_a_batch(name):
    path, info = registry.load(name)
    sess = evaluate.session(path)
    w, h = info.input_size
    x = np.random.default_rng(1).random((3, 3, h, w), dtype=np.float32)
    out = sess.run(None, {sess.get_inputs()[0].name: x})[0]
    c = len(info.classes)
    if info.layout == "yolov8":
        assert out.shape[:2] == (3, 4 + c) and out.shape[2] > 0
        assert np.all((out[:, 4:] >= 0) & (out[:, 4:] <= 1))
    else:
        assert out.shape == (3, c)
        np.testing.assert_allclose(out.sum(1), 1, atol=1e-3)


def test_detector_goes_through_the_shared_decoder():
    path, info = registry.load("objects-det")
    det = OnnxDetector(path, layout=info.layout, intra_op_threads=1, conf=0.25)
    assert det.size == info.input_size and [det.names[i] for i in sorted(det.names)] == list(info.classes)
    frames = [scenes.detector_sample(scenes.HELDOUT_SEED_BASE + i)[0] for i in range(3)]
    out = det.detect(frames)
    assert len(out) == 3
    for f, d in zip(frames, out):
        assert np.all(d.boxes[:, 2] <= f.shape[1]) and np.all(d.boxes[:, 3] <= f.shape[0])


def test_loader_refuses_a_changed_file(tmp_path):
    path, info = registry.load("smoke-cls")
    copy = tmp_path / "m.onnx"
    shutil.copy(path, copy)
    entry = info.to_dict() | {"name": "tampered", "file": "m.onnx"}
    manifest = tmp_path / "manifest.json"
    manifest.write_text(json.dumps({"models": [entry]}))
    assert registry.load("tampered", manifest)[0] == copy.resolve()
    data = bytearray(copy.read_bytes())
    data[-10] ^= 0xFF
    copy.write_bytes(bytes(data))
    with pytest.raises(registry.ModelHashError, match="refusing"):
        registry.load("tampered", manifest)
    with pytest.raises(registry.UnknownModelError, match="known:"):
        registry.load("no-such-model")


def test_user_manifest_entry_for_an_export(tmp_path, monkeypatch):
    path, _ = registry.load("objects-det")
    mine = tmp_path / "my-yolo.onnx"
    shutil.copy(path, mine)
    manifest = tmp_path / "manifest.json"
    assert registry.main(["add", "my-yolo", str(mine), "yolov8", "--manifest", str(manifest)]) == 0
    monkeypatch.setenv(registry.ENV_MANIFEST, str(manifest))
    p, info = registry.load("my-yolo")
    assert p == mine.resolve() and info.classes == tuple(scenes.CLASSES) and info.input_size == (256, 256)
    assert "objects-det" in registry.names()


def test_scenes_are_reproducible():
    a, ba, ca = scenes.detector_sample(123)
    b, bb, cb = scenes.detector_sample(123)
    assert np.array_equal(a, b) and np.array_equal(ba, bb) and np.array_equal(ca, cb)
    crop, label = scenes.smoke_sample(5)
    assert crop.shape == (64, 64, 3) and label in (0, 1)
    frames = list(scenes.smoke_video(5, 160, 120, seed=1))
    assert len(frames) == 5 and frames[-1][1].max() > 0
    dumped = list(scenes.dumping_video(6, appear_at=3, width=160, height=120, seed=2))
    assert dumped[2][1] is None and dumped[3][1] is not None
    ebike = list(scenes.ebike_video(4, appear_at=1, width=160, height=120, seed=3))
    assert ebike[0][1] is None and ebike[1][1] is not None


def _close(got, want, where=""):
    if isinstance(want, dict):
        for k, v in want.items():
            _close(got[k], v, f"{where}.{k}")
    elif isinstance(want, float) and not isinstance(want, bool):
        assert got == pytest.approx(want, abs=TOLERANCE), where
    else:
        assert got == want, where


@pytest.mark.parametrize("name", SHIPPED)
def test_evaluation_reproduces_the_card(name):
    """``python -m gridwatch.models.evaluate --ci`` gives the card's CI-subset figures."""
    _, info = registry.load(name)
    recorded = json.loads((MODELS / Path(info.card).parent / "eval.json").read_text())[name]["ci"]
    got = evaluate.evaluate(name, ci=True)
    assert got["heldout_seeds"] == recorded["heldout_seeds"]
    _close(got["heldout"], recorded["heldout"])


def test_smoke_cls_threshold_is_the_calibrated_one():
    """The smoke rule's classifier_min default and smoke-cls-int8's rule_params are the thresholds the
    training recipe calibrated (train_log.json), not defaults left over from another model."""
    from gridwatch.detectors.smoke import SmokeParams
    cal = json.loads((MODELS / "smoke-cls" / "train_log.json").read_text())["threshold_calibration"]
    assert SmokeParams().classifier_min == cal["fp32"]["threshold"]
    assert registry.info("smoke-cls-int8").extra["rule_params"]["smoke"]["classifier_min"] == cal["int8"]["threshold"]
    assert "rule_params" not in registry.info("smoke-cls").extra  # the rule's default is fp32's threshold


def test_cards_and_manifest_are_what_the_builder_writes(tmp_path, monkeypatch):
    """``python -m gridwatch.models.cards`` writes every CARD.md whole — smoke-cls's version-2 sections
    (the data added, the threshold calibration and its table) from train_log.json, the figures from
    eval.json — and the manifest: rebuilt from the stored evaluation on any machine, they equal the
    shipped files, so a builder edit that drops a section, or a hand edit of a card, fails here."""
    import difflib

    from gridwatch.models import cards
    # the machine building the cards must not show on them (eval.json records where speed was measured)
    monkeypatch.setattr(cards, "_machine", lambda: {"onnxruntime": "0.0", "cpu": "elsewhere", "cores": 0})
    assert cards.manifest_text() == (MODELS / "manifest.json").read_text()
    cards.write_cards(cards.stored_evals(), tmp_path)
    for fam in cards.FAMILIES:
        built, shipped = (tmp_path / fam / "CARD.md").read_text(), (MODELS / fam / "CARD.md").read_text()
        assert built == shipped, f"{fam}/CARD.md is not what models/cards.py writes:\n" + "".join(
            difflib.unified_diff(shipped.splitlines(True), built.splitlines(True), "shipped", "built", n=1))
    card = (MODELS / "smoke-cls" / "CARD.md").read_text()
    log = json.loads((MODELS / "smoke-cls" / "train_log.json").read_text())
    cal = log["threshold_calibration"]["fp32"]
    assert f"## Threshold: the smoke rule's `classifier_min` = **{cal['threshold']}**" in card
    assert sum(f"| {r['threshold']:.2f} | {r['negatives_fp']:.3f} | {r['plumes_confirmed']} |" in card
               for r in cal["grid"]) >= 5
    assert "**version 2 adds**" in card and f"{log['train_crops']} training crops in all" in card
    assert "**never used for training or calibration**" in card
    assert f"training took **{log['train_seconds']} s**" in card and "by hand" not in card
