"""Test helpers: run the edge runtime in a thread, collect MQTT messages, publish with mosquitto_pub."""
from __future__ import annotations

import asyncio
import queue
import subprocess
import threading
import time

import orjson
import paho.mqtt.client as mqtt

from gridwatch.config import parse
from gridwatch.streams.runtime import EdgeRuntime


class RuntimeThread:
    """An EdgeRuntime running on its own event loop in a thread (as `gridwatch run` would)."""

    def __init__(self, cfg_dict: dict, base_dir) -> None:
        self.cfg = parse(cfg_dict, base_dir=base_dir)
        self.events: list = []
        self.rt = EdgeRuntime(self.cfg, on_events=self.events.extend)
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._main, daemon=True)

    def _main(self) -> None:
        try:
            asyncio.run(self.rt.run(install_signals=False))
        except BaseException as e:  # surfaced by stop()
            self.error = e

    def __enter__(self) -> "RuntimeThread":
        self.thread.start()
        if self.rt.collector is not None and not self.rt.collector.connected.wait(15):
            raise AssertionError("gridwatch did not connect to the broker")
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def stop(self) -> None:
        if self.thread.is_alive():
            deadline = time.time() + 5
            while self.rt._loop is None and time.time() < deadline:
                time.sleep(0.01)
            self.rt.request_stop()
            self.thread.join(20)
        if self.error is not None:
            raise self.error


class Subscriber:
    """A paho client collecting every message on ``topic`` into a queue."""

    def __init__(self, host: str, port: int, topic: str, username: str | None = None, password: str | None = None,
                 ca_file=None, client_id: str = "test-sub") -> None:
        self.q: queue.Queue = queue.Queue()
        self.subscribed = threading.Event()
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
        if username:
            c.username_pw_set(username, password)
        if ca_file:
            c.tls_set(ca_certs=str(ca_file))
        c.on_connect = lambda cl, u, f, rc, p: cl.subscribe(topic, qos=1)
        c.on_subscribe = lambda *a: self.subscribed.set()
        c.on_message = lambda cl, u, m: self.q.put((m.topic, m.payload))
        c.connect(host, port)
        c.loop_start()
        self.client = c
        assert self.subscribed.wait(10), "subscriber did not get its SUBACK"

    def get(self, timeout: float = 30.0):
        topic, payload = self.q.get(timeout=timeout)
        return topic, orjson.loads(payload)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def mosquitto_pub(port: int, topic: str, lines: list[bytes | str], user: str | None = None, password: str | None = None,
                  qos: int = 1, extra: list[str] | None = None) -> subprocess.CompletedProcess:
    """Publish each line as one message with Mosquitto's own client (-l: one message per stdin line)."""
    cmd = ["mosquitto_pub", "-h", "127.0.0.1", "-p", str(port), "-t", topic, "-q", str(qos), "-l", "-V", "mqttv5"]
    if user:
        cmd += ["-u", user, "-P", password or ""]
    cmd += extra or []
    data = b"\n".join(x.encode() if isinstance(x, str) else x for x in lines) + b"\n"
    return subprocess.run(cmd, input=data, capture_output=True, timeout=60, check=True)


def wait_until(pred, timeout: float = 30.0, interval: float = 0.05, what: str = "condition"):
    deadline = time.time() + timeout
    while time.time() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def encode_frames(path, frames, codec: str, options: dict[str, str], fps: int):
    """BGR uint8 ``frames`` (320x240) encoded through PyAV with ``codec`` and its ``options`` into
    ``path``; returns ``path``."""
    import av

    with av.open(str(path), "w") as c:
        s = c.add_stream(codec, rate=fps)
        s.width, s.height, s.pix_fmt = 320, 240, "yuv420p"
        s.codec_context.options = options
        for f in frames:
            for pkt in s.encode(av.VideoFrame.from_ndarray(f, format="bgr24")):
                c.mux(pkt)
        for pkt in s.encode():
            c.mux(pkt)
    return path


def encode_dumping_scene(path, codec: str, options: dict[str, str], fps: int = 15):
    """The generated dumping scene (10 s at ``fps``, 320x240, a waste pile appears at 2 s and
    stays) encoded through PyAV with ``codec`` and its ``options``; returns ``path``."""
    from gridwatch.models import scenes

    return encode_frames(path, (f for f, _ in scenes.dumping_video(150, appear_at=30, seed=1)), codec, options, fps)


def encode_numbered_bframes(path, frames: int = 60, fps: int = 10, gop: int = 10):
    """An H.264 High-profile clip with B-frames (the decoder holds pictures back to reorder them),
    320x240, whose frame i is flat grey at level ``3 * i + 20`` (i < 75): a decoded picture tells
    which frame it is, give or take one or two (colour conversions round). A keyframe every ``gop``
    frames; returns ``path``."""
    import numpy as np

    options = {"bf": "3", "g": str(gop), "keyint_min": str(gop), "sc_threshold": "0", "profile": "high", "crf": "10"}
    return encode_frames(path, (np.full((240, 320, 3), 3 * i + 20, np.uint8) for i in range(frames)), "libx264",
                         options, fps)


def frame_number(img) -> int:
    """Which frame of :func:`encode_numbered_bframes` a decoded BGR picture is."""
    return round((float(img.mean()) - 20) / 3)
