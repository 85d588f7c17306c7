"""The console's HTTP side on a real uvicorn server: login, scope (404), CSRF, escaping of
vendor-controlled text, evidence paths, API tokens, live events and their bounds."""
from __future__ import annotations

import asyncio
import json
import threading
import time

import httpx
import pytest

from gridwatch.config import parse
from gridwatch.console.live import Broadcaster
from gridwatch.observability import Counters
from gridwatch.streams.cases import CaseStore, Scope
from tests.console_seed import EAST, WEST, make_warning, seed, serve

NOW = int(time.time() * 1000)
XSS = "<img src=x onerror=alert(1)>"
PASSWORDS = {"east": "east-password", "west": "west-password", "county": "county-password", "city": "city-password"}


@pytest.fixture
def site(tmp_path):
    data = tmp_path / "var"
    cfg = parse({"site": {"data_dir": str(data)}, "console": {"port": 0, "poll_s": 0.1, "escalate_overdue": False}}, base_dir=tmp_path)
    db = data / "gridwatch.db"
    (data / "evidence" / "cam-1").mkdir(parents=True)
    (data / "evidence" / "cam-1" / "snap.jpg").write_bytes(b"\xff\xd8\xff\xe0fake-jpeg")
    (tmp_path / "secret.txt").write_text("top secret")
    ws = {"east": make_warning("aq-1", EAST, NOW - 60_000, severity="minor"),  # the town's desk: east works it
          "west": make_warning("aq-2", WEST, NOW - 50_000),
          "xss": make_warning(XSS, EAST, NOW - 40_000, message=f"level {XSS} <script>alert(2)</script>",
                              evidence={"metric": "water_level", "note": XSS}),
          "cam": make_warning("cam-1", EAST, NOW - 30_000, rule="dumping", evidence={"snapshot": "cam-1/snap.jpg"}),
          "escape": make_warning("cam-2", EAST, NOW - 20_000, rule="dumping", evidence={"snapshot": "../../secret.txt"})}
    seed(db, list(ws.values()))
    cs = CaseStore(db)
    cs.add_user("east", PASSWORDS["east"], "operator", "Jiangcheng/Riverside District/East Town")
    cs.add_user("west", PASSWORDS["west"], "operator", "Jiangcheng/Riverside District/West Town")
    cs.add_user("county", PASSWORDS["county"], "operator", "Jiangcheng/Riverside District")
    cs.add_user("city", PASSWORDS["city"], "supervisor", "Jiangcheng")
    token = cs.add_token("west", "hotline")
    con, base = serve(cfg)
    yield {"base": base, "ws": ws, "token": token, "db": db, "console": con}
    con.stop()


def login(site, name) -> tuple[httpx.Client, str]:
    c = httpx.Client(base_url=site["base"], follow_redirects=False, timeout=10)
    r = c.post("/login", data={"name": name, "password": PASSWORDS[name], "next": "/"})
    assert r.status_code == 303, r.text
    set_cookie = r.headers["set-cookie"].lower()
    assert "httponly" in set_cookie and "samesite=strict" in set_cookie
    return c, c.get("/api/me").json()["csrf"]


def test_out_of_scope_warning_is_not_found_by_url_api_or_evidence(site):
    east, _ = login(site, "east")
    west_id = site["ws"]["west"].id
    for path in (f"/w/{west_id}", f"/api/warnings/{west_id}", f"/api/warnings/{west_id}/readings",
                 f"/w/{west_id}/evidence/snapshot", "/api/warnings/w-00000000000000000000"):
        r = east.get(path)
        assert r.status_code == 404, (path, r.status_code)
        assert "aq-2" not in r.text and "West Town" not in r.text
    r = east.post(f"/api/warnings/{west_id}/actions", json={"action": "acknowledge"},
                  headers={"X-CSRF-Token": east.get("/api/me").json()["csrf"]})
    assert r.status_code == 404
    listed = {i["id"] for i in east.get("/api/warnings?case_state=all&per_page=200").json()["items"]}
    assert site["ws"]["east"].id in listed and west_id not in listed
    assert west_id not in east.get("/?case_state=all").text
    # the same warning is there for its own town, and for an API token of that town
    west, _ = login(site, "west")
    assert west.get(f"/w/{west_id}").status_code == 200
    api = httpx.get(site["base"] + f"/api/warnings/{west_id}", headers={"Authorization": f"Bearer {site['token']}"})
    assert api.status_code == 200 and api.json()["w"]["source"] == "aq-2"
    assert httpx.get(site["base"] + f"/api/warnings/{site['ws']['east'].id}",
                     headers={"Authorization": f"Bearer {site['token']}"}).status_code == 404
    assert httpx.get(site["base"] + "/api/warnings", headers={"Authorization": "Bearer gw_nope"}).status_code == 401


def test_state_changes_need_the_csrf_token(site):
    c, csrf = login(site, "east")
    wid = site["ws"]["east"].id
    r = c.post(f"/w/{wid}/act", data={"action": "acknowledge", "expect": "new", "action_id": "a1"})
    assert r.status_code == 403 and "CSRF" in r.text
    r = c.post(f"/w/{wid}/act", data={"action": "acknowledge", "expect": "new", "action_id": "a1", "csrf": "forged"})
    assert r.status_code == 403
    assert c.post(f"/api/warnings/{wid}/actions", json={"action": "acknowledge"}).status_code == 403
    assert c.post("/logout", data={}).status_code == 403
    assert c.get("/api/warnings/" + wid).json()["w"]["case_state"] == "new"
    r = c.post(f"/w/{wid}/act", data={"action": "acknowledge", "expect": "new", "action_id": "a1", "csrf": csrf})
    assert r.status_code == 303
    r = c.post(f"/w/{wid}/act", data={"action": "acknowledge", "expect": "new", "action_id": "a1", "csrf": csrf})
    assert r.status_code == 303 and "error" not in r.headers["location"]  # the double click: no error, no change
    audit = c.get("/api/warnings/" + wid).json()["audit"]
    assert [a["action"] for a in audit] == ["acknowledge"]
    # a token is not a cookie: no CSRF token needed, and the retry by action id changes nothing
    tok = CaseStore(site["db"]).add_token("east")
    h = {"Authorization": f"Bearer {tok}"}
    r1 = httpx.post(site["base"] + f"/api/warnings/{wid}/actions", json={"action": "comment", "note": "hi", "action_id": "x"}, headers=h)
    r2 = httpx.post(site["base"] + f"/api/warnings/{wid}/actions", json={"action": "comment", "note": "hi", "action_id": "x"}, headers=h)
    assert (r1.status_code, r2.status_code) == (201, 200) and r2.json()["applied"] is False
    r = httpx.post(site["base"] + f"/api/warnings/{wid}/actions", json={"action": "close"}, headers=h)
    assert r.status_code == 403 and "supervisor" in r.json()["error"]
    r = httpx.post(site["base"] + f"/api/warnings/{wid}/actions", json={"action": "start", "expect": "new"}, headers=h)
    assert r.status_code == 409 and "acknowledged now" in r.json()["error"]


def test_a_town_desk_may_comment_on_but_not_work_a_case_at_the_county_desk(site):
    """Was: any operator whose scope held a warning could acknowledge, dispatch, start, handle or
    reject its case, also when it was at another desk (a town working the county's case). Now
    only the case's desk or one above it works it; every desk that sees it may comment."""
    wid = site["ws"]["cam"].id  # major: the county's desk, in East Town
    east, csrf = login(site, "east")
    page = east.get(f"/w/{wid}").text
    assert "not-your-desk" in page and 'data-action="acknowledge"' not in page and 'data-action="comment"' in page
    r = east.post(f"/api/warnings/{wid}/actions", json={"action": "acknowledge"}, headers={"X-CSRF-Token": csrf})
    assert r.status_code == 403 and "may only comment" in r.json()["error"]
    r = east.post(f"/api/warnings/{wid}/actions", json={"action": "comment", "note": "seen from the town"},
                  headers={"X-CSRF-Token": csrf})
    assert r.status_code == 201
    county, ccsrf = login(site, "county")
    assert 'data-action="acknowledge"' in county.get(f"/w/{wid}").text
    r = county.post(f"/api/warnings/{wid}/actions", json={"action": "dispatch", "desk": "Jiangcheng/Riverside District/East Town"},
                    headers={"X-CSRF-Token": ccsrf})
    assert r.status_code == 201  # handed down: now the town's to work
    assert 'data-action="start"' in east.get(f"/w/{wid}").text
    r = east.post(f"/api/warnings/{wid}/actions", json={"action": "start"}, headers={"X-CSRF-Token": csrf})
    assert r.status_code == 201


def test_vendor_text_is_escaped_on_every_page(site):
    c, _ = login(site, "county")
    wid = site["ws"]["xss"].id
    pages = [c.get("/?case_state=all"), c.get("/queue/rows?case_state=all"), c.get(f"/w/{wid}"), c.get("/stats")]
    for r in pages:
        assert r.status_code == 200
        assert XSS not in r.text and "<script>alert(2)" not in r.text
    assert "&lt;img src=x onerror=alert(1)&gt;" in pages[0].text and "&lt;img src=x onerror=alert(1)&gt;" in pages[2].text
    assert "&lt;img src=x onerror=alert(1)&gt;" in pages[3].text  # per-device false alarms
    assert "script-src 'self'" in pages[2].headers["content-security-policy"]
    # JSON keeps the text as data
    assert c.get(f"/api/warnings/{wid}").json()["w"]["source"] == XSS


def test_snapshots_are_served_from_the_evidence_folder_only(site):
    c, _ = login(site, "east")
    ok = c.get(f"/w/{site['ws']['cam'].id}/evidence/snapshot")
    assert ok.status_code == 200 and ok.content.startswith(b"\xff\xd8\xff")
    bad = c.get(f"/w/{site['ws']['escape'].id}/evidence/snapshot")
    assert bad.status_code == 404 and "top secret" not in bad.text
    for path in (f"/w/{site['ws']['cam'].id}/evidence/..%2F..%2Fsecret.txt", f"/w/{site['ws']['cam'].id}/evidence/evidence_dir",
                 f"/w/{site['ws']['cam'].id}/photo/1"):
        r = c.get(path)
        assert r.status_code == 404 and "top secret" not in r.text


def test_login_failures_are_rate_limited_with_one_line(site):
    c = httpx.Client(base_url=site["base"], timeout=10)
    codes = [c.post("/login", data={"name": "east", "password": f"guess-{i}"}).status_code for i in range(6)]
    assert codes[:5] == [401] * 5 and codes[5] == 429
    r = c.post("/login", data={"name": "east", "password": PASSWORDS["east"]}, follow_redirects=False)
    assert r.status_code == 429 and "too many failed logins" in r.text and "Traceback" not in r.text
    assert site["console"].counters.get("console", "login_rate_limited") >= 2
    assert c.get("/api/warnings").status_code == 401
    assert httpx.get(site["base"] + "/", follow_redirects=False).headers["location"].startswith("/login")
    # no open redirect after login
    c2 = httpx.Client(base_url=site["base"], timeout=10)
    r = c2.post("/login", data={"name": "west", "password": PASSWORDS["west"], "next": "//evil.example/x"}, follow_redirects=False)
    assert r.headers["location"] == "/"


def test_bad_filters_answer_one_clear_line(site):
    c, _ = login(site, "east")
    for q, word in (("severity=huge", "severity"), ("since=yesterday-ish", "since"), ("page=two", "page"), ("sort=id;drop", "sort")):
        r = c.get("/api/warnings?" + q)
        assert r.status_code == 400 and word in r.json()["error"] and "Traceback" not in r.text
        r = c.get("/?" + q)
        assert r.status_code == 400 and "Traceback" not in r.text


def _sse_reader(base: str, cookies, got: list, ready: threading.Event, stop: threading.Event) -> None:
    with httpx.Client(base_url=base, cookies=cookies, timeout=30) as c, c.stream("GET", "/events") as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            if line.startswith("retry"):
                ready.set()
            if line.startswith("data: "):
                got.append((time.time(), json.loads(line[6:])))
            if stop.is_set():
                return


def test_live_events_reach_the_desks_in_scope_only(site):
    east, _ = login(site, "east")
    west, _ = login(site, "west")
    got_e, got_w, stop = [], [], threading.Event()
    readies = [threading.Event(), threading.Event()]
    ts = [threading.Thread(target=_sse_reader, args=(site["base"], cl.cookies, got, rd, stop), daemon=True)
          for cl, got, rd in ((east, got_e, readies[0]), (west, got_w, readies[1]))]
    for t in ts:
        t.start()
    assert all(r.wait(10) for r in readies)
    new_east = make_warning("aq-9", EAST, NOW, severity="minor")
    t0 = time.time()
    seed(site["db"], [new_east])  # what a runtime in another process does; the console polls the store
    deadline = time.time() + 5
    while not any(e["id"] == new_east.id for _, e in got_e) and time.time() < deadline:
        time.sleep(0.02)
    arrived = [t for t, e in got_e if e["id"] == new_east.id]
    assert arrived and arrived[0] - t0 < 2.0
    # a case action is an event too, for the same desks
    cs_csrf = east.get("/api/me").json()["csrf"]
    assert east.post(f"/api/warnings/{new_east.id}/actions", json={"action": "acknowledge"}, headers={"X-CSRF-Token": cs_csrf}).status_code == 201
    deadline = time.time() + 5
    while not any(e.get("type") == "case" for _, e in got_e) and time.time() < deadline:
        time.sleep(0.02)
    assert any(e.get("type") == "case" and e["state"] == "acknowledged" for _, e in got_e)
    time.sleep(0.3)
    assert not any(e["id"] == new_east.id for _, e in got_w)  # West Town never hears of East Town's warning
    stop.set()
    seed(site["db"], [make_warning("aq-10", WEST, NOW + 1), make_warning("aq-11", EAST, NOW + 1)])  # wakes the readers
    for t in ts:
        t.join(5)


def test_a_slow_live_client_is_dropped_and_counted():
    counters = Counters()
    b = Broadcaster(counters, queue_max=8, max_clients=2)

    async def main():
        b.bind(asyncio.get_running_loop())
        slow = b.connect(Scope(""))
        fast = b.connect(Scope(""))
        assert b.connect(Scope("")) is None  # over max_clients
        for i in range(20):
            b.publish([{"id": f"w-{i}", "region": "A/B"}])
            assert json.loads((await fast.queue.get())[6:])["id"] == f"w-{i}"
        assert slow.dropped and slow not in b.clients and fast in b.clients
        assert await slow.queue.get() is None  # the stream ends; the browser reconnects
        return counters.snapshot()["console"]

    out = []  # in its own thread: a browser test's Playwright may own this thread's event loop
    t = threading.Thread(target=lambda: out.append(asyncio.run(main())))
    t.start()
    t.join(10)
    snap = out[0]
    assert snap["dropped"]["sse_slow_client"] == 1 and snap["dropped"]["sse_refused_full"] == 1


def test_an_oversized_photo_is_refused_before_it_is_read(site):
    c, csrf = login(site, "east")
    wid = site["ws"]["east"].id
    for action in ("acknowledge", "dispatch"):
        assert c.post(f"/w/{wid}/act", data={"action": action, "csrf": csrf}).status_code == 303
    big = b"\xff\xd8\xff" + b"0" * (11 * 2**20)
    r = c.post(f"/w/{wid}/act", data={"action": "handle", "note": "done", "csrf": csrf}, files={"photo": ("p.jpg", big, "image/jpeg")})
    assert r.status_code == 413 and "larger than 10 MB" in r.text
    r = c.post(f"/w/{wid}/act", data={"action": "handle", "note": "done", "csrf": csrf}, files={"photo": ("p.jpg", b"GIF89a", "image/jpeg")})
    assert r.status_code == 303 and "not%20a%20JPEG" in r.headers["location"]
    assert c.get(f"/api/warnings/{wid}").json()["w"]["case_state"] == "dispatched"
    assert site["console"].counters.snapshot()["console"]["dropped"]["upload_too_large"] == 1


def test_the_api_is_described_by_openapi_and_needs_no_internet(site):
    spec = httpx.get(site["base"] + "/api/openapi.json").json()
    paths = set(spec["paths"])
    assert {"/api/warnings", "/api/counts", "/api/warnings/{wid}", "/api/warnings/{wid}/actions", "/api/stats", "/api/me"} <= paths
    c, _ = login(site, "county")
    for page in ("/?case_state=all", f"/w/{site['ws']['cam'].id}", "/stats"):
        html = c.get(page).text
        assert "http://" not in html and "https://" not in html  # every asset is the console's own
    assert c.get("/static/console.js").status_code == 200 and c.get("/static/console.css").status_code == 200
    assert httpx.get(site["base"] + "/docs").status_code == 404  # Swagger UI would load from a CDN
