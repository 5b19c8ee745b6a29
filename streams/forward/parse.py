"""The ``[forward]`` section of the configuration, parsed into typed dataclasses.

``Settings.forward`` is the raw TOML table; :func:`parse_forward_config` validates it
once, naming the offending key (``forward.destinations[1].batch_size``), and the rest
of the forwarder only sees the frozen dataclasses of :mod:`streams.forward.config`.
Each destination type parses its own options (:data:`streams.forward.destinations.DESTINATION_TYPES`).
docs/forward.md is the reference with a full example.

Shape::

    [forward]
    group_prefix = "cadr-forward."     # consumer group = group_prefix + destination name

    [[forward.destinations]]
    name = "splunk"                    # [A-Za-z0-9._-]
    type = "splunk_hec"                # splunk_hec | elasticsearch | syslog | webhook | kafka
    url = "https://splunk:8088"
    token_file = "/etc/cadr/hec-token"
    min_severity = "medium"
    [forward.destinations.filter]      # optional; every list is "any of", globs allowed
    namespaces = ["prod-*"]
    [forward.destinations.tls]         # optional; CA, client certificate (mTLS), verify
    [forward.destinations.retry]       # optional; exponential backoff with jitter
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from schemas.records import IncidentStatus, Severity
from schemas.topics import forward_dead_letter_topic
from streams.forward.config import DestinationConfig, FilterConfig, ForwardConfig, RetryConfig, TlsConfig
from streams.forward.destinations import DESTINATION_TYPES
from streams.forward.errors import ForwardConfigError
from streams.forward.table import Table

__all__ = ["parse_destination", "parse_forward_config"]

_NAME = re.compile(r"^[A-Za-z0-9._-]{1,100}$")


def _tls(t: Table | None) -> TlsConfig | None:
    if t is None:
        return None
    cfg = TlsConfig(
        ca_file=t.text("ca_file"),
        cert_file=t.text("cert_file"),
        key_file=t.text("key_file"),
        verify=t.flag("verify", True),
        server_name=t.text("server_name"),
    )
    t.done()
    if cfg.key_file and not cfg.cert_file:
        raise ForwardConfigError(f"{t.where}: key_file needs cert_file")
    return cfg


def _retry(t: Table | None) -> RetryConfig:
    if t is None:
        return RetryConfig()
    cfg = RetryConfig(
        initial_backoff_s=t.number("initial_backoff_s", 0.5, lo=0.001),
        max_backoff_s=t.number("max_backoff_s", 30.0, lo=0.001),
        multiplier=t.number("multiplier", 2.0, lo=1.0),
        jitter=t.number("jitter", 0.5),
        max_attempts=t.integer("max_attempts", 0, lo=0),
    )
    t.done()
    if cfg.jitter > 1.0:
        raise ForwardConfigError(f"{t.where}.jitter: must be within [0, 1]")
    return cfg


def _filter(t: Table | None) -> FilterConfig:
    if t is None:
        return FilterConfig()
    cfg = FilterConfig(
        namespaces=t.strings("namespaces"),
        exclude_namespaces=t.strings("exclude_namespaces"),
        clusters=t.strings("clusters"),
        rules=t.strings("rules"),
        exclude_rules=t.strings("exclude_rules"),
        mitre=t.strings("mitre"),
        status=t.strings("status"),
    )
    statuses = {s.value for s in IncidentStatus}
    for s in cfg.status:
        if s not in statuses:
            raise ForwardConfigError(f"{t.where}.status: unknown status {s!r} (known: {', '.join(statuses)})")
    t.done()
    return cfg


def parse_destination(
    data: Mapping[str, Any], where: str, *, topic_prefix: str = "cadr.", group_prefix: str = "cadr-forward."
) -> DestinationConfig:
    """Validate one ``[[forward.destinations]]`` table."""
    t = Table(data, where)
    name = t.required("name")
    if not _NAME.match(name):
        raise t.error("name", f"{name!r} must be 1-100 of A-Z a-z 0-9 . _ - (it names a topic and a group)")
    kind = t.text("type", "", choices=tuple(DESTINATION_TYPES))
    if not kind:
        raise ForwardConfigError(f"{where}: missing required key 'type'")
    records = t.text("records", "incidents", choices=("incidents", "alerts"))
    fmt = t.text("format", "cadr", choices=("cadr", "ocsf"))
    sev_text = t.text("min_severity", "info", choices=tuple(s.value for s in Severity))
    extra = t.mapping("extra_fields")
    headers = t.mapping("headers", str_values=True)
    batch_size = t.integer("batch_size", 500, lo=1, hi=100_000)
    batch_bytes = t.integer("batch_bytes", 4 << 20, lo=1024)
    linger_s = t.number("linger_s", 0.1)
    concurrency = t.integer("concurrency", 2, lo=1, hi=64)
    timeout_s = t.number("timeout_s", 30.0, lo=0.1)
    start = t.text("start", "earliest", choices=("earliest", "latest"))
    dlq = t.text("dead_letter_topic") or forward_dead_letter_topic(topic_prefix, name)
    group_id = t.text("group_id") or f"{group_prefix}{name}"
    enabled = t.flag("enabled", True)
    filt = _filter(t.table("filter"))
    retry = _retry(t.table("retry"))
    tls = _tls(t.table("tls"))
    options = DESTINATION_TYPES[kind].options_type.parse(t)
    t.done()
    cfg = DestinationConfig(
        name=name,
        type=kind,
        options=options,
        records=records,
        format=fmt,
        min_severity=Severity(sev_text),
        filter=filt,
        extra_fields=extra,
        headers=headers,
        batch_size=batch_size,
        batch_bytes=batch_bytes,
        linger_s=linger_s,
        concurrency=concurrency,
        timeout_s=timeout_s,
        start=start,
        dead_letter_topic=dlq,
        group_id=group_id,
        retry=retry,
        tls=tls,
        enabled=enabled,
    )
    return options.settle(cfg, data, where)


def parse_forward_config(raw: Mapping[str, Any], *, topic_prefix: str = "cadr.") -> ForwardConfig:
    """Validate the whole ``[forward]`` table (``Settings.forward``)."""
    t = Table(raw, "forward")
    group_prefix = t.text("group_prefix", "cadr-forward.")
    metrics_host = t.text("metrics_host", "127.0.0.1")
    metrics_port = t.integer("metrics_port", 0, lo=0, hi=65535)
    log_interval_s = t.number("log_interval_s", 30.0)
    session_timeout_s = t.number("session_timeout_s", 10.0, lo=1.0)
    max_poll_interval_s = t.number("max_poll_interval_s", 3600.0, lo=1.0)
    dead_letter_replication = t.integer("dead_letter_replication", 1, lo=1, hi=32)
    items = t.data.pop("destinations", [])
    t.done()
    if not isinstance(items, list):
        raise ForwardConfigError(
            "forward.destinations: expected an array of tables ([[forward.destinations]])"
        )
    dests = tuple(
        parse_destination(
            item, f"forward.destinations[{i}]", topic_prefix=topic_prefix, group_prefix=group_prefix
        )
        for i, item in enumerate(items)
    )
    seen: set[str] = set()
    for d in dests:
        if d.name in seen:
            raise ForwardConfigError(f"forward.destinations: duplicate name {d.name!r}")
        seen.add(d.name)
    return ForwardConfig(
        destinations=dests,
        group_prefix=group_prefix,
        metrics_host=metrics_host,
        metrics_port=metrics_port,
        log_interval_s=log_interval_s,
        session_timeout_s=session_timeout_s,
        max_poll_interval_s=max_poll_interval_s,
        dead_letter_replication=dead_letter_replication,
    )
