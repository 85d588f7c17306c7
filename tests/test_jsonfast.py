"""The Numba recogniser of arrays of flat numeric objects (ingest/jsonfast.py).

It must never change a result: every message it accepts decodes exactly as on the general path
(orjson), numbers bit for bit, and whatever it cannot handle it leaves to that path."""
from __future__ import annotations

import json
import random
import struct
from decimal import Decimal

import numpy as np
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gridwatch.hw.profiles import load_profiles
from gridwatch.ingest import jsonfast
from gridwatch.ingest.codec import Codec, Message
from gridwatch.ingest.devices import DeviceDirectory

NOW = 1_700_000_000_000
NOW_S = NOW // 1000
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def codec(fast: bool = True) -> Codec:
    c = Codec(load_profiles(), DeviceDirectory("register"), max_age_s=0)
    c.fast_json = fast
    return c


def parse_values(texts: list[str]):
    """Each number text as the value of a one-item generic array -> (accepted mask, values)."""
    c = codec()
    vi = c._keys.vendor_index["generic"]
    payloads = [b'[{"ts":1,"water_level":' + t.encode() + b"}]" for t in texts]
    status, row0, rows, ts, val, spec, _ = jsonfast.parse(payloads, np.full(len(payloads), vi, np.int64), c._keys)
    ok = status == jsonfast.OK
    out = np.full(len(texts), np.nan)
    assert (rows[ok] == 1).all()
    out[ok] = val  # one row per accepted message, in message order
    return ok, out


def number_texts(seed: int, n: int) -> list[str]:
    rng = random.Random(seed)
    texts = []
    while len(texts) < n:  # shortest text of random doubles (the usual 16-17 digits)
        x = struct.unpack("d", struct.pack("Q", rng.getrandbits(64)))[0]
        if x == x and abs(x) != float("inf"):
            texts.append(repr(x))
    for _ in range(n):  # sensor-like magnitudes, computed (so often 17 digits)
        texts.append(repr(rng.uniform(-1000, 1000) * 10 ** rng.randint(-30, 30)))
    for _ in range(n):  # 1-19 digit decimals with and without exponents
        nd = rng.randint(1, 19)
        d = str(rng.randint(10 ** (nd - 1), 10**nd - 1))
        k = rng.randint(0, nd)
        e = f"e{rng.randint(-40, 40)}" if rng.random() < 0.5 else ""
        texts.append(("-" if rng.random() < 0.3 else "") + (d[:k] or "0") + "." + (d[k:] or "0") + e)
    for _ in range(n // 4):  # exact ties between two doubles: round half to even
        m = rng.getrandbits(53) | (1 << 52)
        e = rng.randint(-60, 60)
        t = Decimal(2 * m + 1) * Decimal(2) ** (e - 1)
        texts.append(format(t, "f") if abs(e) < 40 else format(t, "e"))
    texts += ["1.1400000000000001", "0.1", "0.30000000000000004", "9007199254740993.0", "1e22", "1e23",
              "4.9e-324", "2.2250738585072014e-308", "1.7976931348623157e308", "-0.0", "0.0", "-0", "0e5",
              "123456789012345678", "1234567890123456789", "9223372036854775807", "0.000001", "1E+2", "1e-7"]
    return texts


@pytest.mark.parametrize("seed", [0, 1])
def test_numbers_are_bit_identical_to_a_correctly_rounding_parser(seed):
    texts = number_texts(seed, 40_000)
    ok, vals = parse_values(texts)
    # the reference is what the general path stores: orjson's number, as float64 (an integer -0
    # is int 0 there, so +0.0; float("-0") would say -0.0)
    wrong = [(t, float(orjson.loads(t)), vals[i]) for i, t in enumerate(texts)
             if ok[i] and struct.pack("d", float(orjson.loads(t))) != struct.pack("d", vals[i])]
    assert not wrong, wrong[:5]
    # it must actually take the common cases (the point of it), not give almost everything up
    assert ok.mean() > 0.85, ok.mean()
    assert all(ok[texts.index(t)] for t in ("1.1400000000000001", "0.1", "1e22", "-0.0"))  # 1e23: a near-tie, given up


def test_what_it_gives_up_on():
    not_json = ["01", "1.", ".5", "+1", "-", "1e", "1e+", "NaN", "Infinity", "0x10", "1.5.2", "--1"]
    outside = ["1" * 19, "12345678901234567890.5", "1e400", "4.9e-324", "1" + "0" * 25 + ".5"]
    ok, _ = parse_values(not_json + outside)
    assert not ok.any(), [t for t, o in zip(not_json + outside, ok) if o]


STRUCTURES = [
    (b'[{"ts":1,"water_level":1.5},{"ts":2,"water_level":2}]', True),
    (b' \n[ { "ts" : 1 , "water_level" : 1.5 } ,\t{"water_level":2,"ts":2} ] \r\n', True),  # whitespace, key order
    (b'[{"ts":1,"water_level":1,"unit":"m","ok":true,"x":null,"n":-3e5}]', True),  # unknown keys skipped
    (b'[]', False), (b'[{}]', False), (b'{"ts":1,"water_level":1}', False),
    (b'[{"ts":1,"water_level":1},]', False), (b'[{"ts":1,"water_level":1,}]', False),
    (b'[{"ts":1,"water_level":1}] x', False), (b'[{"ts":1,"water_level":1}', False),
    (b'[{"ts":1,"water_level":"1.5"}]', False),  # string in a known key: general path explains
    (b'[{"ts":"2023-11-14T22:13:20Z","water_level":1}]', False),  # ISO time: general path
    (b'[{"water_level":1}]', False),  # no timestamp: general path uses the receive time
    (b'[{"ts":1,"water_level":1,"water_level":2}]', False),  # duplicate key
    (b'[{"ts":1,"water_level":1},{"ts":2,"flow":1}]', False),  # different keys
    (b'[{"ts":1,"water_level":1},{"ts":2,"water_level":1,"flow":1}]', False),
    (b'[{"ts":1,"water_level":1,"lat":30.1,"lon":120.2}]', False),  # position: general path
    (b'[{"ts":1,"water_level":{"v":1}}]', False), (b'[{"ts":1,"water_level":[1]}]', False),
    (b'[{"ts":1,"water_level":1,"u":"caf\xc3\xa9"}]', False),  # non-ASCII string
    (b'[{"ts":1,"water_level":1,"u":"a\\"b"}]', False),  # escape
    (b'[{"ts":1,"water\\u005flevel":1}]', False),  # escaped key
    (b'[{"ts":1,"water_level":1,"u":"\xff"}]', False),  # invalid UTF-8 (orjson: malformed)
    (b'[1, 2]', False), (b'[{"ts":1,"water_level":1}, 3]', False),
]


@pytest.mark.parametrize("payload,accepted", STRUCTURES)
def test_structure(payload, accepted):
    c = codec()
    status = jsonfast.parse([payload], np.array([c._keys.vendor_index["generic"]], np.int64), c._keys)[0]
    assert (status[0] == jsonfast.OK) == accepted


def snapshot(c: Codec, out):
    ids = [c.directory.device_id(int(d)) for d in out.sensor.device]
    rows = list(zip(ids, out.metric.tolist(), out.sensor.ts.tolist(), out.sensor.value.tolist()))
    dead = sorted((d.source, d.reason, d.count, d.detail) for d in out.dead)
    return rows, sorted(out.rejected.items()), dead, out.no_timestamp, len(out.position)


def both(messages: list[Message], now: int = NOW):
    a, b = codec(True), codec(False)
    return snapshot(a, a.decode(messages, now)), snapshot(b, b.decode(messages, now))


KEYS = st.sampled_from(["t", "lvl", "q", "bat", "other", "tilt"])
NUMS = (st.integers(-(10**20), 10**20) | st.floats(allow_nan=False, allow_infinity=False)
        | st.floats(-5, 300, allow_nan=False) | st.integers(NOW_S - 100, NOW_S + 100))
VALUES = NUMS | st.sampled_from(["x", "", None, True, False, [1], {"a": 1}, "caf\u00e9"])


@st.composite
def payload(draw):
    """Mostly regular arrays (the recogniser's case), with every kind of irregularity mixed in."""
    fields = draw(st.lists(KEYS, min_size=1, max_size=4, unique=True))
    n = draw(st.integers(1, 6))
    regular = draw(st.booleans())
    items = []
    for _ in range(n):
        vals = st.integers(NOW_S - 50, NOW_S + 50) if regular else VALUES
        it = {f: draw(vals if f == "t" else (NUMS if regular else VALUES)) for f in fields}
        if not regular and draw(st.booleans()):
            it[draw(KEYS)] = draw(VALUES)
        items.append(it)
    text = json.dumps(items, separators=draw(st.sampled_from([(",", ":"), (", ", ": "), (" ,\n", " :\t")])))
    return text.encode()


@FUZZ
@given(st.lists(payload(), min_size=1, max_size=6), st.data())
def test_codec_results_are_identical_with_and_without_the_recogniser(payloads, data):
    topics = ["devices/aqualine/sewer_level/aq-1", "devices/aqualine/sewer_level/aq-2",
              "devices/generic/sewer_level/g-1", "devices/nobody/x/y"]
    msgs = [Message(data.draw(st.sampled_from(topics)), p, NOW) for p in payloads]
    # a copy of the batch again: duplicates across messages must be caught the same way
    msgs += msgs[: data.draw(st.integers(0, len(msgs)))]
    fast, slow = both(msgs)
    assert fast == slow


def test_mixed_batch_keeps_message_order_and_explanations():
    """Messages of both paths interleaved in one batch: rows in message order, the same dead letters."""
    good = [{"t": NOW_S + i, "lvl": 100 + i} for i in range(3)]
    msgs = [
        Message("devices/aqualine/sewer_level/aq-1", orjson.dumps(good), NOW),  # recogniser
        Message("devices/aqualine/sewer_level/aq-1", orjson.dumps({"t": NOW_S + 9, "lvl": 5}), NOW),  # general
        Message("devices/aqualine/sewer_level/aq-2", orjson.dumps([{"t": NOW_S + 10**6, "lvl": 1}] * 2), NOW),  # future
        Message("devices/aqualine/sewer_level/aq-2", orjson.dumps([{"t": NOW_S, "lvl": "x"}]), NOW),  # wrong type
        Message("devices/aqualine/sewer_level/aq-1", orjson.dumps(good), NOW),  # duplicates of the first
        Message("devices/aqualine/sewer_level/aq-3", orjson.dumps([{"t": NOW_S, "lvl": 1e308}]), NOW),  # cm->m fine
        Message("devices/aqualine/sewer_level/aq-3", orjson.dumps([{"t": NOW_S + 1, "lvl": 99999999}]), NOW),  # range
    ]
    fast, slow = both(msgs)
    assert fast == slow
    rows, rejected, dead, _, _ = fast
    assert [r[2] for r in rows[:4]] == [NOW + 0, NOW + 1000, NOW + 2000, NOW + 9000]
    assert dict(rejected)["duplicate"] == 3 and dict(rejected)["future_timestamp"] == 2
    assert any("in the future" in d[3] and str(NOW_S + 10**6) in d[3] for d in dead)


def test_a_whole_benchmark_batch_is_taken_by_the_recogniser():
    from gridwatch.benchmarks.mqtt import batched_lines

    import time

    lines = batched_lines(50)  # stamped an hour ago
    now = int(time.time() * 1000)
    c = codec()
    fast_of, _ = c._recognise([Message(f"devices/generic/sewer_level/d{i}", ln, NOW) for i, ln in enumerate(lines)])
    assert len(fast_of) == 50
    fast, slow = both([Message(f"devices/generic/sewer_level/d{i % 7}", ln, now) for i, ln in enumerate(lines)], now)
    assert fast == slow and len(fast[0]) == 5000
