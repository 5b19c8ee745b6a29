"""Errors of the eBPF sensor."""

from __future__ import annotations

from schemas.errors import CadrError

__all__ = ["SensorError", "SensorUnavailableError"]


class SensorError(CadrError):
    """The sensor failed to build, load, attach or read its BPF programs."""


class SensorUnavailableError(SensorError):
    """This machine cannot run the eBPF sensor; the message says what is missing."""
