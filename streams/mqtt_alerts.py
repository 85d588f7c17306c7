"""Warning events on MQTT, for operators.

Topic: ``<prefix>/<city>/<county>/<town>/<grid>/<rule>`` (an empty region level is written ``-``),
so an operator of one grid subscribes to ``gridwatch/warnings/<city>/<county>/<town>/<grid>/#`` and a
county desk to ``gridwatch/warnings/<city>/<county>/#``.
Payload: one JSON object per event, described by ``streams/schema/warning-event.schema.json``:
``{"schema": "gridwatch.warning-event/1", "event": "raised"|"updated"|"cleared", "warning": {...}}``.
QoS 1, not retained. The instance's status (``online``/``offline``, retained, with a last will)
is on ``gridwatch/status/<site>``.
Events are published after the store commit; the store is the record, MQTT the notification.
"""
from __future__ import annotations

import logging

import orjson

from gridwatch.config import AlertsMqttConfig, MqttConfig
from gridwatch.mqtt_client import connect_async, make_client
from gridwatch.observability import Counters
from gridwatch.records import Warning

log = logging.getLogger("gridwatch.streams.mqtt_alerts")
SCHEMA_ID = "gridwatch.warning-event/1"


def topic_for(prefix: str, w: Warning) -> str:
    r = w.region
    parts = [p.replace("/", "_").replace("+", "_").replace("#", "_") or "-" for p in (r.city, r.county, r.town, r.grid)]
    return "/".join([prefix, *parts, w.rule])


def event_payload(event: str, w: Warning) -> bytes:
    return orjson.dumps({"schema": SCHEMA_ID, "event": event, "warning": w.to_dict()})


class MqttAlertPublisher:
    source = "alerts_mqtt"

    def __init__(self, mqtt_cfg: MqttConfig, cfg: AlertsMqttConfig, client_id: str, site: str, counters: Counters) -> None:
        self.cfg = cfg
        self.counters = counters
        self.status_topic = f"gridwatch/status/{site}"
        self.client = make_client(mqtt_cfg, client_id, persistent=False)
        self.client.will_set(self.status_topic, b"offline", qos=1, retain=True)
        self.client.on_connect = self._on_connect
        self.mqtt_cfg = mqtt_cfg

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if not reason_code.is_failure:
            client.publish(self.status_topic, b"online", qos=1, retain=True)

    def start(self) -> None:
        connect_async(self.client, self.mqtt_cfg, persistent=False)
        self.client.loop_start()

    def publish(self, events: list[tuple[str, Warning]]) -> None:
        for event, w in events:
            info = self.client.publish(topic_for(self.cfg.topic_prefix, w), event_payload(event, w), qos=self.cfg.qos)
            if info.rc != 0:
                self.counters.drop(self.source, f"publish_rc_{info.rc}")
            else:
                self.counters.add(self.source, "published")

    def stop(self) -> None:
        try:
            self.client.publish(self.status_topic, b"offline", qos=1, retain=True).wait_for_publish(2)
        except (RuntimeError, ValueError):
            pass
        self.client.disconnect()
        self.client.loop_stop()
