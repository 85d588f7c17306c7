"""GStreamer side of the test RTSP server: run with the system Python that has PyGObject.

This file is a stand-alone script. It imports nothing from gridwatch (the system Python that can
import ``gi`` is usually not the project's interpreter); :mod:`gridwatch.servers.rtsp` launches it
and talks to it only through the command line, stdin and stdout.

Two sub-commands:

``serve --port P --mounts JSON [--auth JSON]``
    Serve each mount (a JSON list of objects) on ``rtsp://127.0.0.1:P/<path>``; with ``--auth``
    (``{"user", "password", "method": "basic"|"digest"}``) every mount asks for those credentials:

    * ``{"kind": "test", "path": ..., "width", "height", "fps", "pattern", "keyint", "codec"}``:
      a live ``videotestsrc`` camera encoded with x264 (or JPEG with ``"codec": "jpeg"``),
      shared by all clients.
    * ``{"kind": "file", "path": ..., "file": ..., "loop": bool, "codec": "h264"|"h265"}``: an
      H.264 (default) or H.265 mp4 file.
      ``loop=false`` plays it once per client (``filesrc ! qtdemux``). ``loop=true`` reads the
      file's access units into memory once and feeds them through an ``appsrc`` forever with
      ever-increasing timestamps, so the loop is gapless and needs no re-encode and no seek.

    Prints ``READY <port>`` on stdout once the server is listening; stops on SIGTERM/SIGINT.

``encode --width W --height H --fps F --keyint K --out FILE``
    Read raw BGR frames (W*H*3 bytes each) from stdin until EOF and write an H.264 mp4
    (baseline-style: no B-frames, so decode order equals display order).
"""
from __future__ import annotations

import argparse
import json
import signal
import sys

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtsp", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtsp, GstRtspServer  # noqa: E402

PAYLOADER = "rtph264pay name=pay0 pt=96 config-interval=1"
# a file's video track and what payloads it, by codec. H.265 (RFC 7798) goes through h265parse:
# rtph265pay takes "hvc1" or Annex B but not "hev1" (FFmpeg's mp4 muxer writes hev1), and the
# parser only repackages the access units (parameter sets and slices unchanged)
FILE_TRACKS = {"h264": ("video/x-h264", PAYLOADER),
               "h265": ("video/x-h265", "h265parse ! rtph265pay name=pay0 pt=96 config-interval=1")}


def x264(fps: int, keyint: int) -> str:
    return (f"x264enc tune=zerolatency speed-preset=ultrafast bframes=0 key-int-max={keyint} "
            f"bitrate={max(256, 64 * fps)}")


def read_access_units(path: str, caps_filter: str = "video/x-h264") -> tuple[Gst.Caps, list[tuple[bytes, int, int, bool]]]:
    """Demux an mp4 into (caps, [(data, pts_ns, duration_ns, keyframe), ...])."""
    pipe = Gst.parse_launch(
        f'filesrc location="{path}" ! qtdemux ! {caps_filter} ! appsink name=sink sync=false')
    sink = pipe.get_by_name("sink")
    pipe.set_state(Gst.State.PLAYING)
    units: list[tuple[bytes, int, int, bool]] = []
    caps = None
    while True:
        sample = sink.emit("pull-sample")
        if sample is None:
            break
        caps = sample.get_caps()
        buf = sample.get_buffer()
        pts = buf.pts if buf.pts != Gst.CLOCK_TIME_NONE else buf.dts
        units.append((buf.extract_dup(0, buf.get_size()), pts, buf.duration,
                      not buf.has_flags(Gst.BufferFlags.DELTA_UNIT)))
    bus = pipe.get_bus()
    err = bus.pop_filtered(Gst.MessageType.ERROR)
    pipe.set_state(Gst.State.NULL)
    if err is not None:
        raise RuntimeError(f"{path}: {err.parse_error()[0].message}")
    if not units or caps is None:
        raise RuntimeError(f"{path}: no {caps_filter} video track")
    return caps, units


class LoopedFile:
    """Feeds one media's appsrc with the file's access units, looping with rising timestamps."""

    def __init__(self, caps: Gst.Caps, units: list[tuple[bytes, int, int, bool]]) -> None:
        self.caps = caps
        self.units = units
        first = units[0][1]
        last_pts, last_dur = units[-1][1], units[-1][2]
        step = last_dur if last_dur not in (0, Gst.CLOCK_TIME_NONE) else (last_pts - first) // max(1, len(units) - 1)
        self.period = last_pts - first + step
        self.first = first
        self.index = 0
        self.loops = 0

    def attach(self, media: GstRtspServer.RTSPMedia) -> None:
        src = media.get_element().get_by_name("src")
        src.set_property("caps", self.caps)
        src.connect("need-data", self.need_data)

    def need_data(self, src: Gst.Element, _length: int) -> None:
        data, pts, dur, key = self.units[self.index]
        buf = Gst.Buffer.new_wrapped(data)
        buf.pts = buf.dts = pts - self.first + self.loops * self.period
        buf.duration = dur
        if not key:
            buf.set_flags(Gst.BufferFlags.DELTA_UNIT)
        self.index += 1
        if self.index == len(self.units):
            self.index = 0
            self.loops += 1
        src.emit("push-buffer", buf)


def make_factory(mount: dict) -> GstRtspServer.RTSPMediaFactory:
    factory = GstRtspServer.RTSPMediaFactory()
    kind = mount["kind"]
    if kind == "test":
        w, h, fps = int(mount["width"]), int(mount["height"]), int(mount["fps"])
        keyint = int(mount.get("keyint") or fps)
        encode = ("video/x-raw,format=I420 ! jpegenc ! rtpjpegpay name=pay0 pt=26" if mount.get("codec") == "jpeg"
                  else f"{x264(fps, keyint)} ! {PAYLOADER}")
        factory.set_launch(
            f"( videotestsrc is-live=true pattern={mount.get('pattern', 'ball')} "
            f"! video/x-raw,width={w},height={h},framerate={fps}/1 ! videoconvert "
            f"! {encode} )")
        factory.set_shared(True)
    elif kind == "file" and not mount.get("loop", True):
        track, pay = FILE_TRACKS[mount.get("codec", "h264")]
        factory.set_launch(f'( filesrc location="{mount["file"]}" ! qtdemux ! {track} ! {pay} )')
    elif kind == "file":
        track, pay = FILE_TRACKS[mount.get("codec", "h264")]
        caps, units = read_access_units(mount["file"], track)
        factory.set_launch(f"( appsrc name=src is-live=false format=time ! {pay} )")
        factory.set_shared(True)
        factory.connect("media-configure", lambda _f, media: LoopedFile(caps, units).attach(media))
    else:
        raise ValueError(f"unknown mount kind {kind!r}")
    return factory


def require_auth(server: GstRtspServer.RTSPServer, factories: list, auth: dict) -> None:
    """Every mount asks for ``auth["user"]`` / ``auth["password"]`` (Basic or Digest)."""
    a = GstRtspServer.RTSPAuth()
    token = GstRtspServer.RTSPToken()
    token.set_string("media.factory.role", "camera-user")
    if auth.get("method", "digest") == "digest":
        a.set_supported_methods(GstRtsp.RTSPAuthMethod.DIGEST)
        a.add_digest(auth["user"], auth["password"], token)
    else:
        a.set_supported_methods(GstRtsp.RTSPAuthMethod.BASIC)
        a.add_basic(GstRtspServer.RTSPAuth.make_basic(auth["user"], auth["password"]), token)
    server.set_auth(a)
    role = Gst.Structure.new_from_string(
        "camera-user, media.factory.access=(boolean)true, media.factory.construct=(boolean)true")
    for f in factories:
        f.add_role_from_structure(role)


def serve(port: int, mounts: list[dict], auth: dict | None = None) -> None:
    server = GstRtspServer.RTSPServer()
    server.set_address("127.0.0.1")
    server.set_service(str(port))
    points = server.get_mount_points()
    factories = []
    for m in mounts:
        factories.append(make_factory(m))
        points.add_factory("/" + m["path"].lstrip("/"), factories[-1])
    if auth:
        require_auth(server, factories, auth)
    loop = GLib.MainLoop()
    if server.attach(None) == 0:
        raise SystemExit(f"cannot listen on 127.0.0.1:{port}")
    for sig in (signal.SIGTERM, signal.SIGINT):
        GLib.unix_signal_add(GLib.PRIORITY_HIGH, sig, loop.quit)
    print(f"READY {port}", flush=True)
    loop.run()


def encode(width: int, height: int, fps: int, keyint: int, out: str) -> None:
    pipe = Gst.parse_launch(
        f"fdsrc fd=0 blocksize={width * height * 3} ! rawvideoparse width={width} height={height} "
        f"format=bgr framerate={fps}/1 ! videoconvert ! video/x-raw,format=I420 "
        f'! {x264(fps, keyint)} ! mp4mux ! filesink location="{out}"')
    pipe.set_state(Gst.State.PLAYING)
    msg = pipe.get_bus().timed_pop_filtered(Gst.CLOCK_TIME_NONE, Gst.MessageType.EOS | Gst.MessageType.ERROR)
    pipe.set_state(Gst.State.NULL)
    if msg.type == Gst.MessageType.ERROR:
        raise SystemExit(f"encode failed: {msg.parse_error()[0].message}")


def main(argv: list[str]) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("serve")
    s.add_argument("--port", type=int, required=True)
    s.add_argument("--mounts", required=True, help="JSON list of mount objects")
    s.add_argument("--auth", help='JSON {"user", "password", "method": "basic"|"digest"}: credentials every mount asks for')
    e = sub.add_parser("encode")
    for name in ("width", "height", "fps", "keyint"):
        e.add_argument(f"--{name}", type=int, required=True)
    e.add_argument("--out", required=True)
    a = p.parse_args(argv)
    Gst.init(None)
    if a.cmd == "serve":
        serve(a.port, json.loads(a.mounts), json.loads(a.auth) if a.auth else None)
    else:
        encode(a.width, a.height, a.fps, a.keyint, a.out)


if __name__ == "__main__":
    main(sys.argv[1:])
