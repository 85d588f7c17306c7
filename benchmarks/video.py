"""``gridwatch bench video``: the video path against baselines measured in the same run, as ratios.

1. **Still scene**: CPU per camera (decode + analysis at 5 fps: motion gate, smoke, dumping)
   vs decoding the same stream alone, against both baselines: OpenCV (every frame ``grab``-bed)
   and PyAV/FFmpeg with the pipeline's decoder settings. Target ≤ 1.15×. Also all paced like a
   live camera, and the pipeline with ``decoder="opencv"`` (BGR for every kept frame).
2. **Busy scene**: the split decode / gate / model / detectors per analysed frame.
3. **Keyframe-only vs full decode** for a 720p25 stream with a 2 s GOP: cameras per core in each
   mode (target ≥ 10× more with keyframes), and an estimate of the most cameras this box would
   sustain (cores ÷ CPU per camera). Still scene and keyframe figures are medians of ``--repeats``
   interleaved rounds, after a warm-up run that is not counted.
   With ``--max-cameras``: the most cameras this box sustains, measured with real multi-camera runs
   (N looping file cameras paced like live cameras through one ``VideoRuntime``), full decode at
   5 fps and keyframes only, found by growing from the estimate and bisecting (bounded number of
   runs and time per mode). Each run also reports the frames decoded and the kept frames dropped
   unanalysed, so a failing count shows whether it degrades gently; ``--capture-nice 0`` runs the
   capture threads at the analysis thread's priority (the behaviour before ``video.capture_nice``).
   With ``--clip-memory N_FULL N_KEYFRAMES``: the evidence clips' packet rings with many cameras
   (the same multi-camera runs, clips off then on, each in a process of its own): the per-camera
   ``clip_ring_bytes`` / ``clip_ring_peak_bytes`` gauges summed, and the resident memory.
   **RTSP cameras** (``rtsp``): the same keyframes-vs-full comparison with the clip served by a
   real RTSP server, keyframes through gridwatch's own RTSP client and through FFmpeg's.
4. **Detector throughput**: ``OnnxDetector.detect`` (letterbox + run + decode) vs a bare
   onnxruntime session on the same model and batch (pre-made input, target ≥ 0.9×), and the gain
   from batching 4 cameras' frames into one run. The model is a random-weight CNN with a YOLOv8
   head (``testkit.conv_yolov8``): real compute, meaningless detections.
5. **Evidence clips** (``clips``): the cost of keeping each camera's packets for clips
   (``[video.clips]``, on by default): the still 720p25 scene, full decode and keyframes only, with
   clips on and off in interleaved rounds (ratios per round, medians), plus the ring's peak bytes.
6. **Latency**: frame that satisfies the e-bike rule → warning received on a real Mosquitto,
   through a real RTSP server (skipped when GStreamer or Mosquitto is missing).

CPU is process CPU time (all threads), so it counts decoding threads too. Bounded to a few minutes
(``--max-cameras``: a few more per decode mode).
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import threading
import time
from pathlib import Path

import cv2
import numpy as np

from gridwatch.detectors import testkit, testscenes


def _cpu() -> float:
    return time.process_time()


def _rss_mb() -> float:
    """This process's resident memory now (MB; NaN where /proc is missing)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        return float("nan")


def _decode_alone(path: Path, convert: bool = False, paced_fps: float = 0.0) -> tuple[float, int]:
    """CPU seconds and frames for OpenCV decoding every frame of ``path``: ``grab`` only (decode,
    no colour conversion), or ``read`` (decode + BGR conversion, the usual OpenCV loop); with
    ``paced_fps``, at that rate like a live camera (a decoder woken per frame runs on cold caches)."""
    cap = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG)
    c0, n, w0 = _cpu(), 0, time.monotonic()
    while (cap.read()[0] if convert else cap.grab()):
        n += 1
        if paced_fps:
            ahead = n / paced_fps - (time.monotonic() - w0)
            if ahead > 0:
                time.sleep(ahead)
    cpu = _cpu() - c0
    cap.release()
    return cpu, n


def _pyav_decode_alone(path: Path, paced_fps: float = 0.0, walls: list[float] | None = None) -> float:
    """CPU seconds for PyAV (FFmpeg) decoding every frame of ``path`` with the pipeline's default
    decoder settings (``decode_threads``), nothing else; paced like a live camera with ``paced_fps``.
    ``walls``: the wall-clock seconds it took are appended."""
    import av

    from gridwatch.ingest.video import CameraConfig

    threads = CameraConfig.model_fields["decode_threads"].default
    c0, n, w0 = _cpu(), 0, time.monotonic()
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.codec_context.thread_count = threads
        if threads != 1:
            stream.thread_type = "SLICE"
        for _ in container.decode(stream):
            n += 1
            if paced_fps:
                ahead = n / paced_fps - (time.monotonic() - w0)
                if ahead > 0:
                    time.sleep(ahead)
    cpu = _cpu() - c0
    if walls is not None:
        walls.append(time.monotonic() - w0)
    return cpu


def _runtime_on_file(path: Path, tmp: Path, rules: list[dict], models: list[dict], decode: str = "all",
                     fps: float = 5.0, zones=None, extra_models=None, realtime: bool = False, decoder: str = "pyav",
                     clips: bool = True, walls: list[float] | None = None):
    """Run the video runtime over one file camera, as fast as it decodes or (``realtime``) paced at
    its frame rate like a live camera; (cpu s, runtime). ``walls``: the wall-clock seconds from the
    start to the end of the file are appended."""
    from gridwatch.config import parse
    from gridwatch.streams.video import VideoRuntime

    cam = {"name": "bench", "url": str(path), "realtime": realtime, "analysis_fps": fps, "decode": decode, "decoder": decoder,
           "rules": [r["name"] for r in rules], "zones": zones or []}
    cfg = parse({"site": {"name": "bench", "data_dir": str(tmp)},
                 "video": {"rules": rules, "models": models, "clips": {"enabled": clips}}, "cameras": [cam]}, base_dir=tmp)
    rt = VideoRuntime(cfg, models=extra_models)
    done = threading.Event()
    ended: list[float] = []
    rt.on_status_cb = lambda ch: (ended.append(time.monotonic()), done.set()) if ch.new.value == "offline" else None
    c0, w0 = _cpu(), time.monotonic()
    rt.start()
    done.wait(180)
    if walls is not None and ended:
        walls.append(ended[0] - w0)
    time.sleep(0.3)  # the last frame's analysis
    cpu = _cpu() - c0
    rt.stop()
    return cpu, rt


def _frames_720p(n: int, kind: str):
    if kind == "still":
        return testscenes.empty_scene(n, 1280, 720, seed=7)
    return testkit.vehicle_scene(n, "e-bike", 1280, 720, seed=7, ride_frames=n)  # rides for the whole clip


def bench_decode_and_analysis(tmp: Path, seconds: float, out: dict, repeats: int = 5) -> Path:
    from gridwatch.servers.rtsp import encode_h264

    n = int(25 * seconds)
    still = encode_h264(_frames_720p(n, "still"), tmp / "still720.mp4", fps=25, keyint=50)
    busy = encode_h264(_frames_720p(n, "busy"), tmp / "busy720.mp4", fps=25, keyint=50)
    street = [{"name": "smoke", "kind": "smoke"}, {"name": "dumping", "kind": "dumping"}]

    warm = encode_h264(_frames_720p(50, "still"), tmp / "warm.mp4", fps=25, keyint=50)
    _runtime_on_file(warm, tmp, street, [])  # load the compiled kernels, open FFmpeg once: not per-camera cost
    _runtime_on_file(warm, tmp, street, [], decode="keyframes")
    # Still scene. As fast as it decodes (comparable with earlier runs), and paced like a live
    # camera against OpenCV decoding paced alike: the rules' periodic re-check (still_recheck_s)
    # runs on the wall clock, so a replay faster than real time hides part of its cost.
    # ``repeats`` interleaved rounds (other load hits all alike), medians; the ratios are taken per
    # round (pipeline / baseline of the same round) and their median and range reported.
    runs: dict[str, list[float]] = {k: [] for k in ("grab", "read", "pyav", "pipe", "grab_paced", "pyav_paced",
                                                     "pipe_paced", "full", "key")}
    walls: dict[str, list[float]] = {"pyav": [], "pipe": []}  # free-running, wall-clock seconds
    for _ in range(repeats):
        c, frames = _decode_alone(still)
        runs["grab"].append(c)
        runs["read"].append(_decode_alone(still, convert=True)[0])
        runs["pyav"].append(_pyav_decode_alone(still, walls=walls["pyav"]))
        runs["pipe"].append(_runtime_on_file(still, tmp, street, [], walls=walls["pipe"])[0])
        runs["grab_paced"].append(_decode_alone(still, paced_fps=25)[0])
        runs["pyav_paced"].append(_pyav_decode_alone(still, paced_fps=25))
        c, rt_p = _runtime_on_file(still, tmp, street, [], realtime=True)
        runs["pipe_paced"].append(c)
        # keyframe-only vs full decode, same round (warm-up done above, not counted)
        runs["full"].append(_runtime_on_file(still, tmp, street, [], decode="all", fps=5)[0])
        c, rt_k = _runtime_on_file(still, tmp, street, [], decode="keyframes", fps=5)
        runs["key"].append(c)
    cpu_cv, rt_cv = _runtime_on_file(still, tmp, street, [], decoder="opencv")
    per_s = frames / 25
    med = {k: float(np.median(v)) for k, v in runs.items()}

    def ratio(a: str, b: str) -> tuple[float, float, float]:
        r = [x / y for x, y in zip(runs[a], runs[b])]
        return float(np.median(r)), float(min(r)), float(max(r))

    r_grab, r_read, r_paced = ratio("pipe", "grab"), ratio("pipe", "read"), ratio("pipe_paced", "grab_paced")
    r_av, r_av_paced = ratio("pipe", "pyav"), ratio("pipe_paced", "pyav_paced")
    out["still_ratio_vs_pyav_decode"], out["still_ratio_vs_pyav_range"] = r_av[0], r_av[1:]
    out["still_paced_ratio_vs_paced_pyav"], out["still_paced_ratio_vs_pyav_range"] = r_av_paced[0], r_av_paced[1:]
    dec_cpu, read_cpu, cpu = med["grab"], med["read"], med["pipe"]
    out["repeats"] = repeats
    out["still_decode_alone_cpu_per_stream_s"] = dec_cpu / per_s
    out["still_read_alone_cpu_per_stream_s"] = read_cpu / per_s
    out["still_pipeline_cpu_per_stream_s"] = cpu / per_s
    out["still_paced_decode_alone_cpu_per_stream_s"] = med["grab_paced"] / per_s
    out["still_paced_pipeline_cpu_per_stream_s"] = med["pipe_paced"] / per_s
    out["still_ratio_vs_decode"], out["still_ratio_vs_decode_range"] = r_grab[0], r_grab[1:]
    out["still_ratio_vs_read"] = r_read[0]
    out["still_paced_ratio_vs_paced_decode"], out["still_paced_ratio_range"] = r_paced[0], r_paced[1:]
    out["still_opencv_decoder_ratio_vs_decode"] = cpu_cv / dec_cpu
    out["still_frames_analysed"] = rt_p.frames_analysed
    out["still_frames_gated"] = rt_p.frames_gated
    out["still_cpu_s_runs"] = runs
    out["still_wall_s_runs"] = walls
    out["still_frames"] = frames
    r_wall = [p / a for p, a in zip(walls["pipe"], walls["pyav"])] if len(walls["pipe"]) == repeats else []
    out["still_wall_ratio_vs_pyav"] = float(np.median(r_wall)) if r_wall else float("nan")
    rng = lambda r: f"{r[0]:.2f}x (range {r[1]:.2f}-{r[2]:.2f})"  # noqa: E731
    ms = lambda k: f"{med[k] / per_s * 1000:.1f} ms"  # noqa: E731
    met = lambda r: "met" if r[0] <= 1.15 else "NOT met"  # noqa: E731
    print(f"[still 720p25, 5 fps analysis, smoke+dumping; CPU per stream-second, medians of {repeats} interleaved rounds, "
          f"ratios per round: median (range)] target: pipeline <= 1.15x decoding alone")
    print(f"  as fast as it decodes: pipeline {ms('pipe')}; vs OpenCV grab() every frame {ms('grab')}: {rng(r_grab)} "
          f"[{met(r_grab)}]; vs PyAV/FFmpeg decode alone (the pipeline's decoder settings) {ms('pyav')}: {rng(r_av)} "
          f"[{met(r_av)}]; vs OpenCV read() (decode + BGR) {ms('read')}: {r_read[0]:.2f}x")
    print(f"  paced like a live camera: pipeline {ms('pipe_paced')}; vs grab() {ms('grab_paced')}: {rng(r_paced)} "
          f"[{met(r_paced)}]; vs PyAV decode alone {ms('pyav_paced')}: {rng(r_av_paced)} [{met(r_av_paced)}]; "
          f"gate on {rt_p.frames_gated + rt_p.frames_analysed} frames, rules on {rt_p.frames_analysed} (the others never "
          f"converted to BGR)")
    print(f"  decoder='opencv' (BGR for every kept frame, one run): {cpu_cv / dec_cpu:.2f}x grab()")
    per_f = lambda k: f"{med[k] / frames * 1000:.2f}"  # noqa: E731
    print(f"  process CPU per decoded frame (ms): pipeline {per_f('pipe')} vs PyAV alone {per_f('pyav')} free-running, "
          f"{per_f('pipe_paced')} vs {per_f('pyav_paced')} paced"
          + (f"; wall-clock free-running (start to end of file, the box's other load included): pipeline "
             f"{np.median(walls['pipe']) * 1000:.0f} ms vs PyAV alone {np.median(walls['pyav']) * 1000:.0f} ms, "
             f"{np.median(r_wall):.2f}x (range {min(r_wall):.2f}-{max(r_wall):.2f})" if r_wall else ""))

    # keyframe-only vs full decode (measured in the rounds above)
    full_per_s, key_per_s = med["full"] / per_s, med["key"] / per_s
    gains = [f / k for f, k in zip(runs["full"], runs["key"])]
    cores = os.cpu_count() or 1
    out.update(full_cpu_per_stream_s=full_per_s, key_cpu_per_stream_s=key_per_s,
               keyframe_cameras_per_core_gain=float(np.median(gains)),
               keyframe_gain_range=(float(min(gains)), float(max(gains))),
               full_cameras_estimate=int(cores / full_per_s), keyframe_cameras_estimate=int(cores / key_per_s))
    print(f"[720p25, GOP 2 s, medians of {repeats} interleaved runs, warm-up excluded] full decode + 5 fps analysis: "
          f"{full_per_s * 1000:.0f} ms CPU per stream-s ({1 / full_per_s:.1f} cameras/core); keyframes only: "
          f"{key_per_s * 1000:.1f} ms ({1 / key_per_s:.0f} cameras/core, {rt_k.frames_analysed + rt_k.frames_gated} "
          f"keyframes through the gate) -> {np.median(gains):.1f}x more cameras per core (range {min(gains):.1f}-"
          f"{max(gains):.1f}; target >= 10x); estimate for this {cores}-core box from one camera's cost: "
          f"{int(cores / full_per_s)} cameras at 5 fps full decode, {int(cores / key_per_s)} at keyframe rate "
          f"(measured with many cameras: --max-cameras)")

    # busy: something moves all the time, the e-bike model runs on every analysed frame
    model = testkit.colour_blob_yolov8(size=320)
    mp = tmp / "blobs.onnx"
    mp.write_bytes(model)
    rules = street + [{"name": "ebike", "kind": "ebike", "model": "blobs"}]
    zones = [{"name": "lift", "kind": "elevator", "polygon": testkit.ELEVATOR}]
    dec_cpu_b, frames_b = _decode_alone(busy)
    cpu_b, rt_b = _runtime_on_file(busy, tmp, rules, [{"name": "blobs", "path": str(mp), "intra_op_threads": 1}],
                                   zones=zones)
    nf = max(1, rt_b.frames_analysed)
    split = {"decode (all frames, per analysed frame)": dec_cpu_b / nf * 1000,
             **{k: v / nf * 1000 for k, v in rt_b.stage_s.items()}}
    out["busy_ms_per_analysed_frame"] = split
    out["busy_ratio_vs_decode"] = cpu_b / dec_cpu_b
    print("[busy 720p25, model every frame] per analysed frame (ms, wall time of each stage): "
          + ", ".join(f"{k} {v:.1f}" for k, v in split.items())
          + f"; model ran on {rt_b.model_frames['blobs']} of {rt_b.frames_analysed} frames; "
            f"whole pipeline {cpu_b / dec_cpu_b:.2f}x decode alone")
    return still


def bench_clips(tmp: Path, seconds: float, out: dict, repeats: int = 5, still: Path | None = None) -> None:
    """CPU of the still 720p25 scene with ``[video.clips]`` on vs off, full decode and keyframes
    only, interleaved rounds (as fast as it decodes: the cost per packet, not per wall second), and the packet ring's peak
    bytes in one run paced like a live camera per mode."""
    from gridwatch.servers.rtsp import encode_h264

    if still is None:
        still = encode_h264(_frames_720p(int(25 * seconds), "still"), tmp / "still720.mp4", fps=25, keyint=50)
        _runtime_on_file(still, tmp, [{"name": "dumping", "kind": "dumping"}], [])  # warm-up, not counted
    street = [{"name": "smoke", "kind": "smoke"}, {"name": "dumping", "kind": "dumping"}]
    runs: dict[str, list[float]] = {k: [] for k in ("all_off", "all_on", "key_off", "key_on")}
    peak = {}
    for _ in range(repeats):
        for mode, key in (("all", "all"), ("keyframes", "key")):
            runs[f"{key}_off"].append(_runtime_on_file(still, tmp, street, [], decode=mode, clips=False)[0])
            runs[f"{key}_on"].append(_runtime_on_file(still, tmp, street, [], decode=mode, clips=True)[0])
    for mode in ("all", "keyframes"):  # the ring's memory, paced like a live camera (its bound is in seconds)
        peak[mode] = _runtime_on_file(still, tmp, street, [], decode=mode, realtime=True)[1].clips.rings["bench"].peak_bytes
    per_s = seconds
    res = {}
    for key in ("all", "key"):
        r = [on / off for on, off in zip(runs[f"{key}_on"], runs[f"{key}_off"])]
        res[key] = (float(np.median(r)), float(min(r)), float(max(r)))
        out[f"clips_{key}_ratio_on_vs_off"], out[f"clips_{key}_ratio_range"] = res[key][0], res[key][1:]
        out[f"clips_{key}_cpu_per_stream_s"] = {k: float(np.median(runs[f"{key}_{k}"])) / per_s for k in ("off", "on")}
    out["clips_ring_peak_bytes"] = peak
    # the ring's own cost per packet: demuxing the file with and without pushing each packet
    import av

    from gridwatch.ingest.video import PacketRing

    def demux(ring) -> tuple[float, int]:
        with av.open(str(still)) as c:
            c0, n = _cpu(), 0
            for pk in c.demux(video=0):
                if pk.size:
                    n += 1
                    if ring is not None:
                        ring.push(pk, pk.pts, pk.dts, pk.is_keyframe, pk.size)
            return _cpu() - c0, n
    pairs = []
    for _ in range(repeats * 4):
        off, n = demux(None)
        on, _ = demux(PacketRing(6.0, 2 << 20))
        pairs.append((on - off) / n)
    push_us = float(np.median(pairs)) * 1e6
    out["clips_push_us_per_packet"] = push_us
    out["clips_cpu_s_runs"] = runs
    ms = lambda k: f"{np.median(runs[k]) / per_s * 1000:.1f} ms"  # noqa: E731
    print(f"[evidence clips: still 720p25, 5 fps analysis, smoke+dumping, as fast as it decodes; CPU per stream-second, "
          f"medians of {repeats} interleaved rounds, ratios per round: median (range)]")
    print(f"  full decode: clips off {ms('all_off')}, on {ms('all_on')}: {res['all'][0]:.3f}x "
          f"(range {res['all'][1]:.3f}-{res['all'][2]:.3f}); ring peak (paced) {peak['all'] / 1024:.0f} KiB")
    print(f"  keyframes only: clips off {ms('key_off')}, on {ms('key_on')}: {res['key'][0]:.3f}x "
          f"(range {res['key'][1]:.3f}-{res['key'][2]:.3f}); ring peak (paced) {peak['keyframes'] / 1024:.0f} KiB")
    print(f"  the ring alone: {push_us:.2f} us CPU per packet (demux with and without it, median of {len(pairs)} "
          f"pairs): {push_us * 25 / 1000:.3f} ms per second of a 25 fps camera, {push_us * 0.5 / 1000:.4f} ms for "
          f"its keyframes (GOP 2 s)")


def _multi_camera_run(clip: Path, tmp: Path, n: int, decode: str, window_s: float, warmup_s: float | None = None,
                      fps: float = 5.0, lag_limit_s: float = 1.0, capture_nice: int | None = None,
                      start_rate: float | None = None, clips: bool | None = None) -> dict:
    """``n`` file cameras looping ``clip``, paced like live cameras, through one :class:`VideoRuntime`
    (smoke + dumping, ``fps`` analysis): do they all keep up for ``window_s`` after ``warmup_s``?

    The runtime starts the cameras at ``video.start_rate`` a second (``start_rate``: the config's
    default unless given; 0 = all at once), and each camera's start is also delayed by its share
    of one GOP (2 s), as independent cameras are not in lockstep. The warm-up (default: until the
    last camera has started, plus 10 s: the 2 s of GOP spread, one ``still_recheck_s`` of 5 s and
    a GOP to spare) keeps the start out of the window; the lag during the warm-up is reported
    beside (``startup_lag_p95_s``).
    Per camera, the frames analysed in the window (taken by the analysis thread, or stopped as
    still by the motion gate on the capture thread) are compared with what the stream offers
    (``fps``, or one keyframe per 2 s), less one frame for the window's edges; lag is the time from
    when the frame was due by the stream's clock (pts, against the camera's first frame of the
    loop) to its analysis (or the gate's verdict): decode falling behind plus the frame's wait in
    the slot."""
    from gridwatch.config import parse
    from gridwatch.streams.video import VideoRuntime

    rate = fps if decode == "all" else 0.5  # 720p25 with a 2 s GOP
    street = [{"name": "smoke", "kind": "smoke"}, {"name": "dumping", "kind": "dumping"}]
    cams = [{"name": f"cam{i}", "url": str(clip), "loop": True, "realtime": True, "analysis_fps": fps,
             "decode": decode, "rules": ["smoke", "dumping"]} for i in range(n)]
    video: dict = {"rules": street}
    if capture_nice is not None:
        video["capture_nice"] = capture_nice
    if start_rate is not None:
        video["start_rate"] = start_rate
    if clips is not None:
        video["clips"] = {"enabled": clips}
    cfg = parse({"site": {"name": "bench", "data_dir": str(tmp)}, "video": video, "cameras": cams}, base_dir=tmp)
    rt = VideoRuntime(cfg)
    for i, name in enumerate(rt.collector.cameras):  # and spread over one GOP
        rt.collector.start_offsets[name] = 2.0 * i / n
    starting_s = n / cfg.video.start_rate if cfg.video.start_rate > 0 else 0.0
    if warmup_s is None:
        warmup_s = starting_s + 10.0
    base: dict[str, float] = {}  # camera -> (ts - pts) of its loop's first frame
    last_pts: dict[str, float] = {}
    lags: list[float] = []
    rule_lags: list[float] = []  # of the frames handed to the analysis thread
    startup_lags: list[float] = []  # of all frames seen during the warm-up
    measuring, measured = threading.Event(), threading.Event()
    analyse = rt.analyse

    def seen(f, now_ms: float, into: list[list[float]]) -> None:
        """A frame analysed (or stopped by the gate) at ``now_ms``: its lag, while measuring."""
        if f.pts_ms < last_pts.get(f.camera, float("inf")) or f.camera not in base:
            base[f.camera] = f.ts_ms - f.pts_ms  # a new loop: the capture thread reset its clock
        last_pts[f.camera] = f.pts_ms
        lag = (now_ms - (base[f.camera] + f.pts_ms)) / 1000
        if measuring.is_set():
            for out in into:
                out.append(lag)
        elif not measured.is_set():
            startup_lags.append(lag)

    def timed(frames):
        now = time.time() * 1000
        for f in frames:
            seen(f, now, [lags, rule_lags])
        return analyse(frames)
    rt.analyse = timed
    for cam in rt.collector.cameras.values():  # frames the motion gate stops on the capture thread
        def gated(f, gate=cam.prepare):
            done = gate(f)
            if done:
                seen(f, time.time() * 1000, [lags])
            return done
        cam.prepare = gated
    rss_start_mb = _rss_mb()
    w0 = time.monotonic()
    rt.start()
    ring_sums: list[float] = []  # the rings' bytes summed over the cameras, once a second in the window
    rss_max_mb = 0.0
    try:
        time.sleep(warmup_s)
        counters = rt.collector.counters()
        before = {k: c["analysed"] + c["gated"] for k, c in counters.items()}
        dec_before = {k: c["decoded"] for k, c in counters.items()}
        measuring.set()
        c1, t1 = _cpu(), time.monotonic()
        while (left := t1 + window_s - time.monotonic()) > 0:  # sampled once a second, as the runtime exports
            time.sleep(min(1.0, left))
            rss_max_mb = max(rss_max_mb, _rss_mb())
            if clips is not None:  # clip-memory runs only: the max-cameras runs measure CPU in this window
                ring_sums.append(sum(v.get("clip_ring_bytes", 0.0) for v in rt.counters.snapshot().values()))
        measured.set()
        measuring.clear()
        after = rt.collector.counters()
        window, cpu = time.monotonic() - t1, _cpu() - c1
        rss_mb = _rss_mb()
        snap = rt.counters.snapshot()
        ring_peaks = [v["clip_ring_peak_bytes"] for k, v in snap.items()
                      if k.startswith("camera/") and "clip_ring_peak_bytes" in v]
        ring_bytes = [v["clip_ring_bytes"] for k, v in snap.items() if k.startswith("camera/") and "clip_ring_bytes" in v]
        ring_dropped = sum(v.get("clip_ring_dropped", 0.0) for k, v in snap.items() if k.startswith("camera/"))
        states = [st for st, _ in rt.status.values()]
    finally:
        rt.stop()
    expected = rate * window
    got = [after[k]["analysed"] + after[k]["gated"] - before[k] for k in before]  # through the gate at least
    decoded = [after[k]["decoded"] - dec_before[k] for k in before]
    worst = min(got) if got else 0
    lag95 = float(np.percentile(lags, 95)) if lags else float("inf")
    stale = sum(c["errors"].get("stale", 0) + c["errors"].get("hung", 0) for c in after.values())
    ok = (rt.error is None and worst >= 0.95 * expected - 1 and all(st == "online" for st in states)
          and not stale and lag95 <= lag_limit_s)
    return {"n": n, "ok": bool(ok), "expected": expected, "min_frames": worst, "median_frames": float(np.median(got)),
            "lag_p95_s": lag95, "lag_max_s": float(max(lags)) if lags else float("inf"),
            "analysis_thread_frames": len(rule_lags),
            "analysis_thread_lag_p95_s": float(np.percentile(rule_lags, 95)) if rule_lags else float("nan"),
            "startup_lag_p95_s": float(np.percentile(startup_lags, 95)) if startup_lags else float("nan"),
            "warmup_s": warmup_s, "start_rate": rt.cfg.video.start_rate, "cpu_cores_busy": cpu / window,
            "rss_mb": rss_mb, "rss_max_mb": rss_max_mb, "rss_start_mb": rss_start_mb, "stale": stale,
            "clip_ring_cameras": len(ring_peaks), "clip_ring_bytes_sum": float(sum(ring_bytes)),
            "clip_ring_bytes_sum_max": max(ring_sums, default=0.0),
            "clip_ring_peak_bytes_sum": float(sum(ring_peaks)),
            "clip_ring_peak_bytes_max": float(max(ring_peaks, default=0.0)), "clip_ring_dropped": ring_dropped, "dropped": sum(c["dropped"] for c in after.values()),
            "decoded_per_s": float(np.median(decoded)) / window,
            "wall_s": time.monotonic() - w0}


def bench_rtsp(tmp: Path, out: dict, cameras: int = 20, full_cameras: int = 4, window_s: float = 15.0,
               rounds: int = 3) -> None:
    """Keyframes vs full decode for RTSP cameras (the generated 720p25 still clip, 2 s GOP, served
    by the GStreamer RTSP server, looping), CPU of this process per camera-second: keyframes
    through gridwatch's RTSP client (``rtsp_client = "gridwatch"``) and through FFmpeg's, and
    full decode at 5 fps. The server runs in its own process (its CPU is not counted; it shares
    the cores). Interleaved rounds, medians."""
    from gridwatch.config import parse
    from gridwatch.servers.rtsp import FileStream, RtspServer, encode_h264
    from gridwatch.streams.video import VideoRuntime

    clip = encode_h264(_frames_720p(250, "still"), tmp / "rtsp720.mp4", fps=25, keyint=50)
    street = [{"name": "smoke", "kind": "smoke"}, {"name": "dumping", "kind": "dumping"}]

    def run(urls: list[str], decode: str, client: str) -> float:
        cams = [{"name": f"r{i}", "url": u, "analysis_fps": 5, "decode": decode, "rtsp_client": client,
                 "rules": ["smoke", "dumping"], "open_timeout_s": 10, "read_timeout_s": 10} for i, u in enumerate(urls)]
        cfg = parse({"site": {"name": "bench", "data_dir": str(tmp)}, "video": {"rules": street}, "cameras": cams},
                    base_dir=tmp)
        rt = VideoRuntime(cfg)
        rt.start()
        try:
            time.sleep(5.0)  # connect, first frames, backgrounds
            c0, t0 = _cpu(), time.monotonic()
            time.sleep(window_s)
            cpu, wall = _cpu() - c0, time.monotonic() - t0
            offline = [n for n, (st, _) in rt.status.items() if st != "online"]
        finally:
            rt.stop()
        if offline:
            raise RuntimeError(f"RTSP bench: cameras not online: {offline}")
        return cpu / wall / len(urls) * 1000

    runs: dict[str, list[float]] = {"gridwatch": [], "ffmpeg": [], "full": []}
    with RtspServer([FileStream(f"r{i}", clip, loop=True) for i in range(cameras)]) as srv:
        urls = [srv.url(f"r{i}") for i in range(cameras)]
        for _ in range(rounds):
            runs["gridwatch"].append(run(urls, "keyframes", "gridwatch"))
            runs["ffmpeg"].append(run(urls, "keyframes", "ffmpeg"))
            runs["full"].append(run(urls[:full_cameras], "all", "gridwatch"))
    med = {k: float(np.median(v)) for k, v in runs.items()}
    ratio = [f / g for f, g in zip(runs["full"], runs["gridwatch"])]
    out["rtsp_ms_per_camera_s"] = med
    out["rtsp_keyframes_vs_full"] = float(np.median(ratio))
    print(f"[RTSP cameras, 720p25 GOP 2 s, served by GStreamer on this box, CPU of this process per camera-second, "
          f"medians of {rounds} interleaved rounds] keyframes through gridwatch's RTSP client {med['gridwatch']:.2f} ms "
          f"({cameras} cameras), through FFmpeg's {med['ffmpeg']:.2f} ms; full decode at 5 fps {med['full']:.1f} ms "
          f"({full_cameras} cameras) -> keyframes {np.median(ratio):.1f}x more cameras per core with gridwatch's client "
          f"(rounds {', '.join(f'{r:.1f}' for r in ratio)}; target >= 10x), "
          f"{med['full'] / med['ffmpeg']:.1f}x with FFmpeg's", flush=True)


def bench_max_cameras(tmp: Path, out: dict, clip: Path | None, window_s: float = 20.0, steps: int = 6,
                      budget_s: float = 600.0, modes: tuple[str, ...] = ("all", "keyframes"),
                      capture_nice: int | None = None, start: int | None = None, warmup_s: float | None = None,
                      start_rate: float | None = None) -> None:
    """The most cameras this box sustains, by real multi-camera runs: grow from an estimate until
    a run fails, then bisect, at most ``steps`` runs and ``budget_s`` seconds per mode."""
    from gridwatch.servers.rtsp import encode_h264

    if clip is None:
        clip = encode_h264(_frames_720p(250, "still"), tmp / "still720.mp4", fps=25, keyint=50)
    cores = os.cpu_count() or 1
    for mode in modes:
        est = out.get("full_cameras_estimate" if mode == "all" else "keyframe_cameras_estimate") or \
            {"all": 8 * cores, "keyframes": 100 * cores}[mode]
        lo, hi, n, t0, runs = 0, None, start or max(1, int(est * 0.8)), time.monotonic(), []
        for _ in range(steps):
            if time.monotonic() - t0 > budget_s:
                break
            r = _multi_camera_run(clip, tmp, n, mode, window_s, warmup_s=warmup_s, capture_nice=capture_nice,
                                  start_rate=start_rate)
            runs.append(r)
            print(f"  [{mode}] {n} cameras: {'keeps up' if r['ok'] else 'falls behind'} (frames per camera in "
                  f"{window_s:.0f} s: min {r['min_frames']}, median {r['median_frames']:.0f}, expected {r['expected']:.1f}; "
                  f"lag p95 {r['lag_p95_s']:.2f} s, max {r['lag_max_s']:.2f} s; {r['analysis_thread_frames']} "
                  f"frames past the gate to the rules, their lag p95 {r['analysis_thread_lag_p95_s']:.2f} s; "
                  f"started at {r['start_rate']:g}/s, lag p95 during the {r['warmup_s']:.0f} s warm-up "
                  f"{r['startup_lag_p95_s']:.2f} s; "
                  f"{r['cpu_cores_busy']:.2f} cores busy, resident memory {r['rss_mb']:.0f} MB; "
                  f"decoded {r['decoded_per_s']:.1f} fps per camera (median), {r['dropped']} kept frames dropped "
                  f"unanalysed in all)",
                  flush=True)
            if r["ok"]:
                lo = max(lo, n)
            else:
                hi = n if hi is None else min(hi, n)
            if hi is None:
                n = int(n * 1.5) + 1
            elif hi - lo <= max(1, lo // 20):
                break
            else:
                n = (lo + hi) // 2 if lo else max(1, hi // 2)
        key = "max_cameras_full_5fps" if mode == "all" else "max_cameras_keyframes"
        out[key] = lo
        out[key + "_runs"] = runs
        bound = f"fails at {hi}" if hi is not None else "no failing count found within the step budget"
        print(f"[max cameras, {mode} decode, 720p25 GOP 2 s, paced, looping, smoke+dumping at 5 fps] "
              f"{lo} cameras keep up on this {cores}-core box ({bound}; {len(runs)} runs of {window_s:.0f} s)", flush=True)


def _clip_memory_child(clip: str, tmp: str, n: int, decode: str, clips: bool, window_s: float,
                       warmup_s: float | None) -> dict:
    """One multi-camera run in a process of its own (a fresh process: resident memory not left over
    from earlier runs)."""
    return _multi_camera_run(Path(clip), Path(tmp), n, decode, window_s, warmup_s=warmup_s, clips=clips)


def bench_clip_memory(tmp: Path, out: dict, clip: Path | None, n_full: int, n_key: int, window_s: float = 20.0,
                      warmup_s: float | None = None, rounds: int = 1) -> None:
    """The packet rings' memory with many cameras: ``n_full`` cameras decoding every frame (5 fps
    analysis), then ``n_key`` keyframe-only ones, each run a :func:`_multi_camera_run` (file cameras
    looping the still 720p25 clip, GOP 2 s, paced like live cameras) in a fresh process, clips off
    then on (``rounds`` times). Reported: the sum over the cameras of their ``clip_ring_bytes``
    (at the end of the window, and its largest once-a-second sample) and ``clip_ring_peak_bytes``
    gauges, per camera, and the process's resident memory at the end of the window, clips on vs off."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    from gridwatch.servers.rtsp import encode_h264

    if clip is None:
        clip = encode_h264(_frames_720p(250, "still"), tmp / "still720.mp4", fps=25, keyint=50)
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(1, mp_context=ctx) as ex:  # warm-up, not counted: compiled kernels cached, FFmpeg opened
        ex.submit(_clip_memory_child, str(clip), str(tmp), 1, "all", True, 2.0, 2.0).result()
    res: dict = {}
    for mode, n in (("all", n_full), ("keyframes", n_key)):
        if n <= 0:
            continue
        for r in range(rounds):
            for clips in (False, True):
                with ProcessPoolExecutor(1, mp_context=ctx) as ex:
                    run = ex.submit(_clip_memory_child, str(clip), str(tmp), n, mode, clips, window_s,
                                    warmup_s).result()
                res.setdefault(f"{mode}_{'on' if clips else 'off'}", []).append(run)
                per = run["clip_ring_peak_bytes_sum"] / n / 1024
                print(f"  [clip memory, {mode}, {n} cameras, clips {'on' if clips else 'off'}, round {r + 1}] "
                      f"{'keeps up' if run['ok'] else 'FALLS BEHIND'} ({run['cpu_cores_busy']:.2f} cores busy, "
                      f"frames per camera min {run['min_frames']} of {run['expected']:.1f}); rings: "
                      f"{run['clip_ring_cameras']} cameras, now {run['clip_ring_bytes_sum'] / 2**20:.1f} MiB in all "
                      f"(largest sample {run['clip_ring_bytes_sum_max'] / 2**20:.1f} MiB), peaks summed "
                      f"{run['clip_ring_peak_bytes_sum'] / 2**20:.1f} MiB ({per:.0f} KiB per camera, largest "
                      f"{run['clip_ring_peak_bytes_max'] / 1024:.0f} KiB), {run['clip_ring_dropped']:.0f} packets "
                      f"dropped for the bound; resident memory {run['rss_start_mb']:.0f} MB before the cameras "
                      f"started, {run['rss_mb']:.0f} MB at the end of the window (largest sample "
                      f"{run['rss_max_mb']:.0f} MB)", flush=True)
    out["clip_memory_runs"] = res
    print(f"[clip memory: still 720p25 GOP 2 s, file cameras looping, paced, smoke+dumping at 5 fps, one process "
          f"per run, {window_s:.0f} s window; medians of {rounds} round(s)]")
    for mode in ("all", "keyframes"):
        if f"{mode}_on" not in res:
            continue
        on, off = res[f"{mode}_on"], res[f"{mode}_off"]
        n = on[0]["n"]
        med = lambda rs, k: float(np.median([x[k] for x in rs]))  # noqa: E731
        peak, now, most = med(on, "clip_ring_peak_bytes_sum"), med(on, "clip_ring_bytes_sum"), \
            med(on, "clip_ring_bytes_sum_max")
        rss_on, rss_off = med(on, "rss_mb"), med(off, "rss_mb")
        out[f"clip_memory_{mode}"] = {"cameras": n, "ring_peak_bytes_sum": peak, "ring_bytes_sum": now,
                                      "ring_bytes_sum_max": most,
                                      "ring_peak_bytes_per_camera": peak / n, "rss_mb_on": rss_on,
                                      "rss_mb_off": rss_off, "rss_mb_on_minus_off": rss_on - rss_off,
                                      "all_kept_up": all(x["ok"] for x in on + off)}
        print(f"  {'full decode' if mode == 'all' else 'keyframes only'}, {n} cameras: rings {now / 2**20:.1f} MiB "
              f"at the end of the window (largest once-a-second sample {most / 2**20:.1f} MiB), peaks summed {peak / 2**20:.1f} MiB ({peak / n / 1024:.0f} KiB per camera); "
              f"resident memory clips on {rss_on:.0f} MB vs off {rss_off:.0f} MB: {rss_on - rss_off:+.0f} MB "
              f"({(rss_on - rss_off) / n * 1024:+.0f} KiB per camera)", flush=True)


def bench_detector(out: dict, seconds: float) -> None:
    import onnxruntime as ort

    from gridwatch.detectors.onnx_decoders import letterbox, to_blob
    from gridwatch.detectors.onnx_session import OnnxDetector

    model = testkit.conv_yolov8(size=320)
    threads = min(2, os.cpu_count() or 1)
    det = OnnxDetector(model, "yolov8", intra_op_threads=threads, max_batch=8)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
    bare = ort.InferenceSession(model, sess_options=opts, providers=["CPUExecutionProvider"])
    frames = [f for f in testscenes.moving_blob_scene(4, 640, 360)]
    blob = to_blob([letterbox(f, (320, 320))[0] for f in frames])

    def rate(fn, images: int) -> float:
        fn()
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            fn()
            n += images
        return n / (time.perf_counter() - t0)

    r_bare = r_det = r_single = 0.0
    for _ in range(2):  # interleaved, best of two: other load on the box hits both alike
        r_bare = max(r_bare, rate(lambda: bare.run(None, {"images": blob}), 4))
        r_det = max(r_det, rate(lambda: det.detect(frames), 4))
        r_single = max(r_single, rate(lambda: [det.detect([f]) for f in frames], 4))
    out.update(detector_fps=r_det, bare_session_fps=r_bare, detector_vs_bare=r_det / r_bare,
               batching_gain=r_det / r_single)
    print(f"[detector, random-weight YOLOv8-head CNN 320x320, batch 4, {threads} threads] OnnxDetector.detect "
          f"{r_det:.1f} img/s vs bare session.run {r_bare:.1f} img/s -> {r_det / r_bare:.2f}x (target >= 0.9x); "
          f"4 cameras in one batch vs one run each: {r_det / r_single:.2f}x")


def bench_latency(tmp: Path, out: dict, cameras: int = 3) -> None:
    from gridwatch.config import parse
    from gridwatch.servers.mosquitto import MosquittoServer
    from gridwatch.servers.rtsp import FileStream, RtspServer, encode_h264, gstreamer_missing
    from gridwatch.streams.mqtt_alerts import MqttAlertPublisher
    from gridwatch.streams.video import VideoRuntime
    from gridwatch.observability import Counters
    import orjson
    import paho.mqtt.client as mqtt

    why = gstreamer_missing()
    if why:
        print(f"[latency] skipped: {why}")
        return
    clip = encode_h264(testkit.vehicle_scene(150, "e-bike"), tmp / "ebike.mp4", fps=15)
    mp = tmp / "blobs.onnx"
    mp.write_bytes(testkit.colour_blob_yolov8())
    try:
        mq = MosquittoServer()
        mq.start()
    except Exception as e:  # noqa: BLE001
        print(f"[latency] skipped: mosquitto: {e}")
        return
    received: list[tuple[float, dict]] = []
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="lat", protocol=mqtt.MQTTv5)
    subscribed = threading.Event()
    c.on_connect = lambda cl, u, f, rc, p: cl.subscribe("gridwatch/warnings/#", qos=1)
    c.on_subscribe = lambda *a: subscribed.set()
    c.on_message = lambda cl, u, m: received.append((time.time() * 1000, orjson.loads(m.payload)))
    c.connect("127.0.0.1", mq.port)
    c.loop_start()
    subscribed.wait(10)
    try:
        with RtspServer([FileStream(f"lift{i}", clip, loop=False) for i in range(cameras)]) as srv:
            cfg = parse({"site": {"name": "lat", "data_dir": str(tmp)}, "mqtt": {"host": "127.0.0.1", "port": mq.port},
                         "video": {"models": [{"name": "blobs", "path": str(mp)}],
                                   "rules": [{"name": "ebike", "kind": "ebike", "model": "blobs"}]},
                         "cameras": [{"name": f"lift{i}", "url": srv.url(f"lift{i}"), "open_timeout_s": 8,
                                      "read_timeout_s": 8, "zones": [{"name": "lift", "kind": "elevator",
                                                                      "polygon": testkit.ELEVATOR}]}
                                     for i in range(cameras)]}, base_dir=tmp)
            counters = Counters()
            pub = MqttAlertPublisher(cfg.mqtt, cfg.alerts_mqtt, "lat-alerts", "lat", counters)
            pub.start()
            with VideoRuntime(cfg, publisher=pub, counters=counters):
                deadline = time.time() + 40
                while time.time() < deadline and len(received) < cameras:
                    time.sleep(0.1)
            pub.stop()
    finally:
        c.loop_stop()
        mq.stop()
    lat = [recv - p["warning"]["evidence"]["frame_ts"] for recv, p in received if p["event"] == "raised"]
    if not lat:
        print("[latency] no warning arrived")
        return
    out["latency_ms"] = {"median": float(np.median(lat)), "max": float(np.max(lat)), "n": len(lat)}
    print(f"[latency] frame satisfying the rule -> warning on MQTT: median {np.median(lat):.0f} ms, "
          f"max {np.max(lat):.0f} ms over {len(lat)} cameras (target <= 1000 ms)")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="gridwatch bench video")
    ap.add_argument("--seconds", type=float, default=10.0, help="length of the generated 720p25 clips")
    ap.add_argument("--skip", nargs="*", default=[], choices=["decode", "clips", "rtsp", "detector", "latency"])
    ap.add_argument("--repeats", type=int, default=5, help="interleaved rounds of the still-scene and keyframe "
                    "measurements (medians reported)")
    ap.add_argument("--max-cameras", action="store_true", help="also find the most cameras this box sustains "
                    "(full decode at 5 fps, keyframes only) with real multi-camera runs (a few minutes)")
    ap.add_argument("--max-cameras-window", type=float, default=20.0, help="seconds measured per multi-camera run")
    ap.add_argument("--max-cameras-warmup", type=float, help="seconds each multi-camera run warms up before its "
                    "window (default: until the last camera has started, plus 10 s; the warm-up's lag is reported)")
    ap.add_argument("--start-rate", type=float, help="video.start_rate for the multi-camera runs (cameras started "
                    "per second; default: the config default; 0 = all at once)")
    ap.add_argument("--max-cameras-steps", type=int, default=6, help="at most this many runs per decode mode")
    ap.add_argument("--max-cameras-start", type=int, help="first camera count to try (default: 0.8 x the single-camera "
                    "estimate)")
    ap.add_argument("--max-cameras-modes", nargs="+", default=["all", "keyframes"], choices=["all", "keyframes"])
    ap.add_argument("--capture-nice", type=int, help="video.capture_nice for the multi-camera runs (default: the "
                    "config default; 0 = capture threads at the analysis thread's priority, the old behaviour)")
    ap.add_argument("--rtsp-rounds", type=int, default=3, help="interleaved rounds of the RTSP comparison "
                    "(each ~1 min: keyframes through both clients and full decode)")
    ap.add_argument("--clip-memory", nargs=2, type=int, metavar=("N_FULL", "N_KEYFRAMES"), help="also measure the "
                    "clip rings' memory with N_FULL full-decode cameras and then N_KEYFRAMES keyframe-only ones (each "
                    "run in a process of its own, clips off then on; 0 skips a mode)")
    ap.add_argument("--clip-memory-window", type=float, default=20.0, help="seconds measured per clip-memory run")
    ap.add_argument("--clip-memory-warmup", type=float, help="seconds each clip-memory run warms up before its window "
                    "(default: until the last camera has started, plus 10 s)")
    ap.add_argument("--clip-memory-rounds", type=int, default=1, help="clips off/on rounds per mode (medians)")
    ap.add_argument("--json", help="also write the figures here")
    a = ap.parse_args(argv or [])
    out: dict = {"cpu_cores": os.cpu_count()}
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        still = None
        if "decode" not in a.skip:
            still = bench_decode_and_analysis(tmp, a.seconds, out, a.repeats)
        if "clips" not in a.skip:
            bench_clips(tmp, a.seconds, out, a.repeats, still)
        if "rtsp" not in a.skip:
            bench_rtsp(tmp, out, rounds=a.rtsp_rounds)
        if a.clip_memory:
            bench_clip_memory(tmp, out, still, *a.clip_memory, window_s=a.clip_memory_window,
                              warmup_s=a.clip_memory_warmup, rounds=a.clip_memory_rounds)
        if a.max_cameras:
            bench_max_cameras(tmp, out, still, a.max_cameras_window, a.max_cameras_steps,
                              modes=tuple(a.max_cameras_modes), capture_nice=a.capture_nice, start=a.max_cameras_start,
                              warmup_s=a.max_cameras_warmup, start_rate=a.start_rate)
        if "detector" not in a.skip:
            bench_detector(out, 2.0)
        if "latency" not in a.skip:
            bench_latency(tmp, out)
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=2, default=float))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
