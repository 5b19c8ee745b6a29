"""cadr's settings: the one object the CLI builds and hands to every component.

These are plain dataclasses with their defaults; :mod:`cadr.config` fills them from a TOML file and
``CADR_*`` environment variables (defaults < TOML file < environment < flags). They live on the ground
floor so that sensors and streams can take them without importing the command-line package; constructors
receive them and never read the environment themselves.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from schemas.errors import CadrError

__all__ = [
    "AuditSettings",
    "ConfigError",
    "CorrelateSettings",
    "DetectSettings",
    "KafkaSettings",
    "SensorSettings",
    "Settings",
    "StoreSettings",
    "WorkerSettings",
]


class ConfigError(CadrError):
    """The configuration file or an environment variable is invalid."""


@dataclass
class KafkaSettings:
    #: bootstrap servers; empty means "start the embedded local broker" (cadr up / demo)
    bootstrap: str = ""
    topic_prefix: str = "cadr."
    partitions: int = 4
    #: largest record accepted from cadr.raw; bigger ones go to cadr.dlq
    max_record_bytes: int = 1 << 20
    compression: str = "lz4"
    #: how every cadr Kafka client (sensors, worker, forwarders, CLI) connects: PLAINTEXT (the embedded
    #: loopback default), SSL, SASL_PLAINTEXT or SASL_SSL (production: see streams/kafka_access.py)
    security_protocol: str = "PLAINTEXT"
    #: with SASL_*: SCRAM-SHA-512, SCRAM-SHA-256 or PLAIN
    sasl_mechanism: str = "SCRAM-SHA-512"
    sasl_username: str = ""
    #: file holding the SASL password (a mounted secret) ...
    sasl_password_file: str = ""
    #: ... or the password itself (e.g. from a secret in the environment); the file wins when both are set
    sasl_password: str = field(default="", repr=False)
    #: CA bundle that signed the brokers' certificates (empty: the system's CAs)
    ssl_cafile: str = ""
    #: client certificate and key, for brokers that require mutual TLS (optional)
    ssl_certfile: str = ""
    ssl_keyfile: str = ""
    #: check that a broker's certificate names the host it was reached as
    ssl_check_hostname: bool = True


@dataclass
class StoreSettings:
    #: chdb:///<dir> (embedded, default under data_dir) or http(s)://host:8123
    dsn: str = ""
    database: str = "cadr"
    #: a server's user, and its password from a file (a mounted secret) or given as is; the file wins
    username: str = ""
    password_file: str = ""
    password: str = field(default="", repr=False)
    #: CA bundle that signed an https:// server's certificate (empty: the system's CAs) ...
    ca_file: str = ""
    #: ... and whether to check that certificate at all (only turn off for a throwaway test server)
    tls_verify: bool = True
    #: most Kafka records per insert (an events record may be an event batch of hundreds of events) ...
    batch_size: int = 20000
    #: ... and most bytes of record values per insert, whichever comes first. Fewer, larger parts mean fewer
    #: background merges: on the forensics bench (10M events) 128 MiB batches ingest ~1.25x faster than 32 MiB;
    #: 256 MiB is no faster. Batches fill only as fast as events arrive (store.flush_interval_s closes them), so
    #: only a busy sink reaches this size; a full batch costs about three times its size in memory while it is
    #: inserted (two are in flight).
    batch_bytes: int = 128 << 20
    flush_interval_s: float = 1.0
    retention_days: int = 30
    #: local read-only query endpoint of the process owning an embedded store
    query_host: str = "127.0.0.1"
    query_port: int = 8124
    #: limits of every read-only (forensic) query, fixed before the session turns read-only so that the caller
    #: cannot raise them (streams/store/limits.py): memory, run time, result size; and how many queries the
    #: owner's endpoint runs at once (one more gets a "busy" error)
    query_max_memory_bytes: int = 2 << 30
    query_timeout_s: float = 300.0
    query_max_result_rows: int = 100_000_000
    query_max_result_bytes: int = 4 << 30
    query_concurrency: int = 4


@dataclass
class WorkerSettings:
    app_id: str = "cadr"
    web_host: str = "127.0.0.1"
    web_port: int = 6066
    web_enabled: bool = False
    #: agents to run; empty = all
    agents: list[str] = field(default_factory=list)
    batch_size: int = 2000
    batch_window_s: float = 0.05


@dataclass
class DetectSettings:
    #: extra rule folders (the built-in rules always load)
    rules_dirs: list[str] = field(default_factory=list)
    disabled_rules: list[str] = field(default_factory=list)
    #: also load rules of maturity "experimental" (off by default: e.g. the allowed-user list flags every
    #: user it does not know, and its default list comes from another project)
    experimental_rules: bool = False
    cooldown_s: float = 300.0
    learning_window_s: float = 86400.0
    #: label that overrides the learning window per workload (value in seconds)
    learning_window_label: str = "cadr.dev/learning-window"


@dataclass
class CorrelateSettings:
    #: a story closes after this long without new alerts
    inactivity_close_s: float = 1800.0
    #: how long an exec session / token read stays eligible to join a story (after its latest use)
    link_window_s: float = 900.0
    #: alerts listed in a story record; beyond, older alerts are folded into the count of the first
    #: alert of their rule (the record stays far below Kafka's message size however busy the story)
    max_alerts: int = 200
    #: timeline entries kept: the story's beginning and its latest steps (the middle is folded)
    max_timeline: int = 300
    #: link keys per story; beyond, the oldest are dropped
    max_links: int = 2000


@dataclass
class AuditSettings:
    host: str = "127.0.0.1"
    port: int = 8443
    tls_cert: str = ""
    tls_key: str = ""
    #: CA bundle for client certificates; with it, a client certificate is required
    client_ca: str = ""
    #: file holding the bearer token callers must present (empty = token auth off)
    token_file: str = ""
    #: most bytes of a request body, both as sent and once decompressed (checked while it streams in)
    max_body_bytes: int = 32 << 20
    #: most bytes of one audit event in a batch (a larger one goes to the DLQ, its siblings through)
    max_event_bytes: int = 8 << 20
    #: seconds for the TLS handshake and for each request head (a half-sent request is closed after this)
    header_timeout_s: float = 10.0
    #: seconds for a request body to arrive once its head is in
    body_timeout_s: float = 30.0
    #: most open connections; one more is answered 503 and closed
    max_connections: int = 64
    log_files: list[str] = field(default_factory=list)


@dataclass
class SensorSettings:
    spool_dir: str = ""
    spool_max_bytes: int = 512 << 20
    health_interval_s: float = 10.0
    #: how long the eBPF sensor holds events of a Kubernetes container whose pod the pod watch does not
    #: know yet, waiting for it (then they leave without a pod, counted); 0 = never wait
    attribution_hold_s: float = 10.0


@dataclass
class Settings:
    data_dir: str = ".cadr"
    cluster: str = "local"
    node: str = field(default_factory=socket.gethostname)
    kafka: KafkaSettings = field(default_factory=KafkaSettings)
    store: StoreSettings = field(default_factory=StoreSettings)
    worker: WorkerSettings = field(default_factory=WorkerSettings)
    detect: DetectSettings = field(default_factory=DetectSettings)
    correlate: CorrelateSettings = field(default_factory=CorrelateSettings)
    audit: AuditSettings = field(default_factory=AuditSettings)
    sensor: SensorSettings = field(default_factory=SensorSettings)
    #: raw `[[forward.destinations]]` tables; parsed by streams.forward
    forward: dict[str, Any] = field(default_factory=dict)

    @property
    def store_dsn(self) -> str:
        return self.store.dsn or "chdb://" + str(Path(self.data_dir).resolve() / "store")

    def topic(self, name: str) -> str:
        """Full topic name for a logical name (raw, events, alerts, incidents, profiles, dlq)."""
        return f"{self.kafka.topic_prefix}{name}"
