"""A QoS 1 load generator that confirms every PUBACK (MQTT 3.1.1 on a plain socket).

Why not ``mosquitto_pub -l``: on end of input it disconnects without waiting for its queued
messages (measured: 69k of a 200k burst arrived at the broker, and it still exited 0). Why not
paho: its per-message cost (~70 µs here) would make the publisher, not the consumer, the bottleneck.
This sends PUBLISH packets in a window of ``inflight`` unacknowledged messages and returns only
when the broker has acknowledged every one; any refusal or lost connection raises.
"""
from __future__ import annotations

import select
import socket
import struct
import time


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b, n = n % 128, n // 128
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _utf8(s: str) -> bytes:
    b = s.encode()
    return struct.pack("!H", len(b)) + b


def publish_packet(topic: bytes, mid: int, payload: bytes) -> bytes:
    """A QoS 1 PUBLISH packet (``topic`` already length-prefixed, see :func:`_utf8`)."""
    return b"\x32" + _varint(len(topic) + 2 + len(payload)) + topic + struct.pack("!H", mid) + payload


def connect(port: int, client_id: str, *, host: str = "127.0.0.1", username: str | None = None,
            password: str | None = None) -> socket.socket:
    """An MQTT 3.1.1 connection (clean session, keep-alive 60 s), CONNACK checked; non-blocking."""
    sock = socket.create_connection((host, port), timeout=10)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    flags = 0x02
    body = _utf8("MQTT") + bytes([4])
    payload = _utf8(client_id)
    if username is not None:
        flags |= 0x80
        payload += _utf8(username)
        if password is not None:
            flags |= 0x40
            payload += _utf8(password)
    body += bytes([flags]) + struct.pack("!H", 60) + payload
    sock.sendall(b"\x10" + _varint(len(body)) + body)
    ack = sock.recv(4)
    if len(ack) < 4 or ack[0] != 0x20 or ack[3] != 0:
        raise ConnectionError(f"broker refused the connection: CONNACK {ack!r}")
    sock.setblocking(False)
    return sock


def exchange(sock: socket.socket, out: bytearray, timeout: float) -> bytes:
    """One select round on a raw MQTT connection: send as much of ``out`` as the socket takes
    (removing it from ``out``) and return what arrived (b"" if nothing did within ``timeout``).
    Raises ConnectionError when the broker has closed the connection."""
    r, w, _ = select.select([sock], [sock] if out else [], [], timeout)
    if w and out:
        k = sock.send(out)
        del out[:k]
    if not r:
        return b""
    data = sock.recv(1 << 16)
    if not data:
        raise ConnectionError("broker closed the connection")
    return data


def publish_qos1(port: int, topic: str, payloads: list[bytes], *, host: str = "127.0.0.1", client_id: str = "gw-load",
                 inflight: int = 1000, username: str | None = None, password: str | None = None, timeout: float = 120.0) -> float:
    """Publish every payload at QoS 1 to ``topic``; returns seconds until the last PUBACK."""
    sock = connect(port, client_id, host=host, username=username, password=password)
    t_bytes = _utf8(topic)
    n = len(payloads)
    sent = acked = 0
    buf = b""
    t0 = time.time()
    deadline = t0 + timeout
    out = bytearray()
    try:
        while acked < n:
            if time.time() > deadline:
                raise TimeoutError(f"{acked} of {n} PUBACKs after {timeout} s")
            while sent < n and sent - acked < inflight:
                out += publish_packet(t_bytes, sent % 65535 + 1, payloads[sent])
                sent += 1
            try:
                data = exchange(sock, out, 1.0)
            except ConnectionError:
                raise ConnectionError(f"broker closed the connection after {acked} of {n} PUBACKs") from None
            if data:
                buf += data
                k = len(buf) // 4 * 4
                for i in range(0, k, 4):
                    if buf[i] != 0x40:
                        raise ConnectionError(f"unexpected packet 0x{buf[i]:02x} from the broker")
                acked += k // 4
                buf = buf[k:]
        return time.time() - t0
    finally:
        try:
            sock.setblocking(True)
            sock.sendall(b"\xe0\x00")
        except OSError:
            pass
        sock.close()


def paced_batches(port: int, readings_per_s: float, seconds: float, devices: int = 500, per_msg: int = 100) -> int:
    """Background load: JSON arrays of ``per_msg`` readings (unique timestamps per device) at a steady
    rate, in chunks of ~20 ms, each chunk confirmed before the next. Returns messages sent."""
    msgs_per_s = readings_per_s / per_msg
    t_start = time.time()
    t0_ms = int(t_start * 1000) - 60_000
    k = 0
    import orjson

    while time.time() - t_start < seconds:
        due = int((time.time() - t_start) * msgs_per_s) + 1
        if due <= k:
            time.sleep(0.005)
            continue
        chunk = []
        for j in range(k, due):
            base = t0_ms + (j // devices) * per_msg
            chunk.append((f"devices/generic/sewer_level/load-{j % devices}",
                          orjson.dumps([{"ts": base + i, "water_level": 1.0} for i in range(per_msg)])))
        by_topic: dict[str, list[bytes]] = {}
        for t, p in chunk:
            by_topic.setdefault(t, []).append(p)
        for t, ps in by_topic.items():
            publish_qos1(port, t, ps, client_id=f"gw-load-{time.time_ns()}")
        k = due
    return k


if __name__ == "__main__":
    import sys

    port, rate, secs = int(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3])
    print(paced_batches(port, rate, secs))
