"""A hostile RTSP camera must not hurt the box: against the misbehaving server in
``gridwatch/servers/hostile_rtsp.py`` (a child process on a free loopback port), gridwatch's RTSP client keeps
its memory, threads and sockets bounded, gives the camera a reason and a counter, reconnects with
backoff, and ends its thread and connection on ``stop()``. One test runs a good camera and the MQTT
ingest (real Mosquitto) beside a hostile camera and checks they are unaffected.

Limits and deadlines are set small here (1 s, 256 KiB) so each behaviour shows in seconds."""
from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import orjson
import pytest

from gridwatch.ingest.video import CameraConfig, CameraState, StatusChange, VideoCollector

MB = 1 << 20
RUNAWAY = 256 * MB  # a test stops waiting once memory grew this much (it has failed; do not fill the box)


class Hostile:
    """The hostile server as a child process; ``events()`` reads what it logged."""

    def __init__(self, mode: str, log: Path, interval: float = 0.3) -> None:
        self.log = log
        self.proc = subprocess.Popen([sys.executable, "-m", "gridwatch.servers.hostile_rtsp", "--mode", mode, "--interval",
                                      str(interval), "--log", str(log)], stdout=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline()
        if not line.startswith("READY "):
            self.stop()
            pytest.fail(f"hostile RTSP server did not start: {line!r}")
        self.port = int(line.split()[1])

    def url(self, userinfo: str = "") -> str:
        return f"rtsp://{userinfo}127.0.0.1:{self.port}/cam"

    def events(self) -> list[str]:
        return self.log.read_text().splitlines() if self.log.exists() else []

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait(5)


@pytest.fixture
def hostile(tmp_path):
    started: list[Hostile] = []

    def make(mode: str, **kw) -> Hostile:
        h = Hostile(mode, tmp_path / f"{mode}-{len(started)}.log", **kw)
        started.append(h)
        return h

    yield make
    for h in started:
        h.stop()


# --- what the process holds -------------------------------------------------------------------
def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def thread_count() -> int:
    """Native threads of this process (FFmpeg's included, not only Python's)."""
    return len(os.listdir("/proc/self/task"))


def _socket_inodes() -> set[str]:
    inodes = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    return inodes


def connections_to(port: int) -> int:
    """This process's open TCP connections to ``port`` on loopback (its own sockets only; a
    socket counts if it is open before and after the connection table is read)."""
    before = _socket_inodes()
    inodes: list[str] = []
    for table in ("/proc/self/net/tcp", "/proc/self/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            cols = line.split()
            if int(cols[2].rsplit(":", 1)[1], 16) == port and cols[9] in before:
                inodes.append(cols[9])
    after = _socket_inodes()
    return sum(1 for i in inodes if i in after)


class Sampler:
    """Samples RSS, threads and connections to ``port`` every 0.1 s in a thread of its own."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.samples: list[tuple[float, int, int, int]] = []
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        t0 = time.monotonic()
        while not self._stop.wait(0.1):
            self.samples.append((time.monotonic() - t0, rss_bytes(), thread_count(), connections_to(self.port)))

    def __enter__(self) -> "Sampler":
        self._t.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._t.join()

    def max(self, i: int) -> int:
        return max(s[i] for s in self.samples)


def small(name: str, url: str, **kw) -> CameraConfig:
    """A keyframe camera through gridwatch's RTSP client, with test-sized limits and deadlines."""
    base = dict(name=name, url=url, decode="keyframes", analysis_fps=None, rtsp_read_interval_s=0.05,
                stale_after_s=1.0, open_timeout_s=1.0, read_timeout_s=1.0, rtsp_keyframe_timeout_s=1.0,
                rtsp_max_frame_bytes=256 * 1024, backoff_initial_s=0.1, backoff_max_s=0.3, backoff_jitter=0.0,
                offline_after_failures=2)
    return CameraConfig(**(base | kw))


BEHAVIOURS = [
    # mode, error counter, words of the reason
    ("fu_a", "frame_too_large", "larger than"),
    ("stap_a", "frame_too_large", "larger than"),
    ("non_idr", "no_keyframe", "intra refresh"),
    ("slowloris", "timeout", "no complete answer"),
    ("slowloris_stream", "no_keyframe", "no keyframe"),
    ("bad_content_length", "bad_response", "Content-Length"),
    ("bad_sdp_pt", "bad_sdp", "payload type"),
    ("bad_sdp_rate", "bad_sdp", "clock rate"),
    ("huge_content_length", "bad_response", "Content-Length"),
]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("mode,code,words", BEHAVIOURS, ids=[b[0] for b in BEHAVIOURS])
def test_a_hostile_camera_is_bounded_counted_retried_and_ends_on_stop(hostile, mode, code, words):
    srv = hostile(mode, interval=0.2)
    seen: list[StatusChange] = []
    threads_before = thread_count()
    rss_before = rss_bytes()
    video = VideoCollector([small("evil", srv.url())], on_status=seen.append)
    with Sampler(srv.port) as s:
        threads_sampling = thread_count()  # with the sampler's own thread
        video.start()
        deadline = time.monotonic() + 15
        while (video.counters()["evil"]["errors"].get(code, 0) < 2 and time.monotonic() < deadline
               and rss_bytes() - rss_before < RUNAWAY):
            time.sleep(0.1)
        time.sleep(0.5)  # one more round of whatever it does
        counters = video.counters()["evil"]
        state, reason = video.status()["evil"]
        video.stop()
    time.sleep(0.2)
    # a reason and a counter by kind, and it tried again (with backoff) instead of dying
    assert counters["errors"].get(code, 0) >= 2, (counters, reason)
    assert counters["reconnects"] >= 1
    assert any(words in c.reason for c in seen), [c.reason for c in seen]
    assert state in (CameraState.RECONNECTING, CameraState.OFFLINE), (state, reason)
    # bounded: memory (a 256 KiB frame limit, a 256 KiB read buffer), one capture thread, one connection
    assert s.max(1) - rss_before < 64 * MB, f"RSS grew {(s.max(1) - rss_before) / MB:.0f} MB"
    assert s.max(2) <= threads_sampling + 2, s.samples  # the capture thread and the watchdog
    assert s.max(3) <= 1, s.samples
    # after stop(): no thread, no connection left
    assert thread_count() <= threads_before, (thread_count(), threads_before)
    assert connections_to(srv.port) == 0
    assert srv.events().count("connect") >= 2


def test_an_abandoned_capture_closes_its_socket_and_its_thread_ends(hostile):
    """A capture thread the watchdog gives up on (here: forced, while it waits inside a read)
    must end and close its connection, not read on beside its replacement."""
    srv = hostile("slowloris_stream", interval=0.5)
    # long own deadlines, so only the abandonment can end the first capture
    cfg = small("evil", srv.url(), rtsp_keyframe_timeout_s=30.0, read_timeout_s=30.0)
    video = VideoCollector([cfg], watchdog_interval_s=60)
    video.start()
    try:
        cam = video.cameras["evil"]
        deadline = time.monotonic() + 5
        while connections_to(srv.port) < 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.3)
        first = cam._thread
        cam.abandon("test: stuck")
        first.join(3)
        assert not first.is_alive()
        time.sleep(0.5)
        assert connections_to(srv.port) == 1  # only the replacement's
    finally:
        video.stop()
    assert connections_to(srv.port) == 0 and not cam._thread.is_alive()


def test_basic_authentication_over_plain_rtsp_is_refused_unless_allowed(hostile):
    """A server that offers only Basic gets no password over rtsp:// (a clear reason instead);
    with ``rtsp_allow_basic_auth`` the operator may allow it."""
    srv = hostile("basic_only")
    seen: list[StatusChange] = []
    with VideoCollector([small("cam", srv.url("admin:s3cret-pw@"))], on_status=seen.append) as video:
        deadline = time.monotonic() + 10
        while video.counters()["cam"]["errors"].get("auth_insecure", 0) < 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        counters = video.counters()["cam"]
    assert counters["errors"].get("auth_insecure", 0) >= 1, counters
    assert any("Basic" in c.reason and "rtsp_allow_basic_auth" in c.reason for c in seen), seen
    assert not any(e.startswith("auth ") for e in srv.events()), srv.events()  # nothing sent, not even the user
    assert all("s3cret" not in c.reason for c in seen)

    # FFmpeg's client (decode = "all") would answer Basic whenever asked: the camera is asked first
    seen.clear()
    ffmpeg = small("cam", srv.url("admin:s3cret-pw@"), decode="all")
    with VideoCollector([ffmpeg], on_status=seen.append) as video:
        deadline = time.monotonic() + 10
        while video.counters()["cam"]["errors"].get("auth_insecure", 0) < 1 and time.monotonic() < deadline:
            time.sleep(0.05)
    assert any("rtsp_allow_basic_auth" in c.reason for c in seen), seen
    assert not any(e.startswith("auth ") for e in srv.events()), srv.events()

    allowed = small("cam", srv.url("admin:s3cret-pw@"), rtsp_allow_basic_auth=True)
    with VideoCollector([allowed]) as video:
        deadline = time.monotonic() + 10
        while not any(e.startswith("auth Basic") for e in srv.events()) and time.monotonic() < deadline:
            time.sleep(0.05)
    assert any(e.startswith("auth Basic") for e in srv.events())


@pytest.mark.broker
@pytest.mark.timeout(90)
def test_a_good_camera_and_the_mqtt_ingest_run_on_beside_a_hostile_camera(hostile, mosquitto, tmp_path):
    """Endless FU-A on one camera, while a file camera and the MQTT collector (real Mosquitto)
    run in the same process: every MQTT message arrives, the good camera keeps its frame rate and
    the process's memory stays bounded."""
    from gridwatch.benchmarks.mqtt_load import publish_qos1
    from gridwatch.config import MqttConfig
    from gridwatch.ingest.mqtt import MqttCollector
    from gridwatch.observability import Counters

    clip = tmp_path / "good.mp4"
    r = subprocess.run(["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "testsrc=size=160x120:rate=10", "-t", "2",
                        "-c:v", "libx264", "-g", "5", "-pix_fmt", "yuv420p", str(clip)], capture_output=True)
    assert r.returncode == 0, r.stderr
    srv = hostile("fu_a")
    good = CameraConfig(name="good", url=str(clip), loop=True, analysis_fps=None, analysis_width=160)
    counters = Counters()
    col = MqttCollector(MqttConfig(port=mosquitto.port, topics=["devices/#"], client_id="beside"), "beside", counters)
    rss_before = rss_bytes()
    col.start()
    video = VideoCollector([small("evil", srv.url()), good])
    try:
        assert col.connected.wait(10)
        with Sampler(srv.port) as s:
            video.start()
            time.sleep(0.5)
            n, taken = 2000, 0
            payloads = [orjson.dumps({"ts": 1_700_000_000_000 + i, "water_level": 1.0}) for i in range(n)]
            t_pub = threading.Thread(target=publish_qos1, args=(mosquitto.port, "devices/generic/sewer_level/s1",
                                                                 payloads))
            t0 = time.monotonic()
            t_pub.start()
            while taken < n and time.monotonic() - t0 < 30 and rss_bytes() - rss_before < RUNAWAY:
                msgs = col.take(200)
                col.ack(msgs)
                taken += len(msgs)
                time.sleep(0.01 if not msgs else 0)
            t_pub.join(30)
            decoded_before = video.counters()["good"]["decoded"]
            for _ in range(30):
                if rss_bytes() - rss_before > RUNAWAY:
                    break
                time.sleep(0.1)
            decoded = video.counters()["good"]["decoded"] - decoded_before
            evil = video.counters()["evil"]
    finally:
        video.stop()
        col.stop()
    assert taken == n
    assert decoded >= 20, decoded  # a 10 fps file camera, paced: ~30 frames in 3 s
    assert evil["errors"].get("frame_too_large", 0) >= 1, evil
    assert s.max(1) - rss_before < 96 * MB, f"RSS grew {(s.max(1) - rss_before) / MB:.0f} MB"
    assert s.max(3) <= 1


def test_camera_errors_by_kind_and_the_reason_reach_the_runtime_status_and_metrics(hostile, tmp_path):
    """The video runtime of ``gridwatch run``: the hostile camera's reason in its status, its
    errors by kind as ``gridwatch_camera_errors_<kind>{source="camera/<name>"}`` on /metrics."""
    import urllib.request

    from gridwatch.config import parse
    from gridwatch.observability import Counters, start_metrics_server
    from gridwatch.streams.video import VideoRuntime

    srv = hostile("bad_sdp_rate")
    cam = small("evil", srv.url()).model_dump()
    cfg = parse({"site": {"name": "hz", "data_dir": str(tmp_path)},
                 "video": {"rules": [{"name": "smoke", "kind": "smoke"}]}, "cameras": [cam]}, base_dir=tmp_path)
    counters = Counters()
    server, port = start_metrics_server(counters, 0)
    try:
        with VideoRuntime(cfg, counters=counters) as rt:
            deadline = time.monotonic() + 10
            while "clock rate" not in rt.status["evil"][1] and time.monotonic() < deadline:
                time.sleep(0.05)
            time.sleep(0.3)
            rt.tick(int(time.time() * 1000))
            status = rt.status["evil"]
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    finally:
        server.shutdown()
    assert status[0] in ("reconnecting", "offline") and "clock rate" in status[1], status
    line = next((ln for ln in text.splitlines() if ln.startswith('gridwatch_camera_errors_bad_sdp{source="camera/evil"}')),
                None)
    assert line is not None and float(line.split()[-1]) >= 1, text[:2000]
