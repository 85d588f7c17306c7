"""Motion gate: Numba kernels against plain references, and behaviour on seeded scenes."""
from __future__ import annotations

import cv2
import numpy as np
from hypothesis import given, settings, strategies as st
from hypothesis.extra.numpy import arrays

from gridwatch.detectors import motion_kernels as k
from gridwatch.detectors import testscenes
from gridwatch.detectors.motion import MotionDetector, MotionParams


# --- plain references ---------------------------------------------------------------------------
def ref_diff_and_update(gray, bg, mask, threshold, alpha):
    d = gray.astype(np.float32) - bg
    changed = ((mask != 0) & (np.abs(d) > np.float32(threshold))).astype(np.uint8)
    return changed, bg + np.float32(alpha) * d


def ref_dilate(src):
    return cv2.dilate(src, np.ones((3, 3), np.uint8), borderType=cv2.BORDER_CONSTANT, borderValue=0)


def ref_component_boxes(binary, min_area):
    n, _, stats, _ = cv2.connectedComponentsWithStats(binary, connectivity=8)
    rows = [(x, y, x + w, y + h, a) for x, y, w, h, a in stats[1:n] if a >= min_area]
    return sorted(rows)


small_images = st.tuples(st.integers(1, 24), st.integers(1, 24)).flatmap(
    lambda hw: arrays(np.uint8, hw, elements=st.integers(0, 1)))


@settings(max_examples=60, deadline=None)
@given(data=st.data(), h=st.integers(1, 20), w=st.integers(1, 20),
       threshold=st.floats(1, 100), alpha=st.floats(0.001, 1))
def test_diff_and_update_matches_reference(data, h, w, threshold, alpha):
    gray = data.draw(arrays(np.uint8, (h, w)))
    bg = data.draw(arrays(np.float32, (h, w), elements=st.floats(0, 255, width=32)))
    mask = data.draw(arrays(np.uint8, (h, w), elements=st.integers(0, 1)))
    want_changed, want_bg = ref_diff_and_update(gray, bg, mask, threshold, alpha)
    changed = np.empty((h, w), np.uint8)
    bg2 = bg.copy()
    n = k.diff_and_update(gray, bg2, mask, np.float32(threshold), np.float32(alpha), changed)
    np.testing.assert_array_equal(changed, want_changed)
    assert n == int(want_changed.sum())
    np.testing.assert_allclose(bg2, want_bg, rtol=1e-5, atol=1e-3)


@settings(max_examples=60, deadline=None)
@given(img=small_images)
def test_dilate_matches_opencv(img):
    out = np.empty_like(img)
    k.dilate3x3(img, out)
    np.testing.assert_array_equal(out, ref_dilate(img))


@settings(max_examples=80, deadline=None)
@given(img=small_images, min_area=st.integers(1, 6))
def test_component_boxes_match_opencv(img, min_area):
    h, w = img.shape
    boxes = np.zeros((h * w + 1, 5), np.int32)
    n = k.component_boxes(img, min_area, np.zeros((h, w), np.int32), np.zeros(h * w, np.int32), boxes)
    assert sorted(map(tuple, boxes[:n].tolist())) == ref_component_boxes(img, min_area)


# --- behaviour ----------------------------------------------------------------------------------
def run(frames, params=None, mask=None):
    gate = MotionDetector(params, mask)
    return [gate.detect(f) for f in frames]


def test_still_scene_gives_no_regions():
    results = run(testscenes.empty_scene(30, 640, 360, noise=0.0))
    assert all(len(r.boxes) == 0 for r in results)


def test_sensor_noise_alone_gives_no_regions():
    results = run(testscenes.empty_scene(40, 640, 360, noise=6.0, seed=3))
    assert sum(len(r.boxes) for r in results) == 0


def iou(a, b):
    ix = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def test_moving_blob_gives_its_box_in_frame_coordinates():
    w, h = 640, 360
    params = MotionParams(alpha=0.5)  # fast background: the trail behind the blob fades at once
    gate = MotionDetector(params)
    frames = list(testscenes.moving_blob_scene(20, w, h, radius=20, speed_px=12, noise=2.0))
    for i, f in enumerate(frames):
        r = gate.detect(f)
        if i < 5:
            continue
        assert len(r.boxes) >= 1, f"frame {i}: no motion"
        truth = testscenes.blob_box(i, w, h, radius=20, speed_px=12)
        # the largest region covers the blob (plus the strip it just left), and little else
        x1, y1, x2, y2 = r.boxes[0].tolist()
        assert x1 <= truth[0] + 8 and x2 >= truth[2] - 8 and y1 <= truth[1] + 8 and y2 >= truth[3] - 8, (i, r.boxes)
        assert (x2 - x1) * (y2 - y1) < 4 * (truth[2] - truth[0]) * (truth[3] - truth[1])


def test_object_that_appears_then_stays_is_absorbed_into_background():
    frames = list(testscenes.appearing_object_scene(60, appear_at=5, width=640, height=360))
    results = run(frames, MotionParams(alpha=0.2))
    assert all(len(r.boxes) == 0 for r in results[:5])
    truth = testscenes.object_box(640, 360)
    assert iou(results[5].boxes[0].tolist(), truth) > 0.7
    assert len(results[-1].boxes) == 0  # stayed put long enough to become background


def test_mask_hides_motion_and_global_change_resets_background():
    w, h = 640, 360
    mask = np.ones((h, w), np.uint8)
    mask[:, : w // 2] = 0
    frames = list(testscenes.appearing_object_scene(8, appear_at=4, width=w, height=h, at=(0.2, 0.5)))
    assert all(len(r.boxes) == 0 for r in run(frames, mask=mask))

    gate = MotionDetector()
    base = next(testscenes.empty_scene(1, w, h))
    gate.detect(base)
    r = gate.detect(np.clip(base.astype(np.int16) + 80, 0, 255).astype(np.uint8))  # lights on
    assert r.global_change and len(r.boxes) == 0
    assert len(gate.detect(np.clip(base.astype(np.int16) + 80, 0, 255).astype(np.uint8)).boxes) == 0


def test_smoke_plume_shows_as_motion_region_near_its_source():
    w, h = 320, 240
    results = run(testscenes.smoke_scene(40, w, h, rise_px_per_frame=1.5), MotionParams(threshold=10, alpha=0.1))
    hits = [r.boxes for r in results[10:] if len(r.boxes)]
    assert len(hits) > 20
    cx = np.mean([(b[0, 0] + b[0, 2]) / 2 for b in hits])
    assert abs(cx - 0.5 * w) < 0.15 * w


def test_frame_size_change_restarts_background():
    gate = MotionDetector()
    gate.detect(np.zeros((360, 640, 3), np.uint8))
    assert gate.motion_size == (178, 100)
    r = gate.detect(np.zeros((240, 320), np.uint8))
    assert len(r.boxes) == 0 and gate.motion_size == (133, 100)


def test_a_capture_thread_prepared_gate_frame_gives_the_same_result():
    """MotionDetector.prepare (run on a camera's capture thread, stateless) makes exactly the small
    frame detect() would make from the full luma plane, and detect() uses it as given."""
    rng = np.random.default_rng(3)
    size = (640, 360)  # the analysis image the boxes refer to
    base = cv2.GaussianBlur(rng.integers(16, 236, (720, 1280), dtype=np.uint8), (31, 31), 0)
    planes = [np.clip(base + rng.integers(-2, 3, base.shape), 16, 235).astype(np.uint8) for _ in range(3)]
    planes[2][300:420, 500:700] = 235  # something appears
    a, b = MotionDetector(), MotionDetector()
    for plane in planes:
        small = b.prepare(plane, size, limited_range=True)
        ra = a.detect(plane, size, limited_range=True)
        np.testing.assert_array_equal(small, a.luminance(plane, limited_range=True))
        rb = b.detect(np.zeros((2, 2), np.uint8), size, limited_range=True, small=small)  # the plane is not looked at
        np.testing.assert_array_equal(ra.boxes, rb.boxes)
        assert ra.changed_fraction == rb.changed_fraction
    assert len(ra.boxes) == 1 and tuple(ra.boxes[0]) >= (240, 140, 350, 210)  # around x 250-350, y 150-210
    # a prepared frame of the wrong shape (another size) is ignored, not trusted
    wrong = b.prepare(planes[0], (400, 400))  # 100 x 100, not the 100 x 178 of this camera
    ra = a.detect(planes[2], size, limited_range=True)
    rc = b.detect(planes[2], size, limited_range=True, small=wrong)
    np.testing.assert_array_equal(ra.boxes, rc.boxes)
    assert ra.changed_fraction == rc.changed_fraction > 0
