"""A throw-away certificate authority for TLS tests, made with the ``openssl`` CLI.

``TestCA(dir)`` creates a self-signed CA (EC P-256, valid 7 days); ``server_cert()`` issues a
server certificate whose SAN covers IP:127.0.0.1 and DNS:localhost (so clients verifying the
hostname against ``127.0.0.1`` accept it); ``client_cert(cn)`` issues a client certificate
(extendedKeyUsage=clientAuth) for client-certificate authentication (Mosquitto's
``require_certificate`` + ``use_identity_as_username`` makes the CN the MQTT username).

All files are written world-readable (0644): Mosquitto started as root drops to the
``mosquitto`` user and must still read them. They are test keys, never production keys.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ._base import require_binary, run_checked

_OPENSSL_HINT = "the Debian package `openssl`"


@dataclass(frozen=True)
class CertPair:
    cert: Path
    key: Path


class TestCA:
    __test__ = False  # not a pytest test class

    def __init__(self, directory: str | os.PathLike, cn: str = "gridwatch test CA", days: int = 7):
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.openssl = require_binary("openssl", _OPENSSL_HINT)
        self.days = days
        self.ca_file = self.dir / "ca.crt"
        self.ca_key = self.dir / "ca.key"
        if not self.ca_file.exists():
            run_checked([self.openssl, "req", "-x509", "-new", "-newkey", "ec",
                         "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                         "-keyout", str(self.ca_key), "-out", str(self.ca_file),
                         "-days", str(days), "-subj", f"/CN={cn}",
                         "-addext", "basicConstraints=critical,CA:TRUE",
                         "-addext", "keyUsage=critical,keyCertSign,cRLSign"],
                        what="openssl: create CA")
            self._readable(self.ca_file, self.ca_key)

    @staticmethod
    def _readable(*paths: Path) -> None:
        for p in paths:
            os.chmod(p, 0o644)

    def _issue(self, name: str, cn: str, extensions: str) -> CertPair:
        key, csr, crt, ext = (self.dir / f"{name}.{s}" for s in ("key", "csr", "crt", "ext"))
        run_checked([self.openssl, "req", "-new", "-newkey", "ec", "-pkeyopt",
                     "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", str(key),
                     "-out", str(csr), "-subj", f"/CN={cn}"], what=f"openssl: key+CSR for {name}")
        ext.write_text(extensions)
        run_checked([self.openssl, "x509", "-req", "-in", str(csr), "-CA", str(self.ca_file),
                     "-CAkey", str(self.ca_key), "-CAcreateserial", "-out", str(crt),
                     "-days", str(self.days), "-sha256", "-extfile", str(ext)],
                    what=f"openssl: sign {name}")
        self._readable(key, crt)
        return CertPair(crt, key)

    def server_cert(self, name: str = "server", hosts: tuple[str, ...] = ("127.0.0.1", "localhost")) -> CertPair:
        san = ",".join(("IP:" if h.replace(".", "").isdigit() or ":" in h else "DNS:") + h for h in hosts)
        return self._issue(name, hosts[0], "basicConstraints=CA:FALSE\n"
                           "keyUsage=critical,digitalSignature,keyEncipherment\n"
                           "extendedKeyUsage=serverAuth\n"
                           f"subjectAltName={san}\n")

    def client_cert(self, cn: str, name: str | None = None) -> CertPair:
        return self._issue(name or f"client-{cn}", cn, "basicConstraints=CA:FALSE\n"
                           "keyUsage=critical,digitalSignature\n"
                           "extendedKeyUsage=clientAuth\n")
