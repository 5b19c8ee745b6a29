"""Errors of the SIEM forwarders (rooted in :class:`schemas.errors.CadrError`).

Delivery errors are how a destination tells the delivery loop what to do with a
request: :class:`TransientError` means "send it again later" (the record is fine,
the destination is not), :class:`BatchRejectedError` means "the destination refused
this request as a whole because of what is in it" (split it to find the culprit).
"""

from __future__ import annotations

from typing import Any

from schemas.errors import CadrError
from schemas.settings import ConfigError

__all__ = [
    "BatchRejectedError",
    "DeliveryError",
    "ForwardConfigError",
    "ForwardError",
    "TransientError",
]


class ForwardError(CadrError):
    """Root of the forwarder's errors."""


class ForwardConfigError(ForwardError, ConfigError):
    """The ``[forward]`` configuration is invalid; the message names the key."""


class DeliveryError(ForwardError):
    """A request to a destination did not succeed.

    ``reply`` is what the destination answered (status, body) so an operator sees it
    in logs, metrics and dead-letter records.
    """

    def __init__(self, message: str, *, reply: Any = None) -> None:
        super().__init__(message)
        self.reply = reply


class TransientError(DeliveryError):
    """The destination is down, busy or misconfigured: retry the same request later.

    ``retry_after`` is a delay the destination asked for (HTTP ``Retry-After``), in seconds.
    """

    def __init__(self, message: str, *, reply: Any = None, retry_after: float | None = None) -> None:
        super().__init__(message, reply=reply)
        self.retry_after = retry_after


class BatchRejectedError(DeliveryError):
    """The destination refused the whole request because of its content (HTTP 400/413/422).

    The delivery loop halves the batch until the offending record stands alone, then
    dead-letters that record with this reply.
    """
