"""The ``[forward]`` section of the configuration, parsed into typed dataclasses.

``Settings.forward`` is the raw TOML table; :func:`parse_forward_config` validates it
once, naming the offending key (``forward.destinations[1].batch_size``), and the rest
of the forwarder only sees the frozen dataclasses below. docs/forward.md is the
reference with a full example.

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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from schemas.records import IncidentStatus, Severity
from schemas.topics import forward_dead_letter_topic
from streams.forward.errors import ForwardConfigError

__all__ = [
    "DESTINATION_TYPES",
    "DestinationConfig",
    "ElasticOptions",
    "FilterConfig",
    "ForwardConfig",
    "KafkaOptions",
    "RetryConfig",
    "SplunkOptions",
    "SyslogOptions",
    "TlsConfig",
    "WebhookOptions",
    "facility_code",
    "parse_destination",
    "parse_forward_config",
    "read_secret",
]

DESTINATION_TYPES = ("splunk_hec", "elasticsearch", "syslog", "webhook", "kafka")
_NAME = re.compile(r"^[A-Za-z0-9._-]{1,100}$")
_FACILITIES = {
    "kern": 0,
    "user": 1,
    "mail": 2,
    "daemon": 3,
    "auth": 4,
    "syslog": 5,
    "lpr": 6,
    "news": 7,
    "uucp": 8,
    "cron": 9,
    "authpriv": 10,
    "ftp": 11,
    "ntp": 12,
    "security": 13,
    "console": 14,
    "solaris-cron": 15,
    **{f"local{i}": 16 + i for i in range(8)},
}


@dataclass(frozen=True)
class TlsConfig:
    """TLS towards a destination. A client certificate makes it mutual TLS."""

    ca_file: str = ""
    cert_file: str = ""
    key_file: str = ""
    #: verify the server certificate and name (turn off only for a lab)
    verify: bool = True
    #: name to verify and send as SNI when it differs from the host connected to
    server_name: str = ""


@dataclass(frozen=True)
class RetryConfig:
    """Exponential backoff with jitter between attempts of one request."""

    initial_backoff_s: float = 0.5
    max_backoff_s: float = 30.0
    multiplier: float = 2.0
    #: fraction of each delay that is randomized (0 = none, 1 = anywhere in [0, delay])
    jitter: float = 0.5
    #: 0 = retry transient failures forever (never drop); N = dead-letter after N attempts
    max_attempts: int = 0


@dataclass(frozen=True)
class FilterConfig:
    """Which records a destination wants. Every list means "any of" and takes globs.

    Empty lists do not filter. A record passes when it passes every non-empty list.
    """

    namespaces: tuple[str, ...] = ()
    exclude_namespaces: tuple[str, ...] = ()
    clusters: tuple[str, ...] = ()
    rules: tuple[str, ...] = ()
    exclude_rules: tuple[str, ...] = ()
    mitre: tuple[str, ...] = ()
    status: tuple[str, ...] = ()


@dataclass(frozen=True)
class SplunkOptions:
    url: str
    token: str = ""
    token_file: str = ""
    path: str = "/services/collector/event"
    index: str = ""
    source: str = "cadr"
    #: default: cadr:incident / cadr:alert (with :ocsf appended for OCSF payloads)
    sourcetype: str = ""
    host: str = ""
    #: channel GUID (X-Splunk-Request-Channel); required by HEC when ack is on
    channel: str = ""
    #: wait for indexer acknowledgment before committing (HEC "useACK")
    ack: bool = False
    ack_timeout_s: float = 120.0
    ack_poll_interval_s: float = 1.0
    #: add incident_id / revision / severity as indexed fields (``fields``)
    indexed_fields: bool = True


@dataclass(frozen=True)
class ElasticOptions:
    url: str
    #: index or data stream; strftime patterns (``cadr-%Y.%m.%d``) use the record's first_seen (UTC)
    index: str = "cadr-incidents"
    pipeline: str = ""
    username: str = ""
    password: str = ""
    password_file: str = ""
    api_key: str = ""
    api_key_file: str = ""
    #: field added with the record's time in RFC 3339 (empty = none)
    timestamp_field: str = "@timestamp"


@dataclass(frozen=True)
class SyslogOptions:
    host: str
    port: int
    #: tcp (RFC 6587 octet counting) or tls (RFC 5425)
    transport: str = "tcp"
    #: json (cadr or OCSF record as the MSG) or cef (ArcSight CEF line as the MSG)
    payload: str = "json"
    facility: str = "local0"
    app_name: str = "cadr"
    #: HOSTNAME field; empty = the node name from settings
    hostname: str = ""
    #: SD-ID of the structured data element carrying incident_id and revision
    sd_id: str = "cadr@32473"
    utf8_bom: bool = False
    #: a larger message drops its timeline/edges (marked truncated); if still larger it is dead-lettered
    max_message_bytes: int = 65536


@dataclass(frozen=True)
class WebhookOptions:
    url: str
    method: str = "POST"
    #: array (JSON array per request), ndjson (one JSON object a line) or object (one record per request)
    body: str = "array"
    username: str = ""
    password: str = ""
    password_file: str = ""
    bearer_token: str = ""
    bearer_token_file: str = ""


@dataclass(frozen=True)
class KafkaOptions:
    bootstrap: str
    topic: str
    #: PLAINTEXT | SSL | SASL_PLAINTEXT | SASL_SSL
    security_protocol: str = "PLAINTEXT"
    sasl_mechanism: str = "PLAIN"
    sasl_username: str = ""
    sasl_password: str = ""
    sasl_password_file: str = ""
    compression: str = "lz4"


Options = SplunkOptions | ElasticOptions | SyslogOptions | WebhookOptions | KafkaOptions


@dataclass(frozen=True)
class DestinationConfig:
    """One destination, with everything the delivery loop and its sender need."""

    name: str
    type: str
    options: Options
    #: incidents | alerts (the topic consumed)
    records: str = "incidents"
    #: cadr (cadr's own schema) | ocsf (OCSF Detection Finding)
    format: str = "cadr"
    min_severity: Severity = Severity.INFO
    filter: FilterConfig = field(default_factory=FilterConfig)
    #: added to every payload (top level; CEF extension keys for CEF)
    extra_fields: Mapping[str, Any] = field(default_factory=dict)
    #: HTTP headers (HEC, bulk, webhook) or Kafka record headers
    headers: Mapping[str, str] = field(default_factory=dict)
    batch_size: int = 500
    batch_bytes: int = 4 << 20
    #: how long to wait for a batch to fill before sending what there is
    linger_s: float = 0.1
    #: requests in flight at once; records of one incident always share a lane (order kept)
    concurrency: int = 2
    timeout_s: float = 30.0
    #: where a new consumer group starts: earliest (forward the retained history) | latest
    start: str = "earliest"
    dead_letter_topic: str = ""
    group_id: str = ""
    retry: RetryConfig = field(default_factory=RetryConfig)
    tls: TlsConfig | None = None
    enabled: bool = True


@dataclass(frozen=True)
class ForwardConfig:
    destinations: tuple[DestinationConfig, ...] = ()
    group_prefix: str = "cadr-forward."
    #: Prometheus text endpoint on this address (port 0 = off)
    metrics_host: str = "127.0.0.1"
    metrics_port: int = 0
    #: a progress line per destination in the log this often (0 = off)
    log_interval_s: float = 30.0
    session_timeout_s: float = 10.0
    #: a destination may be down this long before the consumer leaves its group (then rejoins)
    max_poll_interval_s: float = 3600.0
    #: replication factor of the dead-letter topics cadr creates (pre-create them to choose more)
    dead_letter_replication: int = 1

    def destination(self, name: str) -> DestinationConfig:
        for d in self.destinations:
            if d.name == name:
                return d
        known = ", ".join(d.name for d in self.destinations) or "none"
        raise ForwardConfigError(f"no forward destination named {name!r} (configured: {known})")


def read_secret(value: str, path: str, where: str) -> str:
    """A secret given inline or as a file (the file wins; trailing whitespace stripped)."""
    if path:
        try:
            return Path(path).read_text().strip()
        except OSError as exc:
            raise ForwardConfigError(f"{where}: cannot read {path}: {exc}") from exc
    return value


class _Table:
    """Pops typed keys from one TOML table and reports leftovers as unknown keys."""

    def __init__(self, data: Any, where: str) -> None:
        if not isinstance(data, Mapping):
            raise ForwardConfigError(f"{where}: expected a table, got {type(data).__name__}")
        self.data = dict(data)
        self.where = where

    def _err(self, key: str, msg: str) -> ForwardConfigError:
        return ForwardConfigError(f"{self.where}.{key}: {msg}")

    def text(self, key: str, default: str = "", *, choices: tuple[str, ...] = ()) -> str:
        value = self.data.pop(key, default)
        if not isinstance(value, str):
            raise self._err(key, f"expected a string, got {value!r}")
        if choices and value not in choices:
            raise self._err(key, f"must be one of {', '.join(choices)}; got {value!r}")
        return value

    def required(self, key: str) -> str:
        if key not in self.data:
            raise ForwardConfigError(f"{self.where}: missing required key {key!r}")
        value = self.text(key)
        if not value:
            raise self._err(key, "must not be empty")
        return value

    def integer(self, key: str, default: int, *, lo: int | None = None, hi: int | None = None) -> int:
        value = self.data.pop(key, default)
        if isinstance(value, bool) or not isinstance(value, int):
            raise self._err(key, f"expected an integer, got {value!r}")
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            raise self._err(key, f"must be within [{lo}, {hi}]; got {value}")
        return value

    def number(self, key: str, default: float, *, lo: float = 0.0) -> float:
        value = self.data.pop(key, default)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self._err(key, f"expected a number, got {value!r}")
        if value < lo:
            raise self._err(key, f"must be >= {lo}; got {value}")
        return float(value)

    def flag(self, key: str, default: bool) -> bool:
        value = self.data.pop(key, default)
        if not isinstance(value, bool):
            raise self._err(key, f"expected true or false, got {value!r}")
        return value

    def strings(self, key: str) -> tuple[str, ...]:
        value = self.data.pop(key, [])
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise self._err(key, f"expected a list of strings, got {value!r}")
        return tuple(value)

    def table(self, key: str) -> _Table | None:
        if key not in self.data:
            return None
        return _Table(self.data.pop(key), f"{self.where}.{key}")

    def mapping(self, key: str, *, str_values: bool = False) -> dict[str, Any]:
        value = self.data.pop(key, {})
        if not isinstance(value, Mapping):
            raise self._err(key, "expected a table")
        if str_values and not all(isinstance(v, str) for v in value.values()):
            raise self._err(key, "values must be strings")
        return dict(value)

    def done(self) -> None:
        if self.data:
            names = ", ".join(sorted(self.data))
            raise ForwardConfigError(f"{self.where}: unknown key(s) {names}")


def _url(t: _Table, key: str = "url") -> str:
    url = t.required(key)
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise t._err(key, f"expected an http(s):// URL, got {url!r}")
    return url.rstrip("/")


def _tls(t: _Table | None) -> TlsConfig | None:
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


def _retry(t: _Table | None) -> RetryConfig:
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


def _filter(t: _Table | None) -> FilterConfig:
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


def _options(kind: str, t: _Table) -> Options:
    if kind == "splunk_hec":
        o = SplunkOptions(
            url=_url(t),
            token=t.text("token"),
            token_file=t.text("token_file"),
            path=t.text("path", "/services/collector/event"),
            index=t.text("index"),
            source=t.text("source", "cadr"),
            sourcetype=t.text("sourcetype"),
            host=t.text("host"),
            channel=t.text("channel"),
            ack=t.flag("ack", False),
            ack_timeout_s=t.number("ack_timeout_s", 120.0, lo=0.1),
            ack_poll_interval_s=t.number("ack_poll_interval_s", 1.0, lo=0.01),
            indexed_fields=t.flag("indexed_fields", True),
        )
        if not (o.token or o.token_file):
            raise ForwardConfigError(f"{t.where}: splunk_hec needs token or token_file")
        if o.ack and not o.channel:
            raise ForwardConfigError(f"{t.where}: ack = true needs a channel (a GUID)")
        return o
    if kind == "elasticsearch":
        index = t.text("index", "cadr-incidents")
        literal = re.sub(r"%.", "", index)  # strftime directives are filled (and lowercased) per record
        if not index or literal != literal.lower() or any(c in literal for c in ' "*\\<|,>/?#:'):
            raise ForwardConfigError(
                f'{t.where}.index: {index!r} is not a valid index name (lowercase, no spaces or "*\\<|,>/?#:)'
            )
        return ElasticOptions(
            url=_url(t),
            index=index,
            pipeline=t.text("pipeline"),
            username=t.text("username"),
            password=t.text("password"),
            password_file=t.text("password_file"),
            api_key=t.text("api_key"),
            api_key_file=t.text("api_key_file"),
            timestamp_field=t.text("timestamp_field", "@timestamp"),
        )
    if kind == "syslog":
        if "port" not in t.data:
            raise ForwardConfigError(f"{t.where}: missing required key 'port'")
        so = SyslogOptions(
            host=t.required("host"),
            port=t.integer("port", 0, lo=1, hi=65535),
            transport=t.text("transport", "tcp", choices=("tcp", "tls")),
            payload=t.text("payload", "json", choices=("json", "cef")),
            facility=t.text("facility", "local0", choices=tuple(_FACILITIES)),
            app_name=t.text("app_name", "cadr"),
            hostname=t.text("hostname"),
            sd_id=t.text("sd_id", "cadr@32473"),
            utf8_bom=t.flag("utf8_bom", False),
            max_message_bytes=t.integer("max_message_bytes", 65536, lo=480),
        )
        for key, value in (("app_name", so.app_name), ("hostname", so.hostname), ("sd_id", so.sd_id)):
            if any(c.isspace() or not c.isprintable() for c in value) or any(c in value for c in '="]'):
                raise ForwardConfigError(f'{t.where}.{key}: must be printable ASCII without spaces, = " ]')
        if not so.sd_id:
            raise ForwardConfigError(f"{t.where}.sd_id: must not be empty")
        return so
    if kind == "webhook":
        return WebhookOptions(
            url=_url(t),
            method=t.text("method", "POST", choices=("POST", "PUT")),
            body=t.text("body", "array", choices=("array", "ndjson", "object")),
            username=t.text("username"),
            password=t.text("password"),
            password_file=t.text("password_file"),
            bearer_token=t.text("bearer_token"),
            bearer_token_file=t.text("bearer_token_file"),
        )
    if kind == "kafka":
        return KafkaOptions(
            bootstrap=t.required("bootstrap"),
            topic=t.required("topic"),
            security_protocol=t.text(
                "security_protocol", "PLAINTEXT", choices=("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
            ),
            sasl_mechanism=t.text(
                "sasl_mechanism", "PLAIN", choices=("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
            ),
            sasl_username=t.text("sasl_username"),
            sasl_password=t.text("sasl_password"),
            sasl_password_file=t.text("sasl_password_file"),
            compression=t.text("compression", "lz4", choices=("none", "gzip", "snappy", "lz4", "zstd")),
        )
    raise ForwardConfigError(f"{t.where}.type: unknown type {kind!r} (known: {', '.join(DESTINATION_TYPES)})")


def parse_destination(
    data: Mapping[str, Any], where: str, *, topic_prefix: str = "cadr.", group_prefix: str = "cadr-forward."
) -> DestinationConfig:
    """Validate one ``[[forward.destinations]]`` table."""
    t = _Table(data, where)
    name = t.required("name")
    if not _NAME.match(name):
        raise t._err("name", f"{name!r} must be 1-100 of A-Z a-z 0-9 . _ - (it names a topic and a group)")
    kind = t.text("type", "", choices=DESTINATION_TYPES)
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
    options = _options(kind, t)
    t.done()
    if isinstance(options, WebhookOptions) and options.body == "object":
        if "batch_size" in data and batch_size != 1:
            raise ForwardConfigError(f"{where}.batch_size: body = 'object' sends one record per request")
        batch_size = 1
    if isinstance(options, SyslogOptions) and options.transport == "tls" and tls is None:
        tls = TlsConfig()
    return DestinationConfig(
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


def parse_forward_config(raw: Mapping[str, Any], *, topic_prefix: str = "cadr.") -> ForwardConfig:
    """Validate the whole ``[forward]`` table (``Settings.forward``)."""
    t = _Table(raw, "forward")
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


def facility_code(name: str) -> int:
    """Numeric syslog facility for a name from :class:`SyslogOptions`."""
    return _FACILITIES[name]
