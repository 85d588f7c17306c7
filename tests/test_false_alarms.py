"""The false-alarm harness (``gridwatch bench false-alarms``): a short cut of the real footage in CI,
and proof that it counts a warning when there is one."""
from __future__ import annotations

import json
import shutil

import pytest

from gridwatch.benchmarks import false_alarms as fa
from gridwatch.cli import main as cli
from gridwatch.detectors.models import shipped
from gridwatch.servers.rtsp import encode_h264
from gridwatch.detectors import testscenes

needs_ffmpeg = pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="ffmpeg not installed")


def test_poisson_upper_bound():
    assert fa.poisson_upper(0, 1.0) == pytest.approx(2.9957, abs=1e-3)  # the "3 / T" rule
    assert fa.poisson_upper(0, 0.5) == pytest.approx(2 * 2.9957, abs=1e-3)
    assert fa.poisson_upper(1, 1.0) == pytest.approx(4.7439, abs=1e-3)
    assert fa.poisson_upper(10, 2.0) == pytest.approx(16.9621 / 2, abs=1e-3)  # chi2(0.95, 22) / 2 / T


@needs_ffmpeg
def test_the_harness_counts_a_warning_when_the_clip_has_smoke(tmp_path):
    """A generated plume played through the harness raises the smoke rule in full decode: the
    harness can see an alarm (its zeros on real footage are not for want of looking)."""
    clip = encode_h264(testscenes.smoke_scene(180, seed=1), tmp_path / "plume.mp4", fps=15, keyint=30)
    models = {"objects-det": fa.Memo(shipped("objects-det")), "smoke-cls": shipped("smoke-cls")}
    r = fa.run_clip("plume", clip, "all", 24.0, tmp_path, 5.0, 640, False, models)
    assert r.warnings["smoke"] >= 1, r
    assert r.passes == 2 and r.seconds == pytest.approx(24.0)
    assert r.resets >= 1  # the loop's wrap started a new scene epoch


@needs_ffmpeg
@pytest.mark.skipif(not fa.find_clips(), reason="real footage (Debian package opencv-doc) not installed")
def test_short_cut_of_real_footage_raises_no_false_alarm(tmp_path, capsys):
    """A few camera-minutes of every real clip, both decode modes, through the CLI: the camera
    time adds up, every pass after the first is a new scene epoch, and no rule raises."""
    out = tmp_path / "fa.json"
    assert cli(["bench", "false-alarms", "--hours", "0.06", "--cache", str(tmp_path / "clips"), "--json", str(out),
                "--quiet"]) == 0
    text = capsys.readouterr().out
    assert "per cam-day" in text and "held out" in text
    results = json.loads(out.read_text())
    clips = fa.find_clips()
    assert {(r["clip"], r["mode"]) for r in results} == {(c, m) for c in clips for m in fa.MODES}
    for r in results:
        assert r["seconds"] == pytest.approx(0.06 * 3600 / len(clips), rel=1e-6)
        assert r["resets"] >= r["passes"] - 1, r  # every wrap of the loop reset the evidence
        assert r["warnings"] == {}, r
    assert max(r["passes"] for r in results) >= 2  # the short clips looped


def test_plume_harness_reports_delay_and_the_stage_that_drops_a_plume():
    """``--plumes``: a visible tuning plume (seed 0) raises in full decode with a delay inside its
    clip; the same plume is put down to the stage that was made to drop it; and with keyframes
    every 2 s its 10 s clip cannot raise (the rule needs ``min_frames`` observations, ~16 s),
    while the same plume grown over 40 s does, after at least 16 s."""
    r = fa.plume_detection(1, seed_base=0)
    assert (r["visible"], r["raised"], r["missed_seeds"]) == (1, 1, []), r
    assert 2.0 <= r["delay_s_median"] <= 10.0, r
    for params, stage in (({"min_blocks": 1000}, "candidates"), ({"duration_s": 60.0}, "temporal"),
                          ({"classifier_min": 1.0, "classifier_class": "background"}, "classifier")):
        r = fa.plume_detection(1, seed_base=0, params=params)
        assert r["raised"] == 0 and r["missed"][0]["stage"] == stage, (params, r)
    r = fa.plume_detection(1, seed_base=0, mode="keyframes")
    assert r["raised"] == 0 and r["missed"][0]["stage"] != "classifier", r
    r = fa.plume_detection(1, seed_base=0, mode="keyframes", seconds=40.0)
    assert r["raised"] == 1 and 16.0 <= r["delay_s_median"] <= 40.0, r
