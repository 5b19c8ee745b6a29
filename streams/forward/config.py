"""The ``[forward]`` section as typed, frozen dataclasses: what the rest of the forwarder sees.

:mod:`streams.forward.parse` builds them from the TOML table. The options of each destination type
(URL, token, index, ...) belong to the destination's own module (``SplunkOptions`` in
:mod:`streams.forward.splunk`, and so on), each a :class:`DestinationOptions`.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Self

from schemas.records import Severity
from streams.forward.errors import ForwardConfigError
from streams.forward.table import Table

__all__ = [
    "DestinationConfig",
    "DestinationOptions",
    "FilterConfig",
    "ForwardConfig",
    "RetryConfig",
    "TlsConfig",
]


@dataclass(frozen=True)
class DestinationOptions(abc.ABC):
    """The options of one destination type (its keys of a ``[[forward.destinations]]`` table)."""

    @classmethod
    @abc.abstractmethod
    def parse(cls, t: Table) -> Self:
        """Read this type's keys from the destination's table (the generic keys are read already;
        the caller reports whatever is left as unknown)."""

    def settle(self, cfg: DestinationConfig, given: Mapping[str, Any], where: str) -> DestinationConfig:
        """The destination config as these options require it (``given``: the table as written, at
        ``where``). By default, unchanged."""
        return cfg


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
class DestinationConfig:
    """One destination, with everything the delivery loop and its sender need."""

    name: str
    type: str
    options: DestinationOptions
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
