"""Build the sender for a destination config (one class per destination type)."""

from __future__ import annotations

from streams.forward.base import Destination
from streams.forward.config import DestinationConfig
from streams.forward.elasticsearch import Elasticsearch
from streams.forward.kafka import KafkaTopic
from streams.forward.splunk import SplunkHec
from streams.forward.syslog import Syslog
from streams.forward.webhook import Webhook

__all__ = ["DESTINATION_CLASSES", "build_destination"]

DESTINATION_CLASSES: dict[str, type[Destination]] = {
    "splunk_hec": SplunkHec,
    "elasticsearch": Elasticsearch,
    "syslog": Syslog,
    "webhook": Webhook,
    "kafka": KafkaTopic,
}


def build_destination(cfg: DestinationConfig, *, node: str = "") -> Destination:
    """The destination object for ``cfg`` (not started; ``send`` starts it on first use)."""
    return DESTINATION_CLASSES[cfg.type](cfg, node=node)
