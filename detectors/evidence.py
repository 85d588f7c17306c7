"""Evidence for video warnings: JPEG snapshots with the boxes and zones drawn, kept with retention.

    ev = EvidenceStore(data_dir / "evidence", retention_days=14, max_mb=2000)
    rel = ev.save("gate-3", "smoke", ts_ms, image, boxes=[(x1, y1, x2, y2)], zones=zones, label="smoke 0.82")
    # rel = "gate-3/20261120/1763628630123-smoke.jpg", relative to the evidence folder

Files live under ``<root>/<camera>/<YYYYMMDD>/``; :meth:`EvidenceStore.enforce_retention` deletes
files older than the retention and then the oldest files until the folder fits ``max_mb``.
Evidence clips (``[video.clips]``, :class:`ClipConfig`; written by :mod:`gridwatch.streams.clips`)
use the same layout and the same retention (:func:`prune`) in their own folder.
"""
from __future__ import annotations

import os
import re
import time
from datetime import datetime, timezone
from pathlib import Path

import cv2
import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from .base import Zone

BOX_COLOUR = (0, 0, 255)  # BGR red
ZONE_COLOUR = (0, 255, 255)  # yellow


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name)[:80] or "_"


def draw(image: np.ndarray, boxes=(), zones: list[Zone] = (), label: str = "", stamp: str = "") -> np.ndarray:
    """A copy of ``image`` with zones (yellow outlines), boxes (red) and a caption drawn on it."""
    out = image.copy()
    h, w = out.shape[:2]
    thick = max(1, round(w / 320))
    for z in zones:
        cv2.polylines(out, [z.pixels(w, h)], True, ZONE_COLOUR, thick)
        x, y = z.pixels(w, h)[0]
        cv2.putText(out, z.name, (int(x) + 2, int(y) + 12), cv2.FONT_HERSHEY_SIMPLEX, 0.4 * thick, ZONE_COLOUR, 1)
    for b in boxes:
        x1, y1, x2, y2 = (int(round(v)) for v in b)
        cv2.rectangle(out, (x1, y1), (x2, y2), BOX_COLOUR, thick + 1)
        if label:
            cv2.putText(out, label, (x1, max(10, y1 - 4)), cv2.FONT_HERSHEY_SIMPLEX, 0.4 * thick, BOX_COLOUR, 1)
    if stamp:
        cv2.putText(out, stamp, (4, h - 6), cv2.FONT_HERSHEY_SIMPLEX, 0.35 * thick, (255, 255, 255), 1)
    return out


class ClipConfig(BaseModel):
    """``[video.clips]``: a short clip around each raised video warning, besides its snapshot."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(True, description="Keep each camera's recent compressed packets and write a clip for every "
                          "raised warning (no re-encoding; see docs/video.md, Evidence clips).")
    dir: str = Field("clips", min_length=1, description="Clips folder, relative to site.data_dir.")
    pre_s: float = Field(4.0, ge=0, le=30, description="Seconds before the warning's frame: the clip starts at the "
                         "last keyframe at or before then.")
    post_s: float = Field(4.0, ge=0, le=30, description="Seconds after the warning's frame the clip goes on.")
    ring_max_kb: int = Field(2048, ge=64, le=64 * 1024, description="Per camera: most kilobytes of packets kept for "
                             "the seconds before a warning (pre_s from a keyframe). Past it the oldest group of "
                             "pictures is dropped (counted as clip_ring_dropped): the clip then starts later.")
    clip_max_mb: float = Field(16.0, gt=0, le=1024, description="Most megabytes of packets in one clip; a clip that "
                               "reaches it ends there.")
    max_mb: float = Field(2000.0, gt=0, description="Oldest clips are deleted beyond this total size.")
    max_age_days: float = Field(14.0, gt=0, description="Clips older than this are deleted.")
    queue: int = Field(16, ge=1, le=1024, description="Clips waiting for the writer thread; past it a finished clip is "
                       "dropped (counted as clips_failed).")

    @model_validator(mode="after")
    def _check(self) -> "ClipConfig":
        if self.pre_s + self.post_s <= 0:
            raise ValueError("pre_s + post_s must be above 0 (or set enabled = false)")
        return self

    @field_validator("dir")
    @classmethod
    def _inside(cls, v: str) -> str:
        if Path(v).is_absolute() or ".." in Path(v).parts:
            raise ValueError("must be a folder inside site.data_dir (relative, without '..')")
        return v


def prune(root: Path, suffixes: tuple[str, ...], retention_s: float, max_bytes: int, now: float | None = None) -> int:
    """Under ``root``: delete files (of these suffixes) older than ``retention_s``, then the oldest
    until they fit ``max_bytes``, then empty folders; returns how many files were deleted."""
    if not root.exists():
        return 0
    now = time.time() if now is None else now
    files = []
    for p in root.rglob("*"):
        if p.suffix not in suffixes:
            continue
        try:
            st = p.stat()
        except OSError:
            continue
        files.append((st.st_mtime, st.st_size, p))
    files.sort()
    deleted = 0
    total = sum(s for _, s, _ in files)
    for mtime, size, p in files:
        if now - mtime <= retention_s and total <= max_bytes:
            break
        try:
            p.unlink()
            deleted += 1
            total -= size
        except OSError:
            pass
    for d in sorted((d for d in root.rglob("*") if d.is_dir()), key=lambda d: -len(d.parts)):
        try:
            d.rmdir()  # only empty ones
        except OSError:
            pass
    return deleted


def evidence_path(camera: str, rule: str, ts_ms: int, ext: str, suffix: str = "") -> Path:
    """``<camera>/<YYYYMMDD>/<ts_ms>-<rule>[-suffix].<ext>``, relative to an evidence folder."""
    day = datetime.fromtimestamp(ts_ms / 1000, timezone.utc)
    return Path(_safe(camera)) / day.strftime("%Y%m%d") / f"{ts_ms}-{_safe(rule)}{'-' + suffix if suffix else ''}.{ext}"


class EvidenceStore:
    def __init__(self, root: str | Path, retention_days: float = 14.0, max_mb: float = 2000.0, quality: int = 85) -> None:
        self.root = Path(root)
        self.retention_s = retention_days * 86400.0
        self.max_bytes = int(max_mb * 1024 * 1024)
        self.quality = quality

    def save(self, camera: str, rule: str, ts_ms: int, image: np.ndarray, boxes=(), zones: list[Zone] = (),
             label: str = "", suffix: str = "") -> str:
        """Write one annotated JPEG; returns its path relative to :attr:`root`."""
        day = datetime.fromtimestamp(ts_ms / 1000, timezone.utc)
        rel = Path(_safe(camera)) / day.strftime("%Y%m%d") / f"{ts_ms}-{_safe(rule)}{'-' + suffix if suffix else ''}.jpg"
        path = self.root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        stamp = f"{camera}  {day.strftime('%Y-%m-%d %H:%M:%S')} UTC  {rule}{' ' + suffix if suffix else ''}"
        ok, buf = cv2.imencode(".jpg", draw(image, boxes, zones, label, stamp), [cv2.IMWRITE_JPEG_QUALITY, self.quality])
        if not ok:
            raise OSError(f"JPEG encoding failed for {rel}")
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(buf.tobytes())
        os.replace(tmp, path)
        return rel.as_posix()

    def enforce_retention(self, now: float | None = None) -> int:
        """Delete expired files, then the oldest until under ``max_mb``; returns how many were deleted."""
        return prune(self.root, (".jpg",), self.retention_s, self.max_bytes, now)
