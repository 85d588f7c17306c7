"""``gridwatch bench video``: the video path against baselines measured in the same run, as ratios.

1. **Still scene**: CPU per camera (decode + analysis at 5 fps: motion gate, smoke, dumping)
   vs OpenCV decoding the same stream alone (every frame ``grab``-bed). Target ≤ 1.15×. Also
   both paced like a live camera, and the pipeline with ``decoder="opencv"`` (BGR for every kept frame).
2. **Busy scene**: the split decode / gate / model / detectors per analysed frame.
3. **Keyframe-only vs full decode** for a 720p25 stream with a 2 s GOP: cameras per core in each
   mode (target ≥ 10× more with keyframes), and the most cameras this box would sustain
   (cores ÷ CPU per camera; an estimate from one camera's cost, not a many-camera run).
4. **Detector throughput**: ``OnnxDetector.detect`` (letterbox + run + decode) vs a bare
   onnxruntime session on the same model and batch (pre-made input, target ≥ 0.9×), and the gain
   from batching 4 cameras' frames into one run. The model is a random-weight CNN with a YOLOv8
   head (``testkit.conv_yolov8``): real compute, meaningless detections.
5. **Latency**: frame that satisfies the e-bike rule → warning received on a real Mosquitto,
   through a real RTSP server (skipped when GStreamer or Mosquitto is missing).

CPU is process CPU time (all threads), so it counts decoding threads too. Bounded to a few minutes.
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


def _runtime_on_file(path: Path, tmp: Path, rules: list[dict], models: list[dict], decode: str = "all",
                     fps: float = 5.0, zones=None, extra_models=None, realtime: bool = False, decoder: str = "pyav"):
    """Run the video runtime over one file camera, as fast as it decodes or (``realtime``) paced at
    its frame rate like a live camera; (cpu s, runtime)."""
    from gridwatch.config import parse
    from gridwatch.streams.video import VideoRuntime

    cam = {"name": "bench", "url": str(path), "realtime": realtime, "analysis_fps": fps, "decode": decode, "decoder": decoder,
           "rules": [r["name"] for r in rules], "zones": zones or []}
    cfg = parse({"site": {"name": "bench", "data_dir": str(tmp)}, "video": {"rules": rules, "models": models},
                 "cameras": [cam]}, base_dir=tmp)
    rt = VideoRuntime(cfg, models=extra_models)
    done = threading.Event()
    rt.on_status_cb = lambda ch: done.set() if ch.new.value == "offline" else None
    c0 = _cpu()
    rt.start()
    done.wait(180)
    time.sleep(0.3)  # the last frame's analysis
    cpu = _cpu() - c0
    rt.stop()
    return cpu, rt


def _frames_720p(n: int, kind: str):
    if kind == "still":
        return testscenes.empty_scene(n, 1280, 720, seed=7)
    return testkit.vehicle_scene(n, "e-bike", 1280, 720, seed=7, ride_frames=n)  # rides for the whole clip


def bench_decode_and_analysis(tmp: Path, seconds: float, out: dict) -> None:
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
    # Interleaved runs, best of each: other load on this shared box hits both alike.
    best = {k: float("inf") for k in ("grab", "read", "pipe", "grab_paced", "pipe_paced")}
    for _ in range(2):
        c, frames = _decode_alone(still)
        best["grab"] = min(best["grab"], c)
        best["read"] = min(best["read"], _decode_alone(still, convert=True)[0])
        c, rt = _runtime_on_file(still, tmp, street, [])
        best["pipe"] = min(best["pipe"], c)
        best["grab_paced"] = min(best["grab_paced"], _decode_alone(still, paced_fps=25)[0])
        c, rt_p = _runtime_on_file(still, tmp, street, [], realtime=True)
        best["pipe_paced"] = min(best["pipe_paced"], c)
    cpu_cv, rt_cv = _runtime_on_file(still, tmp, street, [], decoder="opencv")
    per_s = frames / 25
    dec_cpu, read_cpu, cpu = best["grab"], best["read"], best["pipe"]
    out["still_decode_alone_cpu_per_stream_s"] = dec_cpu / per_s
    out["still_read_alone_cpu_per_stream_s"] = read_cpu / per_s
    out["still_pipeline_cpu_per_stream_s"] = cpu / per_s
    out["still_ratio_vs_decode"] = cpu / dec_cpu
    out["still_ratio_vs_read"] = cpu / read_cpu
    out["still_paced_ratio_vs_paced_decode"] = best["pipe_paced"] / best["grab_paced"]
    out["still_opencv_decoder_ratio_vs_decode"] = cpu_cv / dec_cpu
    out["still_frames_analysed"] = rt_p.frames_analysed
    out["still_frames_gated"] = rt_p.frames_gated
    print(f"[still 720p25, 5 fps analysis, smoke+dumping] CPU per stream-second: OpenCV grab() every frame "
          f"{dec_cpu / per_s * 1000:.0f} ms, read() every frame {read_cpu / per_s * 1000:.0f} ms; pipeline "
          f"{cpu / per_s * 1000:.0f} ms -> {cpu / dec_cpu:.2f}x grab-only, {cpu / read_cpu:.2f}x read (target <= 1.15x); "
          f"paced like a live camera: grab() {best['grab_paced'] / per_s * 1000:.0f} ms, pipeline "
          f"{best['pipe_paced'] / per_s * 1000:.0f} ms -> {best['pipe_paced'] / best['grab_paced']:.2f}x, gate on "
          f"{rt_p.frames_gated + rt_p.frames_analysed} frames, rules on {rt_p.frames_analysed} (the others never converted "
          f"to BGR); decoder='opencv' (BGR for every kept frame): {cpu_cv / dec_cpu:.2f}x grab-only")

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
    print(f"[busy 720p25, model every frame] per analysed frame (ms, wall time of each stage): "
          + ", ".join(f"{k} {v:.1f}" for k, v in split.items())
          + f"; model ran on {rt_b.model_frames['blobs']} of {rt_b.frames_analysed} frames; "
            f"whole pipeline {cpu_b / dec_cpu_b:.2f}x decode alone")

    # keyframe-only vs full decode
    cpu_full, rt_f = _runtime_on_file(still, tmp, street, [], decode="all", fps=5)
    cpu_key, rt_k = _runtime_on_file(still, tmp, street, [], decode="keyframes", fps=5)
    full_per_s, key_per_s = cpu_full / per_s, cpu_key / per_s
    cores = os.cpu_count() or 1
    out.update(full_cpu_per_stream_s=full_per_s, key_cpu_per_stream_s=key_per_s,
               keyframe_cameras_per_core_gain=full_per_s / key_per_s,
               full_cameras_estimate=int(cores / full_per_s), keyframe_cameras_estimate=int(cores / key_per_s))
    print(f"[720p25, GOP 2 s] full decode + 5 fps analysis: {full_per_s * 1000:.0f} ms CPU per stream-s "
          f"({1 / full_per_s:.1f} cameras/core); keyframes only: {key_per_s * 1000:.1f} ms ({1 / key_per_s:.0f} cameras/core, "
          f"{rt_k.frames_analysed + rt_k.frames_gated} keyframes through the gate) -> {full_per_s / key_per_s:.1f}x more cameras per core (target >= 10x); "
          f"this {cores}-core box: about {int(cores / full_per_s)} cameras at 5 fps full decode, "
          f"{int(cores / key_per_s)} at keyframe rate (estimate = cores / CPU per camera)")


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
    ap.add_argument("--skip", nargs="*", default=[], choices=["decode", "detector", "latency"])
    ap.add_argument("--json", help="also write the figures here")
    a = ap.parse_args(argv or [])
    out: dict = {"cpu_cores": os.cpu_count()}
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        if "decode" not in a.skip:
            bench_decode_and_analysis(tmp, a.seconds, out)
        if "detector" not in a.skip:
            bench_detector(out, 2.0)
        if "latency" not in a.skip:
            bench_latency(tmp, out)
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=2, default=float))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
