"""Camera profiles (RTSP URL templates of common vendors' main and sub streams) and accelerator discovery.

    rtsp_url("hikvision", "10.0.3.21", stream="sub", channel=1, user="${CAM_USER}", password="${CAM_PASSWORD}")
    # rtsp://${CAM_USER}:${CAM_PASSWORD}@10.0.3.21:554/Streaming/Channels/102

The templates are the vendors' documented defaults; a camera configured otherwise (custom ports,
extra profiles) takes its URL as is. For ONVIF cameras the real stream URI comes from the device's
``GetStreamUri``; the generic template is only the most common answer.
Use the **sub stream** for analysis (D1/720p at low bitrate costs a fraction of the 4K main stream
to decode) and the main stream for evidence clips when needed.
"""
from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass
from urllib.parse import quote


@dataclass(frozen=True, slots=True)
class CameraProfile:
    vendor: str
    main: str  # path template with {channel}
    sub: str
    port: int = 554
    note: str = ""


PROFILES: dict[str, CameraProfile] = {
    "hikvision": CameraProfile("hikvision", "/Streaming/Channels/{channel}01", "/Streaming/Channels/{channel}02",
                               note="NVR channels: {channel} = camera number; third stream {channel}03 where enabled"),
    "dahua": CameraProfile("dahua", "/cam/realmonitor?channel={channel}&subtype=0",
                           "/cam/realmonitor?channel={channel}&subtype=1", note="also Amcrest and Lorex OEM models"),
    "uniview": CameraProfile("uniview", "/unicast/c{channel}/s0/live", "/unicast/c{channel}/s1/live",
                             note="older firmware: /media/video1 (main), /media/video2 (sub)"),
    "onvif": CameraProfile("onvif", "/onvif1", "/onvif2",
                           note="generic guess; ask the device (ONVIF Media GetStreamUri) for the real URI"),
}


def rtsp_url(vendor: str, host: str, stream: str = "sub", channel: int = 1, user: str | None = None,
             password: str | None = None, port: int | None = None) -> str:
    """The RTSP URL of a camera's main or sub stream from its vendor's template."""
    prof = PROFILES.get(vendor.lower())
    if prof is None:
        raise ValueError(f"unknown camera vendor {vendor!r}; known: {', '.join(sorted(PROFILES))}")
    if stream not in ("main", "sub"):
        raise ValueError("stream is 'main' or 'sub'")
    path = (prof.main if stream == "main" else prof.sub).format(channel=channel)
    auth = ""
    if user:
        keep = "${}:-"  # ${ENV} placeholders stay readable for the config loader
        auth = quote(user, safe=keep) + (":" + quote(password, safe=keep) if password else "") + "@"
    return f"rtsp://{auth}{host}:{port or prof.port}{path}"


def onnx_providers() -> list[str]:
    """onnxruntime execution providers available here, in gridwatch's fallback order."""
    import onnxruntime as ort

    from gridwatch.detectors.onnx_session import PROVIDER_PREFERENCE

    have = ort.get_available_providers()
    return [p for p in PROVIDER_PREFERENCE if p in have] + [p for p in have if p not in PROVIDER_PREFERENCE]


def ffmpeg_hwaccels(ffmpeg: str | None = None) -> list[str] | None:
    """``ffmpeg -hwaccels`` of the ffmpeg binary on PATH (None when there is none)."""
    exe = ffmpeg or shutil.which("ffmpeg")
    if not exe:
        return None
    try:
        out = subprocess.run([exe, "-hide_banner", "-hwaccels"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    lines = [ln.strip() for ln in out.splitlines()]
    return [ln for ln in lines[lines.index("Hardware acceleration methods:") + 1:] if ln] if \
        "Hardware acceleration methods:" in lines else []


def pyav_hw_decoders() -> list[str]:
    """Hardware H.264/HEVC decoders compiled into the FFmpeg that PyAV (keyframe mode) links."""
    try:
        import av
    except ImportError:
        return []
    names = sorted(getattr(av, "codecs_available", set()))
    return [n for n in names if re.search(r"(h264|hevc)_(cuvid|qsv|vaapi|v4l2m2m|rkmpp|videotoolbox|nvdec)", n)]


def report() -> str:
    """What this box has for video: CPU cores, ONNX providers, hardware decoders, camera profiles."""
    import os

    lines = [f"cpu cores: {os.cpu_count()}"]
    try:
        lines.append("onnxruntime providers (fallback order): " + ", ".join(onnx_providers()))
    except ImportError:
        lines.append("onnxruntime: not installed")
    hw = ffmpeg_hwaccels()
    lines.append("ffmpeg -hwaccels (compiled in; each needs its device and driver): "
                 + ("no ffmpeg binary on PATH" if hw is None else (", ".join(hw) or "none")))
    lines.append("PyAV hardware decoders: " + (", ".join(pyav_hw_decoders()) or "none"))
    lines.append("camera URL templates (main | sub):")
    for p in PROFILES.values():
        lines.append(f"  {p.vendor:10} rtsp://HOST:{p.port}{p.main.format(channel=1)}  |  {p.sub.format(channel=1)}"
                     + (f"   ({p.note})" if p.note else ""))
    return "\n".join(lines)


def snapshot(cam):
    """One frame of a configured camera (a ``VideoCameraConfig``) at the size the source sends it,
    as BGR uint8: what its masks' and zones' corners are drawn on. Raises ``SourceError`` when the
    source cannot be opened or sends no frame within its open and read timeouts."""
    import time

    from gridwatch.ingest.video import SourceError, open_source

    cfg = cam.model_copy(update={"analysis_width": None})
    deadline = time.monotonic() + cam.open_timeout_s + cam.read_timeout_s
    src = open_source(cfg)
    try:
        while time.monotonic() < deadline:
            if src.next() is None:
                raise SourceError("stream_ended", "the stream ended before its first frame")
            try:
                return src.image(None)
            except SourceError:
                continue  # a frame that could not be converted: the next one
        raise SourceError("read_timeout", "no frame before the camera's open_timeout_s + read_timeout_s")
    finally:
        src.close()


def draw_polygons(image, cam):
    """A copy of ``image`` (the camera's picture at its own size) with the camera's masks (red) and
    zones (yellow, named, with the rules they are for) drawn on it, to check them by eye."""
    import cv2
    import numpy as np

    from gridwatch.detectors.zones import to_fractions

    out = image.copy()
    h, w = out.shape[:2]
    px = lambda poly: np.round(to_fractions(poly, w, h) * [w, h]).astype(np.int32)  # noqa: E731
    if cam.masks:
        shade = out.copy()
        cv2.fillPoly(shade, [px(p) for p in cam.masks], (0, 0, 200))
        out = cv2.addWeighted(shade, 0.4, out, 0.6, 0)
    thick = max(1, round(w / 640))
    for z in cam.zones:
        pts = px(z.polygon)
        cv2.polylines(out, [pts], True, (0, 215, 255), 2 * thick)
        label = z.name + (f" [{', '.join(z.rules)}]" if z.rules else "")
        x, y = int(pts[:, 0].min()), int(pts[:, 1].min())
        cv2.putText(out, label, (x + 4, max(14 * thick, y + 16 * thick)), cv2.FONT_HERSHEY_SIMPLEX, 0.5 * thick,
                    (0, 215, 255), thick, cv2.LINE_AA)
    return out
