"""The MQTT collector: paho-mqtt, QoS 1, persistent session, acknowledge-after-commit.

* ``on_message`` (paho's network thread) only appends the raw message to an inbox; decoding happens
  in batches elsewhere.
* With QoS 1, messages are acknowledged (PUBACK) only by :meth:`MqttCollector.ack`, which the
  pipeline calls after the store commit holding their readings has returned. A crash before that
  leaves them unacknowledged, so the broker delivers them again: no acknowledged reading is lost.
* Flow control: MQTT 5 Receive Maximum (``mqtt.receive_maximum``) asks the broker to keep at most
  that many unacknowledged messages in flight, so a burst waits in the broker's queue (size that
  queue in the broker: ``max_queued_messages``). Not every broker honours it (Mosquitto 2.0.11
  stops doing so once acknowledgements flow), so the inbox has its own bound,
  ``mqtt.inbox_max_messages``: at that size the network loop stops reading the socket (counted:
  ``read_pauses``), TCP closes the window and the broker keeps the backlog; reading resumes when
  the pipeline has taken messages. QoS 0 messages past ``qos0_inbox_max`` (a hard cap) are
  counted as ``dropped{reason=inbox_full}``.
* Acknowledgements are tagged with the connection they arrived on; after a reconnect, stale ones
  are not sent: the broker redelivers those messages.
* **No duplicates after a crash or reconnect.** After an abrupt disconnect Mosquitto redelivers
  (DUP flag) messages whose acknowledgement it never read, thousands of them when it was busy
  (measured here: 1,282 to 2,165 already-acknowledged messages of a 20k burst). So each commit also
  stores, in the same transaction, the (packet id, CRC-32 of topic and payload) of its QoS 1
  messages (:func:`delivery_blob`); the newest 65,535 of them (one per packet id) are kept in
  memory and reloaded at start. A message with the DUP flag whose packet id and CRC match was
  already stored: it is acknowledged and not processed again. (A payload without a timestamp,
  repeated byte for byte under a reused packet id right after a reconnect, would be taken for a
  redelivery: vendors should send timestamps.)
* Reconnects with exponential backoff and resubscribes on every (re)connect; MQTT 5 shared
  subscriptions (``$share/<group>/<topic>``) when ``mqtt.shared_group`` is set.
* **Retained messages** (``mqtt.retained``): a broker sends a topic's retained message to every
  new subscription, and the collector subscribes on every start and reconnect, so each restart
  used to store every retained reading once more. With ``"skip"`` (default) they are not taken:
  MQTT 5 subscribes with Retain Handling 2 (the broker does not send them); MQTT 3.1.1 cannot ask,
  so a message that arrives with the RETAIN flag (a broker sets it only on messages sent because
  of a subscribe) is acknowledged at once, counted (``retained_skipped``) and not stored. Nothing
  live is lost: a retained message published while gridwatch is connected arrives without the
  flag and is stored, and one published while it is away waits in the persistent session (QoS 1)
  and is stored once. ``"ingest"`` takes them as a device's last known value at every subscribe.
"""
from __future__ import annotations

import logging
import threading
import time
import zlib
from collections import deque
from collections.abc import Callable

import numpy as np
import paho.mqtt.client as mqtt

from gridwatch.config import MqttConfig
from gridwatch.ingest.codec import Message
from gridwatch.mqtt_client import connect_async, make_client, subscriptions
from gridwatch.observability import Counters

log = logging.getLogger("gridwatch.ingest.mqtt")


def message_crc(topic: str, payload: bytes) -> int:
    return zlib.crc32(payload, zlib.crc32(topic.encode()))


def delivery_blob(messages: list[Message], delivered: dict[int, int] | None = None) -> bytes:
    """(packet id, CRC) of a batch's QoS 1 messages, stored with the batch's commit; also
    recorded in ``delivered`` (the collector's memory of them)."""
    pairs = [(m.token[1], message_crc(m.topic, m.payload)) for m in messages if m.token is not None]
    if delivered is not None:
        delivered.update(pairs)
    return np.array(pairs, np.uint32).tobytes() if pairs else b""


def load_deliveries(blobs: list[bytes]) -> dict[int, int]:
    """Blobs oldest first -> packet id -> CRC of the newest message stored under it."""
    out: dict[int, int] = {}
    for b in blobs:
        a = np.frombuffer(b, np.uint32).reshape(-1, 2)
        out.update(zip(a[:, 0].tolist(), a[:, 1].tolist()))
    return out


class MqttCollector:
    source = "mqtt"

    def __init__(self, cfg: MqttConfig, client_id: str, counters: Counters, qos0_inbox_max: int = 200_000,
                 max_topic: int = 256, max_payload: int = 256 * 1024) -> None:
        self.cfg = cfg
        # a message over either limit is rejected by the codec; the inbox keeps only its first
        # limit + 1 characters/bytes, so hostile sizes cannot fill memory while it waits
        self.max_topic, self.max_payload = max_topic, max_payload
        self.client_id = client_id
        self.counters = counters
        self.inbox: deque[Message] = deque()
        self.wake: Callable[[], None] | None = None  # called when the inbox goes from empty to non-empty
        self.delivered: dict[int, int] = {}  # mid -> CRC of the latest stored message with that packet id
        self.qos0_inbox_max = qos0_inbox_max
        self.connected = threading.Event()
        self.generation = 0
        self._lock = threading.Lock()
        self.client = make_client(cfg, client_id, manual_ack=cfg.qos == 1, persistent=True)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_message = self._on_message
        if hasattr(self.client, "on_publish_raw"):
            self.client.on_publish_raw = self._on_publish  # the common packets skip paho's MQTTMessage
            self.client.read_paused = self._inbox_full
        self.inbox_max = cfg.inbox_max_messages
        self.skip_retained = cfg.retained == "skip"
        self._reading_paused = False
        self.client.on_connect_fail = self._on_connect_fail
        self.last_error: str | None = None  # why the latest connection attempt failed (TLS, refused ...)
        self.topics = [f"$share/{cfg.shared_group}/{t}" if cfg.shared_group else t for t in cfg.topics]

    # paho's thread ------------------------------------------------------------------------
    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            log.warning("mqtt connect refused", extra={"fields": {"reason": str(reason_code), "host": self.cfg.host, "port": self.cfg.port}})
            return
        with self._lock:
            self.generation += 1
        self.counters.add(self.source, "connects")
        client.subscribe(subscriptions(self.cfg, self.topics))
        self.connected.set()
        log.info("mqtt connected", extra={"fields": {"host": self.cfg.host, "port": self.cfg.port, "topics": self.topics,
                                                     "session_present": bool(getattr(flags, "session_present", False))}})

    def _on_connect_fail(self, client, userdata) -> None:
        """paho calls this inside its ``except OSError`` around (re)connect: the exception is the
        one being handled. Logged once per distinct error (paho keeps retrying with backoff)."""
        import ssl
        import sys

        e = sys.exc_info()[1]
        self.counters.add(self.source, "connect_failures")
        msg = f"{type(e).__name__}: {e}" if e is not None else "connection failed"
        if isinstance(e, ssl.SSLCertVerificationError):
            msg += (" — the broker's certificate could not be verified: set mqtt.tls.ca_file to the CA that signed it"
                    " (and connect by a host name or address the certificate names)")
        elif isinstance(e, ssl.SSLError):
            msg += " — TLS handshake failed: check mqtt.tls (ca_file, cert_file/key_file) and that the port speaks TLS"
        if msg != self.last_error:
            log.error("mqtt connection failed: %s; retrying with backoff", msg,
                      extra={"fields": {"host": self.cfg.host, "port": self.cfg.port}})
        self.last_error = msg

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        self.connected.clear()
        with self._lock:
            self.generation += 1
        self.counters.add(self.source, "disconnects")
        if getattr(self, "_stopping", False):  # our own disconnect on shutdown: nothing is wrong
            log.info("mqtt disconnected (stopping)")
            return
        log.warning("mqtt disconnected; reconnecting with backoff", extra={"fields": {"reason": str(reason_code)}})

    def _on_message(self, client, userdata, msg: mqtt.MQTTMessage) -> None:
        self._on_publish(msg.topic, msg.payload, msg.mid, msg.qos, msg.dup, msg.retain)

    def _on_publish(self, topic: str, payload: bytes, mid: int, qos: int, dup: bool, retain: bool) -> None:
        if retain and self.skip_retained:
            # sent because we subscribed (MQTT 3.1.1, or a broker ignoring Retain Handling): not stored
            if qos > 0:
                self.client.ack_many([mid])
            self.counters.add(self.source, "retained_skipped")
            return
        self._on_raw(topic, payload, mid, qos, dup)

    def _inbox_full(self) -> bool:
        """Asked by the network loop before each read: stop reading while the inbox is full."""
        full = len(self.inbox) >= self.inbox_max
        if full != self._reading_paused:
            self._reading_paused = full
            if full:
                self.counters.add(self.source, "read_pauses")
                log.info("inbox full: reading paused, the broker keeps the backlog",
                         extra={"fields": {"inbox": len(self.inbox), "limit": self.inbox_max}})
        return full

    def _on_raw(self, topic: str, payload: bytes, mid: int, qos: int, dup: bool) -> None:
        size = -1
        if len(topic) > self.max_topic or len(payload) > self.max_payload:
            size = len(payload)
            topic, payload = topic[: self.max_topic + 1], payload[: self.max_payload + 1]
        if qos == 0 and len(self.inbox) >= self.qos0_inbox_max:
            self.counters.drop(self.source, "inbox_full")
            return
        if dup:
            self.counters.add(self.source, "redelivered")
            if self.delivered:
                crc = self.delivered.get(mid)
                if crc is not None and crc == message_crc(topic, payload):
                    del self.delivered[mid]
                    self.client.ack_many([mid])
                    self.counters.add(self.source, "redelivered_already_stored")
                    return
        was_empty = not self.inbox
        self.inbox.append(Message(topic, payload, time.time_ns() // 1_000_000,
                                  (self.generation, mid) if qos > 0 else None, size))
        if was_empty and self.wake is not None:
            self.wake()

    # pipeline side ------------------------------------------------------------------------
    def start(self) -> None:
        connect_async(self.client, self.cfg, persistent=True)
        self.client.loop_start()

    def take(self, max_messages: int) -> list[Message]:
        inbox = self.inbox
        n = min(len(inbox), max_messages)
        return [inbox.popleft() for _ in range(n)]

    def ack(self, messages: list[Message]) -> None:
        """Acknowledge messages whose readings are committed (QoS 1 only)."""
        gen = self.generation
        mids = [m.token[1] for m in messages if m.token is not None and m.token[0] == gen]
        stale = [m for m in messages if m.token is not None and m.token[0] != gen]
        self.client.ack_many(mids)
        if stale:
            self.counters.add(self.source, "acks_skipped_after_reconnect", len(stale))

    def publish(self, messages: list[tuple[str, bytes]]) -> None:
        """Answers devices expect once what they sent is stored (a DJI dock's ``update_topo`` ->
        ``.../status_reply``), on this connection, QoS 1; counted (``replies``, or dropped
        ``reply_rc_<rc>`` when paho refuses one, e.g. while disconnected: the device asks again)."""
        for topic, payload in messages:
            info = self.client.publish(topic, payload, qos=1)
            if info.rc != 0:
                self.counters.drop(self.source, f"reply_rc_{info.rc}")
            else:
                self.counters.add(self.source, "replies")

    def stop(self) -> None:
        self._stopping = True
        self.client.disconnect()
        self.client.loop_stop()
