"""Cases: the audit fold, idempotent and state-checked actions, concurrency, scope, deadlines,
the queue's filters and paging - on a real SQLite store file."""
from __future__ import annotations

import threading
import time

import pytest

from gridwatch.streams.cases import CaseStore, Conflict, Forbidden, CaseError, NotFound, QueueFilter, Scope, User, fold
from tests.console_seed import EAST, HILL, WEST, make_warning, seed

NOW = int(time.time() * 1000)
COUNTY = User("county", "operator", "Jiangcheng/Riverside District")
EAST_TOWN = User("east", "operator", "Jiangcheng/Riverside District/East Town")
WEST_TOWN = User("west", "operator", "Jiangcheng/Riverside District/West Town")
CITY = User("city", "supervisor", "Jiangcheng")
VIEWER = User("look", "viewer", "Jiangcheng")


@pytest.fixture
def db(tmp_path):
    path = tmp_path / "gridwatch.db"
    ws = [make_warning("aq-1", EAST, NOW - 60_000), make_warning("aq-2", WEST, NOW - 50_000, severity="critical"),
          make_warning("aq-3", HILL, NOW - 40_000, severity="minor")]
    seed(path, ws)
    return path, ws


def _folded(cs: CaseStore, scope: Scope, w) -> tuple:
    audit = cs.audit(scope, w.id)
    from gridwatch.streams.cases import default_desk

    return fold(w.id, default_desk(w.region.as_path(), w.severity), audit).as_row()


def test_the_audit_fold_reconstructs_the_case_after_every_step(db):
    path, (w, *_rest) = db
    cs = CaseStore(path)
    steps = [(COUNTY, "acknowledge", {}), (COUNTY, "comment", {"note": "crew informed"}),
             (COUNTY, "dispatch", {"desk": "Jiangcheng/Riverside District/East Town"}),
             (EAST_TOWN, "start", {}), (EAST_TOWN, "handle", {"note": "pump started"}), (CITY, "close", {})]
    assert cs.warning(Scope(""), w.id)["case_state"] == "new"
    for user, action, kw in steps:
        rec, new = cs.act(user, w.id, action, **kw)
        assert new and rec["actor"] == user.name
        row = cs.case_row(w.id)
        assert _folded(cs, Scope(""), w) == tuple(row.values())
    row = cs.case_row(w.id)
    assert row["state"] == "closed" and row["desk"] == "Jiangcheng/Riverside District/East Town" and row["version"] == 6
    assert row["ack_ts"] and row["dispatched_ts"] and row["handled_ts"] and row["closed_ts"]
    assert [r["from_state"] + ">" + r["to_state"] for r in cs.audit(Scope(""), w.id)] == [
        "new>acknowledged", "acknowledged>acknowledged", "acknowledged>dispatched", "dispatched>in_progress",
        "in_progress>handled", "handled>closed"]


def test_a_repeated_action_id_changes_nothing_twice_and_a_stale_state_conflicts(db):
    path, (w, *_rest) = db
    cs = CaseStore(path)
    first, new1 = cs.act(COUNTY, w.id, "acknowledge", action_id="click-1", expect="new")
    again, new2 = cs.act(COUNTY, w.id, "acknowledge", action_id="click-1", expect="new")  # double click / retry
    assert new1 and not new2 and again["seq"] == first["seq"]
    assert len(cs.audit(Scope(""), w.id)) == 1
    with pytest.raises(Conflict, match="acknowledged now, not new"):
        cs.act(COUNTY, w.id, "acknowledge", action_id="click-2", expect="new")
    with pytest.raises(Conflict, match="cannot close"):
        cs.act(CITY, w.id, "close")
    with pytest.raises(Conflict, match="another action"):
        cs.act(COUNTY, w.id, "dispatch", action_id="click-1")
    assert cs.case_row(w.id)["version"] == 1


def test_roles_notes_and_desks_are_checked(db):
    path, (w, *_rest) = db
    cs = CaseStore(path)
    with pytest.raises(Forbidden):
        cs.act(VIEWER, w.id, "acknowledge")
    with pytest.raises(CaseError, match="needs a reason"):
        cs.act(COUNTY, w.id, "reject")
    with pytest.raises(CaseError, match="does not cover"):
        cs.act(COUNTY, w.id, "dispatch", desk="Jiangcheng/Riverside District/West Town")
    rec, _ = cs.act(COUNTY, w.id, "dispatch")  # default: the owning tier of a major warning, the county
    assert rec["desk"] == "Jiangcheng/Riverside District"
    with pytest.raises(Forbidden, match="at the desk 'Jiangcheng/Riverside District'"):
        cs.act(EAST_TOWN, w.id, "start")  # the county's case: not the town's to work
    cs.act(COUNTY, w.id, "dispatch", desk="Jiangcheng")  # escalate up
    with pytest.raises(Forbidden, match="may only comment"):  # now the city's: the county no longer works it
        cs.act(COUNTY, w.id, "dispatch", desk=EAST)
    cs.act(COUNTY, w.id, "comment", note="we can take it back if the city wants")  # but may comment
    cs.act(CITY, w.id, "dispatch", desk=EAST)  # the city hands it down to the grid cell
    cs.act(EAST_TOWN, w.id, "handle", note="done")
    with pytest.raises(Forbidden, match="supervisor"):
        cs.act(EAST_TOWN, w.id, "close")


def test_scope_hides_other_regions_everywhere(db):
    path, (east, west, hill) = db
    cs = CaseStore(path)
    for fn in (lambda: cs.warning(EAST_TOWN.scope_obj, west.id), lambda: cs.audit(EAST_TOWN.scope_obj, west.id),
               lambda: cs.act(EAST_TOWN, west.id, "acknowledge"), lambda: cs.warning(COUNTY.scope_obj, hill.id),
               lambda: cs.warning(EAST_TOWN.scope_obj, "w-doesnotexist")):
        with pytest.raises(NotFound):
            fn()
    ids = lambda u: {r["id"] for r in cs.queue(u.scope_obj, QueueFilter(case_state=""))["items"]}  # noqa: E731
    assert ids(EAST_TOWN) == {east.id}
    assert ids(COUNTY) == {east.id, west.id}
    assert ids(CITY) == {east.id, west.id, hill.id}
    # a user's region filter narrows inside the scope, never widens it
    assert {r["id"] for r in cs.queue(EAST_TOWN.scope_obj, QueueFilter(region="Jiangcheng", case_state=""))["items"]} == {east.id}
    # a whole-level prefix: 'East' is not a prefix of 'East Town'
    assert cs.queue(Scope("Jiangcheng/Riverside District/East"), QueueFilter(case_state=""))["items"] == []
    assert cs.stats(EAST_TOWN.scope_obj)["funnel"]["raised"] == 1


def test_two_users_acting_at_once_resolve_to_one_consistent_state(tmp_path):
    path = tmp_path / "gridwatch.db"
    # minor: the town's desk, so both the town and the county above it may work them
    ws = [make_warning(f"c-{i}", EAST, NOW - i * 1000, severity="minor") for i in range(20)]
    seed(path, ws)
    a, b = CaseStore(path), CaseStore(path)  # two console processes' connections
    results: dict[str, list] = {w.id: [] for w in ws}
    errors: list = []
    barrier = threading.Barrier(2)

    def work(cs, user, action, kw):
        barrier.wait()
        for w in ws:
            try:
                cs.act(user, w.id, action, expect="new", **kw)
                results[w.id].append(action)
            except Conflict:
                pass
            except Exception as e:  # noqa: BLE001 - a thread's error must fail the test, not vanish
                errors.append(e)

    t1 = threading.Thread(target=work, args=(a, COUNTY, "acknowledge", {}))
    t2 = threading.Thread(target=work, args=(b, EAST_TOWN, "reject", {"note": "test button pressed"}))
    t1.start(); t2.start(); t1.join(30); t2.join(30)
    assert errors == []
    for w in ws:
        assert len(results[w.id]) == 1, results[w.id]  # exactly one of the two won
        audit = a.audit(Scope(""), w.id)
        assert len(audit) == 1 and audit[0]["action"] == results[w.id][0]
        assert _folded(a, Scope(""), w) == tuple(a.case_row(w.id).values())


def test_overdue_cases_are_escalated_once_one_desk_up(tmp_path):
    path = tmp_path / "gridwatch.db"
    old = make_warning("late-1", EAST, NOW - 30 * 3600_000, severity="major")  # 24 h deadline
    fresh = make_warning("fresh-1", EAST, NOW - 3600_000, severity="major")
    seed(path, [old, fresh])
    cs = CaseStore(path, {"critical": 2, "major": 24, "minor": 72, "info": 72})
    assert cs.warning(Scope(""), old.id)["overdue"] and not cs.warning(Scope(""), fresh.id)["overdue"]
    recs = cs.escalate_overdue()
    assert [r["case_id"] for r in recs] == [old.id]
    assert cs.case_row(old.id)["desk"] == "Jiangcheng" and cs.case_row(old.id)["escalations"] == 1
    assert cs.escalate_overdue() == []  # once
    assert cs.stats(Scope(""))["overdue"] == 1


def test_queue_filters_sorting_paging_and_counts(tmp_path):
    path = tmp_path / "gridwatch.db"
    ws = [make_warning(f"q-{i}", EAST if i % 2 else WEST, NOW - i * 60_000, rule="r_even" if i % 2 == 0 else "r_odd",
                       severity=("minor", "major", "critical")[i % 3], state="cleared" if i % 5 == 0 else "active")
          for i in range(30)]
    seed(path, ws)
    cs = CaseStore(path)
    cs.act(CITY, ws[1].id, "reject", note="false alarm")
    sc = Scope("Jiangcheng")
    p1 = cs.queue(sc, QueueFilter(case_state="", per_page=10))
    p3 = cs.queue(sc, QueueFilter(case_state="", per_page=10, page=3))
    assert p1["has_more"] and not p3["has_more"] and len(p3["items"]) == 10
    assert [r["start_ts"] for r in p1["items"]] == sorted((r["start_ts"] for r in p1["items"]), reverse=True)
    assert p1["items"][0]["id"] == ws[0].id
    asc = cs.queue(sc, QueueFilter(case_state="", sort="start_ts", order="asc", per_page=1))
    assert asc["items"][0]["id"] == ws[-1].id
    got = cs.queue(sc, QueueFilter(region="Jiangcheng/Riverside District/East Town", rule="r_odd", severity="major",
                                   case_state="", per_page=100))["items"]
    want = {w.id for i, w in enumerate(ws) if i % 2 and i % 3 == 1}
    assert {r["id"] for r in got} == want
    assert {r["id"] for r in cs.queue(sc, QueueFilter(case_state="rejected"))["items"]} == {ws[1].id}
    assert ws[1].id not in {r["id"] for r in cs.queue(sc, QueueFilter(case_state="open", per_page=100))["items"]}
    assert len(cs.queue(sc, QueueFilter(sensor_state="cleared", case_state=""))["items"]) == 6
    assert len(cs.queue(sc, QueueFilter(since=NOW - 5 * 60_000 - 1, case_state=""))["items"]) == 6
    c = cs.counts(sc, QueueFilter(case_state=""))
    assert c["total"]["all"] == 30 and c["severity"] == {"minor": 10, "major": 10, "critical": 10}
    assert c["case_state"] == {"new": 29, "rejected": 1} and c["sensor_state"] == {"active": 24, "cleared": 6}
    for bad in (QueueFilter(severity="huge"), QueueFilter(sort="id; DROP TABLE warnings"), QueueFilter(case_state="x")):
        with pytest.raises(CaseError):
            cs.queue(sc, bad)


def test_users_passwords_tokens_and_sessions(tmp_path):
    cs = CaseStore(tmp_path / "gridwatch.db", session_hours=1, sessions_per_user=2)
    cs.add_user("east", "correct horse", "operator", "Jiangcheng/Riverside District/East Town")
    assert cs.check_password("east", "wrong") is None and cs.check_password("nobody", "correct horse") is None
    u = cs.check_password("east", "correct horse")
    assert u.scope == "Jiangcheng/Riverside District/East Town"
    row = cs._rows("SELECT pw_hash FROM console_users")[0]["pw_hash"]
    assert row.startswith("$argon2") and "correct horse" not in row
    for bad in (("bad name!", "x" * 8, "operator", ""), ("ok", "short", "operator", ""), ("ok", "x" * 8, "god", "")):
        with pytest.raises(CaseError):
            cs.add_user(*bad)
    tok = cs.add_token("east")
    assert cs.token_user(tok).name == "east" and cs.token_user(tok + "x") is None
    s1, _, _ = cs.new_session("east")
    s2, _, _ = cs.new_session("east")
    s3, csrf3, evicted = cs.new_session("east")
    assert evicted == 1 and cs.session(s1) is None and cs.session(s3) == (u, csrf3)
    cs.end_session(s3)
    assert cs.session(s3) is None


def test_a_case_holds_a_bounded_number_of_records(db, monkeypatch):
    import gridwatch.streams.cases as cases_mod

    path, (w, *_rest) = db
    monkeypatch.setattr(cases_mod, "RECORDS_PER_CASE_MAX", 5)
    cs = CaseStore(path)
    for i in range(5):
        cs.act(COUNTY, w.id, "comment", note=f"comment {i}")
    with pytest.raises(Conflict, match="the most one case may hold"):
        cs.act(COUNTY, w.id, "comment", note="one too many")
    assert len(cs.audit(Scope(""), w.id)) == 5
