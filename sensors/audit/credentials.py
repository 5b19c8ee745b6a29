"""TLS material and bearer token for the audit webhook, plus the kubeconfig the API server reads.

``cadr sensor audit`` (and ``cadr up``) call :func:`ensure_local_credentials` when no certificate is
configured, so the webhook is authenticated out of the box: a private CA signs a server certificate
(loopback names) and a client certificate for the API server, and a random token is written next to
them. :func:`webhook_kubeconfig` renders the ``--audit-webhook-config-file`` that uses them.
Existing files are reused, never overwritten.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = ["WebhookCredentials", "ensure_local_credentials", "webhook_kubeconfig"]

_VALIDITY = dt.timedelta(days=825)


@dataclass(frozen=True)
class WebhookCredentials:
    """Paths of the generated files."""

    directory: Path
    ca_cert: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    token_file: Path
    kubeconfig: Path


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _issue(
    subject_cn: str,
    key: ec.EllipticCurvePrivateKey,
    ca_key: ec.EllipticCurvePrivateKey,
    ca_name: x509.Name | None,
    *,
    is_ca: bool = False,
    server_names: Sequence[str] = (),
    client: bool = False,
) -> x509.Certificate:
    now = dt.datetime.now(dt.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject_cn)])
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(ca_name or name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + _VALIDITY)
        .add_extension(x509.BasicConstraints(ca=is_ca, path_length=None), critical=True)
    )
    if is_ca:
        builder = builder.add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        )
    if server_names:
        alt: list[x509.GeneralName] = []
        for host in server_names:
            try:
                alt.append(x509.IPAddress(ipaddress.ip_address(host)))
            except ValueError:
                alt.append(x509.DNSName(host))
        builder = builder.add_extension(x509.SubjectAlternativeName(alt), critical=False)
        builder = builder.add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
    if client:
        builder = builder.add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False
        )
    return builder.sign(ca_key, hashes.SHA256())


def ensure_local_credentials(
    directory: str | Path,
    *,
    server_names: Sequence[str] = ("127.0.0.1", "::1", "localhost"),
    server_url: str = "https://127.0.0.1:8443/audit",
) -> WebhookCredentials:
    """Create (once) a CA, server and client certificates, a token and the webhook kubeconfig."""
    d = Path(directory).resolve()  # the API server reads these paths from anywhere
    d.mkdir(parents=True, exist_ok=True)
    creds = WebhookCredentials(
        directory=d,
        ca_cert=d / "ca.crt",
        server_cert=d / "server.crt",
        server_key=d / "server.key",
        client_cert=d / "apiserver-client.crt",
        client_key=d / "apiserver-client.key",
        token_file=d / "token",
        kubeconfig=d / "webhook-kubeconfig.yaml",
    )
    if not all(
        p.exists()
        for p in (creds.ca_cert, creds.server_cert, creds.server_key, creds.client_cert, creds.client_key)
    ):
        ca_key = _key()
        ca = _issue("cadr audit webhook CA", ca_key, ca_key, None, is_ca=True)
        server_key = _key()
        server = _issue("cadr-audit-webhook", server_key, ca_key, ca.subject, server_names=server_names)
        client_key = _key()
        client = _issue("kube-apiserver-audit", client_key, ca_key, ca.subject, client=True)
        creds.ca_cert.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
        creds.server_cert.write_bytes(server.public_bytes(serialization.Encoding.PEM))
        _write_private(creds.server_key, _key_pem(server_key))
        creds.client_cert.write_bytes(client.public_bytes(serialization.Encoding.PEM))
        _write_private(creds.client_key, _key_pem(client_key))
    if not creds.token_file.exists():
        _write_private(creds.token_file, secrets.token_urlsafe(32).encode() + b"\n")
    if not creds.kubeconfig.exists():
        text = webhook_kubeconfig(
            server_url,
            ca_file=str(creds.ca_cert),
            client_cert_file=str(creds.client_cert),
            client_key_file=str(creds.client_key),
            token=creds.token_file.read_text().strip(),
        )
        _write_private(creds.kubeconfig, text.encode())
    return creds


def webhook_kubeconfig(
    server_url: str,
    *,
    ca_file: str,
    client_cert_file: str = "",
    client_key_file: str = "",
    token: str = "",
) -> str:
    """The kubeconfig-format file for ``--audit-webhook-config-file``."""
    user: dict[str, str] = {}
    if client_cert_file:
        user["client-certificate"] = client_cert_file
        user["client-key"] = client_key_file
    if token:
        user["token"] = token
    doc = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {"name": "cadr-audit", "cluster": {"server": server_url, "certificate-authority": ca_file}}
        ],
        "users": [{"name": "kube-apiserver", "user": user}],
        "contexts": [{"name": "default", "context": {"cluster": "cadr-audit", "user": "kube-apiserver"}}],
        "current-context": "default",
        "preferences": {},
    }
    return yaml.safe_dump(doc, sort_keys=False)
