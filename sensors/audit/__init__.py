"""Kubernetes audit intake: the HTTPS webhook, the log file tailer, and normalization to cadr events."""

from sensors.audit.normalize import normalize
from sensors.audit.webhook import AuditWebhook, process_body

__all__ = ["AuditWebhook", "normalize", "process_body"]
