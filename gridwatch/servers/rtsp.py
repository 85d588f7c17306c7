"""A real RTSP server for tests, demos and benchmarks: GStreamer's rtsp-server on loopback.

GStreamer's Python bindings live in the system Python (Debian: ``python3-gi``,
``gir1.2-gst-rtsp-server-1.0``, ``gstreamer1.0-plugins-{base,good,ugly,bad}``, ``bad`` for the
``h265parse`` of H.265 files), not in the project's environment, so :class:`RtspServer` runs :mod:`gridwatch.servers.gst_rtsp` as a child process of
that interpreter and waits until the port answers an RTSP ``OPTIONS`` request.

    with RtspServer([TestCamera("cam1"), FileStream("smoke", Path("smoke.mp4"))]) as srv:
        url = srv.url("cam1")          # rtsp://127.0.0.1:<free port>/cam1
        srv.stop(); srv.restart()      # same port: cameras see a real outage and a recovery
        srv.pause(); srv.resume()      # connections stay open but go silent: a hung camera

:func:`encode_h264` turns rendered frames (e.g. :mod:`gridwatch.detectors.testscenes`) into an
H.264 mp4 with the same GStreamer installation, so a scene can be served as a camera.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

SCRIPT = Path(__file__).with_name("gst_rtsp.py")
SYSTEM_PYTHON = os.environ.get("GRIDWATCH_GST_PYTHON", "/usr/bin/python3")


class ServerUnavailable(RuntimeError):
    """The GStreamer RTSP server cannot run here (missing packages) or did not come up."""


@dataclass(frozen=True, slots=True)
class TestCamera:
    """A live generated camera (``videotestsrc``), H.264 with a keyframe every ``keyint`` frames
    (``codec="jpeg"``: Motion JPEG instead, as some cheap cameras send)."""

    __test__ = False  # not a pytest test class

    path: str
    width: int = 640
    height: int = 360
    fps: int = 15
    pattern: str = "ball"
    keyint: int | None = None  # default: one keyframe per second
    codec: str = "h264"  # or "jpeg"

    def spec(self) -> dict:
        return {"kind": "test", "path": self.path, "width": self.width, "height": self.height,
                "fps": self.fps, "pattern": self.pattern, "keyint": self.keyint or self.fps, "codec": self.codec}


@dataclass(frozen=True, slots=True)
class FileStream:
    """An mp4 file served as a camera: looped forever, or played once per client. ``codec``: its
    video track's, ``"h264"`` or ``"h265"`` (payloaded as it is, never re-encoded)."""

    path: str
    file: Path
    loop: bool = True
    codec: str = "h264"

    def spec(self) -> dict:
        return {"kind": "file", "path": self.path, "file": str(Path(self.file).resolve()), "loop": self.loop,
                "codec": self.codec}


Mount = TestCamera | FileStream


def gstreamer_missing() -> str | None:
    """Why the GStreamer RTSP server cannot run here, or None when it can."""
    if not Path(SYSTEM_PYTHON).exists():
        return f"{SYSTEM_PYTHON} not found"
    probe = ("import gi; gi.require_version('Gst','1.0'); gi.require_version('GstRtspServer','1.0');"
             "from gi.repository import Gst, GstRtspServer; Gst.init(None);"
             "missing=[e for e in ('videotestsrc','x264enc','rtph264pay','qtdemux','mp4mux','rawvideoparse',"
             "'rtph265pay','h265parse')"
             " if Gst.ElementFactory.find(e) is None]; print(' '.join(missing))")
    try:
        r = subprocess.run([SYSTEM_PYTHON, "-c", probe], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"cannot run {SYSTEM_PYTHON}: {e}"
    if r.returncode != 0:
        return "GStreamer bindings unavailable: " + (r.stderr.strip().splitlines() or ["?"])[-1]
    if r.stdout.strip():
        return "missing GStreamer elements: " + r.stdout.strip()
    return None


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def rtsp_answers(host: str, port: int, timeout: float = 1.0) -> bool:
    """True when an RTSP server at host:port answers ``OPTIONS`` with status 200."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as s:
            s.sendall(f"OPTIONS rtsp://{host}:{port}/ RTSP/1.0\r\nCSeq: 1\r\n\r\n".encode())
            return s.recv(64).startswith(b"RTSP/1.0 200")
    except OSError:
        return False


class RtspServer:
    """GStreamer RTSP server on ``127.0.0.1:port`` serving ``mounts``; a context manager.

    ``port`` defaults to a free port chosen once, so :meth:`restart` comes back on the same one.
    """

    def __init__(self, mounts: Sequence[Mount], port: int | None = None, host: str = "127.0.0.1",
                 start_timeout_s: float = 30.0, auth: tuple[str, str, str] | None = None) -> None:
        if not mounts:
            raise ValueError("RtspServer needs at least one mount")
        paths = [m.path for m in mounts]
        if len(set(paths)) != len(paths):
            raise ValueError(f"duplicate mount paths: {paths}")
        self.mounts = list(mounts)
        self.host = host
        self.port = port or free_port(host)
        self.start_timeout_s = start_timeout_s
        self.auth = auth  # (user, password, "basic" | "digest"): every mount asks for them
        self._proc: subprocess.Popen | None = None
        self._log = None

    def url(self, path: str) -> str:
        return f"rtsp://{self.host}:{self.port}/{path.lstrip('/')}"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> "RtspServer":
        if self.running:
            return self
        self._log = tempfile.TemporaryFile()
        mounts = json.dumps([m.spec() for m in self.mounts])
        try:
            auth = (["--auth", json.dumps({"user": self.auth[0], "password": self.auth[1], "method": self.auth[2]})]
                    if self.auth else [])
            self._proc = subprocess.Popen(
                [SYSTEM_PYTHON, str(SCRIPT), "serve", "--port", str(self.port), "--mounts", mounts, *auth],
                stdout=subprocess.DEVNULL, stderr=self._log, start_new_session=True)
        except OSError as e:
            raise ServerUnavailable(f"cannot start {SYSTEM_PYTHON}: {e}") from e
        deadline = time.monotonic() + self.start_timeout_s
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise ServerUnavailable(f"RTSP server exited with {self._proc.returncode}: {self._stderr()}")
            if rtsp_answers(self.host, self.port, timeout=0.5):
                return self
            time.sleep(0.1)
        self.stop()
        raise ServerUnavailable(f"RTSP server did not answer on port {self.port} in {self.start_timeout_s} s")

    def stop(self) -> None:
        """Stop the server; connected clients see their TCP connections close."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            os.kill(proc.pid, signal.SIGCONT)  # a paused server cannot handle SIGTERM
            proc.terminate()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        if self._log is not None:
            self._log.close()
            self._log = None

    def pause(self) -> None:
        """Freeze the server process (SIGSTOP): connections stay open but go silent, like a hung camera."""
        if self.running:
            os.kill(self._proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        if self.running:
            os.kill(self._proc.pid, signal.SIGCONT)

    def restart(self) -> "RtspServer":
        self.stop()
        return self.start()

    def _stderr(self) -> str:
        self._log.seek(0)
        return self._log.read().decode(errors="replace").strip()[-2000:]

    def __enter__(self) -> "RtspServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def encode_h264(frames: Iterable[np.ndarray], out: Path, fps: int = 15, keyint: int | None = None) -> Path:
    """Write BGR uint8 frames (all the same size) to an H.264 mp4 at ``out``; returns ``out``.

    One keyframe every ``keyint`` frames (default: one per second), no B-frames.
    """
    it = iter(frames)
    first = next(it, None)
    if first is None:
        raise ValueError("encode_h264 needs at least one frame")
    h, w = first.shape[:2]
    if first.dtype != np.uint8 or first.ndim != 3 or first.shape[2] != 3 or w % 2 or h % 2:
        raise ValueError(f"frames must be uint8 BGR with even width and height, got {first.shape} {first.dtype}")
    out = Path(out)
    cmd = [SYSTEM_PYTHON, str(SCRIPT), "encode", "--width", str(w), "--height", str(h), "--fps", str(fps),
           "--keyint", str(keyint or fps), "--out", str(out)]
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stderr=err)
        try:
            proc.stdin.write(np.ascontiguousarray(first).tobytes())
            for f in it:
                if f.shape != first.shape:
                    raise ValueError(f"frame shape changed from {first.shape} to {f.shape}")
                proc.stdin.write(np.ascontiguousarray(f, dtype=np.uint8).tobytes())
        finally:
            proc.stdin.close()
            rc = proc.wait(120)
        if rc != 0:
            err.seek(0)
            raise RuntimeError(f"H.264 encode failed ({rc}): {err.read().decode(errors='replace')[-2000:]}")
    return out
