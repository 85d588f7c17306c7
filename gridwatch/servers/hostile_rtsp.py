"""A hostile RTSP server for tests and the soak benchmark: a small loopback socket server that
misbehaves on purpose.

Run as a child process (so the client's memory, threads and sockets can be measured alone):

    python -m gridwatch.servers.hostile_rtsp --mode fu_a [--interval 0.3] [--log FILE]

It binds 127.0.0.1 on a free port, prints ``READY <port>`` and serves until killed. Each
connection gets its own thread. With ``--log`` it appends one line per event (``connect``,
``request DESCRIBE``, ``auth Basic ...``, ``close``) so a test can see what the client sent.

Modes (everything else about the session is a well-formed H.264 camera):

* ``fu_a``: after PLAY, an IDR slice as FU-A fragments that never end (no end bit, no marker);
* ``stap_a``: after PLAY, STAP-A packets of IDR slices, one timestamp, never a marker;
* ``non_idr``: after PLAY, 25 fps of non-IDR slices only (a camera using intra refresh);
* ``slowloris``: answers DESCRIBE one byte every ``--interval`` s, without end;
* ``slowloris_stream``: a normal handshake, then the stream one byte every ``--interval`` s;
* ``bad_content_length``: ``Content-Length: abc`` on the DESCRIBE answer;
* ``bad_sdp_pt``: the SDP's payload type is not a number;
* ``bad_sdp_rate``: the SDP's clock rate is not a number;
* ``huge_content_length``: DESCRIBE answers ``Content-Length: 10^12`` and sends body bytes without end;
* ``basic_only``: asks for Basic authentication (401) and, once it gets it, streams like ``non_idr``.
"""
from __future__ import annotations

import argparse
import os
import socket
import struct
import sys
import threading
import time

MODES = ("fu_a", "stap_a", "non_idr", "slowloris", "slowloris_stream", "bad_content_length", "bad_sdp_pt",
         "bad_sdp_rate", "huge_content_length", "basic_only")

SDP = ("v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=hostile\r\nt=0 0\r\n"
       "m=video 0 RTP/AVP {pt}\r\na=rtpmap:{pt} H264/{rate}\r\n"
       "a=fmtp:{pt} packetization-mode=1;sprop-parameter-sets=Z0LAH6o=,aM48gA==\r\na=control:track1\r\n")


class Conn:
    def __init__(self, sock: socket.socket, mode: str, interval: float, log) -> None:
        self.sock, self.mode, self.interval, self.log = sock, mode, interval, log
        self.buf = b""

    def request(self) -> tuple[str, dict[str, str]]:
        while b"\r\n\r\n" not in self.buf:
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError("client closed")
            self.buf += data
        head, _, self.buf = self.buf.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        hdrs = {}
        for line in lines[1:]:
            k, _, v = line.partition(":")
            hdrs[k.strip().lower()] = v.strip()
        method = lines[0].split(" ")[0]
        self.log(f"request {method}")
        if "authorization" in hdrs:
            self.log(f"auth {hdrs['authorization']}")
        return method, hdrs

    def answer(self, hdrs: dict, status: str = "200 OK", extra: str = "", body: bytes = b"",
               length: str | None = None) -> bytes:
        msg = (f"RTSP/1.0 {status}\r\nCSeq: {hdrs.get('cseq', '0')}\r\n{extra}"
               f"Content-Length: {len(body) if length is None else length}\r\n\r\n").encode() + body
        return msg

    def handshake(self, sdp: str | None = None, length: str | None = None, auth: bool = False) -> None:
        """Answer requests until PLAY (DESCRIBE, SETUP, PLAY; 401 first when ``auth``)."""
        while True:
            method, hdrs = self.request()
            if auth and "authorization" not in hdrs:
                self.sock.sendall(self.answer(hdrs, "401 Unauthorized", 'WWW-Authenticate: Basic realm="cam"\r\n'))
                continue
            if method == "DESCRIBE":
                body = (sdp or SDP.format(pt=96, rate=90000)).encode()
                self.sock.sendall(self.answer(hdrs, extra="Content-Type: application/sdp\r\n", body=body, length=length))
            elif method == "SETUP":
                self.sock.sendall(self.answer(hdrs, extra="Session: 12345678;timeout=60\r\n"
                                                          "Transport: RTP/AVP/TCP;unicast;interleaved=0-1\r\n"))
            elif method == "PLAY":
                self.sock.sendall(self.answer(hdrs, extra="Session: 12345678\r\n"))
                return
            else:
                self.sock.sendall(self.answer(hdrs))

    def run(self) -> None:
        m = self.mode
        if m == "slowloris":
            self.request()
            drip = b"RTSP/1.0 200 OK\r\nCSeq: 1\r\nX-Slow: " + b"a" * 1_000_000
            for i in range(len(drip)):
                self.sock.sendall(drip[i:i + 1])
                time.sleep(self.interval)
            return
        if m == "bad_content_length":
            return self.handshake(length="abc") or self.drain()
        if m == "huge_content_length":
            _, hdrs = self.request()
            self.sock.sendall(self.answer(hdrs, length=str(10 ** 12)))
            while True:
                self.sock.sendall(b"A" * 65536)
        if m == "bad_sdp_pt":
            return self.handshake(sdp=SDP.format(pt="x96", rate=90000)) or self.drain()
        if m == "bad_sdp_rate":
            return self.handshake(sdp=SDP.format(pt=96, rate="abc")) or self.drain()
        self.handshake(auth=m == "basic_only")
        {"fu_a": self.endless_fu_a, "stap_a": self.endless_stap_a, "non_idr": self.non_idr,
         "basic_only": self.non_idr, "slowloris_stream": self.slow_stream}[m]()

    def drain(self) -> None:
        """Keep the connection open, reading whatever comes, until the client goes."""
        while self.sock.recv(65536):
            pass

    @staticmethod
    def interleaved(seq: int, ts: int, payload: bytes, marker: bool = False) -> bytes:
        rtp = struct.pack(">BBHII", 0x80, (0x80 if marker else 0) | 96, seq & 0xFFFF, ts & 0xFFFFFFFF, 0x1234) + payload
        return b"$\x00" + struct.pack(">H", len(rtp)) + rtp

    def endless_fu_a(self) -> None:
        body = os.urandom(1400)
        seq = 0
        first = self.interleaved(seq, 9000, bytes([0x7C, 0x85]) + body)  # FU indicator (NRI 3, 28), start + IDR (5)
        self.sock.sendall(first)
        while True:
            chunk = b"".join(self.interleaved(seq + i, 9000, bytes([0x7C, 0x05]) + body) for i in range(1, 65))
            seq += 64
            self.sock.sendall(chunk)

    def endless_stap_a(self) -> None:
        idr = b"\x65" + os.urandom(1300)
        payload = b"\x78" + struct.pack(">H", len(idr)) + idr  # STAP-A (24), NRI 3
        seq = 0
        while True:
            chunk = b"".join(self.interleaved(seq + i, 9000, payload) for i in range(64))
            seq += 64
            self.sock.sendall(chunk)

    def non_idr(self) -> None:
        seq, ts = 0, 0
        p_slice = b"\x41" + os.urandom(800)
        while True:
            self.sock.sendall(self.interleaved(seq, ts, p_slice, marker=True))
            seq, ts = seq + 1, ts + 3600
            time.sleep(0.04)

    def slow_stream(self) -> None:
        pkt = self.interleaved(0, 0, b"\x65" + os.urandom(1000), marker=True)
        while True:
            for i in range(len(pkt)):
                self.sock.sendall(pkt[i:i + 1])
                time.sleep(self.interval)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--mode", choices=MODES, required=True)
    ap.add_argument("--interval", type=float, default=0.3, help="slowloris: seconds between bytes")
    ap.add_argument("--log", help="append one line per event to this file")
    a = ap.parse_args()
    lock = threading.Lock()

    def log(event: str) -> None:
        if a.log:
            with lock, open(a.log, "a") as f:
                f.write(event + "\n")

    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", 0))
    srv.listen(64)
    print(f"READY {srv.getsockname()[1]}", flush=True)

    def handle(sock: socket.socket) -> None:
        log("connect")
        try:
            Conn(sock, a.mode, a.interval, log).run()
        except OSError:
            pass
        finally:
            log("close")
            sock.close()

    while True:
        sock, _ = srv.accept()
        threading.Thread(target=handle, args=(sock,), daemon=True).start()


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        sys.exit(0)
