"""[kafka] SASL/TLS settings reach aiokafka: the kwargs, and the clients built from them."""
from __future__ import annotations

import asyncio
import ssl

import pytest

from gridwatch.config import ConfigError, parse
from gridwatch.ingest.kafka_security import client_kwargs, forwarder
from gridwatch.servers.certs import TestCA


def _cfg(**kafka):
    return parse({"kafka": {"bootstrap_servers": "127.0.0.1:1", **kafka}}, env={"KAFKA_PW": "kpw-Secret-1"})


def test_plaintext_by_default():
    assert client_kwargs(_cfg().kafka) == {"security_protocol": "PLAINTEXT"}


def test_sasl_ssl_with_scram_and_client_certificate(tmp_path):
    ca = TestCA(tmp_path)
    pair = ca.client_cert("gridwatch")
    k = _cfg(security_protocol="SASL_SSL", sasl_mechanism="SCRAM-SHA-512", sasl_username="gw",
             sasl_password="${KAFKA_PW}", ssl_ca_file=str(ca.ca_file), ssl_cert_file=str(pair.cert),
             ssl_key_file=str(pair.key)).kafka
    kw = client_kwargs(k)
    assert kw["security_protocol"] == "SASL_SSL" and kw["sasl_mechanism"] == "SCRAM-SHA-512"
    assert kw["sasl_plain_username"] == "gw" and kw["sasl_plain_password"] == "kpw-Secret-1"
    ctx = kw["ssl_context"]
    assert isinstance(ctx, ssl.SSLContext) and ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname
    assert any("gridwatch test CA" in str(c.get("subject")) for c in ctx.get_ca_certs())


def test_ssl_verify_off_is_explicit(tmp_path):
    kw = client_kwargs(_cfg(security_protocol="SSL", ssl_verify=False).kafka)
    assert kw["ssl_context"].verify_mode == ssl.CERT_NONE and not kw["ssl_context"].check_hostname
    with pytest.raises(ConfigError, match="ssl_verify"):
        _cfg(security_protocol="SSL", ssl_verify="no")


def test_sasl_without_credentials_is_a_config_error():
    with pytest.raises(ConfigError, match="sasl_username"):
        client_kwargs(_cfg(security_protocol="SASL_PLAINTEXT").kafka)


def test_forwarder_and_admin_clients_carry_the_settings():
    cfg = _cfg(security_protocol="SASL_PLAINTEXT", sasl_mechanism="PLAIN", sasl_username="gw", sasl_password="${KAFKA_PW}")

    async def build():
        fw = forwarder(cfg)
        c = fw.producer.client
        return c._security_protocol, c._sasl_mechanism, c._sasl_plain_username, c._sasl_plain_password

    assert asyncio.run(build()) == ("SASL_PLAINTEXT", "PLAIN", "gw", "kpw-Secret-1")


def test_sasl_password_never_in_config_errors():
    with pytest.raises(ConfigError) as e:
        _cfg(sasl_password=["kpw-Secret-1"])
    assert "kpw-Secret-1" not in str(e.value)


@pytest.mark.parametrize("protocol", ["SASL_PLAINTEXT", "SASL_SSL", "SSL", "PLAINTEXT"])
def test_faust_workers_get_the_same_broker_credentials(tmp_path, protocol):
    """The worker's faust.App (consumer, producer, table changelogs) authenticates like the edge:
    what faust's aiokafka driver passes to its clients carries the [kafka] settings."""
    from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth

    from gridwatch.streams.cluster import build_app

    ca = TestCA(tmp_path)
    cfg = parse({"site": {"data_dir": str(tmp_path / "var")},
                 "kafka": {"bootstrap_servers": "127.0.0.1:1", "security_protocol": protocol, "sasl_mechanism": "SCRAM-SHA-256",
                           "sasl_username": "gw", "sasl_password": "${KAFKA_PW}", "ssl_ca_file": str(ca.ca_file)}},
                env={"KAFKA_PW": "kpw-Secret-1"})
    app, _core = build_app(cfg)
    auth = credentials_to_aiokafka_auth(app.conf.broker_credentials, app.conf.ssl_context)
    producer_auth = app.producer._settings_auth()  # what faust's producer is built with
    assert producer_auth == auth
    assert auth["security_protocol"] == protocol
    if protocol.startswith("SASL_"):
        assert (auth["sasl_mechanism"], auth["sasl_plain_username"], auth["sasl_plain_password"]) == ("SCRAM-SHA-256", "gw", "kpw-Secret-1")
        assert "kpw-Secret-1" not in repr(app.conf.broker_credentials)
    else:
        assert "sasl_plain_password" not in auth
    if protocol.endswith("SSL"):
        ctx = auth["ssl_context"]
        assert ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname
        assert any("gridwatch test CA" in str(c.get("subject")) for c in ctx.get_ca_certs())
    else:
        assert auth.get("ssl_context") is None
