"""Evidence clips: a generated event on a file camera and on real RTSP cameras (GStreamer) raises a
warning, and the warning's clip is an MP4 of the camera's own packets (no re-encoding) covering
about [t - pre_s, t + post_s]; retention deletes old clips; the packet ring stays within its bound
whatever a source sends."""
from __future__ import annotations

import json
import os
import struct
import threading
import time
from pathlib import Path

import av
import numpy as np
import pytest

from gridwatch.config import parse
from gridwatch.detectors.evidence import ClipConfig
from gridwatch.ingest.video import PACKET_OVERHEAD, CameraConfig, ClipTemplate, PacketRing, VideoCollector
from gridwatch.models import scenes
from gridwatch.observability import Counters
from gridwatch.servers.rtsp import FileStream, RtspServer, encode_h264
from gridwatch.streams.clips import ClipWriter
from gridwatch.streams.store import Store
from gridwatch.streams.video import VideoRuntime
from tests.helpers import encode_dumping_scene, wait_until

PRE, POST = 2.0, 2.0
FPS = 15


@pytest.fixture(scope="module")
def dumping_mp4(gstreamer, tmp_path_factory) -> Path:
    """10 s at 15 fps, a waste pile appears at 2 s and stays; a keyframe every 5 frames."""
    d = tmp_path_factory.mktemp("clip-scenes")
    return encode_h264((f for f, _ in scenes.dumping_video(150, appear_at=30, seed=1)), d / "dump.mp4", fps=FPS,
                       keyint=5)


def _cfg(tmp_path: Path, camera: dict) -> dict:
    return {"site": {"name": "clips", "data_dir": str(tmp_path / "var")},
            "regions": {"default": "Jiangcheng/Riverside District/East Town/E-02"},
            "video": {"rules": [{"name": "dumping", "kind": "dumping", "params": {"duration_s": 2.0}}],
                      "clips": {"pre_s": PRE, "post_s": POST}},
            "cameras": [{"name": "cam", "analysis_fps": 5, "stale_after_s": 5, "open_timeout_s": 6,
                         "read_timeout_s": 6, **camera}]}


def _raise_and_clip(tmp_path: Path, camera: dict):
    """Run the camera until its warning is raised and its clip written: (warning, clip path, stored evidence)."""
    cfg = parse(_cfg(tmp_path, camera), base_dir=tmp_path)
    store = Store(tmp_path / "gw.db")
    events: list = []
    lock = threading.Lock()

    def on_events(evs):
        with lock:
            events.extend(evs)

    rt = VideoRuntime(cfg, store=store, on_events=on_events)
    with rt:
        wait_until(lambda: any(e == "raised" for e, _ in events), timeout=30, what="a dumping warning")
        w = next(w for e, w in events if e == "raised")
        assert "clip" in w.evidence, w.evidence
        path = cfg.data_dir / cfg.video.clips.dir / w.evidence["clip"]
        wait_until(path.exists, timeout=POST + 10, what="the clip file")
    stored = {d["id"]: d["evidence"] for d in store.warnings(rule="dumping")}
    assert stored[w.id]["clip"] == w.evidence["clip"]  # the stored warning references its clip
    snap = rt.counters.snapshot()["video"]
    assert snap["clips_written"] >= 1 and snap.get("clips_failed", 0) == 0
    return w, path, stored


def _nals(data: bytes) -> list[bytes]:
    """NAL units of an MP4 (avcC, 4-byte lengths) packet."""
    out, i = [], 0
    while i + 4 <= len(data):
        n = struct.unpack(">I", data[i:i + 4])[0]
        out.append(data[i + 4:i + 4 + n])
        i += 4 + n
    return out


def _avcc_params(extradata: bytes) -> list[bytes]:
    """SPS and PPS of an avcC record (without trailing zero bytes, which are not part of a NAL unit
    and which an RTSP server's Annex B stream may carry)."""
    out, i = [], 6
    for _ in range(extradata[5] & 0x1F):
        n = struct.unpack(">H", extradata[i:i + 2])[0]
        out.append(extradata[i + 2:i + 2 + n])
        i += 2 + n
    count, i = extradata[i], i + 1
    for _ in range(count):
        n = struct.unpack(">H", extradata[i:i + 2])[0]
        out.append(extradata[i + 2:i + 2 + n])
        i += 2 + n
    return [x.rstrip(b"\0") for x in out]


def _hvcc_params(extradata: bytes) -> list[bytes]:
    """VPS, SPS and PPS of an hvcC record (ISO/IEC 14496-15: 22 bytes, then arrays of NAL units
    by type), in that order; other arrays (SEI) left out, trailing zero bytes too."""
    assert extradata[0] == 1, "not an hvcC record (Annex B extradata?)"
    by_type: dict[int, list[bytes]] = {}
    count, i = extradata[22], 23
    for _ in range(count):
        t, n_units = extradata[i] & 0x3F, struct.unpack(">H", extradata[i + 1:i + 3])[0]
        i += 3
        for _ in range(n_units):
            n = struct.unpack(">H", extradata[i:i + 2])[0]
            by_type.setdefault(t, []).append(extradata[i + 2:i + 2 + n].rstrip(b"\0"))
            i += 2 + n
    return [x for t in (32, 33, 34) for x in by_type.get(t, [])]


def _params(codec: str, extradata: bytes) -> list[bytes]:
    return _hvcc_params(extradata) if codec == "hevc" else _avcc_params(extradata)


def _nal_type(codec: str, nal: bytes) -> int:
    return (nal[0] >> 1) & 0x3F if codec == "hevc" else nal[0] & 0x1F


def _is_slice(codec: str, nal: bytes) -> bool:
    """A coded slice: H.264 types 1 and 5; H.265 the VCL types 0-31."""
    t = _nal_type(codec, nal)
    return t < 32 if codec == "hevc" else t in (1, 5)


def _is_key_slice(codec: str, nal: bytes) -> bool:
    """A keyframe's slice: H.264 IDR (5); H.265 IRAP (16-21: BLA, IDR, CRA)."""
    t = _nal_type(codec, nal)
    return 16 <= t <= 21 if codec == "hevc" else t == 5


def _slices(packets: list[bytes], codec: str = "h264") -> list[bytes]:
    """The coded slices of length-prefixed (MP4) packets, in order."""
    return [n.rstrip(b"\0") for p in packets for n in _nals(p) if n and _is_slice(codec, n)]


def _check_clip(w, path: Path, source: Path, kind: str, codec: str = "h264") -> list[bytes]:
    """The clip decodes, copies the source's packets (same codec, same slices, same parameter
    sets: no re-encode), and covers about [t - PRE, t + POST] around the warning's frame."""
    with av.open(str(path)) as c, av.open(str(source)) as s:
        cs, ss = c.streams.video[0], s.streams.video[0]
        assert cs.codec_context.name == ss.codec_context.name == codec
        clip_params = _params(codec, bytes(cs.codec_context.extradata))
        assert clip_params and clip_params == _params(codec, bytes(ss.codec_context.extradata))
        meta = json.loads(c.metadata["comment"])
        clip_packets = [bytes(p) for p in c.demux(cs) if p.size]
        src_packets = [bytes(p) for p in s.demux(ss) if p.size]
        duration = float(cs.duration * cs.time_base)
    with av.open(str(path)) as c:
        decoded = sum(1 for _ in c.decode(video=0))
    assert decoded == len(clip_packets) > 1
    assert meta["kind"] == kind == w.evidence["clip_kind"] and meta["warning_ts_ms"] == w.evidence["frame_ts"]
    t = w.evidence["frame_ts"]
    assert meta["start_ms"] <= t - PRE * 1000 + 100, (meta, t)  # from the last keyframe at or before t - pre
    assert meta["end_ms"] >= t + POST * 1000 - 100, (meta, t)
    assert duration <= PRE + POST + 1.5, duration
    # the clip's slices are a run of the source's, byte for byte
    clip_slices, src_slices = _slices(clip_packets, codec), _slices(src_packets, codec)
    assert clip_slices
    if kind == "full":
        i = src_slices.index(clip_slices[0])
        assert src_slices[i:i + len(clip_slices)] == clip_slices
    else:
        src_key = [n for n in src_slices if _is_key_slice(codec, n)]
        assert all(_is_key_slice(codec, n) for n in clip_slices)
        i = src_key.index(clip_slices[0])
        assert src_key[i:i + len(clip_slices)] == clip_slices  # every keyframe of the span, none lost
    return clip_packets


def test_a_file_cameras_warning_gets_a_remuxed_clip(dumping_mp4, tmp_path):
    w, path, _ = _raise_and_clip(tmp_path, {"url": str(dumping_mp4)})
    assert w.evidence["clip_span_s"] == [PRE, POST]
    packets = _check_clip(w, path, dumping_mp4, "full")
    assert len(packets) >= (PRE + POST) * FPS - 2  # every frame, not just keyframes
    # the clip's packets are exactly a run of the file's packets (no change at all)
    with av.open(str(dumping_mp4)) as s:
        src = [bytes(p) for p in s.demux(video=0) if p.size]
    i = src.index(packets[0])
    assert src[i:i + len(packets)] == packets


def test_a_keyframe_only_file_camera_gets_a_clip_of_keyframes(dumping_mp4, tmp_path):
    w, path, _ = _raise_and_clip(tmp_path, {"url": str(dumping_mp4), "decode": "keyframes"})
    packets = _check_clip(w, path, dumping_mp4, "keyframes")
    assert (PRE + POST) * FPS / 5 - 1 <= len(packets) <= (PRE + POST) * FPS / 5 + 3


@pytest.fixture(scope="module")
def rtsp_dumping(dumping_mp4):
    # loop=False: every client gets the scene from its first frame
    with RtspServer([FileStream("dump", dumping_mp4, loop=False)]) as srv:
        yield srv


@pytest.mark.parametrize("decode", ["all", "keyframes"])
def test_an_rtsp_cameras_warning_gets_a_clip(rtsp_dumping, dumping_mp4, tmp_path, decode):
    """decode='all': FFmpeg's RTSP client through PyAV, every packet; decode='keyframes':
    gridwatch's own RTSP client, which copies keyframes only."""
    w, path, _ = _raise_and_clip(tmp_path, {"url": rtsp_dumping.url("dump"), "decode": decode})
    _check_clip(w, path, dumping_mp4, "full" if decode == "all" else "keyframes")


@pytest.fixture(scope="module")
def dumping_hevc(tmp_path_factory) -> Path:
    """The same scene in H.265 (many cameras send it): libx265, closed GOPs, a keyframe every 5
    frames, crf 18. (At x265's default crf 28 this small 320x240 scene's pile did not raise the
    dumping rule before the 10 s file ended: compression detail, not a clip matter.)"""
    return encode_dumping_scene(tmp_path_factory.mktemp("clip-hevc") / "dump-hevc.mp4", "libx265",
                                {"x265-params": "keyint=5:min-keyint=5:scenecut=0:bframes=0:open-gop=0:crf=18:log-level=error"},
                                fps=FPS)


@pytest.mark.parametrize("decode", ["all", "keyframes"])
def test_an_h265_file_cameras_warning_gets_a_clip_of_its_own_packets(dumping_hevc, tmp_path, decode):
    """H.265 as well as H.264: the clip is an MP4 with the source's parameter sets (hvcC) and a
    run of its packets, byte for byte (every packet, or every keyframe), decodable, around t."""
    w, path, _ = _raise_and_clip(tmp_path, {"url": str(dumping_hevc), "decode": decode})
    with av.open(str(path)) as c, av.open(str(dumping_hevc)) as s:
        cs, ss = c.streams.video[0], s.streams.video[0]
        assert cs.codec_context.name == ss.codec_context.name == "hevc"
        assert bytes(cs.codec_context.extradata) == bytes(ss.codec_context.extradata)
        meta = json.loads(c.metadata["comment"])
        clip = [(bytes(p), p.is_keyframe) for p in c.demux(cs) if p.size]
        src = [(bytes(p), p.is_keyframe) for p in s.demux(ss) if p.size]
    with av.open(str(path)) as c:
        assert sum(1 for _ in c.decode(video=0)) == len(clip) > 1
    t = w.evidence["frame_ts"]
    assert meta["kind"] == w.evidence["clip_kind"] == ("full" if decode == "all" else "keyframes")
    assert meta["start_ms"] <= t - PRE * 1000 + 100 and meta["end_ms"] >= t + POST * 1000 - 100, (meta, t)
    if decode == "all":
        i = src.index(clip[0])
        assert src[i:i + len(clip)] == clip and len(clip) >= (PRE + POST) * FPS - 2
    else:
        keys = [p for p in src if p[1]]
        i = keys.index(clip[0])
        assert keys[i:i + len(clip)] == clip


@pytest.fixture(scope="module")
def dumping_hevc_cra(tmp_path_factory) -> Path:
    """As ``dumping_hevc`` but with open GOPs: its keyframes after the first are CRA pictures
    (NAL type 21), not IDR (no B-frames, so no leading pictures to skip)."""
    return encode_dumping_scene(tmp_path_factory.mktemp("clip-hevc-cra") / "dump-hevc-cra.mp4", "libx265",
                                {"x265-params": "keyint=5:min-keyint=5:scenecut=0:bframes=0:open-gop=1:crf=18:log-level=error"},
                                fps=FPS)


@pytest.fixture(scope="module")
def rtsp_dumping_hevc(gstreamer, dumping_hevc, dumping_hevc_cra):
    """Both H.265 files payloaded as they are (rtph265pay, RFC 7798), each once per client."""
    mounts = [FileStream("idr", dumping_hevc, loop=False, codec="h265"),
              FileStream("cra", dumping_hevc_cra, loop=False, codec="h265")]
    with RtspServer(mounts) as srv:
        yield srv, {"idr": dumping_hevc, "cra": dumping_hevc_cra}


@pytest.mark.parametrize("gop", ["idr", "cra"])
@pytest.mark.parametrize("decode", ["all", "keyframes"])
def test_an_h265_rtsp_cameras_warning_gets_a_clip(rtsp_dumping_hevc, tmp_path, decode, gop):
    """H.265 over RTSP: decode='all' through FFmpeg's RTSP client (every packet, parameter sets
    from the SDP's sprop-vps/sps/pps); decode='keyframes' through gridwatch's own client, which
    reads H.265 (RFC 7798 single NAL, AP, FU) and copies IRAP access units with VPS/SPS/PPS in
    front. Keyframes that are IDR pictures (closed GOPs) and CRA pictures (open GOPs) alike."""
    srv, sources = rtsp_dumping_hevc
    w, path, _ = _raise_and_clip(tmp_path, {"url": srv.url(gop), "decode": decode})
    assert w.evidence["clip_span_s"] == [PRE, POST]
    packets = _check_clip(w, path, sources[gop], "full" if decode == "all" else "keyframes", codec="hevc")
    if gop == "cra":  # (only the file's first picture is an IDR one)
        assert _nal_type("hevc", _slices(packets, "hevc")[0]) == 21, "the clip starts at a CRA picture"


def test_an_opencv_camera_says_why_it_has_no_clip(dumping_mp4, tmp_path):
    cfg = parse(_cfg(tmp_path, {"url": str(dumping_mp4), "decoder": "opencv"}), base_dir=tmp_path)
    events: list = []
    with VideoRuntime(cfg, on_events=events.extend):
        wait_until(lambda: any(e == "raised" for e, _ in events), timeout=30, what="a dumping warning")
    w = next(w for e, w in events if e == "raised")
    assert "clip" not in w.evidence and "opencv" in w.evidence["clip_unavailable"]
    assert "snapshot" in w.evidence


def _clip_file(root: Path, rel: str, size: int, age_s: float, now: float) -> Path:
    p = root / rel
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(b"\0" * size)
    os.utime(p, (now - age_s, now - age_s))
    return p


def test_retention_deletes_clips_past_the_age_then_the_oldest_past_the_size(tmp_path):
    now = time.time()
    counters = Counters()
    cw = ClipWriter(tmp_path / "clips", ClipConfig(max_mb=1.0, max_age_days=1.0), counters)
    expired = _clip_file(cw.root, "cam/20261101/1-a.mp4", 1000, 2 * 86400, now)
    oldest = _clip_file(cw.root, "cam/20261206/2-a.mp4", 400_000, 3000, now)
    older = _clip_file(cw.root, "cam/20261207/3-a.mp4", 400_000, 2000, now)
    newest = _clip_file(cw.root, "other/20261207/4-a.mp4", 400_000, 1000, now)
    not_a_clip = _clip_file(cw.root, "cam/20261101/notes.txt", 10, 3 * 86400, now)
    assert cw.enforce_retention(now) == 2
    assert not expired.exists() and not oldest.exists()
    assert older.exists() and newest.exists() and not_a_clip.exists()
    assert counters.get("video", "clips_deleted") == 2
    assert not (cw.root / "cam/20261206").exists()  # emptied folders go too


def test_the_packet_ring_keeps_seconds_from_a_keyframe_and_its_byte_bound_against_huge_packets():
    cost = 5000 + PACKET_OVERHEAD
    bound = 4 * 5 * cost  # four groups of five packets
    ring = PacketRing(keep_s=60, max_bytes=bound)
    ring.attach(type("S", (), {"clip_template": lambda self: ClipTemplate(None, "h264", 1, False)})())
    for i in range(50):
        ring.push(b"x" * 5000, i, i, i % 5 == 0, 5000)
        assert ring.bytes <= bound
    assert ring.bytes == bound and ring.dropped == 30 and ring._q[0][1]  # whole groups went, a keyframe first
    ring.push(b"x" * bound, 50, 50, True, bound)  # a keyframe larger than the whole bound
    assert ring.bytes == 0 and ring.dropped == 51
    ring.push(b"x" * 10, 51, 51, False, 10)  # nothing to decode it from: not kept
    assert ring.bytes == 0
    ring.push(b"x" * 10, 52, 52, True, 10)
    assert ring.bytes == 10 + PACKET_OVERHEAD and ring.peak_bytes == bound


def test_a_flood_of_tiny_packets_is_bounded_too():
    ring = PacketRing(keep_s=60, max_bytes=64 * 1024)
    ring.attach(type("S", (), {"clip_template": lambda self: ClipTemplate(None, "h264", 1, False)})())
    for i in range(100_000):
        ring.push(b"x", i, i, i % 10 == 0, 1)
    assert ring.peak_bytes <= 64 * 1024 and len(ring) <= 64 * 1024 // PACKET_OVERHEAD and ring.dropped > 99_000


def test_a_hostile_source_with_huge_packets_keeps_the_ring_within_its_bound(gstreamer, tmp_path):
    """Noise: each keyframe alone is larger than the ring's bound. The ring never holds
    more than the bound (it drops everything up to the next keyframe, counted), and a clip is
    bounded by its own limit."""
    rng = np.random.default_rng(0)
    noise = encode_h264((rng.integers(0, 256, (360, 640, 3), np.uint8) for _ in range(150)), tmp_path / "noise.mp4",
                        fps=30, keyint=10)
    with av.open(str(noise)) as c:
        keys = [p.size for p in c.demux(video=0) if p.size and p.is_keyframe]
    bound = min(keys) // 2
    cam = CameraConfig(name="noise", url=str(noise), loop=True, analysis_fps=1)
    done = []
    ring = PacketRing(keep_s=10, max_bytes=bound, on_done=done.append)
    video = VideoCollector([cam])
    video.cameras["noise"].packets = ring
    with video:
        wait_until(lambda: ring.dropped > 5, timeout=30, what="packets dropped at the bound")
        limit = max(keys) + bound
        r = ring.start_clip(time.time() * 1000 - 1000, time.time() * 1000 + 60_000, limit, {})
        wait_until(lambda: done, timeout=30, what="the clip ended at its own bound")
    assert ring.peak_bytes <= bound  # (nothing at all here: every group of pictures is larger)
    assert done[0] is r and r.why == "max_bytes" and r.bytes <= limit and r.packets[0][1]


@pytest.mark.parametrize("clips, words", [({"dir": "../elsewhere"}, "video.clips.dir: must be a folder inside"),
                                          ({"pre_s": -1}, "video.clips.pre_s"),
                                          ({"pre_s": 0, "post_s": 0}, "pre_s + post_s must be above 0"),
                                          ({"ring_kb": 5}, "video.clips.ring_kb: unknown key")])
def test_clip_settings_mistakes_are_one_clear_line(tmp_path, clips, words):
    from gridwatch.config import ConfigError

    with pytest.raises(ConfigError) as e:
        parse({"site": {"data_dir": str(tmp_path)}, "video": {"clips": clips}}, base_dir=tmp_path)
    assert words in str(e.value) and "\n" not in str(e.value)
