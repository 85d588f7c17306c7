"""Capture threads yield to analysis: on Linux each lowers its own priority (threads it starts inherit it)."""
from __future__ import annotations

import os
import sys
import threading

import pytest

from gridwatch.ingest.video import CameraConfig, CameraState, VideoCollector, lower_thread_priority

linux = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread priorities are Linux-only")


def _priority() -> int:
    return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())


@linux
def test_lower_thread_priority_touches_only_the_calling_thread():
    base, seen = _priority(), {}

    def worker():
        lower_thread_priority(5)
        seen["worker"] = _priority()
        child = threading.Thread(target=lambda: seen.__setitem__("child", _priority()))
        child.start()
        child.join()

    t = threading.Thread(target=worker)
    t.start()
    t.join()
    assert seen == {"worker": min(19, base + 5), "child": min(19, base + 5)}
    assert _priority() == base


@linux
@pytest.mark.parametrize("nice", [0, 10])
def test_capture_threads_run_at_the_collectors_capture_nice(tmp_path, nice):
    base, seen, done = _priority(), [], threading.Event()

    def on_status(ch):  # called from the capture thread
        seen.append(_priority())
        if ch.new is CameraState.OFFLINE:
            done.set()

    cfg = CameraConfig(name="gone", url=str(tmp_path / "missing.mp4"))
    with VideoCollector([cfg], on_status=on_status, capture_nice=nice):
        assert done.wait(10)
    assert seen and set(seen) == {min(19, base + nice)}
    assert _priority() == base


@pytest.mark.parametrize("ms", [0.0, 1.0])
def test_the_video_runtime_shortens_pythons_switch_interval_while_it_runs(tmp_path, ms):
    """video.gil_switch_ms: the analysis thread takes the GIL back from among hundreds of capture
    threads; while cameras run the switch interval is this short, and it is restored on stop."""
    from gridwatch.config import parse
    from gridwatch.streams.video import VideoRuntime

    cfg = parse({"site": {"data_dir": str(tmp_path)}, "video": {"gil_switch_ms": ms},
                 "cameras": [{"name": "nowhere", "url": "rtsp://127.0.0.1:9/x", "open_timeout_s": 1}]},
                base_dir=tmp_path)
    before = sys.getswitchinterval()
    rt = VideoRuntime(cfg)
    with rt:
        assert sys.getswitchinterval() == pytest.approx(ms / 1000 if ms else before)
    assert sys.getswitchinterval() == before


@pytest.mark.parametrize("threads", [0, 1])
def test_the_video_runtime_sets_opencvs_threads_while_it_runs(tmp_path, threads):
    """video.opencv_threads: OpenCV's worker pool while cameras run (0 leaves it), restored on stop."""
    import cv2

    from gridwatch.config import parse
    from gridwatch.streams.video import VideoRuntime

    cfg = parse({"site": {"data_dir": str(tmp_path)}, "video": {"opencv_threads": threads},
                 "cameras": [{"name": "nowhere", "url": "rtsp://127.0.0.1:9/x", "open_timeout_s": 1}]},
                base_dir=tmp_path)
    before = cv2.getNumThreads()
    with VideoRuntime(cfg):
        assert cv2.getNumThreads() == (threads or before)
    assert cv2.getNumThreads() == before
