"""Line-protocol encoding of the Influx sink: escaping round-trips (a reference parser written
from the spec), batching, and retry/rejection behaviour against a fake write API."""
from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from gridwatch.streams.influx_sink import (InfluxSink, InfluxWriteError, encode_line, escape_key,
                                           escape_measurement, escape_string_field)

# ---------------------------------------------------------------------------------------------
# A reference parser: backslash escapes the next character (as QuestDB reads it; InfluxDB reads
# `\\`, `\,`, `\=`, `\ ` and `\"` the same way).


def split_lines(body: str) -> list[str]:
    lines, cur, i, quoted, in_fields = [], [], 0, False, False
    while i < len(body):
        ch = body[i]
        if ch == "\\" and i + 1 < len(body):
            cur.append(body[i:i + 2])
            i += 2
            continue
        if ch == " " and not quoted:
            in_fields = True
        if ch == '"' and in_fields:
            quoted = not quoted
        if ch == "\n" and not quoted:
            lines.append("".join(cur))
            cur, quoted, in_fields = [], False, False
        else:
            cur.append(ch)
        i += 1
    if cur:
        lines.append("".join(cur))
    return lines


def _read(s: str, i: int, stops: str) -> tuple[str, int]:
    out = []
    while i < len(s) and s[i] not in stops:
        if s[i] == "\\" and i + 1 < len(s):
            i += 1
        out.append(s[i])
        i += 1
    return "".join(out), i


def parse_line(line: str):
    meas, i = _read(line, 0, ", ")
    tags = {}
    while line[i] == ",":
        k, i = _read(line, i + 1, "=")
        v, i = _read(line, i + 1, ", ")
        tags[k] = v
    assert line[i] == " "
    i += 1
    fields = {}
    while True:
        k, i = _read(line, i, "=")
        i += 1
        if line[i] == '"':
            v, i = _read(line, i + 1, '"')
            i += 1
        else:
            raw, i = _read(line, i, ", ")
            if raw.endswith("i"):
                v = int(raw[:-1])
            elif raw in ("true", "false"):
                v = raw == "true"
            else:
                v = float(raw)
        fields[k] = v
        if line[i] == " ":
            break
        i += 1
    ts = int(line[i + 1:])
    return meas, tags, fields, ts


text = st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=40)
special = st.text(st.sampled_from(list(' ,="\\\n\r\té€😀=a#')), min_size=1, max_size=12)
idents = st.one_of(text, special)


@given(meas=idents, tk=idents, tv=idents, fk=idents, sv=st.one_of(st.text(), special), ts=st.integers(-2**62, 2**62))
@settings(max_examples=200, deadline=None)
def test_encode_line_roundtrip(meas, tk, tv, fk, sv, ts):
    fields = {fk: sv}
    if fk != "n":
        fields["n"] = 42
    line = encode_line(meas, {tk: tv}, fields, ts)
    body = line + "\n" + line
    assert split_lines(body) == [line, line]  # escaped newlines never split a line
    assert parse_line(line) == (meas, {tk: tv}, fields, ts)


@given(st.floats(allow_nan=False, allow_infinity=False))
def test_float_roundtrip(v):
    _, _, fields, _ = parse_line(encode_line("m", {}, {"value": v}, 0))
    assert fields["value"] == v and math.copysign(1, fields["value"]) == math.copysign(1, v)


def test_escape_examples():
    assert escape_measurement("a b,c=d") == "a\\ b\\,c=d"
    assert escape_key("a b,c=d\\") == "a\\ b\\,c\\=d\\\\"
    assert escape_string_field('say "hi" \\ now') == 'say \\"hi\\" \\\\ now'
    assert escape_key("line1\nline2") == "line1\\\nline2"
    assert escape_key("Zürich 東京") == "Zürich\\ 東京"
    line = encode_line("m", {"b": "2", "a": "1", "empty": ""}, {"f": 1.0, "i": 3, "s": "x", "skip": None, "nan": float("nan")}, 5)
    assert line == 'm,a=1,b=2 f=1.0,i=3i,s="x" 5'
    with pytest.raises(ValueError):
        encode_line("m", {}, {"nan": float("nan")}, 1)


# ---------------------------------------------------------------------------------------------
# The sink against a fake write API


class FakeWriteApi:
    def __init__(self, script=()):
        self.script = list(script)  # exceptions to raise, in order; then success
        self.bodies: list[bytes] = []
        self.calls = 0

    def write(self, bucket, org, record, write_precision):
        self.calls += 1
        assert write_precision == "ms"
        if self.script:
            raise self.script.pop(0)
        self.bodies.append(record)

    def close(self):
        pass

    def lines(self):
        return [ln for b in self.bodies for ln in split_lines(b.decode())]


def make_sink(script=(), **kw):
    sleeps = []
    sink = InfluxSink("http://127.0.0.1:9", "tok", "org", "bkt", sleep=sleeps.append, rand=lambda: 1.0, **kw)
    sink._write_api = FakeWriteApi(script)
    return sink, sleeps


def api_error(status, body=""):
    from influxdb_client.rest import ApiException
    e = ApiException(status=status, reason="x")
    e.body = body
    return e


def test_readings_lines_and_batches():
    sink, _ = make_sink(batch_lines=4)
    devs = np.array(["d 1", "d,2", "d=3", "d\\4", "Zürich-7", ""], dtype=object)
    ts = np.arange(6, dtype=np.int64) + 1_700_000_000_000
    vals = np.array([1.5, float("nan"), 3.0, 1e-300, -0.0, 7.0])
    n = sink.write_readings(devs, "pm2.5 µg", ts, vals)
    assert n == 4  # NaN row and empty device id skipped
    assert sink.stats.skipped_rows == {"non_finite": 1, "invalid_identifier": 1}
    assert sink._buf == [] and sink.pending_lines in (0, 4)  # one full batch of 4 handed to the sender
    sink.flush()  # waits for its answer, sends nothing more
    assert sink._write_api.calls == 1 and sink.pending_lines == 0
    parsed = [parse_line(ln) for ln in sink._write_api.lines()]
    assert [(t["device"], t["metric"], f["value"], ts_) for _, t, f, ts_ in parsed] == [
        ("d 1", "pm2.5 µg", 1.5, ts[0]), ("d=3", "pm2.5 µg", 3.0, ts[2]),
        ("d\\4", "pm2.5 µg", 1e-300, ts[3]), ("Zürich-7", "pm2.5 µg", -0.0, ts[4])]
    assert all(m == "readings" for m, *_ in parsed)


def test_warning_line_keyed_by_source_rule_zone_start():
    from gridwatch.records import RegionPath, Warning, warning_id

    w = Warning(id=warning_id("dev 1", "r1", 0, 1000), rule="r1", kind="threshold", severity="major",
                source="dev 1", region=RegionPath("Metro", "North", "Oak, Town", "g-17"), state="active",
                start_ts=1000, last_ts=2000, cleared_ts=None, value=float("nan"),
                message='line1\nsaid "stop", \\ ok', zone="school zone", evidence={"n": 3})
    sink, _ = make_sink()
    assert sink.write_warnings([w, {"rule": "missing id"}]) == 1
    assert sink.stats.skipped_rows["bad_warning: KeyError"] == 1
    sink.flush()
    [(meas, tags, fields, ts)] = [parse_line(ln) for ln in sink._write_api.lines()]
    assert meas == "warnings" and ts == 1000
    assert tags == {"rule": "r1", "kind": "threshold", "source": "dev 1", "zone": "school zone"}
    assert fields == {"id": w.id, "severity": "major", "state": "active", "region": "Metro/North/Oak, Town/g-17",
                      "last_ts": 2000, "message": 'line1\nsaid "stop", \\ ok', "evidence": '{"n":3}'}


def test_retries_5xx_with_backoff_then_succeeds():
    import urllib3
    sink, sleeps = make_sink([api_error(503), urllib3.exceptions.NewConnectionError(None, "refused"), api_error(500)],
                             backoff_base_s=0.1)
    sink.write_readings(["a"], "m", np.array([1]), np.array([1.0]))
    sink.flush()
    assert sink._write_api.calls == 4 and sink.stats.retries == 3
    assert sleeps == [0.1, 0.2, 0.4]  # base * 2**attempt * jitter(=1.0 here)
    assert sink.stats.lines_written == 1 and sink.pending_lines == 0


def test_4xx_is_a_counted_rejection_not_a_retry():
    body = '{"code":"invalid","message":"failed to parse line protocol"}'
    sink, sleeps = make_sink([api_error(400, body)])
    sink.write_readings(["a", "b"], "m", np.array([1, 2]), np.array([1.0, 2.0]))
    sink.flush()
    assert sink._write_api.calls == 1 and sleeps == []
    assert sink.stats.rejected_batches == 1 and sink.stats.rejected_lines == 2
    assert sink.stats.rejections == {"400: failed to parse line protocol": 1}
    assert sink.pending_lines == 0


def test_exhausted_retries_raise_and_keep_the_batch():
    sink, sleeps = make_sink([api_error(503)] * 3, max_retries=2)
    sink.write_readings(["a"], "m", np.array([1]), np.array([1.0]))
    with pytest.raises(InfluxWriteError):
        sink.flush()
    assert sink.pending_lines == 1 and sink.stats.failed_flushes == 1
    sink.flush()  # the server is back: the kept batch goes out
    assert sink.pending_lines == 0 and len(sink._write_api.lines()) == 1


def test_encoding_speed_smoke():
    import time
    sink, _ = make_sink(batch_lines=10**9)
    n = 200_000
    devs = np.array([f"dev-{i % 5000}" for i in range(n)], dtype=object)
    ts = np.arange(n, dtype=np.int64)
    vals = np.random.default_rng(0).normal(size=n)
    sink.write_readings(devs, "temp", ts, vals)  # warm the prefix cache
    sink._buf.clear()
    t0 = time.perf_counter()
    sink.write_readings(devs, "temp", ts, vals)
    dt = time.perf_counter() - t0
    assert sink.pending_lines == n
    assert n / dt > 200_000, f"{n / dt:,.0f} lines/s"
