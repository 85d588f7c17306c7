"""Evidence clips: a few seconds of video around each raised video warning, besides its snapshot.

    clips = ClipWriter(data_dir / "clips", cfg.video.clips, counters)
    cam.packets = clips.ring("gate-3")          # the camera keeps its recent packets (capture side)
    clips.start()
    ev = clips.request("gate-3", "smoke", ts_ms)  # {"clip": "gate-3/20261207/...-smoke.mp4", ...}

Each camera's capture thread keeps the compressed packets it demuxes anyway in a
:class:`~gridwatch.ingest.video.PacketRing` (bounded by seconds and bytes). When a warning is
raised, :meth:`ClipWriter.request` takes the packets from the last keyframe at or before
``ts - pre_s`` and the ring goes on collecting until ``ts + post_s``; the finished clip goes through
a bounded queue to one writer thread, which remuxes it into an MP4 (output stream copied from the
source's codec parameters and extradata, packets copied as they came: no decoding, no encoding).

The warning references the clip at once (``evidence["clip"]``, relative to the clips folder, like
the snapshot); the file appears about ``post_s`` later, written under a temporary name and renamed.
A clip that could not be written leaves no file (the console then shows the snapshot), counted in
``clips_failed``. What each source gives:

* PyAV (``decode = "all"``, files and RTSP through FFmpeg; ``decode = "keyframes"`` over FFmpeg's
  RTSP client): every packet, a clip at the camera's frame rate (``clip_kind = "full"``).
* ``decode = "keyframes"`` on files (the demuxer returns keyframes only) and over gridwatch's RTSP
  client (it copies keyframes only): a sequence of keyframes at their own times
  (``clip_kind = "keyframes"``), one picture per keyframe interval.
* OpenCV (``decoder = "opencv"``): no packets, no clip (``clip_unavailable`` says why).

H.264 and H.265 are both copied as they come (tested on files and over RTSP, every packet and
keyframes only; H.265 with IDR and with CRA keyframes).

Retention: clips older than ``max_age_days`` are deleted, then the oldest until the folder fits
``max_mb`` (at start, then every minute, on the writer thread). Counters (``video`` source):
``clips_requested``, ``clips_written``, ``clips_failed``, ``clips_refused``, ``clips_truncated``
(ended at ``clip_max_mb``), ``clips_deleted``, ``clip_bytes_written``; per camera the ring's ``clip_ring_bytes``, ``clip_ring_peak_bytes`` and
``clip_ring_dropped``.
"""
from __future__ import annotations

import io
import logging
import os
import queue
import threading
import time
from pathlib import Path
from typing import Any

import orjson

from gridwatch.detectors.evidence import ClipConfig, evidence_path, prune
from gridwatch.ingest.video import ClipRequest, PacketRing
from gridwatch.observability import Counters

log = logging.getLogger("gridwatch.streams.clips")
SOURCE = "video"
# the ring keeps this much more than pre_s: a warning is raised a moment after its frame was captured
RAISE_LAG_S = 2.0
OVERDUE_GRACE_S = 5.0  # a clip whose camera sends nothing this long after its end is written as it is
RETENTION_EVERY_S = 60.0


class ClipWriter:
    def __init__(self, root: str | Path, cfg: ClipConfig, counters: Counters | None = None) -> None:
        self.root = Path(root)
        self.cfg = cfg
        self.counters = counters or Counters()
        self.rings: dict[str, PacketRing] = {}
        self._q: queue.Queue[ClipRequest | None] = queue.Queue(cfg.queue)
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    # --- capture side ------------------------------------------------------------------------
    def ring(self, camera: str) -> PacketRing:
        """The packet ring of ``camera`` (made on first call); give it to the camera's capture."""
        r = self.rings.get(camera)
        if r is None:
            r = self.rings[camera] = PacketRing(self.cfg.pre_s + RAISE_LAG_S, self.cfg.ring_max_kb * 1024,
                                                self._enqueue)
        return r

    def _enqueue(self, r: ClipRequest) -> None:
        """A finished clip (any thread): to the writer, or dropped and counted when its queue is full."""
        try:
            self._q.put_nowait(r)
        except queue.Full:
            self.counters.add(SOURCE, "clips_failed")
            self.counters.drop(SOURCE, "clip_queue_full")
            log.warning("clips: writer queue full, clip %s dropped", r.meta.get("path"))

    # --- analysis side -----------------------------------------------------------------------
    def request(self, camera: str, rule: str, ts_ms: int) -> dict[str, Any]:
        """Start the clip of a warning raised on ``camera`` at ``ts_ms`` (its frame's capture time):
        the warning's evidence fields (``clip`` and its kind and span, or ``clip_unavailable``)."""
        ring = self.rings.get(camera)
        if ring is None:
            return {"clip_unavailable": "no packets kept for this camera"}
        rel = evidence_path(camera, rule, ts_ms, "mp4")
        meta = {"camera": camera, "rule": rule, "ts_ms": ts_ms, "path": rel.as_posix()}
        r = ring.start_clip(ts_ms - self.cfg.pre_s * 1000, ts_ms + self.cfg.post_s * 1000,
                            int(self.cfg.clip_max_mb * 1024 * 1024), meta)
        if isinstance(r, str):
            self.counters.add(SOURCE, "clips_refused")
            return {"clip_unavailable": r}
        self.counters.add(SOURCE, "clips_requested")
        keyframes = r.template.keyframes and all(p[1] for p in r.packets)
        return {"clip": rel.as_posix(), "clip_kind": "keyframes" if keyframes else "full",
                "clip_span_s": [self.cfg.pre_s, self.cfg.post_s]}

    # --- the writer thread -------------------------------------------------------------------
    def start(self) -> "ClipWriter":
        self.enforce_retention()
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="clip-writer", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Write what is finished (cameras stopped first end their clips), then end the thread."""
        for ring in self.rings.values():
            ring.finish_overdue(float("inf"), 0)
        self._stop.set()
        try:
            self._q.put(None, timeout=timeout)
        except queue.Full:
            pass
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def _run(self) -> None:
        next_retention = time.monotonic() + RETENTION_EVERY_S
        while True:
            # woken for clips only; while some are being collected, every second for a stalled camera's
            busy = any(ring.collecting for ring in self.rings.values())
            try:
                r = self._q.get(timeout=1.0 if busy else 5.0)
            except queue.Empty:
                r = None
            if r is not None:
                self.write(r)
            elif self._stop.is_set() and self._q.empty():
                return
            now = time.time() * 1000
            for ring in self.rings.values():
                ring.finish_overdue(now, OVERDUE_GRACE_S * 1000)
            if time.monotonic() >= next_retention:
                next_retention = time.monotonic() + RETENTION_EVERY_S
                self.enforce_retention()

    def write(self, r: ClipRequest) -> Path | None:
        """Remux the clip's packets into ``<root>/<meta path>``; None (counted) when it fails."""
        path = self.root / r.meta["path"]
        try:
            n = remux(r, path)
        except Exception as e:  # noqa: BLE001 - a bad clip costs its file, never the writer
            self.counters.add(SOURCE, "clips_failed")
            log.warning("clips: %s not written: %s", r.meta["path"], e)
            return None
        self.counters.add(SOURCE, "clips_written")
        self.counters.add(SOURCE, "clip_bytes_written", n)
        if r.why == "max_bytes":  # written up to clip_max_mb, shorter than asked
            self.counters.add(SOURCE, "clips_truncated")
        return path

    def enforce_retention(self, now: float | None = None) -> int:
        n = prune(self.root, (".mp4",), self.cfg.max_age_days * 86400.0, int(self.cfg.max_mb * 1024 * 1024), now)
        if n:
            self.counters.add(SOURCE, "clips_deleted", n)
        return n

    def export(self) -> None:
        """The rings' gauges, per camera (called from the runtime's once-a-second tick)."""
        for cam, ring in self.rings.items():
            src = f"camera/{cam}"
            self.counters.set(src, "clip_ring_bytes", float(ring.bytes))
            self.counters.set(src, "clip_ring_peak_bytes", float(ring.peak_bytes))
            self.counters.set(src, "clip_ring_dropped", float(ring.dropped))


def remux(r: ClipRequest, path: Path) -> int:
    """Write the packets of ``r`` into an MP4 at ``path`` without decoding them; returns its size.
    Timestamps start at 0 (the first packet's); packets whose decoding time does not increase (a
    source that went back) are left out. The clip's wall-clock span and kind go into the file's
    ``comment`` metadata (JSON)."""
    import av

    pk = r.packets
    if not pk or not pk[0][1]:
        raise ValueError("no keyframe among the kept packets")
    tmpl = r.template
    tb = tmpl.time_base
    tick_ms = float(tb) * 1000.0
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".part")
    probe = None
    try:
        out = av.open(str(tmp), "w", format="mp4", options={"movflags": "+faststart"})
        try:
            if tmpl.stream is not None:
                template = tmpl.stream
            else:  # gridwatch's RTSP client: the first keyframe (parameter sets in front) tells the rest
                probe = av.open(io.BytesIO(bytes(pk[0][4])), format=tmpl.raw_format)
                template = probe.streams.video[0]
            st = out.add_stream_from_template(template)
            keyframes = all(p[1] for p in pk)
            out.metadata["comment"] = orjson.dumps({
                "camera": r.meta.get("camera"), "rule": r.meta.get("rule"), "warning_ts_ms": r.meta.get("ts_ms"),
                "start_ms": round(pk[0][0]), "end_ms": round(pk[-1][0]), "packets": len(pk),
                "kind": "keyframes" if tmpl.keyframes and keyframes else "full", "ended": r.why}).decode()
            base = None
            last = None
            for wall, key, pts, dts, data, _ in pk:
                if dts is None:
                    dts = pts
                if pts is None:
                    pts = dts
                if dts is None:  # the source gave no time at all: the arrival time
                    pts = dts = round((wall - pk[0][0]) / tick_ms)
                dts, pts = round(dts), round(pts)
                if base is None:
                    base = dts
                if last is not None and dts - base <= last:
                    continue
                last = dts - base
                q = av.Packet(bytes(data))
                q.pts, q.dts, q.time_base = pts - base, dts - base, tb
                q.is_keyframe = key
                q.stream = st
                out.mux(q)
        finally:
            out.close()
        os.replace(tmp, path)
        return path.stat().st_size
    except BaseException:
        try:
            tmp.unlink()
        except OSError:
            pass
        raise
    finally:
        if probe is not None:
            probe.close()
