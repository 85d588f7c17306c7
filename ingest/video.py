"""Camera collectors: one capture thread per camera feeding a latest-frame slot, plus a watchdog.

    cams = [CameraConfig(name="gate-3", url="rtsp://10.0.0.7/stream1", analysis_fps=2)]
    with VideoCollector(cams, on_status=print) as video:
        for frame in video.collect(timeout=1.0):     # newest frame of each camera that has one
            gate_and_detect(frame.camera, frame.image)

How it behaves:

* **One thread per camera.** FFmpeg decoding releases the GIL, so cameras decode in parallel and a
  slow, dead, hung or corrupt camera only ever blocks its own thread.
* **Latest-frame slot, never a queue.** Each camera keeps only its newest analysable frame. When
  the consumer is slower, the older frame is replaced and counted in ``dropped``.
* **Analysis-rate skipping and early downscale.** Frames closer than ``1/analysis_fps`` to the
  last kept frame are skipped before colour conversion; kept frames are scaled to
  ``analysis_width`` in the same pass as their conversion to BGR.
* **Watchdog.** A camera that delivers no frame for ``stale_after_s`` is marked stale and its
  thread reconnects (checked every fifth of the shortest ``stale_after_s``, at most every
  second). A thread that stops making progress altogether (stuck inside FFmpeg for longer
  than any timeout allows) is abandoned and replaced; whatever it returns later is ignored.
* **Decoding yields to analysis.** On Linux each capture thread lowers its own scheduling priority
  (``capture_nice``, default 10; FFmpeg's decoder threads, started from it, inherit it). When the
  box has more decoding than cores, the scheduler would otherwise share the CPU evenly among the
  cameras' threads and their decoder threads (a hundred or more), leaving the one analysis thread
  a sliver of what it needs: every camera's frames were then decoded and thrown away unanalysed
  (36 cameras on 2 cores: 15 of 100 frames each). With the analysis ahead in line, an overloaded
  box decodes more slowly but analyses what it decodes, every camera alike. The rest of the
  process and the box (sensor pipelines, the broker) keeps its priority too.
* **Reconnects** use exponential backoff with jitter. Every status change
  (connecting → online → reconnecting → offline) goes to ``on_status`` with a reason string.
  After ``offline_after_failures`` failed attempts in a row a camera is *offline*; it keeps
  retrying at the longest backoff and comes back *online* with its first frame.
* **Packets for evidence clips.** A camera given a :class:`PacketRing` (``Camera.packets``; the
  video runtime does this when ``[video.clips]`` is on) keeps the compressed packets its source
  demuxes anyway, from a keyframe on, for the last seconds (bounded by seconds and bytes, the
  oldest group of pictures dropped first and counted). PyAV sources keep every packet they demux
  (files in keyframe mode: the keyframes their demuxer returns); gridwatch's RTSP client keeps the
  keyframes it assembles; OpenCV's backend hands over no packets and keeps none.
* **Files** (a path or ``file://`` URL) replay a recording as a camera, optionally looping and
  paced at the file's own frame rate. A missing, corrupt or truncated file is a terminal error on
  that camera only (*offline*, with the reason).

Decoders: ``decode="all"`` decodes every frame with PyAV (``decoder="pyav"``, the default) or
OpenCV's FFmpeg backend (``decoder="opencv"``). With PyAV a kept frame is handed over
*unconverted*: its luminance plane (a view of the decoder's frame) feeds the motion gate, and the
BGR picture is made only when analysis asks for ``Frame.image`` — on a still scene most kept frames
never pay for colour conversion. OpenCV's backend cannot return the luminance plane without a
warning per frame, so there every kept frame is converted. ``decode="keyframes"`` uses PyAV and
decodes only keyframes (``skip_frame = "NONKEY"`` plus dropping non-key packets before the
decoder), for slow events on a camera with a short GOP: decode cost then follows the keyframe rate
instead of the camera's frame rate. OpenCV's VideoCapture cannot do this (it does not expose the
decoder's ``skip_frame``). Over RTSP, keyframe cameras use gridwatch's own RTSP client
(:mod:`gridwatch.ingest.rtsp`, ``rtsp_client = "gridwatch"``): FFmpeg's demuxes every RTP packet
whether or not its frame is decoded, which cost twice the keyframes' decoding. Credentials in
URLs never reach a log line or a reason string.
"""
from __future__ import annotations

import logging
import os
import random
import re
import socket
import sys
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from enum import StrEnum
from fractions import Fraction
from pathlib import Path
from typing import Any, Literal, Protocol
from urllib.parse import urlsplit

import cv2
import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

log = logging.getLogger(__name__)

# Must be in the environment before FFmpeg opens an RTSP URL; TCP interleaving survives NAT and
# packet loss, and without this OpenCV may fall back to UDP. (Setting it replaces OpenCV's own
# default of ``rtsp_flags;prefer_tcp``, which is why it is set here explicitly.)
os.environ.setdefault("OPENCV_FFMPEG_CAPTURE_OPTIONS", "rtsp_transport;tcp")


class CameraConfig(BaseModel):
    """One camera (or a recording replayed as one)."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, description="Unique camera name, used in statuses, counters and logs.")
    url: str = Field(min_length=1, description="rtsp://, http(s):// URL, or a video file path / file:// URL.")
    analysis_fps: float | None = Field(5.0, gt=0, description="Frames per second handed to analysis; "
                                       "the rest are skipped before colour conversion. None = every frame.")
    analysis_width: int | None = Field(640, ge=16, description="Kept frames are downscaled to this width "
                                       "(aspect kept; never upscaled). None = original size.")
    decode: Literal["all", "keyframes"] = Field("all", description="'all' decodes every frame; "
                                                "'keyframes' decodes keyframes only, for slow events (files through "
                                                "PyAV; RTSP through gridwatch's RTSP client, see rtsp_client).")
    decoder: Literal["pyav", "opencv"] = Field("pyav", description="decode='all' through PyAV (kept frames carry their "
                                               "luma plane; the BGR picture is made only when analysis asks for it) or "
                                               "OpenCV's FFmpeg backend (BGR for every kept frame).")
    decode_threads: int = Field(1, ge=0, le=64, description="PyAV decoder threads per camera: 1 (default) decodes on the "
                                "camera's capture thread; 0 lets FFmpeg start slice threads (about one per core), "
                                "which cost more CPU per camera on a live stream and only help a stream one core "
                                "cannot decode in real time (e.g. 4K).")
    rtsp_client: Literal["gridwatch", "ffmpeg"] = Field("gridwatch", description="decode='keyframes' on rtsp:// "
                                                        "URLs: 'gridwatch' reads the RTP stream itself (RTSP over TCP, "
                                                        "H.264/H.265, Basic/Digest authentication) and copies and decodes "
                                                        "keyframes only; 'ffmpeg' demuxes every packet with FFmpeg's "
                                                        "client (2-3x the CPU per camera). Other codecs fall back to FFmpeg.")
    rtsp_read_interval_s: float = Field(0.25, ge=0, le=1.0, description="decode='keyframes' with rtsp_client="
                                        "'gridwatch': read the connection at most this often. Fewer, larger reads cost "
                                        "less CPU per camera (each costs system time; at 0.1 s a 720p camera took ~1.9 ms "
                                        "a second of it, at 0.5 s ~0.6 ms) and add up to this much latency.")
    rtsp_max_frame_bytes: int = Field(8 * 1024 * 1024, ge=1024, le=256 * 1024 * 1024, description="rtsp_client="
                                      "'gridwatch': a keyframe larger than this (bytes, Annex B) is dropped and counted "
                                      "(error 'frame_too_large') and the camera reconnects, so a camera sending a frame "
                                      "that never ends cannot fill memory. 8 MiB holds a 4K keyframe at a high bitrate.")
    rtsp_keyframe_timeout_s: float = Field(10.0, gt=0, description="rtsp_client='gridwatch': no keyframe for this "
                                           "long is a camera error ('no_keyframe'; a camera streaming without IDR "
                                           "frames uses intra refresh and needs decode='all'), then a reconnect with "
                                           "backoff. Above the camera's keyframe interval (GOP).")
    rtsp_allow_basic_auth: bool = Field(False, description="rtsp_client='gridwatch': answer a camera that offers only "
                                        "Basic authentication. Basic sends the password readable by anyone on the path "
                                        "over plain rtsp://, so by default it is refused (error 'auth_insecure') and "
                                        "only Digest is answered.")
    loop: bool = Field(False, description="Files only: start again at the end instead of going offline.")
    realtime: bool = Field(True, description="Files only: pace reading at the file's frame rate, like a camera.")
    stale_after_s: float = Field(5.0, gt=0, description="No frame for this long: stale, reconnect.")
    open_timeout_s: float = Field(5.0, gt=0, description="Give up opening the stream after this long.")
    read_timeout_s: float = Field(5.0, gt=0, description="Give up waiting for the next packet after this long.")
    backoff_initial_s: float = Field(0.5, gt=0, description="First reconnect delay; doubles per failed attempt.")
    backoff_max_s: float = Field(30.0, gt=0, description="Longest reconnect delay.")
    backoff_jitter: float = Field(0.25, ge=0, le=1, description="Reconnect delays vary by up to this fraction, "
                                  "so cameras behind one failed switch do not reconnect in lockstep.")
    offline_after_failures: int = Field(3, ge=1, description="Consecutive failed attempts before 'offline'. A "
                                        "connection that broke within min_session_s of its first frame, and a file "
                                        "pass that broke off with a read error, count as failed attempts.")
    min_session_s: float = Field(30.0, ge=0, description="A connection that delivered frames but broke within this "
                                 "long counts as a failed attempt (backoff, then offline), so a camera that keeps "
                                 "breaking right after it connects does not stay 'reconnecting' for ever.")
    discontinuity_gap_s: float = Field(10.0, gt=0, description="Decoded frames further apart than this (in stream time "
                                       "or wall time), or a stream clock that goes back, start a new scene epoch: the "
                                       "rules then drop their evidence, so none spans an outage. Above the keyframe "
                                       "interval for decode='keyframes'.")

    @model_validator(mode="after")
    def _check(self) -> "CameraConfig":
        if self.backoff_max_s < self.backoff_initial_s:
            raise ValueError(f"backoff_max_s={self.backoff_max_s} is below backoff_initial_s={self.backoff_initial_s}")
        if not self.is_file:
            try:
                urlsplit(self.url).port
            except ValueError:
                raise ValueError(f"url {redact_url(self.url)!r}: the port is not a number from 0 to 65535") from None
        return self

    @property
    def is_file(self) -> bool:
        return "://" not in self.url or self.url.startswith("file://")

    @property
    def path(self) -> str:
        """The URL as FFmpeg wants it (file:// stripped)."""
        return self.url[len("file://"):] if self.url.startswith("file://") else self.url


class CameraState(StrEnum):
    CONNECTING = "connecting"
    ONLINE = "online"
    RECONNECTING = "reconnecting"
    OFFLINE = "offline"


@dataclass(frozen=True, slots=True)
class StatusChange:
    camera: str
    old: CameraState
    new: CameraState
    reason: str
    ts_ms: int


class Frame:
    """A decoded frame handed to analysis (a reference to the camera and time plus the pixels).

    ``image`` is the BGR picture downscaled to ``analysis_width``. A PyAV source hands it over
    unconverted: ``luma`` is then the decoder's own luminance plane (full size, no copy), enough
    for the motion gate, and the BGR picture is made on first access of ``image`` (one swscale
    pass: colour conversion and downscale together), in the thread that asks for it.
    """

    __slots__ = ("camera", "seq", "ts_ms", "pts_ms", "_image", "scale", "keyframe_only", "luma", "limited_range",
                 "_convert", "size", "gate", "motion", "epoch")

    def __init__(self, camera: str, seq: int, ts_ms: int, pts_ms: float, image: np.ndarray | None, scale: float,
                 keyframe_only: bool = False, *, luma: np.ndarray | None = None, limited_range: bool = False,
                 convert: Callable[[], np.ndarray] | None = None, size: tuple[int, int] | None = None) -> None:
        self.camera = camera
        self.seq = seq  # index among the frames this camera decoded since start
        self.ts_ms = ts_ms  # wall-clock capture time, epoch ms
        self.pts_ms = pts_ms  # stream position in ms (NaN when the stream does not say)
        self._image = image
        self.scale = scale  # image pixels per original pixel (<= 1); original = image / scale
        self.keyframe_only = keyframe_only
        self.luma = luma  # uint8[H, W] luminance at the decoded size, or None
        self.limited_range = limited_range  # luma in video range (16-235) rather than 0-255
        self._convert = convert
        # (width, height) of ``image``, known without converting it
        self.size = size if size is not None else (None if image is None else (image.shape[1], image.shape[0]))
        self.gate: np.ndarray | None = None  # the motion gate's small grey frame, if the capture thread made it
        self.motion = None  # the motion gate's result, if the capture thread ran it
        # the camera's scene epoch: a new connection, a loop's restart, a jump or a gap in the stream
        # starts a new one, and no evidence may join frames of two epochs (they are unrelated moments)
        self.epoch = 0

    @property
    def image(self) -> np.ndarray:
        """BGR uint8, downscaled to analysis_width (converted now if it was not yet)."""
        if self._image is None:
            self._image = self._convert()
            self._convert = None
        return self._image

    @property
    def converted(self) -> bool:
        return self._image is not None


@dataclass(slots=True)
class CameraCounters:
    decoded: int = 0  # frames the decoder produced
    skipped: int = 0  # decoded but not kept (analysis-rate skipping)
    gated: int = 0  # kept, and found still by the motion gate on the capture thread: not handed over
    analysed: int = 0  # taken by the consumer
    dropped: int = 0  # kept but replaced in the slot before the consumer took them
    reconnects: int = 0  # connection attempts after the first
    discontinuities: int = 0  # scene epochs started: connections, loop restarts, jumps and gaps in the stream
    errors: Counter = field(default_factory=Counter)  # by reason code

    def as_dict(self) -> dict:
        return {"decoded": self.decoded, "skipped": self.skipped, "gated": self.gated, "analysed": self.analysed,
                "dropped": self.dropped, "reconnects": self.reconnects, "discontinuities": self.discontinuities,
                "errors": dict(self.errors)}


def redact_url(url: str) -> str:
    """The URL with any password (and user) replaced, for logs and reasons."""
    return re.sub(r"^([a-zA-Z][a-zA-Z0-9+.-]*://)[^/@]*@", r"\1***@", url)


class LatestFrameSlot:
    """Holds one frame: a new one replaces an untaken one (counted). Thread-safe."""

    def __init__(self, on_put: Callable[[], None] | None = None) -> None:
        self._lock = threading.Lock()
        self._frame: Frame | None = None
        self._on_put = on_put
        self.dropped = 0

    def put(self, frame: Frame) -> bool:
        """Store ``frame``; True when it replaced a frame nobody took (a drop)."""
        with self._lock:
            replaced = self._frame is not None
            self._frame = frame
            if replaced:
                self.dropped += 1
        if self._on_put is not None:
            self._on_put()
        return replaced

    def take(self) -> Frame | None:
        with self._lock:
            f, self._frame = self._frame, None
            return f


_END_OF_FILE = "end of file"


class PlayClock:
    """Pacing of a file camera (``realtime``): frame ``pts`` is due ``pts - first pts`` after the
    first frame, and a looping file's next pass continues where this one ends (the clip's duration
    after its first frame), so a looping clip plays out like a live camera. Without this, each
    pass restarted the clock at its first frame: in keyframe mode the demuxer drops the packets
    after a clip's last keyframe, so a 10 s clip with a 2 s GOP handed out its keyframes at 0, 2,
    4, 6, 8 s and then the next pass's at once, 25 % more frames than a live camera."""

    __slots__ = ("start_wall", "start_pts", "offset_ms", "last_pts")

    def __init__(self) -> None:
        self.start_wall: float | None = None
        self.start_pts: float | None = None
        self.offset_ms = 0.0  # stream time of the passes before this one
        self.last_pts: float | None = None  # of this pass

    def wait_s(self, pts: float, now: float) -> float:
        """Seconds until the frame at ``pts`` (ms) of this pass is due (negative: late)."""
        if self.start_pts is None:
            self.start_wall, self.start_pts = now, pts
        self.last_pts = pts
        return (self.offset_ms + pts - self.start_pts) / 1000.0 - (now - self.start_wall)

    def next_pass(self, duration_ms: float, fps: float) -> None:
        """The file starts again: the new pass follows this one by its length (the clip's
        ``duration_ms`` when the container gives it, else up to its last frame plus one frame)."""
        if self.start_pts is None or self.last_pts is None:
            return
        seen = self.last_pts - self.start_pts + (1000.0 / fps if fps > 0 else 0.0)
        length = duration_ms if duration_ms == duration_ms and duration_ms > 0 else seen
        self.offset_ms += max(length, seen)  # never less than what this pass played
        self.last_pts = None


# --- packets kept for evidence clips -------------------------------------------------------------
@dataclass(slots=True)
class ClipTemplate:
    """How to make the output stream of a clip from a source's packets: an open stream to copy the
    codec parameters (extradata included) from, or, for gridwatch's RTSP client, the raw format
    (``h264``/``hevc``) its Annex B keyframes are probed as. ``keyframes``: the source only ever
    hands over keyframes (a clip of it is a sequence of keyframes)."""
    stream: Any  # an av stream of a small in-memory container (never written), or None
    raw_format: str | None
    time_base: Fraction
    keyframes: bool
    holder: Any = None  # keeps the in-memory container of ``stream`` alive


class ClipRequest:
    """The packets of one clip: from the last keyframe at or before ``from_ms`` (wall clock) on,
    up to the first packet at or after ``to_ms``, or until the source ends or ``max_bytes`` is reached."""

    __slots__ = ("from_ms", "to_ms", "max_bytes", "packets", "bytes", "template", "why", "meta")

    def __init__(self, from_ms: float, to_ms: float, max_bytes: int, template: ClipTemplate, meta: dict) -> None:
        self.from_ms, self.to_ms, self.max_bytes = from_ms, to_ms, max_bytes
        self.packets: list[tuple] = []  # (wall_ms, key, pts, dts, data, size)
        self.bytes = 0
        self.template = template
        self.why = ""  # why it ended: "complete", "max_bytes", "source ended", "overdue"
        self.meta = meta  # the caller's (camera, rule, path, ...)


# what a kept packet costs besides its payload (the Python objects and FFmpeg's packet around
# it), counted against the bounds: a source sending floods of tiny packets is bounded as well
PACKET_OVERHEAD = 256


class PacketRing:
    """One camera's most recent compressed packets, starting at a keyframe: at least ``keep_s``
    seconds (the oldest group of pictures goes once the next keyframe is that old), and never more
    than ``max_bytes``: past it the oldest group of pictures is dropped, and a group larger than
    the whole bound drops everything until the next keyframe (``dropped`` counts the packets lost
    either way). Each packet counts as its size plus :data:`PACKET_OVERHEAD`. Pushed on the capture thread; :meth:`start_clip` on another one.

    A started clip takes the ring's packets from the last keyframe at or before its start and then
    every packet pushed until its end; at most ``max_requests`` at a time (each bounded by its own
    ``max_bytes``). A finished clip goes to ``on_done`` (called on whichever thread finished it)."""

    def __init__(self, keep_s: float, max_bytes: int, on_done: Callable[[ClipRequest], None] | None = None,
                 max_requests: int = 2) -> None:
        self.keep_ms = keep_s * 1000.0
        self.max_bytes = max_bytes
        self.max_requests = max_requests
        self.on_done = on_done
        self._lock = threading.Lock()
        self._q: deque = deque()  # (wall_ms, key, pts, dts, data, size)
        self._keys: deque = deque()  # wall_ms of the keyframes in _q, oldest first
        self._need_key = True
        self._requests: list[ClipRequest] = []
        self.template: ClipTemplate | None = None
        self.unavailable = "no source yet"  # why there is no template
        self.bytes = 0
        self.peak_bytes = 0
        self.dropped = 0  # packets dropped for the byte bound
        self.refused = 0  # clips not started: too many at once, or no packets from this source

    def attach(self, src: Any) -> None:
        """A new source: its clip template (None when it hands over no packets), and ``src.ring``."""
        make = getattr(src, "clip_template", None)
        tmpl, why = None, "this source hands over no packets (decoder='opencv')"
        if make is not None:
            try:
                tmpl = make()
            except Exception as e:  # noqa: BLE001 - no clips from this source, capturing goes on
                log.warning("clips: cannot copy the stream parameters: %s", e)
                why = f"cannot copy the stream parameters: {type(e).__name__}"
        with self._lock:
            self.template, self.unavailable = tmpl, why
        if tmpl is not None:
            src.ring = self

    def push(self, data: Any, pts: int | None, dts: int | None, key: bool, size: int) -> None:
        """One demuxed packet (``data``: an av.Packet or bytes, kept by reference, not copied)."""
        wall = time.time() * 1000.0
        e = (wall, key, pts, dts, data, size + PACKET_OVERHEAD)
        done = None
        with self._lock:
            if self._requests:  # clips being collected take it whatever the ring keeps
                done = self._feed(e)
            self._keep(e)
        if done:
            self._finish(done)

    def _keep(self, e: tuple) -> None:
        wall, key, size = e[0], e[1], e[5]
        if self._need_key and not key:
            return  # nothing to decode it from
        if size > self.max_bytes:  # larger than the bound on its own
            self._drop_all(1)
            return
        if key:
            self._need_key = False
            self._keys.append(wall)
        self._q.append(e)
        self.bytes += size
        cut = wall - self.keep_ms
        keys = self._keys
        while len(keys) > 1 and keys[1] <= cut:  # the next group covers keep_s on its own
            self._drop_gop(False)
        while self.bytes > self.max_bytes:
            if len(keys) > 1:
                self._drop_gop(True)
            else:  # one group of pictures larger than the bound: wait for the next keyframe
                self._drop_all(0)
        if self.bytes > self.peak_bytes:
            self.peak_bytes = self.bytes

    def _drop_gop(self, count: bool) -> None:
        q = self._q
        n = 0
        while True:
            _, _, _, _, _, size = q.popleft()
            self.bytes -= size
            n += 1
            if not q or q[0][1]:
                break
        self._keys.popleft()
        if count:
            self.dropped += n

    def _drop_all(self, extra: int) -> None:
        self.dropped += len(self._q) + extra
        self._q.clear()
        self._keys.clear()
        self.bytes = 0
        self._need_key = True

    def _feed(self, e: tuple) -> list[ClipRequest]:
        done = []
        for r in self._requests:
            if not r.packets and not e[1]:
                continue  # the clip starts at a keyframe
            if r.bytes + e[5] > r.max_bytes:
                r.why = "max_bytes"
            else:
                r.packets.append(e)
                r.bytes += e[5]
                if e[0] < r.to_ms:
                    continue
                r.why = "complete"  # the first packet at or after the end: the clip reaches it
            done.append(r)
        if done:
            self._requests = [r for r in self._requests if not r.why]
        return done

    def _finish(self, done: list[ClipRequest]) -> None:
        if self.on_done is not None:
            for r in done:
                try:
                    self.on_done(r)
                except Exception:  # noqa: BLE001 - never stop capturing for a clip
                    log.exception("clips: handing over a clip failed")

    def start_clip(self, from_ms: float, to_ms: float, max_bytes: int, meta: dict) -> ClipRequest | str:
        """Start a clip of ``[from_ms, to_ms]`` (wall clock): the request, or why there is none."""
        done = None
        with self._lock:
            tmpl = self.template
            if tmpl is None:
                self.refused += 1
                return self.unavailable
            if len(self._requests) >= self.max_requests:
                self.refused += 1
                return f"{len(self._requests)} clips of this camera are already being collected"
            r = ClipRequest(from_ms, to_ms, max_bytes, tmpl, meta)
            start = 0
            for i, e in enumerate(self._q):
                if e[0] > from_ms:
                    break
                if e[1]:
                    start = i
            for i, e in enumerate(self._q):
                if i < start:
                    continue
                if r.bytes + e[5] > max_bytes:
                    r.why = "max_bytes"
                    break
                r.packets.append(e)
                r.bytes += e[5]
                if e[0] >= to_ms:
                    r.why = "complete"
                    break
            if r.why:
                done = [r]
            else:
                self._requests.append(r)
        if done:
            self._finish(done)
        return r

    def finish_overdue(self, now_ms: float, grace_ms: float) -> int:
        """Finish the clips whose end passed ``grace_ms`` ago without a packet (a stalled source)."""
        with self._lock:
            done = [r for r in self._requests if now_ms - r.to_ms > grace_ms]
            for r in done:
                r.why = "overdue"
            if done:
                self._requests = [r for r in self._requests if not r.why]
        if done:
            self._finish(done)
        return len(done)

    def reset(self) -> None:
        """The source ended or jumped: the kept packets go, clips being collected end here."""
        with self._lock:
            self._q.clear()
            self._keys.clear()
            self.bytes = 0
            self._need_key = True
            done, self._requests = self._requests, []
            for r in done:
                r.why = "source ended"
        if done:
            self._finish(done)

    @property
    def collecting(self) -> bool:
        """Some clip is being collected."""
        return bool(self._requests)

    def __len__(self) -> int:
        return len(self._q)


# --- decoders ------------------------------------------------------------------------------------
class SourceError(Exception):
    """Opening or reading a source failed. ``code`` is the counter key; the message is for people."""

    def __init__(self, code: str, message: str, terminal: bool = False) -> None:
        super().__init__(message)
        self.code = code
        self.terminal = terminal  # retrying cannot help (missing or corrupt file)


class Source(Protocol):
    fps: float  # nominal frame rate, 0 when unknown
    duration_ms: float  # length of a file from its first frame, NaN when unknown (streams)

    def next(self) -> float | None:
        """Decode the next frame; its pts in ms (NaN if unknown), or None at end of stream."""

    def image(self, width: int | None) -> np.ndarray:
        """The last decoded frame as BGR, downscaled to ``width`` if given and smaller."""

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) of the decoded frames."""

    def close(self) -> None: ...

    # optional: ``rewind() -> bool``, back to the start of a file (False: reopen it instead)


def _target_size(w: int, h: int, width: int | None) -> tuple[int, int]:
    if width is None or width >= w:
        return w, h
    return width, max(2, round(h * width / w))


class OpenCvSource:
    """Every frame through OpenCV's FFmpeg backend, with open/read timeouts set at open time."""

    def __init__(self, cfg: CameraConfig) -> None:
        params = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, int(cfg.open_timeout_s * 1000),
                  cv2.CAP_PROP_READ_TIMEOUT_MSEC, int(cfg.read_timeout_s * 1000)]
        self.cap = cv2.VideoCapture(cfg.path, cv2.CAP_FFMPEG, params)
        if not self.cap.isOpened():
            self.cap.release()
            if cfg.is_file:
                raise SourceError("open_failed", "cannot open file (corrupt, truncated or not a video)", terminal=True)
            raise SourceError("open_failed", "cannot open stream (no answer, refused or not a video)")
        self.fps = float(self.cap.get(cv2.CAP_PROP_FPS) or 0.0)
        count = float(self.cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0.0)
        self.duration_ms = count * 1000.0 / self.fps if count > 0 and self.fps > 0 else float("nan")
        w, h = int(self.cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(self.cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
        self.size = (w, h)

    def next(self) -> float | None:
        if not self.cap.grab():
            return None
        pts = self.cap.get(cv2.CAP_PROP_POS_MSEC)
        return float(pts) if pts >= 0 else float("nan")

    def image(self, width: int | None) -> np.ndarray:
        ok, img = self.cap.retrieve()
        if not ok or img is None:
            raise SourceError("decode_error", "decoded frame could not be converted")
        self.size = (img.shape[1], img.shape[0])
        tw, th = _target_size(img.shape[1], img.shape[0], width)
        return img if tw == img.shape[1] else cv2.resize(img, (tw, th), interpolation=cv2.INTER_AREA)

    def close(self) -> None:
        self.cap.release()


# 8-bit formats whose first plane is the luminance at full size
_LUMA_FIRST = {"yuv420p", "yuvj420p", "yuv422p", "yuvj422p", "yuv444p", "yuvj444p", "nv12", "nv21", "gray"}


class DecodedFrames:
    """What a PyAV-decoded source hands on: its current frame as BGR (``image``), or unconverted
    (``deferred``: the luma plane as a view and a function that makes the BGR picture later). The
    decoder's frames are reference-counted, so a kept frame stays valid while the decoder goes on.
    Subclasses set ``_frame`` in ``next()``."""

    ring: "PacketRing | None" = None  # keeps the demuxed packets for evidence clips (PacketRing.attach)

    def __init__(self) -> None:
        self._frame = None
        self._layout_key: tuple | None = None
        self._layout_value: tuple = ()
        # one scaler for this source's conversions: a fresh one per frame (what to_ndarray does)
        # costs its set-up every time, and its default of one thread per core buys nothing on
        # 640-pixel analysis frames but thread hand-offs
        from av.video.plane import VideoPlane
        from av.video.reformatter import VideoReformatter

        self._plane = VideoPlane
        self._reformatter = VideoReformatter()
        self._reformat_lock = threading.Lock()

    def _bgr(self, f, width: int, height: int) -> np.ndarray:
        """``f`` as BGR at ``width`` x ``height``: one swscale pass (conversion and resize together)."""
        with self._reformat_lock:
            return self._reformatter.reformat(f, width=width, height=height, format="bgr24", threads=1).to_ndarray()

    def image(self, width: int | None) -> np.ndarray:
        tw, th = _target_size(self._frame.width, self._frame.height, width)
        return self._bgr(self._frame, tw, th)

    def deferred(self, width: int | None) -> dict:
        """The current frame unconverted: Frame keyword arguments (luma view, converter, size)."""
        f = self._frame
        luma_first, limited, (tw, th) = self._layout(f, width)
        luma = None
        if luma_first:  # the first plane only (``f.planes`` would build an object for each plane)
            luma = np.frombuffer(self._plane(f, 0), np.uint8).reshape(f.height, -1)[:, : f.width]
        return {"luma": luma, "limited_range": limited, "size": (tw, th),
                "convert": lambda: self._bgr(f, tw, th)}

    def _layout(self, f, width: int | None) -> tuple[bool, bool, tuple[int, int]]:
        """(luma plane first, limited range, analysis size) of frames like ``f``: the same for
        every frame of a stream, so worked out again only when its size, format or range changes."""
        key = (f.width, f.height, f.format.name, getattr(f, "color_range", 1), width)
        if key != self._layout_key:
            name = key[2]
            # yuvj* and streams flagged full range (AVCOL_RANGE_JPEG = 2) carry 0-255 luma
            limited = not name.startswith("yuvj") and key[3] != 2 and name != "gray"
            self._layout_key = key
            self._layout_value = (name in _LUMA_FIRST, limited, _target_size(f.width, f.height, width))
        return self._layout_value


def decode_alone(codec, packet) -> list:
    """The frames of one keyframe decoded on its own: the decoder is drained at once and its
    buffers flushed. Without it, a file or FFmpeg-demuxed stream with B-frames (whose decoder holds
    pictures back to reorder them) handed over each keyframe's picture only once two more keyframes
    had gone in — two GOPs late — and every keyframe decoder kept reference pictures that keyframes
    never use (1.3 MB less resident per 720p source once flushed)."""
    frames = list(codec.decode(packet))
    frames += codec.decode(None)  # drain: what the decoder holds back for reordering
    codec.flush_buffers()  # and ready for the next keyframe, with its reference pictures released
    return frames


class PyAvSource(DecodedFrames):
    """Frames through PyAV: every frame, or keyframes only (non-key packets never reach the decoder)."""

    def __init__(self, cfg: CameraConfig, keyframes_only: bool) -> None:
        try:
            import av
        except ImportError as e:  # pragma: no cover - depends on the installation
            raise SourceError("config", "decoding with PyAV needs the package (av)", terminal=True) from e
        super().__init__()
        self._av = av
        self.keyframes_only = keyframes_only
        options = {"rtsp_transport": "tcp"} if cfg.path.startswith("rtsp") else {}
        try:
            self.container = av.open(cfg.path, options=options, timeout=(cfg.open_timeout_s, cfg.read_timeout_s))
        except av.FFmpegError as e:
            if cfg.is_file:
                raise SourceError("open_failed", f"cannot open file (corrupt, truncated or not a video): {e.strerror or e}",
                                  terminal=True) from e
            raise SourceError("open_failed", f"cannot open: {e.strerror or e}") from e
        if not self.container.streams.video:
            self.container.close()
            raise SourceError("open_failed", "no video stream (corrupt or not a video)", terminal=cfg.is_file)
        self.stream = self.container.streams.video[0]
        if keyframes_only:
            self.stream.codec_context.skip_frame = "NONKEY"
            # demuxers that honour it (files: MP4/MOV, MKV) then return keyframes only, so the
            # capture thread no longer handles ~49 packets in Python per 2 s GOP just to drop them
            # (GIL time the one analysis thread waits for with hundreds of cameras); others (RTSP)
            # ignore it and the per-packet check in next() drops the rest
            discard = getattr(av.stream, "Discard", None)  # PyAV >= 14
            if discard is not None:
                self.stream.discard = discard.nonkey
        # slice threads only, if any: frame threads add a frame of latency per thread and cost more
        # CPU. One thread by default: paced like a live 720p25 camera, FFmpeg's slice threads (woken
        # for every frame) cost 6-9 % more CPU than decoding on the capture thread itself
        self.stream.codec_context.thread_count = cfg.decode_threads  # 0: FFmpeg's choice
        if cfg.decode_threads != 1:
            self.stream.thread_type = "SLICE"
        self.fps = float(self.stream.average_rate or 0)
        self.size = (self.stream.codec_context.width, self.stream.codec_context.height)
        self._packets = self.container.demux(self.stream)
        self._pending: list = []
        # decoded frames carry the stream's time base: one float, not Fraction arithmetic per frame
        tb = self.stream.time_base
        self._tb_ms = float(tb) * 1000.0 if tb else 0.0
        if self.stream.duration and self._tb_ms:
            self.duration_ms = self.stream.duration * self._tb_ms
        elif self.container.duration:  # microseconds
            self.duration_ms = self.container.duration / 1000.0
        else:
            self.duration_ms = float("nan")

    def next(self) -> float | None:
        try:
            while not self._pending:
                packet = next(self._packets, None)
                if packet is None:
                    return None
                ring = self.ring
                if ring is not None and packet.size:
                    ring.push(packet, packet.pts, packet.dts, packet.is_keyframe, packet.size)
                # keyframes only: drop the others before the decoder; the empty packet flushes it
                if not self.keyframes_only:
                    self._pending = list(self.stream.codec_context.decode(packet))
                elif packet.is_keyframe and packet.size:
                    self._pending = decode_alone(self.stream.codec_context, packet)
        except self._av.FFmpegError as e:
            raise SourceError("read_failed", f"read failed: {e.strerror or e}") from e
        self._frame = f = self._pending.pop(0)
        self.size = (f.width, f.height)
        pts = f.pts
        return pts * self._tb_ms if pts is not None and self._tb_ms else float("nan")

    def clip_template(self) -> ClipTemplate:
        """The stream's codec parameters (extradata included) copied into a small in-memory
        container that outlives this source: what a clip's output stream is made from."""
        import io

        holder = self._av.open(io.BytesIO(), "w", format="mp4")
        stream = holder.add_stream_from_template(self.stream)
        return ClipTemplate(stream, None, Fraction(self.stream.time_base), self.keyframes_only, holder)

    def rewind(self) -> bool:
        """Back to the start of the file, for a looping file camera: a seek and a decoder flush
        instead of reopening (which probes the stream again, decoding frames to do it)."""
        try:
            self.container.seek(0, stream=self.stream)
        except self._av.FFmpegError:
            return False
        self.stream.codec_context.flush_buffers()
        self._packets = self.container.demux(self.stream)
        self._pending, self._frame = [], None
        return True

    def close(self) -> None:
        self.container.close()


class RtpKeyframeSource(DecodedFrames):
    """Keyframes of an RTSP camera through gridwatch's own RTSP client (:mod:`gridwatch.ingest.rtsp`):
    the RTP stream is read in large chunks, only parameter sets and keyframe slices are copied,
    and only keyframes reach the decoder. H.264 and H.265; other streams raise
    :class:`~gridwatch.ingest.rtsp.UnsupportedStream` from the constructor."""

    def __init__(self, cfg: CameraConfig) -> None:
        import av

        from gridwatch.ingest.rtsp import KeyframeAssembler, RtspError, RtspSession

        super().__init__()
        self._av = av
        self._RtspError = RtspError
        self.session = RtspSession(cfg.path, cfg.open_timeout_s, cfg.read_timeout_s, cfg.rtsp_read_interval_s,
                                   allow_basic=cfg.rtsp_allow_basic_auth)
        try:
            track = self.session.start()
            self.codec = av.CodecContext.create(track.codec, "r")
        except BaseException:
            self.session.close()
            raise
        self.codec.thread_count = max(1, cfg.decode_threads)
        self.assembler = KeyframeAssembler(track.codec, track.params, cfg.rtsp_max_frame_bytes)
        self.keyframe_timeout_s = cfg.rtsp_keyframe_timeout_s
        self._packets = self.session.packets()
        self._tick_ms = 1000.0 / track.clock_rate
        self._first: int | None = None
        self._last = 0
        self._wraps = 0
        self.fps = track.fps
        self.size = (0, 0)
        self.duration_ms = float("nan")
        self.track = track
        self.decode_errors = 0

    def next(self) -> float | None:
        av = self._av
        wait = self.keyframe_timeout_s
        asm = self.assembler
        packets, decode_errors = asm.packets, self.decode_errors
        self.session.set_deadline(wait, "no_keyframe", f"no keyframe in {wait:g} s")
        while True:
            try:
                buf, a, b = next(self._packets)
                kf = asm.push(buf, a, b)
            except self._RtspError as e:
                if e.code == "stream_ended":
                    return None
                if e.code == "no_keyframe":
                    raise SourceError(e.code, self._no_keyframe(wait, asm.packets - packets,
                                                                self.decode_errors - decode_errors)) from e
                raise SourceError(e.code, str(e)) from e
            if kf is None:
                continue
            ring = self.ring
            if ring is not None:  # kept by the time it arrived (ms, the RTP clock unwrapped)
                ring.push(kf.data, self._rtp_ms(kf.rtp_ts), None, True, len(kf.data))
            try:
                frames = decode_alone(self.codec, av.Packet(kf.data))
            except av.FFmpegError:
                self.decode_errors += 1
                continue  # a keyframe the decoder cannot use: wait for the next
            if not frames:
                continue
            self._frame = f = frames[-1]
            self.size = (f.width, f.height)
            return self._rtp_ms(kf.rtp_ts)

    def _rtp_ms(self, ts: int) -> float:
        """The RTP timestamp ``ts`` of the newest keyframe in ms since the first one (the 32-bit
        clock unwrapped; asking again for the same keyframe gives the same answer)."""
        if self._first is None:
            self._first = ts
        elif ts < self._last and self._last - ts > 1 << 31:  # the 32-bit RTP clock wrapped
            self._wraps += 1
        self._last = ts
        return ((ts + (self._wraps << 32)) - self._first) * self._tick_ms

    def clip_template(self) -> ClipTemplate:
        """Clips of this source: its Annex B keyframes (parameter sets in front), probed as raw
        H.264/H.265 when the clip is written; timestamps in ms."""
        return ClipTemplate(None, self.track.codec, Fraction(1, 1000), True)

    @staticmethod
    def _no_keyframe(wait: float, packets: int, undecodable: int) -> str:
        if undecodable:
            return f"no decodable keyframe in {wait:g} s ({undecodable} the decoder refused)"
        if packets:
            return (f"no keyframe in {wait:g} s although video arrives ({packets} RTP packets, none of an IDR frame): "
                    "the camera may use intra refresh; give it a keyframe (I-frame) interval or use decode='all'")
        return f"no keyframe in {wait:g} s: no video packets arrived"

    def interrupt(self) -> None:
        """Any thread: end a read the capture thread is blocked in (the capture is given up on)."""
        self.session.abort()

    def close(self) -> None:
        self.session.close()


def KeyframeSource(cfg: CameraConfig) -> PyAvSource:  # noqa: N802 - the old name of the keyframe mode
    return PyAvSource(cfg, keyframes_only=True)


def _tcp_refusal(url: str, timeout: float) -> str | None:
    """For a network URL, a clear reason when its TCP port does not accept (None when it does)."""
    parts = urlsplit(url)
    if parts.hostname is None:
        return None
    port = parts.port or {"rtsp": 554, "rtsps": 322, "http": 80, "https": 443}.get(parts.scheme, 0)
    if not port:
        return None
    try:
        with socket.create_connection((parts.hostname, port), timeout=timeout):
            return None
    except ConnectionRefusedError:
        return f"connection refused by {parts.hostname}:{port}"
    except TimeoutError:
        return f"no answer from {parts.hostname}:{port} in {timeout:g} s"
    except OSError as e:
        return f"cannot reach {parts.hostname}:{port}: {e.strerror or e}"


_FFMPEG_RTSP_ONLY: set[str] = set()  # RTSP URLs whose stream gridwatch's client cannot read (not H.264/H.265)


def _refuse_basic_for_ffmpeg(cfg: CameraConfig) -> None:
    """FFmpeg's RTSP client answers Basic authentication whenever asked, sending the password
    readable on the path over plain rtsp://. Unless the camera allows Basic, ask the camera
    first (one DESCRIBE without credentials) and refuse when it offers Basic only."""
    if cfg.rtsp_allow_basic_auth or not cfg.path.lower().startswith("rtsp://") or not urlsplit(cfg.path).password:
        return
    from gridwatch.ingest.rtsp import RtspError, auth_schemes

    try:
        schemes = auth_schemes(cfg.path, cfg.open_timeout_s)
    except RtspError as e:
        raise SourceError(e.code, str(e)) from e
    if "basic" in schemes and "digest" not in schemes:
        raise SourceError("auth_insecure", "the camera offers only Basic authentication, which would send the password "
                          "in clear over rtsp://; not sent (set rtsp_allow_basic_auth = true to allow it, or switch "
                          "the camera to Digest)")


def open_source(cfg: CameraConfig) -> Source:
    if cfg.is_file and not Path(cfg.path).is_file():
        raise SourceError("not_found", f"file not found: {cfg.path}", terminal=True)
    if not cfg.is_file:
        refusal = _tcp_refusal(cfg.path, cfg.open_timeout_s)
        if refusal:
            raise SourceError("open_failed", refusal)
    own_client = (cfg.decode == "keyframes" and cfg.path.lower().startswith("rtsp://")
                  and cfg.rtsp_client == "gridwatch" and cfg.path not in _FFMPEG_RTSP_ONLY)
    if not own_client:
        _refuse_basic_for_ffmpeg(cfg)
    if cfg.decode == "keyframes":
        if own_client:
            from gridwatch.ingest.rtsp import RtspError, UnsupportedStream

            try:
                return RtpKeyframeSource(cfg)
            except UnsupportedStream as e:
                # remembered, so reconnects go straight to FFmpeg: opening a second session right
                # after the first can meet a server still tearing the first one down (a 5xx)
                _FFMPEG_RTSP_ONLY.add(cfg.path)
                log.info("camera %s: %s; keyframes through FFmpeg's RTSP client instead", cfg.name, e)
            except RtspError as e:
                raise SourceError(e.code, str(e)) from e
        return PyAvSource(cfg, keyframes_only=True)
    return PyAvSource(cfg, keyframes_only=False) if cfg.decoder == "pyav" else OpenCvSource(cfg)


def lower_thread_priority(nice: int) -> None:
    """Lower the calling thread's scheduling priority by ``nice`` (Linux: per thread; threads it
    starts afterwards inherit it). Elsewhere, or when not allowed, nothing happens."""
    if nice <= 0 or not sys.platform.startswith("linux"):
        return
    try:
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + nice))
    except OSError as e:  # pragma: no cover - a sandbox may refuse
        log.debug("cannot lower the capture thread's priority: %s", e)


def _as_source_error(camera: str, e: Exception) -> SourceError:
    """Any exception from opening or reading a source as a camera error (a bug shows its traceback
    in the log once, the camera a reason, and it reconnects with backoff)."""
    if isinstance(e, SourceError):
        return e
    log.error("camera %s: unexpected %s while capturing", camera, type(e).__name__, exc_info=e)
    return SourceError("unexpected", f"unexpected error: {type(e).__name__}: {redact_url(str(e))[:200]}")


# --- one camera ----------------------------------------------------------------------------------
class Camera:
    """One camera's capture thread, slot, status and counters. Driven by :class:`VideoCollector`."""

    def __init__(self, cfg: CameraConfig, on_status: Callable[[StatusChange], None] | None = None,
                 on_frame: Callable[[], None] | None = None, rng: random.Random | None = None,
                 nice: int = 0) -> None:
        self.cfg = cfg
        self.nice = nice  # the capture thread lowers its priority by this much (Linux)
        self.name = cfg.name
        self.slot = LatestFrameSlot(on_frame)
        self.counters = CameraCounters()
        self.state = CameraState.CONNECTING
        self.reason = "starting"
        self._on_status = on_status
        self._rng = rng or random.Random()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._gen = 0
        self._thread: threading.Thread | None = None
        self._src: Source | None = None  # the current capture's open source (interrupted when given up on)
        self._seq = 0
        self._stale_requested = False
        self.last_frame_at = 0.0  # monotonic time of the last decoded frame
        # scene epoch of the frames handed over (see Frame.epoch): a new one on every connection,
        # every pass of a looping file, and a jump or a gap in the stream's clock or the decoding
        self.epoch = 0
        self._last_pts: float | None = None
        self._last_decoded = 0.0  # monotonic time the previous frame of this epoch was decoded
        self._first_frame_at = 0.0  # monotonic time the current connection's first frame was decoded
        self._pump_error = False  # the last _pump ended on a read error
        self.heartbeat = time.monotonic()  # the capture thread's last sign of progress
        # called on the capture thread with each kept frame before it is handed over (the motion
        # gate, on the luma plane while it is still in this core's cache); True: the frame needs
        # no analysis (counted as gated, not handed over)
        self.prepare: Callable[[Frame], bool] | None = None
        # the camera's recent compressed packets, for evidence clips (None: none kept)
        self.packets: PacketRing | None = None

    # status ---------------------------------------------------------------------------------
    def _set_state(self, gen: int | None, new: CameraState, reason: str) -> None:
        with self._lock:
            if gen is not None and gen != self._gen:
                return  # an abandoned thread has no say
            old = self.state
            self.state, self.reason = new, reason
        if old != new:
            level = logging.INFO if new is CameraState.ONLINE else logging.WARNING
            log.log(level, "camera %s: %s -> %s (%s)", self.name, old.value, new.value, reason)
            if self._on_status is not None:
                try:
                    self._on_status(StatusChange(self.name, old, new, reason, int(time.time() * 1000)))
                except Exception:  # a broken callback must not kill the capture thread
                    log.exception("camera %s: status callback failed", self.name)

    def _error(self, code: str) -> None:
        with self._lock:
            self.counters.errors[code] += 1

    def _new_epoch(self) -> None:
        """What comes next is not continuous with what came before (a reconnect, a loop's restart,
        a jump or a gap): frames get a new epoch, and the rules drop their evidence at it."""
        with self._lock:
            self.epoch += 1
            self.counters.discontinuities += 1
        self._last_pts = None
        if self.packets is not None:  # no clip spans a discontinuity either
            self.packets.reset()

    # thread control -------------------------------------------------------------------------
    def start(self, delay_s: float = 0.0) -> None:
        """Start capturing; the thread first waits ``delay_s`` (a staggered start, still
        ``connecting``; stop ends the wait at once)."""
        self._stop.clear()
        self._spawn(delay_s)

    def _spawn(self, delay_s: float = 0.0) -> None:
        with self._lock:
            self._gen += 1
            gen = self._gen
            self.heartbeat = time.monotonic()
            self._stale_requested = False
        self._thread = threading.Thread(target=self._start_after, args=(gen, delay_s), name=f"camera-{self.name}",
                                        daemon=True)
        self._thread.start()

    def _start_after(self, gen: int, delay_s: float) -> None:
        if delay_s > 0:
            self._wait(delay_s, gen)
        self._run(gen)

    def _interrupt(self, src: Source | None = None) -> None:
        """End a capture's blocking read (default: the current one's), if its source can
        (gridwatch's RTSP client); the capture thread then closes the source and ends."""
        if src is None:
            with self._lock:
                src, self._src = self._src, None
        interrupt = getattr(src, "interrupt", None)
        if interrupt is not None:
            interrupt()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._interrupt()
        t = self._thread
        if t is not None:
            t.join(timeout)
        self._set_state(None, CameraState.OFFLINE, "stopped")

    @property
    def capturing(self) -> bool:
        """The capture thread is running (False after stop or a terminal error)."""
        t = self._thread
        return t is not None and t.is_alive() and not self._stop.is_set()

    def _alive(self, gen: int) -> bool:
        return not self._stop.is_set() and gen == self._gen

    def request_reconnect(self, reason: str) -> None:
        """Watchdog: the stream went quiet; the capture thread reconnects when its read returns."""
        self._error("stale")
        with self._lock:
            self._stale_requested = True
            gen = self._gen
        self._set_state(gen, CameraState.RECONNECTING, reason)

    def abandon(self, reason: str) -> None:
        """Watchdog: the thread is stuck; leave it behind (it exits when it wakes) and start afresh."""
        self._error("hung")
        self._set_state(None, CameraState.RECONNECTING, reason)
        with self._lock:
            self.counters.reconnects += 1
            src, self._src = self._src, None
        if getattr(src, "ring", None) is not None:
            src.ring = None  # the abandoned capture keeps no packets beside its replacement
        self._spawn()
        self._interrupt(src)  # it then ends and closes its connection instead of reading on beside the new one

    def _backoff(self, failures: int) -> float:
        c = self.cfg
        delay = min(c.backoff_max_s, c.backoff_initial_s * 2 ** max(0, failures - 1))
        return delay * (1 + c.backoff_jitter * (2 * self._rng.random() - 1))

    @property
    def patience_s(self) -> float:
        """How long the capture thread may go without a heartbeat before the watchdog replaces it:
        its longest legitimate wait (open, read, then stale) and a margin."""
        c = self.cfg
        wait = c.read_timeout_s
        if c.decode == "keyframes" and c.rtsp_client == "gridwatch" and not c.is_file:
            wait = c.open_timeout_s + max(wait, c.rtsp_keyframe_timeout_s)  # port probe, then open, then a keyframe
        elif not c.rtsp_allow_basic_auth and c.url.lower().startswith("rtsp://") and "@" in c.url:
            wait += c.open_timeout_s  # FFmpeg's client: first the camera's authentication schemes
        return c.open_timeout_s + wait + c.stale_after_s + 2.0

    def _wait(self, seconds: float, gen: int) -> None:
        """Sleep ``seconds`` (stop ends it at once), beating often enough for the watchdog only:
        with hundreds of cameras each pacing its file, a beat every 0.25 s was thousands of wake-ups
        (and GIL hand-overs) a second."""
        end = time.monotonic() + seconds
        beat = max(0.25, self.patience_s / 2)
        while self._alive(gen):
            left = end - time.monotonic()
            if left <= 0:
                return
            self.heartbeat = time.monotonic()
            self._stop.wait(min(left, beat))

    # the capture thread ---------------------------------------------------------------------
    def _run(self, gen: int) -> None:
        lower_thread_priority(self.nice)
        failures = 0
        broken_passes = 0  # passes of a looping file in a row that broke off with a read error
        first_attempt = True
        clock = PlayClock()  # pacing of a file (realtime), across the passes of a loop
        while self._alive(gen):
            if not first_attempt:
                with self._lock:
                    self.counters.reconnects += 1
            first_attempt = False
            self.heartbeat = time.monotonic()
            try:
                src = open_source(self.cfg)
            except Exception as e:  # noqa: BLE001 - whatever a camera does, its thread goes on
                e = _as_source_error(self.name, e)
                self._error(e.code)
                failures += 1
                clock = PlayClock()
                if e.terminal:
                    self._set_state(gen, CameraState.OFFLINE, str(e))
                    return
                self._after_failure(gen, failures, str(e))
                continue
            with self._lock:
                self._src = src if gen == self._gen else None
            if self.packets is not None and gen == self._gen:
                self.packets.attach(src)
            self._new_epoch()  # a new connection (or the file opened again): not the moment before
            try:
                while True:
                    delivered, end_reason, terminal = self._pump(src, gen, clock)
                    broken = self._pump_error
                    looping = (self._alive(gen) and self.cfg.is_file and self.cfg.loop and delivered and not terminal
                               and (end_reason == _END_OF_FILE or broken))
                    if looping and broken:
                        # the file breaks off part-way (cut short, corrupt): this pass counts as a
                        # failure, and its own length paces the next (the container's duration
                        # would claim the part that is missing)
                        broken_passes += 1
                        if broken_passes >= self.cfg.offline_after_failures:
                            terminal, looping = True, False
                            end_reason = (f"{end_reason}; the file broke off in {broken_passes} passes in a row "
                                          "(truncated or corrupt file)")
                        else:
                            clock.next_pass(float("nan"), src.fps)
                    elif looping:
                        broken_passes = 0
                        clock.next_pass(getattr(src, "duration_ms", float("nan")), src.fps)
                    rewind = getattr(src, "rewind", None)
                    if looping and not broken and rewind is not None and rewind():
                        self._new_epoch()  # the loop joins the clip's end to its start
                        continue  # loop: from the start again, without reopening
                    break
            finally:
                with self._lock:
                    if self._src is src:
                        self._src = None
                if getattr(src, "ring", None) is not None:
                    src.ring = None
                    if gen == self._gen:
                        self.packets.reset()  # clips being collected end with the connection
                src.close()
            if not self._alive(gen):
                return
            if terminal:
                self._set_state(gen, CameraState.OFFLINE, end_reason)
                return
            if self.cfg.is_file and self.cfg.loop and delivered:
                first_attempt = True  # loop: reopen at the start; not a reconnect, no status change
                continue  # (the clock goes on: the pass was counted above)
            clock = PlayClock()  # a new connection: its own clock
            lasted = time.monotonic() - self._first_frame_at
            healthy = delivered and lasted >= self.cfg.min_session_s
            failures = 0 if healthy else failures + 1
            if healthy:
                self._set_state(gen, CameraState.RECONNECTING, end_reason)
                continue  # it worked for a while: retry at once
            if delivered:  # it connects, then breaks: over and over, that is a failing camera
                end_reason = f"{end_reason} {lasted:.1f} s after connecting"
            self._after_failure(gen, failures, end_reason)

    def _after_failure(self, gen: int, failures: int, reason: str) -> None:
        state = CameraState.OFFLINE if failures >= self.cfg.offline_after_failures else CameraState.RECONNECTING
        delay = self._backoff(failures)
        self._set_state(gen, state, f"{reason}; retry in {delay:.1f} s")
        self._wait(delay, gen)

    def _pump(self, src: Source, gen: int, clock: PlayClock | None = None) -> tuple[bool, str, bool]:
        """Read until the source ends, fails or goes stale: (delivered any frame, reason, terminal).
        ``clock`` paces a realtime file (and carries on over the passes of a loop)."""
        cfg = self.cfg
        interval = 1.0 / cfg.analysis_fps if cfg.analysis_fps else 0.0
        last_kept = -1e18
        delivered = False
        clock = clock if clock is not None else PlayClock()
        keyframes = cfg.decode == "keyframes"
        self._pump_error = False
        frames = 0
        gap_ms = cfg.discontinuity_gap_s * 1000.0
        # per-camera constants, read once (is_file is a property that parses the URL)
        is_file = cfg.is_file
        paced = is_file and cfg.realtime
        gap_s = cfg.discontinuity_gap_s
        width = cfg.analysis_width
        deferred = isinstance(src, DecodedFrames)
        while self._alive(gen):
            try:
                pts = src.next()
            except Exception as e:  # noqa: BLE001 - a parse error is a camera error, never the thread's end
                if not self._alive(gen):
                    return delivered, "stopped", False  # interrupted: given up on or stopped
                e = _as_source_error(self.name, e)
                self._error(e.code)
                self._pump_error = True
                if is_file and delivered:  # played a while, then broke off: cut short or corrupt
                    at = f" at {pts_s:.1f} s" if (pts_s := (self._last_pts or float("nan")) / 1000.0) == pts_s else ""
                    return True, f"{e} after {frames} frames{at}", not cfg.loop
                return delivered, str(e), is_file and not delivered
            now = time.monotonic()
            self.heartbeat = now
            if pts is not None:
                last = self._last_pts
                if (last is not None and pts == pts and (pts < last or pts - last > gap_ms)) or (
                        last is not None and now - self._last_decoded > gap_s):
                    self._new_epoch()  # the stream's clock went back or jumped, or decoding stalled
                self._last_pts = pts if pts == pts else (last if last is not None else 0.0)
                self._last_decoded = now
                frames += 1
            if self._stale_requested:
                with self._lock:
                    self._stale_requested = False
                return delivered, self.reason, False
            if pts is None:
                if not delivered:
                    self._error("no_frames")
                    if is_file:
                        return False, "no decodable frame (corrupt or truncated file)", True
                    return False, "stream ended before the first frame", False
                if is_file:
                    return True, _END_OF_FILE, not cfg.loop
                self._error("stream_ended")
                return True, "stream ended (server closed the connection or read timed out)", False
            self.last_frame_at = now
            with self._lock:
                self.counters.decoded += 1
                seq = self._seq
                self._seq += 1
            if not delivered:
                delivered = True
                self._first_frame_at = now
                w, h = src.size
                self._set_state(gen, CameraState.ONLINE, f"receiving {w}x{h}")
            if paced and pts == pts:
                ahead = clock.wait_s(pts, now)
                if 0 < ahead < 0.25:  # one frame's wait: a plain sleep costs a third of an Event wait
                    time.sleep(ahead)  # and stops as promptly (the loop checks before the next frame)
                elif ahead > 0:
                    self._wait(ahead, gen)
            t = pts / 1000.0 if is_file and pts == pts else now
            if t < last_kept:  # the stream restarted its clock
                last_kept = -1e18
            if t - last_kept < interval * 0.999:
                with self._lock:
                    self.counters.skipped += 1
                continue
            last_kept = t
            full_w = src.size[0]
            if deferred:  # converted only if analysis needs the picture
                extra = src.deferred(width)
                frame = Frame(self.name, seq, int(time.time() * 1000), pts, None, extra["size"][0] / full_w, keyframes,
                              **extra)
                frame.epoch = self.epoch
                if self.prepare is not None:
                    try:
                        done = self.prepare(frame)
                    except Exception:  # analysis then does it itself; never stop capturing for it
                        log.exception("camera %s: preparing a frame failed", self.name)
                        self.prepare, done, frame.motion = None, False, None
                    if done:  # the motion gate found it still, nothing due: analysis need not wake
                        with self._lock:
                            self.counters.gated += 1
                        continue
            else:
                try:
                    img = src.image(width)
                except SourceError as e:
                    self._error(e.code)
                    continue
                frame = Frame(self.name, seq, int(time.time() * 1000), pts, img, img.shape[1] / full_w, keyframes)
                frame.epoch = self.epoch
            if gen == self._gen and self.slot.put(frame):
                with self._lock:
                    self.counters.dropped += 1
        return delivered, "stopped", False

    def take(self) -> Frame | None:
        f = self.slot.take()
        if f is not None:
            with self._lock:
                self.counters.analysed += 1
        return f


# --- many cameras --------------------------------------------------------------------------------
class VideoCollector:
    """All cameras of one node: their threads, the watchdog, and the frame hand-over."""

    def __init__(self, cameras: Iterable[CameraConfig], on_status: Callable[[StatusChange], None] | None = None,
                 watchdog_interval_s: float | None = None, seed: int | None = None, capture_nice: int = 10,
                 start_rate: float = 0.0) -> None:
        self._new_frame = threading.Event()
        rng = random.Random(seed)
        self.cameras: dict[str, Camera] = {}
        for cfg in cameras:
            if cfg.name in self.cameras:
                raise ValueError(f"duplicate camera name {cfg.name!r}")
            self.cameras[cfg.name] = Camera(cfg, on_status, self._new_frame.set, random.Random(rng.random()),
                                            nice=capture_nice)
        if watchdog_interval_s is None:
            # a fifth of the shortest stale_after_s (so a stale camera is noticed at most 20 % late),
            # at most 1 s: each round wakes a thread, which on a one-camera box cost ~1 % of the
            # camera's decoding at 4 rounds a second
            shortest = min((cam.cfg.stale_after_s for cam in self.cameras.values()), default=5.0)
            watchdog_interval_s = min(1.0, shortest / 5)
        self.watchdog_interval_s = watchdog_interval_s
        self.start_rate = start_rate
        # extra start delay per camera (s), on top of the staggered start: for tests and benchmarks
        self.start_offsets: dict[str, float] = {}
        self._stop = threading.Event()
        self._watchdog: threading.Thread | None = None

    def start(self) -> "VideoCollector":
        """Start every camera: ``start_rate`` a second (camera i after i / start_rate seconds;
        0 = all at once), and the watchdog."""
        self._stop.clear()
        for i, cam in enumerate(self.cameras.values()):
            delay = i / self.start_rate if self.start_rate > 0 else 0.0
            cam.start(delay + self.start_offsets.get(cam.name, 0.0))
        self._watchdog = threading.Thread(target=self._watch, name="camera-watchdog", daemon=True)
        self._watchdog.start()
        return self

    def wake(self) -> None:
        """Ends a :meth:`collect` that is waiting for frames now (it returns what there is)."""
        self._new_frame.set()

    def stop(self) -> None:
        self._stop.set()
        if self._watchdog is not None:
            self._watchdog.join(5)
        for cam in self.cameras.values():
            cam._stop.set()  # all threads wind down in parallel, then each is joined
        for cam in self.cameras.values():
            cam.stop()

    def __enter__(self) -> "VideoCollector":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def collect(self, timeout: float | None = None) -> list[Frame]:
        """The newest untaken frame of every camera that has one; waits up to ``timeout`` for any."""
        frames = self._take_all()
        if frames or timeout == 0:
            return frames
        self._new_frame.wait(timeout)
        return self._take_all()

    def _take_all(self) -> list[Frame]:
        self._new_frame.clear()
        return [f for cam in self.cameras.values() if (f := cam.take()) is not None]

    def status(self) -> dict[str, tuple[CameraState, str]]:
        return {n: (c.state, c.reason) for n, c in self.cameras.items()}

    def counters(self) -> dict[str, dict]:
        return {n: c.counters.as_dict() for n, c in self.cameras.items()}

    def _watch(self) -> None:
        while not self._stop.wait(self.watchdog_interval_s):
            now = time.monotonic()
            for cam in self.cameras.values():
                cfg = cam.cfg
                if cam.state is CameraState.ONLINE and now - cam.last_frame_at > cfg.stale_after_s:
                    cam.request_reconnect(f"stale: no frame for {now - cam.last_frame_at:.1f} s")
                # a live thread always beats within its longest legitimate wait
                patience = cam.patience_s
                if cam.capturing and now - cam.heartbeat > patience:
                    cam.abandon(f"capture thread stuck for {now - cam.heartbeat:.1f} s; replaced")
