"""The Influx sink against a real server speaking the InfluxDB v2 write API (QuestDB, started by
the ``questdb_server`` fixture): what is written reads back exactly through SQL."""
from __future__ import annotations

import datetime as dt
import socket

import numpy as np
import pytest

from gridwatch.streams.influx_sink import InfluxSink, InfluxWriteError

pytestmark = [pytest.mark.questdb, pytest.mark.timeout(120)]

TRICKY = ["plain", "with space", "comma,inside", "equals=inside", 'quote"inside', "back\\slash",
          "trailing\\", "Zürich Straße 東京 😀", "tab\there", "multi\nline", " lead space", "#hash",
          'mix ,="\\ all']


def iso(ms: int) -> str:
    return dt.datetime.fromtimestamp(ms / 1000, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f") + "Z"


def sink_for(qdb, **kw) -> InfluxSink:
    return InfluxSink(qdb.url, token="any", org="gridwatch", bucket="gridwatch", **kw)


def test_readings_roundtrip_exact(questdb_server):
    rng = np.random.default_rng(7)
    n = 12_000
    devs = [TRICKY[i % len(TRICKY)] + f"#{i % 97}" for i in range(n)]
    metrics = [("temp °C", "pm2.5", "volt,age")[i % 3] for i in range(n)]
    ts = 1_700_000_000_000 + np.arange(n, dtype=np.int64) * 7
    vals = rng.normal(size=n) * 10.0 ** rng.integers(-8, 12, size=n)
    vals[:4] = [0.0, -0.0, 1e16, 123456789.123456789]
    with sink_for(questdb_server, batch_lines=5000, gzip=True) as sink:
        assert sink.write_readings(devs, metrics, ts, vals) == n
        # two full batches went out while writing (up to `in_flight` of them may still wait for answers)
        assert sink.stats.batches_written + len(sink._sent) == 2 and sink.pending_lines == 2000 + 5000 * len(sink._sent)
    assert sink.stats.lines_written == n and sink.stats.batches_written == 3
    assert sink.stats.rejected_batches == 0 and sink.stats.retries == 0
    rows = questdb_server.wait_rows("select device, metric, value, timestamp from readings order by timestamp", n)
    assert len(rows) == n
    for i, (d, m, v, t) in enumerate(rows):
        assert (d, m, t) == (devs[i], metrics[i], iso(int(ts[i]))), i
        assert v == vals[i], (i, v, vals[i])


def test_warnings_roundtrip_and_upsert_by_id(questdb_server):
    from gridwatch.records import RegionPath, Warning, warning_id

    def warning(state, cleared, severity, msg):
        return Warning(id=warning_id("cam 7, gate \"A\"", "crowd", 3, 1_700_000_100_000), rule="crowd",
                       kind="density", severity=severity, source='cam 7, gate "A"',
                       region=RegionPath("Metro", "Nord", "Alt=Stadt", "g 17"), state=state,
                       start_ts=1_700_000_100_000, last_ts=1_700_000_160_000, cleared_ts=cleared,
                       value=4.25, message=msg, zone="Platz der Einheit", evidence={"count": 41})

    other = {"id": "w-other", "rule": "crowd", "kind": "density", "severity": "minor", "source": "cam 8",
             "region": {"path": "Metro"}, "state": "active", "start_ts": 1_700_000_100_000,
             "last_ts": 1_700_000_100_000, "cleared_ts": None, "value": None, "message": "", "zone": None}
    msg = 'Dichte "kritisch": 4.25/m²\nsecond line, with = and \\ backslash'
    with sink_for(questdb_server, warnings_measurement="warnings") as sink:
        assert sink.write_warnings([warning("active", None, "major", msg), other]) == 2
    # (no cleared_ts column yet: a None field is omitted, and the column appears on first write)
    q = ("select id, rule, kind, source, zone, severity, state, region, value, last_ts, "
         "message, evidence, timestamp from warnings order by id")
    rows = questdb_server.wait_rows(q, 2)
    w = warning("active", None, "major", msg)
    assert rows == [
        [w.id, "crowd", "density", 'cam 7, gate "A"', "Platz der Einheit", "major", "active",
         "Metro/Nord/Alt=Stadt/g 17", 4.25, 1_700_000_160_000, msg, '{"count":41}', iso(w.start_ts)],
        ["w-other", "crowd", "density", "cam 8", None, "minor", "active", "Metro", None, 1_700_000_100_000,
         "", None, iso(1_700_000_100_000)],
    ]
    # InfluxDB upserts a point with the same series + time; QuestDB does so once deduplicated
    questdb_server.exec("ALTER TABLE warnings DEDUP ENABLE UPSERT KEYS(timestamp, rule, kind, source, zone)")
    with sink_for(questdb_server) as sink:
        sink.write_warnings([warning("cleared", 1_700_000_200_000, "critical", "cleared")])
    rows = questdb_server.wait_rows(f"select state, severity, cleared_ts, message from warnings where id = '{w.id}'",
                                    lambda r: r and r[0][0] == "cleared")
    assert rows == [["cleared", "critical", 1_700_000_200_000, "cleared"]]


def test_server_rejection_is_counted_not_retried(questdb_server):
    with sink_for(questdb_server, readings_measurement="typed") as sink:
        sink.write_readings(["d"], "m", np.array([1_700_000_000_000]), np.array([1.0]))
        sink.flush()
        questdb_server.wait_rows("select * from typed", 1)
        sink._buf.append('typed,device=d,metric=m value="not a number" 1700000000001')
        sink.flush()
    assert sink.stats.rejected_batches == 1 and sink.stats.retries == 0
    [reason] = sink.stats.rejections
    assert reason.startswith("400: ") and "cast error" in reason


def test_unreachable_server_retries_then_raises():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    sleeps = []
    sink = InfluxSink(f"http://127.0.0.1:{port}", "t", "o", "b", max_retries=3, sleep=sleeps.append, timeout_ms=2000)
    sink.write_readings(["d"], "m", np.array([1]), np.array([1.0]))
    with pytest.raises(InfluxWriteError):
        sink.flush()
    assert sink.stats.retries == 3 and len(sleeps) == 3 and sink.pending_lines == 1
    assert all(0 <= d <= 10.0 for d in sleeps)
