"""End to end in a real browser (Debian's chromium through Playwright) against `gridwatch run`
with the console beside it, on a real Mosquitto.

A reading published with mosquitto_pub raises a warning that appears in the county desk's open
queue without a reload; the county operator opens it (chart), acknowledges it and dispatches it to
the town desk; the town operator (another browser context) handles it with a note and a photo; the
city supervisor closes it and sees the funnel change. Case events arrive on MQTT. Each page's
screenshot goes to the test's tmp dir (and to $GRIDWATCH_SCREENSHOTS, e.g. docs/console, when set)
and is checked not to be blank."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import cv2
import jsonschema
import numpy as np
import orjson
import pytest

from gridwatch.cli import main
from gridwatch.servers._base import free_ports
from tests.console_seed import make_warning, seed
from tests.helpers import Subscriber, mosquitto_pub

ROOT = Path(__file__).resolve().parents[1]
GRID = ROOT / "gridwatch" / "demo" / "grid.geojson"
CASE_SCHEMA = json.loads((ROOT / "streams/schema/case-event.schema.json").read_text())
TOWN_DESK = "Jiangcheng/Riverside District/East Town"
USERS = {"county": ("county-password", "operator", "Jiangcheng/Riverside District"),
         "town": ("town-password", "operator", TOWN_DESK),
         "city": ("city-password", "supervisor", "Jiangcheng")}

pytestmark = [pytest.mark.broker, pytest.mark.timeout(240)]


def shot(page, tmp_path: Path, name: str) -> Path:
    p = tmp_path / f"{name}.png"
    page.screenshot(path=str(p), full_page=True)
    img = cv2.imread(str(p))
    assert img is not None and img.shape[0] > 200 and img.shape[1] > 600, f"{name}: not an image"
    assert float(img.std()) > 12.0, f"{name}: the screenshot is blank"
    colours = len(np.unique(img.reshape(-1, 3)[:: max(1, img.size // 3 // 50_000)], axis=0))
    assert colours > 20, f"{name}: only {colours} colours"
    out = os.environ.get("GRIDWATCH_SCREENSHOTS")
    if out:
        dest = Path(out) if Path(out).is_absolute() else ROOT / out
        dest.mkdir(parents=True, exist_ok=True)
        shutil.copy(p, dest / p.name)
    return p


def _snapshot_jpeg(color) -> bytes:
    img = np.full((240, 320, 3), 90, np.uint8)
    cv2.rectangle(img, (0, 160), (320, 240), (70, 110, 70), -1)
    cv2.rectangle(img, (140, 120), (200, 175), color, -1)
    cv2.rectangle(img, (130, 110), (210, 185), (0, 0, 255), 2)
    return cv2.imencode(".jpg", img)[1].tobytes()


@pytest.fixture
def stack(mosquitto, tmp_path, monkeypatch):
    """Mosquitto + `gridwatch run` (console enabled) as a real process, users added by the CLI."""
    mq_port = mosquitto.port
    console_port = free_ports(1)[0]
    data = tmp_path / "var"
    cfg_file = tmp_path / "edge.toml"
    cfg_file.write_text(f"""
[site]
name = "e2e"
data_dir = "{data.as_posix()}"

[mqtt]
host = "127.0.0.1"
port = {mq_port}
client_id = "e2e-ingest"

[regions]
default = "Jiangcheng/Riverside District"
geojson = "{GRID.as_posix()}"

[[devices]]
id = "sw-7"
vendor = "generic"
kind = "sewer_level"
lat = 30.605
lon = 114.315

[[rules]]
name = "sewer_overflow"
kind = "threshold"
metrics = ["water_level"]
severity = "major"
message = "Sewer level {{value:.2f}} m at {{source}}: overflow imminent"
params = {{ above = 2.5, clear_at = 2.3 }}

[console]
enabled = true
port = {console_port}
""")
    # a video warning with its before/after snapshots, stored before the runtime starts
    ev = data / "evidence" / "cam-east-3"
    ev.mkdir(parents=True)
    (ev / "before.jpg").write_bytes(_snapshot_jpeg((90, 90, 90)))
    (ev / "after.jpg").write_bytes(_snapshot_jpeg((40, 40, 40)))
    seed(data / "gridwatch.db", [make_warning("cam-east-3", "Jiangcheng/Riverside District/East Town/E-01",
                                              int(time.time() * 1000) - 600_000, rule="illegal_dumping", kind="dumping", value=0.91,
                                              message="Illegal dumping at cam-east-3 (bags left in zone 'kerb')",
                                              evidence={"snapshot": "cam-east-3/after.jpg", "before_snapshot": "cam-east-3/before.jpg",
                                                        "label": "dumping", "zone": "kerb"})])
    for name, (pw, role, scope) in USERS.items():
        monkeypatch.setenv("GRIDWATCH_PASSWORD", pw)
        assert main(["console", "-c", str(cfg_file), "users", "add", name, "--role", role, "--scope", scope]) == 0
    log = open(tmp_path / "run.log", "w+")
    proc = subprocess.Popen([sys.executable, "-m", "gridwatch.cli", "run", "-c", str(cfg_file)], stdout=log, stderr=subprocess.STDOUT,
                            cwd=ROOT)
    base = f"http://127.0.0.1:{console_port}"
    try:
        import httpx

        deadline = time.time() + 60
        while True:
            assert proc.poll() is None, "gridwatch run exited: " + (tmp_path / "run.log").read_text()[-3000:]
            try:
                if httpx.get(base + "/api/health", timeout=1).status_code == 200 and "gridwatch running" in (tmp_path / "run.log").read_text():
                    break
            except httpx.TransportError:
                pass
            assert time.time() < deadline, "console did not come up: " + (tmp_path / "run.log").read_text()[-3000:]
            time.sleep(0.2)
        yield {"base": base, "mq_port": mq_port, "log": tmp_path / "run.log"}
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        log.close()


def login(browser, base: str, name: str):
    ctx = browser.new_context(viewport={"width": 1360, "height": 860})
    page = ctx.new_page()
    page.goto(base + "/")
    assert "/login" in page.url
    page.fill("input[name=name]", name)
    page.fill("input[name=password]", USERS[name][0])
    page.click("button[type=submit]")
    page.wait_for_url(base + "/")
    return ctx, page


def test_from_published_reading_to_closed_case(stack, browser, tmp_path):
    base = stack["base"]
    cases_sub = Subscriber("127.0.0.1", stack["mq_port"], "gridwatch/cases/#", client_id="e2e-cases")
    county_ctx, county = login(browser, base, "county")
    county.wait_for_selector("#live.on", timeout=10_000)  # the live-update stream is connected
    before = set(county.eval_on_selector_all("tr[data-id]", "rs => rs.map(r => r.dataset.id)"))
    shot(county, tmp_path, "01-queue-before")

    # a vendor's sensor reports rising water, then 2.91 m: the rule's threshold is 2.5 m
    now = time.time()
    lines = [orjson.dumps({"ts": now - 600 + i * 20, "water_level": round(1.6 + i * 0.025, 3)}) for i in range(29)]
    lines.append(orjson.dumps({"ts": now, "water_level": 2.91}))
    t0 = time.monotonic()
    mosquitto_pub(stack["mq_port"], "devices/generic/sewer_level/sw-7", lines)
    row = county.wait_for_selector("tr[data-id].fresh", timeout=10_000)  # no reload: the live queue fetched it
    appeared_s = time.monotonic() - t0
    wid = row.get_attribute("data-id")
    assert wid not in before and "sw-7" in row.inner_text() and "new" in row.inner_text()
    print(f"warning visible in the county queue {appeared_s:.2f} s after mosquitto_pub started")
    county.wait_for_selector("#counts strong:text('2 matching')")  # the counts follow the live update
    assert appeared_s < 5.0
    shot(county, tmp_path, "02-queue-live")

    # the county operator opens it from the keyboard: chart with the threshold and the raise moment, map, device
    county.keyboard.press("j")
    assert county.get_attribute("tr.selected", "data-id") == wid
    county.keyboard.press("Enter")
    county.wait_for_selector("svg.chart polyline.series")
    assert county.locator("svg.chart .threshold-label").first.text_content().startswith("above 2.5")
    assert county.locator("svg.chart .raised-label").count() == 1
    assert county.locator("svg.map polygon.hit").count() == 1
    assert "generic" in county.inner_text("#device")
    shot(county, tmp_path, "03-warning")
    county.keyboard.press("a")
    county.wait_for_selector("#case-state:text('acknowledged')")

    # the town desk sees the county's case in its town, but only the county (or above) works it
    town_ctx, town = login(browser, base, "town")
    town.goto(base + f"/w/{wid}")
    assert "Jiangcheng/Riverside District" in town.inner_text("p.not-your-desk")
    assert town.locator("form[data-action=dispatch]").count() == 0 and town.locator("form[data-action=reject]").count() == 0
    assert town.locator("form[data-action=comment]").count() == 1
    shot(town, tmp_path, "04a-town-sees-the-county-case")

    county.select_option("form[data-action=dispatch] select[name=desk]", TOWN_DESK)
    county.click("form[data-action=dispatch] button")
    county.wait_for_selector("#case-state:text('dispatched')")
    assert TOWN_DESK in county.inner_text("section.head")
    shot(county, tmp_path, "04-warning-dispatched")

    # the town desk (another browser context) sees it dispatched to it, works it and reports back
    town.goto(base + "/?case_state=dispatched")
    town.wait_for_selector(f"tr[data-id='{wid}']")
    town.click(f"tr[data-id='{wid}'] td.msg a")
    town.click("form[data-action=start] button")
    town.wait_for_selector("#case-state:text('in progress')")
    town.fill("form[data-action=handle] textarea[name=note]", "Cleared the blocked outfall; level falling. <b>not bold</b>")
    png = cv2.imencode(".png", np.full((60, 80, 3), (30, 140, 60), np.uint8))[1].tobytes()
    town.set_input_files("form[data-action=handle] input[name=photo]", files=[{"name": "outfall.png", "mimeType": "image/png", "buffer": png}])
    town.click("form[data-action=handle] button")
    town.wait_for_selector("#case-state:text('handled')")
    assert "<b>not bold</b>" in town.inner_text("ol.timeline")  # shown as text, not markup
    assert town.locator("ol.timeline img.thumb").count() == 1
    shot(town, tmp_path, "05-warning-handled-by-town")
    # the town desk cannot open another town's warning (the video warning is in the same town: it can)
    assert town.goto(base + "/w/w-00000000000000000000").status == 404

    # the city supervisor closes it and sees the funnel move
    city_ctx, city = login(browser, base, "city")
    city.goto(base + "/stats")
    closed_before = int(city.text_content("svg.funnel text[data-step=closed]"))
    city.goto(base + f"/w/{wid}")
    city.click("form[data-action=close] button")
    city.wait_for_selector("#case-state:text('closed')")
    city.goto(base + "/stats")
    assert int(city.text_content("svg.funnel text[data-step=closed]")) == closed_before + 1
    assert int(city.text_content("svg.funnel text[data-step=handled]")) >= 1
    shot(city, tmp_path, "06-stats")

    # a video warning: snapshots before and at the raise, served from the evidence folder
    city.goto(base + "/?case_state=all&rule=illegal_dumping")
    city.click("tr[data-id] td.msg a")
    city.wait_for_selector(".snaps img")
    sizes = city.eval_on_selector_all(".snaps img", "imgs => imgs.map(i => i.naturalWidth)")
    assert sizes == [320, 320]
    shot(city, tmp_path, "07-video-warning")

    # the same steps went out as case events on MQTT, valid against the published schema
    got = []
    deadline = time.time() + 10
    while len(got) < 5 and time.time() < deadline:
        try:
            got.append(cases_sub.get(timeout=1))
        except Exception:  # noqa: BLE001 (queue.Empty)
            pass
    cases_sub.close()
    for topic, ev in got:
        jsonschema.validate(ev, CASE_SCHEMA)
        assert topic.startswith("gridwatch/cases/Jiangcheng/Riverside District/East Town/")
    assert [ev["event"] for _, ev in got] == ["acknowledge", "dispatch", "start", "handle", "close"]
    assert got[-1][1]["case"]["state"] == "closed" and got[-1][1]["warning_id"] == wid
    for ctx in (county_ctx, town_ctx, city_ctx):
        ctx.close()
