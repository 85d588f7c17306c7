"""A real Mosquitto 2.0 broker on free loopback ports (Debian packages `mosquitto`,
`mosquitto-clients` for ``mosquitto_passwd``/``mosquitto_pub``, and `openssl` for TLS).

    with MosquittoServer(users={"acme": "pw", "gridwatch": "svc"}, acl=render_acl(...), tls=True) as mq:
        client.tls_set(ca_certs=str(mq.ca_file)); client.connect(mq.host, mq.tls_port)

* plain listener on ``.port``; with ``tls=True`` a second listener on ``.tls_port`` using a
  server certificate signed by a throw-away CA (``.ca_file``; SAN IP:127.0.0.1, DNS:localhost);
  ``require_client_cert=True`` makes that listener demand a client certificate issued by
  ``.issue_client_cert(cn)`` and use its CN as the username (so the ACL applies to it).
* ``users``: password auth (``allow_anonymous false``); ``None`` = anonymous broker.
* ``acl``: ACL file *content* (see ``mosquitto-acl.template`` / :func:`render_acl`).
* ``persistence=True`` keeps the in-memory DB in the workdir across ``restart()`` (same ports,
  same dir): retained messages, QoS 1/2 queues of persistent sessions.
* ``max_queued_messages`` / ``max_inflight_messages``: Mosquitto's per-client limits (defaults
  1000 / 20). Mosquitto silently drops messages for a slow client beyond the queue limit.
"""
from __future__ import annotations

import os
from pathlib import Path
from string import Template
from typing import Iterable, Mapping

from ._base import ManagedServer, ServerStartError, free_ports, port_open, require_binary, run_checked
from .certs import CertPair, TestCA

_PKG = "the Debian package `mosquitto` (clients: `mosquitto-clients`)"
ACL_TEMPLATE = Path(__file__).with_name("mosquitto-acl.template")


def render_acl(service_users: Iterable[str] = ("gridwatch",), operators: Iterable[str] = (),
               template: str | None = None) -> str:
    """Fill ``mosquitto-acl.template``: full access for each service user, read-only
    ``gridwatch/warnings/#`` for each operator, and the ``pattern`` giving every vendor
    write access to ``devices/<its username>/#`` only."""
    def check(name: str) -> str:
        if not name or any(c in name for c in "+#/\n\r \t"):
            raise ValueError(f"invalid MQTT username for an ACL: {name!r}")
        return name

    service = "".join(f"user {check(u)}\ntopic readwrite #\n\n" for u in service_users)
    ops = "".join(f"user {check(u)}\ntopic read gridwatch/warnings/#\n\n" for u in operators)
    text = template if template is not None else ACL_TEMPLATE.read_text()
    return Template(text).substitute(service_users=service.rstrip("\n"), operators=ops.rstrip("\n"))


class MosquittoServer(ManagedServer):
    name = "mosquitto"
    binary_hint = _PKG

    def __init__(self, users: Mapping[str, str] | None = None, acl: str | None = None, tls: bool = False,
                 max_queued_messages: int | None = None, max_inflight_messages: int | None = None,
                 persistence: bool = False, *, require_client_cert: bool = False,
                 autosave_interval: int | None = None, max_queued_bytes: int | None = None,
                 log_all: bool = False, extra_config: str = "", **kw):
        super().__init__(**kw)
        self.binary = require_binary("mosquitto", _PKG)
        self.users = dict(users) if users else None
        self.acl = acl
        self.tls = tls or require_client_cert
        self.require_client_cert = require_client_cert
        self.max_queued_messages = max_queued_messages
        self.max_inflight_messages = max_inflight_messages
        self.max_queued_bytes = max_queued_bytes
        self.persistence = persistence
        self.autosave_interval = autosave_interval
        self.log_all = log_all
        self.extra_config = extra_config
        self.port: int | None = None
        self.tls_port: int | None = None
        self.conf_path = self.workdir / "mosquitto.conf"
        self.data_dir = self.workdir / "data"
        self.ca: TestCA | None = None
        self.server_pair: CertPair | None = None

    # ------------------------------------------------------------------------------------
    @property
    def ca_file(self) -> Path | None:
        return self.ca.ca_file if self.ca else None

    def issue_client_cert(self, cn: str) -> CertPair:
        """A client certificate (and key) signed by this broker's CA; CN = username when
        ``require_client_cert`` is on."""
        if not self.ca:
            raise RuntimeError("start the server with tls=True first")
        return self.ca.client_cert(cn)

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"

    def _prepare(self, new_ports: bool) -> None:
        if new_ports:
            ports = free_ports(2 if self.tls else 1)
            self.port = ports[0]
            self.tls_port = ports[1] if self.tls else None
        wd = self.workdir
        os.chmod(wd, 0o755)  # mosquitto may drop privileges: keep the dir traversable
        self.data_dir.mkdir(exist_ok=True)
        os.chmod(self.data_dir, 0o777)
        lines = [
            "# written by gridwatch.servers.mosquitto",
            "per_listener_settings false",
            "log_dest stdout",  # captured in server.log
            "log_type error", "log_type warning", "log_type notice", "log_type information",
            "connection_messages true",
            "log_timestamp_format %H:%M:%S",
        ]
        if self.log_all:
            lines += ["log_type subscribe", "log_type unsubscribe", "log_type debug"]
        if os.geteuid() == 0:
            lines.append("user root")  # else mosquitto drops to `mosquitto` and cannot read our files
        if self.users is not None:
            pw = wd / "passwd"
            pw.write_text("")
            os.chmod(pw, 0o644)
            passwd = require_binary("mosquitto_passwd", _PKG)
            for u, p in self.users.items():
                if ":" in u:
                    raise ValueError(f"username may not contain ':': {u!r}")
                run_checked([passwd, "-b", str(pw), u, p], what=f"mosquitto_passwd for {u!r}")
            os.chmod(pw, 0o644)
            lines += ["allow_anonymous false", f"password_file {pw}"]
        else:
            lines.append("allow_anonymous true")
        if self.acl is not None:
            acl = wd / "acl"
            acl.write_text(self.acl if self.acl.endswith("\n") else self.acl + "\n")
            os.chmod(acl, 0o644)
            lines.append(f"acl_file {acl}")
        if self.persistence:
            lines += ["persistence true", f"persistence_location {self.data_dir}/",
                      "persistence_file mosquitto.db"]
            if self.autosave_interval is not None:
                lines.append(f"autosave_interval {self.autosave_interval}")
        else:
            lines.append("persistence false")
        if self.max_queued_messages is not None:
            lines.append(f"max_queued_messages {self.max_queued_messages}")
        if self.max_queued_bytes is not None:
            lines.append(f"max_queued_bytes {self.max_queued_bytes}")
        if self.max_inflight_messages is not None:
            lines.append(f"max_inflight_messages {self.max_inflight_messages}")
        lines += ["", f"listener {self.port} {self.host}", "protocol mqtt"]
        if self.tls:
            if self.ca is None:
                self.ca = TestCA(wd / "tls")
                os.chmod(wd / "tls", 0o755)
                self.server_pair = self.ca.server_cert()
            lines += ["", f"listener {self.tls_port} {self.host}", "protocol mqtt",
                      f"cafile {self.ca.ca_file}", f"certfile {self.server_pair.cert}",
                      f"keyfile {self.server_pair.key}", "tls_version tlsv1.2"]
            if self.require_client_cert:
                lines += ["require_certificate true", "use_identity_as_username true"]
        if self.extra_config:
            lines += ["", self.extra_config]
        self.conf_path.write_text("\n".join(lines) + "\n")
        os.chmod(self.conf_path, 0o644)

    def _command(self):
        return [self.binary, "-c", str(self.conf_path)]

    def _ready(self) -> bool:
        if not port_open(self.port):
            return False
        return self.tls_port is None or port_open(self.tls_port)

    def broker_log(self) -> str:
        """The broker's whole log (connections, denials with log_all ...)."""
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""


__all__ = ["MosquittoServer", "render_acl", "ACL_TEMPLATE", "ServerStartError"]
