"""Masks and zones an operator draws on a camera's picture, in its pixels: a rule with zones raises
only inside them (its warning named after the zone), motion inside a mask does not wake the rules,
a polygon that cannot be one is a one-line config error naming the camera, and `gridwatch camera
snapshot` writes the picture the corners are read from."""
from __future__ import annotations

import shutil
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from gridwatch.cli import main
from gridwatch.config import parse
from gridwatch.detectors import testscenes
from gridwatch.detectors.base import Zone, ZoneConfig
from gridwatch.detectors.zones import CameraPolygons
from gridwatch.ingest.video import CameraState, Frame
from gridwatch.servers.rtsp import encode_h264
from gridwatch.streams.video import VideoRuntime

T0 = 1_700_000_000_000
RULES = [{"name": "smoke", "kind": "smoke", "model": "", "params": {"duration_s": 3.0}},
         {"name": "dumping", "kind": "dumping", "params": {"duration_s": 4.0}}]
# the generated scenes are 320x240: the plume rises from (160, 204), the object stands at (72..120, 162..198)
AROUND_PLUME = [[100, 40], [220, 40], [220, 239], [100, 239]]
AROUND_OBJECT = [[50, 140], [140, 140], [140, 220], [50, 220]]
TOP_LEFT = [[0, 0], [90, 0], [90, 100], [0, 100]]


def _runtime(tmp_path, rule: str | list[str], zones: list[dict]) -> VideoRuntime:
    return VideoRuntime(parse({"site": {"name": "vz", "data_dir": str(tmp_path)},
                               "video": {"rules": RULES},
                               "cameras": [{"name": "yard", "url": "rtsp://127.0.0.1:9/x",
                                            "rules": [rule] if isinstance(rule, str) else rule,
                                            "zones": zones}]}, base_dir=tmp_path))


def _raised(rt: VideoRuntime, frames) -> list:
    out = []
    for i, img in enumerate(frames):
        if i % 3:  # 5 fps of the 15 fps scene, like the capture thread
            continue
        ts = T0 + i * 1000 // 15
        out += [w for ev, w in rt.analyse([Frame("yard", i, ts, float(i * 1000 // 15), img, 1.0)]) if ev == "raised"]
    return out


SCENES = {"smoke": (lambda: testscenes.smoke_scene(150, seed=1), AROUND_PLUME),
          "dumping": (lambda: testscenes.appearing_object_scene(150, appear_at=10), AROUND_OBJECT)}


@pytest.mark.parametrize("rule", ["smoke", "dumping"])
def test_a_rule_with_zones_raises_only_inside_them_with_the_zone_name(tmp_path, rule):
    """The same event: outside the rule's zone nothing; inside it one warning carrying the zone's
    name. A zone for another rule leaves this one watching the whole picture."""
    scene, around = SCENES[rule]
    outside = _raised(_runtime(tmp_path / "out", rule, [{"name": "gate", "polygon": TOP_LEFT, "rules": [rule]}]), scene())
    assert outside == []
    inside = _raised(_runtime(tmp_path / "in", rule, [{"name": "gate", "polygon": TOP_LEFT, "rules": [rule]},
                                                      {"name": "bins", "polygon": around, "rules": [rule]}]), scene())
    assert [(w.rule, w.zone) for w in inside] == [(rule, "bins")]
    other = "dumping" if rule == "smoke" else "smoke"
    anywhere = _raised(_runtime(tmp_path / "any", [rule, other], [{"name": "gate", "polygon": TOP_LEFT,
                                                                    "rules": [other]}]), scene())
    assert [(w.rule, w.zone) for w in anywhere if w.rule == rule] == [(rule, None)]


@pytest.fixture(scope="module")
def blob_mp4(tmp_path_factory) -> Path:
    """A disc crossing the middle of a still 640x480 scene (y 216..264), H.264 through ffmpeg."""
    if shutil.which("ffmpeg") is None:
        pytest.skip("ffmpeg not installed")
    d = tmp_path_factory.mktemp("blob")
    return encode_h264(testscenes.moving_blob_scene(75, width=640, height=480, radius=24, speed_px=8),
                       d / "blob.mp4", fps=15)


def test_motion_only_inside_a_mask_does_not_wake_the_rules(blob_mp4, tmp_path):
    """Two file cameras on the same clip, analysed at 320 px wide (half the source): the one whose
    mask (in the source's pixels) covers the disc's band hands the rules only its first frame; the
    other hands them every kept frame."""
    band = [[0, 200], [639, 200], [639, 280], [0, 280]]
    cam = {"url": str(blob_mp4), "realtime": False, "analysis_fps": 5, "analysis_width": 320}
    rt = VideoRuntime(parse({"site": {"name": "vz", "data_dir": str(tmp_path)},
                             "video": {"rules": [RULES[0]]},
                             "cameras": [{"name": "masked", "masks": [band], **cam},
                                         {"name": "open", **cam}]}, base_dir=tmp_path))
    t0 = time.monotonic()
    with rt:
        while (any(c.state is not CameraState.OFFLINE for c in rt.collector.cameras.values())
               and time.monotonic() - t0 < 20):
            time.sleep(0.05)
        time.sleep(0.3)
        c = rt.collector.counters()
    assert rt.error is None
    kept = {n: v["gated"] + v["analysed"] + v["dropped"] for n, v in c.items()}
    assert kept["masked"] == kept["open"] >= 20, c
    # the rules' first frame (their background), and the few frames the capture thread keeps
    # before analysis has run the rules once (the file plays unpaced; seen: 4 on a loaded box)
    assert c["masked"]["analysed"] + c["masked"]["dropped"] <= 6, c
    assert c["masked"]["gated"] >= kept["masked"] - 6, c
    assert c["open"]["gated"] <= 2, c


def _toml(v) -> str:
    """A value as TOML (inline tables and arrays), as an operator would write it."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return '"' + v + '"'
    if isinstance(v, list):
        return "[" + ", ".join(_toml(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{k} = {_toml(x)}" for k, x in v.items()) + " }"
    return repr(v)


def _check(tmp_path, capsys, camera: dict, rules=None) -> str:
    cfg = tmp_path / "gw.toml"
    cfg.write_text(f"video = {_toml({'rules': rules or RULES})}\n"
                   f"cameras = {_toml([{'name': 'ok', 'url': 'rtsp://h/a'}, {'name': 'gate-3', 'url': 'rtsp://h/s', **camera}])}\n")
    assert main(["check-config", str(cfg)]) == 2
    return capsys.readouterr().err


@pytest.mark.parametrize("camera, key, says", [
    ({"masks": [[[0, 0], [100, 0]]]}, "cameras.1.masks.0", "at least 3 corners"),
    ({"zones": [{"name": "z", "polygon": [[0, 0], [10, 0]]}]}, "cameras.1.zones.0.polygon", "at least 3 corners"),
    ({"zones": [{"name": "z", "polygon": [[0, 0], ["ten", 0], [10, 10]]}]}, "cameras.1.zones.0.polygon.1.0",
     "valid number"),
    ({"masks": [[[0, 0], [100, 0], [100, True]]]}, "cameras.1.masks.0.2.1", "valid number"),
    ({"masks": [[[0, -40], [100, 0], [100, 40]]]}, "cameras.1.masks.0", "no negative values"),
    ({"zones": [{"name": "z", "polygon": [[0, 0], [10, 0], [10, 10]], "rules": ["smoek"]}]},
     "cameras.1.zones.0.rules", "'smoek' is not a video rule this camera runs"),
    ({"rules": ["smoke"], "zones": [{"name": "z", "polygon": [[0, 0], [10, 0], [10, 10]], "rules": ["dumping"]}]},
     "cameras.1.zones.0.rules", "'dumping' is not a video rule this camera runs; it runs smoke"),
])
def test_a_bad_polygon_is_one_line_naming_the_camera_and_key(tmp_path, capsys, camera, key, says):
    err = _check(tmp_path, capsys, camera)
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert key in err and "gate-3" in err and says in err, err


def test_a_zone_for_an_ebike_rule_must_be_of_a_kind_it_watches(tmp_path, capsys):
    rules = [{"name": "ebike-lift", "kind": "ebike", "model": "objects-det"}]
    err = _check(tmp_path, capsys, {"zones": [{"name": "door", "polygon": [[0, 0], [10, 0], [10, 10]],
                                               "rules": ["ebike-lift"]}]}, rules)
    assert err.count("\n") == 1 and "cameras.1.zones.0.kind" in err and "gate-3" in err and "'area'" in err, err


def test_pixel_polygons_load_and_fractions_still_do(tmp_path):
    cfg = parse({"video": {"rules": RULES},
                 "cameras": [{"name": "c", "url": "rtsp://h/s", "masks": [[[0, 0], [260, 0], [260, 30]]],
                              "zones": [{"name": "a", "polygon": [[64, 72], [576, 72], [576, 360]], "rules": ["smoke"]},
                                        {"name": "b", "polygon": [[0.1, 0.2], [0.9, 0.2], [0.9, 1.0]]}]}]},
                base_dir=tmp_path)
    assert cfg.cameras[0].zones[0].rules == ["smoke"] and cfg.cameras[0].masks[0][1] == (260.0, 0.0)


def test_a_polygon_drawn_on_another_streams_picture_is_logged(caplog):
    """Corners beyond the picture the camera sends (drawn on the main stream's snapshot, say, while
    the camera analyses its sub stream): a warning naming the camera and the key."""
    zone = Zone(ZoneConfig(name="bins", polygon=[[100, 100], [1800, 100], [1800, 1000]]), 0)
    polys = CameraPolygons("gate-3", [[[0, 0], [300, 0], [300, 40]]], [zone])
    with caplog.at_level("WARNING", logger="gridwatch.detectors.zones"):
        assert polys.resolve(640, 360)
    assert [r.getMessage()[:31] for r in caplog.records] == ["camera gate-3: zones.0 (bins) h"]
    assert polys.masks[0][1].tolist() == [300 / 640, 0.0] and zone.poly[1].tolist() == [1800 / 640, 100 / 360]
    assert not polys.resolve(640, 360)  # the same size again: nothing to do


def test_camera_snapshot_writes_the_source_picture_and_its_size(blob_mp4, tmp_path, capsys):
    cfg = tmp_path / "gw.toml"
    cfg.write_text(f'[[cameras]]\nname = "yard"\nurl = "{blob_mp4}"\nanalysis_width = 320\n'
                   'masks = [[[0, 200], [639, 200], [639, 280], [0, 280]]]\n'
                   '[[cameras.zones]]\nname = "bins"\npolygon = [[50, 40], [300, 40], [300, 190], [50, 190]]\n')
    out = tmp_path / "yard.jpg"
    assert main(["camera", "snapshot", "yard", "-c", str(cfg), "-o", str(out)]) == 0
    assert "640x480 pixels" in capsys.readouterr().out
    img = cv2.imread(str(out))
    assert img.shape == (480, 640, 3)  # the source's size, not analysis_width
    drawn = tmp_path / "drawn.png"
    assert main(["camera", "snapshot", "yard", "-c", str(cfg), "-o", str(drawn), "--draw"]) == 0
    d = cv2.imread(str(drawn)).astype(np.int16)
    plain = cv2.imread(str(out)).astype(np.int16)
    assert d[210, 400, 0] < 0.75 * plain[210, 400, 0] and d[210, 400, 2] >= plain[210, 400, 2] - 10  # masked: red
    assert abs(d[40, 175] - plain[40, 175]).sum() > 100  # the zone's outline
    assert main(["camera", "snapshot", "nope", "-c", str(cfg)]) == 2
    assert "no camera named 'nope'" in capsys.readouterr().err
