"""The one registry of destination types: each class names its ``type`` and parses its own options."""

from __future__ import annotations

from collections.abc import Mapping

from streams.forward.base import Destination
from streams.forward.config import DestinationConfig
from streams.forward.elasticsearch import Elasticsearch
from streams.forward.kafka import KafkaTopic
from streams.forward.splunk import SplunkHec
from streams.forward.syslog import Syslog
from streams.forward.webhook import Webhook

__all__ = ["DESTINATION_TYPES", "build_destination"]

#: destination class by ``type`` (``[[forward.destinations]] type = "..."``), in the order docs list them
DESTINATION_TYPES: Mapping[str, type[Destination]] = {
    cls.type_name: cls for cls in (SplunkHec, Elasticsearch, Syslog, Webhook, KafkaTopic)
}


def build_destination(cfg: DestinationConfig, *, node: str = "") -> Destination:
    """The destination object for ``cfg`` (not started; ``send`` starts it on first use)."""
    return DESTINATION_TYPES[cfg.type](cfg, node=node)
