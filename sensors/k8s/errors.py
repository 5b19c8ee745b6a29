"""Errors of the Kubernetes metadata watcher (rooted in the project-wide :class:`CadrError`)."""

from __future__ import annotations

from schemas.errors import CadrError

__all__ = ["K8sError"]


class K8sError(CadrError):
    """The Kubernetes API could not be read (bad credentials, HTTP error, unreadable token)."""
