"""``gridwatch bench video``: the clip-memory runs report the rings' bytes summed over the cameras."""
from __future__ import annotations

from gridwatch.benchmarks import video as bench
from gridwatch.detectors import testscenes
from gridwatch.servers.rtsp import encode_h264


def test_clip_memory_sums_the_rings_of_every_camera_and_none_with_clips_off(tmp_path):
    clip = encode_h264(testscenes.empty_scene(50, 320, 240, seed=7), tmp_path / "still.mp4", fps=25, keyint=50)
    out: dict = {}
    bench.bench_clip_memory(tmp_path, out, clip, n_full=2, n_key=0, window_s=2.0, warmup_s=2.0)
    on, off = out["clip_memory_runs"]["all_on"][0], out["clip_memory_runs"]["all_off"][0]
    assert on["clip_ring_cameras"] == 2 and on["clip_ring_peak_bytes_sum"] > 0
    assert on["clip_ring_peak_bytes_sum"] >= on["clip_ring_peak_bytes_max"] > 0
    assert off["clip_ring_cameras"] == 0 and off["clip_ring_peak_bytes_sum"] == 0
    assert out["clip_memory_all"]["cameras"] == 2 and out["clip_memory_all"]["rss_mb_on"] > 0
    assert "clip_memory_keyframes" not in out
