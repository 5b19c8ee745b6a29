"""SIEM forwarding of incidents (and alerts), lossless by design.

Read in this order: ``config`` (the ``[forward]`` table as dataclasses; ``parse`` and
``table`` read it from TOML, each destination type its own options), ``payload``
(decode, filter, shape: cadr schema or OCSF), ``base`` (the destination contract),
``delivery`` (lanes, retries, splitting, dead letters), ``consumer`` (one Kafka
consumer group per destination, commit after acknowledgment), then one module per
destination type: ``splunk``, ``elasticsearch``, ``syslog`` (+ ``cef``), ``webhook``,
``kafka``, registered in ``destinations``. docs/forward.md is the operator's reference.
"""

from __future__ import annotations

from streams.forward.config import DestinationConfig, ForwardConfig
from streams.forward.consumer import DestinationRunner, Forwarder, TestResult, send_test
from streams.forward.destinations import build_destination
from streams.forward.metrics import DestinationMetrics, ForwardMetrics
from streams.forward.parse import parse_forward_config

__all__ = [
    "DestinationConfig",
    "DestinationMetrics",
    "DestinationRunner",
    "ForwardConfig",
    "ForwardMetrics",
    "Forwarder",
    "TestResult",
    "build_destination",
    "parse_forward_config",
    "send_test",
]
