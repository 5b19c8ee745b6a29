"""The contract between the delivery loop and one destination type.

A destination turns items into its wire form (:meth:`Destination.encode`) and sends
a batch (:meth:`Destination.send`). It reports the outcome in one of three ways:

- return ``None``: the destination acknowledged every item;
- return one :class:`ItemResult` per item, in order (bulk APIs that answer per item);
- raise :class:`~streams.forward.errors.TransientError` (retry the whole request) or
  :class:`~streams.forward.errors.BatchRejectedError` (the request as a whole was
  refused for its content: the loop splits it to find the record at fault).

Destinations never sleep, retry or dead-letter themselves: that policy lives in one
place, :mod:`streams.forward.delivery`.
"""

from __future__ import annotations

import abc
import enum
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from streams.forward.config import DestinationConfig, DestinationOptions
from streams.forward.payload import Item

__all__ = ["Destination", "ItemResult", "Status"]


class Status(enum.Enum):
    #: acknowledged (stored, indexed or written)
    OK = "ok"
    #: the destination already had it (a retry of something that did arrive)
    DUPLICATE = "duplicate"
    #: failed for a reason that may pass (busy, throttled): send again after a backoff
    RETRY = "retry"
    #: not processed because another item of the request failed: send again now
    RESEND = "resend"
    #: the destination refuses this record as invalid: dead-letter it with the reply
    REJECT = "reject"


@dataclass(slots=True, frozen=True)
class ItemResult:
    status: Status
    reply: Any = None


OK = ItemResult(Status.OK)


class Destination(abc.ABC):
    """One configured destination (a Splunk HEC, an Elasticsearch cluster, ...)."""

    #: the ``type`` of ``[[forward.destinations]]`` tables that configure this class
    type_name: ClassVar[str]
    #: its options (the keys of the table beyond the generic ones), parsed by the class itself
    options_type: ClassVar[type[DestinationOptions]]
    #: the receiver processes a request's items independently (a bulk API answering per
    #: item), so one request must not carry two revisions of one incident
    independent_items: bool = False

    def __init__(self, cfg: DestinationConfig, *, node: str = "") -> None:
        self.cfg = cfg
        self.name = cfg.name
        self.node = node

    async def start(self) -> None:  # noqa: B027 - optional hook, most senders connect lazily
        """Open sessions or connections (called once before the first send)."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release sessions and connections."""

    @abc.abstractmethod
    def encode(self, item: Item) -> bytes:
        """The wire form of one item (one HEC event, two bulk lines, one syslog frame ...)."""

    def wire(self, item: Item) -> bytes:
        """:meth:`encode`, computed once per item (retries resend the same bytes)."""
        if item.wire is None:
            item.wire = self.encode(item)
        return item.wire

    @abc.abstractmethod
    async def send(self, items: Sequence[Item]) -> list[ItemResult] | None:
        """Send one batch; see the module docstring for how the outcome is reported."""

    def describe(self) -> str:
        """Where this destination sends, for logs (never includes secrets)."""
        return self.cfg.type
