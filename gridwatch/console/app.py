"""The console's routes: HTML pages, the JSON API (OpenAPI at /api/openapi.json) and live events.

Who may see what is decided in :mod:`gridwatch.streams.cases` (every query takes the user's
scope); this module only finds the user (session cookie or API token), checks the CSRF token of
every state change made with a cookie, and renders."""
from __future__ import annotations

import asyncio
import contextlib
import hmac
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, RedirectResponse, StreamingResponse
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from pydantic import BaseModel, Field

from gridwatch.console.charts import funnel_svg, map_svg, readings_svg
from gridwatch.console.live import SOURCE
from gridwatch.records import SEVERITIES
from gridwatch.streams.cases import (ACTIONS, OPEN_STATES, STATES, CaseError, NotFound, QueueFilter, Scope, User,
                                      path_levels, role_at_least, works_desk)

HERE = Path(__file__).parent
COOKIE = "gw_session"
PHOTO_TYPES = {"image/jpeg": ".jpg", "image/png": ".png"}


class NotLoggedIn(Exception):
    pass


class Auth:
    def __init__(self, user: User, csrf: str | None, via: str, token: str | None = None) -> None:
        self.user, self.csrf, self.via, self.token = user, csrf, via, token


class ActionIn(BaseModel):
    action: str = Field(description=f"One of: {', '.join(ACTIONS)}")
    action_id: str | None = Field(None, description="Client-chosen id; the same id again changes nothing (retries, double clicks).")
    expect: str | None = Field(None, description="The case state the client saw; another state answers 409.")
    desk: str | None = Field(None, description="dispatch: the desk (region path prefix of the warning); default its owning tier.")
    note: str = Field("", description="reject: the reason; handle: what was done; comment: the comment.")


def fmt_ts(ms: int | None) -> str:
    if ms is None:
        return "–"
    return datetime.fromtimestamp(ms / 1000, timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


def fmt_dur(s: float | None) -> str:
    if s is None:
        return "–"
    s = float(s)
    if s < 120:
        return f"{s:.0f} s"
    if s < 7200:
        return f"{s / 60:.0f} min"
    if s < 172800:
        return f"{s / 3600:.1f} h"
    return f"{s / 86400:.1f} d"


def parse_time(s: str | None, field: str) -> int | None:
    """'2h', '30m', '7d' (ago) or an ISO date/time (UTC)."""
    if not s:
        return None
    s = s.strip()
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    try:
        if s[-1] in units and s[:-1].replace(".", "", 1).isdigit():
            return int((time.time() - float(s[:-1]) * units[s[-1]]) * 1000)
        d = datetime.fromisoformat(s)
        return int((d if d.tzinfo else d.replace(tzinfo=timezone.utc)).timestamp() * 1000)
    except ValueError:
        raise CaseError(f"{field} {s!r}: expected e.g. 2h, 7d or 2026-11-20T08:00") from None


def create_app(console) -> FastAPI:
    cases = console.cases
    counters = console.counters

    @contextlib.asynccontextmanager
    async def lifespan(app):
        tasks = await console.startup()
        try:
            yield
        finally:
            for t in tasks:
                t.cancel()

    app = FastAPI(title="gridwatch console", version="1", lifespan=lifespan, docs_url=None, redoc_url=None,
                  openapi_url="/api/openapi.json",
                  description="The warning desk: queue, warnings, cases, statistics. Scope: a user sees only warnings in "
                              "their region; others answer 404. Authenticate with the session cookie (+ X-CSRF-Token on "
                              "changes) or `Authorization: Bearer <token>` (`gridwatch console tokens add USER`).")
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")
    templates = Jinja2Templates(directory=HERE / "templates")
    templates.env.globals.update(fmt_ts=fmt_ts, fmt_dur=fmt_dur, SEVERITIES=SEVERITIES, STATES=STATES,
                                 OPEN_STATES=OPEN_STATES, ACTIONS=ACTIONS, role_at_least=role_at_least,
                                 works_desk=works_desk)

    # --- who is asking -------------------------------------------------------------------------
    def auth(request: Request) -> Auth:
        h = request.headers.get("authorization", "")
        if h.lower().startswith("bearer "):
            u = cases.token_user(h[7:].strip())
            if u is None:
                raise NotLoggedIn()
            return Auth(u, None, "token")
        tok = request.cookies.get(COOKIE)
        if tok:
            s = cases.session(tok)
            if s is not None:
                return Auth(s[0], s[1], "session", tok)
        raise NotLoggedIn()

    def check_csrf(a: Auth, supplied: str | None) -> None:
        if a.via == "token":
            return  # not a cookie: a cross-site page cannot send it
        if not supplied or not hmac.compare_digest(supplied, a.csrf or ""):
            counters.add(SOURCE, "csrf_rejected")
            raise CsrfError()

    class CsrfError(Exception):
        pass

    def is_api(request: Request) -> bool:
        return request.url.path.startswith("/api/") or request.url.path == "/events"

    @app.exception_handler(NotLoggedIn)
    async def _not_logged_in(request: Request, exc):
        if is_api(request):
            return JSONResponse({"error": "not logged in (session cookie or Authorization: Bearer token)"}, 401)
        nxt = request.url.path + (("?" + request.url.query) if request.url.query else "")
        return RedirectResponse("/login?next=" + _q(nxt), 303)

    @app.exception_handler(CsrfError)
    async def _csrf(request: Request, exc):
        msg = "missing or wrong CSRF token: reload the page and try again"
        if is_api(request):
            return JSONResponse({"error": msg}, 403)
        return templates.TemplateResponse(request, "error.html", {"message": msg, "user": None}, status_code=403)

    @app.exception_handler(CaseError)
    async def _case_error(request: Request, exc: CaseError):
        if is_api(request):
            return JSONResponse({"error": str(exc)}, exc.status)
        return templates.TemplateResponse(request, "error.html", {"message": str(exc), "user": None}, status_code=exc.status)

    def page(request: Request, name: str, a: Auth, status: int = 200, **ctx):
        ctx.update(user=a.user, csrf=a.csrf, path=request.url.path)
        resp = templates.TemplateResponse(request, name, ctx, status_code=status)
        resp.headers["Content-Security-Policy"] = ("default-src 'self'; img-src 'self' data:; style-src 'self'; "
                                                   "script-src 'self'; frame-ancestors 'none'; form-action 'self'")
        resp.headers["X-Content-Type-Options"] = "nosniff"
        resp.headers["Referrer-Policy"] = "same-origin"
        return resp

    def queue_filter(q: dict[str, str]) -> QueueFilter:
        try:
            page_no, per_page = int(q.get("page") or 1), int(q.get("per_page") or 50)
        except ValueError:
            raise CaseError("page and per_page must be whole numbers") from None
        return QueueFilter(region=q.get("region", "").strip(), rule=q.get("rule", "").strip(), kind=q.get("kind", "").strip(),
                           severity=q.get("severity", ""), sensor_state=q.get("sensor_state", ""),
                           case_state="" if q.get("case_state", "open") == "all" else q.get("case_state", "open"),
                           desk=q.get("desk", "").strip(), since=parse_time(q.get("since"), "since"),
                           until=parse_time(q.get("until"), "until"), sort=q.get("sort") or "start_ts",
                           order=q.get("order") or "desc", page=page_no, per_page=per_page).check()

    configured_rules = sorted({r.name for r in console.cfg.rules} | {r.name for r in console.cfg.video.rules})
    seen_rules: list = [0.0, []]

    def rule_names() -> list[str]:
        """The filter's choices: the configured rules; without a config, the stored ones (refreshed every 5 min)."""
        if configured_rules:
            return configured_rules
        if time.monotonic() - seen_rules[0] > 300:
            seen_rules[:] = [time.monotonic(), cases.rules(cases_scope_all)]
        return seen_rules[1]

    cases_scope_all = Scope("")

    # --- login -------------------------------------------------------------------------------
    @app.get("/login", response_class=HTMLResponse, include_in_schema=False)
    async def login_form(request: Request, next: str = "/"):
        return templates.TemplateResponse(request, "login.html", {"next": _safe_next(next), "error": None, "user": None})

    @app.post("/login", include_in_schema=False)
    async def login(request: Request):
        form = await request.form()
        name, pw, nxt = str(form.get("name", "")).strip(), str(form.get("password", "")), _safe_next(str(form.get("next", "/")))
        ukey, ikey = [f"user:{name.lower()}"], [f"ip:{request.client.host if request.client else '-'}"]
        now = time.monotonic()
        wait = max(console.limiter.blocked(ukey, now), console.ip_limiter.blocked(ikey, now))
        if wait > 0:
            counters.add(SOURCE, "login_rate_limited")
            return templates.TemplateResponse(request, "login.html", {"next": nxt, "user": None,
                                              "error": f"too many failed logins: try again in {wait:.0f} s"}, status_code=429)
        user = await asyncio.get_running_loop().run_in_executor(None, cases.check_password, name, pw)
        if user is None:
            console.limiter.failed(ukey, now)
            console.ip_limiter.failed(ikey, now)
            counters.add(SOURCE, "login_failed")
            return templates.TemplateResponse(request, "login.html", {"next": nxt, "user": None,
                                              "error": "wrong user name or password"}, status_code=401)
        console.limiter.succeeded(ukey)
        token, _csrf, evicted = cases.new_session(user.name)
        if evicted:
            counters.drop(SOURCE, "sessions_evicted", evicted)
        resp = RedirectResponse(nxt, 303)
        resp.set_cookie(COOKIE, token, httponly=True, samesite="strict", max_age=int(console.ccfg.session_hours * 3600), path="/")
        return resp

    @app.post("/logout", include_in_schema=False)
    async def logout(request: Request):
        a = auth(request)
        form = await request.form()
        check_csrf(a, str(form.get("csrf", "")))
        if a.token:
            cases.end_session(a.token)
        resp = RedirectResponse("/login", 303)
        resp.delete_cookie(COOKIE, path="/")
        return resp

    # --- queue ---------------------------------------------------------------------------------
    def _queue_ctx(request: Request, a: Auth) -> dict[str, Any]:
        q = dict(request.query_params)
        f = queue_filter(q)
        res = cases.queue(a.user.scope_obj, f)
        base = {k: v for k, v in q.items() if k != "page" and v}
        base.setdefault("case_state", f.case_state or "all")
        return {"f": f, "res": res, "q": base, "rules": sorted(set(rule_names()) | {r["rule"] for r in res["items"]} | ({f.rule} - {""})),
                "prev_url": "/?" + _qs({**base, "page": f.page - 1}) if f.page > 1 else None,
                "next_url": "/?" + _qs({**base, "page": f.page + 1}) if res["has_more"] else None,
                "sort_url": lambda col: "/?" + _qs({**base, "sort": col,
                                                     "order": "asc" if f.sort == col and f.order == "desc" else "desc"})}

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def queue_page(request: Request):
        a = auth(request)
        return page(request, "queue.html", a, **_queue_ctx(request, a))

    @app.get("/queue/rows", response_class=HTMLResponse, include_in_schema=False)
    def queue_rows(request: Request):
        a = auth(request)
        return page(request, "_rows.html", a, **_queue_ctx(request, a))

    # --- a warning -----------------------------------------------------------------------------
    def _readings(w: dict[str, Any]) -> dict[str, Any]:
        metric = (w.get("evidence") or {}).get("metric")
        since = w["start_ts"] - 30 * 60_000
        until = (w["cleared_ts"] or w["last_ts"]) + 10 * 60_000
        try:
            from gridwatch.streams.store import Store

            r = Store(cases.path).readings(device=w["source"], metric=metric, since=since, until=until)
        except Exception:  # noqa: BLE001 (no readings tables yet)
            r = {"ts": [], "value": [], "metric": []}
        ts, vals = list(map(int, r["ts"])), list(map(float, r["value"]))
        if metric is None and len(r["metric"]):
            first = r["metric"][0]
            keep = [i for i, m in enumerate(r["metric"]) if m == first]
            ts, vals, metric = [ts[i] for i in keep], [vals[i] for i in keep], first
        return {"metric": metric, "ts": ts, "value": vals}

    def _thresholds(rule: str) -> list[tuple[str, float]]:
        for r in console.cfg.rules:
            if r.name == rule:
                p = r.params
                return [(k, float(p[k])) for k in ("above", "below", "clear_at") if isinstance(p.get(k), (int, float))]
        return []

    def _timeline(w: dict[str, Any], audit: list[dict[str, Any]]) -> list[dict[str, Any]]:
        t = [{"ts": w["start_ts"], "what": "raised", "who": "sensor", "text": w.get("message") or ""}]
        if w["state"] == "active" and w["last_ts"] > w["start_ts"]:
            t.append({"ts": w["last_ts"], "what": "updated", "who": "sensor", "text": f"latest value {w['value']}"})
        if w["cleared_ts"] is not None:
            t.append({"ts": w["cleared_ts"], "what": "cleared", "who": "sensor", "text": ""})
        for r in audit:
            text = f"{r['from_state']} → {r['to_state']}".replace("_", " ") if r["to_state"] != r["from_state"] else ""
            if r["desk"]:
                text += f" · desk {r['desk']}"
            t.append({"ts": r["ts"], "what": r["action"], "who": r["actor"], "text": text, "note": r["note"], "seq": r["seq"],
                      "photo": r["photo"]})
        return sorted(t, key=lambda e: e["ts"])

    def warning_data(a: Auth, wid: str) -> dict[str, Any]:
        w = cases.warning(a.user.scope_obj, wid)  # NotFound outside the scope
        audit = cases.audit(a.user.scope_obj, wid)
        dev = cases.device(w["source"])
        return {"w": w, "audit": audit, "device": dev, "timeline": _timeline(w, audit)}

    def desks_for(w: dict[str, Any]) -> list[str]:
        lv = path_levels(w["region"])
        return ["/".join(lv[:i]) for i in range(1, len(lv) + 1)]

    @app.get("/w/{wid}", response_class=HTMLResponse, include_in_schema=False)
    def warning_page(request: Request, wid: str, error: str | None = None):
        a = auth(request)
        d = warning_data(a, wid)
        w = d["w"]
        rd = _readings(w)
        chart = readings_svg(rd["ts"], rd["value"], thresholds=_thresholds(w["rule"]), raised_ts=w["start_ts"],
                             cleared_ts=w["cleared_ts"], unit=rd["metric"] or "")
        dev = d["device"] or {}
        point = (dev["lat"], dev["lon"]) if dev.get("lat") is not None and dev.get("lon") is not None else None
        snaps = [k for k in ("before_snapshot", "snapshot") if isinstance(w["evidence"].get(k), str)]
        clip = _clip_file(w) is not None  # else (not written yet, failed, deleted): the snapshots alone
        th = _thresholds(w["rule"])
        why = " or ".join(f"{k} {v:g}" for k, v in th if k != "clear_at")
        why += "".join(f" (clears at {v:g})" for k, v in th if k == "clear_at")
        return page(request, "warning.html", a, **d, chart=chart, metric=rd["metric"], n_readings=len(rd["ts"]), why=why,
                    map=map_svg(console.geojson, w["region"], point), snaps=snaps, clip=clip, desks=desks_for(w),
                    action_id=uuid.uuid4().hex, error=error,
                    evidence_items=[(k, v) for k, v in w["evidence"].items() if k not in ("snapshot", "before_snapshot", "evidence_dir", "metric", "clip")])

    def _within_evidence(rel: str, root: Path | None = None) -> Path:
        root = (root or console.evidence_root).resolve()
        p = (root / rel).resolve()
        if not rel or not p.is_relative_to(root) or not p.is_file():
            raise NotFound("no such evidence file")
        return p

    def _clip_file(w: dict[str, Any]) -> Path | None:
        """The warning's clip file, inside the clips folder; None when there is none (yet)."""
        rel = w["evidence"].get("clip")
        if not isinstance(rel, str) or not rel.endswith(".mp4"):
            return None
        try:
            return _within_evidence(rel, console.clip_root)
        except NotFound:
            return None

    @app.get("/w/{wid}/evidence/{which}", include_in_schema=False)
    def evidence(request: Request, wid: str, which: str):
        a = auth(request)
        w = cases.warning(a.user.scope_obj, wid)
        if which == "clip":  # served with range requests (seeking), from the clips folder only
            p = _clip_file(w)
            if p is None:
                raise NotFound("no such evidence")
            return FileResponse(p, media_type="video/mp4", headers={"X-Content-Type-Options": "nosniff"})
        if which not in ("snapshot", "before_snapshot") or not isinstance(w["evidence"].get(which), str):
            raise NotFound("no such evidence")
        return FileResponse(_within_evidence(w["evidence"][which]), headers={"X-Content-Type-Options": "nosniff"})

    @app.get("/w/{wid}/photo/{seq}", include_in_schema=False)
    def photo(request: Request, wid: str, seq: int):
        a = auth(request)
        rec = [r for r in cases.audit(a.user.scope_obj, wid) if r["seq"] == seq and r["photo"]]
        if not rec:
            raise NotFound("no such photo")
        return FileResponse(_within_evidence(rec[0]["photo"], console.case_photo_root), headers={"X-Content-Type-Options": "nosniff"})

    async def _save_photo(wid: str, upload) -> str | None:
        if upload is None or not getattr(upload, "filename", ""):
            return None
        ext = PHOTO_TYPES.get(upload.content_type or "")
        if ext is None:
            raise CaseError("the photo must be a JPEG or PNG image")
        limit = int(console.ccfg.upload_max_mb * 2**20)
        data = await upload.read(limit + 1)
        if len(data) > limit:
            counters.drop(SOURCE, "upload_too_large")
            raise CaseError(f"the photo is larger than {console.ccfg.upload_max_mb:g} MB")
        if not (data.startswith(b"\xff\xd8\xff") or data.startswith(b"\x89PNG\r\n\x1a\n")):
            raise CaseError("the photo is not a JPEG or PNG image")
        rel = Path(wid) / f"{uuid.uuid4().hex}{ext}"
        p = console.case_photo_root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
        return rel.as_posix()

    def do_action(a: Auth, wid: str, body: ActionIn, photo: str | None = None) -> tuple[dict[str, Any], bool]:
        rec, new = cases.act(a.user, wid, body.action, action_id=body.action_id, expect=body.expect or None,
                             desk=body.desk, note=body.note, photo=photo)
        if new:
            counters.add(SOURCE, f"action_{body.action}")
            console.case_changed(rec)
        return rec, new

    @app.post("/w/{wid}/act", include_in_schema=False)
    async def act_form(request: Request, wid: str):
        a = auth(request)
        # refuse an oversized body before it is parsed (and spooled to disk)
        limit = int(console.ccfg.upload_max_mb * 2**20) + 65536
        try:
            length = int(request.headers.get("content-length", ""))
        except ValueError:
            length = -1
        if length < 0 or length > limit:
            counters.drop(SOURCE, "upload_too_large")
            return templates.TemplateResponse(request, "error.html", {"user": None, "message":
                                              f"the form is larger than {console.ccfg.upload_max_mb:g} MB (or has no length); "
                                              "attach a smaller photo"}, status_code=413)
        form = await request.form()
        check_csrf(a, str(form.get("csrf", "")))
        body = ActionIn(action=str(form.get("action", "")), action_id=str(form.get("action_id", "")) or None,
                        expect=str(form.get("expect", "")) or None, desk=str(form.get("desk", "")) or None,
                        note=str(form.get("note", "")))
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(None, cases.warning, a.user.scope_obj, wid)  # 404 before anything is saved
            photo_rel = await _save_photo(wid, form.get("photo")) if body.action == "handle" else None
            await loop.run_in_executor(None, do_action, a, wid, body, photo_rel)
        except NotFound:
            raise
        except CaseError as e:
            return RedirectResponse(f"/w/{_q(wid)}?error={_q(str(e))}", 303)
        return RedirectResponse(f"/w/{_q(wid)}", 303)

    # --- statistics ------------------------------------------------------------------------------
    def stats_data(a: Auth, q: dict[str, str]) -> dict[str, Any]:
        return cases.stats(a.user.scope_obj, region=q.get("region", "").strip(), since=parse_time(q.get("since"), "since"),
                           until=parse_time(q.get("until"), "until"))

    @app.get("/stats", response_class=HTMLResponse, include_in_schema=False)
    def stats_page(request: Request):
        a = auth(request)
        q = dict(request.query_params)
        s = stats_data(a, q)
        return page(request, "stats.html", a, s=s, q=q, funnel=funnel_svg(s["funnel"]))

    # --- live events ---------------------------------------------------------------------------
    @app.get("/events", include_in_schema=False)
    async def events(request: Request):
        a = auth(request)
        client = console.broadcaster.connect(a.user.scope_obj)
        if client is None:
            return JSONResponse({"error": "too many live clients; retry later"}, 503, headers={"Retry-After": "5"})

        async def stream():
            try:
                yield "retry: 2000\n\n"
                q = client.queue
                while True:
                    if q.empty():
                        try:
                            async with asyncio.timeout(15.0):  # no task per wait (wait_for makes one)
                                first = await q.get()
                        except TimeoutError:
                            yield ": keep-alive\n\n"
                            continue
                    else:
                        first = q.get_nowait()
                    # everything already queued goes out in one write: a client that fell behind
                    # catches up in few large writes instead of many small ones
                    parts = [first]
                    while parts[-1] is not None and not q.empty():
                        parts.append(q.get_nowait())
                    if parts[-1] is None:  # dropped as too slow: send what is left, then end
                        if len(parts) > 1:
                            yield "".join(parts[:-1])
                        return
                    yield "".join(parts)  # each "data: {json}\n\n", encoded once by the broadcaster
            finally:
                console.broadcaster.disconnect(client)

        return StreamingResponse(stream(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})

    # --- JSON API --------------------------------------------------------------------------------
    @app.get("/api/me", tags=["users"])
    def api_me(request: Request):
        a = auth(request)
        return {"name": a.user.name, "role": a.user.role, "scope": a.user.scope, "csrf": a.csrf}

    @app.get("/api/warnings", tags=["warnings"], summary="The queue: filters, paging, sorting (case_state defaults to open)")
    def api_queue(request: Request):
        a = auth(request)
        return cases.queue(a.user.scope_obj, queue_filter(dict(request.query_params)))

    @app.get("/api/counts", tags=["warnings"], summary="Counts per severity, sensor state, case state, rule and kind under the filters")
    def api_counts(request: Request):
        a = auth(request)
        return cases.counts(a.user.scope_obj, queue_filter(dict(request.query_params)))

    @app.get("/api/warnings/{wid}", tags=["warnings"], summary="A warning, its case, audit trail, timeline and device")
    def api_warning(request: Request, wid: str):
        return warning_data(auth(request), wid)

    @app.get("/api/warnings/{wid}/readings", tags=["warnings"], summary="The readings around a warning")
    def api_readings(request: Request, wid: str):
        a = auth(request)
        return _readings(cases.warning(a.user.scope_obj, wid))

    @app.post("/api/warnings/{wid}/actions", tags=["cases"], summary="Act on the warning's case (idempotent by action_id)")
    def api_act(request: Request, wid: str, body: ActionIn):
        a = auth(request)
        check_csrf(a, request.headers.get("x-csrf-token"))
        rec, new = do_action(a, wid, body)
        case = cases.case_row(wid)
        return JSONResponse({"record": rec, "case": case, "applied": new}, 201 if new else 200)

    @app.get("/api/stats", tags=["statistics"], summary="Funnel, times to acknowledge and close, overdue, false alarms")
    def api_stats(request: Request):
        return stats_data(auth(request), dict(request.query_params))

    @app.get("/api/health", tags=["service"])
    def api_health():
        return {"ok": True, "counters": counters.snapshot().get(SOURCE, {})}

    return app


def _q(s: str) -> str:
    from urllib.parse import quote

    return quote(s, safe="")


def _qs(d: dict[str, Any]) -> str:
    from urllib.parse import urlencode

    return urlencode({k: v for k, v in d.items() if v not in (None, "")})


def _safe_next(n: str) -> str:
    """Only a local path (no //host, no scheme): no open redirect after login."""
    return n if n.startswith("/") and not n.startswith("//") and "\\" not in n else "/"
