"""Building paho-mqtt clients from the ``[mqtt]`` config: protocol, session, TLS, credentials.

:class:`BufferedClient` is paho's client with two changes on the receive path, because paho reads
*one* packet per wake-up of its network loop with several small ``recv`` calls, and queues every
acknowledgement with its own wake-up. Measured here, that caps a QoS 1 subscriber at ~13k msg/s:

* reads: one ``recv`` of up to 256 KiB fills a buffer; a packet wholly in the buffer is cut out of
  it in one step (paho's parser reads the fixed header byte by byte, six or more calls a packet),
  one that straddles a refill goes through paho's parser, and ``loop_read`` keeps parsing while
  whole packets are buffered;
* acknowledgements: :meth:`BufferedClient.ack_many` queues the PUBACKs of a committed batch as one
  write (a PUBACK with reason "success" and no properties is 4 bytes in MQTT 3.1.1 and 5 alike);
* MQTT 5 PUBLISH packets at QoS 0/1 *without properties* (what sensors send) skip paho's property
  decoding, which built a Properties object per message (12% of gridwatch's CPU in a batched
  ingest profile); a packet with properties, or QoS 2, takes paho's own path;
* such packets (MQTT 3.1.1 too) go straight to :attr:`BufferedClient.on_publish_raw` when it is
  set — ``(topic, payload, mid, qos, dup, retain)``, no ``MQTTMessage`` and no topic-filter matching for
  per-topic callbacks (about 10% of the CPU of batched ingest); a topic that is not UTF-8 still
  takes paho's path.
* reading pauses while :attr:`BufferedClient.read_paused` says so (the collector's inbox is full):
  the bytes stay in the kernel's socket buffer, TCP closes the window and the broker keeps the rest;
  packets already in the buffer are parsed as soon as the pause ends, without waiting for the
  socket to become readable again (``_loop``).
Everything else (connect, TLS, keep-alive, reconnect, publish) is paho's own code.
"""
from __future__ import annotations

import ssl
import struct
import time

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from gridwatch.config import MqttConfig


_READ_CHUNK = 256 * 1024


class BufferedClient(mqtt.Client):
    def __init__(self, *a, **kw) -> None:
        super().__init__(*a, **kw)
        self._rbuf = b""
        self._rpos = 0
        self.on_publish_raw = None  # (topic: str, payload: bytes, mid: int, qos: int, dup: bool, retain: bool) -> None
        self.read_paused = None  # () -> bool: while true, nothing is read from the socket

    def _sock_recv(self, bufsize: int) -> bytes:
        if self._rpos >= len(self._rbuf):
            data = super()._sock_recv(_READ_CHUNK)  # BlockingIOError when nothing is there: paho retries later
            if not data:
                return data  # connection closed
            self._rbuf, self._rpos = data, 0
        end = self._rpos + bufsize
        chunk = self._rbuf[self._rpos:end]
        self._rpos = end if end < len(self._rbuf) else len(self._rbuf)
        return chunk

    def _packet_read(self) -> mqtt.MQTTErrorCode:
        inp = self._in_packet
        buf, pos = self._rbuf, self._rpos
        if inp["command"] != 0 or len(buf) - pos < 2:
            return super()._packet_read()
        # fixed header: command byte, remaining length (1-4 bytes, 7 bits each)
        length, mult, i = 0, 1, pos + 1
        while True:
            if i >= len(buf) or i - pos > 4:
                return super()._packet_read()  # straddles the buffer (or malformed: paho says so)
            b = buf[i]
            length += (b & 127) * mult
            mult *= 128
            i += 1
            if not b & 128:
                break
        end = i + length
        if end > len(buf):
            return super()._packet_read()
        inp["command"] = buf[pos]
        inp["remaining_length"] = length
        inp["have_remaining"] = 1
        inp["packet"] = bytearray(buf[i:end])
        inp["pos"] = 0
        self._rpos = end
        try:
            rc = self._packet_handle()
        except mqtt.MalformedPacket as exc:
            self._easy_log(mqtt.MQTT_LOG_DEBUG, "Received malformed packet: %s", exc)
            rc = mqtt.MQTTErrorCode.MQTT_ERR_PROTOCOL
        self._in_packet = {"command": 0, "have_remaining": 0, "remaining_count": [], "remaining_mult": 1,
                           "remaining_length": 0, "packet": bytearray(b""), "to_process": 0, "pos": 0}
        with self._msgtime_mutex:
            self._last_bytes_received = mqtt.time_func()
        return rc

    def _sock_close(self) -> None:
        self._rbuf, self._rpos = b"", 0
        super()._sock_close()

    def _loop(self, timeout: float = 1.0) -> mqtt.MQTTErrorCode:
        # packets already read into the buffer do not make the socket readable: paho's select()
        # would not wake for them until the broker sent something else (the keep-alive answer, up
        # to keepalive_s later). A read that paused with the tail of a burst buffered, then found
        # nothing more on the socket, left those messages unread for ~27 s in a live burst bench.
        if self._sock is not None and self._rpos < len(self._rbuf):
            rc = self.loop_read()
            if rc or self._sock is None:
                return rc
            if self._rpos < len(self._rbuf):
                timeout = 0.0  # still paused: write the acknowledgements, then look again
        return super()._loop(timeout)

    def loop_read(self, max_packets: int = 1) -> mqtt.MQTTErrorCode:
        paused = self.read_paused
        if paused is not None and paused():
            # leave the bytes in the kernel: the TCP window closes and the broker keeps the rest;
            # the network loop still writes (acknowledgements) and keeps the connection alive
            time.sleep(0.005)
            return mqtt.MQTTErrorCode.MQTT_ERR_SUCCESS
        rc = super().loop_read(max_packets)
        # packets already in the buffer will not wake select(): parse them now
        while (rc == mqtt.MQTTErrorCode.MQTT_ERR_SUCCESS and self._sock is not None and self._rpos < len(self._rbuf)
               and not (paused is not None and paused())):
            rc = super().loop_read(max_packets)
        return rc

    def _handle_publish(self) -> mqtt.MQTTErrorCode:
        v5 = self._protocol == mqtt.MQTTv5
        if not v5 and self.on_publish_raw is None:
            return super()._handle_publish()
        cmd = self._in_packet["command"]
        qos = (cmd & 0x06) >> 1
        pkt = self._in_packet["packet"]
        if qos == 2 or len(pkt) < 3:
            return super()._handle_publish()
        tlen = (pkt[0] << 8) | pkt[1]
        pos = 2 + tlen
        mid = 0
        if qos:
            if len(pkt) < pos + 3:
                return super()._handle_publish()
            mid = (pkt[pos] << 8) | pkt[pos + 1]
            pos += 2
        if v5:
            if len(pkt) <= pos or pkt[pos] != 0:  # property length 0 is one byte 0x00; anything else: paho's path
                return super()._handle_publish()
            pos += 1
        elif len(pkt) < pos:
            return super()._handle_publish()
        hook = self.on_publish_raw
        if hook is not None:
            try:
                topic = bytes(pkt[2:2 + tlen]).decode("utf-8")
            except UnicodeDecodeError:
                return super()._handle_publish()
            hook(topic, bytes(pkt[pos:]), mid, qos, bool(cmd & 0x08), bool(cmd & 0x01))
        else:
            message = mqtt.MQTTMessage(mid=mid, topic=bytes(pkt[2:2 + tlen]))
            message.dup = bool(cmd & 0x08)
            message.qos = qos
            message.retain = bool(cmd & 0x01)
            message.payload = bytes(pkt[pos:])
            message.timestamp = time.monotonic()
            self._handle_on_message(message)
        if qos == 1 and not self._manual_ack:
            return self._send_puback(mid)
        return mqtt.MQTTErrorCode.MQTT_ERR_SUCCESS

    def ack_many(self, mids: list[int]) -> None:
        """Send PUBACK (success) for QoS 1 messages received with manual_ack, as one write."""
        if mids and self._sock is not None:
            blob = b"".join([struct.pack("!BBH", 0x40, 2, m) for m in mids])
            self._packet_queue(0x40, blob, 0, 0)


def make_client(cfg: MqttConfig, client_id: str, *, manual_ack: bool = False, persistent: bool = False) -> mqtt.Client:
    v5 = cfg.protocol == "5"
    c = BufferedClient(
        callback_api_version=mqtt.CallbackAPIVersion.VERSION2,
        client_id=client_id,
        protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311,
        clean_session=None if v5 else (not persistent or cfg.clean_start),
        manual_ack=manual_ack,
    )
    if cfg.username is not None:
        c.username_pw_set(cfg.username, cfg.password)
    if cfg.tls is not None:
        t = cfg.tls
        c.tls_set(ca_certs=t.ca_file, certfile=t.cert_file, keyfile=t.key_file,
                  cert_reqs=ssl.CERT_REQUIRED if t.verify else ssl.CERT_NONE, tls_version=ssl.PROTOCOL_TLS_CLIENT)
        if not t.verify:
            c.tls_insecure_set(True)
    c.reconnect_delay_set(max(1, int(cfg.reconnect_min_s)), max(1, int(cfg.reconnect_max_s)))
    c.max_inflight_messages_set(max(20, min(cfg.receive_maximum, 65535)))
    c.max_queued_messages_set(0)
    return c


def subscriptions(cfg: MqttConfig, topics: list[str]) -> list[tuple]:
    """``client.subscribe`` arguments for the collector's topics. MQTT 5 with ``mqtt.retained =
    "skip"``: Retain Handling 2, the broker sends no retained message because of the subscribe
    (gridwatch subscribes again on every start and reconnect; its persistent session already
    holds what was published meanwhile). MQTT 3.1.1 has no such option: the collector drops
    messages that arrive with the RETAIN flag (set only on those sent because of a subscribe)."""
    if cfg.protocol != "5":
        return [(t, cfg.qos) for t in topics]
    from paho.mqtt.subscribeoptions import SubscribeOptions

    rh = SubscribeOptions.RETAIN_DO_NOT_SEND if cfg.retained == "skip" else SubscribeOptions.RETAIN_SEND_ON_SUBSCRIBE
    return [(t, SubscribeOptions(qos=cfg.qos, retainHandling=rh)) for t in topics]


def connect_properties(cfg: MqttConfig, persistent: bool) -> Properties | None:
    if cfg.protocol != "5":
        return None
    p = Properties(PacketTypes.CONNECT)
    p.SessionExpiryInterval = cfg.session_expiry_s if persistent else 0
    p.ReceiveMaximum = cfg.receive_maximum
    return p


def connect_async(c: mqtt.Client, cfg: MqttConfig, persistent: bool) -> None:
    """Start connecting; paho's network thread reconnects with backoff after that."""
    kw = {}
    if cfg.protocol == "5":
        kw = {"clean_start": cfg.clean_start if persistent else True, "properties": connect_properties(cfg, persistent)}
    c.connect_async(cfg.host, cfg.port, keepalive=cfg.keepalive_s, **kw)
