"""How cadr's Kafka clients connect: TLS and SASL/SCRAM options for every client from the one ``[kafka]`` settings.

Every producer, consumer and admin client of the project (the sensors' publisher and the audit sink, the worker's
Faust app and its store consumer, the forwarders, ``cadr replay``/``capture``/``incidents tail``/``profiles``,
topic creation) takes its security options from :func:`client_options` — aiokafka keyword arguments — or, for
Faust, :func:`faust_credentials`. The embedded stack on loopback (``cadr up``, tests) stays ``PLAINTEXT``; a
deployment sets, for example::

    [kafka]
    bootstrap = "kafka.cadr.svc:9094"
    security_protocol = "SASL_SSL"
    sasl_mechanism = "SCRAM-SHA-512"
    sasl_username = "cadr-worker"
    sasl_password_file = "/etc/cadr/kafka/password"
    ssl_cafile = "/etc/cadr/kafka/ca.crt"

The password file and the certificates are read each time a client is built, so a rotated secret is picked up
by the next connection. The settings object is duck-typed (the ``[kafka]`` section of ``Settings``).
"""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any

from schemas.errors import CadrError

__all__ = ["MECHANISMS", "PROTOCOLS", "KafkaAccessError", "client_options", "faust_credentials"]

PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
MECHANISMS = ("SCRAM-SHA-512", "SCRAM-SHA-256", "PLAIN")


class KafkaAccessError(CadrError):
    """The ``[kafka]`` security settings are inconsistent, or a secret or certificate cannot be read."""


def client_options(kafka: Any) -> dict[str, Any]:
    """aiokafka keyword arguments (``security_protocol``, ``ssl_context``, ``sasl_*``) for ``kafka`` settings."""
    protocol = str(getattr(kafka, "security_protocol", "PLAINTEXT") or "PLAINTEXT").upper()
    if protocol not in PROTOCOLS:
        raise KafkaAccessError(f"kafka.security_protocol {protocol!r}: must be one of {', '.join(PROTOCOLS)}")
    options: dict[str, Any] = {"security_protocol": protocol}
    if protocol in ("SSL", "SASL_SSL"):
        options["ssl_context"] = _ssl_context(kafka)
    if protocol.startswith("SASL_"):
        mechanism = str(kafka.sasl_mechanism).upper()
        if mechanism not in MECHANISMS:
            raise KafkaAccessError(
                f"kafka.sasl_mechanism {mechanism!r}: must be one of {', '.join(MECHANISMS)}"
            )
        if not kafka.sasl_username:
            raise KafkaAccessError(f"kafka.security_protocol {protocol} needs kafka.sasl_username")
        options.update(
            sasl_mechanism=mechanism,
            sasl_plain_username=kafka.sasl_username,
            sasl_plain_password=_password(kafka),
        )
    return options


def faust_credentials(kafka: Any) -> Any:
    """Faust's ``broker_credentials`` for ``kafka`` settings (None for PLAINTEXT)."""
    import faust

    options = client_options(kafka)
    protocol = options["security_protocol"]
    if protocol == "PLAINTEXT":
        return None
    if protocol == "SSL":
        return faust.SSLCredentials(options["ssl_context"])
    return faust.SASLCredentials(
        username=options["sasl_plain_username"],
        password=options["sasl_plain_password"],
        ssl_context=options.get("ssl_context"),
        mechanism=options["sasl_mechanism"],
    )


def _password(kafka: Any) -> str:
    path = getattr(kafka, "sasl_password_file", "")
    if path:
        try:
            password = Path(path).read_text().strip()
        except OSError as exc:
            raise KafkaAccessError(f"kafka.sasl_password_file {path}: {exc.strerror or exc}") from exc
    else:
        password = str(getattr(kafka, "sasl_password", "") or "")
    if not password:
        raise KafkaAccessError("SASL needs a password: set kafka.sasl_password_file (or kafka.sasl_password)")
    return password


def _ssl_context(kafka: Any) -> ssl.SSLContext:
    cafile = getattr(kafka, "ssl_cafile", "") or None
    certfile = getattr(kafka, "ssl_certfile", "") or None
    keyfile = getattr(kafka, "ssl_keyfile", "") or None
    if keyfile and not certfile:
        raise KafkaAccessError("kafka.ssl_keyfile is set without kafka.ssl_certfile")
    try:
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=cafile)
        if certfile:
            context.load_cert_chain(certfile, keyfile)
    except (OSError, ssl.SSLError) as exc:
        raise KafkaAccessError(f"kafka TLS settings: {exc}") from exc
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.check_hostname = bool(getattr(kafka, "ssl_check_hostname", True))
    return context
