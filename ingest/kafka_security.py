"""Kafka connection security from ``[kafka]``: the keyword arguments every aiokafka client
(producer, consumer, admin) of gridwatch gets, so SASL and TLS settings reach the wire.

    AIOKafkaProducer(bootstrap_servers=..., **client_kwargs(cfg.kafka))

* ``security_protocol`` PLAINTEXT | SSL | SASL_PLAINTEXT | SASL_SSL, ``sasl_mechanism`` PLAIN |
  SCRAM-SHA-256 | SCRAM-SHA-512 with ``sasl_username`` / ``sasl_password``;
* SSL / SASL_SSL: an ``ssl.SSLContext`` with certificate and host-name verification on
  (``ssl_verify = false`` turns both off, for a lab), the CA from ``ssl_ca_file`` (system CAs
  otherwise) and a client certificate from ``ssl_cert_file`` / ``ssl_key_file``.
"""
from __future__ import annotations

import ssl
from typing import Any

from gridwatch.config import ConfigError, KafkaConfig


def ssl_context(k: KafkaConfig) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=k.ssl_ca_file)
    if k.ssl_cert_file:
        ctx.load_cert_chain(k.ssl_cert_file, k.ssl_key_file)
    if not k.ssl_verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


def client_kwargs(k: KafkaConfig) -> dict[str, Any]:
    """aiokafka keyword arguments for the configured security protocol."""
    kw: dict[str, Any] = {"security_protocol": k.security_protocol}
    if k.security_protocol in ("SSL", "SASL_SSL"):
        kw["ssl_context"] = ssl_context(k)
    if k.security_protocol.startswith("SASL_"):
        if not k.sasl_username or k.sasl_password is None:
            raise ConfigError(f"kafka.security_protocol = {k.security_protocol!r} needs kafka.sasl_username and kafka.sasl_password")
        kw.update(sasl_mechanism=k.sasl_mechanism, sasl_plain_username=k.sasl_username,
                  sasl_plain_password=k.sasl_password)
    return kw


def faust_credentials(k: KafkaConfig):
    """The same settings for a ``faust.App`` (``broker_credentials``): None for PLAINTEXT,
    ``SSLCredentials`` for SSL, ``SASLCredentials`` (with the TLS context for SASL_SSL)."""
    if k.security_protocol == "PLAINTEXT":
        return None
    from faust.auth import SASLCredentials, SSLCredentials

    kw = client_kwargs(k)  # validates (SASL needs a user and a password)
    if k.security_protocol == "SSL":
        return SSLCredentials(kw["ssl_context"])
    return SASLCredentials(username=k.sasl_username, password=k.sasl_password, mechanism=k.sasl_mechanism,
                           ssl_context=kw.get("ssl_context"))


def forwarder(cfg, **kw):
    """A :class:`~gridwatch.ingest.kafka_forward.KafkaForwarder` for ``cfg`` (topics, batching,
    compression and the security settings above)."""
    from gridwatch.ingest.kafka_forward import KafkaForwarder

    k = cfg.kafka
    return KafkaForwarder(k.bootstrap_servers, readings_topic=k.readings_topic,
                          warning_events_topic=k.warning_events_topic, linger_ms=k.linger_ms,
                          compression=None if k.compression == "none" else k.compression,
                          **{**client_kwargs(k), **kw})


__all__ = ["client_kwargs", "faust_credentials", "ssl_context", "forwarder"]
