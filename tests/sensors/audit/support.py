"""Shared helpers for the audit intake tests: TLS material (trustme), a running webhook, EventLists."""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import trustme

from schemas.settings import AuditSettings
from sensors.audit.sink import Sink
from sensors.audit.webhook import AuditWebhook

#: recorded audit events (tests/data/k8s_audit/README.md says where from)
CORPUS = Path(__file__).resolve().parents[2] / "data" / "k8s_audit"
FALCO = CORPUS / "falco"
ELASTIC = CORPUS / "elastic"


@dataclass
class TlsFiles:
    ca: trustme.CA
    ca_file: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    token_file: Path
    token: str

    def client_context(self, *, with_cert: bool = True) -> ssl.SSLContext:
        """What the API server does: trust our CA and present its client certificate."""
        ctx = ssl.create_default_context(cafile=str(self.ca_file))
        if with_cert:
            ctx.load_cert_chain(str(self.client_cert), str(self.client_key))
        return ctx

    def foreign_client_context(self, directory: Path) -> ssl.SSLContext:
        """A client certificate issued by another CA (one the webhook does not trust)."""
        other = trustme.CA().issue_cert("kube-apiserver")
        path = directory / "foreign-client.pem"
        other.private_key_and_cert_chain_pem.write_to_path(str(path))
        ctx = ssl.create_default_context(cafile=str(self.ca_file))
        ctx.load_cert_chain(str(path))
        return ctx


def make_tls(directory: Path) -> TlsFiles:
    ca = trustme.CA()
    server = ca.issue_cert("127.0.0.1", "localhost", "::1")
    client = ca.issue_cert("kube-apiserver")
    files = TlsFiles(
        ca=ca,
        ca_file=directory / "ca.pem",
        server_cert=directory / "server.pem",
        server_key=directory / "server.key",
        client_cert=directory / "client.pem",
        client_key=directory / "client.key",
        token_file=directory / "token",
        token="s3cr3t-audit-token",
    )
    ca.cert_pem.write_to_path(str(files.ca_file))
    server.cert_chain_pems[0].write_to_path(str(files.server_cert))
    for extra in server.cert_chain_pems[1:]:
        extra.write_to_path(str(files.server_cert), append=True)
    server.private_key_pem.write_to_path(str(files.server_key))
    client.cert_chain_pems[0].write_to_path(str(files.client_cert))
    client.private_key_pem.write_to_path(str(files.client_key))
    files.token_file.write_text(files.token + "\n")
    return files


def audit_settings(tls: TlsFiles, *, client_ca: bool = True, token: bool = True, **kw: Any) -> AuditSettings:
    return AuditSettings(
        host="127.0.0.1",
        port=0,
        tls_cert=str(tls.server_cert),
        tls_key=str(tls.server_key),
        client_ca=str(tls.ca_file) if client_ca else "",
        token_file=str(tls.token_file) if token else "",
        **kw,
    )


@asynccontextmanager
async def running_webhook(settings: AuditSettings, sink: Sink, **kw: Any) -> AsyncIterator[AuditWebhook]:
    hook = AuditWebhook(settings, sink, **kw)
    await hook.start()
    try:
        yield hook
    finally:
        await hook.stop()


def event_list(items: Sequence[Any]) -> bytes:
    """The body the API server's batch webhook backend POSTs."""
    doc = {"kind": "EventList", "apiVersion": "audit.k8s.io/v1", "metadata": {}, "items": list(items)}
    return orjson.dumps(doc)


def corpus_body(path: Path) -> bytes:
    """A corpus file as the API server would send it: one document as is, JSON lines as one EventList."""
    data = path.read_bytes()
    lines = [line for line in data.splitlines() if line.strip()]
    if len(lines) > 1:
        return event_list([orjson.loads(line) for line in lines])
    return data
