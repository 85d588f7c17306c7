"""Writes ``telemetry.jsonl``: two hours of telemetry in the vendors' own formats, as the demo replays it.

The data is synthesized (seeded, reproducible) to look like what the recorders capture on the
MQTT topics: vendor field names, units and timestamp formats, sensor noise, GPS jitter. It is not
real field data. Scenes: a sewer rising to overflow, a flash rise, a gas (H2S) spike, a stuck level
sensor, a sensor that goes silent, a hazardous-chemicals truck dwelling in a residential zone and
speeding on the way back, a truck resting at its depot (no warning), a drone leaving its corridor
with a draining battery, and malformed messages of every kind.

Run: ``python -m gridwatch.demo.make_data`` (rewrites the file next to this module).
"""
from __future__ import annotations

import json
import math
import random
from datetime import datetime, timezone
from pathlib import Path

T0 = int(datetime(2026, 11, 20, 8, 0, tzinfo=timezone.utc).timestamp())  # recording start, epoch s
DURATION = 2 * 3600
OUT = Path(__file__).with_name("telemetry.jsonl")


def iso(t: float) -> str:
    return datetime.fromtimestamp(t, timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def main() -> None:
    rnd = random.Random(20261120)
    rows: list[tuple[float, str, object]] = []

    def emit(at: float, topic: str, payload) -> None:
        rows.append((at, topic, payload))

    # --- pipe network: level loggers every 60 s (level in cm, epoch seconds) ------------------
    for i in range(1, 9):
        dev = f"aq-sewer-{i:03d}"
        base = rnd.uniform(60, 140)
        for k in range(0, DURATION, 60):
            t = T0 + k + rnd.uniform(0, 2)
            lvl = base + rnd.gauss(0, 1.5) + 8 * math.sin(k / 1800)
            if dev == "aq-sewer-002":  # rises to overflow (2.5 m) 40-80 min, recedes after 95 min
                if 2400 <= k < 4800:
                    lvl = base + (270 - base) * (k - 2400) / 2400 + rnd.gauss(0, 1.0)
                elif 4800 <= k < 5700:
                    lvl = 270 + rnd.gauss(0, 1.5)
                elif k >= 5700:
                    lvl = max(base, 270 - (k - 5700) * 0.12) + rnd.gauss(0, 1.0)
            if dev == "aq-sewer-003" and 1800 <= k < 2400:  # flash rise: +90 cm in one minute
                lvl = base + 90 + rnd.gauss(0, 1.0)
            if dev == "aq-sewer-004" and k >= 1200:  # stuck sensor: the same value from 20 min on
                lvl = 87.0
            if dev == "aq-sewer-005" and k >= 3600:  # silent after 60 min (dead battery)
                break
            payload = {"t": round(t, 3), "lvl": round(lvl, 1), "bat": round(95 - k / 1000, 1)}
            if i <= 2:
                payload["p"] = round(180 + rnd.gauss(0, 3), 1)  # kPa
            emit(t - T0, f"devices/aqualine/sewer_level/{dev}", payload)
    # flow meter with an anomalous surge (z-score)
    for k in range(0, DURATION, 30):
        t = T0 + k
        q = 42 + rnd.gauss(0, 1.2) + (38 if 4200 <= k < 4290 else 0)
        emit(k, "devices/aqualine/flow/aq-flow-002", {"t": t, "q": round(q, 2)})

    # --- gas detectors every 60 s (ISO time, ppm / %LEL) -----------------------------------
    for i in range(1, 5):
        dev = f"gs-gas-{i:03d}"
        for k in range(0, DURATION, 60):
            t = T0 + k + rnd.uniform(0, 3)
            h2s = max(0.0, 1.5 + rnd.gauss(0, 0.4))
            if dev == "gs-gas-004" and 3000 <= k < 3420:
                h2s = 35 + rnd.gauss(0, 3)  # H2S spike in a sewer well
            emit(t - T0, f"devices/gassense/gas/{dev}",
                 {"time": iso(t), "H2S": round(h2s, 2), "CH4": round(max(0.0, 2 + rnd.gauss(0, 0.5)), 2), "O2": 20.9})

    # --- hazardous-chemicals trucks: fixes every 30 s (ms timestamps, km/h) ----------------
    def drive(dev: str, legs: list[tuple[float, float, float, float, float, float]]) -> None:
        for (k0, k1, lat0, lon0, lat1, lon1) in legs:
            n = int((k1 - k0) // 30)
            dist_km = math.hypot((lat1 - lat0) * 111.0, (lon1 - lon0) * 96.0)
            spd = dist_km / max((k1 - k0) / 3600, 1e-9) if dist_km > 0.05 else 0.0
            for j in range(n):
                f = j / max(n, 1)
                jitter = 0.00004 if spd == 0 else 0.0
                lat = lat0 + (lat1 - lat0) * f + rnd.gauss(0, jitter)
                lon = lon0 + (lon1 - lon0) * f + rnd.gauss(0, jitter)
                t = T0 + k0 + j * 30
                emit(t - T0, f"devices/trackpoint/hazmat_truck/{dev}",
                     {"gpsTime": int(t * 1000), "lat": round(lat, 6), "lng": round(lon, 6),
                      "spd": round(max(0.0, spd + rnd.gauss(0, 2 if spd else 0.3)), 1), "vbat": 12.6})

    drive("tp-hz-0031", [(0, 900, 30.5870, 114.2875, 30.5870, 114.2875),      # at the depot
                         (900, 1800, 30.5870, 114.2875, 30.6080, 114.3080),    # to Willow Court
                         (1800, 4500, 30.6080, 114.3080, 30.6080, 114.3080),   # parked 45 min in the residential zone
                         (4500, 4590, 30.6080, 114.3080, 30.5880, 114.3080),   # leaves fast (~ 88 km/h)
                         (4590, 5700, 30.5880, 114.3080, 30.5870, 114.2875),
                         (5700, 7200, 30.5870, 114.2875, 30.5870, 114.2875)])
    drive("tp-hz-0044", [(0, 7200, 30.5865, 114.2880, 30.5865, 114.2880)])    # rests at the depot: no warning

    # --- drone (DJI Cloud API style osd, every 10 s while flying) ----------------------------
    for k in range(600, 2700, 10):
        t = T0 + k
        f = (k - 600) / 2100
        lon = 114.284 + 0.032 * f
        lat = 30.5975 + (0.004 * math.sin(math.pi * (k - 1500) / 180) if 1500 <= k < 1680 else 0.0)
        height = 95 + (40 if 2000 <= k < 2100 else 0) + rnd.gauss(0, 0.5)
        battery = round(92 - 76 * f)
        emit(k, "devices/dji/drone/dji-m30-07",
             {"tid": f"osd-{k}", "bid": "flight-0007", "timestamp": int(t * 1000), "gateway": "dock-07",
              "data": {"latitude": round(lat, 6), "longitude": round(lon, 6), "height": round(height, 1),
                       "elevation": round(height + 18, 1), "horizontal_speed": 12.4, "mode_code": 5,
                       "battery": {"capacity_percent": battery}}})

    # --- malformed and unwelcome input -------------------------------------------------------
    bad = [
        (120, "devices/aqualine/sewer_level/aq-sewer-001", '{"t": 1795161720, "lvl": 88.'),        # truncated JSON
        (180, "devices/aqualine/sewer_level/aq-sewer-001", '{"t": 1795161780, "lvl": "NaN"}'),     # text, not a number
        (240, "devices/aqualine/sewer_level/aq-sewer-006", '{"t": 1795161840, "lvl": 1e400}'),     # infinite
        (300, "devices/gassense/gas/gs-gas-002", '{"time": "yesterday", "H2S": 2.0}'),              # bad timestamp
        (360, "devices/gassense/gas/gs-gas-003", '[{"time": "2026-11-20T08:06:00Z", "H2S": 1.1}, 17, {"time": "2026-11-20T08:06:00Z", "CH4": -5}]'),
        (420, "devices/acme/sewer_level/x-1", '{"t": 1795162020, "lvl": 10}'),                     # unknown vendor
        (480, "devices/aqualine/sewer_level/aq-sewer-001", '{"t": 1895162080, "lvl": 90}'),        # far future
        (540, "telemetry/aq-sewer-001", '{"t": 1795162140, "lvl": 90}'),                            # wrong topic
        (600, "devices/aqualine/sewer_level/aq-sewer-007", '{"t": 1795162200, "lvl": true}'),      # boolean
        (660, "devices/aqualine/sewer_level/aq-sewer-008", '{"t": 1795162260, "rssi": -71}'),      # no known field
        (720, "devices/trackpoint/hazmat_truck/tp-hz-0031", '{"gpsTime": 1795162320000, "lat": 95.1, "lng": 114.3, "spd": 10}'),
    ]
    for at, topic, raw in bad:
        emit(at, topic, {"__raw__": raw})
    # oversized: valid JSON padded with 300 kB of whitespace (the replayer pads it)
    emit(780, "devices/aqualine/sewer_level/aq-sewer-001", {"__raw__": '{"t": 1795162380, "lvl": 90}', "__pad__": 300_000})
    # an exact duplicate of an earlier reading (redelivered by a gateway)
    first = next(r for r in rows if r[1].endswith("aq-sewer-001"))
    emit(900, first[1], first[2])

    rows.sort(key=lambda r: r[0])
    with OUT.open("w", encoding="utf-8") as f:
        for at, topic, payload in rows:
            f.write(json.dumps({"at": round(at, 3), "topic": topic, "payload": payload}, separators=(",", ":")) + "\n")
    print(f"wrote {len(rows)} messages to {OUT}")


if __name__ == "__main__":
    main()
