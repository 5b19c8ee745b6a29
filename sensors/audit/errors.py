"""Errors of the audit intake (rooted in the project-wide :class:`CadrError`)."""

from __future__ import annotations

from schemas.errors import CadrError, RecordError

__all__ = ["AuditError", "AuditFormatError", "PublishError", "WebhookConfigError"]


class AuditError(CadrError):
    """Something in the Kubernetes audit intake failed."""


class AuditFormatError(AuditError, RecordError):
    """An input is not a valid Kubernetes audit event; the message names the field (``$.auditID``)."""


class PublishError(AuditError):
    """Kafka did not acknowledge a batch (the caller must not report it as stored)."""


class WebhookConfigError(AuditError):
    """The webhook's TLS or authentication settings are unusable."""
