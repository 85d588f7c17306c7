"""The console's warning page shows a video warning's evidence clip in a <video> element, served
from the clips folder only (range requests for seeking), and falls back to the snapshot when the
clip is missing; on a real uvicorn server."""
from __future__ import annotations

import time
from fractions import Fraction

import av
import httpx
import numpy as np
import pytest

from gridwatch.config import parse
from gridwatch.streams.cases import CaseStore
from tests.console_seed import EAST, make_warning, seed, serve

NOW = int(time.time() * 1000)
PASSWORD = "east-password"


def tiny_mp4(path) -> bytes:
    """A real 1 s H.264 MP4 (16 frames, 64x48)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w", format="mp4") as out:
        st = out.add_stream("libx264", rate=16)
        st.width, st.height, st.pix_fmt = 64, 48, "yuv420p"
        for i in range(16):
            f = av.VideoFrame.from_ndarray(np.full((48, 64, 3), i * 15, np.uint8), format="rgb24")
            f.pts, f.time_base = i, Fraction(1, 16)
            out.mux(st.encode(f))
        out.mux(st.encode())
    return path.read_bytes()


@pytest.fixture
def site(tmp_path):
    data = tmp_path / "var"
    cfg = parse({"site": {"data_dir": str(data)}, "console": {"port": 0, "poll_s": 0.1, "escalate_overdue": False},
                 "video": {"clips": {"dir": "clips", "pre_s": 3, "post_s": 5}}}, base_dir=tmp_path)
    (data / "evidence" / "cam-1").mkdir(parents=True)
    (data / "evidence" / "cam-1" / "snap.jpg").write_bytes(b"\xff\xd8\xff\xe0fake-jpeg")
    clip = tiny_mp4(data / "clips" / "cam-1" / "20261207" / "1-dumping.mp4")
    (tmp_path / "secret.mp4").write_bytes(b"top secret")
    snap = {"snapshot": "cam-1/snap.jpg"}
    ws = {"clip": make_warning("cam-1", EAST, NOW - 30_000, rule="dumping",
                               evidence={**snap, "clip": "cam-1/20261207/1-dumping.mp4", "clip_kind": "keyframes",
                                         "clip_span_s": [3.0, 5.0]}),
          "missing": make_warning("cam-2", EAST, NOW - 20_000, rule="dumping",
                                  evidence={**snap, "clip": "cam-2/20261207/2-dumping.mp4", "clip_kind": "full"}),
          "escape": make_warning("cam-3", EAST, NOW - 10_000, rule="dumping",
                                 evidence={**snap, "clip": "../../secret.mp4", "clip_kind": "full"})}
    db = data / "gridwatch.db"
    seed(db, list(ws.values()))
    CaseStore(db).add_user("east", PASSWORD, "operator", "Jiangcheng/Riverside District/East Town")
    con, base = serve(cfg)
    c = httpx.Client(base_url=base, follow_redirects=False, timeout=10)
    assert c.post("/login", data={"name": "east", "password": PASSWORD, "next": "/"}).status_code == 303
    yield {"c": c, "ws": ws, "clip": clip, "base": base}
    con.stop()


def test_the_warning_page_shows_the_clip_and_serves_it_with_ranges(site):
    c, wid = site["c"], site["ws"]["clip"].id
    page = c.get(f"/w/{wid}").text
    assert f'<video id="clip" controls muted playsinline preload="metadata" src="/w/{wid}/evidence/clip"' in page
    assert f'poster="/w/{wid}/evidence/snapshot"' in page
    assert "3 s before to 5 s after the raise" in page and "keyframes only" in page
    r = c.get(f"/w/{wid}/evidence/clip")
    assert r.status_code == 200 and r.headers["content-type"] == "video/mp4" and r.content == site["clip"]
    part = c.get(f"/w/{wid}/evidence/clip", headers={"Range": "bytes=0-99"})
    assert part.status_code == 206 and part.content == site["clip"][:100]


def test_a_missing_clip_falls_back_to_the_snapshot(site):
    c, wid = site["c"], site["ws"]["missing"].id
    page = c.get(f"/w/{wid}").text
    assert "<video" not in page and 'id="no-clip"' in page and f'src="/w/{wid}/evidence/snapshot"' in page
    assert c.get(f"/w/{wid}/evidence/clip").status_code == 404


def test_a_clip_path_outside_the_clips_folder_is_not_served(site):
    c, wid = site["c"], site["ws"]["escape"].id
    assert c.get(f"/w/{site['ws']['clip'].id}/evidence/clip").status_code == 200  # the route itself works
    assert "<video" not in c.get(f"/w/{wid}").text
    for path in (f"/w/{wid}/evidence/clip", f"/w/{site['ws']['clip'].id}/evidence/..%2F..%2Fsecret.mp4"):
        r = c.get(path)
        assert r.status_code == 404 and "top secret" not in r.text


def test_a_browser_plays_the_clip_on_the_warning_page(site, browser, tmp_path):
    """Debian's headless chromium loads the clip's metadata and decodes its first frame."""
    ctx = browser.new_context()
    try:
        page = ctx.new_page()
        base = site["base"]
        page.goto(base + "/")
        page.fill("input[name=name]", "east")
        page.fill("input[name=password]", PASSWORD)
        page.click("button[type=submit]")
        page.wait_for_url(base + "/")
        page.goto(f"{base}/w/{site['ws']['clip'].id}")
        page.wait_for_function("document.getElementById('clip').readyState >= 2", timeout=15_000)
        size = page.evaluate("[document.getElementById('clip').videoWidth, document.getElementById('clip').videoHeight]")
        assert size == [64, 48]
        assert abs(page.evaluate("document.getElementById('clip').duration") - 1.0) < 0.1
        from tests.test_console_browser import shot
        shot(page, tmp_path, "08-warning-clip")
    finally:
        ctx.close()
