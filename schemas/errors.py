"""Exceptions of the schemas package (rooted in the project-wide CadrError)."""

from __future__ import annotations

__all__ = ["CadrError", "RecordError"]


class CadrError(Exception):
    """Root of every error cadr raises on purpose."""


class RecordError(CadrError, ValueError):
    """A record failed to decode or validate; the message names the field."""
