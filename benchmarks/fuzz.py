"""Fuzz the input surfaces: the MQTT payload codec, the config loader, vendor profiles and the
Kafka wire decoder, with generated inputs; count crashes (must be 0) and rejections by reason.

    python -m gridwatch.benchmarks.fuzz                       # >= 1,000,000 inputs (long run)
    python -m gridwatch.benchmarks.fuzz --inputs 20000        # a quick pass
    gridwatch bench fuzz --inputs 1000000 --json out.json
    python -m gridwatch.benchmarks.fuzz --atheris codec --runs 200000   # coverage-guided (pip install atheris)

Generation is seeded and deterministic (``--seed``): structured generators (JSON trees with
profile keys, hostile payloads: deep nesting, huge numbers, unicode, NUL bytes, 10k-item arrays,
TOML-ish config trees, profile tables) plus byte-level mutation of valid seeds and of the kept
corpus in ``tests/corpus``. A *crash* is any exception other than the surface's own rejection
(``ConfigError``, ``ProfileError``, ``WireError``; the codec must never raise at all), or an
invariant broken: a codec output value or position that is not finite, a timestamp outside the
accepted window, a dead letter without a known reason code or without an explanation, or an
input neither stored nor rejected. Crashing inputs are written to ``--crash-dir``.
"""
from __future__ import annotations

import argparse
import base64
import json
import os
import random
import sys
import time
import tomllib
import traceback
from collections import Counter
from pathlib import Path

import numpy as np
import orjson

NOW = 1_700_000_000_000  # epoch ms used as "now" for the codec
NOW_S = NOW // 1000
CORPUS = Path(__file__).resolve().parent.parent / "tests" / "corpus"

CODEC_REASONS = frozenset(
    "oversized malformed_json not_an_object bad_topic unknown_vendor unknown_device vendor_mismatch "
    "bad_device_id missing_field no_readings wrong_type bad_timestamp non_finite out_of_range "
    "future_timestamp stale_timestamp duplicate".split())


class Crash(AssertionError):
    """An input that crashed a surface or broke one of its invariants."""


# --------------------------------------------------------------------------------------------
# generators

TOPICS = ["devices/aqualine/sewer_level/aq-1", "devices/aqualine/sewer_level/aq-2", "devices/gassense/gas/g-1",
          "devices/trackpoint/tracker/t-1", "devices/dji/drone/dock-1", "devices/generic/any/x-1",
          "devices/nope/a/b", "devices", "devices/aqualine//x", "devices/aqualine/k/aq-1/extra",
          "devices/gassense/gas/aq-1"]
KEYS = ["t", "time", "gpsTime", "timestamp", "ts", "lvl", "q", "p", "tilt", "bat", "H2S", "CH4", "CO", "O2",
        "lat", "lng", "lon", "spd", "vbat", "data", "sn", "height", "battery", "capacity_percent",
        "water_level", "latitude", "longitude", "horizontal_speed", "elevation", "speed", "alt"]
WEIRD_STR = ["", "\x00", "a\x00b", "\u202eevil", "\ud7ff", "\U0001F600" * 3, "水位", "\\", '"', "\n", " ",
             "1e999", "NaN", "-0", "2023-11-14T22:13:20Z", "9999-12-31T23:59:59+14:00", "0001-01-01T00:00:00",
             "x" * 300]
NUMBERS = [0, -0.0, 1, -1, 0.5, 2**31, 2**53 + 1, 2**63 - 1, -2**63, 2**64 - 1, 1e308, -1e308, 5e-324,
           1.7976931348623157e308, 12.5, 250, 99999, NOW_S, NOW, NOW * 1000, NOW * 1_000_000, NOW_S + 10**6,
           NOW_S - 10**7]


def _scalar(r: random.Random):
    k = r.random()
    if k < 0.35:
        return r.choice(NUMBERS)
    if k < 0.55:
        return r.uniform(-1e3, 1e5) if r.random() < 0.7 else r.randint(-10**6, 10**6)
    if k < 0.7:
        return r.choice(WEIRD_STR)
    if k < 0.8:
        return r.choice([None, True, False])
    if k < 0.9:
        return "".join(chr(r.randint(0, 0x2FFF)) for _ in range(r.randint(0, 6)))
    return NOW_S - r.randint(0, 3600)


def json_tree(r: random.Random, depth: int = 0):
    k = r.random()
    if depth > 4 or k < 0.45:
        return _scalar(r)
    if k < 0.6:
        return [json_tree(r, depth + 1) for _ in range(r.randint(0, 4))]
    keys = KEYS if r.random() < 0.85 else WEIRD_STR
    return {r.choice(keys): json_tree(r, depth + 1) for _ in range(r.randint(0, 6))}


def reading_item(r: random.Random) -> dict:
    """Mostly well-formed readings, so the later stages (types, units, ranges, duplicates) are hit."""
    d: dict = {r.choice(["t", "time", "ts", "gpsTime", "timestamp"]): r.choice(NUMBERS[-7:] + [NOW_S - r.randint(0, 999)])}
    for _ in range(r.randint(1, 4)):
        d[r.choice(KEYS)] = _scalar(r) if r.random() < 0.3 else r.uniform(-10, 300)
    if r.random() < 0.1:
        d["data"] = {r.choice(KEYS): r.uniform(0, 100) for _ in range(3)}
    return d


def _dumps(obj) -> bytes:
    try:
        return orjson.dumps(obj)
    except (TypeError, orjson.JSONEncodeError):  # ints beyond 64 bit, lone surrogates: use json
        return json.dumps(obj).encode("utf-8", "surrogatepass")


def hostile_payload(r: random.Random) -> bytes:
    k = r.randrange(12)
    if k == 0:
        n = r.choice([10, 100, 513, 1024, 5000])
        return b"[" * n + b"]" * n
    if k == 1:
        n = r.choice([10, 200, 1000, 3000])
        return b'{"t":%d,"lvl":' % NOW_S + b'{"a":' * n + b"1" + b"}" * n + b"}"
    if k == 2:
        return b'{"t":%d,"lvl":%s}' % (NOW_S, (b"-" if r.random() < 0.5 else b"") + b"9" * r.choice([19, 20, 40, 400, 5000]))
    if k == 3:
        return b'{"t":%s,"lvl":1}' % r.choice([b"1e999", b"-1e999", b"1" + b"0" * 30, b"1e300", b"-1e18", b"NaN", b"Infinity"])
    if k == 4:  # escapes: NUL, lone surrogates, quotes, non-BMP
        esc = "".join(r.choice(["\\u0000", "\\ud800", "\\udfff", "é", "水", '\\"', "😀"]) for _ in range(8))
        return ('{"t":%d,"%s":"%s"}' % (NOW_S, r.choice(["lvl", esc]), esc)).encode()
    if k == 5:
        return b'{"t":%d,"lvl":1}' % NOW_S + b"\x00" * r.randint(1, 4)
    if k == 6:
        n = 10_000 if r.random() < 0.1 else 1000
        if r.random() < 0.5:
            return orjson.dumps([{"t": NOW_S - i * 0.001, "lvl": 100 + i % 50} for i in range(n)])
        return orjson.dumps([{"t": NOW_S - i, "lvl": 1} if i % 3 else r.choice([1, "x", None, []]) for i in range(n)])
    if k == 7:
        return bytes(r.getrandbits(8) for _ in range(r.randint(0, 64)))
    if k == 8:
        return b"\xef\xbb\xbf" + _dumps(reading_item(r))
    if k == 9:
        return r.choice([b"", b" ", b"null", b"[]", b"{}", b'"x"', b"42", b"[[]]", b"[{}]", b"true"])
    if k == 10:
        return _dumps({"t": NOW_S, "lvl": [[[[1]]]], "q": {"a": {"b": 1}}})
    return ("{" + ",".join(f'"lvl":{i}' for i in range(r.randint(2, 50))) + f',"t":{NOW_S}' + "}").encode()


def mutate(r: random.Random, b: bytes, n_ops: int | None = None) -> bytes:
    ba = bytearray(b)
    for _ in range(n_ops or r.randint(1, 4)):
        op = r.random()
        if op < 0.4 and ba:
            ba[r.randrange(len(ba))] = r.getrandbits(8)
        elif op < 0.55 and ba:
            del ba[r.randrange(len(ba)):]
        elif op < 0.7 and ba:
            i = r.randrange(len(ba))
            del ba[i:i + r.randint(1, 8)]
        elif op < 0.85:
            i = r.randrange(len(ba) + 1)
            ba[i:i] = bytes(r.getrandbits(8) for _ in range(r.randint(1, 8)))
        elif ba:
            i = r.randrange(len(ba))
            ba[i:i] = ba[i:i + r.randint(1, 16)] * r.randint(1, 4)
    return bytes(ba)


def codec_message(r: random.Random, seeds: list[tuple[str, bytes]]) -> tuple[str, bytes]:
    k = r.random()
    if k < 0.05:
        topic = r.choice(TOPICS) + r.choice(WEIRD_STR)
    elif k < 0.08:
        topic = "".join(chr(r.randint(0, 0x3000)) for _ in range(r.randint(0, 30)))
    else:
        topic = r.choice(TOPICS)
    k = r.random()
    if k < 0.35:
        p = _dumps(reading_item(r) if r.random() < 0.7 else [reading_item(r) for _ in range(r.randint(0, 8))])
    elif k < 0.55:
        p = _dumps(json_tree(r))
    elif k < 0.62:
        p = hostile_payload(r)
    elif seeds:
        t, p = r.choice(seeds)
        if r.random() < 0.3:
            topic = t
        p = mutate(r, p)
    else:
        p = mutate(r, _dumps(reading_item(r)))
    return topic, p


CFG_KEYS = {
    "": ["site", "mqtt", "ingest", "devices", "regions", "rules", "store", "alerts_mqtt", "metrics", "log", "kafka",
         "worker", "influx", "cameras", "video"],
    "site": ["name", "data_dir"], "mqtt": ["host", "port", "username", "password", "tls", "protocol", "client_id",
                                           "topics", "qos", "receive_maximum", "keepalive_s", "reconnect_min_s"],
    "tls": ["ca_file", "cert_file", "key_file", "verify"],
    "ingest": ["max_payload_bytes", "max_future_skew_s", "unknown_devices", "batch_max_messages", "profile_dirs"],
    "devices": ["id", "vendor", "kind", "region", "lat", "lon"], "rules": ["name", "kind", "metrics", "severity",
                                                                         "params", "cooldown_s", "message"],
    "params": ["above", "below", "clear_at", "window_s", "max_speed_kmh", "zones", "threshold", "min_s"],
    "store": ["path", "retention_days", "fsync"], "kafka": ["bootstrap_servers", "partitions", "compression",
                                                            "security_protocol", "sasl_mechanism"],
    "influx": ["url", "token", "org", "bucket", "batch_lines"], "regions": ["default", "geojson", "static"],
    "log": ["level", "format"], "metrics": ["port", "bind"], "cameras": ["name", "url", "rules"], "video": ["rules", "models"],
}
CFG_VALUES = ["threshold", "rate_of_change", "zscore", "flatline", "offline", "speeding", "geofence", "dwell", "x",
              "5", "3.1.1", "info", "major", "critical", "json", "text", "register", "reject", "commit", "none",
              "${GW_FUZZ_UNSET}", "${GW_FUZZ_UNSET:-dflt}", "${HOME}", "$", "${", "water_level", "zones.geojson",
              "/nonexistent/x.json", "rtsp://127.0.0.1:1/x", "a" * 200]


def config_tree(r: random.Random, section: str = "", depth: int = 0):
    keys = CFG_KEYS.get(section)
    if keys is None or depth > 3 or r.random() < 0.08:
        k = r.random()
        if k < 0.3:
            return r.choice(CFG_VALUES)
        if k < 0.45:
            return [config_tree(r, section, depth + 1) for _ in range(r.randint(0, 3))]
        if k < 0.55:
            return {r.choice(WEIRD_STR[:6] + ["x"]): _scalar(r)}
        return _scalar(r)
    out = {}
    for _ in range(r.randint(0, len(keys))):
        key = r.choice(keys) if r.random() < 0.93 else r.choice(["bogus", "Password", "", "\x00"])
        if key in ("devices", "rules", "cameras") and r.random() < 0.8:
            out[key] = [config_tree(r, key, depth + 1) for _ in range(r.randint(0, 3))]
        else:
            out[key] = config_tree(r, key if key in CFG_KEYS else (key if key == "params" else "?"), depth + 1)
    return out


def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return repr(v) if v == v and abs(v) != float("inf") else "nan"
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{json.dumps(str(k))} = {_toml_value(x)}" for k, x in v.items()) + "}"
    return '""'


def config_text(r: random.Random) -> str:
    """TOML text: a rendered tree (tables as inline values), sometimes mutated at the byte level."""
    tree = config_tree(r)
    if not isinstance(tree, dict):
        tree = {"site": tree}
    text = "\n".join(f"{json.dumps(k)} = {_toml_value(v)}" for k, v in tree.items()) + "\n"
    if r.random() < 0.3:
        text = mutate(r, text.encode()).decode("utf-8", "replace")
    return text


PROF_KEYS = ["vendor", "description", "timestamp", "timestamp_unit", "root", "device_id", "fields", "position"]


def profile_tree(r: random.Random) -> dict:
    d: dict = {}
    for k in r.sample(PROF_KEYS, r.randint(0, len(PROF_KEYS))):
        if k == "fields" and r.random() < 0.8:
            d[k] = {r.choice(KEYS): (r.choice(["water_level", "flow", "h2s", "wind", 5, None]) if r.random() < 0.3 else
                                     {"metric": r.choice(["water_level", "flow", "temperature", "x", 1, ["flow"]]),
                                      "unit": r.choice(["cm", "m", "kPa", "degF", "furlong", 3, ["cm"], {}])})
                    for _ in range(r.randint(0, 4))}
        elif k == "position" and r.random() < 0.8:
            d[k] = {r.choice(["lat", "lon", "speed", "alt", "heading"]): (
                r.choice(["la", "", 5, None, []]) if r.random() < 0.4 else
                {r.choice(["field", "unit", "x"]): r.choice(["s", "km/h", "m", "ft", 1, None])}) for _ in range(r.randint(0, 4))}
        elif k == "timestamp_unit":
            d[k] = r.choice(["auto", "s", "ms", "us", "ns", "iso", "fortnights", 1, None, ["s"]])
        else:
            d[k] = r.choice(["aqualine", "v", "", "t", "data", "sn", 1, None, ["x"], {"a": 1}, True])
    return d


def wire_seed(r: random.Random) -> bytes:
    from gridwatch.ingest import wire

    nd, n = r.randint(0, 4), r.randint(0, 6)
    devs = [wire.DeviceInfo(f"d{i}" + r.choice(["", "é", "水"]), r.choice(["aq", "gs"]), r.choice(["k", "j"])) for i in range(nd)]
    if r.random() < 0.5 or nd == 0:
        metrics = [f"m{i}" for i in range(r.randint(1, 3))]
        if nd == 0:
            n = 0
        return wire.encode_readings(devs, metrics, np.array([r.randrange(max(nd, 1)) for _ in range(n)]),
                                    np.array([r.randrange(len(metrics)) for _ in range(n)]),
                                    np.arange(n) + NOW, np.full(n, 1.5))
    return wire.encode_positions(devs, np.array([r.randrange(nd) for _ in range(n)]), np.arange(n) + NOW,
                                 np.full(n, 1.0), np.full(n, 2.0), np.zeros(n), np.zeros(n))


# --------------------------------------------------------------------------------------------
# targets: each takes a batch of generated inputs and returns {reason: count} or raises Crash


class CodecTarget:
    name = "codec"
    batch = 32

    def __init__(self) -> None:
        from gridwatch.hw.profiles import load_profiles
        from gridwatch.ingest.codec import Codec
        from gridwatch.ingest.devices import DeviceDirectory

        self._make = lambda: Codec(load_profiles(), DeviceDirectory("reject" if self.calls % 2000 == 1500 else "register"),
                                   max_payload_bytes=512 * 1024)
        self.calls = 0
        self.codec = self._make()
        self.calls = 0
        self.seeds = load_corpus_codec()

    def generate(self, r: random.Random) -> list[tuple[str, bytes]]:
        return [codec_message(r, [(s["topic"], s["payload"]) for s in self.seeds]) for _ in range(r.randint(1, self.batch))]

    def run(self, msgs: list[tuple[str, bytes]]) -> Counter:
        from gridwatch.ingest.codec import Message

        self.calls += 1
        if self.calls % 500 == 0:  # a fresh directory now and then: unknown_device/vendor_mismatch paths
            self.codec = self._make()
        out = self.codec.decode([Message(t, p, NOW) for t, p in msgs], NOW)
        check_decoded(out)
        return Counter(out.rejected) + Counter({"stored": len(out.sensor) + len(out.position)})

    @staticmethod
    def dump(msgs) -> str:
        return json.dumps([{"topic": t, "payload_b64": base64.b64encode(p).decode()} for t, p in msgs])


def check_decoded(out) -> None:
    if not (np.isfinite(out.sensor.value).all() and np.isfinite(out.position.lat).all()
            and np.isfinite(out.position.lon).all()):
        raise Crash("a stored value or position is not finite")
    for ts in (out.sensor.ts, out.position.ts):
        if ts.shape[0] and not ((ts >= NOW - 7 * 86400e3) & (ts <= NOW + 300e3)).all():
            raise Crash("a stored timestamp is outside the accepted window")
    for d in out.dead:
        if d.reason not in CODEC_REASONS or not d.detail:
            raise Crash(f"dead letter without a known reason or explanation: {d.reason!r} {d.detail!r}")
    if sum(out.rejected.values()) < len(out.dead):
        raise Crash("more dead letters than rejections")


def _config_reason(msg: str) -> str:
    for key, reason in (("not valid TOML", "toml_syntax"), ("environment variable", "env_unset"),
                        ("Extra inputs", "unknown_key"), ("Field required", "missing_key"),
                        ("unknown kind", "unknown_rule_kind"), ("Input should be", "wrong_type_or_value"),
                        ("greater than", "out_of_range"), ("less than", "out_of_range"),
                        ("used twice", "duplicate_rule"), ("params", "rule_params")):
        if key in msg:
            return reason
    return "other"


class ConfigTarget:
    name = "config"

    def generate(self, r: random.Random):
        return ("text", config_text(r)) if r.random() < 0.5 else ("tree", config_tree(r))

    def run(self, item) -> Counter:
        from gridwatch.config import ConfigError, parse

        kind, x = item
        if not isinstance(x, dict) and kind == "tree":
            x = {"site": x}
        try:
            if kind == "text":
                try:
                    x = tomllib.loads(x)
                except tomllib.TOMLDecodeError as e:  # what config.load raises it as
                    raise ConfigError(f"not valid TOML: {e}") from None
            parse(x, base_dir="/nonexistent-gridwatch-fuzz", env={"HOME": "/h"})
        except ConfigError as e:
            if not str(e):
                raise Crash("ConfigError without a message") from None
            return Counter({_config_reason(str(e)): 1})
        return Counter({"accepted": 1})

    @staticmethod
    def dump(item) -> str:
        return json.dumps(item, default=repr)


class ProfileTarget:
    name = "profile"

    def generate(self, r: random.Random):
        return profile_tree(r)

    def run(self, d) -> Counter:
        from gridwatch.hw.profiles import ProfileError, Profile

        try:
            p = Profile.from_dict(d, where="fuzz")
        except ProfileError as e:
            msg = str(e)
            for key in ("unknown keys", "required", "expected", "unknown unit", "unknown metric", "measures",
                        "timestamp_unit", "both lat and lon", "empty"):
                if key in msg:
                    return Counter({key.replace(" ", "_"): 1})
            return Counter({"other": 1})
        if not isinstance(p.vendor, str) or not isinstance(p.root, str) or not isinstance(p.device_id, str):
            raise Crash("a profile was accepted with a non-string vendor/root/device_id")
        return Counter({"accepted": 1})

    @staticmethod
    def dump(item) -> str:
        return json.dumps(item, default=repr)


class WireTarget:
    name = "wire"

    def generate(self, r: random.Random) -> bytes:
        k = r.random()
        if k < 0.1:
            return bytes(r.getrandbits(8) for _ in range(r.randint(0, 80)))
        if k < 0.2:
            return b"GW\x01" + bytes(r.getrandbits(8) for _ in range(r.randint(0, 80)))
        seed = wire_seed(r)
        return seed if k < 0.25 else mutate(r, seed, r.randint(1, 3))

    def run(self, buf: bytes) -> Counter:
        from gridwatch.ingest import wire

        try:
            b = wire.decode(buf)
        except wire.WireError as e:
            msg = str(e)
            for key, reason in (("shorter than the header", "short"), ("bad magic", "bad_magic"),
                                ("schema version", "version"), ("record type", "record_type"),
                                ("truncated", "truncated"), ("disagree", "table_mismatch"),
                                ("its header says", "length_mismatch"), ("outside the message", "bad_reference")):
                if key in msg:
                    return Counter({reason: 1})
            return Counter({"other": 1})
        n = len(b)
        if n and (int(b.cols["device"].max()) >= len(b.ids)):
            raise Crash("a decoded row references a device outside the table")
        for i in range(len(b.ids)):  # every device resolves to a class
            b.device(i)
        return Counter({"accepted": 1})

    @staticmethod
    def dump(buf: bytes) -> str:
        return json.dumps({"b64": base64.b64encode(buf).decode()})


TARGETS = {"codec": CodecTarget, "config": ConfigTarget, "profile": ProfileTarget, "wire": WireTarget}
DEFAULT_SHARE = {"codec": 0.55, "wire": 0.25, "config": 0.1, "profile": 0.1}


def load_corpus_codec() -> list[dict]:
    f = CORPUS / "codec.jsonl"
    if not f.exists():
        return []
    out = []
    for line in f.read_text(encoding="utf-8").splitlines():
        if line.strip():
            d = json.loads(line)
            d["payload"] = base64.b64decode(d["payload_b64"])
            out.append(d)
    return out


# --------------------------------------------------------------------------------------------


def fuzz(target_name: str, n_inputs: int, seed: int = 0, crash_dir: Path | None = None,
         max_crash_files: int = 20) -> dict:
    """Push ``n_inputs`` generated inputs through one target. Returns counts and timing."""
    t = TARGETS[target_name]()
    r = random.Random(f"{target_name}-{seed}")
    reasons: Counter = Counter()
    crashes: list[dict] = []
    done = 0
    t0 = time.perf_counter()
    while done < n_inputs:
        item = t.generate(r)
        n = len(item) if target_name == "codec" else 1
        try:
            reasons.update(t.run(item))
        except Exception as e:  # noqa: BLE001 - a crash is what we are counting
            tb = traceback.format_exc(limit=6)
            crashes.append({"error": f"{type(e).__name__}: {e}"[:500], "traceback": tb})
            if crash_dir is not None and len(crashes) <= max_crash_files:
                crash_dir.mkdir(parents=True, exist_ok=True)
                (crash_dir / f"{target_name}-{seed}-{len(crashes)}.json").write_text(
                    json.dumps({"error": crashes[-1]["error"], "traceback": tb, "input": t.dump(item)}))
        done += n
    el = time.perf_counter() - t0
    return {"target": target_name, "inputs": done, "seconds": round(el, 2), "inputs_per_s": round(done / el),
            "crashes": len(crashes), "crash_examples": [c["error"] for c in crashes[:5]], "outcomes": dict(reasons)}


def run_all(total: int, seed: int = 0, crash_dir: Path | None = None, share: dict | None = None,
            log=print) -> dict:
    share = share or DEFAULT_SHARE
    results = []
    t0 = time.perf_counter()
    for name, frac in share.items():
        res = fuzz(name, max(1, int(total * frac)), seed, crash_dir)
        results.append(res)
        log(f"{name:8} {res['inputs']:>9,} inputs  {res['inputs_per_s']:>8,}/s  crashes={res['crashes']}  "
            f"{dict(sorted(res['outcomes'].items(), key=lambda kv: -kv[1]))}")
    el = time.perf_counter() - t0
    n = sum(r["inputs"] for r in results)
    summary = {"inputs": n, "seconds": round(el, 1), "inputs_per_s": round(n / el), "crashes": sum(r["crashes"] for r in results),
               "seed": seed, "targets": results}
    log(f"total    {n:>9,} inputs in {el:.1f} s ({n / el:,.0f}/s), crashes={summary['crashes']}")
    return summary


def _atheris_main(target: str, argv: list[str]) -> int:
    """Coverage-guided mode: libFuzzer mutates bytes; the bytes are the payload (codec), the
    TOML text (config) or the message (wire)."""
    import atheris

    with atheris.instrument_imports():
        from gridwatch.config import ConfigError, parse  # noqa: F401
        from gridwatch.ingest import codec as _codec, wire as _wire  # noqa: F401
    c = CodecTarget() if target == "codec" else None

    def one(data: bytes) -> None:
        if target == "codec":
            fdp = atheris.FuzzedDataProvider(data)
            topic = TOPICS[fdp.ConsumeIntInRange(0, len(TOPICS) - 1)]
            c.run([(topic, fdp.ConsumeBytes(fdp.remaining_bytes()))])
        elif target == "config":
            ConfigTarget().run(("text", data.decode("utf-8", "replace")))
        else:
            WireTarget().run(data)

    atheris.Setup([sys.argv[0], *argv], one)
    atheris.Fuzz()
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="gridwatch bench fuzz", description=__doc__.split("\n\n")[0])
    p.add_argument("--inputs", type=int, default=1_000_000, help="total generated inputs (default 1,000,000)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--target", choices=sorted(TARGETS), action="append", help="only these targets (repeatable)")
    p.add_argument("--json", help="write the summary here")
    p.add_argument("--crash-dir", default=None, help="write crashing inputs here")
    p.add_argument("--atheris", choices=["codec", "config", "wire"], help="coverage-guided run with atheris instead")
    a, rest = p.parse_known_args(argv)
    if a.atheris:
        return _atheris_main(a.atheris, rest)
    share = None
    if a.target:
        share = {t: 1 / len(a.target) for t in a.target}
    summary = run_all(a.inputs, a.seed, Path(a.crash_dir) if a.crash_dir else None, share)
    if a.json:
        Path(a.json).write_text(json.dumps(summary, indent=2))
    return 1 if summary["crashes"] else 0


if __name__ == "__main__":
    sys.exit(main())
