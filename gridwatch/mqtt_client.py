"""Building paho-mqtt clients from the ``[mqtt]`` config: protocol, session, TLS, credentials."""
from __future__ import annotations

import ssl

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from gridwatch.config import MqttConfig


def make_client(cfg: MqttConfig, client_id: str, *, manual_ack: bool = False, persistent: bool = False) -> mqtt.Client:
    v5 = cfg.protocol == "5"
    c = mqtt.Client(
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
