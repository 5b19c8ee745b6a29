"""Behavioural baselines (application profiles): what is normal for one workload's container.

- :mod:`streams.baseline.patterns` — how values are collapsed into patterns and matched
- :mod:`streams.baseline.view` — :class:`ProfileView`, the read-only view rules evaluate against
- :mod:`streams.baseline.learning` — :class:`Baselines`, learning on event time and serving views
- :mod:`streams.baseline.edits` — user edits (:func:`apply_edit`)
"""

from __future__ import annotations

from streams.baseline.edits import apply_edit
from streams.baseline.learning import Baselines
from streams.baseline.patterns import (
    arg_shape,
    dns_pattern,
    egress_key,
    ip_class,
    parse_duration,
    path_pattern,
    profile_key,
)
from streams.baseline.view import ProfileView

__all__ = [
    "Baselines",
    "ProfileView",
    "apply_edit",
    "arg_shape",
    "dns_pattern",
    "egress_key",
    "ip_class",
    "parse_duration",
    "path_pattern",
    "profile_key",
]
